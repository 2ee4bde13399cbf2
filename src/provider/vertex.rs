//! Google Vertex AI: the `vertex` provider. Gemini models speak Gemini's wire format
//! (`publishers/google/models/{model}:generateContent`, `:streamGenerateContent?alt=sse`)
//! and Claude models Anthropic's (`publishers/anthropic/models/{model}:rawPredict`,
//! `:streamRawPredict`, with `anthropic_version` in the body and no `model`), so both
//! reuse the translations of `gemini.rs` and `anthropic.rs`; this file adds the URL and
//! the credential.
//!
//! The credential is an OAuth2 access token obtained with the service account's key
//! (RFC 7523: a JWT assertion signed RS256, exchanged at the key's `token_uri`). One token
//! per service account serves every request and survives config reloads; the refresher
//! renews it [`AHEAD`] of its expiry, off the request path. A request finds a token ready
//! except the very first (or after a long outage), which waits for the one fetch in
//! flight. When a renewal fails, the old token keeps serving until it expires.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use percent_encoding::utf8_percent_encode;
use pingora::http::RequestHeader;
use serde::{Deserialize, Serialize};

use super::UNRESERVED;
use super::{Provider, Target};
use crate::api::{Endpoint, Wire};
use crate::error::GwError;
use crate::raw::VertexSettings;

/// `anthropic_version` of a Claude request on Vertex AI (in the body, not a header).
pub const ANTHROPIC_VERSION: &str = "vertex-2023-10-16";
/// What the access token may do: Vertex AI is under cloud-platform.
const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// Google's token endpoint, for a key file that names none.
const TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
/// A token this close to its expiry is not handed to a request (it could expire in
/// flight): the request fetches a new one instead.
const MARGIN: Duration = Duration::from_secs(60);
/// The refresher renews a token this long before it expires.
pub const AHEAD: Duration = Duration::from_secs(300);
/// The longest wait for the token endpoint.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// After a failed fetch, requests fail at once for this long instead of each asking a
/// token endpoint that is down.
const BACKOFF: Duration = Duration::from_secs(1);
/// The largest token endpoint answer read.
const MAX_ANSWER: usize = 64 * 1024;
/// Longest lifetime asked for and believed (Google's is one hour).
const LIFETIME: u64 = 3600;

/// The wire format of a model on Vertex AI: Anthropic's for Claude, Gemini's otherwise.
pub fn wire(model: &str) -> Wire {
    if model.starts_with("claude") {
        Wire::Anthropic
    } else {
        Wire::Gemini
    }
}

/// A `vertex` provider's project, location and credential.
#[derive(Debug)]
pub struct Vertex {
    pub project: String,
    pub location: String,
    pub tokens: Arc<Tokens>,
}

/// Checks the section and reads the key file now, so a bad file fails the config load,
/// not the first request. Each problem goes to `error` with its field; `None` after any.
pub fn compile(v: &VertexSettings, error: &mut dyn FnMut(&str, &str)) -> Option<Vertex> {
    let valid = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    let mut ok = true;
    if !valid(&v.project) {
        error("project", "must be a project id (letters, digits, -)");
        ok = false;
    }
    if !valid(&v.location) {
        error("location", "must be a location such as us-east5 or global");
        ok = false;
    }
    let tokens = tokens_for(&v.credentials_file)
        .map_err(|e| error("credentials_file", &e))
        .ok()?;
    ok.then(|| Vertex {
        project: v.project.clone(),
        location: v.location.clone(),
        tokens,
    })
}

/// `https://{location}-aiplatform.googleapis.com`, or the global endpoint.
pub fn default_base_url(location: &str) -> String {
    if location == "global" {
        "https://aiplatform.googleapis.com".to_owned()
    } else {
        format!("https://{location}-aiplatform.googleapis.com")
    }
}

