//! The `jwt` section: issuers whose tokens authenticate callers, with their key sets
//! (read from a file now, or fetched from a URL or through discovery in the background)
//! and the policies their callers get.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::{raw, Errors, Refs};
use crate::auth::jwks::{self, KeySet, RemoteKeys, Source};
use crate::auth::jwt::{Issuer, Issuers, Keys, Policies};
use crate::auth::keys::{check_owner_text, OwnerNamespace};
use crate::config::Kind;

/// The longest clock skew allowed on `exp` and `nbf`.
const MAX_LEEWAY_S: u64 = 300;
const MAX_REFRESH_S: u64 = 86_400;

pub(super) fn compile_jwt(list: &[raw::JwtIssuer], refs: &Refs<'_, '_>, errs: &mut Errors) -> Issuers {
    let mut out = Vec::new();
    let mut by_iss: HashMap<&str, usize> = HashMap::new();
    for (i, j) in list.iter().enumerate() {
        let path = format!("jwt[{i}]");
        let mut ok = check_fields(&path, j, errs);
        if let Some(prev) = by_iss.insert(j.issuer.as_str(), i) {
            errs.push(
                format!("{path}.issuer"),
                format!("jwt[{prev}] has the same issuer; a token's iss must pick one entry"),
            );
            ok = false;
        }
        for (k, alias) in j.models.iter().flatten().enumerate() {
            refs.check(format!("{path}.models[{k}]"), Kind::Models, alias, errs);
        }
        refs.check_policies(&path, j.rate_limit.as_deref(), &j.guardrails, j.budget.as_deref(), errs);
        let mcp = refs.mcp_access(&path, j.mcp.as_ref(), errs);
        let namespace = namespace(&path, j, list, errs);
        let Some(keys) = keys(&path, j, errs) else { continue };
        let Some(namespace) = namespace.filter(|_| ok) else {
            continue;
        };
        let policies = Policies {
            policy: j
                .rate_limit
                .as_deref()
                .and_then(|n| refs.policies.get(n))
                .map(|p| Arc::new((*p).clone())),
            guardrails: refs.guardrails(&j.guardrails),
            budget: j.budget.as_ref().and_then(|b| refs.budgets.get(b.as_str()).cloned()),
            mcp,
            namespace,
        };
        out.push(Arc::new(Issuer::new(j, keys, policies)));
    }
    Issuers(out)
}

fn check_fields(path: &str, j: &raw::JwtIssuer, errs: &mut Errors) -> bool {
    let before = errs.0.len();
    if j.issuer.trim().is_empty() {
        errs.push(format!("{path}.issuer"), "must not be empty");
    }
    if j.audience.is_empty() || j.audience.iter().any(|a| a.trim().is_empty()) {
        errs.push(
            format!("{path}.audience"),
            "name the audience (aud) tokens must be issued for: without it, a token the issuer made for any other service would be accepted",
        );
    }
    if j.owner_claim.trim().is_empty() {
        errs.push(format!("{path}.owner_claim"), "must not be empty");
    }
    if j.models_claim.as_deref().is_some_and(|c| c.trim().is_empty()) {
        errs.push(
            format!("{path}.models_claim"),
            "must not be empty (omit it to use models alone)",
        );
    }
    if j.leeway_s > MAX_LEEWAY_S {
        errs.push(format!("{path}.leeway_s"), format!("must be at most {MAX_LEEWAY_S}"));
    }
    let min = jwks::MIN_FETCH_INTERVAL.as_secs();
    if !(min..=MAX_REFRESH_S).contains(&j.refresh_s) {
        errs.push(
            format!("{path}.refresh_s"),
            format!("must be between {min} and {MAX_REFRESH_S}"),
        );
    }
    errs.0.len() == before
}

/// Where the issuer's owners live: its own namespace, unless `owner_namespace` puts them
/// with the owners of `keys` or of another issuer (one that keeps its own). The name is
/// part of every owner it gives (`jwt:<name>/<owner>`), so it holds no `/` and nothing
/// an owner may not hold.
fn namespace(path: &str, j: &raw::JwtIssuer, all: &[raw::JwtIssuer], errs: &mut Errors) -> Option<OwnerNamespace> {
    let mut ok = true;
    if let Err(e) = check_owner_text(&j.name) {
        // An empty name is reported with the other names.
        if !j.name.is_empty() {
            errs.push(format!("{path}.name"), e);
        }
        ok = false;
    } else if j.name.contains('/') {
        errs.push(
            format!("{path}.name"),
            "must not contain '/' (it separates the issuer from the owner in jwt:<issuer>/<owner>)",
        );
        ok = false;
    }
    let Some(text) = &j.owner_namespace else {
        return ok.then(|| OwnerNamespace::Issuer(j.name.clone()));
    };
    let at = format!("{path}.owner_namespace");
    let ns = match OwnerNamespace::parse(text) {
        None => {
            errs.push(at, "must be keys or jwt:<an issuer's name>");
            return None;
        }
        Some(OwnerNamespace::Issuer(other)) if other != j.name => match all.iter().find(|o| o.name == other) {
            None => {
                errs.push(at, format!("no JWT issuer named '{other}' in jwt"));
                return None;
            }
            Some(o)
                if o.owner_namespace
                    .as_deref()
                    .is_some_and(|n| n != format!("jwt:{other}")) =>
            {
                errs.push(
                    at,
                    format!("jwt:{other} keeps its owners in another namespace; name that one"),
                );
                return None;
            }
            Some(_) => OwnerNamespace::Issuer(other),
        },
        Some(ns) => ns,
    };
    ok.then_some(ns)
}

/// The issuer's keys: the file's, read now; or a remote set, fetched in the background.
fn keys(path: &str, j: &raw::JwtIssuer, errs: &mut Errors) -> Option<Keys> {
    let refresh = Duration::from_secs(j.refresh_s);
    let remote = |field: &'static str, url: &str, source: Source| {
        jwks::check_url(url)
            .and_then(|()| RemoteKeys::shared(source, refresh, &j.name))
            .map(Keys::Remote)
            .map_err(|e| (field, e))
    };
    let keys = match (&j.jwks_file, &j.jwks_url) {
        (Some(_), Some(_)) => {
            errs.push(
                path,
                "set jwks_file or jwks_url, not both (neither: OIDC discovery from issuer)",
            );
            return None;
        }
        (Some(file), None) => std::fs::read(file)
            .map_err(|e| format!("cannot read '{file}': {e}"))
            .and_then(|b| KeySet::parse(&b).map_err(|e| format!("'{file}' {e}")))
            .map(Keys::File)
            .map_err(|e| ("jwks_file", e)),
        (None, Some(url)) => remote("jwks_url", url, Source::Url(url.clone())),
        (None, None) => remote("issuer", &j.issuer, Source::Discovery(j.issuer.clone())),
    };
    keys.map_err(|(field, e)| errs.push(format!("{path}.{field}"), e)).ok()
}
