//! Where the text is in requests and completions of every dialect: one definition, used
//! by the guardrails and trusted by the translators.
//!
//! A request's text is *every string in it* except the values of a short list of
//! protocol keys (ids, roles, types, enumerations) and binary payloads (base64 images,
//! audio, files). A walk of known text fields would miss whatever a translator forwards
//! that the walk does not know (a part of an unknown type, a `document` block, a tool
//! description); a walk of everything cannot: whatever a provider can read was scanned,
//! whichever translation carries it there. Inside free-form values (tool inputs and
//! arguments, JSON schemas, metadata) keys and numbers are text too, and nothing is
//! skipped. Completions are read the same way (see [`response_texts`]), and so is every
//! MCP message, both ways (see [`mcp_texts`]).
//!
//! A number is text in the form whoever receives it reads it (`4.111111111111111e15` is
//! the card number `4111111111111111`); masked, it becomes the masked string. Base64 is
//! text the guardrails cannot read: a payload whose media type says text, or says nothing
//! (a `data:` URL without one is `text/plain` by RFC 2397; bare base64 has none), is
//! unreadable, and the guardrails fail closed on it when they block or mask.

use serde_json::{Map, Value};

use crate::api::Endpoint;

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
            // Gemini's: media types, enums of settings and answers, the thought signature.
            | "mimeType"
            | "responseMimeType"
            | "thoughtSignature"
            | "finishReason"
            | "modelVersion"
            | "responseId"
            | "category"
            | "threshold"
            | "mode"
            | "taskType"
    )
}

/// Keys whose values are free-form: every key, string and number inside is text.
/// (Objects only: a Responses `input` or a chat call's `arguments` string is walked as
/// usual.) The last four are MCP's: tool arguments and results, schemas, `_meta`.
fn is_free_form_key(key: &str) -> bool {
    matches!(
        key,
        "parameters"
            | "input_schema"
            | "schema"
            | "input"
            | "arguments"
            // Gemini's call arguments, function results and schemas.
            | "args"
            | "response"
            | "parametersJsonSchema"
            | "responseJsonSchema"
            | "responseSchema"
            | "metadata"
            | "structuredContent"
            | "inputSchema"
            | "outputSchema"
            | "_meta"
    )
}

/// MCP's numbers about the message itself (an error's code, a resource's size, a
/// priority, progress): not text, and a caller's SDK expects them to stay numbers.
fn is_mcp_number_key(key: &str) -> bool {
    matches!(key, "code" | "size" | "priority" | "progress" | "total")
}

/// Calls `f` on every text of a caller's request to `endpoint` (see the module docs).
/// `Err` when text is there that cannot be read (base64 of a text type); every other text
/// was still given to `f`.
pub fn request_texts(v: &mut Value, endpoint: Endpoint, f: &mut dyn FnMut(&mut String)) -> Result<(), Unscannable> {
    if endpoint == Endpoint::Converse {
        // Never a caller's endpoint: requests are scanned before translation.
        return Err("not a caller endpoint");
    }
    Walker::new(f, false, true).run(v)
}

/// Calls `f` on every text of one MCP message part (a request's `params`, an answer's
/// `result` or `error`), in either direction. A server (or a caller) reads every key and
/// number of it, not only the fields MCP defines, so all of them are text here: strings,
/// keys (renamed when masked) and numbers, but for [`is_mcp_number_key`]. Binary payloads
/// (image and audio `data`, resource `blob`s) are not text unless their `mimeType` says
/// text or says nothing; then `Err`, as for model traffic.
pub fn mcp_texts(v: &mut Value, f: &mut dyn FnMut(&mut String)) -> Result<(), Unscannable> {
    Walker::new(f, true, true).run(v)
}

/// One walk of a value: where it is decides what is text (see the module docs).
struct Walker<'f> {
    f: &'f mut dyn FnMut(&mut String),
    mcp: bool,
    /// Whether a data URL is read as one (requests, MCP). A completion's strings are text
    /// as they are: a stream delivers them as deltas, and JSON must read as streams do.
    urls: bool,
    /// The first text that could not be read. The walk goes on past it, so every other
    /// text is still scanned (and masked) whatever the caller decides about this one.
    unreadable: Option<Unscannable>,
}

