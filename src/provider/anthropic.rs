//! Anthropic Messages: the `anthropic` provider (native `/v1/messages`) and the two-way
//! translation between Anthropic's and OpenAI's request and response shapes, used when a
//! caller's dialect differs from its provider's, for whole answers and for streams.
//!
//! Translation works on `serde_json::Value`: it only runs when dialects differ, and a
//! readable mapping matters more there than the zero-copy path native requests take.

use std::collections::HashMap;

use pingora::http::RequestHeader;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::Provider;
use super::{
    bad, cache_mark, content_text, has_cache_mark, image_of, marked_text_parts, push_turn, thinking_ask,
    thinking_blocks, Image,
};
use crate::api::Dialect;
use crate::error::GwError;
use crate::provider::ErrorClass;
use crate::stream::translate::{anthropic_event, fail, parse_chunk, parse_event, Chunks, Thinking};
use crate::stream::Translate;
use crate::usage::{RawUsage, Usage};

/// `anthropic-version` when neither the caller nor the provider config sets one.
pub const DEFAULT_VERSION: &str = "2023-06-01";
/// Anthropic requires `max_tokens`; OpenAI callers often leave it out.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

pub const VERSION_HEADER: http::HeaderName = http::HeaderName::from_static("anthropic-version");
pub const BETA_HEADER: http::HeaderName = http::HeaderName::from_static("anthropic-beta");

/// Puts the provider's key and API version on the upstream request. A caller that sent
/// its own `anthropic-version` (the Anthropic SDKs do) keeps it: it describes the body.
pub fn apply_credentials(p: &Provider, req: &mut RequestHeader) -> pingora::Result<()> {
    for (name, value) in &p.headers {
        req.insert_header(name.clone(), value.clone())?;
    }
    if let Some(key) = &p.api_key {
        req.insert_header("x-api-key", key.expose())?;
    }
    if !req.headers.contains_key("anthropic-version") {
        req.insert_header(
            "anthropic-version",
            p.anthropic_version.as_deref().unwrap_or(DEFAULT_VERSION),
        )?;
    }
    Ok(())
}

/// Anthropic `stop_reason` -> OpenAI `finish_reason`.
pub fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        _ => "stop",
    }
}

/// OpenAI `finish_reason` -> Anthropic `stop_reason`.
pub fn stop_reason(finish_reason: &str) -> &'static str {
    match finish_reason {
        "length" => "max_tokens",
        "tool_calls" | "function_call" => "tool_use",
        "content_filter" => "refusal",
        _ => "end_turn",
    }
}

