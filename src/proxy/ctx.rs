//! Per-request context: everything one request learns on its way through the phases.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::api::Dialect;
use crate::api::Endpoint;
use crate::auth::ApiKeyEntry;
use crate::cache;
use crate::config::Snapshot;
use crate::error::GwError;
use crate::guard::stream::StreamGuard;
use crate::guard::{Guardrail, Hit};
use crate::limit::Admitted;
use crate::metrics::Metrics;
use crate::provider::JsonBody;
use crate::provider::Target;
use crate::route::plan::Outcome;
use crate::route::plan::Plan;
use crate::state::InflightGuard;
use crate::stream::SseState;
use crate::telemetry::trace::RequestTrace;
use crate::telemetry::Summary;
use crate::upstream::Pick;
use crate::usage::Usage;

pub struct Ctx {
    pub request_id: String,
    pub dialect: Dialect,
    pub started: Instant,
    /// Counts this request as in flight until the context is dropped.
    pub inflight: Option<InflightGuard>,
    /// Taken once in `request_filter`; the request never sees a reload half-way.
    pub snapshot: Option<Arc<Snapshot>>,
    pub caller: Option<Arc<ApiKeyEntry>>,
    pub endpoint: Option<Endpoint>,
    /// The endpoint the provider is called on (differs when translating).
    pub upstream_endpoint: Option<Endpoint>,
    /// The alias the caller asked for.
    pub alias: Option<String>,
    /// Candidates in order and the attempts made (failover state).
    pub plan: Option<Plan>,
    /// The rate limits this request passed; holds its concurrency slots until dropped.
    pub limits: Option<Admitted>,
    /// The chosen target's provider quota, admitted (charged its tokens at the end).
    pub quota: Option<Admitted>,
    /// This request counted in flight on its current target (multi-target routes).
    pub busy: Option<crate::route::load::Busy>,
    /// The concrete model this attempt goes to.
    pub target: Option<Target>,
    /// The replica of this attempt (for `least_busy`, counted busy while held).
    pub pick: Option<Pick>,
    /// The provider's access token for this attempt (Vertex AI). Never logged.
    pub access_token: Option<std::sync::Arc<str>>,
    /// The caller's body as received (after masking guardrails), for building each
    /// attempt's upstream body.
    pub request_body: Bytes,
    /// `request_body`'s parse, made at admission once the caller and the model are
    /// admitted; `stream` and the other request facts are read from it.
    pub request_view: Option<crate::provider::body::BodyView>,
    /// The request body to send upstream, already rewritten for `target`.
    pub upstream_body: Bytes,
    /// The gateway added `stream_options.include_usage`; strip the usage chunk.
    pub strip_usage: bool,
    pub sse: Option<SseState>,
    pub json: Option<JsonBody>,
    pub usage: Option<Usage>,
    /// The usage was estimated: the stream was cut before the provider's final count.
    pub usage_estimated: bool,
    pub upstream_status: Option<u16>,
    /// The failover decision on this answer's error status was taken with its body
    /// (`response::on_held_error`): the status line is not decided again.
    pub error_decided: bool,
    /// Response-stage guardrails of this request (caller key's, then the model's).
    pub response_guards: Vec<Arc<Guardrail>>,
    /// Scans a streamed completion for `response_guards`.
    pub stream_guard: Option<Box<StreamGuard>>,
    /// A whole answer the rules passed, waiting for the guardrail services
    /// (`response::on_body_async`).
    pub answer_for_services: Option<Bytes>,
    /// A whole answer under monitoring services only, already sent: judged for the record.
    pub answer_for_monitors: Option<Bytes>,
    /// Judges a streamed answer's text for the response-stage guardrail services.
    pub stream_windows: Option<Box<crate::guard::service::StreamWindows>>,
    /// Stream events the rules released, waiting for `stream_windows` (and whether the
    /// stream ended with them).
    pub events_for_services: Option<(Bytes, bool)>,
    /// Guardrails that hit, once each, for metrics and the access log.
    pub guard_hits: Vec<Hit>,
    /// The MCP method this request was (`/mcp`), and the tool call it made, if any.
    pub mcp_method: Option<&'static str>,
    pub mcp: Option<crate::mcp::ToolCall>,
    /// What the response cache did, when the model has a cache policy.
    pub cache: Option<cache::Outcome>,
    /// A miss whose answer may be stored once complete.
    pub cache_fill: Option<Box<cache::Fill>>,
    /// The caller's budget this request was admitted under, and what was left.
    pub budget: Option<crate::budget::Admitted>,
    /// The request's trace, when `observability.otlp` is set.
    pub trace: Option<RequestTrace>,
    /// When the first streamed event went to the caller (time to first token).
    pub first_event: Option<Instant>,
    /// The error this request ended with, if the gateway produced one.
    pub error: Option<GwError>,
}

