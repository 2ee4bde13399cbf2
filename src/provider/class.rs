//! The kind of a provider's error, beyond its status: what failover decides on.

/// What a provider's error says went wrong, beyond its status: read from the error body
/// by each provider's adapter (`provider::error_class`), so a route can fail over on the
/// kind of error rather than its status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The request does not fit the model's context window: another model may take it.
    /// Moves on to the next target only when listed in `retry_on`.
    ContextLengthExceeded,
    /// The provider refused on its content policy. Final unless listed, even when its
    /// status is: a refusal must not route around a provider's policy unasked.
    ContentFilter,
    /// The request alone is larger than the provider allows (OpenAI's 429 "Request too
    /// large ... tokens per min", a payload over the size limit): the caller's problem,
    /// never the target's, so it never counts towards a cooldown. It moves on when its
    /// status or the class is listed.
    RequestTooLarge,
    /// The body was held to find its class and could not be read: longer than the bytes
    /// held, or not JSON. It may be a refusal, so it is final unless `content_filter` is
    /// listed; a 429 is never a refusal and follows its status. Not a name for `retry_on`.
    Unreadable,
}

impl ErrorClass {
    /// The classes `retry_on` takes.
    pub const NAMES: [&'static str; 3] = ["context_length_exceeded", "content_filter", "request_too_large"];

    /// The name `retry_on` takes (and logs show).
    pub fn name(self) -> &'static str {
        match self {
            Self::ContextLengthExceeded => Self::NAMES[0],
            Self::ContentFilter => Self::NAMES[1],
            Self::RequestTooLarge => Self::NAMES[2],
            Self::Unreadable => "unreadable",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "context_length_exceeded" => Some(Self::ContextLengthExceeded),
            "content_filter" => Some(Self::ContentFilter),
            "request_too_large" => Some(Self::RequestTooLarge),
            _ => None,
        }
    }
}
