//! `kind: presidio`: Microsoft Presidio's analyzer finds entities (one `/analyze` call
//! with every text as a list, which Presidio answers with one result list per text), and,
//! for a guardrail that masks, its anonymizer replaces them (`/anonymize`, one call per
//! text that has any, at once). The analyzer's results go back to the anonymizer as
//! they came: their offsets are Presidio's own (code points), never recomputed here.

use serde_json::{json, Value};

use super::{call_json, check_url, join, Failure};
use crate::guard::service::{Call, Verdict};
use crate::raw::GuardService;

/// Anonymizer calls of one judgement in flight at once.
const ANONYMIZE_AT_ONCE: usize = 8;

pub struct Presidio {
    analyze: reqwest::Url,
    anonymize: Option<reqwest::Url>,
    entities: Vec<String>,
    score_threshold: Option<f64>,
    language: String,
}

/// The URLs as logs may show them (a query may carry a token).
impl std::fmt::Debug for Presidio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Presidio")
            .field("analyze", &crate::outbound::shown(self.analyze.as_str()))
            .field(
                "anonymize",
                &self.anonymize.as_ref().map(|u| crate::outbound::shown(u.as_str())),
            )
            .finish_non_exhaustive()
    }
}

impl Presidio {
    pub fn compile(s: &GuardService, mask: bool, error: &mut dyn FnMut(&str, String)) -> Option<Self> {
        let mut url = |field: &str, v: &Option<String>, needed: bool| match v.as_deref().map(check_url) {
            Some(Ok(u)) => Some(u),
            Some(Err(e)) => {
                error(field, e);
                None
            }
            None => {
                if needed {
                    error(field, "required".into());
                }
                None
            }
        };
        let analyzer = url("analyzer_url", &s.analyzer_url, true);
        // Masking is the anonymizer's work; a guardrail that masks needs it.
        let anonymizer = url("anonymizer_url", &s.anonymizer_url, mask);
        if let Some(t) = s.score_threshold {
            if !(0.0..=1.0).contains(&t) {
                error("score_threshold", "must be between 0 and 1".into());
                return None;
            }
        }
        if mask && anonymizer.is_none() {
            return None;
        }
        Some(Self {
            analyze: join(&analyzer?, "/analyze"),
            anonymize: anonymizer.map(|u| join(&u, "/anonymize")),
            entities: s.entities.clone(),
            score_threshold: s.score_threshold,
            language: s.language.clone().unwrap_or_else(|| "en".into()),
        })
    }

    pub async fn judge(&self, http: &reqwest::Client, call: &Call<'_>, max: usize) -> Result<Verdict, Failure> {
        let mut body = json!({"text": call.texts, "language": self.language});
        if !self.entities.is_empty() {
            body["entities"] = json!(self.entities);
        }
        if let Some(t) = self.score_threshold {
            body["score_threshold"] = json!(t);
        }
        let answer = call_json(
            http.post(self.analyze.clone()).json(&body),
            max,
            "the Presidio analyzer",
        )
        .await?;
        let found = read_analysis(answer, call.texts.len())?;
        let with: Vec<usize> = (0..found.len()).filter(|i| !found[*i].is_empty()).collect();
        if with.is_empty() {
            return Ok(Verdict::Allow);
        }
        let (true, Some(anonymize)) = (call.mask, &self.anonymize) else {
            return Ok(Verdict::Flag(Some(with)));
        };
        let calls: Vec<_> = with
            .into_iter()
            .map(|i| {
                let req = http
                    .post(anonymize.clone())
                    .json(&json!({"text": call.texts[i], "analyzer_results": found[i]}));
                // An anonymised text is about its text's size: each answer is bounded by it.
                let max = (super::ANSWER_SLACK + 2 * call.texts[i].len()).min(max);
                async move {
                    let answer = call_json(req, max, "the Presidio anonymizer").await?;
                    match answer.get("text").and_then(Value::as_str) {
                        Some(t) => Ok((i, t.to_owned())),
                        None => Err(Failure("the Presidio anonymizer's answer has no text".into())),
                    }
                }
            })
            .collect();
        // A few at a time: a request of many texts must not open as many connections.
        use futures_util::{StreamExt, TryStreamExt};
        let replaced: Vec<(usize, String)> = futures_util::stream::iter(calls)
            .buffer_unordered(ANONYMIZE_AT_ONCE)
            .try_collect()
            .await?;
        Ok(Verdict::Replace(replaced))
    }
}

/// The analyzer's answer: one list of results per text sent, each result an object with
/// an `entity_type`.
fn read_analysis(answer: Value, sent: usize) -> Result<Vec<Vec<Value>>, Failure> {
    let malformed = || Failure("the Presidio analyzer's answer is malformed".into());
    let Value::Array(lists) = answer else {
        return Err(malformed());
    };
    if lists.len() != sent {
        return Err(malformed());
    }
    lists
        .into_iter()
        .map(|l| match l {
            Value::Array(results)
                if results
                    .iter()
                    .all(|r| r.get("entity_type").is_some_and(Value::is_string)) =>
            {
                Ok(results)
            }
            _ => Err(malformed()),
        })
        .collect()
}
