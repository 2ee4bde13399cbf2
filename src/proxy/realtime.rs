//! OpenAI's Realtime API: `GET /v1/realtime?model={alias}`, a WebSocket session.
//!
//! The gateway terminates the caller's WebSocket itself rather than splicing bytes, so
//! that usage and guardrails see whole events: it answers the upgrade (101) in the
//! request phase, then pumps the Pingora session's (now close-delimited) body bytes to
//! and from an in-memory pipe that tokio-tungstenite speaks WebSocket over, and opens its
//! own WebSocket to the provider with the provider's credential. Messages are relayed one
//! by one; frames are the protocol's business on each leg (fragments are reassembled,
//! pings answered), never passed through.
//!
//! The session was admitted like any request (key, allowlist, rate limits, budget) and
//! holds its concurrency slots until it ends. Each `response.done` is charged as it
//! arrives (token limits, budget); the access log line and the metrics are written once,
//! when the session ends, with the sum.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::header;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::ctx::Ctx;
use crate::api::{Endpoint, X_REQUEST_ID};
use crate::auth::ApiKeyEntry;
use crate::config::Snapshot;
use crate::error::GwError;
use crate::guard::{self, Guardrail, Hit};
use crate::provider::{self, Target};
use crate::raw::Pricing;
use crate::route::plan::Plan;
use crate::state::AppState;
use crate::usage::Usage;

type Upstream = WebSocketStream<MaybeTlsStream<TcpStream>>;
type Caller = WebSocketStream<DuplexStream>;

