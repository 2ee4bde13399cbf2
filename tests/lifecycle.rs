//! Process lifecycle: SIGHUP reload (all or nothing), SIGTERM drain, and the CLI commands.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::json;

async fn status_of(gw: &Gateway, model: &str) -> u16 {
    post(gw, "/v1/chat/completions", &chat_body(model))
        .await
        .status()
        .as_u16()
}

async fn poll(secs: u64, mut f: impl AsyncFnMut() -> bool) -> bool {
    for _ in 0..secs * 20 {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn sighup_reload_is_all_or_nothing() {
    let mock = Mock::start();
    let gw = Gateway::start(BASE_CONFIG, &mock);
    assert_eq!(status_of(&gw, "added").await, 404);

    let with_added = BASE_CONFIG
        .replace("models:\n", "models:\n  - {name: added, provider_key: mock}\n")
        .replace("models: [chat,", "models: [added, chat,");
    gw.write_config(&with_added, &mock);
    gw.signal("HUP");
    assert!(
        poll(10, async || status_of(&gw, "added").await == 200).await,
        "{}",
        gw.log_text()
    );

    // A broken file: every error is logged, the last good config keeps serving.
    let broken = with_added
        .replace("provider_key: mock}", "provider_key: nope}")
        .replace("version: 1", "version: 1\nbogus: true");
    gw.write_config(&broken, &mock);
    gw.signal("HUP");
    assert!(
        wait_until(10, || gw.log_text().contains("config reload failed")),
        "{}",
        gw.log_text()
    );
    let log = gw.log_text();
    assert!(log.contains("bogus: unknown section"), "{log}");
    assert!(
        log.contains("models[0].provider_key: no provider key named 'nope'"),
        "{log}"
    );
    assert_eq!(status_of(&gw, "added").await, 200);
    assert_eq!(status_of(&gw, "chat").await, 200);

    // A deleted file is a failed reload too.
    std::fs::remove_file(gw.config_path()).unwrap();
    gw.signal("HUP");
    assert!(wait_until(10, || gw.log_text().matches("config reload failed").count() == 2));
    assert_eq!(status_of(&gw, "added").await, 200);
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let mock = Mock::start();
    let config = BASE_CONFIG.replace(
        "models:\n",
        "models:\n  - {name: paced, provider_key: mock, model: \"x?chunk_delay_ms=100&words=20\"}\n",
    );
    let config = config.replace("models: [chat,", "models: [paced, chat,");
    let mut gw = Gateway::start(&config, &mock);
    let mut body = chat_body("paced");
    body["stream"] = json!(true);
    let mut resp = post(&gw, "/v1/chat/completions", &body).await;
    let first = resp.chunk().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "));

    gw.signal("TERM");
    // New connections are refused once the listener closes...
    assert!(
        wait_until(10, || TcpStream::connect(("127.0.0.1", gw.port)).is_err()),
        "listener still open"
    );
    // ...while the request in flight runs to its end.
    let mut rest = Vec::new();
    while let Some(c) = resp.chunk().await.unwrap() {
        rest.extend_from_slice(&c);
    }
    let text = String::from_utf8(rest).unwrap();
    assert_eq!(sse_data(&text).last().unwrap(), "[DONE]", "{text}");
    // Then it exits 0, before the 10 s grace period is over.
    let mut status = None;
    assert!(wait_until(8, || {
        status = gw.child.try_wait().unwrap();
        status.is_some()
    }));
    assert!(status.unwrap().success(), "{status:?}");
}

#[test]
fn validate_lists_every_error_and_sets_the_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "version: 2\nprovider_keys: [{name: p, provider: openai}]\nmodels: [{name: m, provider_key: q}]\napi_keys: [{name: k, key_env: AIGW_TEST_UNSET}]\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["validate", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    for needle in [
        "4 error(s)",
        "version: unsupported version 2",
        "provider_keys[0].api_key: required",
        "models[0].provider_key: no provider key named 'q'",
        "api_keys[0].key_env: environment variable AIGW_TEST_UNSET",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }

    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        "version: 1\nprovider_keys: [{name: p, provider: openai, api_key: '${K:-x}'}]\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["validate", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8(out.stdout).unwrap().contains("OK: 1 provider keys"));

    // $AIGW_CONFIG is the default config path.
    let out = Command::new(BIN)
        .arg("validate")
        .env("AIGW_CONFIG", &good)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn serve_refuses_an_invalid_config() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "version: 1\nmodels: [{name: m}]\n").unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .contains("models[0]: needs provider_key"));
}

#[test]
fn hash_key_from_argument_and_stdin_is_usable_as_key_hash() {
    let out = Command::new(BIN).args(["hash-key", "sk-abc"]).output().unwrap();
    let from_arg = String::from_utf8(out.stdout).unwrap();
    assert_eq!(from_arg.trim(), format!("blake3:{}", blake3::hash(b"sk-abc").to_hex()));

    let mut child = Command::new(BIN)
        .arg("hash-key")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"sk-abc\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), from_arg);
}

#[tokio::test]
async fn key_hash_and_key_env_authenticate() {
    let mock = Mock::start();
    let hash = format!("blake3:{}", blake3::hash(b"sk-hashed").to_hex());
    let config = BASE_CONFIG.replace(
        "api_keys:\n",
        &format!("api_keys:\n  - {{name: hashed, key_hash: \"{hash}\"}}\n  - {{name: from-env, key_env: AIGW_TEST_CALLER}}\n"),
    );
    let gw = Gateway::start_with(&config, &mock, &[("AIGW_TEST_CALLER", "sk-env-value")]);
    for key in ["sk-hashed", "sk-env-value"] {
        let resp = client()
            .post(format!("{}/v1/chat/completions", gw.url()))
            .bearer_auth(key)
            .json(&chat_body("chat"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{key}");
    }
    // Health endpoints on the admin listener only.
    let ready = client().get(format!("{}/readyz", gw.admin_url())).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let live = client()
        .get(format!("{}/healthz", gw.admin_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    let not_here = client().get(format!("{}/healthz", gw.url())).send().await.unwrap();
    assert_eq!(not_here.status(), 404);
}
