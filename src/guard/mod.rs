//! Guardrails: rules that block, mask or count what goes to a provider (request stage) and
//! what comes back (response stage, streamed or not).
//!
//! Every guardrail that applies scans the same original text. Then, in order: a `block`
//! hit fails the request (or ends the stream); otherwise `mask` hits are replaced by
//! `[REDACTED:<label>]`; `monitor` hits are only counted and logged by name. What counts
//! as text is one definition for every dialect and for MCP messages (`text.rs`); text a
//! guardrail cannot read (base64 of a text type, an unreadable stream event) fails closed
//! when it blocks or masks, and open when it monitors.

pub mod live;
pub mod matcher;
pub mod pii;
pub mod service;
pub mod stream;
#[cfg(test)]
mod tests;
pub mod text;

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;

use crate::api::Endpoint;
use crate::error::GwError;
use crate::raw::{self, Action, Stage};
pub use matcher::{Found, Matcher};

#[derive(Debug)]
pub struct Guardrail {
    pub name: Arc<str>,
    pub stage: Stage,
    pub action: Action,
    /// The rules (none for a service guardrail: it matches nothing in process).
    pub matcher: Matcher,
    /// A guardrail service, judged after the rules (`service.rs`).
    pub service: Option<service::Checker>,
}

impl Guardrail {
    /// Compiles a guardrail: its pack (read from disk now, so a reload picks up edits) and
    /// its inline rules, or its service (`service`, its client compiled by the caller).
    /// Errors come with their YAML path below `path`.
    pub fn compile(
        path: &str,
        g: &raw::Guardrail,
        service: Option<service::Checker>,
    ) -> Result<Self, Vec<(String, String)>> {
        let mut errs = Vec::new();
        if g.service.is_some() {
            if g.pack.is_some() || !g.rules.is_empty() {
                errs.push((
                    path.to_owned(),
                    "has a service and rules: a guardrail is one or the other (write two guardrails)".to_owned(),
                ));
            }
        } else if g.pack.is_none() && g.rules.is_empty() {
            errs.push((
                path.to_owned(),
                "needs a pack, rules, or both (or a service)".to_owned(),
            ));
        }
        let mut rules: Vec<&raw::Rule> = Vec::new();
        let pack = match &g.pack {
            Some(p) => match load_pack(Path::new(p)) {
                Ok(pack) => Some(pack),
                Err(e) => {
                    errs.push((format!("{path}.pack"), e));
                    None
                }
            },
            None => None,
        };
        let from_pack = pack.as_ref().map_or(0, |p| p.rules.len());
        if let Some(pack) = &pack {
            rules.extend(&pack.rules);
        }
        rules.extend(&g.rules);
        for (j, rule) in g.rules.iter().enumerate() {
            let rp = format!("{path}.rules[{j}]");
            match rule {
                raw::Rule::Keyword { words, .. } if words.is_empty() || words.iter().any(String::is_empty) => {
                    errs.push((format!("{rp}.words"), "needs at least one non-empty word".into()));
                }
                raw::Rule::Pii { types } if types.is_empty() => {
                    errs.push((format!("{rp}.types"), "needs at least one type".into()));
                }
                _ => {}
            }
        }
        if !errs.is_empty() {
            return Err(errs);
        }
        let matcher = Matcher::compile(&rules).map_err(|(i, msg)| {
            // The pack's rules are compiled here with the inline ones: errors name the rule.
            if i < from_pack {
                vec![(format!("{path}.pack"), format!("rules[{i}]: {msg}"))]
            } else {
                vec![(format!("{path}.rules[{}]", i - from_pack), msg)]
            }
        })?;
        Ok(Self {
            name: Arc::from(g.name.as_str()),
            stage: g.stage,
            action: g.action,
            matcher,
            service,
        })
    }

    pub fn on_request(&self) -> bool {
        matches!(self.stage, Stage::Request | Stage::Both)
    }

    pub fn on_response(&self) -> bool {
        matches!(self.stage, Stage::Response | Stage::Both)
    }
}

/// Reads and parses a rule pack file.
pub fn load_pack(path: &Path) -> Result<raw::Pack, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read '{}': {e}", path.display()))?;
    serde_yaml::from_str(&text).map_err(|e| format!("'{}' is not a rule pack: {e}", path.display()))
}

