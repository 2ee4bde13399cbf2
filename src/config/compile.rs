//! Raw config -> validated, indexed [`Snapshot`]. Every reference is resolved here, so a
//! compiled snapshot cannot hold a dangling name; every error is collected with its path.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use http::{HeaderName, HeaderValue, Uri};
use subtle::ConstantTimeEq;

use super::raw::{self, ProviderKind};
use super::{ConfigError, RawConfig};
use crate::guard::Guardrail;
use crate::limit::{Binding, Cells};
use crate::route::upstream::{UpstreamRegistry, UpstreamSpec};
use crate::route::Upstream;

/// What compiling needs from the outside world: the environment (for `key_env`) and the
/// upstream registry, so a provider that keeps its address keeps its resolved backends.
pub struct CompileCtx<'a> {
    pub env: &'a dyn Fn(&str) -> Option<String>,
    pub upstreams: &'a UpstreamRegistry,
    /// Rate limit state, so a policy that keeps its name keeps its counters.
    pub limits: &'a Cells,
}

#[derive(Debug, Clone)]
pub struct TlsListener {
    pub listen: String,
    pub cert_file: String,
    pub key_file: String,
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen: Vec<String>,
    pub tls: Vec<TlsListener>,
    pub admin_listen: Option<String>,
    pub threads: usize,
    pub work_stealing: bool,
    pub grace_period_s: u64,
    pub max_request_body_bytes: u64,
    pub client_body_timeout: Duration,
    pub keepalive_timeout_s: u64,
    pub keepalive_requests: u32,
    pub read_buffer_bytes: usize,
    pub redis: Option<RedisSettings>,
    /// Resources come from etcd instead of the file.
    pub config_store: Option<EtcdSettings>,
    /// BLAKE3 hashes of the admin API's keys.
    pub admin_keys: Vec<[u8; 32]>,
}

/// `server.config_store.etcd`. The password is never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdSettings {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub cache_file: Option<std::path::PathBuf>,
    pub tls: Option<EtcdTlsFiles>,
    pub user: Option<String>,
    pub password: Option<String>,
}

impl fmt::Debug for EtcdSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdSettings")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("cache_file", &self.cache_file)
            .field("tls", &self.tls)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTlsFiles {
    pub ca_file: String,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
}

/// `server.redis`. The URL may hold a password: it is never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisSettings {
    pub url: String,
    pub pool_size: usize,
    pub timeout: Duration,
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("pool_size", &self.pool_size)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

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
    pub vertex: Option<crate::provider::vertex::Vertex>,
    /// `provider: bedrock` only.
    pub aws: Option<crate::provider::bedrock::Aws>,
}

/// A credential whose `Debug` output is redacted, so it cannot reach a log by accident.
pub struct Secret(String);

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
}

#[derive(Debug, Clone)]
pub struct RouteTarget {
    pub target: Target,
    pub priority: u32,
    pub weight: u32,
}

#[derive(Debug)]
pub struct Routing {
    /// Next start position for `round_robin`.
    pub rr_next: std::sync::atomic::AtomicUsize,
    pub strategy: raw::Strategy,
    pub targets: Vec<RouteTarget>,
    pub retry_on: Vec<u16>,
    pub max_attempts: u32,
    pub cooldown: Duration,
    pub failures_before_cooldown: u32,
}

#[derive(Debug)]
pub enum ModelRoute {
    Single(Target),
    Multi(Routing),
}

#[derive(Debug)]
pub struct Model {
    pub name: String,
    pub route: ModelRoute,
    /// The model's `rate_limit`, counted across every caller of this alias.
    pub limits: Option<Arc<Binding>>,
    /// Applied after the caller key's own guardrails.
    pub guardrails: Vec<Arc<Guardrail>>,
    /// The model's response cache policy.
    pub cache: Option<Arc<raw::Cache>>,
    pub pricing: Option<raw::Pricing>,
}

#[derive(Debug)]
pub struct ApiKeyEntry {
    pub name: String,
    pub owner: String,
    hash: [u8; 32],
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

/// Caller keys by BLAKE3 hash. Buckets are found by the hash's first 8 bytes; the full
/// 32 bytes are compared in constant time, so timing reveals nothing about stored hashes.
#[derive(Debug, Default)]
pub struct KeyIndex {
    buckets: HashMap<u64, Vec<Arc<ApiKeyEntry>>>,
}

impl KeyIndex {
    pub fn lookup(&self, presented: &[u8]) -> Option<&Arc<ApiKeyEntry>> {
        let hash = blake3::hash(presented);
        let hash = hash.as_bytes();
        let bucket = self.buckets.get(&prefix_u64(hash))?;
        bucket.iter().find(|e| bool::from(e.hash.ct_eq(hash)))
    }

    fn insert(&mut self, e: ApiKeyEntry) {
        self.buckets.entry(prefix_u64(&e.hash)).or_default().push(Arc::new(e));
    }

    pub fn len(&self) -> usize {
        self.buckets.values().map(Vec::len).sum()
    }

