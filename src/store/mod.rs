//! The config store: resources (provider keys, models, api keys, policies) kept outside the
//! file, one JSON value per resource, with the same schema as the YAML sections. The file
//! still holds `version`, `server` and `observability`; the two are merged into one YAML
//! tree and compiled exactly like a file, so a resource is valid in etcd exactly when it
//! would be valid in the file.

mod cache_file;
pub mod etcd;
mod transfer;

pub use cache_file::{initial, write_cache};
pub use transfer::{export, import};

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::config::{ConfigError, Kind};

/// What the admin API and `aigw export` show instead of a secret. Written back (a GET
/// edited and PUT again, an export imported), it keeps the stored secret.
pub const REDACTED: &str = "<redacted>";

/// Every resource, by kind then name (names sort, so the compiled order is stable).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources(pub BTreeMap<Kind, BTreeMap<String, Value>>);

impl Resources {
    pub fn get(&self, kind: Kind, name: &str) -> Option<&Value> {
        self.0.get(&kind).and_then(|m| m.get(name))
    }

    pub fn insert(&mut self, kind: Kind, name: &str, value: Value) {
        self.0.entry(kind).or_default().insert(name.to_owned(), value);
    }

    pub fn remove(&mut self, kind: Kind, name: &str) -> Option<Value> {
        let m = self.0.get_mut(&kind)?;
        let v = m.remove(name);
        if m.is_empty() {
            self.0.remove(&kind);
        }
        v
    }

