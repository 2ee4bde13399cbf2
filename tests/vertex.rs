//! Google Vertex AI end to end: OpenAI and Anthropic callers reach Gemini and Claude
//! models of a `vertex` provider (the mock's Vertex paths), with an OAuth2 access token
//! the gateway obtains from the service account key (a JWT assertion the mock's token
//! endpoint verifies), shared by every request and renewed before it expires; a token
//! endpoint that refuses is a clear 502 that fails over, and no credential is ever shown.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{json, Value};

const CONFIG: &str = r#"
{SERVER}
provider_keys:
  - name: vx
    provider: vertex
    base_url: "{MOCK}"
    vertex: {project: aigw-test, location: us-east5, credentials_file: "{KEYFILE}"}
  - {name: oa, provider: openai_compatible, base_url: "{MOCK}/v1", api_key: "{PROVIDER_KEY}"}
models:
  - {name: gemini, provider_key: vx, model: gemini-2.5-flash, pricing: {input_per_mtok: 1, output_per_mtok: 2}}
  - {name: claude, provider_key: vx, model: "claude-sonnet-4@20250514"}
  - {name: gpt, provider_key: oa, model: up-gpt}
  - name: vertex-then-gpt
    routing: {targets: [{model: gemini}, {model: gpt, priority: 1}]}
api_keys:
  - {name: main, key: "{CALLER_KEY}", owner: team}
"#;

fn start(mock: &Mock, query: &str) -> (Gateway, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let key = vertex_key_file(dir.path(), mock, query);
    let config = CONFIG.replace("{KEYFILE}", key.to_str().unwrap());
    (Gateway::start(&config, mock), dir)
}

async fn tokens_issued(mock: &Mock) -> u64 {
    mock.stats()["tokens_issued"].as_u64().unwrap()
}

/// No credential of any kind in what the gateway printed.
fn assert_no_credentials(gw: &Gateway) {
    let logs = gw.log_text() + &gw.access_lines().join("\n");
    for secret in ["ya29.", "PRIVATE KEY", "eyJ", "assertion="] {
        assert!(!logs.contains(secret), "{secret} in the gateway's output:\n{logs}");
    }
}

