//! Provider adapters: how a request for one endpoint reaches one kind of provider, and
//! whether the dialects differ on the way (then `anthropic.rs` translates).

pub mod anthropic;
pub mod body;
pub mod openai;

use pingora::http::RequestHeader;

use crate::config::raw::ProviderKind;
use crate::config::Provider;
use crate::error::{Dialect, GwError};

/// The data-plane endpoints that go upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Embeddings,
    /// Anthropic Messages.
    Messages,
    /// OpenAI's Responses API: passed through to OpenAI-style providers only.
    Responses,
}

impl Endpoint {
    /// The path after the API version prefix.
    pub fn suffix(self) -> &'static str {
        match self {
            Self::ChatCompletions => "/chat/completions",
            Self::Embeddings => "/embeddings",
            Self::Messages => "/messages",
            Self::Responses => "/responses",
        }
    }

    /// The dialect a caller of this endpoint speaks (and gets its errors in).
    pub fn dialect(self) -> Dialect {
        match self {
            Self::Messages => Dialect::Anthropic,
            Self::ChatCompletions | Self::Embeddings | Self::Responses => Dialect::OpenAi,
        }
    }

    /// `gen_ai.operation.name` of the OpenTelemetry GenAI conventions.
    pub fn operation(self) -> &'static str {
        match self {
            Self::ChatCompletions | Self::Messages | Self::Responses => "chat",
            Self::Embeddings => "embeddings",
        }
    }

    /// The endpoint a provider of `kind` is called on for this one; `None` when it cannot
    /// serve it at all.
    pub fn upstream(self, kind: ProviderKind) -> Option<Endpoint> {
        match (self, kind) {
            (_, ProviderKind::Gemini) => None,
            (Self::Embeddings | Self::Responses, ProviderKind::Anthropic) => None,
            (Self::ChatCompletions | Self::Messages, ProviderKind::Anthropic) => Some(Self::Messages),
            (Self::Messages, _) => Some(Self::ChatCompletions),
            (e, _) => Some(e),
        }
    }
}

/// The provider's dialect.
pub fn dialect(kind: ProviderKind) -> Dialect {
    match kind {
        ProviderKind::Anthropic => Dialect::Anthropic,
        _ => Dialect::OpenAi,
    }
}

/// Path and query of the upstream request for `upstream` (see [`Endpoint::upstream`]).
pub fn upstream_path(p: &Provider, upstream: Endpoint, upstream_model: &str) -> String {
    match p.kind {
        // Anthropic's base URL is the host; the API version is part of the path.
        ProviderKind::Anthropic => format!("{}/v1{}", p.base.path, upstream.suffix()),
        _ => openai::upstream_path(p, upstream, upstream_model),
    }
}

/// The provider's credential and extra headers.
pub fn apply_credentials(p: &Provider, req: &mut RequestHeader) -> pingora::Result<()> {
    match p.kind {
        ProviderKind::Anthropic => anthropic::apply_credentials(p, req),
        _ => {
            // An Anthropic caller's protocol headers mean nothing to an OpenAI-style provider.
            req.remove_header("anthropic-version");
            req.remove_header("anthropic-beta");
            openai::apply_credentials(p, req)
        }
    }
}

/// Whether a provider of `kind` can serve `endpoint` (natively or translated).
pub fn can_serve(endpoint: Endpoint, kind: ProviderKind) -> bool {
    endpoint.upstream(kind).is_some()
}

/// Refuses endpoint/provider pairs that cannot work, with a message naming both.
pub fn check_supported(endpoint: Endpoint, p: &Provider, alias: &str) -> Result<Endpoint, GwError> {
    endpoint
        .upstream(p.kind)
        .ok_or_else(|| GwError::InvalidRequest(format!("The model '{alias}' cannot serve {}.", endpoint.suffix())))
}
