//! The MCP gateway against the mock upstream's MCP server (`src/mock/mcp.rs`), honest and
//! hostile: guardrails on every text both ways, bounds on what a server may send, metric
//! labels callers cannot grow, rate limits and globs on every method. (The official SDK's
//! view of the same gateway: tests/python/test_mcp.py.)
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{json, Value};

const CONFIG: &str = r#"
version: 1
server:
  listen: ["127.0.0.1:{PORT}"]
  admin_listen: "127.0.0.1:{ADMIN}"
  admin_keys: [{key: adm-mcp}]
mcp_servers:
  - {name: mock, url: "{MOCK}/mcp"}
  - {name: drip, url: "{MOCK}/mcp?drip=3000000", timeout_ms: 120000}
  - {name: pages, url: "{MOCK}/mcp?pages=3&page_bytes=3500000", timeout_ms: 120000}
  - {name: many, url: "{MOCK}/mcp?page_bytes=90000"}
  - {name: long, url: "{MOCK}/mcp?long_name=300"}
  - {name: huge, url: "{MOCK}/mcp?pages=2&long_name=3000000", timeout_ms: 120000}
  - {name: rotate, url: "{MOCK}/mcp?rotate=1"}
guardrails:
  - {name: pii-in, pack: filters/pii.yaml, stage: request, action: mask}
  - {name: secrets-in, pack: filters/secrets.yaml, stage: request, action: block}
  - {name: pii-out, pack: filters/pii.yaml, stage: response, action: mask}
  - {name: pii-block, pack: filters/pii.yaml, stage: request, action: block}
  - {name: pii-watch, pack: filters/pii.yaml, action: monitor}
rate_limits:
  - {name: two, requests_per_minute: 2}
  - {name: two-b, requests_per_minute: 2}
api_keys:
  - {name: all, key: sk-all, owner: o, mcp: {servers: ["*"]}}
  - {name: two, key: sk-two, owner: o, mcp: {servers: [mock, long]}}
  - {name: in, key: sk-in, owner: o, guardrails: [pii-in, secrets-in], mcp: {servers: [mock]}}
  - {name: out, key: sk-out, owner: o, guardrails: [pii-out], mcp: {servers: [mock]}}
  - {name: blocker, key: sk-block, owner: o, guardrails: [pii-block], mcp: {servers: [mock]}}
  - {name: watcher, key: sk-watch, owner: o, guardrails: [pii-watch], mcp: {servers: [mock]}}
  - {name: limited, key: sk-limited, owner: o, rate_limit: two, mcp: {servers: [mock]}}
  - {name: limited-b, key: sk-limited-b, owner: o, rate_limit: two-b, mcp: {servers: [mock]}}
  - {name: echo-only, key: sk-echo-only, owner: o, mcp: {servers: [mock], tools: ["mock__echo"]}}
"#;

const SECRET: &str = "sk-proj-EXAMPLE_not_a_real_key_0000";

/// A caller's MCP session with the gateway at `path` (`/mcp` or `/mcp/{server}`).
struct Session {
    url: String,
    key: &'static str,
    id: String,
}

