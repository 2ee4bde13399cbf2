//! `GET /admin/v1/status`: what an operator looks at first, in one JSON document, read by
//! the console (`/ui/`) and by `aigw status`. Traffic counters are cumulative since the
//! process started (the metrics' own counters, so the two never disagree); the console
//! turns two reads a second apart into rates and latency quantiles. Never a secret: keys
//! appear by name and owner only.

use std::collections::BTreeMap;
use std::time::Instant;

use prometheus::core::Collector;
use serde::Serialize;
use serde_json::{json, Value};

use crate::config::Snapshot;
use crate::route::Cooldowns;
use crate::route::ModelRoute;
use crate::state::AppState;

/// One alias and where it goes.
#[derive(Debug, Serialize)]
pub struct Route {
    pub model: String,
    /// A multi-target alias (`routing`), as opposed to one provider model.
    pub multi: bool,
    pub targets: Vec<RouteTarget>,
}

#[derive(Debug, Serialize)]
pub struct RouteTarget {
    /// The concrete model's alias.
    pub target: String,
    pub provider: String,
    pub upstream_model: String,
    pub priority: u32,
    pub weight: u32,
    /// Failures in a row since its last success.
    pub failures: u32,
    /// Seconds of cooldown left, when cooling down.
    pub cooldown_s: Option<f64>,
    pub replicas: Vec<Replica>,
}

#[derive(Debug, Serialize)]
pub struct Replica {
    pub addr: String,
    /// As active health checks see it (always true without them).
    pub healthy: bool,
    /// Seconds of ejection left after failures, when ejected.
    pub ejected_s: Option<f64>,
}

fn left(until: Option<Instant>, now: Instant) -> Option<f64> {
    until.map(|u| (u.saturating_duration_since(now).as_millis() as f64 / 1000.0).max(0.001))
}

/// Every alias in config order with its targets, their cooldowns and replicas.
pub fn routes(snap: &Snapshot, cooldowns: &Cooldowns, now: Instant) -> Vec<Route> {
    let target = |t: &crate::provider::Target, priority: u32, weight: u32| RouteTarget {
        target: t.alias.clone(),
        provider: t.provider.name.clone(),
        upstream_model: t.upstream_model.clone(),
        priority,
        weight,
        failures: cooldowns.failures(&t.alias),
        cooldown_s: left(cooldowns.until(&t.alias, now), now),
        replicas: t
            .provider
            .upstream
            .replicas(now)
            .into_iter()
            .map(|(addr, healthy, until)| Replica {
                addr: addr.to_string(),
                healthy,
                ejected_s: left(until, now),
            })
            .collect(),
    };
    snap.model_order
        .iter()
        .filter_map(|name| snap.models.get(name))
        .map(|m| match &m.route {
            ModelRoute::Single(t) => Route {
                model: m.name.clone(),
                multi: false,
                targets: vec![target(t, 0, 1)],
            },
            ModelRoute::Multi(r) => Route {
                model: m.name.clone(),
                multi: true,
                targets: r
                    .targets
                    .iter()
                    .map(|rt| target(&rt.target, rt.priority, rt.weight))
                    .collect(),
            },
        })
        .collect()
}

/// Each series of a counter as (labels, value).
fn series(c: &dyn Collector) -> Vec<(BTreeMap<String, String>, f64)> {
    c.collect()
        .iter()
        .flat_map(|f| f.get_metric())
        .map(|m| {
            let labels = m
                .get_label()
                .iter()
                .map(|l| (l.name().to_owned(), l.value().to_owned()))
                .collect();
            (labels, m.get_counter().get_value())
        })
        .collect()
}

#[derive(Default, Serialize)]
struct Traffic {
    requests: f64,
    /// 5xx answers, and `0` (the caller left before any).
    errors: f64,
    /// 4xx answers: refused callers (auth, limits, budgets, guardrails, bad requests).
    refused: f64,
    input_tokens: f64,
    output_tokens: f64,
    cost_usd: f64,
}

