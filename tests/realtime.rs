//! Realtime sessions end to end (`GET /v1/realtime?model=`, WebSocket), on a real
//! listener and the mock's realtime socket: text relayed both ways, usage charged as
//! each response is done, auth by header and by the browser's key subprotocol (never
//! echoed nor forwarded), the allowlist, the concurrency slot held for the session's
//! life, guardrails on input and streamed output, the idle timeout, the message size
//! bound, a provider that drops, and hostile frames.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const CONFIG: &str = r#"
{SERVER}
  admin_keys: [{key: adm-rt}]
  realtime: {idle_timeout_s: IDLE, max_session_s: 60, max_message_bytes: 4096}
provider_keys:
  - {name: oa, provider: openai, base_url: "{MOCK}/v1", api_key: "{PROVIDER_KEY}"}
  - {name: az, provider: azure, base_url: "{MOCK}", api_key: "{PROVIDER_KEY}", api_version: "2025-04-01-preview"}
  - {name: an, provider: anthropic, base_url: "{MOCK}", api_key: "{PROVIDER_KEY}"}
rate_limits:
  - {name: one-at-once, concurrency: 1}
budgets:
  - {name: rt-budget, usd: 1000, period: day}
guardrails:
  - {name: no-falcon, rules: [{kind: keyword, words: [falcon]}]}
  - {name: pii-in, pack: filters/pii.yaml, stage: request, action: mask}
  - {name: hook-in, service: {kind: webhook, url: "{MOCK}/guard/check"}, stage: request, action: mask}
  - {name: hook-block, service: {kind: webhook, url: "{MOCK}/guard/check"}, stage: request, action: block}
  - {name: hook-out, service: {kind: webhook, url: "{MOCK}/guard/check", window_chars: 10}, stage: response, action: block}
  - {name: hook-out-mask, service: {kind: webhook, url: "{MOCK}/guard/check"}, stage: response, action: mask}
  - {name: hook-watch, service: {kind: webhook, url: "{MOCK}/guard/check"}, stage: response, action: monitor}
models:
  - {name: rt, provider_key: oa, model: gpt-realtime, guardrails: [no-falcon, pii-in],
     pricing: {input_per_mtok: 1000000, output_per_mtok: 2000000}}
  - {name: rt-says, provider_key: oa, model: "gpt-realtime?say=the+fal|con+flies", guardrails: [no-falcon]}
  - {name: rt-drop, provider_key: oa, model: "gpt-realtime?drop_after=1"}
  - {name: rt-az, provider_key: az, model: rt-deploy}
  - {name: claude, provider_key: an, model: c}
  - {name: forbidden, provider_key: oa, model: gpt-realtime}
  - {name: rt-hook, provider_key: oa, model: gpt-realtime, guardrails: [hook-in]}
  - {name: rt-hook-block, provider_key: oa, model: gpt-realtime, guardrails: [hook-block]}
  - {name: rt-hook-out, provider_key: oa, model: "gpt-realtime?say=the+birds+fly+south+in+winter", guardrails: [hook-out]}
  - {name: rt-hook-out-says, provider_key: oa, model: "gpt-realtime?say=a+forbid|den+plan", guardrails: [hook-out]}
  - {name: rt-hook-out-mask, provider_key: oa, model: gpt-realtime, guardrails: [hook-out-mask]}
  - {name: rt-bad, provider_key: oa, model: "gpt-realtime?say=the+falcon+flies&bad_json", guardrails: [no-falcon]}
  # Drops after the answer's three deltas, before its `.done`.
  - {name: rt-hook-watch, provider_key: oa, model: "gpt-realtime?say=a+forbidden+plan&drop_after=5", guardrails: [hook-watch]}
api_keys:
  - {name: main, key: "{CALLER_KEY}", owner: team-a, budget: rt-budget,
     models: [rt, rt-says, rt-drop, rt-az, claude, rt-hook, rt-hook-block, rt-hook-out, rt-hook-out-says,
              rt-hook-out-mask, rt-hook-watch, rt-bad]}
  - {name: conc, key: sk-conc, owner: team-c, rate_limit: one-at-once}
