//! The shared store: limit state in Redis, so every aigw instance pointed at the same
//! Redis enforces one combined limit.
//!
//! **Capacity is leased.** An instance takes a block of each rule's capacity from Redis
//! at once ([`block`]: 1% of the limit, at least one unit) and spends it locally, so most
//! requests never wait on Redis. Every unit an instance spends was taken from Redis
//! first, so the instances together never admit more than the limit. The price is the
//! other way: capacity one instance holds unspent (at most a block per rule: one request
//! at a time refills a rule) is not available to the others until it is spent or given
//! back, which happens after [`IDLE`] without use and when the process stops. A limit under 200 per
//! window has a block of one unit: every request asks Redis, exactly as without leases.
//!
//! - Request rules lease units; a request spends one.
//! - Token rules lease tokens ahead; a request is admitted while the instance holds
//!   some, and its real usage is paid from them when it ends. Usage beyond what is held
//!   is charged to Redis then, in one call.
//! - Concurrency rules lease slots: each instance's count is a field of a hash, with the
//!   lease's expiry, refreshed while held, so the slots of an instance that dies come
//!   back within [`LEASE_TTL`]. A request takes a held slot; when it ends, the instance
//!   keeps what a fresh block leaves idle for the next requests and gives the rest back.
//!
//! Each Redis call is one Lua script that reads Redis's own clock (`TIME`), so instances
//! with skewed clocks agree, and that checks every rule before it writes any, so a lease
//! is taken everywhere or nowhere. Request and token rules keep a GCRA TAT in a string
//! key that expires when it no longer matters.
//!
//! Connections, deadlines and the back-off after a failure are the shared
//! [`RedisPool`]'s.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dashmap::DashMap;
use redis::Script;

use super::gcra::Verdict;
use super::{Kind, LimitStore, Rate, Rule, StoreError};
use crate::redis_pool::RedisPool;

/// How long a concurrency lease outlives the last sign of life of its holder.
pub const LEASE_TTL: Duration = Duration::from_secs(30);
/// How often held concurrency leases are refreshed.
const REFRESH_EVERY: Duration = Duration::from_secs(10);
/// Capacity held unused this long goes back to Redis.
pub const IDLE: Duration = Duration::from_secs(1);
/// A rule's state is forgotten this long after its last use, once it holds nothing.
const FORGET: Duration = Duration::from_secs(300);

/// The capacity an instance takes from Redis at once: 1% of the limit, at least one unit.
pub fn block(limit: u64) -> u64 {
    (limit / 100).max(1)
}

// Times in the scripts are microseconds since 2023-11-14 (1.7e9 s) on Redis's clock:
// small enough that Lua's doubles keep a fraction of a microsecond, so an interval of
// `window / limit` stays exact enough even for very large limits.

