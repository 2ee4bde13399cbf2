//! Where aigw's file and batch ids are kept: each maps to its owner, the provider key and
//! the provider's own id. In this process's memory for one instance; in Redis when
//! `server.redis` is set, so every instance of a fleet serves every id.

use std::sync::Arc;

use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::GwError;
use crate::redis_pool::{RedisPool, Unavailable};

/// What an id is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    File,
    Batch,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Batch => "batch",
        }
    }
}

/// One file or batch id handed to a caller.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub kind: Kind,
    /// The owner it belongs to (auth's, namespaced for JWT callers).
    pub owner: String,
    /// The provider key it lives at.
    pub provider: String,
    /// The provider's id.
    pub upstream: String,
    /// Milliseconds since the epoch: the list order.
    pub created_ms: i64,
    /// Files: the object as the caller sees it (listed without a provider call).
    #[serde(default)]
    pub object: Option<Value>,
    /// Batch input files and batches: each alias its lines name, with its upstream model.
    #[serde(default)]
    pub aliases: Vec<(String, String)>,
    /// Batches: the aigw id of the input file.
    #[serde(default)]
    pub input: Option<String>,
    /// Batches: the budget of the key that created it, charged when it completes.
    #[serde(default)]
    pub budget: Option<String>,
}

/// The claim on a completed batch's charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Claim {
    Pending,
    Done,
}

/// How long a claim to charge a batch is held before another instance may try again
/// (the charge reads the output file, which is bounded in time by the HTTP client).
const CLAIM_TTL_S: u64 = 600;

pub struct Ids {
    redis: Option<Arc<RedisPool>>,
    records: DashMap<String, Record>,
    claims: DashMap<String, Claim>,
}

fn unavailable(e: Unavailable) -> GwError {
    tracing::warn!(error = %e, "the file and batch id store is unavailable");
    GwError::StoreUnavailable
}

fn record_key(id: &str) -> String {
    format!("aigw:files:id:{id}")
}

/// An owner's index: the owner is hashed, so no owner name (JWT subjects may hold
/// anything) can reach into another key.
fn index_key(kind: Kind, owner: &str) -> String {
    format!(
        "aigw:files:owner:{}:{}",
        kind.as_str(),
        blake3::hash(owner.as_bytes()).to_hex()
    )
}

fn claim_key(id: &str) -> String {
    format!("aigw:files:charged:{id}")
}

/// The most ids one list reads from an owner's index.
pub const LIST_SCAN: usize = 10_000;

impl Ids {
    pub fn new(redis: Option<Arc<RedisPool>>) -> Self {
        Self {
            redis,
            records: DashMap::new(),
            claims: DashMap::new(),
        }
    }

    /// Keeps `rec` under `id`; with `only_new`, keeps an existing record instead and
    /// says whether this one was stored.
    pub async fn put(&self, id: &str, rec: &Record, only_new: bool) -> Result<bool, GwError> {
        let Some(pool) = &self.redis else {
            if only_new {
                let mut stored = false;
                self.records.entry(id.to_owned()).or_insert_with(|| {
                    stored = true;
                    rec.clone()
                });
                return Ok(stored);
            }
            self.records.insert(id.to_owned(), rec.clone());
            return Ok(true);
        };
        let json = serde_json::to_string(rec).map_err(|_| GwError::Internal)?;
        let (k, idx, id_owned, score) = (
            record_key(id),
            index_key(rec.kind, &rec.owner),
            id.to_owned(),
            rec.created_ms,
        );
        let stored: Option<String> = pool
            .call(|mut c| async move {
                let mut set = redis::cmd("SET");
                set.arg(&k).arg(&json);
                if only_new {
                    set.arg("NX");
                }
                let r: Option<String> = set.query_async(&mut c).await?;
                if r.is_some() {
                    redis::cmd("ZADD")
                        .arg(&idx)
                        .arg(score)
                        .arg(&id_owned)
                        .query_async::<()>(&mut c)
                        .await?;
                }
                Ok(r)
            })
            .await
            .map_err(unavailable)?;
        Ok(stored.is_some())
    }

    pub async fn get(&self, id: &str) -> Result<Option<Record>, GwError> {
        let Some(pool) = &self.redis else {
            return Ok(self.records.get(id).map(|r| r.clone()));
        };
        let k = record_key(id);
        let v: Option<String> = pool
            .call(|mut c| async move { redis::cmd("GET").arg(&k).query_async(&mut c).await })
            .await
            .map_err(unavailable)?;
        Ok(v.and_then(|s| serde_json::from_str(&s).ok()))
    }

