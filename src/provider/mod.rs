//! Provider adapters. Two things describe a target, kept apart:
//!
//! - its provider **kind** (one file each: `openai.rs`, `anthropic.rs`, `gemini.rs`,
//!   `vertex.rs`, `bedrock.rs`): the URL and path, the credential or signature, the headers
//!   that may cross, the default base URL, the name telemetry gives it;
//! - its **wire format** ([`Wire`]: OpenAI, Anthropic, Gemini, Converse), which one kind may
//!   vary by model (Vertex AI). The tables below are the one place that decides what a
//!   caller's endpoint becomes upstream ([`Endpoint::upstream`], [`upstream_body`]) and how
//!   the answer comes back ([`stream_mode`], [`json_translate`]).
//!
//! A new provider is its kind's file and a row in these tables; a new wire format adds its
//! translations (request, JSON answer, stream translator) to its file.

mod answer;
pub mod anthropic;
pub mod bedrock;
pub mod body;
mod class;
pub mod form;
pub mod gemini;
pub mod openai;
mod target;
pub mod vertex;

pub use answer::{JsonBody, JsonTranslate};
pub use class::ErrorClass;
pub use target::{BaseUrl, Provider, Secret, Target};

use bytes::Bytes;
use http::header::{
    HeaderName, ACCEPT, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, DATE, RETRY_AFTER,
    TRANSFER_ENCODING,
};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};
use pingora::http::RequestHeader;

use crate::api::{Dialect, Endpoint, Wire};
use crate::error::GwError;
use crate::raw::ProviderKind;
use crate::stream::translate::Chain;
use crate::stream::{Mode, Translate};
use serde_json::{json, Value};

/// Characters kept as they are in a path segment or query value (RFC 3986 unreserved).
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

impl Target {
    /// The wire format this target's provider speaks for its model.
    pub fn wire(&self) -> Wire {
        match self.provider.kind {
            ProviderKind::Anthropic => Wire::Anthropic,
            ProviderKind::Gemini => Wire::Gemini,
            ProviderKind::Vertex => vertex::wire(&self.upstream_model),
            ProviderKind::Bedrock => Wire::Converse,
            ProviderKind::Openai | ProviderKind::OpenaiCompatible | ProviderKind::Azure => Wire::OpenAi,
        }
    }
}

/// The base URL of a provider kind when the config names none; Vertex AI's and Bedrock's
/// come from their location and region, Azure and OpenAI-compatible servers have none.
pub fn default_base_url(kind: ProviderKind) -> Option<&'static str> {
    match kind {
        ProviderKind::Openai => Some("https://api.openai.com/v1"),
        ProviderKind::Anthropic => Some("https://api.anthropic.com"),
        ProviderKind::Gemini => Some("https://generativelanguage.googleapis.com"),
        ProviderKind::Azure | ProviderKind::OpenaiCompatible | ProviderKind::Vertex | ProviderKind::Bedrock => None,
    }
}

/// Whether a provider kind takes an `api_key`.
pub enum ApiKey {
    Required,
    /// OpenAI-compatible servers often have none.
    Optional,
    /// The kind authenticates otherwise; the reason is the config error.
    Refused(&'static str),
}

pub fn api_key(kind: ProviderKind) -> ApiKey {
    match kind {
        ProviderKind::Openai | ProviderKind::Azure | ProviderKind::Anthropic | ProviderKind::Gemini => ApiKey::Required,
        ProviderKind::OpenaiCompatible => ApiKey::Optional,
        ProviderKind::Vertex => {
            ApiKey::Refused("vertex providers authenticate with vertex.credentials_file, not an api_key")
        }
        ProviderKind::Bedrock => ApiKey::Refused("bedrock providers sign with aws credentials, not an api_key"),
    }
}

/// `gen_ai.provider.name` of the OpenTelemetry GenAI conventions.
pub fn otel_name(kind: ProviderKind) -> &'static str {
    match kind {
        ProviderKind::Openai => "openai",
        ProviderKind::Azure => "azure.ai.openai",
        ProviderKind::Anthropic => "anthropic",
        ProviderKind::OpenaiCompatible => "openai_compatible",
        ProviderKind::Gemini => "gcp.gemini",
        ProviderKind::Vertex => "gcp.vertex_ai",
        ProviderKind::Bedrock => "aws.bedrock",
    }
}

