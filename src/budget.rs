//! Spend limits in USD per owner and period (`budgets`, attached to caller keys).
//!
//! A request is admitted while the owner's spend for the current period is under the
//! budget, and charged its real cost (tokens x the answering model's `pricing`) when it
//! ends, so the request that crosses the line completes and the next ones get 429
//! `budget_exceeded` until the period rolls over. Periods are calendar periods in UTC
//! (day, ISO week from Monday, month) or `total`. Spend is kept in micro-dollars under a
//! key naming the budget, the owner and the period (`aigw:budget:team-monthly:team-a:
//! 2026-11`), so a new period starts from zero by itself and a reload keeps the count.
//! With `server.redis` the count is shared (INCRBY, expiring after the period); a Redis
//! that fails admits the request, like rate limits. So that a request does not wait on
//! Redis twice, each instance keeps a mirror of every shared spend it uses: it reads
//! Redis's count again once the mirror is older than [`SYNC`], and writes its own charges
//! in one INCRBY per [`SYNC`]. A budget can so be overspent by what the instances spend
//! in one [`SYNC`] (besides the requests in flight when it is crossed, which complete).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc};
use dashmap::DashMap;

use crate::error::GwError;
use crate::metrics::Metrics;
use crate::raw::{Budget, Period};
use crate::redis_pool::{RedisPool, Unavailable};

/// The current period of a budget: its id (part of the key) and when it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub id: String,
    pub ends: Option<DateTime<Utc>>,
}

fn midnight(d: NaiveDate) -> DateTime<Utc> {
    Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0).unwrap_or_default())
}

pub fn window(period: Period, now: DateTime<Utc>) -> Window {
    let today = now.date_naive();
    match period {
        Period::Day => Window {
            id: today.format("%Y-%m-%d").to_string(),
            ends: Some(midnight(today) + Duration::days(1)),
        },
        Period::Week => {
            let monday = today - Duration::days(i64::from(today.weekday().num_days_from_monday()));
            let iso = today.iso_week();
            Window {
                id: format!("{}-W{:02}", iso.year(), iso.week()),
                ends: Some(midnight(monday) + Duration::days(7)),
            }
        }
        Period::Month => {
            let first = today.with_day(1).unwrap_or(today);
            let next = if first.month() == 12 {
                NaiveDate::from_ymd_opt(first.year() + 1, 1, 1)
            } else {
                NaiveDate::from_ymd_opt(first.year(), first.month() + 1, 1)
            };
            Window {
                id: today.format("%Y-%m").to_string(),
                ends: next.map(midnight),
            }
        }
        Period::Total => Window {
            id: "total".into(),
            ends: None,
        },
    }
}

pub fn to_micro(usd: f64) -> u64 {
    if usd.is_finite() && usd > 0.0 {
        (usd * 1e6).round() as u64
    } else {
        0
    }
}

/// What admission found: where to charge, and what was left.
#[derive(Debug, Clone)]
pub struct Admitted {
    pub key: String,
    pub remaining_usd: f64,
    ttl_s: Option<u64>,
}

/// One budget's spend for one owner, as `GET /admin/v1/spend` shows it.
#[derive(Debug, serde::Serialize)]
pub struct Spend {
    pub budget: String,
    pub owner: String,
    pub period: String,
    pub limit_usd: f64,
    pub spent_usd: f64,
    pub remaining_usd: f64,
    pub resets_at: Option<String>,
}

async fn read(pool: &RedisPool, key: &str) -> Result<u64, Unavailable> {
    let k = key.to_owned();
    let v: Option<u64> = pool
        .call(|mut c| async move { redis::cmd("GET").arg(&k).query_async(&mut c).await })
        .await?;
    Ok(v.unwrap_or(0))
}

/// Adds `m`'s unwritten charges to Redis's count and mirrors the new count; on a failure
/// they stay unwritten, for the next write.
async fn write(pool: &RedisPool, metrics: &Metrics, key: &str, m: &Mirror) {
    let n = m.pending.swap(0, Ordering::AcqRel);
    if n == 0 {
        return;
    }
    let ttl_s = Some(m.ttl_s.load(Ordering::Acquire)).filter(|t| *t > 0);
    let k = key.to_owned();
    let r: Result<(u64,), _> = pool
        .call(|mut c| async move {
            let mut pipe = redis::pipe();
            pipe.cmd("INCRBY").arg(&k).arg(n);
            // Kept a day past the period's end, for `GET /admin/v1/spend`.
            if let Some(t) = ttl_s {
                pipe.cmd("EXPIRE").arg(&k).arg(t + 86_400).ignore();
            }
            pipe.query_async(&mut c).await
        })
        .await;
    match r {
        Ok((count,)) => m.saw(count),
        Err(e) => {
            m.pending.fetch_add(n, Ordering::AcqRel);
            metrics.budget_store_errors.inc();
            tracing::debug!(error = %e, "could not charge a budget; retrying");
        }
    }
}

