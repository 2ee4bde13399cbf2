//! Response guardrails on a streamed completion, in the caller's shape (chat chunks,
//! Anthropic events, Responses events).
//!
//! The text of each choice (OpenAI) or content block (Anthropic) is scanned as one string
//! across events. When a guardrail may block or mask, the last `window` bytes of that text
//! (the longest possible match, plus one character for word boundaries) are held back, so
//! a match split across events is caught before any of it reaches the caller; the held
//! text rides on the next event, or on the event that ends the choice. A match that may
//! still grow (it reaches into the window) is held from its start. Monitor-only streams
//! are scanned the same way but forwarded untouched.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use serde_json::{json, Value};

use super::{apply_masks, intervenes, record, scan_text, Found, Guardrail, Hit, Shape, TextVerdict};
use crate::config::raw::Action;
use crate::stream::{event_data, event_end};

/// Room for one character after a match, so a trailing word boundary sees it.
const MARGIN: usize = 4;

#[derive(Debug, Default)]
struct Pending {
    /// The last emitted character (context for boundaries), then the held text.
    text: String,
    /// Bytes at the front of `text` that were already emitted.
    ctx: usize,
    /// Responses: the item and part the text belongs to, for an event carrying held text.
    meta: Option<Value>,
}

#[derive(Debug)]
pub struct StreamGuard {
    guards: Vec<Arc<Guardrail>>,
    shape: Shape,
    holds: bool,
    window: usize,
    carry: BytesMut,
    texts: Vec<(u64, Pending)>,
    /// OpenAI: the first chunk's envelope (id, model, created), for a chunk that carries
    /// held text when the stream ends without a finish_reason.
    template: Option<Value>,
}

impl StreamGuard {
    pub fn new(guards: Vec<Arc<Guardrail>>, shape: impl Into<Shape>) -> Self {
        let shape = shape.into();
        let longest = guards.iter().map(|g| g.matcher.max_len).max().unwrap_or(0);
        Self {
            holds: intervenes(&guards),
            guards,
            shape,
            window: longest + MARGIN,
            carry: BytesMut::new(),
            texts: Vec::new(),
            template: None,
        }
    }

