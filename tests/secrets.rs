//! No key ever leaks: a mixed run through every feature (proxying, streams, both dialects,
//! Gemini translation, failover, errors, limits, guardrails, cache, traces, files and batches, a failed reload), then every
//! response body and header, every access and process log line, `/metrics` and every
//! exported span are searched for the provider keys and the caller keys used.
#![allow(clippy::unwrap_used)]

mod common;

use common::otlp::Receiver;
use common::*;
use serde_json::{json, Value};

const SECOND_PROVIDER_KEY: &str = "sk-ant-second-provider-key-7f3a9c";
const ENV_CALLER: &str = "sk-env-caller-secret-5d2e";
const HASHED_CALLER: &str = "sk-hashed-caller-secret-1b4c";
const WRONG_KEY: &str = "sk-wrong-but-secret-looking-8e6f";
const RELOAD_KEY: &str = "sk-only-in-a-broken-reload-2a7d";
/// A key under no guardrail: batches refuse models under guardrails that block or mask.
const BATCH_CALLER: &str = "sk-batch-caller-secret-9c1f";

fn config(otlp: &str) -> String {
    format!(
        r#"
{{SERVER}}
provider_keys:
  - {{name: mock, provider: openai_compatible, base_url: "{{MOCK}}/v1", api_key: "{{PROVIDER_KEY}}"}}
  - {{name: an, provider: anthropic, base_url: "{{MOCK}}", api_key: "{SECOND_PROVIDER_KEY}"}}
  - {{name: gm, provider: gemini, base_url: "{{MOCK}}", api_key: "{{PROVIDER_KEY}}"}}
rate_limits:
  - {{name: one, requests_per_minute: 1}}
cache:
  - {{name: c}}
guardrails:
  - {{name: secrets, pack: filters/secrets.yaml, stage: request}}
  - {{name: pii, pack: filters/pii.yaml, action: mask}}
models:
  - {{name: chat, provider_key: mock, model: "x?echo", cache: c, guardrails: [pii]}}
  - {{name: claude, provider_key: an, model: "c?echo"}}
  - {{name: gem, provider_key: gm, model: "g?echo", guardrails: [pii]}}
  - {{name: down, provider_key: mock, model: "x?status=503"}}
  - {{name: cut, provider_key: mock, model: "x?drop_after=2&chunk_delay_ms=10"}}
  - name: routed
    routing: {{targets: [{{model: down}}, {{model: chat, priority: 1}}]}}
  - {{name: emb, provider_key: mock}}
api_keys:
  - {{name: main, key: "{{CALLER_KEY}}", owner: team-a, guardrails: [secrets]}}
  - {{name: env, key_env: AIGW_TEST_ENV_CALLER, owner: team-b, rate_limit: one}}
  - {{name: hashed, key_hash: "{hash}", owner: team-c, models: [chat]}}
  - {{name: batcher, key: "{BATCH_CALLER}", owner: team-d, models: [emb]}}
observability:
  otlp: {{endpoint: "{otlp}", sample_ratio: 1.0}}
"#,
        hash = hashed_key(HASHED_CALLER),
    )
}

