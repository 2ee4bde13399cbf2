//! An MCP server (Streamable HTTP) at `POST /mcp`, for the gateway's MCP tests: honest by
//! default, hostile on request. Knobs follow a `?` in the URL the gateway is configured
//! with, as the model directives do:
//!
//! - `sse=1`: answer as an SSE stream (default: one JSON body).
//! - `drip=N`: before the answer, N bytes of SSE comment lines inside the answer's event,
//!   one 64-byte line per write: a server that drips its answer.
//! - `pages=N`, `page_bytes=B`: `tools/list` in N pages, each padded with small tools to
//!   about B bytes.
//! - `long_name=B`: each page of `tools/list` also lists a tool with a name of B bytes
//!   (after the page's number).
//! - `rotate=1`: `resources/list` lists a resource of a new URI each time
//!   (`mock://r{n}`), which `resources/read` reads.
//!
//! Tools: `echo` answers its arguments (as text and as `structuredContent`), `say`
//! answers `arguments.text` as text, `fail_with` answers a JSON-RPC error whose message
//! and data are `arguments.text`, `blob` answers an embedded resource whose base64 `blob`
//! is `arguments.blob`, of type `arguments.mime` (none when absent). Prompts: `greet`
//! (`who`). Resources: `mock://note` (text), `mock://blob` (base64 of a text type),
//! `mock://untyped` (base64, no type), `mock://image` (base64 PNG).

use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::{json, Value};

use super::{bytes_response, full, Body};

/// `card 4111111111111111`, base64.
pub const CARD_BASE64: &str = "Y2FyZCA0MTExMTExMTExMTExMTEx";
/// A one-pixel PNG's first bytes, base64: binary, never text.
const PNG_BASE64: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk";

#[derive(Debug, Default)]
struct Knobs {
    sse: bool,
    drip: usize,
    pages: usize,
    page_bytes: usize,
    long_name: usize,
    rotate: bool,
}

/// The next `rotate` resource.
static ROTATED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Knobs {
    fn parse(query: Option<&str>) -> Self {
        let mut k = Knobs::default();
        for pair in query.unwrap_or("").split('&') {
            let (key, v) = pair.split_once('=').unwrap_or((pair, ""));
            let n = v.parse::<usize>().unwrap_or(0);
            match key {
                "sse" => k.sse = n == 1,
                "drip" => k.drip = n,
                "pages" => k.pages = n,
                "page_bytes" => k.page_bytes = n,
                "long_name" => k.long_name = n,
                "rotate" => k.rotate = n == 1,
                _ => {}
            }
        }
        k
    }
}

/// One POST to `/mcp`.
pub fn answer(query: Option<&str>, body: &Bytes) -> Response<Body> {
    let knobs = Knobs::parse(query);
    let Ok(msg) = serde_json::from_slice::<Value>(body) else {
        return full(
            StatusCode::BAD_REQUEST,
            &json!({"jsonrpc": "2.0", "id": null,
            "error": {"code": -32700, "message": "parse error"}}),
        );
    };
    let Some(id) = msg.get("id").cloned() else {
        // Notifications.
        return bytes_response(StatusCode::ACCEPTED, "application/json", Bytes::new());
    };
    let params = msg.get("params").cloned().unwrap_or(Value::Null);
    let outcome = match msg["method"].as_str().unwrap_or("") {
        "initialize" => Ok(
            json!({"protocolVersion": "2025-06-18", "capabilities": {"tools": {}, "prompts": {}, "resources": {}},
            "serverInfo": {"name": "aigw-mock", "version": "1"}}),
        ),
        "ping" => Ok(json!({})),
        "tools/list" => Ok(tools_page(&knobs, &params)),
        "tools/call" => call(&params),
        "prompts/list" => Ok(json!({"prompts": [{"name": "greet", "arguments": [{"name": "who", "required": true}]}]})),
        "prompts/get" => Ok(json!({"messages": [{"role": "user", "content": {"type": "text",
            "text": format!("Hello {}", params.pointer("/arguments/who").and_then(Value::as_str).unwrap_or("you"))}}]})),
        "resources/list" if knobs.rotate => {
            let n = ROTATED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(json!({"resources": [{"uri": format!("mock://r{n}"), "name": format!("r{n}")}]}))
        }
        "resources/list" => Ok(json!({"resources": [
            {"uri": "mock://note", "name": "note", "mimeType": "text/plain"},
            {"uri": "mock://blob", "name": "blob", "mimeType": "text/plain"},
            {"uri": "mock://untyped", "name": "untyped"},
            {"uri": "mock://image", "name": "image", "mimeType": "image/png"},
        ]})),
        "resources/read" => read(params["uri"].as_str().unwrap_or("")),
        m => Err(json!({"code": -32601, "message": format!("no method {m}")})),
    };
    let answer = match outcome {
        Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
        Err(error) => json!({"jsonrpc": "2.0", "id": id, "error": error}),
    };
    let mut r = if knobs.sse || knobs.drip > 0 {
        sse(&answer, knobs.drip)
    } else {
        full(StatusCode::OK, &answer)
    };
    r.headers_mut()
        .insert("mcp-session-id", http::HeaderValue::from_static("mock-mcp-session"));
    r
}

