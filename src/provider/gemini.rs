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
use crate::api::{Dialect, Endpoint};
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
pub fn upstream_path(p: &Provider, upstream_model: &str, upstream: Endpoint, stream: bool) -> String {
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
    let method = match (upstream, stream) {
        (Endpoint::CountTokens | Endpoint::EmbedContent | Endpoint::BatchEmbedContents, _) => upstream.suffix(),
        (_, true) => ":streamGenerateContent?alt=sse",
        (_, false) => ":generateContent",
    };
    format!("{prefix}/models/{model}{method}")
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

// ---- Gemini-format callers ----
//
// A caller on Google's SDK reaches a Gemini target untranslated, and every other target
// through the chat hub: its request becomes a chat request (then whatever the target
// speaks), the target's answer becomes a chat completion (then a Gemini response). These
// are the inverse mappings of the ones above, for the same pair of formats; the finish
// reasons and usage fields map back to the ones Gemini reads.

/// Gemini `finishReason` for an OpenAI `finish_reason` (the inverse of [`finish_reason`]).
pub fn finish_reason_to_gemini(reason: &str) -> &'static str {
    match reason {
        "length" => "MAX_TOKENS",
        "content_filter" => "SAFETY",
        // A tool call, a stop sequence, the end of the turn.
        _ => "STOP",
    }
}

/// A Gemini part -> an OpenAI content part. `None`: a part that is not content (a
/// function call or response, handled by the turn).
fn part_to_openai(p: &Value, at: &str) -> Result<Option<Value>, GwError> {
    if let Some(t) = p["text"].as_str() {
        return Ok(Some(json!({"type": "text", "text": t})));
    }
    let media = |d: &Value| d["mimeType"].as_str().unwrap_or_default().to_owned();
    if let Some(d) = p.get("inlineData") {
        let (mime, data) = (media(d), d["data"].as_str().unwrap_or_default());
        if let Some(format) = mime.strip_prefix("audio/") {
            return Ok(Some(
                json!({"type": "input_audio", "input_audio": {"data": data, "format": format}}),
            ));
        }
        if mime.starts_with("image/") {
            return Ok(Some(
                json!({"type": "image_url", "image_url": {"url": format!("data:{mime};base64,{data}")}}),
            ));
        }
        return Err(bad(format!(
            "{at}: inlineData of type {mime:?} can only be sent to a Gemini model"
        )));
    }
    if let Some(d) = p.get("fileData") {
        let mime = media(d);
        if mime.is_empty() || mime.starts_with("image/") {
            if let Some(uri) = d["fileUri"].as_str() {
                return Ok(Some(json!({"type": "image_url", "image_url": {"url": uri}})));
            }
        }
        return Err(bad(format!(
            "{at}: fileData of type {mime:?} can only be sent to a Gemini model"
        )));
    }
    if p.get("functionCall").is_some() || p.get("functionResponse").is_some() {
        return Ok(None);
    }
    let kind = p.as_object().and_then(|o| o.keys().next().cloned()).unwrap_or_default();
    Err(bad(format!("{at}: a {kind:?} part can only be sent to a Gemini model")))
}

/// Chat content from parts: a string when they are all text (what every provider
/// reads), else a list of parts.
fn chat_content(parts: Vec<Value>) -> Value {
    if parts.iter().all(|p| p["type"] == "text") {
        let text: String = parts.iter().filter_map(|p| p["text"].as_str()).collect();
        json!(text)
    } else {
        Value::Array(parts)
    }
}

