//! The `mcp_servers` section: each upstream MCP server's endpoint, credential headers,
//! timeout, tool allowlist and bounds, checked and compiled for the MCP gateway
//! (`crate::mcp`).

use std::sync::Arc;
use std::time::Duration;

use super::{raw, Errors};
use crate::mcp::upstream::Server;

/// The largest `max_answer_bytes`: an answer is held whole, and parsed (16 times that).
const MAX_ANSWER_BYTES: u64 = 64 << 20;

/// Compiles `mcp_servers`; `errs` gets each problem with its path.
pub(super) fn compile_servers(list: &[raw::McpServer], errs: &mut Errors) -> Vec<Arc<Server>> {
    let mut out = Vec::new();
    for (i, s) in list.iter().enumerate() {
        let path = format!("mcp_servers[{i}]");
        let before = errs.0.len();
        // (An empty name is refused with every section's names.)
        if let Err(why) = crate::mcp::check_server_name(&s.name) {
            if !s.name.is_empty() {
                errs.push(format!("{path}.name"), why);
            }
        }
        match reqwest::Url::parse(&s.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            _ => errs.push(format!("{path}.url"), "must be an http or https URL"),
        }
        if s.timeout_ms == 0 {
            errs.push(format!("{path}.timeout_ms"), "must be at least 1");
        }
        if !(1024..=MAX_ANSWER_BYTES).contains(&s.max_answer_bytes) {
            errs.push(
                format!("{path}.max_answer_bytes"),
                format!("must be from 1024 to {MAX_ANSWER_BYTES}"),
            );
        }
        if s.max_list_items == 0 {
            errs.push(format!("{path}.max_list_items"), "must be at least 1");
        }
        let mut headers = Vec::new();
        for (k, v) in &s.headers {
            match (
                http::HeaderName::try_from(k.as_str()),
                http::HeaderValue::try_from(v.as_str()),
            ) {
                (Ok(k), Ok(mut v)) => {
                    v.set_sensitive(true);
                    headers.push((k, v));
                }
                // The value may be a credential: never quoted.
                _ => errs.push(format!("{path}.headers.{k}"), "is not a valid HTTP header"),
            }
        }
        if errs.0.len() > before {
            continue;
        }
        out.push(Arc::new(Server {
            name: s.name.clone(),
            url: s.url.clone(),
            headers,
            timeout: Duration::from_millis(s.timeout_ms),
            tools: s.tools.as_ref().map(|t| t.iter().cloned().collect()),
            max_answer_bytes: usize::try_from(s.max_answer_bytes).unwrap_or(usize::MAX),
            max_list_items: usize::try_from(s.max_list_items).unwrap_or(usize::MAX),
            listed: std::sync::Mutex::default(),
        }));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_entries_are_checked() {
        let mut errs = Errors(Vec::new());
        let raw: Vec<raw::McpServer> = serde_yaml::from_str(
            r#"
- {name: "a__b", url: "ftp://x"}
- {name: ok, url: "https://tools.example/mcp", headers: {"bad header": "v"}, timeout_ms: 0}
- {name: good, url: "http://127.0.0.1:9/mcp", headers: {authorization: "Bearer s3cret"}, tools: [add]}
"#,
        )
        .unwrap();
        let servers = compile_servers(&raw, &mut errs);
        let paths: Vec<&str> = errs.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "mcp_servers[0].name",
                "mcp_servers[0].url",
                "mcp_servers[1].timeout_ms",
                "mcp_servers[1].headers.bad header"
            ]
        );
        assert!(!format!("{:?}", errs.0).contains("s3cret"));
        assert_eq!(servers.len(), 1);
        assert!(servers[0].headers[0].1.is_sensitive());
    }
}
