//! The request side: every check a request passes before it may go upstream, in the
//! SPEC's order (cheapest first): route and method, credential, body size, JSON, model
//! exists, allowlist, rate limits and budget, request guardrails, cache; then the upstream
//! request is prepared.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName};
use http::Method;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use serde_json::json;

use super::ctx::Ctx;
use crate::api::{Endpoint, X_REQUEST_ID};
use crate::auth;
use crate::cache::{self, Lookup};
use crate::config::Snapshot;
use crate::error::GwError;
use crate::guard;
use crate::guard::stream::StreamGuard;
use crate::limit::Admitted;
use crate::provider::Target;
use crate::provider::{self, body};
use crate::raw::{Balance, HashOn};
use crate::route::plan::{Failure, Next, Plan};
use crate::state::AppState;
use crate::telemetry::trace::RequestTrace;

/// What `request_filter` should do next.
pub enum Admission {
    /// Go upstream.
    Proxy,
    /// The gateway answered the request itself.
    Answered,
}

enum Route {
    Upstream(Endpoint),
    ListModels,
    GetModel(String),
    /// The MCP gateway: every server (`/mcp`) or one (`/mcp/{server}`).
    Mcp(Option<String>),
    /// OpenAI's Realtime API: a WebSocket session for the `?model=` alias.
    Realtime(Option<String>),
    /// Gemini's API: `POST /v1beta/models/{alias}:{method}` (or `/v1/...`); the alias is
    /// in the path, and so is whether the answer streams.
    Gemini {
        endpoint: Endpoint,
        alias: String,
        stream: bool,
    },
    /// `/v1/files` and `/v1/batches`, which the gateway answers itself (`files`).
    Files(crate::files::Op),
    /// Gemini's `GET /v1beta/models` (with its page query) and `GET /v1beta/models/{alias}`.
    GeminiModels(Option<String>),
}

/// Whether a path is Gemini's API (`/v1beta/...`, or `/v1/models/{alias}:{method}`): its
/// errors are in Google's envelope from the first check on.
fn is_gemini_path(path: &str) -> bool {
    path.starts_with("/v1beta/")
        || path
            .strip_prefix("/v1/models/")
            .and_then(|rest| rest.rsplit_once(':'))
            .is_some_and(|(_, method)| Endpoint::from_gemini_method(method).is_some())
}

/// `models/{alias}:{method}` after the API version. The alias is taken as it is written
/// (no percent-decoding: an alias is a config name, matched exactly), up to the last `:`
/// (aliases such as `llama3:8b` keep theirs), and may not hold a `/` (Google's SDKs put
/// other resources, never a model id with a slash, under `models/`). `None`: not a
/// Gemini method path.
fn gemini_route(path: &str, query: Option<&str>) -> Option<Result<Route, GwError>> {
    if !is_gemini_path(path) {
        return None;
    }
    let not_found = || Some(Err(GwError::NotFound(path.to_owned())));
    // The model list and a model's object: Google's SDKs read them (`models.list`,
    // `models.get`); on `/v1beta` only, as `/v1/models` is OpenAI's.
    if path == "/v1beta/models" {
        return Some(Ok(Route::GeminiModels(None)));
    }
    if let Some(alias) = path.strip_prefix("/v1beta/models/").filter(|a| !a.contains(':')) {
        if alias.is_empty() || alias.contains('/') {
            return not_found();
        }
        return Some(Ok(Route::GeminiModels(Some(alias.to_owned()))));
    }
    let Some((alias, method)) = path
        .strip_prefix("/v1beta/models/")
        .or_else(|| path.strip_prefix("/v1/models/"))
        .and_then(|rest| rest.rsplit_once(':'))
    else {
        return not_found();
    };
    let Some((endpoint, stream)) = Endpoint::from_gemini_method(method) else {
        return not_found();
    };
    if alias.is_empty() || alias.contains('/') {
        return not_found();
    }
    if stream && query_param(query, "alt").is_none_or(|a| a != "sse") {
        // Without `alt=sse` Google streams one JSON array; its SDKs always ask for SSE.
        return Some(Err(GwError::InvalidRequest(
            "streamGenerateContent is served as server-sent events: add ?alt=sse (Google's SDKs do).".into(),
        )));
    }
    Some(Ok(Route::Gemini {
        endpoint,
        alias: alias.to_owned(),
        stream,
    }))
}

/// The first value of a query parameter, percent-decoded.
fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Takes a Gemini caller's `?key=` out of the request line, so that nothing after
/// admission (the access log, spans, Pingora's own logs, the provider) can see it; the
/// rest of the query stays.
fn take_query_key(req: &mut RequestHeader) -> Option<String> {
    let query = req.uri.query()?;
    let key = query_param(Some(query), "key")?;
    let kept: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form_urlencoded::parse(query.as_bytes()).filter(|(k, _)| k != "key"))
        .finish();
    let uri = if kept.is_empty() {
        req.uri.path().to_owned()
    } else {
        format!("{}?{kept}", req.uri.path())
    };
    match uri.parse::<http::Uri>() {
        Ok(u) => req.set_uri(u),
        // The path came from a URI that parsed: it parses again. Dropping the whole query
        // is the safe way out should it not.
        Err(_) => req.set_uri(http::Uri::from_static("/")),
    }
    Some(key)
}

