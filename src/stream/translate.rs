//! Streamed translation between dialects, one upstream SSE event at a time.
//!
//! Every translator ends a stream that breaks its own protocol (an event that is not JSON,
//! an `error` event, or an end without `message_stop` / `[DONE]`) with one error event in
//! the caller's dialect and no clean ending, so a failure can never look like a finish.

use std::collections::HashMap;

use serde_json::{json, Value};

use super::{write_event, Translate, Usage};
use crate::error::GwError;
use crate::provider::anthropic::{finish_reason, stop_reason};
use crate::provider::Dialect;
use crate::provider::{bedrock, gemini};

fn openai_event(out: &mut Vec<u8>, v: &Value) {
    write_event(out, None, v);
}

/// Anthropic names every event after its `type`.
fn anthropic_event(out: &mut Vec<u8>, v: &Value) {
    write_event(out, Some(v["type"].as_str().unwrap_or("error")), v);
}

fn fail(out: &mut Vec<u8>, dialect: Dialect, message: &str) {
    out.extend_from_slice(&GwError::UpstreamError(message.to_owned()).sse_event(dialect));
}

/// The event's JSON, or `None` after writing the error that ends the stream.
fn parse_event(data: &[u8], dialect: Dialect, out: &mut Vec<u8>) -> Option<Value> {
    let v = serde_json::from_slice::<Value>(data).ok();
    if v.is_none() {
        fail(out, dialect, "The provider sent a malformed stream event.");
    }
    v
}

/// Like [`parse_event`], for streams that report a failure as an `{"error": ...}` object
/// in place of a chunk (OpenAI-style and Gemini).
fn parse_chunk(data: &[u8], dialect: Dialect, out: &mut Vec<u8>) -> Option<Value> {
    let v = parse_event(data, dialect, out)?;
    if let Some(e) = v.get("error").filter(|e| !e.is_null()) {
        let msg = e["message"]
            .as_str()
            .unwrap_or("The provider reported an error mid-stream.");
        fail(out, dialect, msg);
        return None;
    }
    Some(v)
}

/// The `chat.completion.chunk`s of one completion: the fields every chunk repeats, and
/// the clean ending (finish chunk, the usage chunk when the caller asked, `[DONE]`).
#[derive(Debug, Default)]
struct Chunks {
    created: i64,
    /// The caller asked for `stream_options.include_usage`.
    include_usage: bool,
    id: Value,
    model: Value,
}

impl Chunks {
    fn send(&self, out: &mut Vec<u8>, delta: Value, finish: Option<&str>) {
        let mut c = json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        if self.include_usage {
            c["usage"] = Value::Null;
        }
        openai_event(out, &c);
    }

    fn end(&self, out: &mut Vec<u8>, finish: &str, usage: Usage) {
        self.send(out, json!({}), Some(finish));
        if self.include_usage {
            let (i, o) = (usage.input_tokens, usage.output_tokens);
            openai_event(
                out,
                &json!({
                    "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                    "choices": [], "usage": {"prompt_tokens": i, "completion_tokens": o, "total_tokens": i + o},
                }),
            );
        }
        out.extend_from_slice(b"data: [DONE]\n\n");
    }
}

