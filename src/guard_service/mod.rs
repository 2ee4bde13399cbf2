//! Guardrail services' clients: a guardrail with `service:` calls a classifier over HTTP
//! (OpenAI's moderation model, Presidio, Bedrock Guardrails, a judge model served behind
//! this gateway, or any webhook) instead of running rules. `guard::service` decides what a
//! verdict does to the request; this module makes the calls: one per guardrail and stage,
//! every text of the stage in it, bounded in time (`timeout_ms`, the whole call), in
//! concurrency (a semaphore per guardrail) and in the bytes read back, through one pooled
//! client that follows no redirect (a redirect would carry the service's credential
//! elsewhere). Verdicts for identical calls are reused for a minute, from a cache bounded
//! by bytes. Each kind's wire shape lives in its own file.

mod bedrock;
mod judge;
mod moderation;
mod presidio;
mod webhook;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::Semaphore;

use crate::guard::service::{Call, Checker, Failure, Service, Verdict};
use crate::metrics::Metrics;
use crate::provider::Provider;
use crate::raw::{self, ServiceKind};

pub use judge::Judges;

/// Default `timeout_ms`.
const DEFAULT_TIMEOUT_MS: u64 = 1000;
/// Default `window_chars`.
const DEFAULT_WINDOW_CHARS: usize = 1000;
/// Calls in flight per guardrail; more wait their turn (within their timeout).
const MAX_IN_FLIGHT: usize = 128;
/// Verdicts kept per guardrail, in bytes (texts' digests and replacements).
const CACHE_BYTES: u64 = 8 << 20;
/// How long a verdict is reused for the same texts.
const CACHE_TTL: Duration = Duration::from_secs(60);
/// What a service's answer may weigh beyond twice the texts sent (a replacement of each).
const ANSWER_SLACK: usize = 64 << 10;

/// One pooled client for every guardrail service of the process.
fn http() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .unwrap_or_default()
    })
}

/// One kind's adapter: the call and the reading of its answer.
#[derive(Debug)]
enum Kind {
    Webhook(webhook::Webhook),
    Moderation(moderation::Moderation),
    Presidio(presidio::Presidio),
    Bedrock(bedrock::Bedrock),
    Judge(judge::Judge),
}

