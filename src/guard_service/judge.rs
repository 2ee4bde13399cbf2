//! `kind: llm`: a judge model, any alias of this gateway (Llama Guard on vLLM, a small
//! hosted model). The texts go to the alias's first target as one user message inside a
//! prompt; an answer matching `unsafe_pattern` is a hit. The call is the gateway's own:
//! made straight to the provider with the provider's credential, so it is charged to no
//! caller's budget or limit, passes no guardrail (no recursion) and never reaches a
//! caller. Vertex AI targets, whose credential is a token fetched per attempt, cannot
//! judge.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use pingora::http::RequestHeader;
use regex::Regex;
use serde_json::{json, Value};

use super::{call_json, Failure};
use crate::api::{Endpoint, Wire};
use crate::guard::service::{Call, Verdict};
use crate::provider::{self, anthropic, bedrock, gemini, Target};
use crate::raw::{GuardService, ProviderKind};
use crate::route::{Model, ModelRoute};

/// Llama Guard's own framing, which other judges follow well enough: the texts, then
/// the question, answered by `safe` or `unsafe` and the categories.
const DEFAULT_PROMPT: &str = "Task: Check if there is unsafe content in the conversation below according to \
our safety policy.\n\n<BEGIN CONVERSATION>\n\n{texts}\n\n<END CONVERSATION>\n\nProvide your safety \
assessment for the conversation above:\n- First line must read 'safe' or 'unsafe'.\n- If unsafe, a \
second line must include a comma-separated list of violated categories.";
const DEFAULT_UNSAFE: &str = r"(?i)^\s*unsafe\b";
const DEFAULT_SAFE: &str = r"(?i)^\s*safe\b";

/// Judges waiting for their alias, bound once the models are compiled.
#[derive(Default)]
pub struct Judges(Vec<(String, String, Arc<OnceLock<Target>>)>);

impl Judges {
    /// Binds every judge compiled since the last call to its alias's first target;
    /// `error(path, message)` for an alias that does not exist or cannot judge.
    pub fn bind(&mut self, models: &HashMap<String, Arc<Model>>, error: &mut dyn FnMut(String, String)) {
        for (path, alias, slot) in self.0.drain(..) {
            let target = match models.get(&alias).map(|m| &m.route) {
                None => {
                    error(path, format!("no model named '{alias}'"));
                    continue;
                }
                Some(ModelRoute::Single(t)) => t,
                Some(ModelRoute::Multi(r)) => match r.targets.first() {
                    Some(t) => &t.target,
                    None => continue,
                },
            };
            if target.provider.kind == ProviderKind::Vertex {
                error(
                    path,
                    format!("'{alias}' is served by Vertex AI, which cannot judge (its token is per attempt)"),
                );
                continue;
            }
            let _ = slot.set(target.clone());
        }
    }
}

#[derive(Debug)]
pub struct Judge {
    target: Arc<OnceLock<Target>>,
    unsafe_pattern: Regex,
    safe_pattern: Regex,
    prompt: String,
}

impl Judge {
    pub fn compile(
        s: &GuardService,
        path: &str,
        judges: &mut Judges,
        error: &mut dyn FnMut(&str, String),
    ) -> Option<Self> {
        let mut pattern = |field: &str, given: &Option<String>, default: &str| match Regex::new(
            given.as_deref().unwrap_or(default),
        ) {
            Ok(r) => Some(r),
            Err(e) => {
                error(field, format!("not a valid regex: {e}"));
                None
            }
        };
        let unsafe_pattern = pattern("unsafe_pattern", &s.unsafe_pattern, DEFAULT_UNSAFE);
        let safe_pattern = pattern("safe_pattern", &s.safe_pattern, DEFAULT_SAFE);
        let prompt = s.prompt.clone().unwrap_or_else(|| DEFAULT_PROMPT.to_owned());
        if !prompt.contains("{texts}") {
            error("prompt", "must contain {texts}, where the texts go".into());
            return None;
        }
        let Some(alias) = s.model.clone() else {
            error("model", "required for kind llm: the alias that judges".into());
            return None;
        };
        let target = Arc::new(OnceLock::new());
        judges.0.push((format!("{path}.model"), alias, target.clone()));
        Some(Self {
            target,
            unsafe_pattern: unsafe_pattern?,
            safe_pattern: safe_pattern?,
            prompt,
        })
    }