/// Requests, tokens and cost by `key` (`model` or `owner`).
fn traffic(state: &AppState, key: &str) -> BTreeMap<String, Traffic> {
    let m = &state.metrics;
    let mut out: BTreeMap<String, Traffic> = BTreeMap::new();
    for (labels, v) in series(&m.requests) {
        let Some(k) = labels.get(key) else { continue };
        let t = out.entry(k.clone()).or_default();
        t.requests += v;
        match labels.get("status").map(String::as_str) {
            Some(s) if s.starts_with('5') || s == "0" => t.errors += v,
            Some(s) if s.starts_with('4') => t.refused += v,
            _ => {}
        }
    }
    for (labels, v) in series(&m.tokens) {
        let Some(k) = labels.get(key) else { continue };
        let t = out.entry(k.clone()).or_default();
        match labels.get("type").map(String::as_str) {
            Some("input") => t.input_tokens += v,
            Some("output") => t.output_tokens += v,
            _ => {}
        }
    }
    for (labels, v) in series(&m.cost) {
        if let Some(k) = labels.get(key) {
            out.entry(k.clone()).or_default().cost_usd += v;
        }
    }
    out
}

/// Each alias's latency histogram (arrival to last byte): its count and its finite
/// buckets as `[upper bound in seconds, cumulative count]`.
fn latency(state: &AppState) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for f in state.metrics.request_duration.collect() {
        for m in f.get_metric() {
            let Some(model) = m.get_label().iter().find(|l| l.name() == "model") else {
                continue;
            };
            let h = m.get_histogram();
            let buckets: Vec<(f64, u64)> = h
                .get_bucket()
                .iter()
                .map(|b| (b.upper_bound(), b.cumulative_count()))
                .collect();
            out.insert(
                model.value().to_owned(),
                json!({"count": h.get_sample_count(), "buckets": buckets}),
            );
        }
    }
    out
}

/// Series of a labelled counter as objects: `[{label: value, ..., "value": n}]`.
fn rows(c: &dyn Collector) -> Vec<Value> {
    series(c)
        .into_iter()
        .map(|(labels, v)| {
            let mut o: serde_json::Map<String, Value> =
                labels.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
            o.insert("value".into(), json!(v));
            Value::Object(o)
        })
        .collect()
}

/// The whole status document.
pub async fn status(state: &AppState) -> Value {
    let snap = state.snapshot();
    let now = Instant::now();
    let wall = chrono::Utc::now();
    let routes = routes(&snap, &state.cooldowns, now);
    let mut keys: Vec<Value> = snap
        .keys
        .entries()
        .map(|k| {
            json!({
                "name": k.name,
                "owner": k.owner,
                "models": k.models.as_ref().map(|m| { let mut v: Vec<_> = m.iter().collect(); v.sort(); v }),
                "expires_at": k.expires_at.map(|t| t.to_rfc3339()),
                "disabled": k.disabled,
                "active": k.is_active(wall),
                "rate_limit": k.limits.as_ref().map(|b| b.policy.clone()),
                "budget": k.budget.as_ref().map(|b| b.name.clone()),
            })
        })
        .collect();
    keys.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    let m = &state.metrics;
    let spend = state.budgets.report(snap.budget_owners(), wall).await;
    json!({
        "time_ms": wall.timestamp_millis(),
        "config": {
            "source": if state.store.is_some() { "etcd" } else { "file" },
            "path": state.config_path.display().to_string(),
            "revision": m.config_version.get(),
            "last_reload": m.config_last_reload.get(),
            "summary": snap.summary(),
            "editable": state.store.is_some(),
        },
        "inflight": m.inflight.get(),
        "traffic": {
            "models": traffic(state, "model"),
            "owners": traffic(state, "owner"),
            "latency": latency(state),
        },
        "routes": routes,
        "spend": spend,
        "keys": keys,
        "jwt": snap.jwt.0.iter().map(|i| i.status()).collect::<Vec<_>>(),
        "guardrail_hits": rows(&m.guardrail_hits),
        "cache": rows(&m.cache),
        "ratelimit_rejections": rows(&m.ratelimit_rejections),
        "upstream_attempts": rows(&m.upstream_attempts),
        "mcp_servers": snap.mcp_servers.iter().map(|s| json!({
            "name": s.name,
            "url": crate::outbound::shown(&s.url),
            "timeout_ms": s.timeout.as_millis() as u64,
            "tools": s.tools.as_ref().map(|t| { let mut v: Vec<_> = t.iter().collect(); v.sort(); v }),
        })).collect::<Vec<_>>(),
        "mcp_tool_calls": rows(&m.mcp_tool_calls),
    })
}
