//! The `api_keys` section: caller keys, stored and looked up by BLAKE3 hash, with their
//! owners, model allowlists and policies.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, LazyLock};

use chrono::{DateTime, Utc};
use subtle::ConstantTimeEq;

use super::{raw, CompileCtx, Errors, Refs};
use crate::config::Kind;
use crate::guard::Guardrail;
use crate::limit::Binding;
use crate::tls::{CaBundleId, CertName, ClientCas, ClientIdentity};

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

pub(super) fn parse_key_hash(s: &str) -> Result<[u8; 32], String> {
    let hex = s
        .strip_prefix("blake3:")
        .ok_or("must look like blake3:<64 hex digits> (see `aigw hash-key`)")?;
    blake3::Hash::from_hex(hex)
        .map(|h| *h.as_bytes())
        .map_err(|_| "must look like blake3:<64 hex digits> (see `aigw hash-key`)".into())
}

pub(super) fn resolve_key_source(
    path: &str,
    s: &raw::KeySource,
    ctx: &CompileCtx<'_>,
    errs: &mut Errors,
) -> Option<[u8; 32]> {
    match (&s.key, &s.key_env, &s.key_hash) {
        (Some(k), None, None) if k.is_empty() => {
            errs.push(format!("{path}.key"), "must not be empty");
            None
        }
        (Some(k), None, None) => Some(*blake3::hash(k.as_bytes()).as_bytes()),
        (None, Some(var), None) => match (ctx.env)(var) {
            Some(v) if !v.is_empty() => Some(*blake3::hash(v.as_bytes()).as_bytes()),
            _ => {
                errs.push(
                    format!("{path}.key_env"),
                    format!("environment variable {var} is not set or empty"),
                );
                None
            }
        },
        (None, None, Some(h)) => match parse_key_hash(h) {
            Ok(h) => Some(h),
            Err(e) => {
                errs.push(format!("{path}.key_hash"), e);
                None
            }
        },
        _ => {
            errs.push(path, "set exactly one of key, key_env or key_hash");
            None
        }
    }
}

/// How an entry authenticates.
enum Credential {
    /// A key, by its BLAKE3 hash.
    Key([u8; 32]),
    /// A client certificate with this identity, verified by this CA bundle (`None`: no
    /// listener verifies client certificates).
    Cert(Option<CaBundleId>, CertName),
}

/// The CA bundle a certificate entry is bound to: its own `client_ca_file`, which must be
/// a listener's (the same CAs); else the one bundle every listener with a
/// `client_ca_file` shares. When listeners trust different CAs, each entry must say
/// which, or a certificate from a partner's CA could name an internal caller.
fn cert_bundle(
    path: &str,
    k: &raw::ApiKey,
    listeners: &[Arc<ClientCas>],
    read: &mut HashMap<String, Result<CaBundleId, String>>,
    errs: &mut Errors,
) -> Result<Option<CaBundleId>, ()> {
    let mut ids: Vec<CaBundleId> = listeners.iter().map(|c| c.id).collect();
    ids.sort_unstable();
    ids.dedup();
    let Some(file) = &k.client_ca_file else {
        return match ids[..] {
            [] => Ok(None),
            [one] => Ok(Some(one)),
            _ => {
                errs.push(
                    format!("{path}.client_ca_file"),
                    "required: the TLS listeners trust different CAs, so name the client_ca_file of those whose certificates may be this caller",
                );
                Err(())
            }
        };
    };
    let id = read
        .entry(file.clone())
        .or_insert_with(|| ClientCas::load(file).map(|c| c.id))
        .clone()
        .map_err(|e| errs.push(format!("{path}.client_ca_file"), e))?;
    if !ids.contains(&id) {
        errs.push(
            format!("{path}.client_ca_file"),
            format!("no server.tls listener has a client_ca_file with the same CAs as '{file}'"),
        );
        return Err(());
    }
    Ok(Some(id))
}