/// Anthropic Messages events -> OpenAI `chat.completion.chunk`s.
#[derive(Debug, Default)]
pub struct AnthropicToChat {
    chunks: Chunks,
    /// Anthropic content block index -> OpenAI tool call index.
    tools: HashMap<u64, usize>,
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
        let input: u64 = ["input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"]
            .iter()
            .filter_map(|k| u[*k].as_u64())
            .sum();
        if input > 0 {
            self.usage.input_tokens = input;
        }
        if let Some(o) = u["output_tokens"].as_u64() {
            self.usage.output_tokens = o;
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
                if block["type"] == "tool_use" {
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
                    // Thinking and signatures have no OpenAI counterpart.
                    _ => {}
                }
            }
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
                    "usage": {"input_tokens": self.usage.input_tokens, "output_tokens": self.usage.output_tokens},
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
            self.usage = Usage {
                input_tokens: u["prompt_tokens"].as_u64().unwrap_or(0),
                output_tokens: u["completion_tokens"].as_u64().unwrap_or(0),
            };
        }
        let Some(choice) = c["choices"].get(0) else { return };
        let delta = &choice["delta"];
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
            self.chunks.id = gemini::completion_id(&ev);
            if let Some(m) = ev["modelVersion"].as_str() {
                self.chunks.model = json!(m);
            }
            self.chunks.send(out, json!({"role": "assistant", "content": ""}), None);
        }
        if !ev["usageMetadata"].is_null() {
            // Cumulative: the last report is the total.
            self.usage = gemini::usage(&ev["usageMetadata"]);
        }
        if !ev["promptFeedback"]["blockReason"].is_null() {
            self.blocked = true;
        }
        for (part, piece) in gemini::pieces(&ev) {
            match piece {
                gemini::Piece::Text("") => {}
                gemini::Piece::Text(t) => self.chunks.send(out, json!({"content": t}), None),
                gemini::Piece::Call { name, arguments } => {
                    let call = json!({"index": self.calls, "id": gemini::call_id(self.calls, part), "type": "function",
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
            Some(r) => gemini::finish_reason(r, self.calls > 0),
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

/// Events of a format reached only through translation (Gemini, Converse) -> Anthropic
/// Messages events, through the chat shape: events -> chunks (`chat`, which must send the
/// usage chunk) -> Anthropic events, each hop a translator of its own. Chunks are re-read
/// as JSON on the way; a translated stream is already off the zero-copy path and this
/// keeps one mapping per pair of formats.
#[derive(Debug)]
pub struct ViaChat {
    chat: Box<dyn Translate>,
    anthropic: ChatToAnthropic,
    scratch: Vec<u8>,
}

impl ViaChat {
    pub fn new(chat: Box<dyn Translate>) -> Self {
        Self {
            chat,
            anthropic: ChatToAnthropic::new(),
            scratch: Vec::new(),
        }
    }

    /// Passes the chunks in `scratch` on to the Anthropic translator.
    fn relay(&mut self, out: &mut Vec<u8>) {
        let mut rest = &self.scratch[..];
        while let Some(end) = super::event_end(rest) {
            self.anthropic.event(&super::event_data(&rest[..end]), out);
            rest = &rest[end..];
        }
        self.scratch.clear();
    }
}

impl Translate for ViaChat {
    fn event(&mut self, data: &[u8], out: &mut Vec<u8>) {
        self.chat.event(data, &mut self.scratch);
        self.relay(out);
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        self.chat.finish(&mut self.scratch);
        self.relay(out);
        self.anthropic.finish(out);
    }

    fn usage(&self) -> Usage {
        self.chat.usage()
    }

    fn complete(&self) -> bool {
        self.chat.complete()
    }
}

/// Bedrock ConverseStream events (each `{"<event type>": payload}`, decoded from AWS's
/// event stream in `SseState`) -> OpenAI `chat.completion.chunk`s. A stream ends cleanly
/// after `messageStop`; its usage comes in the `metadata` event that follows, and only
/// that event makes it [`Translate::complete`]: a caller who hangs up between the two is
/// charged the estimate, not the zero counted so far. An exception message ends the
/// stream with an error event.
#[derive(Debug, Default)]
pub struct BedrockToChat {
    chunks: Chunks,
    started: bool,
    /// Tool calls so far, and which content block each one is.
    calls: Vec<u64>,
    reason: Option<String>,
    usage: Usage,
    /// The `metadata` event (the final usage) arrived.
    metered: bool,
    ended: bool,
}

impl BedrockToChat {
    pub fn new(include_usage: bool, created: i64, model: &str) -> Self {
        Self {
            chunks: Chunks {
                include_usage,
                created,
                id: json!(bedrock::completion_id()),
                model: json!(model),
            },
            ..Self::default()
        }
    }

    fn start(&mut self, out: &mut Vec<u8>) {
        if !self.started {
            self.started = true;
            self.chunks.send(out, json!({"role": "assistant", "content": ""}), None);
        }
    }
}

impl Translate for BedrockToChat {
    fn event(&mut self, data: &[u8], out: &mut Vec<u8>) {
        if self.ended {
            return;
        }
        let Some(ev) = parse_event(data, Dialect::OpenAi, out) else {
            self.ended = true;
            return;
        };
        if let Some(e) = ev.get("exception") {
            self.ended = true;
            let msg = e["message"]
                .as_str()
                .unwrap_or("The provider reported an error mid-stream.");
            return fail(out, Dialect::OpenAi, msg);
        }
        if ev.get("messageStart").is_some() {
            self.start(out);
        } else if let Some(b) = ev.get("contentBlockStart") {
            if let Some(u) = b["start"].get("toolUse") {
                self.start(out);
                let block = b["contentBlockIndex"].as_u64().unwrap_or(0);
                let call = json!({"index": self.calls.len(), "id": u["toolUseId"], "type": "function",
                    "function": {"name": u["name"], "arguments": ""}});
                self.calls.push(block);
                self.chunks.send(out, json!({"tool_calls": [call]}), None);
            }
        } else if let Some(d) = ev.get("contentBlockDelta") {
            self.start(out);
            let block = d["contentBlockIndex"].as_u64().unwrap_or(0);
            if let Some(t) = d["delta"]["text"].as_str() {
                if !t.is_empty() {
                    self.chunks.send(out, json!({"content": t}), None);
                }
            } else if let Some(args) = d["delta"]["toolUse"]["input"].as_str() {
                if let Some(index) = self.calls.iter().position(|&b| b == block) {
                    self.chunks.send(
                        out,
                        json!({"tool_calls": [{"index": index, "function": {"arguments": args}}]}),
                        None,
                    );
                }
            }
            // Reasoning deltas are left out, as thinking is for other dialects' callers.
        } else if let Some(s) = ev.get("messageStop") {
            self.reason = Some(s["stopReason"].as_str().unwrap_or("end_turn").to_owned());
        } else if let Some(m) = ev.get("metadata") {
            self.usage = bedrock::usage(&m["usage"]);
            self.metered = true;
        }
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        if self.ended {
            return;
        }
        self.ended = true;
        let Some(finish) = self.reason.as_deref().map(bedrock::finish_reason) else {
            return fail(
                out,
                Dialect::OpenAi,
                "The provider's stream ended before a stop reason.",
            );
        };
        self.start(out);
        self.chunks.end(out, finish, self.usage);
    }

    fn usage(&self) -> Usage {
        self.usage
    }

    fn complete(&self) -> bool {
        self.metered
    }
}

#[cfg(test)]
mod bedrock_tests {
    use super::*;

    fn feed(t: &mut BedrockToChat, events: &[Value]) -> String {
        let mut out = Vec::new();
        for e in events {
            t.event(e.to_string().as_bytes(), &mut out);
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn usage_is_final_only_with_the_metadata_event() {
        let body = [
            json!({"messageStart": {"role": "assistant"}}),
            json!({"contentBlockDelta": {"delta": {"text": "Hi"}, "contentBlockIndex": 0}}),
            json!({"messageStop": {"stopReason": "end_turn"}}),
        ];
        let mut t = BedrockToChat::new(true, 0, "m");
        assert!(feed(&mut t, &body).contains("\"content\":\"Hi\""));
        // Stopped but not yet metered: not complete, so a cut here is estimated.
        assert!(!t.complete());
        feed(
            &mut t,
            &[json!({"metadata": {"usage": {"inputTokens": 3, "outputTokens": 1}}})],
        );
        assert!(t.complete());
        assert_eq!(
            t.usage(),
            Usage {
                input_tokens: 3,
                output_tokens: 1
            }
        );
        let mut out = Vec::new();
        t.finish(&mut out);
        let out = String::from_utf8(out).unwrap();
        assert!(
            out.contains("\"finish_reason\":\"stop\"") && out.ends_with("data: [DONE]\n\n"),
            "{out}"
        );
    }

    #[test]
    fn an_exception_or_an_end_before_the_stop_reason_is_an_error() {
        let mut t = BedrockToChat::new(false, 0, "m");
        let out = feed(
            &mut t,
            &[json!({"exception": {"type": "throttlingException", "message": "Too many"}})],
        );
        assert!(out.contains("Too many") && !out.contains("[DONE]"), "{out}");
        let mut t = BedrockToChat::new(false, 0, "m");
        feed(&mut t, &[json!({"messageStart": {"role": "assistant"}})]);
        let mut out = Vec::new();
        t.finish(&mut out);
        let out = String::from_utf8(out).unwrap();
        assert!(out.contains("before a stop reason") && !out.contains("[DONE]"), "{out}");
    }
}
