//! What operators see of each request: the access log and the OTLP traces (the Prometheus
//! metrics are declared in `metrics`, below every layer that counts). Both read one
//! [`Summary`] of the request, which the proxy builds.

pub mod handoff;
pub mod log;
mod summary;
pub mod trace;

pub use summary::Summary;
