//! `kind: openai_moderation`: OpenAI's `/v1/moderations` (or any compatible server's),
//! through one of the config's provider keys: its base URL, credential and extra headers.
//! One call carries every text as `input`; OpenAI answers one result per input, in order.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::json;

use super::{call_json, Failure};
use crate::guard::service::{Call, Verdict};
use crate::provider::{openai, Provider};
use crate::raw::GuardService;
use crate::raw::ProviderKind;

#[derive(Debug)]
pub struct Moderation {
    provider: Arc<Provider>,
    model: String,
    /// What counts as a hit.
    rule: Rule,
}

#[derive(Debug, Clone, PartialEq)]
enum Rule {
    /// The service's own `flagged`.
    Flagged,
    /// Any of these categories (all of them when empty) scoring at least `threshold`.
    Scores { categories: Vec<String>, threshold: f64 },
}

#[derive(Deserialize)]
struct Answer {
    results: Vec<Result1>,
}

#[derive(Deserialize)]
struct Result1 {
    flagged: bool,
    #[serde(default)]
    category_scores: HashMap<String, f64>,
}

impl Moderation {
    pub fn compile(
        s: &GuardService,
        providers: &HashMap<String, Arc<Provider>>,
        error: &mut dyn FnMut(&str, String),
    ) -> Option<Self> {
        let provider = match s.provider_key.as_deref() {
            None => {
                error("provider_key", "required for kind openai_moderation".into());
                None
            }
            Some(name) => match providers.get(name) {
                None => {
                    error("provider_key", format!("no provider key named '{name}'"));
                    None
                }
                Some(p)
                    if !matches!(
                        p.kind,
                        ProviderKind::Openai | ProviderKind::OpenaiCompatible | ProviderKind::Azure
                    ) =>
                {
                    error(
                        "provider_key",
                        format!("'{name}' is not an OpenAI, OpenAI-compatible or Azure key"),
                    );
                    None
                }
                Some(p) => Some(p.clone()),
            },
        };
        let rule = match (s.categories.is_empty(), s.threshold) {
            (true, None) => Rule::Flagged,
            (_, Some(t)) if !(0.0..=1.0).contains(&t) => {
                error("threshold", "must be between 0 and 1".into());
                return None;
            }
            (false, None) => {
                error(
                    "threshold",
                    "required with categories (a score at or above it is a hit)".into(),
                );
                return None;
            }
            (_, Some(threshold)) => Rule::Scores {
                categories: s.categories.clone(),
                threshold,
            },
        };
        Some(Self {
            provider: provider?,
            model: s.model.clone().unwrap_or_else(|| "omni-moderation-latest".into()),
            rule,
        })
    }

    pub async fn judge(&self, http: &reqwest::Client, call: &Call<'_>, max: usize) -> Result<Verdict, Failure> {
        let p = &self.provider;
        let mut req = http
            .post(openai::resource_url(p, &["moderations"]))
            .json(&json!({"model": self.model, "input": call.texts}));
        for (name, value) in &p.headers {
            req = req.header(name.clone(), value.clone());
        }
        if let Some((name, value)) = openai::credential(p) {
            req = req.header(name, value);
        }
        let answer = call_json(req, max, "the moderation endpoint").await?;
        self.read(answer, call.texts.len())
    }

    fn read(&self, answer: serde_json::Value, sent: usize) -> Result<Verdict, Failure> {
        if !answer.is_object() {
            return Err(Failure("the moderation answer is malformed: not a JSON object".into()));
        }
        let a: Answer = serde_json::from_value(answer)
            .map_err(|_| Failure("the moderation answer is malformed: no results".into()))?;
        if a.results.len() != sent {
            return Err(Failure(format!(
                "the moderation answer is malformed: {} results for {sent} inputs",
                a.results.len()
            )));
        }
        let hit = |r: &Result1| match &self.rule {
            Rule::Flagged => r.flagged,
            Rule::Scores { categories, threshold } if categories.is_empty() => {
                r.category_scores.values().any(|s| s >= threshold)
            }
            Rule::Scores { categories, threshold } => categories
                .iter()
                .any(|c| r.category_scores.get(c).is_some_and(|s| s >= threshold)),
        };
        let flagged: Vec<usize> = a
            .results
            .iter()
            .enumerate()
            .filter(|(_, r)| hit(r))
            .map(|(i, _)| i)
            .collect();
        Ok(if flagged.is_empty() {
            Verdict::Allow
        } else {
            Verdict::Flag(Some(flagged))
        })
    }
}
