//! The `api_keys` section: caller keys, stored and looked up by BLAKE3 hash, with their
//! owners, model allowlists and policies.

use std::collections::HashMap;
use std::sync::Arc;

use super::{raw, CompileCtx, Errors, Refs};
use crate::auth::keys::{ApiKeyEntry, KeyIndex, OwnerNamespace};
use crate::config::Kind;
use crate::tls::{CaBundleId, CertName, ClientCas};

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
            Credential::Key(hash) => keys.insert_key(hash, entry),
            Credential::Cert(ca, name) => {
                if !keys.insert_cert(ca, name, entry) {
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
