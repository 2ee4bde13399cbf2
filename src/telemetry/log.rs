//! Process logs (stderr, `RUST_LOG` filter) and the access log (stdout, one line per
//! request, JSON or text). Neither ever contains a key, a prompt or a completion.

use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use pingora::proxy::Session;
use serde::Serialize;
use tracing_subscriber::EnvFilter;

use super::handoff::Handoff;
use crate::config::raw::LogFormat;
use crate::proxy::Ctx;
use crate::route::plan::Outcome;
use crate::state::AppState;

/// Installs the global subscriber. `RUST_LOG` overrides the default `info` level for
/// aigw's own lines; every other crate's are capped at `info`, whatever `RUST_LOG` says
/// (see [`own_or_at_most_info`]).
pub fn init() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .with_filter(tracing_subscriber::filter::filter_fn(|m| {
            own_or_at_most_info(m.target(), *m.level())
        }));
    // A second init (tests, embedded use) keeps the first subscriber.
    let _ = tracing_subscriber::registry().with(filter).with(fmt).try_init();
}

/// Whether a log line may be printed. Pingora's debug and trace lines dump whole request
/// and response headers (`Sending header to upstream`, `Writing request header`), with the
/// provider's key and the caller's in them, and HTTP and TLS libraries below it do much
/// the same; no log level may print a credential, so only aigw's own lines, which never
/// hold one, go below `info`.
fn own_or_at_most_info(target: &str, level: tracing::Level) -> bool {
    level <= tracing::Level::INFO || target == "aigw" || target.starts_with("aigw::")
}

/// Access lines are batched ([`Handoff`]): written to stdout by one writer thread, at
/// most every [`BATCH_WINDOW`], in one `write` per batch. A request never waits for
/// stdout (a full pipe stalls only the writer thread). When stdout falls [`MAX_PENDING`]
/// bytes behind, new lines are dropped and counted
/// (`aigw_access_log_lines_dropped_total`) rather than held in memory.
struct Stdout {
    lines: Handoff<u8>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

/// How long the writer collects lines before it writes them: the most a line waits.
const BATCH_WINDOW: Duration = Duration::from_millis(20);
/// Unwritten bytes beyond which lines are dropped.
const MAX_PENDING: usize = 8 << 20;

static OUT: OnceLock<Arc<Stdout>> = OnceLock::new();

fn stdout() -> &'static Arc<Stdout> {
    OUT.get_or_init(|| {
        let out = Arc::new(Stdout {
            lines: Handoff::new(MAX_PENDING),
            writer: Mutex::new(None),
        });
        let worker = out.clone();
        match std::thread::Builder::new()
            .name("aigw-access-log".into())
            .spawn(move || worker.write_batches())
        {
            Ok(handle) => *lock(&out.writer) = Some(handle),
            Err(e) => tracing::error!(error = %e, "cannot start the access log writer: access lines are dropped"),
        }
        out
    })
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Stdout {
    fn write_batches(&self) {
        let out = std::io::stdout();
        let mut batch = Vec::new();
        loop {
            let open = self.lines.take(BATCH_WINDOW, &mut batch);
            // Write errors (a closed stdout) lose these lines, as they would any.
            let mut w = out.lock();
            let _ = w.write_all(&batch).and_then(|_| w.flush());
            drop(w);
            if !open {
                return;
            }
        }
    }
}

/// Writes out every queued access line; call before the process exits.
pub fn flush() {
    if let Some(out) = OUT.get() {
        out.lines.close();
        if let Some(handle) = lock(&out.writer).take() {
            let _ = handle.join();
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
    /// Of `input_tokens`, read from and written to the provider's prompt cache.
    cache_read_tokens: u64,
    cache_write_tokens: u64,
    /// Of `output_tokens`, spent reasoning.
    reasoning_tokens: u64,
    /// The tokens are an estimate: the stream was cut before the provider's final count,
    /// or the provider wrote a count that cannot be read.
    usage_estimated: bool,
    /// Tokens priced with the answering model's `pricing`; null without pricing.
    cost_usd: Option<f64>,
    error: &'a str,
    /// Guardrails that matched, as `name:action`, comma-separated; never what matched.
    guardrails: String,
    /// `hit`, `miss`, `bypass`, or empty when the model has no cache.
    cache: &'a str,
    duration_ms: f64,
    ttft_ms: Option<f64>,
    /// An MCP tool call: the server, the tool (its own name), and how it went (`ok`,
    /// `tool_error`, `error`, `unavailable`, `blocked`, `rate_limited`, `unknown_tool`);
    /// never its arguments or result. Absent on other requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    mcp_server: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mcp_tool: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mcp_outcome: Option<&'a str>,
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
        stream: ctx.stream(),
        input_tokens: ctx.usage.map_or(0, |u| u.input_tokens),
        output_tokens: ctx.usage.map_or(0, |u| u.output_tokens),
        cache_read_tokens: ctx.usage.map_or(0, |u| u.cache_read_tokens),
        cache_write_tokens: ctx.usage.map_or(0, |u| u.cache_write_tokens),
        reasoning_tokens: ctx.usage.map_or(0, |u| u.reasoning_tokens),
        usage_estimated: ctx.usage_estimated,
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
        mcp_server: ctx.mcp.as_ref().map(|c| c.server.as_str()),
        mcp_tool: ctx.mcp.as_ref().map(|c| c.tool.as_str()),
        mcp_outcome: ctx.mcp.as_ref().map(|c| c.outcome),
    };
    let mut line = match format {
        LogFormat::Json => serde_json::to_string(&r).unwrap_or_default(),
        _ => text(&r),
    };
    line.push('\n');
    if !stdout()
        .lines
        .push(line.len(), |b| b.extend_from_slice(line.as_bytes()))
    {
        state.metrics.access_log_dropped.inc();
    }
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

#[cfg(test)]
mod tests {
    #[test]
    fn other_crates_are_capped_at_info() {
        use tracing::Level;
        assert!(super::own_or_at_most_info("aigw::proxy::request", Level::TRACE));
        assert!(super::own_or_at_most_info("pingora_proxy::proxy_h1", Level::INFO));
        assert!(!super::own_or_at_most_info("pingora_proxy::proxy_h1", Level::DEBUG));
        assert!(!super::own_or_at_most_info(
            "pingora_core::protocols::http::v1::client",
            Level::TRACE
        ));
        assert!(!super::own_or_at_most_info("aigwx", Level::DEBUG));
    }
}
