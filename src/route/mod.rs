//! Routing: alias -> model, and the order in which a model's targets are tried.

pub mod cooldown;
mod model;
pub mod plan;

use std::sync::atomic::Ordering;

pub use cooldown::Cooldowns;
pub use model::{Model, ModelRoute, RouteTarget, Routing};

use crate::provider::Target;
use crate::raw::Strategy;

/// The targets of a model in the order they should be tried, computed once per request.
pub fn candidates(route: &ModelRoute) -> Vec<&Target> {
    match route {
        ModelRoute::Single(t) => vec![t],
        ModelRoute::Multi(r) => order(r, fastrand::u64(..))
            .into_iter()
            .map(|i| &r.targets[i].target)
            .collect(),
    }
}

/// Indices into `r.targets`. `roll` is a random number (injected for tests).
fn order(r: &Routing, roll: u64) -> Vec<usize> {
    let n = r.targets.len();
    let mut idx: Vec<usize> = (0..n).collect();
    match r.strategy {
        // Lower priority first; among equals, heavier weight first, then config order.
        Strategy::Failover => idx.sort_by_key(|&i| (r.targets[i].priority, std::cmp::Reverse(r.targets[i].weight), i)),
        Strategy::RoundRobin => {
            let start = r.rr_next.fetch_add(1, Ordering::Relaxed) % n.max(1);
            idx.rotate_left(start);
        }
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

    fn snap(strategy: &str) -> Snapshot {
        let text = format!(
            r#"
version: 1
provider_keys: [{{name: p, provider: openai_compatible, base_url: "http://127.0.0.1:9"}}]
models:
  - {{name: a, provider_key: p}}
  - {{name: b, provider_key: p}}
  - {{name: c, provider_key: p}}
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
        let names: Vec<_> = candidates(&s.models["multi"].route)
            .iter()
            .map(|t| t.alias.as_str())
            .collect();
        assert_eq!(names, ["c", "b", "a"]);
    }

    #[test]
    fn round_robin_rotates() {
        let s = snap("round_robin");
        let firsts: Vec<_> = (0..6).map(|_| order(routing(&s), 0)[0]).collect();
        assert_eq!(firsts, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn weighted_first_pick_follows_weights() {
        let s = snap("weighted");
        let r = routing(&s);
        // weights 1,1,3 (total 5): rolls 0..5 pick a, b, c, c, c.
        let firsts: Vec<_> = (0..5).map(|roll| order(r, roll)[0]).collect();
        assert_eq!(firsts, [0, 1, 2, 2, 2]);
        for roll in 0..50 {
            let mut o = order(r, roll);
            o.sort();
            assert_eq!(o, [0, 1, 2], "every target appears once");
        }
    }
}
