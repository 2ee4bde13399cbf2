//! The `provider_keys` section: base URLs, API keys, headers, timeouts and fleets. A
//! kind's own section (`vertex`, `aws`) is compiled by its file in `provider/`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue};

use super::raw::{self, ProviderKind};
use super::{CompileCtx, Errors};
use crate::provider::{ApiKey, BaseUrl, Provider, Secret};
use crate::upstream::UpstreamSpec;

/// Every provider that compiles, by name (the first of a duplicated name).
pub(super) fn compile_providers(
    list: &[raw::ProviderKey],
    ctx: &CompileCtx<'_>,
    errs: &mut Errors,
) -> HashMap<String, Arc<Provider>> {
    let mut providers = HashMap::new();
    for (i, p) in list.iter().enumerate() {
        if let Some(provider) = compile_provider(i, p, ctx, errs) {
            providers.entry(p.name.clone()).or_insert_with(|| Arc::new(provider));
        }
    }
    providers
}

fn compile_provider(i: usize, p: &raw::ProviderKey, ctx: &CompileCtx<'_>, errs: &mut Errors) -> Option<Provider> {
    let path = format!("provider_keys[{i}]");
    let before = errs.0.len();
    let api_key = match (p.api_key.as_deref(), crate::provider::api_key(p.provider)) {
        (Some(""), _) => {
            errs.push(format!("{path}.api_key"), "must not be empty");
            None
        }
        (Some(_), ApiKey::Refused(why)) => {
            errs.push(format!("{path}.api_key"), why);
            None
        }
        (Some(k), _) => Some(Secret::new(k.to_owned())),
        (None, ApiKey::Required) => {
            errs.push(format!("{path}.api_key"), "required for this provider");
            None
        }
        (None, _) => None,
    };
    let vertex = compile_section(
        &path,
        ("vertex", p.vertex.as_ref()),
        (ProviderKind::Vertex, "vertex"),
        p,
        errs,
        |v, error| match v {
            Some(v) => crate::provider::vertex::compile(v, error),
            None => {
                error(
                    "",
                    "required for vertex providers: {project, location, credentials_file}",
                );
                None
            }
        },
    );
    let aws = compile_section(
        &path,
        ("aws", p.aws.as_ref()),
        (ProviderKind::Bedrock, "bedrock"),
        p,
        errs,
        |a, error| crate::provider::bedrock::compile(a, ctx.env, error),
    );
    let cloud_base = match (&vertex, &aws) {
        (Some(v), _) => Some(crate::provider::vertex::default_base_url(&v.location)),
        (_, Some(a)) => Some(crate::provider::bedrock::default_base_url(&a.region)),
        _ => None,
    };
    let base_src = p
        .base_url
        .as_deref()
        .or(crate::provider::default_base_url(p.provider))
        .or(cloud_base.as_deref());
    let base = match base_src {
        Some(u) => match BaseUrl::parse(u) {
            Ok(b) => Some(b),
            Err(e) => {
                errs.push(
                    format!("{path}.base_url"),
                    format!("'{}' {e}", crate::outbound::shown(u)),
                );
                None
            }
        },
        None => {
            errs.push(format!("{path}.base_url"), "required for this provider");
            None
        }
    };
    if p.api_version.is_some() && p.provider != ProviderKind::Azure {
        errs.push(format!("{path}.api_version"), "only azure providers take api_version");
    }
    if p.anthropic_version.is_some() && p.provider != ProviderKind::Anthropic {
        errs.push(
            format!("{path}.anthropic_version"),
            "only anthropic providers take anthropic_version",
        );
    }
    let mut headers = Vec::new();
    for (k, v) in &p.headers {
        match (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(v)) {
            (Ok(n), Ok(v)) => headers.push((n, v)),
            (Err(_), _) => errs.push(format!("{path}.headers.{k}"), "not a valid header name"),
            (_, Err(_)) => errs.push(format!("{path}.headers.{k}"), "not a valid header value"),
        }
    }
    let t = p.timeouts;
    for (field, v) in [
        ("connect_ms", t.connect_ms),
        ("first_byte_ms", t.first_byte_ms),
        ("idle_ms", t.idle_ms),
    ] {
        if v == 0 {
            errs.push(format!("{path}.timeouts.{field}"), "must be at least 1");
        }
    }
    if let Some(f) = &p.fleet {
        for (j, e) in f.endpoints.iter().enumerate() {
            if split_host_port(e).is_none() {
                errs.push(
                    format!("{path}.fleet.endpoints[{j}]"),
                    format!("'{e}' is not host:port"),
                );
            }
        }
        if let Some(hc) = &f.health_check {
            if !hc.path.starts_with('/') {
                errs.push(format!("{path}.fleet.health_check.path"), "must start with /");
            }
            if hc.interval_s == 0 || hc.unhealthy_after == 0 || hc.healthy_after == 0 {
                errs.push(
                    format!("{path}.fleet.health_check"),
                    "interval_s, unhealthy_after and healthy_after must be at least 1",
                );
            }
        }
    }
    if errs.0.len() > before {
        return None;
    }
    let base = base?;
    // A fleet's endpoints, or every address DNS gives for the base URL's host. Either
    // way the Host header and TLS name stay the base URL's.
    let addrs = match p.fleet.as_ref().filter(|f| !f.endpoints.is_empty()) {
        Some(f) => f.endpoints.iter().filter_map(|e| split_host_port(e)).collect(),
        None => vec![(base.host.clone(), base.port)],
    };
    let mut spec = UpstreamSpec::single(&base.host, base.port, base.tls);
    spec.addrs = addrs;
    if let Some(f) = &p.fleet {
        spec.balance = f.balance;
        spec.hash_on = f.hash_on;
        spec.health = f.health_check.clone();
    }
    let upstream = ctx.upstreams.get_or_create(spec);
    Some(Provider {
        name: p.name.clone(),
        kind: p.provider,
        api_key,
        headers,
        connect_timeout: Duration::from_millis(t.connect_ms),
        first_byte_timeout: Duration::from_millis(t.first_byte_ms),
        idle_timeout: Duration::from_millis(t.idle_ms),
        api_version: match p.provider {
            ProviderKind::Azure => Some(p.api_version.clone().unwrap_or_else(|| "2024-10-21".into())),
            _ => None,
        },
        anthropic_version: p.anthropic_version.clone(),
        http2: p.http2,
        base,
        upstream,
        vertex,
        aws,
    })
}

