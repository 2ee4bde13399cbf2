//! The floor of what Pingora itself costs: a reverse proxy with no gateway logic (no
//! auth, no JSON, no limits, no access log), built with the same Pingora, allocator,
//! release profile and thread count as aigw. `make loadtest` runs it beside nginx and
//! the gateway, so a row splits the gateway's cost into Pingora's and aigw's own.
//!
//! Usage: `bare_proxy LISTEN UPSTREAM [THREADS [per-core]]`, e.g.
//! `bare_proxy 127.0.0.1:18084 127.0.0.1:18000 2`. `per-core` runs it as aigw runs with
//! `server.work_stealing: false`: one runtime per thread, each accepting its own connections
//! and pooling its own upstream connections (vendor/README.md, 0012).

use async_trait::async_trait;
use pingora::prelude::HttpPeer;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::configuration::ServerConf;
use pingora::server::Server;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bare {
    upstream: String,
    per_core: bool,
}

/// The calling thread's own pool key (as `aigw::upstream::pool_group`).
fn pool_group() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    thread_local! {
        static GROUP: u64 = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    GROUP.with(|g| *g)
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> pingora::Result<Box<HttpPeer>> {
        let mut peer = HttpPeer::new(self.upstream.as_str(), false, String::new());
        if self.per_core {
            peer.group_key = pool_group();
        }
        Ok(Box::new(peer))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(listen), Some(upstream)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: bare_proxy LISTEN UPSTREAM [THREADS [per-core]]");
        std::process::exit(2);
    };
    let threads = match args.get(3).and_then(|t| t.parse().ok()) {
        Some(0) | None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        Some(n) => n,
    };
    let per_core = args.get(4).is_some_and(|m| m == "per-core");
    // Exits at once on SIGTERM, so the load kit's next run finds its port free.
    let conf = ServerConf {
        threads,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(0),
        work_stealing: !per_core,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = pingora::proxy::http_proxy_service(
        &server.configuration,
        Bare {
            upstream: upstream.clone(),
            per_core,
        },
    );
    proxy.add_tcp(listen);
    server.add_service(proxy);
    server.run_forever();
}
