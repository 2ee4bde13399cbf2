//! Where aigw's file and batch ids are kept: each maps to its owner, the provider key and
//! the provider's own id. In this process's memory for one instance; in Redis when
//! `server.redis` is set, so every instance of a fleet serves every id.
//!
//! Ids are bounded (`server.files`): each is forgotten `retention_hours` after it was
//! handed out, an owner holds at most `max_ids_per_owner` of each kind, and memory at
//! most `max_ids` in all. Each owner's ids are indexed by age, so a list reads only the
//! owner's and expiry reads only what expired.
//!
//! Ids are bounded (`server.files`): each is forgotten `retention_hours` after it was
//! handed out, an owner holds at most `max_ids_per_owner` of each kind, and memory at
//! most `max_ids` in all. Each owner's ids are indexed by age, so a list reads only the
//! owner's and expiry reads only what expired.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::GwError;
use crate::raw::FileIds;
use crate::redis_pool::{RedisPool, Unavailable};

/// What an id is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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

/// The most ids one list reads from an owner's index: every id an owner may hold.
pub const LIST_SCAN: usize = FileIds::MAX_PER_OWNER;

/// Whether a new id counts against its owner's cap: a batch's output and error files do
/// not (they are the results of a batch already admitted, two at most per batch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cap {
    Owner,
    Exempt,
}

/// Milliseconds since the epoch: a record's `created_ms`, and what its age is read against.
pub(super) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Ids handed out before this are forgotten.
fn cutoff(keep: &FileIds) -> i64 {
    now_ms().saturating_sub((keep.retention_hours as i64).saturating_mul(3_600_000))
}

fn full(kind: Kind, keep: &FileIds) -> GwError {
    let (what, how) = match kind {
        Kind::File => ("files", "delete some or wait"),
        Kind::Batch => ("batches", "wait"),
    };
    GwError::InvalidRequest(format!(
        "This owner holds {} {what}, the most aigw keeps; {how} until older ones expire ({} h after creation).",
        keep.max_ids_per_owner, keep.retention_hours
    ))
}

/// The ids in this process, when there is no Redis: one lock, as these calls are few
/// and each touches the record and its two indexes together.
#[derive(Default)]
struct Memory {
    records: HashMap<String, Record>,
    /// Each owner's ids of a kind, oldest first.
    owners: HashMap<(Kind, String), BTreeSet<(i64, String)>>,
    /// Every id, oldest first: what expiry reads.
    by_age: BTreeSet<(i64, String)>,
    claims: HashMap<String, Claim>,
}

impl Memory {
    fn remove(&mut self, id: &str) {
        self.claims.remove(id);
        let Some(rec) = self.records.remove(id) else {
            return;
        };
        let key = (rec.created_ms, id.to_owned());
        self.by_age.remove(&key);
        let owner = (rec.kind, rec.owner);
        if let Some(set) = self.owners.get_mut(&owner) {
            set.remove(&key);
            if set.is_empty() {
                self.owners.remove(&owner);
            }
        }
    }

    /// Forgets every id handed out before `cutoff`.
    fn expire(&mut self, cutoff: i64) {
        while let Some((at, id)) = self.by_age.first().cloned() {
            if at >= cutoff {
                break;
            }
            self.remove(&id);
        }
    }

    /// Whether the owner may hold one more id of `kind` (expired ones do not count).
    fn room(&mut self, kind: Kind, owner: &str, keep: &FileIds) -> Result<(), GwError> {
        self.expire(cutoff(keep));
        let held = self.owners.get(&(kind, owner.to_owned())).map_or(0, BTreeSet::len);
        if held >= keep.max_ids_per_owner {
            return Err(full(kind, keep));
        }
        if self.records.len() >= keep.max_ids {
            tracing::warn!(
                max_ids = keep.max_ids,
                "the file and batch id store is full (server.files.max_ids)"
            );
            return Err(GwError::StoreUnavailable);
        }
        Ok(())
    }

