//! A finished stream, as the caller saw it, assembled into the JSON completion of the same
//! dialect, so one stored entry answers both streaming and non-streaming requests. Only
//! complete answers qualify: the end marker arrived, every choice finished for a normal
//! reason, and no error event came.

use std::collections::BTreeMap;

use bytes::BytesMut;
use serde_json::{json, Map, Value};

use crate::api::Dialect;
use crate::stream::{event_data, event_end};
use crate::usage::Usage;

/// Why a completion ended, when that makes it worth storing.
fn finished_normally(reason: &str, dialect: Dialect) -> bool {
    match dialect {
        Dialect::OpenAi => matches!(reason, "stop" | "length" | "tool_calls" | "function_call"),
        Dialect::Anthropic => matches!(reason, "end_turn" | "max_tokens" | "stop_sequence" | "tool_use"),
        Dialect::Gemini => matches!(reason, "STOP" | "MAX_TOKENS"),
    }
}

/// Whether a whole JSON completion is complete and successful.
pub fn json_is_complete(v: &Value, dialect: Dialect) -> bool {
    match dialect {
        Dialect::OpenAi => v["choices"].as_array().is_some_and(|cs| {
            !cs.is_empty()
                && cs.iter().all(|c| {
                    c["finish_reason"]
                        .as_str()
                        .is_some_and(|r| finished_normally(r, dialect))
                })
        }),
        Dialect::Anthropic => {
            v["type"] == "message" && v["stop_reason"].as_str().is_some_and(|r| finished_normally(r, dialect))
        }
        Dialect::Gemini => {
            v["promptFeedback"]["blockReason"].is_null()
                && v["candidates"].as_array().is_some_and(|cs| {
                    !cs.is_empty()
                        && cs.iter().all(|c| {
                            c["finishReason"]
                                .as_str()
                                .is_some_and(|r| finished_normally(r, dialect))
                        })
                })
        }
    }
}

#[derive(Debug, Default)]
struct Choice {
    role: Option<Value>,
    content: Option<String>,
    refusal: Option<String>,
    /// Reasoning text, and the signed thinking blocks sent back on a next turn.
    reasoning: Option<String>,
    thinking: Vec<Value>,
    /// By tool call index: id, name, arguments.
    tools: BTreeMap<u64, (Value, Value, String)>,
    finish: Option<String>,
}

#[derive(Debug, Default)]
struct Block {
    start: Map<String, Value>,
    text: String,
    json: String,
}

#[derive(Debug)]
pub struct Assembler {
    dialect: Dialect,
    carry: BytesMut,
    broken: bool,
    done: bool,
    /// OpenAI: id, created, model, system_fingerprint of the chunks.
    head: Map<String, Value>,
    choices: BTreeMap<u64, Choice>,
    usage: Option<Value>,
    /// Anthropic: the `message_start` message, its blocks, the final delta.
    message: Map<String, Value>,
    blocks: BTreeMap<u64, Block>,
    /// Gemini: each candidate's parts (text pieces joined) and finish reason.
    candidates: BTreeMap<u64, (Vec<Value>, Option<Value>)>,
}

impl Assembler {
    pub fn new(dialect: Dialect) -> Self {
        Self {
            dialect,
            carry: BytesMut::new(),
            broken: false,
            done: false,
            head: Map::new(),
            choices: BTreeMap::new(),
            usage: None,
            message: Map::new(),
            blocks: BTreeMap::new(),
            candidates: BTreeMap::new(),
        }
    }

    /// Takes what went to the caller.
    pub fn feed(&mut self, chunk: &[u8]) {
        if self.broken {
            return;
        }
        self.carry.extend_from_slice(chunk);
        while let Some(len) = event_end(&self.carry) {
            let event = self.carry.split_to(len);
            let data = event_data(&event);
            if data.is_empty() {
                continue;
            }
            if *data == *b"[DONE]" {
                self.done = true;
                continue;
            }
            match serde_json::from_slice::<Value>(&data) {
                Ok(v) if v.get("error").is_none() && v["type"] != "error" => self.event(v),
                _ => self.broken = true,
            }
        }
    }

