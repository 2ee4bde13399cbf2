//! The in-process store: each rule's state is one `AtomicU64` reached through the
//! compiled snapshot, updated with compare-and-swap. No lock, no map lookup on the hot
//! path; limits are per process.

use std::sync::atomic::Ordering;
use std::time::Instant;

use async_trait::async_trait;

use super::gcra::{self, Verdict};
use super::{Kind, LimitStore, Rule, StoreError};

pub struct LocalStore {
    epoch: Instant,
}

impl Default for LocalStore {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalStore {
    pub fn new() -> Self {
        Self { epoch: Instant::now() }
    }

    /// Nanoseconds on the process's monotonic clock (584 years fit in a u64).
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }
}

/// Checks and, when all pass, applies one request to `rules` at `now` (the clock is a
/// parameter so tests drive it). Each rule is applied with its own CAS; when a later rule
/// refuses, the ones already applied are rolled back, so under contention the store can
/// refuse a request that just fit, never admit one that did not.
pub fn acquire_at(rules: &[&Rule], now: u64) -> Vec<Verdict> {
    let mut verdicts = Vec::with_capacity(rules.len());
    let mut applied = 0usize;
    let mut ok = true;
    for r in rules {
        let v = if ok { apply(r, now) } else { peek(r, now) };
        if v.allowed && ok {
            applied += 1;
        }
        ok &= v.allowed;
        verdicts.push(v);
    }
    if !ok {
        for r in &rules[..applied] {
            undo(r);
        }
    }
    verdicts
}

fn apply(r: &Rule, now: u64) -> Verdict {
    match r.kind {
        Kind::Requests => {
            let mut cur = r.cell.load(Ordering::Acquire);
            loop {
                let (v, next) = gcra::admit(r.rate, cur, now);
                let Some(next) = next else { return v };
                match r
                    .cell
                    .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Acquire)
                {
                    Ok(_) => return v,
                    Err(seen) => cur = seen,
                }
            }
        }
        Kind::Tokens => gcra::has_left(r.rate, r.cell.load(Ordering::Acquire), now),
        Kind::Concurrency => {
            let limit = r.rate.limit;
            match r
                .cell
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < limit).then_some(n + 1))
            {
                Ok(used) => slots(limit, used + 1, true),
                Err(used) => slots(limit, used, false),
            }
        }
    }
}

fn peek(r: &Rule, now: u64) -> Verdict {
    let cur = r.cell.load(Ordering::Acquire);
    match r.kind {
        Kind::Requests => gcra::admit(r.rate, cur, now).0,
        Kind::Tokens => gcra::has_left(r.rate, cur, now),
        Kind::Concurrency => slots(r.rate.limit, cur, cur < r.rate.limit),
    }
}

fn undo(r: &Rule) {
    match r.kind {
        Kind::Requests => {
            let t = r.rate.interval_ns();
            let _ = r
                .cell
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |tat| Some(tat.saturating_sub(t)));
        }
        Kind::Tokens => {}
        Kind::Concurrency => release_slot(r),
    }
}

fn release_slot(r: &Rule) {
    // Saturating: a slot is never "returned" twice into a negative count.
    let _ = r
        .cell
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| Some(n.saturating_sub(1)));
}

/// A concurrency verdict; `used` counts this request when it was admitted.
pub(super) fn slots(limit: u64, used: u64, allowed: bool) -> Verdict {
    Verdict {
        allowed,
        limit,
        remaining: limit.saturating_sub(used),
        reset_us: 0,
        // Nobody knows when an in-flight request ends; a second is a polite guess.
        retry_after_us: if allowed { 0 } else { 1_000_000 },
    }
}

pub fn charge_at(rules: &[&Rule], units: u64, now: u64) {
    for r in rules.iter().filter(|r| r.kind == Kind::Tokens) {
        let _ = r.cell.fetch_update(Ordering::AcqRel, Ordering::Acquire, |tat| {
            Some(gcra::charge(r.rate, tat, now, units))
        });
    }
}

#[async_trait]
impl LimitStore for LocalStore {
    async fn acquire(&self, rules: &[&Rule]) -> Result<Vec<Verdict>, StoreError> {
        Ok(acquire_at(rules, self.now()))
    }