/// Path and query of the upstream request for `upstream` (see [`Endpoint::upstream`]);
/// `stream` matters where the method names it (Gemini, Vertex AI).
pub fn upstream_path(t: &Target, upstream: Endpoint, stream: bool) -> String {
    let p = &t.provider;
    match p.kind {
        // Anthropic's base URL is the host; the API version is part of the path.
        ProviderKind::Anthropic => format!("{}/v1{}", p.base.path, upstream.suffix()),
        ProviderKind::Gemini => gemini::upstream_path(p, &t.upstream_model, upstream, stream),
        ProviderKind::Vertex => vertex::upstream_path(t, upstream, stream),
        ProviderKind::Bedrock => bedrock::upstream_path(t, stream),
        _ => openai::upstream_path(p, upstream, &t.upstream_model),
    }
}

/// The body the provider gets from a caller of `endpoint`: the caller's with `model`
/// spliced in when the formats match, a translation when they differ (Anthropic callers
/// reach Gemini and Converse through chat, the hub). The flag says the gateway added
/// `stream_options.include_usage` and must strip the extra chunk.
pub fn upstream_body(
    endpoint: Endpoint,
    upstream: Endpoint,
    body: &Bytes,
    view: &body::BodyView,
    target: &Target,
) -> Result<(Bytes, bool), GwError> {
    let upstream_model = target.upstream_model.as_str();
    let translate = |f: fn(&Value, &str) -> Result<Value, GwError>| -> Result<(Bytes, bool), GwError> {
        let v: Value = serde_json::from_slice(body).map_err(|e| GwError::InvalidJson(e.to_string()))?;
        let out = f(&v, upstream_model)?;
        Ok((Bytes::from(out.to_string()), false))
    };
    // Gemini-format callers: the alias is the path's, streaming the method's.
    let (alias, stream) = (view.model.as_str(), view.stream);
    let translate_with = |f: &dyn Fn(&Value, &str) -> Result<Value, GwError>| -> Result<(Bytes, bool), GwError> {
        let v: Value = serde_json::from_slice(body).map_err(|e| GwError::InvalidJson(e.to_string()))?;
        Ok((Bytes::from(f(&v, upstream_model)?.to_string()), false))
    };
    let (body, injected) = match (endpoint, upstream) {
        // Native: the caller's body as it is (the model is in the path).
        (Endpoint::GenerateContent, Endpoint::GenerateContent)
        | (Endpoint::CountTokens, Endpoint::CountTokens)
        | (Endpoint::EmbedContent, Endpoint::EmbedContent) => Ok((body.clone(), false)),
        (Endpoint::BatchEmbedContents, Endpoint::BatchEmbedContents) => {
            translate_with(&|v, model| gemini::batch_embed_upstream(v, model, alias))
        }
        // Through the chat hub, as Anthropic callers reach Gemini and Converse.
        (Endpoint::GenerateContent, Endpoint::ChatCompletions) => {
            translate_with(&|v, model| gemini::gemini_request_to_chat(v, model, stream))
        }
        (Endpoint::GenerateContent, Endpoint::Messages) => translate_with(&|v, model| {
            anthropic::chat_request_to_messages(&gemini::gemini_request_to_chat(v, model, stream)?, model)
        }),
        (Endpoint::GenerateContent, Endpoint::Converse) => translate_with(&|v, model| {
            bedrock::chat_request_to_converse(&gemini::gemini_request_to_chat(v, model, stream)?, model)
        }),
        (Endpoint::EmbedContent, Endpoint::Embeddings) => {
            translate_with(&|v, model| gemini::embed_request_to_openai(v, model, alias, false))
        }
        (Endpoint::BatchEmbedContents, Endpoint::Embeddings) => {
            translate_with(&|v, model| gemini::embed_request_to_openai(v, model, alias, true))
        }
        (Endpoint::ChatCompletions, Endpoint::Messages) => translate(anthropic::chat_request_to_messages),
        (Endpoint::Messages, Endpoint::ChatCompletions) => translate(anthropic::messages_request_to_chat),
        (Endpoint::ChatCompletions, Endpoint::GenerateContent) => translate(gemini::chat_request_to_gemini),
        (Endpoint::ChatCompletions, Endpoint::Converse) => translate(bedrock::chat_request_to_converse),
        (Endpoint::Messages, Endpoint::Converse) => translate(|v, model| {
            bedrock::chat_request_to_converse(&anthropic::messages_request_to_hub(v, model)?, model)
        }),
        // Through the chat shape, the hub both translations share.
        (Endpoint::Messages, Endpoint::GenerateContent) => {
            translate(|v, model| gemini::chat_request_to_gemini(&anthropic::messages_request_to_hub(v, model)?, model))
        }
        // A form's model is a line of its own: a line break in it would be a new part.
        _ if view.is_form() && upstream_model.contains(['\r', '\n']) => {
            Err(bad("The upstream model name cannot go in a form field."))
        }
        // Anthropic streams always carry usage; OpenAI-style ones only when asked.
        (_, up) => Ok(body::rewrite(
            body,
            view,
            upstream_model,
            matches!(up, Endpoint::ChatCompletions | Endpoint::Completions),
        )),
    }?;
    // Claude on Vertex AI: no model in the body, the version in it.
    if target.provider.kind == ProviderKind::Vertex && upstream == Endpoint::Messages {
        return Ok((vertex::anthropic_body(&body)?, injected));
    }
    Ok((body, injected))
}

