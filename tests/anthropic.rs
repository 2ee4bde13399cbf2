//! Anthropic Messages end to end: native passthrough, translation both ways, errors in
//! each dialect's envelope, and broken upstream streams ending cleanly.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{json, Value};

const CONFIG: &str = r#"
version: 1
server:
  listen: ["127.0.0.1:{PORT}"]
  admin_listen: "127.0.0.1:{ADMIN}"
  max_request_body_bytes: 100000
provider_keys:
  - {name: oa, provider: openai_compatible, base_url: "{MOCK}/v1", api_key: "{PROVIDER_KEY}"}
  - {name: an, provider: anthropic, base_url: "{MOCK}", api_key: "{PROVIDER_KEY}", anthropic_version: "2023-06-01"}
models:
  - {name: claude, provider_key: an, model: up-claude}
  - {name: gpt, provider_key: oa, model: up-gpt}
  - {name: claude-429, provider_key: an, model: "x?status=429&retry_after=3"}
  - {name: claude-500, provider_key: an, model: "x?status=500"}
  - {name: gpt-400, provider_key: oa, model: "x?status=400"}
  - {name: claude-drop, provider_key: an, model: "x?drop_after=4&chunk_delay_ms=30"}
  - {name: gpt-drop, provider_key: oa, model: "x?drop_after=3&chunk_delay_ms=30"}
  - {name: claude-bad-json, provider_key: an, model: "x?bad_json"}
api_keys:
  - {name: main, key: "{CALLER_KEY}"}
"#;

fn messages_body(model: &str, stream: bool) -> Value {
    json!({"model": model, "max_tokens": 50, "stream": stream, "messages": [{"role": "user", "content": "Say hello"}]})
}

async fn post_messages(gw: &Gateway, body: &Value, key: Option<&str>) -> reqwest::Response {
    let mut req = client()
        .post(format!("{}/v1/messages", gw.url()))
        .header("anthropic-version", "2023-06-01")
        .json(body);
    if let Some(k) = key {
        req = req.header("x-api-key", k);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn native_passthrough_swaps_key_and_model_only() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    let raw = r#"{"model":"claude","max_tokens":50,"messages":[{"role":"user","content":"Say hello"}],"top_k":3,"metadata":{"user_id":"u1"}}"#;
    let resp = client()
        .post(format!("{}/v1/messages", gw.url()))
        .header("x-api-key", CALLER_KEY)
        .header("anthropic-version", "2023-06-01")
        .header("anthropic-beta", "tools-2024-04-04")
        .header("content-type", "application/json")
        .body(raw)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-aigw-model"], "claude");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["type"], "message");
    assert_eq!(v["model"], "up-claude");

    let seen = mock.last_request();
    assert_eq!(seen["path"], "/v1/messages");
    assert_eq!(
        seen["body"],
        raw.replace(r#""model":"claude""#, r#""model":"up-claude""#)
    );
    assert_eq!(seen["headers"]["x-api-key"], PROVIDER_KEY);
    assert_eq!(seen["headers"]["anthropic-version"], "2023-06-01");
    assert_eq!(seen["headers"]["anthropic-beta"], "tools-2024-04-04");
    assert!(!seen["headers"].to_string().contains(CALLER_KEY));
}

#[tokio::test]
async fn openai_callers_reach_anthropic_with_its_headers_and_path() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    let resp = post(&gw, "/v1/chat/completions", &chat_body("claude")).await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "Hello from the aigw mock upstream model today."
    );
    let seen = mock.last_request();
    assert_eq!(seen["path"], "/v1/messages");
    assert_eq!(seen["headers"]["x-api-key"], PROVIDER_KEY);
    assert_eq!(seen["headers"]["anthropic-version"], "2023-06-01");
    assert!(seen["headers"].get("authorization").is_none());
    let body: Value = serde_json::from_str(seen["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        body["max_tokens"], 4096,
        "Anthropic needs max_tokens; the gateway supplies it"
    );

    // And the reverse: an Anthropic caller on an OpenAI-style provider.
    let resp = post_messages(&gw, &messages_body("gpt", false), Some(CALLER_KEY)).await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["type"], "message");
    assert_eq!(
        v["content"][0]["text"],
        "Hello from the aigw mock upstream model today."
    );
    let seen = mock.last_request();
    assert_eq!(seen["path"], "/v1/chat/completions");
    assert_eq!(seen["headers"]["authorization"], format!("Bearer {PROVIDER_KEY}"));
    assert!(seen["headers"].get("anthropic-version").is_none());
}