fn tools_page(k: &Knobs, params: &Value) -> Value {
    let page = params["cursor"]
        .as_str()
        .and_then(|c| c.parse::<usize>().ok())
        .unwrap_or(0);
    let schema = json!({"type": "object", "properties": {"text": {"type": "string"}}});
    let mut tools: Vec<Value> = match page {
        0 => ["echo", "say", "fail_with", "blob"]
            .iter()
            .map(|n| json!({"name": n, "description": format!("The mock's {n}."), "inputSchema": schema}))
            .collect(),
        _ => Vec::new(),
    };
    if k.long_name > 0 {
        tools.push(json!({"name": format!("{page}{}", "n".repeat(k.long_name)), "inputSchema": schema}));
    }
    // Small tools, each about 60 bytes of JSON, up to the page's size.
    let mut i = 0;
    while i * 60 < k.page_bytes {
        tools.push(json!({"name": format!("p{page}t{i}"), "inputSchema": {"type": "object"}}));
        i += 1;
    }
    let mut result = json!({"tools": tools});
    if page + 1 < k.pages {
        result["nextCursor"] = json!((page + 1).to_string());
    }
    result
}

fn call(params: &Value) -> Result<Value, Value> {
    let args = params.get("arguments").cloned().unwrap_or(json!({}));
    let text = args["text"].as_str().unwrap_or("").to_owned();
    match params["name"].as_str().unwrap_or("") {
        "echo" => Ok(json!({"content": [{"type": "text", "text": args.to_string()}], "structuredContent": args})),
        "say" => Ok(json!({"content": [{"type": "text", "text": text}]})),
        "fail_with" => Err(json!({"code": -32000, "message": text, "data": {"detail": text}})),
        "blob" => {
            let mut resource = json!({"uri": "mock://made", "blob": args["blob"]});
            if let Some(m) = args["mime"].as_str() {
                resource["mimeType"] = json!(m);
            }
            Ok(json!({"content": [{"type": "resource", "resource": resource}]}))
        }
        other => Err(json!({"code": -32602, "message": format!("Unknown tool: {other}")})),
    }
}

fn read(uri: &str) -> Result<Value, Value> {
    let content = match uri {
        "mock://note" => json!({"uri": uri, "mimeType": "text/plain", "text": "call 415-555-0132"}),
        "mock://blob" => json!({"uri": uri, "mimeType": "text/plain", "blob": CARD_BASE64}),
        "mock://untyped" => json!({"uri": uri, "blob": CARD_BASE64}),
        "mock://image" => json!({"uri": uri, "mimeType": "image/png", "blob": PNG_BASE64}),
        u if u.starts_with("mock://r") => json!({"uri": uri, "mimeType": "text/plain", "text": "rotated"}),
        _ => return Err(json!({"code": -32002, "message": "Resource not found"})),
    };
    Ok(json!({"contents": [content]}))
}

/// The answer as one SSE event, after `drip` bytes of comment lines written one by one.
fn sse(answer: &Value, drip: usize) -> Response<Body> {
    let line = Bytes::from(format!(": {}\n", "x".repeat(61)));
    let lines = drip.div_ceil(line.len());
    let data = Bytes::from(format!("event: message\ndata: {answer}\n\n"));
    let frames = stream::iter(0..lines)
        .map(move |_| Ok(Frame::data(line.clone())))
        .chain(stream::iter([Ok(Frame::data(data))]));
    let mut r = Response::new(BodyExt::boxed_unsync(StreamBody::new(frames)));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/event-stream"),
    );
    r
}
