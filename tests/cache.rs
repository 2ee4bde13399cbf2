//! Response caching end to end: hit, miss and bypass; Cache-Control; replay across JSON and
//! streams in both dialects; owner isolation; expiry; errors and broken streams never
//! stored; rate limits and guardrails on hits; a Redis backend shared by two gateways.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

const CONFIG: &str = r#"
{SERVER}
provider_keys:
  - {name: mock, provider: openai_compatible, base_url: "{MOCK}/v1", api_key: "{PROVIDER_KEY}"}
  - {name: an, provider: anthropic, base_url: "{MOCK}", api_key: "{PROVIDER_KEY}"}
cache:
  - {name: per-owner, ttl_s: 300}
  - {name: shared, ttl_s: 300, scope: global}
  - {name: short, ttl_s: 1}
rate_limits:
  - {name: two, requests_per_minute: 2}
guardrails:
  - {name: pii-out, pack: filters/pii.yaml, stage: response, action: mask}
models:
  - {name: gpt, provider_key: mock, model: "x?echo", cache: per-owner}
  - {name: claude, provider_key: an, model: "c?echo", cache: per-owner}
  - {name: global, provider_key: mock, model: "x?echo", cache: shared}
  - {name: brief, provider_key: mock, model: "x?echo", cache: short}
  - {name: fails, provider_key: mock, model: "x?status=503", cache: per-owner}
  - {name: refuses, provider_key: mock, model: "x?status=400", cache: per-owner}
  - {name: cut, provider_key: mock, model: "x?drop_after=3&chunk_delay_ms=20&words=20", cache: per-owner}
  - {name: uncached, provider_key: mock, model: "x?echo"}
  - {name: emb, provider_key: mock, cache: per-owner}
api_keys:
  - {name: a1, key: sk-a1, owner: team-a}
  - {name: a2, key: sk-a2, owner: team-a}
  - {name: b, key: sk-b, owner: team-b}
  - {name: nocache, key: sk-nocache, owner: team-a, cache: false}
  - {name: limited, key: sk-limited, owner: team-l, rate_limit: two}
  - {name: guarded, key: sk-guarded, owner: team-a, guardrails: [pii-out]}
"#;

fn chat(model: &str, text: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": text}]})
}

fn cache_header(r: &reqwest::Response) -> String {
    r.headers()
        .get("x-aigw-cache")
        .map_or("-".into(), |v| v.to_str().unwrap().to_owned())
}

async fn send(gw: &Gateway, key: &str, body: &Value, cache_control: Option<&str>) -> (String, String) {
    let path = if body.get("max_tokens").is_some() {
        "/v1/messages"
    } else {
        "/v1/chat/completions"
    };
    let mut req = client()
        .post(format!("{}{path}", gw.url()))
        .header("x-api-key", key)
        .json(body);
    if let Some(cc) = cache_control {
        req = req.header("cache-control", cc);
    }
    let r = req.send().await.unwrap();
    let h = cache_header(&r);
    (h, r.text().await.unwrap())
}

