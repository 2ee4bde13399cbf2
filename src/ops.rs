//! The operator's daily commands, for a terminal without a browser: `aigw status` (the
//! admin status document as tables) and `aigw keys create` (a new caller key, printed
//! once; only its hash is kept, in the config store through the admin API or as a YAML
//! entry for the file).

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{json, Value};

use crate::auth::hash_key;

/// Where the admin API of the gateway a config file describes listens (a wildcard
/// address reached on loopback, as the readiness probe does).
pub fn admin_url(config: &std::path::Path) -> String {
    let listen = crate::config::read_tree(config)
        .ok()
        .and_then(|t| t.get("server")?.get("admin_listen")?.as_str().map(str::to_owned))
        .or_else(|| crate::raw::Server::default().admin_listen)
        .unwrap_or_default();
    format!("http://{}", crate::admin::local_probe(&listen))
}

async fn admin_call(method: reqwest::Method, url: &str, key: &str, body: Option<&Value>) -> Result<Value, String> {
    let client = crate::outbound::client(Duration::from_secs(10))?;
    let mut req = client.request(method, url).bearer_auth(key);
    if let Some(b) = body {
        req = req.json(b);
    }
    let resp = req.send().await.map_err(|e| format!("{url}: {}", e.without_url()))?;
    let (status, body) = crate::outbound::read_capped(resp, 16 << 20, url).await?;
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if !status.is_success() {
        let mut why = v["error"]["message"].as_str().unwrap_or("").to_owned();
        for e in v["error"]["errors"].as_array().into_iter().flatten() {
            let _ = write!(
                why,
                "\n  {}: {}",
                e["path"].as_str().unwrap_or(""),
                e["message"].as_str().unwrap_or("")
            );
        }
        return Err(format!("{url} answered {}: {why}", status.as_u16()));
    }
    Ok(v)
}

