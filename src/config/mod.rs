//! Configuration: YAML text -> interpolated tree -> raw serde types -> validated [`Snapshot`].
//!
//! Every stage collects errors instead of stopping at the first, so `aigw validate` and a
//! failed reload list every problem at once, each with its YAML path. List sections are
//! deserialized item by item for the same reason.

pub mod compile;
mod interp;
mod kind;

use std::fmt;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde_yaml::Value;

use crate::raw;

pub use compile::{CompileCtx, ServerSettings, Snapshot};
pub use interp::interpolate;
pub use kind::Kind;

/// One problem in the config, at a YAML path such as `models[2].provider_key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// The whole file, parsed but not yet validated. `broken` holds the names of list items
/// that failed to parse, so references to them do not produce a second, misleading error.
#[derive(Debug, Default)]
pub struct RawConfig {
    pub version: Option<u64>,
    pub server: raw::Server,
    pub provider_keys: Vec<raw::ProviderKey>,
    pub models: Vec<raw::Model>,
    pub api_keys: Vec<raw::ApiKey>,
    pub jwt: Vec<raw::JwtIssuer>,
    pub mcp_servers: Vec<raw::McpServer>,
    pub budgets: Vec<raw::Budget>,
    pub rate_limits: Vec<raw::RateLimit>,
    pub guardrails: Vec<raw::Guardrail>,
    pub cache: Vec<raw::Cache>,
    pub observability: raw::Observability,
    pub broken: Vec<(&'static str, String)>,
}

/// The sections of a config file: these, and the resource kinds ([`Kind::ALL`]).
const SETTINGS: [&str; 3] = ["version", "server", "observability"];

/// A config file as a YAML tree, not yet interpolated.
pub fn read_tree(path: &Path) -> Result<Value, Vec<ConfigError>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| vec![ConfigError::new("", format!("cannot read {}: {e}", path.display()))])?;
    yaml_tree(&text)
}

/// Reads, interpolates and compiles a config file.
pub fn load_file(path: &Path, ctx: &CompileCtx) -> Result<Snapshot, Vec<ConfigError>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| vec![ConfigError::new("", format!("cannot read {}: {e}", path.display()))])?;
    load_str(&text, ctx)
}

pub fn load_str(text: &str, ctx: &CompileCtx) -> Result<Snapshot, Vec<ConfigError>> {
    load_tree(yaml_tree(text)?, ctx)
}

/// Compiles a YAML tree, as read from a file or merged with the config store's resources.
pub fn load_tree(tree: Value, ctx: &CompileCtx) -> Result<Snapshot, Vec<ConfigError>> {
    let (raw, mut errors) = parse_tree_partial(tree, ctx.env)?;
    // Compile what parsed even when something did not, so one run reports both kinds.
    match compile::compile(raw, ctx) {
        Ok(snap) if errors.is_empty() => Ok(snap),
        Ok(_) => Err(errors),
        Err(more) => {
            errors.extend(more);
            Err(errors)
        }
    }
}

/// YAML text -> [`RawConfig`], with `${VAR}` interpolation from `env`.
pub fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<RawConfig, Vec<ConfigError>> {
    match parse_partial(text, env)? {
        (cfg, errors) if errors.is_empty() => Ok(cfg),
        (_, errors) => Err(errors),
    }
}