fn route(method: &Method, path: &str, query: Option<&str>) -> Result<Route, GwError> {
    let wrong = |allow| GwError::MethodNotAllowed {
        method: method.to_string(),
        path: path.to_owned(),
        allow,
    };
    if let Some(r) = gemini_route(path, query) {
        return match r {
            Ok(r @ Route::GeminiModels(_)) if method == Method::GET || method == Method::HEAD => Ok(r),
            Ok(Route::GeminiModels(None)) => Err(wrong("GET")),
            // `models/{x}` with another method is a method path whose colon is missing
            // or encoded: it names nothing.
            Ok(Route::GeminiModels(Some(_))) => Err(GwError::NotFound(path.to_owned())),
            Ok(r) if method == Method::POST => Ok(r),
            Ok(_) => Err(wrong("POST")),
            Err(e) => Err(e),
        };
    }
    let (r, allow) = match path {
        "/v1/chat/completions" => (Route::Upstream(Endpoint::ChatCompletions), "POST"),
        "/v1/embeddings" => (Route::Upstream(Endpoint::Embeddings), "POST"),
        "/v1/messages" => (Route::Upstream(Endpoint::Messages), "POST"),
        "/v1/responses" => (Route::Upstream(Endpoint::Responses), "POST"),
        "/v1/completions" => (Route::Upstream(Endpoint::Completions), "POST"),
        "/v1/moderations" => (Route::Upstream(Endpoint::Moderations), "POST"),
        "/v1/images/generations" => (Route::Upstream(Endpoint::ImageGenerations), "POST"),
        "/v1/images/edits" => (Route::Upstream(Endpoint::ImageEdits), "POST"),
        "/v1/audio/transcriptions" => (Route::Upstream(Endpoint::AudioTranscriptions), "POST"),
        "/v1/audio/translations" => (Route::Upstream(Endpoint::AudioTranslations), "POST"),
        "/v1/audio/speech" => (Route::Upstream(Endpoint::AudioSpeech), "POST"),
        "/v1/models" => (Route::ListModels, "GET"),
        "/v1/realtime" => (Route::Realtime(query_param(query, "model")), "GET"),
        "/mcp" => (Route::Mcp(None), "POST, GET, DELETE"),
        p => match (p.strip_prefix("/v1/models/"), p.strip_prefix("/mcp/")) {
            (Some(id), _) if !id.is_empty() => (Route::GetModel(id.to_owned()), "GET"),
            (_, Some(server)) if !server.is_empty() && !server.contains('/') => {
                (Route::Mcp(Some(server.to_owned())), "POST, GET, DELETE")
            }
            _ => match crate::files::route(method, p) {
                Some(op) => return op.map(Route::Files),
                None => return Err(GwError::NotFound(path.to_owned())),
            },
        },
    };
    let ok = match allow {
        "GET" => method == Method::GET || method == Method::HEAD,
        "POST" => method == Method::POST,
        _ => [Method::POST, Method::GET, Method::DELETE].contains(method),
    };
    if ok {
        Ok(r)
    } else {
        Err(wrong(allow))
    }
}

/// Pingora keeps an HTTP/1.1 connection that asked for keep-alive open with no time limit
/// on the next request (its parser marks it "infinite"), so an idle or slowloris
/// connection would be held forever after its first request. The configured
/// `server.keepalive_timeout_s` bounds the idle wait and each read of the next head; a
/// connection that asked to close stays closing.
fn bound_keepalive(session: &mut Session, timeout_s: u64) {
    if session.get_keepalive() == Some(0) {
        session.set_keepalive(Some(timeout_s));
    }
}

