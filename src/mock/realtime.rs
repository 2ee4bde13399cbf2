//! OpenAI's Realtime API, as the mock serves it: `GET /v1/realtime?model=` (Azure:
//! `/openai/realtime?deployment=`) upgraded to a WebSocket. It sends `session.created`,
//! acknowledges `session.update` and `conversation.item.create`, and answers each
//! `response.create` with the last item's text (or `say=`'s) as text deltas, one per
//! word (`response.text.delta` for a client of the beta protocol, `OpenAI-Beta:
//! realtime=v1`; `response.output_text.delta` for the GA's), then `response.done` with
//! usage in the Realtime API's shape.
//!
//! Scripted by the model id's directives ([`Script`]): `drop_after=N` cuts the TCP
//! connection without a close frame after N events sent; `say=TEXT` is the reply text
//! (`+` for spaces, `|` to split a word over two deltas); `chunk_delay_ms` paces the
//! deltas; `bad_json` sends, first, a delta of the reply that serde_json cannot read (a
//! lone surrogate). `/_mock/stats` counts the
//! sessions that ended with a close frame from the client (`realtime_closed`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::{bytes_response, Body, Script};

/// Whether a request is the Realtime API's upgrade.
pub fn is_realtime(req: &Request<Incoming>) -> bool {
    req.uri().path().ends_with("/realtime") && req.headers().contains_key(http::header::UPGRADE)
}

/// Answers the upgrade (101) and runs the session in a task. `authorized`: the mock's
/// key was presented; otherwise a 401 as OpenAI answers one.
pub fn answer(mut req: Request<Incoming>, authorized: bool, closed: Arc<AtomicU64>) -> Response<Body> {
    if !authorized {
        return super::error(401, "Incorrect API key provided.", None);
    }
    let Some(key) = req.headers().get(http::header::SEC_WEBSOCKET_KEY).cloned() else {
        return super::error(400, "not a WebSocket upgrade", None);
    };
    let query = req.uri().query().unwrap_or_default().to_owned();
    let model = form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "model" || k == "deployment")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    let script = Script::parse(&model);
    // OpenAI names its events by the protocol the client opted into: the beta's
    // (`OpenAI-Beta: realtime=v1`) or the GA's.
    let beta = req
        .headers()
        .get("openai-beta")
        .is_some_and(|v| v.as_bytes().starts_with(b"realtime"));
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(io) = upgrade.await else {
            return;
        };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(io), Role::Server, None).await;
        session(ws, &model, &script, beta, &closed).await;
    });
    let mut r = bytes_response(StatusCode::SWITCHING_PROTOCOLS, "text/plain", bytes::Bytes::new());
    r.headers_mut().remove(http::header::CONTENT_TYPE);
    let h = r.headers_mut();
    h.insert(http::header::UPGRADE, http::HeaderValue::from_static("websocket"));
    h.insert(http::header::CONNECTION, http::HeaderValue::from_static("Upgrade"));
    if let Ok(v) = http::HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        h.insert(http::header::SEC_WEBSOCKET_ACCEPT, v);
    }
    r
}

