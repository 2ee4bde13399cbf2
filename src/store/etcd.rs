//! etcd v3 as the config store: one key per resource, `{prefix}/{kind}/{name}`, holding
//! the resource as JSON. Instances read the prefix, then watch it from the revision they
//! read; the admin API and `aigw import` write to it.

use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Txn, TxnOp, WatchOptions};
use serde_json::Value;

use super::Resources;
use crate::config::compile::{EtcdSettings, EtcdTlsFiles};
use crate::config::ConfigError;
use crate::config::Kind;

/// etcd's default `--max-txn-ops`: an import larger than this cannot be one transaction.
const MAX_TXN_OPS: usize = 128;

#[derive(Clone)]
pub struct Etcd {
    client: Client,
    prefix: String,
}

/// Every write also touches this key under the prefix, and commits only if nobody else
/// touched it since the writer read the store: a write is checked against the state it
/// was validated on (optimistic locking), so two admins cannot combine two valid changes
/// into an invalid state.
const LOCK: &str = "_lock";

/// What was read from etcd: the resources, the revision they were read at, values that
/// are not JSON objects (an invalid state: the caller keeps its last good one), and the
/// write lock's revision to write against.
pub struct Loaded {
    pub resources: Resources,
    pub revision: i64,
    pub errors: Vec<ConfigError>,
    pub lock: i64,
}

/// One change the watch reported.
pub enum Change {
    Put {
        kind: Kind,
        name: String,
        value: Result<Value, String>,
    },
    Delete {
        kind: Kind,
        name: String,
    },
}

impl Etcd {
    pub async fn connect(s: &EtcdSettings) -> Result<Self, String> {
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5));
        if let (Some(user), Some(password)) = (&s.user, &s.password) {
            opts = opts.with_user(user.clone(), password.clone());
        }
        if let Some(tls) = &s.tls {
            opts = opts.with_tls(tls_options(tls)?);
        }
        let client = Client::connect(&s.endpoints, Some(opts)).await.map_err(|e| {
            let at: Vec<String> = s.endpoints.iter().map(|u| crate::outbound::shown(u)).collect();
            format!("cannot connect to etcd at {}: {e}", at.join(", "))
        })?;
        Ok(Self {
            client,
            prefix: s.prefix.trim_end_matches('/').to_owned(),
        })
    }

    fn key(&self, kind: Kind, name: &str) -> String {
        format!("{}/{kind}/{name}", self.prefix)
    }

    /// `(kind, name)` of a key under the prefix; `None` for anything else stored there.
    fn parse_key<'k>(&self, key: &'k str) -> Option<(Kind, &'k str)> {
        let rest = key.strip_prefix(self.prefix.as_str())?.strip_prefix('/')?;
        let (kind, name) = rest.split_once('/')?;
        Kind::parse(kind).filter(|_| !name.is_empty()).map(|k| (k, name))
    }

    /// Every resource under the prefix, and the revision of that read.
    pub async fn load(&mut self) -> Result<Loaded, String> {
        let resp = self
            .client
            .get(format!("{}/", self.prefix), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| format!("cannot read etcd: {e}"))?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let mut loaded = Loaded {
            resources: Resources::default(),
            revision,
            errors: Vec::new(),
            lock: 0,
        };
        let lock = self.lock_key();
        for kv in resp.kvs() {
            if kv.key() == lock.as_bytes() {
                loaded.lock = kv.mod_revision();
                continue;
            }
            let Some((kind, name)) = kv.key_str().ok().and_then(|k| self.parse_key(k)) else {
                continue;
            };
            match parse_value(kv.value()) {
                Ok(v) => loaded.resources.insert(kind, name, v),
                Err(e) => loaded.errors.push(ConfigError::new(format!("{kind}/{name}"), e)),
            }
        }
        Ok(loaded)
    }

    fn lock_key(&self) -> String {
        format!("{}/{LOCK}", self.prefix)
    }

    /// Runs `ops` if the lock is still at `lock` (the revision read with the state they
    /// were checked against), taking the lock. `Ok(false)`: someone wrote in between,
    /// nothing was written.
    async fn locked(&mut self, lock: i64, mut ops: Vec<TxnOp>) -> Result<bool, String> {
        ops.push(TxnOp::put(self.lock_key(), "", None));
        if ops.len() > MAX_TXN_OPS {
            return Err(format!(
                "{} changes do not fit etcd's default limit of {MAX_TXN_OPS} operations per transaction (--max-txn-ops)",
                ops.len() - 1
            ));
        }
        let txn = Txn::new()
            .when([Compare::mod_revision(self.lock_key(), CompareOp::Equal, lock)])
            .and_then(ops);
        self.client
            .txn(txn)
            .await
            .map(|r| r.succeeded())
            .map_err(|e| format!("cannot write to etcd: {e}"))
    }

    /// Writes one resource, if the store is still as read at `lock`.
    pub async fn put(&mut self, kind: Kind, name: &str, value: &Value, lock: i64) -> Result<bool, String> {
        let op = TxnOp::put(self.key(kind, name), value.to_string(), None);
        self.locked(lock, vec![op]).await
    }

    /// Deletes one resource, if the store is still as read at `lock`.
    pub async fn delete(&mut self, kind: Kind, name: &str, lock: i64) -> Result<bool, String> {
        let op = TxnOp::delete(self.key(kind, name), None);
        self.locked(lock, vec![op]).await
    }

    /// Replaces every resource (`stored`, as read at `lock`) with `resources`, in one
    /// transaction: watchers see the old set or the new one, never a mix.
    pub async fn replace_all(&mut self, stored: &Resources, resources: &Resources, lock: i64) -> Result<bool, String> {
        // etcd refuses a put and a delete of one key in one transaction: only what goes
        // away is deleted.
        let mut ops: Vec<TxnOp> = stored
            .iter()
            .filter(|(kind, name, _)| resources.get(*kind, name).is_none())
            .map(|(kind, name, _)| TxnOp::delete(self.key(kind, name), None))
            .collect();
        ops.extend(
            resources
                .iter()
                .map(|(kind, name, v)| TxnOp::put(self.key(kind, name), v.to_string(), None)),
        );
        self.locked(lock, ops).await
    }

    /// Watches the prefix from `revision` (the one after the last read).
    pub async fn watch(&mut self, revision: i64) -> Result<Watch, String> {
        let opts = WatchOptions::new().with_prefix().with_start_revision(revision);
        let stream = self
            .client
            .watch(format!("{}/", self.prefix), Some(opts))
            .await
            .map_err(|e| format!("cannot watch etcd: {e}"))?;
        Ok(Watch {
            stream,
            etcd: self.clone(),
        })
    }
}