/// Gemini `generateContent` request -> OpenAI chat request for `model`, streaming when
/// the caller called `streamGenerateContent` (with the usage chunk asked for: the caller
/// gets `usageMetadata`). Function calls get ids `call_{n}` (with their thought
/// signature, as answers carry them) and each function response answers the latest
/// unanswered call of its name, as Gemini pairs them.
pub fn gemini_request_to_chat(req: &Value, model: &str, stream: bool) -> Result<Value, GwError> {
    let contents = req["contents"]
        .as_array()
        .ok_or_else(|| bad("`contents` must be a list"))?;
    let mut messages = Vec::new();
    let system: Vec<Value> = req["systemInstruction"]["parts"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(j, p)| part_to_openai(p, &format!("systemInstruction.parts[{j}]")))
        .filter_map(Result::transpose)
        .collect::<Result<_, _>>()?;
    if !system.is_empty() {
        messages.push(json!({"role": "system", "content": chat_content(system)}));
    }
    // Calls made and not yet answered: (name, id).
    let mut open: Vec<(String, String)> = Vec::new();
    let mut calls = 0usize;
    for (i, c) in contents.iter().enumerate() {
        let parts = c["parts"]
            .as_array()
            .ok_or_else(|| bad(format!("contents[{i}].parts must be a list")))?;
        let model_turn = match c["role"].as_str() {
            None | Some("user") => false,
            Some("model") => true,
            Some(other) => return Err(bad(format!("contents[{i}]: unknown role {other:?}"))),
        };
        let mut content = Vec::new();
        let mut tool_calls = Vec::new();
        for (j, p) in parts.iter().enumerate() {
            let at = format!("contents[{i}].parts[{j}]");
            if model_turn && p["thought"] == Value::Bool(true) {
                // A thought summary is the model's, not the conversation's.
                continue;
            }
            if let Some(call) = p.get("functionCall") {
                if !model_turn {
                    return Err(bad(format!("{at}: a functionCall belongs in a model turn")));
                }
                let name = call["name"]
                    .as_str()
                    .ok_or_else(|| bad(format!("{at}: functionCall needs a name")))?;
                let id = call_id(calls, p);
                calls += 1;
                let args = if call["args"].is_null() {
                    json!({})
                } else {
                    call["args"].clone()
                };
                open.push((name.to_owned(), id.clone()));
                tool_calls.push(json!({"id": id, "type": "function",
                    "function": {"name": name, "arguments": args.to_string()}}));
            } else if let Some(r) = p.get("functionResponse") {
                let name = r["name"]
                    .as_str()
                    .ok_or_else(|| bad(format!("{at}: functionResponse needs a name")))?;
                let Some(k) = open.iter().rposition(|(n, _)| n == name) else {
                    return Err(bad(format!(
                        "{at}: functionResponse {name:?} answers no earlier functionCall"
                    )));
                };
                let (_, id) = open.remove(k);
                // Right after the calls' message, before this turn's other content: chat
                // wants a call's answer next to it.
                messages.push(json!({"role": "tool", "tool_call_id": id, "content": r["response"].to_string()}));
            } else if let Some(part) = part_to_openai(p, &at)? {
                content.push(part);
            }
        }
        if model_turn {
            if content.is_empty() && tool_calls.is_empty() {
                continue;
            }
            let mut m = json!({"role": "assistant", "content": if content.is_empty() { Value::Null } else { chat_content(content) }});
            if !tool_calls.is_empty() {
                m["tool_calls"] = Value::Array(tool_calls);
            }
            messages.push(m);
        } else if !content.is_empty() {
            messages.push(json!({"role": "user", "content": chat_content(content)}));
        }
    }
    let mut out = Map::new();
    out.insert("model".into(), json!(model));
    out.insert("messages".into(), Value::Array(messages));
    let g = &req["generationConfig"];
    if g["candidateCount"].as_u64().is_some_and(|n| n > 1) {
        return Err(bad("candidateCount > 1 is only served by Gemini models through aigw"));
    }
    for (from, to) in [
        ("temperature", "temperature"),
        ("topP", "top_p"),
        ("presencePenalty", "presence_penalty"),
        ("frequencyPenalty", "frequency_penalty"),
        ("seed", "seed"),
        ("maxOutputTokens", "max_tokens"),
        ("stopSequences", "stop"),
    ] {
        if !g[from].is_null() {
            out.insert(to.into(), g[from].clone());
        }
    }
    let schema = g
        .get("responseJsonSchema")
        .or(g.get("responseSchema"))
        .filter(|s| !s.is_null());
    match (g["responseMimeType"].as_str(), schema) {
        (_, Some(schema)) => {
            out.insert(
                "response_format".into(),
                json!({"type": "json_schema", "json_schema": {"name": "response", "schema": schema}}),
            );
        }
        (Some("application/json"), None) => {
            out.insert("response_format".into(), json!({"type": "json_object"}));
        }
        (None | Some("text/plain"), None) => {}
        (Some(other), None) => {
            return Err(bad(format!(
                "responseMimeType {other:?} is only served by Gemini models through aigw"
            )))
        }
    }
    let mut tools = Vec::new();
    for (i, t) in req["tools"].as_array().into_iter().flatten().enumerate() {
        let Some(decls) = t["functionDeclarations"].as_array() else {
            return Err(bad(format!(
                "tools[{i}]: only functionDeclarations can be sent to a non-Gemini model"
            )));
        };
        for d in decls {
            let mut f = json!({"name": d["name"]});
            if let Some(desc) = d["description"].as_str() {
                f["description"] = json!(desc);
            }
            if let Some(p) = d
                .get("parametersJsonSchema")
                .or(d.get("parameters"))
                .filter(|p| !p.is_null())
            {
                f["parameters"] = p.clone();
            }
            tools.push(json!({"type": "function", "function": f}));
        }
    }
    if !tools.is_empty() {
        out.insert("tools".into(), Value::Array(tools));
    }
    let calling = &req["toolConfig"]["functionCallingConfig"];
    let allowed = calling["allowedFunctionNames"].as_array();
    let choice = match calling["mode"].as_str() {
        Some("AUTO") => Some(json!("auto")),
        Some("NONE") => Some(json!("none")),
        Some("ANY") => match allowed.map(Vec::as_slice) {
            Some([one]) => Some(json!({"type": "function", "function": {"name": one}})),
            _ => Some(json!("required")),
        },
        _ => None,
    };
    if let Some(c) = choice {
        out.insert("tool_choice".into(), c);
    }
    if stream {
        out.insert("stream".into(), json!(true));
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Ok(Value::Object(out))
}

/// Gemini parts of a chat assistant message (or a delta): thought summary, text, calls.
fn parts_of_chat(msg: &Value) -> Vec<Value> {
    let mut parts = Vec::new();
    if let Some(r) = msg["reasoning_content"].as_str().filter(|r| !r.is_empty()) {
        parts.push(json!({"text": r, "thought": true}));
    }
    match &msg["content"] {
        Value::String(t) if !t.is_empty() => parts.push(json!({"text": t})),
        Value::Array(items) => parts.extend(
            items
                .iter()
                .filter_map(|p| p["text"].as_str())
                .filter(|t| !t.is_empty())
                .map(|t| json!({"text": t})),
        ),
        _ => {}
    }
    if let Some(refusal) = msg["refusal"].as_str().filter(|r| !r.is_empty()) {
        parts.push(json!({"text": refusal}));
    }
    for call in msg["tool_calls"].as_array().into_iter().flatten() {
        parts.push(function_call_part(
            call["id"].as_str().unwrap_or_default(),
            &call["function"]["name"],
            call["function"]["arguments"].as_str().unwrap_or("{}"),
        ));
    }
    parts
}

/// A chat tool call as a Gemini `functionCall` part; a call id that carries a thought
/// signature gives it back.
fn function_call_part(id: &str, name: &Value, arguments: &str) -> Value {
    let args = serde_json::from_str::<Value>(arguments)
        .ok()
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}));
    let mut part = json!({"functionCall": {"name": name, "args": args}});
    if let Some((_, sig)) = id.split_once(SIGNATURE_SEP) {
        part["thoughtSignature"] = json!(sig);
    }
    part
}

