//! The one error type of the data plane, and the only code that writes error responses.
//!
//! Every variant knows its HTTP status, its machine-readable `code` and its message; the
//! envelope (OpenAI's, Anthropic's or Google's) is chosen by the endpoint the caller used.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use serde_json::json;

use crate::api::Dialect;

#[derive(Debug, Clone, thiserror::Error)]
pub enum GwError {
    #[error("{0}")]
    InvalidJson(String),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("Invalid API key. Provide a valid key as 'Authorization: Bearer <key>', 'x-api-key', 'api-key' or 'x-goog-api-key'.")]
    InvalidApiKey,
    #[error("This API key is not allowed to use the model '{0}'.")]
    ModelNotAllowed(String),
    #[error("The model '{0}' does not exist.")]
    ModelNotFound(String),
    #[error("Unknown path: {0}")]
    NotFound(String),
    /// A file or batch id that is not the caller's owner's (or not at all).
    #[error("No such object: '{0}'.")]
    NoSuchObject(String),
    /// The store of file and batch ids (Redis) cannot answer.
    #[error("The gateway's file and batch store is unavailable; retry shortly.")]
    StoreUnavailable,
    #[error("Method {method} is not allowed on {path}; use {allow}.")]
    MethodNotAllowed {
        method: String,
        path: String,
        allow: &'static str,
    },
    #[error("Request body is larger than the limit of {limit} bytes.")]
    RequestTooLarge { limit: u64 },
    #[error("{}", .0.message)]
    RateLimited(Box<RateLimited>),
    /// The owner's budget for the period is spent.
    #[error("The budget '{budget}' of this key's owner is spent for the current period.")]
    BudgetExceeded {
        budget: String,
        /// Seconds until the period rolls over (none for a `total` budget).
        retry_after: Option<u64>,
    },
    /// A guardrail blocked; the message names it and never the matched text.
    #[error("The {} was blocked by the guardrail '{guardrail}'.", if *.response { "response" } else { "request" })]
    ContentFilter { guardrail: String, response: bool },
    /// A guardrail service that fails closed gave no verdict (timeout, error, malformed
    /// answer); the message names the guardrail, never the service's address or answer.
    #[error("The guardrail '{0}' could not check this request; retry shortly.")]
    GuardrailUnavailable(String),
    #[error("{0}")]
    UpstreamError(String),
    #[error("{message}")]
    NoHealthyTarget {
        message: String,
        /// Seconds until the soonest target recovers.
        retry_after: Option<u64>,
    },
    #[error("The provider did not answer in time.")]
    UpstreamTimeout,
    #[error("Internal gateway error.")]
    Internal,
}

/// A 429 from a rate limit policy, as `limit` words it: what the caller is told.
#[derive(Debug, Clone)]
pub struct RateLimited {
    pub message: String,
    /// The OpenAI envelope's `type`: `requests` or `tokens`, as OpenAI's own 429s.
    pub openai_type: &'static str,
    pub retry_after_s: u64,
    /// The `x-ratelimit-*` headers of the tightest rules, names and values.
    pub headers: Vec<(&'static str, String)>,
}

impl GwError {
    pub fn status(&self) -> u16 {
        match self {
            Self::InvalidJson(_) | Self::InvalidRequest(_) | Self::ContentFilter { .. } => 400,
            Self::InvalidApiKey => 401,
            Self::ModelNotAllowed(_) => 403,
            Self::ModelNotFound(_) | Self::NotFound(_) | Self::NoSuchObject(_) => 404,
            Self::MethodNotAllowed { .. } => 405,
            Self::RequestTooLarge { .. } => 413,
            Self::RateLimited(_) | Self::BudgetExceeded { .. } => 429,
            Self::UpstreamError(_) => 502,
            Self::NoHealthyTarget { .. } | Self::StoreUnavailable | Self::GuardrailUnavailable(_) => 503,
            Self::UpstreamTimeout => 504,
            Self::Internal => 500,
        }
    }