    /// Every key, in no particular order.
    pub fn entries(&self) -> impl Iterator<Item = &Arc<ApiKeyEntry>> {
        self.buckets.values().flatten()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
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

fn parse_key_hash(s: &str) -> Result<[u8; 32], String> {
    let hex = s
        .strip_prefix("blake3:")
        .ok_or("must look like blake3:<64 hex digits> (see `aigw hash-key`)")?;
    blake3::Hash::from_hex(hex)
        .map(|h| *h.as_bytes())
        .map_err(|_| "must look like blake3:<64 hex digits> (see `aigw hash-key`)".into())
}

/// The validated, immutable config that one request sees from start to end.
#[derive(Debug)]
pub struct Snapshot {
    pub server: ServerSettings,
    pub providers: HashMap<String, Arc<Provider>>,
    pub models: HashMap<String, Arc<Model>>,
    /// Model aliases in config order, for `GET /v1/models`.
    pub model_order: Vec<String>,
    pub keys: KeyIndex,
    pub rate_limits: Vec<raw::RateLimit>,
    pub guardrails: Vec<Arc<Guardrail>>,
    pub caches: Vec<Arc<raw::Cache>>,
    pub budgets: Vec<Arc<raw::Budget>>,
    pub observability: raw::Observability,
    /// Unix seconds when this snapshot was compiled; `created` in `/v1/models`.
    pub created: i64,
}

impl Snapshot {
    pub fn summary(&self) -> String {
        format!(
            "{} provider keys, {} models, {} api keys, {} rate limits, {} guardrails, {} caches, {} budgets",
            self.providers.len(),
            self.models.len(),
            self.keys.len(),
            self.rate_limits.len(),
            self.guardrails.len(),
            self.caches.len(),
            self.budgets.len()
        )
    }
}

struct Errors(Vec<ConfigError>);

impl Errors {
    fn push(&mut self, path: impl Into<String>, msg: impl Into<String>) {
        self.0.push(ConfigError::new(path, msg));
    }
}

/// Names per section, with the names of items that failed to parse counted as present.
struct Names<'a> {
    broken: &'a [(&'static str, String)],
}

impl Names<'_> {
    fn is_broken(&self, section: &str, name: &str) -> bool {
        self.broken.iter().any(|(s, n)| *s == section && n == name)
    }
}

fn check_unique<'a>(section: &str, names: impl Iterator<Item = &'a str>, errs: &mut Errors) -> HashSet<&'a str> {
    let mut seen = HashSet::new();
    for (i, n) in names.enumerate() {
        if n.trim().is_empty() {
            errs.push(format!("{section}[{i}].name"), "must not be empty");
        } else if !seen.insert(n) {
            errs.push(format!("{section}[{i}].name"), format!("duplicate name '{n}'"));
        }
    }
    seen
}

fn check_ref(
    path: String,
    what: &str,
    section: &str,
    name: &str,
    known: &HashSet<&str>,
    names: &Names<'_>,
    errs: &mut Errors,
) {
    if !known.contains(name) && !names.is_broken(section, name) {
        errs.push(path, format!("no {what} named '{name}' in {section}"));
    }
}

