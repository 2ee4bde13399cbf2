//! Google Gemini: the `gemini` provider (native `models/{model}:generateContent` and
//! `:streamGenerateContent?alt=sse`, API key in `x-goog-api-key`) and the translation
//! between OpenAI chat and Gemini's shapes, for whole answers and for streams
//! ([`GeminiToChat`]).
//!
//! OpenAI chat is the hub: an Anthropic caller's request reaches Gemini as Messages ->
//! chat -> Gemini, and its answer comes back Gemini -> chat -> Messages. Each hop is a
//! translation that is already tested on its own, and no third pair of mappings exists
//! to drift from the other two.

use std::collections::HashMap;

use percent_encoding::utf8_percent_encode;
use pingora::http::RequestHeader;
use serde_json::{json, Map, Value};

use super::anthropic::add_thinking;
use super::Provider;
use super::{bad, image_of, push_turn, thinking_ask, Image, UNRESERVED};
use crate::api::Dialect;
use crate::error::GwError;
use crate::provider::ErrorClass;
use crate::stream::translate::{fail, parse_chunk, Chunks};
use crate::stream::Translate;
use crate::usage::{Count, Usage, Whole};

/// The API version used when `base_url` does not name one.
pub const API_VERSION: &str = "v1beta";

/// Joins a Gemini thought signature to the tool call id that carries it through an
/// OpenAI-shaped conversation: Gemini 3 models refuse a function call sent back without
/// the signature they attached to it, and the tool call id is the only field a chat
/// client is sure to return unchanged. Signatures are base64, which never contains `~`.
pub const SIGNATURE_SEP: char = '~';

/// Path and query of the upstream request. A `base_url` that ends in an API version
/// (`/v1`, `/v1beta`, `/v1alpha`) is used as it is; otherwise `/v1beta` is added.
pub fn upstream_path(p: &Provider, upstream_model: &str, stream: bool) -> String {
    let base = p.base.path.trim_end_matches('/');
    let versioned = ["/v1", "/v1beta", "/v1alpha"].iter().any(|v| base.ends_with(v));
    let prefix = if versioned {
        base.to_owned()
    } else {
        format!("{base}/{API_VERSION}")
    };
    // Gemini's own resource names are `models/<id>`; both spellings work in the config.
    let model = upstream_model.strip_prefix("models/").unwrap_or(upstream_model);
    let model = utf8_percent_encode(model, UNRESERVED);
    if stream {
        format!("{prefix}/models/{model}:streamGenerateContent?alt=sse")
    } else {
        format!("{prefix}/models/{model}:generateContent")
    }
}

/// Puts the provider's key and extra headers on the upstream request.
pub fn apply_credentials(p: &Provider, req: &mut RequestHeader) -> pingora::Result<()> {
    for (name, value) in &p.headers {
        req.insert_header(name.clone(), value.clone())?;
    }
    if let Some(key) = &p.api_key {
        req.insert_header("x-goog-api-key", key.expose())?;
    }
    Ok(())
}

/// An OpenAI content part -> a Gemini part.
fn part_from_openai(p: &Value, i: usize) -> Result<Value, GwError> {
    match p["type"].as_str() {
        Some("text") => Ok(json!({"text": p["text"].as_str().unwrap_or_default()})),
        Some("image_url") => match image_of(p).map_err(|e| bad(format!("messages[{i}]: {e}")))? {
            Image::Base64 { media_type, data } => Ok(json!({"inlineData": {"mimeType": media_type, "data": data}})),
            Image::Url(url) => Ok(json!({"fileData": {"fileUri": url}})),
        },
        Some("input_audio") => {
            let a = &p["input_audio"];
            let format = a["format"].as_str().unwrap_or("wav");
            Ok(json!({"inlineData": {"mimeType": format!("audio/{format}"), "data": a["data"]}}))
        }
        other => Err(bad(format!(
            "messages[{i}]: content part type {other:?} cannot be sent to a Gemini model"
        ))),
    }
}

