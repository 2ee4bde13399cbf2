//! Nothing of the gateway's provider account crosses the gateway: only an allowlist of
//! caller headers reaches a provider, only an allowlist of provider headers reaches the
//! caller, a provider refusing the gateway's credential is the gateway's 502, and the
//! admin API hides header values and `${VAR:-default}` literals.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{json, Value};

const CONFIG: &str = r#"
{SERVER}
  admin_keys: [{key: adm-account}]
provider_keys:
  - {name: mock, provider: openai_compatible, base_url: "{MOCK}/v1", api_key: "{PROVIDER_KEY}"}
  - {name: an, provider: anthropic, base_url: "{MOCK}", api_key: "{PROVIDER_KEY}"}
  - {name: gm, provider: gemini, base_url: "{MOCK}", api_key: "{PROVIDER_KEY}"}
  - name: wrong
    provider: openai_compatible
    base_url: "{MOCK}/v1"
    api_key: "${AIGW_TEST_UNSET_KEY:-sk-wrong-provider-key-9c1d7e}"
    headers: {x-server-secret: "hdr-literal-secret-4b2a"}
models:
  - {name: chat, provider_key: mock, model: "x?echo"}
  - {name: claude, provider_key: an, model: "c?echo"}
  - {name: gem, provider_key: gm, model: "g?echo"}
  - {name: refused, provider_key: wrong, model: "x?echo"}
  - {name: teapot, provider_key: mock, model: "x?status=418"}
  - name: refused-then-ok
    routing: {targets: [{model: refused}, {model: chat, priority: 1}]}
api_keys:
  - {name: main, key: "{CALLER_KEY}", owner: team-a}
"#;

/// Headers a caller may send that must never reach a provider.
const CALLER_ONLY: [(&str, &str); 9] = [
    ("openai-organization", "org-someone-else"),
    ("openai-project", "proj_someone_else"),
    ("cookie", "session=caller-cookie"),
    ("x-forwarded-for", "10.1.2.3"),
    ("x-forwarded-host", "evil.example"),
    ("forwarded", "for=10.1.2.3"),
    ("x-stainless-lang", "python"),
    ("x-custom-anything", "1"),
    ("proxy-authorization", "Basic Zm9vOmJhcg=="),
];

async fn send(gw: &Gateway, path: &str, body: &Value, extra: &[(&str, &str)]) -> reqwest::Response {
    let mut req = client()
        .post(format!("{}{path}", gw.url()))
        .bearer_auth(CALLER_KEY)
        .header("anthropic-version", "2023-06-01")
        .header("openai-beta", "assistants=v2");
    for (k, v) in CALLER_ONLY.iter().chain(extra) {
        req = req.header(*k, *v);
    }
    req.json(body).send().await.unwrap()
}

