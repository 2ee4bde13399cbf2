//! Response guardrails on a streamed completion, in the caller's shape (chat chunks,
//! Anthropic events, Responses events). The promise: a streaming caller receives exactly
//! the text the same answer gets as JSON (same masks, same block decision), at a cost
//! linear in the stream.
//!
//! Every text of the stream is scanned, read as JSON completions are (`text.rs`): each
//! string an event's delta carries (content, reasoning, refusals, tool call arguments;
//! Anthropic text, thinking and tool input JSON; Responses deltas) is one growing text
//! per choice or block and field, across events. Nothing of a text is released while a
//! match may still start before it: each guardrail's liveness automaton (`live.rs`) says
//! where the earliest match in progress starts, however long the match, and the text
//! before it is final: it is scanned once, masked and released; the held rest rides on
//! the next event of that text, or on an event of its own when the text ends. A text
//! held past [`MAX_HOLD`] ends the stream with the guardrail's error (a match that long
//! cannot be decided without holding the stream). Monitor-only streams are scanned the
//! same way but forwarded untouched. Events whose text arrives whole (`.done` events,
//! the final response) are checked whole.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use serde_json::{json, Map, Value};

use super::live::Tracker;
use super::text::is_protocol_key;
use super::{apply_masks, intervenes, record, Found, Guardrail, Hit};
use crate::api::Endpoint;
use crate::raw::Action;
use crate::stream::{event_data, event_end};

/// The most text one choice or block may hold back while a match is in progress.
pub const MAX_HOLD: usize = 64 * 1024;
/// The most texts (choices x fields, blocks, items) one stream may have open at once.
const MAX_TEXTS: usize = 256;

/// One growing text: a choice's field (chat), a block's (Anthropic), an item's
/// (Responses).
#[derive(Debug)]
struct Held {
    idx: u64,
    field: String,
    /// The last released character (context for word boundaries), then the held text.
    text: String,
    /// Bytes at the front of `text` that were already released.
    ctx: usize,
    trackers: Vec<Option<Tracker>>,
    /// What an event carrying this text on its own looks like.
    carrier: Carrier,
}

/// What an event that carries a held text on its own looks like, kept as little as it
/// takes: the event is built only if the text is released on its own.
#[derive(Debug, Clone)]
enum Carrier {
    /// A chat chunk of the text's choice, in the stream's envelope.
    Chat,
    /// A legacy completions chunk: the choice's `text`, in the stream's envelope.
    Completion,
    /// An Anthropic `content_block_delta` of this delta type.
    Anthropic(&'static str),
    /// A Responses delta event like the last one (its `delta` replaced).
    Responses(Value),
    /// A Gemini event of the text's candidate, in the stream's envelope.
    Gemini,
}

#[derive(Debug)]
pub struct StreamGuard {
    guards: Vec<Arc<Guardrail>>,
    /// The caller's endpoint: its events' shape.
    endpoint: Endpoint,
    holds: bool,
    carry: BytesMut,
    texts: Vec<Held>,
    /// The chat choice whose finishing chunk is being read.
    finishing: Option<u64>,
    /// Chat: the first chunk's envelope (id, model, created...), for chunks that carry
    /// held text on their own.
    template: Option<Value>,
    /// Every chunk read whole (no [`StreamGuard::chat_view`]): tests compare the two.
    whole_only: bool,
}

/// Why a guarded stream must end.
type Stop = Arc<str>;

/// What [`StreamGuard::chat_chunk`] reads of a chat chunk, borrowed from the event.
#[derive(serde::Deserialize)]
struct ChunkView<'a> {
    #[serde(borrow)]
    choices: Vec<ChoiceView<'a>>,
}

/// A choice of a [`ChunkView`], read: its text value with its place in the event's data.
struct ChoiceRead {
    idx: u64,
    finishing: bool,
    text: Option<(Value, std::ops::Range<usize>)>,
}