/// A kind's own section (`vertex`, `aws`): refused on other kinds, else compiled by its
/// provider file, each error at `{path}.{section}.{field}` (the section's own path for
/// an empty field).
fn compile_section<S, T>(
    path: &str,
    (name, given): (&str, Option<&S>),
    (owner, kind): (ProviderKind, &str),
    p: &raw::ProviderKey,
    errs: &mut Errors,
    compile: impl FnOnce(Option<&S>, &mut dyn FnMut(&str, &str)) -> Option<T>,
) -> Option<T> {
    if p.provider != owner {
        if given.is_some() {
            errs.push(
                format!("{path}.{name}"),
                format!("only {kind} providers take the {name} section"),
            );
        }
        return None;
    }
    compile(given, &mut |field, msg| match field {
        "" => errs.push(format!("{path}.{name}"), msg),
        f => errs.push(format!("{path}.{name}.{f}"), msg),
    })
}

pub(super) fn split_host_port(s: &str) -> Option<(String, u16)> {
    if let Ok(a) = s.parse::<std::net::SocketAddr>() {
        return Some((a.ip().to_string(), a.port()));
    }
    let (h, p) = s.rsplit_once(':')?;
    let port = p.parse().ok()?;
    (!h.is_empty() && !h.contains(':')).then(|| (h.to_owned(), port))
}
