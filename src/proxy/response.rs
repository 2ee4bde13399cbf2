//! The response side: provider status handling, gateway headers, streamed usage, and the
//! answer when proxying fails before or after the first byte.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::{Error, ErrorSource, ErrorType};

use std::time::Instant;

use super::ctx::Ctx;
use crate::api::{Dialect, Endpoint, Wire};
use crate::error::GwError;
use crate::guard::{self, stream::StreamGuard};
use crate::provider::ErrorClass;
use crate::provider::Target;
use crate::provider::{self};
use crate::provider::{JsonBody, JsonTranslate};
use crate::route::cooldown::parse_retry_after;
use crate::route::plan::{Failure, Next};
use crate::state::AppState;
use crate::stream::{Mode, SseState};

/// The error `upstream_response_filter` returns when the failover decision was taken on
/// the provider's status line; `error_while_proxy` passes it on as decided.
pub const FAILOVER_DECIDED: ErrorType = ErrorType::Custom("aigw: failover decided");

/// The provider's status line arrived, before anything reached the caller. An error
/// status or a 2xx of the wrong Content-Type goes to the failover decision
/// (`Plan::failed`, which also tells the caller's own 4xx from a failed target); when no
/// other attempt follows, a provider
/// 5xx, a bad answer and a refused gateway credential (401/403: the caller's SDK would
/// report the caller's own key as invalid) become the gateway's own 502; other 4xx,
/// including a last 429 with its `Retry-After`, pass through as the answer.
pub fn on_upstream_header(state: &AppState, resp: &ResponseHeader, ctx: &mut Ctx) -> pingora::Result<()> {
    let status = resp.status.as_u16();
    ctx.upstream_status = Some(status);
    let wire = ctx.target.as_ref().map_or(Wire::OpenAi, Target::wire);
    // Audio endpoints answer in audio or plain text as the caller asked: any type goes.
    let bad_type = if resp.status.is_success() && !ctx.shape().media_answer() {
        unexpected_content_type(resp, ctx.stream().then(|| wire.stream_media()))
    } else {
        None
    };
    let failure = if bad_type.is_some() {
        Failure::BadAnswer { status }
    } else if ctx.error_decided {
        // Decided with the body (`on_held_error`): this error is the answer.
        return Ok(());
    } else if !resp.status.is_success() {
        Failure::Status {
            status,
            retry_after: retry_after(resp),
            class: None,
        }
    } else {
        if let Some(plan) = ctx.plan.as_mut() {
            let now = Instant::now();
            plan.answered(status, &state.cooldowns, now);
            if let (true, Some(a)) = (plan.multi, plan.attempts.last()) {
                // `least_latency`'s measure: the time to the provider's status line.
                state.load.observe(&a.target, now.saturating_duration_since(a.started));
            }
        }
        return Ok(());
    };
    if super::request::attempt_failed(state, ctx, failure, None) != Next::Stop {
        let mut e = Error::explain(FAILOVER_DECIDED, format!("provider answered {status}, trying again"));
        e.set_retry(true);
        return Err(e);
    }
    let provider = ctx.target.as_ref().map_or("", |t| t.provider.name.as_str());
    let err = match (bad_type, status) {
        (Some(got), _) => {
            // An HTML page with 200 (a captive portal, a proxy's login page, a wrong
            // base_url) is a broken provider, not an answer to forward.
            let expected = if ctx.stream() {
                wire.stream_media()
            } else {
                "application/json"
            };
            GwError::UpstreamError(format!(
                "The provider answered with Content-Type {got}, not {expected}."
            ))
        }
        (None, 401 | 403) => {
            // For the operator, not the caller: the provider's body may quote the key.
            tracing::warn!(provider, status, request_id = %ctx.request_id, "the provider refused the gateway's credential");
            GwError::UpstreamError(format!(
                "The provider refused the gateway's credential (status {status})."
            ))
        }
        (None, s) if s >= 500 => GwError::UpstreamError(format!("The provider answered with status {s}.")),
        _ => return Ok(()),
    };
    ctx.error = Some(err);
    let mut e = Error::explain(ErrorType::HTTPStatus(502), format!("provider answered {status}"));
    e.set_retry(false);
    Err(e)
}

