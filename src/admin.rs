//! The admin listener: liveness and readiness for load balancers and orchestrators, and
//! Prometheus metrics.

use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use std::sync::atomic::Ordering;

use crate::state::AppState;

pub struct Admin {
    pub state: Arc<AppState>,
}

fn text(status: u16, body: &str) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .header("content-length", body.len())
        .body(body.as_bytes().to_vec())
        .unwrap_or_default()
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        match session.req_header().uri.path() {
            // Alive as long as this answers.
            "/healthz" => text(200, "ok\n"),
            // Ready while a config is loaded and the gateway is not draining, so a load
            // balancer stops sending new work as soon as SIGTERM arrives.
            "/readyz" if self.state.draining.load(Ordering::Acquire) => text(503, "draining\n"),
            "/readyz" => text(200, "ready\n"),
            "/metrics" if self.state.snapshot().observability.prometheus => {
                let body = self.state.metrics.render();
                Response::builder()
                    .status(200)
                    .header("content-type", prometheus::TEXT_FORMAT)
                    .header("content-length", body.len())
                    .body(body)
                    .unwrap_or_default()
            }
            _ => text(404, "not found\n"),
        }
    }
}