/// Leases up to `want` units of every rule (`ARGV[4i-1..4i+2]`: kind, limit, window,
/// want) when each has at least one to give; otherwise changes nothing. Returns six
/// numbers per rule: allowed, limit, remaining, reset, retry, granted.
const LEASE: &str = r#"
local t = redis.call('TIME')
local now = (tonumber(t[1]) - 1700000000) * 1000000 + tonumber(t[2])
local member, ttl_ms = ARGV[1], tonumber(ARGV[2])
local out, writes, ok = {}, {}, true
for i, key in ipairs(KEYS) do
  local b = 4 * i - 1
  local kind, limit, window, want = ARGV[b], tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3])
  local grant, remaining, reset, retry = 0, 0, 0, 0
  if kind == 'c' then
    local used, own = 0, 0
    local fields = redis.call('HGETALL', key)
    for j = 1, #fields, 2 do
      local n, exp = string.match(fields[j + 1], '^(%d+):(%d+)$')
      if n == nil or tonumber(exp) < now then
        redis.call('HDEL', key, fields[j])
      else
        used = used + tonumber(n)
        if fields[j] == member then own = tonumber(n) end
      end
    end
    grant = math.max(math.min(want, limit - used), 0)
    if grant > 0 then
      writes[i] = own + grant
      remaining = limit - used - grant
    else
      retry = 1000000
    end
  else
    local interval = window / limit
    local tau = window - interval
    local tat = math.max(tonumber(redis.call('GET', key) or '0'), now)
    local used = tat - now
    if used > tau then
      reset, retry = used, used - tau
    else
      grant = math.min(want, math.floor((tau - used) / interval + 1e-9) + 1)
      local next = tat + grant * interval
      writes[i] = next
      reset = next - now
      remaining = math.min(math.floor((window - reset) / interval + 1e-9), limit)
    end
  end
  if grant == 0 then ok = false end
  out[#out + 1] = grant > 0 and 1 or 0
  out[#out + 1] = limit
  out[#out + 1] = math.max(remaining, 0)
  out[#out + 1] = math.ceil(reset)
  out[#out + 1] = math.ceil(retry)
  out[#out + 1] = grant
end
if ok then
  for i, key in ipairs(KEYS) do
    local w = writes[i]
    if ARGV[4 * i - 1] == 'c' then
      redis.call('HSET', key, member, string.format('%.0f:%.0f', w, now + ttl_ms * 1000))
      redis.call('PEXPIRE', key, ttl_ms)
    else
      redis.call('SET', key, string.format('%.3f', w), 'PX', string.format('%.0f', math.ceil((w - now) / 1000) + 1000))
    end
  end
end
return out
"#;

/// Adds `delta` units (`ARGV[4i-1..4i+2]`: kind, limit, window, delta) to every rule:
/// tokens charged (positive) or unspent capacity given back (negative). For a
/// concurrency rule, this instance's count changes and its lease is refreshed; a lease
/// that already expired is not brought back.
const ADJUST: &str = r#"
local t = redis.call('TIME')
local now = (tonumber(t[1]) - 1700000000) * 1000000 + tonumber(t[2])
local member, ttl_ms = ARGV[1], tonumber(ARGV[2])
for i, key in ipairs(KEYS) do
  local b = 4 * i - 1
  local kind, limit, window, delta = ARGV[b], tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3])
  if kind == 'c' then
    local v = redis.call('HGET', key, member)
    if v then
      local n = math.max(tonumber(string.match(v, '^(%d+):') or '0') + delta, 0)
      if n > 0 then
        redis.call('HSET', key, member, string.format('%.0f:%.0f', n, now + ttl_ms * 1000))
        redis.call('PEXPIRE', key, ttl_ms)
      else
        redis.call('HDEL', key, member)
      end
    end
  else
    local tat = math.max(tonumber(redis.call('GET', key) or '0'), now) + delta * window / limit
    if tat > now then
      redis.call('SET', key, string.format('%.3f', tat), 'PX', string.format('%.0f', math.ceil((tat - now) / 1000) + 1000))
    else
      redis.call('DEL', key)
    end
  end
end
return 0
"#;

/// One rule's capacity held by this instance.
#[derive(Debug)]
struct Held {
    kind: Kind,
    rate: Rate,
    /// Units leased and not spent; tokens paid ahead; slots leased (in use or not).
    units: u64,
    /// Concurrency: the leased slots in use.
    in_use: u64,
    /// What Redis said at the last lease, for the headers of requests served locally.
    seen: Option<Verdict>,
    last_used: Instant,
}

impl Held {
    /// Spends from what is held when it covers one more request.
    fn take(&mut self) -> bool {
        let ok = match self.kind {
            Kind::Requests => self.units > 0,
            Kind::Tokens => self.units > 0,
            Kind::Concurrency => self.in_use < self.units,
        };
        if ok {
            self.spend_one();
        }
        ok
    }

    fn spend_one(&mut self) {
        match self.kind {
            Kind::Requests => self.units -= 1,
            Kind::Tokens => {}
            Kind::Concurrency => self.in_use += 1,
        }
        self.last_used = Instant::now();
    }

    fn untake(&mut self) {
        match self.kind {
            Kind::Requests => self.units += 1,
            Kind::Tokens => {}
            Kind::Concurrency => self.in_use = self.in_use.saturating_sub(1),
        }
    }

    /// Capacity held and not in use.
    fn idle(&self) -> u64 {
        match self.kind {
            Kind::Concurrency => self.units.saturating_sub(self.in_use),
            _ => self.units,
        }
    }

    /// The verdict for a request served from what is held: what Redis said, plus what
    /// this instance still holds.
    fn verdict(&self) -> Verdict {
        let seen = self.seen.unwrap_or(Verdict {
            allowed: true,
            limit: self.rate.limit,
            remaining: 0,
            reset_us: 0,
            retry_after_us: 0,
        });
        Verdict {
            allowed: true,
            remaining: seen.remaining.saturating_add(self.idle()).min(self.rate.limit),
            ..seen
        }
    }
}

struct Share {
    held: Mutex<Held>,
    /// Taken by the request that refills this rule, so requests that find it empty
    /// together ask Redis once.
    refill: tokio::sync::Mutex<()>,
}

impl Share {
    fn lock(&self) -> MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// `(key, kind, rate, delta)`: one rule's change in an ADJUST call.
type Change = (String, Kind, Rate, i64);

/// What an ADJUST call needs; cloned into the tasks of destructors.
#[derive(Clone)]
struct Adjuster {
    redis: Arc<RedisPool>,
    script: Script,
    /// This instance's field in concurrency hashes.
    member: Arc<str>,
}

impl Adjuster {
    async fn run(&self, changes: &[Change]) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut inv = self.script.prepare_invoke();
        inv.arg(&*self.member).arg(LEASE_TTL.as_millis() as u64);
        for (key, kind, rate, delta) in changes {
            inv.key(key)
                .arg(kind_arg(*kind))
                .arg(rate.limit)
                .arg(rate.window_us)
                .arg(*delta);
        }
        self.redis
            .call(|mut c| async move { inv.invoke_async::<i64>(&mut c).await })
            .await
            .map(|_| ())
            .map_err(|e| StoreError(e.0))
    }

    /// Runs in a task (called from destructors).
    fn spawn(&self, changes: Vec<Change>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            // No runtime (shutting down): leases expire on their own.
            return;
        };
        let me = self.clone();
        rt.spawn(async move {
            if let Err(e) = me.run(&changes).await {
                tracing::debug!(error = %e, "could not give capacity back to the shared store; its lease expires");
            }
        });
    }
}

pub struct RedisStore {
    lease: Script,
    adjust: Adjuster,
    shares: DashMap<String, Arc<Share>>,
    last_refresh: Mutex<Instant>,
}

fn kind_arg(kind: Kind) -> &'static str {
    match kind {
        Kind::Requests => "r",
        Kind::Tokens => "t",
        Kind::Concurrency => "c",
    }
}

impl RedisStore {
    pub fn new(redis: Arc<RedisPool>) -> Self {
        Self {
            lease: Script::new(LEASE),
            adjust: Adjuster {
                redis,
                script: Script::new(ADJUST),
                member: format!("{:016x}", fastrand::u64(..)).into(),
            },
            shares: DashMap::new(),
            last_refresh: Mutex::new(Instant::now()),
        }
    }

    fn share(&self, rule: &Rule) -> Arc<Share> {
        if let Some(s) = self.shares.get(&rule.key) {
            let s = s.clone();
            s.lock().rate = rule.rate;
            return s;
        }
        self.shares
            .entry(rule.key.clone())
            .or_insert_with(|| {
                Arc::new(Share {
                    held: Mutex::new(Held {
                        kind: rule.kind,
                        rate: rule.rate,
                        units: 0,
                        in_use: 0,
                        seen: None,
                        last_used: Instant::now(),
                    }),
                    refill: tokio::sync::Mutex::new(()),
                })
            })
            .clone()
    }

    /// Gives back what `held` holds beyond what it keeps for the next request.
    fn surplus(key: &str, held: &mut Held, keep: u64) -> Option<Change> {
        let extra = held.idle().saturating_sub(keep);
        if extra == 0 {
            return None;
        }
        held.units -= extra;
        Some((key.to_owned(), held.kind, held.rate, -(extra as i64)))
    }

    /// Asks Redis for a block of every rule in `need` (indexes into `rules`). On a
    /// refusal nothing is leased; on success each rule keeps its block, less the unit
    /// this request takes. The call and the bookkeeping run in a task: a request dropped
    /// while it waits (a cancelled HTTP/2 stream) loses no capacity, because the task
    /// keeps the whole block for the instance and hands a unit over only to a request
    /// that is still there.
    async fn refill(
        &self,
        rules: &[&Rule],
        shares: &[Arc<Share>],
        need: &[usize],
        verdicts: &mut [Option<Verdict>],
    ) -> Result<bool, StoreError> {
        let asks: Vec<(String, Kind, Rate)> = need
            .iter()
            .map(|&i| (rules[i].key.clone(), rules[i].kind, rules[i].rate))
            .collect();
        let (script, member, redis) = (
            self.lease.clone(),
            self.adjust.member.clone(),
            self.adjust.redis.clone(),
        );
        let held: Vec<Arc<Share>> = need.iter().map(|&i| shares[i].clone()).collect();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut inv = script.prepare_invoke();
            inv.arg(&*member).arg(LEASE_TTL.as_millis() as u64);
            for (key, kind, rate) in &asks {
                inv.key(key)
                    .arg(kind_arg(*kind))
                    .arg(rate.limit)
                    .arg(rate.window_us)
                    .arg(block(rate.limit));
            }
            let answer = lease(&redis, inv, &held).await;
            if let Err(Ok((true, _))) = tx.send(answer) {
                // The request is gone: the units taken for it stay with the instance.
                held.iter().for_each(|s| s.lock().untake());
            }
        });
        let (ok, got) = rx
            .await
            .map_err(|_| StoreError("the lease task ended without an answer".into()))??;
        for (v, &i) in got.into_iter().zip(need) {
            verdicts[i] = Some(v);
        }
        Ok(ok)
    }
}

