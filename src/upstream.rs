//! Provider upstreams: the replicas behind a provider's base URL or `fleet`, kept in a
//! pingora-load-balancing `LoadBalancer`, resolved asynchronously and health-checked in
//! the background.
//!
//! `HttpPeer::new` with a hostname would resolve DNS synchronously on the request path;
//! instead every upstream is resolved by a `ServiceDiscovery` (tokio's resolver) when it is
//! created and then periodically, and the request path only picks a ready `SocketAddr`.
//! The registry keys upstreams by their whole spec and hands the same `Arc` to every
//! snapshot that names the same upstream, so addresses, health and ejections survive
//! reloads.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::http::RequestHeader;
use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::health_check::HttpHealthCheck;
use pingora::lb::selection::consistent::KetamaHashing;
use pingora::lb::selection::{Random, RoundRobin};
use pingora::lb::{Backend, Backends, LoadBalancer};

use crate::raw::{Balance, HashOn, HealthCheck};

/// This thread's upstream pool: Pingora keys pooled connections by peer and `group_key`,
/// and this number is the calling thread's own (assigned on its first request).
pub fn pool_group() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    thread_local! {
        static GROUP: u64 = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    GROUP.with(|g| *g)
}

/// How often DNS names behind upstreams are resolved again.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(30);
/// How long a replica that refused a connection is skipped (passive ejection).
pub const EJECT_FOR: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamSpec {
    /// host (name or IP) and port of every endpoint.
    pub addrs: Vec<(String, u16)>,
    pub tls: bool,
    /// TLS server name, certificate name to verify, and the health checks' Host.
    pub sni: String,
    pub balance: Balance,
    pub hash_on: HashOn,
    pub health: Option<HealthCheck>,
}

impl UpstreamSpec {
    /// A single endpoint with default balancing, no health check.
    pub fn single(host: &str, port: u16, tls: bool) -> Self {
        Self {
            addrs: vec![(host.to_owned(), port)],
            tls,
            sni: host.to_owned(),
            balance: Balance::RoundRobin,
            hash_on: HashOn::Prefix,
            health: None,
        }
    }

    fn key(&self) -> String {
        let addrs: Vec<String> = self.addrs.iter().map(|(h, p)| format!("{h}:{p}")).collect();
        format!(
            "{}|{}|{}|{:?}|{:?}",
            if self.tls { "tls" } else { "plain" },
            self.sni,
            addrs.join(","),
            self.balance,
            self.health
        )
    }
}

/// The selector behind a balancing strategy. `least_busy` selects itself from the
/// round-robin set's members (pingora-load-balancing has no least-connections selector).
enum Lb {
    RoundRobin(LoadBalancer<RoundRobin>),
    Random(LoadBalancer<Random>),
    Hash(LoadBalancer<KetamaHashing>),
}

macro_rules! with_lb {
    ($lb:expr, $l:ident => $e:expr) => {
        match $lb {
            Lb::RoundRobin($l) => $e,
            Lb::Random($l) => $e,
            Lb::Hash($l) => $e,
        }
    };
}

/// A replica picked for one attempt. For `least_busy` it counts as busy until dropped.
pub struct Pick {
    pub addr: SocketAddr,
    _lease: Option<Lease>,
}

struct Lease(Arc<AtomicUsize>);