impl<'f> Walker<'f> {
    fn new(f: &'f mut dyn FnMut(&mut String), mcp: bool, urls: bool) -> Self {
        Self {
            f,
            mcp,
            urls,
            unreadable: None,
        }
    }

    fn run(mut self, v: &mut Value) -> Result<(), Unscannable> {
        self.value(v, false);
        self.unreadable.map_or(Ok(()), Err)
    }

    fn refuse(&mut self, why: Unscannable) {
        self.unreadable.get_or_insert(why);
    }

    /// `free`: inside a free-form value, where keys and numbers are text too.
    fn value(&mut self, v: &mut Value, free: bool) {
        match v {
            Value::String(s) => self.string(s),
            Value::Number(_) if free || self.mcp => self.number(v),
            Value::Array(items) => items.iter_mut().for_each(|x| self.value(x, free)),
            Value::Object(o) => self.object(o, free),
            _ => {}
        }
    }

    /// A string is text, unless it is a data URL whose payload cannot be read as it is.
    fn string(&mut self, s: &mut String) {
        match data_url(s).filter(|_| self.urls) {
            Some(url) if url.base64 => {
                if let Err(why) = binary(Some(url.media)) {
                    self.refuse(why);
                }
            }
            // Percent-escaped text reads differently once unescaped.
            Some(url) if is_text_media(url.media) && url.data.contains('%') => {
                self.refuse("percent-encoded text in a data URL");
            }
            _ => (self.f)(s),
        }
    }

    /// A number is text in the form a receiver reads it; masked, it becomes the masked
    /// string (a number cannot hold `[REDACTED:...]`).
    fn number(&mut self, v: &mut Value) {
        let Value::Number(n) = v else { return };
        let text = number_text(n);
        let mut scanned = text.clone();
        (self.f)(&mut scanned);
        if scanned != text {
            *v = Value::String(scanned);
        }
    }

    fn object(&mut self, o: &mut Map<String, Value>, free: bool) {
        if free || self.mcp {
            self.rename_keys(o);
        }
        if free {
            o.values_mut().for_each(|x| self.value(x, true));
            return;
        }
        let kind = o.get("type").and_then(Value::as_str);
        // What carries a base64 payload: an Anthropic source (images, documents); MCP
        // image and audio content. A redacted thinking block's `data` is opaque.
        let base64 = if self.mcp {
            matches!(kind, Some("image" | "audio"))
        } else {
            kind == Some("base64")
        };
        let opaque = !self.mcp && kind == Some("redacted_thinking");
        let media = o
            .get(if self.mcp { "mimeType" } else { "media_type" })
            .and_then(Value::as_str)
            .map(str::to_owned);
        for (k, x) in o.iter_mut() {
            let key = k.as_str();
            if self.mcp {
                match x {
                    Value::Number(_) if is_mcp_number_key(key) => {}
                    Value::String(_) if (base64 && key == "data") || key == "blob" => self.payload(media.as_deref()),
                    Value::Object(_) if is_free_form_key(key) => self.value(x, true),
                    _ => self.value(x, false),
                }
                continue;
            }
            match x {
                Value::String(_) if is_protocol_key(key) => {}
                Value::Array(a) if is_protocol_key(key) && a.iter().all(Value::is_string) => {}
                Value::String(_) if opaque && key == "data" => {}
                Value::String(_) if base64 && key == "data" => self.payload(media.as_deref()),
                // A file as a data URL, or bare base64 of no stated type.
                Value::String(data) if key == "file_data" => match data_url(data) {
                    Some(_) => self.string(data),
                    None => self.payload(None),
                },
                // Base64 audio and its format.
                Value::Object(_) if key == "input_audio" => {}
                // Gemini's inline media: base64 `data` of its `mimeType`.
                Value::Object(d) if key == "inlineData" => {
                    let media = d.get("mimeType").and_then(Value::as_str).map(str::to_owned);
                    self.payload(media.as_deref());
                }
                // An assistant's audio: its transcript is text, its `data` base64.
                Value::Object(audio) if key == "audio" => {
                    if let Some(t) = audio.get_mut("transcript") {
                        self.value(t, false);
                    }
                }
                Value::Object(_) if is_free_form_key(key) => self.value(x, true),
                _ => self.value(x, false),
            }
        }
    }

