//! Callers that present a JWT from a configured issuer (`jwt` section) instead of a key.
//!
//! A token is verified with its issuer's keys (RS*/PS*, ES256/ES384 or EdDSA, chosen by
//! `kid`; never HMAC), its `exp` and `nbf` within the issuer's leeway, its `iss` and its
//! `aud`. Its owner and allowed aliases come from the issuer's claims, and from there it
//! is a caller like a key: an [`ApiKeyEntry`] carrying the issuer's policies, with limits
//! counted per owner. Every refusal is the same 401; why is a metric label
//! (`aigw_jwt_rejections_total`) and a debug log line, never any part of the token.

use std::collections::HashSet;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::jwks::{KeySet, RemoteKeys};
use crate::auth::{ApiKeyEntry, OwnerNamespace};
use crate::guard::Guardrail;
use crate::limit::Cells;
use crate::metrics::Metrics;
use crate::raw;

/// Longer bearer credentials are not taken for tokens: real ones are 1-4 KiB.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Where an issuer's verification keys are.
#[derive(Debug)]
pub enum Keys {
    /// Read from `jwks_file` when the config was compiled (a reload reads it again).
    File(KeySet),
    /// Fetched from `jwks_url` or through discovery.
    Remote(Arc<RemoteKeys>),
}

/// One compiled `jwt` entry.
#[derive(Debug)]
pub struct Issuer {
    pub name: String,
    pub iss: String,
    /// `aud`, `iss`, `exp` (required), `nbf`, the leeway; the algorithm is the token's own,
    /// once [`super::jwks::accepted`].
    validation: Validation,
    pub keys: Keys,
    owner_claim: String,
    /// Where its owners live: a claim's owner `carol` is `jwt:<name>/carol` unless the
    /// config put this issuer's owners elsewhere.
    namespace: OwnerNamespace,
    models_claim: Option<String>,
    models: Option<HashSet<String>>,
    policy: Option<Arc<raw::RateLimit>>,
    guardrails: Vec<Arc<Guardrail>>,
    budget: Option<Arc<raw::Budget>>,
    cache: bool,
    mcp: Option<Arc<crate::auth::McpAccess>>,
}

/// What the issuer's entry sets besides the keys, checked by the config compiler.
pub struct Policies {
    pub policy: Option<Arc<raw::RateLimit>>,
    pub guardrails: Vec<Arc<Guardrail>>,
    pub budget: Option<Arc<raw::Budget>>,
    pub mcp: Option<Arc<crate::auth::McpAccess>>,
    pub namespace: OwnerNamespace,
}

impl Issuer {
    /// What the status view shows of the issuer: never a key.
    pub fn status(&self) -> serde_json::Value {
        let (keys, loaded) = match &self.keys {
            Keys::File(set) => ("file", Some(set.len())),
            Keys::Remote(r) => ("remote", r.current().map(|s| s.len())),
        };
        let mut models: Option<Vec<&String>> = self.models.as_ref().map(|m| m.iter().collect());
        if let Some(m) = models.as_mut() {
            m.sort();
        }
        serde_json::json!({
            "name": self.name,
            "issuer": self.iss,
            "keys": keys,
            "keys_loaded": loaded,
            "owner_claim": self.owner_claim,
            "owner_namespace": self.namespace.to_string(),
            "models_claim": self.models_claim,
            "models": models,
            "rate_limit": self.policy.as_ref().map(|p| p.name.clone()),
            "budget": self.budget.as_ref().map(|b| b.name.clone()),
        })
    }

    /// The spend limit of this issuer's callers, counted per owner.
    pub fn budget(&self) -> Option<&Arc<raw::Budget>> {
        self.budget.as_ref()
    }

    pub fn new(raw: &raw::JwtIssuer, keys: Keys, p: Policies) -> Self {
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_issuer(&[raw.issuer.as_str()]);
        validation.set_audience(&raw.audience);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = raw.leeway_s;
        Self {
            name: raw.name.clone(),
            iss: raw.issuer.clone(),
            validation,
            keys,
            owner_claim: raw.owner_claim.clone(),
            namespace: p.namespace,
            models_claim: raw.models_claim.clone(),
            models: raw.models.as_ref().map(|m| m.iter().cloned().collect()),
            policy: p.policy,
            guardrails: p.guardrails,
            budget: p.budget,
            cache: raw.cache,
            mcp: p.mcp,
        }
    }
}

/// Every configured issuer.
#[derive(Debug, Default)]
pub struct Issuers(pub Vec<Arc<Issuer>>);

