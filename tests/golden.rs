//! Golden translation tests: every file in tests/golden/ is one case, so a new case is a
//! new file. `kind` picks the translation; streams are fed event by event (and again
//! split at every 7th byte) and compared as parsed events. A new case may be written with
//! `"expected": null` and filled once by `GOLDEN_BLESS=1 cargo nextest run --test golden`;
//! read what it wrote before committing it. Without the variable a null fails.
#![allow(clippy::unwrap_used)]

use aigw::api::{Dialect, Wire};
use aigw::provider::{self, anthropic, bedrock, gemini};
use aigw::stream::{Mode, SseState};
use bytes::Bytes;
use serde_json::Value;

const CREATED: i64 = 1_700_000_000;

/// The stream handling the gateway picks for this pair of formats (`provider::stream_mode`,
/// the table the proxy uses).
fn mode(kind: &str, options: &Value) -> Mode {
    let (wire, caller) = match kind {
        "anthropic_stream_to_chat" => (Wire::Anthropic, Dialect::OpenAi),
        "chat_stream_to_anthropic" => (Wire::OpenAi, Dialect::Anthropic),
        "gemini_stream_to_chat" => (Wire::Gemini, Dialect::OpenAi),
        "gemini_stream_to_anthropic" => (Wire::Gemini, Dialect::Anthropic),
        "converse_stream_to_chat" => (Wire::Converse, Dialect::OpenAi),
        "converse_stream_to_anthropic" => (Wire::Converse, Dialect::Anthropic),
        "chat_stream_to_gemini" => (Wire::OpenAi, Dialect::Gemini),
        "anthropic_stream_to_gemini" => (Wire::Anthropic, Dialect::Gemini),
        "gemini_stream_to_gemini" => (Wire::Gemini, Dialect::Gemini),
        "converse_stream_to_gemini" => (Wire::Converse, Dialect::Gemini),
        other => panic!("unknown stream kind {other}"),
    };
    let include_usage = options["include_usage"] == Value::Bool(true);
    provider::stream_mode(wire, caller, include_usage, false, "upstream-model", CREATED)
}

/// A Converse stream case lists its events as `{"<event type>": payload}` (or
/// `{"exception": {"type", "message"}}`); Bedrock sends each as an AWS event-stream frame.
fn converse_frames(events: &[Value]) -> Vec<Bytes> {
    use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
    events
        .iter()
        .map(|e| {
            let (name, payload) = e.as_object().unwrap().iter().next().unwrap();
            let headers = if name == "exception" {
                vec![
                    Header::new(":message-type", HeaderValue::String("exception".into())),
                    Header::new(
                        ":exception-type",
                        HeaderValue::String(payload["type"].as_str().unwrap().to_owned().into()),
                    ),
                ]
            } else {
                vec![
                    Header::new(":message-type", HeaderValue::String("event".into())),
                    Header::new(":event-type", HeaderValue::String(name.clone().into())),
                ]
            };
            let m = Message::new_from_parts(headers, Bytes::from(payload.to_string()));
            let mut out = Vec::new();
            aws_smithy_eventstream::frame::write_message_to(&m, &mut out).unwrap();
            Bytes::from(out)
        })
        .collect()
}

/// Converse names no completion: the gateway makes an id up, which a case cannot know.
fn generated_ids(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                match x {
                    Value::String(s) if k == "id" && (s.starts_with("chatcmpl-") || s.starts_with("msg_")) => {
                        *s = "(generated)".into()
                    }
                    // Gemini callers get the completion id without its prefix.
                    Value::String(s) if k == "responseId" => *s = "(generated)".into(),
                    _ => generated_ids(x),
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(generated_ids),
        _ => {}
    }
}

/// Output SSE text -> [{"event": name?, "data": JSON or "[DONE]"}].
fn parse_events(text: &str) -> Vec<Value> {
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let mut ev = serde_json::Map::new();
            for line in e.lines() {
                if let Some(name) = line.strip_prefix("event: ") {
                    ev.insert("event".into(), Value::String(name.into()));
                } else if let Some(d) = line.strip_prefix("data: ") {
                    let data = serde_json::from_str(d).unwrap_or_else(|_| Value::String(d.into()));
                    ev.insert("data".into(), data);
                }
            }
            Value::Object(ev)
        })
        .collect()
}

