//! What every streamed translation shares: the chunk writer, event parsing and the error
//! that ends a broken stream. Each wire format's own translators live in its provider
//! file (`provider/anthropic.rs`, `provider/gemini.rs`, `provider/bedrock.rs`), one
//! upstream event at a time; so does the choice of translator (`provider::stream_mode`),
//! which chains two of them through chat with [`Chain`] where no direct mapping exists.
//!
//! Every translator ends a stream that breaks its own protocol (an event that is not JSON,
//! an `error` event, or an end without `message_stop` / `[DONE]`) with one error event in
//! the caller's dialect and no clean ending, so a failure can never look like a finish.

use serde_json::{json, Value};

use super::{write_event, Translate, Usage};
use crate::api::Dialect;
use crate::error::GwError;

pub(crate) fn openai_event(out: &mut Vec<u8>, v: &Value) {
    write_event(out, None, v);
}

/// Anthropic names every event after its `type`.
pub(crate) fn anthropic_event(out: &mut Vec<u8>, v: &Value) {
    write_event(out, Some(v["type"].as_str().unwrap_or("error")), v);
}

pub(crate) fn fail(out: &mut Vec<u8>, dialect: Dialect, message: &str) {
    out.extend_from_slice(&GwError::UpstreamError(message.to_owned()).sse_event(dialect));
}

/// The event's JSON, or `None` after writing the error that ends the stream.
pub(crate) fn parse_event(data: &[u8], dialect: Dialect, out: &mut Vec<u8>) -> Option<Value> {
    let v = serde_json::from_slice::<Value>(data).ok();
    if v.is_none() {
        fail(out, dialect, "The provider sent a malformed stream event.");
    }
    v
}

/// Like [`parse_event`], for streams that report a failure as an `{"error": ...}` object
/// in place of a chunk (OpenAI-style and Gemini).
pub(crate) fn parse_chunk(data: &[u8], dialect: Dialect, out: &mut Vec<u8>) -> Option<Value> {
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
pub(crate) struct Chunks {
    pub created: i64,
    /// The caller asked for `stream_options.include_usage`.
    pub include_usage: bool,
    pub id: Value,
    pub model: Value,
}

impl Chunks {
    pub fn send(&self, out: &mut Vec<u8>, delta: Value, finish: Option<&str>) {
        let mut c = json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        if self.include_usage {
            c["usage"] = Value::Null;
        }
        openai_event(out, &c);
    }

    pub fn end(&self, out: &mut Vec<u8>, finish: &str, usage: Usage) {
        self.send(out, json!({}), Some(finish));
        if self.include_usage {
            openai_event(
                out,
                &json!({
                    "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                    "choices": [], "usage": usage.to_chat(),
                }),
            );
        }
        out.extend_from_slice(b"data: [DONE]\n\n");
    }
}

/// The thinking of a streamed answer, for chat callers: its text goes out as
/// `reasoning_content` deltas as it comes, and each block, whole and signed, as a
/// `thinking_blocks` delta when it ends, so the caller can send it back on the next turn
/// (Anthropic checks the signature; a tool call made after thinking needs it). A block is
/// kept up to [`Thinking::MAX_BYTES`]; a longer one is not sent whole (a cut block could
/// not be sent back anyway), its text deltas still are.
#[derive(Debug, Default)]
pub(crate) struct Thinking {
    /// The block being streamed: `{type: thinking, thinking, signature}` or
    /// `{type: redacted_thinking, data}`.
    open: Option<Value>,
    text: String,
    signature: String,
    over: bool,
}

impl Thinking {
    pub const MAX_BYTES: usize = 4 << 20;

    /// A block starts (`redacted_thinking` comes whole, with its data).
    pub fn start(&mut self, block: &Value) {
        self.open = Some(block.clone());
        self.text.clear();
        self.signature = block["signature"].as_str().unwrap_or_default().to_owned();
        self.over = false;
    }

    pub fn text(&mut self, chunks: &Chunks, out: &mut Vec<u8>, t: &str) {
        if t.is_empty() {
            return;
        }
        if self.open.is_none() {
            self.start(&json!({"type": "thinking"}));
        }
        chunks.send(out, json!({"reasoning_content": t}), None);
        if self.text.len() + t.len() > Self::MAX_BYTES {
            self.over = true;
        } else {
            self.text.push_str(t);
        }
    }

    pub fn signature(&mut self, s: &str) {
        if self.open.is_none() {
            self.start(&json!({"type": "thinking"}));
        }
        if self.signature.len() + s.len() <= Self::MAX_BYTES {
            self.signature.push_str(s);
        }
    }

    /// The block ends: it goes out whole.
    pub fn end(&mut self, chunks: &Chunks, out: &mut Vec<u8>) {
        let Some(block) = self.open.take() else { return };
        if self.over {
            return;
        }
        let block = match block["type"].as_str() {
            Some("redacted_thinking") => block,
            _ => json!({"type": "thinking", "thinking": self.text, "signature": self.signature}),
        };
        chunks.send(out, json!({"thinking_blocks": [block]}), None);
    }
}

/// Two translators in a row, through chat chunks: `first` turns the provider's events
/// into chunks (it must send the usage chunk), `then` turns those into the caller's
/// events (Gemini's, Converse's -> Anthropic's; Anthropic's, Converse's -> Gemini's).
/// Chunks are re-read as JSON on the way; a translated stream is already off the
/// zero-copy path, and this keeps one mapping per pair of formats. Usage and completion
/// are the first hop's, which reads the provider.
#[derive(Debug)]
pub struct Chain {
    first: Box<dyn Translate>,
    then: Box<dyn Translate>,
    scratch: Vec<u8>,
}

impl Chain {
    pub fn new(first: Box<dyn Translate>, then: Box<dyn Translate>) -> Self {
        Self {
            first,
            then,
            scratch: Vec::new(),
        }
    }

    /// Passes the chunks in `scratch` on to the second translator.
    fn relay(&mut self, out: &mut Vec<u8>) {
        let mut rest = &self.scratch[..];
        while let Some(end) = super::event_end(rest) {
            self.then.event(&super::event_data(&rest[..end]), out);
            rest = &rest[end..];
        }
        self.scratch.clear();
    }
}

impl Translate for Chain {
    fn event(&mut self, data: &[u8], out: &mut Vec<u8>) {
        self.first.event(data, &mut self.scratch);
        self.relay(out);
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        self.first.finish(&mut self.scratch);
        self.relay(out);
        self.then.finish(out);
    }

    fn usage(&self) -> Usage {
        self.first.usage()
    }

    fn complete(&self) -> bool {
        self.first.complete()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thinking_block_is_sent_whole_only_within_its_bound() {
        let chunks = Chunks::default();
        let mut out = Vec::new();
        let mut t = Thinking::default();
        t.start(&json!({"type": "thinking", "thinking": "", "signature": ""}));
        t.text(&chunks, &mut out, "short");
        t.signature("sig");
        t.end(&chunks, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains(r#""thinking_blocks":[{"signature":"sig","thinking":"short","type":"thinking"}]"#),
            "{text}"
        );

        // A provider that thinks past the bound: the text still streams, the block is
        // not kept (memory stays bounded) and not sent cut.
        let mut out = Vec::new();
        let piece = "x".repeat(1 << 20);
        for _ in 0..5 {
            t.text(&chunks, &mut out, &piece);
        }
        assert!(t.text.len() <= Thinking::MAX_BYTES);
        t.end(&chunks, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches("reasoning_content").count(), 5);
        assert!(!text.contains("thinking_blocks"));
    }
}