pub async fn admit(state: &Arc<AppState>, session: &mut Session, ctx: &mut Ctx) -> Result<Admission, GwError> {
    let snap = state.snapshot();
    if state.handing_over.load(std::sync::atomic::Ordering::Relaxed) {
        // `Connection: close` on this answer: the client's next request opens a connection,
        // which the new process accepts.
        session.set_keepalive(None);
    } else {
        bound_keepalive(session, snap.server.keepalive_timeout_s);
    }
    // A Gemini caller's `?key=` leaves the request line before anything else reads it.
    let gemini = is_gemini_path(session.req_header().uri.path());
    let query_key = if gemini {
        take_query_key(session.req_header_mut())
    } else {
        None
    };
    // So does a browser's key offered as a WebSocket subprotocol (realtime).
    let realtime = session.req_header().uri.path() == "/v1/realtime";
    let subprotocol_key = match realtime.then(|| auth::subprotocol_key(&session.req_header().headers)) {
        Some(Some((key, rest))) => {
            let req = session.req_header_mut();
            req.remove_header(&header::SEC_WEBSOCKET_PROTOCOL);
            if let Some(rest) = rest {
                // Known valid: parsed from this header.
                let _ = req.insert_header(header::SEC_WEBSOCKET_PROTOCOL, rest);
            }
            Some(key)
        }
        _ => None,
    };
    let query_key = query_key.map(String::into_bytes).or(subprotocol_key);
    let req = session.req_header();
    // Anthropic and Gemini callers get their error envelope from the very first check.
    if req.uri.path() == "/v1/messages" {
        ctx.dialect = crate::api::Dialect::Anthropic;
    } else if gemini {
        ctx.dialect = crate::api::Dialect::Gemini;
    }
    ctx.snapshot = Some(snap.clone());
    // Traced from the first check on, so refusals show up in traces too.
    if let (Some(_), Some(o)) = (&state.traces, &snap.observability.otlp) {
        ctx.trace = Some(RequestTrace::begin(
            &req.headers,
            o.sample_ratio,
            o.capture_content,
            ctx.started,
        ));
    }
    let route = route(&req.method, req.uri.path(), req.uri.query())?;
    let client = session
        .digest()
        .and_then(|d| d.ssl_digest.as_ref())
        .and_then(|s| s.extension.get::<crate::tls::ClientIdentity>());
    let caller = auth::authenticate(
        &snap.keys,
        &snap.jwt,
        &state.limit_cells,
        &state.metrics,
        &session.req_header().headers,
        query_key.as_deref(),
        client,
    )
    .await?;
    ctx.caller = Some(caller.clone());

    let (endpoint, gemini_call) = match route {
        Route::Upstream(e) => (e, None),
        Route::Gemini {
            endpoint,
            alias,
            stream,
        } => (endpoint, Some((alias, stream))),
        Route::ListModels => {
            let data: Vec<_> = snap
                .model_order
                .iter()
                .filter(|m| caller.allows(m))
                .map(|m| model_object(&snap, m))
                .collect();
            answer_json(session, ctx, json!({"object": "list", "data": data})).await?;
            return Ok(Admission::Answered);
        }
        Route::Mcp(scope) => {
            let method = session.req_header().method.clone();
            let body = match method {
                Method::POST => {
                    read_body(
                        session,
                        snap.server.max_request_body_bytes,
                        snap.server.client_body_timeout,
                    )
                    .await?
                }
                _ => Bytes::new(),
            };
            let headers = &session.req_header().headers;
            let env = crate::mcp::Env {
                request_id: &ctx.request_id,
                servers: &snap.mcp_servers,
                sessions: &state.mcp_sessions,
                limiter: &state.limiter,
                metrics: &state.metrics,
            };
            // Boxed, like files and realtime below: a branch's future is part of every
            // request's (the largest branch sets its size, and Pingora's boxing copies it
            // whole per request), so the rare large ones live on the heap when taken.
            let h = Box::pin(crate::mcp::handle(
                &env,
                &caller,
                scope.as_deref(),
                &method,
                headers,
                &body,
            ))
            .await;
            ctx.guard_hits = h.hits;
            ctx.mcp_method = Some(h.method);
            ctx.mcp = h.call;
            let r = h.reply;
            let body = r.body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
            answer(session, ctx, r.status, "application/json", body, |resp| {
                if let Some(id) = &r.session {
                    resp.insert_header("mcp-session-id", id.as_str())?;
                }
                if r.status == 405 {
                    resp.insert_header("allow", "POST, DELETE")?;
                }
                Ok(())
            })
            .await;
            return Ok(Admission::Answered);
        }
        Route::Files(op) => {
            Box::pin(files(state, session, ctx, &snap, &caller, op)).await?;
            return Ok(Admission::Answered);
        }
        Route::Realtime(alias) => {
            Box::pin(super::realtime::serve(state, session, ctx, &caller, &snap, alias)).await?;
            return Ok(Admission::Answered);
        }
        Route::GeminiModels(alias) => {
            let body = match alias {
                Some(alias) => {
                    if !snap.models.contains_key(&alias) || !caller.allows(&alias) {
                        return Err(GwError::ModelNotFound(alias));
                    }
                    gemini_model_object(&alias)
                }
                None => {
                    let query = session.req_header().uri.query();
                    gemini_model_list(&snap, &caller, query)?
                }
            };
            answer_json(session, ctx, body).await?;
            return Ok(Admission::Answered);
        }
        Route::GetModel(id) => {
            // A model this key may not use is as absent as an unknown one.
            if !snap.models.contains_key(&id) || !caller.allows(&id) {
                return Err(GwError::ModelNotFound(id));
            }
            answer_json(session, ctx, model_object(&snap, &id)).await?;
            return Ok(Admission::Answered);
        }
    };
    ctx.endpoint = Some(endpoint);

    let limit = snap.server.max_request_body_bytes;
    announce_body(session, limit).await?;
    let body = read_body(session, limit, snap.server.client_body_timeout).await?;
    // An upload endpoint takes a form and nothing else (checked once the body is read, so
    // the refusal is not a reset under a caller still uploading).
    let boundary = match endpoint.multipart() {
        true => {
            let ct = session.req_header().headers.get(header::CONTENT_TYPE);
            Some(provider::form::boundary(ct.map(|v| v.as_bytes()))?)
        }
        false => None,
    };

    // Gemini's requests name the model in the path and say streaming by the method;
    // upload endpoints' forms name it in a field.
    let parse = |body: &Bytes| match (&gemini_call, &boundary) {
        (Some((alias, stream)), _) => body::parse_gemini(body, alias, *stream),
        (None, Some(b)) => provider::form::parse(body, b, form_files(endpoint)).map(|f| f.view()),
        (None, None) => body::parse(body),
    };
    let (view, form) = match &boundary {
        Some(b) => {
            let f = provider::form::parse(&body, b, form_files(endpoint))?;
            (f.view(), Some(f))
        }
        None => (parse(&body)?, None),
    };
    let model = snap
        .models
        .get(view.model.as_str())
        .ok_or_else(|| GwError::ModelNotFound(view.model.clone()))?;
    if !caller.allows(&model.name) {
        return Err(GwError::ModelNotAllowed(model.name.clone()));
    }
    let plan = Plan::new(model, &state.load, &caller.owner);
    let estimate_tokens =
        endpoint == Endpoint::CountTokens && !plan.candidates.iter().any(|t| provider::can_serve(endpoint, t));
    if !estimate_tokens && !plan.candidates.iter().any(|t| provider::can_serve(endpoint, t)) {
        return Err(GwError::InvalidRequest(format!(
            "The model '{}' cannot serve {}.",
            model.name,
            endpoint.suffix()
        )));
    }
    ctx.alias = Some(model.name.clone());
    let bindings: Vec<&Arc<_>> = caller.limits.iter().chain(model.limits.iter()).collect();
    ctx.limits = state.limiter.admit(&bindings).await?;
    if let Some(b) = &caller.budget {
        ctx.budget = Some(state.budgets.admit(b, &caller.owner, chrono::Utc::now()).await?);
    }
    ctx.request_view = Some(view);
    if estimate_tokens {
        // No target counts tokens in Gemini's terms: the gateway's estimate, said so.
        let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| GwError::InvalidJson(e.to_string()))?;
        answer_json(session, ctx, provider::gemini::estimate_count(&v)).await?;
        return Ok(Admission::Answered);
    }
    let on_request = guard::applicable(&caller.guardrails, &model.guardrails, false);
    let about = guard::service::About {
        model: &model.name,
        owner: &caller.owner,
        request_id: ctx.request_id.as_str(),
    };
    let masked = match &form {
        Some(f) => guard_form(&on_request, endpoint, &body, f, about, &mut ctx.guard_hits).await?,
        None => guard::service::check_request(&on_request, endpoint, &body, about, &mut ctx.guard_hits).await?,
    };
    let body = match masked {
        // A masked body has other spans: its own parse is the one kept.
        Some(masked) => {
            ctx.request_view = Some(parse(&masked)?);
            masked
        }
        None => body,
    };
    ctx.request_body = body.clone();
    ctx.response_guards = match endpoint {
        // Vectors, token counts, moderation scores, images and audio: no completion text
        // to check (docs/guardrails.md says where a guardrail cannot apply).
        Endpoint::Embeddings
        | Endpoint::EmbedContent
        | Endpoint::BatchEmbedContents
        | Endpoint::CountTokens
        | Endpoint::Moderations
        | Endpoint::ImageGenerations
        | Endpoint::ImageEdits
        | Endpoint::AudioTranscriptions
        | Endpoint::AudioTranslations
        | Endpoint::AudioSpeech => Vec::new(),
        _ => guard::applicable(&caller.guardrails, &model.guardrails, true),
    };
    let headers = &session.req_header().headers;
    let looked_up = cache::lookup(
        &state.caches,
        &state.metrics,
        model,
        &caller,
        endpoint,
        ctx.dialect,
        headers,
        &body,
    )
    .await;
    match looked_up {
        Some(Lookup::Hit(entry)) => {
            ctx.cache = Some(cache::Outcome::Hit);
            answer_from_cache(session, ctx, &entry).await;
            return Ok(Admission::Answered);
        }
        Some(Lookup::Go(outcome, fill)) => {
            ctx.cache = Some(outcome);
            ctx.cache_fill = fill;
        }
        None => {}
    }
    ctx.plan = Some(plan);
    Ok(Admission::Proxy)
}

