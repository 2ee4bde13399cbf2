//! The rest of OpenAI's surface: legacy completions (JSON and SSE), moderations, image
//! generations and edits, audio transcriptions and translations (multipart uploads) and
//! speech (audio bytes, written in pieces as a provider streams them).

use std::sync::atomic::Ordering;

use base64::Engine;
use bytes::Bytes;
use http::StatusCode;
use serde_json::{json, Value};

use super::{bytes_response, error, full, tokens_of, truncated, Body, Mock, Script};

/// A 1x1 transparent PNG: what every generated or edited image is.
const PNG: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f, 0x15, 0xc4, 0x89, 0x00, 0x00, 0x00, 0x0d, 0x49,
    0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0x00, 0x01, 0x00, 0x00, 0x05, 0x00, 0x01, 0x0d, 0x0a, 0x2d, 0xb4, 0x00, 0x00,
    0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
];

/// Bytes of audio that make a second (16 kHz, 8-bit mono: what the mock pretends).
pub const AUDIO_BYTES_PER_SECOND: usize = 16_000;

/// The fields of a multipart form the mock read: text values, and per file its name, size
/// and BLAKE3 (so tests can see the file crossed byte for byte).
#[derive(Default)]
pub struct Form {
    pub texts: Vec<(String, String)>,
    pub files: Vec<(String, usize, String)>,
}

