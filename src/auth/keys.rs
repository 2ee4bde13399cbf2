//! Callers as compiled from `api_keys` (and JWT issuers): the entry a request runs as,
//! the index keys and certificates are looked up in, and owners with their namespaces.
//! `config::compile` builds them; everything that serves a caller reads them here.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, LazyLock};

use chrono::{DateTime, Utc};
use subtle::ConstantTimeEq;

use crate::guard::Guardrail;
use crate::limit::Binding;
use crate::raw;
use crate::tls::{CaBundleId, CertName, ClientIdentity};

/// The longest owner (from config or a claim): it becomes a metric label and a limit key.
pub const MAX_OWNER_BYTES: usize = 256;

/// Marks the owners of JWT issuers; reserved, so no owner of `keys` can read like one.
const JWT_PREFIX: &str = "jwt:";

/// Where an owner comes from. An owner is the pair (namespace, name): `carol` of one
/// issuer and `carol` of another, or of a static key, are different owners with their own
/// limits, budgets, cache entries and MCP sessions, unless the config puts both issuers in
/// one namespace (`jwt[].owner_namespace`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnerNamespace {
    /// The owners of `api_keys` (an entry's `owner`, else its name).
    Keys,
    /// The owners of the JWT issuer of this name.
    Issuer(String),
}

impl OwnerNamespace {
    /// `keys` or `jwt:<issuer name>`, as `owner_namespace` names it.
    pub fn parse(s: &str) -> Option<Self> {
        match s.strip_prefix(JWT_PREFIX) {
            Some(issuer) if !issuer.is_empty() => Some(Self::Issuer(issuer.to_owned())),
            Some(_) => None,
            None => (s == "keys").then_some(Self::Keys),
        }
    }

    /// The owner `name` of this namespace, as every consumer keys and shows it: `name`
    /// for `keys` (so static keys keep their limit, budget and metric names), and
    /// `jwt:<issuer>/name` for an issuer. No two owners read alike: issuer names hold no
    /// `/`, and no owner of `keys` starts with `jwt:`. `name` must pass
    /// [`check_owner_text`].
    pub fn owner(&self, name: &str) -> Result<String, String> {
        check_owner_text(name)?;
        match self {
            Self::Keys
                if name
                    .get(..JWT_PREFIX.len())
                    .is_some_and(|p| p.eq_ignore_ascii_case(JWT_PREFIX)) =>
            {
                Err(format!(
                    "must not start with '{JWT_PREFIX}' (it marks the owners of JWT issuers)"
                ))
            }
            Self::Keys => Ok(name.to_owned()),
            Self::Issuer(issuer) => Ok(format!("{JWT_PREFIX}{issuer}/{name}")),
        }
    }
}

impl fmt::Display for OwnerNamespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Keys => f.write_str("keys"),
            Self::Issuer(i) => write!(f, "{JWT_PREFIX}{i}"),
        }
    }
}

/// Characters no owner or caller name may hold: controls (Cc), format characters (Cf:
/// the bidirectional overrides and isolates U+202A-U+202E and U+2066-U+2069, the marks
/// U+200E, U+200F and U+061C, zero-width characters, the byte order mark) and the line
/// and paragraph separators (Zl, Zp). Each can make a name in a log, a metric or the
/// console read as another, or break the line it is written on.
static HIDDEN: LazyLock<regex::Regex> = LazyLock::new(|| {
    #[allow(clippy::expect_used)]
    regex::Regex::new(r"[\p{Cc}\p{Cf}\p{Zl}\p{Zp}]").expect("a valid character class")
});

/// Whether `s` may be an owner (from the config or a token's claim) or an issuer's name:
/// not empty, at most [`MAX_OWNER_BYTES`], no white space at either end and none of the
/// [`HIDDEN`] characters, so what a log or a metric shows is the whole name.
pub fn check_owner_text(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > MAX_OWNER_BYTES {
        return Err(format!("must be at most {MAX_OWNER_BYTES} bytes"));
    }
    if s.trim() != s {
        return Err("must not begin or end with white space".into());
    }
    if let Some(c) = HIDDEN.find(s).and_then(|m| m.as_str().chars().next()) {
        return Err(format!(
            "must not hold U+{:04X} (control, format and separator characters can disguise a name)",
            u32::from(c)
        ));
    }
    Ok(())
}

