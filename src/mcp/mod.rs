//! The MCP gateway: callers reach the configured Model Context Protocol servers
//! (`mcp_servers`) through one endpoint, `POST /mcp` (every server a caller may use, its
//! tools named `{server}__{tool}`), or `/mcp/{server}` (one server, names as the server
//! gives them), authenticated like model calls. aigw is the MCP server its callers talk
//! to and an MCP client of each upstream ([`upstream`]): it answers `initialize` and
//! `ping` itself, aggregates `tools/list`, `prompts/list` and `resources/list` over the
//! servers the caller may use, and routes `tools/call`, `prompts/get` and
//! `resources/read` to the right one with that server's credentials.
//!
//! A caller's `mcp` access (on its key or JWT issuer) allowlists servers and tools; a tool
//! it may not call is as absent as one that does not exist. Tool calls count against the
//! caller's rate limits, and its guardrails scan their arguments (request stage) and
//! results (response stage). Sessions: the caller's `Mcp-Session-Id` maps to one session
//! per upstream server, made on first use and remade when the server lets it expire;
//! `DELETE` ends them all. Each caller holds at most [`MAX_PER_CALLER`] sessions.

pub mod upstream;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{HeaderMap, Method};
use serde_json::{json, Value};

use crate::config::raw;
use crate::config::{ApiKeyEntry, Snapshot};
use crate::guard::{self, Guardrail, Hit};
use crate::state::AppState;
use upstream::{CallError, Server};

/// What a caller may reach, compiled from its `mcp` entry.
#[derive(Debug)]
pub struct Access {
    every_server: bool,
    servers: HashSet<String>,
    /// `None`: every tool of the allowed servers.
    tools: Option<regex::RegexSet>,
}

impl Access {
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

    fn server(&self, name: &str) -> bool {
        self.every_server || self.servers.contains(name)
    }

    /// `exposed` is the tool as the aggregate endpoint names it (`{server}__{tool}`).
    fn tool(&self, exposed: &str) -> bool {
        self.tools.as_ref().is_none_or(|t| t.is_match(exposed))
    }
}

/// The separator of `{server}__{tool}`; server names may not contain it.
pub const SEPARATOR: &str = "__";

/// A caller's session with the gateway, and through it with each upstream server.
struct Session {
    /// The caller it belongs to (key or issuer name, and owner): another caller presenting
    /// the id finds nothing.
    caller: (String, String),
    upstream: Mutex<HashMap<String, upstream::Session>>,
    /// Which server listed each resource URI, for `resources/read`.
    resources: Mutex<HashMap<String, String>>,
}

/// Live caller sessions: idle ones go after an hour, at most [`MAX_SESSIONS`] in all and
/// [`MAX_PER_CALLER`] per caller, so no caller can push the others' sessions out.
pub struct Sessions {
    cache: moka::sync::Cache<String, Arc<Session>>,
    /// Open sessions by caller, kept by the cache's eviction listener.
    per_caller: Arc<Mutex<HashMap<(String, String), usize>>>,
}

const MAX_SESSIONS: u64 = 10_000;
pub const MAX_PER_CALLER: usize = 256;

impl Default for Sessions {
    fn default() -> Self {
        let per_caller: Arc<Mutex<HashMap<(String, String), usize>>> = Arc::default();
        let counts = per_caller.clone();
        let cache = moka::sync::Cache::builder()
            .max_capacity(MAX_SESSIONS)
            .time_to_idle(Duration::from_secs(3600))
            .eviction_listener(move |_id, s: Arc<Session>, _why| {
                let mut counts = lock(&counts);
                if let Some(n) = counts.get_mut(&s.caller) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        counts.remove(&s.caller);
                    }
                }
            })
            .build();
        Self { cache, per_caller }
    }
}

impl Sessions {
    /// Keeps a new session, unless its caller has [`MAX_PER_CALLER`] open.
    fn open(&self, id: String, s: Session) -> bool {
        {
            let mut counts = lock(&self.per_caller);
            let n = counts.entry(s.caller.clone()).or_default();
            if *n >= MAX_PER_CALLER {
                return false;
            }
            *n += 1;
        }
        self.cache.insert(id, Arc::new(s));
        true
    }

