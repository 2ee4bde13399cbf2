//! Cooldowns: a target that keeps failing is skipped by multi-target routes for a while.
//! Kept in the process state, keyed by the concrete model's name, so they survive config
//! reloads.
//!
//! One request's failure never takes a target out of rotation for everyone: a target
//! cools down only after `failures_before_cooldown` failures in a row (any answer resets
//! the count, as Envoy's `consecutive_5xx` outlier detection does). Not even a 429 with a
//! `Retry-After` cools at once: providers with token-bucket limits (Anthropic's tokens per
//! minute, Bedrock's "Too many tokens") answer one request larger than what is left of the
//! bucket with exactly that, while smaller requests still pass, so one answer cannot tell
//! a target that is down for everyone from one caller's large request. The provider's
//! `Retry-After` decides how long a target cools once the count is reached. Which
//! failures count at all is the failover decision's (`route::plan`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::RwLock;
use std::time::{Duration, Instant, SystemTime};

/// A provider's `Retry-After` is honoured up to this long, so one bad header cannot take
/// a target out of rotation for days.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

#[derive(Debug, Default, Clone, Copy)]
struct Health {
    /// Failures since the last success.
    failures: u32,
    /// The longest `Retry-After` among those failures: how long the target cools when
    /// they reach the threshold.
    said: Option<Duration>,
    /// Cooling down until then.
    until: Option<Instant>,
}

#[derive(Default)]
pub struct Cooldowns {
    map: RwLock<HashMap<String, Health>>,
    /// Entries in `map`, read without the lock on the hot path (usually zero): a success
    /// takes the write lock only when some target has a failure on record.
    len: AtomicUsize,
}

impl Cooldowns {
    /// When `target` comes back, if it is cooling down at `now`.
    pub fn until(&self, target: &str, now: Instant) -> Option<Instant> {
        if self.len.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        map.get(target).and_then(|h| h.until).filter(|t| *t > now)
    }

    /// A failure of `target`, with the provider's `Retry-After` when it sent one. The
    /// target cools once `threshold` failures came in a row: for the longest
    /// `Retry-After` among them, else for `cooldown`. Returns whether it is cooling now.
    pub fn failed(
        &self,
        target: &str,
        threshold: u32,
        cooldown: Duration,
        retry_after: Option<Duration>,
        now: Instant,
    ) -> bool {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        // Expired cooldowns of targets with no failure since are dropped on the way.
        map.retain(|_, h| h.failures > 0 || h.until.is_some_and(|t| t > now));
        let h = map.entry(target.to_owned()).or_default();
        h.failures = h.failures.saturating_add(1);
        h.said = h.said.max(retry_after);
        if h.failures >= threshold.max(1) {
            let until = now + h.said.unwrap_or(cooldown);
            h.until = Some(h.until.filter(|t| *t > now).map_or(until, |t| t.max(until)));
            // Cooling restarts the count: the next failure after it counts from one.
            h.failures = 0;
            h.said = None;
        }
        let cooling = h.until.is_some_and(|t| t > now);
        self.len.store(map.len(), Ordering::Relaxed);
        cooling
    }

    /// A success of `target`: its failure count starts again from zero.
    pub fn succeeded(&self, target: &str) {
        if self.len.load(Ordering::Relaxed) == 0 {
            return;
        }
        let has_failures = {
            let map = self.map.read().unwrap_or_else(|p| p.into_inner());
            map.get(target).is_some_and(|h| h.failures > 0)
        };
        if has_failures {
            let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
            if let Some(h) = map.get_mut(target) {
                h.failures = 0;
                h.said = None;
            }
        }
    }

    /// Failures of `target` since its last success (for tests and the status view).
    pub fn failures(&self, target: &str) -> u32 {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        map.get(target).map_or(0, |h| h.failures)
    }
}

/// `Retry-After` as seconds or an HTTP date, capped at [`MAX_RETRY_AFTER`].
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    let d = match v.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => httpdate::parse_http_date(v)
            .ok()?
            .duration_since(SystemTime::now())
            .unwrap_or_default(),
    };
    Some(d.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S30: Duration = Duration::from_secs(30);

    #[test]
    fn cooldown_expires_with_an_injected_clock() {
        let c = Cooldowns::default();
        let t0 = Instant::now();
        assert!(c.until("a", t0).is_none());
        assert!(c.failed("a", 1, S30, None, t0));
        assert_eq!(
            c.until("a", t0 + Duration::from_secs(10)),
            Some(t0 + Duration::from_secs(30))
        );
        assert!(c.until("a", t0 + Duration::from_secs(31)).is_none());
        assert!(c.until("b", t0).is_none());
        // A shorter pause never shortens a longer one.
        c.failed("a", 1, S30, Some(Duration::from_secs(5)), t0);
        assert_eq!(c.until("a", t0), Some(t0 + Duration::from_secs(30)));
    }

    #[test]
    fn only_failures_in_a_row_cool_and_a_success_resets_them() {
        let c = Cooldowns::default();
        let t0 = Instant::now();
        assert!(!c.failed("a", 3, S30, None, t0));
        assert!(!c.failed("a", 3, S30, None, t0));
        c.succeeded("a");
        assert_eq!(c.failures("a"), 0);
        assert!(!c.failed("a", 3, S30, None, t0));
        assert!(!c.failed("a", 3, S30, None, t0));
        assert!(c.until("a", t0).is_none(), "two failures in a row stay in rotation");
        assert!(c.failed("a", 3, S30, None, t0), "the third in a row cools");
        assert_eq!(c.until("a", t0), Some(t0 + S30));
    }

    #[test]
    fn a_retry_after_sets_how_long_but_never_cools_at_once() {
        let c = Cooldowns::default();
        let t0 = Instant::now();
        let secs = Duration::from_secs;
        // One answer with a Retry-After is one failure, however long it asks for.
        assert!(!c.failed("a", 3, S30, Some(secs(600)), t0));
        assert!(c.until("a", t0).is_none());
        assert!(!c.failed("a", 3, S30, None, t0));
        // The third in a row cools for the longest Retry-After of the run, not cooldown_s.
        assert!(c.failed("a", 3, S30, Some(secs(2)), t0));
        assert_eq!(c.until("a", t0), Some(t0 + secs(600)));
        // A success forgets what the last run said: the next run without one cools for
        // cooldown_s.
        c.succeeded("a");
        let t1 = t0 + secs(601);
        assert!(!c.failed("b", 2, S30, Some(secs(5)), t1));
        c.succeeded("b");
        assert!(!c.failed("b", 2, S30, None, t1));
        assert!(c.failed("b", 2, S30, None, t1));
        assert_eq!(c.until("b", t1), Some(t1 + S30));
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("999999"), Some(MAX_RETRY_AFTER));
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
        let d = parse_retry_after(&later).unwrap();
        assert!(d > Duration::from_secs(100) && d <= Duration::from_secs(120), "{d:?}");
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon"), None);
    }
}