/// An OpenAI `image_url` part -> an Anthropic image block.
fn image_block(part: &Value) -> Result<Value, GwError> {
    Ok(match image_of(part).map_err(bad)? {
        Image::Base64 { media_type, data } => {
            json!({"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}})
        }
        Image::Url(url) => json!({"type": "image", "source": {"type": "url", "url": url}}),
    })
}

/// OpenAI message content -> Anthropic content blocks.
fn blocks_from_openai(content: &Value) -> Result<Vec<Value>, GwError> {
    match content {
        Value::Null => Ok(Vec::new()),
        Value::String(s) if s.is_empty() => Ok(Vec::new()),
        Value::String(s) => Ok(vec![json!({"type": "text", "text": s})]),
        Value::Array(parts) => parts
            .iter()
            .map(|p| {
                let mut block = match p["type"].as_str() {
                    Some("text") => json!({"type": "text", "text": p["text"].as_str().unwrap_or_default()}),
                    Some("image_url") => image_block(p)?,
                    other => {
                        return Err(bad(format!(
                            "content part type {other:?} cannot be sent to an Anthropic model"
                        )))
                    }
                };
                if let Some(c) = cache_mark(p) {
                    block["cache_control"] = c.clone();
                }
                Ok(block)
            })
            .collect(),
        _ => Err(bad("message content must be a string or a list of parts")),
    }
}

/// OpenAI chat request -> Anthropic messages request, for model `model`.
pub fn chat_request_to_messages(req: &Value, model: &str) -> Result<Value, GwError> {
    let msgs = req["messages"]
        .as_array()
        .ok_or_else(|| bad("`messages` must be a list"))?;
    if req["n"].as_u64().is_some_and(|n| n > 1) {
        return Err(bad("n > 1 is not supported by Anthropic models"));
    }
    let mut system = Vec::new();
    // System parts as blocks, kept as a list when one carries a cache breakpoint.
    let mut system_blocks = Vec::new();
    let mut system_marked = false;
    let mut out: Vec<Value> = Vec::new();
    for (i, m) in msgs.iter().enumerate() {
        match m["role"].as_str() {
            Some("system" | "developer") => {
                system.push(content_text(&m["content"]));
                system_marked |= has_cache_mark(&m["content"]);
                system_blocks.extend(marked_text_parts(&m["content"]));
            }
            Some("user") => push_turn(&mut out, "user", "content", blocks_from_openai(&m["content"])?),
            Some("assistant") => {
                // Signed thinking goes back first, unchanged: Anthropic checks it, and
                // wants it before the tool use it led to.
                let mut blocks = thinking_blocks(m, i)?.to_vec();
                blocks.extend(blocks_from_openai(&m["content"])?);
                for call in m["tool_calls"].as_array().into_iter().flatten() {
                    let args = call["function"]["arguments"].as_str().unwrap_or("{}");
                    let input: Value = serde_json::from_str(if args.trim().is_empty() { "{}" } else { args })
                        .map_err(|_| bad(format!("messages[{i}]: tool call arguments are not JSON")))?;
                    blocks.push(json!({
                        "type": "tool_use",
                        "id": call["id"],
                        "name": call["function"]["name"],
                        "input": input,
                    }));
                }
                push_turn(&mut out, "assistant", "content", blocks);
            }
            Some("tool") => {
                let mut result = json!({
                    "type": "tool_result",
                    "tool_use_id": m["tool_call_id"],
                    "content": content_text(&m["content"]),
                });
                if let Some(c) = m["content"]
                    .as_array()
                    .and_then(|p| p.iter().rev().find_map(cache_mark))
                {
                    result["cache_control"] = c.clone();
                }
                push_turn(&mut out, "user", "content", vec![result]);
            }
            other => return Err(bad(format!("messages[{i}]: unknown role {other:?}"))),
        }
    }
    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    body.insert("messages".into(), Value::Array(out));
    if system_marked {
        body.insert("system".into(), Value::Array(system_blocks));
    } else if !system.is_empty() {
        body.insert("system".into(), json!(system.join("\n\n")));
    }
    let max = match thinking_ask(req, DEFAULT_MAX_TOKENS)? {
        Some(ask) => {
            body.insert("thinking".into(), ask.thinking);
            ask.max_tokens
        }
        None => req["max_completion_tokens"]
            .as_u64()
            .or(req["max_tokens"].as_u64())
            .unwrap_or(DEFAULT_MAX_TOKENS),
    };
    body.insert("max_tokens".into(), json!(max));
    for k in ["temperature", "top_p", "stream"] {
        if !req[k].is_null() {
            body.insert(k.into(), req[k].clone());
        }
    }
    match &req["stop"] {
        Value::String(s) => {
            body.insert("stop_sequences".into(), json!([s]));
        }
        Value::Array(a) => {
            body.insert("stop_sequences".into(), Value::Array(a.clone()));
        }
        _ => {}
    }
    if let Some(tools) = req["tools"].as_array() {
        let tools: Vec<Value> = tools
            .iter()
            .map(|t| {
                let f = &t["function"];
                let mut tool = json!({"name": f["name"], "input_schema": if f["parameters"].is_null() { json!({"type": "object"}) } else { f["parameters"].clone() }});
                if let Some(d) = f["description"].as_str() {
                    tool["description"] = json!(d);
                }
                if let Some(c) = cache_mark(t) {
                    tool["cache_control"] = c.clone();
                }
                tool
            })
            .collect();
        body.insert("tools".into(), Value::Array(tools));
    }
    let mut choice = match &req["tool_choice"] {
        Value::String(s) if s == "required" => Some(json!({"type": "any"})),
        Value::String(s) if s == "none" => Some(json!({"type": "none"})),
        Value::String(s) if s == "auto" => Some(json!({"type": "auto"})),
        Value::Object(o) => o.get("function").map(|f| json!({"type": "tool", "name": f["name"]})),
        _ => None,
    };
    if req["parallel_tool_calls"] == Value::Bool(false) && body.contains_key("tools") {
        let c = choice.get_or_insert_with(|| json!({"type": "auto"}));
        c["disable_parallel_tool_use"] = json!(true);
    }
    if let Some(c) = choice {
        body.insert("tool_choice".into(), c);
    }
    if let Some(user) = req["user"].as_str() {
        body.insert("metadata".into(), json!({"user_id": user}));
    }
    Ok(Value::Object(body))
}

/// Anthropic messages response -> OpenAI chat completion.
pub fn messages_response_to_chat(resp: &Value, created: i64) -> Value {
    let mut text = String::new();
    let mut calls = Vec::new();
    let mut reasoning = String::new();
    let mut thinking = Vec::new();
    for block in resp["content"].as_array().into_iter().flatten() {
        match block["type"].as_str() {
            Some("text") => text.push_str(block["text"].as_str().unwrap_or_default()),
            Some("thinking") => {
                reasoning.push_str(block["thinking"].as_str().unwrap_or_default());
                thinking
                    .push(json!({"type": "thinking", "thinking": block["thinking"], "signature": block["signature"]}));
            }
            Some("redacted_thinking") => thinking.push(block.clone()),
            Some("tool_use") => calls.push(json!({
                "id": block["id"],
                "type": "function",
                "function": {"name": block["name"], "arguments": block["input"].to_string()},
            })),
            _ => {}
        }
    }
    let mut message = json!({"role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { json!(text) }});
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    add_thinking(&mut message, reasoning, thinking);
    json!({
        "id": resp["id"],
        "object": "chat.completion",
        "created": created,
        "model": resp["model"],
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish_reason(resp["stop_reason"].as_str().unwrap_or("end_turn")),
        }],
        "usage": Usage::from_json(&resp["usage"]).to_chat(),
    })
}

/// A chat answer's message gains the thinking that led to it: its text as
/// `reasoning_content`, the blocks as `thinking_blocks` (signed, to be sent back as they
/// are on the next turn).
pub(crate) fn add_thinking(message: &mut Value, reasoning: String, blocks: Vec<Value>) {
    if !reasoning.is_empty() {
        message["reasoning_content"] = json!(reasoning);
    }
    if !blocks.is_empty() {
        message["thinking_blocks"] = Value::Array(blocks);
    }
}

/// Anthropic messages request -> OpenAI chat request, for an OpenAI-style model `model`:
/// what OpenAI's API defines, nothing of Anthropic's own.
pub fn messages_request_to_chat(req: &Value, model: &str) -> Result<Value, GwError> {
    messages_to_chat(req, model, false)
}

/// Anthropic messages request -> the chat shape as the hub to Converse and Gemini: chat
/// plus what those carry on and OpenAI does not define: Anthropic's cache breakpoints
/// (`cache_control` on parts and tools, system kept as parts when one is marked), its
/// `thinking` request, and thinking blocks as assistant `thinking_blocks`.
pub fn messages_request_to_hub(req: &Value, model: &str) -> Result<Value, GwError> {
    messages_to_chat(req, model, true)
}

fn messages_to_chat(req: &Value, model: &str, hub: bool) -> Result<Value, GwError> {
    let msgs = req["messages"]
        .as_array()
        .ok_or_else(|| bad("`messages` must be a list"))?;
    let mut out = Vec::new();
    // A block's breakpoint, carried onto its chat part in the hub shape.
    let mark = |part: &mut Value, block: &Value| {
        if let (true, Some(c)) = (hub, cache_mark(block)) {
            part["cache_control"] = c.clone();
        }
    };
    if hub && has_cache_mark(&req["system"]) {
        out.push(json!({"role": "system", "content": marked_text_parts(&req["system"])}));
    } else {
        let system = content_text(&req["system"]);
        if !system.is_empty() {
            out.push(json!({"role": "system", "content": system}));
        }
    }
    for (i, m) in msgs.iter().enumerate() {
        let role = m["role"]
            .as_str()
            .ok_or_else(|| bad(format!("messages[{i}].role is required")))?;
        if role != "user" && role != "assistant" {
            return Err(bad(format!("messages[{i}]: unknown role {role:?}")));
        }
        let blocks = match &m["content"] {
            Value::String(s) => {
                out.push(json!({"role": role, "content": s}));
                continue;
            }
            Value::Array(b) => b,
            _ => {
                return Err(bad(format!(
                    "messages[{i}].content must be a string or a list of blocks"
                )))
            }
        };
        let mut parts = Vec::new();
        let mut calls = Vec::new();
        let mut thinking = Vec::new();
        for b in blocks {
            match b["type"].as_str() {
                Some("thinking" | "redacted_thinking") if hub && role == "assistant" => thinking.push(b.clone()),
                Some("text") => {
                    let mut p = json!({"type": "text", "text": b["text"]});
                    mark(&mut p, b);
                    parts.push(p);
                }
                Some("image") => {
                    let src = &b["source"];
                    let url = match src["type"].as_str() {
                        Some("base64") => format!(
                            "data:{};base64,{}",
                            src["media_type"].as_str().unwrap_or("image/png"),
                            src["data"].as_str().unwrap_or_default()
                        ),
                        _ => src["url"].as_str().unwrap_or_default().to_owned(),
                    };
                    let mut p = json!({"type": "image_url", "image_url": {"url": url}});
                    mark(&mut p, b);
                    parts.push(p);
                }
                Some("tool_use") => calls.push(json!({
                    "id": b["id"],
                    "type": "function",
                    "function": {"name": b["name"], "arguments": b["input"].to_string()},
                })),
                // Tool results become OpenAI tool messages, ahead of the turn's other parts.
                Some("tool_result") => {
                    let text = content_text(&b["content"]);
                    let content = match (hub, cache_mark(b)) {
                        (true, Some(c)) => json!([{"type": "text", "text": text, "cache_control": c}]),
                        _ => json!(text),
                    };
                    out.push(json!({"role": "tool", "tool_call_id": b["tool_use_id"], "content": content}));
                }
                // Thinking and other blocks have no OpenAI counterpart.
                _ => {}
            }
        }
        let all_text = parts.iter().all(|p| p["type"] == "text");
        let marked = parts.iter().any(|p| cache_mark(p).is_some());
        let content = if parts.is_empty() {
            Value::Null
        } else if (role == "assistant" || all_text) && !marked {
            json!(parts
                .iter()
                .filter_map(|p| p["text"].as_str())
                .collect::<Vec<_>>()
                .join(""))
        } else {
            Value::Array(parts)
        };
        if content.is_null() && calls.is_empty() && thinking.is_empty() {
            continue;
        }
        let mut msg = json!({"role": role, "content": content});
        if !calls.is_empty() {
            msg["tool_calls"] = Value::Array(calls);
        }
        if !thinking.is_empty() {
            msg["thinking_blocks"] = Value::Array(thinking);
        }
        out.push(msg);
    }
    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    body.insert("messages".into(), Value::Array(out));
    if let Some(max) = req["max_tokens"].as_u64() {
        body.insert("max_tokens".into(), json!(max));
    }
    if hub && req["thinking"].is_object() {
        body.insert("thinking".into(), req["thinking"].clone());
    }
    for k in ["temperature", "top_p"] {
        if !req[k].is_null() {
            body.insert(k.into(), req[k].clone());
        }
    }
    if let Some(stops) = req["stop_sequences"].as_array() {
        body.insert("stop".into(), Value::Array(stops.clone()));
    }
    if req["stream"] == Value::Bool(true) {
        body.insert("stream".into(), json!(true));
        // The usage chunk becomes the final message_delta's usage.
        body.insert("stream_options".into(), json!({"include_usage": true}));
    }
    if let Some(tools) = req["tools"].as_array() {
        let tools: Vec<Value> = tools
            .iter()
            .map(|t| {
                let mut f = json!({"name": t["name"], "parameters": t["input_schema"]});
                if let Some(d) = t["description"].as_str() {
                    f["description"] = json!(d);
                }
                let mut tool = json!({"type": "function", "function": f});
                mark(&mut tool, t);
                tool
            })
            .collect();
        body.insert("tools".into(), Value::Array(tools));
    }
    let tc = &req["tool_choice"];
    match tc["type"].as_str() {
        Some("auto") => {
            body.insert("tool_choice".into(), json!("auto"));
        }
        Some("any") => {
            body.insert("tool_choice".into(), json!("required"));
        }
        Some("none") => {
            body.insert("tool_choice".into(), json!("none"));
        }
        Some("tool") => {
            body.insert(
                "tool_choice".into(),
                json!({"type": "function", "function": {"name": tc["name"]}}),
            );
        }
        _ => {}
    }
    if tc["disable_parallel_tool_use"] == Value::Bool(true) {
        body.insert("parallel_tool_calls".into(), json!(false));
    }
    if let Some(user) = req["metadata"]["user_id"].as_str() {
        body.insert("user".into(), json!(user));
    }
    Ok(Value::Object(body))
}

/// OpenAI chat completion -> Anthropic messages response.
pub fn chat_response_to_messages(resp: &Value) -> Value {
    let choice = &resp["choices"][0];
    let msg = &choice["message"];
    let mut content = Vec::new();
    // Signed blocks when the answer came with them (Claude through Bedrock), else the
    // reasoning text of an OpenAI-style reasoning model, which has no signature.
    match (msg["thinking_blocks"].as_array(), msg["reasoning_content"].as_str()) {
        (Some(blocks), _) => content.extend(blocks.iter().cloned()),
        (None, Some(r)) if !r.is_empty() => {
            content.push(json!({"type": "thinking", "thinking": r, "signature": ""}));
        }
        _ => {}
    }
    let text = content_text(&msg["content"]);
    if !text.is_empty() {
        content.push(json!({"type": "text", "text": text}));
    }
    for call in msg["tool_calls"].as_array().into_iter().flatten() {
        let input = call["function"]["arguments"]
            .as_str()
            .and_then(|a| serde_json::from_str::<Value>(a).ok())
            .unwrap_or_else(|| json!({}));
        content.push(json!({"type": "tool_use", "id": call["id"], "name": call["function"]["name"], "input": input}));
    }
    let u = &resp["usage"];
    json!({
        "id": resp["id"],
        "type": "message",
        "role": "assistant",
        "model": resp["model"],
        "content": content,
        "stop_reason": stop_reason(choice["finish_reason"].as_str().unwrap_or("stop")),
        "stop_sequence": null,
        "usage": Usage::from_json(u).to_messages(),
    })
}

/// Anthropic's error `type` for an HTTP status.
pub fn error_type(status: u16) -> &'static str {
    match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 | 503 => "overloaded_error",
        _ => "api_error",
    }
}

