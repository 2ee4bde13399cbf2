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
//! that fails admits the request, like rate limits.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc};
use dashmap::DashMap;

use crate::config::raw::{Budget, Period};
use crate::error::GwError;
use crate::redis_pool::{RedisPool, Unavailable};
use crate::telemetry::metrics::Metrics;

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

/// One (budget, owner, period) spend kept in this process.
struct Local {
    spent: AtomicU64,
    /// When it may go (a day past its period's end, as in Redis); `None`: `total`.
    expires: Option<std::time::Instant>,
}

pub struct Budgets {
    local: DashMap<String, Local>,
    redis: Option<Arc<RedisPool>>,
    metrics: Arc<Metrics>,
}

impl Budgets {
    pub fn new(redis: Option<Arc<RedisPool>>, metrics: Arc<Metrics>) -> Self {
        Self {
            local: DashMap::new(),
            redis,
            metrics,
        }
    }

    fn key(b: &Budget, owner: &str, w: &Window) -> String {
        format!("aigw:budget:{}:{owner}:{}", b.name, w.id)
    }

    async fn spent(&self, key: &str) -> Result<u64, Unavailable> {
        match &self.redis {
            Some(pool) => {
                let k = key.to_owned();
                let v: Option<u64> = pool
                    .call(|mut c| async move { redis::cmd("GET").arg(&k).query_async(&mut c).await })
                    .await?;
                Ok(v.unwrap_or(0))
            }
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

    /// Adds a finished request's cost.
    pub async fn charge(&self, a: &Admitted, usd: f64) {
        let micro = to_micro(usd);
        if micro == 0 {
            return;
        }
        match &self.redis {
            Some(pool) => {
                let (k, ttl) = (a.key.clone(), a.ttl_s);
                let r = pool
                    .call(|mut c| async move {
                        let mut pipe = redis::pipe();
                        pipe.cmd("INCRBY").arg(&k).arg(micro).ignore();
                        // Kept a day past the period's end, for `GET /admin/v1/spend`.
                        if let Some(t) = ttl {
                            pipe.cmd("EXPIRE").arg(&k).arg(t + 86_400).ignore();
                        }
                        pipe.exec_async(&mut c).await
                    })
                    .await;
                if let Err(e) = r {
                    self.metrics.budget_store_errors.inc();
                    tracing::debug!(error = %e, "could not charge a budget");
                }
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

    /// The current spend of every budget for every owner whose keys use it.
    pub async fn report(&self, snap: &crate::config::Snapshot, now: DateTime<Utc>) -> Vec<Spend> {
        let mut pairs: Vec<(Arc<Budget>, String)> = Vec::new();
        for k in snap.keys.entries() {
            if let Some(b) = &k.budget {
                if !pairs.iter().any(|(pb, o)| pb.name == b.name && *o == k.owner) {
                    pairs.push((b.clone(), k.owner.clone()));
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