/// A Gemini `responseId` from a chat completion id.
fn response_id(chat_id: &Value) -> Value {
    let id = chat_id.as_str().unwrap_or_default();
    json!(id.strip_prefix("chatcmpl-").unwrap_or(id))
}

/// OpenAI chat completion -> Gemini `generateContent` response.
pub fn chat_response_to_gemini(chat: &Value) -> Value {
    let choice = &chat["choices"][0];
    let parts = parts_of_chat(&choice["message"]);
    let finish = finish_reason_to_gemini(choice["finish_reason"].as_str().unwrap_or("stop"));
    json!({
        "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": finish, "index": 0}],
        "usageMetadata": Usage::from_json(&chat["usage"]).to_gemini(),
        "modelVersion": chat["model"],
        "responseId": response_id(&chat["id"]),
    })
}

/// A provider's error body in Google's envelope, same status (the message kept).
pub fn translate_error(body: &[u8], status: u16) -> Value {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let message = v["error"]["message"]
        .as_str()
        .or(v["message"].as_str())
        .or(v["Message"].as_str())
        .map(str::to_owned)
        .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(500).collect());
    let code = match status {
        400 | 413 | 422 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        503 | 529 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "INTERNAL",
    };
    json!({"error": {"code": status, "message": message, "status": code}})
}

