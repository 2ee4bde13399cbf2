//! The mock's Google side: an OAuth2 token endpoint that verifies a service account's
//! JWT assertion (RFC 7523) with the account's public key and issues short-lived access
//! tokens, and the check of those tokens on Vertex AI's paths.
//!
//! The token URI may carry `?expires_in=N` (the lifetime issued, default 3600), `?fail=1`
//! (answer `invalid_grant`; `?fail=TEXT`: with TEXT as its description) and `?huge=1` (a
//! 1 MiB answer), so a test's key file scripts the endpoint.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::{HeaderMap, Response, StatusCode};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::json;

use super::{full, Body};

const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

pub struct Google {
    key: DecodingKey,
    /// Issued tokens and when each expires.
    tokens: Mutex<HashMap<String, Instant>>,
    issued: AtomicU64,
}

#[derive(Deserialize)]
struct Claims {
    iss: String,
    scope: String,
    aud: String,
    iat: u64,
    exp: u64,
}

impl Google {
    pub fn new(public_pem: &[u8]) -> Result<Self, String> {
        Ok(Self {
            key: DecodingKey::from_rsa_pem(public_pem).map_err(|e| format!("--google-public-key: {e}"))?,
            tokens: Mutex::default(),
            issued: AtomicU64::new(0),
        })
    }

    pub fn issued(&self) -> u64 {
        self.issued.load(Ordering::Relaxed)
    }

    /// `POST /token`: `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=...`.
    pub fn token(&self, query: Option<&str>, body: &[u8]) -> Response<Body> {
        let param = |s: Option<&str>, name: &str| -> Option<String> {
            url_form(s?.as_bytes())
                .into_iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v)
        };
        if let Some(why) = param(query, "fail") {
            // `fail=1`, or the description to answer with (a hostile endpoint's words).
            let why = if why == "1" {
                "Invalid JWT Signature."
            } else {
                why.as_str()
            };
            return grant_error("invalid_grant", why);
        }
        // An endpoint that answers without end (a wrong token_uri, a hostile server).
        if param(query, "huge").is_some() {
            let padding = " ".repeat(1 << 20);
            return full(
                StatusCode::OK,
                &json!({"padding": padding, "access_token": "never-read"}),
            );
        }
        let form = std::str::from_utf8(body).ok();
        if param(form, "grant_type").as_deref() != Some("urn:ietf:params:oauth:grant-type:jwt-bearer") {
            return grant_error("unsupported_grant_type", "Invalid grant_type.");
        }
        let Some(assertion) = param(form, "assertion") else {
            return grant_error("invalid_request", "Missing required parameter: assertion");
        };
        let mut v = Validation::new(Algorithm::RS256);
        v.validate_aud = false;
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        let claims = match jsonwebtoken::decode::<Claims>(&assertion, &self.key, &v) {
            Ok(d) => d.claims,
            Err(_) => return grant_error("invalid_grant", "Invalid JWT Signature."),
        };
        if claims.scope != SCOPE || !claims.aud.contains("/token") || claims.iss.is_empty() {
            return grant_error("invalid_scope", "Invalid OAuth scope or ID token audience provided.");
        }
        if claims.exp.saturating_sub(claims.iat) > 3600 {
            return grant_error(
                "invalid_grant",
                "Invalid JWT: Token must be a short-lived token (60 minutes)",
            );
        }
        let lifetime = param(query, "expires_in")
            .and_then(|s| s.parse().ok())
            .unwrap_or(3600u64);
        let n = self.issued.fetch_add(1, Ordering::Relaxed);
        let token = format!("ya29.mock-{n}-{}", uuid::Uuid::new_v4().simple());
        if let Ok(mut t) = self.tokens.lock() {
            t.insert(token.clone(), Instant::now() + Duration::from_secs(lifetime));
        }
        full(
            StatusCode::OK,
            &json!({"access_token": token, "expires_in": lifetime, "token_type": "Bearer"}),
        )
    }

    /// A Vertex AI request's `Authorization: Bearer` must be a token issued here and
    /// still valid; otherwise this is Google's 401 to answer.
    pub fn refusal(&self, headers: &HeaderMap) -> Option<Response<Body>> {
        let token = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let valid = token.is_some_and(|t| {
            self.tokens
                .lock()
                .map(|m| m.get(t).is_some_and(|exp| Instant::now() < *exp))
                .unwrap_or(false)
        });
        if valid {
            return None;
        }
        Some(full(
            StatusCode::UNAUTHORIZED,
            &json!({"error": {"code": 401, "message": "Request had invalid authentication credentials.", "status": "UNAUTHENTICATED"}}),
        ))
    }
}

fn grant_error(error: &str, description: &str) -> Response<Body> {
    full(
        StatusCode::BAD_REQUEST,
        &json!({"error": error, "error_description": description}),
    )
}

/// `application/x-www-form-urlencoded` pairs.
fn url_form(s: &[u8]) -> Vec<(String, String)> {
    let decode = |v: &str| {
        percent_encoding::percent_decode_str(&v.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    };
    std::str::from_utf8(s)
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}
