//! What operators see of each request: the access log and the OTLP traces (the Prometheus
//! metrics are declared in `metrics`, below every layer that counts).

pub mod handoff;
pub mod log;
pub mod trace;