impl Session {
    async fn open(gw: &Gateway, path: &str, key: &'static str) -> Self {
        let url = format!("{}{path}", gw.url());
        let r = client()
            .post(&url)
            .bearer_auth(key)
            .json(&json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": "2025-06-18"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let id = r.headers()["mcp-session-id"].to_str().unwrap().to_owned();
        Session { url, key, id }
    }

    /// One request; the whole JSON-RPC answer.
    async fn rpc(&self, method: &str, params: Value) -> Value {
        let r = client()
            .post(&self.url)
            .bearer_auth(self.key)
            .header("mcp-session-id", &self.id)
            .json(&json!({"jsonrpc": "2.0", "id": 7, "method": method, "params": params}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{method}");
        r.json().await.unwrap()
    }

    async fn call(&self, tool: &str, arguments: Value) -> Value {
        self.rpc("tools/call", json!({"name": tool, "arguments": arguments}))
            .await
    }
}

/// The params of the last `method` request the mock's MCP server received.
fn received(mock: &Mock, method: &str) -> Value {
    let seen = mock.requests();
    let last = seen
        .iter()
        .rev()
        .filter(|r| r["path"].as_str().unwrap_or("").starts_with("/mcp"))
        .filter_map(|r| serde_json::from_str::<Value>(r["body"].as_str()?).ok())
        .find(|b| b["method"] == method)
        .unwrap_or_else(|| panic!("the MCP server saw no {method}"));
    last["params"].clone()
}

fn calls_seen(mock: &Mock, method: &str) -> usize {
    mock.requests()
        .iter()
        .filter_map(|r| serde_json::from_str::<Value>(r["body"].as_str()?).ok())
        .filter(|b| b["method"] == method)
        .count()
}

// --- Guardrails on every MCP text, both ways -------------------------------------------

#[tokio::test]
async fn every_text_of_a_request_is_guarded_keys_meta_and_any_param() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    let s = Session::open(&gw, "/mcp", "sk-in").await;
    let params = json!({
        "name": "mock__echo",
        "arguments": {"alice@example.com": "key", "note": "call 415-555-0132"},
        "_meta": {"progressToken": "bob@example.com", "carol@example.com": 1},
        "x-extra": {"who": "dave@example.com"},
    });
    let a = s.rpc("tools/call", params).await;
    assert!(a["result"].is_object(), "{a}");
    let seen = received(&mock, "tools/call").to_string();
    for leaked in ["alice@", "bob@", "carol@", "dave@", "415-555"] {
        assert!(!seen.contains(leaked), "{leaked} reached the server: {seen}");
    }
    let seen = received(&mock, "tools/call");
    assert_eq!(seen["arguments"]["[REDACTED:email]"], "key", "a masked key is renamed");
    assert_eq!(seen["arguments"]["note"], "call [REDACTED:phone]");
    assert_eq!(seen["_meta"]["progressToken"], "[REDACTED:email]");

    // prompts/get arguments, and a secret anywhere in a request: refused, never sent.
    s.rpc(
        "prompts/get",
        json!({"name": "mock__greet", "arguments": {"who": "erin@example.com"}}),
    )
    .await;
    assert_eq!(received(&mock, "prompts/get")["arguments"]["who"], "[REDACTED:email]");
    let before = mock.requests().len();
    for params in [
        json!({"name": "mock__echo", "arguments": {}, "_meta": {"k": SECRET}}),
        json!({"name": "mock__echo", "arguments": {SECRET: 1}}),
        json!({"name": "mock__greet", "arguments": {"who": SECRET}}),
    ] {
        let method = if params["name"] == "mock__greet" {
            "prompts/get"
        } else {
            "tools/call"
        };
        let a = s.rpc(method, params.clone()).await;
        assert_eq!(a["error"]["code"], -32000, "{params}: {a}");
        assert!(a["error"]["message"].as_str().unwrap().contains("secrets-in"), "{a}");
        assert!(!a.to_string().contains(SECRET));
    }
    assert_eq!(mock.requests().len(), before, "nothing blocked reached the server");
}

#[tokio::test]
async fn every_text_of_an_answer_is_guarded_results_resources_prompts_and_errors() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    let s = Session::open(&gw, "/mcp", "sk-out").await;
    // A tool's structured result, not only its text.
    let a = s.call("mock__echo", json!({"to": "alice@example.com"})).await;
    assert_eq!(a["result"]["structuredContent"]["to"], "[REDACTED:email]", "{a}");
    assert!(!a.to_string().contains("alice@"));
    // A server's JSON-RPC error: message and data.
    let a = s.call("mock__fail_with", json!({"text": "ask bob@example.com"})).await;
    assert_eq!(a["error"]["message"], "ask [REDACTED:email]", "{a}");
    assert_eq!(a["error"]["data"]["detail"], "ask [REDACTED:email]");
    // A prompt and a resource.
    let a = s
        .rpc(
            "prompts/get",
            json!({"name": "mock__greet", "arguments": {"who": "carol@example.com"}}),
        )
        .await;
    assert_eq!(
        a["result"]["messages"][0]["content"]["text"], "Hello [REDACTED:email]",
        "{a}"
    );
    s.rpc("resources/list", json!({})).await;
    let a = s.rpc("resources/read", json!({"uri": "mock://note"})).await;
    assert_eq!(a["result"]["contents"][0]["text"], "call [REDACTED:phone]", "{a}");
}

#[tokio::test]
async fn base64_text_in_an_answer_fails_closed_and_binary_passes() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    let s = Session::open(&gw, "/mcp", "sk-out").await;
    s.rpc("resources/list", json!({})).await;
    // Base64 of a text type, and base64 of no stated type: text a guardrail cannot read.
    for uri in ["mock://blob", "mock://untyped"] {
        let a = s.rpc("resources/read", json!({"uri": uri})).await;
        assert_eq!(a["error"]["code"], -32000, "{uri}: {a}");
        assert!(a["error"]["message"].as_str().unwrap().contains("pii-out"), "{a}");
        assert!(!a.to_string().contains(mock_card_base64()));
    }
    let a = s.rpc("resources/read", json!({"uri": "mock://image"})).await;
    assert!(a["result"]["contents"][0]["blob"].is_string(), "{a}");
    // The same in a tool's result (an embedded resource), by any media type that is text.
    for mime in [json!("text/csv"), json!("application/json; charset=utf-8"), Value::Null] {
        let a = s
            .call("mock__blob", json!({"blob": mock_card_base64(), "mime": mime}))
            .await;
        assert_eq!(a["error"]["code"], -32000, "{mime}: {a}");
    }
    let a = s
        .call("mock__blob", json!({"blob": "iVBORw0KGgo=", "mime": "image/png"}))
        .await;
    assert!(a["result"].is_object(), "{a}");
    // A guardrail that only monitors lets it through.
    let w = Session::open(&gw, "/mcp", "sk-watch").await;
    w.rpc("resources/list", json!({})).await;
    let a = w.rpc("resources/read", json!({"uri": "mock://blob"})).await;
    assert!(a["result"].is_object(), "{a}");
}

