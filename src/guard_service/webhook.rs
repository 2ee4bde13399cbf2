//! `kind: webhook`: any HTTP service speaking aigw's contract (docs/guardrails.md):
//! `POST url` with `{"stage", "model", "owner", "request_id", "texts": [{"id", "text"}]}`,
//! answered by `{"action": "allow" | "block" | "mask", "reason", "texts": [{"id", "text"}]}`.
//! Texts travel only in the JSON body, so nothing a caller writes can reach a header.

use http::{HeaderName, HeaderValue};
use serde::Deserialize;
use serde_json::json;

use super::{call_json, check_url, Failure};
use crate::guard::service::{Call, Verdict};
use crate::raw::GuardService;

pub struct Webhook {
    url: reqwest::Url,
    /// Sent on every call; values marked sensitive (they often carry a token).
    headers: Vec<(HeaderName, HeaderValue)>,
}

/// The URL as logs may show it (its query may carry a token); headers are sensitive.
impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &crate::outbound::shown(self.url.as_str()))
            .field("headers", &self.headers.len())
            .finish()
    }
}

#[derive(Deserialize)]
struct Answer {
    action: String,
    #[serde(default)]
    texts: Vec<Replacement>,
}

#[derive(Deserialize)]
struct Replacement {
    id: String,
    text: String,
}

impl Webhook {
    pub fn compile(s: &GuardService, error: &mut dyn FnMut(&str, String)) -> Option<Self> {
        let url = match s.url.as_deref().map(check_url) {
            Some(Ok(u)) => Some(u),
            Some(Err(e)) => {
                error("url", e);
                None
            }
            None => {
                error("url", "required for kind webhook".into());
                None
            }
        };
        let mut headers = Vec::new();
        for (name, value) in &s.headers {
            let n = HeaderName::from_bytes(name.as_bytes());
            let v = HeaderValue::from_str(value);
            match (n, v) {
                (Ok(n), Ok(mut v)) if !is_framing(&n) => {
                    v.set_sensitive(true);
                    headers.push((n, v));
                }
                (Ok(_), Ok(_)) => error(&format!("headers.{name}"), "is set by aigw itself".into()),
                _ => error(&format!("headers.{name}"), "is not a valid HTTP header".into()),
            }
        }
        Some(Self { url: url?, headers })
    }

    pub async fn judge(&self, http: &reqwest::Client, call: &Call<'_>, max: usize) -> Result<Verdict, Failure> {
        let texts: Vec<_> = call
            .texts
            .iter()
            .enumerate()
            .map(|(i, t)| json!({"id": i.to_string(), "text": t}))
            .collect();
        let body = json!({
            "stage": call.side.as_str(),
            "model": call.model,
            "owner": call.owner,
            "request_id": call.request_id,
            "texts": texts,
        });
        let mut req = http.post(self.url.clone()).json(&body);
        for (n, v) in &self.headers {
            req = req.header(n, v);
        }
        let answer = call_json(req, max, "the webhook").await?;
        read(answer, call.texts.len())
    }
}

/// Headers that frame the request: the client writes them, a config may not.
fn is_framing(n: &HeaderName) -> bool {
    [
        http::header::CONTENT_LENGTH,
        http::header::CONTENT_TYPE,
        http::header::TRANSFER_ENCODING,
        http::header::HOST,
        http::header::CONNECTION,
    ]
    .contains(n)
}

/// The verdict an answer gives, or why it is malformed.
fn read(answer: serde_json::Value, sent: usize) -> Result<Verdict, Failure> {
    let malformed = |why: &str| Failure(format!("the webhook's answer is malformed: {why}"));
    // serde would read a struct from an array too (`["allow"]`); the contract is an object.
    if !answer.is_object() {
        return Err(malformed("not a JSON object"));
    }
    let a: Answer = serde_json::from_value(answer).map_err(|_| malformed("not {action, texts}"))?;
    match a.action.as_str() {
        "allow" => Ok(Verdict::Allow),
        "block" => Ok(Verdict::Flag(None)),
        "mask" if a.texts.is_empty() => Ok(Verdict::Flag(None)),
        "mask" => {
            let mut out: Vec<(usize, String)> = Vec::with_capacity(a.texts.len());
            for r in a.texts {
                let i =
                    r.id.parse::<usize>()
                        .ok()
                        .filter(|i| *i < sent && r.id == i.to_string())
                        .ok_or_else(|| malformed("a text id that was not sent"))?;
                if out.iter().any(|(j, _)| *j == i) {
                    return Err(malformed("a text id twice"));
                }
                out.push((i, r.text));
            }
            Ok(Verdict::Replace(out))
        }
        _ => Err(malformed("unknown action")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_read_strictly() {
        assert_eq!(read(json!({"action": "allow"}), 2), Ok(Verdict::Allow));
        assert_eq!(
            read(json!({"action": "block", "reason": "x"}), 2),
            Ok(Verdict::Flag(None))
        );
        assert_eq!(
            read(json!({"action": "mask", "texts": [{"id": "1", "text": "[M]"}]}), 2),
            Ok(Verdict::Replace(vec![(1, "[M]".into())]))
        );
        // A mask with nothing named hides everything rather than nothing.
        assert_eq!(read(json!({"action": "mask"}), 2), Ok(Verdict::Flag(None)));
        for bad in [
            json!({"action": "mask", "texts": [{"id": "2", "text": "x"}]}),
            json!({"action": "mask", "texts": [{"id": "01", "text": "x"}]}),
            json!({"action": "mask", "texts": [{"id": "0", "text": "x"}, {"id": "0", "text": "y"}]}),
            json!({"action": "mask", "texts": [{"id": 0, "text": "x"}]}),
            json!({"action": "maybe"}),
            json!({"verdict": "allow"}),
            json!(["allow"]),
        ] {
            assert!(read(bad.clone(), 2).is_err(), "{bad}");
        }
    }
}
