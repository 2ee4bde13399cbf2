//! The admin listener: liveness and readiness for load balancers and orchestrators,
//! Prometheus metrics, the admin API, and the console (`/ui/`).

pub mod api;
pub mod status;
mod ui;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use std::sync::atomic::Ordering;

use crate::state::AppState;

pub struct Admin {
    pub state: Arc<AppState>,
    pub api: api::Api,
}

fn text(status: u16, body: &str) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .header("content-length", body.len())
        .body(body.as_bytes().to_vec())
        .unwrap_or_default()
}

impl Admin {
    /// Every proxy listener accepts connections (checked by connecting to it until the
    /// first time they all do; Pingora does not close a listener on its own later).
    async fn listeners_up(&self) -> Result<(), String> {
        if self.state.listeners_up.load(Ordering::Acquire) {
            return Ok(());
        }
        let snap = self.state.snapshot();
        let addrs = snap
            .server
            .listen
            .iter()
            .chain(snap.server.tls.iter().map(|t| &t.listen));
        for addr in addrs {
            let probe = local_probe(addr);
            let connect = tokio::net::TcpStream::connect(probe.as_str());
            match tokio::time::timeout(Duration::from_millis(500), connect).await {
                Ok(Ok(_)) => {}
                _ => return Err(addr.clone()),
            }
        }
        self.state.listeners_up.store(true, Ordering::Release);
        Ok(())
    }
}

/// Where to reach a listener from this host: a wildcard address is probed on loopback.
pub fn local_probe(addr: &str) -> String {
    match addr.rsplit_once(':') {
        Some(("0.0.0.0", port)) => format!("127.0.0.1:{port}"),
        Some(("[::]", port)) => format!("[::1]:{port}"),
        _ => addr.to_owned(),
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        match session.req_header().uri.path() {
            // Alive as long as this answers.
            "/healthz" => text(200, "ok\n"),
            // Ready once a config is loaded (always, past start-up) and every proxy
            // listener accepts connections, until draining starts: a load balancer stops
            // sending new work as soon as SIGTERM arrives.
            "/readyz" if self.state.draining.load(Ordering::Acquire) => text(503, "draining\n"),
            "/readyz" => match self.listeners_up().await {
                Ok(()) => text(200, "ready\n"),
                Err(addr) => text(503, &format!("starting: {addr} is not accepting connections yet\n")),
            },
            "/metrics" if self.state.snapshot().observability.prometheus => {
                let routes = status::routes(&self.state.snapshot(), &self.state.cooldowns, std::time::Instant::now());
                self.state
                    .metrics
                    .set_routes(routes.iter().filter(|r| r.multi).map(|r| {
                        let cooling = r.targets.iter().filter(|t| t.cooldown_s.is_some()).count();
                        (r.model.as_str(), r.targets.len(), cooling)
                    }));
                let body = self.state.metrics.render();
                Response::builder()
                    .status(200)
                    .header("content-type", prometheus::TEXT_FORMAT)
                    .header("content-length", body.len())
                    .body(body)
                    .unwrap_or_default()
            }
            p if p.starts_with("/admin/v1/") => self.api.handle(&self.state, session).await,
            p if p == "/ui" || p.starts_with("/ui/") => ui::asset(p).unwrap_or_else(|| text(404, "not found\n")),
            _ => text(404, "not found\n"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_are_probed_on_loopback() {
        assert_eq!(local_probe("0.0.0.0:8080"), "127.0.0.1:8080");
        assert_eq!(local_probe("[::]:8443"), "[::1]:8443");
        assert_eq!(local_probe("10.0.0.1:80"), "10.0.0.1:80");
    }
}