pub struct Watch {
    stream: etcd_client::WatchStream,
    etcd: Etcd,
}

impl Watch {
    /// The next batch of changes and the revision it brings the store to. An error when
    /// the watch fails or is cancelled (by compaction, say): the caller reads afresh.
    pub async fn next(&mut self) -> Result<(Vec<Change>, i64), String> {
        loop {
            let resp = self
                .stream
                .message()
                .await
                .map_err(|e| format!("etcd watch failed: {e}"))?
                .ok_or("etcd closed the watch")?;
            if resp.canceled() {
                return Err(format!("etcd cancelled the watch: {}", resp.cancel_reason()));
            }
            let mut changes = Vec::new();
            let mut last = 0;
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                last = last.max(kv.mod_revision());
                let Some((kind, name)) = kv.key_str().ok().and_then(|k| self.etcd.parse_key(k)) else {
                    continue;
                };
                let name = name.to_owned();
                changes.push(match ev.event_type() {
                    EventType::Put => Change::Put {
                        kind,
                        name,
                        value: parse_value(kv.value()),
                    },
                    EventType::Delete => Change::Delete { kind, name },
                });
            }
            if !changes.is_empty() {
                return Ok((changes, last));
            }
        }
    }
}

/// The client TLS settings, read from their files now.
fn tls_options(t: &EtcdTlsFiles) -> Result<etcd_client::TlsOptions, String> {
    let read = |f: &str| std::fs::read(f).map_err(|e| format!("server.config_store.etcd.tls: cannot read {f}: {e}"));
    let mut tls = etcd_client::TlsOptions::new().ca_certificate(etcd_client::Certificate::from_pem(read(&t.ca_file)?));
    if let (Some(cert), Some(key)) = (&t.cert_file, &t.key_file) {
        tls = tls.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(tls)
}

fn parse_value(bytes: &[u8]) -> Result<Value, String> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err("the stored value is not a JSON object".into()),
        Err(e) => Err(format!("the stored value is not JSON: {e}")),
    }
}
