//! The config store's watch loop: keeps the served snapshot in step with etcd. It lives
//! with the state it drives (the store below only reads, writes and watches etcd).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use pingora::server::ShutdownWatch;

use super::AppState;
use crate::config::compile::EtcdSettings;
use crate::config::{ConfigError, Kind};
use crate::store::{etcd, Resources};

/// Keeps the served resources in step with etcd: reads the prefix, applies it, watches
/// from the revision read. When the watch is lost (etcd down, compaction), it reconnects
/// with backoff and reads afresh, so no change is missed; meanwhile the last good
/// snapshot keeps serving.
pub async fn follow(state: Arc<AppState>, es: EtcdSettings, mut shutdown: ShutdownWatch) {
    let mut backoff = Duration::from_millis(250);
    // The process read etcd (or its cache file) at start: every connection after a lost
    // one is a re-connection.
    let mut reconnect = false;
    loop {
        tokio::select! {
            e = session(&state, &es, &mut backoff, reconnect) => {
                reconnect = true;
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "config store");
            }
            _ = shutdown.changed() => return,
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// One connection to etcd, until it fails.
async fn session(state: &AppState, es: &EtcdSettings, backoff: &mut Duration, reconnect: bool) -> String {
    let mut etcd = match etcd::Etcd::connect(es).await {
        Ok(c) => c,
        Err(e) => return e,
    };
    let loaded = match etcd.load().await {
        Ok(l) => l,
        Err(e) => return e,
    };
    if reconnect {
        state.metrics.config_store_reconnects.inc();
    }
    *backoff = Duration::from_millis(250);
    let mut mirror = loaded.resources;
    // Values that are not JSON objects, by kind and name: while any is left, the state
    // in etcd is invalid.
    let mut bad: BTreeMap<(Kind, String), String> = loaded
        .errors
        .into_iter()
        .filter_map(|e| {
            let (kind, name) = e.path.split_once('/')?;
            Some(((Kind::parse(kind)?, name.to_owned()), e.message))
        })
        .collect();
    let served = state.resources();
    if mirror != served || !bad.is_empty() {
        apply(state, &mirror, &bad, loaded.revision).await;
    }
    let mut watch = match etcd.watch(loaded.revision + 1).await {
        Ok(w) => w,
        Err(e) => return e,
    };
    loop {
        let (changes, revision) = match watch.next().await {
            Ok(c) => c,
            Err(e) => return e,
        };
        for change in changes {
            match change {
                etcd::Change::Put { kind, name, value } => {
                    bad.remove(&(kind, name.clone()));
                    match value {
                        Ok(v) => mirror.insert(kind, &name, v),
                        Err(e) => {
                            mirror.remove(kind, &name);
                            bad.insert((kind, name), e);
                        }
                    }
                }
                etcd::Change::Delete { kind, name } => {
                    bad.remove(&(kind, name.clone()));
                    mirror.remove(kind, &name);
                }
            }
        }
        apply(state, &mirror, &bad, revision).await;
    }
}

async fn apply(state: &AppState, mirror: &Resources, bad: &BTreeMap<(Kind, String), String>, revision: i64) {
    let errors = if bad.is_empty() {
        match state.apply_store(mirror.clone(), revision).await {
            Ok(()) => {
                tracing::info!(revision, resources = mirror.len(), "config store: new snapshot");
                return;
            }
            Err(errors) => errors,
        }
    } else {
        state.count_reload(false);
        bad.iter()
            .map(|((kind, name), e)| ConfigError::new(format!("{kind}/{name}"), e.clone()))
            .collect()
    };
    for e in &errors {
        tracing::error!(revision, error = %e, "config store: invalid state, the last good config keeps serving");
    }
}
