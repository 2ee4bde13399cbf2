//! The MCP gateway: callers reach the configured Model Context Protocol servers
//! (`mcp_servers`) through one endpoint, `POST /mcp` (every server a caller may use, its
//! tools named `{server}__{tool}`), or `/mcp/{server}` (one server, names as the server
//! gives them), authenticated like model calls. aigw is the MCP server its callers talk
//! to and an MCP client of each upstream ([`upstream`]): it answers `initialize` and
//! `ping` itself, aggregates `tools/list`, `prompts/list` and `resources/list` over the
//! servers the caller may use, and routes `tools/call`, `prompts/get` and
//! `resources/read` to the right one with that server's credentials.
//!
//! A caller's `mcp` access (on its key or JWT issuer) allowlists servers, and its `tools`
//! globs the tools, prompts and resources it may reach; one it may not reach is as absent
//! as one that does not exist. Every request that reaches a server counts against the
//! caller's rate limits. Its guardrails read every MCP message both ways with the one text
//! model (`guard::text::mcp_texts`): every key, string and number of a request's params
//! (request stage) and of a server's result or error (response stage). What a server
//! sends is bounded ([`upstream`]). Sessions: the caller's `Mcp-Session-Id` maps to one
//! session per upstream server, made on first use and remade when the server lets it
//! expire; `DELETE` ends them all. Each caller holds at most [`MAX_PER_CALLER`] sessions.

mod bounded;
pub mod upstream;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{HeaderMap, Method};
use serde_json::{json, Value};

use crate::auth::ApiKeyEntry;
use crate::auth::McpAccess;
use crate::guard::service::{About, Side, Stop};
use crate::guard::{self, Hit};
use crate::limit::{Admitted, Limiter};
use crate::metrics::Metrics;
use upstream::{CallError, Server};

/// The separator of `{server}__{tool}`. Server names may not contain it nor end with `_`,
/// so the first `__` of an exposed name is always the separator (see `config::compile`).
pub const SEPARATOR: &str = "__";

/// Whether `name` can name a server: `{name}__{item}` then splits back into `name` and
/// `item` for every item. `Err` says why not.
pub fn check_server_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        Err("must not be empty".into())
    } else if name.contains(SEPARATOR) {
        Err(format!("must not contain '{SEPARATOR}' (it separates server and tool)"))
    } else if name.ends_with('_') {
        Err(format!(
            "must not end with '_' ('{name}_x' would read as another server's tool)"
        ))
    } else {
        Ok(())
    }
}

/// A caller's session with the gateway, and through it with each upstream server.
struct Session {
    /// The caller it belongs to (key or issuer name, and owner): another caller presenting
    /// the id finds nothing.
    caller: (String, String),
    upstream: Mutex<HashMap<String, upstream::Session>>,
    /// Which server listed each resource URI, for `resources/read`: each server's last
    /// list, so at most `max_list_items` per server.
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

/// A tool call, for the access log and the span. `tool` is the name as called, cut to
/// [`MAX_NAME_BYTES`] (a caller chooses it, and may make it megabytes long); metrics
/// label it by [`Server::tool_label`] instead.
#[derive(Debug, Clone)]
pub struct ToolCall {
    pub server: String,
    pub tool: String,
    pub outcome: &'static str,
}

/// The most of a tool's name kept for the access log and spans.
pub const MAX_NAME_BYTES: usize = 128;

/// `name` cut to [`MAX_NAME_BYTES`] on a character boundary.
fn cut(name: &str) -> String {
    let mut end = name.len().min(MAX_NAME_BYTES);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_owned()
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

/// What a list method lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Items {
    Tools,
    Prompts,
    Resources,
    Templates,
}

impl Items {
    fn of(method: &str) -> Option<Self> {
        Some(match method {
            "tools/list" => Self::Tools,
            "prompts/list" => Self::Prompts,
            "resources/list" => Self::Resources,
            "resources/templates/list" => Self::Templates,
            _ => return None,
        })
    }

    fn method(self) -> &'static str {
        match self {
            Self::Tools => "tools/list",
            Self::Prompts => "prompts/list",
            Self::Resources => "resources/list",
            Self::Templates => "resources/templates/list",
        }
    }