/// Runs one LEASE call; when every rule granted, adds each block to what the instance
/// holds and takes this request's unit from it.
async fn lease(
    redis: &RedisPool,
    inv: redis::ScriptInvocation<'_>,
    held: &[Arc<Share>],
) -> Result<(bool, Vec<Verdict>), StoreError> {
    let flat: Vec<i64> = redis
        .call(|mut c| async move { inv.invoke_async(&mut c).await })
        .await
        .map_err(|e| StoreError(e.0))?;
    if flat.len() != held.len() * 6 {
        return Err(StoreError(format!("unexpected script answer of {} values", flat.len())));
    }
    let u = |v: i64| v.max(0) as u64;
    let verdicts: Vec<Verdict> = flat
        .chunks_exact(6)
        .map(|c| Verdict {
            allowed: c[0] == 1,
            limit: u(c[1]),
            remaining: u(c[2]),
            reset_us: u(c[3]),
            retry_after_us: u(c[4]),
        })
        .collect();
    let ok = verdicts.iter().all(|v| v.allowed);
    if ok {
        for ((c, v), share) in flat.chunks_exact(6).zip(&verdicts).zip(held) {
            let mut h = share.lock();
            h.units += u(c[5]);
            h.seen = Some(*v);
            h.spend_one();
        }
    }
    Ok((ok, verdicts))
}