    pub async fn judge(&self, http: &reqwest::Client, call: &Call<'_>, max: usize) -> Result<Verdict, Failure> {
        let Some(t) = self.target.get() else {
            return Err(Failure("the judge's alias is not bound".into()));
        };
        let texts = call.texts.join("\n\n");
        let prompt = self.prompt.replace("{texts}", &texts);
        let chat = json!({"model": t.upstream_model, "max_tokens": 64, "temperature": 0,
            "messages": [{"role": "user", "content": prompt}]});
        let wire = t.wire();
        let upstream = Endpoint::ChatCompletions
            .upstream(wire)
            .ok_or_else(|| Failure("the judge's provider has no chat endpoint".into()))?;
        let body = match wire {
            Wire::OpenAi => Ok(chat),
            Wire::Anthropic => anthropic::chat_request_to_messages(&chat, &t.upstream_model),
            Wire::Gemini => gemini::chat_request_to_gemini(&chat, &t.upstream_model),
            Wire::Converse => bedrock::chat_request_to_converse(&chat, &t.upstream_model),
        }
        .map_err(|e| Failure(format!("cannot write the judge's request: {e}")))?;
        let body = serde_json::to_vec(&body).map_err(|_| Failure("cannot write the judge's request".into()))?;
        let p = &t.provider;
        let path = provider::upstream_path(t, upstream, false);
        // The credential as the proxy puts it on (a header, a query, a signature).
        let mut head = RequestHeader::build("POST", path.as_bytes(), None)
            .map_err(|_| Failure("cannot write the judge's request".into()))?;
        let _ = head.insert_header("host", p.base.authority.as_str());
        let _ = head.insert_header("content-type", "application/json");
        provider::apply_credentials(p, None, &body, &mut head)
            .map_err(|_| Failure("cannot sign the judge's request".into()))?;
        let scheme = if p.base.tls { "https" } else { "http" };
        let url = format!(
            "{scheme}://{}{}",
            p.base.authority,
            head.uri.path_and_query().map_or("/", |pq| pq.as_str())
        );
        let mut req = http.post(url).body(body);
        for (name, value) in head.headers.iter() {
            if name != http::header::HOST {
                req = req.header(name, value);
            }
        }
        let answer = call_json(req, max.max(1 << 20), "the judge").await?;
        let said = answer_text(wire, &answer).ok_or_else(|| Failure("the judge's answer has no text".into()))?;
        // A judge that says neither (a refusal, an answer cut short, text a caller steered
        // it to write) gave no verdict: `on_error` decides, not a default of "safe".
        if self.unsafe_pattern.is_match(&said) {
            Ok(Verdict::Flag(None))
        } else if self.safe_pattern.is_match(&said) {
            Ok(Verdict::Allow)
        } else {
            Err(Failure("the judge's answer is neither safe nor unsafe".into()))
        }
    }
}

/// The text of a whole answer in `wire`.
fn answer_text(wire: Wire, v: &Value) -> Option<String> {
    let chat;
    let v = match wire {
        Wire::OpenAi => v,
        Wire::Anthropic => {
            let parts = v.get("content")?.as_array()?;
            return Some(parts.iter().filter_map(|p| p.get("text")?.as_str()).collect());
        }
        Wire::Gemini | Wire::Converse => {
            chat = provider::answer_to_chat(wire, v, 0, "").1;
            &chat
        }
    };
    v.pointer("/choices/0/message/content")?.as_str().map(str::to_owned)
}