/// `blake3:<hex>` as `aigw hash-key` prints it.
fn hashed_key(s: &str) -> String {
    let out = std::process::Command::new(BIN)
        .args(["hash-key"])
        .arg(s)
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

async fn call(gw: &Gateway, path: &str, key: &str, body: &Value, seen: &mut String) {
    let mut req = client().post(format!("{}{path}", gw.url())).json(body);
    req = if path == "/v1/messages" {
        req.header("x-api-key", key).header("anthropic-version", "2023-06-01")
    } else {
        req.bearer_auth(key)
    };
    let r = req.send().await.unwrap();
    seen.push_str(&format!("{} {:?}\n", r.status(), r.headers()));
    seen.push_str(&r.text().await.unwrap_or_default());
    seen.push('\n');
}

#[tokio::test]
async fn no_key_appears_in_any_output() {
    let rx = Receiver::start().await;
    let mock = Mock::start();
    let gw = Gateway::start_with(
        &config(&rx.endpoint()),
        &mock,
        &[("AIGW_TEST_ENV_CALLER", ENV_CALLER), ("RUST_LOG", "trace")],
    );
    let mut seen = String::new();
    let chat = |model: &str, stream: bool| json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "mail bob@example.com"}]});
    let msg = |model: &str, stream: bool| json!({"model": model, "max_tokens": 30, "stream": stream, "messages": [{"role": "user", "content": "hi"}]});
    for stream in [false, true] {
        call(
            &gw,
            "/v1/chat/completions",
            CALLER_KEY,
            &chat("chat", stream),
            &mut seen,
        )
        .await;
        call(
            &gw,
            "/v1/chat/completions",
            CALLER_KEY,
            &chat("claude", stream),
            &mut seen,
        )
        .await;
        call(&gw, "/v1/messages", CALLER_KEY, &msg("claude", stream), &mut seen).await;
        call(&gw, "/v1/messages", CALLER_KEY, &msg("chat", stream), &mut seen).await;
        call(&gw, "/v1/chat/completions", CALLER_KEY, &chat("gem", stream), &mut seen).await;
        call(&gw, "/v1/messages", CALLER_KEY, &msg("gem", stream), &mut seen).await;
        call(
            &gw,
            "/v1/chat/completions",
            CALLER_KEY,
            &chat("routed", stream),
            &mut seen,
        )
        .await;
        call(&gw, "/v1/chat/completions", CALLER_KEY, &chat("cut", stream), &mut seen).await;
    }
    for key in [ENV_CALLER, ENV_CALLER, HASHED_CALLER, WRONG_KEY] {
        call(&gw, "/v1/chat/completions", key, &chat("chat", false), &mut seen).await;
        call(&gw, "/v1/messages", key, &msg("claude", false), &mut seen).await;
    }
    call(&gw, "/v1/chat/completions", CALLER_KEY, &chat("down", false), &mut seen).await;
    call(
        &gw,
        "/v1/embeddings",
        CALLER_KEY,
        &json!({"model": "emb", "input": "x"}),
        &mut seen,
    )
    .await;
    // Files and batches: the gateway's own calls to the provider, a batch charged.
    let line = json!({"custom_id": "1", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": "emb", "messages": [{"role": "user", "content": "hi"}]}});
    let form = reqwest::multipart::Form::new().text("purpose", "batch").part(
        "file",
        reqwest::multipart::Part::bytes(line.to_string().into_bytes()).file_name("b.jsonl"),
    );
    let r = client()
        .post(format!("{}/v1/files", gw.url()))
        .bearer_auth(BATCH_CALLER)
        .multipart(form)
        .send()
        .await
        .unwrap();
    seen.push_str(&format!("{:?}\n", r.headers()));
    let file: Value = r.json().await.unwrap();
    seen.push_str(&file.to_string());
    let batch = json!({"input_file_id": file["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"});
    call(&gw, "/v1/batches", BATCH_CALLER, &batch, &mut seen).await;
    // A guardrail refusal of a prompt that carries a caller key and a provider key.
    let leaky = json!({"model": "chat", "messages": [{"role": "user", "content": format!("{CALLER_KEY} {SECOND_PROVIDER_KEY}")}]});
    call(&gw, "/v1/chat/completions", CALLER_KEY, &leaky, &mut seen).await;
    // Listing batches completes the one above (the mock's) and charges it.
    for (path, key) in [
        ("/v1/batches", BATCH_CALLER),
        ("/v1/files", BATCH_CALLER),
        ("/v1/models", CALLER_KEY),
        ("/v1/models/chat", CALLER_KEY),
        ("/v1/nope", CALLER_KEY),
    ] {
        let r = client()
            .get(format!("{}{path}", gw.url()))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        seen.push_str(&format!("{:?}\n", r.headers()));
        seen.push_str(&r.text().await.unwrap());
    }
    assert!(seen.contains("\"completed\""), "the run completed a batch");
    // A reload that fails on a config holding a new key: the error must not echo it.
    let broken = config(&rx.endpoint()).replace(
        "api_keys:\n",
        &format!(
            "api_keys:\n  - {{name: bad, key: \"{RELOAD_KEY}\", bogus: 1}}\n  - {{name: dup, key: \"{RELOAD_KEY}\"}}\n"
        ),
    );
    gw.write_config(&broken, &mock);
    gw.signal("HUP");
    assert!(
        wait_until(5, || gw.log_text().contains("api_keys[0]")),
        "{}",
        gw.log_text()
    );

    seen.push_str(&metrics_text(&gw).await);
    assert!(wait_until_async(|| async { rx.spans.lock().unwrap().len() >= 20 }).await);
    seen.push_str(&format!("{:?}", rx.spans.lock().unwrap()));
    seen.push_str(&gw.access_lines_until(20, |_| true).join("\n"));
    seen.push_str(&gw.log_text());

    assert!(seen.contains("[REDACTED:email]"), "the run exercised masking");
    assert!(seen.contains("content_filter") && seen.contains("rate_limit_exceeded"));
    for secret in [
        PROVIDER_KEY,
        SECOND_PROVIDER_KEY,
        CALLER_KEY,
        ENV_CALLER,
        HASHED_CALLER,
        WRONG_KEY,
        RELOAD_KEY,
        BATCH_CALLER,
    ] {
        // Any 12-character window of a key would be a leak too.
        for w in secret.as_bytes().windows(12) {
            let w = std::str::from_utf8(w).unwrap();
            assert!(!seen.contains(w), "'{w}' of a key appears in the output");
        }
    }
}