    fn payload(&mut self, media: Option<&str>) {
        if let Err(why) = binary(media) {
            self.refuse(why);
        }
    }

    /// Keys a model, a tool or a server reads (a tool input's, a schema's property names,
    /// any key of an MCP message) are text: scanned, and renamed when masked.
    fn rename_keys(&mut self, o: &mut Map<String, Value>) {
        let mut renamed = Vec::new();
        for k in o.keys() {
            let mut scanned = k.clone();
            (self.f)(&mut scanned);
            if scanned != *k {
                renamed.push((k.clone(), scanned));
            }
        }
        for (old, new) in renamed {
            if let Some(x) = o.remove(&old) {
                // Two keys masked alike (or one masked into a key that exists) would be
                // one, and a value lost: the later gets a number.
                let mut key = new.clone();
                let mut n = 2;
                while o.contains_key(&key) {
                    key = format!("{new} ({n})");
                    n += 1;
                }
                o.insert(key, x);
            }
        }
    }
}

/// A number as text: integers in their digits, others in plain decimal notation (no
/// exponent), which is how `4.111111111111111e15` reads to whoever receives it.
fn number_text(n: &serde_json::Number) -> String {
    if let Some(i) = n.as_i64() {
        i.to_string()
    } else if let Some(u) = n.as_u64() {
        u.to_string()
    } else {
        // Rust's `Display` for floats never uses an exponent.
        n.as_f64().map(|f| f.to_string()).unwrap_or_default()
    }
}

/// A binary payload is not text and is not scanned, unless its media type says text, or
/// says nothing (then it cannot be known not to be text): base64 text cannot be read
/// here, so it is refused when a guardrail must see it.
fn binary(media_type: Option<&str>) -> Result<(), Unscannable> {
    match media_type {
        None => Err("base64 content of no stated type"),
        Some(m) if is_text_media(m) => Err("base64 content of a text type"),
        Some(_) => Ok(()),
    }
}

/// Whether a media type is text: `text/*`, JSON, XML, YAML and the other structured text
/// types (`+json`, `+xml`), JavaScript, forms. Parameters and case do not matter.
fn is_text_media(m: &str) -> bool {
    let m = m.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    m.starts_with("text/")
        || m.ends_with("+json")
        || m.ends_with("+xml")
        || m.ends_with("+yaml")
        || matches!(
            m.as_str(),
            "application/json"
                | "application/xml"
                | "application/yaml"
                | "application/x-yaml"
                | "application/javascript"
                | "application/ecmascript"
                | "application/x-ndjson"
                | "application/jsonl"
                | "application/x-www-form-urlencoded"
                | "application/sql"
                | "application/graphql"
                | "application/x-sh"
                | "application/toml"
        )
}

/// A `data:` URL, read as RFC 2397 does: `data:[<media type>][;base64],<data>`, the
/// media type `text/plain` when empty, `data:` and `;base64` in any case.
struct DataUrl<'a> {
    media: &'a str,
    base64: bool,
    data: &'a str,
}

