//! The operator's side: `GET /admin/v1/status`, `aigw status` and `aigw keys create`, each
//! against a real gateway (and, for stored keys, a real etcd).
#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Output};

use common::etcd::Etcd;
use common::*;

const ADMIN_KEY: &str = "adm-operators-0123456789";

fn aigw(args: &[&str], admin_key: Option<&str>) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_remove("AIGW_ADMIN_KEY");
    if let Some(k) = admin_key {
        cmd.env("AIGW_ADMIN_KEY", k);
    }
    cmd.output().unwrap()
}

fn ok(out: &Output) -> (String, String) {
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    (stdout, stderr)
}

const CONFIG: &str = r#"{SERVER}
  admin_keys: [{key: adm-operators-0123456789}]
provider_keys:
  - {name: mock, provider: openai_compatible, base_url: "{MOCK}/v1", api_key: "{PROVIDER_KEY}"}
models:
  - {name: chat, provider_key: mock, model: upstream-chat, pricing: {input_per_mtok: 0, output_per_mtok: 1000}}
budgets:
  - {name: daily, usd: 10, period: day}
api_keys:
  - {name: main, key: "{CALLER_KEY}", owner: team-a, budget: daily}
"#;

#[tokio::test]
async fn status_shows_traffic_routes_spend_and_keys_but_never_a_key() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    assert_eq!(
        post(&gw, "/v1/chat/completions", &chat_body("chat")).await.status(),
        200
    );
    let url = format!("{}/admin/v1/status", gw.admin_url());
    let refused = client().get(&url).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    // The cost is charged as the request ends, after its answer.
    let status = loop {
        let s = get_json(&url, ADMIN_KEY).await;
        if !s["spend"][0]["spent_usd"].as_f64().unwrap_or(0.0).eq(&0.0) {
            break s;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(status["config"]["source"], "file");
    assert_eq!(status["traffic"]["models"]["chat"]["requests"], 1.0);
    assert_eq!(status["traffic"]["owners"]["team-a"]["output_tokens"], 8.0);
    assert_eq!(status["traffic"]["latency"]["chat"]["count"], 1);
    assert_eq!(
        status["routes"][0]["targets"][0]["replicas"][0]["addr"],
        mock.addr.to_string()
    );
    assert_eq!(status["keys"][0]["owner"], "team-a");
    assert_eq!(status["spend"][0]["budget"], "daily");
    assert!(!status.to_string().contains(CALLER_KEY));

    // The same, as tables in a terminal.
    let config = gw.config_path();
    let (text, _) = ok(&aigw(
        &["status", "--config", config.to_str().unwrap()],
        Some(ADMIN_KEY),
    ));
    for want in [
        "traffic by model",
        "chat",
        "team-a",
        "routes",
        "daily",
        "caller keys",
        "main",
    ] {
        assert!(text.contains(want), "{want} in:\n{text}");
    }
    let refused = aigw(&["status", "--config", config.to_str().unwrap()], Some("wrong"));
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("401"));
}

#[tokio::test]
async fn a_created_key_is_printed_once_and_kept_as_its_hash() {
    let mock = Mock::start();
    // For the file: the entry to paste, with the hash only.
    let (key, snippet) = ok(&aigw(
        &["keys", "create", "--owner", "team-b", "--models", "chat"],
        None,
    ));
    let key = key.trim();
    assert!(key.starts_with("sk-aigw-"), "{key}");
    assert!(
        !snippet.contains(key) && snippet.contains("key_hash: blake3:"),
        "{snippet}"
    );
    let entry: String = snippet
        .lines()
        .skip_while(|l| !l.starts_with("- "))
        .take_while(|l| !l.starts_with("the new key"))
        .map(|l| format!("  {l}\n"))
        .collect();
    let config = format!("{CONFIG}{entry}");
    let gw = Gateway::start(&config, &mock);
    assert_eq!(
        post_as(&gw, key, "/v1/chat/completions", &chat_body("chat"))
            .await
            .status(),
        200
    );
    let status = get_json(&format!("{}/admin/v1/status", gw.admin_url()), ADMIN_KEY).await;
    assert!(
        status["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["owner"] == "team-b"),
        "{status}"
    );

    // Without a config store, --apply is refused by the admin API, and says why.
    let refused = aigw(
        &[
            "keys",
            "create",
            "--owner",
            "team-c",
            "--apply",
            "--admin",
            &gw.admin_url(),
        ],
        Some(ADMIN_KEY),
    );
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("read-only without a config store"));
}

