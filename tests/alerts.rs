//! The shipped Prometheus rules (conf/prometheus/): valid, unit-tested with promtool, fed
//! by metrics the gateway really exports.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::*;

fn promtool(args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(asset("conf/prometheus"))
        .output()
        .expect("promtool is installed (scripts/setup.sh installs prometheus)");
    assert!(
        out.status.success(),
        "promtool {args:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_rules_are_valid_and_their_unit_tests_pass() {
    promtool(&["check", "rules", "aigw.rules.yaml"]);
    promtool(&["test", "rules", "aigw.rules.test.yaml"]);
}

#[test]
fn every_metric_the_rules_read_is_one_aigw_declares() {
    let rules = std::fs::read_to_string(asset("conf/prometheus/aigw.rules.yaml")).unwrap();
    let declared = std::fs::read_to_string(asset("src/metrics.rs")).unwrap();
    let names: std::collections::BTreeSet<&str> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("aigw_"))
        .map(|w| w.trim_end_matches("_bucket"))
        .collect();
    assert!(names.len() >= 10, "{names:?}");
    for name in names {
        assert!(
            declared.contains(&format!("\"{name}\"")),
            "{name} is not a metric of aigw"
        );
    }
}

#[tokio::test]
async fn the_gauges_behind_the_alerts_are_exported() {
    let mock = Mock::start();
    let config = r#"{SERVER}
provider_keys:
  - {name: mock, provider: openai_compatible, base_url: "{MOCK}/v1", api_key: "{PROVIDER_KEY}"}
models:
  - {name: chat, provider_key: mock, model: c, pricing: {input_per_mtok: 0, output_per_mtok: 100000}}
  - {name: down-a, provider_key: mock, model: "a?status=503"}
  - {name: down-b, provider_key: mock, model: "b?status=503"}
  - name: multi
    routing: {targets: [{model: down-a}, {model: down-b, priority: 1}], failures_before_cooldown: 1}
budgets:
  - {name: small, usd: 1, period: day}
api_keys:
  - {name: main, key: "{CALLER_KEY}", owner: team-a, budget: small}
"#;
    let gw = Gateway::start(config, &mock);
    // 8 output tokens at $0.10 each: $0.80 of $1, as the third request's check saw it.
    assert_eq!(
        post(&gw, "/v1/chat/completions", &chat_body("chat")).await.status(),
        200
    );
    let failed = post(&gw, "/v1/chat/completions", &chat_body("multi")).await.status();
    assert!(failed.is_server_error(), "{failed}");
    // The first answer's cost is charged as its request ends, after the caller has it.
    let cost = r#"aigw_cost_usd_total{model="chat",owner="team-a"}"#;
    assert!(wait_until_async(|| async { metric(&gw, cost).await > 0.0 }).await);
    assert_eq!(
        post(&gw, "/v1/chat/completions", &chat_body("chat")).await.status(),
        200
    );
    let m = metrics(&gw).await;
    assert_eq!(m.get(r#"aigw_route_targets{model="multi"}"#), Some(&2.0), "{m:?}");
    assert_eq!(
        m.get(r#"aigw_route_targets_cooling{model="multi"}"#),
        Some(&2.0),
        "{m:?}"
    );
    let used = m[r#"aigw_budget_used_ratio{budget="small",owner="team-a"}"#];
    assert!((used - 0.8).abs() < 1e-9, "{used}");
}