/// The subprotocol OpenAI's browser clients offer beside their key; echoed when offered.
const REALTIME_SUBPROTOCOL: &str = "realtime";
/// The most recent bytes of each streamed output text that the response guardrails
/// rescan at each delta: longer than any keyword or PII pattern.
const SCAN_WINDOW: usize = 4096;
/// The most output items whose windows are kept between two `response.done` events.
const MAX_ITEMS: usize = 64;
/// How long a closing handshake may take on either leg before the socket is dropped.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Admits a realtime session and runs it to its end. The caller is authenticated; the
/// rest of admission (upgrade, model, allowlist, limits, budget, the provider's socket)
/// is here, each refusal an HTTP error before the upgrade.
pub async fn serve(
    state: &Arc<AppState>,
    session: &mut Session,
    ctx: &mut Ctx,
    caller: &Arc<ApiKeyEntry>,
    snap: &Arc<Snapshot>,
    alias: Option<String>,
) -> Result<(), GwError> {
    ctx.endpoint = Some(Endpoint::Realtime);
    let accept = upgrade_key(session)?;
    let alias = alias
        .filter(|a| !a.is_empty())
        .ok_or_else(|| GwError::InvalidRequest("Name the model in the query: /v1/realtime?model={alias}.".into()))?;
    let model = snap
        .models
        .get(alias.as_str())
        .ok_or_else(|| GwError::ModelNotFound(alias.clone()))?;
    if !caller.allows(&model.name) {
        return Err(GwError::ModelNotAllowed(model.name.clone()));
    }
    // A caller's events are judged by the request stage's services before they go up,
    // the model's output in windows before it goes down; a service that masks cannot
    // rewrite deltas already cut: refused rather than passed unmasked (docs/guardrails.md).
    let output = guard::applicable(&caller.guardrails, &model.guardrails, true);
    if let Some(g) = output
        .iter()
        .find(|g| g.service.is_some() && g.action == crate::raw::Action::Mask)
    {
        return Err(GwError::InvalidRequest(format!(
            "The guardrail '{}' is a guardrail service that masks answers, which a realtime session's deltas cannot carry.",
            g.name
        )));
    }
    let candidates: Vec<Target> = Plan::new(model, &state.load, &caller.owner)
        .candidates
        .into_iter()
        .filter(|t| provider::can_serve(Endpoint::Realtime, t))
        .collect();
    if candidates.is_empty() {
        // Before any upstream call: only OpenAI-style providers speak the Realtime API.
        return Err(GwError::InvalidRequest(format!(
            "The model '{}' cannot serve /realtime: realtime sessions go to OpenAI-style providers (openai, openai_compatible, azure).",
            model.name
        )));
    }
    ctx.alias = Some(model.name.clone());
    let bindings: Vec<&Arc<_>> = caller.limits.iter().chain(model.limits.iter()).collect();
    ctx.limits = state.limiter.admit(&bindings).await?;
    if let Some(b) = &caller.budget {
        ctx.budget = Some(state.budgets.admit(b, &caller.owner, chrono::Utc::now()).await?);
    }
    let bounds = snap.server.realtime;
    let config = WebSocketConfig::default()
        .max_message_size(Some(bounds.max_message_bytes))
        .max_frame_size(Some(bounds.max_message_bytes));
    let offered_beta = session.req_header().headers.get("openai-beta").cloned();
    let mut last = GwError::Internal;
    let mut opened = None;
    for target in candidates {
        // A session counts as one request against its target's quota, and its
        // responses' tokens as they are done; a target with no room is passed over.
        let quota = match super::request::admit_quota(state, &target).await {
            Ok(q) => q,
            Err(e) => {
                last = e;
                continue;
            }
        };
        let Some(pick) = target.provider.upstream.select(&[0; 32]) else {
            last = GwError::NoHealthyTarget {
                message: format!("The provider '{}' has no reachable address.", target.provider.name),
                retry_after: None,
            };
            continue;
        };
        match connect(&target, pick.addr, offered_beta.as_ref(), &ctx.request_id, config).await {
            Ok(ws) => {
                ctx.pick = Some(pick);
                ctx.quota = quota;
                opened = Some((target, ws));
                break;
            }
            Err(e) => last = e,
        }
    }
    let Some((target, upstream)) = opened else {
        return Err(last);
    };
    let pricing = snap.models.get(target.alias.as_str()).and_then(|m| m.pricing);
    ctx.target = Some(target);
    // The session was answered by the provider: what settles it is the charge made
    // response by response, not an estimate at the end (`response::settle`).
    ctx.upstream_status = Some(101);

    answer_upgrade(session, ctx, &accept).await?;
    // The session's own bounds replace Pingora's per-read timeout (60 s): a quiet caller
    // is the idle timeout's to end, and a caller that stops reading is bounded too.
    session.set_read_timeout(None);
    session.set_write_timeout(Some(Duration::from_secs(bounds.idle_timeout_s)));

    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let caller_ws = WebSocketStream::from_raw_socket(ours, Role::Server, Some(config)).await;
    let mut relay = Relay {
        state,
        ctx_limits: ctx.limits.as_ref(),
        quota: ctx.quota.as_ref(),
        budget: ctx.budget.as_ref(),
        pricing,
        input_guards: guard::applicable(&caller.guardrails, &model.guardrails, false),
        output_guards: guard::applicable(&caller.guardrails, &model.guardrails, true),
        out_window: guard::service::TextWindow::new(&output),
        held_out: Vec::new(),
        held_bytes: 0,
        alias: model.name.clone(),
        owner: caller.owner.clone(),
        request_id: ctx.request_id.clone(),
        idle: Duration::from_secs(bounds.idle_timeout_s),
        ends: Instant::now() + Duration::from_secs(bounds.max_session_s),
        max_message_bytes: bounds.max_message_bytes as u64,
        usage: None,
        hits: Vec::new(),
        first_event: None,
        transcripts: Default::default(),
        ended: None,
    };
    tokio::join!(relay.run(caller_ws, upstream), pump(session, theirs));
    let (usage, hits, first, ended) = (relay.usage, relay.hits, relay.first_event, relay.ended);
    ctx.usage = usage;
    ctx.guard_hits = hits;
    ctx.first_event = first;
    if let Some(e) = ended {
        // For the access log and the span; the caller had its `error` event.
        ctx.error = Some(e);
    }
    Ok(())
}

