//! `kind: bedrock`: AWS Bedrock Guardrails' `ApplyGuardrail`
//! (`POST /guardrail/{id}/version/{version}/apply` on the region's bedrock-runtime),
//! SigV4-signed like the Bedrock provider (`provider::bedrock::sign_headers`), every text
//! as one content block. `GUARDRAIL_INTERVENED` is a hit; its outputs replace the texts
//! only when nothing was blocked (only anonymised) and there is one output per text.

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::{json, Value};

use super::{call_json, check_url, Failure};
use crate::guard::service::{Call, Side, Verdict};
use crate::provider::bedrock::{self as aws, Aws};
use crate::raw::GuardService;

/// Percent-encodes all but RFC 3986's unreserved characters (an ARN's `:` and `/`).
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

#[derive(Debug)]
pub struct Bedrock {
    url: reqwest::Url,
    /// `host[:port]`, as signed.
    authority: String,
    aws: Aws,
}

impl Bedrock {
    pub fn compile(
        s: &GuardService,
        env: &dyn Fn(&str) -> Option<String>,
        error: &mut dyn FnMut(&str, String),
    ) -> Option<Self> {
        let id_ok = |id: &str| {
            !id.is_empty() && id.len() <= 2048 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b":/-_.".contains(&b))
        };
        let id = match s.guardrail_id.as_deref() {
            Some(id) if id_ok(id) => Some(id),
            Some(_) => {
                error("guardrail_id", "must be a guardrail id or ARN".into());
                None
            }
            None => {
                error("guardrail_id", "required for kind bedrock".into());
                None
            }
        };
        let version = match s.guardrail_version.as_deref() {
            Some(v) if v == "DRAFT" || (!v.is_empty() && v.len() <= 8 && v.bytes().all(|b| b.is_ascii_digit())) => {
                Some(v)
            }
            Some(_) => {
                error("guardrail_version", "must be DRAFT or a version number".into());
                None
            }
            None => {
                error(
                    "guardrail_version",
                    "required for kind bedrock (DRAFT or a number)".into(),
                );
                None
            }
        };
        let aws = aws::compile(s.aws.as_ref(), env, &mut |field, msg| {
            error(&format!("aws.{field}"), msg.into())
        });
        let base = match &aws {
            Some(a) => s.base_url.clone().unwrap_or_else(|| aws::default_base_url(&a.region)),
            None => s.base_url.clone().unwrap_or_default(),
        };
        let base = match check_url(&base) {
            Ok(u) => Some(u),
            Err(e) => {
                if aws.is_some() || s.base_url.is_some() {
                    error("base_url", e);
                }
                None
            }
        };
        let (id, version, base, aws) = (id?, version?, base?, aws?);
        let path = format!(
            "{}/guardrail/{}/version/{}/apply",
            base.path().trim_end_matches('/'),
            utf8_percent_encode(id, UNRESERVED),
            utf8_percent_encode(version, UNRESERVED)
        );
        let mut url = base.clone();
        url.set_path(&path);
        let authority = match (url.host_str(), url.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_owned(),
            (None, _) => return None,
        };
        Some(Self { url, authority, aws })
    }

    pub async fn judge(&self, http: &reqwest::Client, call: &Call<'_>, max: usize) -> Result<Verdict, Failure> {
        let content: Vec<Value> = call.texts.iter().map(|t| json!({"text": {"text": t}})).collect();
        let source = match call.side {
            Side::Request => "INPUT",
            Side::Response => "OUTPUT",
        };
        let body = serde_json::to_vec(&json!({"source": source, "content": content}))
            .map_err(|_| Failure("cannot write the request".into()))?;
        let headers = [("host", self.authority.as_str()), ("content-type", "application/json")];
        let signed = aws::sign_headers(&self.aws, self.url.as_str(), &headers, &body).map_err(Failure)?;
        let mut req = http
            .post(self.url.clone())
            .header("content-type", "application/json")
            .body(body);
        for (name, value) in signed {
            req = req.header(name, value);
        }
        let answer = call_json(req, max, "Bedrock ApplyGuardrail").await?;
        read(&answer, call.texts.len(), call.mask)
    }
}

/// The verdict of an `ApplyGuardrail` answer.
fn read(answer: &Value, sent: usize, mask: bool) -> Result<Verdict, Failure> {
    match answer.get("action").and_then(Value::as_str) {
        Some("NONE") => Ok(Verdict::Allow),
        Some("GUARDRAIL_INTERVENED") => {
            let outputs: Option<Vec<String>> = answer.get("outputs").and_then(Value::as_array).map(|o| {
                o.iter()
                    .filter_map(|x| x.get("text").and_then(Value::as_str).map(str::to_owned))
                    .collect()
            });
            match outputs {
                Some(o) if mask && o.len() == sent && !blocked(answer.get("assessments")) => {
                    Ok(Verdict::Replace(o.into_iter().enumerate().collect()))
                }
                _ => Ok(Verdict::Flag(None)),
            }
        }
        _ => Err(Failure("the ApplyGuardrail answer is malformed: no action".into())),
    }
}

/// Whether any policy of the assessments blocked (rather than anonymised).
fn blocked(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Object(m)) => m
            .iter()
            .any(|(k, x)| (k == "action" && x.as_str() == Some("BLOCKED")) || blocked(Some(x))),
        Some(Value::Array(a)) => a.iter().any(|x| blocked(Some(x))),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interventions_read() {
        assert_eq!(
            read(&json!({"action": "NONE", "outputs": []}), 1, true),
            Ok(Verdict::Allow)
        );
        let anonymised = json!({"action": "GUARDRAIL_INTERVENED", "outputs": [{"text": "mail {EMAIL}"}],
            "assessments": [{"sensitiveInformationPolicy": {"piiEntities": [{"type": "EMAIL", "action": "ANONYMIZED"}]}}]});
        assert_eq!(
            read(&anonymised, 1, true),
            Ok(Verdict::Replace(vec![(0, "mail {EMAIL}".into())]))
        );
        assert_eq!(read(&anonymised, 1, false), Ok(Verdict::Flag(None)));
        // Outputs that do not map one to one onto the texts cannot replace them.
        assert_eq!(read(&anonymised, 2, true), Ok(Verdict::Flag(None)));
        let refused = json!({"action": "GUARDRAIL_INTERVENED", "outputs": [{"text": "Sorry."}],
            "assessments": [{"topicPolicy": {"topics": [{"name": "x", "action": "BLOCKED"}]}}]});
        assert_eq!(read(&refused, 1, true), Ok(Verdict::Flag(None)));
        assert!(read(&json!({"outputs": []}), 1, true).is_err());
    }
}