#[derive(serde::Deserialize)]
struct ChoiceView<'a> {
    index: Option<u64>,
    /// Present and not `null`: the choice ends with this chunk.
    #[serde(borrow)]
    finish_reason: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow)]
    delta: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow)]
    text: Option<&'a serde_json::value::RawValue>,
}

impl StreamGuard {
    pub fn new(guards: Vec<Arc<Guardrail>>, endpoint: Endpoint) -> Self {
        Self {
            holds: intervenes(&guards),
            guards,
            endpoint,
            carry: BytesMut::new(),
            texts: Vec::new(),
            finishing: None,
            template: None,
            whole_only: false,
        }
    }

    /// This guard with every chunk read whole, as the first is.
    #[cfg(test)]
    pub(super) fn reading_whole(mut self) -> Self {
        self.whole_only = true;
        self
    }

    /// Events in, events out. `Err` names the guardrail that blocked: the stream must end
    /// with an error event, and nothing held is sent.
    pub fn feed(&mut self, chunk: &[u8], end: bool, hits: &mut Vec<Hit>) -> Result<Bytes, Stop> {
        self.carry.extend_from_slice(chunk);
        let data = self.carry.split().freeze();
        let mut out = Vec::with_capacity(data.len() + 64);
        let mut pos = 0;
        while let Some(len) = event_end(&data[pos..]) {
            self.event(&data[pos..pos + len], &mut out, hits)?;
            pos += len;
        }
        if end {
            if pos < data.len() {
                self.event(&data[pos..], &mut out, hits)?;
            }
            self.flush(None, &mut out, hits)?;
        } else {
            self.carry.extend_from_slice(&data[pos..]);
        }
        Ok(Bytes::from(out))
    }

    fn event(&mut self, event: &[u8], out: &mut Vec<u8>, hits: &mut Vec<Hit>) -> Result<(), Stop> {
        let data = event_data(event);
        if data.is_empty() {
            out.extend_from_slice(event);
            return Ok(());
        }
        if *data == *b"[DONE]" {
            self.flush(None, out, hits)?;
            out.extend_from_slice(event);
            return Ok(());
        }
        if let Some(choices) = self.chat_view(&data) {
            return self.chat_chunk_view(event, &data, choices, out, hits);
        }
        let Ok(mut v) = serde_json::from_slice::<Value>(&data) else {
            return match self.fail_closed() {
                Some(name) => Err(name),
                None => {
                    out.extend_from_slice(event);
                    Ok(())
                }
            };
        };
        let changed = match self.endpoint {
            Endpoint::Messages => self.anthropic_event(&mut v, out, hits)?,
            Endpoint::Responses => self.responses_event(&mut v, out, hits)?,
            Endpoint::GenerateContent => self.gemini_event(&mut v, out, hits)?,
            _ => self.chat_chunk(&mut v, out, hits)?,
        };
        if changed && self.holds {
            write_event(out, &v, self.endpoint);
        } else {
            out.extend_from_slice(event);
        }
        Ok(())
    }

    /// A chat (or legacy completions) chunk after the first, read as the parts
    /// [`Self::chat_chunk`] reads: each choice's `index`, `finish_reason` and `delta` (or
    /// `text`), the rest skipped rather than built (building the whole chunk was most of
    /// what guarding a stream cost). `None`: not such a chunk, or one that does not read
    /// as plainly (a duplicate key, an odd type), which takes the whole reading instead.
    fn chat_view(&self, data: &[u8]) -> Option<Vec<ChoiceRead>> {
        if self.whole_only
            || !matches!(self.endpoint, Endpoint::ChatCompletions | Endpoint::Completions)
            || self.template.is_none()
        {
            return None;
        }
        let chunk = serde_json::from_slice::<ChunkView<'_>>(data).ok()?;
        chunk
            .choices
            .into_iter()
            .map(|c| {
                let raw = match self.endpoint {
                    Endpoint::Completions => c.text,
                    _ => c.delta,
                };
                let text = match raw {
                    None => None,
                    Some(raw) => {
                        // Where the value sits in `data`, which it was borrowed from.
                        let at = raw.get().as_ptr() as usize - data.as_ptr() as usize;
                        let x: Value = serde_json::from_str(raw.get()).ok()?;
                        Some((x, at..at + raw.get().len()))
                    }
                };
                Some(ChoiceRead {
                    idx: c.index.unwrap_or(0),
                    finishing: c.finish_reason.is_some(),
                    text,
                })
            })
            .collect()
    }

