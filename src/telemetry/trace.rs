//! OpenTelemetry traces over OTLP/HTTP: one SERVER span per request and one CLIENT span per
//! upstream attempt, named and attributed per the GenAI semantic conventions.
//!
//! The gateway knows every span's times and ids before it builds them (ids are chosen when
//! the request arrives and when each attempt starts, so the upstream `traceparent` names
//! the attempt's span), so spans are built whole in the `logging` phase as `SpanData` and
//! handed to a bounded queue ([`Handoff`]). One thread takes it every [`WINDOW`] and
//! exports it in batches with the opentelemetry-otlp exporter. A full queue drops the
//! span and counts it; a collector that is down or slow only ever costs that thread,
//! never a request. Sampling (parent-based, trace-id ratio)
//! and `traceparent`/`tracestate` parsing and formatting are the SDK's.

use std::borrow::Cow;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::{Context, InstrumentationScope, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    IdGenerator, RandomIdGenerator, Sampler, SamplingDecision, ShouldSample, SpanData, SpanEvents, SpanExporter,
    SpanLinks,
};
use opentelemetry_sdk::Resource;
use pingora::http::RequestHeader;

use super::handoff::Handoff;
use crate::metrics::Metrics;

/// Spans waiting for export; beyond this they are dropped (and counted).
const QUEUE: usize = 4096;
/// Spans per export call.
const BATCH: usize = 512;
/// How long the export thread lets the queue fill before it takes it: the most a span
/// waits before its export starts, under load.
const WINDOW: Duration = Duration::from_millis(20);
/// One export call's deadline (the exporter's HTTP timeout).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// The process's span export: the queue and the thread behind it.
pub struct Traces {
    queue: Arc<Handoff<SpanData>>,
    /// Told when the export thread has exported its last batch.
    done: Mutex<mpsc::Receiver<()>>,
    scope: InstrumentationScope,
    metrics: Arc<Metrics>,
    pub endpoint: String,
}

impl Traces {
    /// Starts the export thread for an OTLP/HTTP endpoint (`http://host:4318/v1/traces`).
    pub fn start(endpoint: &str, metrics: Arc<Metrics>) -> Result<Self, String> {
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(endpoint)
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| format!("cannot build the OTLP exporter: {e}"))?;
        exporter.set_resource(
            &Resource::builder()
                .with_service_name("aigw")
                .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                .build(),
        );
        let queue = Arc::new(Handoff::new(QUEUE));
        let (done_tx, done) = mpsc::channel();
        let (q, m) = (queue.clone(), metrics.clone());
        std::thread::Builder::new()
            .name("aigw-otlp".into())
            .spawn(move || {
                export_loop(exporter, &q, &m);
                let _ = done_tx.send(());
            })
            .map_err(|e| format!("cannot start the OTLP export thread: {e}"))?;
        Ok(Self {
            queue,
            done: Mutex::new(done),
            scope: InstrumentationScope::builder("aigw")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
            metrics,
            endpoint: endpoint.to_owned(),
        })
    }

    fn send(&self, span: SpanData) {
        if !self.queue.push(1, |q| q.push(span)) {
            self.metrics
                .trace_spans_dropped
                .with_label_values(&["queue_full"])
                .inc();
        }
    }

    /// Exports what is queued, waiting at most `timeout` (on shutdown); takes no more.
    pub fn flush(&self, timeout: Duration) {
        self.queue.close();
        let done = self.done.lock().unwrap_or_else(|p| p.into_inner());
        let _ = done.recv_timeout(timeout);
    }
}

fn export_loop(exporter: opentelemetry_otlp::SpanExporter, queue: &Handoff<SpanData>, metrics: &Metrics) {
    let mut taken = Vec::new();
    loop {
        let open = queue.take(WINDOW, &mut taken);
        while !taken.is_empty() {
            let batch: Vec<SpanData> = taken.drain(..taken.len().min(BATCH)).collect();
            let n = batch.len() as u64;
            if let Err(e) = futures_executor::block_on(exporter.export(batch)) {
                metrics
                    .trace_spans_dropped
                    .with_label_values(&["export_failed"])
                    .inc_by(n);
                tracing::debug!(error = %e, spans = n, "OTLP export failed");
            }
        }
        if !open {
            return;
        }
    }
}