/// How a streamed answer in `wire` reaches a caller speaking `caller`: passed through
/// (usage read on the way) when the formats match, else translated event by event. Gemini
/// and Converse reach Anthropic callers through chat chunks (`Chain`), whose usage
/// chunk becomes the final `message_delta`'s usage.
pub fn stream_mode(
    wire: Wire,
    caller: Dialect,
    include_usage: bool,
    strip_usage: bool,
    model: &str,
    created: i64,
) -> Mode {
    let to_chat = |include_usage: bool| -> Box<dyn Translate> {
        match wire {
            Wire::Converse => Box::new(bedrock::BedrockToChat::new(include_usage, created, model)),
            _ => Box::new(gemini::GeminiToChat::new(include_usage, created, model)),
        }
    };
    match (wire, caller) {
        (Wire::Gemini, Dialect::Gemini) => Mode::Translate(Box::<gemini::GeminiPassthrough>::default()),
        (Wire::OpenAi, Dialect::Gemini) => Mode::Translate(Box::new(gemini::ChatToGemini::new(model))),
        (Wire::Anthropic, Dialect::Gemini) => Mode::Translate(Box::new(Chain::new(
            Box::new(anthropic::AnthropicToChat::new(true, created)),
            Box::new(gemini::ChatToGemini::new(model)),
        ))),
        (Wire::Converse, Dialect::Gemini) => Mode::Translate(Box::new(Chain::new(
            to_chat(true),
            Box::new(gemini::ChatToGemini::new(model)),
        ))),
        (Wire::OpenAi, Dialect::OpenAi) => Mode::OpenAi { strip_usage },
        (Wire::Anthropic, Dialect::Anthropic) => Mode::Anthropic,
        (Wire::Anthropic, Dialect::OpenAi) => {
            Mode::Translate(Box::new(anthropic::AnthropicToChat::new(include_usage, created)))
        }
        (Wire::OpenAi, Dialect::Anthropic) => Mode::Translate(Box::new(anthropic::ChatToAnthropic::new())),
        (Wire::Gemini | Wire::Converse, Dialect::OpenAi) => Mode::Translate(to_chat(include_usage)),
        (Wire::Gemini | Wire::Converse, Dialect::Anthropic) => Mode::Translate(Box::new(Chain::new(
            to_chat(true),
            Box::new(anthropic::ChatToAnthropic::new()),
        ))),
    }
}

