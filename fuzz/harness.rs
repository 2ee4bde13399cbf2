// What each fuzz target runs and checks. Included (not a crate) by the cargo-fuzz targets
// in fuzz_targets/ and by tests/fuzz_corpus.rs, which replays the kept corpus and every
// past crash as an ordinary test, so a fixed crash stays fixed without a nightly toolchain.
//
// Beyond "no panic, no hang", each target checks properties that must hold for any input:
// passthrough streams give back exactly the bytes they got however they were split,
// translators and guardrails only ever emit well-formed JSON, and the zero-copy body
// rewrite yields valid JSON whose `model` is the one spliced in.

#[allow(unused_imports)]
use std::sync::{Arc, OnceLock};

#[allow(unused_imports)]
use aigw::api::Wire;
use aigw::provider::anthropic::{AnthropicToChat, ChatToAnthropic};
use aigw::provider::bedrock::BedrockToChat;
use aigw::provider::gemini::GeminiToChat;
use aigw::stream::translate::Chain;
#[allow(unused_imports)]
use aigw::provider::{JsonBody, JsonTranslate};
use aigw::stream::{Mode, SseState};

/// Splits `data` into pieces whose sizes follow `seed` (1 to 16 bytes, then the rest in
/// 64-byte pieces), so one input explores many ways a network may cut it.
#[allow(dead_code)]
fn pieces(data: &[u8], seed: u8) -> Vec<bytes::Bytes> {
    let mut out = Vec::new();
    let mut at = 0;
    let mut s = seed;
    while at < data.len() {
        let n = if out.len() < 32 { 1 + (s % 16) as usize } else { 64 };
        s = s.rotate_left(3) ^ 0x5a;
        let end = (at + n).min(data.len());
        out.push(bytes::Bytes::copy_from_slice(&data[at..end]));
        at = end;
    }
    out
}

/// Every `data:` payload of the SSE events in `out` is JSON or `[DONE]`.
#[allow(dead_code)]
fn assert_json_events(out: &[u8], what: &str) {
    let mut rest = out;
    while let Some(end) = aigw::stream::event_end(rest) {
        let data = aigw::stream::event_data(&rest[..end]);
        assert!(
            *data == *b"[DONE]" || serde_json::from_slice::<serde_json::Value>(&data).is_ok(),
            "{what}: an event that is not JSON: {:?}",
            String::from_utf8_lossy(&data)
        );
        rest = &rest[end..];
    }
    assert!(rest.is_empty(), "{what}: output ends inside an event");
}

/// The config loader: YAML in, a snapshot or a non-empty list of errors out.
#[allow(dead_code)]
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // Files a config names are read while loading; device files would only stall the run.
    if ["/dev/", "/proc/", "/sys/"].iter().any(|p| text.contains(p)) {
        return;
    }
    let upstreams = aigw::upstream::UpstreamRegistry::default();
    let env = |_: &str| None;
    let ctx = aigw::config::CompileCtx {
        env: &env,
        upstreams: &upstreams,
        limits: &Default::default(),
        metrics: None,
    };
    if let Err(errors) = aigw::config::load_str(text, &ctx) {
        assert!(!errors.is_empty(), "a failed load names its errors");
    }
}

