//! `aigw import` and `aigw export`: a config file's resources into the store, and back.

use std::path::Path;

use super::{block_on, etcd, prepare, Resources};
use crate::config::compile::EtcdSettings;
use crate::config::ConfigError;

/// The config store settings of a config file, which must be valid as a whole.
fn store_of(tree: &serde_yaml::Value, path: &Path) -> Result<EtcdSettings, Vec<ConfigError>> {
    let env = |n: &str| std::env::var(n).ok();
    let ctx = crate::config::CompileCtx {
        env: &env,
        upstreams: &Default::default(),
        limits: &Default::default(),
        metrics: None,
    };
    let snap = crate::config::load_tree(tree.clone(), &ctx)?;
    snap.server.config_store.clone().ok_or_else(|| {
        vec![ConfigError::new(
            "server.config_store",
            format!("{} names no config store (server.config_store.etcd)", path.display()),
        )]
    })
}

/// `aigw import`: the file's resources replace the store's, in one transaction, once the
/// file is valid as a whole. Caller keys are stored hashed; a redacted secret (from
/// `aigw export`) keeps the stored one. Returns a summary line.
pub fn import(path: &Path) -> Result<String, Vec<ConfigError>> {
    let tree = crate::config::read_tree(path)?;
    let es = store_of(&tree, path)?;
    let from_file = Resources::from_config(&tree)?;
    block_on(async {
        let mut etcd = etcd::Etcd::connect(&es).await?;
        let loaded = etcd.load().await?;
        let stored = loaded.resources;
        let mut out = Resources::default();
        for (kind, name, v) in from_file.iter() {
            let v = prepare(kind, name, v.clone(), stored.get(kind, name)).map_err(|e| e.to_string())?;
            out.insert(kind, name, v);
        }
        if !etcd.replace_all(&stored, &out, loaded.lock).await? {
            return Err(
                "the store changed during the import (an admin write?); nothing was imported, run it again".into(),
            );
        }
        Ok(format!(
            "imported {} resources into etcd ({}) under {}",
            out.len(),
            es.endpoints.join(", "),
            es.prefix
        ))
    })
}

/// `aigw export`: the stored resources as a YAML config, secrets redacted unless asked for.
pub fn export(path: &Path, with_secrets: bool) -> Result<String, Vec<ConfigError>> {
    let tree = crate::config::read_tree(path)?;
    let es = store_of(&tree, path)?;
    let loaded = block_on(async { etcd::Etcd::connect(&es).await?.load().await })?;
    if !loaded.errors.is_empty() {
        return Err(loaded.errors);
    }
    Ok(loaded.resources.to_yaml(with_secrets))
}