    /// The record of `id` when it is of `kind` and belongs to `owner`; anything else is
    /// as absent as an id never handed out.
    pub async fn owned(&self, id: &str, kind: Kind, owner: &str) -> Result<Record, GwError> {
        match self.get(id).await? {
            Some(r) if r.kind == kind && r.owner == owner => Ok(r),
            _ => Err(GwError::NoSuchObject(id.chars().take(128).collect())),
        }
    }

    pub async fn remove(&self, id: &str, rec: &Record) -> Result<(), GwError> {
        let Some(pool) = &self.redis else {
            self.records.remove(id);
            return Ok(());
        };
        let (k, idx, m) = (record_key(id), index_key(rec.kind, &rec.owner), id.to_owned());
        pool.call(|mut c| async move {
            redis::pipe()
                .cmd("DEL")
                .arg(&k)
                .ignore()
                .cmd("ZREM")
                .arg(&idx)
                .arg(&m)
                .ignore()
                .query_async::<()>(&mut c)
                .await
        })
        .await
        .map_err(unavailable)
    }

    /// The owner's ids of `kind`, newest first, with their records (at most
    /// [`LIST_SCAN`]).
    pub async fn list(&self, kind: Kind, owner: &str) -> Result<Vec<(String, Record)>, GwError> {
        let Some(pool) = &self.redis else {
            let mut all: Vec<(String, Record)> = self
                .records
                .iter()
                .filter(|e| e.kind == kind && e.owner == owner)
                .map(|e| (e.key().clone(), e.value().clone()))
                .collect();
            all.sort_by(|a, b| b.1.created_ms.cmp(&a.1.created_ms).then_with(|| b.0.cmp(&a.0)));
            all.truncate(LIST_SCAN);
            return Ok(all);
        };
        let idx = index_key(kind, owner);
        let ids: Vec<String> = pool
            .call(|mut c| async move {
                redis::cmd("ZREVRANGE")
                    .arg(&idx)
                    .arg(0)
                    .arg(LIST_SCAN - 1)
                    .query_async(&mut c)
                    .await
            })
            .await
            .map_err(unavailable)?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|i| record_key(i)).collect();
        let recs: Vec<Option<String>> = pool
            .call(|mut c| async move { redis::cmd("MGET").arg(&keys).query_async(&mut c).await })
            .await
            .map_err(unavailable)?;
        Ok(ids
            .into_iter()
            .zip(recs)
            .filter_map(|(id, r)| Some((id, serde_json::from_str::<Record>(&r?).ok()?)))
            // An index entry is only trusted with its record's owner.
            .filter(|(_, r)| r.kind == kind && r.owner == owner)
            .collect())
    }

    /// Claims the charge of batch `id`: true for the one caller (of the whole fleet, with
    /// Redis) that is to charge it; false when it is charged or being charged.
    pub async fn claim_charge(&self, id: &str) -> Result<bool, GwError> {
        let Some(pool) = &self.redis else {
            let mut won = false;
            self.claims.entry(id.to_owned()).or_insert_with(|| {
                won = true;
                Claim::Pending
            });
            return Ok(won);
        };
        let k = claim_key(id);
        let r: Option<String> = pool
            .call(|mut c| async move {
                redis::cmd("SET")
                    .arg(&k)
                    .arg("pending")
                    .arg("NX")
                    .arg("EX")
                    .arg(CLAIM_TTL_S)
                    .query_async(&mut c)
                    .await
            })
            .await
            .map_err(unavailable)?;
        Ok(r.is_some())
    }

    /// Marks batch `id` charged for good. Written before the charge is made: a charge
    /// whose mark could not be written is not made (the claim expires and a later
    /// retrieve tries again), so no failure charges a batch twice.
    pub async fn mark_charged(&self, id: &str) -> Result<(), GwError> {
        let Some(pool) = &self.redis else {
            self.claims.insert(id.to_owned(), Claim::Done);
            return Ok(());
        };
        let k = claim_key(id);
        pool.call(|mut c| async move { redis::cmd("SET").arg(&k).arg("done").query_async::<()>(&mut c).await })
            .await
            .map_err(unavailable)
    }

    /// Gives a claim back (the usage could not be read): the next retrieve tries again.
    pub async fn release_charge(&self, id: &str) {
        let Some(pool) = &self.redis else {
            self.claims.remove_if(id, |_, c| *c == Claim::Pending);
            return;
        };
        let k = claim_key(id);
        let r = pool
            .call(|mut c| async move {
                // Only a pending claim: a done mark stays.
                redis::cmd("EVAL")
                    .arg("if redis.call('GET', KEYS[1]) == 'pending' then return redis.call('DEL', KEYS[1]) end return 0")
                    .arg(1)
                    .arg(&k)
                    .query_async::<i64>(&mut c)
                    .await
            })
            .await;
        if let Err(e) = r {
            // The claim then expires after CLAIM_TTL_S.
            tracing::warn!(error = %e, batch = id, "could not release a batch charge claim");
        }
    }
}