    fn get(&self, id: &str) -> Option<Arc<Session>> {
        self.cache.get(id)
    }

    fn close(&self, id: &str) {
        self.cache.invalidate(id);
    }
}

/// What the gateway answers the caller.
pub struct Reply {
    pub status: u16,
    /// A JSON-RPC message; `None` for 202 and 204.
    pub body: Option<Value>,
    /// A new session's id (`initialize`).
    pub session: Option<String>,
}

/// A tool call, for the access log, the metrics and the span.
#[derive(Debug, Clone)]
pub struct ToolCall {
    pub server: String,
    pub tool: String,
    pub outcome: &'static str,
}

/// The reply, the JSON-RPC method (one of [`METHODS`], or `other`), the tool call it
/// made if any, and the guardrails that matched.
pub struct Handled {
    pub reply: Reply,
    pub method: &'static str,
    pub call: Option<ToolCall>,
    pub hits: Vec<Hit>,
}

/// The methods aigw serves; spans and logs name no other (callers choose the string).
const METHODS: [&str; 10] = [
    "initialize",
    "ping",
    "tools/list",
    "tools/call",
    "prompts/list",
    "prompts/get",
    "resources/list",
    "resources/templates/list",
    "resources/read",
    "notifications",
];

fn known(method: &str) -> &'static str {
    let method = if method.starts_with("notifications/") {
        "notifications"
    } else {
        method
    };
    METHODS.iter().find(|m| **m == method).copied().unwrap_or("other")
}

fn rpc_error(id: &Value, code: i64, message: impl Into<String>) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message.into()}})
}

fn reply(status: u16, body: Option<Value>) -> Reply {
    Reply {
        status,
        body,
        session: None,
    }
}

fn handled(reply: Reply) -> Handled {
    Handled {
        reply,
        method: "other",
        call: None,
        hits: Vec::new(),
    }
}

/// The protocol revisions aigw answers in; a caller asking for another gets the first.
const VERSIONS: [&str; 3] = [upstream::PROTOCOL_VERSION, "2025-11-25", "2025-03-26"];
const SESSION_HEADER: &str = "mcp-session-id";
const METHOD_NOT_FOUND: i64 = -32601;
const INVALID_PARAMS: i64 = -32602;
const INVALID_REQUEST: i64 = -32600;
const INTERNAL: i64 = -32603;
/// aigw's own refusals (rate limits, guardrails), in JSON-RPC's server-error range.
const REFUSED: i64 = -32000;

/// One request to `/mcp` (`scope` `None`) or `/mcp/{scope}`.
pub async fn handle(
    state: &AppState,
    snap: &Snapshot,
    caller: &Arc<ApiKeyEntry>,
    scope: Option<&str>,
    method: &Method,
    headers: &HeaderMap,
    body: &[u8],
) -> Handled {
    let me = Gate {
        state,
        snap,
        caller,
        scope,
    };
    // An unknown server and one the caller may not use look alike.
    if let Some(s) = scope {
        if me.server(s).is_none() {
            return handled(reply(
                404,
                Some(rpc_error(&Value::Null, INVALID_REQUEST, "No such MCP endpoint.")),
            ));
        }
    }
    let session_id = headers
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    match *method {
        Method::POST => {}
        Method::DELETE => {
            let Some(session) = session_id.as_deref().and_then(|id| me.session(id)) else {
                return handled(reply(404, None));
            };
            state.mcp_sessions.close(session_id.as_deref().unwrap_or(""));
            let open: Vec<(String, upstream::Session)> = lock(&session.upstream).drain().collect();
            // Each server the session used, even one the caller may no longer reach.
            for (name, s) in open {
                if let Some(server) = snap.mcp_servers.iter().find(|m| m.name == name) {
                    server.close(&s).await;
                }
            }
            return handled(reply(204, None));
        }
        // No stream of server-initiated messages: the transport lets a server say so.
        _ => return handled(reply(405, None)),
    }
    let msg: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(_) => {
            return handled(reply(
                400,
                Some(rpc_error(&Value::Null, -32700, "Parse error: the body is not JSON.")),
            ))
        }
    };
    let Some(obj) = msg.as_object() else {
        return handled(reply(
            400,
            Some(rpc_error(
                &Value::Null,
                INVALID_REQUEST,
                "Send one JSON-RPC message per request; batches are not supported.",
            )),
        ));
    };
    let Some(name) = obj.get("method").and_then(Value::as_str) else {
        // A response to a server request aigw never sent, or garbage: accepted, ignored.
        return handled(reply(202, None));
    };
    let mut h = me.request(obj, name, session_id).await;
    h.method = known(name);
    h
}

