//! Provider adapters: how a request for one endpoint reaches one kind of provider, and
//! whether the dialects differ on the way (then `anthropic.rs` translates).

pub mod anthropic;
pub mod bedrock;
pub mod body;
pub mod gemini;
pub mod openai;
pub mod vertex;

use http::header::{
    HeaderName, ACCEPT, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, DATE, RETRY_AFTER,
    TRANSFER_ENCODING,
};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};
use pingora::http::RequestHeader;

use crate::config::raw::ProviderKind;
use crate::config::{Provider, Target};
use crate::error::{Dialect, GwError};
use serde_json::{json, Value};

/// Characters kept as they are in a path segment or query value (RFC 3986 unreserved).
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// The data-plane endpoints that go upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Embeddings,
    /// Anthropic Messages.
    Messages,
    /// OpenAI's Responses API: passed through to OpenAI-style providers only.
    Responses,
    /// Gemini's `generateContent` / `streamGenerateContent`. Upstream only: callers reach
    /// it through chat completions or messages, translated.
    GenerateContent,
    /// Bedrock's `converse` / `converse-stream`. Upstream only, like `GenerateContent`.
    Converse,
}

impl Endpoint {
    /// The path after the API version prefix.
    pub fn suffix(self) -> &'static str {
        match self {
            Self::ChatCompletions => "/chat/completions",
            Self::Embeddings => "/embeddings",
            Self::Messages => "/messages",
            Self::Responses => "/responses",
            Self::GenerateContent => ":generateContent",
            Self::Converse => "/converse",
        }
    }

    /// The dialect a caller of this endpoint speaks (and gets its errors in).
    pub fn dialect(self) -> Dialect {
        match self {
            Self::Messages => Dialect::Anthropic,
            Self::ChatCompletions | Self::Embeddings | Self::Responses | Self::GenerateContent | Self::Converse => {
                Dialect::OpenAi
            }
        }
    }

    /// `gen_ai.operation.name` of the OpenTelemetry GenAI conventions.
    pub fn operation(self) -> &'static str {
        match self {
            Self::ChatCompletions | Self::Messages | Self::Responses | Self::GenerateContent | Self::Converse => "chat",
            Self::Embeddings => "embeddings",
        }
    }

    /// The endpoint a provider speaking `wire` is called on for this one; `None` when it
    /// cannot serve it at all.
    pub fn upstream(self, wire: Wire) -> Option<Endpoint> {
        match (self, wire) {
            (Self::ChatCompletions | Self::Messages, Wire::Gemini) => Some(Self::GenerateContent),
            (Self::ChatCompletions | Self::Messages, Wire::Converse) => Some(Self::Converse),
            (_, Wire::Gemini | Wire::Converse) => None,
            (Self::GenerateContent | Self::Converse, _) => None,
            (Self::Embeddings | Self::Responses, Wire::Anthropic) => None,
            (Self::ChatCompletions | Self::Messages, Wire::Anthropic) => Some(Self::Messages),
            (Self::Messages, _) => Some(Self::ChatCompletions),
            (e, _) => Some(e),
        }
    }
}

/// The wire format a provider's API speaks for one model: what the request is translated
/// to and the answer from. The provider kind decides the rest (URL, credentials); one
/// kind may speak several formats (Vertex AI: Gemini's, and Anthropic's for Claude).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// OpenAI's chat completions, embeddings and responses.
    OpenAi,
    /// Anthropic's Messages.
    Anthropic,
    /// Gemini's generateContent.
    Gemini,
    /// Bedrock's Converse (streams in AWS's binary event stream).
    Converse,
}

impl Wire {
    /// The Content-Type of this format's streamed answers.
    pub fn stream_media(self) -> &'static str {
        match self {
            Wire::Converse => "application/vnd.amazon.eventstream",
            Wire::OpenAi | Wire::Anthropic | Wire::Gemini => "text/event-stream",
        }
    }
}

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

/// The dialect of a provider speaking `wire`, when callers of that dialect reach it
/// untranslated; `None` for Gemini and Converse, which every caller reaches through
/// translation.
pub fn dialect(wire: Wire) -> Option<Dialect> {
    match wire {
        Wire::Anthropic => Some(Dialect::Anthropic),
        Wire::Gemini | Wire::Converse => None,
        Wire::OpenAi => Some(Dialect::OpenAi),
    }
}

/// Path and query of the upstream request for `upstream` (see [`Endpoint::upstream`]);
/// `stream` matters where the method names it (Gemini, Vertex AI).
pub fn upstream_path(t: &Target, upstream: Endpoint, stream: bool) -> String {
    let p = &t.provider;
    match p.kind {
        // Anthropic's base URL is the host; the API version is part of the path.
        ProviderKind::Anthropic => format!("{}/v1{}", p.base.path, upstream.suffix()),
        ProviderKind::Gemini => gemini::upstream_path(p, &t.upstream_model, stream),
        ProviderKind::Vertex => vertex::upstream_path(t, stream),
        ProviderKind::Bedrock => bedrock::upstream_path(t, stream),
        _ => openai::upstream_path(p, upstream, &t.upstream_model),
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

/// Whether `target` can serve `endpoint` (natively or translated).
pub fn can_serve(endpoint: Endpoint, target: &Target) -> bool {
    endpoint.upstream(target.wire()).is_some()
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
