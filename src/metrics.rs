//! Every Prometheus metric aigw exports, declared once, below every layer that counts
//! (a finished request is recorded by `proxy::Ctx::record_metrics`, from Pingora's
//! `logging` phase, which runs on every exit path, so each request is counted once). Labels only ever carry names from the config
//! (models, owners, providers, policies), owners from verified tokens of the configured
//! JWT issuers, and status codes, so their number is bounded by the config and the
//! issuers' users, never by what callers send.

use prometheus::core::Collector;
use prometheus::{
    CounterVec, Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Seconds, from a cache hit to a long generation: LLM latencies span five decades.
const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

pub struct Metrics {
    registry: Registry,
    /// `aigw_requests_total{model,owner,status}`: `model` is the alias asked for (empty
    /// when the request never named a configured one), `status` what the caller got
    /// (`0`: nothing, the caller went away first).
    pub requests: IntCounterVec,
    /// `aigw_request_duration_seconds{model}`: arrival to the last byte sent.
    pub request_duration: HistogramVec,
    /// `aigw_upstream_duration_seconds{target,provider}`: one per upstream attempt.
    pub upstream_duration: HistogramVec,
    /// `aigw_time_to_first_token_seconds{model}`: arrival to the first streamed event.
    pub time_to_first_token: HistogramVec,
    /// `aigw_tokens_total{model,owner,type=input|output}`: by the model that answered.
    pub tokens: IntCounterVec,
    /// `aigw_tokens_detail_total{model,owner,type=cache_read|cache_write|reasoning}`: parts
    /// of `aigw_tokens_total`'s input (cache) and output (reasoning), never added to it.
    pub tokens_detail: IntCounterVec,
    /// `aigw_media_total{model,owner,unit=image|audio_second}`: what image and audio
    /// endpoints produced or read, as the provider reported it (priced by `per_image`,
    /// `per_audio_minute`).
    pub media: CounterVec,
    /// `aigw_cost_usd_total{model,owner}`: tokens priced with the model's `pricing`.
    pub cost: CounterVec,
    /// `aigw_upstream_attempts_total{target,provider,outcome}`.
    pub upstream_attempts: IntCounterVec,
    /// `aigw_inflight_requests`: requests between `request_filter` and the end of logging.
    pub inflight: IntGauge,
    /// `aigw_config_reloads_total{result=ok|error}`: SIGHUP reloads and config store
    /// changes.
    pub config_reloads: IntCounterVec,
    /// `aigw_config_version`: the etcd revision the served resources were read at (config
    /// store), else how many times the file was loaded.
    pub config_version: IntGauge,
    /// `aigw_config_last_reload_timestamp_seconds`: when the served snapshot was swapped in.
    pub config_last_reload: IntGauge,
    /// `aigw_tls_certificate_expiry_timestamp_seconds{listen,name}`: when each certificate
    /// of each TLS listener expires (its first name), as served now.
    pub tls_expiry: IntGaugeVec,
    /// `aigw_config_store_reconnects_total`: times the etcd watch was lost and re-established.
    pub config_store_reconnects: IntCounter,
    /// `aigw_ratelimit_rejections_total{policy}`: 429s, by the policy that refused.
    pub ratelimit_rejections: IntCounterVec,
    /// `aigw_ratelimit_store_errors_total`: checks the store could not answer (the
    /// request was admitted unchecked).
    pub ratelimit_store_errors: IntCounter,
    /// `aigw_ratelimit_concurrency_in_use{policy}`: concurrency slots this instance holds.
    pub concurrency_in_use: IntGaugeVec,
    /// `aigw_guardrail_hits_total{guardrail,action}`: requests a guardrail matched, once
    /// per request and guardrail (both stages together).
    pub guardrail_hits: IntCounterVec,
    /// `aigw_cache_total{model,result=hit|miss|bypass}`: requests to models with a cache.
    pub cache: IntCounterVec,
    /// `aigw_cache_errors_total`: cache lookups and stores the backend did not answer
    /// (a failed lookup is served as a miss).
    pub cache_errors: IntCounter,
    /// `aigw_trace_spans_dropped_total{reason=queue_full|export_failed}`: spans that never
    /// reached the collector.
    pub trace_spans_dropped: IntCounterVec,
    /// `aigw_budget_store_errors_total`: budget checks and charges Redis did not answer
    /// (the request was admitted, or its cost not counted).
    pub budget_store_errors: IntCounter,
    /// `aigw_access_log_lines_dropped_total`: access lines not written because stdout fell
    /// too far behind.
    pub access_log_dropped: IntCounter,
    /// `aigw_usage_estimated_total{model}`: answers charged an estimate: streams cut
    /// before the provider's final usage (the caller hung up, the provider broke off), and
    /// reports with a count that cannot be read (`usage::Count`).
    pub usage_estimated: IntCounterVec,
    /// `aigw_jwt_rejections_total{issuer,reason}`: bearer tokens refused (`issuer` empty
    /// when no configured issuer claims the token).
    pub jwt_rejections: IntCounterVec,
    /// `aigw_jwks_fetches_total{issuer,outcome=ok|error}`: remote key set fetches.
    pub jwks_fetches: IntCounterVec,
    /// `aigw_route_targets{model}`: targets of each multi-target alias, and
    /// `aigw_route_targets_cooling{model}` those cooling down, as of the scrape.
    pub route_targets: IntGaugeVec,
    pub route_targets_cooling: IntGaugeVec,
    /// `aigw_budget_used_ratio{budget,owner}`: spend over limit in the current period, as
    /// of the owner's last request.
    pub budget_used: GaugeVec,
    /// `aigw_target_quota_used_ratio{target,kind}`: the share of a target's provider
    /// quota (`requests`, `tokens` per minute) used, as of its last admission here.
    pub target_quota_used: GaugeVec,
    /// `aigw_mcp_tool_calls_total{server,tool,outcome}`: MCP tool calls. `tool` is a name
    /// the server listed (at most 1,000 per server, none over 128 bytes) or `other`; an
    /// unknown or forbidden tool counts with empty server and tool (`unknown_tool`). So
    /// callers cannot add series (`mcp::upstream::Server::tool_label`).
    pub mcp_tool_calls: IntCounterVec,
    /// `aigw_mcp_tool_call_duration_seconds{server}`.
    pub mcp_tool_duration: HistogramVec,
    /// `aigw_guardrail_service_calls_total{guardrail,outcome}`: calls to guardrail
    /// services; `outcome` is `allow`, `hit`, `error`, `timeout` or `cached` (a verdict
    /// reused, no call made). `guardrail` names a configured guardrail only.
    pub guardrail_service_calls: IntCounterVec,
    /// `aigw_guardrail_service_duration_seconds{guardrail}`: calls made, however they ended.
    pub guardrail_service_duration: HistogramVec,
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
}

fn histogram(name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    HistogramVec::new(HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()), labels).expect("valid metric")
}