/// The start of an answer, for a failure's message.
fn short(v: &Value) -> String {
    v.to_string().chars().take(300).collect()
}

fn mock_card_base64() -> &'static str {
    "Y2FyZCA0MTExMTExMTExMTExMTEx"
}

// --- Numbers are text -------------------------------------------------------------------

#[tokio::test]
async fn a_card_number_written_as_a_json_number_is_masked_or_blocked() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    let s = Session::open(&gw, "/mcp", "sk-in").await;
    // As an integer, in exponent form, negative, with a fraction.
    for (i, n) in [
        "4111111111111111",
        "4.111111111111111e15",
        "-4111111111111111",
        "4111111111111111.5",
    ]
    .iter()
    .enumerate()
    {
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":{i},"method":"tools/call","params":{{"name":"mock__echo","arguments":{{"card":{n},"n":12}}}}}}"#
        );
        let r = client()
            .post(format!("{}/mcp", gw.url()))
            .bearer_auth("sk-in")
            .header("mcp-session-id", &s.id)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let seen = received(&mock, "tools/call");
        let card = seen["arguments"]["card"].as_str().unwrap_or_default();
        assert!(
            card.ends_with("[REDACTED:credit_card]") && !card.contains("1111"),
            "{n}: {seen}"
        );
        assert_eq!(
            seen["arguments"]["n"], 12,
            "a number that matches nothing stays a number"
        );
    }
    // A guardrail that blocks refuses it.
    let b = Session::open(&gw, "/mcp", "sk-block").await;
    let before = calls_seen(&mock, "tools/call");
    let a = b.call("mock__echo", json!({"card": 4111111111111111u64})).await;
    assert_eq!(a["error"]["code"], -32000, "{a}");
    assert_eq!(calls_seen(&mock, "tools/call"), before);
    // And answers: a number a server sends back is masked too.
    let o = Session::open(&gw, "/mcp", "sk-out").await;
    let a = o.call("mock__echo", json!({"card": 5500000000000004u64})).await;
    assert_eq!(
        a["result"]["structuredContent"]["card"], "[REDACTED:credit_card]",
        "{a}"
    );
}

// --- A hostile server cannot exhaust the gateway ---------------------------------------

/// CPU seconds the process has used (user and system).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat(5), counted from the state (field 3) here.
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0
}

