//! Provider upstreams: the socket addresses behind a provider's base URL or fleet, kept in a
//! pingora-load-balancing `LoadBalancer` and resolved asynchronously in the background.
//!
//! `HttpPeer::new` with a hostname would resolve DNS synchronously on the request path;
//! instead every upstream is resolved by a `ServiceDiscovery` (tokio's resolver) when it is
//! created and then periodically, and the request path only picks a ready `SocketAddr`.
//! The registry keys upstreams by address list + TLS + SNI and hands out the same `Arc`
//! to every snapshot that names the same upstream, so resolved backends survive reloads.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};

use async_trait::async_trait;
use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::selection::RoundRobin;
use pingora::lb::{Backend, Backends, LoadBalancer};

/// How often DNS names behind upstreams are resolved again.
pub const REFRESH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamSpec {
    /// host (name or IP) and port of every endpoint.
    pub addrs: Vec<(String, u16)>,
    pub tls: bool,
    /// TLS server name and certificate name to verify.
    pub sni: String,
}

impl UpstreamSpec {
    fn key(&self) -> String {
        let addrs: Vec<String> = self.addrs.iter().map(|(h, p)| format!("{h}:{p}")).collect();
        format!(
            "{}|{}|{}",
            if self.tls { "tls" } else { "plain" },
            self.sni,
            addrs.join(",")
        )
    }
}

pub struct Upstream {
    pub spec: UpstreamSpec,
    lb: LoadBalancer<RoundRobin>,
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
        let discovery = DnsDiscovery {
            addrs: spec.addrs.clone(),
        };
        let lb = LoadBalancer::from_backends(Backends::new(Box::new(discovery)));
        Self { spec, lb }
    }

    /// A resolved address to connect to, or `None` while nothing has resolved yet.
    pub fn select(&self) -> Option<SocketAddr> {
        self.lb.select(b"", 256).and_then(|b| b.addr.as_inet().copied())
    }

    pub fn is_resolved(&self) -> bool {
        !self.lb.backends().get_backend().is_empty()
    }

    /// Resolves again; on failure the previous addresses stay in use.
    pub async fn refresh(&self) -> Result<(), String> {
        self.lb.update().await.map_err(|e| e.to_string())
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

    /// Re-resolves every live upstream; run periodically in the background.
    pub async fn refresh_all(&self) {
        for u in self.live() {
            if let Err(e) = u.refresh().await {
                tracing::warn!(upstream = %u.spec.sni, error = %e, "upstream re-resolution failed; keeping previous addresses");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(port: u16) -> UpstreamSpec {
        UpstreamSpec {
            addrs: vec![("127.0.0.1".into(), port)],
            tls: false,
            sni: "127.0.0.1".into(),
        }
    }

    #[tokio::test]
    async fn same_spec_shares_one_upstream_and_resolves() {
        let reg = UpstreamRegistry::default();
        let a = reg.get_or_create(spec(1234));
        let b = reg.get_or_create(spec(1234));
        assert!(Arc::ptr_eq(&a, &b));
        assert!(a.select().is_none());
        reg.resolve_new().await;
        assert_eq!(a.select().unwrap(), "127.0.0.1:1234".parse().unwrap());
        drop((a, b));
        assert!(reg.live().is_empty());
    }

    #[tokio::test]
    async fn localhost_name_resolves_without_blocking_the_caller() {
        let reg = UpstreamRegistry::default();
        let u = reg.get_or_create(UpstreamSpec {
            addrs: vec![("localhost".into(), 80)],
            tls: false,
            sni: "localhost".into(),
        });
        reg.resolve_new().await;
        assert!(u.select().is_some());
    }
}
