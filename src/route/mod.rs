//! Routing: alias -> model, and the order in which a model's targets are tried.

pub mod cooldown;
pub mod load;
mod model;
pub mod plan;

use std::sync::atomic::Ordering;

pub use cooldown::Cooldowns;
pub use load::Load;
pub use model::{Model, ModelRoute, RouteTarget, Routing};

use crate::provider::Target;
use crate::raw::Strategy;

/// One `least_latency` request in this many tries the first priority group in a random
/// order, so a target that got slow is measured again and wins its traffic back.
pub const PROBE_EVERY: u64 = 20;

/// The targets of a model in the order they should be tried, computed once per request
/// for the caller's `owner`: canaries it does not fall in are left out.
pub fn candidates<'a>(route: &'a ModelRoute, load: &Load, owner: &str) -> Vec<&'a Target> {
    match route {
        ModelRoute::Single(t) => vec![t],
        ModelRoute::Multi(r) => order(r, fastrand::u64(..), load)
            .into_iter()
            .filter(|&i| takes(r, &r.targets[i], owner, fastrand::f64() * 100.0))
            .map(|i| &r.targets[i].target)
            .collect(),
    }
}

/// Whether a target takes this request: a canary only for its `owners`, and for its
/// `percent` of requests: `draw` (0-100, random per request), or with `sticky: owner` a
/// draw fixed per owner and target (BLAKE3 of both: every instance of a fleet agrees).
fn takes(r: &Routing, t: &RouteTarget, owner: &str, draw: f64) -> bool {
    if t.owners.as_ref().is_some_and(|o| !o.iter().any(|x| x == owner)) {
        return false;
    }
    let Some(percent) = t.percent else { return true };
    let draw = if r.sticky_owner {
        let h = blake3::hash(format!("{owner}\0{}", t.target.alias).as_bytes());
        let n = u64::from_le_bytes(h.as_bytes()[..8].try_into().unwrap_or_default());
        (n % 10_000) as f64 / 100.0
    } else {
        draw
    };
    draw < percent
}