/// The `Sec-WebSocket-Accept` of a well-formed upgrade; a clear 400 for anything else
/// (HTTP/2, which cannot upgrade; a plain GET; another WebSocket version).
fn upgrade_key(session: &Session) -> Result<String, GwError> {
    if session.is_http2() {
        return Err(GwError::InvalidRequest(
            "Realtime is a WebSocket session: open it over HTTP/1.1 (an HTTP/2 request cannot upgrade).".into(),
        ));
    }
    let h = &session.req_header().headers;
    let is = |name: header::HeaderName, want: &str| {
        h.get_all(name).iter().any(|v| {
            v.as_bytes()
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(want.as_bytes()))
        })
    };
    let key = h.get(header::SEC_WEBSOCKET_KEY).map(|v| v.as_bytes().trim_ascii());
    match key {
        Some(key)
            if session.is_upgrade_req()
                && is(header::UPGRADE, "websocket")
                && is(header::CONNECTION, "upgrade")
                && is(header::SEC_WEBSOCKET_VERSION, "13") =>
        {
            Ok(derive_accept_key(key))
        }
        _ => Err(GwError::InvalidRequest(
            "Realtime is a WebSocket session: send an HTTP/1.1 upgrade (Upgrade: websocket, Sec-WebSocket-Version: 13).".into(),
        )),
    }
}

/// Opens the provider's WebSocket with the provider's credential (built by the one
/// credential code, `provider::apply_credentials`); nothing of the caller's request
/// crosses but OpenAI's beta opt-in header.
async fn connect(
    target: &Target,
    addr: std::net::SocketAddr,
    beta: Option<&http::HeaderValue>,
    request_id: &str,
    config: WebSocketConfig,
) -> Result<Upstream, GwError> {
    let p = &target.provider;
    let path = provider::upstream_path(target, Endpoint::Realtime, false);
    let scheme = if p.base.tls { "wss" } else { "ws" };
    let broken = || GwError::UpstreamError(format!("The provider '{}' could not open a realtime session.", p.name));
    let mut req = format!("{scheme}://{}{path}", p.base.authority)
        .into_client_request()
        .map_err(|_| broken())?;
    let mut creds = RequestHeader::build("GET", path.as_bytes(), None).map_err(|_| GwError::Internal)?;
    provider::apply_credentials(p, None, &[], &mut creds).map_err(|_| GwError::Internal)?;
    let headers = req.headers_mut();
    for (name, value) in creds.headers.iter() {
        let mut value = value.clone();
        value.set_sensitive(true);
        headers.insert(name.clone(), value);
    }
    if let Some(b) = beta {
        headers.insert("openai-beta", b.clone());
    }
    if let Ok(id) = http::HeaderValue::from_str(request_id) {
        headers.insert(X_REQUEST_ID, id);
    }
    let tcp = tokio::time::timeout(p.connect_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| GwError::UpstreamTimeout)?
        .map_err(|e| {
            tracing::debug!(provider = %p.name, error = %e, "realtime: could not connect");
            broken()
        })?;
    let _ = tcp.set_nodelay(true);
    let handshake = tokio_tungstenite::client_async_tls_with_config(req, tcp, Some(config), None);
    match tokio::time::timeout(p.first_byte_timeout, handshake).await {
        Err(_) => Err(GwError::UpstreamTimeout),
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(WsError::Http(resp))) => Err(GwError::UpstreamError(format!(
            "The provider '{}' refused the realtime session ({}).",
            p.name,
            resp.status()
        ))),
        Ok(Err(e)) => {
            tracing::debug!(provider = %p.name, error = %e, "realtime: handshake failed");
            Err(broken())
        }
    }
}

/// The 101: the accept key, and `realtime` echoed when the caller offered it (never the
/// key subprotocol: `admit` took it out of the request with `auth::subprotocol_key`).
async fn answer_upgrade(session: &mut Session, ctx: &Ctx, accept: &str) -> Result<(), GwError> {
    let offered = session
        .req_header()
        .headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .any(|p| p.trim_ascii() == REALTIME_SUBPROTOCOL.as_bytes());
    let write = async {
        let mut resp = ResponseHeader::build(101, Some(5))?;
        resp.insert_header(header::UPGRADE, "websocket")?;
        resp.insert_header(header::CONNECTION, "Upgrade")?;
        resp.insert_header(header::SEC_WEBSOCKET_ACCEPT, accept)?;
        if offered {
            resp.insert_header(header::SEC_WEBSOCKET_PROTOCOL, REALTIME_SUBPROTOCOL)?;
        }
        resp.insert_header(X_REQUEST_ID, ctx.request_id.as_str())?;
        session.write_response_header(Box::new(resp), false).await
    };
    write.await.map_err(|e| {
        tracing::debug!(error = %e, "realtime: could not answer the upgrade");
        GwError::InvalidRequest("The connection failed.".into())
    })
}