"#;

fn start(mock: &Mock) -> Gateway {
    Gateway::start(&CONFIG.replace("IDLE", "30"), mock)
}

enum Auth<'a> {
    Header(&'a str),
    Subprotocol(&'a str),
}

async fn open(gw: &Gateway, model: &str, auth: Auth<'_>) -> Result<(Ws, http::Response<Option<Vec<u8>>>), WsError> {
    let url = format!("{}/v1/realtime?model={model}", gw.url().replace("http://", "ws://"));
    let mut req = url.into_client_request().unwrap();
    let h = req.headers_mut();
    // The beta protocol's opt-in, which the gateway passes on: its event names.
    h.insert("openai-beta", "realtime=v1".parse().unwrap());
    match auth {
        Auth::Header(k) => {
            h.insert("authorization", format!("Bearer {k}").parse().unwrap());
        }
        Auth::Subprotocol(k) => {
            h.insert(
                "sec-websocket-protocol",
                format!("realtime, openai-insecure-api-key.{k}").parse().unwrap(),
            );
        }
    }
    tokio_tungstenite::connect_async(req).await
}

async fn session(gw: &Gateway, model: &str) -> Ws {
    let (mut ws, _) = open(gw, model, Auth::Header(CALLER_KEY)).await.unwrap();
    assert_eq!(event(&mut ws).await["type"], "session.created");
    ws
}

/// The next message: an event, or the close frame as `{"close": code, "reason": ...}`.
async fn event(ws: &mut Ws) -> Value {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("no event within 10 s");
        match m {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(t.as_str()).unwrap(),
            Some(Ok(Message::Close(f))) => {
                return match f {
                    Some(f) => json!({"close": u16::from(f.code), "reason": f.reason.as_str()}),
                    None => json!({"close": null}),
                }
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return json!({"broken": e.to_string()}),
            None => return json!({"ended": true}),
        }
    }
}

async fn say(ws: &mut Ws, text: &str) {
    let item = json!({"type": "conversation.item.create",
        "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}});
    ws.send(Message::text(item.to_string())).await.unwrap();
}

async fn ask(ws: &mut Ws) {
    ws.send(Message::text(json!({"type": "response.create"}).to_string()))
        .await
        .unwrap();
}

/// Events up to and including `response.done` (or an error / the close).
async fn response(ws: &mut Ws) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        let e = event(ws).await;
        let end = e["type"] == "response.done" || e["type"] == "error" || e.get("type").is_none();
        out.push(e);
        if end {
            return out;
        }
    }
}

fn deltas(events: &[Value]) -> String {
    events
        .iter()
        .filter(|e| e["type"] == "response.text.delta")
        .map(|e| e["delta"].as_str().unwrap())
        .collect()
}

async fn realtime_closed(mock: &Mock) -> u64 {
    mock.stats()["realtime_closed"].as_u64().unwrap()
}

#[tokio::test]
async fn a_text_session_is_relayed_both_ways_and_charged_as_each_response_is_done() {
    let mock = Mock::start();
    let gw = start(&mock);
    let mut ws = session(&gw, "rt").await;

    say(&mut ws, "hello there world").await;
    assert_eq!(event(&mut ws).await["type"], "conversation.item.created");
    ask(&mut ws).await;
    let events = response(&mut ws).await;
    assert_eq!(deltas(&events), "hello there world");
    let done = events.last().unwrap();
    assert_eq!(done["type"], "response.done");
    assert_eq!(done["response"]["usage"]["input_tokens"], 3);
    // Charged now, while the session is still open: 3 input tokens at $1, 3 output at $2.
    let charged = wait_until_async(|| async { spend_of(&gw, "adm-rt", "team-a").await["spent_usd"] == 9.0 }).await;
    assert!(charged, "{}", spend_of(&gw, "adm-rt", "team-a").await);

    // A second response in the same session is charged on top.
    say(&mut ws, "again").await;
    event(&mut ws).await;
    ask(&mut ws).await;
    assert_eq!(deltas(&response(&mut ws).await), "again");
    let charged = wait_until_async(|| async { spend_of(&gw, "adm-rt", "team-a").await["spent_usd"] == 12.0 }).await;
    assert!(charged, "{}", spend_of(&gw, "adm-rt", "team-a").await);

    // The provider got its own credential and the upstream model; not the caller's key.
    let up = mock.last_request();
    assert_eq!(up["method"], "GET");
    assert_eq!(up["path"], "/v1/realtime?model=gpt-realtime");
    assert_eq!(up["headers"]["authorization"], format!("Bearer {PROVIDER_KEY}"));
    assert_eq!(up["headers"]["openai-beta"], "realtime=v1");
    assert!(!up.to_string().contains(CALLER_KEY), "{up}");

    // The caller's close frame reaches the provider, and the closing handshake completes.
    ws.close(None).await.unwrap();
    let reply = event(&mut ws).await;
    assert!(reply.get("close").is_some(), "{reply}");
    assert!(wait_until_async(|| async { realtime_closed(&mock).await == 1 }).await);

    // One access log line for the session, with the whole usage; tokens in the metrics.
    let lines = gw.access_lines_until(1, |l| l.contains("/v1/realtime"));
    let line = lines.iter().find(|l| l.contains("/v1/realtime")).unwrap();
    assert!(line.contains("101"), "{line}");
    assert!(!line.contains(CALLER_KEY));
    let input = wait_until_async(|| async {
        metric(&gw, "aigw_tokens_total{model=\"rt\",owner=\"team-a\",type=\"input\"}").await == 4.0
    })
    .await;
    assert!(input, "{}", metrics_text(&gw).await);
}

#[tokio::test]
async fn the_key_subprotocol_authenticates_and_is_never_echoed_nor_forwarded() {
    let mock = Mock::start();
    let gw = start(&mock);
    let (mut ws, resp) = open(&gw, "rt", Auth::Subprotocol(CALLER_KEY)).await.unwrap();
    // Only `realtime` is echoed: a key in the answer would be a key in every proxy's log.
    assert_eq!(resp.headers()["sec-websocket-protocol"], "realtime");
    assert!(!format!("{:?}", resp.headers()).contains(CALLER_KEY));
    assert_eq!(event(&mut ws).await["type"], "session.created");
    say(&mut ws, "hi").await;
    event(&mut ws).await;
    ask(&mut ws).await;
    assert_eq!(deltas(&response(&mut ws).await), "hi");
    let up = mock.last_request();
    assert!(!up.to_string().contains(CALLER_KEY), "{up}");
    assert!(up["headers"].get("sec-websocket-protocol").is_none(), "{up}");
    ws.close(None).await.unwrap();
    let lines = gw.access_lines_until(1, |l| l.contains("/v1/realtime"));
    assert!(!lines.join("\n").contains(CALLER_KEY));
    assert!(!gw.log_text().contains(CALLER_KEY));
}

/// The HTTP status of a refused upgrade.
async fn refused(gw: &Gateway, model: &str, auth: Auth<'_>) -> u16 {
    match open(gw, model, auth).await {
        Err(WsError::Http(r)) => r.status().as_u16(),
        Ok(_) => panic!("{model}: the upgrade was accepted"),
        Err(e) => panic!("{model}: {e}"),
    }
}

#[tokio::test]
async fn refusals_come_before_the_upgrade_and_before_any_upstream_call() {
    let mock = Mock::start();
    let gw = start(&mock);
    let before = mock.requests().len();
    assert_eq!(refused(&gw, "rt", Auth::Header("sk-wrong")).await, 401);
    assert_eq!(refused(&gw, "rt", Auth::Subprotocol("sk-wrong")).await, 401);
    assert_eq!(refused(&gw, "forbidden", Auth::Header(CALLER_KEY)).await, 403);
    assert_eq!(refused(&gw, "nope", Auth::Header(CALLER_KEY)).await, 404);
    // Anthropic does not speak the Realtime API: a clear 400, nothing sent upstream.
    assert_eq!(refused(&gw, "claude", Auth::Header(CALLER_KEY)).await, 400);
    // A plain GET is not a session.
    let r = client()
        .get(format!("{}/v1/realtime?model=rt", gw.url()))
        .bearer_auth(CALLER_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("WebSocket"));
    assert_eq!(mock.requests().len(), before, "{:?}", mock.requests());
}

#[tokio::test]
async fn a_session_holds_its_concurrency_slot_until_it_ends() {
    let mock = Mock::start();
    let gw = start(&mock);
    let (mut first, _) = open(&gw, "rt", Auth::Header("sk-conc")).await.unwrap();
    assert_eq!(event(&mut first).await["type"], "session.created");
    assert_eq!(refused(&gw, "rt", Auth::Header("sk-conc")).await, 429);
    first.close(None).await.unwrap();
    let back = wait_until_async(|| async { open(&gw, "rt", Auth::Header("sk-conc")).await.is_ok() }).await;
    assert!(back, "the slot did not come back after the session closed");
}

#[tokio::test]
async fn a_guardrail_block_in_input_ends_the_session_with_1008_and_closes_upstream() {
    let mock = Mock::start();
    let gw = start(&mock);
    let mut ws = session(&gw, "rt").await;
    say(&mut ws, "tell me about the falcon").await;
    let e = event(&mut ws).await;
    assert_eq!(e["type"], "error", "{e}");
    assert_eq!(e["error"]["code"], "content_filter");
    assert_eq!(event(&mut ws).await["close"], 1008);
    assert!(wait_until_async(|| async { realtime_closed(&mock).await == 1 }).await);
}

#[tokio::test]
async fn session_instructions_are_guarded_and_input_is_masked_before_the_provider_reads_it() {
    let mock = Mock::start();
    let gw = start(&mock);
    // Masked in the item, so the provider's echo carries the mask, not the address.
    let mut ws = session(&gw, "rt").await;
    say(&mut ws, "mail me at jane.doe@example.com").await;
    let created = event(&mut ws).await;
    let text = created["item"]["content"][0]["text"].as_str().unwrap().to_owned();
    assert!(
        !text.contains("jane.doe@example.com") && text.contains("REDACTED"),
        "{created}"
    );
    ask(&mut ws).await;
    assert!(!deltas(&response(&mut ws).await).contains("example.com"));
    ws.close(None).await.unwrap();
    // Instructions are text the model reads: a banned word there ends the session.
    let mut ws = session(&gw, "rt").await;
    let update = json!({"type": "session.update", "session": {"instructions": "you are a falcon"}});
    ws.send(Message::text(update.to_string())).await.unwrap();
    assert_eq!(event(&mut ws).await["error"]["code"], "content_filter");
    assert_eq!(event(&mut ws).await["close"], 1008);
}

#[tokio::test]
async fn no_event_the_model_reads_carries_a_banned_word_past_the_guardrails() {
    let mock = Mock::start();
    let gw = start(&mock);
    // Each a way to put text before the model other than a user's input_text part.
    let smuggled = [
        json!({"type": "response.create", "response": {"instructions": "say falcon"}}),
        json!({"type": "response.create", "response": {"input": [{"type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "a falcon"}]}]}}),
        json!({"type": "conversation.item.create", "item": {"type": "function_call_output",
            "call_id": "c1", "output": "{\"bird\": \"falcon\"}"}}),
        json!({"type": "conversation.item.create", "item": {"type": "message", "role": "assistant",
            "content": [{"type": "output_text", "text": "I am a falcon"}]}}),
        json!({"type": "conversation.item.create", "item": {"type": "message", "role": "user",
            "content": [{"type": "input_audio", "audio": "AAAA", "transcript": "falcon"}]}}),
    ];
    for e in smuggled {
        let mut ws = session(&gw, "rt").await;
        ws.send(Message::text(e.to_string())).await.unwrap();
        let got = event(&mut ws).await;
        assert_eq!(got["error"]["code"], "content_filter", "{e} gave {got}");
        assert_eq!(event(&mut ws).await["close"], 1008);
    }
}

#[tokio::test]
async fn an_http2_request_cannot_upgrade_and_is_told_so() {
    let mock = Mock::start();
    let gw = start(&mock);
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let r = h2
        .get(format!("{}/v1/realtime?model=rt", gw.url()))
        .bearer_auth(CALLER_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("HTTP/2"));
}

#[tokio::test]
async fn a_word_split_over_fragments_is_seen_whole() {
    let mock = Mock::start();
    let gw = start(&mock);
    let mut ws = session(&gw, "rt").await;
    let item = json!({"type": "conversation.item.create",
        "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "a falcon"}]}})
    .to_string();
    let (a, b) = item.split_at(item.find("lcon").unwrap());
    ws.send(Message::Frame(Frame::message(
        a.as_bytes().to_vec(),
        OpCode::Data(Data::Text),
        false,
    )))
    .await
    .unwrap();
    ws.send(Message::Frame(Frame::message(
        b.as_bytes().to_vec(),
        OpCode::Data(Data::Continue),
        true,
    )))
    .await
    .unwrap();
    assert_eq!(event(&mut ws).await["error"]["code"], "content_filter");
    assert_eq!(event(&mut ws).await["close"], 1008);
}

#[tokio::test]
async fn a_banned_word_streamed_over_deltas_ends_the_session_before_it_is_complete() {
    let mock = Mock::start();
    let gw = start(&mock);
    let mut ws = session(&gw, "rt-says").await;
    say(&mut ws, "anything").await;
    event(&mut ws).await;
    ask(&mut ws).await;
    let events = response(&mut ws).await;
    // "the fal|con flies": "falcon" is split over two deltas; the first arrives, the
    // one that completes the word never does.
    assert_eq!(deltas(&events), "the fal");
    let e = events.last().unwrap();
    assert_eq!(e["error"]["code"], "content_filter", "{events:?}");
    assert_eq!(event(&mut ws).await["close"], 1008);
    assert!(wait_until_async(|| async { realtime_closed(&mock).await == 1 }).await);
}

#[tokio::test]
async fn an_idle_session_is_closed() {
    let mock = Mock::start();
    let gw = Gateway::start(&CONFIG.replace("IDLE", "1"), &mock);
    let mut ws = session(&gw, "rt").await;
    // Pings keep no session alive.
    ws.send(Message::Ping(vec![1].into())).await.unwrap();
    let e = event(&mut ws).await;
    assert_eq!(e["type"], "error", "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("idle"));
    let close = event(&mut ws).await;
    assert_eq!(close["close"], 1000);
    assert_eq!(close["reason"], "idle timeout");
    assert!(wait_until_async(|| async { realtime_closed(&mock).await == 1 }).await);
}

#[tokio::test]
async fn a_busy_session_still_ends_at_its_time_limit() {
    let mock = Mock::start();
    let config = CONFIG
        .replace("IDLE", "30")
        .replace("max_session_s: 60", "max_session_s: 1");
    let gw = Gateway::start(&config, &mock);
    let mut ws = session(&gw, "rt").await;
    // Activity does not extend it: events keep flowing until the limit cuts in.
    let close = loop {
        say(&mut ws, "busy").await;
        let e = event(&mut ws).await;
        if e["type"] == "error" {
            assert!(e["error"]["message"].as_str().unwrap().contains("longest"), "{e}");
            break event(&mut ws).await;
        }
        assert_eq!(e["type"], "conversation.item.created");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(close["reason"], "session time limit");
}

#[tokio::test]
async fn a_message_over_the_bound_closes_the_session_with_1009() {
    let mock = Mock::start();
    let gw = start(&mock);
    let mut ws = session(&gw, "rt").await;
    say(&mut ws, &"x".repeat(8000)).await;
    let e = event(&mut ws).await;
    assert_eq!(e["error"]["code"], "request_too_large", "{e}");
    assert_eq!(event(&mut ws).await["close"], 1009);
}

#[tokio::test]
async fn a_binary_message_is_refused_with_1003() {
    let mock = Mock::start();
    let gw = start(&mock);
    let mut ws = session(&gw, "rt").await;
    ws.send(Message::Binary(vec![0u8; 16].into())).await.unwrap();
    assert_eq!(event(&mut ws).await["type"], "error");
    assert_eq!(event(&mut ws).await["close"], 1003);
}

#[tokio::test]
async fn a_ping_flood_costs_nothing_and_the_session_goes_on() {
    let mock = Mock::start();
    let gw = start(&mock);
    let mut ws = session(&gw, "rt").await;
    for i in 0..2000u32 {
        ws.feed(Message::Ping(i.to_be_bytes().to_vec().into())).await.unwrap();
    }
    ws.flush().await.unwrap();
    say(&mut ws, "still here").await;
    assert_eq!(event(&mut ws).await["type"], "conversation.item.created");
}

#[tokio::test]
async fn a_provider_that_drops_gives_the_caller_an_error_event_and_a_close() {
    let mock = Mock::start();
    let gw = start(&mock);
    let mut ws = session(&gw, "rt-drop").await;
    say(&mut ws, "hello").await;
    let e = event(&mut ws).await;
    assert_eq!(e["error"]["code"], "upstream_error", "{e}");
    assert_eq!(event(&mut ws).await["close"], 1011);
}

/// A provider message no guardrail can read (serde_json refuses a lone surrogate, which
/// a lenient client parses) ends the session under a guardrail that must see the text:
/// the caller never gets it.
#[tokio::test]
async fn a_message_the_guardrails_cannot_read_ends_the_session() {
    let mock = Mock::start();
    let gw = start(&mock);
    let mut ws = session(&gw, "rt-bad").await;
    ask(&mut ws).await;
    let events = response(&mut ws).await;
    let last = events.last().unwrap();
    assert_eq!(last["error"]["code"], "content_filter", "{events:?}");
    assert!(events.iter().all(|e| e.get("delta").is_none()), "{events:?}");
    assert_eq!(event(&mut ws).await["close"], 1008);
}

/// A monitoring service holds nothing back, so a session can end before its window is
/// due: the provider drops after the answer's deltas, before its `.done`. What the caller
/// got is still judged, for the record.
#[tokio::test]
async fn a_monitor_judges_what_a_session_left_unjudged() {
    let mock = Mock::start();
    let gw = start(&mock);
    let mut ws = session(&gw, "rt-hook-watch").await;
    ask(&mut ws).await;
    let events = response(&mut ws).await;
    assert_eq!(deltas(&events), "a forbidden plan", "{events:?}");
    assert_eq!(events.last().unwrap()["error"]["code"], "upstream_error", "{events:?}");
    assert_eq!(event(&mut ws).await["close"], 1011);
    drop(ws);
    let series = r#"aigw_guardrail_hits_total{action="monitor",guardrail="hook-watch"}"#;
    let mut hits = 0.0;
    for _ in 0..50 {
        hits = metric(&gw, series).await;
        if hits > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(hits, 1.0);
}

#[tokio::test]
async fn azure_deployments_are_reached_on_azure_realtime_path() {
    let mock = Mock::start();
    let gw = start(&mock);
    let mut ws = session(&gw, "rt-az").await;
    ws.close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    }))
    .await
    .unwrap();
    let up = mock.last_request();
    assert_eq!(
        up["path"],
        "/openai/realtime?api-version=2025-04-01-preview&deployment=rt-deploy"
    );
    assert_eq!(up["headers"]["api-key"], PROVIDER_KEY);
}

/// A provider behind a private CA, reached over `wss://`: trusted when the CA is in the
/// system's store (here `SSL_CERT_FILE`) on every path at once (the realtime socket,
/// chat through Pingora, the files API's client), and refused on each when it is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_to_a_provider_behind_a_private_ca_trusts_the_system_store_like_every_path() {
    let mock = Mock::start();
    let front = TlsFront::start(mock.addr).await;
    let config = format!(
        r#"
{{SERVER}}
provider_keys:
  - {{name: oa, provider: openai, base_url: "https://localhost:{}/v1", api_key: "{{PROVIDER_KEY}}"}}
models:
  - {{name: rt, provider_key: oa, model: gpt-realtime}}
api_keys:
  - {{name: main, key: "{{CALLER_KEY}}", owner: team-a}}
"#,
        front.port
    );
    let ca = front.ca_file.to_str().unwrap();
    let upload = |gw: &Gateway| {
        let url = format!("{}/v1/files", gw.url());
        async move {
            let form = reqwest::multipart::Form::new().text("purpose", "user_data").part(
                "file",
                reqwest::multipart::Part::bytes(b"data".to_vec()).file_name("a.txt"),
            );
            let r = client()
                .post(url)
                .bearer_auth(CALLER_KEY)
                .multipart(form)
                .send()
                .await
                .unwrap();
            r.status().as_u16()
        }
    };
    let chat = |gw: &Gateway| {
        let url = format!("{}/v1/chat/completions", gw.url());
        async move {
            let r = client()
                .post(url)
                .bearer_auth(CALLER_KEY)
                .json(&chat_body("rt"))
                .send()
                .await
                .unwrap();
            r.status().as_u16()
        }
    };

    let gw = Gateway::start_with(&config, &mock, &[("SSL_CERT_FILE", ca)]);
    let mut ws = session(&gw, "rt").await;
    say(&mut ws, "over tls").await;
    assert_eq!(event(&mut ws).await["type"], "conversation.item.created");
    ask(&mut ws).await;
    assert_eq!(deltas(&response(&mut ws).await), "over tls");
    ws.close(None).await.unwrap();
    assert_eq!(chat(&gw).await, 200, "{}", gw.log_text());
    assert_eq!(upload(&gw).await, 200);
    let reached = mock.requests().len();
    assert!(reached >= 3, "{:?}", mock.requests());

    // The same provider without its CA in the store: every path refuses it.
    let untrusting = Gateway::start(&config, &mock);
    assert_eq!(refused(&untrusting, "rt", Auth::Header(CALLER_KEY)).await, 502);
    assert_eq!(chat(&untrusting).await, 502);
    assert_eq!(upload(&untrusting).await, 502);
    assert_eq!(mock.requests().len(), reached, "nothing got past the handshake");
}

/// Guardrail services on a session: the caller's events are judged before the provider
/// reads them (masked or refused), the model's deltas before the caller gets them.
#[tokio::test]
async fn a_guardrail_service_judges_what_the_caller_sends() {
    let mock = Mock::start();
    let gw = start(&mock);
    let mut ws = session(&gw, "rt-hook").await;
    say(&mut ws, "my token is secret-abc123").await;
    let created = event(&mut ws).await;
    let text = created["item"]["content"][0]["text"].as_str().unwrap().to_owned();
    assert_eq!(text, "my token is [MASKED]", "{created}");
    ws.close(None).await.unwrap();

    let mut ws = session(&gw, "rt-hook-block").await;
    say(&mut ws, "a forbidden plan").await;
    let e = event(&mut ws).await;
    assert_eq!(e["error"]["code"], "content_filter", "{e}");
    assert_eq!(event(&mut ws).await["close"], 1008);

    // A service on the answers: deltas wait for their window's verdict. A clean answer
    // arrives whole; a word split over deltas is judged whole and never reaches the caller.
    let mut ws = session(&gw, "rt-hook-out").await;
    ask(&mut ws).await;
    assert_eq!(deltas(&response(&mut ws).await), "the birds fly south in winter");
    ws.close(None).await.unwrap();
    let mut ws = session(&gw, "rt-hook-out-says").await;
    ask(&mut ws).await;
    let events = response(&mut ws).await;
    let last = events.last().unwrap();
    assert_eq!(last["error"]["code"], "content_filter", "{events:?}");
    assert!(!deltas(&events).contains("forbid"), "{events:?}");
    assert_eq!(event(&mut ws).await["close"], 1008);
    // A service that masks answers cannot rewrite deltas: refused before the upgrade.
    assert_eq!(refused(&gw, "rt-hook-out-mask", Auth::Header(CALLER_KEY)).await, 400);
}