#[tokio::test]
async fn a_created_key_goes_to_the_config_store_and_works_at_once() {
    let etcd = Etcd::start();
    let mock = Mock::start();
    let prefix = format!("/{}", unique("ops"));
    let config = CONFIG.replace(
        "  admin_keys:",
        &format!(
            "  config_store:\n    etcd: {{endpoints: [\"{}\"], prefix: \"{prefix}\"}}\n  admin_keys:",
            etcd.url()
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let seed = dir.path().join("seed.yaml");
    std::fs::write(&seed, fill(&config, &mock, 1, 2)).unwrap();
    ok(&aigw(&["import", "--config", seed.to_str().unwrap()], None));
    let gw = Gateway::start(&config, &mock);
    let config_path = gw.config_path();
    let (key, said) = ok(&aigw(
        &[
            "keys",
            "create",
            "--owner",
            "team-d",
            "--name",
            "ci",
            "--budget",
            "daily",
            "--apply",
            "--config",
            config_path.to_str().unwrap(),
        ],
        Some(ADMIN_KEY),
    ));
    assert!(said.contains("stored api_keys/ci"), "{said}");
    let key = key.trim().to_owned();
    assert!(
        wait_until_async(|| async {
            post_as(&gw, &key, "/v1/chat/completions", &chat_body("chat"))
                .await
                .status()
                == 200
        })
        .await,
        "the stored key never served"
    );
    let stored = get_json(&format!("{}/admin/v1/api_keys/ci", gw.admin_url()), ADMIN_KEY).await;
    assert_eq!(stored["owner"], "team-d");
    assert!(stored["key_hash"].as_str().unwrap().starts_with("blake3:"));
    assert!(!stored.to_string().contains(&key));
}

/// Every credential a URL of the config can carry: a password, a token as the user, the
/// same percent-encoded, a query and a fragment.
const URL_SECRETS: [&str; 5] = ["pw-s3cret", "tok-s3cret", "enc-s3cret", "q-s3cret", "frag-s3cret"];

#[tokio::test]
async fn credentials_in_urls_show_nowhere() {
    let mock = Mock::start();
    let jwks_url = format!(
        "http://tok-s3cret@127.0.0.1:{}/idp/missing?token=q-s3cret",
        mock.addr.port()
    );
    let config = format!(
        r#"{{SERVER}}
  admin_keys: [{{key: {ADMIN_KEY}}}]
provider_keys:
  - {{name: mock, provider: openai_compatible, base_url: "{{MOCK}}/v1", api_key: "{{PROVIDER_KEY}}"}}
models:
  - {{name: chat, provider_key: mock}}
jwt:
  - {{name: corp, issuer: "https://sso.test", audience: aigw, jwks_url: "{jwks_url}"}}
mcp_servers:
  - {{name: tools, url: "https://ops:pw-s3cret@tools.test/mcp?api_key=q-s3cret#frag-s3cret"}}
  - {{name: encoded, url: "https://us%40er:enc-s3cret%2F%3A@tools.test/mcp"}}
api_keys:
  - {{name: main, key: "{{CALLER_KEY}}", mcp: {{servers: ["*"]}}}}
"#
    );
    let gw = Gateway::start_with(&config, &mock, &[("RUST_LOG", "debug")]);
    // The key set's fetch fails (404), and the warning names where it went.
    assert!(
        wait_until(10, || gw.log_text().contains("JWT key set not fetched")),
        "{}",
        gw.log_text()
    );
    let status = get_json(&format!("{}/admin/v1/status", gw.admin_url()), ADMIN_KEY).await;
    let urls: Vec<&str> = status["mcp_servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["url"].as_str().unwrap())
        .collect();
    assert_eq!(urls, ["https://tools.test/mcp", "https://tools.test/mcp"]);
    let servers = get_json(&format!("{}/admin/v1/mcp_servers", gw.admin_url()), ADMIN_KEY).await;
    let shown: Vec<&str> = servers["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["url"].as_str().unwrap())
        .collect();
    assert!(
        shown.contains(&"https://<redacted>@tools.test/mcp?<redacted>#<redacted>")
            && shown.contains(&"https://<redacted>@tools.test/mcp"),
        "{shown:?}"
    );
    let issuers = get_json(&format!("{}/admin/v1/jwt", gw.admin_url()), ADMIN_KEY).await;
    let config = get_json(&format!("{}/admin/v1/config", gw.admin_url()), ADMIN_KEY).await;
    let everything = format!(
        "{}\n{}\n{status}\n{servers}\n{issuers}\n{config}",
        gw.log_text(),
        gw.access_lines().join("\n")
    );
    assert!(everything.contains("/idp/missing"), "the fetch is named");
    for secret in URL_SECRETS {
        assert!(!everything.contains(secret), "{secret} shows:\n{everything}");
    }

    // Config errors name a bad URL without its credential, parsed or not.
    let dir = tempfile::tempdir().unwrap();
    for base_url in [
        "https://ops:pw-s3cret@api.test/v1",
        "https://tok-s3cret@api.test:notaport/v1?k=q-s3cret",
        "https://ops:pw-s3cret?q-s3cret@api test/v1",
    ] {
        let path = dir.path().join("bad.yaml");
        std::fs::write(
            &path,
            format!(
                "version: 1\nprovider_keys:\n  - {{name: p, provider: openai_compatible, base_url: \"{base_url}\"}}\n"
            ),
        )
        .unwrap();
        let out = Command::new(BIN)
            .args(["validate", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("provider_keys[0].base_url"),
            "{err}"
        );
        for secret in URL_SECRETS {
            assert!(!err.contains(secret), "{base_url}: {err}");
        }
    }
}