/// Every caller key, indexed; each reference checked. `listeners` are the CA bundles of
/// the TLS listeners that verify client certificates.
pub(super) fn compile_keys(
    list: &[raw::ApiKey],
    listeners: &[Arc<ClientCas>],
    refs: &Refs<'_, '_>,
    errs: &mut Errors,
) -> KeyIndex {
    let mut keys = KeyIndex::default();
    let mut seen_hashes: HashMap<[u8; 32], usize> = HashMap::new();
    let mut read = HashMap::new();
    for (i, k) in list.iter().enumerate() {
        let path = format!("api_keys[{i}]");
        let source = raw::KeySource {
            key: k.key.clone(),
            key_env: k.key_env.clone(),
            key_hash: k.key_hash.clone(),
        };
        let has_key = k.key.is_some() || k.key_env.is_some() || k.key_hash.is_some();
        let credential = match &k.client_cert {
            None if k.client_ca_file.is_some() => {
                errs.push(format!("{path}.client_ca_file"), "belongs with client_cert");
                None
            }
            None => resolve_key_source(&path, &source, refs.ctx, errs).map(Credential::Key),
            Some(_) if has_key => {
                errs.push(
                    &path,
                    "set either a key (key, key_env or key_hash) or client_cert, not both",
                );
                None
            }
            Some(text) => {
                let name = CertName::parse(text).map_err(|e| errs.push(format!("{path}.client_cert"), e));
                let ca = cert_bundle(&path, k, listeners, &mut read, errs);
                // Never in the hashed index: a presented key cannot reach this entry.
                match (name, ca) {
                    (Ok(name), Ok(ca)) => Some(Credential::Cert(ca, name)),
                    _ => None,
                }
            }
        };
        for (j, alias) in k.models.iter().flatten().enumerate() {
            refs.check(format!("{path}.models[{j}]"), Kind::Models, alias, errs);
        }
        refs.check_policies(&path, k.rate_limit.as_deref(), &k.guardrails, k.budget.as_deref(), errs);
        let mcp = refs.mcp_access(&path, k.mcp.as_ref(), errs);
        let owner = match &k.owner {
            Some(o) if o.trim().is_empty() => {
                Err(("owner", "must not be empty (omit it to use the key's name)".into()))
            }
            Some(o) => OwnerNamespace::Keys.owner(o).map_err(|e| ("owner", e)),
            // The key's name is its owner; an empty name is reported with the names.
            None if k.name.trim().is_empty() => Err(("name", String::new())),
            None => OwnerNamespace::Keys
                .owner(&k.name)
                .map_err(|e| ("name", format!("{e}; as the owner (no owner is set)"))),
        };
        let owner = match owner {
            Ok(o) => o,
            Err((field, e)) => {
                if !e.is_empty() {
                    errs.push(format!("{path}.{field}"), e);
                }
                continue;
            }
        };
        let Some(credential) = credential else { continue };
        if let Credential::Key(hash) = credential {
            if let Some(prev) = seen_hashes.insert(hash, i) {
                errs.push(
                    &path,
                    format!("the same caller key as api_keys[{prev}]; every key must be distinct"),
                );
                continue;
            }
        }
        let limits = refs.bind(k.rate_limit.as_deref(), &format!("owner={owner}"));
        let entry = Arc::new(ApiKeyEntry {
            name: k.name.clone(),
            owner,
            models: k.models.as_ref().map(|m| m.iter().cloned().collect()),
            expires_at: k.expires_at,
            disabled: k.disabled,
            limits,
            guardrails: refs.guardrails(&k.guardrails),
            budget: k.budget.as_ref().and_then(|b| refs.budgets.get(b.as_str()).cloned()),
            cache: k.cache,
            mcp,
        });
        match credential {
            Credential::Key(hash) => keys.buckets.entry(prefix_u64(&hash)).or_default().push((hash, entry)),
            Credential::Cert(ca, name) => {
                if keys.by_cert.entry(ca).or_default().insert(name, entry).is_some() {
                    errs.push(
                        format!("{path}.client_cert"),
                        "another api_keys entry bound to the same CAs has this client_cert",
                    );
                }
            }
        }
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_of_different_namespaces_never_read_alike() {
        let keys = OwnerNamespace::Keys;
        let corp = OwnerNamespace::Issuer("corp".into());
        let partner = OwnerNamespace::Issuer("partner".into());
        assert_eq!(keys.owner("carol").unwrap(), "carol");
        assert_eq!(corp.owner("carol").unwrap(), "jwt:corp/carol");
        assert_ne!(corp.owner("carol").unwrap(), partner.owner("carol").unwrap());
        // An owner of `keys` cannot pose as an issuer's, in any case of the marker.
        for posing in ["jwt:corp/carol", "JWT:corp/carol", "Jwt:x"] {
            assert!(keys.owner(posing).is_err(), "{posing}");
        }
        // A slash in an owner's name stays inside the name: issuer names hold none.
        assert_eq!(corp.owner("a/b").unwrap(), "jwt:corp/a/b");
        assert_eq!(OwnerNamespace::parse("keys"), Some(OwnerNamespace::Keys));
        assert_eq!(OwnerNamespace::parse("jwt:corp"), Some(corp.clone()));
        assert_eq!(corp.to_string(), "jwt:corp");
        for bad in ["jwt:", "Keys", "tenant", ""] {
            assert_eq!(OwnerNamespace::parse(bad), None, "{bad}");
        }
    }
}