/// Like [`parse`], but returns what did parse along with the errors; only invalid YAML
/// stops it outright. Items that failed are left out and named in `broken`.
pub fn parse_partial(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(RawConfig, Vec<ConfigError>), Vec<ConfigError>> {
    parse_tree_partial(yaml_tree(text)?, env)
}

/// YAML text -> tree, not yet interpolated.
pub fn yaml_tree(text: &str) -> Result<Value, Vec<ConfigError>> {
    serde_yaml::from_str(text).map_err(|e| {
        let at = e
            .location()
            .map(|l| format!("line {}, column {}", l.line(), l.column()));
        vec![ConfigError::new(at.unwrap_or_default(), format!("invalid YAML: {e}"))]
    })
}

fn parse_tree_partial(
    mut tree: Value,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(RawConfig, Vec<ConfigError>), Vec<ConfigError>> {
    let mut errors = Vec::new();
    interp::interpolate_tree(&mut tree, "", env, &mut errors);

    let mut cfg = RawConfig::default();
    let map = match tree {
        Value::Mapping(m) => m,
        Value::Null => serde_yaml::Mapping::new(),
        _ => return Err(vec![ConfigError::new("", "the config must be a YAML mapping")]),
    };
    for (k, v) in map {
        let Some(key) = k.as_str() else {
            errors.push(ConfigError::new(
                "",
                format!("section names must be strings, got {k:?}"),
            ));
            continue;
        };
        if let Some(kind) = Kind::parse(key) {
            // Every kind is a list section; the match names them all, so a new kind cannot
            // be forgotten here.
            let (e, b) = (&mut errors, &mut cfg.broken);
            let name = kind.name();
            match kind {
                Kind::ProviderKeys => cfg.provider_keys = list(v, name, e, b),
                Kind::Models => cfg.models = list(v, name, e, b),
                Kind::ApiKeys => cfg.api_keys = list(v, name, e, b),
                Kind::Jwt => cfg.jwt = list(v, name, e, b),
                Kind::McpServers => cfg.mcp_servers = list(v, name, e, b),
                Kind::Budgets => cfg.budgets = list(v, name, e, b),
                Kind::RateLimits => cfg.rate_limits = list(v, name, e, b),
                Kind::Guardrails => cfg.guardrails = list(v, name, e, b),
                Kind::Cache => cfg.cache = list(v, name, e, b),
            }
            continue;
        }
        match key {
            "version" => {
                cfg.version = one(v, "version", &mut errors);
                if cfg.version.is_none() {
                    cfg.broken.push(("version", String::new()));
                }
            }
            "server" => cfg.server = one(v, "server", &mut errors).unwrap_or_default(),
            "observability" => cfg.observability = one(v, "observability", &mut errors).unwrap_or_default(),
            other => errors.push(ConfigError::new(
                other,
                format!(
                    "unknown section; expected one of: {}",
                    SETTINGS
                        .iter()
                        .copied()
                        .chain(Kind::ALL.map(Kind::name))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }
    Ok((cfg, errors))
}

fn one<T: DeserializeOwned>(v: Value, path: &str, errors: &mut Vec<ConfigError>) -> Option<T> {
    if v.is_null() {
        return None;
    }
    match serde_path_to_error::deserialize::<_, T>(v) {
        Ok(t) => Some(t),
        Err(e) => {
            errors.push(de_error(path, &e));
            None
        }
    }
}

fn list<T: DeserializeOwned>(
    v: Value,
    section: &'static str,
    errors: &mut Vec<ConfigError>,
    broken: &mut Vec<(&'static str, String)>,
) -> Vec<T> {
    let items = match v {
        Value::Sequence(items) => items,
        Value::Null => return Vec::new(),
        _ => {
            errors.push(ConfigError::new(section, "must be a list"));
            return Vec::new();
        }
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let name = item.get("name").and_then(Value::as_str).map(str::to_owned);
        match serde_path_to_error::deserialize::<_, T>(item) {
            Ok(t) => out.push(t),
            Err(e) => {
                errors.push(de_error(&format!("{section}[{i}]"), &e));
                if let Some(name) = name {
                    broken.push((section, name));
                }
            }
        }
    }
    out
}

fn de_error(prefix: &str, e: &serde_path_to_error::Error<serde_yaml::Error>) -> ConfigError {
    let inner = e.path().to_string();
    let path = if inner == "." || inner.is_empty() {
        prefix.to_owned()
    } else {
        format!("{prefix}.{inner}")
    };
    // serde_yaml appends "at line X column Y" that points into the re-serialised tree,
    // which is meaningless to the user; the path says where.
    let msg = e.inner().to_string();
    let msg = msg.split(" at line ").next().unwrap_or(&msg).to_owned();
    ConfigError::new(path, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn several_errors_at_once_with_paths() {
        let text = r#"
version: 1
bogus: 1
server: {listen: ["127.0.0.1:1"], grace_period_s: "soon"}
provider_keys:
  - {name: p, provider: martian}
  - {name: q, provider: openai, api_key: k, extra: 1}
models:
  - {name: m, provider_key: p}
"#;
        let errs = parse(text, &no_env).unwrap_err();
        let paths: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
        assert!(paths.contains(&"bogus"), "{errs:?}");
        assert!(paths.contains(&"server.grace_period_s"), "{errs:?}");
        assert!(paths.contains(&"provider_keys[0].provider"), "{errs:?}");
        assert!(paths.contains(&"provider_keys[1].extra"), "{errs:?}");
        assert!(
            errs.iter().any(|e| e.message.contains("unknown field `extra`")),
            "{errs:?}"
        );
    }

    #[test]
    fn invalid_yaml_reports_location() {
        let errs = parse("version: [1\n", &no_env).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert!(errs[0].path.starts_with("line "), "{errs:?}");
    }

    #[test]
    fn missing_env_is_an_error_with_path() {
        let errs = parse(
            "version: 1\nprovider_keys: [{name: a, provider: openai, api_key: '${NOPE_X}'}]",
            &no_env,
        )
        .unwrap_err();
        assert_eq!(errs[0].path, "provider_keys[0].api_key");
        assert!(errs[0].message.contains("NOPE_X"));
    }
}