    /// The result's key holding the items.
    fn key(self) -> &'static str {
        match self {
            Self::Tools => "tools",
            Self::Prompts => "prompts",
            Self::Resources => "resources",
            Self::Templates => "resourceTemplates",
        }
    }
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

/// A JSON-RPC answer (200) with the guardrails that matched on the way.
fn answered(body: Value, hits: Vec<Hit>) -> Handled {
    Handled {
        hits,
        ..handled(reply(200, Some(body)))
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
/// MCP's code for an unknown resource.
const RESOURCE_NOT_FOUND: i64 = -32002;

/// What the MCP gateway works with, from the process and the request's snapshot: the
/// configured servers, the sessions, the limiter its calls count against, the metrics.
pub struct Env<'a> {
    /// The request's id, as guardrail services are told it.
    pub request_id: &'a str,
    pub servers: &'a [Arc<Server>],
    pub sessions: &'a Sessions,
    pub limiter: &'a Limiter,
    pub metrics: &'a Metrics,
}

/// One request to `/mcp` (`scope` `None`) or `/mcp/{scope}`.
pub async fn handle(
    env: &Env<'_>,
    caller: &Arc<ApiKeyEntry>,
    scope: Option<&str>,
    method: &Method,
    headers: &HeaderMap,
    body: &[u8],
) -> Handled {
    let me = Gate { env, caller, scope };
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
            env.sessions.close(session_id.as_deref().unwrap_or(""));
            let open: Vec<(String, upstream::Session)> = lock(&session.upstream).drain().collect();
            // Each server the session used, even one the caller may no longer reach.
            for (name, s) in open {
                if let Some(server) = env.servers.iter().find(|m| m.name == name) {
                    server.close(&s).await;
                }
            }
            return handled(reply(204, None));
        }
        // No stream of server-initiated messages: the transport lets a server say so.
        _ => return handled(reply(405, None)),
    }
    let mut budget = bounded::budget(body.len());
    let msg = match bounded::parse(body, &mut budget) {
        Ok(v) => v,
        Err(bounded::Refused::Invalid) => {
            return handled(reply(
                400,
                Some(rpc_error(&Value::Null, -32700, "Parse error: the body is not JSON.")),
            ))
        }
        Err(bounded::Refused::TooLarge) => {
            return handled(reply(
                400,
                Some(rpc_error(
                    &Value::Null,
                    INVALID_REQUEST,
                    "The message holds more values than the gateway takes.",
                )),
            ))
        }
    };
    let Value::Object(mut obj) = msg else {
        return handled(reply(
            400,
            Some(rpc_error(
                &Value::Null,
                INVALID_REQUEST,
                "Send one JSON-RPC message per request; batches are not supported.",
            )),
        ));
    };
    let Some(name) = obj.get("method").and_then(Value::as_str).map(str::to_owned) else {
        // A response to a server request aigw never sent, or garbage: accepted, ignored.
        return handled(reply(202, None));
    };
    let mut h = me.request(&mut obj, &name, session_id).await;
    h.method = known(&name);
    h
}