/// The SSE reader in every mode, the input cut into pieces by its first byte.
#[allow(dead_code)]
pub fn sse(data: &[u8]) {
    let Some((&seed, body)) = data.split_first() else { return };
    let input = pieces(body, seed);
    let usage = seed & 1 == 1;
    for m in 0..10 {
        let (mode, passthrough, translated) = match m {
            0 => (Mode::OpenAi { strip_usage: false }, true, false),
            1 => (Mode::OpenAi { strip_usage: true }, false, false),
            2 => (Mode::Anthropic, true, false),
            3 => (Mode::Responses, true, false),
            4 => (Mode::Translate(Box::new(AnthropicToChat::new(usage, 0))), false, true),
            5 => (Mode::Translate(Box::new(ChatToAnthropic::new())), false, true),
            6 => (Mode::Translate(Box::new(GeminiToChat::new(usage, 0, "m"))), false, true),
            7 => (
                Mode::Translate(Box::new(Chain::new(Box::new(GeminiToChat::new(true, 0, "m")), Box::new(ChatToAnthropic::new())))),
                false,
                true,
            ),
            // Bedrock: the same bytes read as AWS event-stream frames.
            8 => (Mode::Translate(Box::new(BedrockToChat::new(usage, 0, "m"))), false, true),
            _ => (
                Mode::Translate(Box::new(Chain::new(Box::new(BedrockToChat::new(true, 0, "m")), Box::new(ChatToAnthropic::new())))),
                false,
                true,
            ),
        };
        let mut s = SseState::with_mode(mode);
        if m >= 8 {
            s.decode_event_stream();
        }
        let mut out = Vec::new();
        for p in &input {
            out.extend_from_slice(&s.feed(p.clone()));
        }
        out.extend_from_slice(&s.finish());
        if passthrough {
            // A passthrough changes nothing but line ends (CRLF and a lone CR become LF)
            // and a byte-order mark at the start (dropped), as the SSE spec reads them.
            let text = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
            let mut expected = Vec::with_capacity(text.len());
            let mut i = 0;
            while i < text.len() {
                match text[i] {
                    b'\r' => {
                        expected.push(b'\n');
                        if text.get(i + 1) == Some(&b'\n') {
                            i += 1;
                        }
                    }
                    b => expected.push(b),
                }
                i += 1;
            }
            assert_eq!(out, expected, "mode {m}: a passthrough changed the stream");
        }
        if translated {
            assert!(!out.is_empty(), "mode {m}: a translated stream ends with something");
            assert_json_events(&out, "translated stream");
        }
    }
    for t in [
        JsonTranslate::None,
        JsonTranslate::AnthropicToChat { created: 0 },
        JsonTranslate::ChatToAnthropic,
        JsonTranslate::ToChat {
            from: Wire::Gemini,
            created: 0,
            to_anthropic: usage,
            model: "m".into(),
        },
        JsonTranslate::ToChat {
            from: Wire::Converse,
            created: 0,
            to_anthropic: usage,
            model: "m".into(),
        },
        JsonTranslate::Error {
            status: 400,
            to_anthropic: usage,
        },
    ] {
        let translating = t != JsonTranslate::None;
        let mut j = JsonBody::new(t);
        for p in &input {
            j.push(p);
        }
        let (_, whole, sent) = j.finish();
        assert_eq!(whole, body, "the body as received");
        match sent {
            Some(b) => assert!(
                serde_json::from_slice::<serde_json::Value>(&b).is_ok(),
                "a translated body that is not JSON"
            ),
            None => assert!(!translating, "a translated body is always replaced"),
        }
    }
}

/// Whole-body translations between the dialects, and the error envelopes.
#[allow(dead_code)]
pub fn translate(data: &[u8]) {
    use aigw::provider::{anthropic, gemini};
    let _ = anthropic::translate_error(data, 429, true);
    let _ = anthropic::translate_error(data, 502, false);
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let requests = [
        anthropic::chat_request_to_messages(&v, "m"),
        anthropic::messages_request_to_chat(&v, "m"),
        gemini::chat_request_to_gemini(&v, "m"),
        anthropic::messages_request_to_chat(&v, "m").and_then(|c| gemini::chat_request_to_gemini(&c, "m")),
    ];
    for r in requests.into_iter().flatten() {
        assert!(r.is_object(), "a translated request is an object");
    }
    for r in [
        anthropic::messages_response_to_chat(&v, 0),
        anthropic::chat_response_to_messages(&v),
        gemini::response_to_chat(&v, 0, "m"),
    ] {
        assert!(r.is_object(), "a translated response is an object");
    }
}