/// Moves bytes between the caller's connection (Pingora's session, upgraded: its body is
/// the WebSocket's bytes both ways) and the in-memory pipe the caller's WebSocket is
/// spoken over. Ends when the relay drops its end of the pipe, or the caller's side
/// fails. Never blocks one direction on the other: bytes from the caller wait in
/// `pending` (and the caller is not read) while the relay is busy.
async fn pump(session: &mut Session, pipe: DuplexStream) {
    let (mut from_relay, mut to_relay) = tokio::io::split(pipe);
    let mut buf = vec![0u8; 16 * 1024];
    let mut pending = Bytes::new();
    let mut caller_open = true;
    loop {
        tokio::select! {
            read = session.read_request_body(), if caller_open && pending.is_empty() => match read {
                Ok(Some(b)) => pending = b,
                // The caller closed its side, or it failed: the relay sees the end.
                _ => {
                    caller_open = false;
                    let _ = to_relay.shutdown().await;
                }
            },
            wrote = to_relay.write(&pending), if !pending.is_empty() => match wrote {
                Ok(n) if n > 0 => pending = pending.slice(n..),
                _ => {
                    pending = Bytes::new();
                    caller_open = false;
                }
            },
            read = from_relay.read(&mut buf) => match read {
                Ok(n) if n > 0 => {
                    let out = Bytes::copy_from_slice(&buf[..n]);
                    if session.write_response_body(Some(out), false).await.is_err() {
                        break;
                    }
                }
                _ => break,
            },
        }
    }
    let _ = session.write_response_body(None, true).await;
}

/// What ended a session, as the caller is told: an `error` event first when there is
/// something to explain, then a close frame.
struct Ending {
    event: Option<GwError>,
    code: CloseCode,
    reason: &'static str,
}

impl Ending {
    fn error(e: GwError, code: CloseCode, reason: &'static str) -> Self {
        Self {
            event: Some(e),
            code,
            reason,
        }
    }
}

/// One session's relay: the two sockets, the caller's policies and what it learned.
struct Relay<'a> {
    state: &'a Arc<AppState>,
    ctx_limits: Option<&'a crate::limit::Admitted>,
    /// The target's provider quota, charged each response's tokens.
    quota: Option<&'a crate::limit::Admitted>,
    budget: Option<&'a crate::budget::Admitted>,
    pricing: Option<Pricing>,
    input_guards: Vec<Arc<Guardrail>>,
    output_guards: Vec<Arc<Guardrail>>,
    /// Judges the output for the response-stage guardrail services, and what it holds.
    out_window: Option<guard::service::TextWindow>,
    held_out: Vec<Message>,
    held_bytes: usize,
    /// What guardrail services are told of the session.
    alias: String,
    owner: String,
    request_id: String,
    idle: Duration,
    ends: Instant,
    max_message_bytes: u64,
    usage: Option<Usage>,
    hits: Vec<Hit>,
    first_event: Option<Instant>,
    /// The text each output item has streamed so far, scanned whole at each delta.
    transcripts: std::collections::HashMap<String, String>,
    /// The error that ended the session, if one did.
    ended: Option<GwError>,
}

/// The most a session holds of the model's output while its window fills.
const MAX_HELD_OUT: usize = 1 << 20;

/// What to do with one message.
enum Step {
    Go,
    End(Ending),
}

