//! Raw config -> validated, indexed [`Snapshot`]. Every reference is resolved here, so a
//! compiled snapshot cannot hold a dangling name; every error is collected with its path.
//! One file per section; [`compile`] names every section first, then compiles them in
//! the order their references need.

mod jwt;
mod keys;
mod mcp;
mod models;
mod policies;
mod providers;
mod server;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::Utc;

use super::{ConfigError, Kind, RawConfig};
use crate::auth::KeyIndex;
use crate::guard::Guardrail;
use crate::limit::{Binding, Cells};
use crate::provider::Provider;
use crate::raw;
use crate::route::Model;
use crate::upstream::UpstreamRegistry;

pub use server::{EtcdSettings, EtcdTlsFiles, RedisSettings, ServerSettings, TlsListener};

/// What compiling needs from the outside world: the environment (for `key_env`) and the
/// upstream registry, so a provider that keeps its address keeps its resolved backends.
pub struct CompileCtx<'a> {
    pub env: &'a dyn Fn(&str) -> Option<String>,
    pub upstreams: &'a UpstreamRegistry,
    /// Rate limit state, so a policy that keeps its name keeps its counters.
    pub limits: &'a Cells,
    /// Where guardrail services count their calls (`None` when only checking a config).
    pub metrics: Option<&'a Arc<crate::metrics::Metrics>>,
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
    /// Issuers whose JWTs authenticate callers.
    pub jwt: crate::auth::jwt::Issuers,
    /// Upstream MCP servers, in config order.
    pub mcp_servers: Vec<Arc<crate::mcp::upstream::Server>>,
    pub rate_limits: Vec<raw::RateLimit>,
    pub guardrails: Vec<Arc<Guardrail>>,
    pub caches: Vec<Arc<raw::Cache>>,
    pub budgets: Vec<Arc<raw::Budget>>,
    pub observability: raw::Observability,
    /// Unix seconds when this snapshot was compiled; `created` in `/v1/models`.
    pub created: i64,
}

impl Snapshot {
    /// The access log's format (JSON when `observability.access_log` is not set).
    pub fn access_log_format(&self) -> raw::LogFormat {
        self.observability
            .access_log
            .as_ref()
            .map_or(raw::LogFormat::Json, |a| a.format)
    }

    /// What the spend report covers: the budgets of keys with their owners, and those of
    /// JWT issuers.
    pub fn budget_owners(&self) -> crate::budget::Covered {
        crate::budget::Covered {
            keyed: self
                .keys
                .entries()
                .filter_map(|k| Some((k.budget.clone()?, k.owner.clone())))
                .collect(),
            issued: self.jwt.0.iter().filter_map(|i| i.budget().cloned()).collect(),
        }
    }

    pub fn summary(&self) -> String {
        format!(
            "{} provider keys, {} models, {} api keys, {} JWT issuers, {} rate limits, {} guardrails, {} caches, {} budgets",
            self.providers.len(),
            self.models.len(),
            self.keys.len(),
            self.jwt.0.len(),
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

fn check_unique<'a>(kind: Kind, names: impl Iterator<Item = &'a str>, errs: &mut Errors) -> HashSet<&'a str> {
    let mut seen = HashSet::new();
    for (i, n) in names.enumerate() {
        if n.trim().is_empty() {
            errs.push(format!("{kind}[{i}].name"), "must not be empty");
        } else if n.chars().any(char::is_control) {
            // Names go into headers (x-aigw-model), metric labels and log lines.
            errs.push(format!("{kind}[{i}].name"), "must not contain control characters");
        } else if matches!(kind, Kind::RateLimits | Kind::Budgets | Kind::Cache) && n.contains(':') {
            // Their Redis keys are `aigw:<section>:<name>:...:<owner or scope>`: with a colon
            // in a name, one policy's key for one owner could be another's for another.
            errs.push(
                format!("{kind}[{i}].name"),
                "must not contain ':' (it separates the parts of the shared Redis keys)",
            );
        } else if !seen.insert(n) {
            errs.push(format!("{kind}[{i}].name"), format!("duplicate name '{n}'"));
        }
    }
    seen
}

/// What the sections refer to: each section's names (every reference is checked against
/// them) and the shared pieces compiled before the sections that use them.
struct Refs<'a, 'c> {
    ctx: &'a CompileCtx<'c>,
    names: Names<'a>,
    known: HashMap<Kind, HashSet<&'a str>>,
    policies: HashMap<&'a str, &'a raw::RateLimit>,
    guards: HashMap<String, Arc<Guardrail>>,
    caches: HashMap<&'a str, Arc<raw::Cache>>,
    budgets: HashMap<&'a str, Arc<raw::Budget>>,
}

impl Refs<'_, '_> {
    /// `name`, referred to at `path`, must name an item of `kind` (or one that failed to
    /// parse, whose own error is already reported).
    fn check(&self, path: String, kind: Kind, name: &str, errs: &mut Errors) {
        let known = self.known.get(&kind).is_some_and(|k| k.contains(name));
        if !known && !self.names.is_broken(kind.name(), name) {
            errs.push(path, format!("no {} named '{name}' in {kind}", kind.noun()));
        }
    }

