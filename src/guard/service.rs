//! Guardrail services: a guardrail whose check is a call to a classifier (a moderation
//! model, Presidio, a judge model, Bedrock Guardrails, any webhook) instead of rules run
//! in process. This module holds what a service's answer means for the request: the
//! verdict a client returns and how each action applies it; the clients themselves (HTTP,
//! credentials, each kind's wire shape) live in `guard_service`, above the providers and
//! routes a client may call, and reach the guardrail through [`Service`].
//!
//! One call per guardrail and stage carries every text of that stage, in the order the
//! text model (`text.rs`) walks them; a verdict names texts by that position.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::Value;

use super::{record, text, Guardrail, Hit};
use crate::api::Endpoint;
use crate::error::GwError;
use crate::raw::{Action, OnError};

/// Which side of the provider the texts come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Request,
    Response,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Request => "request",
            Side::Response => "response",
        }
    }
}

/// One call to a service: the texts of one stage of one request.
#[derive(Debug)]
pub struct Call<'a> {
    pub side: Side,
    /// The alias the caller asked for.
    pub model: &'a str,
    pub owner: &'a str,
    pub request_id: &'a str,
    pub texts: &'a [String],
    /// The guardrail masks: ask the service for replacements where it can give them.
    pub mask: bool,
}

/// What a service found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing.
    Allow,
    /// A hit with no replacement: the texts at these positions (all of them when `None`).
    Flag(Option<Vec<usize>>),
    /// A hit, with the service's replacement for the texts at these positions.
    Replace(Vec<(usize, String)>),
}

/// Why a service gave no verdict (a timeout, an error status, a malformed answer). The
/// text is for the log: it never carries the texts sent or a credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure(pub String);

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A guardrail service's client.
#[async_trait]
pub trait Service: Send + Sync + fmt::Debug {
    /// Judges the texts of one call. Bounded in time by the service's `timeout_ms`.
    async fn judge(&self, call: &Call<'_>) -> Result<Verdict, Failure>;
}

/// A service as a guardrail holds it: the client and what to do when it cannot answer.
#[derive(Debug, Clone)]
pub struct Checker {
    pub client: Arc<dyn Service>,
    pub on_error: OnError,
    /// Streams: new text judged at a time (the end of each text is judged whatever its
    /// length).
    pub window_chars: usize,
}

/// What the caller learns about the request a call is made for.
#[derive(Debug, Clone, Copy)]
pub struct About<'a> {
    pub model: &'a str,
    pub owner: &'a str,
    pub request_id: &'a str,
}

/// Why the services stopped a stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// A guardrail that blocks found something.
    Blocked(Arc<str>),
    /// A guardrail that fails closed could not get an answer.
    Unavailable(Arc<str>),
}

impl Stop {
    pub fn error(&self, response: bool) -> GwError {
        match self {
            Stop::Blocked(name) => GwError::ContentFilter {
                guardrail: name.to_string(),
                response,
            },
            Stop::Unavailable(name) => GwError::GuardrailUnavailable(name.to_string()),
        }
    }
}

/// Whether any of these guardrails is a service.
pub fn any(guards: &[Arc<Guardrail>]) -> bool {
    guards.iter().any(|g| g.service.is_some())
}

/// Judges `texts` with every service guardrail of `guards` at once (one call each), then
/// applies their verdicts in the guardrails' order: a hit of one that blocks stops the
/// stage; one that masks replaces the texts it names (by the service's replacement, or
/// whole by `[REDACTED:<name>]` when the service gave none); one that monitors is only
/// recorded. A text two masking services both replace is redacted whole by the first:
/// neither replacement hides what the other found. Returns which texts changed.
pub async fn judge(
    guards: &[Arc<Guardrail>],
    side: Side,
    about: About<'_>,
    texts: &mut [String],
    hits: &mut Vec<Hit>,
) -> Result<Vec<bool>, Stop> {
    let mut changed = vec![false; texts.len()];
    let services: Vec<(&Arc<Guardrail>, &Checker)> = guards
        .iter()
        .filter_map(|g| g.service.as_ref().map(|s| (g, s)))
        .collect();
    if services.is_empty() || texts.is_empty() {
        return Ok(changed);
    }
    let verdicts = {
        let texts: &[String] = texts;
        futures_util::future::join_all(services.iter().map(|(g, s)| {
            let call = Call {
                side,
                model: about.model,
                owner: about.owner,
                request_id: about.request_id,
                texts,
                mask: g.action == Action::Mask,
            };
            async move { s.client.judge(&call).await }
        }))
        .await
    };
    // Per text: the replacement and the guardrail that made it.
    let mut replaced: Vec<Option<(Arc<str>, String)>> = vec![None; texts.len()];
    let mut twice: Vec<bool> = vec![false; texts.len()];
    for ((g, s), verdict) in services.iter().zip(verdicts) {
        let verdict = match verdict {
            Ok(v) => v,
            Err(failure) => {
                tracing::warn!(guardrail = %g.name, error = %failure, "guardrail service gave no verdict");
                if s.on_error == OnError::Block && g.action != Action::Monitor {
                    return Err(Stop::Unavailable(g.name.clone()));
                }
                continue;
            }
        };
        if verdict == Verdict::Allow {
            continue;
        }
        record(hits, g);
        match g.action {
            Action::Block => return Err(Stop::Blocked(g.name.clone())),
            Action::Monitor => {}
            Action::Mask => {
                let whole = || format!("[REDACTED:{}]", g.name);
                let edits: Vec<(usize, String)> = match verdict {
                    Verdict::Allow => Vec::new(),
                    Verdict::Flag(None) => (0..texts.len()).map(|i| (i, whole())).collect(),
                    Verdict::Flag(Some(which)) => which.into_iter().map(|i| (i, whole())).collect(),
                    Verdict::Replace(edits) => edits,
                };
                for (i, text) in edits {
                    let Some(slot) = replaced.get_mut(i) else { continue };
                    match slot {
                        None => *slot = Some((g.name.clone(), text)),
                        Some(_) => twice[i] = true,
                    }
                }
            }
        }
    }
    for (i, r) in replaced.into_iter().enumerate() {
        if let Some((by, text)) = r {
            texts[i] = if twice[i] { format!("[REDACTED:{by}]") } else { text };
            changed[i] = true;
        }
    }
    Ok(changed)
}

/// The first service guardrail that must see text before anyone does (blocks or masks):
/// text it cannot read is refused in its name.
fn fails_closed(guards: &[Arc<Guardrail>]) -> Option<&Arc<Guardrail>> {
    guards
        .iter()
        .find(|g| g.service.is_some() && g.action != Action::Monitor)
}

/// Request stage: the rules (`guard::check_request`), then every service over the texts
/// the rules let through (masked ones as masked). Returns the body to send when either
/// changed it.
pub async fn check_request(
    guards: &[Arc<Guardrail>],
    endpoint: Endpoint,
    body: &[u8],
    about: About<'_>,
    hits: &mut Vec<Hit>,
) -> Result<Option<Bytes>, GwError> {
    let masked = super::check_request(guards, endpoint, body, hits)?;
    if !any(guards) {
        return Ok(masked);
    }
    let current = masked.as_deref().unwrap_or(body);
    let mut v = text::parse_unique(current).map_err(|e| GwError::InvalidJson(format!("Invalid JSON body: {e}")))?;
    let edited = judge_value(guards, Side::Request, about, hits, |f| {
        text::request_texts(&mut v, endpoint, f)
    })
    .await
    .map_err(|s| s.error(false))?;
    if !edited {
        return Ok(masked);
    }
    Ok(Some(Bytes::from(
        serde_json::to_vec(&v).map_err(|_| GwError::Internal)?,
    )))
}

