//! Process logs (stderr, `RUST_LOG` filter) and the one-line-per-request access log.
//! Neither ever contains a key, a prompt or a completion.

use pingora::proxy::Session;
use tracing_subscriber::EnvFilter;

use crate::proxy::Ctx;

/// Installs the global subscriber. `RUST_LOG` overrides the default `info` level.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // A second init (tests, embedded use) keeps the first subscriber.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .try_init();
}

/// One line per request, written in Pingora's `logging` phase, which runs on every exit path.
pub fn access(session: &Session, ctx: &Ctx) {
    let status = session.response_written().map_or(0, |r| r.status.as_u16());
    let req = session.req_header();
    tracing::info!(
        target: "aigw::access",
        request_id = %ctx.request_id,
        method = %req.method,
        path = %req.uri.path(),
        status,
        owner = ctx.caller.as_ref().map_or("", |c| c.owner.as_str()),
        key = ctx.caller.as_ref().map_or("", |c| c.name.as_str()),
        alias = ctx.alias.as_deref().unwrap_or(""),
        model = ctx.target.as_ref().map_or("", |t| t.alias.as_str()),
        upstream_status = ctx.upstream_status.unwrap_or(0),
        error = ctx.error.as_ref().map_or("", |e| e.code()),
        input_tokens = ctx.usage.map_or(0, |u| u.input_tokens),
        output_tokens = ctx.usage.map_or(0, |u| u.output_tokens),
        duration_ms = ctx.started.elapsed().as_millis() as u64,
        "request"
    );
}