/// Path and query of the upstream request.
pub fn upstream_path(t: &Target, upstream: Endpoint, stream: bool) -> String {
    let p = &t.provider;
    let (project, location) = p
        .vertex
        .as_ref()
        .map_or(("", ""), |v| (v.project.as_str(), v.location.as_str()));
    let enc = |s: &str| utf8_percent_encode(s, UNRESERVED).to_string();
    let (publisher, method) = match (wire(&t.upstream_model), stream) {
        (Wire::Anthropic, false) => ("anthropic", "rawPredict"),
        (Wire::Anthropic, true) => ("anthropic", "streamRawPredict"),
        (_, _) if upstream == Endpoint::CountTokens => ("google", "countTokens"),
        (_, false) => ("google", "generateContent"),
        (_, true) => ("google", "streamGenerateContent?alt=sse"),
    };
    format!(
        "{}/v1/projects/{}/locations/{}/publishers/{publisher}/models/{}:{method}",
        p.base.path,
        enc(project),
        enc(location),
        // Claude ids carry their date after `@`, which Google's clients send as it is.
        enc(&t.upstream_model).replace("%40", "@"),
    )
}

/// The access token of this attempt, and the provider's extra headers.
pub fn apply_credentials(p: &Provider, token: Option<&str>, req: &mut RequestHeader) -> pingora::Result<()> {
    for (name, value) in &p.headers {
        req.insert_header(name.clone(), value.clone())?;
    }
    let Some(token) = token else {
        return Err(pingora::Error::explain(
            pingora::ErrorType::InternalError,
            "no Vertex AI access token",
        ));
    };
    let mut value = http::HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| pingora::Error::explain(pingora::ErrorType::InternalError, "bad access token"))?;
    value.set_sensitive(true);
    req.insert_header(http::header::AUTHORIZATION, value)
}

/// A Messages body as Claude on Vertex AI takes it: the model is in the path (a `model`
/// field is refused), the API version in the body.
pub fn anthropic_body(body: &[u8]) -> Result<Bytes, GwError> {
    let mut v: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(body).map_err(|e| GwError::InvalidJson(e.to_string()))?;
    v.remove("model");
    v.insert("anthropic_version".into(), ANTHROPIC_VERSION.into());
    serde_json::to_vec(&v).map(Bytes::from).map_err(|_| GwError::Internal)
}

/// The fields of a service account key file (`gcloud iam service-accounts keys create`).
#[derive(Deserialize)]
struct KeyFile {
    #[serde(rename = "type")]
    kind: String,
    client_email: String,
    private_key: String,
    private_key_id: Option<String>,
    token_uri: Option<String>,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    expires_in: Option<u64>,
}

#[derive(Deserialize, Default)]
struct TokenError {
    error: Option<String>,
    error_description: Option<String>,
}

struct Token {
    value: Arc<str>,
    expires: Instant,
}

#[derive(Default)]
struct State {
    token: Option<Token>,
    /// No fetch for requests before this, after a failure.
    retry_at: Option<Instant>,
    last_error: Option<String>,
}

/// The access tokens of one service account.
pub struct Tokens {
    email: String,
    key_id: Option<String>,
    key: EncodingKey,
    token_uri: String,
    state: Mutex<State>,
    /// One fetch at a time; a request that finds none ready waits for it.
    fetching: tokio::sync::Mutex<()>,
    http: reqwest::Client,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("email", &self.email)
            .field("token_uri", &self.token_uri)
            .finish_non_exhaustive()
    }
}

/// Every service account in use, by key file contents: a reload that keeps the file keeps
/// its token, and the refresher finds them all here.
static ACCOUNTS: LazyLock<Mutex<HashMap<[u8; 32], Weak<Tokens>>>> = LazyLock::new(Default::default);