/// One part of an MCP message (either direction) through the rules, then the services.
/// `Err` names why it is refused.
pub async fn check_mcp(
    guards: &[Arc<Guardrail>],
    side: Side,
    v: &mut Value,
    about: About<'_>,
    hits: &mut Vec<Hit>,
) -> Result<(), Stop> {
    super::check_mcp(guards, v, hits).map_err(Stop::Blocked)?;
    if !any(guards) {
        return Ok(());
    }
    judge_value(guards, side, about, hits, |f| text::mcp_texts(v, f))
        .await
        .map(|_| ())
}

/// Judges every text a walk of the text model gives (the walk is run twice: once to
/// read the texts, once to write back what the services replaced). Text the walk cannot
/// read is refused by the first service guardrail that fails closed. Returns whether
/// anything was replaced.
async fn judge_value(
    guards: &[Arc<Guardrail>],
    side: Side,
    about: About<'_>,
    hits: &mut Vec<Hit>,
    mut walk: impl FnMut(&mut dyn FnMut(&mut String)) -> Result<(), text::Unscannable>,
) -> Result<bool, Stop> {
    let mut texts = Vec::new();
    if let Err(what) = walk(&mut |s: &mut String| texts.push(s.clone())) {
        if let Some(g) = fails_closed(guards) {
            tracing::debug!(guardrail = %g.name, problem = what, "content could not be read for a guardrail service");
            return Err(Stop::Blocked(g.name.clone()));
        }
    }
    let originals = texts.clone();
    let changed = judge(guards, side, about, &mut texts, hits).await?;
    let Some(edits) = replacements(&originals, &changed, texts) else {
        return Ok(false);
    };
    let _ = walk(&mut |s: &mut String| {
        if let Some(r) = edits.get(s.as_str()) {
            *s = r.clone();
        }
    });
    Ok(true)
}

/// Each text a service replaced, by what it was, or `None` when nothing changed. The
/// write-back goes by content, not by position: a walk that renames a key (keys of
/// free-form objects are text) reorders what follows in the map, so a second walk does
/// not meet the texts in the first walk's order. Equal texts get the same verdict.
fn replacements(originals: &[String], changed: &[bool], texts: Vec<String>) -> Option<HashMap<String, String>> {
    let edits: HashMap<String, String> = originals
        .iter()
        .zip(changed)
        .zip(texts)
        .filter(|((_, c), _)| **c)
        .map(|((o, _), t)| (o.clone(), t))
        .collect();
    (!edits.is_empty()).then_some(edits)
}

/// Response stage for a whole JSON answer in the caller's shape, after the rules: every
/// text judged at once; a choice with a text a blocking service flags keeps its place
/// with no content, as the rules do it (`guard::check_response`). Returns the new body,
/// or `None` when unchanged; `blocked_by` names what refused.
pub async fn check_response(
    guards: &[Arc<Guardrail>],
    endpoint: Endpoint,
    body: &[u8],
    about: About<'_>,
    hits: &mut Vec<Hit>,
    blocked_by: &mut Option<Stop>,
) -> Option<Bytes> {
    let Ok(mut v) = serde_json::from_slice::<Value>(body) else {
        return fails_closed(guards).map(|g| {
            *blocked_by = Some(Stop::Blocked(g.name.clone()));
            GwError::UpstreamError("The provider's answer could not be checked by the guardrails.".into())
                .body(endpoint.dialect())
        });
    };
    let mut texts = Vec::new();
    text::response_texts(&mut v, endpoint, &mut |s: &mut String| {
        texts.push(s.clone());
        text::Edit::Keep
    });
    let originals = texts.clone();
    let stop = match judge(guards, Side::Response, about, &mut texts, hits).await {
        Ok(changed) => {
            let edits = replacements(&originals, &changed, texts)?;
            text::response_texts(&mut v, endpoint, &mut |s: &mut String| match edits.get(s.as_str()) {
                Some(r) => {
                    *s = r.clone();
                    text::Edit::Changed
                }
                None => text::Edit::Keep,
            });
            return Some(Bytes::from(v.to_string()));
        }
        Err(stop) => stop,
    };
    // Blocked, or unavailable and failing closed: no text of the answer goes out.
    text::response_texts(&mut v, endpoint, &mut |_| text::Edit::Block);
    *blocked_by = Some(stop);
    Some(Bytes::from(v.to_string()))
}

/// The most text a stream under monitoring services keeps for its judgement at the end;
/// more is judged as it comes, a window at a time.
const MONITOR_KEEP: usize = 256 * 1024;
/// The most event bytes a stream holds while its window fills: events heavy with what is
/// not text (ids, log-probabilities) have their window judged early rather than grow.
const MAX_HELD: usize = 1 << 20;
/// The most time a window's masked texts spend finding where their pieces fall.
const DIFF_TIME: std::time::Duration = std::time::Duration::from_millis(20);
/// Characters of one window judged again at the start of the next.
const OVERLAP_CHARS: usize = 200;

/// The most streamed strings (choices' fields, blocks, items) one window judges at once:
/// a window is due when they are open, and before one more would open.
const MAX_KEYS: usize = 64;
/// The most streamed strings whose carried tails one stream keeps (some 800 KiB at most):
/// far more than any answer has (128 choices of a few fields each); past it, the string
/// that grew longest ago loses its tail.
const MAX_SLOTS: usize = 1024;

/// Text that reaches the caller piece by piece (a stream's deltas, a realtime session's),
/// judged by the response-stage services a window at a time. A streamed string (a
/// choice's content, a tool call's arguments, a content block's text, an output item's
/// deltas: its key) grows on its own, its pieces joined as the caller reads them, so a
/// word split across pieces is whole, and neither choices nor fields run into each
/// other. Strings that arrive whole (an id-free `.done` event's text, a tool call's
/// arguments object, a safety rating) are texts of their own. A window is due at
/// `window_chars` of new text in all (the smallest of the guardrails'), or when
/// [`MAX_KEYS`] streamed strings are open; then every string with new text goes in one
/// call, each after the last 200 characters of its own previous window, so a phrase cut
/// at a boundary is seen whole once. What holds the pieces back is the caller's (events,
/// messages); this keeps the texts, the verdicts, and, under a masking service, where
/// each piece lies in its string, so a replacement can be cut back into the pieces
/// ([`Masked`]).
#[derive(Debug)]
pub struct TextWindow {
    guards: Vec<Arc<Guardrail>>,
    /// Some guardrail blocks or masks: what carries the text waits for its window's verdict.
    holds: bool,
    /// Some guardrail masks: pieces are remembered for the write-back.
    masks: bool,
    window: usize,
    texts: Vec<Slot>,
    /// Each slot by its key.
    index: HashMap<String, usize>,
    /// Slots with new text.
    open: usize,
    /// Under a masking service: each piece since the last verdict, in the order pushed,
    /// as (its string's slot, its length in bytes).
    pieces: Vec<(usize, usize)>,
    /// Strings that came whole since the last verdict.
    wholes: Vec<String>,
    /// New characters in all, and bytes kept in all.
    chars: usize,
    bytes: usize,
    /// Pieces pushed so far.
    pushes: u64,
}