/// OpenAI message content -> Gemini parts.
fn parts_from_openai(content: &Value, i: usize) -> Result<Vec<Value>, GwError> {
    match content {
        Value::Null => Ok(Vec::new()),
        Value::String(s) if s.is_empty() => Ok(Vec::new()),
        Value::String(s) => Ok(vec![json!({"text": s})]),
        Value::Array(parts) => parts.iter().map(|p| part_from_openai(p, i)).collect(),
        _ => Err(bad(format!(
            "messages[{i}].content must be a string or a list of parts"
        ))),
    }
}

/// OpenAI chat request -> Gemini `generateContent` request. The model is not part of
/// the body (it is in the path), and neither is `stream` (the method says it).
pub fn chat_request_to_gemini(req: &Value, _model: &str) -> Result<Value, GwError> {
    let msgs = req["messages"]
        .as_array()
        .ok_or_else(|| bad("`messages` must be a list"))?;
    if req["n"].as_u64().is_some_and(|n| n > 1) {
        return Err(bad("n > 1 is not supported by Gemini models through aigw"));
    }
    let mut system = Vec::new();
    let mut contents: Vec<Value> = Vec::new();
    // tool_call_id -> function name: Gemini answers a call by name, OpenAI by id.
    let mut call_names: HashMap<&str, &str> = HashMap::new();
    for (i, m) in msgs.iter().enumerate() {
        match m["role"].as_str() {
            Some("system" | "developer") => system.extend(parts_from_openai(&m["content"], i)?),
            Some("user") => push_turn(&mut contents, "user", "parts", parts_from_openai(&m["content"], i)?),
            Some("assistant") => {
                let mut parts = parts_from_openai(&m["content"], i)?;
                for call in m["tool_calls"].as_array().into_iter().flatten() {
                    let id = call["id"].as_str().unwrap_or_default();
                    let name = call["function"]["name"]
                        .as_str()
                        .ok_or_else(|| bad(format!("messages[{i}]: a tool call needs a function name")))?;
                    let args = call["function"]["arguments"].as_str().unwrap_or("{}");
                    let args: Value = serde_json::from_str(if args.trim().is_empty() { "{}" } else { args })
                        .ok()
                        .filter(Value::is_object)
                        .ok_or_else(|| {
                            bad(format!(
                                "messages[{i}]: tool call arguments must be a JSON object for Gemini models"
                            ))
                        })?;
                    call_names.insert(id, name);
                    let mut part = json!({"functionCall": {"name": name, "args": args}});
                    if let Some((_, sig)) = id.split_once(SIGNATURE_SEP) {
                        part["thoughtSignature"] = json!(sig);
                    }
                    parts.push(part);
                }
                push_turn(&mut contents, "model", "parts", parts);
            }
            Some("tool") => {
                let id = m["tool_call_id"].as_str().unwrap_or_default();
                let name = call_names.get(id).ok_or_else(|| {
                    bad(format!(
                        "messages[{i}]: tool_call_id {id:?} matches no earlier assistant tool call"
                    ))
                })?;
                let text = super::content_text(&m["content"]);
                // Gemini wants an object; a tool that answered with one keeps its fields.
                let response = match serde_json::from_str::<Value>(&text) {
                    Ok(v @ Value::Object(_)) => v,
                    _ => json!({"content": text}),
                };
                push_turn(
                    &mut contents,
                    "user",
                    "parts",
                    vec![json!({"functionResponse": {"name": name, "response": response}})],
                );
            }
            other => return Err(bad(format!("messages[{i}]: unknown role {other:?}"))),
        }
    }
    let mut body = Map::new();
    body.insert("contents".into(), Value::Array(contents));
    if !system.is_empty() {
        body.insert("systemInstruction".into(), json!({"parts": system}));
    }
    let config = generation_config(req)?;
    if !config.is_empty() {
        body.insert("generationConfig".into(), Value::Object(config));
    }
    if let Some(tools) = req["tools"].as_array() {
        let decls = tools
            .iter()
            .map(|t| {
                if t["type"].as_str().is_some_and(|k| k != "function") {
                    return Err(bad(format!(
                        "tool type {:?} cannot be sent to a Gemini model",
                        t["type"]
                    )));
                }
                let f = &t["function"];
                let mut d = json!({"name": f["name"]});
                if let Some(desc) = f["description"].as_str() {
                    d["description"] = json!(desc);
                }
                if !f["parameters"].is_null() {
                    d["parametersJsonSchema"] = f["parameters"].clone();
                }
                Ok(d)
            })
            .collect::<Result<Vec<_>, _>>()?;
        if !decls.is_empty() {
            body.insert("tools".into(), json!([{"functionDeclarations": decls}]));
        }
    }
    let calling = match &req["tool_choice"] {
        Value::String(s) if s == "auto" => Some(json!({"mode": "AUTO"})),
        Value::String(s) if s == "none" => Some(json!({"mode": "NONE"})),
        Value::String(s) if s == "required" => Some(json!({"mode": "ANY"})),
        Value::Object(o) => o
            .get("function")
            .map(|f| json!({"mode": "ANY", "allowedFunctionNames": [f["name"]]})),
        _ => None,
    };
    if let Some(c) = calling {
        body.insert("toolConfig".into(), json!({"functionCallingConfig": c}));
    }
    Ok(Value::Object(body))
}

