//! Process logs (stderr, `RUST_LOG` filter) and the access log (stdout, one line per
//! request, JSON or text). Neither ever contains a key, a prompt or a completion, and no
//! field of either can start a line of its own or drive a terminal: whatever a caller or
//! a provider wrote into it is escaped where the line is written ([`is_unsafe`]).

use std::fmt::Write as _;
use std::io::Write;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Serialize;
use tracing_subscriber::EnvFilter;

use super::handoff::Handoff;
use super::Summary;
use crate::metrics::Metrics;
use crate::raw::LogFormat;

/// Installs the global subscriber. `RUST_LOG` overrides the default `info` level for
/// aigw's own lines; every other crate's are capped at `info`, whatever `RUST_LOG` says
/// (see [`own_or_at_most_info`]). Every field, the message included, is written escaped
/// ([`EscapedFields`]): a provider's error text or a caller's tool name in a field stays
/// on its line (tracing-subscriber itself escapes ESC in messages only, and no newline).
pub fn init() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .fmt_fields(EscapedFields)
        .with_writer(std::io::stderr)
        .with_filter(tracing_subscriber::filter::filter_fn(|m| {
            own_or_at_most_info(m.target(), *m.level())
        }));
    // A second init (tests, embedded use) keeps the first subscriber.
    let _ = tracing_subscriber::registry().with(filter).with(fmt).try_init();
}

/// The fields of a process log line as tracing-subscriber writes them (`name=value`
/// apart by spaces, the message as its value alone, the `log.*` fields of lines from the
/// `log` crate left out), with every [unsafe](is_unsafe) character of a value escaped.
struct EscapedFields;

impl<'w> tracing_subscriber::fmt::FormatFields<'w> for EscapedFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        writer: tracing_subscriber::fmt::format::Writer<'w>,
        fields: R,
    ) -> std::fmt::Result {
        let mut v = FieldWriter {
            out: writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut v);
        v.result
    }
}

struct FieldWriter<'w> {
    out: tracing_subscriber::fmt::format::Writer<'w>,
    first: bool,
    result: std::fmt::Result,
}

impl tracing::field::Visit for FieldWriter<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let name = field.name();
        if self.result.is_err() || name.starts_with("log.") {
            return;
        }
        let space = if std::mem::take(&mut self.first) { "" } else { " " };
        self.result = if name == "message" {
            write!(self.out, "{space}")
        } else {
            write!(self.out, "{space}{name}=")
        }
        .and_then(|()| write!(Escaping(&mut self.out), "{value:?}"));
    }
}

/// A writer that escapes what passes through it (see [`escape_into`]).
struct Escaping<'a, W: std::fmt::Write>(&'a mut W);

impl<W: std::fmt::Write> std::fmt::Write for Escaping<'_, W> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        if !s.chars().any(is_unsafe) {
            return self.0.write_str(s);
        }
        let mut escaped = String::with_capacity(s.len() + 8);
        escape_into(&mut escaped, s, false);
        self.0.write_str(&escaped)
    }
}

/// The code points no log line carries raw, whoever wrote them: C0 and C1 controls
/// (newlines, ESC, which starts a terminal's escape sequences, NEL), every separator but
/// the ASCII space (U+2028 and U+2029 end lines in some viewers, a no-break space passes
/// for a field break), format characters (bidi overrides and isolates, zero-width ones,
/// tags: what a viewer shows then differs from what the line holds), private use, and
/// unassigned code points, which a later Unicode may make one of these. The classes come
/// from regex-syntax's Unicode tables, read once; sorted ranges, searched by halves.
static UNSAFE: LazyLock<Vec<(char, char)>> = LazyLock::new(|| {
    use regex_syntax::hir::{Class, HirKind};
    match regex_syntax::parse(r"[\p{Cc}\p{Cf}\p{Z}\p{Co}\p{Cn}]").map(|h| h.into_kind()) {
        Ok(HirKind::Class(Class::Unicode(c))) => c.ranges().iter().map(|r| (r.start(), r.end())).collect(),
        _ => Vec::new(),
    }
});

/// Whether `c` is escaped in every log line (see [`UNSAFE`]). Without the tables (they
/// failed to load) every non-ASCII character is: the lines stay safe, if less readable.
fn is_unsafe(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_control();
    }
    let ranges = &*UNSAFE;
    ranges.is_empty()
        || ranges
            .binary_search_by(|&(lo, hi)| {
                if hi < c {
                    std::cmp::Ordering::Less
                } else if lo > c {
                    std::cmp::Ordering::Greater
                } else {
                    std::cmp::Ordering::Equal
                }
            })
            .is_ok()
}

