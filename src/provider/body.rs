//! Reading and rewriting an OpenAI-style JSON request body without re-serialising it.
//!
//! The body is parsed once into borrowed `RawValue`s of the top-level fields; the gateway
//! needs only `model`, `stream` and `stream_options`. Rewrites splice new bytes into the
//! original buffer at those fields' spans, so every other field reaches the provider
//! byte for byte, and an unchanged body is forwarded without a copy.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use bytes::Bytes;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::error::GwError;

/// The fields of a request body the gateway acts on, with their byte spans. It owns what
/// it holds, so admission's parse is kept with the request and each upstream attempt
/// rewrites from it: the body is parsed once, not again per attempt.
#[derive(Debug)]
pub struct BodyView {
    pub model: String,
    model_span: Range<usize>,
    pub stream: bool,
    /// The span of `stream_options`' value.
    stream_options: Option<Range<usize>>,
    /// The caller asked for `stream_options.include_usage: true` itself.
    pub include_usage: bool,
    /// `max_completion_tokens`, else `max_tokens`, when a whole number (for traces).
    pub max_tokens: Option<u64>,
    /// `n`, when a whole number: the images an image request asked for (counted when the
    /// answer is too large to count them in).
    pub n: Option<u64>,
    /// Offset of the closing `}` of the top-level object.
    close: usize,
    /// `model` is a multipart form's value (`form.rs`): spliced as bytes, not as a JSON
    /// string.
    raw: bool,
}

#[derive(Default)]
struct Fields<'a> {
    model: Option<&'a RawValue>,
    model_dup: bool,
    stream: Option<&'a RawValue>,
    stream_options: Option<&'a RawValue>,
    max_tokens: Option<&'a RawValue>,
    max_completion_tokens: Option<&'a RawValue>,
    n: Option<&'a RawValue>,
    /// Gemini's, which holds `maxOutputTokens`.
    generation_config: Option<&'a RawValue>,
}

struct TopLevel;

impl<'de> Visitor<'de> for TopLevel {
    type Value = Fields<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = Fields::default();
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            let value: &'de RawValue = map.next_value()?;
            match key.as_ref() {
                "model" => {
                    out.model_dup |= out.model.is_some();
                    out.model = Some(value);
                }
                "stream" => out.stream = Some(value),
                "stream_options" => out.stream_options = Some(value),
                "max_tokens" => out.max_tokens = Some(value),
                "max_completion_tokens" => out.max_completion_tokens = Some(value),
                "n" => out.n = Some(value),
                "generationConfig" => out.generation_config = Some(value),
                _ => {}
            }
        }
        Ok(out)
    }
}

fn span(body: &[u8], raw: &RawValue) -> Range<usize> {
    // `raw` borrows from `body`, so its address lies inside it.
    let start = raw.get().as_ptr() as usize - body.as_ptr() as usize;
    start..start + raw.get().len()
}

/// The top-level fields of a JSON object body; not JSON -> `invalid_json`, not an
/// object -> `invalid_request`.
fn top_level(body: &[u8]) -> Result<Fields<'_>, GwError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let fields = match de.deserialize_map(TopLevel) {
        Ok(f) => f,
        Err(e) if e.classify() == serde_json::error::Category::Data => {
            return Err(GwError::InvalidRequest(
                "The request body must be a JSON object.".into(),
            ))
        }
        Err(e) => return Err(GwError::InvalidJson(format!("The request body is not valid JSON: {e}"))),
    };
    if let Err(e) = de.end() {
        return Err(GwError::InvalidJson(format!("The request body is not valid JSON: {e}")));
    }
    Ok(fields)
}

/// A Gemini-format request body: the model is the path's alias and `stream` is the
/// method's (neither is in the body), the output cap is
/// `generationConfig.maxOutputTokens`. The body is never rewritten (a Gemini target gets
/// it as it is; others get a translation), so the view has no spans.
pub fn parse_gemini(body: &[u8], alias: &str, stream: bool) -> Result<BodyView, GwError> {
    let fields = top_level(body)?;
    #[derive(serde::Deserialize)]
    struct Config {
        #[serde(rename = "maxOutputTokens")]
        max_output_tokens: Option<u64>,
    }
    let max_tokens = fields
        .generation_config
        .and_then(|c| serde_json::from_str::<Config>(c.get()).ok())
        .and_then(|c| c.max_output_tokens);
    Ok(BodyView {
        model: alias.to_owned(),
        model_span: 0..0,
        stream,
        stream_options: None,
        include_usage: false,
        max_tokens,
        n: None,
        close: 0,
        raw: false,
    })
}