/// The fields of a multipart endpoint's form that carry files; every other part is text.
fn form_files(endpoint: Endpoint) -> &'static [&'static str] {
    match endpoint {
        Endpoint::ImageEdits => &["image", "image[]", "mask"],
        _ => &["file"],
    }
}

/// Request guardrails on a form: its text fields (the prompt, the language, ...) are
/// scanned as a request's texts are; files (audio, images) are bytes no guardrail reads.
/// Returns the form with masked values spliced in when something was masked.
async fn guard_form(
    guards: &[Arc<guard::Guardrail>],
    endpoint: Endpoint,
    body: &Bytes,
    form: &provider::form::FormView,
    about: guard::service::About<'_>,
    hits: &mut Vec<guard::Hit>,
) -> Result<Option<Bytes>, GwError> {
    if guards.is_empty() || form.texts.is_empty() {
        return Ok(None);
    }
    let texts: Vec<&str> = form.texts.iter().map(|t| t.value.as_str()).collect();
    let json = serde_json::to_vec(&texts).map_err(|_| GwError::Internal)?;
    let Some(masked) = guard::service::check_request(guards, endpoint, &json, about, hits).await? else {
        return Ok(None);
    };
    let masked: Vec<String> = serde_json::from_slice(&masked).map_err(|_| GwError::Internal)?;
    let edits = form
        .texts
        .iter()
        .zip(masked)
        .filter(|(t, m)| t.value != *m)
        .map(|(t, m)| (t.span.clone(), std::borrow::Cow::Owned(m.into_bytes())))
        .collect();
    Ok(Some(body::splice(body, edits)))
}

/// Rejects a body that declares more than `limit` bytes before any of it is read, and
/// tells a client that waits for it (`Expect: 100-continue`) to send it.
async fn announce_body(session: &mut Session, limit: u64) -> Result<(), GwError> {
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(GwError::RequestTooLarge { limit });
    }
    let expects_continue = session
        .req_header()
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue {
        session
            .write_continue_response()
            .await
            .map_err(|_| GwError::InvalidRequest("The connection failed.".into()))?;
    }
    Ok(())
}

/// `/v1/files` and `/v1/batches`: the body bounded like every other, the caller's rate
/// limits (in the SPEC's order), then the files service answers (with the provider's
/// credential).
async fn files(
    state: &Arc<AppState>,
    session: &mut Session,
    ctx: &mut Ctx,
    snap: &Arc<Snapshot>,
    caller: &Arc<auth::ApiKeyEntry>,
    op: crate::files::Op,
) -> Result<(), GwError> {
    let body = if op.has_body() {
        let limit = snap.server.max_request_body_bytes;
        announce_body(session, limit).await?;
        read_body(session, limit, snap.server.client_body_timeout).await?
    } else {
        Bytes::new()
    };
    let bindings: Vec<&Arc<_>> = caller.limits.iter().collect();
    ctx.limits = state.limiter.admit(&bindings).await?;
    let env = crate::files::Env {
        snap,
        budgets: &state.budgets,
        metrics: &state.metrics,
    };
    let req = session.req_header();
    let call = crate::files::Call {
        caller,
        headers: &req.headers,
        query: req.uri.query(),
        body,
    };
    match state.files.handle(&env, call, op).await? {
        crate::files::Reply::Json(v) => answer_json(session, ctx, v).await,
        crate::files::Reply::Content {
            content_type,
            length,
            mut body,
        } => {
            let write = async {
                let mut resp = ResponseHeader::build(200, Some(6))?;
                resp.insert_header("content-type", content_type.as_str())?;
                match length {
                    Some(n) => resp.insert_header("content-length", n.to_string())?,
                    None => resp.insert_header("transfer-encoding", "chunked")?,
                }
                resp.insert_header(X_REQUEST_ID, ctx.request_id.as_str())?;
                let head_only = session.req_header().method == Method::HEAD;
                session.write_response_header(Box::new(resp), head_only).await?;
                if head_only {
                    return Ok(());
                }
                // Streamed as it arrives: a large output file is never held whole.
                loop {
                    match body.chunk().await {
                        Ok(Some(c)) => session.write_response_body(Some(c), false).await?,
                        Ok(None) => break,
                        Err(e) => {
                            return Err(pingora::Error::explain(
                                pingora::ErrorType::ReadError,
                                format!("file content from the provider broke off: {}", e.without_url()),
                            ))
                        }
                    }
                }
                session.write_response_body(None, true).await?;
                Ok::<(), Box<pingora::Error>>(())
            };
            if let Err(e) = write.await {
                tracing::debug!(error = %e, "could not stream a file's content");
            }
            Ok(())
        }
    }
}

