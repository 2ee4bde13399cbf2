//! Process-wide state: the current config snapshot (swapped atomically on reload) and the
//! registries that outlive a reload (upstreams and their resolved addresses, cooldowns,
//! rate limit state, metrics, in-flight requests); [`follow`] keeps it in step with the
//! config store.

mod follow;

pub use follow::follow;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::budget::Budgets;
use crate::cache::Caches;
use crate::config::{self, CompileCtx, ConfigError, Snapshot};
use crate::limit::local::LocalStore;
use crate::limit::redis::RedisStore;
use crate::limit::{Cells, LimitStore, Limiter};
use crate::metrics::Metrics;
use crate::redis_pool::RedisPool;
use crate::route::Cooldowns;
use crate::store::{self, Resources};
use crate::telemetry::trace::Traces;
use crate::upstream::UpstreamRegistry;

pub struct AppState {
    snapshot: ArcSwap<Snapshot>,
    pub config_path: PathBuf,
    /// The file as last read, not interpolated: with a config store its resource
    /// sections are replaced by the store's.
    base: Mutex<serde_yaml::Value>,
    /// With a config store: the resources of the served snapshot and their revision.
    pub store: Option<Mutex<(Resources, i64)>>,
    pub upstreams: UpstreamRegistry,
    pub cooldowns: Cooldowns,
    /// What each routed target's latency, requests in flight and quota look like here.
    pub load: crate::route::Load,
    pub limit_cells: Cells,
    pub limiter: Limiter,
    /// Response cache stores by policy name.
    pub caches: Caches,
    /// Spend per owner and budget period.
    pub budgets: Budgets,
    /// File and batch ids, and the HTTP client that calls providers for them.
    pub files: crate::files::Files,
    /// Callers' MCP sessions, and through them their sessions with each MCP server.
    pub mcp_sessions: crate::mcp::Sessions,
    /// The OTLP span export, when `observability.otlp` was set at start.
    pub traces: Option<Traces>,
    pub metrics: Arc<Metrics>,
    inflight: AtomicUsize,
    pub draining: AtomicBool,
    /// SIGQUIT handed the listeners to a new process: every answer from here closes its
    /// connection, so clients move to the new process without an idle connection being
    /// closed under them.
    pub handing_over: AtomicBool,
    /// Every proxy listener accepted a probe connection once (`/readyz`).
    pub listeners_up: AtomicBool,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Compiles the file's tree, with the store's resources in place of its own when given.
fn compile(
    base: &serde_yaml::Value,
    resources: Option<&Resources>,
    upstreams: &UpstreamRegistry,
    limits: &Cells,
    metrics: &Arc<Metrics>,
) -> Result<Snapshot, Vec<ConfigError>> {
    let ctx = CompileCtx {
        env: &env,
        upstreams,
        limits,
        metrics: Some(metrics),
    };
    match resources {
        None => config::load_tree(base.clone(), &ctx),
        Some(r) => config::load_tree(r.merge_into(base), &ctx).map_err(|e| r.name_error_paths(e)),
    }
}

impl AppState {
    /// Loads the config file, and with a config store the resources in it (or, when etcd
    /// cannot be read, in its cache file); on failure returns every error.
    pub fn load(config_path: PathBuf) -> Result<Arc<Self>, Vec<ConfigError>> {
        let upstreams = UpstreamRegistry::default();
        let limit_cells = Cells::default();
        let metrics = Arc::new(Metrics::new());
        let base = config::read_tree(&config_path)?;
        let mut snap = compile(&base, None, &upstreams, &limit_cells, &metrics)?;
        let mut store = None;
        // The etcd revision served; without a store, the count of file loads.
        let mut version = 1;
        if let Some(es) = snap.server.config_store.clone() {
            if Resources::from_config(&base).is_ok_and(|r| !r.is_empty()) {
                tracing::warn!(
                    "the config file's resources are ignored: they come from etcd (aigw import copies them there)"
                );
            }
            let (resources, revision, compiled) =
                store::initial(&es, |r| compile(&base, Some(r), &upstreams, &limit_cells, &metrics))?;
            snap = compiled;
            store = Some(Mutex::new((resources, revision)));
            version = revision;
        }
        // Shared limits when the config names a Redis; per process otherwise. Changing
        // `server.redis` takes a restart, like the listeners.
        let redis = match &snap.server.redis {
            Some(r) => Some(Arc::new(
                RedisPool::new(&r.url, r.pool_size, r.timeout)
                    .map_err(|e| vec![ConfigError::new("server.redis.url", e)])?,
            )),
            None => None,
        };
        let limit_store: Arc<dyn LimitStore> = match &redis {
            Some(pool) => Arc::new(RedisStore::new(pool.clone())),
            None => Arc::new(LocalStore::new()),
        };
        let traces = match &snap.observability.otlp {
            Some(o) => Some(
                Traces::start(&o.endpoint, metrics.clone())
                    .map_err(|e| vec![ConfigError::new("observability.otlp.endpoint", e)])?,
            ),
            None => None,
        };
        metrics.config_version.set(version);
        metrics.config_last_reload.set(chrono::Utc::now().timestamp());
        metrics.set_certificates(certificates(&snap));
        Ok(Arc::new(Self {
            snapshot: ArcSwap::from_pointee(snap),
            config_path,
            base: Mutex::new(base),
            store,
            upstreams,
            cooldowns: Cooldowns::default(),
            load: Default::default(),
            limit_cells,
            limiter: Limiter::new(limit_store, metrics.clone()),
            caches: Caches::new(redis.clone()),
            files: crate::files::Files::new(redis.clone()).map_err(|e| vec![ConfigError::new("server", e)])?,
            budgets: Budgets::new(redis, metrics.clone()),
            mcp_sessions: crate::mcp::Sessions::default(),
            traces,
            metrics,
            inflight: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            handing_over: AtomicBool::new(false),
            listeners_up: AtomicBool::new(false),
        }))
    }