/// `countTokens` on a target that cannot count in Gemini's terms: the gateway's estimate,
/// a token per four bytes of the request's text (the rule the gateway charges a cut
/// stream's input by, `Usage::estimated`). Marked by the `aigw` field so nobody mistakes
/// it for a count.
pub fn estimate_count(req: &Value) -> Value {
    fn text_bytes(v: &Value) -> usize {
        match v {
            Value::Object(o) => o
                .iter()
                // Binary payloads are not text.
                .filter(|(k, _)| *k != "inlineData" && *k != "fileData")
                .map(|(k, x)| match (k.as_str(), x) {
                    ("text", Value::String(s)) => s.len(),
                    (_, x) => text_bytes(x),
                })
                .sum(),
            Value::Array(items) => items.iter().map(text_bytes).sum(),
            _ => 0,
        }
    }
    // `countTokens` takes `contents`, or a whole `generateContentRequest`.
    let bytes = text_bytes(&req["contents"])
        + text_bytes(&req["systemInstruction"])
        + text_bytes(&req["generateContentRequest"]);
    json!({"totalTokens": bytes.div_ceil(4), "aigw": {"estimated": true}})
}

/// The texts of an `embedContent` request's `content` (its text parts, joined).
fn content_text_of(content: &Value, at: &str) -> Result<String, GwError> {
    let parts = content["parts"]
        .as_array()
        .ok_or_else(|| bad(format!("{at}.parts must be a list")))?;
    let mut text = String::new();
    for p in parts {
        match p["text"].as_str() {
            Some(t) => text.push_str(t),
            None => {
                return Err(bad(format!(
                    "{at}: only text parts can be embedded by a non-Gemini model"
                )))
            }
        }
    }
    Ok(text)
}

/// The `model` of one request of a batch: none, the path's alias, or `models/{alias}`
/// (what the SDK writes). Another model is refused, as Google refuses it: a batch is one
/// model's, the one the key was admitted for.
fn batch_model_ok(r: &Value, alias: &str) -> bool {
    match r["model"].as_str() {
        None => r["model"].is_null(),
        Some(m) => m.strip_prefix("models/").unwrap_or(m) == alias,
    }
}

/// `embedContent` / `batchEmbedContents` -> OpenAI embeddings request.
pub fn embed_request_to_openai(req: &Value, model: &str, alias: &str, batch: bool) -> Result<Value, GwError> {
    let mut out = json!({"model": model, "encoding_format": "float"});
    let dims = if batch {
        let requests = req["requests"]
            .as_array()
            .ok_or_else(|| bad("`requests` must be a list"))?;
        let mut input = Vec::with_capacity(requests.len());
        let mut dims = None;
        for (i, r) in requests.iter().enumerate() {
            if !batch_model_ok(r, alias) {
                return Err(bad(format!(
                    "requests[{i}].model must be models/{alias}, the model of the path"
                )));
            }
            input.push(json!(content_text_of(
                &r["content"],
                &format!("requests[{i}].content")
            )?));
            let d = r["outputDimensionality"].as_u64();
            if i > 0 && d != dims {
                return Err(bad(
                    "every request of the batch must ask for the same outputDimensionality",
                ));
            }
            dims = d;
        }
        out["input"] = Value::Array(input);
        dims
    } else {
        out["input"] = json!(content_text_of(&req["content"], "content")?);
        req["outputDimensionality"].as_u64()
    };
    if let Some(d) = dims {
        out["dimensions"] = json!(d);
    }
    Ok(out)
}

/// A batch's requests for a Gemini target: each names the target's model (the caller
/// named the alias). Refuses a request naming another model.
pub fn batch_embed_upstream(req: &Value, upstream_model: &str, alias: &str) -> Result<Value, GwError> {
    let mut out = req.clone();
    let requests = out["requests"]
        .as_array_mut()
        .ok_or_else(|| bad("`requests` must be a list"))?;
    let name = format!(
        "models/{}",
        upstream_model.strip_prefix("models/").unwrap_or(upstream_model)
    );
    for (i, r) in requests.iter_mut().enumerate() {
        if !batch_model_ok(r, alias) {
            return Err(bad(format!(
                "requests[{i}].model must be models/{alias}, the model of the path"
            )));
        }
        if let Some(o) = r.as_object_mut() {
            o.insert("model".into(), json!(name));
        }
    }
    Ok(out)
}

