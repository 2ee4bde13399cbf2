//! OpenAI-style providers: `openai`, `openai_compatible` (vLLM, llama.cpp, Ollama, ...) and
//! `azure` (deployment URLs, `api-version`, `api-key` header). The body is the caller's,
//! with only `model` rewritten (see `body.rs`).

use percent_encoding::utf8_percent_encode;
use pingora::http::RequestHeader;

use super::Provider;
use super::UNRESERVED;
use crate::api::Endpoint;
use crate::provider::ErrorClass;
use crate::raw::ProviderKind;
use serde_json::Value;

/// Path and query of the upstream request.
pub fn upstream_path(p: &Provider, endpoint: Endpoint, upstream_model: &str) -> String {
    let base = p.base.path.as_str();
    match p.kind {
        ProviderKind::Azure => {
            let (prefix, version) = azure_prefix(p);
            // Realtime names the deployment in the query, not the path.
            if endpoint == Endpoint::Realtime {
                return format!(
                    "{prefix}/realtime?api-version={version}&deployment={}",
                    utf8_percent_encode(upstream_model, UNRESERVED)
                );
            }
            // The Responses API is not per deployment: the deployment is the body's model.
            if endpoint == Endpoint::Responses {
                return format!("{prefix}/responses?api-version={version}");
            }
            format!(
                "{prefix}/deployments/{}{}?api-version={}",
                utf8_percent_encode(upstream_model, UNRESERVED),
                endpoint.suffix(),
                version,
            )
        }
        // Realtime names the model in the query: the WebSocket's request has no body.
        _ if endpoint == Endpoint::Realtime => {
            format!(
                "{base}/realtime?model={}",
                utf8_percent_encode(upstream_model, UNRESERVED)
            )
        }
        _ => format!("{base}{}", endpoint.suffix()),
    }
}

/// Azure's path prefix and `api-version`: its SDKs take the resource endpoint, and the
/// API lives under `/openai`.
fn azure_prefix(p: &Provider) -> (String, String) {
    let base = p.base.path.as_str();
    let prefix = if base.ends_with("/openai") {
        base.to_owned()
    } else {
        format!("{base}/openai")
    };
    let version = utf8_percent_encode(p.api_version.as_deref().unwrap_or_default(), UNRESERVED).to_string();
    (prefix, version)
}

/// The URL of a resource of the provider's API that is not per model (`/files`,
/// `/batches`): each segment percent-encoded (provider ids included), Azure's under
/// `/openai` with its `api-version`.
pub fn resource_url(p: &Provider, segments: &[&str]) -> String {
    let scheme = if p.base.tls { "https" } else { "http" };
    let base = p.base.path.as_str();
    let path: String = segments
        .iter()
        .map(|s| format!("/{}", utf8_percent_encode(s, UNRESERVED)))
        .collect();
    match p.kind {
        ProviderKind::Azure => {
            let (prefix, version) = azure_prefix(p);
            format!("{scheme}://{}{prefix}{path}?api-version={version}", p.base.authority)
        }
        _ => format!("{scheme}://{}{base}{path}", p.base.authority),
    }
}

/// The header that carries the provider's credential, when it has one.
pub fn credential(p: &Provider) -> Option<(&'static str, String)> {
    let key = p.api_key.as_ref()?;
    Some(match p.kind {
        ProviderKind::Azure => ("api-key", key.expose().to_owned()),
        _ => ("authorization", format!("Bearer {}", key.expose())),
    })
}

/// Puts the provider's credential and extra headers on the upstream request. The caller's
/// own credential headers were removed before this runs.
pub fn apply_credentials(p: &Provider, req: &mut RequestHeader) -> pingora::Result<()> {
    for (name, value) in &p.headers {
        req.insert_header(name.clone(), value.clone())?;
    }
    if let Some((name, value)) = credential(p) {
        req.insert_header(name, value)?;
    }
    Ok(())
}

/// The class of an OpenAI-style error: OpenAI's `code` (`context_length_exceeded`;
/// `content_filter` and `content_policy_violation`, Azure's content filter with its
/// `ResponsibleAIPolicyViolation` inner error), or the message OpenAI-compatible servers
/// write (vLLM: "This model's maximum context length is ..."). OpenAI's 429 for one
/// request larger than the account's tokens per minute says "Request too large for
/// gpt-4o ... on tokens per min (TPM): Limit 30000, Requested 36278" (its `code` is the
/// `rate_limit_exceeded` of every 429, so the message tells it apart).
pub fn error_class(v: &Value, message: &str) -> Option<ErrorClass> {
    let e = &v["error"];
    let code = e["code"].as_str().unwrap_or_default();
    let inner = e["innererror"]["code"].as_str().unwrap_or_default();
    if code == "context_length_exceeded" || message.contains("maximum context length") {
        Some(ErrorClass::ContextLengthExceeded)
    } else if matches!(code, "content_filter" | "content_policy_violation") || inner == "ResponsibleAIPolicyViolation" {
        Some(ErrorClass::ContentFilter)
    } else if message.starts_with("request too large") {
        Some(ErrorClass::RequestTooLarge)
    } else {
        None
    }
}
