//! The `ProxyHttp` implementation: each phase is a few lines that hand the work to one
//! concern. Read top to bottom, this is the life of a request.

pub mod ctx;
pub mod realtime;
pub mod request;
pub mod response;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::protocols::ALPN;

use crate::raw::Http2;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType, RetryType};

use crate::error::GwError;
use crate::route::plan::{Failure, Next};
use crate::state::AppState;
pub use ctx::Ctx;
use request::Admission;

pub struct Gateway {
    pub state: Arc<AppState>,
    /// One upstream pool per thread (`server.work_stealing: false`): a thread reuses only
    /// the provider connections it opened, whose sockets its own reactor watches.
    pub pool_per_thread: bool,
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
        ctx.request_id = crate::api::request_id(session.req_header());
        match request::admit(&self.state, session, ctx).await {
            Ok(Admission::Proxy) => Ok(false),
            Ok(Admission::Answered) => Ok(true),
            Err(e) => {
                if let Err(we) = e.respond(session, ctx.dialect, &ctx.request_id).await {
                    tracing::debug!(error = %we, "could not write the error response");
                }
                // Not after a body that failed to arrive: that caller is not uploading.
                if !matches!(e, GwError::InvalidRequest(_)) {
                    request::linger(session).await;
                }
                ctx.error = Some(e);
                Ok(true)
            }
        }
    }

    /// Where this attempt goes: the next target in failover order, at a resolved address
    /// of its provider. A target whose provider has no address yet counts as a failed
    /// connection and the next one is tried.
    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> pingora::Result<Box<HttpPeer>> {
        let addr = loop {
            if let Err(e) = request::begin_attempt(&self.state, ctx).await {
                ctx.error = Some(e);
                return Err(Error::explain(ErrorType::ConnectNoRoute, "no target to try"));
            }
            let Some(target) = &ctx.target else {
                return Err(Error::explain(ErrorType::InternalError, "no target chosen"));
            };
            let key = request::hash_key(ctx, target);
            if let Some(pick) = target.provider.upstream.select(&key) {
                let addr = pick.addr;
                ctx.pick = Some(pick);
                match request::obtain_token(ctx).await {
                    Ok(()) => break addr,
                    // Like a refused connection: the next target, or this error.
                    Err(e) => {
                        ctx.pick = None;
                        if request::attempt_failed(&self.state, ctx, Failure::Connect, None) == Next::Stop {
                            ctx.error = Some(e);
                            return Err(Error::explain(ErrorType::ConnectNoRoute, "no provider credential"));
                        }
                        continue;
                    }
                }
            }
            let provider = target.provider.name.clone();
            if request::attempt_failed(&self.state, ctx, Failure::Connect, None) == Next::Stop {
                // Nothing resolved (yet): the last target left is unhealthy.
                ctx.error = Some(GwError::NoHealthyTarget {
                    message: format!("The provider '{provider}' has no reachable address (its name does not resolve)."),
                    retry_after: None,
                });
                return Err(Error::explain(
                    ErrorType::ConnectNoRoute,
                    "provider address not resolved",
                ));
            }
        };
        let Some(target) = &ctx.target else {
            return Err(Error::explain(ErrorType::InternalError, "no target chosen"));
        };
        let p = &target.provider;
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
        o.alpn = match (p.http2, p.base.tls) {
            (Http2::Never, _) | (Http2::Auto, false) => ALPN::H1,
            (Http2::Auto, true) => ALPN::H2H1,
            (Http2::Always, _) => ALPN::H2,
        };
        // Many concurrent requests share one HTTP/2 connection.
        o.max_h2_streams = 100;
        if self.pool_per_thread {
            peer.group_key = crate::upstream::pool_group();
        }
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

    fn hold_upstream_response(&self, _session: &Session, resp: &ResponseHeader, ctx: &mut Ctx) -> Option<usize> {
        response::hold_error(resp, ctx)
    }

    fn upstream_response_held(
        &self,
        _session: &mut Session,
        tasks: &[pingora::protocols::http::HttpTask],
        ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        response::on_held_error(&self.state, tasks, ctx)
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        response::on_upstream_header(&self.state, resp, ctx)
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        let http10 = session.req_header().version == http::Version::HTTP_10;
        response::on_response_header(resp, ctx, http10)
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> pingora::Result<Option<std::time::Duration>> {
        match response::on_body(&self.state, body, end_of_stream, ctx) {
            Ok(()) => Ok(None),
            // Ends the response; `fail_to_proxy` closes the stream with the error event.
            Err(e) => Err(Error::explain(ErrorType::InternalError, e.to_string())),
        }
    }

    /// Work on a body chunk that waits on another service (vendor patch 0013): asked per
    /// chunk, true only for a whole answer the guardrail services must judge.
    fn response_body_async(&self, ctx: &Ctx) -> bool {
        response::wants_async(ctx)
    }

    async fn response_body_async_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        match response::on_body_async(&self.state, body, ctx).await {
            Ok(()) => Ok(()),
            // Ends the response; `fail_to_proxy` closes the stream with the error event.
            Err(e) => Err(Error::explain(ErrorType::InternalError, e.to_string())),
        }
    }

    /// A connection to the target failed: another replica or target follows when the
    /// failover decision says so.
    fn fail_to_connect(&self, _session: &mut Session, peer: &HttpPeer, ctx: &mut Ctx, mut e: Box<Error>) -> Box<Error> {
        let addr = peer._address.as_inet().copied();
        let next = request::attempt_failed(&self.state, ctx, Failure::Connect, addr);
        e.set_retry(next != Next::Stop);
        e
    }

    /// Pingora retries no POST by default; aigw decides (`route::plan`): a failure
    /// before the first byte reached the caller may move on to the same target on another
    /// replica or to the next target, with the body replayed from the context; after the
    /// first byte, never.
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        if e.etype() == &response::FAILOVER_DECIDED {
            // `upstream_response_filter` took the decision on the provider's status.
            return e;
        }
        let mut e = e.more_context(format!("Peer: {peer}"));
        if ctx.error.is_some() || session.response_written().is_some() || e.esource() == &ErrorSource::Downstream {
            // A final answer the gateway chose, a stream already under way, or a caller
            // that went away: nothing to retry.
            e.set_retry(false);
            return e;
        }
        let failure = if client_reused && matches!(e.retry, RetryType::ReusedOnly) {
            Failure::Stale
        } else if matches!(e.etype(), ErrorType::ReadTimedout | ErrorType::WriteTimedout) {
            // A slow answer is the model's, not one replica's.
            Failure::Timeout
        } else {
            Failure::Broken
        };
        let addr = peer._address.as_inet().copied();
        let next = request::attempt_failed(&self.state, ctx, failure, addr);
        e.set_retry(next != Next::Stop);
        e
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let (error_code, can_reuse_downstream) = response::on_failure(session, e, ctx).await;
        FailToProxy {
            error_code,
            can_reuse_downstream,
        }
    }

    /// Failures the gateway answered itself are logged by it once, without Pingora's copy.
    fn suppress_error_log(&self, _session: &Session, ctx: &Ctx, _e: &Error) -> bool {
        ctx.error.is_some()
    }

    /// The request is over, however it ended: count it, charge its real usage, log it.
    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        response::settle(&self.state, session, ctx).await;
        let mut trace = ctx.trace.take();
        let summary = ctx.summary(session, trace.as_ref());
        if let (Some(traces), Some(t)) = (&self.state.traces, trace.as_mut()) {
            crate::telemetry::trace::record(traces, t, &summary);
        }
        // A request refused before it took a snapshot logs in the current config's format.
        let format = match &ctx.snapshot {
            Some(s) => s.access_log_format(),
            None => self.state.snapshot().access_log_format(),
        };
        crate::telemetry::log::access(&summary, format, &self.state.metrics);
    }
}