/// The guardrails one request is under at one stage: the caller key's first, then the
/// model's, each once.
pub fn applicable(key: &[Arc<Guardrail>], model: &[Arc<Guardrail>], response: bool) -> Vec<Arc<Guardrail>> {
    let mut out: Vec<Arc<Guardrail>> = Vec::new();
    for g in key.iter().chain(model) {
        let stage = if response { g.on_response() } else { g.on_request() };
        if stage && !out.iter().any(|o| o.name == g.name) {
            out.push(g.clone());
        }
    }
    out
}

/// A guardrail that hit on this request, once per guardrail (for metrics and the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    pub guardrail: Arc<str>,
    pub action: Action,
}

/// Records a hit once per guardrail.
pub fn record(hits: &mut Vec<Hit>, g: &Guardrail) {
    if !hits.iter().any(|h| h.guardrail == g.name) {
        hits.push(Hit {
            guardrail: g.name.clone(),
            action: g.action,
        });
    }
}

pub fn action_name(a: Action) -> &'static str {
    match a {
        Action::Block => "block",
        Action::Mask => "mask",
        Action::Monitor => "monitor",
    }
}

/// What scanning one text decided.
enum TextVerdict {
    Clean,
    Blocked(Arc<str>),
    Masked(String),
}

/// Runs every guardrail over one text, in order; each that finds something is recorded
/// as a hit and handed to `f` with what it found. `f` returning `false` stops the scan.
fn each_match(
    guards: &[Arc<Guardrail>],
    text: &str,
    hits: &mut Vec<Hit>,
    mut f: impl FnMut(&Arc<Guardrail>, &mut Vec<Found>) -> bool,
) {
    let mut found = Vec::new();
    for g in guards {
        found.clear();
        g.matcher.find(text, 0, &mut found);
        if found.is_empty() {
            continue;
        }
        record(hits, g);
        if !f(g, &mut found) {
            return;
        }
    }
}

/// Scans one text with every guardrail; hits are recorded.
fn scan_text(guards: &[Arc<Guardrail>], text: &str, hits: &mut Vec<Hit>) -> TextVerdict {
    let mut masks: Vec<Found> = Vec::new();
    let mut blocked = None;
    each_match(guards, text, hits, |g, found| {
        match g.action {
            Action::Block => {
                blocked.get_or_insert_with(|| g.name.clone());
            }
            Action::Mask => masks.append(found),
            Action::Monitor => {}
        }
        true
    });
    if let Some(name) = blocked {
        return TextVerdict::Blocked(name);
    }
    if masks.is_empty() {
        TextVerdict::Clean
    } else {
        TextVerdict::Masked(apply_masks(text, 0, text.len(), masks))
    }
}

/// One text of a message relayed as it comes (a realtime session's event): `Err` names
/// the guardrail that blocks it, `Ok(Some(..))` is the text masked, `Ok(None)` clean.
pub fn check_text(guards: &[Arc<Guardrail>], text: &str, hits: &mut Vec<Hit>) -> Result<Option<String>, Arc<str>> {
    match scan_text(guards, text, hits) {
        TextVerdict::Clean => Ok(None),
        TextVerdict::Blocked(name) => Err(name),
        TextVerdict::Masked(m) => Ok(Some(m)),
    }
}

/// Text already partly delivered (a realtime session's streamed output, scanned whole
/// at each piece): nothing sent can be masked any more, so a guardrail that would mask
/// refuses it like one that blocks. `Err` names the guardrail.
pub fn check_delivered(guards: &[Arc<Guardrail>], text: &str, hits: &mut Vec<Hit>) -> Result<(), Arc<str>> {
    let mut refused = None;
    each_match(guards, text, hits, |g, _| {
        if g.action != Action::Monitor {
            refused = Some(g.name.clone());
        }
        refused.is_none()
    });
    refused.map_or(Ok(()), Err)
}