impl Metrics {
    pub fn new() -> Self {
        // Names and labels are constants: a failure here is a programming error that every
        // test would catch at once.
        let m = Self {
            registry: Registry::new(),
            requests: counter(
                "aigw_requests_total",
                "Requests by model alias, owner and status",
                &["model", "owner", "status"],
            ),
            request_duration: histogram(
                "aigw_request_duration_seconds",
                "Request duration, arrival to last byte",
                &["model"],
            ),
            upstream_duration: histogram(
                "aigw_upstream_duration_seconds",
                "Upstream attempt duration",
                &["target", "provider"],
            ),
            time_to_first_token: histogram(
                "aigw_time_to_first_token_seconds",
                "Streams: arrival to the first event sent to the caller",
                &["model"],
            ),
            tokens: counter(
                "aigw_tokens_total",
                "Tokens reported by providers",
                &["model", "owner", "type"],
            ),
            tokens_detail: counter(
                "aigw_tokens_detail_total",
                "Of the tokens in aigw_tokens_total: cache reads and writes (input), reasoning (output)",
                &["model", "owner", "type"],
            ),
            media: CounterVec::new(
                Opts::new(
                    "aigw_media_total",
                    "Images generated and audio seconds read, as providers reported them",
                ),
                &["model", "owner", "unit"],
            )
            .expect("valid metric"),
            cost: CounterVec::new(
                Opts::new("aigw_cost_usd_total", "Cost in USD from model pricing"),
                &["model", "owner"],
            )
            .expect("valid metric"),
            upstream_attempts: counter(
                "aigw_upstream_attempts_total",
                "Upstream attempts by outcome",
                &["target", "provider", "outcome"],
            ),
            inflight: IntGauge::new("aigw_inflight_requests", "Requests in flight").expect("valid metric"),
            config_reloads: counter("aigw_config_reloads_total", "Config reloads by result", &["result"]),
            config_version: IntGauge::new(
                "aigw_config_version",
                "etcd revision of the served resources (config store), else the count of file loads",
            )
            .expect("valid metric"),
            config_last_reload: IntGauge::new(
                "aigw_config_last_reload_timestamp_seconds",
                "Unix time the served config was swapped in",
            )
            .expect("valid metric"),
            config_store_reconnects: IntCounter::new(
                "aigw_config_store_reconnects_total",
                "Times the config store watch was lost and re-established",
            )
            .expect("valid metric"),
            ratelimit_rejections: counter(
                "aigw_ratelimit_rejections_total",
                "Requests refused with 429 by a rate limit policy",
                &["policy"],
            ),
            ratelimit_store_errors: IntCounter::new(
                "aigw_ratelimit_store_errors_total",
                "Rate limit checks the store could not answer; the request was admitted",
            )
            .expect("valid metric"),
            tls_expiry: IntGaugeVec::new(
                Opts::new(
                    "aigw_tls_certificate_expiry_timestamp_seconds",
                    "When each served TLS certificate expires (seconds since the epoch)",
                ),
                &["listen", "name"],
            )
            .expect("valid metric"),
            concurrency_in_use: IntGaugeVec::new(
                Opts::new(
                    "aigw_ratelimit_concurrency_in_use",
                    "Concurrency slots held by this instance",
                ),
                &["policy"],
            )
            .expect("valid metric"),
            guardrail_hits: counter(
                "aigw_guardrail_hits_total",
                "Requests a guardrail matched, by guardrail and action",
                &["guardrail", "action"],
            ),
            cache: counter(
                "aigw_cache_total",
                "Requests to models with a cache policy, by result",
                &["model", "result"],
            ),
            cache_errors: IntCounter::new(
                "aigw_cache_errors_total",
                "Cache lookups and stores the backend did not answer",
            )
            .expect("valid metric"),
            trace_spans_dropped: counter(
                "aigw_trace_spans_dropped_total",
                "Spans that never reached the OTLP collector",
                &["reason"],
            ),
            budget_store_errors: IntCounter::new(
                "aigw_budget_store_errors_total",
                "Budget checks and charges the store did not answer",
            )
            .expect("valid metric"),
            access_log_dropped: IntCounter::new(
                "aigw_access_log_lines_dropped_total",
                "Access log lines dropped because stdout fell too far behind",
            )
            .expect("valid metric"),
            usage_estimated: counter(
                "aigw_usage_estimated_total",
                "Answers charged an estimated usage: cut before the provider's final count, or with a count that cannot be read",
                &["model"],
            ),
            jwt_rejections: counter(
                "aigw_jwt_rejections_total",
                "Bearer JWTs refused, by issuer and reason",
                &["issuer", "reason"],
            ),
            jwks_fetches: counter(
                "aigw_jwks_fetches_total",
                "Fetches of remote JWT key sets, by issuer and outcome",
                &["issuer", "outcome"],
            ),
            route_targets: IntGaugeVec::new(
                Opts::new("aigw_route_targets", "Targets of each multi-target alias"),
                &["model"],
            )
            .expect("valid metric"),
            route_targets_cooling: IntGaugeVec::new(
                Opts::new(
                    "aigw_route_targets_cooling",
                    "Targets of each multi-target alias cooling down at the scrape",
                ),
                &["model"],
            )
            .expect("valid metric"),
            budget_used: GaugeVec::new(
                Opts::new(
                    "aigw_budget_used_ratio",
                    "Spend over limit of each budget and owner in the current period, as of the owner's last request",
                ),
                &["budget", "owner"],
            )
            .expect("valid metric"),
            target_quota_used: GaugeVec::new(
                Opts::new(
                    "aigw_target_quota_used_ratio",
                    "Share of each target's provider quota used, as of its last admission",
                ),
                &["target", "kind"],
            )
            .expect("valid metric"),
            mcp_tool_calls: counter(
                "aigw_mcp_tool_calls_total",
                "MCP tool calls by server, tool and outcome",
                &["server", "tool", "outcome"],
            ),
            mcp_tool_duration: histogram(
                "aigw_mcp_tool_call_duration_seconds",
                "MCP tool call duration, through the gateway",
                &["server"],
            ),
            guardrail_service_calls: counter(
                "aigw_guardrail_service_calls_total",
                "Calls to guardrail services, by guardrail and outcome",
                &["guardrail", "outcome"],
            ),
            guardrail_service_duration: histogram(
                "aigw_guardrail_service_duration_seconds",
                "Guardrail service call duration",
                &["guardrail"],
            ),
        };
        let collectors: Vec<Box<dyn Collector>> = vec![
            Box::new(m.requests.clone()),
            Box::new(m.request_duration.clone()),
            Box::new(m.upstream_duration.clone()),
            Box::new(m.time_to_first_token.clone()),
            Box::new(m.tokens.clone()),
            Box::new(m.tokens_detail.clone()),
            Box::new(m.media.clone()),
            Box::new(m.cost.clone()),
            Box::new(m.upstream_attempts.clone()),
            Box::new(m.inflight.clone()),
            Box::new(m.config_reloads.clone()),
            Box::new(m.config_version.clone()),
            Box::new(m.tls_expiry.clone()),
            Box::new(m.config_last_reload.clone()),
            Box::new(m.config_store_reconnects.clone()),
            Box::new(m.ratelimit_rejections.clone()),
            Box::new(m.ratelimit_store_errors.clone()),
            Box::new(m.concurrency_in_use.clone()),
            Box::new(m.guardrail_hits.clone()),
            Box::new(m.cache.clone()),
            Box::new(m.cache_errors.clone()),
            Box::new(m.trace_spans_dropped.clone()),
            Box::new(m.budget_store_errors.clone()),
            Box::new(m.access_log_dropped.clone()),
            Box::new(m.usage_estimated.clone()),
            Box::new(m.jwt_rejections.clone()),
            Box::new(m.jwks_fetches.clone()),
            Box::new(m.route_targets.clone()),
            Box::new(m.route_targets_cooling.clone()),
            Box::new(m.budget_used.clone()),
            Box::new(m.target_quota_used.clone()),
            Box::new(m.mcp_tool_calls.clone()),
            Box::new(m.mcp_tool_duration.clone()),
            Box::new(m.guardrail_service_calls.clone()),
            Box::new(m.guardrail_service_duration.clone()),
        ];
        for c in collectors {
            m.registry.register(c).expect("metric names are unique");
        }
        m
    }

    /// The served certificates' expiries, replacing those of the previous snapshot.
    /// `(listen, certificate name, not after)` of each.
    pub fn set_certificates<'a>(&self, certificates: impl IntoIterator<Item = (&'a str, &'a str, i64)>) {
        self.tls_expiry.reset();
        for (listen, name, not_after) in certificates {
            self.tls_expiry.with_label_values(&[listen, name]).set(not_after);
        }
    }

    /// Each multi-target alias's targets and how many cool down, as `(alias, targets,
    /// cooling)`, replacing the last scrape's (an alias removed by a reload goes).
    pub fn set_routes<'a>(&self, routes: impl IntoIterator<Item = (&'a str, usize, usize)>) {
        self.route_targets.reset();
        self.route_targets_cooling.reset();
        for (alias, targets, cooling) in routes {
            self.route_targets.with_label_values(&[alias]).set(targets as i64);
            self.route_targets_cooling
                .with_label_values(&[alias])
                .set(cooling as i64);
        }
    }

    /// The text exposition format, for `GET /metrics`.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "could not encode metrics");
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