#[tokio::test]
async fn messages_errors_use_anthropics_envelope() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    let check = |resp: reqwest::Response, status: u16, kind: &'static str| async move {
        assert_eq!(resp.status().as_u16(), status, "{kind}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["type"], "error", "{v}");
        assert_eq!(v["error"]["type"], kind, "{v}");
        assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    };
    check(
        post_messages(&gw, &messages_body("claude", false), None).await,
        401,
        "authentication_error",
    )
    .await;
    check(
        post_messages(&gw, &messages_body("nope", false), Some(CALLER_KEY)).await,
        404,
        "not_found_error",
    )
    .await;
    let resp = client()
        .post(format!("{}/v1/messages", gw.url()))
        .header("x-api-key", CALLER_KEY)
        .body("{not json")
        .send()
        .await
        .unwrap();
    check(resp, 400, "invalid_request_error").await;
    let big =
        json!({"model": "claude", "max_tokens": 5, "messages": [{"role": "user", "content": "x".repeat(200_000)}]});
    check(
        post_messages(&gw, &big, Some(CALLER_KEY)).await,
        413,
        "request_too_large",
    )
    .await;
    // Provider errors keep their status and change envelope.
    check(
        post_messages(&gw, &messages_body("gpt-400", false), Some(CALLER_KEY)).await,
        400,
        "invalid_request_error",
    )
    .await;
    check(
        post_messages(&gw, &messages_body("claude-500", false), Some(CALLER_KEY)).await,
        502,
        "api_error",
    )
    .await;
    let resp = post(&gw, "/v1/chat/completions", &chat_body("claude-429")).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "3");
    let v: Value = resp.json().await.unwrap();
    assert!(
        v["error"]["message"].as_str().unwrap().contains("mock failure 429"),
        "{v}"
    );
}

#[tokio::test]
async fn streams_in_both_directions_and_usage_is_counted() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    // Native Anthropic stream: forwarded as is; usage read from message_start/message_delta.
    let text = post_messages(&gw, &messages_body("claude", true), Some(CALLER_KEY))
        .await
        .text()
        .await
        .unwrap();
    assert!(text.starts_with("event: message_start\n"), "{text}");
    assert!(text.contains("event: ping\n"));
    assert!(text.trim_end().ends_with(r#"data: {"type":"message_stop"}"#), "{text}");
    assert!(wait_until(5, || gw.access_lines().iter().any(|l| l
        .contains("\"alias\":\"claude\"")
        && l.contains("\"output_tokens\":8"))));

    // Anthropic caller, OpenAI provider: Anthropic events out.
    let text = post_messages(&gw, &messages_body("gpt", true), Some(CALLER_KEY))
        .await
        .text()
        .await
        .unwrap();
    let kinds: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("event: ")).collect();
    assert_eq!(kinds.first(), Some(&"message_start"));
    assert_eq!(kinds.last(), Some(&"message_stop"));
    assert!(kinds.contains(&"content_block_delta"));
}

#[tokio::test]
async fn broken_upstream_streams_end_with_an_error_event() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    // OpenAI caller, Anthropic provider cut mid-stream: no [DONE], an error event last.
    let mut body = chat_body("claude-drop");
    body["stream"] = json!(true);
    let text = post(&gw, "/v1/chat/completions", &body).await.text().await.unwrap();
    let data = sse_data(&text);
    assert!(!data.iter().any(|d| d == "[DONE]"), "{text}");
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "upstream_error", "{text}");

    // Anthropic caller, OpenAI provider cut mid-stream: no message_stop, an error event last.
    let text = post_messages(&gw, &messages_body("gpt-drop", true), Some(CALLER_KEY))
        .await
        .text()
        .await
        .unwrap();
    assert!(!text.contains("message_stop"), "{text}");
    let last_event = text.trim_end().rsplit("\n\n").next().unwrap();
    assert!(last_event.starts_with("event: error\n"), "{text}");

    // Native Anthropic stream cut: the caller gets Anthropic's error event.
    let text = post_messages(&gw, &messages_body("claude-drop", true), Some(CALLER_KEY))
        .await
        .text()
        .await
        .unwrap();
    assert!(!text.contains("message_stop"), "{text}");
    assert!(
        text.trim_end()
            .rsplit("\n\n")
            .next()
            .unwrap()
            .starts_with("event: error\n"),
        "{text}"
    );

    // A truncated JSON answer that must be translated becomes a clean error body.
    let resp = post(&gw, "/v1/chat/completions", &chat_body("claude-bad-json")).await;
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "upstream_error", "{v}");
}