fn retry_after(resp: &ResponseHeader) -> Option<std::time::Duration> {
    resp.headers
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after)
}

/// The most of an error answer read to find its class. A longer one is
/// [`ErrorClass::Unreadable`]: a refusal padded past it (a provider quoting the flagged
/// prompt back) stays final.
const ERROR_CLASS_BYTES: usize = 64 * 1024;

/// Whether to hold this answer back, whole, until its error class is known: only an
/// error whose class can change the route's decision (`Plan::wants_error_class`).
pub fn hold_error(resp: &ResponseHeader, ctx: &Ctx) -> Option<usize> {
    let plan = ctx.plan.as_ref()?;
    plan.wants_error_class(resp.status.as_u16())
        .then_some(ERROR_CLASS_BYTES)
}

/// A held error answer, whole: the provider's adapter names its class from the body
/// (`provider::error_class`), and the failover decision takes it with the status,
/// before anything reached the caller. A body that did not end within
/// [`ERROR_CLASS_BYTES`] (or whose provider hung up first) is unreadable: it is never
/// classified from its beginning. Moving on fails this attempt like a status would;
/// otherwise the answer goes to the caller as it came.
pub fn on_held_error(
    state: &AppState,
    tasks: &[pingora::protocols::http::HttpTask],
    ctx: &mut Ctx,
) -> pingora::Result<()> {
    use pingora::protocols::http::HttpTask;
    let Some(HttpTask::Header(resp, _)) = tasks.first() else {
        return Ok(());
    };
    let status = resp.status.as_u16();
    ctx.upstream_status = Some(status);
    let body: Vec<u8> = tasks
        .iter()
        .filter_map(|t| match t {
            HttpTask::Body(Some(b), _) => Some(&b[..]),
            _ => None,
        })
        .collect::<Vec<_>>()
        .concat();
    let wire = ctx.target.as_ref().map_or(Wire::OpenAi, Target::wire);
    let whole = tasks.iter().any(HttpTask::is_end);
    let class = if whole {
        provider::error_class(wire, status, &body)
    } else {
        Some(ErrorClass::Unreadable)
    };
    let failure = Failure::Status {
        status,
        retry_after: retry_after(resp),
        class,
    };
    if super::request::attempt_failed(state, ctx, failure, None) != Next::Stop {
        let mut e = Error::explain(FAILOVER_DECIDED, format!("provider answered {status}, trying again"));
        e.set_retry(true);
        return Err(e);
    }
    ctx.error_decided = true;
    Ok(())
}

/// The Content-Type of a successful answer when it is not what was asked for: the wire
/// format's stream type (`stream_media`) for a stream, JSON otherwise (`application/json`
/// or a `+json` type, any parameters). A missing Content-Type is let through: some
/// OpenAI-compatible servers omit it.
fn unexpected_content_type(resp: &ResponseHeader, stream_media: Option<&str>) -> Option<String> {
    let value = resp.headers.get(http::header::CONTENT_TYPE)?.as_bytes();
    let media = media_type(value);
    let fits = if let Some(expected) = stream_media {
        media.eq_ignore_ascii_case(expected.as_bytes())
    } else {
        let suffix = media.len().checked_sub(5).map(|at| &media[at..]);
        media.eq_ignore_ascii_case(b"application/json") || suffix.is_some_and(|s| s.eq_ignore_ascii_case(b"+json"))
    };
    // Bounded: the value is quoted in the caller's error message.
    (!fits).then(|| String::from_utf8_lossy(value).chars().take(100).collect())
}

