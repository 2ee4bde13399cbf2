//! The admin API, `/admin/v1/...` on the admin listener: resources listed, read, created or
//! replaced, and deleted, each validated exactly like the file before it is written to the
//! config store; the effective config; spend. Every call needs an admin key
//! (`server.admin_keys`); secrets never leave in clear.

use bytes::Bytes;
use http::{Method, Response};
use pingora::protocols::http::ServerSession;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;
use tokio::sync::OnceCell;

use crate::config::ConfigError;
use crate::config::Kind;
use crate::state::AppState;
use crate::store::etcd::Etcd;
use crate::store::{self, Resources};

/// Largest resource a PUT takes.
const MAX_BODY: usize = 1024 * 1024;

pub fn json_response(status: u16, v: &Value) -> Response<Vec<u8>> {
    let body = v.to_string().into_bytes();
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("content-length", body.len())
        .body(body)
        .unwrap_or_default()
}

fn error(status: u16, code: &str, message: impl Into<String>) -> Response<Vec<u8>> {
    json_response(status, &json!({"error": {"code": code, "message": message.into()}}))
}

/// 400 or 409 with every problem, each at its path.
fn config_errors(status: u16, code: &str, message: &str, errors: &[ConfigError]) -> Response<Vec<u8>> {
    let list: Vec<Value> = errors
        .iter()
        .map(|e| json!({"path": e.path, "message": e.message}))
        .collect();
    json_response(
        status,
        &json!({"error": {"code": code, "message": message, "errors": list}}),
    )
}

/// The admin API's connection to the config store, made on first use.
#[derive(Default)]
pub struct Api {
    etcd: OnceCell<Etcd>,
}

enum Route<'p> {
    Config,
    Spend,
    Status,
    List(Kind),
    One(Kind, &'p str),
}

fn route(path: &str) -> Option<Route<'_>> {
    let rest = path.strip_prefix("/admin/v1/")?.trim_end_matches('/');
    match rest.split('/').collect::<Vec<_>>().as_slice() {
        ["config"] => Some(Route::Config),
        ["spend"] => Some(Route::Spend),
        ["status"] => Some(Route::Status),
        [kind] => Kind::parse(kind).map(Route::List),
        [kind, name] if !name.is_empty() => Kind::parse(kind).map(|k| Route::One(k, name)),
        _ => None,
    }
}

/// Whether the request carries one of the admin keys (`Authorization: Bearer`), compared
/// by hash in constant time.
fn authorized(state: &AppState, session: &ServerSession) -> bool {
    let presented = session
        .req_header()
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|k| !k.is_empty());
    let Some(key) = presented else { return false };
    let hash = blake3::hash(key.as_bytes());
    let snap = state.snapshot();
    let mut ok = false;
    for k in &snap.server.admin_keys {
        ok |= bool::from(k.ct_eq(hash.as_bytes()));
    }
    ok
}

fn redacted_list(kind: Kind, resources: &Resources) -> Vec<Value> {
    resources
        .0
        .get(&kind)
        .map(|m| {
            m.values()
                .map(|v| {
                    let mut v = v.clone();
                    store::redact(kind, &mut v);
                    v
                })
                .collect()
        })
        .unwrap_or_default()
}

impl Api {
    pub async fn handle(&self, state: &AppState, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_owned();
        let Some(route) = route(&path) else {
            return error(404, "not_found", format!("No admin resource at {path}."));
        };
        if state.snapshot().server.admin_keys.is_empty() {
            return error(
                401,
                "unauthorized",
                "The admin API is off: no server.admin_keys are configured.",
            );
        }
        if !authorized(state, session) {
            return error(
                401,
                "unauthorized",
                "A valid admin key is required (Authorization: Bearer KEY).",
            );
        }
        let method = session.req_header().method.clone();
        match (route, method) {
            (Route::Status, Method::GET) => json_response(200, &super::status::status(state).await),
            (Route::Spend, Method::GET) => {
                let snap = state.snapshot();
                let spend = state.budgets.report(snap.budget_owners(), chrono::Utc::now()).await;
                json_response(200, &json!({"object": "list", "data": spend}))
            }
            (Route::Config, Method::GET) => {
                let resources = state.resources();
                let mut sections = serde_json::Map::new();
                for kind in Kind::ALL {
                    sections.insert(kind.name().into(), Value::Array(redacted_list(kind, &resources)));
                }
                let (source, revision) = match &state.store {
                    Some(s) => ("etcd", s.lock().map_or(0, |s| s.1)),
                    None => ("file", 0),
                };
                json_response(
                    200,
                    &json!({"source": source, "revision": revision, "summary": state.snapshot().summary(), "resources": sections}),
                )
            }
            (Route::List(kind), Method::GET) => match self.current(state).await {
                Ok(r) => json_response(200, &json!({"object": "list", "data": redacted_list(kind, &r)})),
                Err(resp) => resp,
            },
            (Route::One(kind, name), Method::GET) => match self.current(state).await {
                Ok(r) => match r.get(kind, name) {
                    Some(v) => {
                        let mut v = v.clone();
                        store::redact(kind, &mut v);
                        json_response(200, &v)
                    }
                    None => error(404, "not_found", format!("No {kind} named `{name}`.")),
                },
                Err(resp) => resp,
            },
            (Route::One(kind, name), Method::PUT) => match read_body(session).await {
                Ok(body) => self.put(state, kind, name, &body).await,
                Err(resp) => resp,
            },
            (Route::One(kind, name), Method::DELETE) => self.delete(state, kind, name).await,
            (Route::One(..), _) => error(405, "method_not_allowed", "Use GET, PUT or DELETE."),
            _ => error(405, "method_not_allowed", "Use GET."),
        }
    }