/// Starts the next upstream attempt: picks the target (in the route's order, cooling
/// targets and targets with no room in their provider quota passed over) and builds its
/// upstream body.
pub async fn begin_attempt(state: &AppState, ctx: &mut Ctx) -> Result<(), GwError> {
    let endpoint = ctx.endpoint.ok_or(GwError::Internal)?;
    let usable = |t: &Target| provider::can_serve(endpoint, t);
    let target = loop {
        let plan = ctx.plan.as_mut().ok_or(GwError::Internal)?;
        let now = Instant::now();
        let first = plan.attempts.is_empty();
        let begun = plan.begin(&state.cooldowns, now, &usable).cloned();
        let target = match begun {
            Ok(t) => t,
            Err(soonest) if plan.quota_wait.is_some() => {
                // Every target left is cooling or out of quota: the soonest has room then.
                let cooling = soonest.map(|t| t.saturating_duration_since(now));
                let wait = plan.quota_wait.into_iter().chain(cooling).min().unwrap_or_default();
                return Err(quota_exhausted(ctx.alias.as_deref().unwrap_or(""), wait));
            }
            Err(soonest) if first => {
                return Err(GwError::NoHealthyTarget {
                    message: format!(
                        "Every target of '{}' is cooling down after failures.",
                        ctx.alias.as_deref().unwrap_or("")
                    ),
                    retry_after: soonest.map(|t| t.saturating_duration_since(now).as_secs_f64().ceil() as u64),
                })
            }
            Err(_) => return Err(GwError::UpstreamError("No target is left to try.".into())),
        };
        let multi = plan.multi;
        match admit_quota(state, &target).await {
            Ok(quota) => {
                ctx.quota = quota;
                if multi {
                    // The previous attempt's count ends as this one's begins.
                    ctx.busy = Some(state.load.busy(&target.alias));
                }
                break target;
            }
            Err(GwError::RateLimited(r)) => {
                if let Some(plan) = ctx.plan.as_mut() {
                    plan.over_quota(Duration::from_secs(r.retry_after_s));
                }
            }
            Err(e) => return Err(e),
        }
    };
    if let Some(t) = ctx.trace.as_mut() {
        t.new_attempt();
    }
    let upstream = endpoint.upstream(target.wire()).ok_or(GwError::Internal)?;
    let view = ctx.request_view.as_ref().ok_or(GwError::Internal)?;
    let (upstream_body, injected) = provider::upstream_body(endpoint, upstream, &ctx.request_body, view, &target)?;
    if view.is_form() {
        // An upload is held once: the rewritten form replaces the caller's (the next
        // attempt rewrites it again), rather than a second copy of the file beside it.
        ctx.request_view = Some(view.form_rewritten(&target.upstream_model));
        ctx.request_body = upstream_body.clone();
    }
    ctx.upstream_body = upstream_body;
    ctx.strip_usage = injected;
    ctx.upstream_endpoint = Some(upstream);
    ctx.upstream_status = None;
    ctx.target = Some(target);
    Ok(())
}

/// Admits one request against `target`'s provider quota: `Ok(None)` when it has none;
/// the quota's 429 (with its wait) when this minute has no room. The share used goes to
/// `aigw_target_quota_used_ratio` and to the `usage` strategy.
pub async fn admit_quota(state: &AppState, target: &Target) -> Result<Option<Admitted>, GwError> {
    let Some(q) = &target.quota else {
        return Ok(None);
    };
    let gauge = |kind: &str, share: f64| {
        state
            .metrics
            .target_quota_used
            .with_label_values(&[target.alias.as_str(), kind])
            .set(share);
    };
    match state.limiter.admit(&[q]).await {
        Ok(admitted) => {
            let used = admitted.as_ref().map(Admitted::used).unwrap_or_default();
            for (kind, share) in &used {
                gauge(kind.as_str(), *share);
            }
            let most = used.iter().map(|(_, s)| *s).fold(0.0, f64::max);
            state.load.set_quota_used(&target.alias, most);
            Ok(admitted)
        }
        Err(GwError::RateLimited(r)) => {
            gauge(r.openai_type, 1.0);
            state.load.set_quota_used(&target.alias, 1.0);
            Err(GwError::RateLimited(r))
        }
        Err(e) => Err(e),
    }
}

/// Every target left has used its provider quota (or is cooling): 429, as a provider
/// would answer, with the wait until the soonest has room.
fn quota_exhausted(alias: &str, wait: Duration) -> GwError {
    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
    GwError::RateLimited(Box::new(crate::error::RateLimited {
        message: format!("Every target of '{alias}' has used its provider quota for now. Retry after {secs} s."),
        openai_type: "requests",
        retry_after_s: secs,
        headers: Vec::new(),
    }))
}

/// The access token of the chosen target's provider, when it needs one (Vertex AI):
/// usually ready; otherwise this waits for the one fetch in flight.
pub async fn obtain_token(ctx: &mut Ctx) -> Result<(), GwError> {
    ctx.access_token = None;
    let Some(v) = ctx.target.as_ref().and_then(|t| t.provider.vertex.as_ref()) else {
        return Ok(());
    };
    match v.tokens.get().await {
        Ok(token) => {
            ctx.access_token = Some(token);
            Ok(())
        }
        Err(why) => {
            let name = ctx.target.as_ref().map_or("", |t| t.provider.name.as_str());
            // The fetch that failed logged it once (`Tokens::renew`).
            tracing::debug!(provider = name, request_id = %ctx.request_id, "no Vertex AI access token: {why}");
            Err(GwError::UpstreamError(format!(
                "The gateway could not authenticate to the provider '{name}'."
            )))
        }
    }
}