/// A guardrail service's client.
pub struct Client {
    guardrail: Arc<str>,
    kind: Kind,
    timeout: Duration,
    permits: Semaphore,
    cache: moka::sync::Cache<[u8; 32], Arc<Verdict>>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("guardrail", &self.guardrail)
            .field("kind", &self.kind)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Service for Client {
    async fn judge(&self, call: &Call<'_>) -> Result<Verdict, Failure> {
        let key = cache_key(call);
        let outcome = |o: &str| {
            self.metrics
                .guardrail_service_calls
                .with_label_values(&[&self.guardrail, o])
                .inc()
        };
        if let Some(v) = self.cache.get(&key) {
            outcome("cached");
            return Ok((*v).clone());
        }
        let started = Instant::now();
        let answer = tokio::time::timeout(self.timeout, async {
            let _permit = self.permits.acquire().await.map_err(|_| Failure("closed".into()))?;
            let max = ANSWER_SLACK + 2 * call.texts.iter().map(String::len).sum::<usize>();
            match &self.kind {
                Kind::Webhook(k) => k.judge(http(), call, max).await,
                Kind::Moderation(k) => k.judge(http(), call, max).await,
                Kind::Presidio(k) => k.judge(http(), call, max).await,
                Kind::Bedrock(k) => k.judge(http(), call, max).await,
                Kind::Judge(k) => k.judge(http(), call, max).await,
            }
        })
        .await;
        self.metrics
            .guardrail_service_duration
            .with_label_values(&[&self.guardrail])
            .observe(started.elapsed().as_secs_f64());
        match answer {
            Err(_) => {
                outcome("timeout");
                Err(Failure(format!("no answer within {} ms", self.timeout.as_millis())))
            }
            Ok(Err(e)) => {
                outcome("error");
                Err(e)
            }
            Ok(Ok(v)) => {
                outcome(if v == Verdict::Allow { "allow" } else { "hit" });
                self.cache.insert(key, Arc::new(v.clone()));
                Ok(v)
            }
        }
    }
}

/// The digest of everything a verdict may depend on: side, mask, alias, owner and texts
/// (each length-prefixed, so no two calls share a key by concatenation).
fn cache_key(call: &Call<'_>) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(call.side.as_str().as_bytes());
    h.update(&[call.mask as u8]);
    for part in [call.model, call.owner] {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    for t in call.texts {
        h.update(&(t.len() as u64).to_le_bytes());
        h.update(t.as_bytes());
    }
    *h.finalize().as_bytes()
}

fn weigh(_: &[u8; 32], v: &Arc<Verdict>) -> u32 {
    let replaced = match &**v {
        Verdict::Replace(r) => r.iter().map(|(_, t)| t.len() + 16).sum(),
        Verdict::Flag(Some(i)) => i.len() * 8,
        _ => 0,
    };
    u32::try_from(64 + replaced).unwrap_or(u32::MAX)
}

/// What compiling a service needs from the rest of the config.
pub struct Context<'a> {
    pub providers: &'a std::collections::HashMap<String, Arc<Provider>>,
    pub env: &'a dyn Fn(&str) -> Option<String>,
    pub metrics: Arc<Metrics>,
    /// Judges are bound to their alias once the models are compiled.
    pub judges: &'a mut Judges,
}

/// Compiles a guardrail's `service:` section (at `path`); each problem goes to `error`
/// with the field it concerns, relative to `path`.
pub fn compile(
    path: &str,
    guardrail: &raw::Guardrail,
    s: &raw::GuardService,
    cx: &mut Context<'_>,
    error: &mut dyn FnMut(&str, String),
) -> Option<Checker> {
    let Some(kind) = s.kind else {
        error(
            "kind",
            "required: openai_moderation, presidio, llm, webhook or bedrock".into(),
        );
        return None;
    };
    // Fields that belong to another kind are mistakes, not options.
    let mut stray = |field: &str, set: bool, of: &str| {
        if set {
            error(field, format!("applies to kind {of} only"));
        }
    };
    let moderation = kind == ServiceKind::OpenaiModeration;
    let presidio = kind == ServiceKind::Presidio;
    let bedrock = kind == ServiceKind::Bedrock;
    let webhook = kind == ServiceKind::Webhook;
    let llm = kind == ServiceKind::Llm;
    stray(
        "provider_key",
        s.provider_key.is_some() && !moderation,
        "openai_moderation",
    );
    stray(
        "model",
        s.model.is_some() && !(moderation || llm),
        "openai_moderation or llm",
    );
    stray(
        "categories",
        !s.categories.is_empty() && !moderation,
        "openai_moderation",
    );
    stray("threshold", s.threshold.is_some() && !moderation, "openai_moderation");
    stray("analyzer_url", s.analyzer_url.is_some() && !presidio, "presidio");
    stray("anonymizer_url", s.anonymizer_url.is_some() && !presidio, "presidio");
    stray("entities", !s.entities.is_empty() && !presidio, "presidio");
    stray("score_threshold", s.score_threshold.is_some() && !presidio, "presidio");
    stray("language", s.language.is_some() && !presidio, "presidio");
    stray("unsafe_pattern", s.unsafe_pattern.is_some() && !llm, "llm");
    stray("safe_pattern", s.safe_pattern.is_some() && !llm, "llm");
    stray("prompt", s.prompt.is_some() && !llm, "llm");
    stray("url", s.url.is_some() && !webhook, "webhook");
    stray("headers", !s.headers.is_empty() && !webhook, "webhook");
    stray("guardrail_id", s.guardrail_id.is_some() && !bedrock, "bedrock");
    stray(
        "guardrail_version",
        s.guardrail_version.is_some() && !bedrock,
        "bedrock",
    );
    stray("aws", s.aws.is_some() && !bedrock, "bedrock");
    stray("base_url", s.base_url.is_some() && !bedrock, "bedrock");
    let timeout_ms = s.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
    if !(1..=600_000).contains(&timeout_ms) {
        error("timeout_ms", "must be between 1 and 600000".into());
    }
    let window_chars = s.window_chars.unwrap_or(DEFAULT_WINDOW_CHARS);
    if !(1..=1_000_000).contains(&window_chars) {
        error("window_chars", "must be between 1 and 1000000".into());
    }
    let mask = guardrail.action == raw::Action::Mask;
    let adapter = match kind {
        ServiceKind::Webhook => webhook::Webhook::compile(s, error).map(Kind::Webhook),
        ServiceKind::OpenaiModeration => moderation::Moderation::compile(s, cx.providers, error).map(Kind::Moderation),
        ServiceKind::Presidio => presidio::Presidio::compile(s, mask, error).map(Kind::Presidio),
        ServiceKind::Bedrock => bedrock::Bedrock::compile(s, cx.env, error).map(Kind::Bedrock),
        ServiceKind::Llm => judge::Judge::compile(s, path, cx.judges, error).map(Kind::Judge),
    }?;
    let client = Client {
        guardrail: Arc::from(guardrail.name.as_str()),
        kind: adapter,
        timeout: Duration::from_millis(timeout_ms.clamp(1, 600_000)),
        permits: Semaphore::new(MAX_IN_FLIGHT),
        cache: moka::sync::Cache::builder()
            .max_capacity(CACHE_BYTES)
            .weigher(weigh)
            .time_to_live(CACHE_TTL)
            .build(),
        metrics: cx.metrics.clone(),
    };
    Some(Checker {
        client: Arc::new(client),
        on_error: s.on_error,
        window_chars: window_chars.max(1),
    })
}

/// Sends `req` and reads a JSON answer of at most `max` bytes. A non-2xx status, an
/// answer too large or not JSON is a failure that names `what` and the status, never
/// the URL's query, the texts or the answer.
async fn call_json(req: reqwest::RequestBuilder, max: usize, what: &str) -> Result<serde_json::Value, Failure> {
    let resp = req
        .send()
        .await
        .map_err(|e| Failure(format!("{what}: {}", e.without_url())))?;
    let (status, body) = crate::outbound::read_capped(resp, max, what).await.map_err(Failure)?;
    if !status.is_success() {
        return Err(Failure(format!("{what} answered {status}")));
    }
    serde_json::from_slice(&body).map_err(|_| Failure(format!("{what}: the answer is not JSON")))
}

/// A URL the config gives for a service: http or https, with a host.
fn check_url(url: &str) -> Result<reqwest::Url, String> {
    let u = reqwest::Url::parse(url).map_err(|e| format!("not a valid URL ({e})"))?;
    if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
        return Err("must be an http or https URL with a host".into());
    }
    Ok(u)
}

/// `base` with `path` appended to its path (a trailing slash on `base` is not doubled).
fn join(base: &reqwest::Url, path: &str) -> reqwest::Url {
    let mut u = base.clone();
    let joined = format!("{}{path}", base.path().trim_end_matches('/'));
    u.set_path(&joined);
    u
}
