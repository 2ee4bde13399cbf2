//! GCRA (the generic cell rate algorithm), the arithmetic both stores share.
//!
//! Why GCRA: it needs one number of state per key (the theoretical arrival time, TAT),
//! updates in O(1) with exact integer arithmetic (no approximation, unlike a sliding
//! window counter; no memory per request, unlike a sliding log), which keeps the Redis
//! script short and the local store lock-free. Semantics: a fresh key allows `limit`
//! requests at once, then refills continuously at `limit / window`. Sustained traffic
//! never exceeds the configured rate; a full burst right after an idle period plus the
//! refill can put up to `2 * limit - 1` into one sliding window, exactly like a token
//! bucket of `limit` tokens (nginx `limit_req` with `burst`, Envoy's local rate limit).
//!
//! The local store keeps times in nanoseconds on the process's monotonic clock, so one
//! unit costs `window / limit` exactly enough even for large token limits (150 million
//! tokens per minute is 400 ns a token). The Redis script does the same arithmetic in
//! floating-point microseconds on Redis's own `TIME`. Verdicts are in microseconds.
//! Token limits use the same state as a debt counter: a request is admitted while tokens
//! are left, and its real usage is charged afterwards, possibly past the limit, which then
//! delays the next admission.

/// One rule: `limit` units per `window_us`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub limit: u64,
    pub window_us: u64,
}

impl Rate {
    pub fn window_ns(&self) -> u64 {
        self.window_us.saturating_mul(1000)
    }

    /// The emission interval: the cost of one unit, in nanoseconds.
    pub fn interval_ns(&self) -> u64 {
        (self.window_ns() / self.limit.max(1)).max(1)
    }
}

/// What a check saw, for the `x-ratelimit-*` headers and `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    pub limit: u64,
    pub remaining: u64,
    /// Until the key is fully replenished, in microseconds.
    pub reset_us: u64,
    /// Until a refused request could pass, in microseconds.
    pub retry_after_us: u64,
}

fn us(ns: u64) -> u64 {
    ns.div_ceil(1000)
}

/// Admits one request at `now` against the stored `tat` (both in ns). Returns the verdict
/// and, when allowed, the new TAT to store.
pub fn admit(rate: Rate, tat: u64, now: u64) -> (Verdict, Option<u64>) {
    let t = rate.interval_ns();
    let window = rate.window_ns();
    let tau = window.saturating_sub(t);
    let tat = tat.max(now);
    let used = tat - now;
    if used > tau {
        let v = Verdict {
            allowed: false,
            limit: rate.limit,
            remaining: 0,
            reset_us: us(used),
            retry_after_us: us(used - tau),
        };
        return (v, None);
    }
    let new_tat = tat + t;
    let used = new_tat - now;
    let v = Verdict {
        allowed: true,
        limit: rate.limit,
        remaining: (window.saturating_sub(used) / t).min(rate.limit),
        reset_us: us(used),
        retry_after_us: 0,
    };
    (v, Some(new_tat))
}

/// Whether a token budget has at least one token left at `now` (nothing is consumed).
pub fn has_left(rate: Rate, tat: u64, now: u64) -> Verdict {
    let t = rate.interval_ns();
    let window = rate.window_ns();
    let tau = window.saturating_sub(t);
    let used = tat.max(now) - now;
    let allowed = used <= tau;
    let retry_after_us = if allowed { 0 } else { us(used - tau) };
    Verdict {
        allowed,
        limit: rate.limit,
        remaining: (window.saturating_sub(used) / t).min(rate.limit),
        reset_us: us(used),
        retry_after_us,
    }
}

/// The TAT after charging `units` at `now`.
pub fn charge(rate: Rate, tat: u64, now: u64, units: u64) -> u64 {
    tat.max(now).saturating_add(units.saturating_mul(rate.interval_ns()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A second in microseconds (windows, verdicts) and in nanoseconds (clock, state).
    const S: u64 = 1_000_000;
    const NS: u64 = 1_000_000_000;

    #[test]
    fn admits_the_limit_then_refills_continuously() {
        let r = Rate {
            limit: 3,
            window_us: 3 * S,
        };
        let mut tat = 0;
        let now = 100 * NS;
        let mut remaining = Vec::new();
        for _ in 0..3 {
            let (v, new) = admit(r, tat, now);
            assert!(v.allowed);
            remaining.push(v.remaining);
            tat = new.unwrap();
        }
        assert_eq!(remaining, [2, 1, 0]);
        let (v, new) = admit(r, tat, now);
        assert!(!v.allowed && new.is_none());
        assert_eq!(v.retry_after_us, S, "one unit comes back after window/limit");
        // Exactly at the retry time, one passes; just before, none.
        assert!(!admit(r, tat, now + NS - 1).0.allowed);
        assert!(admit(r, tat, now + NS).0.allowed);
        // After a full window everything is back.
        assert_eq!(admit(r, tat, now + 3 * NS).0.remaining, 2);
    }

    #[test]
    fn sustained_traffic_never_exceeds_the_rate() {
        let r = Rate {
            limit: 10,
            window_us: S,
        };
        let mut tat = 0;
        let mut admitted = Vec::new();
        // A request every 10 ms for 5 s, ten times the allowed rate.
        let start = 7 * NS;
        for i in 0..500u64 {
            let now = start + i * 10_000_000;
            if let (v, Some(new)) = admit(r, tat, now) {
                assert!(v.allowed);
                tat = new;
                admitted.push(now);
            }
        }
        // The burst, then exactly one per emission interval.
        assert_eq!(admitted.len(), 10 + 49, "{admitted:?}");
        let in_window = |t: u64| admitted.iter().filter(|u| **u >= t && **u < t + NS).count();
        for t in admitted.iter().copied() {
            assert!(in_window(t) < 2 * 10, "burst + refill bound at {t}");
            if t >= start + NS {
                assert!(in_window(t) <= 10, "steady state holds the rate at {t}");
            }
        }
    }

    #[test]
    fn tokens_admit_while_left_and_go_into_debt() {
        let r = Rate {
            limit: 1000,
            window_us: 60 * S,
        };
        let now = 10 * NS;
        assert!(has_left(r, 0, now).allowed);
        let tat = charge(r, 0, now, 900);
        let v = has_left(r, tat, now);
        assert!(v.allowed);
        assert_eq!(v.remaining, 100);
        // A big answer overshoots: the next request waits until the debt is paid.
        let tat = charge(r, tat, now, 500);
        let v = has_left(r, tat, now);
        assert!(!v.allowed);
        // 400 tokens over at 1000 a minute, plus one token to spend: 24.06 s.
        assert_eq!(v.retry_after_us, 24_060_000);
        assert!(has_left(r, tat, now + 24_060_000_000).allowed);
        assert!(!has_left(r, tat, now + 24_060_000_000 - 1000).allowed);
    }

    #[test]
    fn large_limits_keep_their_precision() {
        // 150 million tokens a minute: 400 ns a token, exact.
        let r = Rate {
            limit: 150_000_000,
            window_us: 60 * S,
        };
        let now = 5 * NS;
        let tat = charge(r, 0, now, 1_000_000);
        assert_eq!(has_left(r, tat, now).remaining, 149_000_000);
        // A million requests a second: a full burst of them, then refused.
        let r = Rate {
            limit: 1_000_000,
            window_us: S,
        };
        let mut tat = 0;
        for _ in 0..1_000_000 {
            tat = admit(r, tat, now).1.unwrap();
        }
        assert!(admit(r, tat, now).1.is_none());
    }
}