/// `text[from..to]` with every masked range replaced by `[REDACTED:<label>]`; overlapping
/// ranges merge into one (labelled by the first).
pub fn apply_masks(text: &str, from: usize, to: usize, mut masks: Vec<Found>) -> String {
    masks.sort_by_key(|m| (m.start, std::cmp::Reverse(m.end)));
    let mut out = String::with_capacity(to - from);
    let mut pos = from;
    for m in masks {
        if m.start >= to {
            break;
        }
        if m.end <= pos {
            continue;
        }
        let start = m.start.max(pos);
        out.push_str(&text[pos..start]);
        if start == m.start {
            out.push_str("[REDACTED:");
            out.push_str(&m.label);
            out.push(']');
        }
        pos = m.end.min(to);
    }
    if pos < to {
        out.push_str(&text[pos..to]);
    }
    out
}

/// Whether any of these guardrails must see the text before the caller (or the provider)
/// does; monitor-only sets never change or stop anything.
pub fn intervenes(guards: &[Arc<Guardrail>]) -> bool {
    fails_closed(guards).is_some()
}

/// The guardrail that refuses text it cannot read: the first that blocks or masks (it
/// must see text before anyone does). Monitors let such text pass.
pub(crate) fn fails_closed(guards: &[Arc<Guardrail>]) -> Option<&Arc<Guardrail>> {
    guards.iter().find(|g| g.action != Action::Monitor)
}

fn blocked_error(name: &str, response: bool) -> GwError {
    GwError::ContentFilter {
        guardrail: name.to_owned(),
        response,
    }
}

/// What scanning every text of a JSON value decided.
pub(crate) struct Scanned {
    /// The first guardrail that blocked.
    pub blocked: Option<Arc<str>>,
    /// Something was masked in place.
    pub changed: bool,
    /// `Err`: text was there that could not be read.
    pub readable: Result<(), text::Unscannable>,
}

/// Scans every text of `v` (read as a request to `endpoint`, see `text.rs`) with every
/// guardrail, masking in place; hits are recorded.
pub(crate) fn scan_value(guards: &[Arc<Guardrail>], v: &mut Value, endpoint: Endpoint, hits: &mut Vec<Hit>) -> Scanned {
    scan_with(guards, hits, |f| text::request_texts(v, endpoint, f))
}

/// Scans every text a walk of the text model (`text.rs`) gives it.
fn scan_with(
    guards: &[Arc<Guardrail>],
    hits: &mut Vec<Hit>,
    walk: impl FnOnce(&mut dyn FnMut(&mut String)) -> Result<(), text::Unscannable>,
) -> Scanned {
    let mut blocked: Option<Arc<str>> = None;
    let mut changed = false;
    let readable = walk(&mut |s: &mut String| match scan_text(guards, s, hits) {
        TextVerdict::Clean => {}
        TextVerdict::Blocked(name) => {
            blocked.get_or_insert(name);
        }
        TextVerdict::Masked(m) => {
            *s = m;
            changed = true;
        }
    });
    Scanned {
        blocked,
        changed,
        readable,
    }
}

/// One part of an MCP message (a request's params, a server's result or error), either
/// direction: every text of it (`text::mcp_texts`) scanned and masked in place. `Err`
/// names the guardrail that refuses it: one that blocks a text, or the first that blocks
/// or masks when text is there that cannot be read.
pub fn check_mcp(guards: &[Arc<Guardrail>], v: &mut Value, hits: &mut Vec<Hit>) -> Result<(), Arc<str>> {
    if guards.is_empty() {
        return Ok(());
    }
    let scanned = scan_with(guards, hits, |f| text::mcp_texts(v, f));
    if let Some(name) = scanned.blocked {
        return Err(name);
    }
    match (scanned.readable, fails_closed(guards)) {
        (Err(what), Some(g)) => {
            tracing::debug!(guardrail = %g.name, problem = what, "MCP content could not be scanned");
            Err(g.name.clone())
        }
        _ => Ok(()),
    }
}

