//! Where the text is in requests and completions of every dialect: one definition, used
//! by the guardrails and trusted by the translators.
//!
//! A request's text is *every string in it* except the values of a short list of
//! protocol keys (ids, roles, types, enumerations) and binary payloads (base64 images,
//! audio, files). A walk of known text fields would miss whatever a translator forwards
//! that the walk does not know (a part of an unknown type, a `document` block, a tool
//! description); a walk of everything cannot: whatever a provider can read was scanned,
//! whichever translation carries it there. Inside free-form values (tool inputs and
//! arguments, JSON schemas, metadata) keys are text too, and nothing is skipped.
//! Completions are read the same way (see [`response_texts`]).

use serde_json::{Map, Value};

use crate::provider::Endpoint;

/// Parses a request body for scanning, refusing an object with a key twice: parsers
/// disagree on which one counts (serde_json keeps the last, others the first), so a
/// duplicate could show the scanner one text and the provider another.
pub fn parse_unique(body: &[u8]) -> Result<Value, serde_json::Error> {
    serde_json::from_slice::<Unique>(body).map(|u| u.0)
}

struct Unique(Value);

impl<'de> serde::Deserialize<'de> for Unique {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UniqueVisitor).map(Unique)
    }
}

struct UniqueVisitor;

impl<'de> serde::de::Visitor<'de> for UniqueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(Unique(x)) = seq.next_element()? {
            out.push(x);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(k) = map.next_key::<String>()? {
            let Unique(x) = map.next_value()?;
            if out.contains_key(&k) {
                return Err(serde::de::Error::custom(format_args!(
                    "the key `{k}` appears twice in one object"
                )));
            }
            out.insert(k, x);
        }
        Ok(Value::Object(out))
    }
}

/// Why a request's content could not be read as text.
pub type Unscannable = &'static str;

/// Whether string values under this key are protocol, not text a model reads. A `match`
/// rather than a list: it runs for every key of every object scanned.
pub(crate) fn is_protocol_key(key: &str) -> bool {
    matches!(
        key,
        "model"
            | "role"
            | "type"
            | "id"
            | "tool_call_id"
            | "tool_use_id"
            | "call_id"
            | "item_id"
            | "previous_response_id"
            | "media_type"
            | "mime_type"
            | "detail"
            | "format"
            | "encoding_format"
            | "service_tier"
            | "reasoning_effort"
            | "object"
            | "status"
            | "finish_reason"
            | "stop_reason"
            | "truncation"
            | "modalities"
            | "voice"
            // Opaque values the provider itself produced and checks: a thinking block's
            // signature, encrypted reasoning.
            | "signature"
            | "encrypted_content"
    )
}

/// Keys whose values are free-form: every key and string inside is text.
/// (Objects only: a Responses `input` or a chat call's `arguments` string is walked as
/// usual.)
fn is_free_form_key(key: &str) -> bool {
    matches!(
        key,
        "parameters" | "input_schema" | "schema" | "input" | "arguments" | "metadata"
    )
}

/// Calls `f` on every text of a caller's request to `endpoint` (see the module docs).
/// `Err` when text is there that cannot be read: a base64 payload of a text type.
pub fn request_texts(v: &mut Value, endpoint: Endpoint, f: &mut dyn FnMut(&mut String)) -> Result<(), Unscannable> {
    if matches!(endpoint, Endpoint::GenerateContent | Endpoint::Converse) {
        // Never a caller's endpoint: requests are scanned before translation.
        return Err("not a caller endpoint");
    }
    walk(v, false, f)
}

fn walk(v: &mut Value, free: bool, f: &mut dyn FnMut(&mut String)) -> Result<(), Unscannable> {
    match v {
        Value::String(s) => {
            if !free && is_base64_data_url(s) {
                return binary(data_url_media(s));
            }
            f(s);
            Ok(())
        }
        Value::Array(items) => items.iter_mut().try_for_each(|x| walk(x, free, f)),
        Value::Object(o) => walk_object(o, free, f),
        _ => Ok(()),
    }
}

