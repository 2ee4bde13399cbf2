//! The keys that verify callers' JWTs: a JSON Web Key Set (RFC 7517) read from a file,
//! fetched from a URL, or found through OpenID Connect discovery from the issuer.
//!
//! A remote set is fetched off the request path (every `refresh_s`, by the refresher's
//! tick), kept across config reloads (it is shared by everything that names the same
//! source), and its last good keys keep serving while the endpoint fails. A token whose
//! `kid` the set lacks may trigger one fetch, at most one per [`MIN_FETCH_INTERVAL`]
//! per set however many such tokens arrive: a flood of made-up `kid`s costs the issuer
//! nothing.

use std::collections::HashMap;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;

use crate::metrics::Metrics;
use crate::outbound::shown;

/// Fetches of one remote set are at least this far apart: the back-off after a failure,
/// and the bound on fetches an unknown `kid` triggers.
pub const MIN_FETCH_INTERVAL: Duration = Duration::from_secs(10);
/// One fetch (discovery document and key set each) ends within this.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// A key set larger than this is refused; real ones are a few KiB.
const MAX_SET_BYTES: usize = 1 << 20;
const MAX_DISCOVERY_BYTES: usize = 64 * 1024;
/// Keys kept of one set; a token names its key by `kid`, so lookups stay cheap.
const MAX_KEYS: usize = 64;

/// What can sign: the key's type and curve. A key only verifies the algorithms of its
/// family, so a token cannot pick an algorithm its key was not made for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl Family {
    fn signs(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            Family::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            Family::P256 => alg == ES256,
            Family::P384 => alg == ES384,
            Family::Ed25519 => alg == EdDSA,
        }
    }
}

/// The algorithms a token may use: public-key signatures only. HMAC would let anyone who
/// holds the (public) key set forge tokens.
pub fn accepted(alg: Algorithm) -> bool {
    [Family::Rsa, Family::P256, Family::P384, Family::Ed25519]
        .iter()
        .any(|f| f.signs(alg))
}

struct Key {
    kid: Option<String>,
    /// The `alg` the set declares for the key, when it does.
    alg: Option<Algorithm>,
    family: Family,
    key: DecodingKey,
}

/// The signing keys of one set.
pub struct KeySet {
    keys: Vec<Key>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.keys.iter().map(|k| &k.kid)).finish()
    }
}

impl KeySet {
    /// A JWKS document's signing keys. Keys this gateway cannot verify with (encryption
    /// keys, symmetric keys, other curves, malformed entries) are left out, so one odd key
    /// never hides the others; a set with none left is an error.
    pub fn parse(json: &[u8]) -> Result<KeySet, String> {
        #[derive(Deserialize)]
        struct Doc {
            keys: Vec<serde_json::Value>,
        }
        let doc: Doc =
            serde_json::from_slice(json).map_err(|_| "is not a JSON Web Key Set (an object with `keys`)".to_owned())?;
        let keys: Vec<Key> = doc.keys.into_iter().filter_map(key).take(MAX_KEYS).collect();
        if keys.is_empty() {
            return Err("has no signing key aigw can use (RSA, EC P-256 or P-384, or Ed25519)".into());
        }
        Ok(KeySet { keys })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key for a token's header: the one with its `kid` that signs `alg`; without a
    /// `kid`, the only key of the set that signs `alg`.
    pub fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<&DecodingKey> {
        let fits = |k: &&Key| k.family.signs(alg) && k.alg.is_none_or(|a| a == alg);
        match kid {
            Some(kid) => self.keys.iter().filter(fits).find(|k| k.kid.as_deref() == Some(kid)),
            None => {
                let mut candidates = self.keys.iter().filter(fits);
                candidates.next().filter(|_| candidates.next().is_none())
            }
        }
        .map(|k| &k.key)
    }
}

fn key(v: serde_json::Value) -> Option<Key> {
    let jwk: Jwk = serde_json::from_value(v).ok()?;
    if jwk
        .common
        .public_key_use
        .as_ref()
        .is_some_and(|u| *u != PublicKeyUse::Signature)
    {
        return None;
    }
    let family = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Family::Rsa,
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => Family::P256,
            EllipticCurve::P384 => Family::P384,
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => Family::Ed25519,
        AlgorithmParameters::OctetKeyPair(_) | AlgorithmParameters::OctetKey(_) => return None,
    };
    // A declared `alg` this gateway does not verify with (RSA-OAEP, HS256) means the key
    // is not for this.
    let alg = match jwk.common.key_algorithm {
        Some(a) => Some(Algorithm::from_str(&a.to_string()).ok().filter(|a| family.signs(*a))?),
        None => None,
    };
    Some(Key {
        kid: jwk.common.key_id.clone(),
        alg,
        family,
        key: DecodingKey::from_jwk(&jwk).ok()?,
    })
}

