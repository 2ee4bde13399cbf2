//! Caller authentication: credential extraction, BLAKE3 lookup, expiry and disabled keys.
//! Every failure is the same 401, so a caller cannot tell an unknown key from a revoked one.

use std::sync::Arc;

use chrono::Utc;
use http::header::{HeaderName, AUTHORIZATION};
use http::HeaderMap;

use crate::config::{ApiKeyEntry, KeyIndex};
use crate::error::GwError;

pub const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
pub const API_KEY: HeaderName = HeaderName::from_static("api-key");

/// The key the caller presented: `Authorization: Bearer KEY` (OpenAI SDKs),
/// `x-api-key: KEY` (Anthropic SDKs) or `api-key: KEY` (Azure SDKs), in that order.
pub fn presented_key(headers: &HeaderMap) -> Option<&[u8]> {
    if let Some(v) = headers.get(AUTHORIZATION) {
        let v = v.as_bytes();
        let (scheme, rest) = v.split_at(v.len().min(7));
        if scheme.eq_ignore_ascii_case(b"bearer ") {
            let key = rest.trim_ascii();
            return (!key.is_empty()).then_some(key);
        }
    }
    [X_API_KEY, API_KEY]
        .iter()
        .filter_map(|h| headers.get(h))
        .map(|v| v.as_bytes().trim_ascii())
        .find(|k| !k.is_empty())
}

pub fn authenticate(keys: &KeyIndex, headers: &HeaderMap) -> Result<Arc<ApiKeyEntry>, GwError> {
    let presented = presented_key(headers).ok_or(GwError::InvalidApiKey)?;
    let entry = keys.lookup(presented).ok_or(GwError::InvalidApiKey)?;
    if !entry.is_active(Utc::now()) {
        return Err(GwError::InvalidApiKey);
    }
    Ok(entry.clone())
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
        assert_eq!(presented_key(&headers(&[("authorization", "Basic abc")])), None);
        assert_eq!(presented_key(&headers(&[("authorization", "Bearer ")])), None);
        assert_eq!(presented_key(&headers(&[])), None);
    }
}