impl Gate<'_> {
    /// One JSON-RPC message with a method: a notification, or a request to answer.
    async fn request(&self, obj: &serde_json::Map<String, Value>, name: &str, session_id: Option<String>) -> Handled {
        let id = obj.get("id").cloned().unwrap_or(Value::Null);
        if obj.get("id").is_none() {
            // Notifications (`initialized`, `cancelled`) need no answer.
            return handled(reply(202, None));
        }
        let params = obj.get("params").cloned().unwrap_or(Value::Null);
        if name == "initialize" {
            return handled(self.initialize(&id, &params));
        }
        let Some(sid) = session_id else {
            return handled(reply(
                400,
                Some(rpc_error(
                    &id,
                    INVALID_REQUEST,
                    "Mcp-Session-Id is required: send initialize first.",
                )),
            ));
        };
        let Some(session) = self.session(&sid) else {
            return handled(reply(
                404,
                Some(rpc_error(&id, INVALID_REQUEST, "Session not found: initialize again.")),
            ));
        };
        let ok = |result: Value| handled(reply(200, Some(json!({"jsonrpc": "2.0", "id": id, "result": result}))));
        match name {
            "ping" => ok(json!({})),
            "tools/list" => ok(json!({"tools": self.list(&session, "tools/list", "tools").await})),
            "prompts/list" => ok(json!({"prompts": self.list(&session, "prompts/list", "prompts").await})),
            "resources/list" => ok(json!({"resources": self.list(&session, "resources/list", "resources").await})),
            "resources/templates/list" => ok(json!({
                "resourceTemplates": self.list(&session, "resources/templates/list", "resourceTemplates").await
            })),
            "tools/call" => self.call_tool(&session, &id, params).await,
            "prompts/get" => match self.route(params.get("name").and_then(Value::as_str).unwrap_or("")) {
                Some((server, prompt)) => {
                    let mut params = params.clone();
                    params["name"] = json!(prompt);
                    self.forward(&session, &server, &id, "prompts/get", params).await.0
                }
                None => handled(reply(200, Some(rpc_error(&id, INVALID_PARAMS, "Unknown prompt.")))),
            },
            "resources/read" => {
                let uri = params.get("uri").and_then(Value::as_str).unwrap_or("");
                let server = lock(&session.resources).get(uri).cloned();
                match server.and_then(|s| self.server(&s)) {
                    Some(server) => self.forward(&session, &server, &id, "resources/read", params).await.0,
                    None => handled(reply(200, Some(rpc_error(&id, -32002, "Resource not found.")))),
                }
            }
            _ => handled(reply(
                200,
                Some(rpc_error(&id, METHOD_NOT_FOUND, format!("Method not found: {name}"))),
            )),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One request's view: the caller, its access, and the scope of the endpoint.
struct Gate<'a> {
    state: &'a AppState,
    snap: &'a Snapshot,
    caller: &'a Arc<ApiKeyEntry>,
    scope: Option<&'a str>,
}

impl Gate<'_> {
    fn access(&self) -> Option<&Access> {
        self.caller.mcp.as_deref()
    }

    /// A configured server this caller may use, within the endpoint's scope.
    fn server(&self, name: &str) -> Option<Arc<Server>> {
        if self.scope.is_some_and(|s| s != name) || !self.access()?.server(name) {
            return None;
        }
        self.snap.mcp_servers.iter().find(|s| s.name == name).cloned()
    }

    fn servers(&self) -> Vec<Arc<Server>> {
        self.snap
            .mcp_servers
            .iter()
            .filter(|s| self.server(&s.name).is_some())
            .cloned()
            .collect()
    }

    /// How the caller sees `item` of `server` at this endpoint.
    fn exposed(&self, server: &str, item: &str) -> String {
        match self.scope {
            Some(_) => item.to_owned(),
            None => format!("{server}{SEPARATOR}{item}"),
        }
    }

    /// The server and its own name for what the caller called `name`.
    fn route(&self, name: &str) -> Option<(Arc<Server>, String)> {
        let (server, item) = match self.scope {
            Some(s) => (s, name),
            None => name.split_once(SEPARATOR)?,
        };
        Some((self.server(server)?, item.to_owned()))
    }

    /// Whether the caller may see and call `tool` of `server`.
    fn tool_allowed(&self, server: &Server, tool: &str) -> bool {
        server.tools.as_ref().is_none_or(|t| t.contains(tool))
            && self
                .access()
                .is_some_and(|a| a.tool(&format!("{}{SEPARATOR}{tool}", server.name)))
    }

    fn session(&self, id: &str) -> Option<Arc<Session>> {
        let s = self.state.mcp_sessions.get(id)?;
        (s.caller == (self.caller.name.clone(), self.caller.owner.clone())).then_some(s)
    }

    fn initialize(&self, id: &Value, params: &Value) -> Reply {
        let asked = params.get("protocolVersion").and_then(Value::as_str).unwrap_or("");
        let version = VERSIONS.iter().find(|v| **v == asked).copied().unwrap_or(VERSIONS[0]);
        let sid = uuid::Uuid::new_v4().simple().to_string();
        let session = Session {
            caller: (self.caller.name.clone(), self.caller.owner.clone()),
            upstream: Mutex::default(),
            resources: Mutex::default(),
        };
        if !self.state.mcp_sessions.open(sid.clone(), session) {
            let why = format!("Too many open sessions ({MAX_PER_CALLER}): end one (DELETE) or let one idle out.");
            return reply(200, Some(rpc_error(id, REFUSED, why)));
        }
        Reply {
            status: 200,
            body: Some(json!({"jsonrpc": "2.0", "id": id, "result": {
                "protocolVersion": version,
                "capabilities": {"tools": {"listChanged": false}, "prompts": {"listChanged": false}, "resources": {}},
                "serverInfo": {"name": "aigw", "version": env!("CARGO_PKG_VERSION")},
            }})),
            session: Some(sid),
        }
    }

    /// `method` on `server` within the caller's session with it.
    async fn call(&self, session: &Session, server: &Server, method: &str, params: Value) -> Result<Value, CallError> {
        let mut s = lock(&session.upstream).get(&server.name).cloned().unwrap_or_default();
        let r = server.call(&mut s, method, params).await;
        lock(&session.upstream).insert(server.name.clone(), s);
        r
    }

    /// Every allowed server's `key` items (following pagination), renamed for this
    /// endpoint; a server that fails is left out of the list and logged.
    async fn list(&self, session: &Session, method: &str, key: &str) -> Vec<Value> {
        let servers = self.servers();
        let lists =
            futures_util::future::join_all(servers.iter().map(|s| self.list_one(session, s, method, key))).await;
        let mut out = Vec::new();
        for (server, items) in servers.iter().zip(lists) {
            for mut item in items {
                let Some(name) = item.get("name").and_then(Value::as_str).map(str::to_owned) else {
                    continue;
                };
                if key == "tools" && !self.tool_allowed(server, &name) {
                    continue;
                }
                if key == "resources" {
                    if let Some(uri) = item.get("uri").and_then(Value::as_str) {
                        lock(&session.resources).insert(uri.to_owned(), server.name.clone());
                    }
                }
                item["name"] = json!(self.exposed(&server.name, &name));
                out.push(item);
            }
        }
        out
    }

    async fn list_one(&self, session: &Session, server: &Server, method: &str, key: &str) -> Vec<Value> {
        let mut items = Vec::new();
        let mut cursor: Option<Value> = None;
        // A bound on pages, so a server cannot keep a list going forever.
        for _ in 0..20 {
            let params = match &cursor {
                Some(c) => json!({"cursor": c}),
                None => json!({}),
            };
            match self.call(session, server, method, params).await {
                Ok(r) => {
                    items.extend(r.get(key).and_then(Value::as_array).cloned().unwrap_or_default());
                    cursor = r.get("nextCursor").filter(|c| !c.is_null()).cloned();
                    if cursor.is_none() {
                        break;
                    }
                }
                Err(CallError::Rpc(e)) if e.get("code").and_then(Value::as_i64) == Some(METHOD_NOT_FOUND) => break,
                Err(e) => {
                    tracing::warn!(server = %server.name, method, "MCP server left out of the list: {}", describe(&e));
                    break;
                }
            }
        }
        items
    }

    /// Forwards one request and relays the server's result or error.
    async fn forward(
        &self,
        session: &Session,
        server: &Server,
        id: &Value,
        method: &str,
        params: Value,
    ) -> (Handled, &'static str) {
        match self.call(session, server, method, params).await {
            Ok(result) => (
                handled(reply(200, Some(json!({"jsonrpc": "2.0", "id": id, "result": result})))),
                "ok",
            ),
            Err(CallError::Rpc(e)) => (
                handled(reply(200, Some(json!({"jsonrpc": "2.0", "id": id, "error": e})))),
                "error",
            ),
            Err(e) => {
                tracing::warn!(server = %server.name, method, "MCP server unavailable: {}", describe(&e));
                let msg = format!("The MCP server '{}' is unavailable.", server.name);
                (handled(reply(200, Some(rpc_error(id, INTERNAL, msg)))), "unavailable")
            }
        }
    }

    async fn call_tool(&self, session: &Session, id: &Value, mut params: Value) -> Handled {
        let started = Instant::now();
        let name = params.get("name").and_then(Value::as_str).unwrap_or("").to_owned();
        let Some((server, tool)) = self.route(&name).filter(|(s, t)| self.tool_allowed(s, t)) else {
            self.state
                .metrics
                .mcp_tool_calls
                .with_label_values(&["", "", "unknown_tool"])
                .inc();
            return handled(reply(
                200,
                Some(rpc_error(id, INVALID_PARAMS, format!("Unknown tool: {name}"))),
            ));
        };
        let done = |outcome: &'static str, mut h: Handled| {
            let m = &self.state.metrics;
            m.mcp_tool_calls
                .with_label_values(&[server.name.as_str(), tool.as_str(), outcome])
                .inc();
            m.mcp_tool_duration
                .with_label_values(&[server.name.as_str()])
                .observe(started.elapsed().as_secs_f64());
            h.call = Some(ToolCall {
                server: server.name.clone(),
                tool: tool.clone(),
                outcome,
            });
            h
        };
        // Held until the call ends: a concurrency slot is released with it.
        let _admitted = match self.caller.limits.as_ref() {
            Some(b) => match self.state.limiter.admit(&[b]).await {
                Ok(a) => a,
                Err(e) => {
                    let refused = rpc_error(id, REFUSED, e.to_string());
                    return done("rate_limited", handled(reply(200, Some(refused))));
                }
            },
            None => None,
        };
        let mut hits = Vec::new();
        let on_request = guard::applicable(&self.caller.guardrails, &[], false);
        if let Some(args) = params.get_mut("arguments") {
            if let Err(g) = scan(&on_request, args, &mut hits) {
                let refused = rpc_error(
                    id,
                    REFUSED,
                    format!("The tool call was blocked by the guardrail '{g}'."),
                );
                let mut h = handled(reply(200, Some(refused)));
                h.hits = hits;
                return done("blocked", h);
            }
        }
        params["name"] = json!(tool);
        let (mut h, outcome) = self.forward(session, &server, id, "tools/call", params).await;
        let mut outcome = outcome;
        if outcome == "ok" {
            let on_response = guard::applicable(&self.caller.guardrails, &[], true);
            let body = h.reply.body.as_mut().and_then(|b| b.get_mut("result"));
            if let Some(result) = body {
                if result.get("isError").and_then(Value::as_bool) == Some(true) {
                    outcome = "tool_error";
                }
                if let Err(g) = scan(&on_response, result, &mut hits) {
                    let refused = rpc_error(
                        id,
                        REFUSED,
                        format!("The tool's result was blocked by the guardrail '{g}'."),
                    );
                    h.reply.body = Some(refused);
                    outcome = "blocked";
                }
            }
        }
        h.hits = hits;
        done(outcome, h)
    }
}

