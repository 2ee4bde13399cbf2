//! The first read at start (or the cache file when etcd is down), and the cache file.
//! The watch loop that follows the store lives with the state it drives (`state::follow`).

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{block_on, etcd, Resources};
use crate::config::compile::EtcdSettings;
use crate::config::{ConfigError, Kind};

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