/// `aigw status`: the status document, fetched and laid out.
pub async fn status(admin: &str, key: &str) -> Result<String, String> {
    let v = admin_call(reqwest::Method::GET, &format!("{admin}/admin/v1/status"), key, None).await?;
    Ok(render(&v))
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(s).collect::<Vec<_>>().join(","),
        Value::Number(n) => match n.as_f64() {
            Some(f) if f.fract() != 0.0 => format!("{f:.4}"),
            Some(f) if f.abs() < 1e15 => format!("{}", f as i64),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

/// Columns padded to their widest cell.
fn table(out: &mut String, title: &str, head: &[&str], rows: Vec<Vec<String>>) {
    let _ = writeln!(out, "\n{title}");
    if rows.is_empty() {
        out.push_str("  (none)\n");
        return;
    }
    let mut width: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    for r in std::iter::once(head.iter().map(|h| h.to_string()).collect::<Vec<_>>()).chain(rows) {
        let line: Vec<String> = r.iter().zip(&width).map(|(c, w)| format!("{c:<w$}")).collect();
        let _ = writeln!(out, "  {}", line.join("  ").trim_end());
    }
}

/// The status document as plain-text tables.
pub fn render(v: &Value) -> String {
    let mut out = String::new();
    let c = &v["config"];
    let _ = writeln!(
        out,
        "config: {} {} (revision {}), {}; in flight: {}",
        s(&c["source"]),
        s(&c["path"]),
        s(&c["revision"]),
        s(&c["summary"]),
        s(&v["inflight"])
    );
    let traffic = |by: &str| -> Vec<Vec<String>> {
        v["traffic"][by]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, t)| {
                        vec![
                            k.clone(),
                            s(&t["requests"]),
                            s(&t["errors"]),
                            s(&t["refused"]),
                            s(&t["input_tokens"]),
                            s(&t["output_tokens"]),
                            format!("{:.4}", t["cost_usd"].as_f64().unwrap_or(0.0)),
                        ]
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let cols = ["requests", "errors", "refused", "in tokens", "out tokens", "cost usd"];
    table(
        &mut out,
        "traffic by model (since start)",
        &[&["model"], &cols[..]].concat(),
        traffic("models"),
    );
    table(
        &mut out,
        "traffic by owner (since start)",
        &[&["owner"], &cols[..]].concat(),
        traffic("owners"),
    );
    let mut routes = Vec::new();
    for r in v["routes"].as_array().into_iter().flatten() {
        for t in r["targets"].as_array().into_iter().flatten() {
            let replicas: Vec<String> = t["replicas"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| {
                    let state = match (p["healthy"].as_bool(), p["ejected_s"].as_f64()) {
                        (_, Some(e)) => format!("ejected {e:.0}s"),
                        (Some(false), _) => "unhealthy".into(),
                        _ => "ok".into(),
                    };
                    format!("{} {state}", s(&p["addr"]))
                })
                .collect();
            let state = match t["cooldown_s"].as_f64() {
                Some(left) => format!("cooling {left:.0}s"),
                None => "ready".into(),
            };
            routes.push(vec![
                s(&r["model"]),
                s(&t["target"]),
                s(&t["provider"]),
                s(&t["priority"]),
                state,
                s(&t["failures"]),
                replicas.join("; "),
            ]);
        }
    }
    table(
        &mut out,
        "routes",
        &[
            "model", "target", "provider", "priority", "state", "failures", "replicas",
        ],
        routes,
    );
    let rows = |key: &str, cols: &[&str]| -> Vec<Vec<String>> {
        v[key]
            .as_array()
            .into_iter()
            .flatten()
            .map(|o| cols.iter().map(|c| s(&o[*c])).collect())
            .collect()
    };
    let spend_cols = [
        "budget",
        "owner",
        "period",
        "spent_usd",
        "limit_usd",
        "remaining_usd",
        "resets_at",
    ];
    table(&mut out, "spend", &spend_cols, rows("spend", &spend_cols));
    let key_cols = [
        "name",
        "owner",
        "models",
        "expires_at",
        "disabled",
        "rate_limit",
        "budget",
    ];
    table(&mut out, "caller keys", &key_cols, rows("keys", &key_cols));
    let jwt_cols = [
        "name",
        "issuer",
        "keys",
        "keys_loaded",
        "owner_claim",
        "models_claim",
        "rate_limit",
        "budget",
    ];
    table(&mut out, "JWT issuers", &jwt_cols, rows("jwt", &jwt_cols));
    let mcp_cols = ["name", "url", "timeout_ms", "tools"];
    table(&mut out, "MCP servers", &mcp_cols, rows("mcp_servers", &mcp_cols));
    let call_cols = ["server", "tool", "outcome", "value"];
    table(
        &mut out,
        "MCP tool calls",
        &call_cols,
        rows("mcp_tool_calls", &call_cols),
    );
    table(
        &mut out,
        "guardrail hits",
        &["guardrail", "action", "value"],
        rows("guardrail_hits", &["guardrail", "action", "value"]),
    );
    table(
        &mut out,
        "cache",
        &["model", "result", "value"],
        rows("cache", &["model", "result", "value"]),
    );
    out
}

/// What `aigw keys create` is asked for.
#[derive(Debug, clap::Args)]
pub struct NewKey {
    /// The owner its limits and budgets count against.
    #[arg(long)]
    pub owner: String,
    /// The entry's name [default: the owner and a piece of the hash]
    #[arg(long)]
    pub name: Option<String>,
    /// Model aliases it may use (comma-separated) [default: every model]
    #[arg(long, value_delimiter = ',')]
    pub models: Vec<String>,
    /// A `rate_limits` policy, counted per owner.
    #[arg(long)]
    pub rate_limit: Option<String>,
    /// A `budgets` entry, counted per owner.
    #[arg(long)]
    pub budget: Option<String>,
    /// When it stops working: RFC 3339, e.g. 2027-01-01T00:00:00Z
    #[arg(long)]
    pub expires_at: Option<String>,
}

/// A new caller key: 32 random bytes from OpenSSL's CSPRNG, base64url, behind a prefix
/// that says what it is.
pub fn generate_key() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    openssl::rand::rand_bytes(&mut bytes).map_err(|e| format!("no random bytes: {e}"))?;
    let b64 = openssl::base64::encode_block(&bytes);
    Ok(format!(
        "sk-aigw-{}",
        b64.trim_end_matches('=').replace('+', "-").replace('/', "_")
    ))
}

/// The `api_keys` entry for `key`: its hash and the rest of what was asked, never the key.
pub fn entry(key: &str, k: &NewKey) -> Value {
    let hash = hash_key(key);
    let name = k
        .name
        .clone()
        .unwrap_or_else(|| format!("{}-{}", k.owner, &hash[7..15]));
    let mut e = json!({"name": name, "key_hash": hash, "owner": k.owner});
    if !k.models.is_empty() {
        e["models"] = json!(k.models);
    }
    for (field, v) in [
        ("rate_limit", &k.rate_limit),
        ("budget", &k.budget),
        ("expires_at", &k.expires_at),
    ] {
        if let Some(v) = v {
            e[field] = json!(v);
        }
    }
    e
}

/// Writes the entry through the admin API (so it is validated like any edit and lands in
/// the config store); the API refuses when the gateway has no store.
pub async fn store_entry(admin: &str, admin_key: &str, e: &Value) -> Result<(), String> {
    let name = e["name"].as_str().unwrap_or_default();
    let url = format!("{admin}/admin/v1/api_keys/{name}");
    admin_call(reqwest::Method::PUT, &url, admin_key, Some(e))
        .await
        .map(|_| ())
}

/// The entry as a YAML list item, to paste under `api_keys:` in the file.
pub fn yaml_snippet(e: &Value) -> String {
    let yaml = serde_yaml::to_string(&vec![e]).unwrap_or_default();
    format!("# under api_keys: in the config file\n{yaml}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_key_is_random_and_only_its_hash_is_kept() {
        let a = generate_key().unwrap();
        let b = generate_key().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("sk-aigw-") && a.len() == 8 + 43, "{a}");
        let k = NewKey {
            owner: "team-a".into(),
            name: None,
            models: vec!["chat".into()],
            rate_limit: Some("std".into()),
            budget: None,
            expires_at: None,
        };
        let e = entry(&a, &k);
        assert_eq!(e["key_hash"], hash_key(&a));
        assert!(e["name"].as_str().unwrap().starts_with("team-a-"));
        assert_eq!(e["models"], json!(["chat"]));
        assert!(e.get("budget").is_none());
        let text = yaml_snippet(&e);
        assert!(!text.contains(&a) && text.contains("key_hash: blake3:"), "{text}");
    }

    #[test]
    fn renders_every_section_even_when_empty() {
        let text = render(
            &json!({"config": {"source": "file", "path": "a.yaml", "revision": 3, "summary": "x"}, "inflight": 0,
            "traffic": {"models": {"chat": {"requests": 5, "errors": 1, "refused": 0, "input_tokens": 10, "output_tokens": 40, "cost_usd": 0.5}}, "owners": {}},
            "routes": [{"model": "m", "targets": [{"target": "t", "provider": "p", "priority": 0, "failures": 2, "cooldown_s": 12.4,
                "replicas": [{"addr": "10.0.0.1:443", "healthy": true, "ejected_s": null}]}]}]}),
        );
        for want in [
            "revision 3",
            "chat",
            "0.5000",
            "cooling 12s",
            "10.0.0.1:443 ok",
            "caller keys\n  (none)",
        ] {
            assert!(text.contains(want), "{want} in:\n{text}");
        }
    }
}