fn walk_object(o: &mut Map<String, Value>, free: bool, f: &mut dyn FnMut(&mut String)) -> Result<(), Unscannable> {
    if free {
        rename_keys(o, f);
        return o.values_mut().try_for_each(|x| walk(x, true, f));
    }
    // A base64 source (Anthropic images and documents), audio, a redacted thinking
    // block: the payload is binary or opaque.
    let kind = o.get("type").and_then(Value::as_str);
    let base64 = kind == Some("base64") || kind == Some("redacted_thinking");
    let media = o.get("media_type").and_then(Value::as_str).map(str::to_owned);
    for (k, x) in o.iter_mut() {
        let key = k.as_str();
        match x {
            Value::String(_) if is_protocol_key(key) => {}
            Value::Array(a) if is_protocol_key(key) && a.iter().all(Value::is_string) => {}
            Value::String(_) if base64 && key == "data" => binary(media.as_deref())?,
            // A file as a data URL, or bare base64 of no stated type.
            Value::String(data) if key == "file_data" => binary(data_url_media(data))?,
            // Base64 audio and its format.
            Value::Object(_) if key == "input_audio" => {}
            // An assistant's audio: its transcript is text, its `data` base64.
            Value::Object(audio) if key == "audio" => {
                if let Some(t) = audio.get_mut("transcript") {
                    walk(t, false, f)?;
                }
            }
            Value::Object(_) if is_free_form_key(key) => walk(x, true, f)?,
            _ => walk(x, false, f)?,
        }
    }
    Ok(())
}

/// Keys of a free-form object are text the model reads (a tool input's, a schema's
/// property names): scanned, and renamed when masked.
fn rename_keys(o: &mut Map<String, Value>, f: &mut dyn FnMut(&mut String)) {
    let mut renamed = Vec::new();
    for k in o.keys() {
        let mut scanned = k.clone();
        f(&mut scanned);
        if scanned != *k {
            renamed.push((k.clone(), scanned));
        }
    }
    for (old, new) in renamed {
        if let Some(x) = o.remove(&old) {
            o.insert(new, x);
        }
    }
}

/// A binary payload is not text and is not scanned, unless its media type says text:
/// base64 text cannot be read here, so it is refused when a guardrail must see it.
fn binary(media_type: Option<&str>) -> Result<(), Unscannable> {
    match media_type {
        Some(m) if m.trim().to_ascii_lowercase().starts_with("text/") => Err("base64 content of a text type"),
        _ => Ok(()),
    }
}

/// The media type of a data URL.
fn data_url_media(s: &str) -> Option<&str> {
    s.get(..5)
        .filter(|p| p.eq_ignore_ascii_case("data:"))
        .and_then(|_| s[5..].split([';', ',']).next())
}

fn is_base64_data_url(s: &str) -> bool {
    s.len() > 5
        && s.as_bytes()[..5].eq_ignore_ascii_case(b"data:")
        && s.split(',').next().is_some_and(|meta| meta.contains(";base64"))
}

/// What the response-stage callback did with one text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edit {
    Keep,
    Changed,
    /// The choice (or message) this text is in must be withheld.
    Block,
}

