//! The control plane end to end: a real etcd, two gateway instances watching one prefix,
//! resources written through the admin API, `aigw import` / `aigw export`, an etcd outage,
//! an invalid state in etcd, and start-up from the cache file.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use aigw::config::Kind;
use common::etcd::Etcd;
use common::*;
use serde_json::{json, Value};

const ADMIN_KEY: &str = "adm-test-key-0123456789";
const NEW_CALLER_KEY: &str = "sk-caller-from-admin-api-42";

/// A gateway whose resources live in etcd under `prefix`.
fn config(etcd: &Etcd, prefix: &str, cache_file: Option<&std::path::Path>) -> String {
    let cache = cache_file.map_or(String::new(), |p| format!(", cache_file: \"{}\"", p.display()));
    format!(
        "{{SERVER}}\n  config_store:\n    etcd: {{endpoints: [\"{}\"], prefix: \"{prefix}\"{cache}}}\n  admin_keys: [{{key: {ADMIN_KEY}}}]\n",
        etcd.url()
    )
}

/// The seed: one provider, one model, one caller key.
const SEED: &str = r#"
provider_keys:
  - {name: mock, provider: openai_compatible, base_url: "{MOCK}/v1", api_key: "{PROVIDER_KEY}"}
models:
  - {name: chat, provider_key: mock, model: upstream-chat}
api_keys:
  - {name: main, key: "{CALLER_KEY}"}
"#;