/// Appends `s` with each [unsafe](is_unsafe) character escaped as a JSON string writes
/// it (`\n`, `\r`, `\t`, `\u001b`, `\u202e`, `\udb40\udc01` beyond the BMP), so a quoted
/// value reads back as the JSON string it is; `quoted`: `"` and `\` too.
fn escape_into(out: &mut String, s: &str, quoted: bool) {
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '"' | '\\' if quoted => {
                out.push('\\');
                out.push(c);
            }
            c if is_unsafe(c) => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
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
    trace_id: &'a str,
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
/// path, in `format` (the request's config's, or the current one for a request refused
/// before it took a snapshot). A line the writer cannot take is dropped and counted.
pub fn access(s: &Summary<'_>, format: LogFormat, metrics: &Metrics) {
    if format == LogFormat::Off {
        return;
    }
    let ms = |d: std::time::Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
    let usage = s.usage.unwrap_or_default();
    let r = Record {
        time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        request_id: s.request_id,
        trace_id: &s.trace_id,
        method: s.method,
        path: s.path,
        status: s.status,
        owner: s.owner(),
        key: s.key(),
        alias: s.alias.unwrap_or(""),
        model: s.target.map_or("", |t| t.alias.as_str()),
        provider: s.target.map_or("", |t| t.provider.name.as_str()),
        upstream_status: s.upstream_status.unwrap_or(0),
        attempts: s.attempts(),
        failovers: s.failovers(),
        stream: s.stream,
        input_tokens: usage.input_tokens,
        output_tokens: usage.output_tokens,
        cache_read_tokens: usage.cache_read_tokens,
        cache_write_tokens: usage.cache_write_tokens,
        reasoning_tokens: usage.reasoning_tokens,
        usage_estimated: s.usage_estimated,
        cost_usd: s.cost_usd,
        error: s.error.unwrap_or(""),
        guardrails: s
            .guard_hits
            .iter()
            .map(|h| format!("{}:{}", h.guardrail, crate::guard::action_name(h.action)))
            .collect::<Vec<_>>()
            .join(","),
        cache: s.cache.map_or("", |c| c.as_str()),
        duration_ms: ms(s.started.elapsed()),
        ttft_ms: s.first_event.map(|t| ms(t.duration_since(s.started))),
        mcp_server: s.mcp.map(|c| c.server.as_str()),
        mcp_tool: s.mcp.map(|c| c.tool.as_str()),
        mcp_outcome: s.mcp.map(|c| c.outcome),
    };
    let mut line = match format {
        LogFormat::Json => json(&r),
        _ => text(&r),
    };
    line.push('\n');
    if !stdout()
        .lines
        .push(line.len(), |b| b.extend_from_slice(line.as_bytes()))
    {
        metrics.access_log_dropped.inc();
    }
}

/// The record as one JSON line. serde_json escapes `"`, `\` and C0 controls; what it
/// writes raw, valid JSON as it is (DEL, C1 controls, U+2028, bidi controls), is escaped
/// here as well, as `\uXXXX` ([`SafeJson`]).
fn json(r: &impl Serialize) -> String {
    let mut out = Vec::with_capacity(512);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, SafeJson);
    if r.serialize(&mut ser).is_err() {
        return String::new();
    }
    // Only valid UTF-8 was written: the record's strings and escapes.
    String::from_utf8(out).unwrap_or_default()
}

/// serde_json's compact output, with every [unsafe](is_unsafe) character of a string
/// escaped (UTF-16 surrogate pairs beyond the BMP, as JSON has it).
struct SafeJson;

impl serde_json::ser::Formatter for SafeJson {
    fn write_string_fragment<W: ?Sized + Write>(&mut self, w: &mut W, fragment: &str) -> std::io::Result<()> {
        // Printable ASCII is never unsafe, and most of a line is nothing else: it is
        // written as it is, byte by byte checked, not decoded char by char.
        let plain = fragment
            .bytes()
            .position(|b| !(b' '..=b'~').contains(&b))
            .unwrap_or(fragment.len());
        w.write_all(&fragment.as_bytes()[..plain])?;
        let mut rest = &fragment[plain..];
        while let Some((at, c)) = rest.char_indices().find(|&(_, c)| is_unsafe(c)) {
            w.write_all(&rest.as_bytes()[..at])?;
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                write!(w, "\\u{unit:04x}")?;
            }
            rest = &rest[at + c.len_utf8()..];
        }
        w.write_all(rest.as_bytes())
    }
}