/// Calls `f` on every text of a completion of this shape, read as requests are (every
/// string but protocol values: message content, refusals, reasoning, tool call arguments;
/// Anthropic text, thinking and tool input; Responses output, reasoning summaries and
/// function call arguments) and applies blocks. Returns whether the completion changed.
/// `endpoint` is the caller's: its answer's shape says where the text is.
pub fn response_texts(v: &mut Value, endpoint: Endpoint, f: &mut dyn FnMut(&mut String) -> Edit) -> bool {
    let mut changed = false;
    // Completions carry no base64 text; a walk never fails on them.
    let mut scan = |x: &mut Value, block: &mut bool| {
        let _ = walk(x, false, &mut |s: &mut String| apply(f(s), &mut changed, block));
    };
    match endpoint {
        Endpoint::Responses => {
            let mut block = false;
            if let Some(Value::Array(output)) = v.get_mut("output") {
                output.iter_mut().for_each(|item| scan(item, &mut block));
                if block {
                    output.clear();
                }
            }
            if block {
                // How the Responses API reports its own content filter.
                v["status"] = Value::from("incomplete");
                v["incomplete_details"] = serde_json::json!({"reason": "content_filter"});
            }
        }
        // Chat completions; upstream-only endpoints never reach a caller.
        Endpoint::ChatCompletions | Endpoint::Embeddings | Endpoint::GenerateContent | Endpoint::Converse => {
            let Some(Value::Array(choices)) = v.get_mut("choices") else {
                return false;
            };
            for choice in choices {
                let mut block = false;
                if let Some(msg) = choice.get_mut("message") {
                    scan(msg, &mut block);
                    if block {
                        // Nothing of a withheld message stays: content, tool calls,
                        // reasoning, refusal.
                        *msg = serde_json::json!({"role": "assistant", "content": null});
                    }
                }
                if block {
                    choice["finish_reason"] = Value::from("content_filter");
                }
            }
        }
        Endpoint::Messages => {
            let mut block = false;
            if let Some(Value::Array(content)) = v.get_mut("content") {
                content.iter_mut().for_each(|b| scan(b, &mut block));
                if block {
                    content.clear();
                }
            }
            if block {
                v["stop_reason"] = Value::from("refusal");
            }
        }
    }
    changed
}