    /// Events in, events out. `Err` names the guardrail that blocked: the stream must end
    /// with an error event, and nothing held is sent.
    pub fn feed(&mut self, chunk: &[u8], end: bool, hits: &mut Vec<Hit>) -> Result<Bytes, Arc<str>> {
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
            self.flush_all(&mut out, hits)?;
        } else {
            self.carry.extend_from_slice(&data[pos..]);
        }
        Ok(Bytes::from(out))
    }

    fn event(&mut self, event: &[u8], out: &mut Vec<u8>, hits: &mut Vec<Hit>) -> Result<(), Arc<str>> {
        let data = event_data(event);
        if data.is_empty() {
            out.extend_from_slice(event);
            return Ok(());
        }
        if data == b"[DONE]" {
            self.flush_all(out, hits)?;
            out.extend_from_slice(event);
            return Ok(());
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
        let changed = match self.shape {
            Shape::Chat => self.chat_chunk(&mut v, hits)?,
            Shape::Messages => self.anthropic_event(&mut v, out, hits)?,
            Shape::Responses => self.responses_event(&mut v, out, hits)?,
        };
        if changed && self.holds {
            write_event(out, &v, self.shape);
        } else {
            out.extend_from_slice(event);
        }
        Ok(())
    }

    fn chat_chunk(&mut self, v: &mut Value, hits: &mut Vec<Hit>) -> Result<bool, Arc<str>> {
        if self.holds && self.template.is_none() {
            let mut t = v.clone();
            t["choices"] = json!([]);
            if let Value::Object(o) = &mut t {
                o.remove("usage");
            }
            self.template = Some(t);
        }
        let Some(Value::Array(choices)) = v.get_mut("choices") else {
            return Ok(false);
        };
        let mut changed = false;
        for choice in choices {
            let idx = choice.get("index").and_then(Value::as_u64).unwrap_or(0);
            let finishing = choice.get("finish_reason").is_some_and(|f| !f.is_null());
            match choice.pointer_mut("/delta/content") {
                Some(Value::String(s)) => {
                    let emit = self.push(idx, s, finishing, hits)?;
                    if emit != *s {
                        *s = emit;
                        changed = true;
                    }
                }
                _ if finishing => {
                    let rest = self.push(idx, "", true, hits)?;
                    if !rest.is_empty() {
                        if let Some(Value::Object(delta)) = choice.get_mut("delta") {
                            delta.insert("content".into(), Value::String(rest));
                            changed = true;
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(changed)
    }

    fn anthropic_event(&mut self, v: &mut Value, out: &mut Vec<u8>, hits: &mut Vec<Hit>) -> Result<bool, Arc<str>> {
        let idx = v.get("index").and_then(Value::as_u64).unwrap_or(0);
        match v.get("type").and_then(Value::as_str) {
            Some("content_block_delta") => {
                if let Some(Value::String(s)) = v.pointer_mut("/delta/text") {
                    let emit = self.push(idx, s, false, hits)?;
                    if emit != *s {
                        *s = emit;
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            Some("content_block_stop") => {
                self.flush(idx, out, hits)?;
                Ok(false)
            }
            Some("message_delta" | "message_stop") => {
                self.flush_all(out, hits)?;
                Ok(false)
            }
            _ => Ok(false),
        }
    }

    /// Responses events: text deltas are held back like chat content; the events that
    /// repeat a finished text whole (`.done` events, the final response) are checked whole.
    fn responses_event(&mut self, v: &mut Value, out: &mut Vec<u8>, hits: &mut Vec<Hit>) -> Result<bool, Arc<str>> {
        let idx = v["output_index"].as_u64().unwrap_or(0) * 1024 + v["content_index"].as_u64().unwrap_or(0);
        match v.get("type").and_then(Value::as_str) {
            Some("response.output_text.delta") => {
                let meta = json!({"item_id": v["item_id"], "output_index": v["output_index"],
                    "content_index": v["content_index"], "sequence_number": v["sequence_number"]});
                if let Some(Value::String(s)) = v.get_mut("delta") {
                    let emit = self.push(idx, s, false, hits)?;
                    if let Some((_, p)) = self.texts.iter_mut().find(|(k, _)| *k == idx) {
                        p.meta = Some(meta);
                    }
                    if emit != *s {
                        *s = emit;
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            Some("response.output_text.done") => {
                self.flush(idx, out, hits)?;
                Ok(self.whole(v.get_mut("text"), hits)?)
            }
            Some("response.content_part.done") => Ok(self.whole(v.pointer_mut("/part/text"), hits)?),
            Some("response.output_item.done") => {
                let mut changed = false;
                for part in v
                    .pointer_mut("/item/content")
                    .and_then(Value::as_array_mut)
                    .into_iter()
                    .flatten()
                {
                    changed |= self.whole(part.get_mut("text"), hits)?;
                }
                Ok(changed)
            }
            Some("response.completed" | "response.incomplete" | "response.failed") => {
                self.flush_all(out, hits)?;
                let mut changed = false;
                let items = v.pointer_mut("/response/output").and_then(Value::as_array_mut);
                for item in items.into_iter().flatten() {
                    for part in item["content"].as_array_mut().into_iter().flatten() {
                        changed |= self.whole(part.get_mut("text"), hits)?;
                    }
                }
                Ok(changed)
            }
            _ => Ok(false),
        }
    }

    /// A finished text repeated whole: masked (or blocked) as a whole text is.
    fn whole(&mut self, text: Option<&mut Value>, hits: &mut Vec<Hit>) -> Result<bool, Arc<str>> {
        let Some(Value::String(s)) = text else { return Ok(false) };
        match scan_text(&self.guards, s, hits) {
            TextVerdict::Clean => Ok(false),
            TextVerdict::Blocked(name) => Err(name),
            TextVerdict::Masked(m) => {
                *s = m;
                Ok(true)
            }
        }
    }

    fn texts_meta(&self, idx: u64) -> Value {
        self.texts
            .iter()
            .find(|(k, _)| *k == idx)
            .and_then(|(_, p)| p.meta.clone())
            .unwrap_or_else(|| json!({}))
    }

    /// Appends streamed text of one choice; returns the text that may go out now.
    fn push(&mut self, idx: u64, text: &str, last: bool, hits: &mut Vec<Hit>) -> Result<String, Arc<str>> {
        let i = match self.texts.iter().position(|(k, _)| *k == idx) {
            Some(i) => i,
            None => {
                self.texts.push((idx, Pending::default()));
                self.texts.len() - 1
            }
        };
        let p = &mut self.texts[i].1;
        p.text.push_str(text);
        let emit = settle(&self.guards, self.window, p, last, hits)?;
        if last {
            self.texts.swap_remove(i);
        }
        Ok(emit)
    }

    /// Sends what is held for one choice / block, as an event of its own.
    fn flush(&mut self, idx: u64, out: &mut Vec<u8>, hits: &mut Vec<Hit>) -> Result<(), Arc<str>> {
        if !self.texts.iter().any(|(k, _)| *k == idx) {
            return Ok(());
        }
        let meta = self.texts_meta(idx);
        let rest = self.push(idx, "", true, hits)?;
        if rest.is_empty() || !self.holds {
            return Ok(());
        }
        let v = match self.shape {
            Shape::Messages => json!({"type": "content_block_delta", "index": idx,
                "delta": {"type": "text_delta", "text": rest}}),
            Shape::Responses => {
                let mut m = meta;
                m["type"] = json!("response.output_text.delta");
                m["delta"] = json!(rest);
                m
            }
            Shape::Chat => {
                let mut t = self
                    .template
                    .clone()
                    .unwrap_or_else(|| json!({"object": "chat.completion.chunk"}));
                t["choices"] = json!([{"index": idx, "delta": {"content": rest}, "finish_reason": null}]);
                t
            }
        };
        write_event(out, &v, self.shape);
        Ok(())
    }

    fn flush_all(&mut self, out: &mut Vec<u8>, hits: &mut Vec<Hit>) -> Result<(), Arc<str>> {
        let mut idxs: Vec<u64> = self.texts.iter().map(|(k, _)| *k).collect();
        idxs.sort_unstable();
        for idx in idxs {
            self.flush(idx, out, hits)?;
        }
        Ok(())
    }

    /// An event that cannot be read: a guardrail that blocks or masks fails closed.
    fn fail_closed(&self) -> Option<Arc<str>> {
        self.guards
            .iter()
            .find(|g| g.action != Action::Monitor)
            .map(|g| g.name.clone())
    }
}

/// Scans the held text and decides how much of it may go out: everything but the last
/// `window` bytes, and never part of a match that may still grow. `last` releases all.
fn settle(
    guards: &[Arc<Guardrail>],
    window: usize,
    p: &mut Pending,
    last: bool,
    hits: &mut Vec<Hit>,
) -> Result<String, Arc<str>> {
    let text = &p.text;
    let len = text.len();
    let mut found: Vec<(usize, Found)> = Vec::new();
    let mut scratch = Vec::new();
    for (gi, g) in guards.iter().enumerate() {
        scratch.clear();
        g.matcher.find(text, p.ctx, &mut scratch);
        found.extend(scratch.drain(..).map(|f| (gi, f)));
    }
    let mut cut = if last {
        len
    } else {
        floor_boundary(text, len.saturating_sub(window)).max(p.ctx)
    };
    if !last {
        // Overlapping matches form clusters; a cluster reaching past the cut may grow.
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
                    cut = s;
                    break;
                }
            }
        }
    }
    let mut masks = Vec::new();
    for (gi, f) in found {
        if f.end > cut {
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
    // Keep the last emitted character as context for the next scan.
    let keep_from = if cut == 0 { 0 } else { floor_boundary(text, cut - 1) };
    p.text.drain(..keep_from);
    p.ctx = cut - keep_from;
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
fn write_event(out: &mut Vec<u8>, v: &Value, shape: Shape) {
    let name = if shape == Shape::Chat {
        None
    } else {
        v.get("type").and_then(Value::as_str)
    };
    crate::stream::write_event(out, name, v);
}
