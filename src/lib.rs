//! aigw: a self-hosted AI gateway on Cloudflare's Pingora.
//!
//! The life of a request is in `proxy/mod.rs`; each concern lives in its own module.

pub mod admin;
pub mod api;
pub mod auth;
pub mod budget;
pub mod cache;
pub mod config;
pub mod error;
pub mod files;
pub mod guard;
pub mod guard_service;
pub mod limit;
pub mod mcp;
pub mod metrics;
pub mod mock;
pub mod ops;
pub mod outbound;
pub mod provider;
pub mod proxy;
pub mod raw;
pub mod redis_pool;
pub mod route;
pub mod server;
pub mod state;
pub mod store;
pub mod stream;
pub mod telemetry;
pub mod tls;
pub mod upstream;
pub mod usage;