fn apply(e: Edit, changed: &mut bool, block: &mut bool) {
    match e {
        Edit::Keep => {}
        Edit::Changed => *changed = true,
        Edit::Block => {
            *changed = true;
            *block = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn collect(mut v: Value, e: Endpoint) -> Result<Vec<String>, Unscannable> {
        let mut out = Vec::new();
        request_texts(&mut v, e, &mut |s: &mut String| out.push(s.clone()))?;
        Ok(out)
    }

    #[test]
    fn chat_texts_include_parts_tools_and_results() {
        let v = json!({"model": "m", "messages": [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "1", "type": "function", "function": {"name": "f", "arguments": "{\"q\":\"b\"}"}}]},
            {"role": "tool", "tool_call_id": "1", "content": "c"},
        ]});
        let mut got = collect(v, Endpoint::ChatCompletions).unwrap();
        got.sort();
        assert_eq!(got, ["a", "c", "f", "sys", "{\"q\":\"b\"}"]);
    }

    #[test]
    fn messages_texts_include_system_and_tool_blocks() {
        let v = json!({"model": "m", "system": [{"type": "text", "text": "sys"}], "messages": [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {"q": ["b"]}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text", "text": "c"}]}]},
        ]});
        let mut got = collect(v, Endpoint::Messages).unwrap();
        got.sort();
        assert_eq!(got, ["a", "b", "c", "f", "q", "sys"]);
    }

    /// What the walk of known fields missed: each is text a provider reads.
    #[test]
    fn unknown_and_rare_parts_are_text_too() {
        let cases = [
            (
                json!({"messages": [{"role": "system", "content": [{"type": "x-note", "text": "T1"}]}]}),
                Endpoint::ChatCompletions,
            ),
            (
                json!({"system": [{"type": "x-note", "text": "T1"}], "messages": []}),
                Endpoint::Messages,
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "T1"}}]}]}),
                Endpoint::Messages,
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": [{"type": "search_result", "title": "T1", "content": []}]}]}]}),
                Endpoint::Messages,
            ),
            (
                json!({"input": [{"type": "function_call_output", "call_id": "c", "output": [{"type": "input_text", "text": "T1"}]}]}),
                Endpoint::Responses,
            ),
            (
                json!({"input": [{"type": "custom_tool_call_output", "call_id": "c", "output": "T1"}]}),
                Endpoint::Responses,
            ),
            (
                json!({"messages": [], "tools": [{"type": "function", "function": {"name": "f", "description": "T1"}}]}),
                Endpoint::ChatCompletions,
            ),
            (
                json!({"messages": [], "prediction": {"type": "content", "content": "T1"}}),
                Endpoint::ChatCompletions,
            ),
            (
                json!({"messages": [{"role": "assistant", "content": [{"type": "refusal", "refusal": "T1"}]}]}),
                Endpoint::ChatCompletions,
            ),
            (
                json!({"messages": [], "tools": [{"name": "f", "input_schema": {"type": "object", "properties": {"T1": {"type": "string"}}}}]}),
                Endpoint::Messages,
            ),
            (
                json!({"messages": [{"role": "assistant", "content": [{"type": "tool_use", "id": "i", "name": "f", "input": {"id": "T1"}}]}]}),
                Endpoint::Messages,
            ),
        ];
        for (v, e) in cases {
            let got = collect(v.clone(), e).unwrap();
            assert!(got.iter().any(|s| s == "T1"), "{v}: {got:?}");
        }
    }

    #[test]
    fn protocol_values_and_binary_payloads_are_not_text_and_base64_text_is_unscannable() {
        let v = json!({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo"}},
            {"type": "input_audio", "input_audio": {"data": "UklGRg", "format": "wav"}},
            {"type": "thinking", "thinking": "hmm", "signature": "EqQBCkgIARABGAIi"},
            {"type": "redacted_thinking", "data": "EmwKAhgBEgy"},
        ]}, {"role": "assistant", "audio": {"id": "a1", "data": "UklGRg", "transcript": "said"}}]});
        assert_eq!(collect(v, Endpoint::Messages).unwrap(), ["hmm", "said"]);
        let text64 = json!({"messages": [{"role": "user", "content": [
            {"type": "document", "source": {"type": "base64", "media_type": "text/plain", "data": "VDE="}}]}]});
        assert!(collect(text64, Endpoint::Messages).is_err());
        let url64 = json!({"messages": [{"role": "user", "content": [
            {"type": "file", "file": {"file_data": "data:text/plain;base64,VDE="}}]}]});
        assert!(collect(url64, Endpoint::ChatCompletions).is_err());
        assert_eq!(
            collect(json!({"input": [[1, 2], "x"]}), Endpoint::Embeddings).unwrap(),
            ["x"]
        );
    }

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        assert!(parse_unique(br#"{"a": 1, "a": 2}"#).is_err());
        assert!(parse_unique(br#"{"m": [{"content": "x", "content": "y"}]}"#).is_err());
        let v = parse_unique(br#"{"a": [1, 2.5, "s", null, true, {"b": {}}]}"#).unwrap();
        assert_eq!(v, json!({"a": [1, 2.5, "s", null, true, {"b": {}}]}));
    }

    #[test]
    fn keys_of_free_form_values_are_masked_by_renaming() {
        let mut v = json!({"tools": [{"name": "f", "input_schema": {"properties": {"secret": {"type": "string"}}}}]});
        request_texts(&mut v, Endpoint::Messages, &mut |s: &mut String| {
            if s == "secret" {
                *s = "[REDACTED]".into();
            }
        })
        .unwrap();
        assert!(
            v["tools"][0]["input_schema"]["properties"]["[REDACTED]"].is_object(),
            "{v}"
        );
    }

    #[test]
    fn blocked_choice_is_withheld() {
        let mut v = json!({"choices": [
            {"index": 0, "message": {"role": "assistant", "content": "bad"}, "finish_reason": "stop"},
            {"index": 1, "message": {"role": "assistant", "content": "good"}, "finish_reason": "stop"},
        ]});
        let changed = response_texts(&mut v, Endpoint::ChatCompletions, &mut |s: &mut String| {
            if s == "bad" {
                Edit::Block
            } else {
                Edit::Keep
            }
        });
        assert!(changed);
        assert_eq!(v["choices"][0]["message"]["content"], Value::Null);
        assert_eq!(v["choices"][0]["finish_reason"], "content_filter");
        assert_eq!(v["choices"][1]["message"]["content"], "good");

        let mut a = json!({"content": [{"type": "text", "text": "bad"}], "stop_reason": "end_turn"});
        response_texts(&mut a, Endpoint::Messages, &mut |_: &mut String| Edit::Block);
        assert_eq!(a["content"], json!([]));
        assert_eq!(a["stop_reason"], "refusal");
    }
}
