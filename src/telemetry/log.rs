//! Process logs (stderr, `RUST_LOG` filter) and the access log (stdout, one line per
//! request, JSON or text). Neither ever contains a key, a prompt or a completion.

use std::io::Write;
use std::sync::{Mutex, OnceLock};

use pingora::proxy::Session;
use serde::Serialize;
use tracing_appender::non_blocking::{NonBlocking, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::config::raw::LogFormat;
use crate::proxy::Ctx;
use crate::route::plan::Outcome;
use crate::state::AppState;

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

/// Stdout through a writer thread: a slow or blocked stdout (a full pipe) never stalls a
/// request; when the queue is full, lines are dropped rather than waited for.
struct Stdout {
    writer: NonBlocking,
    /// Dropping the guard flushes what is queued; [`flush`] does that before exit.
    guard: Mutex<Option<WorkerGuard>>,
}

static OUT: OnceLock<Stdout> = OnceLock::new();

fn stdout() -> &'static Stdout {
    OUT.get_or_init(|| {
        let (writer, guard) = tracing_appender::non_blocking(std::io::stdout());
        Stdout {
            writer,
            guard: Mutex::new(Some(guard)),
        }
    })
}

/// Writes out every queued access line; call before the process exits.
pub fn flush() {
    if let Some(out) = OUT.get() {
        if let Ok(mut g) = out.guard.lock() {
            drop(g.take());
        }
    }
}

/// One access log record: what happened to a request, never what it said.
#[derive(Serialize)]
struct Record<'a> {
    time: String,
    request_id: &'a str,
    /// The W3C trace id, when traces are on (the caller's, or a new one).
    trace_id: String,
    method: &'a str,
    path: &'a str,
    status: u16,
    owner: &'a str,
    key: &'a str,
    /// The alias the caller asked for.
    alias: &'a str,
    /// The concrete model that answered (differs from `alias` for routed aliases).
    model: &'a str,
    provider: &'a str,
    upstream_status: u16,
    attempts: usize,
    failovers: usize,
    stream: bool,
    input_tokens: u64,
    output_tokens: u64,
    /// Tokens priced with the answering model's `pricing`; null without pricing.
    cost_usd: Option<f64>,
    error: &'a str,
    /// Guardrails that matched, as `name:action`, comma-separated; never what matched.
    guardrails: String,
    /// `hit`, `miss`, `bypass`, or empty when the model has no cache.
    cache: &'a str,
    duration_ms: f64,
    ttft_ms: Option<f64>,
}

/// One line per request, written in Pingora's `logging` phase, which runs on every exit
/// path, in the format of the request's config (the current one for a request refused
/// before it took a snapshot).
pub fn access(session: &Session, ctx: &Ctx, state: &AppState) {
    let format_of = |s: &crate::config::Snapshot| {
        s.observability
            .access_log
            .as_ref()
            .map_or(LogFormat::Json, |a| a.format)
    };
    let format = match &ctx.snapshot {
        Some(s) => format_of(s),
        None => format_of(&state.snapshot()),
    };
    if format == LogFormat::Off {
        return;
    }
    let req = session.req_header();
    let attempts = ctx.plan.as_ref().map_or(0, |p| p.attempts.len());
    let failovers = ctx.plan.as_ref().map_or(0, |p| {
        p.attempts
            .iter()
            .filter(|a| !matches!(a.outcome, Outcome::Answered | Outcome::Pending))
            .count()
    });
    let ms = |d: std::time::Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
    let r = Record {
        time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        request_id: &ctx.request_id,
        trace_id: ctx.trace.as_ref().map(|t| t.trace_id_hex()).unwrap_or_default(),
        method: req.method.as_str(),
        path: req.uri.path(),
        status: session.response_written().map_or(0, |r| r.status.as_u16()),
        owner: ctx.caller.as_ref().map_or("", |c| c.owner.as_str()),
        key: ctx.caller.as_ref().map_or("", |c| c.name.as_str()),
        alias: ctx.alias.as_deref().unwrap_or(""),
        model: ctx.target.as_ref().map_or("", |t| t.alias.as_str()),
        provider: ctx.target.as_ref().map_or("", |t| t.provider.name.as_str()),
        upstream_status: ctx.upstream_status.unwrap_or(0),
        attempts,
        failovers,
        stream: ctx.stream,
        input_tokens: ctx.usage.map_or(0, |u| u.input_tokens),
        output_tokens: ctx.usage.map_or(0, |u| u.output_tokens),
        cost_usd: ctx.cost_usd(),
        error: ctx.error.as_ref().map_or("", |e| e.code()),
        guardrails: ctx
            .guard_hits
            .iter()
            .map(|h| format!("{}:{}", h.guardrail, crate::guard::action_name(h.action)))
            .collect::<Vec<_>>()
            .join(","),
        cache: ctx.cache.map_or("", |c| c.as_str()),
        duration_ms: ms(ctx.started.elapsed()),
        ttft_ms: ctx.first_event.map(|t| ms(t.duration_since(ctx.started))),
    };
    let mut line = match format {
        LogFormat::Json => serde_json::to_string(&r).unwrap_or_default(),
        _ => text(&r),
    };
    line.push('\n');
    let mut w = stdout().writer.clone();
    let _ = w.write_all(line.as_bytes());
}

/// `key=value` pairs, keys in alphabetical order; values with spaces or quotes are quoted.
fn text(r: &Record<'_>) -> String {
    let v = serde_json::to_value(r).unwrap_or_default();
    let mut out = String::with_capacity(256);
    if let serde_json::Value::Object(map) = v {
        for (k, v) in map {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(&k);
            out.push('=');
            match v {
                serde_json::Value::String(s) if s.is_empty() || s.contains([' ', '"', '=']) => {
                    out.push_str(&serde_json::Value::String(s).to_string())
                }
                serde_json::Value::String(s) => out.push_str(&s),
                serde_json::Value::Null => out.push('-'),
                other => out.push_str(&other.to_string()),
            }
        }
    }
    out
}