/// Parses the top level of a request body. Errors map to SPEC §3: not JSON ->
/// `invalid_json`; not an object, or no string `model` -> `invalid_request`.
pub fn parse(body: &[u8]) -> Result<BodyView, GwError> {
    let fields = top_level(body)?;
    if fields.model_dup {
        return Err(GwError::InvalidRequest(
            "The request body has more than one `model` field.".into(),
        ));
    }
    let model_raw = fields
        .model
        .ok_or_else(|| GwError::InvalidRequest("The request body needs a string `model` field.".into()))?;
    let model: Cow<'_, str> = serde_json::from_str(model_raw.get())
        .map_err(|_| GwError::InvalidRequest("`model` must be a string.".into()))?;
    if model.is_empty() {
        return Err(GwError::InvalidRequest("`model` must not be empty.".into()));
    }
    let stream = fields.stream.is_some_and(|s| s.get() == "true");
    let include_usage = fields.stream_options.is_some_and(|so| {
        #[derive(serde::Deserialize)]
        struct So {
            include_usage: Option<bool>,
        }
        serde_json::from_str::<So>(so.get())
            .ok()
            .and_then(|s| s.include_usage)
            .unwrap_or(false)
    });
    let close = body.iter().rposition(|b| !b.is_ascii_whitespace()).unwrap_or(0);
    let whole = |v: Option<&RawValue>| v.and_then(|v| v.get().parse::<u64>().ok());
    Ok(BodyView {
        max_tokens: whole(fields.max_completion_tokens).or(whole(fields.max_tokens)),
        n: whole(fields.n),
        model_span: span(body, model_raw),
        model: model.into_owned(),
        stream,
        stream_options: fields.stream_options.map(|so| span(body, so)),
        include_usage,
        close,
        raw: false,
    })
}

impl BodyView {
    /// The view of a multipart form (`form.rs`): its model and the model value's span; no
    /// streaming options (a streamed transcript passes through untouched).
    pub fn form(model: String, model_span: Range<usize>, n: Option<u64>) -> Self {
        BodyView {
            model,
            model_span,
            stream: false,
            stream_options: None,
            include_usage: false,
            max_tokens: None,
            n,
            close: 0,
            raw: true,
        }
    }

    /// This form's view once `rewrite` put `model` in place of its model (the spans after
    /// it moved; a form view has none).
    pub fn form_rewritten(&self, model: &str) -> Self {
        let start = self.model_span.start;
        Self::form(model.to_owned(), start..start + model.len(), self.n)
    }

    pub fn is_form(&self) -> bool {
        self.raw
    }
}