/// A provider's error body in the other dialect, same status. Unparseable bodies keep
/// their text as the message.
pub fn translate_error(body: &[u8], status: u16, to_anthropic: bool) -> Value {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    // AWS services (Bedrock) answer `{"message": ...}`.
    let message = v["error"]["message"]
        .as_str()
        .or(v["message"].as_str())
        .or(v["Message"].as_str())
        .map(str::to_owned)
        .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(500).collect());
    if to_anthropic {
        json!({"type": "error", "error": {"type": error_type(status), "message": message}})
    } else {
        // Gemini's errors have no `type`; OpenAI's for the status stands in.
        let kind = v["error"]["type"].as_str().unwrap_or(match status {
            400 | 404 | 413 | 422 => "invalid_request_error",
            401 => "authentication_error",
            403 => "permission_error",
            429 => "rate_limit_error",
            _ => "api_error",
        });
        json!({"error": {"message": message, "type": kind, "code": null, "param": null}})
    }
}

/// The class of an Anthropic error (its message, lowercased): "prompt is too long: N
/// tokens > M maximum", "input length and `max_tokens` exceed context limit"; "output
/// blocked by content filtering policy"; the 413 `request_too_large` of a body over the
/// API's size limit. Its 429 ("This request would exceed the rate limit for your
/// organization of N input tokens per minute") reads the same for one large request and
/// for everyone's traffic, so it has no class: it counts as the target's (`route::plan`).
pub fn error_class(v: &Value, message: &str) -> Option<ErrorClass> {
    if message.contains("prompt is too long") || message.contains("exceed context limit") {
        Some(ErrorClass::ContextLengthExceeded)
    } else if message.contains("content filtering policy") {
        Some(ErrorClass::ContentFilter)
    } else if v["error"]["type"] == "request_too_large" {
        Some(ErrorClass::RequestTooLarge)
    } else {
        None
    }
}