fn describe(e: &CallError) -> String {
    match e {
        CallError::Unavailable(why) => why.clone(),
        CallError::Rpc(e) => format!("JSON-RPC error {e}"),
    }
}

/// Every string of `v` is text to the guardrails: masked in place, or `Err` with the
/// guardrail that blocks.
fn scan(guards: &[Arc<Guardrail>], v: &mut Value, hits: &mut Vec<Hit>) -> Result<(), Arc<str>> {
    if guards.is_empty() {
        return Ok(());
    }
    let mut blocked = None;
    walk(v, &mut |s| {
        if let Some(g) = guard::scan_string(guards, s, hits) {
            blocked.get_or_insert(g);
        }
    });
    blocked.map_or(Ok(()), Err)
}

/// Visits every string of a JSON value, keys left alone. serde_json's parser bounds the
/// nesting (128 levels), so the recursion is bounded too.
fn walk(v: &mut Value, f: &mut dyn FnMut(&mut String)) {
    match v {
        Value::String(s) => f(s),
        Value::Array(items) => items.iter_mut().for_each(|i| walk(i, f)),
        Value::Object(m) => m.values_mut().for_each(|i| walk(i, f)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_globs_match_whole_names() {
        let a = Access::compile(&raw::McpAccess {
            servers: vec!["math".into()],
            tools: vec!["math__add*".into(), "math__pi".into()],
        })
        .unwrap();
        assert!(a.server("math") && !a.server("files"));
        assert!(a.tool("math__add") && a.tool("math__add_many") && a.tool("math__pi"));
        assert!(!a.tool("math__pie") && !a.tool("xmath__add") && !a.tool("math__sub"));
        let every = Access::compile(&raw::McpAccess {
            servers: vec!["*".into()],
            tools: vec![],
        })
        .unwrap();
        assert!(every.server("anything") && every.tool("anything__at_all"));
        // Regex syntax in a glob is literal.
        let literal = Access::compile(&raw::McpAccess {
            servers: vec![],
            tools: vec!["a.b__(x)".into()],
        })
        .unwrap();
        assert!(literal.tool("a.b__(x)") && !literal.tool("aXb__(x)"));
    }

    #[test]
    fn one_caller_cannot_hold_more_than_its_share_of_sessions() {
        let sessions = Sessions::default();
        let new = |caller: &str| Session {
            caller: (caller.into(), "owner".into()),
            upstream: Mutex::default(),
            resources: Mutex::default(),
        };
        for i in 0..MAX_PER_CALLER {
            assert!(sessions.open(format!("a{i}"), new("a")));
        }
        assert!(!sessions.open("a-extra".into(), new("a")), "over the cap");
        assert!(sessions.open("b0".into(), new("b")), "another caller is not affected");
        sessions.close("a0");
        assert!(sessions.get("a0").is_none());
        assert!(
            sessions.open("a-again".into(), new("a")),
            "a closed session frees its place"
        );
    }

    #[test]
    fn every_string_is_visited_and_keys_are_not() {
        let mut v = json!({"key": "a", "list": ["b", {"deep": "c"}], "n": 1});
        let mut seen = Vec::new();
        walk(&mut v, &mut |s| seen.push(s.clone()));
        seen.sort();
        assert_eq!(seen, ["a", "b", "c"]);
    }
}
