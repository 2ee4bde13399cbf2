//! One request's route: the candidate order (computed once), the attempts made, and the
//! decisions between them. Pure logic with an injected clock; the proxy phases call it.

use std::time::{Duration, Instant};

use super::cooldown::Cooldowns;
use crate::config::{Model, ModelRoute, Target};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Under way.
    Pending,
    /// The provider answered and the answer went to the caller.
    Answered,
    /// A status in `retry_on`.
    RetryableStatus,
    ConnectError,
    Timeout,
    /// Any other failure before the first byte reached the caller.
    Error,
}

impl Outcome {
    /// Label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Answered => "answered",
            Self::RetryableStatus => "retryable_status",
            Self::ConnectError => "connect_error",
            Self::Timeout => "timeout",
            Self::Error => "error",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Attempt {
    /// The concrete model tried.
    pub target: String,
    pub started: Instant,
    pub finished: Option<Instant>,
    pub status: Option<u16>,
    pub outcome: Outcome,
}

#[derive(Debug)]
pub struct Plan {
    pub candidates: Vec<Target>,
    /// Multi-target aliases skip cooling targets and retry; a single model does neither.
    pub multi: bool,
    pub retry_on: Vec<u16>,
    pub max_attempts: usize,
    pub cooldown: Duration,
    /// Next position in `candidates` to consider.
    next: usize,
    current: Option<usize>,
    /// The last failure was one replica (or a stale pooled connection): try the same
    /// target again.
    retry_same: bool,
    /// Targets tried, for `max_attempts`; a retry on another replica of the same target
    /// does not count.
    targets_tried: usize,
    pub attempts: Vec<Attempt>,
}

impl Plan {
    pub fn new(model: &Model) -> Self {
        let candidates: Vec<Target> = super::candidates(&model.route).into_iter().cloned().collect();
        match &model.route {
            ModelRoute::Single(_) => Self::with(candidates, false, Vec::new(), 1, Duration::ZERO),
            ModelRoute::Multi(r) => {
                let max = r.max_attempts as usize;
                Self::with(candidates, true, r.retry_on.clone(), max, r.cooldown)
            }
        }
    }

    pub fn with(
        candidates: Vec<Target>,
        multi: bool,
        retry_on: Vec<u16>,
        max_attempts: usize,
        cooldown: Duration,
    ) -> Self {
        Self {
            candidates,
            multi,
            retry_on,
            max_attempts: max_attempts.max(1),
            cooldown,
            next: 0,
            current: None,
            retry_same: false,
            targets_tried: 0,
            attempts: Vec::new(),
        }
    }

    /// The first candidate from `from` that can serve the request and is not cooling down,
    /// or the soonest time one comes back.
    fn find(
        &self,
        from: usize,
        cooldowns: &Cooldowns,
        now: Instant,
        usable: &dyn Fn(&Target) -> bool,
    ) -> Result<usize, Option<Instant>> {
        let mut soonest: Option<Instant> = None;
        for (i, t) in self.candidates.iter().enumerate().skip(from) {
            if !usable(t) {
                continue;
            }
            if self.multi {
                if let Some(until) = cooldowns.until(&t.alias, now) {
                    soonest = Some(soonest.map_or(until, |s| s.min(until)));
                    continue;
                }
            }
            return Ok(i);
        }
        Err(soonest)
    }

    /// Starts the next attempt. `Err` carries the soonest recovery of a cooling target
    /// (`None`: no usable target at all).
    pub fn begin(
        &mut self,
        cooldowns: &Cooldowns,
        now: Instant,
        usable: &dyn Fn(&Target) -> bool,
    ) -> Result<&Target, Option<Instant>> {
        let i = match (self.retry_same, self.current) {
            (true, Some(i)) => i,
            _ => {
                let i = self.find(self.next, cooldowns, now, usable)?;
                self.targets_tried += 1;
                i
            }
        };
        self.retry_same = false;
        self.current = Some(i);
        self.next = i + 1;
        self.attempts.push(Attempt {
            target: self.candidates[i].alias.clone(),
            started: now,
            finished: None,
            status: None,
            outcome: Outcome::Pending,
        });
        Ok(&self.candidates[i])
    }

    /// Whether another attempt may follow the current one.
    pub fn can_retry(&self, cooldowns: &Cooldowns, now: Instant, usable: &dyn Fn(&Target) -> bool) -> bool {
        self.multi && self.targets_tried < self.max_attempts && self.find(self.next, cooldowns, now, usable).is_ok()
    }

    pub fn is_retryable_status(&self, status: u16) -> bool {
        self.multi && self.retry_on.contains(&status)
    }

    /// Records how the current attempt ended; a failed target of a multi-target alias
    /// cools down for `retry_after` (the provider's) or the route's `cooldown_s`.
    pub fn finish(
        &mut self,
        outcome: Outcome,
        status: Option<u16>,
        retry_after: Option<Duration>,
        cooldowns: &Cooldowns,
        now: Instant,
    ) {
        if let Some(a) = self.attempts.last_mut() {
            a.outcome = outcome;
            a.status = status;
            a.finished = Some(now);
        }
        let failed = !matches!(outcome, Outcome::Answered | Outcome::Pending);
        if failed && self.multi {
            if let Some(t) = self.current.map(|i| &self.candidates[i]) {
                cooldowns.cool(&t.alias, retry_after.unwrap_or(self.cooldown), now);
            }
        }
    }