/// Request stage: scans every text part of the caller's body. Returns the masked body
/// when something was masked, `None` when the body goes on unchanged.
pub fn check_request(
    guards: &[Arc<Guardrail>],
    endpoint: Endpoint,
    body: &[u8],
    hits: &mut Vec<Hit>,
) -> Result<Option<Bytes>, GwError> {
    if guards.is_empty() {
        return Ok(None);
    }
    let mut v = text::parse_unique(body).map_err(|e| GwError::InvalidJson(format!("Invalid JSON body: {e}")))?;
    let scanned = scan_value(guards, &mut v, endpoint, hits);
    if let Some(name) = scanned.blocked {
        return Err(blocked_error(&name, false));
    }
    if let Err(what) = scanned.readable {
        if let Some(g) = fails_closed(guards) {
            tracing::debug!(guardrail = %g.name, problem = what, "request content could not be scanned");
            return Err(blocked_error(&g.name, false));
        }
    }
    if scanned.changed {
        let out = serde_json::to_vec(&v).map_err(|_| GwError::Internal)?;
        Ok(Some(Bytes::from(out)))
    } else {
        Ok(None)
    }
}

/// Response stage for a whole JSON completion in the caller's shape. A blocked choice
/// keeps its place with no content and `finish_reason: content_filter` (Anthropic:
/// `stop_reason: refusal`; Responses: `status: incomplete`, reason `content_filter`), as
/// providers report their own filters, because the 200 status line is already on its
/// way. Returns the new body, or `None` when unchanged.
pub fn check_response(
    guards: &[Arc<Guardrail>],
    endpoint: Endpoint,
    body: &[u8],
    hits: &mut Vec<Hit>,
    blocked_by: &mut Option<Arc<str>>,
) -> Option<Bytes> {
    if endpoint == Endpoint::ChatCompletions && chat_answer_is_clean(guards, body, hits) {
        return None;
    }
    let Ok(mut v) = serde_json::from_slice::<Value>(body) else {
        // Not a completion we can read: only a monitor may let it through.
        return intervenes(guards).then(|| {
            GwError::UpstreamError("The provider's answer could not be checked by the guardrails.".into())
                .body(endpoint.dialect())
        });
    };
    let changed = text::response_texts(
        &mut v,
        endpoint,
        &mut |s: &mut String| match scan_text(guards, s, hits) {
            TextVerdict::Clean => text::Edit::Keep,
            TextVerdict::Blocked(name) => {
                blocked_by.get_or_insert(name);
                text::Edit::Block
            }
            TextVerdict::Masked(m) => {
                *s = m;
                text::Edit::Changed
            }
        },
    );
    changed.then(|| Bytes::from(v.to_string()))
}

/// What [`chat_answer_is_clean`] reads of a chat completion, borrowed from it.
#[derive(serde::Deserialize)]
struct AnswerView<'a> {
    #[serde(borrow)]
    choices: Vec<ChoiceView<'a>>,
}

#[derive(serde::Deserialize)]
struct ChoiceView<'a> {
    #[serde(borrow)]
    message: Option<&'a serde_json::value::RawValue>,
}

/// Whether a chat completion passes every guardrail unchanged, read in part: each choice's
/// message is built and scanned as [`check_response`] scans it, the rest of the answer
/// skipped rather than built (most of what checking an answer cost). `false` when any text
/// would be masked or blocked, or the answer does not read plainly (a duplicate key, an odd
/// type): the whole reading then decides, scanning again (hits are recorded once).
fn chat_answer_is_clean(guards: &[Arc<Guardrail>], body: &[u8], hits: &mut Vec<Hit>) -> bool {
    let Ok(answer) = serde_json::from_slice::<AnswerView<'_>>(body) else {
        return false;
    };
    for choice in answer.choices {
        let Some(raw) = choice.message else {
            continue;
        };
        let Ok(mut msg) = serde_json::from_str::<Value>(raw.get()) else {
            return false;
        };
        let mut clean = true;
        text::part_texts(&mut msg, &mut |s: &mut String| {
            if !matches!(scan_text(guards, s, hits), TextVerdict::Clean) {
                clean = false;
            }
            text::Edit::Keep
        });
        if !clean {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod mask_tests {
    use super::*;

    fn f(start: usize, end: usize, label: &str) -> Found {
        Found {
            start,
            end,
            label: Arc::from(label),
        }
    }

    #[test]
    fn masks_merge_overlaps() {
        let t = "mail bob@example.com or 4111111111111111.";
        let out = apply_masks(
            t,
            0,
            t.len(),
            vec![f(24, 40, "credit_card"), f(5, 20, "email"), f(9, 20, "x")],
        );
        assert_eq!(out, "mail [REDACTED:email] or [REDACTED:credit_card].");
    }
}
