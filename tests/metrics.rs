//! Prometheus metrics end to end: a scripted mix of requests (successes, a stream, a
//! failover, an upstream failure, 401, 429, cache hits and misses, a guardrail block) is
//! explained exactly by `/metrics`, and the exposition passes `promtool check metrics`.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};

use common::*;
use reqwest::StatusCode;
use serde_json::json;

const CONFIG: &str = r#"
{SERVER}
provider_keys:
  - name: mock
    provider: openai_compatible
    base_url: "{MOCK}/v1"
    api_key: "{PROVIDER_KEY}"
  - {name: an, provider: anthropic, base_url: "{MOCK}", api_key: "{PROVIDER_KEY}"}
rate_limits:
  - {name: one-per-minute, requests_per_minute: 1}
cache:
  - {name: c}
guardrails:
  - {name: no-falcon, rules: [{kind: keyword, words: [falcon]}], stage: request}
models:
  - {name: cached, provider_key: mock, model: upstream-cached, cache: c, guardrails: [no-falcon]}
  - {name: chat, provider_key: mock, model: upstream-chat, pricing: {input_per_mtok: 1000000, output_per_mtok: 2000000}}
  - {name: claude, provider_key: an, model: claude-x}
  - {name: fails, provider_key: mock, model: "x?status=503"}
  - name: failover
    routing:
      strategy: failover
      targets: [{model: fails, priority: 0}, {model: chat, priority: 1}]
api_keys:
  - {name: main, key: "{CALLER_KEY}", owner: team-a}
  - {name: limited, key: sk-limited, owner: team-b, rate_limit: one-per-minute}
"#;

async fn samples(gw: &Gateway) -> (String, HashMap<String, f64>) {
    let text = metrics_text(gw).await;
    let map = metrics(gw).await;
    (text, map)
}

fn get(m: &HashMap<String, f64>, series: &str) -> f64 {
    m.get(series).copied().unwrap_or(0.0)
}