struct HeaderExtract<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtract<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct HeaderInject<'a>(&'a mut RequestHeader);

impl Injector for HeaderInject<'_> {
    fn set(&mut self, key: &str, value: String) {
        let _ = self.0.insert_header(key.to_owned(), value);
    }
}

/// The trace of one request: ids chosen on arrival, what the spans will say.
#[derive(Debug)]
pub struct RequestTrace {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// The caller's span, from its `traceparent`.
    parent: Option<SpanId>,
    trace_state: TraceState,
    pub sampled: bool,
    pub capture_content: bool,
    /// When the request arrived, on the wall clock spans use.
    start: SystemTime,
    started: Instant,
    /// One span id per upstream attempt, in order.
    attempts: Vec<SpanId>,
    /// `finish_reason` / `stop_reason` values the caller received.
    pub finish_reasons: Vec<String>,
    /// With `capture_content`: the completion the caller received.
    output: Option<Output>,
}

#[derive(Debug)]
enum Output {
    Json(bytes::Bytes),
    Stream(Box<crate::cache::assemble::Assembler>),
}

impl RequestTrace {
    /// Honours the caller's `traceparent`; otherwise starts a trace. `ratio` samples new
    /// traces; a caller's sampled flag is followed.
    pub fn begin(headers: &http::HeaderMap, ratio: f64, capture_content: bool, started: Instant) -> Self {
        let cx = TraceContextPropagator::new().extract(&HeaderExtract(headers));
        let remote = cx.span().span_context().clone();
        let ids = RandomIdGenerator::default();
        let (trace_id, parent, trace_state) = if remote.is_valid() {
            (remote.trace_id(), Some(remote.span_id()), remote.trace_state().clone())
        } else {
            (ids.new_trace_id(), None, TraceState::default())
        };
        let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio)));
        let decision = sampler
            .should_sample(Some(&cx), trace_id, "", &SpanKind::Server, &[], &[])
            .decision;
        Self {
            trace_id,
            span_id: ids.new_span_id(),
            parent,
            trace_state,
            sampled: decision == SamplingDecision::RecordAndSample,
            capture_content,
            start: SystemTime::now() - started.elapsed(),
            started,
            attempts: Vec::new(),
            finish_reasons: Vec::new(),
            output: None,
        }
    }

    /// Whether the spans will be exported and carry the completion text.
    pub fn capturing(&self) -> bool {
        self.sampled && self.capture_content
    }

    /// A streamed answer starts (its text is assembled only with `capture_content`).
    pub fn start_stream(&mut self, dialect: crate::api::Dialect) {
        if self.capturing() {
            self.output = Some(Output::Stream(Box::new(crate::cache::assemble::Assembler::new(
                dialect,
            ))));
        }
    }

    /// What went to the caller: finish reasons are read from it, and with
    /// `capture_content` the completion is kept. `whole` marks a complete JSON body.
    pub fn sent(&mut self, bytes: &[u8], whole: bool) {
        if !self.sampled {
            return;
        }
        self.note_finish_reasons(bytes);
        if !self.capture_content {
            return;
        }
        match &mut self.output {
            Some(Output::Stream(a)) => a.feed(bytes),
            _ if whole => self.output = Some(Output::Json(bytes::Bytes::copy_from_slice(bytes))),
            _ => {}
        }
    }

    /// The completion as JSON (choices or content), for `gen_ai.output.messages`.
    fn output_messages(&mut self) -> Option<String> {
        let v: serde_json::Value = match self.output.take()? {
            Output::Json(b) => serde_json::from_slice(&b).ok()?,
            Output::Stream(a) => a.finish(None)?,
        };
        let part = if v.get("choices").is_some() {
            &v["choices"]
        } else {
            &v["content"]
        };
        Some(part.to_string())
    }

    /// A new upstream attempt (one per attempt the plan records): its span id.
    pub fn new_attempt(&mut self) {
        self.attempts.push(RandomIdGenerator::default().new_span_id());
    }

    /// The current attempt's span goes upstream as `traceparent` (and the caller's
    /// `tracestate`).
    pub fn inject(&self, req: &mut RequestHeader) {
        let Some(&id) = self.attempts.last() else { return };
        let flags = if self.sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        let sc = SpanContext::new(self.trace_id, id, flags, true, self.trace_state.clone());
        let cx = Context::new().with_remote_span_context(sc);
        TraceContextPropagator::new().inject_context(&cx, &mut HeaderInject(req));
    }

    /// Reads finish reasons out of what went to the caller (JSON or SSE, either dialect).
    pub fn note_finish_reasons(&mut self, sent: &[u8]) {
        // Built once: a searcher per call showed in the profile of traced streams.
        // Gemini's: compact when aigw wrote it, with a space as Google writes it.
        static NEEDLES: std::sync::LazyLock<[memchr::memmem::Finder<'static>; 4]> = std::sync::LazyLock::new(|| {
            [
                memchr::memmem::Finder::new(b"\"finish_reason\":\""),
                memchr::memmem::Finder::new(b"\"stop_reason\":\""),
                memchr::memmem::Finder::new(b"\"finishReason\":\""),
                memchr::memmem::Finder::new(b"\"finishReason\": \""),
            ]
        });
        for needle in NEEDLES.iter() {
            for at in needle.find_iter(sent) {
                let rest = &sent[at + needle.needle().len()..];
                if let Some(end) = memchr::memchr(b'"', rest) {
                    if let Ok(r) = std::str::from_utf8(&rest[..end]) {
                        if r.len() <= 64 && !self.finish_reasons.iter().any(|x| x == r) {
                            self.finish_reasons.push(r.to_owned());
                        }
                    }
                }
            }
        }
    }

    fn at(&self, t: Instant) -> SystemTime {
        self.start + t.saturating_duration_since(self.started)
    }

    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }
}

