//! What a request is sent to: a provider key as compiled from `provider_keys` (its base
//! URL, credential, headers, timeouts and replicas) and a target (a provider and the
//! model id it knows). `config` compiles them; everything above reads them.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Uri};

use crate::raw::{self, ProviderKind};
use crate::upstream::Upstream;

/// A provider's base URL, split the way upstream requests need it.
#[derive(Debug, Clone)]
pub struct BaseUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path prefix without a trailing slash, e.g. `/v1`.
    pub path: String,
    /// `host` or `host:port` when the port is not the scheme's default.
    pub authority: String,
}

impl BaseUrl {
    pub fn parse(s: &str) -> Result<Self, String> {
        let uri: Uri = s.parse().map_err(|e| format!("not a valid URL ({e})"))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err("must start with http:// or https://".into()),
        };
        // It would ride in the Host header of every request (and in errors).
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err("must not hold user:password@ (the provider's credential goes in api_key or headers)".into());
        }
        let host = uri.host().filter(|h| !h.is_empty()).ok_or("has no host")?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        if uri.query().is_some() {
            return Err("must not have a query string".into());
        }
        let default_port = if tls { 443 } else { 80 };
        let port = uri.port_u16().unwrap_or(default_port);
        let authority = match uri.port_u16() {
            Some(p) if p != default_port => uri
                .authority()
                .map(|a| a.as_str().to_owned())
                .unwrap_or_else(|| format!("{host}:{p}")),
            _ => uri.host().unwrap_or(&host).to_owned(),
        };
        Ok(Self {
            tls,
            host,
            port,
            path: uri.path().trim_end_matches('/').to_owned(),
            authority,
        })
    }
}

#[derive(Debug)]
pub struct Provider {
    pub name: String,
    pub kind: ProviderKind,
    /// Never logged, traced, exported or echoed: `Debug` of [`Provider`] redacts it.
    pub api_key: Option<Secret>,
    pub base: BaseUrl,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub connect_timeout: Duration,
    pub first_byte_timeout: Duration,
    pub idle_timeout: Duration,
    pub api_version: Option<String>,
    pub anthropic_version: Option<String>,
    pub http2: raw::Http2,
    pub upstream: Arc<Upstream>,
    /// `provider: vertex` only.
    pub vertex: Option<super::vertex::Vertex>,
    /// `provider: bedrock` only.
    pub aws: Option<super::bedrock::Aws>,
}

/// A credential whose `Debug` output is redacted, so it cannot reach a log by accident.
pub struct Secret(String);

impl Secret {
    pub fn new(key: String) -> Self {
        Self(key)
    }
}

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A concrete model: one provider, one upstream model id.
#[derive(Debug, Clone)]
pub struct Target {
    /// The alias of the concrete model (its `name`).
    pub alias: String,
    pub provider: Arc<Provider>,
    pub upstream_model: String,
    /// What the provider grants this model (`quota`), as limit rules shared by every
    /// route that reaches it.
    pub quota: Option<Arc<crate::limit::Binding>>,
}
