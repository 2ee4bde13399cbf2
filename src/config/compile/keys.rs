//! The `api_keys` section: caller keys, stored and looked up by BLAKE3 hash, with their
//! owners, model allowlists and policies.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use subtle::ConstantTimeEq;

use super::{raw, CompileCtx, Errors, Refs};
use crate::config::Kind;
use crate::guard::Guardrail;
use crate::limit::Binding;

#[derive(Debug)]
pub struct ApiKeyEntry {
    pub name: String,
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
    pub mcp: Option<Arc<crate::mcp::Access>>,
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
    /// Callers that authenticate with a client certificate, by its identity. Apart from
    /// the hashed keys: no presented key can ever match one of these.
    by_cert: HashMap<String, Arc<ApiKeyEntry>>,
}

impl KeyIndex {
    pub fn lookup(&self, presented: &[u8]) -> Option<&Arc<ApiKeyEntry>> {
        let hash = blake3::hash(presented);
        let hash = hash.as_bytes();
        let bucket = self.buckets.get(&prefix_u64(hash))?;
        bucket.iter().find(|(h, _)| bool::from(h.ct_eq(hash))).map(|(_, e)| e)
    }

    /// The caller a verified client certificate names: the first of its identities (its
    /// subject alternative names, then `CN=<common name>`) that an `api_keys` entry has.
    pub fn lookup_cert<'a>(&self, identities: impl IntoIterator<Item = &'a str>) -> Option<&Arc<ApiKeyEntry>> {
        identities.into_iter().find_map(|id| self.by_cert.get(id))
    }

    fn insert(&mut self, hash: [u8; 32], e: ApiKeyEntry) {
        self.buckets
            .entry(prefix_u64(&hash))
            .or_default()
            .push((hash, Arc::new(e)));
    }

    pub fn len(&self) -> usize {
        self.buckets.values().map(Vec::len).sum::<usize>() + self.by_cert.len()
    }

    /// Every key, in no particular order.
    pub fn entries(&self) -> impl Iterator<Item = &Arc<ApiKeyEntry>> {
        self.buckets
            .values()
            .flatten()
            .map(|(_, e)| e)
            .chain(self.by_cert.values())
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty() && self.by_cert.is_empty()
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

/// Every caller key, indexed; each reference checked.
pub(super) fn compile_keys(list: &[raw::ApiKey], refs: &Refs<'_, '_>, errs: &mut Errors) -> KeyIndex {
    let mut keys = KeyIndex::default();
    let mut seen_hashes: HashMap<[u8; 32], usize> = HashMap::new();
    for (i, k) in list.iter().enumerate() {
        let path = format!("api_keys[{i}]");
        let source = raw::KeySource {
            key: k.key.clone(),
            key_env: k.key_env.clone(),
            key_hash: k.key_hash.clone(),
        };
        let cert_id = k.client_cert.as_deref();
        let hash = match cert_id {
            None => resolve_key_source(&path, &source, refs.ctx, errs),
            Some(_) if k.key.is_some() || k.key_env.is_some() || k.key_hash.is_some() => {
                errs.push(
                    &path,
                    "set either a key (key, key_env or key_hash) or client_cert, not both",
                );
                None
            }
            Some("") => {
                errs.push(format!("{path}.client_cert"), "must not be empty");
                None
            }
            // Never in the hashed index: a presented key cannot reach this entry.
            Some(id) => Some(*blake3::hash(format!("client_cert:{id}").as_bytes()).as_bytes()),
        };
        for (j, alias) in k.models.iter().flatten().enumerate() {
            refs.check(format!("{path}.models[{j}]"), Kind::Models, alias, errs);
        }
        refs.check_policies(&path, k.rate_limit.as_deref(), &k.guardrails, k.budget.as_deref(), errs);
        let mcp = refs.mcp_access(&path, k.mcp.as_ref(), errs);
        if let Some(owner) = &k.owner {
            if owner.trim().is_empty() {
                errs.push(
                    format!("{path}.owner"),
                    "must not be empty (omit it to use the key's name)",
                );
            }
        }
        let Some(hash) = hash else { continue };
        // Certificate identities are checked for duplicates where they are indexed.
        if let Some(prev) = cert_id.is_none().then(|| seen_hashes.insert(hash, i)).flatten() {
            errs.push(
                &path,
                format!("the same caller key as api_keys[{prev}]; every key must be distinct"),
            );
            continue;
        }
        let owner = k.owner.clone().unwrap_or_else(|| k.name.clone());
        let limits = refs.bind(k.rate_limit.as_deref(), &format!("owner={owner}"));
        let entry = ApiKeyEntry {
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
        };
        match cert_id {
            Some(id) => {
                if keys.by_cert.insert(id.to_owned(), Arc::new(entry)).is_some() {
                    errs.push(
                        format!("{path}.client_cert"),
                        "another api_keys entry has this client_cert",
                    );
                }
            }
            None => keys.insert(hash, entry),
        }
    }
    keys
}