    /// [`Self::chat_chunk`] on a [`Self::chat_view`]: the same texts in the same order. A
    /// changed text is written back into the chunk at its place; the rest of the chunk
    /// goes out as the provider wrote it.
    fn chat_chunk_view(
        &mut self,
        event: &[u8],
        data: &[u8],
        choices: Vec<ChoiceRead>,
        out: &mut Vec<u8>,
        hits: &mut Vec<Hit>,
    ) -> Result<(), Stop> {
        let carrier = match self.endpoint {
            Endpoint::Completions => Carrier::Completion,
            _ => Carrier::Chat,
        };
        let mut edits: Vec<(std::ops::Range<usize>, String)> = Vec::new();
        for choice in choices {
            self.finishing = choice.finishing.then_some(choice.idx);
            if let Some((mut x, range)) = choice.text {
                let done = self.texts_of(&mut x, choice.idx, "", &carrier, hits);
                self.finishing = None;
                if done? {
                    edits.push((range, x.to_string()));
                }
            }
            self.finishing = None;
            if choice.finishing {
                self.flush(Some(choice.idx), out, hits)?;
            }
        }
        if edits.is_empty() || !self.holds {
            out.extend_from_slice(event);
            return Ok(());
        }
        let mut json = Vec::with_capacity(data.len() + 64);
        let mut pos = 0;
        for (range, with) in edits {
            json.extend_from_slice(&data[pos..range.start]);
            json.extend_from_slice(with.as_bytes());
            pos = range.end;
        }
        json.extend_from_slice(&data[pos..]);
        // Data that came in several `data:` lines goes out in as many (joined, they are
        // the JSON; the edits themselves hold no line break).
        for line in json.split(|&b| b == b'\n') {
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(line);
            out.push(b'\n');
        }
        out.push(b'\n');
        Ok(())
    }

