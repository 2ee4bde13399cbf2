//! The shipped packs against their own samples, whole and streamed at every split point.

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{json, Value};

use super::stream::StreamGuard;
use super::*;
use crate::config::raw::{self, Action, Stage};

const PACKS: &[&str] = &["pii.yaml", "secrets.yaml", "prompt-injection.yaml"];

fn pack_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("filters").join(name)
}

fn guard(pack: &str, action: Action) -> Arc<Guardrail> {
    let g = raw::Guardrail {
        name: format!("{pack}-{}", action_name(action)),
        pack: Some(pack_path(pack).to_string_lossy().into_owned()),
        rules: Vec::new(),
        stage: Stage::Both,
        action,
    };
    Arc::new(Guardrail::compile("guardrails[0]", &g).unwrap())
}

fn samples(pack: &str) -> raw::PackSamples {
    load_pack(&pack_path(pack)).unwrap().samples
}

#[test]
fn every_pack_catches_its_samples_and_passes_its_clean_texts() {
    for pack in PACKS {
        let g = guard(pack, Action::Block);
        let s = samples(pack);
        assert!(s.matching.len() >= 4 && s.clean.len() >= 3, "{pack} needs samples");
        for text in &s.matching {
            assert!(g.matcher.is_match(text), "{pack} misses: {text:?}");
        }
        for text in &s.clean {
            let mut found = Vec::new();
            g.matcher.find(text, 0, &mut found);
            assert!(found.is_empty(), "{pack} flags clean text {text:?}: {found:?}");
        }
    }
}

/// An OpenAI stream carrying `pieces` as content deltas.
fn chat_stream(pieces: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in pieces {
        let c = json!({"id": "c1", "object": "chat.completion.chunk", "model": "m",
            "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": null}]});
        out.extend_from_slice(format!("data: {c}\n\n").as_bytes());
    }
    let fin = json!({"id": "c1", "object": "chat.completion.chunk", "model": "m",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]});
    out.extend_from_slice(format!("data: {fin}\n\ndata: [DONE]\n\n").as_bytes());
    out
}

/// An Anthropic stream carrying `pieces` as text deltas of block 0.
fn messages_stream(pieces: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut ev = |v: Value| {
        out.extend_from_slice(format!("event: {}\ndata: {v}\n\n", v["type"].as_str().unwrap()).as_bytes());
    };
    ev(json!({"type": "message_start", "message": {"id": "m1", "usage": {"input_tokens": 1, "output_tokens": 0}}}));
    ev(json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}));
    for p in pieces {
        ev(json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}}));
    }
    ev(json!({"type": "content_block_stop", "index": 0}));
    ev(json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 3}}));
    ev(json!({"type": "message_stop"}));
    out
}

/// Feeds `stream` in two network chunks split at `at`; returns the text the caller sees,
/// or the guardrail that blocked.
fn run(g: &Arc<Guardrail>, dialect: Dialect, stream: &[u8], at: usize) -> Result<String, Arc<str>> {
    let mut sg = StreamGuard::new(vec![g.clone()], dialect);
    let mut hits = Vec::new();
    let mut out = sg.feed(&stream[..at], false, &mut hits)?.to_vec();
    out.extend_from_slice(&sg.feed(&stream[at..], true, &mut hits)?);
    let mut text = String::new();
    for data in events(&out) {
        let Ok(v) = serde_json::from_slice::<Value>(&data) else {
            continue;
        };
        let piece = match dialect {
            Dialect::OpenAi => v.pointer("/choices/0/delta/content"),
            Dialect::Anthropic => v.pointer("/delta/text"),
        };
        text.push_str(piece.and_then(Value::as_str).unwrap_or(""));
    }
    Ok(text)
}

/// The data of each event; the output must end on an event boundary.
fn events(out: &[u8]) -> Vec<Vec<u8>> {
    let mut pos = 0;
    let mut all = Vec::new();
    while let Some(len) = crate::stream::event_end(&out[pos..]) {
        all.push(crate::stream::event_data(&out[pos..pos + len]));
        pos += len;
    }
    assert_eq!(pos, out.len(), "output ends on an event boundary");
    all
}

/// Every sample, cut into text deltas at every position (and the network chunks cut at
/// every byte of a short stream), is blocked by a block guardrail and masked exactly as
/// the whole text would be by a mask guardrail.
#[test]
fn streamed_matches_are_caught_at_every_split() {
    for pack in PACKS {
        let block = guard(pack, Action::Block);
        let mask = guard(pack, Action::Mask);
        for sample in samples(pack).matching {
            let text = format!("Note: {sample} (end)");
            let mut found = Vec::new();
            mask.matcher.find(&text, 0, &mut found);
            let whole = apply_masks(&text, 0, text.len(), found);
            assert_ne!(whole, text);
            let cuts: Vec<usize> = (1..text.len()).filter(|i| text.is_char_boundary(*i)).collect();
            for &i in &cuts {
                let pieces = [&text[..i], &text[i..]];
                for dialect in [Dialect::OpenAi, Dialect::Anthropic] {
                    let stream = match dialect {
                        Dialect::OpenAi => chat_stream(&pieces),
                        Dialect::Anthropic => messages_stream(&pieces),
                    };
                    let mid = stream.len() / 2;
                    assert!(
                        run(&block, dialect, &stream, mid).is_err(),
                        "{pack}: {text:?} split at {i}"
                    );
                    let masked = run(&mask, dialect, &stream, mid).unwrap();
                    assert_eq!(masked, whole, "{pack}: {text:?} split at {i} ({dialect:?})");
                }
            }
        }
    }
}