    async fn finish(&self, rules: &[&Rule], units: u64, slots: bool) -> Result<(), StoreError> {
        if units > 0 {
            charge_at(rules, units, self.now());
        }
        if slots {
            self.release(rules);
        }
        Ok(())
    }

    fn release(&self, rules: &[&Rule]) {
        for r in rules.iter().filter(|r| r.kind == Kind::Concurrency) {
            release_slot(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limit::Cells;
    use crate::raw;

    /// A second on the store's nanosecond clock.
    const S: u64 = 1_000_000_000;

    fn bind(
        rpm: Option<u64>,
        tpm: Option<u64>,
        conc: Option<u64>,
        scope: &str,
        cells: &Cells,
    ) -> std::sync::Arc<super::super::Binding> {
        cells.bind(
            &raw::RateLimit {
                name: "p".into(),
                requests_per_second: None,
                requests_per_minute: rpm,
                requests_per_hour: None,
                requests_per_day: None,
                tokens_per_minute: tpm,
                tokens_per_day: None,
                concurrency: conc,
            },
            scope,
        )
    }

    #[test]
    fn all_or_nothing_across_rules() {
        let cells = Cells::default();
        // The caller's policy has room; the model's allows one request per minute.
        let caller = bind(Some(100), None, Some(5), "owner=a", &cells);
        let model = bind(Some(1), None, None, "model=m", &cells);
        let rules: Vec<&Rule> = caller.rules.iter().chain(&model.rules).collect();
        let now = 1000 * S;
        assert!(acquire_at(&rules, now).iter().all(|v| v.allowed));
        let v = acquire_at(&rules, now);
        assert!(!v[2].allowed, "the model rule refuses");
        // The refused request took nothing from the caller's rules.
        assert_eq!(caller.rules[1].cell.load(Ordering::Relaxed), 1, "one slot, not two");
        let after = acquire_at(&caller.rules.iter().collect::<Vec<_>>(), now);
        // The first request and this one: the refused one was rolled back.
        assert_eq!(after[0].remaining, 98, "two requests counted, not three");
    }

    #[test]
    fn concurrency_slots_come_back() {
        let cells = Cells::default();
        let b = bind(None, None, Some(2), "owner=a", &cells);
        let rules: Vec<&Rule> = b.rules.iter().collect();
        let store = LocalStore::new();
        assert!(acquire_at(&rules, 0)[0].allowed);
        assert!(acquire_at(&rules, 0)[0].allowed);
        let full = acquire_at(&rules, 0)[0];
        assert!(!full.allowed && full.retry_after_us > 0);
        store.release(&rules);
        assert!(acquire_at(&rules, 0)[0].allowed);
        for _ in 0..5 {
            store.release(&rules);
        }
        assert_eq!(b.rules[0].cell.load(Ordering::Relaxed), 0, "never below zero");
    }

    #[test]
    fn tokens_charged_after_the_fact() {
        let cells = Cells::default();
        let b = bind(None, Some(1000), None, "owner=a", &cells);
        let rules: Vec<&Rule> = b.rules.iter().collect();
        let now = 50 * S;
        assert_eq!(acquire_at(&rules, now)[0].remaining, 1000);
        charge_at(&rules, 1200, now);
        let v = acquire_at(&rules, now);
        assert!(!v[0].allowed, "over budget until the debt refills");
        // 1200 tokens at 1000/min: 200 over, and one token to spend, after 12.06 s.
        assert_eq!(v[0].retry_after_us, 12_060_000);
        assert!(!acquire_at(&rules, now + 12_060_000_000 - 1000)[0].allowed);
        assert!(acquire_at(&rules, now + 12_060_000_000)[0].allowed);
    }

    #[test]
    fn many_threads_never_exceed_the_limit() {
        let cells = Cells::default();
        let b = bind(Some(1000), None, None, "owner=a", &cells);
        let admitted = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    let rules: Vec<&Rule> = b.rules.iter().collect();
                    for _ in 0..500 {
                        if acquire_at(&rules, 5 * S)[0].allowed {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(admitted.load(Ordering::Relaxed), 1000);
    }
}
