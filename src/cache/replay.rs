//! A stored JSON completion replayed as the SSE stream its dialect's API would send: the
//! same event types in the same order, so SDK stream helpers rebuild the same message.

use serde_json::{json, Value};

use crate::api::Dialect;
use crate::stream::write_event;

/// The stream for `completion`. OpenAI: a usage chunk when `include_usage` (the caller's
/// `stream_options`), then `[DONE]`.
pub fn sse(completion: &Value, dialect: Dialect, include_usage: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    match dialect {
        Dialect::OpenAi => chat(completion, include_usage, &mut out),
        Dialect::Anthropic => messages(completion, &mut out),
        // Gemini streams partial responses; a whole one is a stream of one event.
        Dialect::Gemini => {
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(completion.to_string().as_bytes());
            out.extend_from_slice(b"\n\n");
        }
    }
    out
}

fn chat(c: &Value, include_usage: bool, out: &mut Vec<u8>) {
    let chunk = |choices: Value| {
        let mut v = json!({"id": c["id"], "object": "chat.completion.chunk", "created": c["created"],
            "model": c["model"], "choices": choices});
        if !c["system_fingerprint"].is_null() {
            v["system_fingerprint"] = c["system_fingerprint"].clone();
        }
        v
    };
    for choice in c["choices"].as_array().into_iter().flatten() {
        let idx = &choice["index"];
        let msg = &choice["message"];
        let role = if msg["role"].is_null() {
            json!("assistant")
        } else {
            msg["role"].clone()
        };
        write_event(
            out,
            None,
            &chunk(json!([{"index": idx, "delta": {"role": role, "content": ""}, "finish_reason": null}])),
        );
        // Thinking first, as it was streamed: its text, then the signed blocks.
        if let Some(text) = msg["reasoning_content"].as_str().filter(|t| !t.is_empty()) {
            write_event(
                out,
                None,
                &chunk(json!([{"index": idx, "delta": {"reasoning_content": text}, "finish_reason": null}])),
            );
        }
        if let Some(blocks) = msg["thinking_blocks"].as_array().filter(|b| !b.is_empty()) {
            write_event(
                out,
                None,
                &chunk(json!([{"index": idx, "delta": {"thinking_blocks": blocks}, "finish_reason": null}])),
            );
        }
        if let Some(text) = msg["content"].as_str().filter(|t| !t.is_empty()) {
            write_event(
                out,
                None,
                &chunk(json!([{"index": idx, "delta": {"content": text}, "finish_reason": null}])),
            );
        }
        if let Some(text) = msg["refusal"].as_str() {
            write_event(
                out,
                None,
                &chunk(json!([{"index": idx, "delta": {"refusal": text}, "finish_reason": null}])),
            );
        }
        for (j, tc) in msg["tool_calls"].as_array().into_iter().flatten().enumerate() {
            let delta = json!({"tool_calls": [{"index": j, "id": tc["id"], "type": "function",
                "function": {"name": tc["function"]["name"], "arguments": tc["function"]["arguments"]}}]});
            write_event(
                out,
                None,
                &chunk(json!([{"index": idx, "delta": delta, "finish_reason": null}])),
            );
        }
        write_event(
            out,
            None,
            &chunk(json!([{"index": idx, "delta": {}, "finish_reason": choice["finish_reason"]}])),
        );
    }
    if include_usage && !c["usage"].is_null() {
        let mut u = chunk(json!([]));
        u["usage"] = c["usage"].clone();
        write_event(out, None, &u);
    }
    out.extend_from_slice(b"data: [DONE]\n\n");
}

fn messages(m: &Value, out: &mut Vec<u8>) {
    let mut start = m.clone();
    start["content"] = json!([]);
    start["stop_reason"] = Value::Null;
    start["stop_sequence"] = Value::Null;
    write_event(
        out,
        Some("message_start"),
        &json!({"type": "message_start", "message": start}),
    );
    for (i, block) in m["content"].as_array().into_iter().flatten().enumerate() {
        let mut first = block.clone();
        let deltas = match block["type"].as_str() {
            Some("text") => {
                first["text"] = json!("");
                vec![json!({"type": "text_delta", "text": block["text"]})]
            }
            // The signature last, as Anthropic streams it.
            Some("thinking") => {
                first["thinking"] = json!("");
                first["signature"] = json!("");
                vec![
                    json!({"type": "thinking_delta", "thinking": block["thinking"]}),
                    json!({"type": "signature_delta", "signature": block["signature"]}),
                ]
            }
            Some("tool_use") => {
                first["input"] = json!({});
                vec![json!({"type": "input_json_delta", "partial_json": block["input"].to_string()})]
            }
            _ => Vec::new(),
        };
        write_event(
            out,
            Some("content_block_start"),
            &json!({"type": "content_block_start", "index": i, "content_block": first}),
        );
        for d in deltas {
            write_event(
                out,
                Some("content_block_delta"),
                &json!({"type": "content_block_delta", "index": i, "delta": d}),
            );
        }
        write_event(
            out,
            Some("content_block_stop"),
            &json!({"type": "content_block_stop", "index": i}),
        );
    }
    write_event(
        out,
        Some("message_delta"),
        &json!({"type": "message_delta",
            "delta": {"stop_reason": m["stop_reason"], "stop_sequence": m["stop_sequence"]},
            "usage": {"output_tokens": m["usage"]["output_tokens"]}}),
    );
    write_event(out, Some("message_stop"), &json!({"type": "message_stop"}));
}

#[cfg(test)]
mod tests {
    use super::super::assemble::Assembler;
    use super::*;

    /// Replaying a completion and assembling the replay gives the completion back.
    #[test]
    fn replay_round_trips_through_the_assembler() {
        let chat = json!({"id": "c1", "object": "chat.completion", "created": 7, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello",
                "reasoning_content": "Hmm.", "thinking_blocks": [{"type": "thinking", "thinking": "Hmm.", "signature": "s1"},
                    {"type": "redacted_thinking", "data": "xyz"}],
                "tool_calls": [{"id": "t", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                "finish_reason": "tool_calls", "logprobs": null}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}});
        let mut a = Assembler::new(Dialect::OpenAi);
        a.feed(&sse(&chat, Dialect::OpenAi, true));
        assert_eq!(a.finish(None).unwrap(), chat);

        let msg = json!({"id": "m1", "type": "message", "role": "assistant", "model": "c",
            "content": [{"type": "thinking", "thinking": "Hmm.", "signature": "s1"},
                {"type": "redacted_thinking", "data": "xyz"},
                {"type": "text", "text": "Hi"}, {"type": "tool_use", "id": "t", "name": "f", "input": {"q": 1}}],
            "stop_reason": "tool_use", "stop_sequence": null, "usage": {"input_tokens": 3, "output_tokens": 5}});
        let mut a = Assembler::new(Dialect::Anthropic);
        a.feed(&sse(&msg, Dialect::Anthropic, false));
        assert_eq!(a.finish(None).unwrap(), msg);
    }

    #[test]
    fn usage_chunk_only_when_asked() {
        let chat = json!({"id": "c", "choices": [{"index": 0, "message": {"content": "x"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}});
        let without = String::from_utf8(sse(&chat, Dialect::OpenAi, false)).unwrap();
        assert!(!without.contains("total_tokens") && without.ends_with("data: [DONE]\n\n"));
        let with = String::from_utf8(sse(&chat, Dialect::OpenAi, true)).unwrap();
        assert!(with.contains("\"total_tokens\":2"));
    }
}
