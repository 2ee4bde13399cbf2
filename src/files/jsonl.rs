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

/// A checked batch file: the provider key all its lines go to, each alias used with its
/// upstream model, and the length of the file as [`Rewritten`] writes it.
pub struct Checked {
    pub provider: Arc<Provider>,
    pub aliases: BTreeMap<String, String>,
    pub lines: usize,
    pub len: u64,
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
    // A batch's lines and answers pass no guardrail (the provider runs them later, out of
    // the gateway's sight): an alias under one that blocks or masks cannot be batched,
    // or a batch would be the way around it.
    let guarded = crate::guard::applicable(&caller.guardrails, &model.guardrails, false)
        .into_iter()
        .chain(crate::guard::applicable(&caller.guardrails, &model.guardrails, true))
        .find(|g| g.action != crate::raw::Action::Monitor);
    if let Some(g) = guarded {
        return Err(format!(
            "the model '{alias}' is under the guardrail '{}', which batches cannot apply (their lines and answers are not scanned); call it directly",
            g.name
        ));
    }
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

/// The requests of a batch file, numbered from 1: lines end in LF or CRLF, blank ones are
/// skipped. The one reading both passes share.
fn requests(content: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    content
        .split(|b| *b == b'\n')
        .enumerate()
        .map(|(i, raw)| (i + 1, raw.strip_suffix(b"\r").unwrap_or(raw)))
        .filter(|(_, raw)| !raw.iter().all(u8::is_ascii_whitespace))
}

/// One request line checked and written to `out` (with its LF) with `body.model` set to
/// what `upstream` gives for the alias it names.
fn rewrite(
    n: usize,
    raw: &[u8],
    out: &mut Vec<u8>,
    mut upstream: impl FnMut(&str) -> Result<String, String>,
) -> Result<(), GwError> {
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
    let Some(alias) = body.get("model").and_then(Value::as_str) else {
        return Err(bad(n, "'body.model' must name a model"));
    };
    let model = upstream(alias).map_err(|e| bad(n, e))?;
    body.insert("model".into(), Value::String(model));
    serde_json::to_writer(&mut *out, &v).map_err(|_| GwError::Internal)?;
    out.push(b'\n');
    Ok(())
}

/// Checks a batch file, every line, without keeping what it would send: the file is
/// written for the provider by [`Rewritten`] as it uploads, so an upload is held once.
pub fn check(snap: &Snapshot, caller: &ApiKeyEntry, content: &[u8]) -> Result<Checked, GwError> {
    let mut provider: Option<(Arc<Provider>, String, usize)> = None;
    let mut aliases = BTreeMap::new();
    let (mut lines, mut len) = (0, 0u64);
    let mut line = Vec::new();
    for (n, raw) in requests(content) {
        lines += 1;
        if lines > MAX_LINES {
            return Err(bad(n, format!("a batch file holds at most {MAX_LINES} requests")));
        }
        line.clear();
        rewrite(n, raw, &mut line, |alias| {
            let target = batch_target(snap, caller, alias)?;
            match &provider {
                None => provider = Some((target.provider.clone(), alias.to_owned(), n)),
                Some((p, first, at)) if p.name != target.provider.name => {
                    return Err(format!(
                        "the model '{alias}' is served by provider key '{}', but line {at}'s model '{first}' by '{}'; a batch file goes to one provider key",
                        target.provider.name, p.name
                    ));
                }
                Some(_) => {}
            }
            aliases.insert(alias.to_owned(), target.upstream_model.clone());
            Ok(target.upstream_model.clone())
        })?;
        len += line.len() as u64;
    }
    let Some((provider, _, _)) = provider else {
        return Err(GwError::InvalidRequest("The batch file holds no request.".into()));
    };
    Ok(Checked {
        provider,
        aliases,
        lines,
        len,
    })
}

/// What is read of a checked file at a time while it uploads.
const CHUNK: usize = 64 * 1024;

/// A checked batch file as the provider gets it, written a chunk at a time from the
/// caller's upload (lines parsed again, with the aliases [`check`] resolved): what is held
/// beyond the upload is one chunk, not a second copy of the file.
pub struct Rewritten {
    content: bytes::Bytes,
    /// Where the next line starts.
    at: usize,
    /// Line numbers of `content[at..]` start after this.
    line: usize,
    aliases: BTreeMap<String, String>,
}

impl Rewritten {
    pub fn new(content: bytes::Bytes, aliases: BTreeMap<String, String>) -> Self {
        Self {
            content,
            at: 0,
            line: 0,
            aliases,
        }
    }
}

impl Iterator for Rewritten {
    type Item = Result<bytes::Bytes, std::io::Error>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut out = Vec::new();
        while out.len() < CHUNK && self.at < self.content.len() {
            let rest = &self.content[self.at..];
            let end = memchr::memchr(b'\n', rest).map_or(rest.len(), |i| i + 1);
            self.line += 1;
            let raw = &rest[..end];
            self.at += end;
            // The same reading as `check`'s: one line, or none when it is blank.
            let Some((_, raw)) = requests(raw.strip_suffix(b"\n").unwrap_or(raw)).next() else {
                continue;
            };
            let aliases = &self.aliases;
            let r = rewrite(self.line, raw, &mut out, |alias| {
                aliases
                    .get(alias)
                    .cloned()
                    .ok_or_else(|| format!("the model '{alias}' was not checked"))
            });
            if let Err(e) = r {
                // Not reached for a checked file; the upload fails rather than send a
                // line nobody checked.
                self.at = self.content.len();
                return Some(Err(std::io::Error::other(e.to_string())));
            }
        }
        (!out.is_empty()).then(|| Ok(out.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(n: usize, model: &str) -> String {
        format!(
            r#"{{"custom_id":"r{n}","method":"POST","url":"/v1/embeddings","body":{{"model":"{model}","input":"{}"}}}}"#,
            "x".repeat(n % 300)
        )
    }

    #[test]
    fn rewritten_in_chunks_is_every_line_once_and_stops_at_an_unchecked_alias() {
        let content: String = (0..2_000)
            .map(|n| req(n, "a") + if n % 3 == 0 { "\r\n\n" } else { "\n" })
            .collect();
        let aliases = BTreeMap::from([("a".to_owned(), "up-a".to_owned())]);
        let chunks: Vec<bytes::Bytes> = Rewritten::new(content.clone().into(), aliases.clone())
            .map(Result::unwrap)
            .collect();
        assert!(chunks.len() > 2 && chunks.iter().all(|c| c.len() < CHUNK + 1024));
        let out = String::from_utf8(chunks.concat()).unwrap();
        assert!(out.ends_with('\n'));
        let got: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let want: Vec<Value> = (0..2_000)
            .map(|n| serde_json::from_str(&req(n, "up-a")).unwrap())
            .collect();
        assert!(got == want, "{} lines, {} wanted", got.len(), want.len());
        // A line whose alias was not checked ends the upload with an error, never sent.
        let odd = format!("{}\n{}\n", req(1, "a"), req(2, "b"));
        let mut it = Rewritten::new(odd.into(), aliases);
        let e = it.next().unwrap().unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
        assert!(it.next().is_none());
    }
}