impl Relay<'_> {
    async fn run(&mut self, caller: Caller, upstream: Upstream) {
        self.relay(caller, upstream).await;
        // Text the monitors had not judged yet (nothing waits for them, so the session
        // may end first) is judged now, for the record.
        if let Some(window) = self.out_window.as_mut().filter(|w| !w.holds() && w.pending()) {
            let about = guard::service::About {
                model: &self.alias,
                owner: &self.owner,
                request_id: &self.request_id,
            };
            let _ = window.judge(about, &mut self.hits).await;
        }
    }

    async fn relay(&mut self, mut caller: Caller, mut upstream: Upstream) {
        let mut active = Instant::now();
        let ending = loop {
            let idle_at = tokio::time::Instant::from_std(active + self.idle);
            let ends_at = tokio::time::Instant::from_std(self.ends);
            tokio::select! {
                m = caller.next() => match m {
                    Some(Ok(Message::Text(t))) => {
                        active = Instant::now();
                        let out = match self.on_caller_event(t.as_str()).await {
                            Ok(out) => out,
                            Err(e) => break Ending::error(e, CloseCode::Policy, "blocked by a guardrail"),
                        };
                        if !self.send(&mut upstream, Message::text(out)).await {
                            break self.provider_dropped();
                        }
                    }
                    Some(Ok(Message::Binary(_))) => {
                        break Ending::error(
                            GwError::InvalidRequest("Realtime events are JSON text messages; a binary message is refused.".into()),
                            CloseCode::Unsupported,
                            "binary message",
                        );
                    }
                    // Pings are answered by the protocol; they keep no session alive.
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                    Some(Ok(Message::Close(frame))) => {
                        // The caller's close goes to the provider; the protocol answered it.
                        pass_close(frame, &mut upstream, &mut caller).await;
                        return;
                    }
                    Some(Err(WsError::Capacity(_))) => {
                        break Ending::error(
                            GwError::RequestTooLarge { limit: self.max_message_bytes },
                            CloseCode::Size,
                            "message too big",
                        );
                    }
                    // The caller went away (or broke the protocol): nobody to tell.
                    Some(Err(_)) | None => {
                        let _ = tokio::time::timeout(CLOSE_WAIT, upstream.close(None)).await;
                        return;
                    }
                },
                m = upstream.next() => match m {
                    Some(Ok(Message::Text(t))) => {
                        active = Instant::now();
                        self.first_event.get_or_insert_with(Instant::now);
                        match self.on_provider_event(t.as_str()).await {
                            Step::Go => {}
                            Step::End(e) => break e,
                        }
                        let out = match self.judge_output(t).await {
                            Ok(out) => out,
                            Err(e) => break e,
                        };
                        for m in out {
                            if !self.send(&mut caller, m).await {
                                let _ = tokio::time::timeout(CLOSE_WAIT, upstream.close(None)).await;
                                return;
                            }
                        }
                    }
                    Some(Ok(Message::Binary(_))) => {
                        break Ending::error(
                            GwError::UpstreamError("The provider sent a binary message, which no guardrail can read.".into()),
                            CloseCode::Error,
                            "provider error",
                        );
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                    Some(Ok(Message::Close(frame))) => {
                        // The provider's close is the caller's: its code and reason.
                        pass_close(frame, &mut caller, &mut upstream).await;
                        return;
                    }
                    Some(Err(WsError::Capacity(_))) => {
                        break Ending::error(
                            GwError::UpstreamError("The provider sent a message over the session's size limit.".into()),
                            CloseCode::Error,
                            "provider error",
                        );
                    }
                    Some(Err(_)) | None => break self.provider_dropped(),
                },
                () = tokio::time::sleep_until(idle_at) => {
                    break Ending::error(
                        GwError::InvalidRequest(format!("The session was idle for {} s and is closed.", self.idle.as_secs())),
                        CloseCode::Normal,
                        "idle timeout",
                    );
                }
                () = tokio::time::sleep_until(ends_at) => {
                    break Ending::error(
                        GwError::InvalidRequest("The session reached its longest allowed duration and is closed.".into()),
                        CloseCode::Normal,
                        "session time limit",
                    );
                }
            }
        };
        self.end(caller, upstream, ending).await;
    }

    fn provider_dropped(&self) -> Ending {
        Ending::error(
            GwError::UpstreamError("The provider ended the realtime session without closing it.".into()),
            CloseCode::Error,
            "provider dropped",
        )
    }

    /// Sends one message, bounded by the idle timeout: a peer that stops reading cannot
    /// hold the session (and its slot) open.
    async fn send<S>(&self, ws: &mut WebSocketStream<S>, m: Message) -> bool
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        matches!(tokio::time::timeout(self.idle, ws.send(m)).await, Ok(Ok(())))
    }

    /// Ends the session: the caller gets the error event and the close frame, and the
    /// provider's socket is closed.
    async fn end(&mut self, mut caller: Caller, mut upstream: Upstream, ending: Ending) {
        if let Some(e) = &ending.event {
            let _ = self.send(&mut caller, Message::text(e.realtime_event())).await;
        }
        let frame = CloseFrame {
            code: ending.code,
            reason: ending.reason.into(),
        };
        let _ = tokio::time::timeout(CLOSE_WAIT, caller.close(Some(frame))).await;
        let _ = tokio::time::timeout(CLOSE_WAIT, upstream.close(None)).await;
        drain(&mut caller).await;
        drain(&mut upstream).await;
        self.ended = ending.event;
    }

    /// A caller's event on its way up: the texts it carries through the request
    /// guardrails. Returns the event to send (masked when a guardrail masked).
    async fn on_caller_event(&mut self, text: &str) -> Result<String, GwError> {
        if self.input_guards.is_empty() {
            return Ok(text.to_owned());
        }
        let Ok(mut v) = serde_json::from_str::<Value>(text) else {
            // Not JSON: the provider refuses it; nothing in it is a text the model reads.
            return Ok(text.to_owned());
        };
        let mut texts = caller_texts(&mut v);
        if texts.is_empty() {
            return Ok(text.to_owned());
        }
        let mut changed = false;
        for s in texts.iter_mut() {
            match guard::check_text(&self.input_guards, s, &mut self.hits) {
                Ok(None) => {}
                Ok(Some(masked)) => {
                    **s = masked;
                    changed = true;
                }
                Err(name) => {
                    return Err(GwError::ContentFilter {
                        guardrail: name.to_string(),
                        response: false,
                    })
                }
            }
        }
        if guard::service::any(&self.input_guards) {
            // Every text of the event in one call per service, after the rules.
            let mut judged: Vec<String> = texts.iter().map(|s| s.to_string()).collect();
            let about = guard::service::About {
                model: &self.alias,
                owner: &self.owner,
                request_id: &self.request_id,
            };
            let edited = guard::service::judge(
                &self.input_guards,
                guard::service::Side::Request,
                about,
                &mut judged,
                &mut self.hits,
            )
            .await
            .map_err(|stop| stop.error(false))?;
            for ((slot, new), edit) in texts.into_iter().zip(judged).zip(edited) {
                if edit {
                    *slot = new;
                    changed = true;
                }
            }
        }
        Ok(if changed { v.to_string() } else { text.to_owned() })
    }

    /// A provider's event on its way down: usage charged from `response.done`, text
    /// deltas through the response guardrails.
    async fn on_provider_event(&mut self, text: &str) -> Step {
        let Ok(v) = crate::guard::text::parse_unique(text.as_bytes()) else {
            // What no guardrail can read (not JSON, a key twice, nested past the parser's
            // limit, a lone surrogate) does not reach the caller past one that must see
            // the text first; the caller's own parser might read it.
            let holding =
                guard::fails_closed(&self.output_guards).or_else(|| self.out_window.as_ref().and_then(|w| w.holding()));
            return match holding {
                Some(g) => Step::End(Ending::error(
                    GwError::ContentFilter {
                        guardrail: g.name.to_string(),
                        response: true,
                    },
                    CloseCode::Policy,
                    "blocked by a guardrail",
                )),
                None => Step::Go,
            };
        };
        let kind = v["type"].as_str().unwrap_or_default();
        if kind == "response.done" {
            self.transcripts.clear();
            self.charge(&v["response"]["usage"]).await;
            return Step::Go;
        }
        if self.output_guards.is_empty() {
            return Step::Go;
        }
        let Some((item, piece)) = output_text(kind, &v) else {
            return Step::Go;
        };
        // The item's recent text is scanned, not the piece alone, so a word split over
        // deltas is seen; what was sent cannot be taken back, so a match that would mask
        // ends the session like a block. The window bounds memory and rescanning.
        if self.transcripts.len() >= MAX_ITEMS && !self.transcripts.contains_key(&item) {
            // Item ids are the provider's: their number is bounded, not their words.
            if let Some(k) = self.transcripts.keys().next().cloned() {
                self.transcripts.remove(&k);
            }
        }
        let so_far = self.transcripts.entry(item).or_default();
        so_far.push_str(piece);
        if so_far.len() > SCAN_WINDOW {
            let mut cut = so_far.len() - SCAN_WINDOW;
            while !so_far.is_char_boundary(cut) {
                cut += 1;
            }
            so_far.drain(..cut);
        }
        match guard::check_delivered(&self.output_guards, so_far, &mut self.hits) {
            Ok(()) => Step::Go,
            Err(name) => Step::End(Ending::error(
                GwError::ContentFilter {
                    guardrail: name.to_string(),
                    response: true,
                },
                CloseCode::Policy,
                "blocked by a guardrail",
            )),
        }
    }

    /// A provider's event through the response-stage guardrail services
    /// (`guard::service::TextWindow`): returns the messages that may go to the caller now.
    /// Under a service that blocks, a text-bearing delta and everything after it wait
    /// until their window is judged (full, the text's `.done` event, `response.done`, or
    /// 1 MiB held); under monitors only, nothing waits.
    async fn judge_output(&mut self, t: Utf8Bytes) -> Result<Vec<Message>, Ending> {
        let Some(window) = self.out_window.as_mut() else {
            return Ok(vec![Message::Text(t)]);
        };
        let v: Option<Value> = serde_json::from_str(t.as_str()).ok();
        let kind = v.as_ref().and_then(|v| v["type"].as_str()).unwrap_or_default();
        // Each output item's text on its own: items of a response never interleave. Any
        // delta's string is text (tool and MCP call arguments too); a finished item that
        // is not a message (an MCP call with its server's output) is read whole.
        let piece = v.as_ref().and_then(|v| output_text(kind, v));
        if let Some((item, p)) = &piece {
            window.push(item, p);
        }
        let mut whole = false;
        if kind == "response.output_item.done" {
            if let Some(mut item) = v.as_ref().map(|v| v["item"].clone()) {
                if item["type"] != "message" {
                    // Each string of it on its own: fields never run into each other.
                    crate::guard::text::part_texts(&mut item, &mut |s: &mut String| {
                        window.push_whole(s);
                        whole = true;
                        crate::guard::text::Edit::Keep
                    });
                }
            }
        }
        let ends = kind.ends_with(".done") || kind.ends_with(".completed");
        let about = guard::service::About {
            model: &self.alias,
            owner: &self.owner,
            request_id: &self.request_id,
        };
        if !window.holds() {
            if window.full() || ends {
                let _ = window.judge(about, &mut self.hits).await;
            }
            return Ok(vec![Message::Text(t)]);
        }
        // Output (a delta of any kind: text, audio, arguments) and everything after it
        // waits for a verdict: audio goes out only once its transcript's window is judged.
        if self.held_out.is_empty() && piece.is_none() && !whole && !kind.ends_with(".delta") {
            return Ok(vec![Message::Text(t)]);
        }
        self.held_bytes += t.len();
        self.held_out.push(Message::Text(t));
        if !(window.full() || ends || self.held_bytes >= MAX_HELD_OUT) {
            return Ok(Vec::new());
        }
        let blocked =
            |stop: guard::service::Stop| Ending::error(stop.error(true), CloseCode::Policy, "blocked by a guardrail");
        let masked = window.judge(about, &mut self.hits).await.map_err(blocked)?;
        if let (Some(_), Some(g)) = (masked, window.masking()) {
            // Sessions under a masking service are refused when they open; one that got
            // here stops rather than pass the text unmasked.
            return Err(blocked(guard::service::Stop::Blocked(g.name.clone())));
        }
        self.held_bytes = 0;
        Ok(std::mem::take(&mut self.held_out))
    }

    /// One response's usage, charged now: token rules and the budget.
    async fn charge(&mut self, usage: &Value) {
        let u = Usage::from_json(usage);
        self.usage.get_or_insert_with(Usage::default).add(&u);
        if let Some(q) = self.quota {
            self.state
                .limiter
                .charge(q, u.input_tokens.saturating_add(u.output_tokens))
                .await;
        }
        if let Some(l) = self.ctx_limits {
            self.state
                .limiter
                .charge(l, u.input_tokens.saturating_add(u.output_tokens))
                .await;
        }
        if let (Some(b), Some(p)) = (self.budget, &self.pricing) {
            self.state.budgets.charge(b, u.cost_usd(p)).await;
        }
    }
}