impl Ctx {
    pub fn new() -> Self {
        Self {
            request_id: String::new(),
            answer_for_services: None,
            answer_for_monitors: None,
            stream_windows: None,
            events_for_services: None,
            dialect: Dialect::OpenAi,
            started: Instant::now(),
            inflight: None,
            snapshot: None,
            caller: None,
            endpoint: None,
            upstream_endpoint: None,
            alias: None,
            plan: None,
            limits: None,
            quota: None,
            busy: None,
            target: None,
            pick: None,
            access_token: None,
            request_body: Bytes::new(),
            request_view: None,
            upstream_body: Bytes::new(),
            strip_usage: false,
            sse: None,
            json: None,
            usage: None,
            usage_estimated: false,
            upstream_status: None,
            error_decided: false,
            response_guards: Vec::new(),
            stream_guard: None,
            guard_hits: Vec::new(),
            mcp_method: None,
            mcp: None,
            cache: None,
            cache_fill: None,
            budget: None,
            trace: None,
            first_event: None,
            error: None,
        }
    }
}

impl Ctx {
    /// The caller's endpoint, whose answers' shape says where their text is (chat when
    /// none was routed yet).
    /// The caller asked for a streamed answer.
    pub fn stream(&self) -> bool {
        self.request_view.as_ref().is_some_and(|v| v.stream)
    }

    /// The caller asked for `stream_options.include_usage` itself.
    pub fn caller_include_usage(&self) -> bool {
        self.request_view.as_ref().is_some_and(|v| v.include_usage)
    }

    /// The output cap the caller asked for, if any (for traces).
    pub fn max_tokens(&self) -> Option<u64> {
        self.request_view.as_ref().and_then(|v| v.max_tokens)
    }

    pub fn shape(&self) -> Endpoint {
        self.endpoint.unwrap_or(Endpoint::ChatCompletions)
    }

    /// The request as the access log and the spans read it, once it is over. `trace` is
    /// the request's trace, taken out of the context to be finished beside the summary.
    pub fn summary<'a>(&'a self, session: &'a pingora::proxy::Session, trace: Option<&RequestTrace>) -> Summary<'a> {
        let req = session.req_header();
        Summary {
            request_id: &self.request_id,
            trace_id: trace.map(RequestTrace::trace_id_hex).unwrap_or_default(),
            method: req.method.as_str(),
            path: req.uri.path(),
            status: session.response_written().map_or(0, |r| r.status.as_u16()),
            caller: self.caller.as_deref(),
            endpoint: self.endpoint,
            alias: self.alias.as_deref(),
            target: self.target.as_ref(),
            plan: self.plan.as_ref(),
            upstream_status: self.upstream_status,
            stream: self.stream(),
            usage: self.usage,
            usage_estimated: self.usage_estimated,
            cost_usd: self.cost_usd(),
            max_tokens: self.max_tokens(),
            error: self.error.as_ref().map(GwError::code),
            guard_hits: &self.guard_hits,
            cache: self.cache,
            started: self.started,
            first_event: self.first_event,
            mcp_method: self.mcp_method,
            mcp: self.mcp.as_ref(),
            request_body: &self.request_body,
        }
    }

