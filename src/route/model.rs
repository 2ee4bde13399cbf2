//! An alias as compiled from `models`: one target, or a route over several, with the
//! model's own limits, guardrails, cache policy and pricing.

use std::sync::Arc;
use std::time::Duration;

use crate::guard::Guardrail;
use crate::limit::Binding;
use crate::provider::{ErrorClass, Target};
use crate::raw;

#[derive(Debug, Clone)]
pub struct RouteTarget {
    pub target: Target,
    pub priority: u32,
    pub weight: u32,
    /// `cost`: USD per million tokens of the route's mix (its `input_per_output`).
    pub price: Option<f64>,
    /// A canary: only these owners' requests may use it.
    pub owners: Option<Vec<String>>,
    /// A canary: only this share of requests (0-100) may use it.
    pub percent: Option<f64>,
}

#[derive(Debug)]
pub struct Routing {
    /// Next start position for `round_robin`.
    pub rr_next: std::sync::atomic::AtomicUsize,
    pub strategy: raw::Strategy,
    pub targets: Vec<RouteTarget>,
    pub retry_on: Vec<u16>,
    /// Error classes that move on to the next target (`retry_on` entries by name).
    pub retry_classes: Vec<ErrorClass>,
    pub max_attempts: u32,
    pub cooldown: Duration,
    pub failures_before_cooldown: u32,
    /// A canary's share is drawn per owner.
    pub sticky_owner: bool,
}

#[derive(Debug)]
pub enum ModelRoute {
    Single(Target),
    Multi(Routing),
}

#[derive(Debug)]
pub struct Model {
    pub name: String,
    pub route: ModelRoute,
    /// The model's `rate_limit`, counted across every caller of this alias.
    pub limits: Option<Arc<Binding>>,
    /// Applied after the caller key's own guardrails.
    pub guardrails: Vec<Arc<Guardrail>>,
    /// The model's response cache policy.
    pub cache: Option<Arc<raw::Cache>>,
    pub pricing: Option<raw::Pricing>,
}