// ---- Streams ----

/// Anthropic Messages events -> OpenAI `chat.completion.chunk`s.
#[derive(Debug, Default)]
pub struct AnthropicToChat {
    chunks: Chunks,
    /// Anthropic content block index -> OpenAI tool call index.
    tools: HashMap<u64, usize>,
    thinking: Thinking,
    pub usage: Usage,
    finish: Option<&'static str>,
    ended: bool,
    /// `message_stop` arrived: the usage is the provider's final count.
    complete: bool,
}

impl AnthropicToChat {
    pub fn new(include_usage: bool, created: i64) -> Self {
        Self {
            chunks: Chunks {
                include_usage,
                created,
                ..Chunks::default()
            },
            ..Self::default()
        }
    }

    /// Input tokens come with message_start; output tokens are cumulative in message_delta.
    fn add_usage(&mut self, u: &Value) {
        if let Ok(raw) = RawUsage::deserialize(u) {
            self.usage.merge(&raw);
        }
    }
}

impl Translate for AnthropicToChat {
    fn event(&mut self, data: &[u8], out: &mut Vec<u8>) {
        if self.ended || data.is_empty() {
            return;
        }
        let Some(ev) = parse_event(data, Dialect::OpenAi, out) else {
            self.ended = true;
            return;
        };
        match ev["type"].as_str() {
            Some("message_start") => {
                let m = &ev["message"];
                self.chunks.id = m["id"].clone();
                self.chunks.model = m["model"].clone();
                self.add_usage(&m["usage"]);
                self.chunks.send(out, json!({"role": "assistant", "content": ""}), None);
            }
            Some("content_block_start") => {
                let block = &ev["content_block"];
                if matches!(block["type"].as_str(), Some("thinking" | "redacted_thinking")) {
                    self.thinking.start(block);
                } else if block["type"] == "tool_use" {
                    let n = self.tools.len();
                    self.tools.insert(ev["index"].as_u64().unwrap_or(0), n);
                    let call = json!({"index": n, "id": block["id"], "type": "function", "function": {"name": block["name"], "arguments": ""}});
                    self.chunks.send(out, json!({"tool_calls": [call]}), None);
                } else if let Some(t) = block["text"].as_str().filter(|t| !t.is_empty()) {
                    self.chunks.send(out, json!({"content": t}), None);
                }
            }
            Some("content_block_delta") => {
                let d = &ev["delta"];
                match d["type"].as_str() {
                    Some("text_delta") => self.chunks.send(out, json!({"content": d["text"]}), None),
                    Some("input_json_delta") => {
                        let n = self.tools.get(&ev["index"].as_u64().unwrap_or(0)).copied().unwrap_or(0);
                        let call = json!({"index": n, "function": {"arguments": d["partial_json"]}});
                        self.chunks.send(out, json!({"tool_calls": [call]}), None);
                    }
                    Some("thinking_delta") => {
                        let t = d["thinking"].as_str().unwrap_or_default();
                        self.thinking.text(&self.chunks, out, t);
                    }
                    Some("signature_delta") => self.thinking.signature(d["signature"].as_str().unwrap_or_default()),
                    _ => {}
                }
            }
            Some("content_block_stop") => self.thinking.end(&self.chunks, out),
            Some("message_delta") => {
                self.add_usage(&ev["usage"]);
                if let Some(r) = ev["delta"]["stop_reason"].as_str() {
                    self.finish = Some(finish_reason(r));
                }
            }
            Some("message_stop") => {
                self.ended = true;
                self.complete = true;
                self.chunks.end(out, self.finish.unwrap_or("stop"), self.usage);
            }
            Some("error") => {
                self.ended = true;
                let msg = ev["error"]["message"]
                    .as_str()
                    .unwrap_or("The provider reported an error mid-stream.");
                fail(out, Dialect::OpenAi, msg);
            }
            // ping, content_block_stop, and event types added after this was written.
            _ => {}
        }
    }