#[tokio::test]
async fn only_an_allowlist_of_caller_headers_reaches_each_provider() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    let chat = json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}]});
    let claude = json!({"model": "claude", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]});
    let gem = json!({"model": "gem", "messages": [{"role": "user", "content": "hi"}]});
    for (path, body, provider) in [
        ("/v1/chat/completions", &chat, "openai"),
        ("/v1/chat/completions", &claude, "anthropic"),
        ("/v1/messages", &claude, "anthropic"),
        ("/v1/messages", &chat, "openai"),
        ("/v1/chat/completions", &gem, "gemini"),
        (
            "/v1/chat/completions",
            &json!({"model": "chat", "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
            "openai",
        ),
    ] {
        let r = send(&gw, path, body, &[]).await;
        assert_eq!(r.status(), 200, "{path} {provider}");
        let seen = mock.last_request();
        let headers = seen["headers"].as_object().unwrap();
        for (k, _) in CALLER_ONLY {
            assert!(
                headers.get(k).is_none(),
                "{k} reached {provider} via {path}: {headers:?}"
            );
        }
        assert!(headers.get("x-api-key").is_none_or(|v| v != CALLER_KEY));
        assert!(headers
            .get("authorization")
            .is_none_or(|v| !v.as_str().unwrap().contains(CALLER_KEY)));
        assert_eq!(headers["content-type"], "application/json", "{provider}");
        // Protocol headers reach the provider that reads them, and only that one.
        assert_eq!(
            headers.contains_key("anthropic-version"),
            provider == "anthropic",
            "{provider}"
        );
        assert_eq!(headers.contains_key("openai-beta"), provider == "openai", "{provider}");
    }
}

#[tokio::test]
async fn only_an_allowlist_of_provider_headers_reaches_the_caller() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    let cases = [
        (
            "/v1/chat/completions",
            json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}]}),
        ),
        (
            "/v1/chat/completions",
            json!({"model": "chat", "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
        ),
        (
            "/v1/chat/completions",
            json!({"model": "teapot", "messages": [{"role": "user", "content": "hi"}]}),
        ),
        (
            "/v1/messages",
            json!({"model": "claude", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}),
        ),
        (
            "/v1/messages",
            json!({"model": "claude", "max_tokens": 20, "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
        ),
        (
            "/v1/chat/completions",
            json!({"model": "claude", "messages": [{"role": "user", "content": "hi"}]}),
        ),
        (
            "/v1/chat/completions",
            json!({"model": "gem", "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
        ),
    ];
    for (path, body) in cases {
        let r = send(&gw, path, &body, &[]).await;
        let status = r.status();
        for (name, _) in aigw::mock::ACCOUNT_HEADERS {
            assert!(
                r.headers().get(name).is_none(),
                "{name} reached the caller ({path}, {body}, {status})"
            );
        }
        assert!(r.headers().get("x-request-id").is_some());
        assert!(r.headers().get("content-type").is_some());
        let _ = r.bytes().await.unwrap();
    }
}

#[tokio::test]
async fn a_refused_gateway_credential_is_a_502_and_fails_over() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    let body = json!({"model": "refused", "messages": [{"role": "user", "content": "hi"}]});
    let r = send(&gw, "/v1/chat/completions", &body, &[]).await;
    assert_eq!(r.status(), 502);
    let text = r.text().await.unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["error"]["code"], "upstream_error");
    assert!(v["error"]["message"].as_str().unwrap().contains("credential"), "{text}");
    assert!(!text.contains("sk-wrong") && !text.contains("9c1d7e"), "{text}");
    // The same through the Anthropic dialect: never the caller's `authentication_error`.
    let r = client()
        .post(format!("{}/v1/messages", gw.url()))
        .header("x-api-key", CALLER_KEY)
        .json(&json!({"model": "refused", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "api_error");
    // Another target with a working credential answers.
    let body = json!({"model": "refused-then-ok", "messages": [{"role": "user", "content": "hi"}]});
    let r = send(&gw, "/v1/chat/completions", &body, &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-aigw-model"], "chat");
    // The operator sees it: a warning and the attempts' outcome.
    assert!(wait_until(5, || gw
        .log_text()
        .contains("refused the gateway's credential")));
    assert!(!gw.log_text().contains("sk-wrong"));
    let m = metrics_text(&gw).await;
    assert!(m.contains("outcome=\"credential_rejected\""), "{m}");
}

#[tokio::test]
async fn the_admin_api_hides_header_values_and_literal_defaults() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    for path in ["provider_keys", "provider_keys/wrong", "config"] {
        let r = client()
            .get(format!("{}/admin/v1/{path}", gw.admin_url()))
            .bearer_auth("adm-account")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let text = r.text().await.unwrap();
        assert!(text.contains("wrong"), "{path}: {text}");
        for secret in ["sk-wrong-provider-key", "hdr-literal-secret", PROVIDER_KEY] {
            assert!(!text.contains(secret), "{path} shows {secret}: {text}");
        }
    }
}
