//! What this instance sees of each concrete model it routes to, for the strategies that
//! choose by it: the recent time to first byte (`least_latency`), the requests in flight
//! (`least_busy`) and the share of its provider quota last seen used (`usage`). Kept per
//! target alias, like cooldowns, so a reload that keeps a name keeps its record. Only
//! multi-target routes record (a single model has nothing to choose between).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;

/// The moving average forgets with time, not with samples: a sample's weight is
/// `1 - exp(-gap / DECAY)`, `gap` the time since the target's previous sample (at least
/// [`MIN_WEIGHT`]). A busy target's average spans about a second of answers, so one that
/// turns slow loses its place within seconds; one seen rarely (a target probed after it
/// got slow) takes each new sample almost whole, so it wins its place back at its first
/// fast answers.
const DECAY: Duration = Duration::from_secs(1);
const MIN_WEIGHT: f64 = 0.1;

#[derive(Debug)]
pub struct Load {
    targets: DashMap<String, Arc<TargetLoad>>,
    epoch: std::time::Instant,
}

impl Default for Load {
    fn default() -> Self {
        Self {
            targets: DashMap::new(),
            epoch: std::time::Instant::now(),
        }
    }
}

#[derive(Debug, Default)]
struct TargetLoad {
    /// Microseconds, as an exponentially weighted moving average; 0: no sample yet.
    ttfb_us: AtomicU64,
    /// When the last sample came, in microseconds since the `Load`'s epoch.
    sampled_us: AtomicU64,
    in_flight: AtomicU64,
    /// The share of the quota used, as `f64` bits, when last asked.
    quota_used: AtomicU64,
}

/// One request in flight on a target: counted until dropped (the attempt failed and the
/// next began, or the request ended, on whatever path).
#[derive(Debug)]
pub struct Busy(Arc<TargetLoad>);

impl Drop for Busy {
    fn drop(&mut self) {
        let _ = self
            .0
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| Some(n.saturating_sub(1)));
    }
}

impl Load {
    fn get(&self, alias: &str) -> Option<Arc<TargetLoad>> {
        self.targets.get(alias).map(|t| Arc::clone(&t))
    }

    fn entry(&self, alias: &str) -> Arc<TargetLoad> {
        if let Some(t) = self.get(alias) {
            return t;
        }
        Arc::clone(&self.targets.entry(alias.to_owned()).or_default())
    }

    /// A time to first byte seen on `alias` (a timeout counts as its length).
    pub fn observe(&self, alias: &str, ttfb: Duration) {
        self.observe_at(alias, ttfb, self.epoch.elapsed());
    }

    /// [`Load::observe`] at `now` since the epoch (tests drive the clock).
    fn observe_at(&self, alias: &str, ttfb: Duration, now: Duration) {
        let t = self.entry(alias);
        let now_us = now.as_micros() as u64;
        let gap = now_us.saturating_sub(t.sampled_us.swap(now_us, Ordering::AcqRel));
        let weight = (1.0 - (-(gap as f64) / DECAY.as_micros() as f64).exp()).max(MIN_WEIGHT);
        let sample = (ttfb.as_micros() as u64).max(1);
        let _ = t.ttfb_us.fetch_update(Ordering::AcqRel, Ordering::Acquire, |old| {
            Some(if old == 0 {
                sample
            } else {
                (old as f64 * (1.0 - weight) + sample as f64 * weight).max(1.0) as u64
            })
        });
    }

    /// The moving average of `alias`'s time to first byte; `None` before any sample.
    pub fn latency(&self, alias: &str) -> Option<Duration> {
        let us = self.get(alias)?.ttfb_us.load(Ordering::Acquire);
        (us > 0).then(|| Duration::from_micros(us))
    }

    /// Counts a request in flight on `alias` until the guard drops.
    pub fn busy(&self, alias: &str) -> Busy {
        let t = self.entry(alias);
        t.in_flight.fetch_add(1, Ordering::AcqRel);
        Busy(t)
    }

    pub fn in_flight(&self, alias: &str) -> u64 {
        self.get(alias).map_or(0, |t| t.in_flight.load(Ordering::Acquire))
    }

    /// The share (0 to 1) of `alias`'s quota its last admission found used.
    pub fn set_quota_used(&self, alias: &str, share: f64) {
        self.entry(alias)
            .quota_used
            .store(share.clamp(0.0, 1.0).to_bits(), Ordering::Release);
    }

    pub fn quota_used(&self, alias: &str) -> f64 {
        self.get(alias)
            .map_or(0.0, |t| f64::from_bits(t.quota_used.load(Ordering::Acquire)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_follows_recent_answers_and_busy_counts_until_dropped() {
        let l = Load::default();
        let ms = |l: &Load| l.latency("a").unwrap().as_millis();
        assert_eq!(l.latency("a"), None);
        let at = |ms: u64| Duration::from_millis(ms);
        l.observe_at("a", at(100), at(0));
        assert_eq!(ms(&l), 100);
        // Busy (a sample every millisecond): each weighs 10%; a second of slow answers
        // takes the average most of the way.
        for t in 1..=30 {
            l.observe_at("a", at(10), at(t));
        }
        assert!((10..15).contains(&ms(&l)), "{}", ms(&l));
        for t in 31..=40 {
            l.observe_at("a", at(500), at(t));
        }
        assert!((300..350).contains(&ms(&l)), "{}", ms(&l));
        // Seen rarely (a probe three seconds later): the new sample is almost all of it.
        l.observe_at("a", at(10), at(3040));
        assert!((10..40).contains(&ms(&l)), "{}", ms(&l));
        let (one, two) = (l.busy("a"), l.busy("a"));
        assert_eq!(l.in_flight("a"), 2);
        drop(one);
        assert_eq!(l.in_flight("a"), 1);
        drop(two);
        assert_eq!(l.in_flight("a"), 0);
        l.set_quota_used("a", 1.7);
        assert_eq!(l.quota_used("a"), 1.0);
        assert_eq!(l.quota_used("b"), 0.0);
    }
}
