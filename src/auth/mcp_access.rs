//! A caller's MCP allowlist.

use std::collections::HashSet;

use crate::raw;

/// The MCP servers, tools, prompts and resources a caller may reach, compiled from its
/// `mcp` entry (on a key or a JWT issuer). The MCP gateway asks it; what a caller may
/// reach is the caller's, like its models.
#[derive(Debug)]
pub struct McpAccess {
    every_server: bool,
    servers: HashSet<String>,
    /// `None`: every tool, prompt and resource of the allowed servers.
    tools: Option<regex::RegexSet>,
}

impl McpAccess {
    pub fn compile(raw: &raw::McpAccess) -> Result<Self, String> {
        let tools = if raw.tools.is_empty() {
            None
        } else {
            let patterns = raw.tools.iter().map(|g| {
                let parts: Vec<String> = g.split('*').map(regex::escape).collect();
                format!("^{}$", parts.join(".*"))
            });
            Some(regex::RegexSet::new(patterns).map_err(|e| format!("tools: {e}"))?)
        };
        Ok(Self {
            every_server: raw.servers.iter().any(|s| s == "*"),
            servers: raw.servers.iter().cloned().collect(),
            tools,
        })
    }

    pub fn server(&self, name: &str) -> bool {
        self.every_server || self.servers.contains(name)
    }

    /// `exposed` is a tool, prompt or resource as the aggregate endpoint names it
    /// (`{server}__{name}`).
    pub fn item(&self, exposed: &str) -> bool {
        self.tools.as_ref().is_none_or(|t| t.is_match(exposed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_globs_match_whole_names() {
        let a = McpAccess::compile(&raw::McpAccess {
            servers: vec!["math".into()],
            tools: vec!["math__add*".into(), "math__pi".into()],
        })
        .unwrap();
        assert!(a.server("math") && !a.server("files"));
        assert!(a.item("math__add") && a.item("math__add_many") && a.item("math__pi"));
        assert!(!a.item("math__pie") && !a.item("xmath__add") && !a.item("math__sub"));
        let every = McpAccess::compile(&raw::McpAccess {
            servers: vec!["*".into()],
            tools: vec![],
        })
        .unwrap();
        assert!(every.server("anything") && every.item("anything__at_all"));
        // Regex syntax in a glob is literal.
        let literal = McpAccess::compile(&raw::McpAccess {
            servers: vec![],
            tools: vec!["a.b__(x)".into()],
        })
        .unwrap();
        assert!(literal.item("a.b__(x)") && !literal.item("aXb__(x)"));
    }
}