#[tokio::test]
async fn openai_and_anthropic_callers_reach_gemini_and_claude_with_one_shared_token() {
    let mock = Mock::start();
    let (gw, _dir) = start(&mock, "");

    // Chat -> Gemini on Vertex, JSON.
    let resp = post(&gw, "/v1/chat/completions", &chat_body("gemini")).await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "Hello from the aigw mock upstream model today."
    );
    let seen = mock.last_request();
    assert_eq!(
        seen["path"],
        "/v1/projects/aigw-test/locations/us-east5/publishers/google/models/gemini-2.5-flash:generateContent"
    );
    let auth = seen["headers"]["authorization"].as_str().unwrap();
    assert!(auth.starts_with("Bearer ya29.mock-"), "{auth}");
    assert!(seen["headers"].get("x-goog-api-key").is_none());
    assert!(!seen.to_string().contains(CALLER_KEY));

    // Chat -> Gemini, streamed.
    let mut body = chat_body("gemini");
    body["stream"] = json!(true);
    let resp = post(&gw, "/v1/chat/completions", &body).await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert_eq!(completion_text(&text), "Hello from the aigw mock upstream model today.");
    assert!(mock.last_request()["path"]
        .as_str()
        .unwrap()
        .ends_with(":streamGenerateContent?alt=sse"));

    // Messages -> Claude on Vertex: Anthropic's format, the model in the path and the
    // version in the body.
    let msg = json!({"model": "claude", "max_tokens": 50, "messages": [{"role": "user", "content": "Say hello"}]});
    let resp = post_messages_as(&gw, CALLER_KEY, &msg).await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["type"], "message");
    assert_eq!(
        v["content"][0]["text"],
        "Hello from the aigw mock upstream model today."
    );
    let seen = mock.last_request();
    assert_eq!(
        seen["path"],
        "/v1/projects/aigw-test/locations/us-east5/publishers/anthropic/models/claude-sonnet-4@20250514:rawPredict"
    );
    let sent: Value = serde_json::from_str(seen["body"].as_str().unwrap()).unwrap();
    assert_eq!(sent["anthropic_version"], "vertex-2023-10-16");
    assert!(sent.get("model").is_none(), "{sent}");
    // The caller's Anthropic headers describe its body; Vertex takes neither.
    assert!(seen["headers"].get("anthropic-version").is_none());
    assert!(seen["headers"].get("x-api-key").is_none());

    // Messages -> Claude, streamed.
    let mut msg = msg;
    msg["stream"] = json!(true);
    let resp = post_messages_as(&gw, CALLER_KEY, &msg).await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(text.contains("event: message_stop"), "{text}");
    assert!(mock.last_request()["path"]
        .as_str()
        .unwrap()
        .ends_with(":streamRawPredict"));

    // Chat -> Claude on Vertex (translated), streamed with usage.
    let mut body = chat_body("claude");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let resp = post(&gw, "/v1/chat/completions", &body).await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert_eq!(completion_text(&text), "Hello from the aigw mock upstream model today.");
    assert!(text.contains("\"completion_tokens\":8"), "{text}");

    // One token served all five requests.
    assert_eq!(tokens_issued(&mock).await, 1);
    // Usage and cost counted as for any provider.
    assert!(metric(&gw, r#"aigw_tokens_total{model="gemini",owner="team",type="output"}"#).await >= 16.0);
    assert_no_credentials(&gw);
}

#[tokio::test]
async fn a_token_is_renewed_before_it_expires_without_a_request_waiting() {
    let mock = Mock::start();
    // Tokens that live 301 s: a second after each is issued, it is within the five
    // minutes of expiry the refresher renews ahead.
    let (gw, _dir) = start(&mock, "expires_in=301");
    assert_eq!(
        post(&gw, "/v1/chat/completions", &chat_body("gemini")).await.status(),
        200
    );
    assert_eq!(tokens_issued(&mock).await, 1);
    // Renewed in the background, with no request in flight.
    assert!(wait_until(10, || mock.stats()["tokens_issued"].as_u64().unwrap() >= 3));
    let before = tokens_issued(&mock).await;
    // Requests use the renewed token (the mock refuses unknown ones) without fetching.
    for _ in 0..3 {
        assert_eq!(
            post(&gw, "/v1/chat/completions", &chat_body("gemini")).await.status(),
            200
        );
    }
    assert!(tokens_issued(&mock).await <= before + 1);
    assert_no_credentials(&gw);
}

#[tokio::test]
async fn a_refused_token_is_a_502_that_fails_over_and_names_no_credential() {
    let mock = Mock::start();
    let (gw, _dir) = start(&mock, "fail=1");
    let resp = post(&gw, "/v1/chat/completions", &chat_body("gemini")).await;
    assert_eq!(resp.status(), 502);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(
        v["error"]["message"],
        "The gateway could not authenticate to the provider 'vx'."
    );
    // The route moves on to its next target.
    let resp = post(&gw, "/v1/chat/completions", &chat_body("vertex-then-gpt")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-aigw-model"], "gpt");
    // The operator's log says why, without the assertion or the key.
    assert!(
        wait_until(5, || gw.log_text().contains("invalid_grant")),
        "{}",
        gw.log_text()
    );
    // Nothing reached a Vertex path without a token.
    assert!(mock
        .requests()
        .iter()
        .all(|r| !r["path"].as_str().unwrap().contains("/publishers/")));
    assert_no_credentials(&gw);
}

/// A token endpoint's error description is the provider's text in a process log line:
/// its newline cannot start a forged line, its ESC cannot drive the operator's terminal.
#[tokio::test]
async fn a_token_error_cannot_forge_or_colour_a_log_line() {
    let mock = Mock::start();
    // "\nERROR forged: all keys leaked\u{2028}\x1b[2J", form-encoded.
    let (gw, _dir) = start(&mock, "fail=%0AERROR+forged:+all+keys+leaked%E2%80%A8%1B%5B2J");
    let resp = post(&gw, "/v1/chat/completions", &chat_body("gemini")).await;
    assert_eq!(resp.status(), 502);
    assert!(
        wait_until(5, || gw.log_text().contains("forged: all keys leaked")),
        "{}",
        gw.log_text()
    );
    let log = gw.log_text();
    assert!(
        log.contains(r"invalid_grant \nERROR forged: all keys leaked\u2028\u001b[2J"),
        "{log}"
    );
    for l in log.lines() {
        assert!(!l.starts_with("ERROR forged"), "a forged line: {log}");
        assert!(!l.contains(['\u{1b}', '\u{2028}']), "raw in {l:?}");
    }
}

#[tokio::test]
async fn a_token_answer_is_read_only_up_to_a_bound() {
    let mock = Mock::start();
    let (gw, _dir) = start(&mock, "huge=1");
    let resp = post(&gw, "/v1/chat/completions", &chat_body("gemini")).await;
    assert_eq!(resp.status(), 502);
    assert!(
        wait_until(5, || gw.log_text().contains("answered more than 65536 bytes")),
        "{}",
        gw.log_text()
    );
}

#[test]
fn vertex_settings_are_checked_when_the_config_loads() {
    let dir = tempfile::tempdir().unwrap();
    let bad_key = dir.path().join("bad.json");
    std::fs::write(
        &bad_key,
        r#"{"type":"service_account","client_email":"a@b","private_key":"-----BEGIN PRIVATE KEY-----\nTOPSECRET\n-----END PRIVATE KEY-----\n"}"#,
    )
    .unwrap();
    let config = format!(
        r#"
version: 1
provider_keys:
  - {{name: a, provider: vertex}}
  - {{name: b, provider: vertex, api_key: sk-x, vertex: {{project: p, location: us-east5, credentials_file: "{}"}}}}
  - {{name: c, provider: vertex, vertex: {{project: "p/../x", location: us-east5, credentials_file: /nonexistent.json}}}}
  - {{name: d, provider: gemini, api_key: k, vertex: {{project: p, location: l, credentials_file: x}}}}
"#,
        bad_key.display()
    );
    assert_config_errors(
        &config,
        &[
            "provider_keys[0].vertex: required for vertex providers",
            "provider_keys[1].api_key: vertex providers authenticate with vertex.credentials_file",
            "provider_keys[1].vertex.credentials_file:",
            "is not an RSA private key in PEM",
            "provider_keys[2].vertex.project: must be a project id",
            "provider_keys[2].vertex.credentials_file: cannot read '/nonexistent.json'",
            "provider_keys[3].vertex: only vertex providers take the vertex section",
        ],
        "TOPSECRET",
    );
}