/// One streamed string of a [`TextWindow`].
#[derive(Debug)]
struct Slot {
    key: String,
    /// The last window's tail (already judged and released), then the new text.
    text: String,
    /// Bytes at the front of `text` that are the last window's tail.
    tail: usize,
    /// Whether any new text is waiting.
    new: bool,
    /// When it last grew (the window's push count).
    seen: u64,
}

/// What a window's masking services made of the text it judged: per streamed piece, in
/// the order pushed, its new text (`None`: unchanged); and each whole string they
/// changed, by what it was. Text released by an earlier window is never taken back: a
/// replacement that reaches into the carried tail starts in the first new piece.
#[derive(Debug, Default)]
pub struct Masked {
    pub pieces: Vec<Option<String>>,
    pub wholes: HashMap<String, String>,
}

impl TextWindow {
    /// `None` when no service guardrail is among `guards`.
    pub fn new(guards: &[Arc<Guardrail>]) -> Option<Self> {
        let services: Vec<Arc<Guardrail>> = guards.iter().filter(|g| g.service.is_some()).cloned().collect();
        let window = services
            .iter()
            .filter_map(|g| g.service.as_ref())
            .map(|s| s.window_chars)
            .min()?;
        Some(Self::empty(services, window))
    }

    /// A window of `guards` (service guardrails) due at `window` new characters.
    fn empty(guards: Vec<Arc<Guardrail>>, window: usize) -> Self {
        Self {
            holds: guards.iter().any(|g| g.action != Action::Monitor),
            masks: guards.iter().any(|g| g.action == Action::Mask),
            guards,
            window: window.max(1),
            texts: Vec::new(),
            index: HashMap::new(),
            open: 0,
            pieces: Vec::new(),
            wholes: Vec::new(),
            chars: 0,
            bytes: 0,
            pushes: 0,
        }
    }

    /// Whether a guardrail blocks or masks (pieces must wait for their verdict) or all
    /// monitor.
    pub fn holds(&self) -> bool {
        self.holds
    }

    /// The first guardrail that masks, if any.
    pub fn masking(&self) -> Option<&Arc<Guardrail>> {
        self.guards.iter().find(|g| g.action == Action::Mask)
    }

    /// The first guardrail that holds text back (blocks or masks), if any: text it
    /// cannot read is refused in its name.
    pub fn holding(&self) -> Option<&Arc<Guardrail>> {
        fails_closed(&self.guards)
    }

    /// A piece of the streamed string `key` names.
    pub fn push(&mut self, key: &str, piece: &str) {
        if piece.is_empty() {
            return;
        }
        let at = match self.index.get(key) {
            Some(&i) => i,
            None => self.slot_for(key),
        };
        self.pushes += 1;
        let slot = &mut self.texts[at];
        slot.text.push_str(piece);
        if !slot.new {
            self.open += 1;
        }
        slot.new = true;
        slot.seen = self.pushes;
        self.chars += piece.chars().count();
        self.bytes += piece.len();
        if self.masks {
            self.pieces.push((at, piece.len()));
        }
    }

    /// A string that came whole: judged on its own.
    pub fn push_whole(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        self.chars += text.chars().count();
        self.bytes += text.len();
        self.wholes.push(text.to_owned());
    }

    /// Whether the streamed strings `keys` can join the window without passing
    /// [`MAX_KEYS`] open strings. When they cannot, the window is judged first, so a new
    /// string never shares a slot with another.
    pub fn room(&self, keys: &[&str]) -> bool {
        let fresh: std::collections::HashSet<&str> = keys
            .iter()
            .copied()
            .filter(|k| !self.index.get(*k).is_some_and(|&i| self.texts[i].new))
            .collect();
        self.open + fresh.len() <= MAX_KEYS
    }

    /// A slot for a new key: a new one, or past [`MAX_SLOTS`] the one whose string was
    /// pushed to longest ago among those with nothing new (its carried tail is dropped).
    /// Slots never move: pieces name them by place.
    fn slot_for(&mut self, key: &str) -> usize {
        let fresh = Slot {
            key: key.to_owned(),
            text: String::new(),
            tail: 0,
            new: false,
            seen: 0,
        };
        if self.texts.len() >= MAX_SLOTS {
            let oldest = (0..self.texts.len())
                .filter(|&i| !self.texts[i].new)
                .min_by_key(|&i| self.texts[i].seen);
            if let Some(i) = oldest {
                let old = std::mem::replace(&mut self.texts[i], fresh);
                self.bytes = self.bytes.saturating_sub(old.text.len());
                self.index.remove(&old.key);
                self.index.insert(key.to_owned(), i);
                return i;
            }
        }
        self.texts.push(fresh);
        self.index.insert(key.to_owned(), self.texts.len() - 1);
        self.texts.len() - 1
    }

    /// New text is waiting for a verdict.
    pub fn pending(&self) -> bool {
        self.chars > 0
    }

    /// A window is due: `window_chars` of new text, or [`MAX_KEYS`] strings open
    /// (monitors: 256 KiB kept).
    pub fn full(&self) -> bool {
        if self.holds {
            self.chars >= self.window || self.open >= MAX_KEYS
        } else {
            self.bytes >= MONITOR_KEEP
        }
    }