/// One session: events in, events out, until the client closes or the script drops it.
async fn session<S>(mut ws: WebSocketStream<S>, model: &str, script: &Script, beta: bool, closed: &AtomicU64)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut sent = 0usize;
    let mut last_text = String::new();
    let mut ids = 0u64;
    let mut id = |prefix: &str| {
        ids += 1;
        format!("{prefix}_mock{ids}")
    };
    // `false`: the script drops the connection now.
    macro_rules! emit {
        ($v:expr) => {{
            if script.drop_after.is_some_and(|n| sent >= n) {
                return;
            }
            sent += 1;
            if ws.send(Message::text($v.to_string())).await.is_err() {
                return;
            }
        }};
    }
    emit!(json!({"type": "session.created", "event_id": id("event"),
        "session": {"id": id("sess"), "object": "realtime.session", "model": model, "modalities": ["text", "audio"]}}));
    while let Some(m) = ws.next().await {
        let text = match m {
            Ok(Message::Text(t)) => t,
            Ok(Message::Close(_)) => {
                closed.fetch_add(1, Ordering::Relaxed);
                // The protocol has queued the close reply; flush it.
                while let Some(Ok(_)) = ws.next().await {}
                return;
            }
            Ok(_) => continue,
            Err(_) => return,
        };
        let Ok(v) = serde_json::from_str::<Value>(text.as_str()) else {
            emit!(json!({"type": "error", "event_id": id("event"),
                "error": {"type": "invalid_request_error", "code": "invalid_json", "message": "not JSON"}}));
            continue;
        };
        match v["type"].as_str().unwrap_or_default() {
            "session.update" => {
                emit!(json!({"type": "session.updated", "event_id": id("event"), "session": v["session"]}));
            }
            "conversation.item.create" => {
                let parts = v["item"]["content"].as_array().cloned().unwrap_or_default();
                last_text = parts
                    .iter()
                    .filter_map(|p| p["text"].as_str())
                    .collect::<Vec<_>>()
                    .join(" ");
                let mut item = v["item"].clone();
                item["id"] = Value::from(id("item"));
                emit!(json!({"type": "conversation.item.created", "event_id": id("event"), "item": item}));
            }
            "input_audio_buffer.append" => {}
            "response.create" => {
                let reply = match &script.say {
                    Some(s) => s.clone(),
                    None if last_text.is_empty() => "Hello from the mock".to_owned(),
                    None => last_text.clone(),
                };
                let (response, item) = (id("resp"), id("item"));
                let (delta, done) = match beta {
                    true => ("response.text.delta", "response.text.done"),
                    false => ("response.output_text.delta", "response.output_text.done"),
                };
                emit!(json!({"type": "response.created", "event_id": id("event"),
                    "response": {"id": response, "object": "realtime.response", "status": "in_progress", "output": []}}));
                if script.bad_json {
                    // A delta a lenient client parses (a lone surrogate) and serde_json
                    // refuses.
                    let raw = format!(
                        r#"{{"type":"{delta}","response_id":"{response}","item_id":"{item}","output_index":0,"content_index":0,"delta":"{reply} \ud83d"}}"#
                    );
                    if ws.send(Message::text(raw)).await.is_err() {
                        return;
                    }
                }
                // One delta per word; `|` splits a word over two deltas.
                let words: Vec<&str> = reply.split_inclusive([' ', '|']).collect();
                let words: Vec<&str> = words.iter().map(|w| w.trim_end_matches('|')).collect();
                let reply = reply.replace('|', "");
                for w in &words {
                    if script.chunk_delay_ms > 0 {
                        tokio::time::sleep(Duration::from_millis(script.chunk_delay_ms)).await;
                    }
                    emit!(json!({"type": delta, "event_id": id("event"), "response_id": response,
                        "item_id": item, "output_index": 0, "content_index": 0, "delta": w}));
                }
                emit!(json!({"type": done, "event_id": id("event"), "response_id": response,
                    "item_id": item, "output_index": 0, "content_index": 0, "text": reply}));
                let input = last_text.split_whitespace().count().max(1) as u64;
                let output = words.len().max(1) as u64;
                emit!(json!({"type": "response.done", "event_id": id("event"), "response": {
                    "id": response, "object": "realtime.response", "status": "completed",
                    "output": [{"id": item, "type": "message", "role": "assistant",
                        "content": [{"type": "text", "text": reply}]}],
                    "usage": {"total_tokens": input + output, "input_tokens": input, "output_tokens": output,
                        "input_token_details": {"cached_tokens": 0, "text_tokens": input, "audio_tokens": 0},
                        "output_token_details": {"text_tokens": output, "audio_tokens": 0}}}}));
            }
            other => {
                emit!(
                    json!({"type": "error", "event_id": id("event"), "error": {"type": "invalid_request_error",
                    "code": "unknown_event", "message": format!("The mock does not serve '{other}'.")}})
                );
            }
        }
    }
}