pub fn compile(mut raw: RawConfig, ctx: &CompileCtx<'_>) -> Result<Snapshot, Vec<ConfigError>> {
    let mut errs = Errors(Vec::new());
    let names = Names { broken: &raw.broken };

    match raw.version {
        Some(1) => {}
        Some(v) => errs.push("version", format!("unsupported version {v}; this aigw reads version 1")),
        None if names.is_broken("version", "") => {}
        None => errs.push("version", "missing; write `version: 1`"),
    }
    let mut server = compile_server(&raw.server, &mut errs);
    server.admin_keys = raw
        .server
        .admin_keys
        .iter()
        .enumerate()
        .filter_map(|(i, k)| resolve_key_source(&format!("server.admin_keys[{i}]"), k, ctx, &mut errs))
        .collect();

    // Names of every section first, so references can be checked in any order.
    let provider_names = check_unique(
        "provider_keys",
        raw.provider_keys.iter().map(|p| p.name.as_str()),
        &mut errs,
    );
    let model_names = check_unique("models", raw.models.iter().map(|m| m.name.as_str()), &mut errs);
    check_unique("api_keys", raw.api_keys.iter().map(|k| k.name.as_str()), &mut errs);
    let budgets: Vec<Arc<raw::Budget>> = std::mem::take(&mut raw.budgets).into_iter().map(Arc::new).collect();
    let budget_names = check_unique("budgets", budgets.iter().map(|b| b.name.as_str()), &mut errs);
    let mut budget_by_name: HashMap<&str, Arc<raw::Budget>> = HashMap::new();
    for b in &budgets {
        budget_by_name.entry(b.name.as_str()).or_insert_with(|| b.clone());
    }
    let limit_names = check_unique(
        "rate_limits",
        raw.rate_limits.iter().map(|r| r.name.as_str()),
        &mut errs,
    );
    let policies: HashMap<&str, &raw::RateLimit> = raw.rate_limits.iter().map(|r| (r.name.as_str(), r)).collect();
    let bind = |name: Option<&str>, scope: &str| name.and_then(|n| policies.get(n)).map(|p| ctx.limits.bind(p, scope));
    let guard_names = check_unique("guardrails", raw.guardrails.iter().map(|g| g.name.as_str()), &mut errs);
    let mut guards: HashMap<String, Arc<Guardrail>> = HashMap::new();
    let mut guard_order = Vec::new();
    for (i, g) in raw.guardrails.iter().enumerate() {
        match Guardrail::compile(&format!("guardrails[{i}]"), g) {
            Ok(compiled) => {
                let compiled = Arc::new(compiled);
                if !guards.contains_key(&g.name) {
                    guards.insert(g.name.clone(), compiled.clone());
                    guard_order.push(compiled);
                }
            }
            Err(list) => list.into_iter().for_each(|(path, msg)| errs.push(path, msg)),
        }
    }
    let resolve =
        |names: &[String]| -> Vec<Arc<Guardrail>> { names.iter().filter_map(|n| guards.get(n).cloned()).collect() };
    let caches: Vec<Arc<raw::Cache>> = std::mem::take(&mut raw.cache).into_iter().map(Arc::new).collect();
    let cache_names = check_unique("cache", caches.iter().map(|c| c.name.as_str()), &mut errs);
    let mut cache_policies: HashMap<&str, Arc<raw::Cache>> = HashMap::new();
    for c in &caches {
        cache_policies.entry(c.name.as_str()).or_insert_with(|| c.clone());
    }

    let mut providers = HashMap::new();
    for (i, p) in raw.provider_keys.iter().enumerate() {
        if let Some(provider) = compile_provider(i, p, ctx, &mut errs) {
            providers.entry(p.name.clone()).or_insert_with(|| Arc::new(provider));
        }
    }

    // Concrete models first; multi-target aliases may only point at concrete ones.
    let mut targets: HashMap<&str, Target> = HashMap::new();
    for (i, m) in raw.models.iter().enumerate() {
        let path = format!("models[{i}]");
        match (&m.provider_key, &m.routing) {
            (Some(pk), None) => {
                if let Some(p) = providers.get(pk) {
                    let upstream_model = m.model.clone().unwrap_or_else(|| m.name.clone());
                    if upstream_model.is_empty() {
                        errs.push(format!("{path}.model"), "must not be empty");
                    }
                    targets.insert(
                        &m.name,
                        Target {
                            alias: m.name.clone(),
                            provider: p.clone(),
                            upstream_model,
                        },
                    );
                } else {
                    check_ref(
                        format!("{path}.provider_key"),
                        "provider key",
                        "provider_keys",
                        pk,
                        &provider_names,
                        &names,
                        &mut errs,
                    );
                }
            }
            (None, Some(_)) => {
                if m.model.is_some() {
                    errs.push(
                        format!("{path}.model"),
                        "a multi-target alias takes its models from routing.targets",
                    );
                }
            }
            (Some(_), Some(_)) => errs.push(
                &path,
                "set either provider_key (one model) or routing (several targets), not both",
            ),
            (None, None) => errs.push(&path, "needs provider_key (one model) or routing (several targets)"),
        }
    }

    let mut models = HashMap::new();
    let mut model_order = Vec::new();
    for (i, m) in raw.models.iter().enumerate() {
        let path = format!("models[{i}]");
        if let Some(rl) = &m.rate_limit {
            check_ref(
                format!("{path}.rate_limit"),
                "rate limit",
                "rate_limits",
                rl,
                &limit_names,
                &names,
                &mut errs,
            );
        }
        for (j, g) in m.guardrails.iter().enumerate() {
            check_ref(
                format!("{path}.guardrails[{j}]"),
                "guardrail",
                "guardrails",
                g,
                &guard_names,
                &names,
                &mut errs,
            );
        }
        if let Some(c) = &m.cache {
            check_ref(
                format!("{path}.cache"),
                "cache",
                "cache",
                c,
                &cache_names,
                &names,
                &mut errs,
            );
        }
        if let Some(pr) = &m.pricing {
            if !(pr.input_per_mtok >= 0.0 && pr.output_per_mtok >= 0.0) {
                errs.push(format!("{path}.pricing"), "prices must be zero or positive numbers");
            }
        }
        let route = if let Some(r) = &m.routing {
            compile_routing(&path, r, &targets, &model_names, &names, &mut errs).map(ModelRoute::Multi)
        } else {
            targets.get(m.name.as_str()).cloned().map(ModelRoute::Single)
        };
        if let Some(route) = route {
            if !models.contains_key(&m.name) {
                model_order.push(m.name.clone());
                models.insert(
                    m.name.clone(),
                    Arc::new(Model {
                        name: m.name.clone(),
                        route,
                        limits: bind(m.rate_limit.as_deref(), &format!("model={}", m.name)),
                        guardrails: resolve(&m.guardrails),
                        cache: m.cache.as_ref().and_then(|c| cache_policies.get(c.as_str()).cloned()),
                        pricing: m.pricing,
                    }),
                );
            }
        }
    }

    let mut keys = KeyIndex::default();
    let mut seen_hashes: HashMap<[u8; 32], usize> = HashMap::new();
    for (i, k) in raw.api_keys.iter().enumerate() {
        let path = format!("api_keys[{i}]");
        let source = raw::KeySource {
            key: k.key.clone(),
            key_env: k.key_env.clone(),
            key_hash: k.key_hash.clone(),
        };
        let hash = resolve_key_source(&path, &source, ctx, &mut errs);
        if let Some(models) = &k.models {
            for (j, alias) in models.iter().enumerate() {
                check_ref(
                    format!("{path}.models[{j}]"),
                    "model",
                    "models",
                    alias,
                    &model_names,
                    &names,
                    &mut errs,
                );
            }
        }
        if let Some(rl) = &k.rate_limit {
            check_ref(
                format!("{path}.rate_limit"),
                "rate limit",
                "rate_limits",
                rl,
                &limit_names,
                &names,
                &mut errs,
            );
        }
        for (j, g) in k.guardrails.iter().enumerate() {
            check_ref(
                format!("{path}.guardrails[{j}]"),
                "guardrail",
                "guardrails",
                g,
                &guard_names,
                &names,
                &mut errs,
            );
        }
        if let Some(b) = &k.budget {
            check_ref(
                format!("{path}.budget"),
                "budget",
                "budgets",
                b,
                &budget_names,
                &names,
                &mut errs,
            );
        }
        if let Some(owner) = &k.owner {
            if owner.trim().is_empty() {
                errs.push(
                    format!("{path}.owner"),
                    "must not be empty (omit it to use the key's name)",
                );
            }
        }
        let Some(hash) = hash else { continue };
        if let Some(prev) = seen_hashes.insert(hash, i) {
            errs.push(
                &path,
                format!("the same caller key as api_keys[{prev}]; every key must be distinct"),
            );
            continue;
        }
        let owner = k.owner.clone().unwrap_or_else(|| k.name.clone());
        let limits = bind(k.rate_limit.as_deref(), &format!("owner={owner}"));
        keys.insert(ApiKeyEntry {
            name: k.name.clone(),
            owner,
            hash,
            models: k.models.as_ref().map(|m| m.iter().cloned().collect()),
            expires_at: k.expires_at,
            disabled: k.disabled,
            limits,
            guardrails: resolve(&k.guardrails),
            budget: k.budget.as_ref().and_then(|b| budget_by_name.get(b.as_str()).cloned()),
            cache: k.cache,
        });
    }

    for (i, b) in budgets.iter().enumerate() {
        if !(b.usd.is_finite() && b.usd >= 0.0) {
            errs.push(format!("budgets[{i}].usd"), "must be zero or a positive number");
        }
    }
    for (i, r) in raw.rate_limits.iter().enumerate() {
        compile_rate_limit(i, r, &mut errs);
    }
    for (i, c) in caches.iter().enumerate() {
        let path = format!("cache[{i}]");
        if c.ttl_s == 0 {
            errs.push(format!("{path}.ttl_s"), "must be at least 1");
        }
        if c.max_bytes == 0 {
            errs.push(format!("{path}.max_bytes"), "must be at least 1");
        }
        if c.max_entry_bytes == 0 || c.max_entry_bytes > c.max_bytes {
            errs.push(
                format!("{path}.max_entry_bytes"),
                "must be at least 1 and at most max_bytes",
            );
        }
        if c.max_entries == 0 {
            errs.push(format!("{path}.max_entries"), "must be at least 1");
        }
        if c.backend == raw::CacheBackend::Redis && server.redis.is_none() {
            errs.push(format!("{path}.backend"), "backend redis needs server.redis");
        }
    }
    if let Some(o) = &raw.observability.otlp {
        match BaseUrl::parse(&o.endpoint) {
            Err(e) => errs.push("observability.otlp.endpoint", e),
            // The exporter is built without TLS: spans go to a collector or agent nearby.
            Ok(b) if b.tls => errs.push(
                "observability.otlp.endpoint",
                "must be http:// (a local collector or agent; aigw's exporter has no TLS)",
            ),
            Ok(_) => {}
        }
        if !(0.0..=1.0).contains(&o.sample_ratio) {
            errs.push("observability.otlp.sample_ratio", "must be between 0 and 1");
        }
    }

    if !errs.0.is_empty() {
        return Err(errs.0);
    }
    Ok(Snapshot {
        server,
        providers,
        models,
        model_order,
        keys,
        rate_limits: raw.rate_limits,
        guardrails: guard_order,
        caches,
        budgets,
        observability: raw.observability,
        created: Utc::now().timestamp(),
    })
}