/// One side's close frame, passed to the other (its code and reason kept); both closing
/// handshakes are then completed.
async fn pass_close<A, B>(frame: Option<CloseFrame>, to: &mut WebSocketStream<A>, from: &mut WebSocketStream<B>)
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let _ = tokio::time::timeout(CLOSE_WAIT, to.close(frame)).await;
    drain(to).await;
    drain(from).await;
}

/// Reads what is left of a closing socket, so its closing handshake completes, for at
/// most [`CLOSE_WAIT`].
async fn drain<S>(ws: &mut WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let _ = tokio::time::timeout(CLOSE_WAIT, async { while let Some(Ok(_)) = ws.next().await {} }).await;
}

/// The texts of a caller's event the model will read: a conversation item's text parts,
/// tool call arguments and tool output (`conversation.item.create`, and the items of a
/// `response.create`'s own `input`), and instructions (`session.update`, and a
/// `response.create`'s own). Audio (`input_audio` parts, `input_audio_buffer.append`) is
/// bytes no guardrail reads.
fn caller_texts(v: &mut Value) -> Vec<&mut String> {
    let mut out = Vec::new();
    let kind = v["type"].as_str().unwrap_or_default().to_owned();
    let Some(obj) = v.as_object_mut() else {
        return out;
    };
    for (key, field) in obj.iter_mut() {
        match (kind.as_str(), key.as_str()) {
            ("conversation.item.create", "item") => item_texts(field, &mut out),
            ("session.update" | "response.create", "session" | "response") => {
                for (k, f) in field.as_object_mut().into_iter().flatten() {
                    match (k.as_str(), f) {
                        ("instructions", Value::String(s)) => out.push(s),
                        ("input", Value::Array(items)) => items.iter_mut().for_each(|i| item_texts(i, &mut out)),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// The texts of one conversation item: text parts (and a transcript given with audio),
/// a function call's arguments, a function call's output.
fn item_texts<'v>(item: &'v mut Value, out: &mut Vec<&'v mut String>) {
    for (k, f) in item.as_object_mut().into_iter().flatten() {
        match (k.as_str(), f) {
            ("output" | "arguments", Value::String(s)) => out.push(s),
            ("content", Value::Array(parts)) => {
                for part in parts.iter_mut().filter_map(Value::as_object_mut) {
                    for (pk, pv) in part.iter_mut() {
                        if let ("text" | "transcript", Value::String(s)) = (pk.as_str(), pv) {
                            out.push(s);
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

/// A provider's streamed text: the item it belongs to and the piece, for the text,
/// transcript and tool call argument deltas of both the beta and the GA event names, and
/// any other delta whose `delta` is a string (MCP call arguments, kinds added later:
/// audio deltas carry theirs as base64 under other names). (The `*.done` events and
/// `response.done` repeat what the deltas carried, all of it already scanned.)
fn output_text<'v>(kind: &str, v: &'v Value) -> Option<(String, &'v str)> {
    let field = match kind {
        "response.text.delta" | "response.output_text.delta" => "delta",
        "response.function_call_arguments.delta" => "delta",
        "response.audio_transcript.delta" | "response.output_audio_transcript.delta" => "delta",
        "conversation.item.input_audio_transcription.delta" => "delta",
        "conversation.item.input_audio_transcription.completed" => "transcript",
        k if k.ends_with(".delta") && !k.contains("audio.") && v["delta"].is_string() => "delta",
        _ => return None,
    };
    let piece = v[field].as_str()?;
    let item = format!(
        "{}:{}:{}",
        v["item_id"].as_str().unwrap_or_default(),
        v["content_index"].as_u64().unwrap_or_default(),
        kind.contains("input_audio")
    );
    Some((item, piece))
}