/// The key a `consistent_hash` fleet places this request by.
pub fn hash_key(ctx: &Ctx, target: &Target) -> [u8; 32] {
    let spec = &target.provider.upstream.spec;
    match (spec.balance, spec.hash_on) {
        (Balance::ConsistentHash, HashOn::Prefix) => body::prefix_key(&ctx.request_body),
        (Balance::ConsistentHash, HashOn::Caller) => {
            *blake3::hash(ctx.caller.as_ref().map_or("", |c| c.owner.as_str()).as_bytes()).as_bytes()
        }
        _ => [0; 32],
    }
}

/// The current attempt failed before the first byte reached the caller. A failed
/// replica is ejected first; then the route's plan takes the failover decision (the one
/// place it is taken, `route::plan`).
pub fn attempt_failed(state: &AppState, ctx: &mut Ctx, failure: Failure, addr: Option<std::net::SocketAddr>) -> Next {
    let replica_left = match (failure, addr, &ctx.target) {
        (Failure::Connect | Failure::Broken, Some(addr), Some(t)) => t.provider.upstream.eject(addr),
        _ => false,
    };
    let (Some(endpoint), Some(plan)) = (ctx.endpoint, ctx.plan.as_mut()) else {
        return Next::Stop;
    };
    if let (true, Failure::Timeout, Some(a)) = (plan.multi, failure, plan.attempts.last()) {
        // A target too slow to answer at all is as slow as its timeout, for `least_latency`.
        state.load.observe(&a.target, a.started.elapsed());
    }
    plan.failed(
        failure,
        replica_left,
        &state.cooldowns,
        Instant::now(),
        &|t: &Target| provider::can_serve(endpoint, t),
    )
}

fn model_object(snap: &Snapshot, alias: &str) -> serde_json::Value {
    json!({"id": alias, "object": "model", "created": snap.created, "owned_by": "aigw"})
}

/// A model in Gemini's format: every method aigw serves for an alias (whether its provider
/// model does chat or embeddings is the provider's to say when called).
fn gemini_model_object(alias: &str) -> serde_json::Value {
    json!({
        "name": format!("models/{alias}"),
        "baseModelId": alias,
        "version": "aigw",
        "displayName": alias,
        "supportedGenerationMethods":
            ["generateContent", "streamGenerateContent", "countTokens", "embedContent", "batchEmbedContents"],
    })
}

/// The most models one page of Gemini's list holds (Google's own bound).
const GEMINI_PAGE_MAX: usize = 1000;

/// A page of the models this key may use, in config order: `pageSize` (default 50, at most
/// [`GEMINI_PAGE_MAX`]) and `pageToken`, the opaque token the previous page gave (here
/// the alias it ended at).
fn gemini_model_list(
    snap: &Snapshot,
    caller: &auth::ApiKeyEntry,
    query: Option<&str>,
) -> Result<serde_json::Value, GwError> {
    let size = match query_param(query, "pageSize") {
        None => 50,
        Some(s) => match s.parse::<usize>() {
            Ok(0) => 50,
            Ok(n) => n.min(GEMINI_PAGE_MAX),
            Err(_) => return Err(GwError::InvalidRequest("pageSize must be a whole number.".into())),
        },
    };
    let allowed = snap.model_order.iter().filter(|m| caller.allows(m));
    let mut rest: Box<dyn Iterator<Item = &String>> = match query_param(query, "pageToken").filter(|t| !t.is_empty()) {
        None => Box::new(allowed),
        Some(after) => {
            let mut it = allowed.skip_while(move |m| **m != after).peekable();
            if it.peek().is_none() {
                return Err(GwError::InvalidRequest(
                    "pageToken is not one this gateway gave.".into(),
                ));
            }
            Box::new(it.skip(1))
        }
    };
    let page: Vec<&String> = rest.by_ref().take(size).collect();
    let mut out = json!({"models": page.iter().map(|m| gemini_model_object(m)).collect::<Vec<_>>()});
    if let (Some(last), Some(_)) = (page.last(), rest.next()) {
        out["nextPageToken"] = json!(last);
    }
    Ok(out)
}

async fn answer_json(session: &mut Session, ctx: &Ctx, v: serde_json::Value) -> Result<(), GwError> {
    answer(
        session,
        ctx,
        200,
        "application/json",
        Bytes::from(v.to_string()),
        |_| Ok(()),
    )
    .await;
    Ok(())
}

/// Writes a whole answer the gateway made itself; `more` adds headers.
async fn answer(
    session: &mut Session,
    ctx: &Ctx,
    status: u16,
    content_type: &str,
    body: Bytes,
    more: impl FnOnce(&mut ResponseHeader) -> pingora::Result<()>,
) {
    let write = async {
        let mut resp = ResponseHeader::build(status, Some(6))?;
        resp.insert_header("content-type", content_type)?;
        resp.insert_header("content-length", body.len().to_string())?;
        resp.insert_header(X_REQUEST_ID, ctx.request_id.as_str())?;
        more(&mut resp)?;
        let head_only = session.req_header().method == Method::HEAD;
        session.write_response_header(Box::new(resp), head_only).await?;
        if !head_only {
            session.write_response_body(Some(body), true).await?;
        }
        Ok::<(), Box<pingora::Error>>(())
    };
    // The caller is gone if this fails; there is nobody left to answer.
    if let Err(e) = write.await {
        tracing::debug!(error = %e, "could not write a local answer");
    }
}