    /// The snapshot a new request works with from start to end.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// The file's tree as last read.
    pub fn base(&self) -> serde_yaml::Value {
        self.base.lock().map(|b| b.clone()).unwrap_or_default()
    }

    /// The resources served now: the store's, else the file's.
    pub fn resources(&self) -> Resources {
        match &self.store {
            Some(s) => s.lock().map(|s| s.0.clone()).unwrap_or_default(),
            None => Resources::from_config(&self.base()).unwrap_or_default(),
        }
    }

    /// Whether `resources` would compile with the current file, without touching any
    /// registry (the admin API's check before it writes).
    pub fn validate(&self, resources: &Resources) -> Result<(), Vec<ConfigError>> {
        compile(
            &self.base(),
            Some(resources),
            &UpstreamRegistry::default(),
            &Cells::default(),
            // Counts nothing: this compile is thrown away.
            &Arc::new(Metrics::new()),
        )
        .map(|_| ())
    }

    /// Re-reads the config file (SIGHUP). All or nothing: on any error the current
    /// snapshot stays. With a config store, the file's server and observability sections
    /// are combined with the resources served now.
    pub async fn reload(&self) -> Result<(), Vec<ConfigError>> {
        let result = async {
            let base = config::read_tree(&self.config_path)?;
            let resources = self.store.as_ref().map(|_| self.resources());
            let snap = compile(
                &base,
                resources.as_ref(),
                &self.upstreams,
                &self.limit_cells,
                &self.metrics,
            )?;
            if let Ok(mut b) = self.base.lock() {
                *b = base;
            }
            Ok(snap)
        }
        .await;
        let result = match result {
            Ok(snap) => {
                if snap.server.config_store != self.snapshot().server.config_store {
                    tracing::warn!("server.config_store changes take effect only after a restart");
                }
                self.swap(snap).await;
                if self.store.is_none() {
                    self.metrics.config_version.inc();
                }
                Ok(())
            }
            Err(errors) => Err(errors),
        };
        self.count_reload(result.is_ok());
        result
    }