/// What one finished request's spans say; gathered by the proxy from its context.
pub struct Finished<'a> {
    pub operation: &'static str,
    /// An MCP request's method (`mcp.method.name`).
    pub mcp_method: Option<&'static str>,
    /// An MCP tool call's server, tool and outcome (`execute_tool` spans).
    pub tool: Option<(&'a str, &'a str, &'static str)>,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub alias: &'a str,
    pub owner: &'a str,
    pub key: &'a str,
    pub cache: &'a str,
    pub error: Option<&'a str>,
    pub usage: Option<crate::usage::Usage>,
    pub max_tokens: Option<u64>,
    pub cost_usd: Option<f64>,
    pub response_model: Option<&'a str>,
    pub attempts: Vec<AttemptSpan<'a>>,
    /// With `capture_content`: the request's messages and the completion, as JSON.
    pub input_messages: Option<String>,
    pub output_messages: Option<String>,
}

pub struct AttemptSpan<'a> {
    pub started: Instant,
    pub finished: Option<Instant>,
    pub provider: &'static str,
    pub provider_key: &'a str,
    pub request_model: &'a str,
    pub server_address: &'a str,
    pub server_port: u16,
    pub status: Option<u16>,
    /// Why the attempt failed (`timeout`, `connect_error`, a status), if it did.
    pub error: Option<String>,
    /// This attempt answered the caller (tokens and finish reasons belong to it).
    pub answered: bool,
}