/// OpenAI embeddings answer -> `embedContent` (`{embedding: {values}}`) or
/// `batchEmbedContents` (`{embeddings: [{values}]}`). The vectors are copied as the
/// provider wrote them (never parsed into floats and printed again, which may move the
/// last digit). `None`: not an embeddings answer.
pub fn embeddings_to_gemini(body: &[u8], batch: bool) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Row<'a> {
        #[serde(default)]
        index: u64,
        #[serde(borrow)]
        embedding: &'a serde_json::value::RawValue,
    }
    #[derive(serde::Deserialize)]
    struct Answer<'a> {
        #[serde(borrow)]
        data: Vec<Row<'a>>,
    }
    let mut a: Answer = serde_json::from_slice(body).ok()?;
    a.data.sort_by_key(|r| r.index);
    let values = |r: &Row| format!("{{\"values\":{}}}", r.embedding.get());
    Some(if batch {
        let rows: Vec<String> = a.data.iter().map(values).collect();
        format!("{{\"embeddings\":[{}]}}", rows.join(","))
    } else {
        format!(
            "{{\"embedding\":{}}}",
            a.data.first().map_or_else(|| "{\"values\":[]}".to_owned(), values)
        )
    })
}

/// Reads a Gemini answer's `usageMetadata` for the gateway's accounting (the answer
/// passes through untouched).
pub fn native_usage(body: &[u8]) -> Option<Usage> {
    #[derive(serde::Deserialize)]
    struct Meta {
        #[serde(rename = "usageMetadata")]
        usage_metadata: Option<Value>,
    }
    let m: Meta = serde_json::from_slice(body).ok()?;
    m.usage_metadata.map(|u| usage(&u))
}

/// A Gemini stream to a Gemini caller: passed through event by event, its usage read
/// (the last `usageMetadata` is the total) and its end known by the finish reason (Gemini
/// has no end marker). A stream that ends without one was cut: it ends with an error event
/// in Google's envelope.
#[derive(Debug, Default)]
pub struct GeminiPassthrough {
    usage: Usage,
    finished: bool,
    ended: bool,
}

impl Translate for GeminiPassthrough {
    fn event(&mut self, data: &[u8], out: &mut Vec<u8>) {
        if self.ended || data.is_empty() {
            return;
        }
        let Some(ev) = parse_chunk(data, Dialect::Gemini, out) else {
            self.ended = true;
            return;
        };
        if !ev["usageMetadata"].is_null() {
            self.usage = usage(&ev["usageMetadata"]);
        }
        if ev["candidates"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["finishReason"].is_string())
            || !ev["promptFeedback"]["blockReason"].is_null()
        {
            self.finished = true;
        }
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(data);
        out.extend_from_slice(b"\n\n");
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.ended && !self.finished {
            fail(
                out,
                Dialect::Gemini,
                "The provider's stream ended before a finish reason.",
            );
        }
        self.ended = true;
    }

    fn usage(&self) -> Usage {
        self.usage
    }

    fn complete(&self) -> bool {
        self.finished
    }
}

/// OpenAI chat chunks -> Gemini stream events (`data:` only, as Google's `alt=sse`).
/// Text and thought summaries go out as they come; tool calls, whose arguments chat
/// streams in pieces, go out whole when the finish arrives (Gemini sends each call whole);
/// the last event carries the finish reason and `usageMetadata`, written at `[DONE]` so
/// the usage chunk before it is in. A stream without `[DONE]` ends with an error event.
#[derive(Debug, Default)]
pub struct ChatToGemini {
    id: Value,
    model: Value,
    /// Tool calls by index: id, name, arguments so far.
    calls: Vec<(String, Value, String)>,
    finish: Option<String>,
    pub usage: Usage,
    done: bool,
    ended: bool,
}

impl ChatToGemini {
    pub fn new(model: &str) -> Self {
        Self {
            model: json!(model),
            ..Self::default()
        }
    }

    fn send(&self, out: &mut Vec<u8>, parts: Vec<Value>, finish: Option<&str>, usage: Option<Usage>) {
        let mut cand = json!({"content": {"role": "model", "parts": parts}, "index": 0});
        if let Some(f) = finish {
            cand["finishReason"] = json!(f);
        }
        let mut ev = json!({"candidates": [cand], "modelVersion": self.model, "responseId": response_id(&self.id)});
        if let Some(u) = usage {
            ev["usageMetadata"] = u.to_gemini();
        }
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(ev.to_string().as_bytes());
        out.extend_from_slice(b"\n\n");
    }
}

