//! aigw as an MCP client of one upstream server over the Streamable HTTP transport: JSON
//! or SSE answers, the server's session created lazily (`initialize`, then
//! `notifications/initialized`) and created again when the server says it expired (404).
//! Every call carries the server's configured headers (its credential), never the
//! caller's, and ends within the server's `timeout_ms`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use serde_json::{json, Value};

/// The protocol revision aigw speaks to servers (and offers callers first).
pub const PROTOCOL_VERSION: &str = "2025-06-18";
/// An answer larger than this is refused: tool results are text, not bulk data.
const MAX_ANSWER: usize = 4 << 20;
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
    pub tools: Option<std::collections::HashSet<String>>,
}

/// Why a call to a server failed (the caller gets a JSON-RPC error either way).
#[derive(Debug)]
pub enum CallError {
    /// Unreachable, timed out, or answered something that is not MCP.
    Unavailable(String),
    /// The server answered with a JSON-RPC error.
    Rpc(Value),
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
    /// `method` with `params` on this server, in `session` (initialized first when it
    /// has none yet, and again once if the server forgot it).
    pub async fn call(&self, session: &mut Session, method: &str, params: Value) -> Result<Value, CallError> {
        if session.id.is_none() && session.version.is_none() {
            *session = self.initialize().await?;
        }
        match self.request(session, method, &params).await {
            Ok(r) => r,
            Err(Expired) => {
                *session = self.initialize().await?;
                match self.request(session, method, &params).await {
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
            .send(&fresh, Some("initialize"), &params)
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
        if let Err(Sent::Failed(e)) = self.send(&fresh, None, &json!({})).await {
            return Err(e);
        }
        Ok(fresh)
    }

    async fn request(
        &self,
        session: &Session,
        method: &str,
        params: &Value,
    ) -> Result<Result<Value, CallError>, Expired> {
        match self.send(session, Some(method), params).await {
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
            read_sse(resp, id).await
        } else {
            let (_, body) = crate::outbound::read_capped(resp, MAX_ANSWER, "the server")
                .await
                .map_err(unavailable)?;
            serde_json::from_slice::<Value>(&body).map_err(|_| format!("answered {} without JSON-RPC", status.as_u16()))
        }
        .map_err(unavailable)?;
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

/// The JSON-RPC response with `id` from an SSE answer; other messages (progress
/// notifications, server requests aigw does not serve) are passed over.
async fn read_sse(mut resp: reqwest::Response, id: u64) -> Result<Value, String> {
    let mut buf: Vec<u8> = Vec::new();
    let mut read = 0usize;
    loop {
        while let Some(end) = crate::stream::event_end(&buf) {
            let data = crate::stream::event_data(&buf[..end]);
            buf.drain(..end);
            if let Ok(v) = serde_json::from_slice::<Value>(&data) {
                if v.get("id").and_then(Value::as_u64) == Some(id)
                    && (v.get("result").is_some() || v.get("error").is_some())
                {
                    return Ok(v);
                }
            }
        }
        let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| format!("stream broke: {}", e.without_url()))?
        else {
            return Err("ended its stream without our response".into());
        };
        read += chunk.len();
        if read > MAX_ANSWER {
            return Err(format!("streamed more than {MAX_ANSWER} bytes"));
        }
        buf.extend_from_slice(&chunk);
    }
}