    /// The `code` field of the OpenAI envelope (SPEC §3 error table).
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidJson(_) => "invalid_json",
            Self::InvalidRequest(_) => "invalid_request",
            Self::InvalidApiKey => "invalid_api_key",
            Self::ModelNotAllowed(_) => "model_not_allowed",
            Self::ModelNotFound(_) => "model_not_found",
            Self::NotFound(_) | Self::NoSuchObject(_) => "not_found",
            Self::StoreUnavailable => "store_unavailable",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::RequestTooLarge { .. } => "request_too_large",
            Self::RateLimited(_) => "rate_limit_exceeded",
            Self::BudgetExceeded { .. } => "budget_exceeded",
            Self::ContentFilter { .. } => "content_filter",
            Self::GuardrailUnavailable(_) => "guardrail_unavailable",
            Self::UpstreamError(_) => "upstream_error",
            Self::NoHealthyTarget { .. } => "no_healthy_target",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::Internal => "internal_error",
        }
    }

    /// The `type` field of the OpenAI envelope, as OpenAI itself uses it.
    fn openai_type(&self) -> &'static str {
        if let Self::RateLimited(r) = self {
            // What OpenAI's own 429s say: "requests" or "tokens".
            return r.openai_type;
        }
        if let Self::BudgetExceeded { .. } = self {
            // What OpenAI says when an account's quota is spent.
            return "insufficient_quota";
        }
        match self.status() {
            401 => "authentication_error",
            403 => "permission_error",
            404 if matches!(self, Self::NotFound(_) | Self::NoSuchObject(_)) => "not_found_error",
            400..=499 => "invalid_request_error",
            _ => "api_error",
        }
    }

    /// The `error.type` of Anthropic's envelope.
    fn anthropic_type(&self) -> &'static str {
        match self.status() {
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            503 => "overloaded_error",
            400..=499 => "invalid_request_error",
            _ => "api_error",
        }
    }

    /// The `error.status` of Google's envelope: the canonical code name of the status.
    fn google_status(&self) -> &'static str {
        match self.status() {
            401 => "UNAUTHENTICATED",
            403 => "PERMISSION_DENIED",
            404 => "NOT_FOUND",
            405 => "UNIMPLEMENTED",
            429 => "RESOURCE_EXHAUSTED",
            400..=499 => "INVALID_ARGUMENT",
            503 | 502 => "UNAVAILABLE",
            504 => "DEADLINE_EXCEEDED",
            _ => "INTERNAL",
        }
    }

    /// Which request field the error is about, when there is one.
    fn param(&self) -> Option<&'static str> {
        match self {
            Self::ModelNotAllowed(_) | Self::ModelNotFound(_) => Some("model"),
            _ => None,
        }
    }

    pub fn body(&self, dialect: Dialect) -> Bytes {
        let v = match dialect {
            Dialect::OpenAi => json!({"error": {
                "message": self.to_string(),
                "type": self.openai_type(),
                "code": self.code(),
                "param": self.param(),
            }}),
            Dialect::Anthropic => json!({"type": "error", "error": {
                "type": self.anthropic_type(),
                "message": self.to_string(),
            }}),
            Dialect::Gemini => json!({"error": {
                "code": self.status(),
                "message": self.to_string(),
                "status": self.google_status(),
            }}),
        };
        Bytes::from(v.to_string())
    }

    /// The same error as a Realtime API `error` event, for a WebSocket session already
    /// open (OpenAI's shape: the envelope's `error` under `"type": "error"`).
    pub fn realtime_event(&self) -> String {
        json!({"type": "error", "event_id": format!("event_aigw_{}", self.code()), "error": {
            "message": self.to_string(),
            "type": self.openai_type(),
            "code": self.code(),
            "param": self.param(),
        }})
        .to_string()
    }

    /// The same error as one SSE event, for a stream whose header is already sent.
    pub fn sse_event(&self, dialect: Dialect) -> Bytes {
        let body = self.body(dialect);
        let mut out = Vec::with_capacity(body.len() + 24);
        if dialect == Dialect::Anthropic {
            out.extend_from_slice(b"event: error\n");
        }
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&body);
        out.extend_from_slice(b"\n\n");
        Bytes::from(out)
    }

    /// Writes the whole error response. `request_id` is echoed as `x-request-id`.
    pub async fn respond(&self, session: &mut Session, dialect: Dialect, request_id: &str) -> pingora::Result<()> {
        let body = self.body(dialect);
        let mut resp = ResponseHeader::build(self.status(), Some(12))?;
        resp.insert_header("content-type", "application/json")?;
        resp.insert_header("content-length", body.len().to_string())?;
        if !request_id.is_empty() {
            resp.insert_header(crate::api::X_REQUEST_ID, request_id)?;
        }
        if let Self::MethodNotAllowed { allow, .. } = self {
            resp.insert_header("allow", *allow)?;
        }
        if let Self::NoHealthyTarget {
            retry_after: Some(s), ..
        } = self
        {
            resp.insert_header("retry-after", s.to_string())?;
        }
        if let Self::BudgetExceeded {
            retry_after: Some(s), ..
        } = self
        {
            resp.insert_header("retry-after", s.to_string())?;
        }
        if let Self::RateLimited(r) = self {
            resp.insert_header("retry-after", r.retry_after_s.to_string())?;
            for (name, value) in &r.headers {
                resp.insert_header(*name, value.as_str())?;
            }
        }
        if self.status() == 401 {
            resp.insert_header("www-authenticate", "Bearer")?;
        }
        session.write_response_header(Box::new(resp), false).await?;
        session.write_response_body(Some(body), true).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_envelope_has_all_fields() {
        let e = GwError::ModelNotFound("nope".into());
        let v: serde_json::Value = serde_json::from_slice(&e.body(Dialect::OpenAi)).unwrap();
        assert_eq!(v["error"]["code"], "model_not_found");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["param"], "model");
        assert!(v["error"]["message"].as_str().unwrap().contains("nope"));
    }

    #[test]
    fn anthropic_envelope() {
        let e = GwError::InvalidApiKey;
        let v: serde_json::Value = serde_json::from_slice(&e.body(Dialect::Anthropic)).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "authentication_error");
    }

    #[test]
    fn google_envelope() {
        let e = GwError::ModelNotFound("nope".into());
        let v: serde_json::Value = serde_json::from_slice(&e.body(Dialect::Gemini)).unwrap();
        assert_eq!(v["error"]["code"], 404);
        assert_eq!(v["error"]["status"], "NOT_FOUND");
        assert!(v["error"]["message"].as_str().unwrap().contains("nope"));
        let v: serde_json::Value = serde_json::from_slice(&GwError::InvalidApiKey.body(Dialect::Gemini)).unwrap();
        assert_eq!(v["error"]["status"], "UNAUTHENTICATED");
        let ev = GwError::UpstreamTimeout.sse_event(Dialect::Gemini);
        assert!(ev.starts_with(b"data: {\"error\""));
    }

    #[test]
    fn sse_event_is_one_event() {
        let ev = GwError::UpstreamError("boom".into()).sse_event(Dialect::OpenAi);
        assert!(ev.starts_with(b"data: {"));
        assert!(ev.ends_with(b"\n\n"));
        assert_eq!(memchr::memmem::find_iter(&ev, b"\n\n").count(), 1);
    }
}