    fn event(&mut self, v: Value) {
        let Value::Object(mut o) = v else {
            self.broken = true;
            return;
        };
        match self.dialect {
            // Gemini has no end marker: each event is part of one response, the last one
            // with the finish reason (and the total usage).
            Dialect::Gemini => {
                if let Some(u) = o.remove("usageMetadata") {
                    self.usage = Some(u);
                }
                for k in ["modelVersion", "responseId"] {
                    if let Some(v) = o.remove(k) {
                        self.head.entry(k).or_insert(v);
                    }
                }
                if o.get("promptFeedback").is_some_and(|f| !f["blockReason"].is_null()) {
                    self.broken = true;
                }
                for c in o.get("candidates").and_then(Value::as_array).into_iter().flatten() {
                    let entry = self.candidates.entry(c["index"].as_u64().unwrap_or(0)).or_default();
                    for p in c["content"]["parts"].as_array().into_iter().flatten() {
                        let joined = match (entry.0.last_mut(), p["text"].as_str()) {
                            (Some(last), Some(t)) if last["text"].is_string() && last["thought"] == p["thought"] => {
                                if let Some(Value::String(s)) = last.get_mut("text") {
                                    s.push_str(t);
                                }
                                true
                            }
                            _ => false,
                        };
                        if !joined {
                            entry.0.push(p.clone());
                        }
                    }
                    if c["finishReason"].is_string() {
                        entry.1 = Some(c["finishReason"].clone());
                        self.done = true;
                    }
                }
            }
            Dialect::OpenAi => {
                if let Some(Value::Object(u)) = o.get("usage") {
                    self.usage = Some(Value::Object(u.clone()));
                }
                for k in ["id", "created", "model", "system_fingerprint"] {
                    if let Some(v) = o.remove(k) {
                        self.head.entry(k).or_insert(v);
                    }
                }
                let Some(Value::Array(choices)) = o.remove("choices") else {
                    return;
                };
                for c in choices {
                    let idx = c["index"].as_u64().unwrap_or(0);
                    let slot = self.choices.entry(idx).or_default();
                    let d = &c["delta"];
                    if let Some(r) = d.get("role").filter(|r| !r.is_null()) {
                        slot.role = Some(r.clone());
                    }
                    if let Some(t) = d["content"].as_str() {
                        slot.content.get_or_insert_with(String::new).push_str(t);
                    }
                    if let Some(t) = d["refusal"].as_str() {
                        slot.refusal.get_or_insert_with(String::new).push_str(t);
                    }
                    if let Some(t) = d["reasoning_content"].as_str() {
                        slot.reasoning.get_or_insert_with(String::new).push_str(t);
                    }
                    if let Some(blocks) = d["thinking_blocks"].as_array() {
                        slot.thinking.extend(blocks.iter().cloned());
                    }
                    for tc in d["tool_calls"].as_array().into_iter().flatten() {
                        let j = tc["index"].as_u64().unwrap_or(0);
                        let t = slot
                            .tools
                            .entry(j)
                            .or_insert_with(|| (Value::Null, Value::Null, String::new()));
                        if !tc["id"].is_null() {
                            t.0 = tc["id"].clone();
                        }
                        if !tc["function"]["name"].is_null() {
                            t.1 = tc["function"]["name"].clone();
                        }
                        if let Some(a) = tc["function"]["arguments"].as_str() {
                            t.2.push_str(a);
                        }
                    }
                    if let Some(f) = c["finish_reason"].as_str() {
                        slot.finish = Some(f.to_owned());
                    }
                }
            }
            Dialect::Anthropic => {
                let idx = o.get("index").and_then(Value::as_u64).unwrap_or(0);
                match o.get("type").and_then(Value::as_str) {
                    Some("message_start") => {
                        if let Some(Value::Object(m)) = o.remove("message") {
                            self.message = m;
                        }
                    }
                    Some("content_block_start") => {
                        if let Some(Value::Object(b)) = o.remove("content_block") {
                            self.blocks.insert(
                                idx,
                                Block {
                                    start: b,
                                    ..Block::default()
                                },
                            );
                        }
                    }
                    Some("content_block_delta") => {
                        let Some(b) = self.blocks.get_mut(&idx) else {
                            self.broken = true;
                            return;
                        };
                        let d = &o["delta"];
                        match d["type"].as_str() {
                            Some("text_delta") => b.text.push_str(d["text"].as_str().unwrap_or("")),
                            Some("input_json_delta") => b.json.push_str(d["partial_json"].as_str().unwrap_or("")),
                            Some("thinking_delta") => b.text.push_str(d["thinking"].as_str().unwrap_or("")),
                            Some("signature_delta") => {
                                b.start.insert("signature".into(), d["signature"].clone());
                            }
                            _ => {}
                        }
                    }
                    Some("message_delta") => {
                        if let Some(Value::Object(d)) = o.get("delta") {
                            for (k, v) in d {
                                self.message.insert(k.clone(), v.clone());
                            }
                        }
                        if let Some(Value::Object(u)) = o.get("usage") {
                            let usage = self.message.entry("usage").or_insert_with(|| json!({}));
                            if let Value::Object(into) = usage {
                                for (k, v) in u {
                                    into.insert(k.clone(), v.clone());
                                }
                            }
                        }
                    }
                    Some("message_stop") => self.done = true,
                    _ => {}
                }
            }
        }
    }