/// One (budget, owner, period) spend kept in this process.
struct Local {
    spent: AtomicU64,
    /// When it may go (a day past its period's end, as in Redis); `None`: `total`.
    expires: Option<std::time::Instant>,
}

/// How stale an instance's view of a shared spend may be (see the module's comment).
pub const SYNC: std::time::Duration = std::time::Duration::from_millis(100);

/// A shared spend as this instance sees it.
#[derive(Default)]
struct Mirror {
    /// Redis's count when last read or written, and when that was.
    seen: Mutex<Option<(u64, Instant)>>,
    /// A read is under way: others use the count they have meanwhile.
    reading: AtomicBool,
    /// Charged here and not written yet.
    pending: AtomicU64,
    /// A write is scheduled.
    writing: AtomicBool,
    /// Seconds until the period ends, as of the last charge (0: `total`).
    ttl_s: AtomicU64,
}

impl Mirror {
    fn seen(&self) -> Option<(u64, Instant)> {
        *self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn saw(&self, count: u64) {
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = Some((count, Instant::now()));
    }
}

pub struct Budgets {
    local: DashMap<String, Local>,
    redis: Option<Arc<RedisPool>>,
    mirrors: DashMap<String, Arc<Mirror>>,
    metrics: Arc<Metrics>,
}

/// What a spend report covers: each budget with the owner of every key that uses it
/// (`keyed`), and the budgets of JWT issuers (`issued`), whose owners the budget's own
/// records name.
pub struct Covered {
    pub keyed: Vec<(Arc<Budget>, String)>,
    pub issued: Vec<Arc<Budget>>,
}

impl Budgets {
    pub fn new(redis: Option<Arc<RedisPool>>, metrics: Arc<Metrics>) -> Self {
        Self {
            local: DashMap::new(),
            redis,
            mirrors: DashMap::new(),
            metrics,
        }
    }

    fn mirror(&self, key: &str) -> Arc<Mirror> {
        if let Some(m) = self.mirrors.get(key) {
            return m.clone();
        }
        // A new period or owner (rare): mirrors unused for an hour go, so the map holds
        // what is current. One still in use is only read again.
        self.mirrors.retain(|_, m| {
            m.pending.load(Ordering::Acquire) > 0 || m.seen().is_some_and(|(_, at)| at.elapsed().as_secs() < 3600)
        });
        self.mirrors.entry(key.to_owned()).or_default().clone()
    }

