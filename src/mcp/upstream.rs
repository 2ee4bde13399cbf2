//! aigw as an MCP client of one upstream server over the Streamable HTTP transport: JSON
//! or SSE answers, the server's session created lazily (`initialize`, then
//! `notifications/initialized`) and created again when the server says it expired (404).
//! Every call carries the server's configured headers (its credential), never the
//! caller's, and ends within the server's `timeout_ms`.
//!
//! A server is trusted with its credential, not with the gateway's memory: what it sends
//! is bounded by bytes (`max_answer_bytes` for one answer, and for all pages of one list
//! together), by the memory its JSON takes once parsed ([`super::bounded`]), and a list by
//! its items (`max_list_items`) and [`MAX_PAGES`]. An SSE answer is read in time linear
//! in its bytes however it is cut. Past a bound the call fails with
//! [`CallError::TooLarge`], which the caller gets as a JSON-RPC error.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use serde_json::{json, Value};

use super::bounded;

/// The protocol revision aigw speaks to servers (and offers callers first).
pub const PROTOCOL_VERSION: &str = "2025-06-18";
/// The most pages one list may take: each is a round trip, and a cursor may loop.
pub const MAX_PAGES: usize = 100;
/// Tool names longer than this are never metric labels.
const MAX_LABEL_BYTES: usize = 128;
/// The most tool names of one server that become metric labels.
const MAX_LABELS: usize = 1000;
const SESSION: HeaderName = HeaderName::from_static("mcp-session-id");
const VERSION: HeaderName = HeaderName::from_static("mcp-protocol-version");

/// One configured server, compiled.
#[derive(Debug)]
pub struct Server {
    pub name: String,
    pub url: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub timeout: Duration,
    /// The tools callers may see at most; `None`: all.
    pub tools: Option<HashSet<String>>,
    /// The most bytes of one answer, and of all pages of one list together.
    pub max_answer_bytes: usize,
    /// The most items of one list, over all its pages.
    pub max_list_items: usize,
    /// Tool names this server listed, the only ones that become metric labels (at most
    /// [`MAX_LABELS`], none longer than [`MAX_LABEL_BYTES`]); kept while this config is.
    pub listed: Mutex<HashSet<String>>,
}

/// Why a call to a server failed (the caller gets a JSON-RPC error either way).
#[derive(Debug)]
pub enum CallError {
    /// Unreachable, timed out, or answered something that is not MCP.
    Unavailable(String),
    /// The server answered with a JSON-RPC error.
    Rpc(Value),
    /// The answer went past a bound: what it did, e.g. "answered more than 4194304 bytes".
    TooLarge(String),
}

/// What one answer, or all pages of one list, may still take from the gateway.
#[derive(Debug)]
pub struct Allowance {
    /// Bytes of answer left to read.
    bytes: usize,
    /// Memory left for the parsed JSON.
    memory: usize,
}

/// A session with one server, as one caller session holds it.
#[derive(Debug, Default, Clone)]
pub struct Session {
    pub id: Option<HeaderValue>,
    pub version: Option<String>,
}

static IDS: AtomicU64 = AtomicU64::new(1);

fn client() -> Result<&'static reqwest::Client, CallError> {
    static CLIENT: std::sync::OnceLock<Result<reqwest::Client, String>> = std::sync::OnceLock::new();
    // Each call sets its own timeout; the pool is shared by every server.
    CLIENT
        .get_or_init(|| crate::outbound::client(Duration::from_secs(3600)))
        .as_ref()
        .map_err(|e| CallError::Unavailable(e.clone()))
}

impl Server {
    /// What one answer (or one list, all its pages) of this server may take.
    pub fn allowance(&self) -> Allowance {
        Allowance {
            bytes: self.max_answer_bytes,
            memory: bounded::budget(self.max_answer_bytes),
        }
    }