#[tokio::test]
async fn a_scripted_mix_is_counted_exactly_once_per_request() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    // 2 successes, 1 stream, 1 failover, 1 upstream failure, 1 unauthenticated,
    // 1 rate limited (after 1 success of that key), 1 Anthropic call.
    for _ in 0..2 {
        assert_eq!(
            post(&gw, "/v1/chat/completions", &chat_body("chat")).await.status(),
            StatusCode::OK
        );
    }
    let r = post(
        &gw,
        "/v1/chat/completions",
        &json!({"model": "chat", "stream": true, "messages": [{"role": "user", "content": "Say hello"}]}),
    )
    .await;
    assert!(r.text().await.unwrap().contains("[DONE]"));
    assert_eq!(
        post(&gw, "/v1/chat/completions", &chat_body("failover")).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        post(&gw, "/v1/chat/completions", &chat_body("fails")).await.status(),
        StatusCode::BAD_GATEWAY
    );
    let unauth = client()
        .post(format!("{}/v1/chat/completions", gw.url()))
        .json(&chat_body("chat"))
        .send()
        .await
        .unwrap();
    assert_eq!(unauth.status(), StatusCode::UNAUTHORIZED);
    for want in [StatusCode::OK, StatusCode::TOO_MANY_REQUESTS] {
        let r = client()
            .post(format!("{}/v1/chat/completions", gw.url()))
            .bearer_auth("sk-limited")
            .json(&chat_body("chat"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), want);
    }
    let r = post(
        &gw,
        "/v1/messages",
        &json!({"model": "claude", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    // A cache miss, then requests until one hits (the store runs in a task), and a
    // request a guardrail blocks.
    let mut cached_requests = 0.0;
    loop {
        let r = post(&gw, "/v1/chat/completions", &chat_body("cached")).await;
        assert_eq!(r.status(), StatusCode::OK);
        cached_requests += 1.0;
        if r.headers()["x-aigw-cache"] == "hit" {
            break;
        }
        assert!(cached_requests < 100.0, "never a cache hit");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let blocked = post(
        &gw,
        "/v1/chat/completions",
        &json!({"model": "cached", "messages": [{"role": "user", "content": "the falcon"}]}),
    )
    .await;
    assert_eq!(blocked.status(), StatusCode::BAD_REQUEST);
    let r = post(
        &gw,
        "/v1/messages",
        &json!({"model": "claude", "max_tokens": 20, "messages": [{"role": "user", "content": "hi again"}]}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);

    // The last request's logging phase may finish just after its response.
    let mut m = HashMap::new();
    let mut text = String::new();
    for _ in 0..100 {
        (text, m) = samples(&gw).await;
        if get(
            &m,
            "aigw_requests_total{model=\"claude\",owner=\"team-a\",status=\"200\"}",
        ) == 2.0
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let req = |model: &str, owner: &str, status: u16| {
        get(
            &m,
            &format!("aigw_requests_total{{model=\"{model}\",owner=\"{owner}\",status=\"{status}\"}}"),
        )
    };
    assert_eq!(req("chat", "team-a", 200), 3.0, "{text}");
    assert_eq!(req("failover", "team-a", 200), 1.0);
    assert_eq!(req("fails", "team-a", 502), 1.0);
    assert_eq!(req("", "", 401), 1.0, "unauthenticated: no model, no owner");
    assert_eq!(req("chat", "team-b", 200), 1.0);
    assert_eq!(req("chat", "team-b", 429), 1.0);
    assert_eq!(req("claude", "team-a", 200), 2.0);
    assert_eq!(req("cached", "team-a", 200), cached_requests);
    assert_eq!(req("cached", "team-a", 400), 1.0);
    let total: f64 = m
        .iter()
        .filter(|(k, _)| k.starts_with("aigw_requests_total{"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(total, 10.0 + cached_requests + 1.0, "every request exactly once");
    let cache = |result: &str| get(&m, &format!("aigw_cache_total{{model=\"cached\",result=\"{result}\"}}"));
    assert_eq!(cache("hit"), 1.0);
    assert_eq!(cache("miss"), cached_requests - 1.0);
    assert_eq!(
        get(
            &m,
            "aigw_guardrail_hits_total{action=\"block\",guardrail=\"no-falcon\"}"
        ),
        1.0
    );
    assert_eq!(
        get(&m, "aigw_request_duration_seconds_count{model=\"chat\"}"),
        5.0,
        "team-a 3, team-b 2"
    );
    assert_eq!(get(&m, "aigw_time_to_first_token_seconds_count{model=\"chat\"}"), 1.0);

    // Attempts: the failover's first try and the plain failure were 5xx, the rest answered.
    let attempts = |target: &str, provider: &str, outcome: &str| {
        get(
            &m,
            &format!(
                "aigw_upstream_attempts_total{{outcome=\"{outcome}\",provider=\"{provider}\",target=\"{target}\"}}"
            ),
        )
    };
    assert_eq!(attempts("chat", "mock", "answered"), 5.0, "{text}");
    assert_eq!(attempts("fails", "mock", "error"), 1.0, "a provider 5xx");
    assert_eq!(attempts("fails", "mock", "retryable_status"), 1.0);
    assert_eq!(attempts("claude", "an", "answered"), 2.0);
    assert_eq!(
        attempts("cached", "mock", "answered"),
        cached_requests - 1.0,
        "hits never go upstream"
    );
    assert_eq!(
        get(&m, "aigw_ratelimit_rejections_total{policy=\"one-per-minute\"}"),
        1.0
    );

    // Tokens and cost, by the model that answered: what the mock reported, priced.
    let usage = post(&gw, "/v1/chat/completions", &chat_body("chat"))
        .await
        .json::<serde_json::Value>()
        .await
        .unwrap()["usage"]
        .clone();
    let (input, output) = (
        usage["prompt_tokens"].as_f64().unwrap(),
        usage["completion_tokens"].as_f64().unwrap(),
    );
    let before_in = get(&m, "aigw_tokens_total{model=\"chat\",owner=\"team-a\",type=\"input\"}");
    let before_cost = get(&m, "aigw_cost_usd_total{model=\"chat\",owner=\"team-a\"}");
    assert_eq!(before_in, 4.0 * input, "three chat calls and the failover, same prompt");
    assert!(before_cost > 0.0);
    let mut after = HashMap::new();
    for _ in 0..100 {
        (_, after) = samples(&gw).await;
        if get(
            &after,
            "aigw_tokens_total{model=\"chat\",owner=\"team-a\",type=\"input\"}",
        ) > before_in
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let out_delta = get(
        &after,
        "aigw_tokens_total{model=\"chat\",owner=\"team-a\",type=\"output\"}",
    ) - get(&m, "aigw_tokens_total{model=\"chat\",owner=\"team-a\",type=\"output\"}");
    assert_eq!(out_delta, output);
    let cost_delta = get(&after, "aigw_cost_usd_total{model=\"chat\",owner=\"team-a\"}") - before_cost;
    // $1 per input token and $2 per output token in this config.
    assert!((cost_delta - (input + 2.0 * output)).abs() < 1e-6, "{cost_delta}");
    assert!(
        get(
            &after,
            "aigw_tokens_total{model=\"claude\",owner=\"team-a\",type=\"output\"}"
        ) > 0.0
    );

    assert_eq!(get(&after, "aigw_inflight_requests"), 0.0);
    promtool_accepts(&text);
}

/// `promtool check metrics` (Debian package prometheus; .ci/run installs it).
fn promtool_accepts(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed (apt-get install prometheus)");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn metrics_can_be_switched_off() {
    let mock = Mock::start();
    let gw = Gateway::start(&format!("{CONFIG}observability: {{prometheus: false}}\n"), &mock);
    let r = client()
        .get(format!("{}/metrics", gw.admin_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}