    /// Judges the new text of every streamed string, and every whole string, in one call
    /// per service. `Some` when a masking service replaced text.
    pub async fn judge(&mut self, about: About<'_>, hits: &mut Vec<Hit>) -> Result<Option<Masked>, Stop> {
        let pieces = std::mem::take(&mut self.pieces);
        let mut wholes = std::mem::take(&mut self.wholes);
        if self.chars == 0 {
            return Ok(None);
        }
        // A string repeated (a `.done` event and the final response both carry the
        // answer) is judged once: the write-back goes by content.
        wholes.sort_unstable();
        wholes.dedup();
        let mut judged = Vec::new();
        let mut texts = Vec::new();
        self.bytes = 0;
        for (i, slot) in self.texts.iter_mut().enumerate().filter(|(_, s)| s.new) {
            let tail_from = slot
                .text
                .char_indices()
                .rev()
                .nth(OVERLAP_CHARS - 1)
                .map_or(0, |(i, _)| i);
            let tail = slot.text[tail_from..].to_owned();
            self.bytes += tail.len();
            judged.push((i, slot.tail));
            slot.tail = tail.len();
            texts.push(std::mem::replace(&mut slot.text, tail));
            slot.new = false;
        }
        self.chars = 0;
        self.open = 0;
        let streamed = texts.len();
        texts.extend(wholes);
        let originals = self.masks.then(|| texts.clone());
        let changed = judge(&self.guards, Side::Response, about, &mut texts, hits).await?;
        let Some(originals) = originals.filter(|_| changed.contains(&true)) else {
            return Ok(None);
        };
        // Each changed string's pieces, cut from its replacement where its original's
        // piece boundaries fall.
        let mut out = Masked {
            pieces: vec![None; pieces.len()],
            wholes: HashMap::new(),
        };
        // One budget for the window's diffs, however many strings it holds.
        let deadline = std::time::Instant::now() + DIFF_TIME;
        let mut by_slot: HashMap<usize, Vec<usize>> = HashMap::new();
        for (p, &(slot, _)) in pieces.iter().enumerate() {
            by_slot.entry(slot).or_default().push(p);
        }
        for (k, &(slot, tail)) in judged.iter().enumerate() {
            if !changed[k] {
                continue;
            }
            let mine = by_slot.remove(&slot).unwrap_or_default();
            let mut bounds = Vec::with_capacity(mine.len() + 1);
            bounds.push(tail);
            for &p in &mine {
                bounds.push(bounds[bounds.len() - 1] + pieces[p].1);
            }
            let whole = self.guards.iter().any(|g| texts[k] == format!("[REDACTED:{}]", g.name));
            let at = if whole {
                // Redacted whole: the marker goes out once, in the first new piece.
                let mut at = vec![texts[k].len(); bounds.len()];
                at[0] = 0;
                at
            } else {
                map_bounds(&originals[k], &texts[k], &bounds, deadline)
            };
            for (j, &p) in mine.iter().enumerate() {
                out.pieces[p] = Some(texts[k][at[j]..at[j + 1]].to_owned());
            }
        }
        for k in streamed..texts.len() {
            if changed[k] {
                out.wholes.insert(originals[k].clone(), std::mem::take(&mut texts[k]));
            }
        }
        Ok(Some(out))
    }
}

/// Where each of `bounds` (ascending char boundaries of `original`) falls in `replaced`,
/// by a byte diff of the two: a boundary in unchanged text keeps its place; one inside a
/// changed span goes to the span's start, so the whole replacement lands after it (in a
/// piece not yet released). The positions ascend, end at `replaced.len()` for
/// `original.len()`, and are char boundaries, so the pieces cut at them are exactly
/// `replaced` from the first on. Past `deadline` the diff is coarser (replacements move
/// to later pieces), never wrong.
fn map_bounds(original: &str, replaced: &str, bounds: &[usize], deadline: std::time::Instant) -> Vec<usize> {
    let ops = similar::capture_diff_slices_deadline(
        similar::Algorithm::Myers,
        original.as_bytes(),
        replaced.as_bytes(),
        Some(deadline),
    );
    let map = |x: usize| -> usize {
        if x >= original.len() {
            return replaced.len();
        }
        for op in &ops {
            let (tag, old, new) = op.as_tag_tuple();
            if tag == similar::DiffTag::Equal && old.start <= x && x <= old.end {
                return new.start + (x - old.start);
            }
            if old.start <= x && x < old.end {
                return new.start;
            }
        }
        replaced.len()
    };
    let mut last = 0;
    bounds
        .iter()
        .map(|&x| {
            let mut at = map(x);
            while !replaced.is_char_boundary(at) {
                at -= 1;
            }
            last = at.max(last);
            last
        })
        .collect()
}

/// A streamed answer under response-stage service guardrails, in the caller's shape,
/// after the rules: the events the rules released are held until the text they carry is
/// judged ([`TextWindow`]: a window at a time, and at the end), then released whole,
/// rewritten where a masking service replaced text, or the stream ends with the
/// guardrail's error. Monitors hold nothing: their text is judged at the end (or, past
/// 256 KiB, a window at a time).
#[derive(Debug)]
pub struct StreamWindows {
    window: TextWindow,
    held: bytes::BytesMut,
}

/// One streamed piece or whole string of an event: its string's key (`None`: whole)
/// and its text.
type EventPiece = (Option<String>, String);

impl StreamWindows {
    /// `None` when no service guardrail applies.
    pub fn new(guards: &[Arc<Guardrail>]) -> Option<Self> {
        Some(Self {
            window: TextWindow::new(guards)?,
            held: bytes::BytesMut::new(),
        })
    }

    /// Takes the events the rules released (whole events) and returns what may go to the
    /// caller now; `end` judges whatever is left. `Err` ends the stream: a guardrail's
    /// block, or an event a guardrail that holds text cannot read (not JSON, a key twice,
    /// nested past what a parser reads): what cannot be judged is not released.
    pub async fn feed(
        &mut self,
        events: Bytes,
        end: bool,
        about: About<'_>,
        hits: &mut Vec<Hit>,
    ) -> Result<Bytes, Stop> {
        let holds = self.window.holds();
        let mut out = bytes::BytesMut::new();
        let mut rest = &events[..];
        while !rest.is_empty() {
            let len = crate::stream::event_end(rest).unwrap_or(rest.len());
            let (event, tail) = rest.split_at(len);
            rest = tail;
            let mut pieces: Vec<EventPiece> = Vec::new();
            match event_value(event) {
                Ok(Some(mut v)) => event_pieces(&mut v, &mut |key, s| pieces.push((key.map(str::to_owned), s.clone()))),
                Ok(None) => {}
                Err(()) => {
                    if let Some(g) = self.window.holding() {
                        return Err(Stop::Blocked(g.name.clone()));
                    }
                }
            }
            let keys: Vec<&str> = pieces.iter().filter_map(|(k, _)| k.as_deref()).collect();
            if keys.len() > MAX_SLOTS && keys.iter().collect::<std::collections::HashSet<_>>().len() > MAX_SLOTS {
                // More streamed strings in one event than a stream keeps apart: a
                // guardrail that holds text refuses it; monitors read them whole.
                if let Some(g) = self.window.holding() {
                    return Err(Stop::Blocked(g.name.clone()));
                }
                pieces.iter_mut().for_each(|(k, _)| *k = None);
            }
            let keys: Vec<&str> = pieces.iter().filter_map(|(k, _)| k.as_deref()).collect();
            if !self.window.room(&keys) {
                self.flush(&mut out, about, hits).await?;
            }
            for (key, s) in &pieces {
                match key {
                    Some(key) => self.window.push(key, s),
                    None => self.window.push_whole(s),
                }
            }
            if holds {
                self.held.extend_from_slice(event);
            } else {
                out.extend_from_slice(event);
            }
            if self.window.full() || self.held.len() >= MAX_HELD {
                self.flush(&mut out, about, hits).await?;
            }
        }
        if end {
            self.flush(&mut out, about, hits).await?;
        }
        Ok(out.freeze())
    }

    /// Judges the window and releases what it held, rewritten where text was masked.
    /// Events without text (audio, a role) wait with the rest: audio goes out only once
    /// its transcript's window is judged.
    async fn flush(&mut self, out: &mut bytes::BytesMut, about: About<'_>, hits: &mut Vec<Hit>) -> Result<(), Stop> {
        let masked = self.window.judge(about, hits).await?;
        let held = self.held.split();
        match masked {
            Some(m) => out.extend_from_slice(&rewrite(&held, &m)),
            None => out.extend_from_slice(&held),
        }
        Ok(())
    }
}