fn run_stream(kind: &str, options: &Value, chunks: &[Bytes]) -> (Vec<Value>, Option<aigw::usage::Usage>) {
    let mut s = SseState::with_mode(mode(kind, options));
    if kind.starts_with("converse_") {
        s.decode_event_stream();
    }
    let mut out = Vec::new();
    for c in chunks {
        out.extend_from_slice(&s.feed(c.clone()));
    }
    out.extend_from_slice(&s.finish());
    (parse_events(&String::from_utf8(out).unwrap()), s.usage)
}

fn run_case(name: &str, case: &Value) {
    let kind = case["kind"].as_str().unwrap();
    let input = &case["input"];
    let model = case["model"].as_str().unwrap_or("upstream-model");
    let got = match kind {
        "chat_request_to_messages" => anthropic::chat_request_to_messages(input, model).unwrap(),
        "messages_request_to_chat" => anthropic::messages_request_to_chat(input, model).unwrap(),
        "messages_response_to_chat" => anthropic::messages_response_to_chat(input, CREATED),
        "chat_response_to_messages" => anthropic::chat_response_to_messages(input),
        "chat_request_to_gemini" => gemini::chat_request_to_gemini(input, model).unwrap(),
        "messages_request_to_gemini" => {
            gemini::chat_request_to_gemini(&anthropic::messages_request_to_hub(input, model).unwrap(), model).unwrap()
        }
        "gemini_response_to_chat" => gemini::response_to_chat(input, CREATED, model),
        "gemini_response_to_messages" => {
            anthropic::chat_response_to_messages(&gemini::response_to_chat(input, CREATED, model))
        }
        "chat_request_to_converse" => bedrock::chat_request_to_converse(input, model).unwrap(),
        "messages_request_to_converse" => {
            bedrock::chat_request_to_converse(&anthropic::messages_request_to_hub(input, model).unwrap(), model)
                .unwrap()
        }
        "converse_response_to_chat" => {
            let mut v = bedrock::response_to_chat(input, CREATED, model);
            generated_ids(&mut v);
            v
        }
        "converse_response_to_messages" => {
            let mut v = anthropic::chat_response_to_messages(&bedrock::response_to_chat(input, CREATED, model));
            generated_ids(&mut v);
            v
        }
        // Gemini-format callers: the inverse mappings, through the chat hub.
        "gemini_request_to_chat" => {
            gemini::gemini_request_to_chat(input, model, case["options"]["stream"] == Value::Bool(true)).unwrap()
        }
        "gemini_request_to_messages" => {
            anthropic::chat_request_to_messages(&gemini::gemini_request_to_chat(input, model, false).unwrap(), model)
                .unwrap()
        }
        "gemini_request_to_chat_error" => {
            let e = gemini::gemini_request_to_chat(input, model, false).unwrap_err();
            Value::String(e.to_string())
        }
        "chat_response_to_gemini" => gemini::chat_response_to_gemini(input),
        "messages_response_to_gemini" => {
            gemini::chat_response_to_gemini(&anthropic::messages_response_to_chat(input, CREATED))
        }
        "converse_response_to_gemini" => {
            let mut v = gemini::chat_response_to_gemini(&bedrock::response_to_chat(input, CREATED, model));
            generated_ids(&mut v);
            v
        }
        "gemini_embed_to_openai" => Value::Array(
            input
                .as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    let batch = r.get("requests").is_some();
                    match gemini::embed_request_to_openai(r, model, "alias", batch) {
                        Ok(v) => v,
                        Err(e) => Value::String(e.to_string()),
                    }
                })
                .collect(),
        ),
        "embeddings_to_gemini" => {
            let body = input.to_string();
            let one = gemini::embeddings_to_gemini(body.as_bytes(), false).unwrap();
            let batch = gemini::embeddings_to_gemini(body.as_bytes(), true).unwrap();
            serde_json::json!([
                serde_json::from_str::<Value>(&one).unwrap(),
                serde_json::from_str::<Value>(&batch).unwrap()
            ])
        }
        "error_to_gemini" => {
            let status = case["status"].as_u64().unwrap() as u16;
            gemini::translate_error(input.to_string().as_bytes(), status)
        }
        "converse_stream_to_chat" | "converse_stream_to_anthropic" | "converse_stream_to_gemini" => {
            let frames = converse_frames(input.as_array().unwrap());
            let (mut got, usage) = run_stream(kind, &case["options"], &frames);
            let whole: Vec<u8> = frames.concat();
            let by_bytes: Vec<Bytes> = whole.chunks(7).map(Bytes::copy_from_slice).collect();
            let (mut again, _) = run_stream(kind, &case["options"], &by_bytes);
            let mut g = Value::Array(std::mem::take(&mut got));
            let mut a = Value::Array(std::mem::take(&mut again));
            generated_ids(&mut g);
            generated_ids(&mut a);
            assert_eq!(g, a, "{name}: output depends on how frames are cut");
            if let Some(u) = case.get("usage") {
                // [input, output] or [input, output, cache read, cache write, reasoning].
                let usage = usage.unwrap_or_default();
                let got = [
                    usage.input_tokens,
                    usage.output_tokens,
                    usage.cache_read_tokens,
                    usage.cache_write_tokens,
                    usage.reasoning_tokens,
                ];
                let want: Vec<u64> = u.as_array().unwrap().iter().map(|n| n.as_u64().unwrap()).collect();
                assert_eq!(&got[..want.len()], &want[..], "{name}: usage");
            }
            g
        }
        "chat_request_to_gemini_error" => {
            let e = gemini::chat_request_to_gemini(input, model).unwrap_err();
            Value::String(e.to_string())
        }
        "error_to_anthropic" | "error_to_openai" => {
            let status = case["status"].as_u64().unwrap() as u16;
            anthropic::translate_error(input.to_string().as_bytes(), status, kind == "error_to_anthropic")
        }
        "anthropic_stream_to_chat"
        | "chat_stream_to_anthropic"
        | "gemini_stream_to_chat"
        | "gemini_stream_to_anthropic"
        | "chat_stream_to_gemini"
        | "anthropic_stream_to_gemini"
        | "gemini_stream_to_gemini" => {
            let events: Vec<String> = input
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e.as_str().unwrap().to_owned())
                .collect();
            let whole: String = events.concat();
            let by_event: Vec<Bytes> = events.into_iter().map(Bytes::from).collect();
            let (got, usage) = run_stream(kind, &case["options"], &by_event);
            // The same stream cut at arbitrary points must translate identically.
            let by_bytes: Vec<Bytes> = whole.as_bytes().chunks(7).map(Bytes::copy_from_slice).collect();
            let (again, _) = run_stream(kind, &case["options"], &by_bytes);
            assert_eq!(got, again, "{name}: output depends on chunking");
            if let Some(u) = case.get("usage") {
                let usage = usage.unwrap_or_default();
                assert_eq!(
                    [usage.input_tokens, usage.output_tokens],
                    [u[0].as_u64().unwrap(), u[1].as_u64().unwrap()],
                    "{name}: usage"
                );
            }
            Value::Array(got)
        }
        // Each input is [wire, status, error body]; the class as `retry_on` names it, or null.
        "error_classes" => Value::Array(
            input
                .as_array()
                .unwrap()
                .iter()
                .map(|c| {
                    let wire = match c[0].as_str().unwrap() {
                        "openai" => Wire::OpenAi,
                        "anthropic" => Wire::Anthropic,
                        "gemini" => Wire::Gemini,
                        _ => Wire::Converse,
                    };
                    let body = c[2].to_string();
                    let class = aigw::provider::error_class(wire, c[1].as_u64().unwrap() as u16, body.as_bytes());
                    class.map_or(Value::Null, |k| Value::String(k.name().to_owned()))
                })
                .collect(),
        ),
        "chat_request_to_messages_error" => {
            let e = anthropic::chat_request_to_messages(input, model).unwrap_err();
            Value::String(e.code().to_owned())
        }
        other => panic!("{name}: unknown kind {other}"),
    };
    if case["expected"].is_null() && std::env::var_os("GOLDEN_BLESS").is_some() {
        let mut c = case.clone();
        c["expected"] = got;
        let path = format!("{}/tests/golden/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::write(path, serde_json::to_string_pretty(&c).unwrap() + "\n").unwrap();
        return;
    }
    assert_eq!(
        got,
        case["expected"],
        "{name}\n got: {}\nwant: {}",
        serde_json::to_string_pretty(&got).unwrap(),
        serde_json::to_string_pretty(&case["expected"]).unwrap()
    );
}

#[test]
fn golden_translations() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden");
    let mut names: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    names.sort();
    assert!(names.len() >= 12, "golden cases went missing: {names:?}");
    for path in names {
        let case: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        run_case(&path.file_name().unwrap().to_string_lossy(), &case);
    }
}