#[test]
fn token_sized_deltas_and_byte_sized_network_chunks() {
    let mask = guard("secrets.yaml", Action::Mask);
    let text = "key sk-proj-EXAMPLE_not_a_real_key_0000 and password: hunter2hunter2 done";
    let mut found = Vec::new();
    mask.matcher.find(text, 0, &mut found);
    let whole = apply_masks(text, 0, text.len(), found);
    let pieces: Vec<&str> = text
        .as_bytes()
        .chunks(3)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    let stream = chat_stream(&pieces);
    for at in 0..=stream.len() {
        assert_eq!(
            run(&mask, Dialect::OpenAi, &stream, at).unwrap(),
            whole,
            "network split at {at}"
        );
    }
}

#[test]
fn clean_streams_pass_unchanged_and_monitor_never_rewrites() {
    let block = guard("pii.yaml", Action::Block);
    let text = "Nothing personal here, just a long enough answer about the weather.";
    let stream = chat_stream(&[&text[..20], &text[20..]]);
    assert_eq!(run(&block, Dialect::OpenAi, &stream, 7).unwrap(), text);

    let monitor = guard("pii.yaml", Action::Monitor);
    let stream = chat_stream(&["mail bob@", "example.com now"]);
    let mut sg = StreamGuard::new(vec![monitor], Dialect::OpenAi);
    let mut hits = Vec::new();
    let out = sg.feed(&stream, true, &mut hits).unwrap();
    assert_eq!(&out[..], &stream[..], "monitor forwards the events untouched");
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].action, Action::Monitor);
}

#[test]
fn unreadable_events_fail_closed_for_block_and_open_for_monitor() {
    let bad = b"data: {not json\n\ndata: [DONE]\n\n";
    let mut hits = Vec::new();
    let mut sg = StreamGuard::new(vec![guard("pii.yaml", Action::Block)], Dialect::OpenAi);
    assert!(sg.feed(bad, true, &mut hits).is_err());
    let mut sg = StreamGuard::new(vec![guard("pii.yaml", Action::Monitor)], Dialect::OpenAi);
    assert_eq!(&sg.feed(bad, true, &mut hits).unwrap()[..], bad);
}

#[test]
fn window_is_the_longest_match_not_more() {
    let kw = raw::Guardrail {
        name: "kw".into(),
        pack: None,
        rules: vec![raw::Rule::Keyword {
            words: vec!["falcon".into()],
            case_sensitive: false,
            whole_word: false,
            label: None,
        }],
        stage: Stage::Response,
        action: Action::Mask,
    };
    let g = Arc::new(Guardrail::compile("g", &kw).unwrap());
    // A 6-byte keyword holds back 6 bytes plus one character's room (4): the rest of the
    // delta goes out at once.
    let mut sg = StreamGuard::new(vec![g], Dialect::OpenAi);
    let mut hits = Vec::new();
    let stream = chat_stream(&["a long sentence without it"]);
    let first = crate::stream::event_end(&stream).unwrap();
    let out = sg.feed(&stream[..first], false, &mut hits).unwrap();
    let text = String::from_utf8(out.to_vec()).unwrap();
    assert!(text.contains(r#""content":"a long sentence ""#), "{text}");
}

#[test]
fn choices_are_scanned_separately_and_interleaved() {
    let mask = guard("pii.yaml", Action::Mask);
    let ev = |i: u64, text: &str| {
        let c = json!({"id": "c", "choices": [{"index": i, "delta": {"content": text}, "finish_reason": null}]});
        format!("data: {c}\n\n")
    };
    let fin = |i: u64| {
        let c = json!({"id": "c", "choices": [{"index": i, "delta": {}, "finish_reason": "stop"}]});
        format!("data: {c}\n\n")
    };
    let stream = [
        ev(0, "mail bob@exa"),
        ev(1, "call 415-555"),
        ev(0, "mple.com ok"),
        ev(1, "-0132 ok"),
        fin(0),
        fin(1),
        "data: [DONE]\n\n".to_owned(),
    ]
    .concat();
    let mut sg = StreamGuard::new(vec![mask], Dialect::OpenAi);
    let mut hits = Vec::new();
    let out = sg.feed(stream.as_bytes(), true, &mut hits).unwrap();
    let mut texts = [String::new(), String::new()];
    for d in events(&out) {
        let Ok(v) = serde_json::from_slice::<Value>(&d) else {
            continue;
        };
        for c in v["choices"].as_array().unwrap() {
            let i = c["index"].as_u64().unwrap() as usize;
            texts[i].push_str(c.pointer("/delta/content").and_then(Value::as_str).unwrap_or(""));
        }
    }
    assert_eq!(texts, ["mail [REDACTED:email] ok", "call [REDACTED:phone] ok"]);
    assert!(out.ends_with(b"data: [DONE]\n\n"));
}