    /// The config store changed: its resources, at `revision`, replace the served ones
    /// when they compile; otherwise the last good snapshot stays.
    pub async fn apply_store(&self, resources: Resources, revision: i64) -> Result<(), Vec<ConfigError>> {
        let Some(store) = &self.store else { return Ok(()) };
        match compile(
            &self.base(),
            Some(&resources),
            &self.upstreams,
            &self.limit_cells,
            &self.metrics,
        ) {
            Ok(snap) => {
                self.swap(snap).await;
                let cache = self
                    .snapshot()
                    .server
                    .config_store
                    .as_ref()
                    .and_then(|s| s.cache_file.clone());
                if let Some(path) = cache {
                    store::write_cache(&path, &resources, revision);
                }
                if let Ok(mut s) = store.lock() {
                    *s = (resources, revision);
                }
                self.metrics.config_version.set(revision);
                self.count_reload(true);
                Ok(())
            }
            Err(errors) => {
                self.count_reload(false);
                Err(errors)
            }
        }
    }

    /// Counts a reload (SIGHUP or a config store change) by its result.
    pub(crate) fn count_reload(&self, ok: bool) {
        if !ok {
            self.limit_cells.prune();
        }
        let result = if ok { "ok" } else { "error" };
        self.metrics.config_reloads.with_label_values(&[result]).inc();
    }

    /// Swaps in a compiled snapshot; registries carry over.
    async fn swap(&self, snap: Snapshot) {
        let old = self.snapshot();
        if snap.server.listen != old.server.listen
            || snap.server.admin_listen != old.server.admin_listen
            || snap.server.tls.len() != old.server.tls.len()
            || snap
                .server
                .tls
                .iter()
                .zip(&old.server.tls)
                .any(|(a, b)| a.listen != b.listen)
        {
            // Certificates are re-read on every reload; addresses need a restart.
            tracing::warn!("listener changes take effect only after a restart");
        }
        if snap.server.threads != old.server.threads || snap.server.work_stealing != old.server.work_stealing {
            tracing::warn!("server.threads and server.work_stealing changes take effect only after a restart");
        }
        if snap.server.redis != old.server.redis {
            tracing::warn!("server.redis changes take effect only after a restart");
        }
        let endpoint = snap.observability.otlp.as_ref().map(|o| o.endpoint.as_str());
        if endpoint.is_some() && endpoint != self.traces.as_ref().map(|t| t.endpoint.as_str()) {
            tracing::warn!("observability.otlp.endpoint changes take effect only after a restart");
        }
        // Resolve new upstreams before any request can pick them.
        self.upstreams.resolve_new().await;
        self.caches.prune(&snap.caches);
        self.metrics.set_certificates(certificates(&snap));
        self.snapshot.store(Arc::new(snap));
        drop(old);
        self.limit_cells.prune();
        self.metrics.config_last_reload.set(chrono::Utc::now().timestamp());
    }

    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Acquire)
    }

    /// Counts a request as in flight until the guard drops (on every exit path, because
    /// the guard lives in the request context that Pingora drops at the end).
    pub fn enter(self: &Arc<Self>) -> InflightGuard {
        self.inflight.fetch_add(1, Ordering::AcqRel);
        self.metrics.inflight.inc();
        InflightGuard(self.clone())
    }
}

pub struct InflightGuard(Arc<AppState>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.inflight.dec();
    }
}
/// `(listen, name, not after)` of every served certificate, for the expiry metric.
fn certificates(snap: &Snapshot) -> impl Iterator<Item = (&str, &str, i64)> {
    snap.server.tls.iter().flat_map(|l| {
        l.certificates
            .0
            .iter()
            .map(|c| (l.listen.as_str(), c.label(), c.not_after))
    })
}
