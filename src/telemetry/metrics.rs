//! Every Prometheus metric aigw exports, declared once. Labels only ever carry names from
//! the config (policies, models, owners), so their number is bounded by the config.

use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

pub struct Metrics {
    registry: Registry,
    /// `aigw_inflight_requests`: requests between `request_filter` and the end of logging.
    pub inflight: IntGauge,
    /// `aigw_config_reloads_total{result=ok|error}`.
    pub config_reloads: IntCounterVec,
    /// `aigw_ratelimit_rejections_total{policy}`: 429s, by the policy that refused.
    pub ratelimit_rejections: IntCounterVec,
    /// `aigw_ratelimit_store_errors_total`: checks the store could not answer (the
    /// request was admitted unchecked).
    pub ratelimit_store_errors: IntCounter,
    /// `aigw_ratelimit_concurrency_in_use{policy}`: concurrency slots this instance holds.
    pub concurrency_in_use: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        // The names and labels are constants; a failure here is a programming error that
        // every test would catch at once.
        let m = Self {
            inflight: IntGauge::new("aigw_inflight_requests", "Requests in flight").expect("metric"),
            config_reloads: IntCounterVec::new(
                Opts::new("aigw_config_reloads_total", "Config reloads by result"),
                &["result"],
            )
            .expect("metric"),
            ratelimit_rejections: IntCounterVec::new(
                Opts::new(
                    "aigw_ratelimit_rejections_total",
                    "Requests refused with 429 by a rate limit policy",
                ),
                &["policy"],
            )
            .expect("metric"),
            ratelimit_store_errors: IntCounter::new(
                "aigw_ratelimit_store_errors_total",
                "Rate limit checks the store could not answer; the request was admitted",
            )
            .expect("metric"),
            concurrency_in_use: IntGaugeVec::new(
                Opts::new(
                    "aigw_ratelimit_concurrency_in_use",
                    "Concurrency slots held by this instance",
                ),
                &["policy"],
            )
            .expect("metric"),
            registry,
        };
        let collectors: [Box<dyn prometheus::core::Collector>; 5] = [
            Box::new(m.inflight.clone()),
            Box::new(m.config_reloads.clone()),
            Box::new(m.ratelimit_rejections.clone()),
            Box::new(m.ratelimit_store_errors.clone()),
            Box::new(m.concurrency_in_use.clone()),
        ];
        for c in collectors {
            m.registry.register(c).expect("metric names are unique");
        }
        m
    }

    /// The text exposition format, for `GET /metrics`.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4096);
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
