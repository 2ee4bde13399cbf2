//! Cooldowns: a target that failed is skipped by multi-target routes for a while. Kept in
//! the process state, keyed by the concrete model's name, so they survive config reloads.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::RwLock;
use std::time::{Duration, Instant, SystemTime};

/// A provider's `Retry-After` is honoured up to this long, so one bad header cannot take
/// a target out of rotation for days.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

#[derive(Default)]
pub struct Cooldowns {
    until: RwLock<HashMap<String, Instant>>,
    /// Entries in `until`, read without the lock on the hot path (usually zero).
    len: AtomicUsize,
}

impl Cooldowns {
    /// When `target` comes back, if it is cooling down at `now`.
    pub fn until(&self, target: &str, now: Instant) -> Option<Instant> {
        if self.len.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let map = self.until.read().unwrap_or_else(|p| p.into_inner());
        map.get(target).copied().filter(|t| *t > now)
    }

    pub fn cool(&self, target: &str, for_: Duration, now: Instant) {
        let mut map = self.until.write().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, t| *t > now);
        let until = now + for_;
        let e = map.entry(target.to_owned()).or_insert(until);
        *e = (*e).max(until);
        self.len.store(map.len(), Ordering::Relaxed);
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

    #[test]
    fn cooldown_expires_with_an_injected_clock() {
        let c = Cooldowns::default();
        let t0 = Instant::now();
        assert!(c.until("a", t0).is_none());
        c.cool("a", Duration::from_secs(30), t0);
        assert_eq!(
            c.until("a", t0 + Duration::from_secs(10)),
            Some(t0 + Duration::from_secs(30))
        );
        assert!(c.until("a", t0 + Duration::from_secs(31)).is_none());
        assert!(c.until("b", t0).is_none());
        // A shorter cooldown never shortens a longer one.
        c.cool("a", Duration::from_secs(5), t0);
        assert_eq!(c.until("a", t0), Some(t0 + Duration::from_secs(30)));
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
