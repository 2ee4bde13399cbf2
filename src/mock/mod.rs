//! `aigw mock-upstream`: a deterministic fake provider for the quickstart, the tests and
//! the load tests. It speaks OpenAI's chat, embeddings and Responses APIs (and the rest of
//! OpenAI's surface: `surface`), Anthropic's Messages and Gemini's generateContent, each
//! with its own auth header and error shape.
//!
//! Its behaviour is scripted by the model id it receives, so a gateway config alone can
//! stage failures. Directives follow a `?` in the id, URL-query style:
//! `gpt-4o-mini?status=503&retry_after=2`. See [`Script`] for the list.
//!
//! Test helpers: `GET /_mock/requests` returns the requests seen (with `--record`), and
//! `GET /_mock/stats` counts requests and streams the client abandoned. `POST /v1/traces`
//! accepts OTLP/HTTP spans and discards them (a collector stand-in). With `--jwks-file`,
//! `/idp/...` is an OpenID provider's discovery and key set (see `idp`). `POST /mcp` is an
//! MCP server, honest or hostile as its URL asks (see `mcp`).
//!
//! Guardrail services (see `guards`, a paragraph each): `/v1/moderations` scores
//! omni-moderation's categories; `POST /analyze` and `POST /anonymize` are Presidio's
//! analyzer and anonymizer; `POST /guardrail/{id}/version/{v}/apply` is Bedrock's
//! ApplyGuardrail, SigV4-checked like Converse; `POST /guard/check` is a webhook guard
//! (`--guard-token` to require a bearer token) whose requests `GET /guard/requests`
//! returns; and the chat models `guard-model` and `llama-guard*` are judges that answer
//! `safe` or `unsafe\nS1`.

mod bedrock;
mod files;
mod google;
mod guards;
mod idp;
mod mcp;
mod prompt_cache;
mod realtime;
mod surface;
mod thinking;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// How one request should be answered, parsed from the directives in the model id.
#[derive(Debug, Clone, PartialEq)]
pub struct Script {
    /// Answer with this status and an OpenAI-style error body.
    pub status: Option<u16>,
    /// `Retry-After` seconds on an error answer.
    pub retry_after: Option<u64>,
    /// Wait this long before the response header.
    pub delay_ms: u64,
    /// Only requests asking for at least this many tokens (`max_tokens`) wait `delay_ms`:
    /// one caller's long answer on a target that answers everyone else at once.
    pub slow_from_tokens: Option<u64>,
    /// Wait this long between streamed chunks.
    pub chunk_delay_ms: u64,
    /// Cut the connection after this many data events (streams; the first event is the
    /// role chunk), or half-way through the body (JSON).
    pub drop_after: Option<usize>,
    /// Words in the completion.
    pub words: usize,
    /// Reply with the last user message instead of filler words.
    pub echo: bool,
    /// Answer 200 with a truncated JSON body.
    pub bad_json: bool,
    /// End a stream cleanly but without its end marker (`[DONE]`, `message_stop`).
    pub no_done: bool,
    /// A JSON answer with no `usage` at all (servers that never report it).
    pub no_usage: bool,
    /// The Content-Type of a stream, as written (media types are case-insensitive).
    pub sse_type: Option<String>,
    /// Stream one event of this many bytes that never ends (no blank line), in 64 KiB
    /// writes: a broken or hostile provider.
    pub endless_event: Option<usize>,
    /// Answer 200 with a small body of this Content-Type (`html`: an HTML error page, as a
    /// captive portal or a misrouted proxy would send).
    pub content_type: Option<String>,
    /// Report this many prompt tokens as read from the provider's cache (OpenAI, Gemini:
    /// their caches are automatic; Anthropic's and Bedrock's follow breakpoints).
    pub cached: u64,
    /// Report this many reasoning tokens on top of the answer's (OpenAI).
    pub reasoning: u64,
    /// Answer with this provider's own error for a class of failure, worded as each API
    /// words it: `context_length` or `content_filter` (400s), `request_too_large` (one
    /// request over the account's size or token limit: OpenAI's 429, Anthropic's 413,
    /// Gemini's 400).
    pub error: Option<String>,
    /// Pads the message of `error` with this many bytes, as a provider quoting the
    /// flagged prompt back would.
    pub error_pad: usize,
    /// Writes the body of `error` in pieces of this many bytes, `chunk_delay_ms` apart,
    /// as a provider writing its answer as it goes (each piece its own read upstream).
    pub error_piece: usize,
    /// `status` and `error` answer only requests asking for at least this many tokens
    /// (`max_tokens`); others are served: one caller's request a target refuses while it
    /// serves everyone else.
    pub fail_from_tokens: Option<u64>,
    /// `usage=PATH:JSON`, repeatable: sets PATH (dot-separated) to the JSON value in every
    /// usage report of the answer (`usage=prompt_tokens_details.cached_tokens:-1`), to
    /// stage odd reports.
    pub usage: Vec<(String, Value)>,
    /// A realtime session's reply text (`+` for spaces), instead of the item's echo.
    pub say: Option<String>,
}

impl Script {
    pub fn parse(model: &str) -> Self {
        let mut s = Script {
            status: None,
            retry_after: None,
            delay_ms: 0,
            slow_from_tokens: None,
            chunk_delay_ms: 0,
            drop_after: None,
            words: 8,
            echo: false,
            bad_json: false,
            no_done: false,
            no_usage: false,
            endless_event: None,
            sse_type: None,
            content_type: None,
            cached: 0,
            reasoning: 0,
            error: None,
            error_pad: 0,
            error_piece: 0,
            fail_from_tokens: None,
            usage: Vec::new(),
            say: None,
        };
        let Some((_, query)) = model.split_once('?') else {
            return s;
        };
        for pair in query.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let n = v.parse::<u64>().ok();
            match k {
                "status" => s.status = n.map(|n| n as u16),
                "retry_after" => s.retry_after = n,
                "delay_ms" => s.delay_ms = n.unwrap_or(0),
                "slow_from_tokens" => s.slow_from_tokens = n,
                "chunk_delay_ms" => s.chunk_delay_ms = n.unwrap_or(0),
                "drop_after" => s.drop_after = n.map(|n| n as usize),
                "words" => s.words = n.map_or(8, |n| n as usize),
                "echo" => s.echo = true,
                "bad_json" => s.bad_json = true,
                "no_done" => s.no_done = true,
                "no_usage" => s.no_usage = true,
                "sse_type" => s.sse_type = Some(v.replace("%20", " ")),
                "endless_event" => s.endless_event = n.map(|n| n as usize),
                "content_type" => s.content_type = Some(v.to_owned()),
                "cached" => s.cached = n.unwrap_or(0),
                "reasoning" => s.reasoning = n.unwrap_or(0),
                "error" => s.error = Some(v.to_owned()),
                "fail_from_tokens" => s.fail_from_tokens = n,
                "error_pad" => s.error_pad = n.unwrap_or(0) as usize,
                "error_piece" => s.error_piece = n.unwrap_or(0) as usize,
                "say" => s.say = Some(v.replace('+', " ")),
                "usage" => {
                    if let Some((path, json)) = v.split_once(':') {
                        if let Ok(value) = serde_json::from_str(json) {
                            s.usage.push((path.to_owned(), value));
                        }
                    }
                }
                _ => {}
            }
        }
        s
    }

    /// A usage report as the script wants it: each `usage` path set, objects on the way
    /// made as needed.
    fn patch_usage(&self, mut u: Value) -> Value {
        for (path, value) in &self.usage {
            let mut at = &mut u;
            let mut keys = path.split('.').peekable();
            while let Some(k) = keys.next() {
                if !at.is_object() {
                    *at = json!({});
                }
                if keys.peek().is_none() {
                    at[k] = value.clone();
                } else {
                    at = &mut at[k];
                }
            }
        }
        u
    }
}