/// The units a request took locally; given back when it drops unless kept, so a refusal,
/// a failure or a request dropped mid-acquire returns them.
struct Taken<'a> {
    taken: Vec<bool>,
    shares: &'a [Arc<Share>],
    keep: bool,
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        for (s, t) in self.shares.iter().zip(&self.taken) {
            if *t {
                s.lock().untake();
            }
        }
    }
}

/// Rules Redis was not asked about were taken locally (or given back because another
/// rule refused): their verdict is what the instance holds.
fn all_verdicts(verdicts: Vec<Option<Verdict>>, shares: &[Arc<Share>]) -> Vec<Verdict> {
    verdicts
        .into_iter()
        .zip(shares)
        .map(|(v, s)| v.unwrap_or_else(|| s.lock().verdict()))
        .collect()
}

#[async_trait]
impl LimitStore for RedisStore {
    async fn acquire(&self, rules: &[&Rule]) -> Result<Vec<Verdict>, StoreError> {
        let shares: Vec<Arc<Share>> = rules.iter().map(|r| self.share(r)).collect();
        let mut taken = Taken {
            taken: shares.iter().map(|s| s.lock().take()).collect(),
            shares: &shares,
            keep: false,
        };
        let mut verdicts: Vec<Option<Verdict>> = vec![None; rules.len()];
        if taken.taken.iter().any(|t| !t) {
            // Refill the empty rules one request at a time, in the rules' order (the
            // caller's binding, then the model's), so refills never wait on each other
            // in a cycle; a request that waited may find the rule refilled.
            let mut gates = Vec::new();
            for (i, s) in shares.iter().enumerate() {
                if !taken.taken[i] {
                    gates.push(s.refill.lock().await);
                    taken.taken[i] = s.lock().take();
                }
            }
            let need: Vec<usize> = (0..rules.len()).filter(|i| !taken.taken[*i]).collect();
            if !need.is_empty() {
                // Refused or failed: what was taken goes back when `taken` drops.
                if !self.refill(rules, &shares, &need, &mut verdicts).await? {
                    return Ok(all_verdicts(verdicts, &shares));
                }
                need.iter().for_each(|i| taken.taken[*i] = true);
            }
            drop(gates);
        }
        taken.keep = true;
        Ok(all_verdicts(verdicts, &shares))
    }