    /// The spend as this instance sees it: the mirror while fresh (or while another
    /// request reads Redis), else Redis's count; plus this instance's unwritten charges.
    async fn spent_shared(&self, pool: &RedisPool, key: &str) -> Result<u64, Unavailable> {
        let m = self.mirror(key);
        let count = match m.seen() {
            Some((count, at)) if at.elapsed() < SYNC || m.reading.swap(true, Ordering::AcqRel) => count,
            _ => {
                // Cleared however the read ends, a cancelled request included: a flag
                // left set would keep the mirror from ever being read again.
                struct Reading<'a>(&'a AtomicBool);
                impl Drop for Reading<'_> {
                    fn drop(&mut self) {
                        self.0.store(false, Ordering::Release);
                    }
                }
                let _reading = Reading(&m.reading);
                let count = read(pool, key).await?;
                m.saw(count);
                count
            }
        };
        Ok(count + m.pending.load(Ordering::Acquire))
    }

    /// Writes `m`'s charges [`SYNC`] from now, and again while more arrive.
    fn schedule_write(&self, pool: &Arc<RedisPool>, key: &str, m: Arc<Mirror>) {
        if m.writing.swap(true, Ordering::AcqRel) {
            return;
        }
        let (pool, metrics, key) = (pool.clone(), self.metrics.clone(), key.to_owned());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(SYNC).await;
                write(&pool, &metrics, &key, &m).await;
                m.writing.store(false, Ordering::Release);
                if m.pending.load(Ordering::Acquire) == 0 || m.writing.swap(true, Ordering::AcqRel) {
                    return;
                }
            }
        });
    }

    /// Writes every unwritten charge now (at shutdown).
    pub async fn flush(&self) {
        let Some(pool) = &self.redis else { return };
        let mirrors: Vec<(String, Arc<Mirror>)> = self
            .mirrors
            .iter()
            .filter(|e| e.value().pending.load(Ordering::Acquire) > 0)
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        for (key, m) in mirrors {
            write(pool, &self.metrics, &key, &m).await;
        }
    }

    fn key(b: &Budget, owner: &str, w: &Window) -> String {
        format!("aigw:budget:{}:{owner}:{}", b.name, w.id)
    }

    async fn spent(&self, key: &str) -> Result<u64, Unavailable> {
        match &self.redis {
            Some(pool) => self.spent_shared(pool, key).await,
            None => Ok(self.local.get(key).map_or(0, |v| v.spent.load(Ordering::Relaxed))),
        }
    }

    /// Admits the request while the owner's spend is under the budget.
    pub async fn admit(&self, b: &Budget, owner: &str, now: DateTime<Utc>) -> Result<Admitted, GwError> {
        let w = window(b.period, now);
        let key = Self::key(b, owner, &w);
        let limit = to_micro(b.usd);
        let spent = match self.spent(&key).await {
            Ok(s) => s,
            Err(e) => {
                self.metrics.budget_store_errors.inc();
                tracing::debug!(error = %e, budget = %b.name, "budget store unavailable; admitting");
                0
            }
        };
        let ttl_s = w.ends.map(|e| (e - now).num_seconds().max(1) as u64);
        let used = if limit == 0 { 1.0 } else { spent as f64 / limit as f64 };
        self.metrics
            .budget_used
            .with_label_values(&[b.name.as_str(), owner])
            .set(used);
        if spent >= limit {
            return Err(GwError::BudgetExceeded {
                budget: b.name.clone(),
                retry_after: ttl_s,
            });
        }
        Ok(Admitted {
            key,
            remaining_usd: (limit - spent) as f64 / 1e6,
            ttl_s,
        })
    }

    /// Adds a cost made outside a request (a batch that ended) to the owner's spend of
    /// the current period, spent or not: the tokens were used.
    pub async fn charge_to(&self, b: &Budget, owner: &str, now: DateTime<Utc>, usd: f64) {
        let w = window(b.period, now);
        let a = Admitted {
            key: Self::key(b, owner, &w),
            remaining_usd: 0.0,
            ttl_s: w.ends.map(|e| (e - now).num_seconds().max(1) as u64),
        };
        self.charge(&a, usd).await;
    }

    /// Adds a finished request's cost.
    pub async fn charge(&self, a: &Admitted, usd: f64) {
        let micro = to_micro(usd);
        if micro == 0 {
            return;
        }
        match &self.redis {
            Some(pool) => {
                let m = self.mirror(&a.key);
                m.ttl_s.store(a.ttl_s.unwrap_or(0), Ordering::Release);
                m.pending.fetch_add(micro, Ordering::AcqRel);
                self.schedule_write(pool, &a.key, m);
            }
            None => {
                if let Some(l) = self.local.get(&a.key) {
                    l.spent.fetch_add(micro, Ordering::Relaxed);
                    return;
                }
                // A new period for this owner (rare): the spends of periods that ended more
                // than a day ago go, so the map holds what is current, not every period ever.
                let now = std::time::Instant::now();
                self.local.retain(|_, l| l.expires.is_none_or(|e| e > now));
                let expires = a.ttl_s.map(|t| now + std::time::Duration::from_secs(t + 86_400));
                self.local
                    .entry(a.key.clone())
                    .or_insert_with(|| Local {
                        spent: AtomicU64::new(0),
                        expires,
                    })
                    .spent
                    .fetch_add(micro, Ordering::Relaxed);
            }
        }
    }

    /// The current spend of every budget for every owner whose keys use it, and for
    /// every owner of a JWT issuer's budget this instance charged in the current period.
    pub async fn report(&self, covered: Covered, now: DateTime<Utc>) -> Vec<Spend> {
        let Covered { keyed, issued } = covered;
        let mut pairs: Vec<(Arc<Budget>, String)> = Vec::new();
        let mut add = |b: &Arc<Budget>, owner: &str| {
            if !pairs.iter().any(|(pb, o)| pb.name == b.name && o == owner) {
                pairs.push((b.clone(), owner.to_owned()));
            }
        };
        for (b, owner) in keyed {
            add(&b, &owner);
        }
        for b in issued {
            let b = &b;
            // Keys are `aigw:budget:{budget}:{owner}:{period}`; owners may hold colons.
            let (head, tail) = (
                format!("aigw:budget:{}:", b.name),
                format!(":{}", window(b.period, now).id),
            );
            let keys = self
                .local
                .iter()
                .map(|e| e.key().clone())
                .chain(self.mirrors.iter().map(|e| e.key().clone()));
            for key in keys.collect::<Vec<_>>() {
                if let Some(owner) = key.strip_prefix(&head).and_then(|k| k.strip_suffix(&tail)) {
                    add(b, owner);
                }
            }
        }
        pairs.sort_by(|a, b| (&a.0.name, &a.1).cmp(&(&b.0.name, &b.1)));
        let mut out = Vec::with_capacity(pairs.len());
        for (b, owner) in pairs {
            let w = window(b.period, now);
            let spent = self.spent(&Self::key(&b, &owner, &w)).await.unwrap_or(0);
            let limit = to_micro(b.usd);
            out.push(Spend {
                budget: b.name.clone(),
                owner,
                period: w.id,
                limit_usd: b.usd,
                spent_usd: spent as f64 / 1e6,
                remaining_usd: limit.saturating_sub(spent) as f64 / 1e6,
                resets_at: w.ends.map(|e| e.to_rfc3339()),
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn periods_roll_over_in_utc() {
        let w = window(Period::Month, at("2026-12-31T23:59:59Z"));
        assert_eq!((w.id.as_str(), w.ends), ("2026-12", Some(at("2027-01-01T00:00:00Z"))));
        assert_eq!(window(Period::Month, at("2027-01-01T00:00:00Z")).id, "2027-01");
        let w = window(Period::Day, at("2026-02-28T12:00:00Z"));
        assert_eq!(
            (w.id.as_str(), w.ends),
            ("2026-02-28", Some(at("2026-03-01T00:00:00Z")))
        );
        // 2026-11-25 is a Wednesday of ISO week 48; the week ends on Monday the 30th.
        let w = window(Period::Week, at("2026-11-25T10:00:00Z"));
        assert_eq!((w.id.as_str(), w.ends), ("2026-W48", Some(at("2026-11-30T00:00:00Z"))));
        assert_eq!(window(Period::Week, at("2026-11-30T00:00:00Z")).id, "2026-W49");
        assert_eq!(window(Period::Total, at("2026-11-25T10:00:00Z")).ends, None);
    }

    #[tokio::test]
    async fn admits_under_the_budget_and_refuses_once_spent_until_the_next_period() {
        let budgets = Budgets::new(None, Arc::new(Metrics::new()));
        let b = Budget {
            name: "b".into(),
            usd: 1.0,
            period: Period::Day,
        };
        let day1 = at("2026-11-25T10:00:00Z");
        let a = budgets.admit(&b, "team", day1).await.unwrap();
        assert_eq!(a.remaining_usd, 1.0);
        budgets.charge(&a, 0.75).await;
        let a = budgets.admit(&b, "team", day1).await.unwrap();
        assert_eq!(a.remaining_usd, 0.25);
        // The request that crosses the line is charged in full.
        budgets.charge(&a, 0.5).await;
        match budgets.admit(&b, "team", day1).await {
            Err(GwError::BudgetExceeded { retry_after, .. }) => assert_eq!(retry_after, Some(14 * 3600)),
            other => panic!("{other:?}"),
        }
        assert!(budgets.admit(&b, "other-team", day1).await.is_ok());
        assert!(budgets.admit(&b, "team", at("2026-11-26T00:00:01Z")).await.is_ok());
    }

    #[tokio::test]
    async fn spends_of_ended_periods_are_pruned() {
        let budgets = Budgets::new(None, Arc::new(Metrics::new()));
        let b = Budget {
            name: "b".into(),
            usd: 1.0,
            period: Period::Day,
        };
        // A spend whose period (and the day after it) is over.
        let old = budgets.admit(&b, "team", at("2026-11-25T10:00:00Z")).await.unwrap();
        budgets.local.insert(
            old.key.clone(),
            Local {
                spent: AtomicU64::new(5),
                expires: Some(std::time::Instant::now()),
            },
        );
        let now = budgets.admit(&b, "team", Utc::now()).await.unwrap();
        budgets.charge(&now, 0.1).await;
        assert!(!budgets.local.contains_key(&old.key));
        assert_eq!(budgets.local.len(), 1);
    }
}