    /// The store's client; a 405 without a config store, a 503 when etcd cannot be reached.
    async fn etcd(&self, state: &AppState) -> Result<Etcd, Response<Vec<u8>>> {
        let Some(es) = state.snapshot().server.config_store.clone() else {
            return Err(error(
                405,
                "read_only",
                "The admin API is read-only without a config store (server.config_store): edit the file and send SIGHUP.",
            ));
        };
        self.etcd
            .get_or_try_init(|| Etcd::connect(&es))
            .await
            .cloned()
            .map_err(|e| error(503, "config_store_unavailable", e))
    }

    /// The resources as they are now: read from etcd with a config store (other instances
    /// may have written), else the file's.
    async fn current(&self, state: &AppState) -> Result<Resources, Response<Vec<u8>>> {
        if state.store.is_none() {
            return Ok(state.resources());
        }
        let mut etcd = self.etcd(state).await?;
        let loaded = etcd
            .load()
            .await
            .map_err(|e| error(503, "config_store_unavailable", e))?;
        Ok(loaded.resources)
    }

    async fn put(&self, state: &AppState, kind: Kind, name: &str, body: &[u8]) -> Response<Vec<u8>> {
        let mut etcd = match self.etcd(state).await {
            Ok(e) => e,
            Err(resp) => return resp,
        };
        let value: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => return error(400, "invalid_json", format!("The body is not JSON: {e}.")),
        };
        let (mut resources, lock) = match etcd.load().await {
            Ok(l) => (l.resources, l.lock),
            Err(e) => return error(503, "config_store_unavailable", e),
        };
        let existed = resources.get(kind, name).is_some();
        let value = match store::prepare(kind, name, value, resources.get(kind, name)) {
            Ok(v) => v,
            Err(e) => return config_errors(400, "invalid_config", "The resource is not valid.", &[e]),
        };
        resources.insert(kind, name, value.clone());
        if let Err(errors) = state.validate(&resources) {
            return config_errors(
                400,
                "invalid_config",
                "The config would not be valid; nothing was written.",
                &errors,
            );
        }
        match etcd.put(kind, name, &value, lock).await {
            Ok(true) => {}
            Ok(false) => return changed_meanwhile(),
            Err(e) => return error(503, "config_store_unavailable", e),
        }
        tracing::info!(kind = kind.name(), name, "admin: resource written");
        let mut shown = value;
        store::redact(kind, &mut shown);
        json_response(if existed { 200 } else { 201 }, &shown)
    }

    async fn delete(&self, state: &AppState, kind: Kind, name: &str) -> Response<Vec<u8>> {
        let mut etcd = match self.etcd(state).await {
            Ok(e) => e,
            Err(resp) => return resp,
        };
        let (mut resources, lock) = match etcd.load().await {
            Ok(l) => (l.resources, l.lock),
            Err(e) => return error(503, "config_store_unavailable", e),
        };
        if resources.remove(kind, name).is_none() {
            return error(404, "not_found", format!("No {kind} named `{name}`."));
        }
        if let Err(errors) = state.validate(&resources) {
            return config_errors(
                409,
                "conflict",
                &format!("{kind}/{name} is still referred to; nothing was deleted."),
                &errors,
            );
        }
        match etcd.delete(kind, name, lock).await {
            Ok(true) => {
                tracing::info!(kind = kind.name(), name, "admin: resource deleted");
                Response::builder().status(204).body(Vec::new()).unwrap_or_default()
            }
            Ok(false) => changed_meanwhile(),
            Err(e) => error(503, "config_store_unavailable", e),
        }
    }
}

/// Another write landed between this one's read and its commit.
fn changed_meanwhile() -> Response<Vec<u8>> {
    error(
        409,
        "conflict",
        "The config changed while this request was being checked; nothing was written. Retry.",
    )
}

async fn read_body(session: &mut ServerSession) -> Result<Bytes, Response<Vec<u8>>> {
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                body.extend_from_slice(&chunk);
                if body.len() > MAX_BODY {
                    return Err(error(413, "request_too_large", "A resource is at most 1 MiB."));
                }
            }
            Ok(None) => return Ok(Bytes::from(body)),
            Err(e) => return Err(error(400, "invalid_request", format!("Could not read the body: {e}."))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert!(matches!(route("/admin/v1/models"), Some(Route::List(Kind::Models))));
        assert!(matches!(route("/admin/v1/models/"), Some(Route::List(Kind::Models))));
        assert!(matches!(
            route("/admin/v1/api_keys/k1"),
            Some(Route::One(Kind::ApiKeys, "k1"))
        ));
        assert!(matches!(route("/admin/v1/config"), Some(Route::Config)));
        assert!(matches!(route("/admin/v1/spend"), Some(Route::Spend)));
        assert!(route("/admin/v1/nope").is_none());
        assert!(route("/admin/v1/models/a/b").is_none());
        assert!(route("/admin/v2/models").is_none());
    }
}