/// A whole answer of a format reached only through translation, as a chat completion,
/// with its usage.
pub fn answer_to_chat(wire: Wire, v: &Value, created: i64, model: &str) -> (crate::usage::Usage, Value) {
    match wire {
        Wire::Converse => (
            bedrock::usage(&v["usage"]),
            bedrock::response_to_chat(v, created, model),
        ),
        // `JsonTranslate::ToChat` is made for these two formats only (`json_translate`).
        Wire::Gemini | Wire::OpenAi | Wire::Anthropic => (
            gemini::usage(&v["usageMetadata"]),
            gemini::response_to_chat(v, created, model),
        ),
    }
}

/// How a whole JSON answer in `wire` reaches a caller of `endpoint` speaking `caller`.
pub fn json_translate(endpoint: Endpoint, wire: Wire, caller: Dialect, model: &str, created: i64) -> JsonTranslate {
    match (wire, caller) {
        (Wire::Gemini, Dialect::Gemini) => JsonTranslate::GeminiNative,
        (_, Dialect::Gemini) if matches!(endpoint, Endpoint::EmbedContent | Endpoint::BatchEmbedContents) => {
            JsonTranslate::EmbeddingsToGemini {
                batch: endpoint == Endpoint::BatchEmbedContents,
            }
        }
        (_, Dialect::Gemini) => JsonTranslate::ToGemini {
            from: wire,
            created,
            model: model.to_owned(),
        },
        (Wire::OpenAi, Dialect::OpenAi) | (Wire::Anthropic, Dialect::Anthropic) => JsonTranslate::None,
        (Wire::Anthropic, Dialect::OpenAi) => JsonTranslate::AnthropicToChat { created },
        (Wire::OpenAi, Dialect::Anthropic) => JsonTranslate::ChatToAnthropic,
        (Wire::Gemini | Wire::Converse, _) => JsonTranslate::ToChat {
            from: wire,
            created,
            to_anthropic: caller == Dialect::Anthropic,
            model: model.to_owned(),
        },
    }
}

/// `OpenAI-Beta`: opts into beta API behaviour on OpenAI-style providers.
const OPENAI_BETA: HeaderName = HeaderName::from_static("openai-beta");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Whether a caller's request header may reach a provider of `kind`: an allowlist of what
/// each provider API reads, so that nothing else crosses, whatever its name:
/// `OpenAI-Organization` / `OpenAI-Project` (which would bill or reach another org or
/// project the gateway's key can use), cookies, `X-Forwarded-*`, SDK telemetry. The
/// gateway then sets the framing, host, credential and its own headers.
pub fn forwards_request_header(kind: ProviderKind, name: &HeaderName) -> bool {
    if name == CONTENT_TYPE || name == TRACEPARENT || name == TRACESTATE {
        return true;
    }
    // A caller's `text/event-stream` means nothing to Converse, which streams AWS's
    // event stream.
    if name == ACCEPT {
        return kind != ProviderKind::Bedrock;
    }
    match kind {
        // Describe the body the caller wrote in Anthropic's dialect.
        ProviderKind::Anthropic => name == anthropic::VERSION_HEADER || name == anthropic::BETA_HEADER,
        ProviderKind::Openai | ProviderKind::OpenaiCompatible | ProviderKind::Azure => name == OPENAI_BETA,
        // Vertex takes Anthropic's version in the body, and no beta header.
        ProviderKind::Gemini | ProviderKind::Vertex | ProviderKind::Bedrock => false,
    }
}

