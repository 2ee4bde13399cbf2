//! OTLP traces end to end: an in-test OTLP/HTTP receiver decodes what the gateway exports
//! and checks span kinds, names, GenAI attributes, parent/child links, the caller's trace
//! id, sampling, content capture, and that a dead collector costs requests nothing.
#![allow(clippy::unwrap_used)]

mod common;

use common::otlp::{attr, hex, Receiver};
use common::*;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use serde_json::{json, Value};

fn config(endpoint: &str, ratio: f64, capture: bool) -> String {
    format!(
        r#"
{{SERVER}}
provider_keys:
  - {{name: mock, provider: openai_compatible, base_url: "{{MOCK}}/v1", api_key: "{{PROVIDER_KEY}}"}}
models:
  - {{name: chat, provider_key: mock, model: up-chat}}
  - {{name: down, provider_key: mock, model: "x?status=503"}}
  - name: routed
    routing: {{strategy: failover, targets: [{{model: down, priority: 0}}, {{model: chat, priority: 1}}], cooldown_s: 1}}
api_keys:
  - {{name: main, key: "{{CALLER_KEY}}", owner: team-a}}
observability:
  otlp: {{endpoint: "{endpoint}", sample_ratio: {ratio}, capture_content: {capture}}}
"#
    )
}

const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

async fn post_traced(gw: &Gateway, body: &Value, traceparent: Option<&str>) -> reqwest::Response {
    let mut req = client()
        .post(format!("{}/v1/chat/completions", gw.url()))
        .bearer_auth(CALLER_KEY)
        .json(body);
    if let Some(tp) = traceparent {
        req = req.header("traceparent", tp);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn server_and_client_spans_follow_the_genai_conventions() {
    let rx = Receiver::start().await;
    let mock = Mock::start();
    let gw = Gateway::start(&config(&rx.endpoint(), 1.0, false), &mock);
    let tp = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    let body =
        json!({"model": "routed", "max_tokens": 42, "messages": [{"role": "user", "content": "secret prompt text"}]});
    let r = post_traced(&gw, &body, Some(&tp)).await;
    assert_eq!(r.status(), 200);
    let spans = rx.trace(CALLER_TRACE, 3).await;
    assert_eq!(spans.len(), 3, "{spans:#?}");

    let server: Vec<&Span> = spans.iter().filter(|s| s.kind == SpanKind::Server as i32).collect();
    let clients: Vec<&Span> = spans.iter().filter(|s| s.kind == SpanKind::Client as i32).collect();
    assert_eq!((server.len(), clients.len()), (1, 2));
    let server = server[0];
    assert_eq!(server.name, "chat routed");
    assert_eq!(
        hex(&server.parent_span_id),
        CALLER_SPAN,
        "the caller's span is the parent"
    );
    for (k, v) in [
        ("gen_ai.operation.name", "chat"),
        ("gen_ai.request.model", "routed"),
        ("gen_ai.response.model", "up-chat"),
        ("gen_ai.request.max_tokens", "42"),
        ("gen_ai.response.finish_reasons", "stop"),
        ("http.response.status_code", "200"),
        ("aigw.owner", "team-a"),
    ] {
        assert_eq!(attr(server, k).as_deref(), Some(v), "server {k}");
    }
    assert!(
        attr(server, "gen_ai.usage.input_tokens")
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 0
    );
    assert_eq!(attr(server, "gen_ai.usage.output_tokens").as_deref(), Some("8"));
    assert!(attr(server, "error.type").is_none());

    // Attempts in order: the 503 target, then the one that answered; both children of
    // the server span, within its time.
    let mut clients = clients;
    clients.sort_by_key(|s| s.start_time_unix_nano);
    let (failed, answered) = (clients[0], clients[1]);
    for c in [failed, answered] {
        assert_eq!(c.parent_span_id, server.span_id);
        assert!(c.start_time_unix_nano >= server.start_time_unix_nano);
        assert!(c.end_time_unix_nano <= server.end_time_unix_nano);
        assert_eq!(attr(c, "gen_ai.provider.name").as_deref(), Some("openai_compatible"));
        assert_eq!(attr(c, "server.address").as_deref(), Some("127.0.0.1"));
        assert_eq!(attr(c, "gen_ai.operation.name").as_deref(), Some("chat"));
    }
    assert_eq!(failed.name, "chat x?status=503");
    assert_eq!(attr(failed, "http.response.status_code").as_deref(), Some("503"));
    assert_eq!(attr(failed, "error.type").as_deref(), Some("503"));
    assert_eq!(answered.name, "chat up-chat");
    assert_eq!(attr(answered, "gen_ai.response.model").as_deref(), Some("up-chat"));
    assert_eq!(attr(answered, "gen_ai.usage.output_tokens").as_deref(), Some("8"));
    assert!(attr(answered, "error.type").is_none());

    // The provider got the answering attempt's span as its parent.
    let seen = mock.last_request();
    assert_eq!(
        seen["headers"]["traceparent"],
        format!("00-{CALLER_TRACE}-{}-01", hex(&answered.span_id))
    );
    // No prompt text, no key anywhere in the spans.
    let dump = format!("{spans:?}");
    assert!(!dump.contains("secret prompt") && !dump.contains(CALLER_KEY));
    assert!(rx.services.lock().unwrap().iter().all(|s| s == "aigw"));
    // The access log names the trace.
    let lines = gw.access_lines_until(1, |l| l.contains(CALLER_TRACE));
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("\"trace_id\":\"{CALLER_TRACE}\""))),
        "{lines:?}"
    );
}

