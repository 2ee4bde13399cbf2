//! The one Redis connection pool of a process (`server.redis`), shared by the rate limit
//! store and the response cache.
//!
//! A small pool of redis-rs `ConnectionManager`s (each one multiplexed and reconnecting on
//! its own), created lazily inside the runtime that drives them, so a Redis that is down at
//! start-up delays nothing. Every call has a deadline; after a failure the pool backs off
//! for [`BACKOFF`] and fails at once, so an unreachable Redis costs requests nothing.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// How long the pool stops trying after a failure.
pub const BACKOFF: Duration = Duration::from_secs(1);

/// Redis could not answer (down, slow, backing off, or an error reply).
#[derive(Debug, Clone)]
pub struct Unavailable(pub String);

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

pub struct RedisPool {
    client: redis::Client,
    size: usize,
    pub timeout: Duration,
    pool: OnceLock<Vec<ConnectionManager>>,
    next: AtomicUsize,
    epoch: Instant,
    /// Until when (ms since `epoch`) the pool does not try Redis.
    down_until_ms: AtomicU64,
}

impl RedisPool {
    /// Validates the URL; connects on first use.
    pub fn new(url: &str, size: usize, timeout: Duration) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| format!("invalid redis url: {e}"))?;
        Ok(Self {
            client,
            size: size.max(1),
            timeout,
            pool: OnceLock::new(),
            next: AtomicUsize::new(0),
            epoch: Instant::now(),
            down_until_ms: AtomicU64::new(0),
        })
    }

    /// The next connection of the pool (they are multiplexed: cloning one is cheap).
    pub fn conn(&self) -> Result<ConnectionManager, Unavailable> {
        let pool = self.pool.get_or_init(|| {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(self.timeout))
                .set_response_timeout(Some(self.timeout))
                .set_number_of_retries(1)
                .set_min_delay(Duration::from_millis(20))
                .set_max_delay(Duration::from_millis(200));
            (0..self.size)
                .filter_map(|_| ConnectionManager::new_lazy_with_config(self.client.clone(), config.clone()).ok())
                .collect()
        });
        if pool.is_empty() {
            return Err(Unavailable("cannot create redis connections".into()));
        }
        Ok(pool[self.next.fetch_add(1, Ordering::Relaxed) % pool.len()].clone())
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Runs one call with the deadline and the back-off.
    pub async fn call<T, F>(&self, f: impl FnOnce(ConnectionManager) -> F) -> Result<T, Unavailable>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        if self.now_ms() < self.down_until_ms.load(Ordering::Relaxed) {
            return Err(Unavailable("redis unavailable; backing off".into()));
        }
        let result = match tokio::time::timeout(self.timeout, f(self.conn()?)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(Unavailable(format!("redis: {e}"))),
            Err(_) => Err(Unavailable(format!("redis did not answer within {:?}", self.timeout))),
        };
        if result.is_err() {
            self.down_until_ms
                .store(self.now_ms() + BACKOFF.as_millis() as u64, Ordering::Relaxed);
        }
        result
    }
}