#[derive(Debug)]
pub struct ApiKeyEntry {
    pub name: String,
    /// The namespaced owner ([`OwnerNamespace::owner`]): what limits, budgets, caches, MCP
    /// sessions, the access log and metrics know the caller by.
    pub owner: String,
    /// `None`: every model.
    pub models: Option<HashSet<String>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub disabled: bool,
    /// The key's `rate_limit`, counted per owner.
    pub limits: Option<Arc<Binding>>,
    pub guardrails: Vec<Arc<Guardrail>>,
    /// The key's spend limit, counted per owner.
    pub budget: Option<Arc<raw::Budget>>,
    /// Whether this key's requests may use response caches.
    pub cache: bool,
    /// The MCP servers and tools it may use; `None`: none.
    pub mcp: Option<Arc<crate::auth::McpAccess>>,
}

impl ApiKeyEntry {
    pub fn allows(&self, alias: &str) -> bool {
        self.models.as_ref().is_none_or(|m| m.contains(alias))
    }

    /// Usable now: neither disabled nor expired.
    pub fn is_active(&self, now: DateTime<Utc>) -> bool {
        !self.disabled && self.expires_at.is_none_or(|t| now < t)
    }
}

type KeyHash = [u8; 32];

/// Caller keys by BLAKE3 hash. Buckets are found by the hash's first 8 bytes; the full
/// 32 bytes are compared in constant time, so timing reveals nothing about stored hashes.
#[derive(Debug, Default)]
pub struct KeyIndex {
    buckets: HashMap<u64, Vec<(KeyHash, Arc<ApiKeyEntry>)>>,
    /// Callers that authenticate with a client certificate, by the CA bundle that must
    /// have verified it and its typed identity. Apart from the hashed keys: no presented
    /// key can ever match one of these. Under `None`, those no listener can verify yet
    /// (no TLS listener has a `client_ca_file`): listed, never matched.
    by_cert: HashMap<Option<CaBundleId>, HashMap<CertName, Arc<ApiKeyEntry>>>,
}

impl KeyIndex {
    /// Indexes a caller by its key's BLAKE3 hash.
    pub fn insert_key(&mut self, hash: KeyHash, entry: Arc<ApiKeyEntry>) {
        self.buckets.entry(prefix_u64(&hash)).or_default().push((hash, entry));
    }

    /// Indexes a caller by a certificate identity under the CA bundle that must verify it;
    /// `false` when another caller already has that identity there.
    pub fn insert_cert(&mut self, ca: Option<CaBundleId>, name: CertName, entry: Arc<ApiKeyEntry>) -> bool {
        self.by_cert.entry(ca).or_default().insert(name, entry).is_none()
    }

    pub fn lookup(&self, presented: &[u8]) -> Option<&Arc<ApiKeyEntry>> {
        let hash = blake3::hash(presented);
        let hash = hash.as_bytes();
        let bucket = self.buckets.get(&prefix_u64(hash))?;
        bucket.iter().find(|(h, _)| bool::from(h.ct_eq(hash))).map(|(_, e)| e)
    }

    /// The caller a verified client certificate names: among the entries bound to the CA
    /// bundle that verified it, the first of its identities (subject alternative names,
    /// then common names) that one has, compared by type.
    pub fn lookup_cert(&self, id: &ClientIdentity) -> Option<&Arc<ApiKeyEntry>> {
        let bound = self.by_cert.get(&Some(id.ca))?;
        id.names.iter().find_map(|n| bound.get(n))
    }

    pub fn len(&self) -> usize {
        self.entries().count()
    }

    /// Every key, in no particular order.
    pub fn entries(&self) -> impl Iterator<Item = &Arc<ApiKeyEntry>> {
        self.buckets
            .values()
            .flatten()
            .map(|(_, e)| e)
            .chain(self.by_cert.values().flat_map(HashMap::values))
    }

    pub fn is_empty(&self) -> bool {
        self.entries().next().is_none()
    }
}

fn prefix_u64(h: &[u8; 32]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&h[..8]);
    u64::from_le_bytes(b)
}

/// `blake3:<hex>` of a caller key, as `aigw hash-key` prints it and `key_hash` takes it.
pub fn hash_key(key: &str) -> String {
    format!("blake3:{}", blake3::hash(key.as_bytes()).to_hex())
}