/// Indices into `r.targets`. `roll` is a random number (injected for tests). Every
/// strategy keeps priority groups: a lower `priority` first, whatever the measure.
fn order(r: &Routing, roll: u64, load: &Load) -> Vec<usize> {
    let n = r.targets.len();
    let mut idx: Vec<usize> = (0..n).collect();
    // A tie-break that spreads equal targets over requests.
    let spread = |i: usize| (i as u64).wrapping_add(roll) % n.max(1) as u64;
    // Within each priority group, by a measure of the target at an index (lower
    // first), then `spread`.
    let mut by = |measure: &dyn Fn(usize) -> f64| {
        idx.sort_by(|&a, &b| {
            r.targets[a]
                .priority
                .cmp(&r.targets[b].priority)
                .then(measure(a).total_cmp(&measure(b)))
                .then(spread(a).cmp(&spread(b)))
        });
    };
    let alias = |i: usize| r.targets[i].target.alias.as_str();
    match r.strategy {
        Strategy::LeastLatency => {
            // Its time to first byte, times its requests in flight plus one (a burst
            // does not all herd onto the target that was fastest a moment ago). A
            // target never measured goes first: it is measured.
            by(&|i| {
                let latency = load.latency(alias(i)).map_or(0.0, |d| d.as_secs_f64());
                latency * (load.in_flight(alias(i)) + 1) as f64
            });
            let group = idx
                .iter()
                .take_while(|&&i| r.targets[i].priority == r.targets[idx[0]].priority)
                .count();
            if roll % PROBE_EVERY == 0 && group > 1 {
                // A probe: another target of the fastest group first, so one that got
                // slow is measured again and wins its traffic back when it recovers.
                let other = 1 + (roll / PROBE_EVERY) as usize % (group - 1);
                idx.swap(0, other);
            }
        }
        Strategy::LeastBusy => by(&|i| load.in_flight(alias(i)) as f64),
        Strategy::Cost => by(&|i| r.targets[i].price.unwrap_or(f64::INFINITY)),
        Strategy::Usage => by(&|i| load.quota_used(alias(i))),
        _ => {}
    }
    match r.strategy {
        // Lower priority first; among equals, heavier weight first, then config order.
        Strategy::Failover => idx.sort_by_key(|&i| (r.targets[i].priority, std::cmp::Reverse(r.targets[i].weight), i)),
        Strategy::RoundRobin => {
            let start = r.rr_next.fetch_add(1, Ordering::Relaxed) % n.max(1);
            idx.rotate_left(start);
        }
        Strategy::LeastLatency | Strategy::LeastBusy | Strategy::Cost | Strategy::Usage => {}
        Strategy::Weighted => {
            // Weighted draw without replacement: each position picks among the rest by weight.
            let mut rest = idx;
            let mut out = Vec::with_capacity(n);
            let mut roll = roll;
            while !rest.is_empty() {
                let total: u64 = rest.iter().map(|&i| u64::from(r.targets[i].weight)).sum();
                let mut pick = roll % total.max(1);
                roll = roll.rotate_left(17) ^ 0x9E37_79B9_7F4A_7C15;
                let pos = rest
                    .iter()
                    .position(|&i| {
                        let w = u64::from(r.targets[i].weight);
                        if pick < w {
                            true
                        } else {
                            pick -= w;
                            false
                        }
                    })
                    .unwrap_or(0);
                out.push(rest.remove(pos));
            }
            return out;
        }
    }
    idx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{compile::compile, parse, CompileCtx, Snapshot};
    use crate::upstream::UpstreamRegistry;
    use std::time::Duration;

    fn snap(strategy: &str) -> Snapshot {
        let text = format!(
            r#"
version: 1
provider_keys: [{{name: p, provider: openai_compatible, base_url: "http://127.0.0.1:9"}}]
models:
  - {{name: a, provider_key: p, pricing: {{input_per_mtok: 0.1, output_per_mtok: 0.1}}}}
  - {{name: b, provider_key: p, pricing: {{input_per_mtok: 1, output_per_mtok: 4}}}}
  - {{name: c, provider_key: p, pricing: {{input_per_mtok: 2, output_per_mtok: 1}}}}
  - name: multi
    routing:
      strategy: {strategy}
      targets: [{{model: a, priority: 1, weight: 1}}, {{model: b, priority: 0, weight: 1}}, {{model: c, priority: 0, weight: 3}}]
"#
        );
        let env = |_: &str| None;
        let reg = UpstreamRegistry::default();
        compile(
            parse(&text, &env).unwrap(),
            &CompileCtx {
                env: &env,
                upstreams: &reg,
                limits: &Default::default(),
                metrics: None,
            },
        )
        .unwrap()
    }

    fn routing(s: &Snapshot) -> &Routing {
        match &s.models["multi"].route {
            ModelRoute::Multi(r) => r,
            ModelRoute::Single(_) => panic!("multi is multi-target"),
        }
    }

    #[test]
    fn failover_orders_by_priority_then_weight() {
        let s = snap("failover");
        let names: Vec<_> = candidates(&s.models["multi"].route, &Load::default(), "")
            .iter()
            .map(|t| t.alias.as_str())
            .collect();
        assert_eq!(names, ["c", "b", "a"]);
    }

    #[test]
    fn round_robin_rotates() {
        let s = snap("round_robin");
        let firsts: Vec<_> = (0..6).map(|_| order(routing(&s), 0, &Load::default())[0]).collect();
        assert_eq!(firsts, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn weighted_first_pick_follows_weights() {
        let s = snap("weighted");
        let r = routing(&s);
        // weights 1,1,3 (total 5): rolls 0..5 pick a, b, c, c, c.
        let firsts: Vec<_> = (0..5).map(|roll| order(r, roll, &Load::default())[0]).collect();
        assert_eq!(firsts, [0, 1, 2, 2, 2]);
        for roll in 0..50 {
            let mut o = order(r, roll, &Load::default());
            o.sort();
            assert_eq!(o, [0, 1, 2], "every target appears once");
        }
    }

    fn names(s: &Snapshot, roll: u64, load: &Load) -> Vec<String> {
        let r = routing(s);
        order(r, roll, load)
            .into_iter()
            .map(|i| r.targets[i].target.alias.clone())
            .collect()
    }

    /// Every measure orders within a priority group: `a` (priority 1) is last whatever
    /// it measures.
    #[test]
    fn measures_order_within_priority_groups() {
        // Priced at 3 input tokens per output token: b = 1 * 3 + 4, c = 2 * 3 + 1; a is
        // the cheapest, but of the later group.
        let s = snap("cost");
        let prices: Vec<f64> = routing(&s).targets.iter().map(|t| t.price.unwrap()).collect();
        assert_eq!(prices, [0.4, 7.0, 7.0]);
        for roll in 1..5 {
            assert_eq!(names(&s, roll, &Load::default())[2], "a");
        }

        let s = snap("least_latency");
        let load = Load::default();
        load.observe("b", Duration::from_millis(80));
        load.observe("c", Duration::from_millis(5));
        load.observe("a", Duration::from_millis(1));
        // Not a probe (roll % 20 != 0): fastest of the first group first.
        assert_eq!(names(&s, 1, &load), ["c", "b", "a"]);
        // A probe: the other target of the group first.
        assert_eq!(names(&s, 20, &load), ["b", "c", "a"]);
        // b recovers: after fast answers (here all at once, each weighing 10%) it is
        // first again.
        for _ in 0..40 {
            load.observe("b", Duration::from_millis(1));
        }
        assert_eq!(names(&s, 1, &load), ["b", "c", "a"]);
        // A target never measured is tried first.
        let fresh = Load::default();
        fresh.observe("b", Duration::from_millis(3));
        assert_eq!(names(&s, 1, &fresh)[0], "c");

        let s = snap("least_busy");
        let load = Load::default();
        let busy = [load.busy("c"), load.busy("c"), load.busy("b")];
        assert_eq!(names(&s, 1, &load), ["b", "c", "a"]);
        drop(busy);
        // Equal: spread over requests.
        let firsts: std::collections::HashSet<String> = (0..4).map(|roll| names(&s, roll, &load)[0].clone()).collect();
        assert_eq!(firsts.len(), 2, "{firsts:?}");

        let s = snap("usage");
        let load = Load::default();
        load.set_quota_used("b", 0.9);
        load.set_quota_used("c", 0.2);
        assert_eq!(names(&s, 1, &load), ["c", "b", "a"]);
    }

    /// A sticky share is the same for an owner on every request (and every instance),
    /// and about the stated share across owners.
    #[test]
    fn a_sticky_share_is_fixed_per_owner() {
        let s = snap("failover");
        let mut r = routing(&s).targets[1].clone();
        r.percent = Some(30.0);
        let mut routing_sticky = Routing {
            rr_next: Default::default(),
            strategy: Strategy::Failover,
            targets: vec![r.clone()],
            retry_on: Vec::new(),
            retry_classes: Vec::new(),
            max_attempts: 1,
            cooldown: Duration::from_secs(1),
            failures_before_cooldown: 1,
            sticky_owner: true,
        };
        let owners: Vec<String> = (0..1000).map(|i| format!("team-{i}")).collect();
        let inside = owners.iter().filter(|o| takes(&routing_sticky, &r, o, 99.0)).count();
        assert!((230..=370).contains(&inside), "{inside} of 1000");
        for o in &owners[..50] {
            let first = takes(&routing_sticky, &r, o, 0.0);
            assert!(
                (0..20).all(|k| takes(&routing_sticky, &r, o, k as f64 * 5.0) == first),
                "{o}"
            );
        }
        // Not sticky: the request's own draw decides.
        routing_sticky.sticky_owner = false;
        assert!(takes(&routing_sticky, &r, "a", 29.9) && !takes(&routing_sticky, &r, "a", 30.0));
        // Owners pin.
        r.owners = Some(vec!["team-1".into()]);
        assert!(takes(&routing_sticky, &r, "team-1", 0.0) && !takes(&routing_sticky, &r, "team-2", 0.0));
    }
}