fn data_url(s: &str) -> Option<DataUrl<'_>> {
    let rest = s
        .get(..5)
        .filter(|p| p.eq_ignore_ascii_case("data:"))
        .map(|_| &s[5..])?;
    let (meta, data) = rest.split_once(',')?;
    let mut params = meta.split(';');
    let media = params.next().unwrap_or("").trim();
    let base64 = params.any(|p| p.trim().eq_ignore_ascii_case("base64"));
    Some(DataUrl {
        media: if media.is_empty() { "text/plain" } else { media },
        base64,
        data,
    })
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
    // Whether this part changed, and withheld or not.
    let mut scan = |x: &mut Value, block: &mut bool| {
        let (c, b) = part_texts(x, f);
        changed |= c;
        *block |= b;
        c
    };
    // Log-probabilities spell out the text token by token: a choice whose text was masked
    // or withheld loses them (as OpenAI's own filtered choices carry none).
    let drop_logprobs = |choice: &mut Value, key: &str| {
        if let Some(lp) = choice.get_mut(key) {
            *lp = Value::Null;
        }
    };
    match endpoint {
        Endpoint::Responses => {
            let mut block = false;
            if let Some(Value::Array(output)) = v.get_mut("output") {
                output.iter_mut().for_each(|item| {
                    scan(item, &mut block);
                });
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
        // Gemini: each candidate's content; a blocked one keeps its place with no parts and
        // the finish reason Gemini gives its own filter.
        Endpoint::GenerateContent => {
            let Some(Value::Array(candidates)) = v.get_mut("candidates") else {
                return false;
            };
            for c in candidates {
                let mut block = false;
                let mut edited = false;
                if let Some(content) = c.get_mut("content") {
                    edited = scan(content, &mut block);
                    if block {
                        *content = serde_json::json!({"role": "model", "parts": []});
                    }
                }
                if block {
                    c["finishReason"] = Value::from("SAFETY");
                }
                if block || edited {
                    drop_logprobs(c, "logprobsResult");
                }
            }
        }
        // Chat completions; upstream-only endpoints never reach a caller, and token counts
        // and embeddings carry no text.
        Endpoint::ChatCompletions
        | Endpoint::Embeddings
        | Endpoint::Converse
        | Endpoint::CountTokens
        | Endpoint::EmbedContent
        | Endpoint::BatchEmbedContents => {
            let Some(Value::Array(choices)) = v.get_mut("choices") else {
                return false;
            };
            for choice in choices {
                let mut block = false;
                let mut edited = false;
                if let Some(msg) = choice.get_mut("message") {
                    edited = scan(msg, &mut block);
                    if block {
                        // Nothing of a withheld message stays: content, tool calls,
                        // reasoning, refusal.
                        *msg = serde_json::json!({"role": "assistant", "content": null});
                    }
                }
                if block {
                    choice["finish_reason"] = Value::from("content_filter");
                }
                if block || edited {
                    drop_logprobs(choice, "logprobs");
                }
            }
        }
        // Legacy completions: each choice's `text`.
        Endpoint::Completions => {
            let Some(Value::Array(choices)) = v.get_mut("choices") else {
                return false;
            };
            for choice in choices {
                let mut block = false;
                let mut edited = false;
                if let Some(text) = choice.get_mut("text") {
                    edited = scan(text, &mut block);
                    if block {
                        *text = Value::from("");
                        choice["finish_reason"] = Value::from("content_filter");
                    }
                }
                if block || edited {
                    drop_logprobs(choice, "logprobs");
                }
            }
        }
        // No completion text: scores, images, audio (never given response guardrails).
        Endpoint::Moderations
        | Endpoint::ImageGenerations
        | Endpoint::ImageEdits
        | Endpoint::AudioTranscriptions
        | Endpoint::AudioTranslations
        | Endpoint::AudioSpeech => {}
        // A realtime session's events are checked one by one (`proxy::realtime`).
        Endpoint::Realtime => {}
        Endpoint::Messages => {
            let mut block = false;
            if let Some(Value::Array(content)) = v.get_mut("content") {
                content.iter_mut().for_each(|b| {
                    scan(b, &mut block);
                });
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

/// Calls `f` on every text of one part of a completion (a chat message, a Responses output
/// item, a Gemini candidate's content), as [`response_texts`] reads it: whether the part
/// changed, and whether it is to be withheld.
pub fn part_texts(x: &mut Value, f: &mut dyn FnMut(&mut String) -> Edit) -> (bool, bool) {
    let (mut changed, mut block) = (false, false);
    // A completion carries no base64 text: nothing in it is unreadable.
    let _ = Walker::new(
        &mut |s: &mut String| apply(f(s), &mut changed, &mut block),
        false,
        false,
    )
    .run(x);
    (changed, block)
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

    /// Two keys masked alike keep both values: the later key gets a number.
    #[test]
    fn keys_masked_alike_keep_both_values() {
        let mut v = json!({"model": "m", "messages": [{"role": "assistant", "content": [{"type": "tool_use",
            "id": "t", "name": "save", "input": {"555-1234 home": "Bob", "555-9876 home": "Alice", "<PHONE> home": "Eve"}}]}]});
        let re = regex::Regex::new(r"\d{3}-\d{4}").unwrap();
        request_texts(&mut v, Endpoint::Messages, &mut |s: &mut String| {
            *s = re.replace_all(s, "<PHONE>").into_owned();
        })
        .unwrap();
        let input = v["messages"][0]["content"][0]["input"].as_object().unwrap();
        let mut values: Vec<&str> = input.values().filter_map(Value::as_str).collect();
        values.sort_unstable();
        assert_eq!(values, ["Alice", "Bob", "Eve"], "{input:?}");
        assert!(input.keys().all(|k| k.starts_with("<PHONE> home")), "{input:?}");
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
    fn gemini_texts_are_every_part_instruction_call_and_result() {
        let v = json!({"systemInstruction": {"parts": [{"text": "sys"}]},
            "contents": [{"role": "user", "parts": [{"text": "hi"}, {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}}]},
                {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {"q": "arg", "n": 4111}}, "thoughtSignature": "c2ln"}]},
                {"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {"out": "res"}}}]}],
            "generationConfig": {"responseMimeType": "application/json", "temperature": 0.5},
            "safetySettings": [{"category": "HARM_CATEGORY_HATE_SPEECH", "threshold": "BLOCK_NONE"}]});
        let mut got = collect(v, Endpoint::GenerateContent).unwrap();
        got.sort();
        assert_eq!(got, ["4111", "arg", "f", "f", "hi", "n", "out", "q", "res", "sys"]);
        // Base64 of a text type cannot be read as it is.
        let text64 = json!({"contents": [{"parts": [{"inlineData": {"mimeType": "text/plain", "data": "aGk="}}]}]});
        assert!(collect(text64, Endpoint::GenerateContent).is_err());
        // A blocked candidate keeps its place, empty, with Gemini's own filter reason.
        let mut answer = json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "secret"}]}, "finishReason": "STOP"}]});
        assert!(response_texts(
            &mut answer,
            Endpoint::GenerateContent,
            &mut |_: &mut String| Edit::Block
        ));
        assert_eq!(answer["candidates"][0]["content"]["parts"], json!([]));
        assert_eq!(answer["candidates"][0]["finishReason"], "SAFETY");
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

    /// Masks every text holding `4111`, as a card rule would.
    fn mask_4111(s: &mut String) {
        if s.contains("4111") {
            *s = "[REDACTED:credit_card]".into();
        }
    }

    /// A number is text where keys are: in a tool's input, in any spelling of it; a
    /// request's parameters stay numbers.
    #[test]
    fn numbers_are_text_where_keys_are_in_the_form_a_receiver_reads() {
        let body = r#"{"model": "m", "max_tokens": 4111111111111111, "messages": [{"role": "assistant", "content": [
            {"type": "tool_use", "id": "t", "name": "f", "input": {"a": 4111111111111111, "b": 4.111111111111111e15,
             "c": -4111111111111111, "d": 4111111111111111.5, "e": [12, 0.25], "f": 1e300}}]}]}"#;
        let v: Value = serde_json::from_str(body).unwrap();
        let got = collect(v.clone(), Endpoint::Messages).unwrap();
        // (`d`: serde_json reads 4111111111111111.5 as the nearest double it finds.)
        assert!(
            got.iter().filter(|s| s.starts_with("4111111111111111")).count() >= 3,
            "{got:?}"
        );
        for n in ["-4111111111111111", "12", "0.25"] {
            assert!(got.iter().any(|s| s == n), "{n}: {got:?}");
        }
        assert!(
            got.iter().any(|s| s.len() == 301 && s.starts_with("1000")),
            "1e300 in plain digits"
        );
        let mut masked = v;
        request_texts(&mut masked, Endpoint::Messages, &mut mask_4111).unwrap();
        let input = &masked["messages"][0]["content"][0]["input"];
        for k in ["a", "b", "c", "d"] {
            assert_eq!(input[k], "[REDACTED:credit_card]", "{k}");
        }
        assert_eq!(input["e"], json!([12, 0.25]), "numbers that match nothing stay numbers");
        assert_eq!(
            masked["max_tokens"],
            json!(4111111111111111u64),
            "a parameter is not text"
        );
        // A completion's tool input reads the same.
        let mut c =
            json!({"content": [{"type": "tool_use", "id": "t", "name": "f", "input": {"card": 4111111111111111u64}}]});
        let changed = response_texts(&mut c, Endpoint::Messages, &mut |s: &mut String| {
            let before = s.clone();
            mask_4111(s);
            if *s == before {
                Edit::Keep
            } else {
                Edit::Changed
            }
        });
        assert!(changed);
        assert_eq!(c["content"][0]["input"]["card"], "[REDACTED:credit_card]");
    }

    /// Every key, string and number of an MCP message is text, at any depth and in any
    /// param; binary payloads are not, unless their type says text or says nothing.
    #[test]
    fn mcp_texts_are_every_key_string_and_number() {
        let mut v = json!({
            "name": "t", "arguments": {"K1": "V1", "type": "V2", "id": 41},
            "_meta": {"K3": "V3"}, "x-param": {"id": "V4", "role": "V5", "deep": [{"K6": 42}]},
            "content": [
                {"type": "image", "mimeType": "image/png", "data": "iVBORw0KGgo="},
                {"type": "text", "text": "V7"},
                {"type": "resource", "resource": {"uri": "u://V8", "mimeType": "image/png", "blob": "AAAA"}},
            ],
            "size": 4111111111111111u64, "code": 43,
        });
        let mut got = Vec::new();
        mcp_texts(&mut v, &mut |s: &mut String| got.push(s.clone())).unwrap();
        for t in [
            "t",
            "K1",
            "V1",
            "type",
            "V2",
            "41",
            "K3",
            "V3",
            "V4",
            "V5",
            "K6",
            "42",
            "V7",
            "u://V8",
            "image/png",
        ] {
            assert!(got.iter().any(|s| s == t), "{t} not scanned: {got:?}");
        }
        for not in ["iVBORw0KGgo=", "AAAA", "4111111111111111", "43"] {
            assert!(!got.iter().any(|s| s == not), "{not} scanned as text");
        }
        // A masked key is renamed, a masked number becomes the masked string.
        let mut m = json!({"arguments": {"4111111111111111": 1}, "x": {"n": 4111111111111111u64}});
        mcp_texts(&mut m, &mut mask_4111).unwrap();
        assert_eq!(
            m,
            json!({"arguments": {"[REDACTED:credit_card]": 1}, "x": {"n": "[REDACTED:credit_card]"}})
        );
        // Base64 of a text type, or of no type: unreadable; the walk still reads the rest.
        for blob in [
            json!({"uri": "u", "mimeType": "text/plain", "blob": "QQ=="}),
            json!({"uri": "u", "blob": "QQ=="}),
            json!({"uri": "u", "mimeType": "application/json", "blob": "QQ=="}),
            json!({"type": "image", "data": "QQ=="}),
            json!({"type": "audio", "mimeType": "text/csv", "data": "QQ=="}),
        ] {
            let mut v = json!({"contents": [blob.clone(), {"text": "after"}]});
            let mut seen = Vec::new();
            assert!(
                mcp_texts(&mut v, &mut |s: &mut String| seen.push(s.clone())).is_err(),
                "{blob}"
            );
            assert!(seen.iter().any(|s| s == "after"), "{blob}: the walk stopped");
        }
    }

    /// Unreadable text stops nothing: every other text of the request is still scanned
    /// (and masked), whatever the guardrails then decide about the request.
    #[test]
    fn an_unreadable_text_does_not_stop_the_walk() {
        let mut v = json!({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "document", "source": {"type": "base64", "media_type": "text/plain", "data": "QQ=="}},
            {"type": "text", "text": "card 4111"}]}]});
        assert!(request_texts(&mut v, Endpoint::Messages, &mut mask_4111).is_err());
        assert_eq!(v["messages"][0]["content"][1]["text"], "[REDACTED:credit_card]");
    }

    /// Data URLs as RFC 2397 reads them: no media type is `text/plain`, `data:` and
    /// `;base64` in any case; percent-escaped text cannot be read as it is; bare base64
    /// `file_data` has no type to say it is not text. A completion's strings are text.
    #[test]
    fn data_urls_are_read_as_rfc_2397_reads_them() {
        let part = |url: &str| json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]});
        let file = |data: &str| json!({"messages": [{"role": "user", "content": [{"type": "file", "file": {"file_data": data}}]}]});
        for unreadable in [
            part("data:;base64,QQ=="),
            part("data:;charset=utf-8;base64,QQ=="),
            part("DATA:TEXT/PLAIN;BASE64,QQ=="),
            part("data:application/ld+json;base64,QQ=="),
            part("data:text/plain,4111%201111"),
            part("data:,%41"),
            file("QQ=="),
            file("data:;base64,QQ=="),
        ] {
            assert!(
                collect(unreadable.clone(), Endpoint::ChatCompletions).is_err(),
                "{unreadable}"
            );
        }
        assert_eq!(
            collect(part("data:image/png;base64,iVBORw0KGgo="), Endpoint::ChatCompletions).unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(
            collect(file("data:application/pdf;base64,JVBERi0="), Endpoint::ChatCompletions).unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(
            collect(part("data:text/plain,plain words"), Endpoint::ChatCompletions).unwrap(),
            ["data:text/plain,plain words"]
        );
        // In a tool's arguments too: free-form values are not a way around it.
        let args = json!({"messages": [{"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {"file": "data:;base64,QQ=="}}]}]});
        assert!(collect(args, Endpoint::Messages).is_err());
        let mut c = json!({"choices": [{"message": {"role": "assistant", "content": "data:;base64,QQ=="}}]});
        let mut seen = Vec::new();
        response_texts(&mut c, Endpoint::ChatCompletions, &mut |s: &mut String| {
            seen.push(s.clone());
            Edit::Keep
        });
        assert_eq!(
            seen,
            ["data:;base64,QQ=="],
            "a completion's text is scanned as a stream's is"
        );
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

    #[test]
    fn a_completion_choice_is_read_in_its_text_and_withheld_there() {
        let mut v = json!({"object": "text_completion", "choices": [
            {"index": 0, "text": "keep this", "finish_reason": "stop"},
            {"index": 1, "text": "drop that", "finish_reason": "stop"}]});
        let changed = response_texts(&mut v, Endpoint::Completions, &mut |s: &mut String| {
            if s.contains("drop") {
                Edit::Block
            } else {
                Edit::Keep
            }
        });
        assert!(changed);
        assert_eq!(
            v["choices"][0],
            json!({"index": 0, "text": "keep this", "finish_reason": "stop"})
        );
        assert_eq!(v["choices"][1]["text"], "");
        assert_eq!(v["choices"][1]["finish_reason"], "content_filter");
        // Scores, images and audio carry no completion text.
        let mut m = json!({"results": [{"flagged": false}], "text": "a transcript"});
        assert!(!response_texts(&mut m, Endpoint::Moderations, &mut |_: &mut String| {
            Edit::Block
        }));
    }
}
