//! Keeping an instance in step with the store: the first read at start (or the cache
//! file), the cache file, and the watch loop.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use pingora::server::ShutdownWatch;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{block_on, etcd, Resources};
use crate::config::compile::EtcdSettings;
use crate::config::{ConfigError, Kind};
use crate::state::AppState;

/// At start: the store's resources, their revision and what `compile` made of them; when
/// etcd cannot be read or what it holds does not compile, the cache file's (the last good
/// load), if any.
pub fn initial<T>(
    es: &EtcdSettings,
    compile: impl Fn(&Resources) -> Result<T, Vec<ConfigError>>,
) -> Result<(Resources, i64, T), Vec<ConfigError>> {
    let fetched = block_on(async { etcd::Etcd::connect(es).await?.load().await }).and_then(|loaded| {
        if !loaded.errors.is_empty() {
            return Err(loaded.errors);
        }
        let compiled = compile(&loaded.resources)?;
        Ok((loaded.resources, loaded.revision, compiled))
    });
    match fetched {
        Ok((resources, revision, compiled)) => {
            if let Some(path) = &es.cache_file {
                write_cache(path, &resources, revision);
            }
            Ok((resources, revision, compiled))
        }
        Err(errors) => {
            let cached = es.cache_file.as_deref().and_then(read_cache);
            let Some((resources, revision)) = cached else {
                return Err(errors);
            };
            let Ok(compiled) = compile(&resources) else {
                return Err(errors);
            };
            for e in &errors {
                tracing::warn!(error = %e, "config store");
            }
            tracing::warn!(revision, "serving the config store's cache file until etcd can be read");
            Ok((resources, revision, compiled))
        }
    }
}

#[derive(Serialize, Deserialize)]
struct CacheFile {
    revision: i64,
    resources: BTreeMap<String, BTreeMap<String, Value>>,
}

/// Writes the cache file (it may hold provider keys: owner-only), atomically.
pub fn write_cache(path: &Path, resources: &Resources, revision: i64) {
    let body = CacheFile {
        revision,
        resources: resources
            .0
            .iter()
            .map(|(k, m)| (k.name().to_owned(), m.clone()))
            .collect(),
    };
    let tmp = path.with_extension("tmp");
    let written = serde_json::to_vec(&body)
        .map_err(std::io::Error::other)
        .and_then(|bytes| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        tracing::warn!(path = %path.display(), error = %e, "cannot write the config store cache file");
    }
}

fn read_cache(path: &Path) -> Option<(Resources, i64)> {
    let bytes = std::fs::read(path).ok()?;
    let c: CacheFile = serde_json::from_slice(&bytes).ok()?;
    // Kinds this build does not know (a newer build wrote the file) are left out.
    let resources = c
        .resources
        .into_iter()
        .filter_map(|(k, m)| Some((Kind::parse(&k)?, m)))
        .collect();
    Some((Resources(resources), c.revision))
}

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