    /// The policies an entry names (a model, a caller key, a JWT issuer) must exist.
    fn check_policies(
        &self,
        path: &str,
        rate_limit: Option<&str>,
        guardrails: &[String],
        budget: Option<&str>,
        errs: &mut Errors,
    ) {
        if let Some(rl) = rate_limit {
            self.check(format!("{path}.rate_limit"), Kind::RateLimits, rl, errs);
        }
        for (j, g) in guardrails.iter().enumerate() {
            self.check(format!("{path}.guardrails[{j}]"), Kind::Guardrails, g, errs);
        }
        if let Some(b) = budget {
            self.check(format!("{path}.budget"), Kind::Budgets, b, errs);
        }
    }

    /// A caller's `mcp` access, its servers checked; `None` when absent or broken.
    fn mcp_access(
        &self,
        path: &str,
        access: Option<&raw::McpAccess>,
        errs: &mut Errors,
    ) -> Option<Arc<crate::auth::McpAccess>> {
        let a = access?;
        for (j, s) in a.servers.iter().enumerate().filter(|(_, s)| *s != "*") {
            self.check(format!("{path}.mcp.servers[{j}]"), Kind::McpServers, s, errs);
        }
        crate::auth::McpAccess::compile(a)
            .map_err(|e| errs.push(format!("{path}.mcp"), e))
            .ok()
            .map(Arc::new)
    }

    /// The rate limit policy `name` bound to `scope`.
    fn bind(&self, name: Option<&str>, scope: &str) -> Option<Arc<Binding>> {
        name.and_then(|n| self.policies.get(n))
            .map(|p| self.ctx.limits.bind(p, scope))
    }