impl Traces {
    /// Builds the request's spans and queues them, when it is sampled.
    pub fn finish(&self, t: &RequestTrace, f: Finished<'_>) {
        if !t.sampled {
            return;
        }
        let end = SystemTime::now();
        let name = |model: &str| -> Cow<'static, str> {
            if model.is_empty() {
                Cow::Borrowed(f.operation)
            } else {
                Cow::Owned(format!("{} {model}", f.operation))
            }
        };
        let mut attrs = vec![
            KeyValue::new("gen_ai.operation.name", f.operation),
            match f.tool {
                Some((_, tool, _)) => KeyValue::new("gen_ai.tool.name", tool.to_owned()),
                None => KeyValue::new("gen_ai.request.model", f.alias.to_owned()),
            },
            KeyValue::new("http.request.method", f.method.to_owned()),
            KeyValue::new("url.path", f.path.to_owned()),
            KeyValue::new("http.response.status_code", i64::from(f.status)),
        ];
        let opt = |attrs: &mut Vec<KeyValue>, k: &'static str, v: Option<i64>| {
            if let Some(v) = v {
                attrs.push(KeyValue::new(k, v));
            }
        };
        opt(&mut attrs, "gen_ai.request.max_tokens", f.max_tokens.map(|v| v as i64));
        if let Some(m) = f.mcp_method {
            attrs.push(KeyValue::new("mcp.method.name", m));
        }
        if let Some((server, _, outcome)) = f.tool {
            attrs.push(KeyValue::new("aigw.mcp.server", server.to_owned()));
            attrs.push(KeyValue::new("aigw.mcp.outcome", outcome));
        }
        if let Some(c) = f.cost_usd {
            attrs.push(KeyValue::new("aigw.cost_usd", c));
        }
        let usage = |attrs: &mut Vec<KeyValue>| {
            if let Some(u) = f.usage {
                attrs.push(KeyValue::new("gen_ai.usage.input_tokens", u.input_tokens as i64));
                attrs.push(KeyValue::new("gen_ai.usage.output_tokens", u.output_tokens as i64));
                // Parts, named as the GenAI conventions do; reasoning has no name there yet.
                for (name, n) in [
                    ("gen_ai.usage.cache_read.input_tokens", u.cache_read_tokens),
                    ("gen_ai.usage.cache_creation.input_tokens", u.cache_write_tokens),
                    ("aigw.usage.reasoning_tokens", u.reasoning_tokens),
                ] {
                    if n > 0 {
                        attrs.push(KeyValue::new(name, n as i64));
                    }
                }
            }
            if !t.finish_reasons.is_empty() {
                let reasons: Vec<opentelemetry::StringValue> =
                    t.finish_reasons.iter().map(|r| r.clone().into()).collect();
                attrs.push(KeyValue::new(
                    "gen_ai.response.finish_reasons",
                    opentelemetry::Value::Array(reasons.into()),
                ));
            }
        };
        usage(&mut attrs);
        if let Some(m) = f.response_model {
            attrs.push(KeyValue::new("gen_ai.response.model", m.to_owned()));
        }
        for (k, v) in [("aigw.owner", f.owner), ("aigw.key", f.key), ("aigw.cache", f.cache)] {
            if !v.is_empty() {
                attrs.push(KeyValue::new(k, v.to_owned()));
            }
        }
        if let Some(m) = &f.input_messages {
            attrs.push(KeyValue::new("gen_ai.input.messages", m.clone()));
        }
        if let Some(m) = &f.output_messages {
            attrs.push(KeyValue::new("gen_ai.output.messages", m.clone()));
        }
        let status = match f.error {
            Some(e) => {
                attrs.push(KeyValue::new("error.type", e.to_owned()));
                Status::error(e.to_owned())
            }
            None => Status::Unset,
        };
        self.send(self.span(
            t,
            t.span_id,
            t.parent,
            SpanKind::Server,
            name(f.alias),
            (t.start, end),
            attrs,
            status,
        ));
        for (a, id) in f.attempts.iter().zip(&t.attempts) {
            let mut attrs = vec![
                KeyValue::new("gen_ai.operation.name", f.operation),
                KeyValue::new("gen_ai.provider.name", a.provider),
                KeyValue::new("gen_ai.request.model", a.request_model.to_owned()),
                KeyValue::new("server.address", a.server_address.to_owned()),
                KeyValue::new("server.port", i64::from(a.server_port)),
                KeyValue::new("aigw.provider_key", a.provider_key.to_owned()),
            ];
            opt(&mut attrs, "gen_ai.request.max_tokens", f.max_tokens.map(|v| v as i64));
            if let Some(m) = f.mcp_method {
                attrs.push(KeyValue::new("mcp.method.name", m));
            }
            if let Some((server, _, outcome)) = f.tool {
                attrs.push(KeyValue::new("aigw.mcp.server", server.to_owned()));
                attrs.push(KeyValue::new("aigw.mcp.outcome", outcome));
            }
            opt(&mut attrs, "http.response.status_code", a.status.map(i64::from));
            if a.answered {
                attrs.push(KeyValue::new("gen_ai.response.model", a.request_model.to_owned()));
                usage(&mut attrs);
            }
            let status = match &a.error {
                Some(e) => {
                    attrs.push(KeyValue::new("error.type", e.clone()));
                    Status::error(e.clone())
                }
                None => Status::Unset,
            };
            self.send(self.span(
                t,
                *id,
                Some(t.span_id),
                SpanKind::Client,
                name(a.request_model),
                (t.at(a.started), a.finished.map_or(end, |e| t.at(e))),
                attrs,
                status,
            ));
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn span(
        &self,
        t: &RequestTrace,
        id: SpanId,
        parent: Option<SpanId>,
        kind: SpanKind,
        name: Cow<'static, str>,
        (start_time, end_time): (SystemTime, SystemTime),
        attributes: Vec<KeyValue>,
        status: Status,
    ) -> SpanData {
        SpanData {
            span_context: SpanContext::new(t.trace_id, id, TraceFlags::SAMPLED, false, t.trace_state.clone()),
            parent_span_id: parent.unwrap_or(SpanId::INVALID),
            // Only the server span's parent (the caller's) is remote.
            parent_span_is_remote: parent.is_some() && kind == SpanKind::Server,
            span_kind: kind,
            name,
            start_time,
            end_time,
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status,
            instrumentation_scope: self.scope.clone(),
        }
    }
}

