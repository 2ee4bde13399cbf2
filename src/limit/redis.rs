//! The shared store: limit state in Redis, so every aigw instance pointed at the same
//! Redis enforces one combined limit.
//!
//! Each check is one Lua script that reads Redis's own clock (`TIME`), so instances with
//! skewed clocks agree, and that checks every rule before it writes any, so a request is
//! counted everywhere or nowhere. Request and token rules keep a GCRA TAT in a string key
//! that expires when it no longer matters; concurrency slots are members of a sorted set
//! scored by their lease's expiry, refreshed while the request runs, so the slots of an
//! instance that dies come back within [`LEASE_TTL`].
//!
//! Connections, deadlines and the back-off after a failure are the shared
//! [`RedisPool`]'s.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dashmap::DashMap;
use redis::aio::ConnectionManager;
use redis::Script;

use super::gcra::Verdict;
use super::{Kind, LimitStore, Rule, StoreError};
use crate::redis_pool::RedisPool;

/// How long a concurrency slot outlives the last sign of life of its holder.
pub const LEASE_TTL: Duration = Duration::from_secs(30);
/// How often held slots are refreshed.
const REFRESH_EVERY: Duration = Duration::from_secs(10);

// Times in the scripts are microseconds since 2023-11-14 (1.7e9 s) on Redis's clock:
// small enough that Lua's doubles keep a fraction of a microsecond, so an interval of
// `window / limit` stays exact enough even for very large limits.
const ACQUIRE: &str = r#"
local t = redis.call('TIME')
local now = (tonumber(t[1]) - 1700000000) * 1000000 + tonumber(t[2])
local member, ttl_ms = ARGV[1], tonumber(ARGV[2])
local out, writes, ok = {}, {}, true
for i, key in ipairs(KEYS) do
  local kind = ARGV[3 * i]
  local limit = tonumber(ARGV[3 * i + 1])
  local window = tonumber(ARGV[3 * i + 2])
  local allowed, remaining, reset, retry = 1, 0, 0, 0
  if kind == 'c' then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
    local used = redis.call('ZCARD', key)
    if used < limit then
      remaining = limit - used - 1
      writes[i] = true
    else
      allowed = 0
      retry = 1000000
    end
  else
    local interval = window / limit
    local tau = window - interval
    local tat = math.max(tonumber(redis.call('GET', key) or '0'), now)
    local used = tat - now
    if used > tau then
      allowed, reset, retry = 0, used, used - tau
    elseif kind == 'r' then
      writes[i] = tat + interval
      reset = tat + interval - now
      remaining = math.floor((window - reset) / interval + 1e-9)
    else
      reset = used
      remaining = math.floor((window - used) / interval + 1e-9)
    end
    remaining = math.min(remaining, limit)
  end
  if allowed == 0 then ok = false end
  out[#out + 1] = allowed
  out[#out + 1] = limit
  out[#out + 1] = remaining
  out[#out + 1] = math.ceil(reset)
  out[#out + 1] = math.ceil(retry)
end
if ok then
  for i, key in ipairs(KEYS) do
    local w = writes[i]
    if w == true then
      redis.call('ZADD', key, string.format('%.0f', now + ttl_ms * 1000), member)
      redis.call('PEXPIRE', key, ttl_ms)
    elseif w then
      redis.call('SET', key, string.format('%.3f', w), 'PX', string.format('%.0f', math.ceil((w - now) / 1000) + 1000))
    end
  end
end
return out
"#;

/// The request is over: charge tokens to the first `ARGV[3]` keys, free this request's
/// slot (`ARGV[2]`) in the others.
const FINISH: &str = r#"
local t = redis.call('TIME')
local now = (tonumber(t[1]) - 1700000000) * 1000000 + tonumber(t[2])
local units, member, charged = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
for i, key in ipairs(KEYS) do
  if i <= charged then
    local limit, window = tonumber(ARGV[2 * i + 2]), tonumber(ARGV[2 * i + 3])
    local tat = math.max(tonumber(redis.call('GET', key) or '0'), now) + units * window / limit
    redis.call('SET', key, string.format('%.3f', tat), 'PX', string.format('%.0f', math.ceil((tat - now) / 1000) + 1000))
  else
    redis.call('ZREM', key, member)
  end
end
return 0
"#;

/// Pushes the expiry of held slots forward; never re-adds a released one (`XX`).
const REFRESH: &str = r#"
local t = redis.call('TIME')
local now = (tonumber(t[1]) - 1700000000) * 1000000 + tonumber(t[2])
local ttl_ms = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, 'XX', string.format('%.0f', now + ttl_ms * 1000), ARGV[i + 1])
  redis.call('PEXPIRE', key, ttl_ms)
end
return 0
"#;

pub struct RedisStore {
    redis: Arc<RedisPool>,
    acquire: Script,
    finish: Script,
    refresh: Script,
    /// Tells this instance's slots apart from every other instance's.
    instance: u64,
    /// Slots held by this instance: lease -> concurrency keys, for the refresh.
    leases: DashMap<u64, Vec<String>>,
    epoch: Instant,
    last_refresh_ms: AtomicU64,
}

impl RedisStore {
    pub fn new(redis: Arc<RedisPool>) -> Self {
        Self {
            redis,
            acquire: Script::new(ACQUIRE),
            finish: Script::new(FINISH),
            refresh: Script::new(REFRESH),
            instance: fastrand::u64(..),
            leases: DashMap::new(),
            epoch: Instant::now(),
            last_refresh_ms: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    async fn call<T, F>(&self, f: impl FnOnce(ConnectionManager) -> F) -> Result<T, StoreError>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        self.redis.call(f).await.map_err(|e| StoreError(e.0))
    }

    fn member(&self, lease: u64) -> String {
        format!("{:016x}{lease:016x}", self.instance)
    }

    /// Removes this instance's slots for `lease`, in a task (called from destructors).
    fn spawn_release(&self, keys: Vec<String>, lease: u64) {
        let member = self.member(lease);
        let Ok(mut conn) = self.redis.conn() else { return };
        let timeout = self.redis.timeout;
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            // No runtime (shutting down): the lease expires on its own.
            return;
        };
        rt.spawn(async move {
            let mut pipe = redis::pipe();
            for k in &keys {
                pipe.zrem(k, &member).ignore();
            }
            if let Ok(Err(e)) = tokio::time::timeout(timeout, pipe.exec_async(&mut conn)).await {
                tracing::debug!(error = %e, "could not release a concurrency slot; its lease expires");
            }
        });
    }
}

fn conc_keys(rules: &[&Rule]) -> Vec<String> {
    rules
        .iter()
        .filter(|r| r.kind == Kind::Concurrency)
        .map(|r| r.key.clone())
        .collect()
}

#[async_trait]
impl LimitStore for RedisStore {
    async fn acquire(&self, rules: &[&Rule], lease: u64) -> Result<Vec<Verdict>, StoreError> {
        let mut inv = self.acquire.prepare_invoke();
        inv.arg(self.member(lease)).arg(LEASE_TTL.as_millis() as u64);
        for r in rules {
            let kind = match r.kind {
                Kind::Requests => "r",
                Kind::Tokens => "t",
                Kind::Concurrency => "c",
            };
            inv.key(&r.key).arg(kind).arg(r.rate.limit).arg(r.rate.window_us);
        }
        let flat: Result<Vec<i64>, _> = self.call(|mut c| async move { inv.invoke_async(&mut c).await }).await;
        let keys = conc_keys(rules);
        let flat = match flat {
            Ok(f) => f,
            Err(e) => {
                // The script may have run before the deadline hit: give back what it
                // may have taken rather than leak it until the lease expires.
                if !keys.is_empty() {
                    self.spawn_release(keys, lease);
                }
                return Err(e);
            }
        };
        if flat.len() != rules.len() * 5 {
            return Err(StoreError(format!("unexpected script answer of {} values", flat.len())));
        }
        let u = |v: i64| v.max(0) as u64;
        let verdicts: Vec<Verdict> = flat
            .chunks_exact(5)
            .map(|c| Verdict {
                allowed: c[0] == 1,
                limit: u(c[1]),
                remaining: u(c[2]),
                reset_us: u(c[3]),
                retry_after_us: u(c[4]),
            })
            .collect();
        if !keys.is_empty() && verdicts.iter().all(|v| v.allowed) {
            self.leases.insert(lease, keys);
        }
        Ok(verdicts)
    }

    async fn finish(&self, rules: &[&Rule], units: u64, lease: Option<u64>) -> Result<(), StoreError> {
        let slots = lease.and_then(|l| self.leases.remove(&l)).map(|(_, keys)| keys);
        let charge: Vec<&Rule> = rules
            .iter()
            .copied()
            .filter(|r| units > 0 && r.kind == Kind::Tokens)
            .collect();
        if charge.is_empty() && slots.is_none() {
            return Ok(());
        }
        let mut inv = self.finish.prepare_invoke();
        inv.arg(units).arg(self.member(lease.unwrap_or(0))).arg(charge.len());
        for r in &charge {
            inv.key(&r.key).arg(r.rate.limit).arg(r.rate.window_us);
        }
        for k in slots.iter().flatten() {
            inv.key(k);
        }
        let result = self
            .call(|mut c| async move { inv.invoke_async::<i64>(&mut c).await })
            .await
            .map(|_| ());
        if let (Err(_), Some(keys), Some(lease)) = (&result, slots, lease) {
            // The slots must come back even though this call failed.
            self.spawn_release(keys, lease);
        }
        result
    }

    fn release(&self, _rules: &[&Rule], lease: u64) {
        if let Some((_, keys)) = self.leases.remove(&lease) {
            self.spawn_release(keys, lease);
        }
    }

    async fn maintain(&self) {
        let now = self.now_ms();
        let last = self.last_refresh_ms.load(Ordering::Relaxed);
        if now < last + REFRESH_EVERY.as_millis() as u64 || self.leases.is_empty() {
            return;
        }
        self.last_refresh_ms.store(now, Ordering::Relaxed);
        let held: Vec<(String, String)> = self
            .leases
            .iter()
            .flat_map(|e| {
                let member = self.member(*e.key());
                e.value()
                    .iter()
                    .map(move |k| (k.clone(), member.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        for chunk in held.chunks(500) {
            let mut inv = self.refresh.prepare_invoke();
            inv.arg(LEASE_TTL.as_millis() as u64);
            for (key, member) in chunk {
                inv.key(key).arg(member);
            }
            let r = self
                .call(|mut c| async move { inv.invoke_async::<i64>(&mut c).await })
                .await;
            if let Err(e) = r {
                tracing::debug!(error = %e, "could not refresh concurrency leases");
                return;
            }
        }
    }
}