/// The sampling fields of a chat request, in `generationConfig` terms.
fn generation_config(req: &Value) -> Result<Map<String, Value>, GwError> {
    let mut c = Map::new();
    for (from, to) in [
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
        ("seed", "seed"),
    ] {
        if !req[from].is_null() {
            c.insert(to.into(), req[from].clone());
        }
    }
    if let Some(max) = req["max_completion_tokens"].as_u64().or(req["max_tokens"].as_u64()) {
        c.insert("maxOutputTokens".into(), json!(max));
    }
    match &req["stop"] {
        Value::String(s) => {
            c.insert("stopSequences".into(), json!([s]));
        }
        Value::Array(a) => {
            c.insert("stopSequences".into(), Value::Array(a.clone()));
        }
        _ => {}
    }
    // A thinking budget, and thought summaries back (as `reasoning_content`).
    if let Some(budget) = thinking_ask(req, 0)?.and_then(|ask| ask.budget) {
        c.insert(
            "thinkingConfig".into(),
            json!({"thinkingBudget": budget, "includeThoughts": true}),
        );
    }
    let format = &req["response_format"];
    match format["type"].as_str() {
        None | Some("text") => {}
        Some("json_object") => {
            c.insert("responseMimeType".into(), json!("application/json"));
        }
        Some("json_schema") => {
            c.insert("responseMimeType".into(), json!("application/json"));
            let schema = &format["json_schema"]["schema"];
            if !schema.is_null() {
                c.insert("responseJsonSchema".into(), schema.clone());
            }
        }
        Some(other) => {
            return Err(bad(format!(
                "response_format type {other:?} cannot be sent to a Gemini model"
            )))
        }
    }
    Ok(c)
}

/// Gemini `usageMetadata` -> tokens. Thinking tokens are billed as output (and are not
/// part of `candidatesTokenCount`); cached prompt tokens are already part of
/// `promptTokenCount`.
pub fn usage(meta: &Value) -> Usage {
    if !meta.is_object() && !meta.is_null() {
        return Usage::unreadable();
    }
    let n = |k: &str| Count::of(meta, k);
    Usage::from_parts(
        Whole::of(&[n("promptTokenCount"), n("toolUsePromptTokenCount")]),
        Whole::of(&[n("candidatesTokenCount"), n("thoughtsTokenCount")]),
        n("cachedContentTokenCount"),
        Count::Absent,
        n("thoughtsTokenCount"),
    )
}