    /// Remembers tool names this server listed, as metric labels to be.
    pub fn remember_tools<'a>(&self, names: impl Iterator<Item = &'a str>) {
        let mut listed = super::lock(&self.listed);
        for name in names.filter(|n| n.len() <= MAX_LABEL_BYTES) {
            if listed.len() >= MAX_LABELS {
                break;
            }
            if !listed.contains(name) {
                listed.insert(name.to_owned());
            }
        }
    }

    /// The metric label of a call to `tool`: its name if this server listed it, else
    /// `other`. Callers choose the names they call; they do not choose series.
    pub fn tool_label(&self, tool: &str) -> String {
        match super::lock(&self.listed).contains(tool) {
            true => tool.to_owned(),
            false => "other".to_owned(),
        }
    }

    /// `method` with `params` on this server, in `session` (initialized first when it
    /// has none yet, and again once if the server forgot it), within `allowance`.
    pub async fn call(
        &self,
        session: &mut Session,
        method: &str,
        params: Value,
        allowance: &mut Allowance,
    ) -> Result<Value, CallError> {
        if session.id.is_none() && session.version.is_none() {
            *session = self.initialize().await?;
        }
        match self.request(session, method, &params, allowance).await {
            Ok(r) => r,
            Err(Expired) => {
                *session = self.initialize().await?;
                match self.request(session, method, &params, allowance).await {
                    Ok(r) => r,
                    Err(Expired) => Err(CallError::Unavailable(
                        "the server forgot a session it had just made".into(),
                    )),
                }
            }
        }
    }

    async fn initialize(&self) -> Result<Session, CallError> {
        let params = json!({
            "protocolVersion": PROTOCOL_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "aigw", "version": env!("CARGO_PKG_VERSION")},
        });
        let mut fresh = Session::default();
        let (result, id) = self
            .send(&fresh, Some("initialize"), &params, &mut self.allowance())
            .await
            .map_err(|e| match e {
                Sent::Expired => CallError::Unavailable("initialize answered 404".into()),
                Sent::Failed(e) => e,
            })?;
        let result = result?;
        fresh.id = id;
        fresh.version = Some(
            result
                .get("protocolVersion")
                .and_then(Value::as_str)
                .unwrap_or(PROTOCOL_VERSION)
                .to_owned(),
        );
        // The server may answer 202 or nothing useful; only a transport failure matters.
        if let Err(Sent::Failed(e)) = self.send(&fresh, None, &json!({}), &mut self.allowance()).await {
            return Err(e);
        }
        Ok(fresh)
    }

    async fn request(
        &self,
        session: &Session,
        method: &str,
        params: &Value,
        allowance: &mut Allowance,
    ) -> Result<Result<Value, CallError>, Expired> {
        match self.send(session, Some(method), params, allowance).await {
            Ok((r, _)) => Ok(r),
            Err(Sent::Expired) => Err(Expired),
            Err(Sent::Failed(e)) => Ok(Err(e)),
        }
    }

    /// Posts one message: a request (`method`), or the `initialized` notification (`None`).
    async fn send(
        &self,
        session: &Session,
        method: Option<&str>,
        params: &Value,
        allowance: &mut Allowance,
    ) -> Result<(Result<Value, CallError>, Option<HeaderValue>), Sent> {
        let id = IDS.fetch_add(1, Ordering::Relaxed);
        let body = match method {
            Some(m) => json!({"jsonrpc": "2.0", "id": id, "method": m, "params": params}),
            None => json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        };
        let mut req = client()
            .map_err(Sent::Failed)?
            .post(&self.url)
            .timeout(self.timeout)
            .header(http::header::ACCEPT, "application/json, text/event-stream")
            .json(&body);
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        if let Some(sid) = &session.id {
            req = req.header(SESSION, sid);
        }
        if let Some(v) = &session.version {
            req = req.header(VERSION, v.as_str());
        }
        let unavailable = |why: String| Sent::Failed(CallError::Unavailable(why));
        let resp = req
            .send()
            .await
            .map_err(|e| unavailable(format!("unreachable: {}", e.without_url())))?;
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND && session.id.is_some() {
            return Err(Sent::Expired);
        }
        let new_session = resp.headers().get(SESSION).cloned();
        let sse = resp
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("text/event-stream"));
        if method.is_none() {
            return if status.is_success() {
                Ok((Ok(Value::Null), new_session))
            } else {
                Err(unavailable(format!(
                    "answered {} to notifications/initialized",
                    status.as_u16()
                )))
            };
        }
        let answer = if sse {
            read_sse(resp, id, allowance).await
        } else {
            read_json(resp, allowance).await.and_then(|v| {
                v.ok_or_else(|| CallError::Unavailable(format!("answered {} without JSON-RPC", status.as_u16())))
            })
        }
        .map_err(Sent::Failed)?;
        if answer.get("id").and_then(Value::as_u64) != Some(id) {
            return Err(unavailable(format!(
                "answered {} without our response",
                status.as_u16()
            )));
        }
        let result = match (answer.get("result"), answer.get("error")) {
            (Some(r), None) => Ok(r.clone()),
            (_, Some(e)) => Err(CallError::Rpc(e.clone())),
            (None, None) => Err(CallError::Unavailable("answered neither a result nor an error".into())),
        };
        Ok((result, new_session))
    }

    /// Ends the server's session (`DELETE` with its id); a failure is only logged.
    pub async fn close(&self, session: &Session) {
        let (Some(sid), Ok(c)) = (&session.id, client()) else {
            return;
        };
        let mut req = c.delete(&self.url).timeout(self.timeout).header(SESSION, sid);
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        if let Err(e) = req.send().await {
            tracing::debug!(server = %self.name, "closing an MCP session: {}", e.without_url());
        }
    }
}