    /// The JSON completion, when the stream was complete and ended normally. `usage` is
    /// the gateway's count, for an OpenAI stream whose usage chunk the caller did not get.
    pub fn finish(mut self, usage: Option<Usage>) -> Option<Value> {
        if self.broken || !self.done {
            return None;
        }
        let v = match self.dialect {
            Dialect::Gemini => {
                let candidates: Vec<Value> = std::mem::take(&mut self.candidates)
                    .into_iter()
                    .map(|(idx, (parts, finish))| {
                        json!({"content": {"role": "model", "parts": parts}, "finishReason": finish, "index": idx})
                    })
                    .collect();
                let mut out = std::mem::take(&mut self.head);
                out.insert("candidates".into(), Value::Array(candidates));
                let usage = self.usage.take().or_else(|| usage.map(|u| u.to_gemini()));
                if let Some(u) = usage {
                    out.insert("usageMetadata".into(), u);
                }
                Value::Object(out)
            }
            Dialect::OpenAi => {
                let choices: Vec<Value> = std::mem::take(&mut self.choices)
                    .into_iter()
                    .map(|(idx, c)| {
                        let mut msg = Map::new();
                        msg.insert("role".into(), c.role.unwrap_or_else(|| json!("assistant")));
                        msg.insert("content".into(), c.content.map_or(Value::Null, Value::String));
                        if let Some(r) = c.refusal {
                            msg.insert("refusal".into(), Value::String(r));
                        }
                        if let Some(r) = c.reasoning {
                            msg.insert("reasoning_content".into(), Value::String(r));
                        }
                        if !c.thinking.is_empty() {
                            msg.insert("thinking_blocks".into(), Value::Array(c.thinking));
                        }
                        if !c.tools.is_empty() {
                            let calls: Vec<Value> = c
                                .tools
                                .into_values()
                                .map(|(id, name, args)| {
                                    json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}})
                                })
                                .collect();
                            msg.insert("tool_calls".into(), Value::Array(calls));
                        }
                        json!({"index": idx, "message": msg, "finish_reason": c.finish, "logprobs": null})
                    })
                    .collect();
                let mut out = std::mem::take(&mut self.head);
                out.insert("object".into(), json!("chat.completion"));
                out.insert("choices".into(), Value::Array(choices));
                let usage = self.usage.take().or_else(|| usage.map(|u| u.to_chat()));
                if let Some(u) = usage {
                    out.insert("usage".into(), u);
                }
                Value::Object(out)
            }
            Dialect::Anthropic => {
                let content: Vec<Value> = std::mem::take(&mut self.blocks)
                    .into_values()
                    .map(|mut b| {
                        match b.start.get("type").and_then(Value::as_str) {
                            Some("text") => {
                                b.start.insert("text".into(), Value::String(b.text));
                            }
                            Some("thinking") => {
                                b.start.insert("thinking".into(), Value::String(b.text));
                            }
                            Some("tool_use") if !b.json.is_empty() => {
                                let input = serde_json::from_str(&b.json).unwrap_or(Value::Null);
                                b.start.insert("input".into(), input);
                            }
                            _ => {}
                        }
                        Value::Object(b.start)
                    })
                    .collect();
                let mut m = std::mem::take(&mut self.message);
                m.insert("content".into(), Value::Array(content));
                Value::Object(m)
            }
        };
        let tool_input_broken = v["content"]
            .as_array()
            .is_some_and(|c| c.iter().any(|b| b["type"] == "tool_use" && b["input"].is_null()));
        (json_is_complete(&v, self.dialect) && !tool_input_broken).then_some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemini_stream_is_one_response() {
        let mut a = Assembler::new(Dialect::Gemini);
        a.feed(b"data: {\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[{\"text\":\"Hel\"}]},\"index\":0}],\"responseId\":\"r1\"}\r\n\r\n");
        let unfinished = Assembler::new(Dialect::Gemini);
        assert!(unfinished.finish(None).is_none());
        a.feed(b"data: {\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[{\"text\":\"lo\"}]},\"finishReason\":\"STOP\",\"index\":0}],\"usageMetadata\":{\"promptTokenCount\":3}}\r\n\r\n");
        let v = a.finish(None).unwrap();
        assert_eq!(v["candidates"][0]["content"]["parts"], json!([{"text": "Hello"}]));
        assert_eq!(v["responseId"], "r1");
        assert_eq!(v["usageMetadata"]["promptTokenCount"], 3);
        let mut cut = Assembler::new(Dialect::Gemini);
        cut.feed(
            b"data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"x\"}]},\"finishReason\":\"SAFETY\"}]}\n\n",
        );
        assert!(cut.finish(None).is_none(), "a filtered answer is not stored");
    }

    #[test]
    fn openai_stream_with_tool_calls() {
        let mut a = Assembler::new(Dialect::OpenAi);
        let chunks = [
            r#"{"id":"c1","created":5,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#,
            r#"{"id":"c1","choices":[{"index":0,"delta":{"content":"Hel"}}]}"#,
            r#"{"id":"c1","choices":[{"index":0,"delta":{"content":"lo","tool_calls":[{"index":0,"id":"t1","type":"function","function":{"name":"f","arguments":"{\"a\""}}]}}]}"#,
            r#"{"id":"c1","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":":1}"}}]},"finish_reason":"tool_calls"}]}"#,
        ];
        for c in chunks {
            a.feed(format!("data: {c}\n\n").as_bytes());
        }
        a.feed(b"data: [DONE]\n\n");
        let v = a
            .finish(Some(Usage {
                input_tokens: 3,
                output_tokens: 2,
                ..Usage::default()
            }))
            .unwrap();
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["choices"][0]["message"]["content"], "Hello");
        assert_eq!(
            v["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
            "{\"a\":1}"
        );
        assert_eq!(v["usage"]["total_tokens"], 5);
        assert_eq!(v["created"], 5);
    }

    #[test]
    fn incomplete_or_failed_streams_are_not_stored() {
        let one = r#"data: {"id":"c","choices":[{"index":0,"delta":{"content":"x"},"finish_reason":"stop"}]}"#;
        let mut a = Assembler::new(Dialect::OpenAi);
        a.feed(format!("{one}\n\n").as_bytes());
        assert!(a.finish(None).is_none(), "no [DONE]");
        let mut a = Assembler::new(Dialect::OpenAi);
        a.feed(format!("{one}\n\ndata: {{\"error\":{{\"code\":\"upstream_error\"}}}}\n\ndata: [DONE]\n\n").as_bytes());
        assert!(a.finish(None).is_none(), "an error event");
        let mut a = Assembler::new(Dialect::OpenAi);
        a.feed(one.replace("\"stop\"", "\"content_filter\"").as_bytes());
        a.feed(b"\n\ndata: [DONE]\n\n");
        assert!(a.finish(None).is_none(), "filtered");
    }

    #[test]
    fn anthropic_stream() {
        let events = [
            r#"{"type":"message_start","message":{"id":"m1","type":"message","role":"assistant","model":"c","content":[],"stop_reason":null,"usage":{"input_tokens":4,"output_tokens":1}}}"#,
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi "}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"there"}}"#,
            r#"{"type":"content_block_stop","index":0}"#,
            r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"t","name":"f","input":{}}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"q\":"}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"\"x\"}"}}"#,
            r#"{"type":"content_block_stop","index":1}"#,
            r#"{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":9}}"#,
            r#"{"type":"message_stop"}"#,
        ];
        let mut a = Assembler::new(Dialect::Anthropic);
        for e in events {
            a.feed(format!("event: x\ndata: {e}\n\n").as_bytes());
        }
        let v = a.finish(None).unwrap();
        assert_eq!(v["content"][0]["text"], "Hi there");
        assert_eq!(v["content"][1]["input"]["q"], "x");
        assert_eq!(v["stop_reason"], "tool_use");
        assert_eq!(v["usage"]["input_tokens"], 4);
        assert_eq!(v["usage"]["output_tokens"], 9);
    }
}