/// Whether a provider's response header may reach the caller: framing and caching of the
/// body, `Retry-After` of a 429 passed through. Everything else (the provider's account:
/// `openai-organization`, `openai-project`, `anthropic-organization-id`, its rate limits;
/// `set-cookie`; the provider's servers and request ids) stays inside; the gateway adds
/// its own `x-request-id`, `x-aigw-*` and the caller's own rate limit headers.
pub fn forwards_response_header(name: &HeaderName) -> bool {
    [
        CONTENT_TYPE,
        CONTENT_LENGTH,
        TRANSFER_ENCODING,
        CONTENT_ENCODING,
        CACHE_CONTROL,
        RETRY_AFTER,
        DATE,
    ]
    .contains(name)
}

/// The provider's credential and extra headers. `token` is the access token a Vertex AI
/// target obtained for this attempt ([`vertex::Tokens`]); `body` is what Bedrock's
/// signature covers.
pub fn apply_credentials(
    p: &Provider,
    token: Option<&str>,
    body: &[u8],
    req: &mut RequestHeader,
) -> pingora::Result<()> {
    match p.kind {
        ProviderKind::Bedrock => bedrock::sign_request(p, req, body),
        ProviderKind::Anthropic => anthropic::apply_credentials(p, req),
        ProviderKind::Gemini => gemini::apply_credentials(p, req),
        ProviderKind::Vertex => vertex::apply_credentials(p, token, req),
        _ => openai::apply_credentials(p, req),
    }
}

/// Whether `target` can serve `endpoint` (natively or translated). Vertex AI embeds
/// through `:predict`, not Gemini's `embedContent`: its Gemini models serve content and
/// token counts only.
pub fn can_serve(endpoint: Endpoint, target: &Target) -> bool {
    let kind = target.provider.kind;
    // Azure OpenAI has no moderations endpoint (its content filters are built in).
    let azure_moderation = kind == ProviderKind::Azure && endpoint == Endpoint::Moderations;
    let vertex_embed =
        kind == ProviderKind::Vertex && matches!(endpoint, Endpoint::EmbedContent | Endpoint::BatchEmbedContents);
    !azure_moderation && !vertex_embed && endpoint.upstream(target.wire()).is_some()
}

/// A request the gateway cannot translate for the provider: 400 `invalid_request`.
fn bad(msg: impl Into<String>) -> GwError {
    GwError::InvalidRequest(msg.into())
}

/// Appends a turn of `role` whose content list is `field` (`content` for Anthropic,
/// `parts` for Gemini), merged into the previous turn when the role repeats: both want
/// the roles to alternate, and tool results arrive as extra user turns.
fn push_turn(out: &mut Vec<Value>, role: &str, field: &str, mut items: Vec<Value>) {
    if items.is_empty() {
        return;
    }
    if let Some(last) = out.last_mut().filter(|t| t["role"] == role) {
        if let Some(existing) = last[field].as_array_mut() {
            existing.append(&mut items);
            return;
        }
    }
    out.push(json!({"role": role, field: items}));
}

/// The class of a provider's error answer, read by its wire format's adapter from the
/// whole body (the failover decision takes it with the status: `route::plan`).
/// [`ErrorClass::Unreadable`] when the body is not JSON (every provider's errors are), so
/// nothing can be said of it; `None` when it says nothing a class is made of.
pub fn error_class(wire: Wire, status: u16, body: &[u8]) -> Option<ErrorClass> {
    if !(400..500).contains(&status) {
        return None;
    }
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return Some(ErrorClass::Unreadable);
    };
    // Where each API puts its message: OpenAI, Anthropic and Gemini under `error`, AWS at the top.
    let message = v["error"]["message"]
        .as_str()
        .or(v["message"].as_str())
        .or(v["Message"].as_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    match wire {
        Wire::OpenAi => openai::error_class(&v, &message),
        Wire::Anthropic => anthropic::error_class(&v, &message),
        Wire::Gemini => gemini::error_class(&message),
        Wire::Converse => bedrock::error_class(&message),
    }
}