impl Drop for Lease {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

pub struct Upstream {
    pub spec: UpstreamSpec,
    lb: Lb,
    ejected: RwLock<HashMap<SocketAddr, Instant>>,
    /// Entries in `ejected`, read without the lock on the hot path.
    ejected_len: AtomicUsize,
    /// In-flight attempts per replica, for `least_busy`.
    busy: Mutex<HashMap<SocketAddr, Arc<AtomicUsize>>>,
    rr: AtomicUsize,
    next_dns: Mutex<Instant>,
    next_health: Mutex<Instant>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    fn new(spec: UpstreamSpec) -> Self {
        let mut backends = Backends::new(Box::new(DnsDiscovery {
            addrs: spec.addrs.clone(),
        }));
        if let Some(h) = &spec.health {
            let mut hc = HttpHealthCheck::new(&spec.sni, spec.tls);
            if let Ok(mut req) = RequestHeader::build("GET", h.path.as_bytes(), None) {
                let _ = req.append_header("Host", spec.sni.as_str());
                hc.req = req;
            }
            hc.consecutive_success = h.healthy_after as usize;
            hc.consecutive_failure = h.unhealthy_after as usize;
            backends.set_health_check(Box::new(hc));
        }
        let lb = match spec.balance {
            Balance::Random => Lb::Random(LoadBalancer::from_backends(backends)),
            Balance::ConsistentHash => Lb::Hash(LoadBalancer::from_backends(backends)),
            Balance::RoundRobin | Balance::LeastBusy => Lb::RoundRobin(LoadBalancer::from_backends(backends)),
        };
        let now = Instant::now();
        Self {
            spec,
            lb,
            ejected: RwLock::default(),
            ejected_len: AtomicUsize::new(0),
            busy: Mutex::default(),
            rr: AtomicUsize::new(0),
            next_dns: Mutex::new(now + REFRESH_INTERVAL),
            next_health: Mutex::new(now),
        }
    }

    /// Every resolved replica: whether health checks call it healthy, and until when it
    /// is ejected after failures (for the status view).
    pub fn replicas(&self, now: Instant) -> Vec<(SocketAddr, bool, Option<Instant>)> {
        let ejected = self.ejected.read().unwrap_or_else(|p| p.into_inner()).clone();
        with_lb!(&self.lb, lb => {
            let b = lb.backends();
            b.get_backend()
                .iter()
                .filter_map(|be| {
                    let addr = be.addr.as_inet().copied()?;
                    let until = ejected.get(&addr).copied().filter(|t| *t > now);
                    Some((addr, b.ready(be), until))
                })
                .collect()
        })
    }

    fn is_ejected(&self, addr: &SocketAddr, now: Instant) -> bool {
        if self.ejected_len.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let map = self.ejected.read().unwrap_or_else(|p| p.into_inner());
        map.get(addr).is_some_and(|until| *until > now)
    }

    /// A replica to send this attempt to: healthy and not ejected. `key` steers
    /// `consistent_hash`. When every replica is ejected, ejection is ignored rather than
    /// refusing traffic that active health checks still call healthy.
    pub fn select(&self, key: &[u8]) -> Option<Pick> {
        let now = Instant::now();
        if self.spec.balance == Balance::LeastBusy {
            return self.least_busy(now);
        }
        let pick = |skip_ejected: bool| {
            with_lb!(&self.lb, lb => lb.select_with(key, 256, |b, healthy| {
                healthy && !(skip_ejected && b.addr.as_inet().is_some_and(|a| self.is_ejected(a, now)))
            }))
        };
        let b = pick(true).or_else(|| pick(false))?;
        Some(Pick {
            addr: *b.addr.as_inet()?,
            _lease: None,
        })
    }

    fn least_busy(&self, now: Instant) -> Option<Pick> {
        let Lb::RoundRobin(lb) = &self.lb else { return None };
        let set = lb.backends().get_backend();
        let healthy: Vec<SocketAddr> = set
            .iter()
            .filter(|b| lb.backends().ready(b))
            .filter_map(|b| b.addr.as_inet().copied())
            .collect();
        let usable: Vec<SocketAddr> = healthy.iter().copied().filter(|a| !self.is_ejected(a, now)).collect();
        let pool = if usable.is_empty() { healthy } else { usable };
        if pool.is_empty() {
            return None;
        }
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        // Start the scan at a rotating position so ties spread evenly.
        let start = self.rr.fetch_add(1, Ordering::Relaxed);
        let (addr, counter) = (0..pool.len())
            .map(|i| pool[(start + i) % pool.len()])
            .map(|a| (a, busy.entry(a).or_default().clone()))
            .min_by_key(|(_, c)| c.load(Ordering::Acquire))?;
        drop(busy);
        counter.fetch_add(1, Ordering::AcqRel);
        Some(Pick {
            addr,
            _lease: Some(Lease(counter)),
        })
    }