/// The token source of the service account in `file` (read and checked now, so that a
/// bad key is a config error, not a failure of the first request).
pub fn tokens_for(file: &str) -> Result<Arc<Tokens>, String> {
    let text = std::fs::read(file).map_err(|e| format!("cannot read '{file}': {e}"))?;
    let id = *blake3::hash(&text).as_bytes();
    let mut accounts = ACCOUNTS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(t) = accounts.get(&id).and_then(Weak::upgrade) {
        return Ok(t);
    }
    // Never quote the file: it holds the private key.
    let k: KeyFile = serde_json::from_slice(&text).map_err(|e| {
        format!(
            "'{file}' is not a service account key file (line {}, column {})",
            e.line(),
            e.column()
        )
    })?;
    if k.kind != "service_account" {
        return Err(format!(
            "'{file}' is a '{}' credential, not a service_account key",
            k.kind
        ));
    }
    let key = EncodingKey::from_rsa_pem(k.private_key.as_bytes())
        .map_err(|_| format!("'{file}': private_key is not an RSA private key in PEM"))?;
    let http = crate::outbound::client(FETCH_TIMEOUT)?;
    let t = Arc::new(Tokens {
        email: k.client_email,
        key_id: k.private_key_id,
        key,
        token_uri: k.token_uri.unwrap_or_else(|| TOKEN_URI.to_owned()),
        state: Mutex::default(),
        fetching: tokio::sync::Mutex::new(()),
        http,
    });
    accounts.retain(|_, w| w.strong_count() > 0);
    accounts.insert(id, Arc::downgrade(&t));
    Ok(t)
}

/// Renews every live token that expires within [`AHEAD`] (called every second).
pub async fn refresh_due() {
    let live: Vec<Arc<Tokens>> = ACCOUNTS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .filter_map(Weak::upgrade)
        .collect();
    for t in live {
        t.refresh_if_due().await;
    }
}

impl Tokens {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current token when it is valid for at least `margin` more.
    fn valid_for(&self, margin: Duration) -> Option<Arc<str>> {
        let s = self.state();
        let t = s.token.as_ref()?;
        (t.expires.saturating_duration_since(Instant::now()) > margin).then(|| t.value.clone())
    }

    /// A token for a request: the current one, or a fetch (one at a time). The error
    /// says why none could be had, without any credential.
    pub async fn get(&self) -> Result<Arc<str>, String> {
        if let Some(t) = self.valid_for(MARGIN) {
            return Ok(t);
        }
        let _one = self.fetching.lock().await;
        if let Some(t) = self.valid_for(MARGIN) {
            return Ok(t);
        }
        {
            let s = self.state();
            if s.retry_at.is_some_and(|at| Instant::now() < at) {
                let why = s.last_error.clone().unwrap_or_default();
                drop(s);
                // The old token, while it lasts, rather than nothing.
                return self.valid_for(Duration::ZERO).ok_or(why);
            }
        }
        match self.renew().await {
            Ok(t) => Ok(t),
            Err(e) => self.valid_for(Duration::ZERO).ok_or(e),
        }
    }

    async fn refresh_if_due(&self) {
        let due = {
            let s = self.state();
            s.token
                .as_ref()
                .is_some_and(|t| t.expires.saturating_duration_since(Instant::now()) <= AHEAD)
                && s.retry_at.is_none_or(|at| Instant::now() >= at)
        };
        let Ok(_one) = self.fetching.try_lock() else { return };
        if due {
            // A failure is logged by `renew`; the current token serves until it expires.
            let _ = self.renew().await;
        }
    }

    /// Fetches a token and keeps it; on failure, starts the back-off and logs why (so at
    /// most once per back-off, however many requests are refused meanwhile).
    async fn renew(&self) -> Result<Arc<str>, String> {
        match self.fetch().await {
            Ok((value, lifetime)) => {
                let mut s = self.state();
                s.token = Some(Token {
                    value: value.clone(),
                    expires: Instant::now() + lifetime,
                });
                s.retry_at = None;
                s.last_error = None;
                Ok(value)
            }
            Err(e) => {
                tracing::warn!(account = %self.email, "no Vertex AI access token: {e}");
                let mut s = self.state();
                s.retry_at = Some(Instant::now() + BACKOFF);
                s.last_error = Some(e.clone());
                Err(e)
            }
        }
    }

