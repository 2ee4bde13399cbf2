//! One request's route: the candidate order (computed once), the attempts made, and the
//! failover decision: after each failed attempt, [`Plan::failed`] says whether the same
//! target, the next one, or nobody is tried. Pure logic with an injected clock; the proxy
//! phases only report what happened.

use std::time::{Duration, Instant};

use super::cooldown::Cooldowns;
use super::{Model, ModelRoute};
use crate::provider::ErrorClass;
use crate::provider::Target;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Under way.
    Pending,
    /// The provider answered and the answer went to the caller.
    Answered,
    /// A status in `retry_on`.
    RetryableStatus,
    /// The provider refused the gateway's own credential (401, 403).
    CredentialRejected,
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
            Self::CredentialRejected => "credential_rejected",
            Self::ConnectError => "connect_error",
            Self::Timeout => "timeout",
            Self::Error => "error",
        }
    }
}

/// How an upstream attempt failed, before anything reached the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The provider answered with an error status (and maybe a `Retry-After`), and its
    /// body said which class of error it is when it was read (see [`ErrorClass`]).
    Status {
        status: u16,
        retry_after: Option<Duration>,
        class: Option<ErrorClass>,
    },
    /// A 2xx the gateway cannot use (an HTML page, JSON to a stream request).
    BadAnswer { status: u16 },
    /// No connection: refused, unreachable, TLS failed, or no address resolved.
    Connect,
    /// The connection broke before an answer (the replica died).
    Broken,
    /// A pooled keep-alive connection turned out closed: nothing about the target.
    Stale,
    /// No answer within `first_byte_ms`.
    Timeout,
}

/// What follows a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// The same target again, on another replica or a fresh connection.
    SameTarget,
    /// The next candidate of the route.
    NextTarget,
    /// No more attempts: the caller gets this failure.
    Stop,
}

/// Whether an error status speaks of the target (its health, or the gateway's account
/// with the provider) rather than of the caller's request: server errors, 429, and
/// 401/403, which refuse the gateway's credential, not the caller's. Every other 4xx
/// answers the request (a 400, a 404 for a `previous_response_id`, a 413), so no caller
/// can cool a target by sending what it refuses, whatever `retry_on` lists.
fn target_failed(status: u16) -> bool {
    status >= 500 || matches!(status, 401 | 403 | 429)
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
    pub retry_classes: Vec<ErrorClass>,
    pub max_attempts: usize,
    pub cooldown: Duration,
    /// Failures in a row before a target cools down (for the provider's `Retry-After`
    /// when it sent one, else `cooldown`).
    pub failures_before_cooldown: u32,
    /// Next position in `candidates` to consider.
    next: usize,
    current: Option<usize>,
    /// The last failure was one replica (or a stale pooled connection): try the same
    /// target again.
    retry_same: bool,
    /// Targets tried, for `max_attempts`; a retry on another replica of the same target
    /// does not count.
    targets_tried: usize,
    /// The current attempt counted in `targets_tried`.
    counted: bool,
    /// Targets skipped because their provider quota was used up: the soonest wait
    /// for room.
    pub quota_wait: Option<Duration>,
    pub attempts: Vec<Attempt>,
}

impl Plan {
    pub fn new(model: &Model, load: &super::Load, owner: &str) -> Self {
        let candidates: Vec<Target> = super::candidates(&model.route, load, owner)
            .into_iter()
            .cloned()
            .collect();
        match &model.route {
            ModelRoute::Single(_) => Self::with(candidates, false, Vec::new(), 1, Duration::ZERO, 1),
            ModelRoute::Multi(r) => {
                let max = r.max_attempts as usize;
                let mut plan = Self::with(
                    candidates,
                    true,
                    r.retry_on.clone(),
                    max,
                    r.cooldown,
                    r.failures_before_cooldown,
                );
                plan.retry_classes = r.retry_classes.clone();
                plan
            }
        }
    }