    /// Skips `addr` for [`EJECT_FOR`]; returns whether another replica is left to try.
    /// An upstream with a single address has nothing to eject it in favour of.
    pub fn eject(&self, addr: SocketAddr) -> bool {
        let now = Instant::now();
        let set = with_lb!(&self.lb, lb => lb.backends().get_backend());
        if set.len() < 2 {
            return false;
        }
        {
            let mut map = self.ejected.write().unwrap_or_else(|p| p.into_inner());
            map.retain(|_, t| *t > now);
            map.insert(addr, now + EJECT_FOR);
            self.ejected_len.store(map.len(), Ordering::Relaxed);
        }
        tracing::warn!(upstream = %self.spec.sni, replica = %addr, "replica failed; ejected for {}s", EJECT_FOR.as_secs());
        let ready = |b: &Backend| with_lb!(&self.lb, lb => lb.backends().ready(b));
        set.iter()
            .any(|b| ready(b) && b.addr.as_inet().is_some_and(|a| !self.is_ejected(a, now)))
    }

    pub fn is_resolved(&self) -> bool {
        with_lb!(&self.lb, lb => !lb.backends().get_backend().is_empty())
    }

    /// Resolves again; on failure the previous addresses stay in use.
    pub async fn refresh(&self) -> Result<(), String> {
        with_lb!(&self.lb, lb => lb.update().await.map_err(|e| e.to_string()))
    }

    /// Background duties that are due: DNS every [`REFRESH_INTERVAL`], health checks
    /// every `interval_s`.
    async fn tick(&self, now: Instant) {
        let dns_due = {
            let mut next = self.next_dns.lock().unwrap_or_else(|p| p.into_inner());
            let due = now >= *next;
            if due {
                *next = now + REFRESH_INTERVAL;
            }
            due
        };
        if dns_due {
            if let Err(e) = self.refresh().await {
                tracing::warn!(upstream = %self.spec.sni, error = %e, "re-resolution failed; keeping previous addresses");
            }
        }
        let Some(h) = &self.spec.health else { return };
        let health_due = {
            let mut next = self.next_health.lock().unwrap_or_else(|p| p.into_inner());
            let due = now >= *next;
            if due {
                *next = now + Duration::from_secs(h.interval_s);
            }
            due
        };
        if health_due {
            with_lb!(&self.lb, lb => lb.backends().run_health_check(true).await);
        }
    }
}

/// Resolves every `host:port` with tokio's resolver (a blocking-pool thread, never a
/// request thread). Succeeds when at least one endpoint resolves.
struct DnsDiscovery {
    addrs: Vec<(String, u16)>,
}

#[async_trait]
impl ServiceDiscovery for DnsDiscovery {
    async fn discover(&self) -> pingora::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        let mut set = BTreeSet::new();
        let mut last_err = None;
        for (host, port) in &self.addrs {
            match tokio::net::lookup_host((host.as_str(), *port)).await {
                Ok(addrs) => {
                    for a in addrs {
                        if let Ok(b) = Backend::new(&a.to_string()) {
                            set.insert(b);
                        }
                    }
                }
                Err(e) => last_err = Some(format!("{host}:{port}: {e}")),
            }
        }
        if set.is_empty() {
            let why = last_err.unwrap_or_else(|| "no addresses".into());
            return Err(pingora::Error::explain(
                pingora::ErrorType::ConnectNoRoute,
                format!("cannot resolve {why}"),
            ));
        }
        Ok((set, HashMap::new()))
    }
}

/// Upstreams by key, shared across snapshots. Entries die with the last snapshot using them.
#[derive(Default)]
pub struct UpstreamRegistry {
    map: Mutex<HashMap<String, Weak<Upstream>>>,
}

impl UpstreamRegistry {
    pub fn get_or_create(&self, spec: UpstreamSpec) -> Arc<Upstream> {
        let key = spec.key();
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(u) = map.get(&key).and_then(Weak::upgrade) {
            return u;
        }
        let u = Arc::new(Upstream::new(spec));
        map.insert(key, Arc::downgrade(&u));
        u
    }

