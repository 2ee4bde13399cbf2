//! Caller authentication: credential extraction, BLAKE3 lookup, JWTs of configured
//! issuers ([`jwt`]), client certificates, expiry and disabled keys. Every failure is the
//! same 401, so a caller cannot tell an unknown key from a revoked one or a forged token.

pub mod jwks;
pub mod jwt;
pub mod keys;
mod mcp_access;

pub use keys::{hash_key, ApiKeyEntry, KeyIndex, OwnerNamespace};
pub use mcp_access::McpAccess;

use std::sync::Arc;

use chrono::Utc;
use http::header::{HeaderName, AUTHORIZATION};
use http::HeaderMap;

use crate::error::GwError;
use crate::limit::Cells;
use crate::metrics::Metrics;
use crate::tls::ClientIdentity;

pub const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
pub const API_KEY: HeaderName = HeaderName::from_static("api-key");
pub const X_GOOG_API_KEY: HeaderName = HeaderName::from_static("x-goog-api-key");

/// The key the caller presented: `Authorization: Bearer KEY` (OpenAI SDKs),
/// `x-api-key: KEY` (Anthropic SDKs), `api-key: KEY` (Azure SDKs) or
/// `x-goog-api-key: KEY` (Google's SDKs), in that order.
pub fn presented_key(headers: &HeaderMap) -> Option<&[u8]> {
    if let Some(v) = headers.get(AUTHORIZATION) {
        let v = v.as_bytes();
        let (scheme, rest) = v.split_at(v.len().min(7));
        if scheme.eq_ignore_ascii_case(b"bearer ") {
            let key = rest.trim_ascii();
            return (!key.is_empty()).then_some(key);
        }
    }
    [X_API_KEY, API_KEY, X_GOOG_API_KEY]
        .iter()
        .filter_map(|h| headers.get(h))
        .map(|v| v.as_bytes().trim_ascii())
        .find(|k| !k.is_empty())
}

/// The subprotocol a browser's realtime client offers its key in (it cannot set headers
/// on a WebSocket): `Sec-WebSocket-Protocol: realtime, openai-insecure-api-key.KEY`.
pub const KEY_SUBPROTOCOL: &str = "openai-insecure-api-key.";

/// A caller key offered as a WebSocket subprotocol in `Sec-WebSocket-Protocol`, and
/// that header's value without it (the other subprotocols; `None`: none left). The
/// caller (`proxy::request`) puts the rest back, so that nothing after admission (the
/// answer's echo of a subprotocol, the access log, spans, the provider) can see the key.
/// The key is the part after [`KEY_SUBPROTOCOL`] (a token: no percent-decoding).
pub fn subprotocol_key(headers: &HeaderMap) -> Option<(Vec<u8>, Option<http::HeaderValue>)> {
    let mut key = None;
    let mut kept: Vec<&[u8]> = Vec::new();
    for value in headers.get_all(http::header::SEC_WEBSOCKET_PROTOCOL) {
        for p in value.as_bytes().split(|b| *b == b',').map(<[u8]>::trim_ascii) {
            match p.strip_prefix(KEY_SUBPROTOCOL.as_bytes()) {
                Some(k) => {
                    key.get_or_insert_with(|| k.to_vec());
                }
                None if !p.is_empty() => kept.push(p),
                None => {}
            }
        }
    }
    let rest = kept.join(&b", "[..]);
    let rest = (!rest.is_empty())
        .then(|| http::HeaderValue::from_bytes(&rest).ok())
        .flatten();
    key.map(|k| (k, rest))
}

/// The caller: by the key it presented (a static key, else a JWT of a configured
/// issuer), else by the verified client certificate of its connection
/// (`tls::ClientIdentity`). A presented credential decides alone, so a service with a
/// certificate can still act as another caller by sending that caller's key.
/// `query_key` is the `?key=` of a Gemini-format request (Google's REST convention),
/// already percent-decoded; a key in a header wins over it.
pub async fn authenticate(
    keys: &KeyIndex,
    issuers: &jwt::Issuers,
    cells: &Cells,
    metrics: &Arc<Metrics>,
    headers: &HeaderMap,
    query_key: Option<&[u8]>,
    client: Option<&ClientIdentity>,
) -> Result<Arc<ApiKeyEntry>, GwError> {
    let presented = presented_key(headers).or(query_key.filter(|k| !k.is_empty()));
    let entry = match (presented, client) {
        (Some(presented), _) => match keys.lookup(presented) {
            Some(e) => e.clone(),
            None if !issuers.is_empty() && jwt::looks_like_jwt(presented) => {
                // `looks_like_jwt` admits ASCII only.
                let token = std::str::from_utf8(presented).map_err(|_| GwError::InvalidApiKey)?;
                return issuers
                    .authenticate(token, cells, metrics)
                    .await
                    .map_err(|_| GwError::InvalidApiKey);
            }
            None => return Err(GwError::InvalidApiKey),
        },
        (None, Some(id)) => keys.lookup_cert(id).ok_or(GwError::InvalidApiKey)?.clone(),
        (None, None) => return Err(GwError::InvalidApiKey),
    };
    if !entry.is_active(Utc::now()) {
        return Err(GwError::InvalidApiKey);
    }
    Ok(entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn takes_the_key_subprotocol_out_and_keeps_the_others() {
        let mut h = HeaderMap::new();
        h.append(
            "sec-websocket-protocol",
            "realtime, openai-insecure-api-key.sk-9".parse().unwrap(),
        );
        h.append("sec-websocket-protocol", "openai-beta.realtime-v1".parse().unwrap());
        let (key, rest) = subprotocol_key(&h).unwrap();
        assert_eq!(key, b"sk-9");
        assert_eq!(rest.unwrap(), "realtime, openai-beta.realtime-v1");
        let only = headers(&[("sec-websocket-protocol", "openai-insecure-api-key.sk-1")]);
        assert_eq!(subprotocol_key(&only), Some((b"sk-1".to_vec(), None)));
        assert_eq!(
            subprotocol_key(&headers(&[("sec-websocket-protocol", "realtime")])),
            None
        );
    }

    #[test]
    fn extracts_each_header_form() {
        assert_eq!(
            presented_key(&headers(&[("authorization", "Bearer sk-1")])),
            Some(&b"sk-1"[..])
        );
        assert_eq!(
            presented_key(&headers(&[("authorization", "bearer  sk-1 ")])),
            Some(&b"sk-1"[..])
        );
        assert_eq!(presented_key(&headers(&[("x-api-key", "sk-2")])), Some(&b"sk-2"[..]));
        assert_eq!(presented_key(&headers(&[("api-key", "sk-3")])), Some(&b"sk-3"[..]));
        assert_eq!(
            presented_key(&headers(&[("x-goog-api-key", "sk-4")])),
            Some(&b"sk-4"[..])
        );
        assert_eq!(presented_key(&headers(&[("authorization", "Basic abc")])), None);
        assert_eq!(presented_key(&headers(&[("authorization", "Bearer ")])), None);
        assert_eq!(presented_key(&headers(&[])), None);
    }
}