/// The zero-copy request body reader and rewriter.
#[allow(dead_code)]
pub fn body(data: &[u8]) {
    use aigw::provider::body;
    let buf = bytes::Bytes::copy_from_slice(data);
    let Ok(view) = body::parse(&buf) else { return };
    let _ = body::prefix_key(&buf);
    // The gateway reads only the top level; what it does not read (a lone surrogate deep
    // inside, say) goes to the provider as it came. So the rewrite is checked to be JSON
    // exactly when the input was.
    let whole_input_is_json = serde_json::from_slice::<serde_json::Value>(data).is_ok();
    for add_usage in [false, true] {
        let (out, injected) = body::rewrite(&buf, &view, "up\"stream-\u{e9}", add_usage);
        let parsed = serde_json::from_slice::<serde_json::Value>(&out);
        assert_eq!(parsed.is_ok(), whole_input_is_json, "the rewrite changed what is JSON");
        let Ok(v) = parsed else { continue };
        assert_eq!(v["model"], "up\"stream-\u{e9}", "the spliced model");
        if injected {
            assert_eq!(v["stream_options"]["include_usage"], true);
        }
    }
}

#[allow(dead_code)]
fn guardrails() -> &'static [Arc<aigw::guard::Guardrail>] {
    static GUARDS: OnceLock<Vec<Arc<aigw::guard::Guardrail>>> = OnceLock::new();
    GUARDS.get_or_init(|| {
        use aigw::raw::{Action, Guardrail, Stage};
        // This file is built from fuzz/ and from the crate root.
        let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let filters = [here.join("filters"), here.join("../filters")]
            .into_iter()
            .find(|p| p.is_dir())
            .expect("the filters directory");
        [
            ("pii.yaml", Action::Mask),
            ("secrets.yaml", Action::Block),
            ("prompt-injection.yaml", Action::Monitor),
        ]
        .iter()
        .map(|(pack, action)| {
            let g = Guardrail {
                name: pack.to_string(),
                pack: Some(filters.join(pack).to_string_lossy().into_owned()),
                rules: Vec::new(),
                stage: Stage::Both,
                action: *action,
                service: None,
            };
            Arc::new(aigw::guard::Guardrail::compile("g", &g, None).expect("the shipped packs compile"))
        })
        .collect()
    })
}

/// Guardrail scanning of requests, whole responses and streams, in every shape.
#[allow(dead_code)]
pub fn guard(data: &[u8]) {
    use aigw::guard::{self, stream::StreamGuard};
    use aigw::api::Endpoint;
    let Some((&seed, body)) = data.split_first() else { return };
    let guards = guardrails();
    let mut hits = Vec::new();
    if let Ok(text) = std::str::from_utf8(body) {
        for g in guards {
            let mut found = Vec::new();
            g.matcher.find(text, 0, &mut found);
            for f in &found {
                assert!(text.is_char_boundary(f.start) && text.is_char_boundary(f.end), "a match splits a character");
            }
        }
    }
    let endpoint = [
        Endpoint::ChatCompletions,
        Endpoint::Messages,
        Endpoint::Responses,
        Endpoint::Embeddings,
    ][seed as usize % 4];
    if let Ok(Some(masked)) = guard::check_request(guards, endpoint, body, &mut hits) {
        assert!(serde_json::from_slice::<serde_json::Value>(&masked).is_ok(), "a masked request is JSON");
    }
    // The same bytes as an MCP message part, either direction.
    if let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(body) {
        let _ = guard::check_mcp(guards, &mut v, &mut hits);
    }
    let shape = [Endpoint::ChatCompletions, Endpoint::Messages, Endpoint::Responses][seed as usize % 3];
    let mut by = None;
    if let Some(b) = guard::check_response(guards, shape, body, &mut hits, &mut by) {
        assert!(serde_json::from_slice::<serde_json::Value>(&b).is_ok(), "a checked response is JSON");
    }
    let shape = [Endpoint::ChatCompletions, Endpoint::Messages, Endpoint::Responses][seed as usize % 3];
    let mut g = StreamGuard::new(guards.to_vec(), shape);
    let input = pieces(body, seed);
    for (i, p) in input.iter().enumerate() {
        if g.feed(p, i + 1 == input.len(), &mut hits).is_err() {
            break;
        }
    }
}
