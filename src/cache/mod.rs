//! Response caching: complete, successful completions are stored under a key of (scope,
//! alias, endpoint, the canonical request) and served again without the provider.
//!
//! What is stored is the JSON completion in the caller's dialect, as the caller received it
//! (translated, guardrails applied); a stream is assembled into that form once it ended
//! normally. A hit is answered as JSON, or replayed as SSE when the request streams, so
//! either kind of request fills the entry for both. Stores are kept by policy name across
//! reloads; storing runs in a task, off the response path.

pub mod assemble;
pub mod key;
pub mod replay;
pub mod store;

use std::sync::Arc;

use bytes::Bytes;
use dashmap::DashMap;
use http::HeaderMap;
use serde_json::Value;

use crate::api::Dialect;
use crate::api::Endpoint;
use crate::auth::ApiKeyEntry;
use crate::metrics::Metrics;
use crate::raw::{self, CacheScope};
use crate::redis_pool::RedisPool;
use crate::route::Model;
use crate::usage::Usage;
use assemble::Assembler;
pub use store::{Entry, Store};

/// What the cache did for a request: the `x-aigw-cache` header, the metric label and the
/// access log field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Hit,
    Miss,
    Bypass,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
            Self::Bypass => "bypass",
        }
    }
}

/// The cache stores of the process, by policy name; they outlive reloads.
#[derive(Default)]
pub struct Caches {
    stores: DashMap<String, Arc<Store>>,
    redis: Option<Arc<RedisPool>>,
}

impl Caches {
    pub fn new(redis: Option<Arc<RedisPool>>) -> Self {
        Self {
            stores: DashMap::new(),
            redis,
        }
    }

    /// The store of a policy; a policy whose settings changed gets a new, empty one.
    pub fn store(&self, policy: &Arc<raw::Cache>) -> Option<Arc<Store>> {
        if let Some(s) = self.stores.get(&policy.name) {
            if s.fits(policy) {
                return Some(s.clone());
            }
        }
        let s = Arc::new(Store::new(policy.clone(), self.redis.as_ref())?);
        self.stores.insert(policy.name.clone(), s.clone());
        Some(s)
    }

    /// Drops the stores of policies the new snapshot no longer has (`policies` is its
    /// `caches` section).
    pub fn prune(&self, policies: &[Arc<raw::Cache>]) {
        self.stores.retain(|name, _| policies.iter().any(|c| &c.name == name));
    }
}

/// A request that missed and may fill the entry once its answer is complete.
pub struct Fill {
    store: Arc<Store>,
    key: [u8; 32],
    dialect: Dialect,
    /// Set for a streamed answer.
    assembler: Option<Assembler>,
    /// Bytes of a streamed answer so far.
    streamed: u64,
}

impl Fill {
    /// The largest answer this fill may store.
    pub fn max_entry_bytes(&self) -> u64 {
        self.store.policy.max_entry_bytes
    }

    pub fn start_stream(&mut self) {
        self.assembler = Some(Assembler::new(self.dialect));
    }

    /// What a streamed answer sent to the caller. A stream longer than the policy's
    /// `max_entry_bytes` will not be stored: it stops being assembled (memory is bounded
    /// by bytes, not by how long a provider streams).
    pub fn feed(&mut self, sent: &[u8]) {
        self.streamed += sent.len() as u64;
        if self.streamed > self.max_entry_bytes() {
            self.assembler = None;
        }
        if let Some(a) = self.assembler.as_mut() {
            a.feed(sent);
        }
    }

    /// The answer ended: a complete one is stored in a task. `json` is the body the caller
    /// got for a JSON answer; `model` the concrete model that answered.
    pub fn finish(self, json: Option<Bytes>, usage: Option<Usage>, model: String, metrics: Arc<Metrics>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.streamed > self.max_entry_bytes() {
            return;
        }
        rt.spawn(async move {
            let body = match (self.assembler, json) {
                (Some(a), _) => a.finish(usage).map(|v| Bytes::from(v.to_string())),
                (None, Some(b)) => serde_json::from_slice::<Value>(&b)
                    .ok()
                    .filter(|v| assemble::json_is_complete(v, self.dialect))
                    .map(|_| b),
                (None, None) => None,
            };
            let Some(body) = body else { return };
            if let Err(e) = self.store.put(self.key, Entry { model, body }).await {
                metrics.cache_errors.inc();
                tracing::debug!(error = %e, policy = %self.store.policy.name, "could not store a response");
            }
        });
    }
}

/// What the lookup decided.
pub enum Lookup {
    Hit(Arc<Entry>),
    /// Not found (or not looked up: `Bypass`); `Some` when the answer may be stored.
    Go(Outcome, Option<Box<Fill>>),
}

/// Whether `Cache-Control` of the request carries `directive`.
fn has_directive(headers: &HeaderMap, directive: &str) -> bool {
    headers
        .get_all(http::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|d| d.trim().eq_ignore_ascii_case(directive))
}

/// Looks the request up, when its model has a cache policy (`None`: no caching here, no
/// header). `Cache-Control: no-cache` skips the lookup, `no-store` the lookup and the
/// store; a key with `cache: false` and embeddings bypass. A store that fails is a miss.
#[allow(clippy::too_many_arguments)]
pub async fn lookup(
    caches: &Caches,
    metrics: &Metrics,
    model: &Model,
    caller: &ApiKeyEntry,
    endpoint: Endpoint,
    dialect: Dialect,
    headers: &HeaderMap,
    body: &[u8],
) -> Option<Lookup> {
    let policy = model.cache.as_ref()?;
    let bypass = Some(Lookup::Go(Outcome::Bypass, None));
    // Chat completions, messages and Gemini's generateContent only: responses,
    // embeddings and token counts are not stored.
    let cacheable = matches!(
        endpoint,
        Endpoint::ChatCompletions | Endpoint::Messages | Endpoint::GenerateContent
    );
    if !caller.cache || !cacheable || has_directive(headers, "no-store") {
        return bypass;
    }
    let Some(store) = caches.store(policy) else {
        tracing::warn!(policy = %policy.name, "cache backend redis needs server.redis at start; bypassing");
        return bypass;
    };
    let request: Value = serde_json::from_slice(body).ok()?;
    let scope = match policy.scope {
        CacheScope::Owner => format!("owner={}", caller.owner),
        CacheScope::Global => "global".to_owned(),
    };
    let key = key::key(&scope, &model.name, endpoint, &request);
    let fill = Box::new(Fill {
        store: store.clone(),
        key,
        dialect,
        assembler: None,
        streamed: 0,
    });
    if has_directive(headers, "no-cache") {
        return Some(Lookup::Go(Outcome::Bypass, Some(fill)));
    }
    match store.get(&key).await {
        Ok(Some(entry)) => Some(Lookup::Hit(entry)),
        Ok(None) => Some(Lookup::Go(Outcome::Miss, Some(fill))),
        Err(e) => {
            metrics.cache_errors.inc();
            tracing::debug!(error = %e, policy = %policy.name, "cache lookup failed; treated as a miss");
            Some(Lookup::Go(Outcome::Miss, Some(fill)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_directives() {
        let mut h = HeaderMap::new();
        h.append("cache-control", "max-age=0, No-Cache".parse().unwrap());
        assert!(has_directive(&h, "no-cache"));
        assert!(!has_directive(&h, "no-store"));
        h.append("cache-control", "no-store".parse().unwrap());
        assert!(has_directive(&h, "no-store"));
    }
}