#[tokio::test]
async fn a_dripped_answer_costs_cpu_linear_in_its_bytes() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    let s = Session::open(&gw, "/mcp/drip", "sk-all").await;
    let pid = gw.child.id();
    let before = cpu_seconds(pid);
    let started = std::time::Instant::now();
    let a = s.call("say", json!({"text": "after the drip"})).await;
    let cpu = cpu_seconds(pid) - before;
    eprintln!("drip: 3 MB in 64-byte writes: {cpu:.2} s CPU, {:?}", started.elapsed());
    assert_eq!(a["result"]["content"][0]["text"], "after the drip", "{a}");
    assert!(cpu < 4.0, "{cpu} s of CPU for one dripped answer");
}

#[tokio::test]
async fn list_pages_items_and_bytes_are_bounded() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    let pid = gw.child.id();
    let base = proc_kib(pid, "VmRSS");
    // Three pages of 3.5 MB of small tools.
    let s = Session::open(&gw, "/mcp/pages", "sk-all").await;
    let a = s.rpc("tools/list", json!({})).await;
    let peak = proc_kib(pid, "VmHWM");
    eprintln!(
        "pages: RSS {base} KiB before, peak {peak} KiB, now {} KiB",
        proc_kib(pid, "VmRSS")
    );
    assert_eq!(a["error"]["code"], -32603, "{}", short(&a));
    assert!(
        a["error"]["message"].as_str().unwrap().contains("'pages'"),
        "{}",
        short(&a)
    );
    assert!(peak < base + 128 * 1024, "peak RSS {peak} KiB from {base} KiB");
    // More items than a list may hold (1,500 small tools in one 90 KB page).
    let a = Session::open(&gw, "/mcp/many", "sk-all")
        .await
        .rpc("tools/list", json!({}))
        .await;
    assert_eq!(a["error"]["code"], -32603, "{}", short(&a));
    // More bytes than a list may hold, in few items (two pages with a 3 MB name each).
    let a = Session::open(&gw, "/mcp/huge", "sk-all")
        .await
        .rpc("tools/list", json!({}))
        .await;
    assert_eq!(a["error"]["code"], -32603, "{}", short(&a));
    // Through /mcp, a server past a bound is left out and the others still listed.
    let all = Session::open(&gw, "/mcp", "sk-all").await;
    let a = all.rpc("tools/list", json!({})).await;
    let names: Vec<&str> = a["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"mock__echo")
            && !names
                .iter()
                .any(|n| n.starts_with("pages__") || n.starts_with("many__"))
    );
    assert!(
        gw.log_text().contains("'pages'") || gw.log_text().contains("pages"),
        "a log line names the server"
    );
    // The gateway still serves.
    let a = all.call("mock__say", json!({"text": "still here"})).await;
    assert_eq!(a["result"]["content"][0]["text"], "still here");
}

// --- Metric labels ----------------------------------------------------------------------

#[tokio::test]
async fn callers_cannot_add_metric_series_or_keep_long_names() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    let s = Session::open(&gw, "/mcp", "sk-two").await;
    // Names the server never listed, one of them long.
    for i in 0..40 {
        s.call(&format!("mock__zz{i}"), json!({})).await;
    }
    let long = format!("mock__{}", "q".repeat(100_000));
    s.call(&long, json!({})).await;
    // A listed name longer than a label may be.
    s.rpc("tools/list", json!({})).await;
    s.call(&format!("long__{}", "n".repeat(300)), json!({})).await;
    s.call("mock__echo", json!({})).await;
    let text = metrics_text(&gw).await;
    assert!(
        !text.contains("zz") && !text.contains("qqqq") && !text.contains("nnnn"),
        "callers' names became labels"
    );
    assert!(
        text.contains(r#"aigw_mcp_tool_calls_total{outcome="ok",server="mock",tool="echo"}"#),
        "{text}"
    );
    assert!(
        text.contains(r#"server="mock",tool="other""#),
        "unlisted tools count as other"
    );
    assert!(text.len() < 200_000, "/metrics is {} bytes", text.len());
    let status = get_json(&format!("{}/admin/v1/status", gw.admin_url()), "adm-mcp")
        .await
        .to_string();
    assert!(!status.contains("zz") && !status.contains("qqqq"));
    let lines = gw.access_lines_until(42, |l| l.contains("mcp_tool"));
    assert!(lines.iter().all(|l| l.len() < 4096), "an access line kept a long name");
}

// --- Rate limits and globs on every method ---------------------------------------------

#[tokio::test]
async fn every_method_that_reaches_a_server_counts_against_rate_limits() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    for (key, first, second, third) in [
        ("sk-limited", "tools/list", "prompts/list", "prompts/get"),
        ("sk-limited-b", "resources/list", "prompts/get", "resources/read"),
    ] {
        let s = Session::open(&gw, "/mcp", key).await;
        let p = |m: &str| match m {
            "prompts/get" => json!({"name": "mock__greet", "arguments": {"who": "x"}}),
            "resources/read" => json!({"uri": "mock://note"}),
            _ => json!({}),
        };
        assert!(s.rpc(first, p(first)).await["result"].is_object());
        assert!(s.rpc(second, p(second)).await["result"].is_object());
        let a = s.rpc(third, p(third)).await;
        assert_eq!(a["error"]["code"], -32000, "{third} after {first}, {second}: {a}");
        assert!(a["error"]["message"].as_str().unwrap().to_lowercase().contains("limit"));
        // A ping reaches no server and is not counted.
        assert!(s.rpc("ping", json!({})).await["result"].is_object());
    }
}