/// Why a token was refused: the `reason` label of `aigw_jwt_rejections_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    Malformed,
    UnknownIssuer,
    Algorithm,
    UnknownKey,
    Signature,
    Expired,
    NotYetValid,
    Audience,
    Issuer,
    Owner,
    /// The header names critical extensions (`crit`), and aigw understands none.
    Critical,
}

impl Rejection {
    pub fn label(self) -> &'static str {
        match self {
            Rejection::Malformed => "malformed",
            Rejection::UnknownIssuer => "unknown_issuer",
            Rejection::Algorithm => "algorithm",
            Rejection::UnknownKey => "unknown_key",
            Rejection::Signature => "signature",
            Rejection::Expired => "expired",
            Rejection::NotYetValid => "not_yet_valid",
            Rejection::Audience => "audience",
            Rejection::Issuer => "issuer",
            Rejection::Owner => "owner",
            Rejection::Critical => "critical_extension",
        }
    }
}

/// Whether a presented credential has a JWT's shape (three base64url parts), so it is
/// worth a look by the issuers. Static keys are looked up first and never look like this
/// unless an operator chose such a key, in which case the key wins.
pub fn looks_like_jwt(credential: &[u8]) -> bool {
    credential.len() <= MAX_TOKEN_BYTES
        && credential.iter().filter(|b| **b == b'.').count() == 2
        && credential
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl Issuers {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The caller a token stands for, or why it is refused.
    pub async fn authenticate(
        &self,
        token: &str,
        cells: &Cells,
        metrics: &Arc<Metrics>,
    ) -> Result<Arc<ApiKeyEntry>, Rejection> {
        let (issuer, result) = match self.issuer_of(token) {
            Ok(i) => (i.name.as_str(), i.verify(token, cells, metrics).await),
            Err(why) => ("", Err(why)),
        };
        if let Err(why) = result {
            metrics.jwt_rejections.with_label_values(&[issuer, why.label()]).inc();
            tracing::debug!(issuer, reason = why.label(), "bearer JWT refused");
        }
        result
    }

    /// The issuer the token names in `iss` (read before the signature is checked, only to
    /// pick the keys; the verification then requires the same `iss`).
    fn issuer_of(&self, token: &str) -> Result<&Arc<Issuer>, Rejection> {
        #[derive(Deserialize)]
        struct Peek {
            iss: Option<String>,
        }
        let mut peek = Validation::new(Algorithm::RS256);
        peek.insecure_disable_signature_validation();
        peek.required_spec_claims.clear();
        peek.validate_exp = false;
        peek.validate_aud = false;
        let iss = jsonwebtoken::decode::<Peek>(token, &DecodingKey::from_secret(&[]), &peek)
            .map_err(|_| Rejection::Malformed)?
            .claims
            .iss;
        iss.and_then(|iss| self.0.iter().find(|i| i.iss == iss))
            .ok_or(Rejection::UnknownIssuer)
    }
}

/// jsonwebtoken's errors, as the few reasons an operator needs. None carries the token's
/// content (serde's messages would quote claim values).
fn rejection(e: &jsonwebtoken::errors::Error) -> Rejection {
    use jsonwebtoken::errors::ErrorKind::*;
    match e.kind() {
        InvalidSignature | InvalidEcdsaKey | InvalidRsaKey(_) | InvalidKeyFormat => Rejection::Signature,
        ExpiredSignature => Rejection::Expired,
        ImmatureSignature => Rejection::NotYetValid,
        InvalidAudience => Rejection::Audience,
        InvalidIssuer => Rejection::Issuer,
        MissingRequiredClaim(c) if c == "aud" => Rejection::Audience,
        MissingRequiredClaim(c) if c == "exp" => Rejection::Expired,
        InvalidAlgorithm | InvalidAlgorithmName | MissingAlgorithm => Rejection::Algorithm,
        _ => Rejection::Malformed,
    }
}

impl Issuer {
    async fn verify(&self, token: &str, cells: &Cells, metrics: &Arc<Metrics>) -> Result<Arc<ApiKeyEntry>, Rejection> {
        refuse_critical(token)?;
        let header = jsonwebtoken::decode_header(token).map_err(|_| Rejection::Malformed)?;
        if !super::jwks::accepted(header.alg) {
            return Err(Rejection::Algorithm);
        }
        let kid = header.kid.as_deref();
        let mut validation = self.validation.clone();
        validation.algorithms = vec![header.alg];
        let claims = match &self.keys {
            Keys::File(set) => {
                let key = set.find(kid, header.alg).ok_or(Rejection::UnknownKey)?;
                decode(token, key, &validation)?
            }
            Keys::Remote(remote) => {
                let mut set = remote.current();
                if set.as_ref().is_none_or(|s| s.find(kid, header.alg).is_none()) {
                    // A rotated key the cached set does not have yet, or no set so far.
                    remote.refetch(metrics).await;
                    set = remote.current();
                }
                let set = set.ok_or(Rejection::UnknownKey)?;
                let key = set.find(kid, header.alg).ok_or(Rejection::UnknownKey)?;
                decode(token, key, &validation)?
            }
        };
        let owner = owner_claim(claims.get(&self.owner_claim))
            .and_then(|name| self.namespace.owner(&name).ok())
            .ok_or(Rejection::Owner)?;
        Ok(Arc::new(self.caller(owner, self.allowed(&claims), cells)))
    }

    /// The aliases a token may use: its claim's, within the issuer's `models`.
    fn allowed(&self, claims: &Map<String, Value>) -> Option<HashSet<String>> {
        let Some(claim) = &self.models_claim else {
            return self.models.clone();
        };
        // A token without the claim may use nothing: the claim is what grants models.
        let named: HashSet<String> = match claims.get(claim) {
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
            Some(Value::String(s)) => s.split_ascii_whitespace().map(str::to_owned).collect(),
            _ => HashSet::new(),
        };
        Some(match &self.models {
            Some(ceiling) => named.into_iter().filter(|m| ceiling.contains(m)).collect(),
            None => named,
        })
    }

    fn caller(&self, owner: String, models: Option<HashSet<String>>, cells: &Cells) -> ApiKeyEntry {
        ApiKeyEntry {
            name: self.name.clone(),
            limits: self.policy.as_ref().map(|p| cells.bind_owner(p, &owner)),
            owner,
            models,
            expires_at: None,
            disabled: false,
            guardrails: self.guardrails.clone(),
            budget: self.budget.clone(),
            cache: self.cache,
            mcp: self.mcp.clone(),
        }
    }
}

/// A header that names `crit` is refused, whatever it lists (RFC 7515, 4.1.11: a
/// recipient must refuse critical extensions it does not understand, and aigw understands
/// none; an empty or malformed `crit` is invalid anyway). jsonwebtoken's `Header` drops the
/// parameter, so the header is read here as well, decoded as jsonwebtoken decodes it
/// (URL-safe base64 without padding, then JSON): a header only one of the two could read
/// is refused, never verified.
fn refuse_critical(token: &str) -> Result<(), Rejection> {
    let head = token.split('.').next().unwrap_or_default();
    let json = URL_SAFE_NO_PAD.decode(head).map_err(|_| Rejection::Malformed)?;
    let header: Map<String, Value> = serde_json::from_slice(&json).map_err(|_| Rejection::Malformed)?;
    if header.contains_key("crit") {
        return Err(Rejection::Critical);
    }
    Ok(())
}

fn decode(token: &str, key: &DecodingKey, v: &Validation) -> Result<Map<String, Value>, Rejection> {
    jsonwebtoken::decode::<Map<String, Value>>(token, key, v)
        .map(|d| d.claims)
        .map_err(|e| rejection(&e))
}

/// The owner's name a claim gives: a string or an integer. Whether it may be an owner is
/// [`OwnerNamespace::owner`]'s to say.
fn owner_claim(claim: Option<&Value>) -> Option<String> {
    match claim? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) if n.is_u64() || n.is_i64() => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_header_naming_critical_extensions_is_refused() {
        let token = |header: &str| format!("{}.e30.c2ln", URL_SAFE_NO_PAD.encode(header));
        for crit in [
            r#"{"alg":"EdDSA","crit":["exp"],"exp":1}"#,
            r#"{"alg":"EdDSA","crit":[]}"#,
            r#"{"alg":"EdDSA","crit":null}"#,
            r#"{"alg":"EdDSA","b64":false,"crit":["b64"]}"#,
            // An escape spells the same name.
            r#"{"alg":"EdDSA","cr\u0069t":["x"]}"#,
            r#"{"crit":["x"],"alg":"EdDSA","crit":["x"]}"#,
        ] {
            assert_eq!(refuse_critical(&token(crit)), Err(Rejection::Critical), "{crit}");
        }
        // Other unknown parameters are no extension anyone must understand.
        assert_eq!(refuse_critical(&token(r#"{"alg":"EdDSA","x-note":"crit"}"#)), Ok(()));
        // A header this check cannot read is not verified either.
        for bad in ["e30=.e30.c2ln", "bm90IGpzb24.e30.c2ln", "W10.e30.c2ln"] {
            assert_eq!(refuse_critical(bad), Err(Rejection::Malformed), "{bad}");
        }
    }

    #[test]
    fn an_owner_cannot_hide_characters_that_disguise_it() {
        for (bad, what) in [
            ("carol\u{202e}lanigiro", "right-to-left override"),
            ("\u{2066}carol\u{2069}", "isolate"),
            ("carol\u{200e}", "left-to-right mark"),
            ("carol\u{061c}", "Arabic letter mark"),
            ("ca\u{200b}rol", "zero-width space"),
            ("\u{feff}carol", "byte order mark"),
            ("carol\u{2028}admin", "line separator"),
            ("carol\u{2029}", "paragraph separator"),
            ("carol\u{85}", "next line (C1 control)"),
            ("carol\u{1b}[31m", "escape"),
            (" carol", "leading space"),
            ("carol\u{3000}", "trailing ideographic space"),
        ] {
            assert_eq!(owner(Some(&json!(bad))), None, "{what}");
        }
        // Letters and marks of every script are owners.
        for good in [
            "carol",
            "Zoë",
            "\u{05e9}\u{05dc}\u{05d5}\u{05dd}",
            "team a/b",
            "\u{0915}\u{094d}\u{0937}",
        ] {
            assert!(owner(Some(&json!(good))).is_some(), "{good}");
        }
    }

    #[test]
    fn takes_only_credentials_shaped_like_a_jwt() {
        assert!(looks_like_jwt(b"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln"));
        assert!(!looks_like_jwt(b"sk-aigw-local-dev"));
        assert!(!looks_like_jwt(b"a.b.c.d"));
        assert!(!looks_like_jwt(b"a.b c.d"));
        assert!(!looks_like_jwt(b"a.b=.c"));
        let huge = format!("a.{}.c", "b".repeat(MAX_TOKEN_BYTES));
        assert!(!looks_like_jwt(huge.as_bytes()));
    }

    /// The owner a claim gives in issuer `sso`'s own namespace.
    fn owner(claim: Option<&Value>) -> Option<String> {
        owner_claim(claim).and_then(|name| OwnerNamespace::Issuer("sso".into()).owner(&name).ok())
    }

    #[test]
    fn an_owner_is_a_short_printable_string_or_an_integer_of_its_issuer() {
        assert_eq!(owner(Some(&json!("team-a"))).as_deref(), Some("jwt:sso/team-a"));
        assert_eq!(owner(Some(&json!(42))).as_deref(), Some("jwt:sso/42"));
        for bad in [
            json!(""),
            json!("  "),
            json!("a\nb"),
            json!(1.5),
            json!(["a"]),
            json!(null),
        ] {
            assert_eq!(owner(Some(&bad)), None, "{bad}");
        }
        assert_eq!(
            owner(Some(&json!("x".repeat(crate::auth::keys::MAX_OWNER_BYTES + 1)))),
            None
        );
        assert_eq!(owner(None), None);
    }

    fn issuer(models_claim: Option<&str>, models: Option<&[&str]>) -> Issuer {
        let raw: raw::JwtIssuer = serde_yaml::from_value(
            serde_yaml::to_value(json!({
                "name": "sso", "issuer": "https://sso", "audience": "aigw", "jwks_file": "x",
                "models_claim": models_claim, "models": models,
            }))
            .unwrap(),
        )
        .unwrap();
        let set = KeySet::parse(
            json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
        Issuer::new(
            &raw,
            Keys::File(set),
            Policies {
                policy: None,
                guardrails: Vec::new(),
                budget: None,
                mcp: None,
                namespace: OwnerNamespace::Issuer("sso".into()),
            },
        )
    }

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn the_models_claim_grants_aliases_within_the_issuers_models() {
        let sorted = |s: Option<HashSet<String>>| {
            s.map(|s| {
                let mut v: Vec<_> = s.into_iter().collect();
                v.sort();
                v
            })
        };
        let free = issuer(None, None);
        assert_eq!(
            free.allowed(&claims(json!({"models": ["a"]}))),
            None,
            "no claim configured: every model"
        );
        let capped = issuer(None, Some(&["a", "b"]));
        assert_eq!(
            sorted(capped.allowed(&claims(json!({})))),
            Some(vec!["a".into(), "b".into()])
        );
        let by_claim = issuer(Some("models"), Some(&["a", "b"]));
        assert_eq!(
            sorted(by_claim.allowed(&claims(json!({"models": ["a", "c", 7]})))),
            Some(vec!["a".into()])
        );
        assert_eq!(
            sorted(by_claim.allowed(&claims(json!({"models": "b a  c"})))),
            Some(vec!["a".into(), "b".into()])
        );
        assert_eq!(
            sorted(by_claim.allowed(&claims(json!({})))),
            Some(vec![]),
            "no claim: nothing"
        );
        let open_claim = issuer(Some("scope"), None);
        assert_eq!(
            sorted(open_claim.allowed(&claims(json!({"scope": "x"})))),
            Some(vec!["x".into()])
        );
    }
}