/// The JSON data of one SSE event: `Ok(None)` for an event with no data or the `[DONE]`
/// marker; `Err` for data that is not JSON that reads one way (a key twice, nesting past
/// the parser's limit).
fn event_value(event: &[u8]) -> Result<Option<Value>, ()> {
    let data = crate::stream::event_data(event);
    if data.trim_ascii().is_empty() || data.trim_ascii() == b"[DONE]" {
        return Ok(None);
    }
    text::parse_unique(&data).map(Some).map_err(|_| ())
}

/// The held events with each piece of text replaced by its masked text: an event with a
/// changed piece is written anew (its log-probabilities, which repeat the text, left
/// out), the others go as they came. Streamed pieces are found by the same walk, in the
/// same order, as they were judged (their fields are read by place, never renamed);
/// whole strings are replaced by what they were.
fn rewrite(events: &[u8], m: &Masked) -> Bytes {
    let mut out = Vec::with_capacity(events.len());
    let mut next = 0;
    let mut rest = events;
    while !rest.is_empty() {
        let len = crate::stream::event_end(rest).unwrap_or(rest.len());
        let (event, tail) = rest.split_at(len);
        rest = tail;
        let Ok(Some(mut v)) = event_value(event) else {
            out.extend_from_slice(event);
            continue;
        };
        let mut changed = false;
        event_pieces(&mut v, &mut |key, s| match key {
            Some(_) => {
                if let Some(Some(t)) = m.pieces.get(next) {
                    s.clone_from(t);
                    changed = true;
                }
                next += 1;
            }
            None => {
                if let Some(t) = m.wholes.get(s.as_str()) {
                    s.clone_from(t);
                    changed = true;
                }
            }
        });
        if changed {
            write_data(&mut out, event, &v);
        } else {
            out.extend_from_slice(event);
        }
    }
    Bytes::from(out)
}

/// `event` with its data replaced by `v`: one `data:` line where its first was, every
/// other line (`event:`, `id:`, `retry:`, comments) kept in its place.
fn write_data(out: &mut Vec<u8>, event: &[u8], v: &Value) {
    let mut written = false;
    for line in event.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        if line.starts_with(b"data:") {
            if !std::mem::replace(&mut written, true) {
                out.extend_from_slice(b"data: ");
                // Serializing a Value cannot fail.
                let _ = serde_json::to_writer(&mut *out, v);
                out.push(b'\n');
            }
            continue;
        }
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out.push(b'\n');
}

/// Calls `f` on every non-empty string of one event the caller reads: the streamed
/// fields with the key of the string they continue (`Some`), everything else as a
/// string of its own (`None`), as the text model reads a completion's parts. A part is a
/// chat or completions chunk's choice (`choices[].index`), a Gemini candidate, or the
/// event (an Anthropic content block's, a Responses output item's). Log-probabilities
/// (the text again, token by token, with alternatives the caller was not given) are
/// left out. The same walk finds the pieces to judge and the pieces to write back.
fn event_pieces(v: &mut Value, f: &mut dyn FnMut(Option<&str>, &mut String)) {
    let per_choice = ["choices", "candidates"]
        .into_iter()
        .find(|k| v.get(*k).is_some_and(Value::is_array));
    match per_choice {
        Some(field) => {
            if let Some(Value::Array(parts)) = v.get_mut(field) {
                for (i, part) in parts.iter_mut().enumerate() {
                    let index = part.get("index").and_then(Value::as_u64).unwrap_or(i as u64);
                    if let Some(o) = part.as_object_mut() {
                        o.remove("logprobs");
                        o.remove("logprobsResult");
                    }
                    let fields = streamed_fields(part, field);
                    part_pieces(part, &format!("{field}:{index}"), &fields, f);
                }
            }
        }
        None => {
            if let Some(o) = v.as_object_mut() {
                o.remove("logprobs");
            }
            let kind = v.get("type").and_then(Value::as_str).unwrap_or_default().to_owned();
            let at = ["index", "output_index", "content_index", "summary_index"]
                .map(|k| v.get(k).and_then(Value::as_u64).unwrap_or(0));
            // An Anthropic block's text may start in its `content_block_start`: the start
            // and the deltas are one block's.
            let key = match kind.as_str() {
                "content_block_start" | "content_block_delta" => format!("block:{}", at[0]),
                _ => format!("{kind}:{}:{}:{}:{}", at[0], at[1], at[2], at[3]),
            };
            let fields = streamed_fields(v, "event");
            if let Some(output) = v
                .get_mut("response")
                .filter(|r| r.is_object())
                .and_then(|r| r.get_mut("output"))
            {
                // The final Responses object: its answer is its output (the rest is the
                // request's settings and ids), read as a completion's parts are.
                part_pieces(output, &key, &[], f);
                return;
            }
            part_pieces(v, &key, &fields, f);
        }
    }
}

/// The JSON pointers (and a label for each: pieces with one label join) of the strings
/// of a part that continue in the part's next events: a chat choice's content (a string,
/// or a list of text parts), reasoning, refusal, transcript, each tool call's arguments
/// (by the call's `index`) and a legacy `function_call`'s; a legacy completion's text; a
/// Gemini candidate's text parts (its answer and its thoughts, each joined whatever the
/// parts' places, as the caller's SDK joins them); an Anthropic block's text or thinking
/// (from its start event on) or tool input JSON; a Responses delta.
fn streamed_fields(part: &Value, family: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut fixed = |fields: &[(&str, &str)]| {
        for (pointer, label) in fields {
            if part.pointer(pointer).is_some_and(Value::is_string) {
                out.push(((*pointer).to_owned(), (*label).to_owned()));
            }
        }
    };
    match family {
        "choices" => {
            fixed(&[
                ("/delta/content", "content"),
                ("/delta/reasoning_content", "reasoning_content"),
                ("/delta/reasoning", "reasoning"),
                ("/delta/refusal", "refusal"),
                ("/delta/audio/transcript", "transcript"),
                ("/delta/function_call/arguments", "function_call"),
                ("/text", "text"),
            ]);
            if let Some(items) = part.pointer("/delta/content").and_then(Value::as_array) {
                for (k, item) in items.iter().enumerate() {
                    if item.get("text").is_some_and(Value::is_string) {
                        out.push((format!("/delta/content/{k}/text"), "content".to_owned()));
                    }
                }
            }
            if let Some(calls) = part.pointer("/delta/tool_calls").and_then(Value::as_array) {
                for (k, call) in calls.iter().enumerate() {
                    let index = call.get("index").and_then(Value::as_u64).unwrap_or(k as u64);
                    let p = format!("/delta/tool_calls/{k}/function/arguments");
                    if part.pointer(&p).is_some_and(Value::is_string) {
                        out.push((p, format!("tool:{index}")));
                    }
                }
            }
        }
        "candidates" => {
            if let Some(parts) = part.pointer("/content/parts").and_then(Value::as_array) {
                for (i, p) in parts.iter().enumerate() {
                    if p.get("text").is_some_and(Value::is_string) {
                        let thought = p.get("thought").and_then(Value::as_bool).unwrap_or(false);
                        let label = if thought { "thought" } else { "text" };
                        out.push((format!("/content/parts/{i}/text"), label.to_owned()));
                    }
                }
            }
        }
        _ => match part.get("type").and_then(Value::as_str) {
            Some("content_block_delta") => fixed(&[
                ("/delta/text", "text"),
                ("/delta/thinking", "thinking"),
                ("/delta/partial_json", "partial_json"),
            ]),
            Some("content_block_start") => {
                fixed(&[("/content_block/text", "text"), ("/content_block/thinking", "thinking")])
            }
            Some(t) if t.ends_with(".delta") => fixed(&[("/delta", "delta")]),
            _ => {}
        },
    }
    out
}

