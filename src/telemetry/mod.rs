//! What operators see: the access log, the Prometheus metrics and the OTLP traces.

pub mod handoff;
pub mod log;
pub mod metrics;
pub mod trace;