impl Gate<'_> {
    /// One JSON-RPC message with a method: a notification, or a request to answer.
    async fn request(
        &self,
        obj: &mut serde_json::Map<String, Value>,
        name: &str,
        session_id: Option<String>,
    ) -> Handled {
        let Some(id) = obj.get("id").cloned() else {
            // Notifications (`initialized`, `cancelled`) need no answer.
            return handled(reply(202, None));
        };
        let params = obj.remove("params").unwrap_or(Value::Null);
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
        if let Some(items) = Items::of(name) {
            return self.list(&session, &id, items).await;
        }
        match name {
            "ping" => answered(json!({"jsonrpc": "2.0", "id": id, "result": {}}), Vec::new()),
            "tools/call" => self.call_tool(&session, &id, params).await,
            "prompts/get" => self.get_prompt(&session, &id, params).await,
            "resources/read" => self.read_resource(&session, &id, params).await,
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
    env: &'a Env<'a>,
    caller: &'a Arc<ApiKeyEntry>,
    scope: Option<&'a str>,
}

impl Gate<'_> {
    fn access(&self) -> Option<&McpAccess> {
        self.caller.mcp.as_deref()
    }

    /// A configured server this caller may use, within the endpoint's scope.
    fn server(&self, name: &str) -> Option<Arc<Server>> {
        if self.scope.is_some_and(|s| s != name) || !self.access()?.server(name) {
            return None;
        }
        self.env.servers.iter().find(|s| s.name == name).cloned()
    }

    fn servers(&self) -> Vec<Arc<Server>> {
        self.env
            .servers
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

    /// The server and its own name for what the caller called `name`, if the caller may
    /// reach it. Server names never end with `_` nor hold `__`, so the first `__` is the
    /// separator: one exposed name, one server and item.
    fn route(&self, items: Items, name: &str) -> Option<(Arc<Server>, String)> {
        let (server, item) = match self.scope {
            Some(s) => (s, name),
            None => name.split_once(SEPARATOR)?,
        };
        let server = self.server(server)?;
        self.allowed(&server, items, item).then(|| (server, item.to_owned()))
    }

    /// Whether the caller may see and use `item` of `server`: the caller's globs name
    /// every kind of item, and a server's `tools` list bounds its tools.
    fn allowed(&self, server: &Server, items: Items, item: &str) -> bool {
        (items != Items::Tools || server.tools.as_ref().is_none_or(|t| t.contains(item)))
            && self
                .access()
                .is_some_and(|a| a.item(&format!("{}{SEPARATOR}{item}", server.name)))
    }

    fn session(&self, id: &str) -> Option<Arc<Session>> {
        let s = self.env.sessions.get(id)?;
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
        if !self.env.sessions.open(sid.clone(), session) {
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

    /// A request that reaches a server counts against the caller's rate limits, as a
    /// model call does; the concurrency slot is held while the returned value lives.
    /// `Err`: the refusal to answer.
    async fn admit(&self, id: &Value) -> Result<Option<Admitted>, Value> {
        match self.caller.limits.as_ref() {
            Some(b) => self
                .env
                .limiter
                .admit(&[b])
                .await
                .map_err(|e| rpc_error(id, REFUSED, e.to_string())),
            None => Ok(None),
        }
    }

    /// A request that goes to a server: counted against the caller's rate limits, then
    /// its `params` scanned by its guardrails. `Err`: the answer, and the outcome a tool
    /// call is counted as (`rate_limited` or `blocked`).
    async fn admit_and_guard(
        &self,
        id: &Value,
        params: &mut Value,
    ) -> Result<(Option<Admitted>, Vec<Hit>), (Handled, &'static str)> {
        let admitted = self
            .admit(id)
            .await
            .map_err(|refused| (answered(refused, Vec::new()), "rate_limited"))?;
        let mut hits = Vec::new();
        match self.guard_request(id, params, &mut hits).await {
            Ok(()) => Ok((admitted, hits)),
            Err(refused) => Err((answered(refused, hits), "blocked")),
        }
    }

    /// The request stage: every text of `params` scanned by the caller's guardrails, in
    /// place. `Err`: the refusal to answer.
    async fn guard_request(&self, id: &Value, params: &mut Value, hits: &mut Vec<Hit>) -> Result<(), Value> {
        let guards = guard::applicable(&self.caller.guardrails, &[], false);
        guard::service::check_mcp(&guards, Side::Request, params, self.about(), hits)
            .await
            .map_err(|stop| rpc_error(id, REFUSED, refusal(&stop, "request")))
    }

    /// What a guardrail service is told of this request: `model` is `mcp` (or the
    /// endpoint's server), the owner the caller's.
    fn about(&self) -> About<'_> {
        About {
            model: self.scope.unwrap_or("mcp"),
            owner: &self.caller.owner,
            request_id: self.env.request_id,
        }
    }

    /// `method` on `server` within the caller's session with it, within `allowance`.
    async fn call(
        &self,
        session: &Session,
        server: &Server,
        method: &str,
        params: Value,
        allowance: &mut upstream::Allowance,
    ) -> Result<Value, CallError> {
        let mut s = lock(&session.upstream).get(&server.name).cloned().unwrap_or_default();
        let r = server.call(&mut s, method, params, allowance).await;
        lock(&session.upstream).insert(server.name.clone(), s);
        r
    }

    /// Every allowed server's items (following pagination), each scanned by the
    /// caller's response-stage guardrails and renamed for this endpoint. A server that
    /// fails or breaks a bound is left out and logged; at `/mcp/{server}`, where it is the
    /// only one, the caller gets the error.
    async fn list(&self, session: &Session, id: &Value, items: Items) -> Handled {
        let _admitted = match self.admit(id).await {
            Ok(a) => a,
            Err(refused) => return answered(refused, Vec::new()),
        };
        let servers = self.servers();
        let lists = futures_util::future::join_all(servers.iter().map(|s| self.list_one(session, s, items))).await;
        let guards = guard::applicable(&self.caller.guardrails, &[], true);
        let mut hits = Vec::new();
        let mut out = Vec::new();
        for (server, listed) in servers.iter().zip(lists) {
            let listed = match listed {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(server = %server.name, method = items.method(), "MCP server left out of the list: {}", describe(&e));
                    if self.scope.is_some() {
                        return handled(reply(200, Some(self.failure(id, server, &e))));
                    }
                    continue;
                }
            };
            if items == Items::Tools {
                server.remember_tools(listed.iter().filter_map(|t| t.get("name")?.as_str()));
            }
            if items == Items::Resources {
                // The server's latest list replaces its last: a server that lists new
                // URIs every time cannot grow the session.
                lock(&session.resources).retain(|_, s| *s != server.name);
            }
            let allowed = listed.into_iter().filter(|item| {
                item.get("name")
                    .and_then(Value::as_str)
                    .is_some_and(|name| self.allowed(server, items, name))
            });
            // Each item is judged on its own (a refusal withholds that item only), all at
            // once: a long list waits for its slowest call, not their sum.
            let about = self.about();
            let judged = futures_util::future::join_all(allowed.map(|mut item| {
                let guards = &guards;
                async move {
                    let mut item_hits = Vec::new();
                    let verdict =
                        guard::service::check_mcp(guards, Side::Response, &mut item, about, &mut item_hits).await;
                    (item, verdict, item_hits)
                }
            }))
            .await;
            for (mut item, verdict, item_hits) in judged {
                for h in item_hits {
                    if !hits.iter().any(|x: &Hit| x.guardrail == h.guardrail) {
                        hits.push(h);
                    }
                }
                // An item a guardrail refuses is left out, as a withheld choice is.
                if let Err(stop) = verdict {
                    tracing::debug!(server = %server.name, refused = ?stop, "an MCP list item was withheld");
                    continue;
                }
                let Some(name) = item.get("name").and_then(Value::as_str).map(str::to_owned) else {
                    continue;
                };
                if items == Items::Resources {
                    if let Some(uri) = item.get("uri").and_then(Value::as_str) {
                        lock(&session.resources).insert(uri.to_owned(), server.name.clone());
                    }
                }
                item["name"] = json!(self.exposed(&server.name, &name));
                out.push(item);
            }
        }
        answered(json!({"jsonrpc": "2.0", "id": id, "result": {items.key(): out}}), hits)
    }

    /// One server's whole list, within its bounds: at most [`upstream::MAX_PAGES`] pages,
    /// `max_list_items` items, and `max_answer_bytes` (and the memory that buys) for all
    /// pages together.
    async fn list_one(&self, session: &Session, server: &Server, items: Items) -> Result<Vec<Value>, CallError> {
        let mut out = Vec::new();
        let mut allowance = server.allowance();
        let mut cursor: Option<Value> = None;
        for _ in 0..upstream::MAX_PAGES {
            let params = match cursor.take() {
                Some(c) => json!({"cursor": c}),
                None => json!({}),
            };
            match self.call(session, server, items.method(), params, &mut allowance).await {
                Ok(mut r) => {
                    if let Some(Value::Array(page)) = r.get_mut(items.key()).map(Value::take) {
                        if out.len() + page.len() > server.max_list_items {
                            return Err(CallError::TooLarge(format!(
                                "listed more than {} items (max_list_items)",
                                server.max_list_items
                            )));
                        }
                        out.extend(page);
                    }
                    cursor = r.get_mut("nextCursor").map(Value::take).filter(|c| !c.is_null());
                    if cursor.is_none() {
                        return Ok(out);
                    }
                }
                Err(CallError::Rpc(e)) if e.get("code").and_then(Value::as_i64) == Some(METHOD_NOT_FOUND) => {
                    return Ok(out)
                }
                Err(e) => return Err(e),
            }
        }
        Err(CallError::TooLarge(format!(
            "listed more than {} pages",
            upstream::MAX_PAGES
        )))
    }

    /// The JSON-RPC error a caller gets for a server that failed.
    fn failure(&self, id: &Value, server: &Server, e: &CallError) -> Value {
        let msg = match e {
            CallError::TooLarge(why) => format!(
                "The MCP server '{}' answered more than the gateway takes: it {why}.",
                server.name
            ),
            _ => format!("The MCP server '{}' is unavailable.", server.name),
        };
        rpc_error(id, INTERNAL, msg)
    }

    /// Forwards one request and relays the server's result or error, each scanned by the
    /// caller's response-stage guardrails first.
    async fn forward(
        &self,
        session: &Session,
        server: &Server,
        id: &Value,
        method: &str,
        params: Value,
        mut hits: Vec<Hit>,
    ) -> (Handled, &'static str) {
        let answer = self
            .call(session, server, method, params, &mut server.allowance())
            .await;
        let guards = guard::applicable(&self.caller.guardrails, &[], true);
        let blocked = |stop: Stop| rpc_error(id, REFUSED, refusal(&stop, "MCP server's answer"));
        let about = self.about();
        let (body, outcome) = match answer {
            Ok(mut result) => {
                match guard::service::check_mcp(&guards, Side::Response, &mut result, about, &mut hits).await {
                    Ok(()) => (json!({"jsonrpc": "2.0", "id": id, "result": result}), "ok"),
                    Err(stop) => (blocked(stop), "blocked"),
                }
            }
            Err(CallError::Rpc(mut e)) => {
                match guard::service::check_mcp(&guards, Side::Response, &mut e, about, &mut hits).await {
                    Ok(()) => (json!({"jsonrpc": "2.0", "id": id, "error": e}), "error"),
                    Err(stop) => (blocked(stop), "blocked"),
                }
            }
            Err(e) => {
                tracing::warn!(server = %server.name, method, "MCP server failed: {}", describe(&e));
                (self.failure(id, server, &e), "unavailable")
            }
        };
        (answered(body, hits), outcome)
    }

    async fn call_tool(&self, session: &Session, id: &Value, mut params: Value) -> Handled {
        let started = Instant::now();
        let unknown = |name: &str| {
            self.env
                .metrics
                .mcp_tool_calls
                .with_label_values(&["", "", "unknown_tool"])
                .inc();
            handled(reply(
                200,
                Some(rpc_error(id, INVALID_PARAMS, format!("Unknown tool: {name}"))),
            ))
        };
        let name = params.get("name").and_then(Value::as_str).unwrap_or("").to_owned();
        let Some((server, tool)) = self.route(Items::Tools, &name) else {
            return unknown(&name);
        };
        let done = |server: &Server, tool: &str, outcome: &'static str, mut h: Handled| {
            let m = self.env.metrics;
            m.mcp_tool_calls
                .with_label_values(&[server.name.as_str(), server.tool_label(tool).as_str(), outcome])
                .inc();
            m.mcp_tool_duration
                .with_label_values(&[server.name.as_str()])
                .observe(started.elapsed().as_secs_f64());
            h.call = Some(ToolCall {
                server: server.name.clone(),
                tool: cut(tool),
                outcome,
            });
            h
        };
        // Held until the call ends: a concurrency slot is released with it.
        let (_admitted, hits) = match self.admit_and_guard(id, &mut params).await {
            Ok(admitted) => admitted,
            Err((refused, outcome)) => return done(&server, &tool, outcome, refused),
        };
        // What goes on is the scanned request: a masked name routes as it now reads.
        let scanned = params.get("name").and_then(Value::as_str).unwrap_or("").to_owned();
        let Some((server, tool)) = self.route(Items::Tools, &scanned) else {
            let mut h = unknown(&scanned);
            h.hits = hits;
            return h;
        };
        params["name"] = json!(tool);
        let (h, mut outcome) = self.forward(session, &server, id, "tools/call", params, hits).await;
        let is_error = h.reply.body.as_ref().and_then(|b| b.pointer("/result/isError"));
        if outcome == "ok" && is_error.and_then(Value::as_bool) == Some(true) {
            outcome = "tool_error";
        }
        done(&server, &tool, outcome, h)
    }

    async fn get_prompt(&self, session: &Session, id: &Value, mut params: Value) -> Handled {
        let unknown = || handled(reply(200, Some(rpc_error(id, INVALID_PARAMS, "Unknown prompt."))));
        let name = params.get("name").and_then(Value::as_str).unwrap_or("");
        if self.route(Items::Prompts, name).is_none() {
            return unknown();
        }
        let (_admitted, hits) = match self.admit_and_guard(id, &mut params).await {
            Ok(admitted) => admitted,
            Err((refused, _)) => return refused,
        };
        let scanned = params.get("name").and_then(Value::as_str).unwrap_or("");
        let Some((server, prompt)) = self.route(Items::Prompts, scanned) else {
            return Handled { hits, ..unknown() };
        };
        params["name"] = json!(prompt);
        self.forward(session, &server, id, "prompts/get", params, hits).await.0
    }

    async fn read_resource(&self, session: &Session, id: &Value, mut params: Value) -> Handled {
        let not_found = || {
            handled(reply(
                200,
                Some(rpc_error(id, RESOURCE_NOT_FOUND, "Resource not found.")),
            ))
        };
        // Only a resource one of the session's lists showed, of a server still reachable.
        let owner = |params: &Value| {
            let uri = params.get("uri").and_then(Value::as_str).unwrap_or("");
            let server = lock(&session.resources).get(uri).cloned();
            server.and_then(|s| self.server(&s))
        };
        if owner(&params).is_none() {
            return not_found();
        }
        let (_admitted, hits) = match self.admit_and_guard(id, &mut params).await {
            Ok(admitted) => admitted,
            Err((refused, _)) => return refused,
        };
        let Some(server) = owner(&params) else {
            return Handled { hits, ..not_found() };
        };
        self.forward(session, &server, id, "resources/read", params, hits)
            .await
            .0
    }
}

