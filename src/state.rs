//! Process-wide state: the current config snapshot (swapped atomically on reload) and the
//! registries that outlive a reload (upstreams and their resolved addresses, cooldowns,
//! rate limit state, metrics, in-flight requests).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::budget::Budgets;
use crate::cache::Caches;
use crate::config::{self, CompileCtx, ConfigError, Snapshot};
use crate::limit::local::LocalStore;
use crate::limit::redis::RedisStore;
use crate::limit::{Cells, LimitStore, Limiter};
use crate::redis_pool::RedisPool;
use crate::route::{Cooldowns, UpstreamRegistry};
use crate::telemetry::metrics::Metrics;
use crate::telemetry::trace::Traces;

pub struct AppState {
    snapshot: ArcSwap<Snapshot>,
    pub config_path: PathBuf,
    pub upstreams: UpstreamRegistry,
    pub cooldowns: Cooldowns,
    pub limit_cells: Cells,
    pub limiter: Limiter,
    /// Response cache stores by policy name.
    pub caches: Caches,
    /// Spend per owner and budget period.
    pub budgets: Budgets,
    /// The OTLP span export, when `observability.otlp` was set at start.
    pub traces: Option<Traces>,
    pub metrics: Arc<Metrics>,
    inflight: AtomicUsize,
    pub draining: AtomicBool,
    /// Every proxy listener accepted a probe connection once (`/readyz`).
    pub listeners_up: AtomicBool,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

impl AppState {
    /// Loads the config file; on failure returns every error.
    pub fn load(config_path: PathBuf) -> Result<Arc<Self>, Vec<ConfigError>> {
        let upstreams = UpstreamRegistry::default();
        let limit_cells = Cells::default();
        let snap = config::load_file(
            &config_path,
            &CompileCtx {
                env: &env,
                upstreams: &upstreams,
                limits: &limit_cells,
            },
        )?;
        // Shared limits when the config names a Redis; per process otherwise. Changing
        // `server.redis` takes a restart, like the listeners.
        let redis = match &snap.server.redis {
            Some(r) => Some(Arc::new(
                RedisPool::new(&r.url, r.pool_size, r.timeout)
                    .map_err(|e| vec![ConfigError::new("server.redis.url", e)])?,
            )),
            None => None,
        };
        let store: Arc<dyn LimitStore> = match &redis {
            Some(pool) => Arc::new(RedisStore::new(pool.clone())),
            None => Arc::new(LocalStore::new()),
        };
        let metrics = Arc::new(Metrics::new());
        let traces = match &snap.observability.otlp {
            Some(o) => Some(
                Traces::start(&o.endpoint, metrics.clone())
                    .map_err(|e| vec![ConfigError::new("observability.otlp.endpoint", e)])?,
            ),
            None => None,
        };
        Ok(Arc::new(Self {
            snapshot: ArcSwap::from_pointee(snap),
            config_path,
            upstreams,
            cooldowns: Cooldowns::default(),
            limit_cells,
            limiter: Limiter::new(store, metrics.clone()),
            caches: Caches::new(redis.clone()),
            budgets: Budgets::new(redis, metrics.clone()),
            traces,
            metrics,
            inflight: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            listeners_up: AtomicBool::new(false),
        }))
    }

    /// The snapshot a new request works with from start to end.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Re-reads the config file. All or nothing: on any error the current snapshot stays.
    pub async fn reload(&self) -> Result<(), Vec<ConfigError>> {
        let loaded = config::load_file(
            &self.config_path,
            &CompileCtx {
                env: &env,
                upstreams: &self.upstreams,
                limits: &self.limit_cells,
            },
        );
        match loaded {
            Ok(snap) => {
                let old = self.snapshot();
                if snap.server.listen != old.server.listen
                    || snap.server.admin_listen != old.server.admin_listen
                    || snap.server.tls.len() != old.server.tls.len()
                {
                    tracing::warn!("listener changes take effect only after a restart");
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
                self.caches.prune(&snap);
                self.snapshot.store(Arc::new(snap));
                drop(old);
                self.limit_cells.prune();
                self.metrics.config_reloads.with_label_values(&["ok"]).inc();
                Ok(())
            }
            Err(errors) => {
                self.limit_cells.prune();
                self.metrics.config_reloads.with_label_values(&["error"]).inc();
                Err(errors)
            }
        }
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