    fn chat_chunk(&mut self, v: &mut Value, out: &mut Vec<u8>, hits: &mut Vec<Hit>) -> Result<bool, Stop> {
        if self.template.is_none() {
            let envelope: Map<String, Value> = v
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, _)| *k != "choices" && *k != "usage")
                .map(|(k, x)| (k.clone(), x.clone()))
                .collect();
            self.template = Some(Value::Object(envelope));
        }
        let Some(Value::Array(choices)) = v.get_mut("choices") else {
            return Ok(false);
        };
        let mut changed = false;
        for choice in choices {
            let idx = choice.get("index").and_then(Value::as_u64).unwrap_or(0);
            let finishing = choice.get("finish_reason").is_some_and(|f| !f.is_null());
            // A text of a choice that ends with this chunk is released whole in it, in
            // order after what it held.
            self.finishing = finishing.then_some(idx);
            // Chat puts a choice's text in its `delta`, legacy completions in its `text`.
            let (text, carrier) = match self.endpoint {
                Endpoint::Completions => (choice.get_mut("text"), Carrier::Completion),
                _ => (choice.get_mut("delta"), Carrier::Chat),
            };
            if let Some(x) = text {
                let done = self.texts_of(x, idx, "", &carrier, hits);
                self.finishing = None;
                changed |= done?;
            }
            self.finishing = None;
            if finishing {
                // Its texts this chunk does not carry go out just before it.
                self.flush(Some(idx), out, hits)?;
            }
        }
        Ok(changed)
    }

    /// Gemini events: each candidate's text parts (thought summaries apart) are growing
    /// texts like chat content; a function call arrives whole and is checked whole.
    fn gemini_event(&mut self, v: &mut Value, out: &mut Vec<u8>, hits: &mut Vec<Hit>) -> Result<bool, Stop> {
        if self.template.is_none() {
            let envelope: Map<String, Value> = ["modelVersion", "responseId"]
                .iter()
                .filter_map(|k| v.get(*k).map(|x| ((*k).to_owned(), x.clone())))
                .collect();
            self.template = Some(Value::Object(envelope));
        }
        let Some(Value::Array(candidates)) = v.get_mut("candidates") else {
            return Ok(false);
        };
        let mut changed = false;
        for c in candidates {
            let idx = c.get("index").and_then(Value::as_u64).unwrap_or(0);
            let finishing = c.get("finishReason").is_some_and(|f| !f.is_null());
            self.finishing = finishing.then_some(idx);
            for p in c
                .pointer_mut("/content/parts")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                let field = if p.get("thought") == Some(&Value::Bool(true)) {
                    "thought"
                } else {
                    "text"
                };
                if let Some(Value::String(s)) = p.get_mut("text") {
                    let emit = self.push(idx, field, s, &Carrier::Gemini, hits);
                    let emit = emit.inspect_err(|_| self.finishing = None)?;
                    changed |= replace(s, emit);
                } else if let Some(call) = p.get_mut("functionCall") {
                    changed |= self.whole(call, hits)?;
                }
            }
            self.finishing = None;
            if finishing {
                self.flush(Some(idx), out, hits)?;
            }
        }
        Ok(changed)
    }

    fn anthropic_event(&mut self, v: &mut Value, out: &mut Vec<u8>, hits: &mut Vec<Hit>) -> Result<bool, Stop> {
        let idx = v.get("index").and_then(Value::as_u64).unwrap_or(0);
        match v.get("type").and_then(Value::as_str) {
            Some("content_block_delta") => {
                let carrier = Carrier::Anthropic(match v.pointer("/delta/type").and_then(Value::as_str) {
                    Some("thinking_delta") => "thinking_delta",
                    Some("input_json_delta") => "input_json_delta",
                    _ => "text_delta",
                });
                match v.get_mut("delta") {
                    Some(delta) => self.texts_of(delta, idx, "", &carrier, hits),
                    None => Ok(false),
                }
            }
            // A block may start with text of its own (usually empty).
            Some("content_block_start") => {
                let kind = match v.pointer("/content_block/type").and_then(Value::as_str) {
                    Some("thinking") => "thinking_delta",
                    Some("tool_use") => "input_json_delta",
                    _ => "text_delta",
                };
                let carrier = Carrier::Anthropic(kind);
                match v.get_mut("content_block") {
                    // A tool_use block's `input` is `{}` here; its JSON arrives as deltas.
                    Some(Value::Object(b)) => {
                        let mut changed = false;
                        for field in ["text", "thinking"] {
                            if let Some(Value::String(s)) = b.get_mut(field) {
                                let emit = self.push(idx, field, s, &carrier, hits)?;
                                changed |= replace(s, emit);
                            }
                        }
                        Ok(changed)
                    }
                    _ => Ok(false),
                }
            }
            Some("content_block_stop") => {
                self.flush(Some(idx), out, hits)?;
                Ok(false)
            }
            Some("message_delta" | "message_stop") => {
                self.flush(None, out, hits)?;
                Ok(false)
            }
            _ => Ok(false),
        }
    }

    /// Responses events: every `*.delta` event's text is held back like chat content; the
    /// events that repeat a finished text whole (`*.done`, the finished part and item, the
    /// final response's output) are checked whole.
    fn responses_event(&mut self, v: &mut Value, out: &mut Vec<u8>, hits: &mut Vec<Hit>) -> Result<bool, Stop> {
        let kind = v.get("type").and_then(Value::as_str).unwrap_or("").to_owned();
        let idx = v["output_index"].as_u64().unwrap_or(0) * 1024
            + v["content_index"].as_u64().or(v["summary_index"].as_u64()).unwrap_or(0);
        if let Some(stem) = kind.strip_suffix(".delta") {
            let mut meta = v.clone();
            if let Value::Object(m) = &mut meta {
                m.remove("delta");
            }
            let carrier = Carrier::Responses(meta);
            if let Some(Value::String(s)) = v.get_mut("delta") {
                let emit = self.push(idx, stem, s, &carrier, hits)?;
                return Ok(replace(s, emit));
            }
            return Ok(false);
        }
        if let Some(stem) = kind.strip_suffix(".done") {
            if self.texts.iter().any(|h| h.idx == idx && h.field == stem) {
                self.flush_one(idx, stem, out, hits)?;
            }
        }
        let whole = match kind.as_str() {
            "response.completed" | "response.incomplete" | "response.failed" => {
                self.flush(None, out, hits)?;
                v.pointer_mut("/response/output")
            }
            "response.content_part.done" => v.get_mut("part"),
            "response.output_item.done" => v.get_mut("item"),
            k if k.ends_with(".done") => Some(&mut *v),
            _ => None,
        };
        match whole {
            Some(x) => self.whole(x, hits),
            None => Ok(false),
        }
    }

    /// Every text string in `x` (a delta), each held back as a growing text of its own.
    fn texts_of(
        &mut self,
        x: &mut Value,
        idx: u64,
        path: &str,
        carrier: &Carrier,
        hits: &mut Vec<Hit>,
    ) -> Result<bool, Stop> {
        let mut changed = false;
        match x {
            Value::String(s) => {
                let emit = self.push(idx, path, s, carrier, hits)?;
                changed |= replace(s, emit);
            }
            Value::Object(o) => {
                for (k, child) in o.iter_mut() {
                    if matches!(child, Value::String(_)) && is_protocol_key(k) {
                        continue;
                    }
                    // Streamed audio: base64 `data`; its `transcript` is text.
                    if k == "data" && path.ends_with("audio") {
                        continue;
                    }
                    let sub = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    changed |= self.texts_of(child, idx, &sub, carrier, hits)?;
                }
            }
            // Tool calls are addressed by their own `index`, as chat deltas do.
            Value::Array(items) => {
                for (i, item) in items.iter_mut().enumerate() {
                    let n = item.get("index").and_then(Value::as_u64).unwrap_or(i as u64);
                    changed |= self.texts_of(item, idx, &format!("{path}.{n}"), carrier, hits)?;
                }
            }
            _ => {}
        }
        Ok(changed)
    }

    /// A finished text repeated whole: masked (or blocked) as a whole text is.
    fn whole(&mut self, x: &mut Value, hits: &mut Vec<Hit>) -> Result<bool, Stop> {
        let scanned = super::scan_value(&self.guards, x, crate::api::Endpoint::Responses, hits);
        match scanned.blocked {
            Some(name) => Err(name),
            None => Ok(scanned.changed),
        }
    }

    /// Appends streamed text to its growing text; returns what may go out now.
    fn push(
        &mut self,
        idx: u64,
        field: &str,
        text: &str,
        carrier: &Carrier,
        hits: &mut Vec<Hit>,
    ) -> Result<String, Stop> {
        let i = match self.texts.iter().position(|h| h.idx == idx && h.field == field) {
            Some(i) => i,
            // Texts open at once are bounded (each holds automaton caches): a provider
            // that opens more is not one a guardrail can vouch for.
            None if self.texts.len() >= MAX_TEXTS => {
                return match self.fail_closed() {
                    Some(name) => Err(name),
                    None => Ok(text.to_owned()),
                }
            }
            None => {
                let trackers = self
                    .guards
                    .iter()
                    .map(|g| g.matcher.live.as_ref().map(|l| l.tracker()))
                    .collect();
                self.texts.push(Held {
                    idx,
                    field: field.to_owned(),
                    text: String::new(),
                    ctx: 0,
                    trackers,
                    carrier: carrier.clone(),
                });
                self.texts.len() - 1
            }
        };
        let last = self.finishing == Some(idx);
        let held = &mut self.texts[i];
        if let Carrier::Responses(_) = carrier {
            // Its sequence number and ids follow the latest event.
            held.carrier = carrier.clone();
        }
        let emit = settle(&self.guards, held, text, last, hits)?;
        if last {
            self.texts.swap_remove(i);
        }
        Ok(emit)
    }

    /// Releases what is held for one choice or block (`None`: every one), as events of
    /// their own.
    fn flush(&mut self, idx: Option<u64>, out: &mut Vec<u8>, hits: &mut Vec<Hit>) -> Result<(), Stop> {
        let mut keys: Vec<(u64, String)> = self
            .texts
            .iter()
            .filter(|h| idx.is_none_or(|i| h.idx == i))
            .map(|h| (h.idx, h.field.clone()))
            .collect();
        keys.sort();
        for (i, field) in keys {
            self.flush_one(i, &field, out, hits)?;
        }
        Ok(())
    }

    fn flush_one(&mut self, idx: u64, field: &str, out: &mut Vec<u8>, hits: &mut Vec<Hit>) -> Result<(), Stop> {
        let Some(i) = self.texts.iter().position(|h| h.idx == idx && h.field == field) else {
            return Ok(());
        };
        let mut held = self.texts.swap_remove(i);
        let rest = settle(&self.guards, &mut held, "", true, hits)?;
        if rest.is_empty() || !self.holds {
            return Ok(());
        }
        let event = match held.carrier {
            Carrier::Chat => {
                let mut e = self
                    .template
                    .clone()
                    .unwrap_or_else(|| json!({"object": "chat.completion.chunk"}));
                e["choices"] = json!([{"index": idx, "delta": at_path(field, json!(rest)), "finish_reason": null}]);
                e
            }
            Carrier::Completion => {
                let mut e = self
                    .template
                    .clone()
                    .unwrap_or_else(|| json!({"object": "text_completion"}));
                e["choices"] = json!([{"index": idx, "text": rest, "logprobs": null, "finish_reason": null}]);
                e
            }
            Carrier::Anthropic(kind) => {
                let mut delta = at_path(field, json!(rest));
                delta["type"] = json!(kind);
                json!({"type": "content_block_delta", "index": idx, "delta": delta})
            }
            Carrier::Responses(mut meta) => {
                meta["delta"] = json!(rest);
                meta
            }
            Carrier::Gemini => {
                let mut part = json!({"text": rest});
                if field == "thought" {
                    part["thought"] = json!(true);
                }
                let mut e = self.template.clone().unwrap_or_else(|| json!({}));
                e["candidates"] = json!([{"index": idx, "content": {"role": "model", "parts": [part]}}]);
                e
            }
        };
        write_event(out, &event, self.endpoint);
        Ok(())
    }

    /// An event that cannot be read: a guardrail that blocks or masks fails closed.
    fn fail_closed(&self) -> Option<Stop> {
        super::fails_closed(&self.guards).map(|g| g.name.clone())
    }
}