/// The media type of a Content-Type value, without parameters. Compared in place (this
/// runs on every answer) and, as media types are, case-insensitively.
fn media_type(value: &[u8]) -> &[u8] {
    value.split(|&b| b == b';').next().unwrap_or_default().trim_ascii()
}

const X_AIGW_MODEL: http::HeaderName = http::HeaderName::from_static("x-aigw-model");

/// Headers the caller sees; decides how the body is read: passed through (usage read on
/// the way), or translated when the caller's dialect differs from the provider's.
pub fn on_response_header(resp: &mut ResponseHeader, ctx: &mut Ctx, caller_http10: bool) -> pingora::Result<()> {
    // The body is rewritten: its length is no longer known. Without a length or chunked
    // framing Pingora sends an HTTP/1.1 body close-delimited and closes the connection
    // after every such answer; HTTP/1.0 callers get exactly that, as they must. (HTTP/2
    // callers: Pingora drops the header.)
    let length_unknown = |resp: &mut ResponseHeader| -> pingora::Result<()> {
        resp.remove_header(&http::header::CONTENT_LENGTH);
        if !caller_http10 {
            resp.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
        }
        Ok(())
    };
    // The provider's headers describe the gateway's provider account, not the caller's
    // answer: only an allowlist reaches the caller (its rate limits are replaced by the
    // caller's own, when a policy applies).
    let dropped: Vec<http::HeaderName> = resp
        .headers
        .keys()
        .filter(|k| !provider::forwards_response_header(k))
        .cloned()
        .collect();
    for k in &dropped {
        resp.remove_header(k);
    }
    resp.insert_header(crate::api::X_REQUEST_ID, ctx.request_id.as_str())?;
    if let Some(c) = ctx.cache {
        resp.insert_header("x-aigw-cache", c.as_str())?;
    }
    if let Some(limits) = &ctx.limits {
        limits.headers().apply(resp);
    }
    if let (Some(b), true) = (&ctx.budget, resp.status.is_success()) {
        resp.insert_header("x-aigw-budget-remaining", format!("{:.6}", b.remaining_usd))?;
    }
    let Some(t) = &ctx.target else { return Ok(()) };
    // A name past ASCII goes as the bytes it is (a `&str` header must be ASCII, and
    // every answer of such a model would fail); config names hold no control characters.
    resp.insert_header(
        X_AIGW_MODEL,
        http::HeaderValue::from_bytes(t.alias.as_bytes())
            .map_err(|_| Error::explain(ErrorType::InternalError, "a model name that no header can carry"))?,
    )?;
    // `None`: Gemini and Converse, reached only through translation.
    let wire = t.wire();
    let provider_dialect = wire.dialect();
    let translating = provider_dialect != Some(ctx.dialect);
    let to_anthropic = ctx.dialect == Dialect::Anthropic;
    let upstream_model = t.upstream_model.as_str();
    let status = resp.status.as_u16();
    let is_sse = resp
        .headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| media_type(v.as_bytes()).eq_ignore_ascii_case(wire.stream_media().as_bytes()));
    if !resp.status.is_success() {
        // Errors are never cached.
        ctx.cache_fill = None;
        // A provider's own error, re-shaped into the caller's envelope when they differ.
        if translating {
            length_unknown(resp)?;
            resp.insert_header("content-type", "application/json")?;
            ctx.json = Some(JsonBody::new(if ctx.dialect == Dialect::Gemini {
                JsonTranslate::ErrorToGemini { status }
            } else {
                JsonTranslate::Error { status, to_anthropic }
            }));
        }
        return Ok(());
    }
    let is_json = |resp: &ResponseHeader| {
        resp.headers
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| media_type(v.as_bytes()).eq_ignore_ascii_case(b"application/json"))
    };
    // (Asked of audio endpoints only: chat and the rest pay nothing for it.)
    if ctx.shape().media_answer() && !is_json(resp) {
        // Audio bytes (speech), or a transcript as text, SRT, VTT or its own event stream:
        // passed through untouched, each chunk as it arrives.
        return Ok(());
    }
    if is_sse {
        let mode = if ctx.endpoint == Some(Endpoint::Responses) {
            Mode::Responses
        } else {
            provider::stream_mode(
                wire,
                ctx.dialect,
                ctx.caller_include_usage(),
                ctx.strip_usage,
                upstream_model,
                now(),
            )
        };
        let guard = (!ctx.response_guards.is_empty())
            .then(|| Box::new(StreamGuard::new(ctx.response_guards.clone(), ctx.shape())));
        // Dropping, translating or rewriting events changes the length (a Gemini stream
        // passed through is re-framed, event by event).
        if translating || ctx.strip_usage || guard.is_some() || matches!(mode, Mode::Translate(_)) {
            length_unknown(resp)?;
        }
        ctx.stream_guard = guard;
        ctx.stream_windows = guard::service::StreamWindows::new(&ctx.response_guards).map(Box::new);
        let mut sse = SseState::with_mode(mode);
        if wire == Wire::Converse {
            // AWS's binary frames in, SSE out.
            sse.decode_event_stream();
        }
        if wire.stream_media() != "text/event-stream" {
            resp.insert_header(http::header::CONTENT_TYPE, "text/event-stream")?;
        }
        ctx.sse = Some(sse);
        if let Some(fill) = ctx.cache_fill.as_mut() {
            fill.start_stream();
        }
        if let Some(t) = ctx.trace.as_mut() {
            t.start_stream(ctx.dialect);
        }
    } else {
        let mut json = JsonBody::new(provider::json_translate(
            ctx.shape(),
            wire,
            ctx.dialect,
            upstream_model,
            now(),
        ));
        if guard::intervenes(&ctx.response_guards) {
            json.hold = Some(ctx.dialect);
        }
        // Only the cache and a trace's content want a passed-through body whole at the end;
        // the cache no more than it may store.
        if !ctx.trace.as_ref().is_some_and(|t| t.capturing()) {
            let for_cache = ctx.cache_fill.as_ref().map_or(0, |f| f.max_entry_bytes() as usize);
            json.keep = for_cache.clamp(JsonBody::SCAN, JsonBody::LIMIT);
        }
        if json.holds() {
            length_unknown(resp)?;
        }
        ctx.json = Some(json);
    }
    Ok(())
}

