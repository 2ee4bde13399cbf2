//! Every row of SPEC §3's error table that the gateway can produce today, end to end, in
//! OpenAI's envelope.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{json, Value};

async fn expect_error(resp: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(resp.status().as_u16(), status, "expected {code}");
    assert!(resp.headers().contains_key("x-request-id"));
    assert_eq!(resp.headers()["content-type"], "application/json");
    let v: Value = resp.json().await.unwrap();
    let e = &v["error"];
    assert_eq!(e["code"], code, "{v}");
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(e["type"].is_string() && e.get("param").is_some(), "{v}");
    v
}

fn raw_post(gw: &Gateway, body: &'static str) -> reqwest::RequestBuilder {
    client()
        .post(format!("{}/v1/chat/completions", gw.url()))
        .bearer_auth(CALLER_KEY)
        .body(body)
}

#[tokio::test]
async fn bad_bodies_are_400() {
    let mock = Mock::start();
    let gw = Gateway::start(BASE_CONFIG, &mock);
    expect_error(raw_post(&gw, "not json").send().await.unwrap(), 400, "invalid_json").await;
    expect_error(raw_post(&gw, "").send().await.unwrap(), 400, "invalid_json").await;
    expect_error(raw_post(&gw, "[1]").send().await.unwrap(), 400, "invalid_request").await;
    expect_error(
        raw_post(&gw, r#"{"messages":[]}"#).send().await.unwrap(),
        400,
        "invalid_request",
    )
    .await;
    expect_error(
        raw_post(&gw, r#"{"model":7}"#).send().await.unwrap(),
        400,
        "invalid_request",
    )
    .await;
    let before = mock.requests().len();
    assert_eq!(before, 0, "nothing malformed reaches the provider");
}

#[tokio::test]
async fn credentials_are_401_with_one_message() {
    let mock = Mock::start();
    let gw = Gateway::start(BASE_CONFIG, &mock);
    let url = format!("{}/v1/chat/completions", gw.url());
    let body = chat_body("chat");
    let mut messages = Vec::new();
    for req in [
        client().post(&url).json(&body),
        client().post(&url).bearer_auth("sk-unknown").json(&body),
        client().post(&url).bearer_auth("sk-expired").json(&body),
        client().post(&url).bearer_auth("sk-disabled").json(&body),
        client()
            .post(&url)
            .header("authorization", format!("Basic {CALLER_KEY}"))
            .json(&body),
    ] {
        let v = expect_error(req.send().await.unwrap(), 401, "invalid_api_key").await;
        messages.push(v["error"]["message"].clone());
    }
    messages.dedup();
    assert_eq!(messages.len(), 1, "one message for every failure: {messages:?}");
    // Checked before the body: a bad key with a broken body is still 401.
    let resp = client().post(&url).body("not json").send().await.unwrap();
    expect_error(resp, 401, "invalid_api_key").await;
    // A bad key never learns whether a model exists.
    let resp = client().get(format!("{}/v1/models", gw.url())).send().await.unwrap();
    expect_error(resp, 401, "invalid_api_key").await;
}

#[tokio::test]
async fn models_403_and_404() {
    let mock = Mock::start();
    let gw = Gateway::start(BASE_CONFIG, &mock);
    let v = expect_error(
        post(&gw, "/v1/chat/completions", &chat_body("secret-model")).await,
        403,
        "model_not_allowed",
    )
    .await;
    assert_eq!(v["error"]["param"], "model");
    expect_error(
        post(&gw, "/v1/chat/completions", &chat_body("no-such-model")).await,
        404,
        "model_not_found",
    )
    .await;
    let resp = client()
        .post(format!("{}/v1/unknown", gw.url()))
        .bearer_auth(CALLER_KEY)
        .send()
        .await
        .unwrap();
    expect_error(resp, 404, "not_found").await;
    let resp = client()
        .get(format!("{}/v1/chat/completions", gw.url()))
        .bearer_auth(CALLER_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["allow"], "POST");
    expect_error(resp, 405, "method_not_allowed").await;
}

#[tokio::test]
async fn body_over_the_limit_is_413() {
    let mock = Mock::start();
    let gw = Gateway::start(BASE_CONFIG, &mock);
    let big = json!({"model": "chat", "messages": [{"role": "user", "content": "x".repeat(2_200_000)}]}).to_string();
    // Declared length: refused before the body is read.
    let resp = client()
        .post(format!("{}/v1/chat/completions", gw.url()))
        .bearer_auth(CALLER_KEY)
        .body(big.clone())
        .send()
        .await
        .unwrap();
    expect_error(resp, 413, "request_too_large").await;
    // Chunked, no length: refused once the limit is passed.
    let stream = futures_util::stream::iter(
        big.into_bytes()
            .chunks(65536)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let resp = client()
        .post(format!("{}/v1/chat/completions", gw.url()))
        .bearer_auth(CALLER_KEY)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    expect_error(resp, 413, "request_too_large").await;
    assert!(mock.requests().is_empty());
}

#[tokio::test]
async fn upstream_failures_are_502_503_504() {
    let mock = Mock::start();
    let config = BASE_CONFIG
        .replace(
            "models:\n",
            concat!(
                "  - {name: nowhere, provider: openai_compatible, base_url: \"http://127.0.0.1:1/v1\"}\n",
                "  - {name: unresolvable, provider: openai_compatible, base_url: \"http://no-such-host.invalid/v1\"}\n",
                "models:\n",
                "  - {name: down, provider_key: nowhere}\n",
                "  - {name: ghost, provider_key: unresolvable}\n",
            ),
        )
        .replace("api_keys:\n", "api_keys:\n  - {name: all, key: sk-all}\n");
    let gw = Gateway::start(&config, &mock);
    let call = |m: &str| {
        client()
            .post(format!("{}/v1/chat/completions", gw.url()))
            .bearer_auth("sk-all")
            .json(&chat_body(m))
            .send()
    };
    // A provider 5xx becomes the gateway's 502, without the provider's own text.
    let v = expect_error(call("fails").await.unwrap(), 502, "upstream_error").await;
    assert!(
        !v.to_string().contains("mock failure"),
        "provider internals are not echoed: {v}"
    );
    // No first byte within first_byte_ms.
    expect_error(call("slow").await.unwrap(), 504, "upstream_timeout").await;
    // Connection refused.
    expect_error(call("down").await.unwrap(), 502, "upstream_error").await;
    // A provider whose name never resolves has no healthy address.
    expect_error(call("ghost").await.unwrap(), 503, "no_healthy_target").await;
}