fn replace(s: &mut String, emit: String) -> bool {
    if emit != *s {
        *s = emit;
        true
    } else {
        false
    }
}

/// A delta holding `leaf` at the dotted `field` path; numeric segments are list items
/// addressed by their `index` (chat tool calls), placed at position 0.
fn at_path(field: &str, leaf: Value) -> Value {
    let segs: Vec<&str> = field.split('.').filter(|s| !s.is_empty()).collect();
    let mut v = leaf;
    for (i, seg) in segs.iter().enumerate().rev() {
        v = match seg.parse::<u64>() {
            Ok(n) if i > 0 => {
                let mut item = match v {
                    Value::Object(o) => o,
                    _ => Map::new(),
                };
                item.insert("index".into(), json!(n));
                json!([Value::Object(item)])
            }
            _ => json!({ *seg: v }),
        };
    }
    v
}

/// Takes new text of one growing text and decides how much of it may go out: everything
/// before the earliest match still in progress, masked; `last` releases all.
fn settle(guards: &[Arc<Guardrail>], p: &mut Held, new: &str, last: bool, hits: &mut Vec<Hit>) -> Result<String, Stop> {
    let from = p.text.len();
    p.text.push_str(new);
    let len = p.text.len();
    let mut cut = len;
    if !last {
        for (g, t) in guards.iter().zip(p.trackers.iter_mut()) {
            if let (Some(live), Some(t)) = (&g.matcher.live, t.as_mut()) {
                t.advance(live, p.text.as_bytes(), p.ctx, from);
                if let Some(e) = t.earliest() {
                    cut = cut.min(e);
                }
            }
        }
        cut = floor_boundary(&p.text, cut).max(p.ctx);
        if len - cut > MAX_HOLD {
            // A guardrail that may block or mask and holds this text ends the stream; one
            // that only monitors lets it go.
            let holder = guards.iter().zip(p.trackers.iter()).find(|(g, t)| {
                g.action != Action::Monitor && t.as_ref().and_then(Tracker::earliest).is_some_and(|e| e <= cut)
            });
            match holder {
                Some((g, _)) => return Err(g.name.clone()),
                None => cut = len,
            }
        }
        if cut == p.ctx {
            // Nothing is final yet: nothing to scan or release.
            return Ok(String::new());
        }
    }
    let text = &p.text;
    let mut found: Vec<(usize, Found)> = Vec::new();
    let mut scratch = Vec::new();
    for (gi, g) in guards.iter().enumerate() {
        scratch.clear();
        g.matcher.find(text, p.ctx, &mut scratch);
        found.extend(scratch.drain(..).map(|f| (gi, f)));
    }
    if !last {
        // A match that started before the cut but reaches past it (it completed, but
        // text after the cut belongs to it) is held from its start.
        found.sort_by_key(|(_, f)| f.start);
        let mut cluster: Option<(usize, usize)> = None;
        for (_, f) in &found {
            if f.start >= cut {
                break;
            }
            cluster = match cluster {
                Some((s, e)) if f.start < e => Some((s, e.max(f.end))),
                _ => Some((f.start, f.end)),
            };
            if let Some((s, e)) = cluster {
                if e > cut {
                    cut = s.max(p.ctx);
                    break;
                }
            }
        }
    }
    let mut masks = Vec::new();
    for (gi, f) in found {
        if f.end > cut || f.start >= cut {
            continue;
        }
        let g = &guards[gi];
        record(hits, g);
        match g.action {
            Action::Block => return Err(g.name.clone()),
            Action::Mask => masks.push(f),
            Action::Monitor => {}
        }
    }
    let emit = apply_masks(text, p.ctx, cut, masks);
    // Keep the last released character as context for the next scan.
    let keep_from = if cut == 0 { 0 } else { floor_boundary(text, cut - 1) };
    p.text.drain(..keep_from);
    p.ctx = cut - keep_from;
    for t in p.trackers.iter_mut().flatten() {
        t.shift(keep_from);
    }
    Ok(emit)
}

fn floor_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Chat chunks are bare `data:` events; Anthropic and Responses events name their type.
fn write_event(out: &mut Vec<u8>, v: &Value, endpoint: Endpoint) {
    let name = match endpoint {
        Endpoint::Messages | Endpoint::Responses => v.get("type").and_then(Value::as_str),
        _ => None,
    };
    crate::stream::write_event(out, name, v);
}