/// Gemini `finishReason` -> OpenAI `finish_reason`. Gemini says `STOP` after a function
/// call; OpenAI clients expect `tool_calls` then.
pub fn finish_reason(reason: &str, made_calls: bool) -> &'static str {
    match reason {
        "MAX_TOKENS" => "length",
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" | "LANGUAGE" => {
            "content_filter"
        }
        _ if made_calls => "tool_calls",
        _ => "stop",
    }
}

/// The id a chat client sees for the `n`th function call of a response.
pub fn call_id(n: usize, part: &Value) -> String {
    match part["thoughtSignature"].as_str() {
        Some(sig) => format!("call_{n}{SIGNATURE_SEP}{sig}"),
        None => format!("call_{n}"),
    }
}

/// One response part as chat output: a thought summary, visible text, or a function call.
pub enum Piece<'a> {
    Thought(&'a str),
    Text(&'a str),
    Call { name: &'a Value, arguments: String },
}

/// The parts of the first candidate; thought summaries (`thought: true`, sent when
/// `includeThoughts` asked for them) become `reasoning_content`.
pub fn pieces(resp: &Value) -> impl Iterator<Item = (&Value, Piece<'_>)> {
    resp["candidates"][0]["content"]["parts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            if let (Some(t), true) = (p["text"].as_str(), p["thought"] == Value::Bool(true)) {
                Some((p, Piece::Thought(t)))
            } else if let Some(t) = p["text"].as_str() {
                Some((p, Piece::Text(t)))
            } else if let Some(call) = p.get("functionCall") {
                let args = if call["args"].is_null() {
                    json!({})
                } else {
                    call["args"].clone()
                };
                Some((
                    p,
                    Piece::Call {
                        name: &call["name"],
                        arguments: args.to_string(),
                    },
                ))
            } else {
                None
            }
        })
}

/// The chat completion id for a Gemini response.
pub fn completion_id(resp: &Value) -> Value {
    match resp["responseId"].as_str() {
        Some(id) => json!(format!("chatcmpl-{id}")),
        None => json!(format!("chatcmpl-{}", uuid::Uuid::new_v4().simple())),
    }
}

/// Gemini `generateContent` response -> OpenAI chat completion. `model` names the
/// answer when Gemini does not (`modelVersion`).
pub fn response_to_chat(resp: &Value, created: i64, model: &str) -> Value {
    let mut text = String::new();
    let mut calls = Vec::new();
    let mut reasoning = String::new();
    for (part, piece) in pieces(resp) {
        match piece {
            Piece::Thought(t) => reasoning.push_str(t),
            Piece::Text(t) => text.push_str(t),
            Piece::Call { name, arguments } => calls.push(json!({
                "id": call_id(calls.len(), part),
                "type": "function",
                "function": {"name": name, "arguments": arguments},
            })),
        }
    }
    let reason = resp["candidates"][0]["finishReason"].as_str();
    let blocked = !resp["promptFeedback"]["blockReason"].is_null();
    let finish = match reason {
        _ if blocked => "content_filter",
        Some(r) => finish_reason(r, !calls.is_empty()),
        None => finish_reason("STOP", !calls.is_empty()),
    };
    let content = if text.is_empty() && (blocked || !calls.is_empty()) {
        Value::Null
    } else {
        json!(text)
    };
    let mut message = json!({"role": "assistant", "content": content});
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    // Thought summaries are not signed blocks: no thinking_blocks.
    add_thinking(&mut message, reasoning, Vec::new());
    let u = usage(&resp["usageMetadata"]);
    json!({
        "id": completion_id(resp),
        "object": "chat.completion",
        "created": created,
        "model": resp["modelVersion"].as_str().unwrap_or(model),
        "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
        "usage": u.to_chat(),
    })
}