/// Thinking budgets for OpenAI's `reasoning_effort` on providers that take a budget
/// (Anthropic, Claude on Bedrock and Vertex AI, Gemini). 1,024 is Anthropic's smallest.
pub const THINKING_BUDGETS: [(&str, u64); 4] = [("minimal", 1024), ("low", 1024), ("medium", 4096), ("high", 16384)];

/// The thinking a chat request asks for, in Anthropic's terms, with the `max_tokens` that
/// leaves room for it. An Anthropic-style `thinking` object in the body wins over
/// `reasoning_effort`; `reasoning_effort: none` asks for none. Both max token fields count
/// thinking, as OpenAI's `max_completion_tokens` counts reasoning; the budget must stay
/// under it (Anthropic refuses otherwise), so it shrinks to fit, or the request is refused
/// when less than the smallest budget would be left.
pub(crate) struct ThinkingAsk {
    /// `{"type": "enabled", "budget_tokens": n}`, or the caller's own object.
    pub thinking: Value,
    /// Tokens of thinking asked for, when enabled.
    pub budget: Option<u64>,
    pub max_tokens: u64,
}

pub(crate) fn thinking_ask(req: &Value, default_max: u64) -> Result<Option<ThinkingAsk>, GwError> {
    let asked_max = req["max_completion_tokens"].as_u64().or(req["max_tokens"].as_u64());
    if let Some(t) = req.get("thinking").filter(|t| !t.is_null()) {
        if !t.is_object() {
            return Err(bad(
                "`thinking` must be an object such as {\"type\": \"enabled\", \"budget_tokens\": 2048}",
            ));
        }
        let budget = t["budget_tokens"].as_u64().filter(|_| t["type"] == "enabled");
        return Ok(Some(ThinkingAsk {
            thinking: t.clone(),
            budget,
            max_tokens: asked_max.unwrap_or(default_max + budget.unwrap_or(0)),
        }));
    }
    let effort = match &req["reasoning_effort"] {
        Value::Null => return Ok(None),
        Value::String(s) if s == "none" => return Ok(None),
        Value::String(s) => s.as_str(),
        _ => return Err(bad("`reasoning_effort` must be a string")),
    };
    let Some(&(_, mut budget)) = THINKING_BUDGETS.iter().find(|(name, _)| *name == effort) else {
        return Err(bad(format!(
            "reasoning_effort {effort:?} is not one of none, minimal, low, medium, high"
        )));
    };
    let max_tokens = match asked_max {
        Some(max) => {
            budget = budget.min(max.saturating_sub(1));
            if budget < THINKING_BUDGETS[0].1 {
                return Err(bad(
                    "max_completion_tokens must be above 1024 to leave room for reasoning_effort's thinking",
                ));
            }
            max
        }
        None => default_max + budget,
    };
    Ok(Some(ThinkingAsk {
        thinking: json!({"type": "enabled", "budget_tokens": budget}),
        budget: Some(budget),
        max_tokens,
    }))
}

/// An assistant message's `thinking_blocks` (as chat answers carry them), checked: each a
/// `thinking` block with its text and signature, or a `redacted_thinking` block with its
/// data, to be sent back exactly as received.
pub(crate) fn thinking_blocks(msg: &Value, i: usize) -> Result<&[Value], GwError> {
    let blocks = match &msg["thinking_blocks"] {
        Value::Null => return Ok(&[]),
        Value::Array(b) => b.as_slice(),
        _ => return Err(bad(format!("messages[{i}].thinking_blocks must be a list"))),
    };
    for b in blocks {
        let ok = match b["type"].as_str() {
            Some("thinking") => b["thinking"].is_string() && b["signature"].is_string(),
            Some("redacted_thinking") => b["data"].is_string(),
            _ => false,
        };
        if !ok {
            return Err(bad(format!(
                "messages[{i}].thinking_blocks: each must be {{type: thinking, thinking, signature}} or {{type: redacted_thinking, data}}"
            )));
        }
    }
    Ok(blocks)
}