/// The body to send upstream: `model` replaced by `upstream_model`, and, when
/// `add_usage` is set on a streaming request, `stream_options.include_usage: true`
/// added. Returns the body and whether usage was added (so the gateway strips the extra
/// usage chunk before the caller sees it).
pub fn rewrite(body: &Bytes, view: &BodyView, upstream_model: &str, add_usage: bool) -> (Bytes, bool) {
    let mut edits: Vec<(Range<usize>, Cow<'_, [u8]>)> = Vec::with_capacity(2);
    if view.model != upstream_model {
        let value = if view.raw {
            upstream_model.as_bytes().to_vec()
        } else {
            serde_json::to_vec(upstream_model).unwrap_or_default()
        };
        edits.push((view.model_span.clone(), Cow::Owned(value)));
    }
    let mut injected = false;
    if add_usage && view.stream && !view.include_usage {
        match &view.stream_options {
            None => {
                edits.push((
                    view.close..view.close,
                    Cow::Borrowed(br#","stream_options":{"include_usage":true}"#),
                ));
                injected = true;
            }
            Some(span) => {
                let replacement = match serde_json::from_slice::<serde_json::Value>(&body[span.clone()]) {
                    Ok(serde_json::Value::Null) => Some(br#"{"include_usage":true}"#.to_vec()),
                    Ok(serde_json::Value::Object(mut m)) => {
                        m.insert("include_usage".into(), serde_json::Value::Bool(true));
                        serde_json::to_vec(&m).ok()
                    }
                    // Anything else is the caller's error; the provider will say so.
                    _ => None,
                };
                if let Some(r) = replacement {
                    edits.push((span.clone(), Cow::Owned(r)));
                    injected = true;
                }
            }
        }
    }
    (splice(body, edits), injected)
}

/// The body with each span replaced by its bytes (spans in any order, not overlapping);
/// the body itself, uncopied, when there is nothing to replace.
pub fn splice(body: &Bytes, mut edits: Vec<(Range<usize>, Cow<'_, [u8]>)>) -> Bytes {
    if edits.is_empty() {
        return body.clone();
    }
    edits.sort_by_key(|(r, _)| r.start);
    let extra: usize = edits.iter().map(|(_, b)| b.len()).sum();
    let mut out = Vec::with_capacity(body.len() + extra);
    let mut at = 0;
    for (range, bytes) in &edits {
        out.extend_from_slice(&body[at..range.start]);
        out.extend_from_slice(bytes);
        at = range.end;
    }
    out.extend_from_slice(&body[at..]);
    Bytes::from(out)
}

/// The key `consistent_hash` with `hash_on: prefix` uses: a hash of the conversation's
/// start (`system` and the first two messages), so requests that continue one conversation
/// reach the replica holding its KV cache.
pub fn prefix_key(body: &[u8]) -> [u8; 32] {
    #[derive(serde::Deserialize)]
    struct Prefix<'a> {
        #[serde(borrow)]
        system: Option<&'a RawValue>,
        #[serde(borrow, default)]
        messages: Vec<&'a RawValue>,
    }
    let mut h = blake3::Hasher::new();
    if let Ok(p) = serde_json::from_slice::<Prefix<'_>>(body) {
        if let Some(s) = p.system {
            h.update(s.get().as_bytes());
        }
        for m in p.messages.iter().take(2) {
            h.update(m.get().as_bytes());
        }
    }
    *h.finalize().as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn rw(body: &str, model: &str, add_usage: bool) -> (Value, bool, Bytes) {
        let b = Bytes::from(body.to_owned());
        let v = parse(&b).unwrap();
        let (out, injected) = rewrite(&b, &v, model, add_usage);
        (serde_json::from_slice(&out).unwrap(), injected, out)
    }

    #[test]
    fn model_is_replaced_and_the_rest_kept_byte_for_byte() {
        let body = r#"{"model":"alias","messages":[{"role":"user","content":"hi \u00e9"}],  "temperature":0.50}"#;
        let (_, injected, out) = rw(body, "gpt-4o-mini", false);
        assert!(!injected);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi \u00e9"}],  "temperature":0.50}"#
        );
    }

    #[test]
    fn unchanged_body_is_not_copied() {
        let b = Bytes::from_static(br#"{"model":"same"}"#);
        let v = parse(&b).unwrap();
        let (out, _) = rewrite(&b, &v, "same", false);
        assert_eq!(out.as_ptr(), b.as_ptr());
    }

    #[test]
    fn usage_is_injected_in_each_shape() {
        let (v, inj, _) = rw(r#"{"model":"a","stream":true}"#, "b", true);
        assert!(inj);
        assert_eq!(
            v,
            json!({"model":"b","stream":true,"stream_options":{"include_usage":true}})
        );
        let (v, inj, _) = rw("{\"stream\":true, \"model\":\"a\" }\n", "b", true);
        assert!(inj);
        assert_eq!(v["stream_options"]["include_usage"], true);
        let (v, inj, _) = rw(r#"{"model":"a","stream":true,"stream_options":{"x":1}}"#, "a", true);
        assert!(inj);
        assert_eq!(v["stream_options"], json!({"x":1,"include_usage":true}));
        let (v, inj, _) = rw(r#"{"model":"a","stream":true,"stream_options":null}"#, "a", true);
        assert!(inj);
        assert_eq!(v["stream_options"], json!({"include_usage":true}));
        // Caller asked itself: nothing to inject, nothing to strip later.
        let (_, inj, _) = rw(
            r#"{"model":"a","stream":true,"stream_options":{"include_usage":true}}"#,
            "a",
            true,
        );
        assert!(!inj);
        // Not streaming: untouched.
        let (v, inj, _) = rw(r#"{"model":"a","stream":false}"#, "a", true);
        assert!(!inj);
        assert!(v.get("stream_options").is_none());
    }

    #[test]
    fn errors_by_kind() {
        let code = |b: &str| parse(b.as_bytes()).unwrap_err().code();
        assert_eq!(code("not json"), "invalid_json");
        assert_eq!(code(r#"{"model":"a""#), "invalid_json");
        assert_eq!(code(r#"{"model":"a"} trailing"#), "invalid_json");
        assert_eq!(code("[1,2]"), "invalid_request");
        assert_eq!(code("\"str\""), "invalid_request");
        assert_eq!(code(r#"{"messages":[]}"#), "invalid_request");
        assert_eq!(code(r#"{"model":42}"#), "invalid_request");
        assert_eq!(code(r#"{"model":""}"#), "invalid_request");
        assert_eq!(code(r#"{"model":"a","model":"b"}"#), "invalid_request");
        assert_eq!(code(""), "invalid_json");
    }

    #[test]
    fn prefix_key_follows_the_conversation_start() {
        let a = prefix_key(
            br#"{"model":"m","messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"yo"}]}"#,
        );
        let longer = prefix_key(
            br#"{"model":"other","messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"yo"},{"role":"user","content":"more"}]}"#,
        );
        let different = prefix_key(br#"{"model":"m","messages":[{"role":"user","content":"hello"}]}"#);
        assert_eq!(a, longer);
        assert_ne!(a, different);
    }

    #[test]
    fn escaped_model_names_are_decoded() {
        let b = Bytes::from_static(br#"{"model":"gpt\u002d4"}"#);
        assert_eq!(parse(&b).unwrap().model, "gpt-4");
    }
}