    async fn finish(&self, rules: &[&Rule], units: u64, slots: bool) -> Result<(), StoreError> {
        let mut entries = Vec::new();
        // Only token rules (with usage) and concurrency rules (with slots) change here.
        let changes = |r: &&&Rule| match r.kind {
            Kind::Tokens => units > 0,
            Kind::Concurrency => slots,
            Kind::Requests => false,
        };
        for r in rules.iter().filter(changes) {
            let share = self.share(r);
            let mut h = share.lock();
            if r.kind == Kind::Tokens {
                let paid = h.units.min(units);
                h.units -= paid;
                if units > paid {
                    entries.push((r.key.clone(), r.kind, r.rate, (units - paid) as i64));
                }
            } else {
                h.in_use = h.in_use.saturating_sub(1);
                // Keep what a fresh lease leaves idle; a block of one keeps nothing,
                // so small limits stay exact across instances.
                entries.extend(Self::surplus(&r.key, &mut h, block(r.rate.limit) - 1));
            }
        }
        self.adjust.run(&entries).await
    }

    fn release(&self, rules: &[&Rule]) {
        let mut entries = Vec::new();
        for r in rules.iter().filter(|r| r.kind == Kind::Concurrency) {
            let share = self.share(r);
            let mut h = share.lock();
            h.in_use = h.in_use.saturating_sub(1);
            entries.extend(RedisStore::surplus(&r.key, &mut h, block(r.rate.limit) - 1));
        }
        if !entries.is_empty() {
            self.adjust.spawn(entries);
        }
    }

    async fn maintain(&self) {
        self.give_back(IDLE).await;
    }

    async fn close(&self) {
        self.give_back(Duration::ZERO).await;
    }
}

impl RedisStore {
    /// Gives back what was held unused for `idle`, refreshes concurrency leases, and
    /// forgets rules long unused.
    async fn give_back(&self, idle: Duration) {
        let now = Instant::now();
        let refresh = {
            let mut last = self.last_refresh.lock().unwrap_or_else(|p| p.into_inner());
            let due = now.duration_since(*last) >= REFRESH_EVERY;
            if due {
                *last = now;
            }
            due
        };
        let mut entries = Vec::new();
        self.shares.retain(|key, share| {
            let mut h = share.lock();
            let quiet = now.duration_since(h.last_used);
            if quiet >= idle {
                entries.extend(RedisStore::surplus(key, &mut h, 0));
            }
            if refresh && h.kind == Kind::Concurrency && h.units > 0 {
                entries.push((key.clone(), h.kind, h.rate, 0));
            }
            h.units > 0 || quiet < FORGET || Arc::strong_count(share) > 1
        });
        for chunk in entries.chunks(500) {
            if let Err(e) = self.adjust.run(chunk).await {
                tracing::debug!(error = %e, "could not return or refresh leased capacity");
                return;
            }
        }
    }
}