/// `key=value` pairs, keys in alphabetical order. A value is written bare only when it
/// is all plain characters: an empty one, or one with a space, `"`, `=`, `\` or an
/// [unsafe](is_unsafe) character, is quoted and escaped ([`escape_into`]).
fn text(r: &impl Serialize) -> String {
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
                serde_json::Value::String(s)
                    if s.is_empty() || s.contains([' ', '"', '=', '\\']) || s.chars().any(is_unsafe) =>
                {
                    out.push('"');
                    escape_into(&mut out, &s, true);
                    out.push('"');
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
    use super::*;
    use serde_json::json as j;

    /// What a caller or a provider may write into a field: a new line with a forged
    /// record, a terminal's colour and clear-screen sequences, a bidi override, the
    /// separators and a tag character.
    const HOSTILE: &str = "m\n{\"status\":200} status=200\r\u{1b}[31mred\u{1b}[2J\u{7f}\u{85}\u{202e}txt.exe\u{2028}\u{2029}\u{2066}\u{200b}\u{feff}\u{a0}\u{e0041}";

    #[test]
    fn unsafe_characters_are_the_invisible_and_the_line_breaking() {
        assert!(!UNSAFE.is_empty(), "the Unicode tables loaded");
        for c in [
            '\n',
            '\r',
            '\t',
            '\0',
            '\u{1b}',
            '\u{7f}',
            '\u{85}',
            '\u{9b}',
            '\u{2028}',
            '\u{2029}',
            '\u{202a}',
            '\u{202e}',
            '\u{2066}',
            '\u{2069}',
            '\u{200e}',
            '\u{200b}',
            '\u{feff}',
            '\u{ad}',
            '\u{a0}',
            '\u{3000}',
            '\u{e0041}',
            '\u{e000}',
            '\u{10ffff}',
        ] {
            assert!(is_unsafe(c), "{:x}", c as u32);
        }
        for c in ['a', ' ', '"', '=', '\\', '~', 'é', 'ß', '日', 'Ж', '🙂', '\u{301}'] {
            assert!(!is_unsafe(c), "{:x}", c as u32);
        }
    }

    #[test]
    fn a_text_line_carries_every_value_on_itself_and_reads_back() {
        let line = text(&j!({"alias": HOSTILE, "key": "plain-name", "path": "/v1/a b", "empty": "", "n": 3}));
        assert!(!line.chars().any(is_unsafe), "{line:?}");
        assert!(
            line.contains("key=plain-name ") && line.contains("path=\"/v1/a b\"") && line.contains("empty=\"\""),
            "{line}"
        );
        // The quoted value is a JSON string too: it reads back to what was written.
        let quoted = line.strip_prefix("alias=").unwrap().split(" empty=").next().unwrap();
        assert_eq!(serde_json::from_str::<String>(quoted).unwrap(), HOSTILE);
        // A value with a backslash is quoted, so a literal "\n" stays apart from a newline.
        assert!(text(&j!({"a": "x\\ny"})).contains(r#"a="x\\ny""#));
    }

    #[test]
    fn a_json_line_escapes_what_serde_json_writes_raw_and_reads_back() {
        let line = json(&j!({"alias": HOSTILE, "tool": "ok"}));
        assert!(line.is_ascii() && !line.chars().any(is_unsafe), "{line}");
        assert!(
            line.contains(r"\u202e") && line.contains(r"\u2028") && line.contains(r"\udb40\udc41"),
            "{line}"
        );
        let back: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(back["alias"], HOSTILE);
        // Plain text is written as serde_json writes it.
        let plain = j!({"alias": "gpt-4o", "n": "café 日本"});
        assert_eq!(json(&plain), serde_json::to_string(&plain).unwrap());
    }

    #[test]
    fn process_log_fields_are_escaped_where_the_line_is_written() {
        let mut out = String::new();
        write!(Escaping(&mut out), "{:?}", format_args!("tool {HOSTILE}")).unwrap();
        assert!(!out.chars().any(is_unsafe) && out.starts_with("tool m\\n{"), "{out}");
    }

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