    pub fn with(
        candidates: Vec<Target>,
        multi: bool,
        retry_on: Vec<u16>,
        max_attempts: usize,
        cooldown: Duration,
        failures_before_cooldown: u32,
    ) -> Self {
        Self {
            candidates,
            multi,
            retry_on,
            retry_classes: Vec::new(),
            max_attempts: max_attempts.max(1),
            cooldown,
            failures_before_cooldown,
            next: 0,
            current: None,
            retry_same: false,
            targets_tried: 0,
            counted: false,
            quota_wait: None,
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
            (true, Some(i)) => {
                self.counted = false;
                i
            }
            _ => {
                let i = self.find(self.next, cooldowns, now, usable)?;
                self.targets_tried += 1;
                self.counted = true;
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

    /// The current target's provider quota has no room (`wait`: until it has): the
    /// target is passed over before it is called, as a cooling one is, and the attempt
    /// neither counts towards `max_attempts` nor towards its cooldown.
    pub fn over_quota(&mut self, wait: Duration) {
        self.attempts.pop();
        if self.counted {
            self.targets_tried = self.targets_tried.saturating_sub(1);
        }
        self.current = None;
        self.retry_same = false;
        self.quota_wait = Some(self.quota_wait.map_or(wait, |w| w.min(wait)));
    }

    /// Whether an error status is worth reading the body of before deciding: on a
    /// multi-target route, a 429 (is it the request's own size, or the target's limit?),
    /// and the other 4xx answers (but refused credentials) when a class or the status
    /// itself is listed (is it a refusal?).
    pub fn wants_error_class(&self, status: u16) -> bool {
        self.multi
            && (400..500).contains(&status)
            && !matches!(status, 401 | 403)
            && (status == 429 || !self.retry_classes.is_empty() || self.retry_on.contains(&status))
    }

    /// Whether another target may be tried after the current one.
    fn can_retry(&self, cooldowns: &Cooldowns, now: Instant, usable: &dyn Fn(&Target) -> bool) -> bool {
        self.multi && self.targets_tried < self.max_attempts && self.find(self.next, cooldowns, now, usable).is_ok()
    }

    fn record(&mut self, outcome: Outcome, status: Option<u16>, now: Instant) {
        if let Some(a) = self.attempts.last_mut() {
            a.outcome = outcome;
            a.status = status;
            a.finished = Some(now);
        }
    }

    /// The provider answered and the answer goes to the caller (a success, or an error
    /// that answers the caller's request): the target's failures in a row end.
    pub fn answered(&mut self, status: u16, cooldowns: &Cooldowns, now: Instant) {
        self.record(Outcome::Answered, Some(status), now);
        if let (true, Some(t)) = (self.multi, self.current.map(|i| &self.candidates[i])) {
            cooldowns.succeeded(&t.alias);
        }
    }

    /// The failover decision, in one place. `replica_left`: the target has another
    /// healthy replica (the failed one was ejected).
    ///
    /// A failure of the target (a 5xx, a 429 that is not the request's own size, a
    /// refused gateway credential, a connection failure, a timeout, a bad answer) counts
    /// towards its cooldown on a multi-target alias. A failure caused by the request (any
    /// other 4xx, a class in `retry_on`, a request too large) never counts: it may move
    /// this request on, and nothing else. The next target is tried while `max_attempts`
    /// and the route allow and the failure is one to retry: a `retry_on` status or class,
    /// a refused gateway credential, a connection failure, a timeout or a bad answer.
    pub fn failed(
        &mut self,
        f: Failure,
        replica_left: bool,
        cooldowns: &Cooldowns,
        now: Instant,
        usable: &dyn Fn(&Target) -> bool,
    ) -> Next {
        let Failure::Status {
            status,
            retry_after,
            class,
        } = f
        else {
            return self.target_failure(f, None, replica_left, cooldowns, now, usable);
        };
        // An error class decides before the status: a listed class moves on (the request
        // did not suit this target), an unlisted content refusal is the answer whatever
        // its status, and so is an error that might be one.
        if let Some(class) = class {
            if self.multi && self.retry_classes.contains(&class) {
                return self.request_failure(status, cooldowns, now, usable);
            }
            let maybe_refusal = class == ErrorClass::Unreadable
                && status != 429
                && !self.retry_classes.contains(&ErrorClass::ContentFilter);
            if class == ErrorClass::ContentFilter || maybe_refusal {
                self.answered(status, cooldowns, now);
                return Next::Stop;
            }
        }
        if class == Some(ErrorClass::RequestTooLarge) || !target_failed(status) {
            if self.multi && self.retry_on.contains(&status) {
                return self.request_failure(status, cooldowns, now, usable);
            }
            self.answered(status, cooldowns, now);
            return Next::Stop;
        }
        self.target_failure(f, retry_after, replica_left, cooldowns, now, usable)
    }

    /// This request did not suit the target: the next one is tried when there is one,
    /// and the target's record is left as it was.
    fn request_failure(
        &mut self,
        status: u16,
        cooldowns: &Cooldowns,
        now: Instant,
        usable: &dyn Fn(&Target) -> bool,
    ) -> Next {
        self.record(Outcome::RetryableStatus, Some(status), now);
        if self.can_retry(cooldowns, now, usable) {
            Next::NextTarget
        } else {
            Next::Stop
        }
    }

    /// The target failed: counted towards its cooldown, and retried where that helps.
    fn target_failure(
        &mut self,
        f: Failure,
        retry_after: Option<Duration>,
        replica_left: bool,
        cooldowns: &Cooldowns,
        now: Instant,
        usable: &dyn Fn(&Target) -> bool,
    ) -> Next {
        let (outcome, status) = match f {
            Failure::Status { status, .. } if matches!(status, 401 | 403) => {
                (Outcome::CredentialRejected, Some(status))
            }
            Failure::Status { status, .. } if self.multi && self.retry_on.contains(&status) => {
                (Outcome::RetryableStatus, Some(status))
            }
            Failure::Status { status, .. } | Failure::BadAnswer { status } => (Outcome::Error, Some(status)),
            Failure::Connect => (Outcome::ConnectError, None),
            Failure::Timeout => (Outcome::Timeout, None),
            Failure::Broken | Failure::Stale => (Outcome::Error, None),
        };
        self.record(outcome, status, now);
        if f == Failure::Stale || (replica_left && matches!(f, Failure::Connect | Failure::Broken)) {
            self.retry_same = true;
            return Next::SameTarget;
        }
        if let (true, Some(t)) = (self.multi, self.current.map(|i| &self.candidates[i])) {
            cooldowns.failed(&t.alias, self.failures_before_cooldown, self.cooldown, retry_after, now);
        }
        let retryable = match f {
            Failure::Status { status, .. } => matches!(status, 401 | 403) || self.retry_on.contains(&status),
            _ => true,
        };
        if retryable && self.can_retry(cooldowns, now, usable) {
            Next::NextTarget
        } else {
            Next::Stop
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{compile::compile, parse, CompileCtx};
    use crate::upstream::UpstreamRegistry;

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
                metrics: None,
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
        (
            Plan::with(targets, true, retry_on, max, Duration::from_secs(30), 3),
            snap,
        )
    }

    const ALL: &dyn Fn(&Target) -> bool = &|_| true;

    fn status(status: u16) -> Failure {
        Failure::Status {
            status,
            retry_after: None,
            class: None,
        }
    }

    fn classed(status: u16, class: ErrorClass) -> Failure {
        Failure::Status {
            status,
            retry_after: None,
            class: Some(class),
        }
    }

    #[test]
    fn error_classes_decide_before_statuses() {
        let cd = Cooldowns::default();
        let t0 = Instant::now();
        // Not listed: a context-length 400 is the caller's answer, as any 400.
        let (mut p, _s) = plan(vec![503], 3);
        assert!(!p.wants_error_class(400), "nothing to decide with the body");
        p.begin(&cd, t0, ALL).unwrap();
        let too_long = classed(400, ErrorClass::ContextLengthExceeded);
        assert_eq!(p.failed(too_long, false, &cd, t0, ALL), Next::Stop);
        // Listed: the next target is tried, and the first is not cooled for it.
        let (mut p, _s) = plan(vec![503], 3);
        p.retry_classes = vec![ErrorClass::ContextLengthExceeded];
        assert!(p.wants_error_class(400) && p.wants_error_class(429) && !p.wants_error_class(503));
        assert!(!p.wants_error_class(401) && !p.wants_error_class(403));
        for _ in 0..5 {
            let (mut p, _s) = plan(vec![503], 3);
            p.retry_classes = vec![ErrorClass::ContextLengthExceeded];
            p.begin(&cd, t0, ALL).unwrap();
            assert_eq!(p.failed(too_long, false, &cd, t0, ALL), Next::NextTarget);
        }
        assert_eq!(cd.failures("a"), 0);
        // A content refusal is final even when its status is listed...
        let (mut p, _s) = plan(vec![400], 3);
        assert!(p.wants_error_class(400));
        p.begin(&cd, t0, ALL).unwrap();
        let refused = classed(400, ErrorClass::ContentFilter);
        assert_eq!(p.failed(refused, false, &cd, t0, ALL), Next::Stop);
        // ...and moves on only when the class itself is listed.
        let (mut p, _s) = plan(vec![], 3);
        p.retry_classes = vec![ErrorClass::ContentFilter];
        p.begin(&cd, t0, ALL).unwrap();
        assert_eq!(p.failed(refused, false, &cd, t0, ALL), Next::NextTarget);
        // The same 400 without a class still follows its status.
        let (mut p, _s) = plan(vec![400], 3);
        p.begin(&cd, t0, ALL).unwrap();
        assert_eq!(p.failed(status(400), false, &cd, t0, ALL), Next::NextTarget);
        assert_eq!(cd.failures("a"), 0, "a listed 4xx moves on without counting");
    }

    #[test]
    fn fails_over_in_order_and_cools_only_after_failures_in_a_row() {
        let cd = Cooldowns::default();
        let t0 = Instant::now();
        for i in 0..3 {
            let (mut p, _s) = plan(vec![503], 3);
            assert_eq!(p.begin(&cd, t0, ALL).unwrap().alias, "a", "request {i}");
            assert_eq!(p.failed(status(503), false, &cd, t0, ALL), Next::NextTarget);
            assert_eq!(p.begin(&cd, t0, ALL).unwrap().alias, "b");
            p.answered(200, &cd, t0);
            assert_eq!(p.attempts.len(), 2);
            assert_eq!(p.attempts[0].outcome, Outcome::RetryableStatus);
        }
        // The third failure in a row (the threshold here) cools `a`: the next request
        // skips it...
        let (mut p2, _s2) = plan(vec![503], 3);
        assert_eq!(p2.begin(&cd, t0 + Duration::from_secs(1), ALL).unwrap().alias, "b");
        // ...until its cooldown is over.
        let (mut p3, _s3) = plan(vec![503], 3);
        assert_eq!(p3.begin(&cd, t0 + Duration::from_secs(31), ALL).unwrap().alias, "a");
    }

    #[test]
    fn one_slow_request_replayed_to_every_target_cools_none() {
        let cd = Cooldowns::default();
        let t0 = Instant::now();
        let (mut p, _s) = plan(vec![503], 3);
        for name in ["a", "b", "c"] {
            assert_eq!(p.begin(&cd, t0, ALL).unwrap().alias, name);
            let next = p.failed(Failure::Timeout, false, &cd, t0, ALL);
            assert_eq!(next, if name == "c" { Next::Stop } else { Next::NextTarget });
        }
        let (mut fresh, _s2) = plan(vec![503], 3);
        assert_eq!(fresh.begin(&cd, t0, ALL).unwrap().alias, "a", "nothing cooled");
        // A success in between resets the count: failures must come in a row.
        fresh.answered(200, &cd, t0);
        assert_eq!(cd.failures("a"), 0);
    }

    fn said(status: u16, secs: u64) -> Failure {
        Failure::Status {
            status,
            retry_after: Some(Duration::from_secs(secs)),
            class: None,
        }
    }

    #[test]
    fn a_429_is_one_failure_and_its_retry_after_sets_how_long_the_target_cools() {
        let cd = Cooldowns::default();
        let t0 = Instant::now();
        // One 429, even with a Retry-After, leaves the target in rotation (threshold 3).
        let (mut p, _s) = plan(vec![429], 3);
        p.begin(&cd, t0, ALL).unwrap();
        assert_eq!(p.failed(said(429, 60), false, &cd, t0, ALL), Next::NextTarget);
        assert_eq!(cd.failures("a"), 1);
        let (mut fresh, _s) = plan(vec![429], 3);
        assert_eq!(fresh.begin(&cd, t0, ALL).unwrap().alias, "a");
        // Without one, a 429 counts the same.
        fresh.failed(status(429), false, &cd, t0, ALL);
        assert!(cd.until("a", t0).is_none());
        // The third in a row cools, for the longest Retry-After of the run.
        let (mut p, _s) = plan(vec![429], 3);
        p.begin(&cd, t0, ALL).unwrap();
        p.failed(said(429, 5), false, &cd, t0, ALL);
        assert_eq!(cd.until("a", t0), Some(t0 + Duration::from_secs(60)));
    }

    #[test]
    fn all_cooling_reports_the_soonest() {
        let (mut p, _s) = plan(vec![429, 503], 3);
        p.failures_before_cooldown = 1;
        let cd = Cooldowns::default();
        let t0 = Instant::now();
        for (secs, name, code) in [(5, "a", 429), (2, "b", 503), (9, "c", 429)] {
            assert_eq!(p.begin(&cd, t0, ALL).unwrap().alias, name);
            p.failed(said(code, secs), false, &cd, t0, ALL);
        }
        let (mut fresh, _s2) = plan(vec![429], 3);
        assert_eq!(
            fresh.begin(&cd, t0, ALL).unwrap_err(),
            Some(t0 + Duration::from_secs(2))
        );
    }

    #[test]
    fn what_the_request_caused_never_counts_against_the_target() {
        let cd = Cooldowns::default();
        let t0 = Instant::now();
        let too_large = Failure::Status {
            status: 429,
            retry_after: Some(Duration::from_secs(60)),
            class: Some(ErrorClass::RequestTooLarge),
        };
        // One caller's oversized requests, any number in a row, and 4xx answers whose
        // status is listed (a 413, a 404 for a response id, a 400): each moves its own
        // request on, and none counts, even at a threshold of one.
        for f in [too_large, status(413), status(404), status(400)] {
            for _ in 0..5 {
                let (mut p, _s) = plan(vec![400, 404, 413, 429], 3);
                p.failures_before_cooldown = 1;
                assert!(p.wants_error_class(429));
                assert_eq!(p.begin(&cd, t0, ALL).unwrap().alias, "a");
                assert_eq!(p.failed(f, false, &cd, t0, ALL), Next::NextTarget, "{f:?}");
                assert_eq!(p.attempts[0].outcome, Outcome::RetryableStatus);
            }
        }
        assert_eq!((cd.failures("a"), cd.until("a", t0)), (0, None));
        // Unlisted, the request's own error is its answer.
        let (mut p, _s) = plan(vec![503], 3);
        p.begin(&cd, t0, ALL).unwrap();
        assert_eq!(p.failed(too_large, false, &cd, t0, ALL), Next::Stop);
        assert_eq!(p.attempts[0].outcome, Outcome::Answered);
        // Nor does it hide the target's own failures: they still add up around it.
        for f in [status(429), too_large, status(503), too_large, said(429, 1)] {
            let (mut p, _s) = plan(vec![429, 503], 3);
            p.begin(&cd, t0, ALL).unwrap();
            p.failed(f, false, &cd, t0, ALL);
        }
        assert_eq!(cd.until("a", t0), Some(t0 + Duration::from_secs(1)));
    }

    #[test]
    fn an_error_whose_class_cannot_be_read_may_be_a_refusal_and_is_final() {
        let cd = Cooldowns::default();
        let t0 = Instant::now();
        let unread = |status| Failure::Status {
            status,
            retry_after: None,
            class: Some(ErrorClass::Unreadable),
        };
        // Its status listed or not, a 400 that could not be read is the answer...
        let (mut p, _s) = plan(vec![400], 3);
        p.retry_classes = vec![ErrorClass::ContextLengthExceeded];
        p.begin(&cd, t0, ALL).unwrap();
        assert_eq!(p.failed(unread(400), false, &cd, t0, ALL), Next::Stop);
        assert_eq!(p.attempts[0].outcome, Outcome::Answered);
        // ...unless refusals may move on anyway: then its status decides.
        let (mut p, _s) = plan(vec![400], 3);
        p.retry_classes = vec![ErrorClass::ContentFilter];
        p.begin(&cd, t0, ALL).unwrap();
        assert_eq!(p.failed(unread(400), false, &cd, t0, ALL), Next::NextTarget);
        // A 429 is never a refusal: unreadable, it is a 429 like any.
        let (mut p, _s) = plan(vec![429], 3);
        p.begin(&cd, t0, ALL).unwrap();
        assert_eq!(p.failed(unread(429), false, &cd, t0, ALL), Next::NextTarget);
        assert_eq!(cd.failures("a"), 1);
    }

    #[test]
    fn statuses_decide_retry_answer_or_stop() {
        let cd = Cooldowns::default();
        let t0 = Instant::now();
        // A 4xx that answers the caller's request: no retry, no failure counted.
        let (mut p, _s) = plan(vec![503], 3);
        p.begin(&cd, t0, ALL).unwrap();
        assert_eq!(p.failed(status(400), false, &cd, t0, ALL), Next::Stop);
        assert_eq!(p.attempts[0].outcome, Outcome::Answered);
        assert_eq!(cd.failures("a"), 0);
        // A 5xx outside retry_on fails the target but is final.
        p = plan(vec![503], 3).0;
        p.begin(&cd, t0, ALL).unwrap();
        assert_eq!(p.failed(status(500), false, &cd, t0, ALL), Next::Stop);
        assert_eq!(cd.failures("a"), 1);
        // The gateway's credential refused: another target may hold a good one.
        p = plan(vec![], 3).0;
        p.begin(&cd, t0, ALL).unwrap();
        assert_eq!(p.failed(status(401), false, &cd, t0, ALL), Next::NextTarget);
        assert_eq!(p.attempts[0].outcome, Outcome::CredentialRejected);
    }

    #[test]
    fn max_attempts_bounds_the_retries() {
        let (mut p, _s) = plan(vec![500], 2);
        let cd = Cooldowns::default();
        let t0 = Instant::now();
        p.begin(&cd, t0, ALL).unwrap();
        assert_eq!(p.failed(Failure::Connect, false, &cd, t0, ALL), Next::NextTarget);
        p.begin(&cd, t0, ALL).unwrap();
        assert_eq!(
            p.failed(Failure::Timeout, false, &cd, t0, ALL),
            Next::Stop,
            "two attempts allowed, a third target exists"
        );
    }

    #[test]
    fn unusable_targets_are_skipped_and_replicas_and_stale_connections_retry_the_same_target() {
        let (mut p, _s) = plan(vec![], 3);
        let cd = Cooldowns::default();
        let t0 = Instant::now();
        let not_a: &dyn Fn(&Target) -> bool = &|t| t.alias != "a";
        assert_eq!(p.begin(&cd, t0, not_a).unwrap().alias, "b");
        assert_eq!(p.failed(Failure::Connect, true, &cd, t0, not_a), Next::SameTarget);
        assert_eq!(p.begin(&cd, t0, not_a).unwrap().alias, "b");
        assert_eq!(p.failed(Failure::Stale, false, &cd, t0, not_a), Next::SameTarget);
        assert_eq!(p.begin(&cd, t0, not_a).unwrap().alias, "b");
        assert_eq!(p.attempts.len(), 3, "every attempt recorded");
        assert_eq!(p.targets_tried, 1, "one target tried");
        assert_eq!(cd.failures("b"), 0, "a replica's failure is not the target's");
    }
}