/// The class of a Gemini error (its message, lowercased): "the input token count (N)
/// exceeds the maximum number of tokens allowed (M)"; "request payload size exceeds the
/// limit: N bytes". Gemini refuses content with a 200 answer (`promptFeedback.blockReason`,
/// a `SAFETY` finish), never an error, so no error is `content_filter`; its 429
/// (`RESOURCE_EXHAUSTED`, "Resource has been exhausted") does not say whose request
/// exhausted it, so it has no class.
pub fn error_class(message: &str) -> Option<ErrorClass> {
    if message.contains("exceeds the maximum number of tokens") || message.contains("input token count") {
        Some(ErrorClass::ContextLengthExceeded)
    } else if message.contains("payload size exceeds the limit") {
        Some(ErrorClass::RequestTooLarge)
    } else {
        None
    }
}

// ---- Streams ----

/// Gemini `streamGenerateContent?alt=sse` events -> OpenAI `chat.completion.chunk`s.
///
/// Gemini has no end marker: each event is a partial `GenerateContentResponse`, the last
/// one carries `finishReason`, and the connection then ends. So the finish chunk, the
/// usage chunk and `[DONE]` are written when the upstream ends, and only if a finish
/// reason was seen; a stream that ends without one was cut and ends with an error event.
#[derive(Debug, Default)]
pub struct GeminiToChat {
    chunks: Chunks,
    started: bool,
    /// Function calls sent so far (each is one whole call in Gemini's stream).
    calls: usize,
    /// The finish reason as Gemini said it, and whether the prompt was blocked.
    reason: Option<String>,
    blocked: bool,
    pub usage: Usage,
    ended: bool,
}

impl GeminiToChat {
    /// `model` names the chunks when Gemini does not (`modelVersion`).
    pub fn new(include_usage: bool, created: i64, model: &str) -> Self {
        Self {
            chunks: Chunks {
                include_usage,
                created,
                id: Value::Null,
                model: json!(model),
            },
            ..Self::default()
        }
    }
}

impl Translate for GeminiToChat {
    fn event(&mut self, data: &[u8], out: &mut Vec<u8>) {
        if self.ended || data.is_empty() {
            return;
        }
        let Some(ev) = parse_chunk(data, Dialect::OpenAi, out) else {
            self.ended = true;
            return;
        };
        if !self.started {
            self.started = true;
            self.chunks.id = completion_id(&ev);
            if let Some(m) = ev["modelVersion"].as_str() {
                self.chunks.model = json!(m);
            }
            self.chunks.send(out, json!({"role": "assistant", "content": ""}), None);
        }
        if !ev["usageMetadata"].is_null() {
            // Cumulative: the last report is the total.
            self.usage = usage(&ev["usageMetadata"]);
        }
        if !ev["promptFeedback"]["blockReason"].is_null() {
            self.blocked = true;
        }
        for (part, piece) in pieces(&ev) {
            match piece {
                Piece::Text("") | Piece::Thought("") => {}
                Piece::Thought(t) => self.chunks.send(out, json!({"reasoning_content": t}), None),
                Piece::Text(t) => self.chunks.send(out, json!({"content": t}), None),
                Piece::Call { name, arguments } => {
                    let call = json!({"index": self.calls, "id": call_id(self.calls, part), "type": "function",
                        "function": {"name": name, "arguments": arguments}});
                    self.calls += 1;
                    self.chunks.send(out, json!({"tool_calls": [call]}), None);
                }
            }
        }
        if let Some(r) = ev["candidates"][0]["finishReason"].as_str() {
            self.reason = Some(r.to_owned());
        }
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        if self.ended {
            return;
        }
        self.ended = true;
        let finish = match &self.reason {
            _ if self.blocked => "content_filter",
            Some(r) => finish_reason(r, self.calls > 0),
            None => {
                return fail(
                    out,
                    Dialect::OpenAi,
                    "The provider's stream ended before a finish reason.",
                )
            }
        };
        if !self.started {
            self.chunks.send(out, json!({"role": "assistant", "content": ""}), None);
        }
        self.chunks.end(out, finish, self.usage);
    }

    fn usage(&self) -> Usage {
        self.usage
    }

    /// Gemini has no end marker: its last chunk carries the finish reason.
    fn complete(&self) -> bool {
        self.reason.is_some()
    }
}
