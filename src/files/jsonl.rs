//! A batch input file (purpose `batch`, JSONL): read line by line, every line's
//! `body.model` checked against what the caller may use and rewritten to the upstream
//! model. Each line is parsed into a JSON value and written back from that value, never
//! spliced: what the provider gets is exactly what was checked, however the caller wrote
//! the line (duplicate keys, escaped key names, odd whitespace).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use crate::auth::ApiKeyEntry;
use crate::config::Snapshot;
use crate::error::GwError;
use crate::provider::{Provider, Target};
use crate::route::ModelRoute;

/// The most requests one batch file may hold (OpenAI's own limit).
pub const MAX_LINES: usize = 50_000;

/// The endpoints a batch line may name (what OpenAI's batches serve and aigw passes).
pub const LINE_URLS: [&str; 3] = ["/v1/chat/completions", "/v1/embeddings", "/v1/responses"];

/// Whether a batch line's `url` (or a batch's `endpoint`) is one of [`LINE_URLS`]: as
/// OpenAI writes it, or without `/v1` as Azure's batch examples do.
pub fn line_url(url: &str) -> bool {
    LINE_URLS
        .iter()
        .any(|u| *u == url || u.strip_prefix("/v1") == Some(url))
}

/// A checked batch file: its lines rewritten for the provider, the provider key they all
/// go to, and each alias used with its upstream model.
pub struct Checked {
    pub content: Vec<u8>,
    pub provider: Arc<Provider>,
    pub aliases: BTreeMap<String, String>,
    pub lines: usize,
}

fn bad(line: usize, msg: impl std::fmt::Display) -> GwError {
    GwError::InvalidRequest(format!("Batch file line {line}: {msg}"))
}

/// The concrete OpenAI-style target `alias` names for this caller, or why a batch line
/// may not use it.
pub fn batch_target<'a>(snap: &'a Snapshot, caller: &ApiKeyEntry, alias: &str) -> Result<&'a Target, String> {
    // A model this key may not use is named as absent, as `GET /v1/models/{id}` does.
    let model = snap
        .models
        .get(alias)
        .filter(|_| caller.allows(alias))
        .ok_or_else(|| format!("the model '{alias}' does not exist or this key may not use it"))?;
    let ModelRoute::Single(target) = &model.route else {
        return Err(format!(
            "the model '{alias}' routes to several targets; a batch goes to one provider, name a concrete model"
        ));
    };
    if target.wire() != crate::api::Wire::OpenAi {
        return Err(format!(
            "the model '{alias}' is not served by an OpenAI-style provider (openai, azure, openai_compatible)"
        ));
    }
    Ok(target)
}

/// Checks and rewrites a batch file. Lines end in LF or CRLF; blank lines are skipped.
pub fn check(snap: &Snapshot, caller: &ApiKeyEntry, content: &[u8]) -> Result<Checked, GwError> {
    let mut out = Vec::with_capacity(content.len());
    let mut provider: Option<(Arc<Provider>, String, usize)> = None;
    let mut aliases = BTreeMap::new();
    let mut lines = 0;
    for (i, raw) in content.split(|b| *b == b'\n').enumerate() {
        let n = i + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        lines += 1;
        if lines > MAX_LINES {
            return Err(bad(n, format!("a batch file holds at most {MAX_LINES} requests")));
        }
        let mut v: Value = serde_json::from_slice(raw).map_err(|e| bad(n, format!("not valid JSON ({e})")))?;
        let Some(obj) = v.as_object_mut() else {
            return Err(bad(n, "each line must be a JSON object"));
        };
        if !obj.get("custom_id").is_some_and(Value::is_string) {
            return Err(bad(n, "'custom_id' must be a string"));
        }
        if obj.get("method").and_then(Value::as_str) != Some("POST") {
            return Err(bad(n, "'method' must be \"POST\""));
        }
        let url = obj.get("url").and_then(Value::as_str).unwrap_or_default();
        if !line_url(url) {
            return Err(bad(n, format!("'url' must be one of {}", LINE_URLS.join(", "))));
        }
        let Some(body) = obj.get_mut("body").and_then(Value::as_object_mut) else {
            return Err(bad(n, "'body' must be a JSON object"));
        };
        let Some(alias) = body.get("model").and_then(Value::as_str).map(str::to_owned) else {
            return Err(bad(n, "'body.model' must name a model"));
        };
        let target = batch_target(snap, caller, &alias).map_err(|e| bad(n, e))?;
        match &provider {
            None => provider = Some((target.provider.clone(), alias.clone(), n)),
            Some((p, first, at)) if p.name != target.provider.name => {
                return Err(bad(
                    n,
                    format!(
                        "the model '{alias}' is served by provider key '{}', but line {at}'s model '{first}' by '{}'; a batch file goes to one provider key",
                        target.provider.name, p.name
                    ),
                ));
            }
            Some(_) => {}
        }
        body.insert("model".into(), Value::String(target.upstream_model.clone()));
        aliases.insert(alias, target.upstream_model.clone());
        serde_json::to_writer(&mut out, &v).map_err(|_| GwError::Internal)?;
        out.push(b'\n');
    }
    let Some((provider, _, _)) = provider else {
        return Err(GwError::InvalidRequest("The batch file holds no request.".into()));
    };
    Ok(Checked {
        content: out,
        provider,
        aliases,
        lines,
    })
}