/// Repeats the request until it is a hit (the store runs in a task after the answer).
async fn until_hit(gw: &Gateway, key: &str, body: &Value) -> String {
    for _ in 0..100 {
        let (h, text) = send(gw, key, body, None).await;
        if h == "hit" {
            return text;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("never a hit for {body}");
}

#[tokio::test]
async fn miss_then_hit_without_the_provider() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    let body = chat("gpt", &unique("hello"), false);
    let (h, first) = send(&gw, "sk-a1", &body, None).await;
    assert_eq!(h, "miss");
    // Until the store task finished, a repeat may still be a miss; the hit itself is not.
    // Such a repeat went to the provider and stored its own answer, which the hit may be
    // (on a loaded machine the first store can land after the second miss).
    let mut answers = vec![first];
    let mut second = None;
    for _ in 0..100 {
        let (h, text) = send(&gw, "sk-a1", &body, None).await;
        if h == "hit" {
            second = Some(text);
            break;
        }
        answers.push(text);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let second = second.expect("never a hit");
    let calls = mock.requests().len();
    assert_eq!(send(&gw, "sk-a1", &body, None).await.0, "hit");
    assert_eq!(mock.requests().len(), calls, "a hit never reaches the provider");
    assert!(
        answers.contains(&second),
        "a hit is an answer the provider gave: {second}"
    );
    // Field order, whitespace, `user` and `stream_options` do not split the entry.
    let mut reordered: Value = serde_json::from_str(&body.to_string()).unwrap();
    reordered["user"] = json!("someone");
    let raw = format!(
        r#"{{ "messages" : {} , "user": "x", "model": "gpt" }}"#,
        reordered["messages"]
    );
    let r = client()
        .post(format!("{}/v1/chat/completions", gw.url()))
        .header("x-api-key", "sk-a1")
        .header("content-type", "application/json")
        .body(raw)
        .send()
        .await
        .unwrap();
    assert_eq!(cache_header(&r), "hit");
    assert_eq!(r.headers()["x-aigw-model"], "gpt");
    // Models without a policy say nothing; embeddings bypass.
    let (h, _) = send(&gw, "sk-a1", &chat("uncached", "x", false), None).await;
    assert_eq!(h, "-");
    let r = post_as(&gw, "sk-a1", "/v1/embeddings", &json!({"model": "emb", "input": "x"})).await;
    assert_eq!(cache_header(&r), "bypass");

    // Counted in the logging phase, which may finish just after the caller has the body.
    assert!(
        wait_until_async(|| async {
            let m = metrics(&gw).await;
            m.get(r#"aigw_cache_total{model="gpt",result="hit"}"#) >= Some(&2.0)
                && m.get(r#"aigw_cache_total{model="gpt",result="miss"}"#) >= Some(&1.0)
        })
        .await
    );
    let lines = gw.access_lines_until(1, |l| l.contains("\"cache\":\"hit\""));
    assert!(lines.iter().any(|l| l.contains("\"cache\":\"hit\"")), "{lines:?}");
}

#[tokio::test]
async fn replay_across_json_and_streams_in_both_dialects() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    // JSON first, then a stream with a usage chunk.
    let text = unique("json to stream");
    assert_eq!(send(&gw, "sk-a1", &chat("gpt", &text, false), None).await.0, "miss");
    let mut streaming = chat("gpt", &text, true);
    streaming["stream_options"] = json!({"include_usage": true});
    let replay = until_hit(&gw, "sk-a1", &streaming).await;
    assert_eq!(completion_text(&replay), text);
    assert!(replay.trim_end().ends_with("data: [DONE]"));
    let usage: Vec<Value> = sse_data(&replay)
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter(|v| !v["usage"].is_null())
        .collect();
    assert_eq!(usage.len(), 1, "{replay}");
    assert!(usage[0]["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    // Without include_usage, no usage chunk.
    let replay = until_hit(&gw, "sk-a1", &chat("gpt", &text, true)).await;
    assert!(!replay.contains("total_tokens"), "{replay}");

    // A stream first, then JSON.
    let text = unique("stream to json");
    assert_eq!(send(&gw, "sk-a1", &chat("gpt", &text, true), None).await.0, "miss");
    let v: Value = serde_json::from_str(&until_hit(&gw, "sk-a1", &chat("gpt", &text, false)).await).unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], text.as_str());
    assert_eq!(v["choices"][0]["finish_reason"], "stop");

    // Anthropic callers, native and translated providers.
    for model in ["claude", "gpt"] {
        let text = unique("messages");
        let msg = |stream: bool| {
            json!({"model": model, "max_tokens": 50, "stream": stream,
            "messages": [{"role": "user", "content": text}]})
        };
        assert_eq!(send(&gw, "sk-a1", &msg(true), None).await.0, "miss");
        let v: Value = serde_json::from_str(&until_hit(&gw, "sk-a1", &msg(false)).await).unwrap();
        assert_eq!(v["type"], "message");
        assert_eq!(v["content"][0]["text"], text.as_str());
        assert_eq!(v["stop_reason"], "end_turn");
        let replay = until_hit(&gw, "sk-a1", &msg(true)).await;
        assert_eq!(completion_text(&replay), text);
        assert!(replay.contains("event: message_stop"));
    }
}

#[tokio::test]
async fn cache_control_and_opt_out() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    // no-store: neither looked up nor stored.
    let body = chat("gpt", &unique("no-store"), false);
    assert_eq!(send(&gw, "sk-a1", &body, Some("no-store")).await.0, "bypass");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(send(&gw, "sk-a1", &body, None).await.0, "miss");
    // no-cache: not looked up, but stored.
    let body = chat("gpt", &unique("no-cache"), false);
    assert_eq!(send(&gw, "sk-a1", &body, Some("no-cache")).await.0, "bypass");
    until_hit(&gw, "sk-a1", &body).await;
    assert_eq!(send(&gw, "sk-a1", &body, Some("max-age=0, no-cache")).await.0, "bypass");
    // A key with `cache: false` never reads nor fills (same owner as a1).
    assert_eq!(send(&gw, "sk-nocache", &body, None).await.0, "bypass");
    let body = chat("gpt", &unique("opt-out"), false);
    assert_eq!(send(&gw, "sk-nocache", &body, None).await.0, "bypass");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(send(&gw, "sk-a1", &body, None).await.0, "miss");
}

#[tokio::test]
async fn owners_never_share_entries_unless_the_scope_is_global() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    let body = chat("gpt", &unique("owners"), false);
    assert_eq!(send(&gw, "sk-a1", &body, None).await.0, "miss");
    until_hit(&gw, "sk-a2", &body).await;
    assert_eq!(send(&gw, "sk-b", &body, None).await.0, "miss", "another owner");
    let body = chat("global", &unique("global"), false);
    assert_eq!(send(&gw, "sk-a1", &body, None).await.0, "miss");
    until_hit(&gw, "sk-b", &body).await;
}

#[tokio::test]
async fn entries_expire_after_their_ttl() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    let body = chat("brief", &unique("ttl"), false);
    assert_eq!(send(&gw, "sk-a1", &body, None).await.0, "miss");
    until_hit(&gw, "sk-a1", &body).await;
    // ttl_s: 1: the entry goes away on its own (polled: no timing is asserted).
    let gone = wait_until_async(|| async {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let r = client()
            .post(format!("{}/v1/chat/completions", gw.url()))
            .header("x-api-key", "sk-a1")
            .json(&body)
            .send()
            .await
            .unwrap();
        cache_header(&r) == "miss"
    })
    .await;
    assert!(gone, "the entry expired");
}