    /// One replica failed (or a pooled connection was stale) and the target has others:
    /// the attempt is recorded, and the same target is tried again without a cooldown.
    pub fn retry_same_target(&mut self, outcome: Outcome, now: Instant) {
        if let Some(a) = self.attempts.last_mut() {
            a.outcome = outcome;
            a.finished = Some(now);
        }
        self.retry_same = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{compile::compile, parse, CompileCtx};
    use crate::route::UpstreamRegistry;

    fn plan(retry_on: Vec<u16>, max: usize) -> (Plan, crate::config::Snapshot) {
        let text = r#"
version: 1
provider_keys: [{name: p, provider: openai_compatible, base_url: "http://127.0.0.1:9"}]
models:
  - {name: a, provider_key: p}
  - {name: b, provider_key: p}
  - {name: c, provider_key: p}
"#;
        let env = |_: &str| None;
        let reg = UpstreamRegistry::default();
        let snap = compile(
            parse(text, &env).unwrap(),
            &CompileCtx {
                env: &env,
                upstreams: &reg,
                limits: &Default::default(),
            },
        )
        .unwrap();
        let targets = ["a", "b", "c"]
            .iter()
            .map(|n| match &snap.models[*n].route {
                ModelRoute::Single(t) => t.clone(),
                ModelRoute::Multi(_) => unreachable!(),
            })
            .collect();
        (Plan::with(targets, true, retry_on, max, Duration::from_secs(30)), snap)
    }

    const ALL: &dyn Fn(&Target) -> bool = &|_| true;

    #[test]
    fn fails_over_in_order_and_cools_failed_targets() {
        let (mut p, _s) = plan(vec![503], 3);
        let cd = Cooldowns::default();
        let t0 = Instant::now();
        assert_eq!(p.begin(&cd, t0, ALL).unwrap().alias, "a");
        p.finish(Outcome::RetryableStatus, Some(503), None, &cd, t0);
        assert!(p.can_retry(&cd, t0, ALL));
        assert_eq!(p.begin(&cd, t0, ALL).unwrap().alias, "b");
        p.finish(Outcome::Answered, Some(200), None, &cd, t0);
        assert_eq!(p.attempts.len(), 2);
        // The next request skips the cooling target...
        let (mut p2, _s2) = plan(vec![503], 3);
        assert_eq!(p2.begin(&cd, t0 + Duration::from_secs(1), ALL).unwrap().alias, "b");
        // ...until its cooldown is over.
        let (mut p3, _s3) = plan(vec![503], 3);
        assert_eq!(p3.begin(&cd, t0 + Duration::from_secs(31), ALL).unwrap().alias, "a");
    }

    #[test]
    fn retry_after_sets_the_cooldown_and_all_cooling_reports_the_soonest() {
        let (mut p, _s) = plan(vec![429], 3);
        let cd = Cooldowns::default();
        let t0 = Instant::now();
        for (secs, name) in [(5, "a"), (2, "b"), (9, "c")] {
            assert_eq!(p.begin(&cd, t0, ALL).unwrap().alias, name);
            p.finish(
                Outcome::RetryableStatus,
                Some(429),
                Some(Duration::from_secs(secs)),
                &cd,
                t0,
            );
        }
        assert!(!p.can_retry(&cd, t0, ALL));
        let (mut fresh, _s2) = plan(vec![429], 3);
        assert_eq!(
            fresh.begin(&cd, t0, ALL).unwrap_err(),
            Some(t0 + Duration::from_secs(2))
        );
    }

    #[test]
    fn max_attempts_bounds_the_retries() {
        let (mut p, _s) = plan(vec![500], 2);
        let cd = Cooldowns::default();
        let t0 = Instant::now();
        p.begin(&cd, t0, ALL).unwrap();
        p.finish(Outcome::ConnectError, None, None, &cd, t0);
        p.begin(&cd, t0, ALL).unwrap();
        p.finish(Outcome::Timeout, None, None, &cd, t0);
        assert!(
            !p.can_retry(&cd, t0, ALL),
            "two attempts allowed, a third target exists"
        );
    }

    #[test]
    fn unusable_targets_are_skipped_and_stale_connections_retry_the_same_target() {
        let (mut p, _s) = plan(vec![], 3);
        let cd = Cooldowns::default();
        let t0 = Instant::now();
        let not_a: &dyn Fn(&Target) -> bool = &|t| t.alias != "a";
        assert_eq!(p.begin(&cd, t0, not_a).unwrap().alias, "b");
        p.retry_same_target(Outcome::ConnectError, t0);
        assert_eq!(p.begin(&cd, t0, not_a).unwrap().alias, "b");
        assert_eq!(p.attempts.len(), 2, "both attempts recorded");
        assert_eq!(p.targets_tried, 1, "one target tried");
        assert!(cd.until("b", t0).is_none());
    }
}