    fn put(&mut self, id: &str, rec: &Record, only_new: bool, cap: Cap, keep: &FileIds) -> Result<bool, GwError> {
        self.expire(cutoff(keep));
        if self.records.contains_key(id) {
            if only_new {
                return Ok(false);
            }
            self.remove(id);
        }
        if cap == Cap::Owner {
            self.room(rec.kind, &rec.owner, keep)?;
        }
        let key = (rec.created_ms, id.to_owned());
        self.by_age.insert(key.clone());
        self.owners
            .entry((rec.kind, rec.owner.clone()))
            .or_default()
            .insert(key);
        self.records.insert(id.to_owned(), rec.clone());
        Ok(true)
    }
}

/// Keeps a record unless its owner is at the cap: prunes the owner's expired index
/// entries, then `SET` (with `NX` when only new) with what is left of its retention as
/// its TTL, and indexes it (the index lives as long as its longest-lived id). Returns 1 stored, 0 not new, -1 at the cap.
const PUT: &str = r"
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[6])
if ARGV[4] == '1' and redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local cap = tonumber(ARGV[5])
if cap > 0 and redis.call('ZCARD', KEYS[2]) >= cap then return -1 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[7])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
if redis.call('TTL', KEYS[2]) < tonumber(ARGV[7]) then redis.call('EXPIRE', KEYS[2], ARGV[7]) end
return 1
";

pub struct Ids {
    redis: Option<Arc<RedisPool>>,
    memory: Mutex<Memory>,
}