impl Form {
    pub fn text(&self, name: &str) -> Option<&str> {
        self.texts.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// Reads a form as a provider would (`multer`, the gateway's parser too); `Err` is the
/// provider's 400.
pub async fn read_form(content_type: Option<&str>, body: Bytes) -> Result<Form, String> {
    let boundary = multer::parse_boundary(content_type.unwrap_or_default()).map_err(|e| e.to_string())?;
    let stream = futures_util::stream::once(async move { Ok::<Bytes, std::convert::Infallible>(body) });
    let mut form = multer::Multipart::new(stream, boundary);
    let mut out = Form::default();
    while let Some(field) = form.next_field().await.map_err(|e| e.to_string())? {
        let name = field.name().unwrap_or_default().to_owned();
        if field.file_name().is_some() {
            let data = field.bytes().await.map_err(|e| e.to_string())?;
            out.files
                .push((name, data.len(), blake3::hash(&data).to_hex().to_string()));
        } else {
            out.texts.push((name, field.text().await.map_err(|e| e.to_string())?));
        }
    }
    Ok(out)
}

impl Mock {
    /// `/completions`: the prompt echoed (`?echo`) or filler, as JSON or SSE.
    pub(super) fn completions(&self, req: &Value, model: &str, script: &Script) -> Response {
        let id = format!("cmpl-mock-{}", self.ids.fetch_add(1, Ordering::Relaxed));
        let prompt = match &req["prompt"] {
            Value::String(s) => s.clone(),
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" "),
            _ => return error(400, "'prompt' is required", None),
        };
        let text = if script.echo {
            prompt.clone()
        } else {
            super::filler(script.words)
        };
        let (p, c) = (tokens_of(prompt.len()), tokens_of(text.len()));
        let usage = script.patch_usage(json!({"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}));
        if req["stream"] != Value::Bool(true) {
            let v = json!({"id": id, "object": "text_completion", "created": 1_700_000_000, "model": model,
                "choices": [{"text": text, "index": 0, "logprobs": null, "finish_reason": "stop"}], "usage": usage});
            if script.drop_after.is_some() {
                return truncated(&v);
            }
            return full(StatusCode::OK, &v);
        }
        let chunk = |text: &str, finish: Value| {
            let c = json!({"id": id, "object": "text_completion", "created": 1_700_000_000, "model": model,
                "choices": [{"text": text, "index": 0, "logprobs": null, "finish_reason": finish}]});
            Bytes::from(format!("data: {c}\n\n"))
        };
        let mut events: Vec<Bytes> = text.split_inclusive(' ').map(|w| chunk(w, Value::Null)).collect();
        events.push(chunk("", json!("stop")));
        if req["stream_options"]["include_usage"] == Value::Bool(true) {
            let u = json!({"id": id, "object": "text_completion", "created": 1_700_000_000, "model": model,
                "choices": [], "usage": usage});
            events.push(Bytes::from(format!("data: {u}\n\n")));
        }
        events.push(Bytes::from_static(b"data: [DONE]\n\n"));
        self.stream_events(events, script, "text/event-stream")
    }

    /// `/moderations`: one result per input, omni-moderation's categories, scored by the
    /// triggers in `guards` ("kill", "hurt myself", "borderline").
    pub(super) fn moderations(&self, req: &Value, model: &str) -> Response {
        let inputs = match super::guards::moderation_inputs(req) {
            Ok(i) => i,
            Err((message, code)) => {
                return full(
                    StatusCode::BAD_REQUEST,
                    &json!({"error": {"message": message, "type": "invalid_request_error", "param": "input", "code": code}}),
                )
            }
        };
        let model = if model.is_empty() {
            "omni-moderation-latest"
        } else {
            model
        };
        let legacy = model.starts_with("text-moderation");
        if legacy && inputs.iter().any(|i| i.image) {
            return full(
                StatusCode::BAD_REQUEST,
                &json!({"error": {"message": format!("Model {model} does not support image inputs."),
                    "type": "invalid_request_error", "param": "input", "code": null}}),
            );
        }
        let results: Vec<Value> = inputs
            .iter()
            .map(|i| super::guards::moderation_result(i, legacy))
            .collect();
        let id = format!("modr-mock-{}", self.ids.fetch_add(1, Ordering::Relaxed));
        full(StatusCode::OK, &json!({"id": id, "model": model, "results": results}))
    }

    /// `/images/generations` and `/images/edits`: `n` images (base64 PNGs); token usage
    /// for `gpt-image` models, as OpenAI reports it for them only.
    pub(super) fn images(&self, prompt: &str, n: u64, model: &str) -> Response {
        let n = n.clamp(1, 10);
        let b64 = base64::engine::general_purpose::STANDARD.encode(PNG);
        let data: Vec<Value> = (0..n)
            .map(|_| json!({"b64_json": b64, "revised_prompt": prompt}))
            .collect();
        let mut v = json!({"created": 1_700_000_000, "data": data});
        if model.starts_with("gpt-image") {
            let input = tokens_of(prompt.len());
            v["usage"] = json!({"input_tokens": input, "output_tokens": 272 * n, "total_tokens": input + 272 * n,
                "input_tokens_details": {"text_tokens": input, "image_tokens": 0}});
        }
        full(StatusCode::OK, &v)
    }

    /// `/audio/transcriptions` and `/audio/translations`: the transcript names what the
    /// mock received (its model, the file's size and hash), in the `response_format` asked
    /// for, with OpenAI's duration usage in JSON.
    pub(super) fn transcribe(&self, form: &Form, model: &str, translate: bool) -> Response {
        let Some((_, size, hash)) = form.files.iter().find(|(n, _, _)| n == "file") else {
            return error(400, "'file' is required", None);
        };
        let verb = if translate { "translated" } else { "transcribed" };
        let prompt = form.text("prompt").unwrap_or_default();
        let text = format!("{verb} {size} bytes {hash} by {model}; prompt: {prompt}");
        let seconds = size.div_ceil(AUDIO_BYTES_PER_SECOND);
        match form.text("response_format").unwrap_or("json") {
            "text" | "srt" | "vtt" => bytes_response(StatusCode::OK, "text/plain; charset=utf-8", Bytes::from(text)),
            "verbose_json" => full(
                StatusCode::OK,
                &json!({"task": if translate { "translate" } else { "transcribe" }, "language": "english",
                    "duration": seconds, "text": text, "segments": [],
                    "usage": {"type": "duration", "seconds": seconds}}),
            ),
            _ => full(
                StatusCode::OK,
                &json!({"text": text, "usage": {"type": "duration", "seconds": seconds}}),
            ),
        }
    }

    /// `/audio/speech`: "audio" in eight 4 KiB pieces (`chunk_delay_ms` apart; a
    /// `drop_after` cuts the connection after that many), as providers stream speech.
    pub(super) fn speech(&self, req: &Value, script: &Script) -> Response {
        let Some(input) = req["input"].as_str() else {
            return error(400, "'input' is required", None);
        };
        let media = match req["response_format"].as_str().unwrap_or("mp3") {
            "mp3" => "audio/mpeg",
            "wav" => "audio/wav",
            "opus" => "audio/opus",
            "aac" => "audio/aac",
            "flac" => "audio/flac",
            _ => "audio/pcm",
        };
        let seed = blake3::hash(input.as_bytes());
        let pieces: Vec<Bytes> = (0..8u8)
            .map(|i| Bytes::from(vec![seed.as_bytes()[i as usize] ^ i; 4096]))
            .collect();
        let mut r = self.stream_events(pieces, script, "audio/mpeg");
        if let Ok(v) = media.parse() {
            r.headers_mut().insert(http::header::CONTENT_TYPE, v);
        }
        r
    }
}

type Response = http::Response<Body>;