#[tokio::test]
async fn a_tool_glob_bounds_prompts_and_resources_too() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    let s = Session::open(&gw, "/mcp", "sk-echo-only").await;
    let tools = s.rpc("tools/list", json!({})).await;
    assert_eq!(tools["result"]["tools"].as_array().unwrap().len(), 1);
    assert_eq!(s.rpc("prompts/list", json!({})).await["result"]["prompts"], json!([]));
    let before = calls_seen(&mock, "prompts/get");
    let a = s
        .rpc("prompts/get", json!({"name": "mock__greet", "arguments": {"who": "x"}}))
        .await;
    assert_eq!(a["error"]["code"], -32602, "{a}");
    assert_eq!(calls_seen(&mock, "prompts/get"), before);
    assert_eq!(
        s.rpc("resources/list", json!({})).await["result"]["resources"],
        json!([])
    );
    let a = s.rpc("resources/read", json!({"uri": "mock://note"})).await;
    assert!(a["error"].is_object(), "{a}");
    // One-server endpoint: the same glob, names as the server gives them.
    let one = Session::open(&gw, "/mcp/mock", "sk-echo-only").await;
    let a = one
        .rpc("prompts/get", json!({"name": "greet", "arguments": {"who": "x"}}))
        .await;
    assert_eq!(a["error"]["code"], -32602, "{a}");
}

/// A caller's message is held within the memory its bytes buy: a megabyte of small
/// objects (a hundred times that once parsed) is refused before it is taken; the same
/// bytes of text are not.
#[tokio::test]
async fn a_callers_message_is_bounded_by_the_memory_it_takes() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    let s = Session::open(&gw, "/mcp", "sk-all").await;
    let post = |params: String| {
        client()
            .post(format!("{}/mcp", gw.url()))
            .bearer_auth("sk-all")
            .header("mcp-session-id", &s.id)
            .header("content-type", "application/json")
            .body(format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"ping","params":{params}}}"#
            ))
            .send()
    };
    let objects = format!("{{\"x\":[{}{{}}]}}", "{\"a\":0},".repeat(125_000));
    let r = post(objects).await.unwrap();
    assert_eq!(r.status(), 400);
    let a: Value = r.json().await.unwrap();
    assert_eq!(a["error"]["code"], -32600, "{a}");
    let text = format!("{{\"x\":\"{}\"}}", "a".repeat(1_000_000));
    let r = post(text).await.unwrap();
    assert_eq!(r.status(), 200);
}

/// The resources a session may read are each server's last list: a server that lists
/// new URIs on every call cannot grow a session without bound.
#[tokio::test]
async fn a_session_keeps_only_each_servers_last_resource_list() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    let s = Session::open(&gw, "/mcp/rotate", "sk-all").await;
    let mut uris = Vec::new();
    for _ in 0..5 {
        let a = s.rpc("resources/list", json!({})).await;
        uris.push(a["result"]["resources"][0]["uri"].as_str().unwrap().to_owned());
    }
    let last = s.rpc("resources/read", json!({"uri": uris[4]})).await;
    assert_eq!(last["result"]["contents"][0]["text"], "rotated", "{last}");
    let first = s.rpc("resources/read", json!({"uri": uris[0]})).await;
    assert_eq!(first["error"]["message"], "Resource not found.", "{first}");
}