    fn guardrails(&self, names: &[String]) -> Vec<Arc<Guardrail>> {
        names.iter().filter_map(|n| self.guards.get(n).cloned()).collect()
    }
}

/// The first item of each name, by name.
fn by_name<T>(items: &[Arc<T>], name: impl Fn(&T) -> &str) -> HashMap<&str, Arc<T>> {
    let mut out = HashMap::new();
    for item in items {
        out.entry(name(item)).or_insert_with(|| item.clone());
    }
    out
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
    let mut server = server::compile_server(&raw.server, ctx.env, &mut errs);
    server.admin_keys = raw
        .server
        .admin_keys
        .iter()
        .enumerate()
        .filter_map(|(i, k)| keys::resolve_key_source(&format!("server.admin_keys[{i}]"), k, ctx, &mut errs))
        .collect();

    let budgets: Vec<Arc<raw::Budget>> = std::mem::take(&mut raw.budgets).into_iter().map(Arc::new).collect();
    let caches: Vec<Arc<raw::Cache>> = std::mem::take(&mut raw.cache).into_iter().map(Arc::new).collect();
    // Names of every section first, so references can be checked in any order.
    let known = HashMap::from([
        (
            Kind::ProviderKeys,
            check_unique(
                Kind::ProviderKeys,
                raw.provider_keys.iter().map(|p| p.name.as_str()),
                &mut errs,
            ),
        ),
        (
            Kind::Models,
            check_unique(Kind::Models, raw.models.iter().map(|m| m.name.as_str()), &mut errs),
        ),
        (
            Kind::ApiKeys,
            check_unique(Kind::ApiKeys, raw.api_keys.iter().map(|k| k.name.as_str()), &mut errs),
        ),
        (
            Kind::Jwt,
            check_unique(Kind::Jwt, raw.jwt.iter().map(|j| j.name.as_str()), &mut errs),
        ),
        (
            Kind::Budgets,
            check_unique(Kind::Budgets, budgets.iter().map(|b| b.name.as_str()), &mut errs),
        ),
        (
            Kind::RateLimits,
            check_unique(
                Kind::RateLimits,
                raw.rate_limits.iter().map(|r| r.name.as_str()),
                &mut errs,
            ),
        ),
        (
            Kind::Guardrails,
            check_unique(
                Kind::Guardrails,
                raw.guardrails.iter().map(|g| g.name.as_str()),
                &mut errs,
            ),
        ),
        (
            Kind::Cache,
            check_unique(Kind::Cache, caches.iter().map(|c| c.name.as_str()), &mut errs),
        ),
        (
            Kind::McpServers,
            check_unique(
                Kind::McpServers,
                raw.mcp_servers.iter().map(|m| m.name.as_str()),
                &mut errs,
            ),
        ),
    ]);
    // Key and issuer names both name callers (the access log's `key`, MCP sessions, the
    // status): one name, one caller.
    for (i, j) in raw.jwt.iter().enumerate() {
        if known[&Kind::ApiKeys].contains(j.name.as_str()) {
            errs.push(
                format!("jwt[{i}].name"),
                format!(
                    "an api_keys entry is named '{}' too; key and issuer names both name callers, so they must differ",
                    j.name
                ),
            );
        }
    }
    let providers = providers::compile_providers(&raw.provider_keys, ctx, &mut errs);
    let mut judges = crate::guard_service::Judges::default();
    let (guards, guard_order) = policies::compile_guardrails(&raw.guardrails, &providers, &mut judges, ctx, &mut errs);
    let refs = Refs {
        ctx,
        names,
        known,
        policies: raw.rate_limits.iter().map(|r| (r.name.as_str(), r)).collect(),
        guards,
        caches: by_name(&caches, |c| c.name.as_str()),
        budgets: by_name(&budgets, |b| b.name.as_str()),
    };

    let (models, model_order) = models::compile_models(&raw.models, &providers, &refs, &mut errs);
    // Judges (`kind: llm`) name aliases, compiled only now.
    judges.bind(&models, &mut |path, msg| errs.push(path, msg));
    let listener_cas: Vec<_> = server.tls.iter().filter_map(|t| t.client_ca.clone()).collect();
    let keys = keys::compile_keys(&raw.api_keys, &listener_cas, &refs, &mut errs);
    let jwt = jwt::compile_jwt(&raw.jwt, &refs, &mut errs);
    let mcp_servers = mcp::compile_servers(&raw.mcp_servers, &mut errs);
    // Its borrows of `raw` end here, before `raw.rate_limits` moves into the snapshot.
    drop(refs);
    policies::check_budgets(&budgets, &mut errs);
    for (i, r) in raw.rate_limits.iter().enumerate() {
        policies::compile_rate_limit(i, r, &mut errs);
    }
    policies::check_caches(&caches, server.redis.is_some(), &mut errs);
    server::check_observability(&raw.observability, &mut errs);

    if !errs.0.is_empty() {
        return Err(errs.0);
    }
    Ok(Snapshot {
        server,
        providers,
        models,
        model_order,
        keys,
        jwt,
        mcp_servers,
        rate_limits: raw.rate_limits,
        guardrails: guard_order,
        caches,
        budgets,
        observability: raw.observability,
        created: Utc::now().timestamp(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::hash_key;
    use crate::config::parse;
    use crate::provider::BaseUrl;
    use crate::route::ModelRoute;

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
                metrics: None,
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
    fn more_listeners_than_an_upgrade_hands_over_are_refused() {
        let listen = |n: u16| {
            (0..n)
                .map(|i| format!("\"127.0.0.1:{}\"", 20_000 + i))
                .collect::<Vec<_>>()
                .join(", ")
        };
        // 31 plaintext listeners and the admin listener: 32 sockets, the most one upgrade takes.
        let ok = format!(
            "version: 1\nserver: {{listen: [{}], admin_listen: \"127.0.0.1:1\"}}\n",
            listen(31)
        );
        compile_text(&ok).unwrap();
        let over = format!(
            "version: 1\nserver: {{listen: [{}], admin_listen: \"127.0.0.1:1\"}}\n",
            listen(32)
        );
        let errs = compile_text(&over).unwrap_err();
        assert!(
            errs.iter().any(|e| e.to_string().contains("33 listening sockets")),
            "{errs:?}"
        );
    }

    #[test]
    fn names_in_shared_redis_keys_hold_no_colon() {
        let text = r#"
version: 1
rate_limits: [{name: "a:rpm", requests_per_minute: 1}]
budgets: [{name: "b:x", usd: 1, period: day}]
cache: [{name: "c:y"}]
"#;
        let errs = compile_text(text).unwrap_err();
        for path in ["rate_limits[0].name", "budgets[0].name", "cache[0].name"] {
            assert!(
                errs.iter()
                    .any(|e| e.to_string().starts_with(path) && e.to_string().contains("':'")),
                "{path}: {errs:?}"
            );
        }
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
        assert_eq!(keys::parse_key_hash(&h).unwrap(), *blake3::hash(b"sk-demo").as_bytes());
    }
}