    /// Every upstream still used by some snapshot; forgets the rest.
    pub fn live(&self) -> Vec<Arc<Upstream>> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, w| w.strong_count() > 0);
        map.values().filter_map(Weak::upgrade).collect()
    }

    /// Resolves every upstream that has no address yet (new ones after a load).
    pub async fn resolve_new(&self) {
        let pending: Vec<_> = self.live().into_iter().filter(|u| !u.is_resolved()).collect();
        for u in pending {
            if let Err(e) = u.refresh().await {
                tracing::warn!(upstream = %u.spec.sni, error = %e, "upstream address not resolved yet; retrying in the background");
            }
        }
    }

    /// Runs what is due (DNS refresh, health checks) on every live upstream.
    pub async fn tick(&self) {
        let now = Instant::now();
        for u in self.live() {
            u.tick(now).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(ports: &[u16], balance: Balance) -> UpstreamSpec {
        UpstreamSpec {
            addrs: ports.iter().map(|p| ("127.0.0.1".to_owned(), *p)).collect(),
            balance,
            ..UpstreamSpec::single("127.0.0.1", 0, false)
        }
    }

    #[tokio::test]
    async fn same_spec_shares_one_upstream_and_resolves() {
        let reg = UpstreamRegistry::default();
        let a = reg.get_or_create(spec(&[1234], Balance::RoundRobin));
        let b = reg.get_or_create(spec(&[1234], Balance::RoundRobin));
        assert!(Arc::ptr_eq(&a, &b));
        assert!(a.select(b"").is_none());
        reg.resolve_new().await;
        assert_eq!(a.select(b"").unwrap().addr, "127.0.0.1:1234".parse().unwrap());
        drop((a, b));
        assert!(reg.live().is_empty());
    }

    #[tokio::test]
    async fn localhost_name_resolves_without_blocking_the_caller() {
        let reg = UpstreamRegistry::default();
        let u = reg.get_or_create(UpstreamSpec::single("localhost", 80, false));
        reg.resolve_new().await;
        assert!(u.select(b"").is_some());
    }

    #[tokio::test]
    async fn ejected_replicas_are_skipped_but_never_all() {
        let reg = UpstreamRegistry::default();
        let u = reg.get_or_create(spec(&[1, 2, 3], Balance::RoundRobin));
        reg.resolve_new().await;
        let two: SocketAddr = "127.0.0.1:2".parse().unwrap();
        assert!(u.eject(two), "two replicas left");
        for _ in 0..30 {
            assert_ne!(u.select(b"").unwrap().addr, two);
        }
        assert!(u.eject("127.0.0.1:1".parse().unwrap()));
        assert!(!u.eject("127.0.0.1:3".parse().unwrap()), "nothing left");
        assert!(u.select(b"").is_some(), "all ejected: ejection is ignored");
    }

    #[tokio::test]
    async fn consistent_hash_is_sticky_and_respreads_only_the_ejected_keys() {
        let reg = UpstreamRegistry::default();
        let u = reg.get_or_create(spec(&[1, 2, 3], Balance::ConsistentHash));
        reg.resolve_new().await;
        let keys: Vec<Vec<u8>> = (0..300).map(|i| format!("conversation-{i}").into_bytes()).collect();
        let before: Vec<SocketAddr> = keys.iter().map(|k| u.select(k).unwrap().addr).collect();
        let again: Vec<SocketAddr> = keys.iter().map(|k| u.select(k).unwrap().addr).collect();
        assert_eq!(before, again, "same key, same replica");
        let gone: SocketAddr = "127.0.0.1:2".parse().unwrap();
        assert!(
            before.iter().filter(|a| **a == gone).count() > 50,
            "keys spread over replicas"
        );
        u.eject(gone);
        for (k, b) in keys.iter().zip(&before) {
            let now = u.select(k).unwrap().addr;
            if *b == gone {
                assert_ne!(now, gone);
            } else {
                assert_eq!(now, *b, "keys of healthy replicas stay put");
            }
        }
    }

    #[tokio::test]
    async fn least_busy_prefers_the_idlest_replica() {
        let reg = UpstreamRegistry::default();
        let u = reg.get_or_create(spec(&[1, 2], Balance::LeastBusy));
        reg.resolve_new().await;
        let first = u.select(b"").unwrap();
        // While the first is busy, the other replica is chosen every time.
        for _ in 0..5 {
            let p = u.select(b"").unwrap();
            assert_ne!(p.addr, first.addr);
        }
        drop(first);
    }
}
