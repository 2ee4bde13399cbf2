//! End to end: the gateway in front of the mock upstream, over real sockets.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn chat_rewrites_model_swaps_credentials_and_keeps_the_rest() {
    let mock = Mock::start();
    let gw = Gateway::start(BASE_CONFIG, &mock);
    // Field order, spacing and escapes must reach the provider exactly as sent.
    let raw = r#"{"messages":[{"role":"user","content":"caf\u00e9 \"quoted\""}],  "model":"chat","temperature":0.25,"x_custom":{"n":[1,2]}}"#;
    let resp = client()
        .post(format!("{}/v1/chat/completions", gw.url()))
        .bearer_auth(CALLER_KEY)
        .header("content-type", "application/json")
        .header("x-request-id", "req-123")
        .body(raw)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-request-id"], "req-123");
    assert_eq!(resp.headers()["x-aigw-model"], "chat");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["model"], "upstream-chat");
    assert_eq!(v["object"], "chat.completion");

    let seen = mock.last_request();
    assert_eq!(seen["path"], "/v1/chat/completions");
    assert_eq!(
        seen["body"],
        raw.replace(r#""model":"chat""#, r#""model":"upstream-chat""#)
    );
    let headers = &seen["headers"];
    assert_eq!(headers["authorization"], format!("Bearer {PROVIDER_KEY}"));
    assert_eq!(headers["x-request-id"], "req-123");
    assert_eq!(headers["host"], mock.addr.to_string());
    let all = headers.to_string();
    assert!(!all.contains(CALLER_KEY), "caller key forwarded: {all}");
}

#[tokio::test]
async fn new_request_id_when_the_caller_sends_none_or_a_bad_one() {
    let mock = Mock::start();
    let gw = Gateway::start(BASE_CONFIG, &mock);
    let resp = post(&gw, "/v1/chat/completions", &chat_body("chat")).await;
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(id.len(), 36, "a UUID: {id}");
    let resp = client()
        .post(format!("{}/v1/chat/completions", gw.url()))
        .bearer_auth(CALLER_KEY)
        .header("x-request-id", "x".repeat(300))
        .json(&chat_body("chat"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"].len(), 36);
}

#[tokio::test]
async fn streaming_injects_usage_upstream_and_strips_it_for_the_caller() {
    let mock = Mock::start();
    let gw = Gateway::start(BASE_CONFIG, &mock);
    let mut body = chat_body("chat");
    body["stream"] = json!(true);
    let resp = post(&gw, "/v1/chat/completions", &body).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let text = resp.text().await.unwrap();
    let data = sse_data(&text);
    assert_eq!(data.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert!(chunks.len() > 3);
    assert!(
        chunks.iter().all(|c| !c["choices"].as_array().unwrap().is_empty()),
        "the usage-only chunk must be stripped: {text}"
    );
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "Hello from the aigw mock upstream model today.");

    let seen: Value = serde_json::from_str(mock.last_request()["body"].as_str().unwrap()).unwrap();
    assert_eq!(seen["stream_options"]["include_usage"], true);
    // The usage was read even though the caller never saw it.
    assert!(
        wait_until(5, || gw
            .access_lines()
            .iter()
            .any(|l| l.contains("\"output_tokens\":8"))),
        "{:?}",
        gw.access_lines()
    );
}

#[tokio::test]
async fn streaming_keeps_usage_when_the_caller_asked_for_it() {
    let mock = Mock::start();
    let gw = Gateway::start(BASE_CONFIG, &mock);
    let mut body = chat_body("chat");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let text = post(&gw, "/v1/chat/completions", &body).await.text().await.unwrap();
    let data = sse_data(&text);
    let usage: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 8);
}

#[tokio::test]
async fn streams_arrive_event_by_event() {
    let mock = Mock::start();
    let gw = Gateway::start(BASE_CONFIG, &mock);
    let mut body = chat_body("slow-stream");
    body["stream"] = json!(true);
    let mut resp = post(&gw, "/v1/chat/completions", &body).await;
    // The first event arrives while the mock is still producing the rest (40 words at
    // 300 ms apart): the gateway does not buffer the stream.
    let first = tokio::time::timeout(Duration::from_secs(5), resp.chunk())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(first.starts_with(b"data: "));
    assert_eq!(mock.stats()["cancelled_streams"], 0);
}

#[tokio::test]
async fn embeddings_and_models() {
    let mock = Mock::start();
    let gw = Gateway::start(BASE_CONFIG, &mock);
    let resp = post(&gw, "/v1/embeddings", &json!({"model": "emb", "input": ["a", "b"]})).await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    assert_eq!(mock.last_request()["path"], "/v1/embeddings");

    let list = get_json(&format!("{}/v1/models", gw.url()), CALLER_KEY).await;
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "chat",
            "emb",
            "slow",
            "slow-stream",
            "broken-stream",
            "broken-early",
            "fails",
            "teapot",
            "limited"
        ]
    );
    assert!(!ids.contains(&"secret-model"), "only models this key may use");

    let one = client()
        .get(format!("{}/v1/models/chat", gw.url()))
        .bearer_auth(CALLER_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(one.status(), 200);
    assert_eq!(one.json::<Value>().await.unwrap()["id"], "chat");
    let hidden = client()
        .get(format!("{}/v1/models/secret-model", gw.url()))
        .bearer_auth(CALLER_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(hidden.status(), 404);
}

#[tokio::test]
async fn provider_4xx_pass_through_unchanged() {
    let mock = Mock::start();
    let gw = Gateway::start(BASE_CONFIG, &mock);
    let resp = post(&gw, "/v1/chat/completions", &chat_body("teapot")).await;
    assert_eq!(resp.status(), 418);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "mock_error");

    let resp = post(&gw, "/v1/chat/completions", &chat_body("limited")).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "7");
}