    async fn fetch(&self) -> Result<(Arc<str>, Duration), String> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let claims = Claims {
            iss: &self.email,
            scope: SCOPE,
            aud: &self.token_uri,
            iat: now,
            exp: now + LIFETIME,
        };
        let mut header = Header::new(Algorithm::RS256);
        header.kid = self.key_id.clone();
        let assertion = jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| format!("cannot sign the token request: {e}"))?;
        let resp = self
            .http
            .post(&self.token_uri)
            .form(&[("grant_type", GRANT_TYPE), ("assertion", assertion.as_str())])
            .send()
            .await
            .map_err(|e| format!("token endpoint {} unreachable: {}", self.token_uri, e.without_url()))?;
        // Read as it arrives, up to a bound: a token answer is a few hundred bytes.
        let what = format!("token endpoint {}", self.token_uri);
        let (status, body) = crate::outbound::read_capped(resp, MAX_ANSWER, &what).await?;
        if !status.is_success() {
            let e: TokenError = serde_json::from_slice(&body).unwrap_or_default();
            let why = format!(
                "token endpoint {} answered {}: {} {}",
                self.token_uri,
                status.as_u16(),
                e.error.unwrap_or_default(),
                e.error_description.unwrap_or_default()
            );
            return Err(shorten(why, 300));
        }
        let a: TokenAnswer = serde_json::from_slice(&body)
            .map_err(|_| format!("token endpoint {} answered without an access_token", self.token_uri))?;
        if a.access_token.is_empty() {
            return Err(format!(
                "token endpoint {} answered an empty access_token",
                self.token_uri
            ));
        }
        let lifetime = Duration::from_secs(a.expires_in.unwrap_or(LIFETIME).min(LIFETIME));
        Ok((a.access_token.into(), lifetime))
    }
}

/// `s` cut to at most `max` bytes at a character boundary, without trailing space: the
/// token endpoint's text is the provider's, and may be anything.
fn shorten(mut s: String, max: usize) -> String {
    let mut end = s.trim_end().len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_error_is_shortened_at_a_character_boundary() {
        // Byte 300 falls inside a two-byte character: String::truncate would panic there.
        let why = format!("{}{}", "a".repeat(299), "é".repeat(10));
        let short = shorten(why, 300);
        assert_eq!(short.len(), 299);
        assert_eq!(shorten("ok   ".to_owned(), 300), "ok");
    }

    #[test]
    fn claude_models_speak_anthropic_others_gemini() {
        assert_eq!(wire("claude-sonnet-4@20250514"), Wire::Anthropic);
        assert_eq!(wire("gemini-2.5-pro"), Wire::Gemini);
    }

    #[test]
    fn anthropic_body_drops_model_and_names_the_vertex_version() {
        let b = anthropic_body(br#"{"model":"claude-x","max_tokens":5,"messages":[]}"#).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert!(v.get("model").is_none());
        assert_eq!(v["anthropic_version"], ANTHROPIC_VERSION);
        assert_eq!(v["max_tokens"], 5);
    }

    #[test]
    fn a_bad_key_file_is_named_without_its_contents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.json");
        std::fs::write(
            &path,
            r#"{"type":"service_account","client_email":"a@b","private_key":"SECRET-MATERIAL"}"#,
        )
        .unwrap();
        let e = tokens_for(path.to_str().unwrap()).unwrap_err();
        assert!(e.contains("not an RSA private key"), "{e}");
        assert!(!e.contains("SECRET-MATERIAL"));
        std::fs::write(
            &path,
            r#"{"type":"authorized_user","client_email":"a@b","private_key":""}"#,
        )
        .unwrap();
        assert!(tokens_for(path.to_str().unwrap())
            .unwrap_err()
            .contains("authorized_user"));
    }
}