    /// A missing `message_stop` is an error.
    fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.ended {
            self.ended = true;
            fail(out, Dialect::OpenAi, "The provider's stream ended before message_stop.");
        }
    }

    fn usage(&self) -> Usage {
        self.usage
    }

    fn complete(&self) -> bool {
        self.complete
    }
}

/// OpenAI `chat.completion.chunk`s -> Anthropic Messages events.
#[derive(Debug, Default)]
pub struct ChatToAnthropic {
    started: bool,
    /// Index and kind ("text" or "tool_use") of the content block now open.
    open: Option<(u64, &'static str)>,
    next_block: u64,
    /// OpenAI tool call index -> Anthropic content block index.
    tools: HashMap<u64, u64>,
    stop: Option<&'static str>,
    pub usage: Usage,
    ended: bool,
    /// `[DONE]` arrived (the usage chunk comes before it).
    complete: bool,
}

impl ChatToAnthropic {
    pub fn new() -> Self {
        Self::default()
    }

    fn close_block(&mut self, out: &mut Vec<u8>) {
        if let Some((i, _)) = self.open.take() {
            anthropic_event(out, &json!({"type": "content_block_stop", "index": i}));
        }
    }

    /// The open thinking block, opened when another kind is open.
    fn thinking_block(&mut self, out: &mut Vec<u8>) -> u64 {
        match self.open {
            Some((i, "thinking")) => i,
            _ => self.open_block(
                out,
                "thinking",
                json!({"type": "thinking", "thinking": "", "signature": ""}),
            ),
        }
    }