/// After the response: the request is counted in the metrics, and its limits are
/// settled: the tokens the provider reported are charged (a request that failed upstream
/// used nothing and is charged nothing) and its concurrency slots are given back; its
/// cost goes to the owner's budget.
pub async fn settle(state: &AppState, session: &Session, ctx: &mut Ctx) {
    let status = session.response_written().map_or(0, |r| r.status.as_u16());
    let succeeded = ctx.upstream_status.is_some_and(|s| (200..300).contains(&s));
    // A stream cut before the provider's final count (the caller hung up after the last
    // content event, the provider broke off), a JSON answer with no count at all (some
    // OpenAI-compatible servers never send one), and a count the provider wrote so that
    // it cannot be read, are charged an estimate, never nothing.
    let cut = ctx.sse.as_ref().is_some_and(|sse| !sse.usage_final());
    let uncounted = ctx.sse.is_none() && ctx.json.is_some() && ctx.usage.is_none();
    if succeeded && (cut || uncounted || ctx.usage.is_some_and(|u| u.unread())) {
        let output = match (&ctx.sse, &ctx.json) {
            (Some(sse), _) => sse.output_estimate(),
            (None, Some(json)) => json.output_estimate(),
            (None, None) => 0,
        };
        let reported = ctx.usage.unwrap_or_default();
        ctx.usage = Some(reported.estimated(ctx.request_body.len(), output, cut || uncounted));
        ctx.usage_estimated = true;
    }
    ctx.record_metrics(&state.metrics, status);
    let tokens = match (succeeded, ctx.usage) {
        (true, Some(u)) => u.input_tokens.saturating_add(u.output_tokens),
        _ => 0,
    };
    if let Some(limits) = ctx.limits.as_mut() {
        state.limiter.finish(limits, tokens).await;
    }
    if let Some(quota) = ctx.quota.as_mut() {
        // The answering target's quota: the tokens its provider counted.
        state.limiter.finish(quota, tokens).await;
    }
    if let (true, Some(b), Some(usd)) = (succeeded, &ctx.budget, ctx.cost_usd()) {
        state.budgets.charge(b, usd).await;
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A body chunk on its way to the caller: usage is read, events are translated or
/// filtered, guardrails scan. `Err` ends the response (a guardrail blocked a stream).
pub fn on_body(state: &AppState, body: &mut Option<Bytes>, end_of_stream: bool, ctx: &mut Ctx) -> Result<(), GwError> {
    if let Some(sse) = ctx.sse.as_mut() {
        let mut out = body.take().map(|b| sse.feed(b)).unwrap_or_default();
        if end_of_stream {
            let rest = sse.finish();
            if !rest.is_empty() {
                out = if out.is_empty() {
                    rest
                } else {
                    [out, rest].concat().into()
                };
            }
        }
        ctx.usage = sse.usage;
        if sse.overflowed() {
            let e = GwError::UpstreamError(format!(
                "The provider sent a stream event over {} bytes.",
                crate::stream::MAX_EVENT_BYTES
            ));
            ctx.error = Some(e.clone());
            return Err(e);
        }
        if let Some(g) = ctx.stream_guard.as_mut() {
            out = g.feed(&out, end_of_stream, &mut ctx.guard_hits).map_err(|name| {
                let e = GwError::ContentFilter {
                    guardrail: name.to_string(),
                    response: true,
                };
                ctx.error = Some(e.clone());
                e
            })?;
        }
        if end_of_stream && sse.passthrough() && !sse.complete() && ctx.error.is_none() {
            // The provider's stream ended (a clean close) before its end marker: broken,
            // and it must not pass for a clean finish.
            let e = GwError::UpstreamError("The provider's stream ended before its end marker.".into());
            out = [out, e.sse_event(ctx.dialect)].concat().into();
            ctx.error = Some(e);
        }
        // Whatever goes out goes through the services, even after an error (a stream cut
        // short still carries the text of its last read).
        if ctx.stream_windows.is_some() {
            // The guardrail services judge it first: `on_body_async` releases it.
            *body = None;
            ctx.events_for_services = Some((out, end_of_stream));
            return Ok(());
        }
        release_events(state, ctx, body, out, end_of_stream);
    } else if let Some(j) = ctx.json.as_mut() {
        if let Some(b) = body.as_ref() {
            j.push(b);
        }
        // A translated or guarded body is held back and replaced whole at the end.
        let holds = j.holds();
        if holds && !end_of_stream {
            *body = None;
        }
        if end_of_stream {
            let (mut usage, whole, held) = j.finish();
            if ctx.shape().images() {
                let asked = ctx.request_view.as_ref().and_then(|v| v.n);
                usage.get_or_insert_with(Default::default).images = image_count(&whole).or(asked).unwrap_or(1);
            }
            ctx.usage = usage;
            let completed = ctx.upstream_status.is_some_and(|s| (200..300).contains(&s));
            let checked = match (&held, completed && !ctx.response_guards.is_empty()) {
                (Some(text), true) => {
                    let mut blocked = None;
                    let out = guard::check_response(
                        &ctx.response_guards,
                        ctx.shape(),
                        text,
                        &mut ctx.guard_hits,
                        &mut blocked,
                    );
                    if let Some(name) = blocked {
                        ctx.error = Some(GwError::ContentFilter {
                            guardrail: name.to_string(),
                            response: true,
                        });
                    }
                    out
                }
                _ => None,
            };
            // Empty when a passed-through body was too large to keep.
            let sent = if holds {
                checked.or(held)
            } else {
                Some(whole).filter(|b| !b.is_empty())
            };
            // After the rules, even when they withheld a choice: the others go out.
            if holds && completed && sent.is_some() && guard::service::any(&ctx.response_guards) {
                // The services judge it first: `on_body_async` sends it.
                *body = None;
                ctx.answer_for_services = sent;
                return Ok(());
            }
            if !holds && completed && guard::service::any(&ctx.response_guards) {
                // Only monitors (nothing is held for them): judged as it leaves, for the
                // record.
                ctx.answer_for_monitors = sent.clone();
            }
            send_answer(state, ctx, body, holds, sent);
        }
    }
    Ok(())
}

/// Stream events leave: the first one timed, each traced and kept for the cache, which
/// is filled at the end.
fn release_events(state: &AppState, ctx: &mut Ctx, body: &mut Option<Bytes>, out: Bytes, end_of_stream: bool) {
    if ctx.first_event.is_none() && !out.is_empty() {
        ctx.first_event = Some(Instant::now());
    }
    if let Some(fill) = ctx.cache_fill.as_mut() {
        fill.feed(&out);
    }
    if let Some(t) = ctx.trace.as_mut() {
        t.sent(&out, false);
    }
    *body = Some(out);
    if end_of_stream {
        fill_cache(state, ctx, None);
    }
}

/// A whole JSON answer leaves: traced, in the body (when held), into the cache.
fn send_answer(state: &AppState, ctx: &mut Ctx, body: &mut Option<Bytes>, holds: bool, sent: Option<Bytes>) {
    if let (Some(t), Some(b)) = (ctx.trace.as_mut(), &sent) {
        t.sent(b, true);
    }
    if holds {
        *body = sent.clone();
    }
    fill_cache(state, ctx, sent);
}

/// Whether [`on_body_async`] has work: a whole answer or stream events waiting for the
/// guardrail services.
pub fn wants_async(ctx: &Ctx) -> bool {
    ctx.answer_for_services.is_some() || ctx.events_for_services.is_some() || ctx.answer_for_monitors.is_some()
}

/// The guardrail services' turn on what the rules passed: a whole JSON answer is judged,
/// then sent like any other (a block withholds its choices, as the rules do); stream
/// events go out once their window is judged (`guard::service::StreamWindows`), or the
/// stream ends with the guardrail's error.
pub async fn on_body_async(state: &AppState, body: &mut Option<Bytes>, ctx: &mut Ctx) -> Result<(), GwError> {
    if let Some((events, end)) = ctx.events_for_services.take() {
        let Some(mut windows) = ctx.stream_windows.take() else {
            release_events(state, ctx, body, events, end);
            return Ok(());
        };
        let about = super::ctx::about(&ctx.alias, &ctx.caller, &ctx.request_id);
        let judged = windows.feed(events, end, about, &mut ctx.guard_hits).await;
        ctx.stream_windows = Some(windows);
        return match judged {
            Ok(out) => {
                release_events(state, ctx, body, out, end);
                Ok(())
            }
            Err(stop) => {
                let e = stop.error(true);
                ctx.error = Some(e.clone());
                Err(e)
            }
        };
    }
    if let Some(answer) = ctx.answer_for_monitors.take() {
        // Already on its way: only the hits are recorded.
        let about = super::ctx::about(&ctx.alias, &ctx.caller, &ctx.request_id);
        let mut stop = None;
        let guards = std::mem::take(&mut ctx.response_guards);
        let _ =
            guard::service::check_response(&guards, ctx.shape(), &answer, about, &mut ctx.guard_hits, &mut stop).await;
        ctx.response_guards = guards;
        return Ok(());
    }
    let Some(answer) = ctx.answer_for_services.take() else {
        return Ok(());
    };
    let guards = std::mem::take(&mut ctx.response_guards);
    let about = super::ctx::about(&ctx.alias, &ctx.caller, &ctx.request_id);
    let mut stop = None;
    let checked =
        guard::service::check_response(&guards, ctx.shape(), &answer, about, &mut ctx.guard_hits, &mut stop).await;
    ctx.response_guards = guards;
    if let Some(stop) = stop {
        ctx.error = Some(stop.error(true));
    }
    send_answer(state, ctx, body, true, Some(checked.unwrap_or(answer)));
    Ok(())
}

/// The images an image endpoint's answer holds (its `data`), when the body could be read
/// whole; a larger one (base64 images past what is kept) is counted by the request's `n`.
fn image_count(whole: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Images {
        data: Vec<serde::de::IgnoredAny>,
    }
    serde_json::from_slice::<Images>(whole)
        .ok()
        .map(|i| i.data.len() as u64)
}

/// The answer is complete: a cache miss stores it (in a task), unless something went
/// wrong on the way (a guardrail blocked, the provider failed).
fn fill_cache(state: &AppState, ctx: &mut Ctx, json: Option<Bytes>) {
    let Some(fill) = ctx.cache_fill.take() else { return };
    let ok = ctx.error.is_none() && ctx.upstream_status.is_some_and(|s| (200..300).contains(&s));
    if let (true, Some(t)) = (ok, &ctx.target) {
        (*fill).finish(json, ctx.usage, t.alias.clone(), state.metrics.clone());
    }
}

/// The gateway error for a proxying failure, when no more specific one was recorded.
fn classify(e: &Error) -> Option<GwError> {
    use ErrorType::*;
    match (e.esource(), e.etype()) {
        (_, ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout) => Some(GwError::UpstreamTimeout),
        // The caller went away: nobody to answer.
        (ErrorSource::Downstream, _) => None,
        (ErrorSource::Upstream, _) => Some(GwError::UpstreamError(
            "The provider could not be reached or answered badly.".into(),
        )),
        (_, ConnectRefused | ConnectNoRoute | ConnectError | TLSHandshakeFailure | InvalidCert | HandshakeError) => {
            Some(GwError::UpstreamError("The provider could not be reached.".into()))
        }
        _ => Some(GwError::Internal),
    }
}

/// Answers a request whose proxying failed. Returns the status for logging (0: none
/// sent) and whether the connection can serve another request: only after a whole error
/// answer of the gateway's own (the request body was read in full before proxying).
pub async fn on_failure(session: &mut Session, e: &Error, ctx: &mut Ctx) -> (u16, bool) {
    if let Some(sent) = session.response_written().map(|r| r.status.as_u16()) {
        // The header is out, so the status cannot change. A stream is ended with an error
        // event and no [DONE], so the failure cannot pass for a clean finish.
        if ctx.sse.is_some() {
            // A guardrail that stopped the stream, or a broken stream the gateway caught,
            // says so; anything else is the provider's.
            let err = ctx
                .error
                .clone()
                .unwrap_or_else(|| GwError::UpstreamError("The provider's stream ended unexpectedly.".into()));
            let _ = session
                .write_response_body(Some(err.sse_event(ctx.dialect)), true)
                .await;
            ctx.error = Some(err);
        }
        return (sent, false);
    }
    let err = match ctx.error.clone().or_else(|| classify(e)) {
        Some(err) => err,
        None => return (0, false),
    };
    tracing::warn!(request_id = %ctx.request_id, error = %e, "proxying failed");
    let status = err.status();
    let written = err.respond(session, ctx.dialect, &ctx.request_id).await;
    if let Err(we) = &written {
        tracing::debug!(error = %we, "could not write the error response");
    }
    ctx.error = Some(err);
    (status, written.is_ok())
}