#[tokio::test]
async fn mid_stream_failure_ends_with_an_error_event_and_no_done() {
    let mock = Mock::start();
    let gw = Gateway::start(BASE_CONFIG, &mock);
    let mut body = chat_body("broken-stream");
    body["stream"] = json!(true);
    let resp = post(&gw, "/v1/chat/completions", &body).await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    let data = sse_data(&text);
    assert!(!data.iter().any(|d| d == "[DONE]"), "{text}");
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "upstream_error", "{text}");
    // Two content chunks made it before the drop.
    let contents = data.iter().filter(|d| d.contains("\"content\"")).count();
    assert!(contents >= 2, "{text}");

    // A stream that fails before any byte reached the caller gets a plain 502 instead.
    let mut body = chat_body("broken-early");
    body["stream"] = json!(true);
    let resp = post(&gw, "/v1/chat/completions", &body).await;
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.json::<Value>().await.unwrap()["error"]["code"], "upstream_error");
}

#[tokio::test]
async fn a_stream_that_stalls_past_the_read_timeout_ends_with_an_error_event() {
    let mock = Mock::start();
    // first_byte_ms is 1500 in BASE_CONFIG; this stream waits 4 s between events.
    let config = BASE_CONFIG.replace(
        "models:\n",
        "models:\n  - {name: stalls, provider_key: mock, model: \"x?chunk_delay_ms=4000&words=3\"}\n",
    );
    let config = config.replace("models: [chat,", "models: [stalls, chat,");
    let gw = Gateway::start(&config, &mock);
    let mut body = chat_body("stalls");
    body["stream"] = json!(true);
    let resp = post(&gw, "/v1/chat/completions", &body).await;
    assert_eq!(resp.status(), 200, "the header came in time");
    let text = resp.text().await.unwrap();
    let data = sse_data(&text);
    assert!(!data.iter().any(|d| d == "[DONE]"), "{text}");
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "upstream_error", "{text}");
}

#[tokio::test]
async fn client_disconnect_cancels_the_upstream_request() {
    let mock = Mock::start();
    let gw = Gateway::start(BASE_CONFIG, &mock);
    let mut body = chat_body("slow-stream");
    body["stream"] = json!(true);
    let payload = body.to_string();
    let mut sock = TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    write!(
        sock,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {CALLER_KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{payload}",
        payload.len()
    )
    .unwrap();
    let mut buf = [0u8; 512];
    let n = sock.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    drop(sock);
    // The 40-word stream would run 12 s; the mock sees its client go away long before.
    assert!(
        wait_until(5, || mock.stats()["cancelled_streams"] == 1),
        "upstream stream was not cancelled"
    );
}

#[tokio::test]
async fn azure_deployment_path_and_api_key_header() {
    let mock = Mock::start();
    let config = BASE_CONFIG.replace(
        "models:\n",
        "  - {name: az, provider: azure, base_url: \"{MOCK}\", api_key: \"{PROVIDER_KEY}\", api_version: \"2024-10-21\"}\nmodels:\n  - {name: az-chat, provider_key: az, model: my-deployment}\n",
    );
    let config = config.replace(
        "owner: team-a, models: [chat,",
        "owner: team-a, models: [az-chat, chat,",
    );
    let gw = Gateway::start(&config, &mock);
    let resp = post(&gw, "/v1/chat/completions", &chat_body("az-chat")).await;
    assert_eq!(resp.status(), 200);
    let seen = mock.last_request();
    assert_eq!(
        seen["path"],
        "/openai/deployments/my-deployment/chat/completions?api-version=2024-10-21"
    );
    assert_eq!(seen["headers"]["api-key"], PROVIDER_KEY);
    assert!(seen["headers"].get("authorization").is_none());
}

#[tokio::test]
async fn caller_key_in_x_api_key_or_api_key_is_not_forwarded() {
    let mock = Mock::start();
    let gw = Gateway::start(BASE_CONFIG, &mock);
    for header in ["x-api-key", "api-key"] {
        let resp = client()
            .post(format!("{}/v1/chat/completions", gw.url()))
            .header(header, CALLER_KEY)
            .json(&chat_body("chat"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{header}");
        let seen = mock.last_request()["headers"].to_string();
        assert!(!seen.contains(CALLER_KEY), "{header} forwarded: {seen}");
    }
}