    /// A whole thinking block arrived (chat's `thinking_blocks`): the open thinking block,
    /// whose text was streamed, gets its signature and ends; a block not streamed before
    /// (or a redacted one) is sent whole.
    fn thinking_done(&mut self, out: &mut Vec<u8>, block: &Value) {
        let streamed = matches!(self.open, Some((_, "thinking")));
        let i = match (block["type"].as_str(), streamed) {
            (Some("thinking"), true) => self.thinking_block(out),
            (Some("thinking"), false) => {
                let i = self.thinking_block(out);
                let d = json!({"type": "thinking_delta", "thinking": block["thinking"]});
                anthropic_event(out, &json!({"type": "content_block_delta", "index": i, "delta": d}));
                i
            }
            (Some("redacted_thinking"), _) => {
                self.open_block(out, "redacted_thinking", block.clone());
                return self.close_block(out);
            }
            _ => return,
        };
        if let Some(sig) = block["signature"].as_str().filter(|s| !s.is_empty()) {
            let d = json!({"type": "signature_delta", "signature": sig});
            anthropic_event(out, &json!({"type": "content_block_delta", "index": i, "delta": d}));
        }
        self.close_block(out);
    }

    fn open_block(&mut self, out: &mut Vec<u8>, kind: &'static str, block: Value) -> u64 {
        self.close_block(out);
        let i = self.next_block;
        self.next_block += 1;
        self.open = Some((i, kind));
        anthropic_event(
            out,
            &json!({"type": "content_block_start", "index": i, "content_block": block}),
        );
        i
    }
}

impl Translate for ChatToAnthropic {
    fn event(&mut self, data: &[u8], out: &mut Vec<u8>) {
        if self.ended || data.is_empty() {
            return;
        }
        if data == b"[DONE]" {
            self.ended = true;
            self.complete = true;
            self.close_block(out);
            anthropic_event(
                out,
                &json!({
                    "type": "message_delta",
                    "delta": {"stop_reason": self.stop.unwrap_or("end_turn"), "stop_sequence": null},
                    "usage": self.usage.to_messages(),
                }),
            );
            anthropic_event(out, &json!({"type": "message_stop"}));
            return;
        }
        let Some(c) = parse_chunk(data, Dialect::Anthropic, out) else {
            self.ended = true;
            return;
        };
        if !self.started {
            self.started = true;
            anthropic_event(
                out,
                &json!({"type": "message_start", "message": {
                    "id": c["id"], "type": "message", "role": "assistant", "model": c["model"], "content": [],
                    "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 0, "output_tokens": 0},
                }}),
            );
        }
        if let Some(u) = c.get("usage").filter(|u| !u.is_null()) {
            self.usage = Usage::from_json(u);
        }
        let Some(choice) = c["choices"].get(0) else { return };
        let delta = &choice["delta"];
        if let Some(r) = delta["reasoning_content"].as_str().filter(|t| !t.is_empty()) {
            let i = self.thinking_block(out);
            let d = json!({"type": "thinking_delta", "thinking": r});
            anthropic_event(out, &json!({"type": "content_block_delta", "index": i, "delta": d}));
        }
        for block in delta["thinking_blocks"].as_array().into_iter().flatten() {
            self.thinking_done(out, block);
        }
        if let Some(text) = delta["content"].as_str().filter(|t| !t.is_empty()) {
            let i = match self.open {
                Some((i, "text")) => i,
                _ => self.open_block(out, "text", json!({"type": "text", "text": ""})),
            };
            anthropic_event(
                out,
                &json!({"type": "content_block_delta", "index": i, "delta": {"type": "text_delta", "text": text}}),
            );
        }
        for call in delta["tool_calls"].as_array().into_iter().flatten() {
            let n = call["index"].as_u64().unwrap_or(0);
            let block = match self.tools.get(&n) {
                Some(b) => *b,
                None => {
                    let b = self.open_block(
                        out,
                        "tool_use",
                        json!({"type": "tool_use", "id": call["id"], "name": call["function"]["name"], "input": {}}),
                    );
                    self.tools.insert(n, b);
                    b
                }
            };
            if let Some(args) = call["function"]["arguments"].as_str().filter(|a| !a.is_empty()) {
                anthropic_event(
                    out,
                    &json!({"type": "content_block_delta", "index": block, "delta": {"type": "input_json_delta", "partial_json": args}}),
                );
            }
        }
        if let Some(f) = choice["finish_reason"].as_str() {
            self.stop = Some(stop_reason(f));
        }
    }

    /// A missing `[DONE]` is an error.
    fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.ended {
            self.ended = true;
            fail(out, Dialect::Anthropic, "The provider's stream ended before [DONE].");
        }
    }

    fn usage(&self) -> Usage {
        self.usage
    }

    fn complete(&self) -> bool {
        self.complete
    }
}