/// A cache hit: the stored completion as JSON, or replayed as SSE for a streaming request,
/// with this request's response guardrails applied (another key's entry may meet them
/// here for the first time under `scope: global`).
async fn answer_from_cache(session: &mut Session, ctx: &mut Ctx, entry: &cache::Entry) {
    let blocked = |name: &str| GwError::ContentFilter {
        guardrail: name.to_owned(),
        response: true,
    };
    let (content_type, body) = if ctx.stream() {
        let completion: serde_json::Value = serde_json::from_slice(&entry.body).unwrap_or_default();
        let sse = Bytes::from(cache::replay::sse(&completion, ctx.dialect, ctx.caller_include_usage()));
        let mut body = if ctx.response_guards.is_empty() {
            sse
        } else {
            let mut g = StreamGuard::new(ctx.response_guards.clone(), ctx.shape());
            match g.feed(&sse, true, &mut ctx.guard_hits) {
                Ok(out) => out,
                Err(name) => {
                    let e = blocked(&name);
                    let ev = e.sse_event(ctx.dialect);
                    ctx.error = Some(e);
                    ev
                }
            }
        };
        if let Some(mut windows) = guard::service::StreamWindows::new(&ctx.response_guards) {
            let about = super::ctx::about(&ctx.alias, &ctx.caller, &ctx.request_id);
            match windows.feed(body.clone(), true, about, &mut ctx.guard_hits).await {
                Ok(out) => body = out,
                Err(stop) => {
                    let e = stop.error(true);
                    body = e.sse_event(ctx.dialect);
                    ctx.error = Some(e);
                }
            }
        }
        ("text/event-stream", body)
    } else {
        let mut by = None;
        let checked = guard::check_response(
            &ctx.response_guards,
            ctx.shape(),
            &entry.body,
            &mut ctx.guard_hits,
            &mut by,
        );
        if let Some(name) = by {
            ctx.error = Some(blocked(&name));
        }
        let mut body = checked.unwrap_or_else(|| entry.body.clone());
        // After the rules, even when they withheld a choice: the others go out.
        if guard::service::any(&ctx.response_guards) {
            let about = super::ctx::about(&ctx.alias, &ctx.caller, &ctx.request_id);
            let mut stop = None;
            let judged = guard::service::check_response(
                &ctx.response_guards,
                ctx.shape(),
                &body,
                about,
                &mut ctx.guard_hits,
                &mut stop,
            )
            .await;
            if let Some(stop) = stop {
                ctx.error = Some(stop.error(true));
            }
            body = judged.unwrap_or(body);
        }
        ("application/json", body)
    };
    let stream = ctx.stream();
    if let Some(t) = ctx.trace.as_mut() {
        if stream {
            t.start_stream(ctx.dialect);
        }
        t.sent(&body, !stream);
    }
    let limits = ctx.limits.as_ref().map(|l| l.headers());
    let budget = ctx.budget.as_ref().map(|b| b.remaining_usd);
    answer(session, ctx, 200, content_type, body, |resp| {
        resp.insert_header("x-aigw-model", entry.model.as_str())?;
        resp.insert_header("x-aigw-cache", "hit")?;
        if let Some(h) = &limits {
            h.apply(resp);
        }
        if let Some(left) = budget {
            resp.insert_header("x-aigw-budget-remaining", format!("{left:.6}"))?;
        }
        Ok(())
    })
    .await;
}

/// Reads the whole request body, up to `limit` bytes (also for chunked bodies without a
/// declared length), waiting at most `gap` for each next piece (a client trickling its
/// body must not hold a connection forever; the same bound for
/// HTTP/1.1 and HTTP/2). Pingora has no whole-body API; the body is needed to route on
/// `model`.
async fn read_body(session: &mut Session, limit: u64, gap: std::time::Duration) -> Result<Bytes, GwError> {
    let mut first: Option<Bytes> = None;
    let mut buf = BytesMut::new();
    loop {
        let read = tokio::time::timeout(gap, session.read_request_body()).await;
        let chunk = match read {
            Err(_) => {
                return Err(GwError::InvalidRequest(format!(
                    "The request body did not arrive in time (server.client_body_timeout_ms: {}).",
                    gap.as_millis()
                )))
            }
            Ok(Ok(Some(c))) => c,
            Ok(Ok(None)) => break,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "request body read failed");
                return Err(GwError::InvalidRequest("The request body could not be read.".into()));
            }
        };
        let total = first.as_ref().map_or(0, Bytes::len) + buf.len() + chunk.len();
        if total as u64 > limit {
            return Err(GwError::RequestTooLarge { limit });
        }
        // A body that arrives in one chunk (the common case) is kept without a copy.
        match first.take() {
            None if buf.is_empty() => first = Some(chunk),
            // The buffer grows with the bytes that arrived, never with a length someone
            // declared: a thousand connections that declare 10 MB and send 3 KB hold 3 MB.
            Some(f) => {
                buf.reserve(f.len() + chunk.len());
                buf.extend_from_slice(&f);
                buf.extend_from_slice(&chunk);
            }
            None => buf.extend_from_slice(&chunk),
        }
    }
    Ok(first.unwrap_or_else(|| buf.freeze()))
}

/// How long a connection answered before its body arrived keeps reading (and discarding)
/// that body before it closes.
const LINGER: std::time::Duration = std::time::Duration::from_secs(5);

/// After an answer written before the request body was read whole (a 413 for a declared
/// length, a 401, a refused route): reads and discards what the caller is still sending,
/// for at most [`LINGER`], so the close that follows does not reset the connection under
/// the caller's feet. Closing a socket with unread data sends a reset, and a client still
/// uploading then sees a broken pipe instead of the answer (nginx's lingering close does
/// the same). A caller that asked `Expect: 100-continue` was never told to send its body,
/// so there is nothing to wait for.
pub async fn linger(session: &mut Session) {
    if session.is_body_done() || session.req_header().headers.contains_key(http::header::EXPECT) {
        return;
    }
    let _ = tokio::time::timeout(LINGER, session.drain_request_body()).await;
}