/// Where a remote set comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Source {
    Url(String),
    /// `{issuer}/.well-known/openid-configuration` names the set's `jwks_uri`.
    Discovery(String),
}

/// `url` may be fetched: https, or http to this machine only (a key set read over a
/// network in the clear is only as safe as that network).
pub fn check_url(url: &str) -> Result<(), String> {
    let u = reqwest::Url::parse(url).map_err(|e| format!("is not a URL: {e}"))?;
    match u.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(&u) => Ok(()),
        _ => Err("must be an https URL (http only to a loopback address)".into()),
    }
}

fn is_loopback(u: &reqwest::Url) -> bool {
    let host = u.host_str().unwrap_or_default();
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[derive(Default)]
struct Fetches {
    /// The last fetch that succeeded.
    ok: Option<Instant>,
    /// The last fetch started, whatever came of it.
    started: Option<Instant>,
}

/// A remote key set, shared by every issuer and snapshot that names its source.
pub struct RemoteKeys {
    source: Source,
    /// The issuer named in metrics and logs: the first that asked for this set.
    label: String,
    refresh: Duration,
    http: reqwest::Client,
    keys: ArcSwapOption<KeySet>,
    fetches: Mutex<Fetches>,
    /// One fetch at a time.
    fetching: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for RemoteKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteKeys")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// A remote set is one source refreshed at one interval.
type RemoteId = (Source, Duration);

/// Every live remote set, so a reload reuses the fetched keys and the refresher finds them.
static REMOTE: LazyLock<Mutex<HashMap<RemoteId, Weak<RemoteKeys>>>> = LazyLock::new(Mutex::default);

impl RemoteKeys {
    /// The set at `source`, refreshed every `refresh`: the live one when there is one.
    pub fn shared(source: Source, refresh: Duration, label: &str) -> Result<Arc<RemoteKeys>, String> {
        let mut all = REMOTE.lock().unwrap_or_else(|e| e.into_inner());
        let id = (source, refresh);
        if let Some(live) = all.get(&id).and_then(Weak::upgrade) {
            return Ok(live);
        }
        let keys = Arc::new(RemoteKeys {
            source: id.0.clone(),
            label: label.to_owned(),
            refresh,
            http: crate::outbound::client(FETCH_TIMEOUT)?,
            keys: ArcSwapOption::empty(),
            fetches: Mutex::default(),
            fetching: tokio::sync::Mutex::new(()),
        });
        all.retain(|_, w| w.strong_count() > 0);
        all.insert(id, Arc::downgrade(&keys));
        Ok(keys)
    }

    pub fn current(&self) -> Option<Arc<KeySet>> {
        self.keys.load_full()
    }

    fn fetches(&self) -> std::sync::MutexGuard<'_, Fetches> {
        self.fetches.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the last fetch started long enough ago for another.
    fn may_fetch(&self, now: Instant) -> bool {
        self.fetches()
            .started
            .is_none_or(|t| now.saturating_duration_since(t) >= MIN_FETCH_INTERVAL)
    }

    fn due(&self, now: Instant) -> bool {
        let refreshed = self.fetches().ok;
        self.may_fetch(now) && refreshed.is_none_or(|t| now.saturating_duration_since(t) >= self.refresh)
    }

    /// A token named a key this set lacks: fetch the set again unless a fetch started
    /// within [`MIN_FETCH_INTERVAL`], and wait for it (or for the fetch under way, the
    /// background's or another token's). Concurrent callers share one fetch. It runs in
    /// its own task, so a caller that goes away does not cut it short.
    pub async fn refetch(self: &Arc<Self>, metrics: &Arc<Metrics>) {
        if !self.may_fetch(Instant::now()) {
            drop(self.fetching.lock().await);
            return;
        }
        let this = self.clone();
        let metrics = metrics.clone();
        let _ = tokio::spawn(async move { this.fetch_unless_recent(&metrics).await }).await;
    }

    async fn fetch_unless_recent(&self, metrics: &Metrics) {
        let _one = self.fetching.lock().await;
        // Whoever held the lock before may just have fetched.
        if !self.may_fetch(Instant::now()) {
            return;
        }
        self.fetch(metrics).await;
    }

    /// Fetches the set and keeps it; on failure keeps the last good keys and says why
    /// (at most once per [`MIN_FETCH_INTERVAL`]).
    async fn fetch(&self, metrics: &Metrics) {
        self.fetches().started = Some(Instant::now());
        match self.download().await {
            Ok(set) => {
                tracing::debug!(issuer = %self.label, keys = set.len(), "JWT key set fetched");
                self.keys.store(Some(Arc::new(set)));
                self.fetches().ok = Some(Instant::now());
                metrics
                    .jwks_fetches
                    .with_label_values(&[self.label.as_str(), "ok"])
                    .inc();
            }
            Err(e) => {
                let serving = self.current().map_or(0, |s| s.len());
                tracing::warn!(issuer = %self.label, keys_kept = serving, "JWT key set not fetched: {e}");
                metrics
                    .jwks_fetches
                    .with_label_values(&[self.label.as_str(), "error"])
                    .inc();
            }
        }
    }

    async fn download(&self) -> Result<KeySet, String> {
        let url = match &self.source {
            Source::Url(u) => u.clone(),
            Source::Discovery(issuer) => self.discover(issuer).await?,
        };
        let body = self.get(&url, MAX_SET_BYTES, "key set").await?;
        KeySet::parse(&body).map_err(|e| format!("the key set at {} {e}", shown(&url)))
    }

    /// The `jwks_uri` of the issuer's OpenID Provider metadata, which must name the same
    /// issuer (OpenID Connect Discovery 1.0, section 4.3).
    async fn discover(&self, issuer: &str) -> Result<String, String> {
        #[derive(Deserialize)]
        struct Metadata {
            issuer: String,
            jwks_uri: String,
        }
        let url = discovery_url(issuer);
        let body = self.get(&url, MAX_DISCOVERY_BYTES, "discovery document").await?;
        let m: Metadata = serde_json::from_slice(&body)
            .map_err(|_| format!("the discovery document at {} lacks issuer or jwks_uri", shown(&url)))?;
        if m.issuer != issuer {
            return Err(format!(
                "the discovery document at {} names another issuer",
                shown(&url)
            ));
        }
        check_url(&m.jwks_uri).map_err(|e| format!("its jwks_uri {e}"))?;
        Ok(m.jwks_uri)
    }

    async fn get(&self, url: &str, max: usize, what: &str) -> Result<Vec<u8>, String> {
        let what = format!("{what} at {}", shown(url));
        let resp = self
            .http
            .get(url)
            .header(http::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| format!("{what} unreachable: {}", e.without_url()))?;
        let (status, body) = crate::outbound::read_capped(resp, max, &what).await?;
        if !status.is_success() {
            return Err(format!("{what} answered {}", status.as_u16()));
        }
        Ok(body)
    }
}

pub fn discovery_url(issuer: &str) -> String {
    format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/'))
}

/// Fetches every live remote set that is due (called every second; also the first fetch
/// of a set a reload or the start brought in).
pub async fn refresh_due(metrics: Arc<Metrics>) {
    let live: Vec<Arc<RemoteKeys>> = REMOTE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .filter_map(Weak::upgrade)
        .collect();
    let now = Instant::now();
    for k in live.into_iter().filter(|k| k.due(now)) {
        // A fetch already under way (an unknown `kid`) is as good as this one.
        if let Ok(_one) = k.fetching.try_lock() {
            k.fetch(&metrics).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rsa_jwk(kid: &str) -> serde_json::Value {
        // The public half of tests/assets/vertex-test-key.pem.
        let pem = std::fs::read("tests/assets/vertex-test-key.pub.pem").unwrap();
        let rsa = openssl::rsa::Rsa::public_key_from_pem(&pem).unwrap();
        let b64 = |b: Vec<u8>| base64url(&b);
        json!({"kty": "RSA", "kid": kid, "n": b64(rsa.n().to_vec()), "e": b64(rsa.e().to_vec())})
    }

    fn base64url(b: &[u8]) -> String {
        openssl::base64::encode_block(b)
            .trim_end_matches('=')
            .replace('+', "-")
            .replace('/', "_")
    }

    #[test]
    fn keeps_only_keys_that_can_verify_and_finds_them_by_kid_and_algorithm() {
        let mut enc = rsa_jwk("enc");
        enc["use"] = json!("enc");
        let mut oaep = rsa_jwk("oaep");
        oaep["alg"] = json!("RSA-OAEP");
        let mut pinned = rsa_jwk("pinned");
        pinned["alg"] = json!("RS256");
        let doc = json!({"keys": [
            rsa_jwk("a"),
            enc,
            oaep,
            pinned,
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "EC", "kid": "p521", "crv": "P-521", "x": "AA", "y": "AA"},
            {"kty": "future", "kid": "x"},
            "not a key",
        ]});
        let set = KeySet::parse(doc.to_string().as_bytes()).unwrap();
        assert_eq!(set.len(), 2, "{set:?}");
        assert!(set.find(Some("a"), Algorithm::RS256).is_some());
        assert!(
            set.find(Some("a"), Algorithm::PS384).is_some(),
            "any RSA algorithm for an RSA key"
        );
        assert!(set.find(Some("a"), Algorithm::ES256).is_none(), "not another family's");
        assert!(
            set.find(Some("pinned"), Algorithm::RS512).is_none(),
            "not past the declared alg"
        );
        assert!(set.find(Some("hmac"), Algorithm::HS256).is_none());
        assert!(set.find(Some("enc"), Algorithm::RS256).is_none());
        assert!(set.find(None, Algorithm::RS256).is_none(), "two keys: a kid is needed");
        let one = KeySet::parse(json!({"keys": [rsa_jwk("only")]}).to_string().as_bytes()).unwrap();
        assert!(one.find(None, Algorithm::RS256).is_some());
    }

    #[test]
    fn refuses_a_set_without_usable_keys() {
        for doc in [
            &b"[]"[..],
            b"{\"keys\": []}",
            b"{\"keys\": [{\"kty\": \"oct\", \"k\": \"c2VjcmV0\"}]}",
            b"not json",
        ] {
            assert!(KeySet::parse(doc).is_err(), "{}", String::from_utf8_lossy(doc));
        }
    }

    #[test]
    fn key_set_urls_are_https_or_loopback() {
        assert!(check_url("https://idp.example.com/jwks").is_ok());
        assert!(check_url("http://127.0.0.1:8000/jwks").is_ok());
        assert!(check_url("http://[::1]:8000/jwks").is_ok());
        assert!(check_url("http://localhost/jwks").is_ok());
        assert!(check_url("http://idp.example.com/jwks").is_err());
        assert!(check_url("file:///etc/jwks.json").is_err());
        assert!(check_url("idp.example.com").is_err());
        assert_eq!(shown("https://a/jwks?token=secret"), "https://a/jwks");
        assert_eq!(
            discovery_url("https://a/realm/"),
            "https://a/realm/.well-known/openid-configuration"
        );
    }
}
