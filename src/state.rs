//! Process-wide state: the current config snapshot (swapped atomically on reload) and the
//! registries that outlive a reload (upstreams and their resolved addresses, in-flight
//! requests, reload counters).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::{self, CompileCtx, ConfigError, Snapshot};
use crate::route::{Cooldowns, UpstreamRegistry};

pub struct AppState {
    snapshot: ArcSwap<Snapshot>,
    pub config_path: PathBuf,
    pub upstreams: UpstreamRegistry,
    pub cooldowns: Cooldowns,
    inflight: AtomicUsize,
    pub draining: AtomicBool,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

impl AppState {
    /// Loads the config file; on failure returns every error.
    pub fn load(config_path: PathBuf) -> Result<Arc<Self>, Vec<ConfigError>> {
        let upstreams = UpstreamRegistry::default();
        let snap = config::load_file(
            &config_path,
            &CompileCtx {
                env: &env,
                upstreams: &upstreams,
            },
        )?;
        Ok(Arc::new(Self {
            snapshot: ArcSwap::from_pointee(snap),
            config_path,
            upstreams,
            cooldowns: Cooldowns::default(),
            inflight: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
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
                // Resolve new upstreams before any request can pick them.
                self.upstreams.resolve_new().await;
                self.snapshot.store(Arc::new(snap));
                self.reloads_ok.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(errors) => {
                self.reloads_failed.fetch_add(1, Ordering::Relaxed);
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
        InflightGuard(self.clone())
    }
}

pub struct InflightGuard(Arc<AppState>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}