#[derive(Default)]
struct Mock {
    api_key: Option<String>,
    record: bool,
    seen: Mutex<VecDeque<Value>>,
    requests: AtomicU64,
    connections: AtomicU64,
    cancelled_streams: Arc<AtomicU64>,
    ids: AtomicU64,
    /// OTLP bytes received on /v1/traces.
    spans_bytes: AtomicU64,
    /// Vertex AI, when the mock has a Google public key.
    google: Option<google::Google>,
    /// An OpenID provider's key set, when the mock has a JWKS file.
    idp: Option<idp::Idp>,
    /// Anthropic's and Bedrock's prompt cache.
    prompt_cache: prompt_cache::PromptCache,
    /// OpenAI's Files and Batches.
    files: files::Files,
    /// Realtime sessions the client ended with a close frame.
    realtime_closed: Arc<AtomicU64>,
    /// The guardrail services' fakes (the webhook's token and what it was sent).
    guards: guards::Guards,
}

const WORDS: [&str; 8] = ["Hello", "from", "the", "aigw", "mock", "upstream", "model", "today."];
const RECORD_MAX: usize = 256;
const RECORD_BODY_MAX: usize = 64 * 1024;

/// Runs the mock until the process ends.
pub async fn run(
    listen: SocketAddr,
    api_key: Option<String>,
    record: bool,
    google_public_key: Option<Vec<u8>>,
    jwks_file: Option<std::path::PathBuf>,
    guard_token: Option<String>,
) -> std::io::Result<()> {
    let google = google_public_key
        .map(|pem| google::Google::new(&pem))
        .transpose()
        .map_err(std::io::Error::other)?;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    eprintln!("aigw mock-upstream listening on http://{}", listener.local_addr()?);
    let mock = Arc::new(Mock {
        api_key,
        record,
        google,
        idp: jwks_file.map(idp::Idp::new),
        guards: guards::Guards::new(guard_token),
        ..Mock::default()
    });
    loop {
        let (sock, _) = listener.accept().await?;
        mock.connections.fetch_add(1, Ordering::Relaxed);
        let _ = sock.set_nodelay(true);
        let mock = mock.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let mock = mock.clone();
                async move { Ok::<_, Infallible>(mock.handle(req).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(sock), svc)
                .await;
        });
    }
}

fn full(status: StatusCode, v: &Value) -> Response<Body> {
    bytes_response(status, "application/json", Bytes::from(v.to_string()))
}

fn bytes_response(status: StatusCode, content_type: &str, body: Bytes) -> Response<Body> {
    let mut r = Response::new(Full::new(body).map_err(|never| match never {}).boxed_unsync());
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    r
}

/// Which provider API a request came in as; decides the error envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    OpenAi,
    Anthropic,
    Gemini,
    Bedrock,
}

fn error(status: u16, message: &str, retry_after: Option<u64>) -> Response<Body> {
    error_in(Api::OpenAi, status, message, retry_after)
}

/// An error in the envelope of `api`.
fn error_in(api: Api, status: u16, message: &str, retry_after: Option<u64>) -> Response<Body> {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = match api {
        Api::Anthropic => json!({"type": "error", "error": {"type": "mock_error", "message": message}}),
        Api::OpenAi => {
            json!({"error": {"message": message, "type": "mock_error", "code": "mock_error", "param": null}})
        }
        Api::Gemini => json!({"error": {"code": status, "message": message, "status": "MOCK_ERROR"}}),
        Api::Bedrock => json!({"message": message}),
    };
    let mut r = full(code, &body);
    if api == Api::Bedrock {
        let kind = match status {
            400 => "ValidationException",
            403 => "AccessDeniedException",
            404 => "ResourceNotFoundException",
            429 => "ThrottlingException",
            503 => "ServiceUnavailableException",
            _ => "InternalServerException",
        };
        r.headers_mut()
            .insert("x-amzn-errortype", http::HeaderValue::from_static(kind));
    }
    if let Some(s) = retry_after.and_then(|s| s.to_string().parse().ok()) {
        r.headers_mut().insert(http::header::RETRY_AFTER, s);
    }
    r
}