fn check_listen(path: String, addr: &str, errs: &mut Errors) {
    if addr.parse::<std::net::SocketAddr>().is_err() {
        errs.push(
            path,
            format!("'{addr}' is not an address like 127.0.0.1:8080 or [::]:8080"),
        );
    }
}

fn compile_server(s: &raw::Server, errs: &mut Errors) -> ServerSettings {
    if s.listen.is_empty() && s.tls.is_empty() {
        errs.push("server.listen", "at least one plaintext or TLS listener is needed");
    }
    for (i, l) in s.listen.iter().enumerate() {
        check_listen(format!("server.listen[{i}]"), l, errs);
    }
    for (i, t) in s.tls.iter().enumerate() {
        check_listen(format!("server.tls[{i}].listen"), &t.listen, errs);
        for (field, file) in [("cert_file", &t.cert_file), ("key_file", &t.key_file)] {
            if let Err(e) = std::fs::File::open(Path::new(file)) {
                errs.push(format!("server.tls[{i}].{field}"), format!("cannot read '{file}': {e}"));
            }
        }
    }
    if let Some(a) = &s.admin_listen {
        check_listen("server.admin_listen".into(), a, errs);
    }
    if s.max_request_body_bytes == 0 {
        errs.push("server.max_request_body_bytes", "must be at least 1");
    }
    if !(1..=3_600_000).contains(&s.client_body_timeout_ms) {
        errs.push("server.client_body_timeout_ms", "must be between 1 and 3600000");
    }
    if !(1..=3600).contains(&s.keepalive_timeout_s) {
        errs.push("server.keepalive_timeout_s", "must be between 1 and 3600");
    }
    if s.keepalive_requests == 0 {
        errs.push("server.keepalive_requests", "must be at least 1");
    }
    if !(1024..=1024 * 1024).contains(&s.read_buffer_bytes) {
        errs.push("server.read_buffer_bytes", "must be between 1024 and 1048576");
    }
    if let Some(r) = &s.redis {
        if !(r.url.starts_with("redis://") || r.url.starts_with("rediss://") || r.url.starts_with("unix://")) {
            errs.push("server.redis.url", "must start with redis://, rediss:// or unix://");
        } else if let Err(e) = redis::Client::open(r.url.as_str()) {
            errs.push("server.redis.url", format!("not a valid redis URL ({:?})", e.kind()));
        }
        if !(1..=64).contains(&r.pool_size) {
            errs.push("server.redis.pool_size", "must be between 1 and 64");
        }
        if !(1..=10_000).contains(&r.timeout_ms) {
            errs.push("server.redis.timeout_ms", "must be between 1 and 10000");
        }
    }
    if let Some(cs) = &s.config_store {
        let e = &cs.etcd;
        if e.endpoints.is_empty() {
            errs.push("server.config_store.etcd.endpoints", "needs at least one endpoint");
        }
        for (i, ep) in e.endpoints.iter().enumerate() {
            let tls = e.tls.is_some();
            let scheme = if tls { "https://" } else { "http://" };
            if !ep.starts_with(scheme) {
                errs.push(
                    format!("server.config_store.etcd.endpoints[{i}]"),
                    format!(
                        "must start with {scheme} (tls is {})",
                        if tls { "set" } else { "not set" }
                    ),
                );
            }
        }
        if !e.prefix.starts_with('/') || e.prefix.trim_end_matches('/').is_empty() {
            errs.push(
                "server.config_store.etcd.prefix",
                "must start with / and name a directory, e.g. /aigw",
            );
        }
        if e.user.is_some() != e.password.is_some() {
            errs.push("server.config_store.etcd", "set user and password together");
        }
        if let Some(t) = &e.tls {
            if t.cert_file.is_some() != t.key_file.is_some() {
                errs.push("server.config_store.etcd.tls", "set cert_file and key_file together");
            }
        }
    }
    ServerSettings {
        listen: s.listen.clone(),
        tls: s
            .tls
            .iter()
            .map(|t| TlsListener {
                listen: t.listen.clone(),
                cert_file: t.cert_file.clone(),
                key_file: t.key_file.clone(),
            })
            .collect(),
        admin_listen: s.admin_listen.clone(),
        threads: s.threads,
        work_stealing: s.work_stealing,
        grace_period_s: s.grace_period_s,
        max_request_body_bytes: s.max_request_body_bytes,
        client_body_timeout: Duration::from_millis(s.client_body_timeout_ms),
        keepalive_timeout_s: s.keepalive_timeout_s,
        keepalive_requests: s.keepalive_requests,
        read_buffer_bytes: s.read_buffer_bytes,
        redis: s.redis.as_ref().map(|r| RedisSettings {
            url: r.url.clone(),
            pool_size: r.pool_size,
            timeout: Duration::from_millis(r.timeout_ms),
        }),
        config_store: s.config_store.as_ref().map(|c| EtcdSettings {
            endpoints: c.etcd.endpoints.clone(),
            prefix: c.etcd.prefix.trim_end_matches('/').to_owned(),
            cache_file: c.etcd.cache_file.as_ref().map(std::path::PathBuf::from),
            tls: c.etcd.tls.as_ref().map(|t| EtcdTlsFiles {
                ca_file: t.ca_file.clone(),
                cert_file: t.cert_file.clone(),
                key_file: t.key_file.clone(),
            }),
            user: c.etcd.user.clone(),
            password: c.etcd.password.clone(),
        }),
        // Resolved in `compile`, which has the environment.
        admin_keys: Vec::new(),
    }
}