    /// What this request cost: the tokens the provider reported, priced with the
    /// `pricing` of the model that answered (`None` without usage or pricing).
    pub fn cost_usd(&self) -> Option<f64> {
        let u = self.usage?;
        let answered = self.target.as_ref()?.alias.as_str();
        let p = self.snapshot.as_ref()?.models.get(answered)?.pricing?;
        Some(u.cost_usd(&p))
    }
}

impl Default for Ctx {
    fn default() -> Self {
        Self::new()
    }
}

impl Ctx {
    /// Records this finished request in the metrics. `status` is what the caller got (0: nothing).
    pub fn record_metrics(&self, m: &Metrics, status: u16) {
        let ctx = self;
        let model = ctx.alias.as_deref().unwrap_or("");
        let owner = ctx.caller.as_ref().map_or("", |c| c.owner.as_str());
        let status = status.to_string();
        m.requests.with_label_values(&[model, owner, status.as_str()]).inc();
        if let Some(c) = ctx.cache {
            m.cache.with_label_values(&[model, c.as_str()]).inc();
        }
        for h in &ctx.guard_hits {
            m.guardrail_hits
                .with_label_values(&[&h.guardrail, crate::guard::action_name(h.action)])
                .inc();
        }
        m.request_duration
            .with_label_values(&[model])
            .observe(ctx.started.elapsed().as_secs_f64());
        if let Some(t) = ctx.first_event {
            m.time_to_first_token
                .with_label_values(&[model])
                .observe(t.duration_since(ctx.started).as_secs_f64());
        }
        if let Some(plan) = &ctx.plan {
            let end = std::time::Instant::now();
            for a in &plan.attempts {
                let provider = plan
                    .candidates
                    .iter()
                    .find(|t| t.alias == a.target)
                    .map_or("", |t| t.provider.name.as_str());
                // An attempt still pending at the end broke after its header.
                let outcome = match a.outcome {
                    Outcome::Pending => Outcome::Error,
                    o => o,
                };
                m.upstream_attempts
                    .with_label_values(&[a.target.as_str(), provider, outcome.as_str()])
                    .inc();
                m.upstream_duration
                    .with_label_values(&[a.target.as_str(), provider])
                    .observe(a.finished.unwrap_or(end).duration_since(a.started).as_secs_f64());
            }
        }
        if let (Some(u), Some(target)) = (ctx.usage, &ctx.target) {
            let answered = target.alias.as_str();
            if ctx.usage_estimated {
                m.usage_estimated.with_label_values(&[answered]).inc();
            }
            m.tokens
                .with_label_values(&[answered, owner, "input"])
                .inc_by(u.input_tokens);
            m.tokens
                .with_label_values(&[answered, owner, "output"])
                .inc_by(u.output_tokens);
            for (kind, n) in [
                ("cache_read", u.cache_read_tokens),
                ("cache_write", u.cache_write_tokens),
                ("reasoning", u.reasoning_tokens),
            ] {
                if n > 0 {
                    m.tokens_detail.with_label_values(&[answered, owner, kind]).inc_by(n);
                }
            }
            for (unit, n) in [("image", u.images as f64), ("audio_second", u.audio_ms as f64 / 1000.0)] {
                if n > 0.0 {
                    m.media.with_label_values(&[answered, owner, unit]).inc_by(n);
                }
            }
            if let Some(usd) = ctx.cost_usd() {
                m.cost.with_label_values(&[answered, owner]).inc_by(usd);
            }
        }
    }
}

/// What a guardrail service is told of a request (`guard::service::About`): its alias,
/// owner and id. Taken from fields, not `&Ctx`, so the caller can lend the guard hits
/// mutably in the same call.
pub fn about<'a>(
    alias: &'a Option<String>,
    caller: &'a Option<Arc<ApiKeyEntry>>,
    request_id: &'a str,
) -> crate::guard::service::About<'a> {
    crate::guard::service::About {
        model: alias.as_deref().unwrap_or_default(),
        owner: caller.as_ref().map_or("", |c| c.owner.as_str()),
        request_id,
    }
}