/// An error for a class of failure, in the body each API really sends for it: a prompt
/// over the context window (`context_length`), a refusal on content policy
/// (`content_filter`: Azure OpenAI's and Anthropic's; Gemini and Bedrock refuse with
/// 200 answers, so theirs is a plain 400), or one request over the account's limits
/// (`request_too_large`). The script's `error_pad` lengthens the message, `error_piece`
/// paces the body.
fn class_error(api: Api, kind: &str, script: &Script) -> Response<Body> {
    let pad = script.error_pad;
    let status = match (api, kind) {
        (Api::OpenAi, "request_too_large") => StatusCode::TOO_MANY_REQUESTS,
        (Api::Anthropic | Api::Bedrock, "request_too_large") => StatusCode::PAYLOAD_TOO_LARGE,
        _ => StatusCode::BAD_REQUEST,
    };
    let mut body = match (api, kind) {
        (Api::OpenAi, "request_too_large") => {
            json!({"error": {"message": "Request too large for gpt-4o in organization org-mock on tokens per min (TPM): Limit 30000, Requested 36278. The input or output tokens must be reduced in order to run successfully.",
            "type": "tokens", "param": null, "code": "rate_limit_exceeded"}})
        }
        (Api::Anthropic, "request_too_large") => json!({"type": "error", "error": {"type": "request_too_large",
            "message": "Request exceeds the maximum allowed number of bytes."}}),
        (Api::Gemini, "request_too_large") => json!({"error": {"code": 400, "status": "INVALID_ARGUMENT",
            "message": "Request payload size exceeds the limit: 20971520 bytes."}}),
        (Api::OpenAi, "context_length") => {
            json!({"error": {"message": "This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens.",
            "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}})
        }
        (Api::OpenAi, "content_filter") => {
            json!({"error": {"message": "The response was filtered due to the prompt triggering Azure OpenAI's content management policy.",
            "type": null, "param": "prompt", "code": "content_filter", "status": 400,
            "innererror": {"code": "ResponsibleAIPolicyViolation"}}})
        }
        (Api::Anthropic, "context_length") => json!({"type": "error", "error": {"type": "invalid_request_error",
            "message": "prompt is too long: 210000 tokens > 200000 maximum"}}),
        (Api::Anthropic, "content_filter") => json!({"type": "error", "error": {"type": "invalid_request_error",
            "message": "Output blocked by content filtering policy"}}),
        (Api::Gemini, "context_length") => json!({"error": {"code": 400, "status": "INVALID_ARGUMENT",
            "message": "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576)."}}),
        (Api::Bedrock, "context_length") => json!({"message": "Input is too long for requested model."}),
        _ => json!({"error": {"message": format!("mock error {kind}"), "type": "invalid_request_error"}}),
    };
    if pad > 0 {
        let message = if body["error"]["message"].is_string() {
            &mut body["error"]["message"]
        } else {
            &mut body["message"]
        };
        let padded = format!("{} Flagged: {}", message.as_str().unwrap_or_default(), "x".repeat(pad));
        *message = json!(padded);
    }
    let mut r = if script.error_piece > 0 {
        in_pieces(status, Bytes::from(body.to_string()), script)
    } else {
        full(status, &body)
    };
    if api == Api::Bedrock {
        r.headers_mut().insert(
            "x-amzn-errortype",
            http::HeaderValue::from_static("ValidationException"),
        );
    }
    r
}

/// A JSON answer written in `error_piece`-byte pieces, `chunk_delay_ms` apart.
fn in_pieces(status: StatusCode, body: Bytes, script: &Script) -> Response<Body> {
    let delay = Duration::from_millis(script.chunk_delay_ms);
    let pieces: Vec<Bytes> = (0..body.len())
        .step_by(script.error_piece.max(1))
        .map(|at| body.slice(at..(at + script.error_piece).min(body.len())))
        .collect();
    let s = stream::iter(pieces).then(move |piece| async move {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        Ok::<_, std::io::Error>(Frame::data(piece))
    });
    let mut r = Response::new(BodyExt::boxed_unsync(StreamBody::new(s)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// Rough token count: a token per four bytes of text, at least one.
fn tokens_of(text_len: usize) -> u64 {
    (text_len as u64).div_ceil(4).max(1)
}

fn text_len(v: &Value) -> usize {
    match v {
        Value::String(s) => s.len(),
        Value::Array(a) => a.iter().map(text_len).sum(),
        Value::Object(o) => o.values().map(text_len).sum(),
        _ => 0,
    }
}

/// The text of a Converse request's last user turn.
fn last_converse_text(req: &Value) -> String {
    req["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_array())
        .map(|blocks| {
            blocks
                .iter()
                .filter_map(|b| b["text"].as_str())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// The text of a Gemini request's last user turn.
fn last_gemini_text(req: &Value) -> String {
    req["contents"]
        .as_array()
        .and_then(|c| c.iter().rev().find(|c| c["role"] == "user"))
        .and_then(|c| c["parts"].as_array())
        .map(|parts| {
            parts
                .iter()
                .filter_map(|p| p["text"].as_str())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

fn last_user_text(req: &Value) -> String {
    let msgs = req["messages"].as_array();
    let last = msgs.and_then(|m| m.iter().rev().find(|m| m["role"] == "user"));
    match last.map(|m| &m["content"]) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

fn filler(words: usize) -> String {
    (0..words).map(|i| WORDS[i % WORDS.len()]).collect::<Vec<_>>().join(" ")
}

/// What the mock answers: filler text, an echo, a tool call when tools are offered, or
/// the tool's result once one comes back.
enum Reply {
    Text(String),
    Tool { name: String, args: String },
}

impl Reply {
    fn for_request(req: &Value, script: &Script, anthropic: bool) -> Self {
        let msgs = req["messages"].as_array().map(Vec::as_slice).unwrap_or_default();
        let last = msgs.last();
        let tool_result = if anthropic {
            last.and_then(|m| m["content"].as_array())
                .and_then(|blocks| blocks.iter().find(|b| b["type"] == "tool_result"))
                .map(|b| match &b["content"] {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
        } else {
            last.filter(|m| m["role"] == "tool")
                .map(|m| m["content"].as_str().unwrap_or_default().to_owned())
        };
        if let Some(result) = tool_result {
            return Reply::Text(format!("The tool said: {result}"));
        }
        let tool_name = req["tools"][0]["function"]["name"]
            .as_str()
            .or(req["tools"][0]["name"].as_str());
        if let Some(name) = tool_name {
            let args = json!({"query": last_user_text(req)}).to_string();
            return Reply::Tool {
                name: name.to_owned(),
                args,
            };
        }
        Reply::Text(if script.echo {
            last_user_text(req)
        } else {
            filler(script.words)
        })
    }

    /// The same choice for a Gemini `generateContent` request.
    fn for_gemini(req: &Value, script: &Script) -> Self {
        let contents = req["contents"].as_array().map(Vec::as_slice).unwrap_or_default();
        let last_parts = contents
            .last()
            .and_then(|c| c["parts"].as_array())
            .map(Vec::as_slice)
            .unwrap_or_default();
        if let Some(r) = last_parts.iter().find_map(|p| p.get("functionResponse")) {
            // A plain-text result arrives wrapped as {"content": text}.
            let said = match r["response"]["content"].as_str() {
                Some(text) => text.to_owned(),
                None => r["response"].to_string(),
            };
            return Reply::Text(format!("The tool said: {said}"));
        }
        let user_text = last_gemini_text(req);
        if let Some(name) = req["tools"][0]["functionDeclarations"][0]["name"].as_str() {
            return Reply::Tool {
                name: name.to_owned(),
                args: json!({"query": user_text}).to_string(),
            };
        }
        Reply::Text(if script.echo { user_text } else { filler(script.words) })
    }

    /// The same choice for a Bedrock Converse request.
    fn for_converse(req: &Value, script: &Script) -> Self {
        let msgs = req["messages"].as_array().map(Vec::as_slice).unwrap_or_default();
        fn blocks(m: Option<&Value>) -> &[Value] {
            m.and_then(|m| m["content"].as_array())
                .map(Vec::as_slice)
                .unwrap_or_default()
        }
        if let Some(r) = blocks(msgs.last()).iter().find_map(|b| b.get("toolResult")) {
            let said: Vec<&str> = r["content"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .filter_map(|c| c["text"].as_str())
                .collect();
            return Reply::Text(format!("The tool said: {}", said.join(" ")));
        }
        let user_text = blocks(msgs.iter().rev().find(|m| m["role"] == "user"))
            .iter()
            .filter_map(|b| b["text"].as_str())
            .collect::<Vec<_>>()
            .join(" ");
        if let Some(name) = req["toolConfig"]["tools"][0]["toolSpec"]["name"].as_str() {
            return Reply::Tool {
                name: name.to_owned(),
                args: json!({"query": user_text}).to_string(),
            };
        }
        Reply::Text(if script.echo { user_text } else { filler(script.words) })
    }

    /// A judge model's verdict in place of the reply (see `guards::is_judge`).
    fn judged(self, model: &str, last_user: impl FnOnce() -> String) -> Self {
        if guards::is_judge(model) {
            Reply::Text(guards::judge_verdict(&last_user()).to_owned())
        } else {
            self
        }
    }

    fn tokens(&self) -> u64 {
        match self {
            Reply::Text(t) => t.split_inclusive(' ').count().max(1) as u64,
            Reply::Tool { args, .. } => tokens_of(args.len()),
        }
    }
}

/// A JSON body cut off half-way by a dropped connection.
fn truncated(v: &Value) -> Response<Body> {
    // Cut in bytes: a cut inside a character of non-ASCII text is what a dropped
    // connection delivers too (slicing the str there would panic).
    let text = v.to_string().into_bytes();
    let half = Bytes::copy_from_slice(&text[..text.len() / 2]);
    let s = stream::iter([Ok(Frame::data(half)), Err(std::io::Error::other("mock drop"))]);
    let mut r = Response::new(BodyExt::boxed_unsync(StreamBody::new(s)));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// Headers real providers put on every answer that name the account behind the key
/// (OpenAI's organization and project, Anthropic's organization) or set state (a load
/// balancer cookie); a gateway must keep them from its callers.
pub const ACCOUNT_HEADERS: [(&str, &str); 5] = [
    ("openai-organization", "org-mock-account"),
    ("openai-project", "proj_mock_account"),
    ("anthropic-organization-id", "mock-org-uuid"),
    ("set-cookie", "__cf_bm=mock-session; path=/; HttpOnly"),
    ("x-ratelimit-remaining-requests", "4999"),
];

impl Mock {
    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        if realtime::is_realtime(&req) {
            self.requests.fetch_add(1, Ordering::Relaxed);
            let (parts, body) = req.into_parts();
            if self.record {
                self.remember(&parts, &Bytes::new());
            }
            let presented = |h: &str| parts.headers.get(h).and_then(|v| v.to_str().ok());
            let authorized = self.api_key.as_deref().is_none_or(|key| {
                presented("authorization").and_then(|v| v.strip_prefix("Bearer ")) == Some(key)
                    || presented("api-key") == Some(key)
            });
            let req = Request::from_parts(parts, body);
            return realtime::answer(req, authorized, self.realtime_closed.clone());
        }
        let mut r = self.answer(req).await;
        for (name, value) in ACCOUNT_HEADERS {
            r.headers_mut().insert(name, http::HeaderValue::from_static(value));
        }
        r
    }

    async fn answer(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let (parts, body) = req.into_parts();
        let path = parts.uri.path().to_owned();
        let body = match body.collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return error(400, "could not read body", None),
        };
        match (parts.method.as_str(), path.as_str()) {
            ("GET", "/health") => return bytes_response(StatusCode::OK, "text/plain", Bytes::from_static(b"ok")),
            // A sink for OTLP/HTTP spans, so `make run` and the load test can turn traces on
            // without a collector. Answers an empty ExportTraceServiceResponse.
            ("POST", "/v1/traces") => {
                self.spans_bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
                return bytes_response(StatusCode::OK, "application/x-protobuf", Bytes::new());
            }
            ("GET", "/_mock/requests") => {
                let seen: Vec<Value> = self
                    .seen
                    .lock()
                    .map(|s| s.iter().cloned().collect())
                    .unwrap_or_default();
                return full(StatusCode::OK, &Value::Array(seen));
            }
            ("GET", "/_mock/stats") => {
                return full(
                    StatusCode::OK,
                    &json!({
                        "requests": self.requests.load(Ordering::Relaxed),
                        "connections": self.connections.load(Ordering::Relaxed),
                        "cancelled_streams": self.cancelled_streams.load(Ordering::Relaxed),
                        "span_bytes": self.spans_bytes.load(Ordering::Relaxed),
                        "tokens_issued": self.google.as_ref().map_or(0, |g| g.issued()),
                        "jwks_fetches": self.idp.as_ref().map_or(0, |i| i.fetches()),
                        "realtime_closed": self.realtime_closed.load(Ordering::Relaxed),
                    }),
                )
            }
            ("GET", "/guard/requests") => return self.guards.requests(),
            ("GET", p) if p.starts_with("/idp/") => {
                if let Some(r) = self.idp.as_ref().and_then(|i| i.answer(p, &parts.headers)) {
                    return r;
                }
            }
            ("POST", "/token") if self.google.is_some() => {
                if let Some(g) = &self.google {
                    return g.token(parts.uri.query(), &body);
                }
            }
            _ => {}
        }
        if self.record {
            self.remember(&parts, &body);
        }
        // The guardrail services: Presidio, Bedrock's ApplyGuardrail, the webhook (`guards`).
        if let Some(r) = self.guards.answer(&parts, &body, self.api_key.as_deref()).await {
            return r;
        }
        if parts.method == http::Method::POST && path == "/mcp" {
            return mcp::answer(parts.uri.query(), &body);
        }
        // Vertex AI: the caller's access token instead of an API key; Claude models in
        // Anthropic's Messages, with the version in the body and the model in the path.
        // Bedrock: `/model/{id}/converse[-stream]`, signed with SigV4 (the mock's key is
        // the secret access key).
        let bedrock =
            path.starts_with("/model/") && (path.ends_with("/converse") || path.ends_with("/converse-stream"));
        if bedrock {
            let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            if let Err(why) = bedrock::verify(&parts.headers, pq, &body, self.api_key.as_deref().unwrap_or("")) {
                return error_in(Api::Bedrock, 403, &why, None);
            }
            return self.converse(&path, &body).await;
        }
        let vertex = path.contains("/publishers/");
        if vertex {
            let Some(g) = &self.google else {
                return error_in(Api::Gemini, 404, "Vertex AI is not served by this mock", None);
            };
            if let Some(r) = g.refusal(&parts.headers) {
                return r;
            }
        }
        // Anthropic's and Gemini's APIs answer in their own error envelopes and take the
        // key in their own headers.
        let gemini = path
            .rsplit_once(':')
            .map(|(prefix, method)| (prefix, method.to_owned()));
        let api = if path.ends_with("/messages") {
            Api::Anthropic
        } else if gemini.is_some() {
            Api::Gemini
        } else {
            Api::OpenAi
        };
        if let (Some(key), false) = (&self.api_key, vertex) {
            let bearer = parts
                .headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            let header = |h: &str| parts.headers.get(h).and_then(|v| v.to_str().ok());
            let ok = match api {
                Api::Anthropic => header("x-api-key") == Some(key.as_str()),
                Api::Gemini => header("x-goog-api-key") == Some(key.as_str()),
                Api::OpenAi => bearer == Some(key.as_str()) || header("api-key") == Some(key.as_str()),
                // Checked by its signature, above.
                Api::Bedrock => true,
            };
            if !ok {
                // As OpenAI does: the message quotes a fragment of the key presented.
                let shown = bearer.or(header("api-key")).or(header("x-api-key")).unwrap_or("");
                let fragment = if shown.len() > 12 {
                    format!("{}****{}", &shown[..8], &shown[shown.len() - 4..])
                } else {
                    String::new()
                };
                let message = format!("Incorrect API key provided: {fragment}.");
                return error_in(api, 401, &message, None);
            }
        }
        if api == Api::Anthropic && !parts.headers.contains_key("anthropic-version") {
            return error_in(api, 400, "anthropic-version header is required", None);
        }
        if api == Api::OpenAi {
            if let Some(r) = self.files.answer(&parts.method, &path, &parts.headers, &body).await {
                return r;
            }
        }
        if parts.method == http::Method::GET && path.ends_with("/models") {
            return full(
                StatusCode::OK,
                &json!({"object": "list", "data": [{"id": "mock-model", "object": "model", "created": 0, "owned_by": "mock"}]}),
            );
        }
        if parts.method != http::Method::POST {
            return error(404, "unknown route", None);
        }
        let uploads = ["/audio/transcriptions", "/audio/translations", "/images/edits"];
        if let Some(kind) = uploads.iter().find(|u| path.ends_with(*u)) {
            let ct = parts
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok());
            let form = match surface::read_form(ct, body).await {
                Ok(f) => f,
                Err(why) => return error(400, &format!("Could not parse multipart form: {why}"), None),
            };
            let model = match path.split_once("/deployments/") {
                Some((_, rest)) => rest.split('/').next().unwrap_or("").to_owned(),
                None => form.text("model").unwrap_or_default().to_owned(),
            };
            let script = Script::parse(&model);
            if let Some(status) = script.status {
                return error(
                    status,
                    &format!("mock failure {status} for model {model}"),
                    script.retry_after,
                );
            }
            return match *kind {
                "/images/edits" => {
                    if !form.files.iter().any(|(n, _, _)| n == "image" || n == "image[]") {
                        return error(400, "'image' is required", None);
                    }
                    let n = form.text("n").and_then(|n| n.parse().ok()).unwrap_or(1);
                    self.images(form.text("prompt").unwrap_or_default(), n, &model)
                }
                k => self.transcribe(&form, &model, k == "/audio/translations"),
            };
        }
        let Ok(req) = serde_json::from_slice::<Value>(&body) else {
            return error_in(api, 400, "We could not parse the JSON body of your request.", None);
        };
        // Azure and Gemini name the model in the path; the body's is ignored there.
        let model = match (path.split_once("/deployments/"), &gemini) {
            (Some((_, rest)), _) => rest.split('/').next().unwrap_or("").to_owned(),
            (None, Some((prefix, _))) => prefix.rsplit_once("/models/").map_or("", |(_, m)| m).to_owned(),
            (None, None) => req["model"].as_str().unwrap_or("").to_owned(),
        };
        let model = percent_encoding::percent_decode_str(&model)
            .decode_utf8_lossy()
            .into_owned();
        let script = Script::parse(&model);
        let long = script
            .slow_from_tokens
            .is_none_or(|from| req["max_tokens"].as_u64().is_some_and(|t| t >= from));
        if script.delay_ms > 0 && long {
            tokio::time::sleep(Duration::from_millis(script.delay_ms)).await;
        }
        let failing = script
            .fail_from_tokens
            .is_none_or(|from| req["max_tokens"].as_u64().is_some_and(|t| t >= from));
        if let (Some(kind), true) = (&script.error, failing) {
            return class_error(api, kind, &script);
        }
        if let (Some(status), true) = (script.status, failing) {
            return error_in(
                api,
                status,
                &format!("mock failure {status} for model {model}"),
                script.retry_after,
            );
        }
        if let Some(ct) = &script.content_type {
            let ct = if ct == "html" { "text/html; charset=utf-8" } else { ct };
            return bytes_response(
                StatusCode::OK,
                ct,
                Bytes::from_static(b"<html><body>Sign in</body></html>"),
            );
        }
        if let Some((_, method)) = &gemini {
            match method.as_str() {
                "generateContent" => self.gemini(&req, &model, &script, false),
                "countTokens" => {
                    // Either form: `contents`, or a whole `generateContentRequest`.
                    let g = &req["generateContentRequest"];
                    let n = text_len(&req["contents"]) + text_len(&g["contents"]) + text_len(&g["systemInstruction"]);
                    full(StatusCode::OK, &json!({"totalTokens": tokens_of(n)}))
                }
                "embedContent" | "batchEmbedContents" if !vertex => {
                    self.embed_content(&req, &model, method == "batchEmbedContents")
                }
                "rawPredict" | "streamRawPredict" if vertex => {
                    if req["anthropic_version"] != crate::provider::vertex::ANTHROPIC_VERSION
                        || req.get("model").is_some()
                    {
                        return error_in(
                            Api::Anthropic,
                            400,
                            "anthropic_version: vertex-2023-10-16 is required in the body, and model is not allowed",
                            None,
                        );
                    }
                    if (method == "streamRawPredict") != (req["stream"] == true) {
                        return error_in(Api::Anthropic, 400, "streamRawPredict is for stream: true", None);
                    }
                    self.messages(&req, &model, &script)
                }
                "streamGenerateContent" if parts.uri.query() == Some("alt=sse") => {
                    self.gemini(&req, &model, &script, true)
                }
                _ => error_in(api, 404, "unknown method", None),
            }
        } else if api == Api::Anthropic {
            self.messages(&req, &model, &script)
        } else if path.ends_with("/chat/completions") {
            self.chat(&req, &model, &script)
        } else if path.ends_with("/embeddings") {
            self.embeddings(&req, &model)
        } else if path.ends_with("/completions") {
            self.completions(&req, &model, &script)
        } else if path.ends_with("/moderations") {
            self.moderations(&req, &model)
        } else if path.ends_with("/images/generations") {
            let n = req["n"].as_u64().unwrap_or(1);
            self.images(req["prompt"].as_str().unwrap_or_default(), n, &model)
        } else if path.ends_with("/audio/speech") {
            self.speech(&req, &script)
        } else if path.ends_with("/responses") {
            self.responses(&req, &model, &script)
        } else {
            error(404, "unknown route", None)
        }
    }

    fn remember(&self, parts: &http::request::Parts, body: &Bytes) {
        let headers: serde_json::Map<String, Value> = parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()),
                )
            })
            .collect();
        let text = (body.len() <= RECORD_BODY_MAX).then(|| String::from_utf8_lossy(body).into_owned());
        let entry = json!({
            "method": parts.method.as_str(),
            "version": format!("{:?}", parts.version),
            "path": parts.uri.path_and_query().map_or("", |p| p.as_str()),
            "headers": headers,
            "body": text,
            "body_len": body.len(),
            "body_blake3": blake3::hash(body).to_hex().to_string(),
        });
        if let Ok(mut seen) = self.seen.lock() {
            if seen.len() == RECORD_MAX {
                seen.pop_front();
            }
            seen.push_back(entry);
        }
    }

    fn chat(&self, req: &Value, model: &str, script: &Script) -> Response<Body> {
        let id = format!("chatcmpl-mock-{}", self.ids.fetch_add(1, Ordering::Relaxed));
        let reply = Reply::for_request(req, script, false).judged(model, || last_user_text(req));
        let prompt = tokens_of(text_len(&req["messages"]));
        let completion = reply.tokens() + script.reasoning;
        let usage = script.patch_usage(
            json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": script.cached.min(prompt)},
            "completion_tokens_details": {"reasoning_tokens": script.reasoning}}),
        );
        if script.bad_json {
            return bytes_response(
                StatusCode::OK,
                "application/json",
                Bytes::from_static(b"{\"id\":\"chatcmpl-broken\",\"choi"),
            );
        }
        let (finish, mut message) = match &reply {
            Reply::Text(t) => ("stop", json!({"role": "assistant", "content": t})),
            Reply::Tool { name, args } => (
                "tool_calls",
                json!({"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_mock_1", "type": "function", "function": {"name": name, "arguments": args}}
                ]}),
            ),
        };
        // Reasoning text, as OpenAI-compatible reasoning servers (vLLM, DeepSeek) send it.
        let reasoning = (script.reasoning > 0).then(|| format!("Reasoned in {} tokens.", script.reasoning));
        if let Some(r) = &reasoning {
            message["reasoning_content"] = json!(r);
        }
        if req["stream"] != Value::Bool(true) {
            let mut v = json!({
                "id": id, "object": "chat.completion", "created": 1_700_000_000, "model": model,
                "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
                "usage": usage, "system_fingerprint": null,
            });
            if script.no_usage {
                v.as_object_mut().map(|o| o.remove("usage"));
            }
            if script.drop_after.is_some() {
                return truncated(&v);
            }
            return full(StatusCode::OK, &v);
        }
        if let Some(total) = script.endless_event {
            let piece = Bytes::from(vec![b'a'; 64 * 1024]);
            let mut events = vec![Bytes::from_static(
                b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"",
            )];
            events.extend(std::iter::repeat_n(piece, total.div_ceil(64 * 1024)));
            return self.stream_events(events, script, "text/event-stream");
        }
        let include_usage = req["stream_options"]["include_usage"] == Value::Bool(true);
        let chunk = |delta: Value, finish: Value| {
            let mut c = json!({
                "id": id, "object": "chat.completion.chunk", "created": 1_700_000_000, "model": model,
                "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
            });
            if include_usage {
                c["usage"] = Value::Null;
            }
            Bytes::from(format!("data: {c}\n\n"))
        };
        let mut events = vec![chunk(json!({"role": "assistant", "content": ""}), Value::Null)];
        if let Some(r) = &reasoning {
            let (a, b) = r.split_at(r.len() / 2);
            events.extend([a, b].map(|p| chunk(json!({"reasoning_content": p}), Value::Null)));
        }
        match &reply {
            Reply::Text(t) => events.extend(
                t.split_inclusive(' ')
                    .map(|p| chunk(json!({"content": p}), Value::Null)),
            ),
            Reply::Tool { name, args } => {
                let (a, b) = args.split_at(args.len() / 2);
                let call = |v: Value| chunk(json!({"tool_calls": [v]}), Value::Null);
                events.push(call(json!({"index": 0, "id": "call_mock_1", "type": "function", "function": {"name": name, "arguments": ""}})));
                events.push(call(json!({"index": 0, "function": {"arguments": a}})));
                events.push(call(json!({"index": 0, "function": {"arguments": b}})));
            }
        }
        events.push(chunk(json!({}), json!(finish)));
        if include_usage {
            let u = json!({"id": id, "object": "chat.completion.chunk", "created": 1_700_000_000, "model": model, "choices": [], "usage": usage});
            events.push(Bytes::from(format!("data: {u}\n\n")));
        }
        events.push(Bytes::from_static(b"data: [DONE]\n\n"));
        self.stream_events(events, script, "text/event-stream")
    }

    /// OpenAI Responses API, JSON and SSE (`response.*` events), text replies.
    fn responses(&self, req: &Value, model: &str, script: &Script) -> Response<Body> {
        let n = self.ids.fetch_add(1, Ordering::Relaxed);
        let (id, item_id) = (format!("resp_mock_{n}"), format!("msg_mock_{n}"));
        let input = match &req["input"] {
            Value::String(s) => s.clone(),
            items => items
                .as_array()
                .and_then(|a| a.iter().rev().find(|i| i["role"] == "user"))
                .map(|i| match &i["content"] {
                    Value::String(s) => s.clone(),
                    parts => parts
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|p| p["text"].as_str())
                        .collect::<Vec<_>>()
                        .join(" "),
                })
                .unwrap_or_default(),
        };
        let text = if script.echo {
            input.clone()
        } else {
            (0..script.words)
                .map(|i| WORDS[i % WORDS.len()])
                .collect::<Vec<_>>()
                .join(" ")
        };
        let (input_tokens, output_tokens) = (tokens_of(input.len()), text.split_inclusive(' ').count().max(1) as u64);
        let usage = script.patch_usage(json!({"input_tokens": input_tokens, "output_tokens": output_tokens,
            "total_tokens": input_tokens + output_tokens,
            "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}}));
        let part = |t: &str| json!({"type": "output_text", "text": t, "annotations": []});
        let item = |status: &str, content: Value| {
            json!({"id": item_id, "type": "message", "status": status,
            "role": "assistant", "content": content})
        };
        let response = |status: &str, output: Value, usage: Value| {
            json!({"id": id, "object": "response",
            "created_at": 1_700_000_000, "status": status, "model": model, "output": output, "usage": usage})
        };
        if req["stream"] != Value::Bool(true) {
            return full(
                StatusCode::OK,
                &response("completed", json!([item("completed", json!([part(&text)]))]), usage),
            );
        }
        let mut seq = 0u64;
        let mut ev = |v: Value| {
            let mut v = v;
            v["sequence_number"] = json!(seq);
            seq += 1;
            Bytes::from(format!(
                "event: {}
data: {v}

",
                v["type"].as_str().unwrap_or("")
            ))
        };
        let at = |v: Value| {
            let mut v = v;
            v["item_id"] = json!(item_id);
            v["output_index"] = json!(0);
            v["content_index"] = json!(0);
            v
        };
        let mut events = vec![
            ev(json!({"type": "response.created", "response": response("in_progress", json!([]), Value::Null)})),
            ev(
                json!({"type": "response.output_item.added", "output_index": 0, "item": item("in_progress", json!([]))}),
            ),
            ev(at(json!({"type": "response.content_part.added", "part": part("")}))),
        ];
        for piece in text.split_inclusive(' ') {
            events.push(ev(at(json!({"type": "response.output_text.delta", "delta": piece}))));
        }
        events.push(ev(at(json!({"type": "response.output_text.done", "text": text}))));
        events.push(ev(at(
            json!({"type": "response.content_part.done", "part": part(&text)}),
        )));
        events.push(ev(json!({"type": "response.output_item.done", "output_index": 0,
            "item": item("completed", json!([part(&text)]))})));
        events.push(ev(json!({"type": "response.completed",
            "response": response("completed", json!([item("completed", json!([part(&text)]))]), usage)})));
        self.stream_events(events, script, "text/event-stream")
    }

    /// Anthropic Messages, JSON and SSE.
    fn messages(&self, req: &Value, model: &str, script: &Script) -> Response<Body> {
        let id = format!("msg_mock_{}", self.ids.fetch_add(1, Ordering::Relaxed));
        let thought = match thinking::budget(&req["thinking"], req["max_tokens"].as_u64())
            .and_then(|b| thinking::check_messages(req, b.is_some()).map(|()| b))
        {
            Ok(b) => b.map(|_| thinking::thought(&last_user_text(req))),
            Err(e) => return error_in(Api::Anthropic, 400, &e, None),
        };
        let reply = Reply::for_request(req, script, true).judged(model, || last_user_text(req));
        let input = tokens_of(text_len(&req["messages"]) + text_len(&req["system"]) + text_len(&req["tools"]));
        let output = reply.tokens() + thought.as_ref().map_or(0, |t| tokens_of(t.len()));
        // The answer's block follows the thinking block when there is one.
        let at = u64::from(thought.is_some());
        let hit = self.prompt_cache.anthropic(req, input);
        // Anthropic's input_tokens leaves out what the cache read or wrote.
        let usage = |output: u64| {
            script.patch_usage(
                json!({"input_tokens": input - hit.read - hit.write, "cache_read_input_tokens": hit.read,
                "cache_creation_input_tokens": hit.write, "output_tokens": output}),
            )
        };
        if script.bad_json {
            return bytes_response(
                StatusCode::OK,
                "application/json",
                Bytes::from_static(b"{\"id\":\"msg_broken\",\"cont"),
            );
        }
        let (stop, block) = match &reply {
            Reply::Text(t) => ("end_turn", json!({"type": "text", "text": t})),
            Reply::Tool { name, args } => (
                "tool_use",
                json!({"type": "tool_use", "id": "toolu_mock_1", "name": name, "input": serde_json::from_str::<Value>(args).unwrap_or_default()}),
            ),
        };
        if req["stream"] != Value::Bool(true) {
            let mut content = Vec::new();
            if let Some(t) = &thought {
                content.push(json!({"type": "thinking", "thinking": t, "signature": thinking::sign(t)}));
            }
            content.push(block);
            let mut v = json!({
                "id": id, "type": "message", "role": "assistant", "model": model, "content": content,
                "stop_reason": stop, "stop_sequence": null,
                "usage": usage(output),
            });
            if script.no_usage {
                v.as_object_mut().map(|o| o.remove("usage"));
            }
            if script.drop_after.is_some() {
                return truncated(&v);
            }
            return full(StatusCode::OK, &v);
        }
        let ev = |v: Value| Bytes::from(format!("event: {}\ndata: {v}\n\n", v["type"].as_str().unwrap_or("")));
        let mut events = vec![ev(json!({"type": "message_start", "message": {
            "id": id, "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": null, "stop_sequence": null, "usage": usage(1),
        }}))];
        if let Some(t) = &thought {
            events.push(ev(
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": "", "signature": ""}}),
            ));
            let (a, b) = t.split_at(t.len() / 2);
            for part in [a, b] {
                events.push(ev(
                    json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": part}}),
                ));
            }
            events.push(ev(
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": thinking::sign(t)}}),
            ));
            events.push(ev(json!({"type": "content_block_stop", "index": 0})));
        }
        match &reply {
            Reply::Text(t) => {
                events.push(ev(
                    json!({"type": "content_block_start", "index": at, "content_block": {"type": "text", "text": ""}}),
                ));
                events.push(ev(json!({"type": "ping"})));
                events.extend(t.split_inclusive(' ').map(|p| {
                    ev(json!({"type": "content_block_delta", "index": at, "delta": {"type": "text_delta", "text": p}}))
                }));
            }
            Reply::Tool { name, args } => {
                events.push(ev(json!({"type": "content_block_start", "index": at, "content_block": {"type": "tool_use", "id": "toolu_mock_1", "name": name, "input": {}}})));
                let (a, b) = args.split_at(args.len() / 2);
                for part in [a, b] {
                    events.push(ev(json!({"type": "content_block_delta", "index": at, "delta": {"type": "input_json_delta", "partial_json": part}})));
                }
            }
        }
        events.push(ev(json!({"type": "content_block_stop", "index": at})));
        events.push(ev(json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": script.patch_usage(json!({"output_tokens": output}))})));
        events.push(ev(json!({"type": "message_stop"})));
        self.stream_events(events, script, "text/event-stream")
    }

    /// Gemini `generateContent`, and `streamGenerateContent?alt=sse` (CRLF-framed events,
    /// the last with `finishReason`; no end marker). With `includeThoughts`, a `thought`
    /// part comes first, as thinking models send their summaries.
    fn gemini(&self, req: &Value, model: &str, script: &Script, stream: bool) -> Response<Body> {
        let id = format!("mock-{}", self.ids.fetch_add(1, Ordering::Relaxed));
        let reply = Reply::for_gemini(req, script).judged(model, || last_gemini_text(req));
        let prompt = tokens_of(text_len(&req["contents"]) + text_len(&req["systemInstruction"]));
        let output = reply.tokens();
        let usage = |out: u64| {
            script.patch_usage(
                json!({"promptTokenCount": prompt, "candidatesTokenCount": out, "thoughtsTokenCount": 2,
                "cachedContentTokenCount": script.cached.min(prompt), "totalTokenCount": prompt + out + 2}),
            )
        };
        if script.bad_json {
            return bytes_response(
                StatusCode::OK,
                "application/json",
                Bytes::from_static(b"{\"candidates\":[{\"cont"),
            );
        }
        let thoughts = req["generationConfig"]["thinkingConfig"]["includeThoughts"] == Value::Bool(true);
        let thought = json!({"text": "Thinking it over.", "thought": true});
        let answer = match &reply {
            Reply::Text(t) => json!({"text": t}),
            Reply::Tool { name, args } => json!({"functionCall": {"name": name,
                "args": serde_json::from_str::<Value>(args).unwrap_or_default()}, "thoughtSignature": "c2lnLW1vY2s="}),
        };
        let response = |parts: Value, finish: Option<&str>, out: u64| {
            let mut cand = json!({"content": {"role": "model", "parts": parts}, "index": 0});
            if let Some(f) = finish {
                cand["finishReason"] = json!(f);
            }
            json!({"candidates": [cand], "usageMetadata": usage(out), "modelVersion": model, "responseId": id})
        };
        if !stream {
            let parts = if thoughts {
                json!([thought, answer])
            } else {
                json!([answer])
            };
            let v = response(parts, Some("STOP"), output);
            if script.drop_after.is_some() {
                return truncated(&v);
            }
            return full(StatusCode::OK, &v);
        }
        let ev = |v: Value| Bytes::from(format!("data: {v}\r\n\r\n"));
        let mut events = Vec::new();
        if thoughts {
            events.push(ev(response(json!([thought]), None, 0)));
        }
        match &reply {
            Reply::Text(t) => {
                let mut words: Vec<&str> = t.split_inclusive(' ').collect();
                if words.is_empty() {
                    words.push("");
                }
                for (i, w) in words.iter().enumerate() {
                    let last = i + 1 == words.len();
                    events.push(ev(response(json!([{"text": w}]), last.then_some("STOP"), i as u64 + 1)));
                }
            }
            Reply::Tool { .. } => events.push(ev(response(json!([answer]), Some("STOP"), output))),
        }
        self.stream_events(events, script, "text/event-stream")
    }

    /// Bedrock Converse, JSON, and ConverseStream in AWS's event stream (the model id,
    /// percent-decoded from the path, carries the script as elsewhere).
    async fn converse(&self, path: &str, body: &Bytes) -> Response<Body> {
        let stream = path.ends_with("/converse-stream");
        let segment = path
            .strip_prefix("/model/")
            .and_then(|rest| rest.rsplit_once('/'))
            .map_or("", |(m, _)| m);
        let model = percent_encoding::percent_decode_str(segment)
            .decode_utf8_lossy()
            .into_owned();
        let Ok(req) = serde_json::from_slice::<Value>(body) else {
            return error_in(
                Api::Bedrock,
                400,
                "Malformed input request, please reformat your input and try again.",
                None,
            );
        };
        if req.get("model").is_some() || !req["messages"].is_array() {
            return error_in(
                Api::Bedrock,
                400,
                "Malformed input request: extraneous key [model] is not permitted",
                None,
            );
        }
        let script = Script::parse(&model);
        if script.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(script.delay_ms)).await;
        }
        if let Some(kind) = &script.error {
            return class_error(Api::Bedrock, kind, &script);
        }
        if let Some(status) = script.status {
            return error_in(
                Api::Bedrock,
                status,
                &format!("mock failure {status} for model {model}"),
                script.retry_after,
            );
        }
        // Claude's thinking, passed through Converse's additionalModelRequestFields.
        let thinking = &req["additionalModelRequestFields"]["thinking"];
        let thought = match thinking::budget(thinking, req["inferenceConfig"]["maxTokens"].as_u64())
            .and_then(|b| thinking::check_converse(&req, b.is_some()).map(|()| b))
        {
            Ok(b) => b.map(|_| thinking::thought(&last_converse_text(&req))),
            Err(e) => return error_in(Api::Bedrock, 400, &e, None),
        };
        let reply = Reply::for_converse(&req, &script).judged(&model, || last_converse_text(&req));
        let input = tokens_of(text_len(&req["messages"]) + text_len(&req["system"]) + text_len(&req["toolConfig"]));
        let output = reply.tokens() + thought.as_ref().map_or(0, |t| tokens_of(t.len()));
        let at = u64::from(thought.is_some());
        let hit = self.prompt_cache.converse(&req, input);
        // Like Anthropic's, Converse's inputTokens leaves out what the cache read or wrote.
        let usage = script.patch_usage(
            json!({"inputTokens": input - hit.read - hit.write, "outputTokens": output,
            "cacheReadInputTokens": hit.read, "cacheWriteInputTokens": hit.write, "totalTokens": input + output}),
        );
        let (block, stop) = match &reply {
            Reply::Text(t) => (json!({"text": t}), "end_turn"),
            Reply::Tool { name, args } => (
                json!({"toolUse": {"toolUseId": format!("tooluse_mock{}", self.ids.fetch_add(1, Ordering::Relaxed)),
                    "name": name, "input": serde_json::from_str::<Value>(args).unwrap_or_default()}}),
                "tool_use",
            ),
        };
        if !stream {
            if script.bad_json {
                return bytes_response(
                    StatusCode::OK,
                    "application/json",
                    Bytes::from_static(b"{\"output\":{\"mess"),
                );
            }
            let mut content = Vec::new();
            if let Some(t) = &thought {
                content
                    .push(json!({"reasoningContent": {"reasoningText": {"text": t, "signature": thinking::sign(t)}}}));
            }
            content.push(block);
            let v = json!({"output": {"message": {"role": "assistant", "content": content}},
                "stopReason": stop, "usage": usage, "metrics": {"latencyMs": 1}});
            return full(StatusCode::OK, &v);
        }
        let mut events = vec![bedrock::event_frame("messageStart", &json!({"role": "assistant"}))];
        if let Some(t) = &thought {
            let (a, b) = t.split_at(t.len() / 2);
            for part in [a, b] {
                events.push(bedrock::event_frame(
                    "contentBlockDelta",
                    &json!({"delta": {"reasoningContent": {"text": part}}, "contentBlockIndex": 0}),
                ));
            }
            events.push(bedrock::event_frame(
                "contentBlockDelta",
                &json!({"delta": {"reasoningContent": {"signature": thinking::sign(t)}}, "contentBlockIndex": 0}),
            ));
            events.push(bedrock::event_frame(
                "contentBlockStop",
                &json!({"contentBlockIndex": 0}),
            ));
        }
        match &reply {
            Reply::Text(t) => {
                for w in t.split_inclusive(' ') {
                    events.push(bedrock::event_frame(
                        "contentBlockDelta",
                        &json!({"delta": {"text": w}, "contentBlockIndex": at}),
                    ));
                }
            }
            Reply::Tool { args, .. } => {
                let u = &block["toolUse"];
                events.push(bedrock::event_frame(
                    "contentBlockStart",
                    &json!({"start": {"toolUse": {"toolUseId": u["toolUseId"], "name": u["name"]}}, "contentBlockIndex": at}),
                ));
                // The arguments in two pieces, as JSON text.
                let (a, b) = args.split_at(args.len() / 2);
                for piece in [a, b] {
                    events.push(bedrock::event_frame(
                        "contentBlockDelta",
                        &json!({"delta": {"toolUse": {"input": piece}}, "contentBlockIndex": at}),
                    ));
                }
            }
        }
        events.push(bedrock::event_frame(
            "contentBlockStop",
            &json!({"contentBlockIndex": at}),
        ));
        if script.bad_json {
            events.push(bedrock::exception_frame(
                "modelStreamErrorException",
                "mock model stream error",
            ));
        } else {
            events.push(bedrock::event_frame("messageStop", &json!({"stopReason": stop})));
            events.push(bedrock::event_frame(
                "metadata",
                &json!({"usage": usage, "metrics": {"latencyMs": 1}}),
            ));
        }
        self.stream_events(events, &script, "application/vnd.amazon.eventstream")
    }

    fn stream_events(&self, mut events: Vec<Bytes>, script: &Script, content_type: &'static str) -> Response<Body> {
        if script.no_done
            && (events
                .last()
                .is_some_and(|e| e.starts_with(b"data: [DONE]") || e.windows(12).any(|w| w == b"message_stop")))
        {
            events.pop();
        }
        let delay = Duration::from_millis(script.chunk_delay_ms);
        let cut = script.drop_after;
        let total = events.len();
        let tracker = Tracker {
            finished: false,
            on_drop: self.cancelled_streams.clone(),
        };
        let s = stream::unfold(
            (events.into_iter().enumerate(), tracker),
            move |(mut it, mut tracker)| async move {
                let (i, ev) = it.next()?;
                if cut == Some(i) {
                    tracker.finished = true;
                    return Some((Err(std::io::Error::other("mock drop mid-stream")), (it, tracker)));
                }
                if i > 0 && !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                if i + 1 == total {
                    tracker.finished = true;
                }
                Some((Ok(Frame::data(ev)), (it, tracker)))
            },
        )
        .boxed();
        let mut r = Response::new(BodyExt::boxed_unsync(StreamBody::new(s)));
        let h = r.headers_mut();
        let sse_type = script
            .sse_type
            .as_deref()
            .and_then(|t| http::HeaderValue::from_str(t).ok())
            .unwrap_or(http::HeaderValue::from_static(content_type));
        h.insert(http::header::CONTENT_TYPE, sse_type);
        h.insert(http::header::CACHE_CONTROL, http::HeaderValue::from_static("no-cache"));
        r
    }

    /// Gemini's `embedContent` and `batchEmbedContents`: the same vectors as
    /// [`Self::embeddings`] for the same text. As Google does, each request of a batch must
    /// name the path's model.
    fn embed_content(&self, req: &Value, model: &str, batch: bool) -> Response<Body> {
        let vector = |content: &Value| {
            let text: String = content["parts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p["text"].as_str())
                .collect();
            let h = blake3::hash(text.as_bytes());
            let v: Vec<f64> = h.as_bytes()[..8].iter().map(|b| f64::from(*b) / 255.0).collect();
            json!({"values": v})
        };
        if !batch {
            return full(StatusCode::OK, &json!({"embedding": vector(&req["content"])}));
        }
        let Some(requests) = req["requests"].as_array() else {
            return error_in(Api::Gemini, 400, "requests is required", None);
        };
        let want = format!("models/{model}");
        if let Some(i) = requests.iter().position(|r| r["model"] != want.as_str()) {
            return error_in(
                Api::Gemini,
                400,
                &format!("requests[{i}].model must be {want}, the model of the URL"),
                None,
            );
        }
        let embeddings: Vec<Value> = requests.iter().map(|r| vector(&r["content"])).collect();
        full(StatusCode::OK, &json!({"embeddings": embeddings}))
    }

    fn embeddings(&self, req: &Value, model: &str) -> Response<Body> {
        let Some(inputs) = inputs(req) else {
            return error(400, "'input' is required", None);
        };
        let data: Vec<Value> = inputs
            .iter()
            .enumerate()
            .map(|(i, text)| {
                let h = blake3::hash(text.as_bytes());
                let v: Vec<f64> = h.as_bytes()[..8].iter().map(|b| f64::from(*b) / 255.0).collect();
                json!({"object": "embedding", "index": i, "embedding": v})
            })
            .collect();
        let tokens: u64 = inputs.iter().map(|s| tokens_of(s.len())).sum();
        full(
            StatusCode::OK,
            &json!({"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}),
        )
    }
}

/// The texts of an embeddings or moderations `input`: one string or a list.
fn inputs(req: &Value) -> Option<Vec<String>> {
    match &req["input"] {
        Value::String(s) => Some(vec![s.clone()]),
        Value::Array(a) => Some(
            a.iter()
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                .collect(),
        ),
        _ => None,
    }
}

/// Counts a stream as cancelled when the client goes away before its end.
struct Tracker {
    finished: bool,
    on_drop: Arc<AtomicU64>,
}

impl Drop for Tracker {
    fn drop(&mut self) {
        if !self.finished {
            self.on_drop.fetch_add(1, Ordering::Relaxed);
        }
    }
}