impl Ids {
    pub fn new(redis: Option<Arc<RedisPool>>) -> Self {
        Self {
            redis,
            memory: Mutex::new(Memory::default()),
        }
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, Memory> {
        // A panic elsewhere while holding it leaves whole records: keep serving.
        self.memory.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `rec` under `id`; with `only_new`, keeps an existing record instead and
    /// says whether this one was stored. Refused when the owner holds its most ids of
    /// the kind (and `cap` counts this one), or memory holds `max_ids`.
    pub async fn put(&self, id: &str, rec: &Record, only_new: bool, cap: Cap, keep: &FileIds) -> Result<bool, GwError> {
        let Some(pool) = &self.redis else {
            return self.memory().put(id, rec, only_new, cap, keep);
        };
        let json = serde_json::to_string(rec).map_err(|_| GwError::Internal)?;
        let (k, idx, id_owned, score) = (
            record_key(id),
            index_key(rec.kind, &rec.owner),
            id.to_owned(),
            rec.created_ms,
        );
        let limit = if cap == Cap::Owner { keep.max_ids_per_owner } else { 0 };
        let cut = cutoff(keep);
        // Redis forgets the record when the retention says so (at least a second on).
        let ttl = (rec.created_ms.saturating_sub(cut) / 1000).max(1);
        let r: i64 = pool
            .call(|mut c| async move {
                redis::cmd("EVAL")
                    .arg(PUT)
                    .arg(2)
                    .arg(&k)
                    .arg(&idx)
                    .arg(&json)
                    .arg(score)
                    .arg(&id_owned)
                    .arg(if only_new { "1" } else { "0" })
                    .arg(limit)
                    .arg(cut)
                    .arg(ttl)
                    .query_async(&mut c)
                    .await
            })
            .await
            .map_err(unavailable)?;
        match r {
            -1 => Err(full(rec.kind, keep)),
            r => Ok(r == 1),
        }
    }

    /// Whether the owner may hold one more id of `kind`: asked before the provider is
    /// called, so that an owner at its cap creates nothing there (a batch that ran with
    /// no id to see it by would be neither reachable nor charged). [`Ids::put`] checks
    /// again, for calls that race past this one.
    pub async fn room(&self, kind: Kind, owner: &str, keep: &FileIds) -> Result<(), GwError> {
        let Some(pool) = &self.redis else {
            return self.memory().room(kind, owner, keep);
        };
        let (idx, cut) = (index_key(kind, owner), cutoff(keep));
        let held: i64 = pool
            .call(|mut c| async move {
                let (held,): (i64,) = redis::pipe()
                    .cmd("ZREMRANGEBYSCORE")
                    .arg(&idx)
                    .arg("-inf")
                    .arg(format!("({cut}"))
                    .ignore()
                    .cmd("ZCARD")
                    .arg(&idx)
                    .query_async(&mut c)
                    .await?;
                Ok(held)
            })
            .await
            .map_err(unavailable)?;
        if held >= keep.max_ids_per_owner as i64 {
            return Err(full(kind, keep));
        }
        Ok(())
    }

    /// The record of `id`, unless it expired.
    pub async fn get(&self, id: &str, keep: &FileIds) -> Result<Option<Record>, GwError> {
        let cut = cutoff(keep);
        let Some(pool) = &self.redis else {
            let mut m = self.memory();
            m.expire(cut);
            return Ok(m.records.get(id).cloned());
        };
        let k = record_key(id);
        let v: Option<String> = pool
            .call(|mut c| async move { redis::cmd("GET").arg(&k).query_async(&mut c).await })
            .await
            .map_err(unavailable)?;
        // The TTL was set with the retention of its day; today's decides.
        Ok(v.and_then(|s| serde_json::from_str::<Record>(&s).ok())
            .filter(|r| r.created_ms >= cut))
    }

    /// The record of `id` when it is of `kind` and belongs to `owner`; anything else is
    /// as absent as an id never handed out.
    pub async fn owned(&self, id: &str, kind: Kind, owner: &str, keep: &FileIds) -> Result<Record, GwError> {
        match self.get(id, keep).await? {
            Some(r) if r.kind == kind && r.owner == owner => Ok(r),
            _ => Err(GwError::NoSuchObject(id.chars().take(128).collect())),
        }
    }

    pub async fn remove(&self, id: &str, rec: &Record) -> Result<(), GwError> {
        let Some(pool) = &self.redis else {
            self.memory().remove(id);
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
    /// [`LIST_SCAN`], every id an owner may hold).
    pub async fn list(&self, kind: Kind, owner: &str, keep: &FileIds) -> Result<Vec<(String, Record)>, GwError> {
        let cut = cutoff(keep);
        let Some(pool) = &self.redis else {
            let mut m = self.memory();
            m.expire(cut);
            let Some(ids) = m.owners.get(&(kind, owner.to_owned())) else {
                return Ok(Vec::new());
            };
            return Ok(ids
                .iter()
                .rev()
                .take(LIST_SCAN)
                .filter_map(|(_, id)| Some((id.clone(), m.records.get(id)?.clone())))
                .collect());
        };
        let idx = index_key(kind, owner);
        let ids: Vec<String> = pool
            .call(|mut c| async move {
                let (ids,): (Vec<String>,) = redis::pipe()
                    .cmd("ZREMRANGEBYSCORE")
                    .arg(&idx)
                    .arg("-inf")
                    .arg(format!("({cut}"))
                    .ignore()
                    .cmd("ZREVRANGE")
                    .arg(&idx)
                    .arg(0)
                    .arg(LIST_SCAN - 1)
                    .query_async(&mut c)
                    .await?;
                Ok(ids)
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
            .filter(|(_, r)| r.kind == kind && r.owner == owner && r.created_ms >= cut)
            .collect())
    }

    /// Claims the charge of batch `id`: true for the one caller (of the whole fleet, with
    /// Redis) that is to charge it; false when it is charged or being charged.
    pub async fn claim_charge(&self, id: &str) -> Result<bool, GwError> {
        let Some(pool) = &self.redis else {
            let mut won = false;
            self.memory().claims.entry(id.to_owned()).or_insert_with(|| {
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
    pub async fn mark_charged(&self, id: &str, keep: &FileIds) -> Result<(), GwError> {
        let Some(pool) = &self.redis else {
            self.memory().claims.insert(id.to_owned(), Claim::Done);
            return Ok(());
        };
        // Kept as long as the batch's id: past it the batch cannot be seen, so not charged.
        let (k, ttl) = (claim_key(id), keep.retention_hours.saturating_mul(3600));
        pool.call(|mut c| async move {
            redis::cmd("SET")
                .arg(&k)
                .arg("done")
                .arg("EX")
                .arg(ttl)
                .query_async::<()>(&mut c)
                .await
        })
        .await
        .map_err(unavailable)
    }

    /// Gives a claim back (the usage could not be read): the next retrieve tries again.
    pub async fn release_charge(&self, id: &str) {
        let Some(pool) = &self.redis else {
            let mut m = self.memory();
            if m.claims.get(id) == Some(&Claim::Pending) {
                m.claims.remove(id);
            }
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
