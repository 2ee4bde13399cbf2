//! Budgets end to end: spend is charged from the answering model's pricing, the owner is
//! refused with 429 budget_exceeded once the budget is spent (both envelopes), the spend
//! survives a reload, shows at /admin/v1/spend, and is shared by two gateways via Redis.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Each answer of the mock has 8 output tokens; at $1 per output token a request costs $8,
/// so a $10 budget admits two requests (the second crosses the line) and refuses the third.
fn config(budget: &str, redis: Option<&PrivateRedis>) -> String {
    let redis = match redis {
        Some(r) => format!("\n  redis: {{url: \"{}\", timeout_ms: 200}}", r.url()),
        None => String::new(),
    };
    format!(
        r#"
{{SERVER}}{redis}
  admin_keys: [{{key: adm-budgets}}]
provider_keys:
  - {{name: mock, provider: openai_compatible, base_url: "{{MOCK}}/v1", api_key: "{{PROVIDER_KEY}}"}}
  - {{name: an, provider: anthropic, base_url: "{{MOCK}}", api_key: "{{PROVIDER_KEY}}"}}
budgets:
  - {{name: {budget}, usd: 10, period: day}}
models:
  - {{name: chat, provider_key: mock, model: up-chat, pricing: {{input_per_mtok: 0, output_per_mtok: 1000000}}}}
  - {{name: claude, provider_key: an, model: up-claude, pricing: {{input_per_mtok: 0, output_per_mtok: 1000000}}}}
  - {{name: free, provider_key: mock, model: up-free}}
api_keys:
  - {{name: a1, key: sk-a1, owner: team-a, budget: {budget}}}
  - {{name: a2, key: sk-a2, owner: team-a, budget: {budget}}}
  - {{name: b, key: sk-b, owner: team-b, budget: {budget}}}
  - {{name: unlimited, key: sk-u, owner: team-a}}
"#
    )
}

async fn spend(gw: &Gateway, owner: &str) -> Value {
    spend_of(gw, "adm-budgets", owner).await
}

/// Waits until the owner's spend reached `usd` (it is charged after the response).
async fn spent(gw: &Gateway, owner: &str, usd: f64) {
    let ok = wait_until_async(|| async { spend(gw, owner).await["spent_usd"].as_f64() == Some(usd) }).await;
    assert!(ok, "{}", spend(gw, owner).await);
}

#[tokio::test]
async fn an_owner_is_refused_once_its_budget_is_spent() {
    let mock = Mock::start();
    let gw = Gateway::start(&config("daily", None), &mock);

    let r = post_as(&gw, "sk-a1", "/v1/chat/completions", &chat_body("chat")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-aigw-budget-remaining"], "10.000000");
    spent(&gw, "team-a", 8.0).await;
    // Another key of the same owner shares the budget; it may cross the line.
    let r = post_as(&gw, "sk-a2", "/v1/chat/completions", &chat_body("chat")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-aigw-budget-remaining"], "2.000000");
    spent(&gw, "team-a", 16.0).await;

    let r = post_as(&gw, "sk-a1", "/v1/chat/completions", &chat_body("chat")).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=86_400).contains(&retry), "until midnight UTC: {retry}");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "budget_exceeded");
    assert_eq!(v["error"]["type"], "insufficient_quota");
    assert!(v["error"]["message"].as_str().unwrap().contains("daily"));
    let r = client()
        .post(format!("{}/v1/messages", gw.url()))
        .header("x-api-key", "sk-a2")
        .json(&json!({"model": "claude", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (v["type"].as_str(), v["error"]["type"].as_str()),
        (Some("error"), Some("rate_limit_error"))
    );

    // Other owners and keys without a budget are unaffected.
    assert_eq!(
        post_as(&gw, "sk-b", "/v1/chat/completions", &chat_body("chat"))
            .await
            .status(),
        200
    );
    assert_eq!(
        post_as(&gw, "sk-u", "/v1/chat/completions", &chat_body("chat"))
            .await
            .status(),
        200
    );

    // The report, and the cost in the access log.
    let s = spend(&gw, "team-a").await;
    assert_eq!(s["budget"], "daily");
    assert_eq!(s["limit_usd"], 10.0);
    assert_eq!(s["remaining_usd"], 0.0);
    assert!(s["resets_at"].as_str().unwrap().ends_with("T00:00:00+00:00"));
    let lines = gw.access_lines_until(1, |l| l.contains("\"cost_usd\":8.0"));
    assert!(lines.iter().any(|l| l.contains("\"cost_usd\":8.0")), "{lines:?}");

    // A reload keeps the spend.
    gw.signal("HUP");
    assert!(wait_until_async(|| async { metric(&gw, r#"aigw_config_reloads_total{result="ok"}"#).await == 1.0 }).await);
    let r = post_as(&gw, "sk-a1", "/v1/chat/completions", &chat_body("chat")).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn two_gateways_share_a_budget_through_redis() {
    let mock = Mock::start();
    let redis = PrivateRedis::start_any();
    let config = config(&unique("shared"), Some(&redis));
    let a = Gateway::start(&config, &mock);
    let b = Gateway::start(&config, &mock);
    assert_eq!(
        post_as(&a, "sk-a1", "/v1/chat/completions", &chat_body("chat"))
            .await
            .status(),
        200
    );
    spent(&b, "team-a", 8.0).await;
    let r = post_as(&b, "sk-a2", "/v1/chat/completions", &chat_body("chat")).await;
    assert_eq!(r.headers()["x-aigw-budget-remaining"], "2.000000");
    spent(&a, "team-a", 16.0).await;
    let r = post_as(&a, "sk-a1", "/v1/chat/completions", &chat_body("chat")).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(metric(&a, "aigw_budget_store_errors_total").await, 0.0);
}

/// With Redis, an instance writes its charges in one INCRBY per 100 ms (src/budget.rs),
/// and what it has not written yet when told to stop is written before it exits.
#[tokio::test]
async fn shared_charges_are_written_in_batches_and_before_a_stop() {
    let redis = PrivateRedis::start_any();
    let port = redis.port;
    let mock = Mock::start();
    let config = config("batched", Some(&redis)).replace("usd: 10,", "usd: 1000,");
    let mut gw = Gateway::start(&config, &mock);
    let in_redis = || {
        let keys = redis_cli(port, &["KEYS", "aigw:budget:batched:team-a:*"]);
        let key = keys.trim();
        redis_cli(port, &["GET", key]).trim().parse::<u64>().unwrap_or(0)
    };
    // Twenty at once: their charges fall within a few 100 ms windows, however slow the
    // machine.
    let body = chat_body("chat");
    let answers =
        futures_util::future::join_all((0..20).map(|_| post_as(&gw, "sk-a1", "/v1/chat/completions", &body))).await;
    assert!(answers.iter().all(|r| r.status() == StatusCode::OK));
    assert!(wait_until(5, || in_redis() == 160_000_000), "{}", in_redis());
    let writes = redis_calls(port, &["incrby"]);
    assert!((1..20).contains(&writes), "20 charges in {writes} writes");

    // One more, and a stop right after: the charge is in Redis when the process ends.
    let r = post_as(&gw, "sk-a1", "/v1/chat/completions", &chat_body("chat")).await;
    assert_eq!(r.status(), StatusCode::OK);
    let _ = r.bytes().await;
    gw.signal("TERM");
    assert!(wait_until(10, || gw.child.try_wait().unwrap().is_some()));
    assert_eq!(in_redis(), 168_000_000);
}
