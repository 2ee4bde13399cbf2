//! The mock's identity provider: OpenID Connect discovery at
//! `/idp/.well-known/openid-configuration` (issuer `http://{Host}/idp`) and the key set at
//! `/idp/jwks`, read from `--jwks-file` on every request, so a test rotates the
//! provider's keys by rewriting the file (or takes the provider down by removing it).
//! `/_mock/stats` counts the key set's fetches.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode};
use serde_json::json;

use super::{bytes_response, full, Body};

pub struct Idp {
    jwks_file: PathBuf,
    fetches: AtomicU64,
}

impl Idp {
    pub fn new(jwks_file: PathBuf) -> Self {
        Self {
            jwks_file,
            fetches: AtomicU64::new(0),
        }
    }

    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// `GET /idp/...`, or `None` when the path is not the provider's.
    pub fn answer(&self, path: &str, headers: &HeaderMap) -> Option<Response<Body>> {
        let host = headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("127.0.0.1");
        match path {
            "/idp/.well-known/openid-configuration" => Some(full(
                StatusCode::OK,
                &json!({
                    "issuer": format!("http://{host}/idp"),
                    "jwks_uri": format!("http://{host}/idp/jwks"),
                    "id_token_signing_alg_values_supported": ["RS256", "ES256", "EdDSA"],
                }),
            )),
            "/idp/jwks" => {
                self.fetches.fetch_add(1, Ordering::Relaxed);
                Some(match std::fs::read(&self.jwks_file) {
                    Ok(set) => bytes_response(StatusCode::OK, "application/json", Bytes::from(set)),
                    Err(_) => full(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &json!({"error": "key set unavailable"}),
                    ),
                })
            }
            _ => None,
        }
    }
}
