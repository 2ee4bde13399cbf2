//! The policy sections: `rate_limits`, `budgets`, `guardrails` and `cache`.

use std::collections::HashMap;
use std::sync::Arc;

use super::{raw, CompileCtx, Errors};
use crate::guard::Guardrail;
use crate::guard_service;
use crate::metrics::Metrics;
use crate::provider::Provider;

/// Every guardrail that compiles, by name, and in config order. A service's client is
/// compiled here (`guard_service`): it may name a provider key, and a judge an alias
/// (bound in `judges` once the models are compiled).
pub(super) fn compile_guardrails(
    list: &[raw::Guardrail],
    providers: &HashMap<String, Arc<Provider>>,
    judges: &mut guard_service::Judges,
    ctx: &CompileCtx<'_>,
    errs: &mut Errors,
) -> (HashMap<String, Arc<Guardrail>>, Vec<Arc<Guardrail>>) {
    let mut guards: HashMap<String, Arc<Guardrail>> = HashMap::new();
    let mut order = Vec::new();
    for (i, g) in list.iter().enumerate() {
        let path = format!("guardrails[{i}]");
        let service = match &g.service {
            None => None,
            Some(s) => {
                let spath = format!("{path}.service");
                let mut cx = guard_service::Context {
                    providers,
                    env: ctx.env,
                    metrics: ctx.metrics.cloned().unwrap_or_else(|| Arc::new(Metrics::new())),
                    judges: &mut *judges,
                };
                let checker = guard_service::compile(&spath, g, s, &mut cx, &mut |field, msg| {
                    errs.push(format!("{spath}.{field}"), msg)
                });
                if checker.is_none() {
                    // The guardrail's own errors too (a service beside rules), all at once.
                    if let Err(list) = Guardrail::compile(&path, g, None) {
                        list.into_iter().for_each(|(path, msg)| errs.push(path, msg));
                    }
                    continue;
                }
                checker
            }
        };
        match Guardrail::compile(&path, g, service) {
            Ok(compiled) => {
                let compiled = Arc::new(compiled);
                if !guards.contains_key(&g.name) {
                    guards.insert(g.name.clone(), compiled.clone());
                    order.push(compiled);
                }
            }
            Err(list) => list.into_iter().for_each(|(path, msg)| errs.push(path, msg)),
        }
    }
    (guards, order)
}

pub(super) fn check_budgets(budgets: &[Arc<raw::Budget>], errs: &mut Errors) {
    for (i, b) in budgets.iter().enumerate() {
        if !(b.usd.is_finite() && b.usd >= 0.0) {
            errs.push(format!("budgets[{i}].usd"), "must be zero or a positive number");
        }
    }
}

/// Cache policies' sizes; a Redis backend needs `server.redis`.
pub(super) fn check_caches(caches: &[Arc<raw::Cache>], has_redis: bool, errs: &mut Errors) {
    for (i, c) in caches.iter().enumerate() {
        let path = format!("cache[{i}]");
        if c.ttl_s == 0 {
            errs.push(format!("{path}.ttl_s"), "must be at least 1");
        }
        if c.max_bytes == 0 {
            errs.push(format!("{path}.max_bytes"), "must be at least 1");
        }
        if c.max_entry_bytes == 0 || c.max_entry_bytes > c.max_bytes {
            errs.push(
                format!("{path}.max_entry_bytes"),
                "must be at least 1 and at most max_bytes",
            );
        }
        if c.max_entries == 0 {
            errs.push(format!("{path}.max_entries"), "must be at least 1");
        }
        if c.backend == raw::CacheBackend::Redis && !has_redis {
            errs.push(format!("{path}.backend"), "backend redis needs server.redis");
        }
    }
}

pub(super) fn compile_rate_limit(i: usize, r: &raw::RateLimit, errs: &mut Errors) {
    let fields = [
        ("requests_per_second", r.requests_per_second),
        ("requests_per_minute", r.requests_per_minute),
        ("requests_per_hour", r.requests_per_hour),
        ("requests_per_day", r.requests_per_day),
        ("tokens_per_minute", r.tokens_per_minute),
        ("tokens_per_day", r.tokens_per_day),
        ("concurrency", r.concurrency),
    ];
    if fields.iter().all(|(_, v)| v.is_none()) {
        errs.push(format!("rate_limits[{i}]"), "set at least one limit");
    }
    for (f, v) in fields {
        if v == Some(0) {
            errs.push(
                format!("rate_limits[{i}].{f}"),
                "must be at least 1 (omit it for no limit)",
            );
        }
    }
}