/// Turns the caller's request header into the provider's: path, host, credential.
pub fn prepare_upstream(req: &mut RequestHeader, ctx: &Ctx) -> pingora::Result<()> {
    let (Some(target), Some(upstream)) = (&ctx.target, ctx.upstream_endpoint) else {
        return Err(pingora::Error::explain(
            pingora::ErrorType::InternalError,
            "no target chosen",
        ));
    };
    let p = &target.provider;
    let path = provider::upstream_path(target, upstream, ctx.stream());
    req.set_uri(
        path.parse()
            .map_err(|_| pingora::Error::explain(pingora::ErrorType::InternalError, "bad upstream path"))?,
    );
    // Only what the provider's API reads crosses (the caller's credential never does).
    let dropped: Vec<HeaderName> = req
        .headers
        .keys()
        .filter(|k| !provider::forwards_request_header(p.kind, k))
        .cloned()
        .collect();
    for h in &dropped {
        req.remove_header(h);
    }
    req.insert_header(header::CONTENT_LENGTH, ctx.upstream_body.len().to_string())?;
    req.insert_header(header::HOST, p.base.authority.as_str())?;
    // Usage is read from the body, so the body must arrive uncompressed.
    req.insert_header(header::ACCEPT_ENCODING, "identity")?;
    req.insert_header(X_REQUEST_ID, ctx.request_id.as_str())?;
    if let Some(t) = &ctx.trace {
        t.inject(req);
    }
    provider::apply_credentials(p, ctx.access_token.as_deref(), &ctx.upstream_body, req)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_methods() {
        assert!(matches!(
            route(&Method::POST, "/v1/chat/completions", None),
            Ok(Route::Upstream(Endpoint::ChatCompletions))
        ));
        assert!(matches!(route(&Method::GET, "/v1/models/abc", None), Ok(Route::GetModel(id)) if id == "abc"));
        assert_eq!(
            route(&Method::GET, "/v1/chat/completions", None)
                .err()
                .unwrap()
                .status(),
            405
        );
        assert_eq!(route(&Method::POST, "/v1/models", None).err().unwrap().status(), 405);
        assert_eq!(route(&Method::POST, "/v2/x", None).err().unwrap().code(), "not_found");
        assert_eq!(
            route(&Method::GET, "/v1/models/", None).err().unwrap().code(),
            "not_found"
        );
    }

    #[test]
    fn gemini_routes_take_the_alias_verbatim_up_to_the_last_colon() {
        let gemini = |path: &str, query: Option<&str>| match route(&Method::POST, path, query) {
            Ok(Route::Gemini {
                endpoint,
                alias,
                stream,
            }) => Ok((endpoint, alias, stream)),
            Ok(_) => panic!("{path} is not a Gemini route"),
            Err(e) => Err(e.status()),
        };
        assert_eq!(
            gemini("/v1beta/models/fast:generateContent", None),
            Ok((Endpoint::GenerateContent, "fast".into(), false))
        );
        assert_eq!(
            gemini("/v1/models/fast:streamGenerateContent", Some("alt=sse")),
            Ok((Endpoint::GenerateContent, "fast".into(), true))
        );
        assert_eq!(
            gemini("/v1beta/models/llama3:8b:countTokens", None),
            Ok((Endpoint::CountTokens, "llama3:8b".into(), false))
        );
        assert_eq!(
            gemini("/v1beta/models/a%3Ab:embedContent", None),
            Ok((Endpoint::EmbedContent, "a%3Ab".into(), false))
        );
        // Without SSE, a stream would be a JSON array: refused with a clear error.
        assert_eq!(gemini("/v1beta/models/fast:streamGenerateContent", None), Err(400));
        for path in [
            "/v1beta/models/../chat:generateContent",
            "/v1beta/models/a/b:generateContent",
            "/v1beta/models/:generateContent",
            "/v1beta/models/fast:deleteEverything",
            // A model's path with another method than GET names nothing (an encoded colon
            // is no method).
            "/v1beta/models/fast%3AgenerateContent",
            "/v1beta/chat/completions",
        ] {
            assert_eq!(
                route(&Method::POST, path, None).err().map(|e| e.status()),
                Some(404),
                "{path}"
            );
        }
        assert_eq!(
            route(&Method::GET, "/v1beta/models/fast:generateContent", None)
                .err()
                .unwrap()
                .status(),
            405
        );
        // Gemini's model list and model objects, GET only.
        assert!(matches!(
            route(&Method::GET, "/v1beta/models", None),
            Ok(Route::GeminiModels(None))
        ));
        assert!(
            matches!(route(&Method::GET, "/v1beta/models/llama3:8b", None), Err(e) if e.status() == 404),
            "a colon is a method, and `8b` none"
        );
        assert!(matches!(
            route(&Method::GET, "/v1beta/models/fast", None),
            Ok(Route::GeminiModels(Some(a))) if a == "fast"
        ));
        for path in ["/v1beta/models/", "/v1beta/models/a/b"] {
            assert_eq!(
                route(&Method::GET, path, None).err().map(|e| e.status()),
                Some(404),
                "{path}"
            );
        }
        // The list takes GET only.
        assert_eq!(
            route(&Method::POST, "/v1beta/models", None).err().map(|e| e.status()),
            Some(405)
        );
        // `/v1/models/{id}` without a method is still the gateway's model object.
        assert!(matches!(
            route(&Method::GET, "/v1/models/fast", None),
            Ok(Route::GetModel(_))
        ));
        assert!(
            matches!(route(&Method::GET, "/v1/models/llama3:8b", None), Ok(Route::GetModel(id)) if id == "llama3:8b")
        );
    }

    #[test]
    fn a_query_key_leaves_the_request_line() {
        let mut req = RequestHeader::build(
            "POST",
            b"/v1beta/models/m:streamGenerateContent?alt=sse&key=sk%2Bsecret",
            None,
        )
        .unwrap();
        assert_eq!(take_query_key(&mut req).as_deref(), Some("sk+secret"));
        assert_eq!(req.uri.to_string(), "/v1beta/models/m:streamGenerateContent?alt=sse");
        let mut req = RequestHeader::build("POST", b"/v1beta/models/m:generateContent?key=abc", None).unwrap();
        assert_eq!(take_query_key(&mut req).as_deref(), Some("abc"));
        assert_eq!(req.uri.to_string(), "/v1beta/models/m:generateContent");
        assert!(!req.uri.to_string().contains("abc"));
    }
}
