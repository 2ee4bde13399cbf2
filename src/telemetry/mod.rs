//! Logs (and, later, metrics and traces): what operators see.

pub mod log;
