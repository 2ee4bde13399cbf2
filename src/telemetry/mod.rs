//! What operators see: the access log and the Prometheus metrics (traces come later).

pub mod log;
pub mod metrics;