/// The prompt-cache breakpoint (`cache_control`, Anthropic's extension that chat callers
/// put on content parts and tools) a part, block or tool carries.
pub(crate) fn cache_mark(v: &Value) -> Option<&Value> {
    v.get("cache_control").filter(|c| c.is_object())
}

/// The text parts of system content as `{type: text, text}` items, each keeping its
/// breakpoint: the same shape in chat and Anthropic, and what a system prompt that
/// carries breakpoints stays as. Other parts are left out, as `content_text` leaves them
/// out of an unmarked system prompt.
pub(crate) fn marked_text_parts(content: &Value) -> Vec<Value> {
    match content {
        // Empty text: both Anthropic and Converse refuse an empty text block.
        Value::String(s) if !s.is_empty() => vec![json!({"type": "text", "text": s})],
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| {
                let text = p["text"].as_str().filter(|t| !t.is_empty())?;
                let mut t = json!({"type": "text", "text": text});
                if let Some(c) = cache_mark(p) {
                    t["cache_control"] = c.clone();
                }
                Some(t)
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Whether any part of message content (a list) carries a breakpoint.
pub(crate) fn has_cache_mark(content: &Value) -> bool {
    content
        .as_array()
        .is_some_and(|parts| parts.iter().any(|p| cache_mark(p).is_some()))
}

/// Text of message content: a string, or the `text` of each part or block, joined.
pub(crate) fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

/// The image of an OpenAI `image_url` part.
enum Image<'a> {
    /// A `data:` URL: media type and base64 data.
    Base64 {
        media_type: &'a str,
        data: &'a str,
    },
    Url(&'a str),
}

/// Reads an OpenAI `image_url` part; the error says what is wrong with it.
fn image_of(part: &Value) -> Result<Image<'_>, &'static str> {
    let url = part["image_url"]["url"]
        .as_str()
        .or_else(|| part["image_url"].as_str())
        .ok_or("image_url needs a url")?;
    let Some(rest) = url.strip_prefix("data:") else {
        return Ok(Image::Url(url));
    };
    let (meta, data) = rest.split_once(',').ok_or("image data URL without data")?;
    let media_type = meta.strip_suffix(";base64").ok_or("image data URLs must be base64")?;
    Ok(Image::Base64 { media_type, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_wire_names_its_own_error_classes() {
        let cases: [(Wire, u16, Value, Option<ErrorClass>); 14] = [
            (
                Wire::OpenAi,
                400,
                json!({"error": {"message": "This model's maximum context length is 8192 tokens.", "code": "context_length_exceeded"}}),
                Some(ErrorClass::ContextLengthExceeded),
            ),
            // vLLM says it without OpenAI's code.
            (
                Wire::OpenAi,
                400,
                json!({"object": "error", "message": "This model's maximum context length is 4096 tokens. However, you requested 5000 tokens"}),
                Some(ErrorClass::ContextLengthExceeded),
            ),
            (
                Wire::OpenAi,
                400,
                json!({"error": {"message": "filtered", "code": "content_filter", "innererror": {"code": "ResponsibleAIPolicyViolation"}}}),
                Some(ErrorClass::ContentFilter),
            ),
            (
                Wire::Anthropic,
                400,
                json!({"type": "error", "error": {"type": "invalid_request_error", "message": "prompt is too long: 210000 tokens > 200000 maximum"}}),
                Some(ErrorClass::ContextLengthExceeded),
            ),
            (
                Wire::Anthropic,
                400,
                json!({"type": "error", "error": {"type": "invalid_request_error", "message": "Output blocked by content filtering policy"}}),
                Some(ErrorClass::ContentFilter),
            ),
            (
                Wire::Gemini,
                400,
                json!({"error": {"code": 400, "message": "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).", "status": "INVALID_ARGUMENT"}}),
                Some(ErrorClass::ContextLengthExceeded),
            ),
            (
                Wire::Converse,
                400,
                json!({"message": "Input is too long for requested model."}),
                Some(ErrorClass::ContextLengthExceeded),
            ),
            // One request over the account's tokens per minute: the request's own size.
            (
                Wire::OpenAi,
                429,
                json!({"error": {"message": "Request too large for gpt-4o in organization org-x on tokens per min (TPM): Limit 30000, Requested 36278. The input or output tokens must be reduced in order to run successfully.", "type": "tokens", "param": null, "code": "rate_limit_exceeded"}}),
                Some(ErrorClass::RequestTooLarge),
            ),
            (
                Wire::Anthropic,
                413,
                json!({"type": "error", "error": {"type": "request_too_large", "message": "Request exceeds the maximum allowed number of bytes."}}),
                Some(ErrorClass::RequestTooLarge),
            ),
            (
                Wire::Gemini,
                400,
                json!({"error": {"code": 400, "message": "Request payload size exceeds the limit: 20971520 bytes.", "status": "INVALID_ARGUMENT"}}),
                Some(ErrorClass::RequestTooLarge),
            ),
            // A rate limit that does not say whose traffic reached it has no class: the
            // same words come for one large request and for everyone's.
            (
                Wire::OpenAi,
                429,
                json!({"error": {"message": "Rate limit reached for gpt-4o in organization org-x on tokens per min (TPM): Limit 30000, Used 29000, Requested 2000. Please try again in 2s.", "type": "tokens", "param": null, "code": "rate_limit_exceeded"}}),
                None,
            ),
            (
                Wire::Anthropic,
                429,
                json!({"type": "error", "error": {"type": "rate_limit_error", "message": "This request would exceed the rate limit for your organization of 20,000 input tokens per minute."}}),
                None,
            ),
            // Other errors, and server errors whatever they say, have no class.
            (
                Wire::Anthropic,
                400,
                json!({"type": "error", "error": {"type": "invalid_request_error", "message": "max_tokens: field required"}}),
                None,
            ),
            (
                Wire::OpenAi,
                503,
                json!({"error": {"message": "This model's maximum context length is 8192 tokens.", "code": "context_length_exceeded"}}),
                None,
            ),
        ];
        for (wire, status, body, want) in cases {
            assert_eq!(error_class(wire, status, body.to_string().as_bytes()), want, "{body}");
        }
        // A body that is not JSON cannot say it is not a refusal.
        assert_eq!(
            error_class(Wire::OpenAi, 400, b"<html>Bad Request</html>"),
            Some(ErrorClass::Unreadable)
        );
        assert_eq!(
            error_class(Wire::Anthropic, 400, br#"{"type": "error", "error": {"type": "#),
            Some(ErrorClass::Unreadable)
        );
    }

    #[test]
    fn a_marked_system_prompt_keeps_its_text_parts_only() {
        let eph = json!({"type": "ephemeral"});
        let content = json!([{"type": "text", "text": "Rules.", "cache_control": eph}, {"type": "text", "text": ""},
            {"type": "input_audio", "input_audio": {"data": "UklGRg", "format": "wav"}}, {"type": "text", "text": "Today."}]);
        assert_eq!(
            marked_text_parts(&content),
            [
                json!({"type": "text", "text": "Rules.", "cache_control": eph}),
                json!({"type": "text", "text": "Today."})
            ]
        );
        // A part a chat system prompt may carry does not fail the translation when a
        // breakpoint keeps the prompt a list, as it does not when the prompt is joined.
        let req = json!({"messages": [{"role": "system", "content": content}, {"role": "user", "content": "Hi"}]});
        let out = anthropic::chat_request_to_messages(&req, "m").unwrap();
        assert_eq!(out["system"].as_array().unwrap().len(), 2);
        let out = bedrock::chat_request_to_converse(&req, "m").unwrap();
        assert_eq!(
            out["system"],
            json!([{"text": "Rules."}, {"cachePoint": {"type": "default"}}, {"text": "Today."}])
        );
    }
}
