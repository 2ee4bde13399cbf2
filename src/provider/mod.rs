//! Provider adapters: how a request for one endpoint reaches one kind of provider.

pub mod body;
pub mod openai;

use crate::config::raw::ProviderKind;

/// The data-plane endpoints that go upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Embeddings,
}

impl Endpoint {
    /// The path after the API version prefix, as OpenAI-style providers name it.
    pub fn suffix(self) -> &'static str {
        match self {
            Self::ChatCompletions => "/chat/completions",
            Self::Embeddings => "/embeddings",
        }
    }

    /// `gen_ai.operation.name` of the OpenTelemetry GenAI conventions.
    pub fn operation(self) -> &'static str {
        match self {
            Self::ChatCompletions => "chat",
            Self::Embeddings => "embeddings",
        }
    }
}

/// Whether a provider kind can serve an endpoint.
pub fn supports(kind: ProviderKind, _endpoint: Endpoint) -> bool {
    matches!(
        kind,
        ProviderKind::Openai | ProviderKind::OpenaiCompatible | ProviderKind::Azure
    )
}