/// Writes a config file with the seed and imports it.
fn import_seed(etcd: &Etcd, prefix: &str, mock: &Mock) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("seed.yaml");
    let text = fill(&format!("{}{SEED}", config(etcd, prefix, None)), mock, 1, 2);
    std::fs::write(&path, text).unwrap();
    let out = Command::new(BIN)
        .args(["import", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    dir
}

async fn admin(gw: &Gateway, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, String) {
    let mut req = client()
        .request(method, format!("{}/admin/v1/{path}", gw.admin_url()))
        .bearer_auth(ADMIN_KEY);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

async fn chat_status(gw: &Gateway, key: &str, model: &str) -> u16 {
    post_as(gw, key, "/v1/chat/completions", &chat_body(model))
        .await
        .status()
        .as_u16()
}

async fn until_status(gw: &Gateway, key: &str, model: &str, status: u16) -> bool {
    wait_until_async(|| async { chat_status(gw, key, model).await == status }).await
}

#[tokio::test]
async fn two_instances_are_managed_through_the_admin_api() {
    let etcd = Etcd::start();
    let mock = Mock::start();
    let prefix = format!("/{}", unique("aigw"));
    let _seed = import_seed(&etcd, &prefix, &mock);
    let a = Gateway::start(&config(&etcd, &prefix, None), &mock);
    let b = Gateway::start(&config(&etcd, &prefix, None), &mock);
    for gw in [&a, &b] {
        assert_eq!(chat_status(gw, CALLER_KEY, "chat").await, 200);
    }
    let mut answers = Vec::new();

    // A provider, a model and a key created through A are served by both.
    let put = [
        (
            "provider_keys/second",
            json!({"provider": "openai_compatible", "base_url": format!("{}/v1", mock.url()), "api_key": PROVIDER_KEY}),
        ),
        (
            "models/fresh",
            json!({"provider_key": "second", "model": "upstream-fresh"}),
        ),
        ("api_keys/newcomer", json!({"key": NEW_CALLER_KEY, "models": ["fresh"]})),
    ];
    for (path, body) in put {
        let (status, text) = admin(&a, reqwest::Method::PUT, path, Some(body)).await;
        assert_eq!(status, 201, "{path}: {text}");
        answers.push(text);
    }
    for gw in [&a, &b] {
        assert!(
            until_status(gw, NEW_CALLER_KEY, "fresh", 200).await,
            "the new key and model never served"
        );
    }
    let seen = mock.last_request();
    let body: Value = serde_json::from_str(seen["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["model"], "upstream-fresh", "{seen}");
    // Replacing is 200; reading one and listing show the redacted form.
    let (status, text) = admin(
        &b,
        reqwest::Method::PUT,
        "models/fresh",
        Some(json!({"name": "fresh", "provider_key": "second", "model": "upstream-fresher"})),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    for path in [
        "provider_keys",
        "provider_keys/second",
        "api_keys",
        "api_keys/newcomer",
        "config",
    ] {
        let (status, text) = admin(&a, reqwest::Method::GET, path, None).await;
        assert_eq!(status, 200, "{path}: {text}");
        answers.push(text);
    }
    let (_, one) = admin(&a, reqwest::Method::GET, "provider_keys/second", None).await;
    assert_eq!(serde_json::from_str::<Value>(&one).unwrap()["api_key"], "<redacted>");
    // Written back as read, the redacted key keeps the stored one (the mock takes only
    // the real key).
    let (status, text) = admin(
        &a,
        reqwest::Method::PUT,
        "provider_keys/second",
        Some(serde_json::from_str(&one).unwrap()),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert!(until_status(&b, NEW_CALLER_KEY, "fresh", 200).await);
    let seen = mock.last_request();
    assert_eq!(
        seen["headers"]["authorization"],
        format!("Bearer {PROVIDER_KEY}"),
        "{seen}"
    );

    // An invalid resource: 400 with every error, and nothing written.
    let (status, text) = admin(
        &a,
        reqwest::Method::PUT,
        "models/broken",
        Some(json!({"provider_key": "nowhere", "rate_limit": "none-such"})),
    )
    .await;
    assert_eq!(status, 400, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    let paths: Vec<&str> = v["error"]["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert!(
        paths.contains(&"models/broken.provider_key") && paths.contains(&"models/broken.rate_limit"),
        "{text}"
    );
    assert_eq!(admin(&a, reqwest::Method::GET, "models/broken", None).await.0, 404);
    // JWT issuers are resources too, checked the same way.
    let (status, text) = admin(
        &a,
        reqwest::Method::PUT,
        "jwt/sso",
        Some(json!({"issuer": "https://sso.example.test", "jwks_url": "https://sso.example.test/jwks"})),
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("jwt/sso.audience"), "{text}");
    let (status, text) = admin(
        &a,
        reqwest::Method::PUT,
        "jwt/sso",
        Some(json!({"issuer": "https://sso.example.test", "audience": "aigw", "jwks_url": "https://sso.example.test/jwks"})),
    )
    .await;
    assert_eq!(status, 201, "{text}");
    assert_eq!(admin(&b, reqwest::Method::GET, "jwt/sso", None).await.0, 200);
    let (status, text) = admin(&a, reqwest::Method::PUT, "models/other", Some(json!({"name": "else"}))).await;
    assert_eq!(status, 400, "{text}");
    assert_eq!(admin(&a, reqwest::Method::PUT, "models/x", None).await.0, 400);
    answers.push(text);

    // A delete that would leave a dangling reference is refused.
    let (status, text) = admin(&a, reqwest::Method::DELETE, "provider_keys/second", None).await;
    assert_eq!(status, 409, "{text}");
    assert!(text.contains("models/fresh.provider_key"), "{text}");
    // Deleting the key: both reject it.
    let (status, text) = admin(&b, reqwest::Method::DELETE, "api_keys/newcomer", None).await;
    assert_eq!(status, 204, "{text}");
    assert_eq!(
        admin(&b, reqwest::Method::DELETE, "api_keys/newcomer", None).await.0,
        404
    );
    for gw in [&a, &b] {
        assert!(
            until_status(gw, NEW_CALLER_KEY, "fresh", 401).await,
            "a deleted key still served"
        );
    }

    // No admin key, a wrong one, a caller key: 401, and nothing else answers.
    for key in [None, Some("wrong"), Some(CALLER_KEY)] {
        let mut req = client().get(format!("{}/admin/v1/models", a.admin_url()));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 401, "{key:?}");
        answers.push(resp.text().await.unwrap());
    }
    assert_eq!(admin(&a, reqwest::Method::GET, "nothing-here", None).await.0, 404);
    assert_eq!(admin(&a, reqwest::Method::POST, "models/fresh", None).await.0, 405);

    // No secret in any admin answer.
    let all = answers.join("\n");
    for secret in [PROVIDER_KEY, CALLER_KEY, NEW_CALLER_KEY, ADMIN_KEY] {
        assert!(!all.contains(secret), "{secret} in an admin answer:\n{all}");
    }
    // The swaps are counted and the version is etcd's revision.
    let m = metrics(&b).await;
    assert!(m["aigw_config_version"] > 1.0, "{:?}", m.get("aigw_config_version"));
    assert!(m["aigw_config_reloads_total{result=\"ok\"}"] >= 4.0);
}

#[tokio::test]
async fn an_etcd_outage_keeps_serving_and_changes_arrive_after_it() {
    let mut etcd = Etcd::start();
    let mock = Mock::start();
    let prefix = format!("/{}", unique("aigw"));
    let _seed = import_seed(&etcd, &prefix, &mock);
    let a = Gateway::start(&config(&etcd, &prefix, None), &mock);
    let b = Gateway::start(&config(&etcd, &prefix, None), &mock);
    etcd.stop();
    for gw in [&a, &b] {
        assert_eq!(
            chat_status(gw, CALLER_KEY, "chat").await,
            200,
            "serving stopped with etcd"
        );
    }
    // Writes cannot reach etcd: 503, said plainly.
    let (status, text) = admin(
        &a,
        reqwest::Method::PUT,
        "models/later",
        Some(json!({"provider_key": "mock"})),
    )
    .await;
    assert_eq!(status, 503, "{text}");
    etcd.resume();
    let mut written = false;
    for _ in 0..100 {
        let (status, _) = admin(
            &a,
            reqwest::Method::PUT,
            "models/later",
            Some(json!({"provider_key": "mock"})),
        )
        .await;
        if status == 201 {
            written = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(written, "etcd never took the write after it came back");
    for gw in [&a, &b] {
        assert!(
            until_status(gw, CALLER_KEY, "later", 200).await,
            "a change after the outage never arrived"
        );
        assert!(
            metric(gw, "aigw_config_store_reconnects_total").await >= 1.0,
            "{}",
            gw.log_text()
        );
    }
}

#[tokio::test]
async fn an_invalid_state_in_etcd_keeps_the_last_good_config() {
    let etcd = Etcd::start();
    let mock = Mock::start();
    let prefix = format!("/{}", unique("aigw"));
    let _seed = import_seed(&etcd, &prefix, &mock);
    let gw = Gateway::start(&config(&etcd, &prefix, None), &mock);
    // Written behind the admin API's back: a model on a provider that does not exist, then
    // a value that is not JSON.
    etcd.put_raw(
        &format!("{prefix}/models/orphan"),
        r#"{"name": "orphan", "provider_key": "ghost"}"#,
    );
    assert!(
        wait_until_async(|| async { metric(&gw, "aigw_config_reloads_total{result=\"error\"}").await >= 1.0 }).await
    );
    etcd.put_raw(&format!("{prefix}/models/garbage"), "not json");
    assert!(
        wait_until_async(|| async { metric(&gw, "aigw_config_reloads_total{result=\"error\"}").await >= 2.0 }).await
    );
    assert_eq!(chat_status(&gw, CALLER_KEY, "chat").await, 200);
    assert!(
        gw.log_text().contains("models/orphan.provider_key"),
        "{}",
        gw.log_text()
    );
    // Fixed through the admin API, the new state is served.
    assert_eq!(admin(&gw, reqwest::Method::DELETE, "models/garbage", None).await.0, 404);
    let (status, text) = admin(
        &gw,
        reqwest::Method::PUT,
        "models/garbage",
        Some(json!({"provider_key": "mock"})),
    )
    .await;
    assert_eq!(status, 400, "the orphan still makes the whole invalid: {text}");
    assert!(text.contains("models/orphan.provider_key"), "{text}");
    etcd.put_raw(
        &format!("{prefix}/models/orphan"),
        r#"{"name": "orphan", "provider_key": "mock"}"#,
    );
    etcd.put_raw(
        &format!("{prefix}/models/garbage"),
        r#"{"name": "garbage", "provider_key": "mock"}"#,
    );
    assert!(until_status(&gw, CALLER_KEY, "orphan", 200).await);
    // SIGHUP re-reads the file and keeps the store's resources.
    let ok = "aigw_config_reloads_total{result=\"ok\"}";
    let before = metric(&gw, ok).await;
    gw.signal("HUP");
    assert!(wait_until_async(|| async { metric(&gw, ok).await > before }).await);
    assert_eq!(chat_status(&gw, CALLER_KEY, "orphan").await, 200);
}

#[test]
fn import_and_export_round_trip() {
    let etcd = Etcd::start();
    let mock = Mock::start();
    let prefix = format!("/{}", unique("aigw"));
    let dir = tempfile::tempdir().unwrap();
    let resources = fill(
        r#"
provider_keys:
  - {name: mock, provider: openai_compatible, base_url: "{MOCK}/v1", api_key: "{PROVIDER_KEY}"}
  - {name: env-keyed, provider: openai, api_key: "${OPENAI_API_KEY_FOR_TEST}"}
models:
  - {name: chat, provider_key: mock, model: upstream-chat, rate_limit: small, cache: short, pricing: {input_per_mtok: 1.5, output_per_mtok: 2}}
  - name: routed
    routing: {strategy: failover, targets: [{model: chat}, {model: other}]}
  - {name: other, provider_key: env-keyed}
api_keys:
  - {name: hashed, key_hash: "blake3:0000000000000000000000000000000000000000000000000000000000000000", owner: t, budget: monthly}
rate_limits:
  - {name: small, requests_per_minute: 10}
budgets:
  - {name: monthly, usd: 5, period: month}
guardrails:
  - name: words
    rules: [{kind: keyword, words: [forbidden]}]
cache:
  - {name: short, ttl_s: 60}
"#,
        &mock,
        1,
        2,
    );
    let path = dir.path().join("aigw.yaml");
    std::fs::write(
        &path,
        format!("{}{resources}", fill(&config(&etcd, &prefix, None), &mock, 1, 2)),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .arg("--config")
            .arg(&path)
            .env("OPENAI_API_KEY_FOR_TEST", "sk-env-value")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    assert!(run(&["import"]).contains("imported 10 resources"));
    let exported = run(&["export", "--include-secrets"]);
    let input: Value = serde_yaml::from_str(&resources).unwrap();
    let output: Value = serde_yaml::from_str(&exported).unwrap();
    let sorted = |v: &Value, kind: &str| {
        let mut items = v[kind].as_array().cloned().unwrap_or_default();
        items.sort_by_key(|i| i["name"].as_str().unwrap().to_owned());
        items
    };
    for kind in Kind::ALL.map(Kind::name) {
        assert_eq!(sorted(&output, kind), sorted(&input, kind), "{kind}:\n{exported}");
    }
    assert_eq!(output["version"], 1);
    // Without the flag, literal secrets are redacted (env references are not secrets);
    // imported back, the redacted key keeps the stored one.
    let redacted = run(&["export"]);
    assert!(
        !redacted.contains(PROVIDER_KEY) && redacted.contains("<redacted>"),
        "{redacted}"
    );
    assert!(redacted.contains("${OPENAI_API_KEY_FOR_TEST}"), "{redacted}");
    std::fs::write(
        &path,
        format!(
            "{}{}",
            fill(&config(&etcd, &prefix, None), &mock, 1, 2),
            redacted.trim_start_matches("version: 1\n")
        ),
    )
    .unwrap();
    run(&["import"]);
    assert!(run(&["export", "--include-secrets"]).contains(PROVIDER_KEY));
    // A plaintext caller key is stored hashed.
    std::fs::write(
        &path,
        format!(
            "{}\nprovider_keys: []\nmodels: []\napi_keys: [{{name: plain, key: sk-plain-caller}}]\n",
            fill(&config(&etcd, &prefix, None), &mock, 1, 2)
        ),
    )
    .unwrap();
    run(&["import"]);
    let out = run(&["export", "--include-secrets"]);
    assert!(
        !out.contains("sk-plain-caller") && out.contains("key_hash: blake3:"),
        "{out}"
    );
}

#[tokio::test]
async fn etcd_down_at_start_needs_the_cache_file() {
    let mut etcd = Etcd::start();
    let mock = Mock::start();
    let prefix = format!("/{}", unique("aigw"));
    let _seed = import_seed(&etcd, &prefix, &mock);
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("aigw-cache.json");
    // A first instance writes the cache file after its load.
    drop(Gateway::start(&config(&etcd, &prefix, Some(&cache)), &mock));
    assert!(cache.exists());
    etcd.stop();
    // Without a cache file: a clear error, exit 1.
    let path = dir.path().join("nocache.yaml");
    std::fs::write(
        &path,
        fill(&config(&etcd, &prefix, None), &mock, free_port(), free_port()),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("server.config_store.etcd") && err.contains("etcd"),
        "{err}"
    );
    // With it: serves the cached resources, and follows etcd once it is back.
    let gw = Gateway::start(&config(&etcd, &prefix, Some(&cache)), &mock);
    assert_eq!(chat_status(&gw, CALLER_KEY, "chat").await, 200);
    assert!(gw.log_text().contains("cache file"), "{}", gw.log_text());
    etcd.resume();
    etcd.put_raw(
        &format!("{prefix}/models/after"),
        r#"{"name": "after", "provider_key": "mock"}"#,
    );
    assert!(until_status(&gw, CALLER_KEY, "after", 200).await);
}

#[tokio::test]
async fn without_a_config_store_the_admin_api_is_read_only() {
    let mock = Mock::start();
    let gw = Gateway::start(
        &BASE_CONFIG.replace(
            "  grace_period_s: 10\n",
            &format!("  grace_period_s: 10\n  admin_keys: [{{key: {ADMIN_KEY}}}]\n"),
        ),
        &mock,
    );
    let (status, text) = admin(&gw, reqwest::Method::GET, "models/chat", None).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap()["model"], "upstream-chat");
    let (status, text) = admin(&gw, reqwest::Method::GET, "provider_keys", None).await;
    assert!(
        status == 200 && !text.contains(PROVIDER_KEY) && text.contains("<redacted>"),
        "{text}"
    );
    let (status, text) = admin(
        &gw,
        reqwest::Method::PUT,
        "models/new",
        Some(json!({"provider_key": "mock"})),
    )
    .await;
    assert_eq!(status, 405, "{text}");
    assert!(text.contains("read-only"), "{text}");
    assert_eq!(admin(&gw, reqwest::Method::DELETE, "models/chat", None).await.0, 405);
    let (status, text) = admin(&gw, reqwest::Method::GET, "config", None).await;
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["source"], "file");
    assert!(!text.contains(PROVIDER_KEY) && !text.contains(CALLER_KEY), "{text}");
}

/// etcd over TLS with client certificates: import, serve, and write through the admin API;
/// without the client certificate etcd refuses and the gateway says so at start.
#[tokio::test]
async fn etcd_over_tls_with_a_client_certificate() {
    let etcd = Etcd::start_tls();
    let mock = Mock::start();
    let prefix = format!("/{}", unique("aigw"));
    let certs = etcd.cert_dir().display().to_string();
    let tls = format!(
        "tls: {{ca_file: \"{certs}/ca.pem\", cert_file: \"{certs}/client.pem\", key_file: \"{certs}/client.key\"}}, "
    );
    let with_tls = config(&etcd, &prefix, None).replace("etcd: {", &format!("etcd: {{{tls}"));
    let dir = tempfile::tempdir().unwrap();
    let seed = dir.path().join("seed.yaml");
    std::fs::write(&seed, fill(&format!("{with_tls}{SEED}"), &mock, 1, 2)).unwrap();
    let out = Command::new(BIN)
        .args(["import", "--config"])
        .arg(&seed)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let gw = Gateway::start(&with_tls, &mock);
    assert_eq!(chat_status(&gw, CALLER_KEY, "chat").await, 200);
    let (status, text) = admin(
        &gw,
        reqwest::Method::PUT,
        "models/over-tls",
        Some(json!({"provider_key": "mock"})),
    )
    .await;
    assert_eq!(status, 201, "{text}");
    assert!(until_status(&gw, CALLER_KEY, "over-tls", 200).await);

    // The CA but no client certificate: refused by etcd, a clear error at start.
    let no_client = with_tls.replace(
        &format!(", cert_file: \"{certs}/client.pem\", key_file: \"{certs}/client.key\""),
        "",
    );
    let path = dir.path().join("no-client.yaml");
    std::fs::write(&path, fill(&no_client, &mock, free_port(), free_port())).unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("server.config_store.etcd"), "{err}");
}

/// Two admins validate against the same state and write: the second write, checked
/// against a state that no longer holds, is refused and writes nothing (the admin API
/// answers it 409), so two valid changes cannot combine into an invalid state.
#[tokio::test]
async fn a_write_checked_against_an_outdated_state_is_refused() {
    use aigw::config::compile::EtcdSettings;
    use aigw::store::etcd::Etcd as Store;
    let etcd = Etcd::start();
    let settings = EtcdSettings {
        endpoints: vec![etcd.url()],
        prefix: format!("/{}", unique("aigw")),
        cache_file: None,
        tls: None,
        user: None,
        password: None,
    };
    let mut a = Store::connect(&settings).await.unwrap();
    let mut b = Store::connect(&settings).await.unwrap();
    let model = json!({"name": "m", "provider_key": "p"});
    let seen_by_a = a.load().await.unwrap();
    let seen_by_b = b.load().await.unwrap();
    assert!(a.put(Kind::Models, "m", &model, seen_by_a.lock).await.unwrap());
    assert!(!b.put(Kind::Models, "other", &model, seen_by_b.lock).await.unwrap());
    assert!(!b.delete(Kind::Models, "m", seen_by_b.lock).await.unwrap());
    let fresh = b.load().await.unwrap();
    assert_eq!(
        fresh.resources.len(),
        1,
        "only A's write landed; the lock is no resource"
    );
    assert!(fresh.resources.get(Kind::Models, "other").is_none());
    assert!(b.delete(Kind::Models, "m", fresh.lock).await.unwrap());
    assert!(b.load().await.unwrap().resources.is_empty());
}
