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

/// What reaches the fields of the access log from outside the gateway's own code: a new
/// line with a forged record, a terminal's colour, title and clear-screen sequences, a
/// bidi override, a line separator, NEL. The alias is a model's name, as an admin API
/// client may write it: one with a control character is refused when the config loads
/// (below), so its name carries the rest (an `=` made it quoted, unescaped, before).
const FORGED_ALIAS: &str = "chat\u{202e}gnp.exe\u{2028}alias=chat\u{200b}";
/// The same, as YAML writes it.
const FORGED_ALIAS_YAML: &str = r#""chat\u202egnp.exe\u2028alias=chat\u200b""#;
const FORGED_TOOL: &str = "look\nup\u{1b}]0;owned\u{7}\u{2028}x";
/// A path of raw bytes past ASCII (HTTP/1.1 lets them through): RIGHT-TO-LEFT OVERRIDE,
/// LINE SEPARATOR, NEL.
const FORGED_PATH: &str = "/v1/\u{202e}txt.exe\u{2028}forged\u{85}";

/// Sends the three: a request for the alias, a raw path, and an MCP tool call (to a
/// server that is down, which the line still records).
async fn send_forged(gw: &Gateway) {
    let r = post(gw, "/v1/chat/completions", &chat_body(FORGED_ALIAS)).await;
    assert_eq!(r.status(), StatusCode::OK);
    let req = format!("GET {FORGED_PATH} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {CALLER_KEY}\r\n\r\n");
    assert_eq!(raw(gw, req.as_bytes()), "HTTP/1.1 404 Not Found");
    let rpc = |session: Option<String>, body: Value| {
        let mut req = client()
            .post(format!("{}/mcp", gw.url()))
            .bearer_auth(CALLER_KEY)
            .json(&body);
        if let Some(s) = session {
            req = req.header("mcp-session-id", s);
        }
        req.send()
    };
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18"}});
    let r = rpc(None, init).await.unwrap();
    let session = r.headers()["mcp-session-id"].to_str().unwrap().to_owned();
    let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": format!("tools__{FORGED_TOOL}"), "arguments": {}}});
    let answer: Value = rpc(Some(session), call).await.unwrap().json().await.unwrap();
    assert_eq!(answer["error"]["code"], -32603, "the server is down: {answer}");
}

fn forged_config(format: &str) -> String {
    let closed = free_port();
    CONFIG
        .replace(
            "api_keys:",
            &format!("mcp_servers:\n  - {{name: tools, url: \"http://127.0.0.1:{closed}/mcp\", timeout_ms: 2000}}\napi_keys:"),
        )
        .replace("owner: team-a}", "owner: team-a, mcp: {servers: [tools]}}")
        .replace(
            "models:\n",
            &format!("models:\n  - {{name: {FORGED_ALIAS_YAML}, provider_key: mock, model: upstream-chat}}\n"),
        )
        + &format!("observability: {{access_log: {{format: {format}}}}}\n")
}

/// No caller-controlled field can start a line of its own or drive a terminal: in the
/// text format every value with anything but plain characters is quoted and escaped, so
/// each request is still one line, and the value reads back as it was.
#[tokio::test]
async fn caller_text_cannot_forge_or_colour_a_text_line() {
    let mock = Mock::start();
    let gw = Gateway::start(&forged_config("text"), &mock);
    send_forged(&gw).await;
    let lines = gw.access_lines_until(4, |_| true);
    // initialize, and the three: four requests, four lines, and nothing else.
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(gw.access_lines().len(), 4, "{lines:#?}");
    for l in &lines {
        for bad in ['\u{1b}', '\u{7}', '\r', '\u{85}', '\u{2028}', '\u{202e}', '\u{200b}'] {
            assert!(!l.contains(bad), "{bad:?} raw in {l:?}");
        }
        assert!(
            l.starts_with("alias=") && l.contains(" time="),
            "a line of its own: {l:?}"
        );
    }
    let text = lines.join("\n");
    for want in [
        r#"alias="chat\u202egnp.exe\u2028alias=chat\u200b""#,
        r#"path="/v1/\u202etxt.exe\u2028forged\u0085""#,
        r#"mcp_tool="look\nup\u001b]0;owned\u0007\u2028x""#,
    ] {
        assert!(text.contains(want), "{want} in {text}");
    }
    // Each quoted value is a JSON string: it reads back as the caller wrote it.
    let line = lines.iter().find(|l| l.starts_with(r#"alias="chat"#)).unwrap();
    let alias = line.strip_prefix("alias=").unwrap().split(" attempts=").next().unwrap();
    assert_eq!(serde_json::from_str::<String>(alias).unwrap(), FORGED_ALIAS);
}

/// The JSON format escapes what serde_json alone writes raw (C1 controls, U+2028, bidi
/// controls): every line is ASCII-clean of them and parses back to what was sent.
#[tokio::test]
async fn caller_text_is_escaped_in_json_lines_too() {
    let mock = Mock::start();
    let gw = Gateway::start(&forged_config("json"), &mock);
    send_forged(&gw).await;
    let lines = gw.access_lines_until(4, |_| true);
    for l in &lines {
        for bad in ['\u{1b}', '\u{7}', '\u{85}', '\u{2028}', '\u{202e}', '\u{200b}'] {
            assert!(!l.contains(bad), "{bad:?} raw in {l:?}");
        }
    }
    let recs: Vec<Value> = lines.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    let find = |k: &str, v: &str| recs.iter().any(|r| r[k] == v);
    assert!(find("alias", FORGED_ALIAS), "{lines:#?}");
    assert!(find("path", FORGED_PATH), "{lines:#?}");
    assert!(find("mcp_tool", FORGED_TOOL), "{lines:#?}");
}

/// A name with a control character (a newline, ESC) is refused when the config loads,
/// with its path: names go into headers, metric labels and log lines.
#[test]
fn names_with_control_characters_are_refused() {
    let config = r#"
version: 1
provider_keys:
  - {name: "mock\x1b[31m", provider: openai_compatible, base_url: "http://127.0.0.1:9/v1"}
models:
  - {name: "chat\nalias=chat", provider_key: mock}
"#;
    assert_config_errors(
        config,
        &[
            "provider_keys[0].name: must not contain control characters",
            "models[0].name: must not contain control characters",
        ],
        "no secret here",
    );
}