fn resolve_key_source(path: &str, s: &raw::KeySource, ctx: &CompileCtx<'_>, errs: &mut Errors) -> Option<[u8; 32]> {
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

fn default_base_url(kind: ProviderKind) -> Option<&'static str> {
    match kind {
        ProviderKind::Openai => Some("https://api.openai.com/v1"),
        ProviderKind::Anthropic => Some("https://api.anthropic.com"),
        ProviderKind::Gemini => Some("https://generativelanguage.googleapis.com"),
        // From the location: see `compile_provider`.
        ProviderKind::Azure | ProviderKind::OpenaiCompatible | ProviderKind::Vertex | ProviderKind::Bedrock => None,
    }
}

fn compile_provider(i: usize, p: &raw::ProviderKey, ctx: &CompileCtx<'_>, errs: &mut Errors) -> Option<Provider> {
    let path = format!("provider_keys[{i}]");
    let before = errs.0.len();
    let api_key = match (&p.api_key, p.provider) {
        (Some(k), _) if k.is_empty() => {
            errs.push(format!("{path}.api_key"), "must not be empty");
            None
        }
        (Some(_), ProviderKind::Vertex) => {
            errs.push(
                format!("{path}.api_key"),
                "vertex providers authenticate with vertex.credentials_file, not an api_key",
            );
            None
        }
        (Some(_), ProviderKind::Bedrock) => {
            errs.push(
                format!("{path}.api_key"),
                "bedrock providers sign with aws credentials, not an api_key",
            );
            None
        }
        (Some(k), _) => Some(Secret(k.clone())),
        (None, ProviderKind::OpenaiCompatible | ProviderKind::Vertex | ProviderKind::Bedrock) => None,
        (None, _) => {
            errs.push(format!("{path}.api_key"), "required for this provider");
            None
        }
    };
    let vertex = compile_vertex(&path, p, errs);
    let aws = compile_aws(&path, p, ctx, errs);
    let cloud_base = match (&vertex, &aws) {
        (Some(v), _) => Some(crate::provider::vertex::default_base_url(&v.location)),
        (_, Some(a)) => Some(crate::provider::bedrock::default_base_url(&a.region)),
        _ => None,
    };
    let base_src = p
        .base_url
        .as_deref()
        .or(default_base_url(p.provider))
        .or(cloud_base.as_deref());
    let base = match base_src {
        Some(u) => match BaseUrl::parse(u) {
            Ok(b) => Some(b),
            Err(e) => {
                errs.push(format!("{path}.base_url"), format!("'{u}' {e}"));
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

/// A `bedrock` provider's region and credentials: each field from the `aws` section, else
/// from the standard variable (`AWS_REGION` or `AWS_DEFAULT_REGION`, `AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`).
fn compile_aws(
    path: &str,
    p: &raw::ProviderKey,
    ctx: &CompileCtx<'_>,
    errs: &mut Errors,
) -> Option<crate::provider::bedrock::Aws> {
    match (&p.aws, p.provider) {
        (Some(_), ProviderKind::Bedrock) | (None, ProviderKind::Bedrock) => {}
        (Some(_), _) => {
            errs.push(format!("{path}.aws"), "only bedrock providers take an aws section");
            return None;
        }
        (None, _) => return None,
    }
    let empty = raw::AwsSettings::default();
    let a = p.aws.as_ref().unwrap_or(&empty);
    let pick = |given: &Option<String>, vars: &[&str]| {
        given
            .clone()
            .or_else(|| vars.iter().find_map(|v| (ctx.env)(v)))
            .filter(|s| !s.is_empty())
    };
    let region = pick(&a.region, &["AWS_REGION", "AWS_DEFAULT_REGION"]);
    let key_id = pick(&a.access_key_id, &["AWS_ACCESS_KEY_ID"]);
    let secret = pick(&a.secret_access_key, &["AWS_SECRET_ACCESS_KEY"]);
    let token = pick(&a.session_token, &["AWS_SESSION_TOKEN"]);
    let before = errs.0.len();
    match &region {
        Some(r) if r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') => {}
        Some(_) => errs.push(format!("{path}.aws.region"), "must be a region such as us-east-1"),
        None => errs.push(format!("{path}.aws.region"), "required (or AWS_REGION)"),
    }
    if key_id.is_none() {
        errs.push(format!("{path}.aws.access_key_id"), "required (or AWS_ACCESS_KEY_ID)");
    }
    if secret.is_none() {
        errs.push(
            format!("{path}.aws.secret_access_key"),
            "required (or AWS_SECRET_ACCESS_KEY)",
        );
    }
    if errs.0.len() > before {
        return None;
    }
    Some(crate::provider::bedrock::Aws {
        region: region?,
        credentials: aws_credential_types::Credentials::new(key_id?, secret?, token, None, "aigw-config"),
    })
}

/// A `vertex` provider's section: required there, refused elsewhere; the key file is read
/// and checked now.
fn compile_vertex(path: &str, p: &raw::ProviderKey, errs: &mut Errors) -> Option<crate::provider::vertex::Vertex> {
    let v = match (&p.vertex, p.provider) {
        (Some(v), ProviderKind::Vertex) => v,
        (None, ProviderKind::Vertex) => {
            errs.push(
                format!("{path}.vertex"),
                "required for vertex providers: {project, location, credentials_file}",
            );
            return None;
        }
        (Some(_), _) => {
            errs.push(format!("{path}.vertex"), "only vertex providers take a vertex section");
            return None;
        }
        (None, _) => return None,
    };
    let valid = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    let before = errs.0.len();
    if !valid(&v.project) {
        errs.push(
            format!("{path}.vertex.project"),
            "must be a project id (letters, digits, -)",
        );
    }
    if !valid(&v.location) {
        errs.push(
            format!("{path}.vertex.location"),
            "must be a location such as us-east5 or global",
        );
    }
    let tokens = crate::provider::vertex::tokens_for(&v.credentials_file)
        .map_err(|e| errs.push(format!("{path}.vertex.credentials_file"), e))
        .ok();
    if errs.0.len() > before {
        return None;
    }
    Some(crate::provider::vertex::Vertex {
        project: v.project.clone(),
        location: v.location.clone(),
        tokens: tokens?,
    })
}

fn split_host_port(s: &str) -> Option<(String, u16)> {
    if let Ok(a) = s.parse::<std::net::SocketAddr>() {
        return Some((a.ip().to_string(), a.port()));
    }
    let (h, p) = s.rsplit_once(':')?;
    let port = p.parse().ok()?;
    (!h.is_empty() && !h.contains(':')).then(|| (h.to_owned(), port))
}

fn compile_routing(
    path: &str,
    r: &raw::Routing,
    targets: &HashMap<&str, Target>,
    model_names: &HashSet<&str>,
    names: &Names<'_>,
    errs: &mut Errors,
) -> Option<Routing> {
    let before = errs.0.len();
    if r.targets.is_empty() {
        errs.push(format!("{path}.routing.targets"), "needs at least one target");
    }
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for (j, t) in r.targets.iter().enumerate() {
        let tp = format!("{path}.routing.targets[{j}]");
        if !seen.insert(t.model.as_str()) {
            errs.push(format!("{tp}.model"), format!("'{}' is listed twice", t.model));
        }
        if t.weight == 0 {
            errs.push(format!("{tp}.weight"), "must be at least 1");
        }
        match targets.get(t.model.as_str()) {
            Some(target) => out.push(RouteTarget {
                target: target.clone(),
                priority: t.priority,
                weight: t.weight,
            }),
            None if model_names.contains(t.model.as_str()) => errs.push(
                format!("{tp}.model"),
                format!(
                    "'{}' is itself a multi-target alias; targets must be concrete models",
                    t.model
                ),
            ),
            None => check_ref(
                format!("{tp}.model"),
                "model",
                "models",
                &t.model,
                model_names,
                names,
                errs,
            ),
        }
    }
    let retry_on = r.retry_on.clone().unwrap_or_else(|| vec![429, 500, 502, 503, 504]);
    for (j, s) in retry_on.iter().enumerate() {
        if !(400..=599).contains(s) {
            errs.push(
                format!("{path}.routing.retry_on[{j}]"),
                "must be an HTTP error status (400-599)",
            );
        }
    }
    if r.max_attempts == Some(0) {
        errs.push(format!("{path}.routing.max_attempts"), "must be at least 1");
    }
    if r.failures_before_cooldown == 0 {
        errs.push(format!("{path}.routing.failures_before_cooldown"), "must be at least 1");
    }
    if errs.0.len() > before {
        return None;
    }
    Some(Routing {
        rr_next: Default::default(),
        strategy: r.strategy,
        max_attempts: r.max_attempts.unwrap_or(out.len() as u32),
        targets: out,
        retry_on,
        cooldown: Duration::from_secs(r.cooldown_s),
        failures_before_cooldown: r.failures_before_cooldown,
    })
}

fn compile_rate_limit(i: usize, r: &raw::RateLimit, errs: &mut Errors) {
    let fields = [
        ("requests_per_second", r.requests_per_second),
        ("requests_per_minute", r.requests_per_minute),
        ("requests_per_hour", r.requests_per_hour),
        ("requests_per_day", r.requests_per_day),
        ("tokens_per_minute", r.tokens_per_minute),
        ("tokens_per_day", r.tokens_per_day),
        ("concurrency", r.concurrency),
    ];
    if fields.iter().all(|(_, v)| v.is_none()) {
        errs.push(format!("rate_limits[{i}]"), "set at least one limit");
    }
    for (f, v) in fields {
        if v == Some(0) {
            errs.push(
                format!("rate_limits[{i}].{f}"),
                "must be at least 1 (omit it for no limit)",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    fn compile_text(text: &str) -> Result<Snapshot, Vec<ConfigError>> {
        let env = |n: &str| (n == "CALLER").then(|| "sk-from-env".to_owned());
        let raw = parse(text, &env)?;
        let reg = UpstreamRegistry::default();
        compile(
            raw,
            &CompileCtx {
                env: &env,
                upstreams: &reg,
                limits: &Default::default(),
            },
        )
    }

    const GOOD: &str = r#"
version: 1
provider_keys:
  - {name: oa, provider: openai, api_key: sk-up, base_url: "http://127.0.0.1:9/v1"}
  - {name: az, provider: azure, api_key: k, base_url: "https://res.openai.azure.com"}
models:
  - {name: a, provider_key: oa, model: up-a}
  - {name: b, provider_key: az}
  - name: both
    routing: {targets: [{model: a}, {model: b, priority: 1}]}
api_keys:
  - {name: k1, key: sk-one, models: [a]}
  - {name: k2, key_env: CALLER, owner: team}
  - {name: k3, key_hash: "blake3:0000000000000000000000000000000000000000000000000000000000000000"}
"#;

    #[test]
    fn good_config_compiles_and_indexes() {
        let s = compile_text(GOOD).unwrap();
        assert_eq!(s.model_order, ["a", "b", "both"]);
        let k1 = s.keys.lookup(b"sk-one").unwrap();
        assert!(k1.allows("a") && !k1.allows("b"));
        assert_eq!(s.keys.lookup(b"sk-from-env").unwrap().owner, "team");
        assert!(s.keys.lookup(b"sk-other").is_none());
        let ModelRoute::Single(t) = &s.models["a"].route else {
            panic!()
        };
        assert_eq!(t.upstream_model, "up-a");
        let ModelRoute::Multi(r) = &s.models["both"].route else {
            panic!()
        };
        assert_eq!(r.max_attempts, 2);
        assert_eq!(r.retry_on, [429, 500, 502, 503, 504]);
        assert_eq!(s.providers["az"].api_version.as_deref(), Some("2024-10-21"));
    }

    #[test]
    fn provider_debug_never_shows_the_key() {
        let s = compile_text(GOOD).unwrap();
        let dbg = format!("{:?}", s.providers["oa"]);
        assert!(!dbg.contains("sk-up"), "{dbg}");
    }

    #[test]
    fn every_reference_error_is_reported() {
        let text = r#"
version: 1
provider_keys:
  - {name: oa, provider: openai, api_key: k}
  - {name: oa, provider: openai, api_key: k}
models:
  - {name: a, provider_key: nope, rate_limit: missing}
  - name: r
    routing: {targets: [{model: ghost}, {model: r2}]}
  - name: r2
    routing: {targets: [{model: a}]}
api_keys:
  - {name: k1, key: x, key_env: Y}
  - {name: k2, key: dup, models: [zzz]}
  - {name: k3, key: dup}
  - {name: k4, key_hash: "sha256:abc"}
"#;
        let errs = compile_text(text).unwrap_err();
        let paths: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
        for p in [
            "provider_keys[1].name",
            "models[0].provider_key",
            "models[0].rate_limit",
            "models[1].routing.targets[0].model",
            "models[1].routing.targets[1].model",
            "api_keys[0]",
            "api_keys[1].models[0]",
            "api_keys[2]",
            "api_keys[3].key_hash",
        ] {
            assert!(paths.contains(&p), "missing {p} in {errs:#?}");
        }
    }

    #[test]
    fn guardrail_errors_name_their_rule_or_pack() {
        let dir = tempfile::tempdir().unwrap();
        let bad_pack = dir.path().join("bad.yaml");
        std::fs::write(&bad_pack, "rules:\n  - {kind: regex, pattern: '(unclosed'}\n").unwrap();
        let not_a_pack = dir.path().join("nope.yaml");
        std::fs::write(&not_a_pack, "words: [x]\n").unwrap();
        let text = format!(
            r#"
version: 1
guardrails:
  - {{name: g0}}
  - {{name: g1, rules: [{{kind: keyword, words: [ok]}}, {{kind: regex, pattern: "a(b"}}]}}
  - {{name: g2, pack: "{}"}}
  - {{name: g3, pack: "{}"}}
  - {{name: g4, pack: /no/such/pack.yaml}}
  - {{name: g5, rules: [{{kind: pii, types: []}}, {{kind: keyword, words: [""]}}]}}
  - {{name: g6, pack: filters/pii.yaml, rules: [{{kind: regex, pattern: "(?i)falcon", label: codename}}], action: mask}}
models:
  - {{name: m, provider_key: nope, guardrails: [g6, ghost]}}
"#,
            bad_pack.display(),
            not_a_pack.display()
        );
        let errs = compile_text(&text).unwrap_err();
        let has = |path: &str, needle: &str| errs.iter().any(|e| e.path == path && e.message.contains(needle));
        assert!(has("guardrails[0]", "needs a pack"), "{errs:#?}");
        assert!(has("guardrails[1].rules[1]", "invalid regex"), "{errs:#?}");
        assert!(has("guardrails[2].pack", "rules[0]: invalid regex"), "{errs:#?}");
        assert!(has("guardrails[3].pack", "not a rule pack"), "{errs:#?}");
        assert!(has("guardrails[4].pack", "cannot read"), "{errs:#?}");
        assert!(has("guardrails[5].rules[0].types", "at least one"), "{errs:#?}");
        assert!(has("guardrails[5].rules[1].words", "non-empty"), "{errs:#?}");
        assert!(has("models[0].guardrails[1]", "ghost"), "{errs:#?}");
        assert!(!errs.iter().any(|e| e.path.starts_with("guardrails[6]")), "{errs:#?}");
    }

    #[test]
    fn base_url_forms() {
        let b = BaseUrl::parse("https://api.openai.com/v1/").unwrap();
        assert_eq!(
            (b.tls, b.port, b.path.as_str(), b.authority.as_str()),
            (true, 443, "/v1", "api.openai.com")
        );
        let b = BaseUrl::parse("http://127.0.0.1:8000").unwrap();
        assert_eq!(
            (b.tls, b.port, b.path.as_str(), b.authority.as_str()),
            (false, 8000, "", "127.0.0.1:8000")
        );
        assert!(BaseUrl::parse("ftp://x").is_err());
    }

    #[test]
    fn hash_key_round_trips() {
        let h = hash_key("sk-demo");
        assert_eq!(parse_key_hash(&h).unwrap(), *blake3::hash(b"sk-demo").as_bytes());
    }
}