    pub fn len(&self) -> usize {
        self.0.values().map(BTreeMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = (Kind, &str, &Value)> {
        self.0
            .iter()
            .flat_map(|(k, m)| m.iter().map(move |(n, v)| (*k, n.as_str(), v)))
    }

    /// The resource sections of a config file. Items without a string `name` are errors
    /// (etcd keys are names), as are two items of a kind with one name.
    pub fn from_config(tree: &serde_yaml::Value) -> Result<Self, Vec<ConfigError>> {
        let mut out = Self::default();
        let mut errors = Vec::new();
        for kind in Kind::ALL {
            let Some(section) = tree.get(kind.name()) else { continue };
            let items = match section {
                serde_yaml::Value::Sequence(items) => items,
                serde_yaml::Value::Null => continue,
                _ => {
                    errors.push(ConfigError::new(kind.name(), "must be a list"));
                    continue;
                }
            };
            for (i, item) in items.iter().enumerate() {
                let Some(name) = item.get("name").and_then(serde_yaml::Value::as_str) else {
                    errors.push(ConfigError::new(
                        format!("{kind}[{i}].name"),
                        "a string name is required",
                    ));
                    continue;
                };
                match serde_json::to_value(item) {
                    Ok(v) if out.get(kind, name).is_none() => out.insert(kind, name, v),
                    Ok(_) => errors.push(ConfigError::new(
                        format!("{kind}[{i}].name"),
                        format!("`{name}` appears twice"),
                    )),
                    Err(e) => errors.push(ConfigError::new(format!("{kind}[{i}]"), e.to_string())),
                }
            }
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(errors)
        }
    }

    /// The file's tree with its resource sections replaced by these resources.
    pub fn merge_into(&self, base: &serde_yaml::Value) -> serde_yaml::Value {
        let mut map = serde_yaml::Mapping::new();
        if let serde_yaml::Value::Mapping(m) = base {
            for (k, v) in m {
                if k.as_str().and_then(Kind::parse).is_none() {
                    map.insert(k.clone(), v.clone());
                }
            }
        }
        for kind in Kind::ALL {
            if let Some(items) = self.0.get(&kind) {
                let seq = items.values().filter_map(|v| serde_yaml::to_value(v).ok()).collect();
                map.insert(kind.name().into(), serde_yaml::Value::Sequence(seq));
            }
        }
        serde_yaml::Value::Mapping(map)
    }

    /// Compile errors name list items by position (`models[2].provider_key`); for resources
    /// from the store the name says more (`models/chat.provider_key`).
    pub fn name_error_paths(&self, errors: Vec<ConfigError>) -> Vec<ConfigError> {
        errors
            .into_iter()
            .map(|mut e| {
                if let Some(path) = self.named_path(&e.path) {
                    e.path = path;
                }
                e
            })
            .collect()
    }

    fn named_path(&self, path: &str) -> Option<String> {
        let (kind, rest) = path.split_once('[')?;
        let (index, rest) = rest.split_once(']')?;
        let name = self.0.get(&Kind::parse(kind)?)?.keys().nth(index.parse().ok()?)?;
        Some(format!("{kind}/{name}{rest}"))
    }

    /// As a YAML config holding only these resources (`aigw export`), secrets redacted
    /// unless asked for.
    pub fn to_yaml(&self, with_secrets: bool) -> String {
        let mut shown = self.clone();
        if !with_secrets {
            shown.redact();
        }
        let mut version = serde_yaml::Mapping::new();
        version.insert("version".into(), 1.into());
        serde_yaml::to_string(&shown.merge_into(&serde_yaml::Value::Mapping(version))).unwrap_or_default()
    }

    /// Replaces every literal secret with [`REDACTED`]. `${VAR}` references are not secrets
    /// and stay.
    pub fn redact(&mut self) {
        for (kind, items) in self.0.iter_mut() {
            for v in items.values_mut() {
                redact(*kind, v);
            }
        }
    }
}

/// A resource as the admin API shows it: literal secrets replaced by [`REDACTED`].
pub fn redact(kind: Kind, v: &mut Value) {
    let hide = |s: &mut String| {
        if !is_env_reference(s) {
            *s = REDACTED.to_owned();
        }
    };
    for field in kind.secret_fields() {
        if let Some(Value::String(s)) = v.pointer_mut(field) {
            hide(s);
        }
    }
    for field in kind.url_fields() {
        if let Some(Value::String(s)) = v.pointer_mut(field) {
            if !is_env_reference(s) {
                *s = crate::outbound::marked(s, REDACTED);
            }
        }
    }
    for field in kind.secret_maps() {
        if let Some(Value::Object(m)) = v.pointer_mut(field) {
            for value in m.values_mut() {
                if let Value::String(s) = value {
                    hide(s);
                }
            }
        }
    }
}

/// A bare `${VAR}`: names where the secret is, and is no secret itself. `${VAR:-default}`
/// is not one: its default is a literal, often a development key.
fn is_env_reference(s: &str) -> bool {
    s.starts_with("${") && s.ends_with('}') && s.matches("${").count() == 1 && !s.contains(":-")
}

/// Makes a resource ready to store, from what a caller sent: the name from the path, a
/// [`REDACTED`] secret replaced by the stored one, a caller's plaintext key replaced by its
/// hash (the store never holds a caller key).
pub fn prepare(kind: Kind, name: &str, mut v: Value, stored: Option<&Value>) -> Result<Value, ConfigError> {
    let Some(obj) = v.as_object_mut() else {
        return Err(ConfigError::new(format!("{kind}/{name}"), "must be a JSON object"));
    };
    match obj.get("name") {
        None => {
            obj.insert("name".into(), Value::String(name.to_owned()));
        }
        Some(Value::String(n)) if n == name => {}
        Some(other) => {
            return Err(ConfigError::new(
                format!("{kind}/{name}.name"),
                format!("is {other}, but the path names `{name}`"),
            ))
        }
    }
    for field in kind.secret_fields() {
        let Some(slot) = v.pointer_mut(field).filter(|s| s.as_str() == Some(REDACTED)) else {
            continue;
        };
        match stored.and_then(|s| s.pointer(field)) {
            Some(old) => *slot = old.clone(),
            None => {
                return Err(ConfigError::new(
                    format!("{kind}/{name}{}", field.replace('/', ".")),
                    "is redacted, and no stored value to keep",
                ))
            }
        }
    }
    // A URL shown with its credential parts marked: the stored URL, when it is the one
    // shown; anything else with a mark in it would store the mark.
    for field in kind.url_fields() {
        let Some(slot) = v
            .pointer_mut(field)
            .filter(|s| s.as_str().is_some_and(|s| s.contains(REDACTED)))
        else {
            continue;
        };
        match stored.and_then(|s| s.pointer(field)).and_then(Value::as_str) {
            Some(old) if slot.as_str() == Some(&crate::outbound::marked(old, REDACTED)) => {
                *slot = Value::String(old.to_owned());
            }
            _ => {
                return Err(ConfigError::new(
                    format!("{kind}/{name}{}", field.replace('/', ".")),
                    "has redacted parts that are not those of the stored URL: write the whole URL",
                ))
            }
        }
    }
    for field in kind.secret_maps() {
        let Some(Value::Object(m)) = v.pointer_mut(field) else {
            continue;
        };
        for (header, value) in m.iter_mut() {
            if value.as_str() != Some(REDACTED) {
                continue;
            }
            match stored.and_then(|s| s.pointer(field)).and_then(|f| f.get(header)) {
                Some(old) => *value = old.clone(),
                None => {
                    return Err(ConfigError::new(
                        format!("{kind}/{name}{}.{header}", field.replace('/', ".")),
                        "is redacted, and no stored value to keep",
                    ))
                }
            }
        }
    }
    let Some(obj) = v.as_object_mut() else {
        return Err(ConfigError::new(format!("{kind}/{name}"), "must be a JSON object"));
    };
    if kind == Kind::ApiKeys {
        hash_caller_key(obj);
    }
    Ok(v)
}

/// A plaintext caller key becomes `key_hash`, as the file's keys are hashed at load.
fn hash_caller_key(obj: &mut Map<String, Value>) {
    if let Some(Value::String(key)) = obj.get("key") {
        if !is_env_reference(key) {
            let hash = crate::auth::hash_key(key);
            obj.remove("key");
            obj.insert("key_hash".into(), Value::String(hash));
        }
    }
}

/// Runs `f` on a runtime of its own (start-up and the CLI, before Pingora's run).
pub(crate) fn block_on<T>(f: impl std::future::Future<Output = Result<T, String>>) -> Result<T, Vec<ConfigError>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| vec![ConfigError::new("", format!("cannot start a runtime: {e}"))])?;
    rt.block_on(f)
        .map_err(|e| vec![ConfigError::new("server.config_store.etcd", e)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tree(text: &str) -> serde_yaml::Value {
        serde_yaml::from_str(text).unwrap()
    }

    #[test]
    fn a_file_round_trips_through_resources() {
        let file = tree(
            "version: 1\nserver: {listen: ['127.0.0.1:1']}\nmodels:\n  - {name: b, provider_key: p}\n  - {name: a, provider_key: p}\nprovider_keys:\n  - {name: p, provider: openai, api_key: sk-live-123}\n",
        );
        let r = Resources::from_config(&file).unwrap();
        assert_eq!(r.len(), 3);
        let merged = r.merge_into(&file);
        assert_eq!(merged["server"], file["server"]);
        // Sorted by name.
        assert_eq!(merged["models"][0]["name"], "a");
        assert_eq!(Resources::from_config(&merged).unwrap(), r);
        let exported = r.to_yaml(false);
        assert!(
            !exported.contains("sk-live-123") && exported.contains(REDACTED),
            "{exported}"
        );
        assert!(r.to_yaml(true).contains("sk-live-123"));
    }

    #[test]
    fn names_are_required_and_unique() {
        let errs = Resources::from_config(&tree("models: [{provider_key: p}, {name: a}, {name: a}]")).unwrap_err();
        let paths: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["models[0].name", "models[2].name"]);
    }

    #[test]
    fn error_paths_name_the_resource() {
        let r = Resources::from_config(&tree("models: [{name: z}, {name: a}]")).unwrap();
        let errs = r.name_error_paths(vec![
            ConfigError::new("models[1].provider_key", "x"),
            ConfigError::new("server.listen", "y"),
        ]);
        assert_eq!(errs[0].path, "models/z.provider_key");
        assert_eq!(errs[1].path, "server.listen");
    }

    #[test]
    fn secrets_are_redacted_kept_and_hashed() {
        let mut v = json!({"name": "p", "provider": "openai", "api_key": "sk-live-123"});
        redact(Kind::ProviderKeys, &mut v);
        assert_eq!(v["api_key"], REDACTED);
        let mut env = json!({"name": "p", "api_key": "${OPENAI_API_KEY}"});
        redact(Kind::ProviderKeys, &mut env);
        assert_eq!(env["api_key"], "${OPENAI_API_KEY}");
        // A default is a literal; extra headers may be credentials.
        let mut v = json!({"name": "p", "api_key": "${KEY:-sk-dev-literal}",
            "headers": {"x-server-key": "sk-hdr-literal", "x-env": "${HDR}", "x-def": "${H:-lit}"}});
        redact(Kind::ProviderKeys, &mut v);
        assert_eq!(v["api_key"], REDACTED);
        assert_eq!(v["headers"]["x-server-key"], REDACTED);
        assert_eq!(v["headers"]["x-def"], REDACTED);
        assert_eq!(v["headers"]["x-env"], "${HDR}");
        let stored = json!({"name": "p", "api_key": "k", "headers": {"x-server-key": "sk-hdr-literal"}});
        let kept = prepare(Kind::ProviderKeys, "p", v.clone(), Some(&stored));
        assert!(kept.is_err(), "x-def has no stored value to keep");
        v["headers"]["x-def"] = json!("new");
        v["api_key"] = json!("k2");
        let kept = prepare(Kind::ProviderKeys, "p", v, Some(&stored)).unwrap();
        assert_eq!(kept["headers"]["x-server-key"], "sk-hdr-literal");

        let stored = json!({"name": "p", "provider": "openai", "api_key": "sk-live-123"});
        let sent = json!({"provider": "openai", "api_key": REDACTED, "headers": {"x": "1"}});
        let kept = prepare(Kind::ProviderKeys, "p", sent.clone(), Some(&stored)).unwrap();
        assert_eq!(kept["api_key"], "sk-live-123");
        assert_eq!(kept["name"], "p");
        assert!(prepare(Kind::ProviderKeys, "p", sent, None).is_err());
        assert!(prepare(Kind::Models, "a", json!({"name": "b"}), None).is_err());
        assert!(prepare(Kind::Models, "a", json!([1]), None).is_err());

        let key = prepare(Kind::ApiKeys, "k", json!({"key": "sk-caller"}), None).unwrap();
        assert!(key.get("key").is_none());
        assert_eq!(key["key_hash"], crate::auth::hash_key("sk-caller"));

        // Bedrock's secret and session token sit in the `aws` section.
        let stored = json!({"name": "b", "provider": "bedrock",
            "aws": {"region": "us-east-1", "access_key_id": "AKID", "secret_access_key": "s3cret", "session_token": "tok"}});
        let mut shown = stored.clone();
        redact(Kind::ProviderKeys, &mut shown);
        assert_eq!(shown["aws"]["secret_access_key"], REDACTED);
        assert_eq!(shown["aws"]["session_token"], REDACTED);
        assert_eq!(shown["aws"]["access_key_id"], "AKID");
        let kept = prepare(Kind::ProviderKeys, "b", shown.clone(), Some(&stored)).unwrap();
        assert_eq!(kept, stored);
        let e = prepare(Kind::ProviderKeys, "b", shown, None).unwrap_err();
        assert!(e.to_string().contains("b.aws.secret_access_key"), "{e}");
    }

    #[test]
    fn guardrail_service_secrets_are_redacted() {
        let stored = json!({"name": "g", "action": "block", "service": {"kind": "webhook",
            "url": "https://guard.test/check?token=t0k", "headers": {"authorization": "Bearer s3cret"},
            "aws": {"secret_access_key": "aws-s3cret", "session_token": "tok"}}});
        let mut shown = stored.clone();
        redact(Kind::Guardrails, &mut shown);
        let text = shown.to_string();
        for secret in ["s3cret", "aws-s3cret", "tok\"", "t0k"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert_eq!(shown["service"]["headers"]["authorization"], REDACTED);
        assert_eq!(shown["service"]["url"], "https://guard.test/check?<redacted>");
        let kept = prepare(Kind::Guardrails, "g", shown.clone(), Some(&stored)).unwrap();
        assert_eq!(kept, stored);
        let e = prepare(Kind::Guardrails, "g", shown, None).unwrap_err();
        assert!(e.to_string().contains("g.service.aws.secret_access_key"), "{e}");
    }

    #[test]
    fn urls_show_their_credential_parts_marked_and_keep_them_when_written_back() {
        let stored = json!({"name": "t", "url": "https://ops:pw@tools.test/mcp?key=q#f"});
        let mut shown = stored.clone();
        redact(Kind::McpServers, &mut shown);
        assert_eq!(shown["url"], "https://<redacted>@tools.test/mcp?<redacted>#<redacted>");
        assert_eq!(
            prepare(Kind::McpServers, "t", shown.clone(), Some(&stored)).unwrap(),
            stored
        );
        // Marks that are not the stored URL's would be stored as text: refused.
        let mut moved = shown.clone();
        moved["url"] = json!("https://<redacted>@other.test/mcp");
        let e = prepare(Kind::McpServers, "t", moved, Some(&stored)).unwrap_err();
        assert!(e.to_string().contains("t.url"), "{e}");
        assert!(prepare(Kind::McpServers, "t", shown, None).is_err());
        // A new URL is taken as written; a JWT issuer's jwks_url is marked the same way.
        let fresh = json!({"name": "t", "url": "https://tools.test/v2"});
        assert_eq!(
            prepare(Kind::McpServers, "t", fresh.clone(), Some(&stored)).unwrap(),
            fresh
        );
        let mut issuer =
            json!({"name": "i", "jwks_url": "https://idp.test/jwks?token=t0k", "issuer": "https://idp.test"});
        redact(Kind::Jwt, &mut issuer);
        assert_eq!(issuer["jwks_url"], "https://idp.test/jwks?<redacted>");
        let mut env = json!({"name": "t", "url": "${MCP_URL}"});
        redact(Kind::McpServers, &mut env);
        assert_eq!(env["url"], "${MCP_URL}");
    }
}
