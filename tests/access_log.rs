//! The access log: one line per request on stdout, JSON by default, never a key, a prompt
//! or a completion; flushed before a drained gateway exits.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

const CONFIG: &str = r#"
{SERVER}
provider_keys:
  - {name: mock, provider: openai_compatible, base_url: "{MOCK}/v1", api_key: "{PROVIDER_KEY}"}
models:
  - {name: chat, provider_key: mock, model: upstream-chat}
  - {name: fails, provider_key: mock, model: "x?status=503"}
  - name: routed
    routing:
      strategy: failover
      targets: [{model: fails, priority: 0}, {model: chat, priority: 1}]
api_keys:
  - {name: main, key: "{CALLER_KEY}", owner: team-a}
"#;

const SECRET_PROMPT: &str = "the launch code is zebra-7731";
const WRONG_KEY: &str = "sk-wrong-but-private-9911";

fn wait_lines(gw: &Gateway, n: usize) -> Vec<String> {
    assert!(
        wait_until(10, || gw.access_lines().len() >= n),
        "{} access lines, want {n}",
        gw.access_lines().len()
    );
    gw.access_lines()
}

#[tokio::test]
async fn one_json_line_per_request_without_secrets() {
    let mock = Mock::start();
    let mut gw = Gateway::start(CONFIG, &mock);
    let prompt = json!({"model": "chat", "messages": [{"role": "user", "content": SECRET_PROMPT}]});
    let r = post(&gw, "/v1/chat/completions", &prompt).await;
    assert_eq!(r.status(), StatusCode::OK);
    let completion = r.json::<Value>().await.unwrap()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    let stream = json!({"model": "chat", "stream": true, "messages": [{"role": "user", "content": SECRET_PROMPT}]});
    let _ = post(&gw, "/v1/chat/completions", &stream).await.text().await.unwrap();
    assert_eq!(
        post(&gw, "/v1/chat/completions", &chat_body("routed")).await.status(),
        StatusCode::OK
    );
    let r = client()
        .post(format!("{}/v1/chat/completions", gw.url()))
        .bearer_auth(WRONG_KEY)
        .json(&prompt)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = client()
        .get(format!("{}/nope", gw.url()))
        .bearer_auth(CALLER_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    let lines = wait_lines(&gw, 5);
    assert_eq!(lines.len(), 5, "{lines:#?}");
    for l in &lines {
        for secret in [CALLER_KEY, PROVIDER_KEY, WRONG_KEY, "zebra-7731", completion.as_str()] {
            assert!(!l.contains(secret), "{secret} leaked into: {l}");
        }
    }
    let recs: Vec<Value> = lines.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    // Lines come in the order requests finished their logging phase, which need not be
    // the order the responses arrived in.
    let find = |f: &dyn Fn(&Value) -> bool| recs.iter().find(|r| f(r)).unwrap().clone();
    let ok = &find(&|r| r["alias"] == "chat" && r["stream"] == false && r["status"] == 200);
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["alias"], "chat");
    assert_eq!(ok["model"], "chat");
    assert_eq!(ok["provider"], "mock");
    assert_eq!(ok["owner"], "team-a");
    assert_eq!(ok["key"], "main");
    assert_eq!(ok["attempts"], 1);
    assert!(ok["input_tokens"].as_u64().unwrap() > 0 && ok["output_tokens"].as_u64().unwrap() > 0);
    assert!(ok["request_id"].as_str().unwrap().len() >= 32);
    assert!(ok["time"].as_str().unwrap().ends_with('Z'));
    assert!(ok["ttft_ms"].is_null());
    let streamed = &find(&|r| r["stream"] == true);
    assert_eq!(streamed["stream"], true);
    assert!(streamed["ttft_ms"].as_f64().unwrap() <= streamed["duration_ms"].as_f64().unwrap());
    assert!(
        streamed["output_tokens"].as_u64().unwrap() > 0,
        "streamed usage is logged"
    );
    let routed = &find(&|r| r["alias"] == "routed");
    assert_eq!(routed["alias"], "routed");
    assert_eq!(routed["model"], "chat");
    assert_eq!(
        (routed["attempts"].as_u64(), routed["failovers"].as_u64()),
        (Some(2), Some(1))
    );
    let unauth = &find(&|r| r["status"] == 401);
    assert_eq!(
        (unauth["status"].as_u64(), unauth["error"].as_str()),
        (Some(401), Some("invalid_api_key"))
    );
    assert_eq!(unauth["owner"], "");
    let missing = find(&|r| r["status"] == 404);
    assert_eq!(missing["path"], "/nope");

    // A drained gateway writes out what it logged before exiting.
    let _ = post(&gw, "/v1/chat/completions", &chat_body("chat")).await;
    gw.signal("TERM");
    let status = gw.child.wait().unwrap();
    assert!(status.success());
    assert!(
        wait_until(5, || gw.access_lines().len() == 6),
        "the last line was flushed"
    );
}

#[tokio::test]
async fn text_format_and_off() {
    let mock = Mock::start();
    let gw = Gateway::start(
        &format!("{CONFIG}observability: {{access_log: {{format: text}}}}\n"),
        &mock,
    );
    assert_eq!(
        post(&gw, "/v1/chat/completions", &chat_body("chat")).await.status(),
        StatusCode::OK
    );
    let line = wait_lines(&gw, 1).remove(0);
    let fields: Vec<&str> = line.split(' ').collect();
    for want in ["alias=chat", "status=200", "ttft_ms=-", "error=\"\"", "owner=team-a"] {
        assert!(fields.contains(&want), "{want} in {line}");
    }

    let quiet = Gateway::start(
        &format!("{CONFIG}observability: {{access_log: {{format: off}}}}\n"),
        &mock,
    );
    assert_eq!(
        post(&quiet, "/v1/chat/completions", &chat_body("chat")).await.status(),
        StatusCode::OK
    );
    // Counted in the logging phase, which may end just after the response.
    assert!(
        wait_until_async(|| async { metrics_requests(&quiet).await == 1.0 }).await,
        "the request was served"
    );
    assert!(quiet.access_lines().is_empty());
}

async fn metrics_requests(gw: &Gateway) -> f64 {
    metrics(gw)
        .await
        .iter()
        .filter(|(k, _)| k.starts_with("aigw_requests_total{"))
        .map(|(_, v)| v)
        .sum()
}
