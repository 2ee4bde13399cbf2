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
//! Times are microseconds on one clock (the process's for the local store, Redis's own
//! `TIME` for the shared one). Token limits use the same state as a debt counter: a
//! request is admitted while tokens are left, and its real usage is charged afterwards,
//! possibly past the limit, which then delays the next admission.

/// One rule: `limit` units per `window_us`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub limit: u64,
    pub window_us: u64,
}

impl Rate {
    /// The emission interval: the cost of one unit.
    pub fn interval(&self) -> u64 {
        (self.window_us / self.limit.max(1)).max(1)
    }
}

/// What a check saw, for the `x-ratelimit-*` headers and `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    pub limit: u64,
    pub remaining: u64,
    /// Until the key is fully replenished.
    pub reset_us: u64,
    /// Until a rejected request could pass.
    pub retry_after_us: u64,
}

/// Admits one request at `now` against stored `tat`. Returns the verdict and, when
/// allowed, the new TAT to store.
pub fn admit(rate: Rate, tat: u64, now: u64) -> (Verdict, Option<u64>) {
    let t = rate.interval();
    let tau = rate.window_us.saturating_sub(t);
    let tat = tat.max(now);
    let used = tat - now;
    if used > tau {
        let v = Verdict {
            allowed: false,
            limit: rate.limit,
            remaining: 0,
            reset_us: used,
            retry_after_us: used - tau,
        };
        return (v, None);
    }
    let new_tat = tat + t;
    let used = new_tat - now;
    let remaining = rate.window_us.saturating_sub(used) / t;
    (
        Verdict {
            allowed: true,
            limit: rate.limit,
            remaining,
            reset_us: used,
            retry_after_us: 0,
        },
        Some(new_tat),
    )
}

/// Whether a token budget has anything left at `now` (nothing is consumed).
pub fn has_left(rate: Rate, tat: u64, now: u64) -> Verdict {
    let t = rate.interval();
    let used = tat.max(now) - now;
    let allowed = used < rate.window_us;
    let remaining = rate.window_us.saturating_sub(used) / t;
    // Admission needs `used` below the window again.
    let retry_after_us = if allowed { 0 } else { used - rate.window_us + 1 };
    Verdict {
        allowed,
        limit: rate.limit,
        remaining,
        reset_us: used,
        retry_after_us,
    }
}

/// The TAT after charging `units` at `now`.
pub fn charge(rate: Rate, tat: u64, now: u64, units: u64) -> u64 {
    tat.max(now) + units.saturating_mul(rate.interval())
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000;

    #[test]
    fn admits_the_limit_then_refills_continuously() {
        let r = Rate {
            limit: 3,
            window_us: 3 * S,
        };
        let mut tat = 0;
        let now = 100 * S;
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
        assert!(!admit(r, tat, now + S - 1).0.allowed);
        assert!(admit(r, tat, now + S).0.allowed);
        // After a full window everything is back.
        assert_eq!(admit(r, tat, now + 3 * S).0.remaining, 2);
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
        let start = 7 * S;
        for i in 0..500u64 {
            let now = start + i * 10_000;
            if let (v, Some(new)) = admit(r, tat, now) {
                assert!(v.allowed);
                tat = new;
                admitted.push(now);
            }
        }
        // The burst, then exactly one per emission interval.
        assert_eq!(admitted.len(), 10 + 49, "{admitted:?}");
        let in_window = |t: u64| admitted.iter().filter(|u| **u >= t && **u < t + S).count();
        for t in admitted.iter().copied() {
            assert!(in_window(t) < 2 * 10, "burst + refill bound at {t}");
            if t >= start + S {
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
        let now = 10 * S;
        assert!(has_left(r, 0, now).allowed);
        let tat = charge(r, 0, now, 900);
        let v = has_left(r, tat, now);
        assert!(v.allowed);
        assert_eq!(v.remaining, 100);
        // A big answer overshoots: the next request waits until the debt is paid.
        let tat = charge(r, tat, now, 500);
        let v = has_left(r, tat, now);
        assert!(!v.allowed);
        assert!(v.retry_after_us > 0);
        assert!(has_left(r, tat, now + v.retry_after_us).allowed);
        assert!(!has_left(r, tat, now + v.retry_after_us - 1).allowed);
    }
}