impl Translate for ChatToGemini {
    fn event(&mut self, data: &[u8], out: &mut Vec<u8>) {
        if self.ended || data.is_empty() {
            return;
        }
        if data == b"[DONE]" {
            self.done = true;
            self.ended = true;
            let mut parts = Vec::new();
            for (id, name, args) in std::mem::take(&mut self.calls) {
                parts.push(function_call_part(&id, &name, &args));
            }
            let finish = finish_reason_to_gemini(self.finish.as_deref().unwrap_or("stop"));
            self.send(out, parts, Some(finish), Some(self.usage));
            return;
        }
        let Some(chunk) = parse_chunk(data, Dialect::Gemini, out) else {
            self.ended = true;
            return;
        };
        if self.id.is_null() {
            self.id = chunk["id"].clone();
            if let Some(m) = chunk["model"].as_str() {
                self.model = json!(m);
            }
        }
        if !chunk["usage"].is_null() {
            self.usage = Usage::from_json(&chunk["usage"]);
        }
        let Some(choice) = chunk["choices"].as_array().and_then(|c| c.first()) else {
            return;
        };
        let delta = &choice["delta"];
        for call in delta["tool_calls"].as_array().into_iter().flatten() {
            let i = call["index"].as_u64().unwrap_or(0) as usize;
            // Indexes are the provider's; a gap is not a reason to allocate.
            if i > self.calls.len() {
                continue;
            }
            if i == self.calls.len() {
                self.calls.push((String::new(), Value::Null, String::new()));
            }
            let c = &mut self.calls[i];
            if let Some(id) = call["id"].as_str() {
                c.0 = id.to_owned();
            }
            if !call["function"]["name"].is_null() {
                c.1 = call["function"]["name"].clone();
            }
            if let Some(a) = call["function"]["arguments"].as_str() {
                c.2.push_str(a);
            }
        }
        let text_only = json!({"content": delta["content"], "reasoning_content": delta["reasoning_content"],
            "refusal": delta["refusal"]});
        let parts = parts_of_chat(&text_only);
        if !parts.is_empty() {
            self.send(out, parts, None, None);
        }
        if let Some(f) = choice["finish_reason"].as_str() {
            self.finish = Some(f.to_owned());
        }
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.ended {
            fail(out, Dialect::Gemini, "The provider's stream ended before [DONE].");
        }
        self.ended = true;
    }

    fn usage(&self) -> Usage {
        self.usage
    }

    fn complete(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod caller_tests {
    use super::*;

    #[test]
    fn embedding_vectors_are_copied_digit_for_digit() {
        let body = br#"{"data":[{"index":1,"embedding":[0.23921568627450981,1e-7]},{"index":0,"embedding":[-0.5]}],"usage":{"prompt_tokens":2}}"#;
        assert_eq!(
            embeddings_to_gemini(body, true).unwrap(),
            r#"{"embeddings":[{"values":[-0.5]},{"values":[0.23921568627450981,1e-7]}]}"#
        );
        assert_eq!(
            embeddings_to_gemini(body, false).unwrap(),
            r#"{"embedding":{"values":[-0.5]}}"#
        );
        assert!(embeddings_to_gemini(b"{\"error\": 1}", false).is_none());
    }

    #[test]
    fn a_gemini_caller_request_needs_contents_and_known_roles() {
        assert!(gemini_request_to_chat(&json!({}), "m", false).is_err());
        let system = json!({"contents": [{"role": "system", "parts": [{"text": "x"}]}]});
        assert!(gemini_request_to_chat(&system, "m", false).is_err());
        let two = json!({"contents": [], "generationConfig": {"candidateCount": 2}});
        assert!(gemini_request_to_chat(&two, "m", false).is_err());
        let search = json!({"contents": [], "tools": [{"googleSearch": {}}]});
        assert!(gemini_request_to_chat(&search, "m", false).is_err());
    }

    #[test]
    fn the_estimate_counts_text_and_never_binary() {
        let req = json!({"contents": [{"role": "user", "parts": [{"text": "abcdefgh"},
            {"inlineData": {"mimeType": "image/png", "data": "A".repeat(4000)}}]}],
            "systemInstruction": {"parts": [{"text": "abcd"}]}});
        assert_eq!(estimate_count(&req)["totalTokens"], 3);
    }
}
