//! The `ProxyHttp` implementation: each phase is a few lines that hand the work to one
//! concern. Read top to bottom, this is the life of a request.

pub mod ctx;
pub mod request;
pub mod response;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorType};

use crate::error::GwError;
use crate::state::AppState;
pub use ctx::Ctx;
use request::Admission;

pub struct Gateway {
    pub state: Arc<AppState>,
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::new()
    }

    /// Auth, body, model resolution, allowlist: answers locally or picks the target.
    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> pingora::Result<bool> {
        ctx.inflight = Some(self.state.enter());
        ctx.request_id = request::request_id(session.req_header());
        match request::admit(&self.state, session, ctx).await {
            Ok(Admission::Proxy) => Ok(false),
            Ok(Admission::Answered) => Ok(true),
            Err(e) => {
                if let Err(we) = e.respond(session, ctx.dialect, &ctx.request_id).await {
                    tracing::debug!(error = %we, "could not write the error response");
                }
                ctx.error = Some(e);
                Ok(true)
            }
        }
    }

    /// Where this attempt goes: a resolved address of the target provider.
    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> pingora::Result<Box<HttpPeer>> {
        let Some(target) = &ctx.target else {
            return Err(Error::explain(ErrorType::InternalError, "no target chosen"));
        };
        let p = &target.provider;
        let Some(addr) = p.upstream.select() else {
            // Nothing resolved (yet): the only target is unhealthy.
            ctx.error = Some(GwError::NoHealthyTarget(format!(
                "The provider '{}' has no reachable address (its name does not resolve).",
                p.name
            )));
            return Err(Error::explain(
                ErrorType::ConnectNoRoute,
                "provider address not resolved",
            ));
        };
        let mut peer = HttpPeer::new(addr, p.base.tls, p.base.host.clone());
        let o = &mut peer.options;
        o.connection_timeout = Some(p.connect_timeout);
        o.total_connection_timeout = Some(p.connect_timeout);
        // Pingora has one per-read timeout: it bounds the wait for the response header and
        // every gap between body chunks.
        o.read_timeout = Some(p.first_byte_timeout);
        o.write_timeout = Some(p.first_byte_timeout);
        // How long an idle keep-alive connection to the provider stays pooled.
        o.idle_timeout = Some(p.idle_timeout);
        o.verify_cert = true;
        o.verify_hostname = true;
        Ok(Box::new(peer))
    }

    /// The provider's path, host and credential replace the caller's.
    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        request::prepare_upstream(req, ctx)
    }

    /// The body was read (and rewritten) in `request_filter`; hand it over in one piece.
    /// Relies on the vendored pingora-proxy patch (vendor/README.md).
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        if end_of_stream {
            *body = Some(ctx.upstream_body.clone());
        } else {
            *body = None;
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        response::on_upstream_header(resp, ctx)
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        response::on_response_header(resp, ctx)
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> pingora::Result<Option<std::time::Duration>> {
        response::on_body(body, end_of_stream, ctx);
        Ok(None)
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let error_code = response::on_failure(session, e, ctx).await;
        FailToProxy {
            error_code,
            can_reuse_downstream: false,
        }
    }

    /// Failures the gateway answered itself are logged by it once, without Pingora's copy.
    fn suppress_error_log(&self, _session: &Session, ctx: &Ctx, _e: &Error) -> bool {
        ctx.error.is_some()
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        crate::telemetry::log::access(session, ctx);
    }
}