#[tokio::test]
async fn failures_and_broken_streams_are_never_stored() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    for model in ["fails", "refuses"] {
        let body = chat(model, "x", false);
        for _ in 0..2 {
            let (h, _) = send(&gw, "sk-a1", &body, None).await;
            assert_eq!(h, if model == "fails" { "-" } else { "miss" }, "{model}");
        }
    }
    // A stream the provider cuts off, twice: both reach the provider.
    let before = mock.requests().len();
    for _ in 0..2 {
        let (h, _) = send(&gw, "sk-a1", &chat("cut", "x", true), None).await;
        assert_eq!(h, "miss");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(mock.requests().len(), before + 2);
}

#[tokio::test]
async fn hits_pass_rate_limits_and_response_guardrails() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    // A hit is still a request: the third within the minute is refused.
    let body = chat("gpt", &unique("limited"), false);
    assert_eq!(send(&gw, "sk-limited", &body, None).await.0, "miss");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let r = post_as(&gw, "sk-limited", "/v1/chat/completions", &body).await;
    assert_eq!(cache_header(&r), "hit");
    assert_eq!(r.headers()["x-ratelimit-remaining-requests"], "0");
    let r = post_as(&gw, "sk-limited", "/v1/chat/completions", &body).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    // Hits charge no tokens.
    let tokens = metric(&gw, r#"aigw_tokens_total{model="gpt",owner="team-l",type="output"}"#).await;
    assert!(tokens > 0.0);

    // An entry stored by a key without guardrails is masked for a key with them.
    let text = format!("{} mail jane.doe@example.com", unique("pii"));
    let body = chat("gpt", &text, false);
    assert_eq!(send(&gw, "sk-a1", &body, None).await.0, "miss");
    let plain = until_hit(&gw, "sk-a1", &body).await;
    assert!(completion_text(&plain).contains("jane.doe@example.com"));
    let masked = until_hit(&gw, "sk-guarded", &body).await;
    assert!(completion_text(&masked).ends_with("mail [REDACTED:email]"), "{masked}");
    let streamed = until_hit(&gw, "sk-guarded", &chat("gpt", &text, true)).await;
    assert!(
        completion_text(&streamed).ends_with("mail [REDACTED:email]"),
        "{streamed}"
    );
}

fn redis_config(url: &str) -> String {
    CONFIG
        .replace(
            "{SERVER}\n",
            &format!("{{SERVER}}\n  redis: {{url: \"{url}\", timeout_ms: 200}}\n"),
        )
        .replace(
            "{name: shared, ttl_s: 300, scope: global}",
            "{name: shared, ttl_s: 300, scope: global, backend: redis}",
        )
}

#[tokio::test]
async fn a_redis_backend_is_shared_by_two_gateways() {
    let mock = Mock::start();
    let redis = PrivateRedis::start_any();
    let config = redis_config(&redis.url());
    let a = Gateway::start(&config, &mock);
    let b = Gateway::start(&config, &mock);
    // Large enough to be stored compressed.
    let text = format!("{} {}", unique("redis"), "lorem ipsum ".repeat(200));
    let body = chat("global", &text, false);
    assert_eq!(send(&a, "sk-a1", &body, None).await.0, "miss");
    // The fill reaches Redis after the answer: once `a` hits (its store is Redis too), the
    // entry is there, and `b` must answer from it without calling the provider.
    until_hit(&a, "sk-a1", &body).await;
    let calls = mock.requests().len();
    let hit = until_hit(&b, "sk-b", &body).await;
    assert_eq!(completion_text(&hit), text);
    let replay = until_hit(&b, "sk-b", &chat("global", &text, true)).await;
    assert_eq!(completion_text(&replay), text);
    assert_eq!(mock.requests().len(), calls);
    assert_eq!(metric(&b, "aigw_cache_errors_total").await, 0.0);
}

#[tokio::test]
async fn an_unreachable_redis_is_a_miss_and_is_counted() {
    let mock = Mock::start();
    let dead = format!("redis://127.0.0.1:{}/0", free_port());
    let gw = Gateway::start(&redis_config(&dead), &mock);
    let body = chat("global", &unique("dead redis"), false);
    for _ in 0..2 {
        let r = post_as(&gw, "sk-a1", "/v1/chat/completions", &body).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(cache_header(&r), "miss");
    }
    assert!(wait_until_async(|| async { metric(&gw, "aigw_cache_errors_total").await >= 2.0 }).await);
}