struct Expired;

enum Sent {
    Expired,
    Failed(CallError),
}

/// Reads a JSON answer within `allowance`; `None`: it is not JSON.
async fn read_json(mut resp: reqwest::Response, allowance: &mut Allowance) -> Result<Option<Value>, CallError> {
    let mut body = Vec::new();
    while let Some(chunk) = next_chunk(&mut resp, allowance).await? {
        body.extend_from_slice(&chunk);
    }
    parse(&body, allowance)
}

/// The next chunk of an answer, counted against `allowance` before it is kept.
async fn next_chunk(
    resp: &mut reqwest::Response,
    allowance: &mut Allowance,
) -> Result<Option<bytes::Bytes>, CallError> {
    let chunk = resp
        .chunk()
        .await
        .map_err(|e| CallError::Unavailable(format!("stream broke: {}", e.without_url())))?;
    if let Some(c) = &chunk {
        allowance.bytes = allowance
            .bytes
            .checked_sub(c.len())
            .ok_or_else(|| CallError::TooLarge("answered more bytes than max_answer_bytes".into()))?;
    }
    Ok(chunk)
}

/// `bytes` parsed within the memory left; `None`: not JSON.
fn parse(bytes: &[u8], allowance: &mut Allowance) -> Result<Option<Value>, CallError> {
    match bounded::parse(bytes, &mut allowance.memory) {
        Ok(v) => Ok(Some(v)),
        Err(bounded::Refused::Invalid) => Ok(None),
        Err(bounded::Refused::TooLarge) => Err(CallError::TooLarge(
            "answered JSON that takes more memory than max_answer_bytes allows".into(),
        )),
    }
}

/// The JSON-RPC response with `id` from an SSE answer; other messages (progress
/// notifications, server requests aigw does not serve) are passed over. Each byte is
/// searched for an event's end once, and the buffer is moved once per chunk, not once per
/// event: however the answer is cut, the work is linear in its bytes.
async fn read_sse(mut resp: reqwest::Response, id: u64, allowance: &mut Allowance) -> Result<Value, CallError> {
    let mut buf: Vec<u8> = Vec::new();
    // Bytes of `buf` known to hold no event's end.
    let mut searched = 0usize;
    loop {
        let mut start = 0;
        loop {
            // An end (`\n\n`, `\n\r\n`) may straddle what was searched and what came.
            let from = searched.saturating_sub(2).max(start);
            let Some(len) = crate::stream::event_end(&buf[from..]) else {
                searched = buf.len();
                break;
            };
            let end = from + len;
            let data = crate::stream::event_data(&buf[start..end]);
            start = end;
            searched = end;
            if data.is_empty() {
                continue;
            }
            // An event that is not JSON is not ours.
            if let Some(v) = parse(&data, allowance)? {
                if v.get("id").and_then(Value::as_u64) == Some(id)
                    && (v.get("result").is_some() || v.get("error").is_some())
                {
                    return Ok(v);
                }
            }
        }
        buf.drain(..start);
        searched -= start;
        let Some(chunk) = next_chunk(&mut resp, allowance).await? else {
            return Err(CallError::Unavailable("ended its stream without our response".into()));
        };
        buf.extend_from_slice(&chunk);
    }
}