/// A failure as a log line may show it: a server's JSON-RPC error by its code only, as
/// its message is the server's text (it may carry what the guardrails withhold).
fn describe(e: &CallError) -> String {
    match e {
        CallError::Unavailable(why) | CallError::TooLarge(why) => why.clone(),
        CallError::Rpc(e) => format!("JSON-RPC error {}", e.get("code").unwrap_or(&Value::Null)),
    }
}

/// The JSON-RPC error message a guardrail's refusal gives (`what` was refused): it names
/// the guardrail, never the text.
fn refusal(stop: &Stop, what: &str) -> String {
    match stop {
        Stop::Blocked(g) => format!("The {what} was blocked by the guardrail '{g}'."),
        Stop::Unavailable(g) => format!("The guardrail '{g}' could not check the {what}; retry shortly."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every server name the config takes splits back out of every exposed name it makes,
    /// whatever the item's name (underscores at either end included); the names it
    /// refuses are the ones that would not.
    #[test]
    fn an_exposed_name_splits_into_one_server_and_item() {
        let servers = ["math", "m", "_m", "a_b", "a-b", "a.b", "_"];
        let items = ["x", "_x", "__x", "x__y", "x_", "_", "__", ""];
        for s in servers {
            let ok = check_server_name(s);
            if s == "_" {
                assert!(ok.is_err());
                continue;
            }
            assert!(ok.is_ok(), "{s}");
            for i in items {
                let exposed = format!("{s}{SEPARATOR}{i}");
                assert_eq!(exposed.split_once(SEPARATOR), Some((s, i)), "{exposed}");
            }
        }
        for bad in ["", "math_", "a__b", "__"] {
            assert!(check_server_name(bad).is_err(), "{bad:?}");
        }
        // The case of the issue: `math_`'s `secret` and `math`'s `_secret` read alike.
        assert_eq!(format!("math_{SEPARATOR}secret"), format!("math{SEPARATOR}_secret"));
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
    fn kept_names_are_cut_on_a_character_boundary() {
        assert_eq!(cut("add"), "add");
        assert_eq!(cut(&"a".repeat(1000)).len(), MAX_NAME_BYTES);
        let wide = "é".repeat(100);
        assert_eq!(cut(&wide), "é".repeat(64));
    }

    #[test]
    fn a_servers_error_is_logged_by_its_code_only() {
        let e = CallError::Rpc(json!({"code": -32000, "message": "ask alice@example.com", "data": "x"}));
        assert_eq!(describe(&e), "JSON-RPC error -32000");
    }
}
