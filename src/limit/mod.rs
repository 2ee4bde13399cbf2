//! Rate limits: a policy from `rate_limits` bound to a scope (the owner of a caller key,
//! or a model alias) becomes a [`Binding`] of rules at config compile time. Before a
//! request goes upstream, [`Limiter::admit`] checks every rule of the caller's and the
//! model's binding in one atomic step; after the response, [`Limiter::charge`] charges
//! the real token usage; concurrency slots are released when the request context drops,
//! which Pingora does on every exit path.
//!
//! The state lives in a [`LimitStore`]: in process ([`local::LocalStore`], atomics, no
//! lock on the hot path) or shared by every instance in Redis ([`redis::RedisStore`],
//! capacity leased in blocks, one Lua script per lease). The arithmetic is GCRA ([`gcra`]).

pub mod gcra;
pub mod local;
pub mod redis;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::http::ResponseHeader;

use crate::error::{GwError, RateLimited};
use crate::metrics::Metrics;
use crate::raw;
pub use gcra::{Rate, Verdict};

/// What a rule counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Requests,
    Tokens,
    /// Requests in flight; `rate.limit` is the number of slots.
    Concurrency,
}

impl Kind {
    /// Label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Requests => "requests",
            Kind::Tokens => "tokens",
            Kind::Concurrency => "concurrency",
        }
    }
}

#[derive(Debug)]
pub struct Rule {
    pub kind: Kind,
    pub rate: Rate,
    /// Names the state in a shared store: `aigw:rl:<policy>:<rule>:<scope>`.
    pub key: String,
    /// The state in the local store. Every snapshot that binds the same key gets the same
    /// cell, so a policy that keeps its name keeps its counters across reloads.
    pub cell: Arc<AtomicU64>,
}

/// One policy applied in one scope.
#[derive(Debug)]
pub struct Binding {
    pub policy: String,
    pub rules: Vec<Rule>,
}

impl Binding {
    fn has(&self, kind: Kind) -> bool {
        self.rules.iter().any(|r| r.kind == kind)
    }
}

/// The local state of every bound rule, by key. Only config compilation and the first
/// request of a JWT owner take the lock; requests reach their cells through the compiled
/// snapshot or [`Cells::bind_owner`]'s cache.
#[derive(Debug)]
pub struct Cells {
    cells: Mutex<HashMap<String, Arc<AtomicU64>>>,
    /// Bindings made per request (JWT owners, known only from their tokens), by policy
    /// and scope. They outlive a reload, and keep their cells from [`Cells::prune`], while
    /// the owner was seen within the longest window a rule counts (a day), up to
    /// [`MAX_OWNERS`] owners.
    owners: moka::sync::Cache<(String, String), Arc<Binding>>,
}

/// JWT owners whose bindings (and so their local counters) are kept at once.
pub const MAX_OWNERS: u64 = 50_000;

const SECOND: u64 = 1_000_000;

impl Default for Cells {
    fn default() -> Self {
        Self {
            cells: Mutex::default(),
            owners: moka::sync::Cache::builder()
                .max_capacity(MAX_OWNERS)
                .time_to_idle(Duration::from_secs(86_400 + 3600))
                .build(),
        }
    }
}