#[tokio::test]
async fn local_answers_are_traced_and_errors_marked() {
    let rx = Receiver::start().await;
    let mock = Mock::start();
    let gw = Gateway::start(&config(&rx.endpoint(), 1.0, false), &mock);
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let r = client()
        .post(format!("{}/v1/chat/completions", gw.url()))
        .bearer_auth("sk-wrong")
        .header("traceparent", format!("00-{trace}-b7ad6b7169203331-01"))
        .json(&chat_body("chat"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let spans = rx.trace(trace, 1).await;
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].kind, SpanKind::Server as i32);
    assert_eq!(attr(&spans[0], "error.type").as_deref(), Some("invalid_api_key"));
    assert_eq!(attr(&spans[0], "http.response.status_code").as_deref(), Some("401"));
    assert_eq!(spans[0].status.as_ref().unwrap().code, 2, "status error");
}

#[tokio::test]
async fn sampling_follows_the_ratio_and_the_caller() {
    let rx = Receiver::start().await;
    let mock = Mock::start();
    let gw = Gateway::start(&config(&rx.endpoint(), 0.0, false), &mock);
    // Ratio 0: a new trace is not recorded, but its ids still go upstream, unsampled.
    let r = post_traced(&gw, &chat_body("chat"), None).await;
    assert_eq!(r.status(), 200);
    let tp = mock.last_request()["headers"]["traceparent"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(tp.starts_with("00-") && tp.ends_with("-00"), "{tp}");
    // A caller's sampled trace is recorded whatever the ratio.
    let sampled = "11111111111111111111111111111111";
    post_traced(
        &gw,
        &chat_body("chat"),
        Some(&format!("00-{sampled}-2222222222222222-01")),
    )
    .await;
    assert_eq!(rx.trace(sampled, 2).await.len(), 2);
    // Spans are exported in order: by now the first request's would be here.
    let unsampled_trace = &tp[3..35];
    assert!(rx
        .spans
        .lock()
        .unwrap()
        .iter()
        .all(|s| hex(&s.trace_id) != unsampled_trace));
}

#[tokio::test]
async fn content_is_captured_only_when_asked() {
    let rx = Receiver::start().await;
    let mock = Mock::start();
    let gw = Gateway::start(&config(&rx.endpoint(), 1.0, true), &mock);
    for (i, stream) in [false, true].into_iter().enumerate() {
        let trace = format!("{:032x}", 0xabc0 + i);
        let body = json!({"model": "chat", "stream": stream, "messages": [{"role": "user", "content": "tell me"}]});
        let r = post_traced(&gw, &body, Some(&format!("00-{trace}-2222222222222222-01"))).await;
        r.text().await.unwrap();
        let spans = rx.trace(&trace, 2).await;
        let server = spans.iter().find(|s| s.kind == SpanKind::Server as i32).unwrap();
        assert!(attr(server, "gen_ai.input.messages").unwrap().contains("tell me"));
        let out = attr(server, "gen_ai.output.messages").unwrap_or_default();
        assert!(out.contains("Hello from the aigw mock"), "stream={stream}: {out}");
    }
}

#[tokio::test]
async fn a_dead_collector_costs_requests_nothing() {
    let mock = Mock::start();
    let dead = format!("http://127.0.0.1:{}/v1/traces", free_port());
    let gw = Gateway::start(&config(&dead, 1.0, false), &mock);
    for _ in 0..20 {
        let r = post(&gw, "/v1/chat/completions", &chat_body("chat")).await;
        assert_eq!(r.status(), 200);
    }
    let dropped = wait_until_async(|| async {
        metric(&gw, r#"aigw_trace_spans_dropped_total{reason="export_failed"}"#).await >= 40.0
    })
    .await;
    assert!(dropped, "{}", metrics_text(&gw).await);
}

/// An MCP tool call is an `execute_tool` span; other MCP requests are named by method.
#[tokio::test]
async fn mcp_tool_calls_are_execute_tool_spans() {
    let rx = Receiver::start().await;
    let mock = Mock::start();
    let closed = free_port();
    let config = config(&rx.endpoint(), 1.0, false)
        .replace(
            "api_keys:",
            &format!("mcp_servers:\n  - {{name: tools, url: \"http://127.0.0.1:{closed}/mcp\", timeout_ms: 2000}}\napi_keys:"),
        )
        .replace("owner: team-a}", "owner: team-a, mcp: {servers: [tools]}}");
    let gw = Gateway::start(&config, &mock);
    let rpc = |trace: &str, session: Option<&str>, body: Value| {
        let mut req = client()
            .post(format!("{}/mcp", gw.url()))
            .bearer_auth(CALLER_KEY)
            .header("traceparent", format!("00-{trace}-b7ad6b7169203331-01"))
            .json(&body);
        if let Some(s) = session {
            req = req.header("mcp-session-id", s);
        }
        req.send()
    };
    let init = "1af7651916cd43dd8448eb211c80319c";
    let r = rpc(
        init,
        None,
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18"}}),
    )
    .await
    .unwrap();
    let session = r.headers()["mcp-session-id"].to_str().unwrap().to_owned();
    let spans = rx.trace(init, 1).await;
    assert_eq!(spans[0].name, "initialize");
    assert_eq!(attr(&spans[0], "mcp.method.name").as_deref(), Some("initialize"));

    let call = "2af7651916cd43dd8448eb211c80319c";
    let body = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "tools__lookup", "arguments": {}}});
    let answer: Value = rpc(call, Some(&session), body).await.unwrap().json().await.unwrap();
    assert_eq!(answer["error"]["code"], -32603, "{answer}");
    let spans = rx.trace(call, 1).await;
    assert_eq!(spans[0].name, "execute_tool lookup");
    assert_eq!(attr(&spans[0], "gen_ai.tool.name").as_deref(), Some("lookup"));
    assert_eq!(attr(&spans[0], "aigw.mcp.server").as_deref(), Some("tools"));
    assert_eq!(attr(&spans[0], "aigw.mcp.outcome").as_deref(), Some("unavailable"));
    assert_eq!(attr(&spans[0], "gen_ai.request.model"), None);
}