/// The pieces of one part: its streamed `fields` under `key` plus their label, by
/// place; then every other string, whole (the streamed ones are out of the part while
/// the rest is read, so no string is read twice).
fn part_pieces(part: &mut Value, key: &str, fields: &[(String, String)], f: &mut dyn FnMut(Option<&str>, &mut String)) {
    let mut taken = Vec::with_capacity(fields.len());
    for (pointer, label) in fields {
        if let Some(Value::String(s)) = part.pointer_mut(pointer) {
            if !s.is_empty() {
                f(Some(&format!("{key}/{label}")), s);
            }
            taken.push((pointer, std::mem::take(s)));
        }
    }
    text::part_texts(part, &mut |s: &mut String| {
        if !s.is_empty() {
            f(None, s);
        }
        text::Edit::Keep
    });
    for (pointer, s) in taken {
        if let Some(Value::String(slot)) = part.pointer_mut(pointer) {
            *slot = s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::{Matcher, Stage};

    /// A window that holds (its verdicts are never asked for here).
    fn window() -> TextWindow {
        let mut w = TextWindow::empty(Vec::new(), 1000);
        w.holds = true;
        w
    }

    fn texts(w: &TextWindow) -> Vec<(&str, &str)> {
        w.texts.iter().map(|s| (s.key.as_str(), s.text.as_str())).collect()
    }

    fn push_events(w: &mut TextWindow, events: &str) {
        for v in parsed(events.as_bytes()) {
            let mut v = v;
            event_pieces(&mut v, &mut |key, s| match key {
                Some(key) => w.push(key, s),
                None => w.push_whole(s),
            });
        }
    }

    /// The JSON data of each event.
    fn parsed(events: &[u8]) -> Vec<Value> {
        let mut out = Vec::new();
        let mut rest = events;
        while !rest.is_empty() {
            let len = crate::stream::event_end(rest).unwrap_or(rest.len());
            if let Ok(Some(v)) = event_value(&rest[..len]) {
                out.push(v);
            }
            rest = &rest[len..];
        }
        out
    }

    fn chunk(i: u64, s: &str) -> String {
        format!(
            "data: {}\n\n",
            serde_json::json!({"id": "c", "object": "chat.completion.chunk", "model": "m",
                "choices": [{"index": i, "delta": {"content": s}, "finish_reason": null}]})
        )
    }

    /// Two choices' deltas interleaved: each choice's text grows on its own, so a word
    /// split over one choice's deltas is whole and no choice's text runs into another's.
    #[test]
    fn choices_and_blocks_are_texts_of_their_own() {
        let mut w = window();
        let events = [
            chunk(0, "forb"),
            chunk(1, "xx"),
            chunk(0, "idden"),
            "data: [DONE]\n\n".into(),
        ]
        .concat();
        push_events(&mut w, &events);
        assert_eq!(
            texts(&w),
            [("choices:0/content", "forbidden"), ("choices:1/content", "xx")]
        );
        assert_eq!(w.chars, 11);
        // Log-probabilities repeat the text with alternatives: not part of it.
        let mut w = window();
        let with_lp = format!(
            "data: {}\n\n",
            serde_json::json!({"choices": [{"index": 0, "delta": {"content": "hi"},
                "logprobs": {"content": [{"token": "hi", "top_logprobs": [{"token": "ho"}]}]}}]})
        );
        push_events(&mut w, &with_lp);
        assert_eq!(texts(&w), [("choices:0/content", "hi")]);
        assert!(w.wholes.is_empty());

        // Anthropic: each content block by its index.
        let mut w = window();
        let block = |i: u64, s: &str| {
            format!(
                "event: content_block_delta\ndata: {}\n\n",
                serde_json::json!({"type": "content_block_delta", "index": i, "delta": {"type": "text_delta", "text": s}})
            )
        };
        push_events(&mut w, &[block(0, "a "), block(1, "{\"q\":"), block(0, "b")].concat());
        assert_eq!(texts(&w), [("block:0/text", "a b"), ("block:1/text", "{\"q\":")]);

        // Responses: a `.done` event repeats its item's text whole: a string of its own,
        // not joined to the deltas it repeats; a delta's `obfuscation` padding is not
        // joined to the text either.
        let mut w = window();
        let ev = |v: serde_json::Value| format!("event: {}\ndata: {v}\n\n", v["type"].as_str().unwrap());
        push_events(
            &mut w,
            &[
                ev(serde_json::json!({"type": "response.output_text.delta", "output_index": 0, "delta": "a", "obfuscation": "Xq7"})),
                ev(serde_json::json!({"type": "response.output_text.delta", "output_index": 0, "delta": "b", "obfuscation": "k"})),
                ev(serde_json::json!({"type": "response.output_text.done", "output_index": 0, "text": "ab"})),
            ]
            .concat(),
        );
        assert_eq!(texts(&w), [("response.output_text.delta:0:0:0:0/delta", "ab")]);
        assert_eq!(w.wholes, ["Xq7", "k", "ab"]);
    }

    fn later() -> std::time::Instant {
        std::time::Instant::now() + DIFF_TIME
    }

    #[test]
    fn bounds_map_into_the_replacement() {
        // Unchanged text keeps its place; a replacement goes after a boundary inside what
        // it replaces (27 falls in "555-1|234").
        let original = "Hi John, my number is 555-1234 ok";
        let replaced = "Hi <PERSON>, my number is <PHONE> ok";
        let at = map_bounds(original, replaced, &[0, 8, 18, 27, original.len()], later());
        let cut: Vec<&str> = at.windows(2).map(|w| &replaced[w[0]..w[1]]).collect();
        assert_eq!(cut, ["Hi <PERSON>,", " my number", " is ", "<PHONE> ok"]);
        let at = map_bounds(original, replaced, &[4, 30, original.len()], later());
        let cut: Vec<&str> = at.windows(2).map(|w| &replaced[w[0]..w[1]]).collect();
        assert_eq!(cut, ["<PERSON>, my number is <PHONE>", " ok"]);
        // Out of time: a coarser diff, still the replacement from the boundary on.
        let at = map_bounds(original, replaced, &[8, 18, original.len()], std::time::Instant::now());
        let rest: String = at.windows(2).map(|w| &replaced[w[0]..w[1]]).collect();
        assert!(rest.ends_with("<PHONE> ok") && replaced.ends_with(&rest), "{rest}");
        // Multibyte text: positions stay on char boundaries, and the pieces rebuild it.
        let original = "café é at 555-1234";
        let replaced = "cafè é at <PHONE>";
        let at = map_bounds(original, replaced, &[0, 3, 6, original.len()], later());
        assert!(at.iter().all(|&p| replaced.is_char_boundary(p)));
        assert_eq!(
            at.windows(2).map(|w| &replaced[w[0]..w[1]]).collect::<String>(),
            replaced
        );
    }

    /// A fake masking service: replaces what a regex matches with a replacement.
    #[derive(Debug)]
    struct Re(&'static str, &'static str);

    #[async_trait]
    impl Service for Re {
        async fn judge(&self, call: &Call<'_>) -> Result<Verdict, Failure> {
            let re = regex::Regex::new(self.0).unwrap();
            let edits: Vec<(usize, String)> = call
                .texts
                .iter()
                .enumerate()
                .filter(|(_, t)| re.is_match(t))
                .map(|(i, t)| (i, re.replace_all(t, self.1).into_owned()))
                .collect();
            Ok(if edits.is_empty() {
                Verdict::Allow
            } else {
                Verdict::Replace(edits)
            })
        }
    }

    /// A masking guardrail `name` whose service replaces `re`'s matches with `with`.
    fn masking_re(name: &str, re: &'static str, with: &'static str, window_chars: usize) -> Vec<Arc<Guardrail>> {
        vec![Arc::new(Guardrail {
            name: name.into(),
            stage: Stage::Response,
            action: Action::Mask,
            matcher: Matcher::default(),
            service: Some(Checker {
                client: Arc::new(Re(re, with)),
                on_error: OnError::Block,
                window_chars,
            }),
        })]
    }

    /// The phone-number masker most tests use: every "555-" number becomes `<PHONE>`.
    fn masking(window_chars: usize) -> Vec<Arc<Guardrail>> {
        masking_re("phones", r"555-\d{4}", "<PHONE>", window_chars)
    }

    fn about() -> About<'static> {
        About {
            model: "m",
            owner: "o",
            request_id: "r",
        }
    }

    /// What a caller reads of chat chunks: each choice's content, joined.
    fn read(events: &[u8]) -> Vec<String> {
        let mut out = vec![String::new(); 2];
        for v in parsed(events) {
            for c in v["choices"].as_array().cloned().unwrap_or_default() {
                let i = c["index"].as_u64().unwrap() as usize;
                out[i].push_str(c["delta"]["content"].as_str().unwrap_or_default());
            }
        }
        out
    }

    /// A number split across deltas, across a window boundary and beside another choice
    /// is masked where the caller reads it, each delta keeping its own choice; windows cut
    /// at every size give the same masked text.
    #[tokio::test]
    async fn a_masking_service_rewrites_the_deltas() {
        let deltas = [
            (0, "call 5"),
            (1, "x"),
            (0, "55-12"),
            (0, "34 or 555"),
            (0, "-9876 now"),
            (1, " 555-0000"),
        ];
        for window_chars in [1, 3, 7, 12, 1000] {
            let mut sw = StreamWindows::new(&masking(window_chars)).unwrap();
            let mut hits = Vec::new();
            let mut out = Vec::new();
            for (n, (i, d)) in deltas.iter().enumerate() {
                let end = n + 1 == deltas.len();
                let got = sw
                    .feed(Bytes::from(chunk(*i, d)), end, about(), &mut hits)
                    .await
                    .unwrap();
                out.extend_from_slice(&got);
            }
            let read = read(&out);
            if window_chars == 1000 {
                assert_eq!(read, ["call <PHONE> or <PHONE> now", "x <PHONE>"]);
                assert!(!hits.is_empty());
            }
            // Small windows release part of a number before the service sees it whole:
            // never more than a window's worth, and the rest is masked after it.
            for r in &read {
                assert!(
                    !r.contains("555-1234") && !r.contains("555-9876") && !r.contains("555-0000"),
                    "{window_chars}: {r}"
                );
            }
        }
    }

    /// Feeds `events` one at a time (the last ends the stream); what the caller gets.
    async fn run(guards: &[Arc<Guardrail>], events: &[String]) -> Result<Vec<u8>, Stop> {
        let mut sw = StreamWindows::new(guards).unwrap();
        let mut hits = Vec::new();
        let mut out = Vec::new();
        for (n, e) in events.iter().enumerate() {
            let end = n + 1 == events.len();
            out.extend_from_slice(&sw.feed(Bytes::from(e.clone()), end, about(), &mut hits).await?);
        }
        Ok(out)
    }

    fn ev(v: serde_json::Value) -> String {
        format!("event: {}\ndata: {v}\n\n", v["type"].as_str().unwrap())
    }

    fn gemini(i: u64, part: serde_json::Value) -> String {
        let v = serde_json::json!({"candidates": [{"content": {"parts": [part], "role": "model"}, "index": i,
            "safetyRatings": [{"category": "HARM_CATEGORY_HARASSMENT", "probability": "NEGLIGIBLE"}]}]});
        format!("data: {v}\n\n")
    }

    /// Strings the caller does not read as the answer (Responses' `obfuscation` padding,
    /// Gemini's safety ratings) sit between the deltas: they are strings of their own,
    /// so the service still reads the deltas' text whole.
    #[tokio::test]
    async fn strings_beside_the_deltas_do_not_split_their_text() {
        let events = [
            ev(
                serde_json::json!({"type": "response.output_text.delta", "output_index": 0, "content_index": 0,
                "delta": "call 555-", "obfuscation": "Xq7"}),
            ),
            ev(
                serde_json::json!({"type": "response.output_text.delta", "output_index": 0, "content_index": 0,
                "delta": "1234 now", "obfuscation": "k"}),
            ),
        ];
        let out = run(&masking(1000), &events).await.unwrap();
        let read: String = parsed(&out)
            .iter()
            .filter_map(|v| v["delta"].as_str().map(str::to_owned))
            .collect();
        assert_eq!(read, "call <PHONE> now");

        let events = [
            gemini(0, serde_json::json!({"text": "call 555-"})),
            gemini(0, serde_json::json!({"text": "1234 now"})),
        ];
        let out = run(&masking(1000), &events).await.unwrap();
        let read: String = parsed(&out)
            .iter()
            .filter_map(|v| {
                v["candidates"][0]["content"]["parts"][0]["text"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect();
        assert_eq!(read, "call <PHONE> now");
    }

    /// Keys of a free-form object are text: two masked alike keep both values, and the
    /// streamed text after them is still masked where it lies.
    #[tokio::test]
    async fn masked_keys_keep_their_values_and_later_pieces_their_places() {
        let events = [
            gemini(
                0,
                serde_json::json!({"functionCall": {"name": "save",
                "args": {"555-1234 home": "Bob", "555-9876 home": "Alice"}}}),
            ),
            gemini(1, serde_json::json!({"text": "fine"})),
            gemini(0, serde_json::json!({"text": "also call 555-0000"})),
        ];
        let out = run(&masking(1000), &events).await.unwrap();
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(!text.contains("555-"), "{text}");
        let events = parsed(&out);
        let call = &events[0]["candidates"][0]["content"]["parts"][0]["functionCall"];
        assert_eq!(call["name"], "save", "{call}");
        let mut values: Vec<&str> = call["args"]
            .as_object()
            .unwrap()
            .values()
            .filter_map(Value::as_str)
            .collect();
        values.sort_unstable();
        assert_eq!(values, ["Alice", "Bob"], "{call}");
        assert_eq!(events[1]["candidates"][0]["content"]["parts"][0]["text"], "fine");
        assert_eq!(
            events[2]["candidates"][0]["content"]["parts"][0]["text"],
            "also call <PHONE>"
        );
    }

    /// What cannot be read one way is not released under a guardrail that holds text:
    /// nesting past the parser's limit, a lone surrogate, a key twice.
    #[tokio::test]
    async fn events_that_cannot_be_read_end_the_stream() {
        let mut args = String::from("\"call 555-1234\"");
        for _ in 0..130 {
            args = format!("{{\"a\":{args}}}");
        }
        let deep = format!(
            "data: {{\"candidates\":[{{\"content\":{{\"parts\":[{{\"functionCall\":{{\"name\":\"f\",\"args\":{args}}}}}]}},\"index\":0}}]}}\n\n"
        );
        let surrogate = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"call 555-1234 \\ud83d\"}}]}\n\n";
        let twice =
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"ok\",\"content\":\"call 555-1234\"}}]}\n\n";
        for bad in [deep.as_str(), surrogate, twice] {
            let got = run(&masking(1000), &[chunk(0, "fine "), bad.to_owned()]).await;
            assert_eq!(got, Err(Stop::Blocked("phones".into())), "{bad:.60}");
        }
    }

    /// The final Responses object's answer is its output, each string of its own: a mask
    /// cannot run on into the next field (a part's `type`), and numbers stay numbers.
    #[tokio::test]
    async fn a_mask_stays_inside_its_string_in_the_final_response() {
        let completed = ev(
            serde_json::json!({"type": "response.completed", "sequence_number": 9, "response": {
            "id": "resp_1", "object": "response", "created_at": 1733000000, "status": "completed", "model": "m",
            "output": [{"id": "msg_1", "type": "message", "status": "completed", "role": "assistant",
                "content": [{"type": "output_text", "text": "the key is secret-abc", "annotations": []}]}],
            "usage": {"input_tokens": 5, "output_tokens": 7, "total_tokens": 12}}}),
        );
        let out = run(&masking_re("re", "secret-[A-Za-z0-9]+", "[MASKED]", 1000), &[completed])
            .await
            .unwrap();
        let got = parsed(&out).remove(0);
        assert_eq!(
            got["response"]["output"][0]["content"][0]["text"], "the key is [MASKED]",
            "{got}"
        );
        assert_eq!(
            got["response"]["output"][0]["content"][0]["type"], "output_text",
            "{got}"
        );
        assert_eq!(got["response"]["created_at"], 1733000000, "{got}");
    }

    /// More choices than a window keeps apart: the window is judged before a new one
    /// would share a string with another, so each choice's text stays whole.
    #[tokio::test]
    async fn more_choices_than_slots_never_share_one() {
        let mut events = Vec::new();
        for round in ["call 555-", "1234 now"] {
            for i in 0..(MAX_KEYS as u64 + 2) {
                events.push(chunk(i, if i == MAX_KEYS as u64 + 1 { round } else { "ok " }));
            }
        }
        let out = run(&masking(1000), &events).await.unwrap();
        let read: String = parsed(&out)
            .iter()
            .flat_map(|v| v["choices"].as_array().cloned().unwrap_or_default())
            .filter(|c| c["index"] == MAX_KEYS as u64 + 1)
            .filter_map(|c| c["delta"]["content"].as_str().map(str::to_owned))
            .collect();
        // The window before the last choice's second delta ended at "call 555-": what
        // it released stays out, the number never does.
        assert!(read.ends_with("<PHONE> now") && !read.contains("555-1234"), "{read}");
    }

    /// Every shape a streamed string takes joins its own text, whatever else the event
    /// carries: Gemini text parts at any place (beside a thought), chat's legacy
    /// `function_call` arguments, content as a list of text parts, an Anthropic block
    /// whose text starts in its start event.
    #[tokio::test]
    async fn every_streamed_shape_joins_its_text() {
        let chat = |delta: serde_json::Value| {
            format!(
                "data: {}\n\n",
                serde_json::json!({"choices": [{"index": 0, "delta": delta}]})
            )
        };
        let gemini_parts = |parts: serde_json::Value| {
            format!(
                "data: {}\n\n",
                serde_json::json!({"candidates": [{"content": {"parts": parts, "role": "model"}, "index": 0}]})
            )
        };
        let cases: Vec<(&str, Vec<String>)> = vec![
            (
                "gemini parts",
                vec![
                    gemini_parts(serde_json::json!([{"text": "thinking", "thought": true}, {"text": "call 555-"}])),
                    gemini_parts(serde_json::json!([{"text": "12"}, {"text": "34 now"}])),
                ],
            ),
            (
                "function_call",
                vec![
                    chat(serde_json::json!({"function_call": {"name": "f", "arguments": "{\"phone\":\"555-"}})),
                    chat(serde_json::json!({"function_call": {"arguments": "1234\"}"}})),
                ],
            ),
            (
                "content list",
                vec![
                    chat(serde_json::json!({"content": [{"type": "text", "text": "call 555-"}]})),
                    chat(serde_json::json!({"content": "1234 now"})),
                ],
            ),
            (
                "anthropic start",
                vec![
                    ev(
                        serde_json::json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": "call 555-"}}),
                    ),
                    ev(
                        serde_json::json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "1234 now"}}),
                    ),
                ],
            ),
        ];
        for (what, events) in cases {
            let out = run(&masking(1000), &events).await.unwrap();
            let text = String::from_utf8(out).unwrap();
            assert!(text.contains("<PHONE>") && !text.contains("1234"), "{what}: {text}");
        }
    }

    /// A rewritten event keeps its other lines (`id:`, `event:`, comments) in place.
    #[tokio::test]
    async fn a_rewritten_event_keeps_its_other_lines() {
        let data = serde_json::json!({"choices": [{"index": 0, "delta": {"content": "call 555-1234"}}]});
        let out = run(
            &masking(1000),
            &[format!("id: 7\nevent: message\n: note\ndata: {data}\n\n")],
        )
        .await
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[..3], ["id: 7", "event: message", ": note"], "{text}");
        assert!(lines[3].starts_with("data: ") && lines[3].contains("<PHONE>"), "{text}");
        assert!(text.ends_with("\n\n"), "{text}");
    }

    /// One event with more streamed strings than a stream keeps apart is refused under a
    /// guardrail that holds text, in time linear in its size.
    #[tokio::test]
    async fn an_event_with_too_many_strings_is_refused() {
        let choices: Vec<Value> = (0..(MAX_SLOTS as u64 + 1))
            .map(|i| serde_json::json!({"index": i, "delta": {"content": "x"}}))
            .collect();
        let e = format!("data: {}\n\n", serde_json::json!({"choices": choices}));
        assert_eq!(run(&masking(1000), &[e]).await, Err(Stop::Blocked("phones".into())));
        // Just under: judged, each choice on its own.
        let choices: Vec<Value> = (0..(MAX_SLOTS as u64))
            .map(|i| serde_json::json!({"index": i, "delta": {"content": format!("call 555-{:04}", i)}}))
            .collect();
        let e = format!("data: {}\n\n", serde_json::json!({"choices": choices}));
        let out = String::from_utf8(run(&masking(1000), &[e]).await.unwrap()).unwrap();
        assert!(!out.contains("555-") && out.matches("<PHONE>").count() == MAX_SLOTS);
    }
}