/// Builds the spans of a finished request (the `logging` phase) and queues them, when
/// the request is sampled.
pub fn record(traces: &Traces, t: &mut RequestTrace, s: &super::Summary<'_>) {
    use crate::route::plan::Outcome;
    if !t.sampled {
        return;
    }
    let input_messages = t.capture_content.then(|| {
        let v: serde_json::Value = serde_json::from_slice(s.request_body).unwrap_or_default();
        let mut m = serde_json::Map::new();
        for k in ["system", "messages", "input"] {
            if let Some(x) = v.get(k) {
                m.insert(k.into(), x.clone());
            }
        }
        serde_json::Value::Object(m).to_string()
    });
    let output_messages = t.output_messages();
    let end = Instant::now();
    let mut attempts = Vec::new();
    if let Some(plan) = s.plan {
        let last = plan.attempts.len().saturating_sub(1);
        for (i, a) in plan.attempts.iter().enumerate() {
            let Some(target) = plan.candidates.iter().find(|c| c.alias == a.target) else {
                continue;
            };
            let p = &target.provider;
            let answered = i == last && matches!(a.outcome, Outcome::Answered | Outcome::Pending);
            let error = match a.outcome {
                Outcome::Answered => None,
                Outcome::Pending if s.error.is_none() => None,
                Outcome::RetryableStatus => a.status.map(|s| s.to_string()),
                Outcome::Pending => Some("error".to_owned()),
                o => Some(o.as_str().to_owned()),
            };
            attempts.push(AttemptSpan {
                started: a.started,
                finished: a.finished.or(Some(end)),
                provider: crate::provider::otel_name(p.kind),
                provider_key: &p.name,
                request_model: &target.upstream_model,
                server_address: &p.base.host,
                server_port: p.base.port,
                status: a.status,
                error,
                answered,
            });
        }
    }
    let answered_ok = s.answered_ok();
    let f = Finished {
        // MCP: GenAI's `execute_tool` for a tool call, else the MCP method.
        operation: match (s.mcp, s.mcp_method) {
            (Some(_), _) => "execute_tool",
            (None, Some(m)) => m,
            (None, None) => s.endpoint.map_or("chat", crate::api::Endpoint::operation),
        },
        mcp_method: s.mcp_method,
        tool: s.mcp.map(|c| (c.server.as_str(), c.tool.as_str(), c.outcome)),
        method: s.method,
        path: s.path,
        status: s.status,
        alias: match s.mcp {
            Some(c) => c.tool.as_str(),
            None => s.alias.unwrap_or(""),
        },
        owner: s.owner(),
        key: s.key(),
        cache: s.cache.map_or("", |c| c.as_str()),
        error: s.error,
        usage: s.usage.filter(|_| answered_ok),
        max_tokens: s.max_tokens,
        cost_usd: s.cost_usd.filter(|_| answered_ok),
        response_model: s.target.filter(|_| answered_ok).map(|t| t.upstream_model.as_str()),
        attempts,
        input_messages,
        output_messages,
    };
    traces.finish(t, f);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn honours_the_callers_traceparent_and_sampled_flag() {
        let mut h = http::HeaderMap::new();
        h.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        h.insert("tracestate", "vendor=x".parse().unwrap());
        // A ratio of 0 does not override the caller's decision.
        let t = RequestTrace::begin(&h, 0.0, false, Instant::now());
        assert_eq!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.parent, Some(SpanId::from_hex("00f067aa0ba902b7").unwrap()));
        assert!(t.sampled);
        h.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
                .parse()
                .unwrap(),
        );
        assert!(!RequestTrace::begin(&h, 1.0, false, Instant::now()).sampled);
    }

    #[test]
    fn new_traces_follow_the_ratio_and_attempts_propagate() {
        let h = http::HeaderMap::new();
        assert!(RequestTrace::begin(&h, 1.0, false, Instant::now()).sampled);
        assert!(!RequestTrace::begin(&h, 0.0, false, Instant::now()).sampled);
        let mut t = RequestTrace::begin(&h, 1.0, false, Instant::now());
        let mut req = RequestHeader::build("POST", b"/v1/chat/completions", None).unwrap();
        t.new_attempt();
        t.inject(&mut req);
        let tp = req.headers.get("traceparent").unwrap().to_str().unwrap().to_owned();
        assert_eq!(tp, format!("00-{}-{}-01", t.trace_id_hex(), t.attempts[0]));
        assert_ne!(t.attempts[0], t.span_id);
    }

    #[test]
    fn a_full_queue_drops_spans_and_counts_them() {
        // A collector that accepts connections and never answers: the export thread
        // blocks on its first batch while the queue fills.
        let hang = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let metrics = Arc::new(Metrics::new());
        let url = format!("http://{}/v1/traces", hang.local_addr().unwrap());
        let traces = Traces::start(&url, metrics.clone()).unwrap();
        let t = RequestTrace::begin(&http::HeaderMap::new(), 1.0, false, Instant::now());
        let now = SystemTime::now();
        for _ in 0..QUEUE + 2 * BATCH {
            let span = traces.span(
                &t,
                t.span_id,
                None,
                SpanKind::Server,
                "x".into(),
                (now, now),
                vec![],
                Status::Unset,
            );
            traces.send(span);
        }
        assert!(metrics.trace_spans_dropped.with_label_values(&["queue_full"]).get() > 0);
    }

    #[test]
    fn finish_reasons_from_json_and_sse() {
        let mut t = RequestTrace::begin(&http::HeaderMap::new(), 1.0, false, Instant::now());
        t.note_finish_reasons(br#"data: {"choices":[{"finish_reason":null}]}"#);
        t.note_finish_reasons(br#"data: {"choices":[{"finish_reason":"stop"},{"finish_reason":"length"}]}"#);
        t.note_finish_reasons(br#"{"stop_reason":"end_turn"}"#);
        t.note_finish_reasons(b"data: {\"candidates\": [{\"finishReason\": \"MAX_TOKENS\"}]}");
        t.note_finish_reasons(br#"{"candidates":[{"finishReason":"SAFETY"}]}"#);
        assert_eq!(t.finish_reasons, ["stop", "length", "end_turn", "MAX_TOKENS", "SAFETY"]);
    }
}