/// A policy's rules: what each counts, its name in a key, its limit and its window.
fn specs(policy: &raw::RateLimit) -> [(Kind, &'static str, Option<u64>, u64); 7] {
    use Kind::*;
    [
        (Requests, "rps", policy.requests_per_second, SECOND),
        (Requests, "rpm", policy.requests_per_minute, 60 * SECOND),
        (Requests, "rph", policy.requests_per_hour, 3600 * SECOND),
        (Requests, "rpd", policy.requests_per_day, 86_400 * SECOND),
        (Tokens, "tpm", policy.tokens_per_minute, 60 * SECOND),
        (Tokens, "tpd", policy.tokens_per_day, 86_400 * SECOND),
        (Concurrency, "slots", policy.concurrency, 0),
    ]
}

impl Cells {
    /// Binds `policy` to `scope` (like `owner=team-a` or `model=gpt-4o`).
    pub fn bind(&self, policy: &raw::RateLimit, scope: &str) -> Arc<Binding> {
        let mut cells = self.cells.lock().unwrap_or_else(|p| p.into_inner());
        let rules = specs(policy)
            .into_iter()
            .filter_map(|(kind, suffix, limit, window_us)| {
                let limit = limit.filter(|l| *l > 0)?;
                let key = format!("aigw:rl:{}:{suffix}:{scope}", policy.name);
                let cell = cells.entry(key.clone()).or_default().clone();
                Some(Rule {
                    kind,
                    rate: Rate { limit, window_us },
                    key,
                    cell,
                })
            })
            .collect();
        Arc::new(Binding {
            policy: policy.name.clone(),
            rules,
        })
    }

    /// [`Cells::bind`] for an owner known only at request time, made once and kept while
    /// the owner is active; rebound when a reload changed the policy's limits.
    pub fn bind_owner(&self, policy: &raw::RateLimit, owner: &str) -> Arc<Binding> {
        let id = (policy.name.clone(), owner.to_owned());
        if let Some(b) = self.owners.get(&id).filter(|b| b.counts_as(policy)) {
            return b;
        }
        let b = self.bind(policy, &format!("owner={owner}"));
        self.owners.insert(id, b.clone());
        b
    }

    /// Forgets the state no snapshot refers to any more (a policy removed or renamed).
    pub fn prune(&self) {
        let mut cells = self.cells.lock().unwrap_or_else(|p| p.into_inner());
        cells.retain(|_, c| Arc::strong_count(c) > 1);
    }
}

impl Binding {
    /// Whether this binding counts what `policy` says, limit for limit.
    fn counts_as(&self, policy: &raw::RateLimit) -> bool {
        let mut rules = self.rules.iter();
        specs(policy)
            .into_iter()
            .filter_map(|(kind, _, limit, window_us)| Some((kind, limit.filter(|l| *l > 0)?, window_us)))
            .all(|(kind, limit, window_us)| {
                rules
                    .next()
                    .is_some_and(|r| r.kind == kind && r.rate.limit == limit && r.rate.window_us == window_us)
            })
            && rules.next().is_none()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(pub String);

/// Where limit state lives. Every method works on a request's rules together.
#[async_trait]
pub trait LimitStore: Send + Sync {
    /// All or nothing: when every rule allows the request (request rules have room for
    /// one more, token rules have tokens left, concurrency rules a free slot), counts it
    /// on the request rules and takes a slot on the concurrency rules;
    /// otherwise changes nothing. One verdict per rule, in order.
    async fn acquire(&self, rules: &[&Rule]) -> Result<Vec<Verdict>, StoreError>;

    /// The request is over: charges `units` tokens (0: none) to the token rules among
    /// `rules` and, with `slots`, frees its slots on the concurrency rules among them. One
    /// round trip for a shared store.
    async fn finish(&self, rules: &[&Rule], units: u64, slots: bool) -> Result<(), StoreError>;

    /// Frees the request's slots on the concurrency rules among `rules` when the
    /// request ended without [`LimitStore::finish`]. Runs from a destructor, so it must
    /// not block: remote work goes to a task.
    fn release(&self, rules: &[&Rule]);

    /// Periodic upkeep, about once a second.
    async fn maintain(&self) {}

    /// The process stops: give back what it holds of shared state.
    async fn close(&self) {}
}

/// Applies the caller's and the model's policies with one store.
pub struct Limiter {
    store: Arc<dyn LimitStore>,
    metrics: Arc<Metrics>,
    /// When the next store error may be logged (ms since `started`): once per interval.
    next_warn_ms: AtomicU64,
    started: Instant,
}

/// How often a failing store is reported in the log.
const WARN_INTERVAL: Duration = Duration::from_secs(10);

impl Limiter {
    pub fn new(store: Arc<dyn LimitStore>, metrics: Arc<Metrics>) -> Self {
        Self {
            store,
            metrics,
            next_warn_ms: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    /// Checks `bindings` (the caller's, the model's) together. `Ok(None)` when no policy
    /// applies; `Ok(Some)` holds the verdicts for the response headers and the slots.
    pub async fn admit(&self, bindings: &[&Arc<Binding>]) -> Result<Option<Admitted>, GwError> {
        if bindings.is_empty() {
            return Ok(None);
        }
        let rules: Vec<&Rule> = bindings.iter().flat_map(|b| b.rules.iter()).collect();
        let verdicts = match self.store.acquire(&rules).await {
            Ok(v) => v,
            Err(e) => {
                // Availability over enforcement: an unreachable store never takes the
                // gateway down with it.
                self.store_failed(&e);
                return Ok(Some(Admitted {
                    bindings: bindings.iter().map(|b| Arc::clone(b)).collect(),
                    verdicts: Vec::new(),
                    slots: None,
                }));
            }
        };
        let mut at = 0;
        for b in bindings {
            let end = at + b.rules.len();
            if let Some(i) = (at..end).find(|i| !verdicts[*i].allowed) {
                self.metrics
                    .ratelimit_rejections
                    .with_label_values(&[b.policy.as_str()])
                    .inc();
                return Err(rejection(b, &rules, &verdicts, i));
            }
            at = end;
        }
        let holds: Vec<Arc<Binding>> = bindings
            .iter()
            .filter(|b| b.has(Kind::Concurrency))
            .map(|b| Arc::clone(b))
            .collect();
        let lease = (!holds.is_empty()).then(|| {
            for b in &holds {
                self.metrics
                    .concurrency_in_use
                    .with_label_values(&[b.policy.as_str()])
                    .inc();
            }
            Lease {
                released: false,
                bindings: holds,
                store: self.store.clone(),
                metrics: self.metrics.clone(),
            }
        });
        Ok(Some(Admitted {
            bindings: bindings.iter().map(|b| Arc::clone(b)).collect(),
            verdicts,
            slots: lease,
        }))
    }

    /// The request is over: charges the tokens it really used (0 when it failed upstream
    /// or reported none) and gives its concurrency slots back, together.
    pub async fn finish(&self, admitted: &mut Admitted, tokens: u64) {
        let charges = tokens > 0 && admitted.bindings.iter().any(|b| b.has(Kind::Tokens));
        let lease = admitted.slots.as_mut().filter(|l| !l.released);
        if !charges && lease.is_none() {
            return;
        }
        let rules: Vec<&Rule> = admitted.bindings.iter().flat_map(|b| b.rules.iter()).collect();
        let slots = lease.is_some();
        let units = if charges { tokens } else { 0 };
        // Released even when the store fails: the shared store then frees them in a task.
        if let Some(l) = lease {
            l.released = true;
        }
        if let Err(e) = self.store.finish(&rules, units, slots).await {
            self.store_failed(&e);
        }
    }

    /// Charges tokens to the token rules while the request goes on (a realtime session's
    /// responses, as each reports its usage); its concurrency slots stay held.
    pub async fn charge(&self, admitted: &Admitted, tokens: u64) {
        if tokens == 0 || !admitted.bindings.iter().any(|b| b.has(Kind::Tokens)) {
            return;
        }
        let rules: Vec<&Rule> = admitted.bindings.iter().flat_map(|b| b.rules.iter()).collect();
        if let Err(e) = self.store.finish(&rules, tokens, false).await {
            self.store_failed(&e);
        }
    }

    pub async fn maintain(&self) {
        self.store.maintain().await;
    }

    pub async fn close(&self) {
        self.store.close().await;
    }

    fn store_failed(&self, e: &StoreError) {
        self.metrics.ratelimit_store_errors.inc();
        let now = self.started.elapsed().as_millis() as u64;
        let next = self.next_warn_ms.load(Ordering::Relaxed);
        let later = now + WARN_INTERVAL.as_millis() as u64;
        if now >= next
            && self
                .next_warn_ms
                .compare_exchange(next, later, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(error = %e, "rate limit store unreachable: admitting requests unchecked (counted in aigw_ratelimit_store_errors_total)");
        }
    }
}

fn rejection(b: &Binding, rules: &[&Rule], verdicts: &[Verdict], failed: usize) -> GwError {
    let v = verdicts[failed];
    let kind = rules[failed].kind;
    let what = match kind {
        Kind::Requests => "requests",
        Kind::Tokens => "tokens",
        Kind::Concurrency => "concurrent requests",
    };
    let message = match kind {
        Kind::Concurrency => format!(
            "Rate limit exceeded: policy '{}' allows {} concurrent requests. Retry when one finishes.",
            b.policy, v.limit
        ),
        _ => format!(
            "Rate limit exceeded: policy '{}' allows {} {what} per {}. Retry after {}.",
            b.policy,
            v.limit,
            per(rules[failed].rate.window_us),
            duration(v.retry_after_us)
        ),
    };
    // Retry-After is whole seconds, rounded up: the earliest the refused rule (and any
    // other refusing rule) lets a request through.
    let wait_us = rules
        .iter()
        .zip(verdicts)
        .filter(|(_, v)| !v.allowed)
        .map(|(_, v)| v.retry_after_us)
        .max()
        .unwrap_or(SECOND);
    GwError::RateLimited(Box::new(RateLimited {
        message,
        openai_type: if kind == Kind::Tokens { "tokens" } else { "requests" },
        retry_after_s: wait_us.div_ceil(SECOND).max(1),
        headers: RateHeaders::tightest(rules, verdicts).pairs(),
    }))
}

fn per(window_us: u64) -> &'static str {
    match window_us / SECOND {
        1 => "second",
        60 => "minute",
        3600 => "hour",
        _ => "day",
    }
}

/// A request that passed its limits: verdicts for the response headers, the bindings to
/// charge tokens to, and the concurrency slots it holds until dropped.
pub struct Admitted {
    bindings: Vec<Arc<Binding>>,
    /// Empty when the store could not be asked.
    verdicts: Vec<Verdict>,
    /// The concurrency slots held, if any.
    slots: Option<Lease>,
}

impl Admitted {
    /// What each rule had used of its limit when this request passed (this request
    /// counted), by what it counts: 0 to 1. Empty when the store could not be asked.
    pub fn used(&self) -> Vec<(Kind, f64)> {
        let rules = self.bindings.iter().flat_map(|b| b.rules.iter());
        rules
            .zip(&self.verdicts)
            .filter(|(_, v)| v.limit > 0)
            .map(|(r, v)| (r.kind, 1.0 - v.remaining.min(v.limit) as f64 / v.limit as f64))
            .collect()
    }

    pub fn headers(&self) -> RateHeaders {
        let rules: Vec<&Rule> = self.bindings.iter().flat_map(|b| b.rules.iter()).collect();
        RateHeaders::tightest(&rules, &self.verdicts)
    }
}

/// Concurrency slots, given back by [`Limiter::finish`] in the logging phase or else on
/// drop, so every exit path (success, error, a caller that hangs up mid-stream, a
/// timeout, failover) gives them back exactly once.
struct Lease {
    /// Given back by [`Limiter::finish`] already; the drop only updates the gauge.
    released: bool,
    bindings: Vec<Arc<Binding>>,
    store: Arc<dyn LimitStore>,
    metrics: Arc<Metrics>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.released {
            let rules: Vec<&Rule> = self
                .bindings
                .iter()
                .flat_map(|b| b.rules.iter())
                .filter(|r| r.kind == Kind::Concurrency)
                .collect();
            self.store.release(&rules);
        }
        for b in &self.bindings {
            self.metrics
                .concurrency_in_use
                .with_label_values(&[b.policy.as_str()])
                .dec();
        }
    }
}

/// The `x-ratelimit-*` headers (OpenAI's names) of the tightest request rule and the
/// tightest token rule: the one with the least left, then the smallest limit.
#[derive(Debug, Clone, Default)]
pub struct RateHeaders {
    pub requests: Option<Verdict>,
    pub tokens: Option<Verdict>,
}

impl RateHeaders {
    fn tightest(rules: &[&Rule], verdicts: &[Verdict]) -> Self {
        let pick = |kind| {
            rules
                .iter()
                .zip(verdicts)
                .filter(|(r, _)| r.kind == kind)
                .map(|(_, v)| *v)
                .min_by_key(|v| (v.remaining, v.limit))
        };
        Self {
            requests: pick(Kind::Requests),
            tokens: pick(Kind::Tokens),
        }
    }

    pub fn apply(&self, resp: &mut ResponseHeader) {
        for (name, value) in self.pairs() {
            // Header names and values are ASCII built here; inserting cannot fail.
            let _ = resp.insert_header(name, value);
        }
    }

    /// The headers, names and values.
    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        const NAMES: [[&str; 3]; 2] = [
            [
                "x-ratelimit-limit-requests",
                "x-ratelimit-remaining-requests",
                "x-ratelimit-reset-requests",
            ],
            [
                "x-ratelimit-limit-tokens",
                "x-ratelimit-remaining-tokens",
                "x-ratelimit-reset-tokens",
            ],
        ];
        for (names, v) in NAMES.iter().zip([self.requests, self.tokens]) {
            let Some(v) = v else { continue };
            out.push((names[0], v.limit.to_string()));
            out.push((names[1], v.remaining.to_string()));
            out.push((names[2], duration(v.reset_us)));
        }
        out
    }
}

/// A duration the way OpenAI writes `x-ratelimit-reset-*`: `20ms`, `1s`, `6m0s`, `1h2m3s`.
pub fn duration(us: u64) -> String {
    let ms = us.div_ceil(1000);
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (h, rest) = (ms / 3_600_000, ms % 3_600_000);
    let (m, rest) = (rest / 60_000, rest % 60_000);
    let secs = if rest % 1000 == 0 {
        format!("{}s", rest / 1000)
    } else {
        let s = format!("{:.3}", rest as f64 / 1000.0);
        format!("{}s", s.trim_end_matches('0'))
    };
    match (h, m) {
        (0, 0) => secs,
        (0, m) => format!("{m}m{secs}"),
        (h, m) => format!("{h}h{m}m{secs}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_openai() {
        assert_eq!(duration(0), "0ms");
        assert_eq!(duration(19_200), "20ms");
        assert_eq!(duration(SECOND), "1s");
        assert_eq!(duration(6_500_000), "6.5s");
        assert_eq!(duration(360 * SECOND), "6m0s");
        assert_eq!(duration(3723 * SECOND), "1h2m3s");
    }

    fn policy(name: &str) -> raw::RateLimit {
        raw::RateLimit {
            name: name.into(),
            requests_per_second: None,
            requests_per_minute: Some(10),
            requests_per_hour: None,
            requests_per_day: None,
            tokens_per_minute: Some(1000),
            tokens_per_day: None,
            concurrency: Some(2),
        }
    }

    #[test]
    fn a_policy_that_keeps_its_name_keeps_its_cells() {
        let cells = Cells::default();
        let a = cells.bind(&policy("p"), "owner=t");
        a.rules[0].cell.store(42, Ordering::Relaxed);
        let again = cells.bind(&policy("p"), "owner=t");
        assert_eq!(again.rules[0].cell.load(Ordering::Relaxed), 42);
        assert_eq!(again.rules.len(), 3);
        let other_scope = cells.bind(&policy("p"), "owner=u");
        assert_eq!(other_scope.rules[0].cell.load(Ordering::Relaxed), 0);
        drop((a, other_scope));
        cells.prune();
        assert_eq!(cells.cells.lock().unwrap().len(), 3, "only the bound cells stay");
    }

    #[test]
    fn an_owner_bound_per_request_keeps_its_cells_through_a_reload_until_its_limits_change() {
        let cells = Cells::default();
        let a = cells.bind_owner(&policy("p"), "alice");
        assert!(Arc::ptr_eq(&a, &cells.bind_owner(&policy("p"), "alice")), "made once");
        a.rules[0].cell.store(42, Ordering::Relaxed);
        drop(a);
        // A reload prunes what no snapshot holds; the owner's cells are still held.
        cells.prune();
        let b = cells.bind_owner(&policy("p"), "alice");
        assert_eq!(b.rules[0].cell.load(Ordering::Relaxed), 42);
        // The policy's limit changed: a new binding, on the same counters.
        let mut tighter = policy("p");
        tighter.requests_per_minute = Some(5);
        let c = cells.bind_owner(&tighter, "alice");
        assert!(!Arc::ptr_eq(&b, &c));
        assert_eq!(c.rules[0].rate.limit, 5);
        assert_eq!(c.rules[0].cell.load(Ordering::Relaxed), 42);
        assert_eq!(
            cells.bind_owner(&policy("p"), "bob").rules[0]
                .cell
                .load(Ordering::Relaxed),
            0
        );
    }
}
