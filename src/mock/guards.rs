//! The mock's guardrail services (issue 38): fakes of the classifiers a guardrail can call,
//! each with the real service's request and answer shapes and its strictness about
//! malformed requests, so the gateway's clients are tested against what they will meet.
//!
//! **OpenAI moderations** (`/v1/moderations`, in `surface`): one result per input, in
//! order, with omni-moderation's thirteen categories, `category_scores` and
//! `category_applied_input_types` (`text-moderation-*` models answer the legacy eleven,
//! without applied input types). "kill" scores violence 0.97, "hurt myself" self-harm 0.91
//! and self-harm/intent 0.88, "borderline" violence 0.45; a category is true, and the input
//! flagged, from 0.5. An input is a string, a list of strings, or a list of content parts
//! (`text` and `image_url`: one multimodal input, one result).
//!
//! **Presidio analyzer** (`POST /analyze`): finds EMAIL_ADDRESS (score 1.0), PHONE_NUMBER
//! (0.4, 0.75 with a context word such as "phone" or "call" in the five words before, as
//! Presidio's context enhancer does) and PERSON (a fixed list of names, 0.85), honours
//! `entities` and `score_threshold`, and answers Presidio's array, sorted as Presidio sorts
//! it (score, then start), with offsets in code points (Python string indices). A list of
//! texts answers a list of arrays (Presidio's batch form). It fails as Presidio's REST
//! server does: no `text` or no `language` is a 500 `{"error": "No text provided"}`, a
//! language other than `en` a 500 "No matching recognizers...", a `score_threshold` of the
//! wrong type a 400. As Presidio has since 2.2.359, no `recognition_metadata` is sent.
//!
//! **Presidio anonymizer** (`POST /anonymize`): Presidio's engine, ported: results of one
//! type that overlap merge (the union, the higher score), a result inside another of a
//! different type is dropped, of two with the same span the lower score goes, results of
//! one type with only spaces between merge; partial overlaps of different types both stay
//! and the earlier one is cut where the later one begins (Presidio's default,
//! `MERGE_SIMILAR_OR_CONTAINED`). Operators `replace` (default `<ENTITY_TYPE>`), `redact`,
//! `mask` and `keep`, by entity type or `DEFAULT`; items come back last first, with offsets
//! in the anonymized text, in code points. Errors as Presidio's: 400 for a body that is not
//! JSON or is empty and for `custom`, 422 for invalid results or operators.
//!
//! **Bedrock ApplyGuardrail** (`POST /guardrail/{id}/version/{version}/apply`): the
//! request's SigV4 signature is checked as Converse's is (403 `InvalidSignatureException`),
//! the id and version against Bedrock's patterns (400 `ValidationException`); the account
//! has one guardrail, [`GUARDRAIL_ID`] (or its ARN), versions `DRAFT` and `1` (others: 404
//! `ResourceNotFoundException`). "forbidden topic" is a denied topic: intervened, the blocked
//! message as the output; an email address is anonymized as `{EMAIL}`
//! (`sensitiveInformationPolicy`, `ANONYMIZED`), one output per text block. Usage counts a
//! unit per 1,000 characters per policy, as AWS bills.
//!
//! **A webhook guard** (`POST /guard/check`), the contract of issue 38's README: `allow`,
//! `block` for a text saying "forbidden", `mask` of `secret-...` tokens as `[MASKED]`
//! (only the texts that changed come back). Scripted by content: `guard-slow` answers after
//! 3 s, `guard-huge` with a 20 MB body, `guard-malformed` with invalid JSON, `guard-500`
//! with a 500, `guard-badids` with a mask naming an id it was not sent. With
//! `--guard-token` (`MOCK_GUARD_TOKEN`) it requires `Authorization: Bearer <token>` (401
//! otherwise). It keeps the last 100 requests (headers, body) for `GET /guard/requests`.
//!
//! **Judges**: a chat model named `guard-model`, or whose name (after any `org/`) starts
//! `llama-guard`, answers `unsafe\nS1` when the last user message says "bomb" and `safe`
//! otherwise, in every chat dialect the mock serves (see `judge_verdict`).

use std::collections::VecDeque;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http::StatusCode;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use regex::Regex;
use serde_json::{json, Map, Value};

use super::{bedrock, bytes_response, full, Body};

type Response = http::Response<Body>;

/// The one guardrail of the mock's AWS account (versions `DRAFT` and `1`).
pub const GUARDRAIL_ID: &str = "mockguard1";
/// What Bedrock answers in place of a blocked text (the console's default messaging).
pub const BLOCKED_MESSAGE: &str = "Sorry, the model cannot answer this question.";
/// How many webhook requests `GET /guard/requests` keeps.
pub const GUARD_RECORD_MAX: usize = 100;
/// The size of the `guard-huge` answer.
pub const HUGE_BYTES: usize = 20 * 1024 * 1024;

/// The webhook's state: its token and the requests it got.
#[derive(Default)]
pub struct Guards {
    token: Option<String>,
    seen: Mutex<VecDeque<Value>>,
}

impl Guards {
    pub fn new(token: Option<String>) -> Self {
        Guards {
            token: token.filter(|t| !t.is_empty()),
            seen: Mutex::default(),
        }
    }

    /// The guard services' POST routes; `None` for any other request.
    pub async fn answer(
        &self,
        parts: &http::request::Parts,
        body: &Bytes,
        aws_secret: Option<&str>,
    ) -> Option<Response> {
        let path = parts.uri.path();
        let post = parts.method == http::Method::POST;
        Some(match path {
            "/guard/check" if post => self.check(parts, body).await,
            "/analyze" if post => analyze(body),
            "/anonymize" if post => anonymize(body),
            p if post && p.starts_with("/guardrail/") && p.ends_with("/apply") => {
                let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
                apply_guardrail(p, pq, &parts.headers, body, aws_secret.unwrap_or(""))
            }
            _ => return None,
        })
    }

    /// `GET /guard/requests`: what the webhook was sent, oldest first.
    pub fn requests(&self) -> Response {
        let seen: Vec<Value> = self
            .seen
            .lock()
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        full(StatusCode::OK, &Value::Array(seen))
    }

    fn remember(&self, parts: &http::request::Parts, body: &Bytes) {
        let mut headers = Map::new();
        for name in parts.headers.keys() {
            let values: Vec<Value> = parts
                .headers
                .get_all(name)
                .iter()
                .map(|v| Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()))
                .collect();
            let v = match <[Value; 1]>::try_from(values) {
                Ok([one]) => one,
                Err(many) => Value::Array(many),
            };
            headers.insert(name.as_str().to_owned(), v);
        }
        let entry = json!({
            "method": parts.method.as_str(),
            "path": parts.uri.path_and_query().map_or("", |p| p.as_str()),
            "headers": headers,
            "body": String::from_utf8_lossy(body),
            "json": serde_json::from_slice::<Value>(body).ok(),
        });
        if let Ok(mut seen) = self.seen.lock() {
            if seen.len() == GUARD_RECORD_MAX {
                seen.pop_front();
            }
            seen.push_back(entry);
        }
    }

    /// `POST /guard/check`: the webhook contract.
    async fn check(&self, parts: &http::request::Parts, body: &Bytes) -> Response {
        self.remember(parts, body);
        if let Some(token) = &self.token {
            let presented = parts
                .headers
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            if presented != Some(token.as_str()) {
                return full(
                    StatusCode::UNAUTHORIZED,
                    &json!({"error": "missing or wrong bearer token"}),
                );
            }
        }
        let texts = match check_request(body) {
            Ok(t) => t,
            Err(why) => return full(StatusCode::BAD_REQUEST, &json!({"error": why})),
        };
        let says = |needle: &str| texts.iter().any(|(_, t)| t.contains(needle));
        if says("guard-slow") {
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        if says("guard-500") {
            return full(
                StatusCode::INTERNAL_SERVER_ERROR,
                &json!({"error": "guard service failed"}),
            );
        }
        if says("guard-malformed") {
            return bytes_response(
                StatusCode::OK,
                "application/json",
                Bytes::from_static(b"{\"action\": \"allow\", \"reason\": "),
            );
        }
        if says("guard-huge") {
            return huge();
        }
        if says("guard-badids") {
            let mut id = "99".to_owned();
            while texts.iter().any(|(i, _)| *i == id) {
                id.push('9');
            }
            return full(
                StatusCode::OK,
                &json!({"action": "mask", "reason": "masked", "texts": [{"id": id, "text": "[MASKED]"}]}),
            );
        }
        if let Some((id, _)) = texts.iter().find(|(_, t)| t.contains("forbidden")) {
            return full(
                StatusCode::OK,
                &json!({"action": "block", "reason": format!("text {id} is about a forbidden subject")}),
            );
        }
        static SECRET: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"secret-[A-Za-z0-9]+").expect("valid regex"));
        let masked: Vec<Value> = texts
            .iter()
            .filter(|(_, t)| SECRET.is_match(t))
            .map(|(id, t)| json!({"id": id, "text": SECRET.replace_all(t, "[MASKED]")}))
            .collect();
        if masked.is_empty() {
            full(StatusCode::OK, &json!({"action": "allow", "reason": "nothing found"}))
        } else {
            full(
                StatusCode::OK,
                &json!({"action": "mask", "reason": "secret tokens", "texts": masked}),
            )
        }
    }
}

/// The texts of a webhook request (id, text), or why it breaks the contract.
fn check_request(body: &[u8]) -> Result<Vec<(String, String)>, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    if !v.is_object() {
        return Err("the body must be a JSON object".into());
    }
    match v["stage"].as_str() {
        Some("request" | "response") => {}
        _ => return Err("stage must be \"request\" or \"response\"".into()),
    }
    for field in ["model", "owner", "request_id"] {
        if !v[field].is_string() {
            return Err(format!("{field} must be a string"));
        }
    }
    let Some(items) = v["texts"].as_array() else {
        return Err("texts must be an array".into());
    };
    let mut texts: Vec<(String, String)> = Vec::with_capacity(items.len());
    for (i, t) in items.iter().enumerate() {
        let (Some(id), Some(text)) = (t["id"].as_str(), t["text"].as_str()) else {
            return Err(format!("texts[{i}] must have a string id and a string text"));
        };
        if texts.iter().any(|(seen, _)| seen == id) {
            return Err(format!("texts[{i}]: id {id:?} is used twice"));
        }
        texts.push((id.to_owned(), text.to_owned()));
    }
    Ok(texts)
}

/// A valid JSON answer of [`HUGE_BYTES`], written in 1 MiB pieces.
fn huge() -> Response {
    const PIECE: usize = 1024 * 1024;
    let head = Bytes::from_static(b"{\"action\": \"allow\", \"reason\": \"");
    let tail = Bytes::from_static(b"\"}");
    let filler = HUGE_BYTES - head.len() - tail.len();
    let mut pieces = vec![head];
    let mut left = filler;
    while left > 0 {
        let n = left.min(PIECE);
        pieces.push(Bytes::from(vec![b'x'; n]));
        left -= n;
    }
    pieces.push(tail);
    let s = stream::iter(pieces.into_iter().map(|p| Ok::<_, std::io::Error>(Frame::data(p))));
    let mut r = http::Response::new(BodyExt::boxed_unsync(StreamBody::new(s)));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

// ---------------------------------------------------------------------------------------
// OpenAI moderations

/// omni-moderation's categories, in the order OpenAI lists them.
pub const MODERATION_CATEGORIES: [&str; 13] = [
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
];
/// The categories omni-moderation also judges images for.
const IMAGE_CATEGORIES: [&str; 6] = [
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "violence",
    "violence/graphic",
];
/// The score from which a category is true.
const MODERATION_THRESHOLD: f64 = 0.5;

/// One moderation input: its text and whether it had an image.
pub struct ModerationInput {
    pub text: String,
    pub image: bool,
}

/// The inputs of a moderations request, or OpenAI's 400 message for it.
pub fn moderation_inputs(req: &Value) -> Result<Vec<ModerationInput>, (String, &'static str)> {
    let text = |s: &str| ModerationInput {
        text: s.to_owned(),
        image: false,
    };
    match &req["input"] {
        Value::Null => Err((
            "Missing required parameter: 'input'.".into(),
            "missing_required_parameter",
        )),
        Value::String(s) => Ok(vec![text(s)]),
        Value::Array(a) if a.is_empty() => Err(("Invalid 'input': empty array.".into(), "empty_array")),
        Value::Array(a) if a.iter().all(Value::is_string) => Ok(a.iter().filter_map(Value::as_str).map(text).collect()),
        Value::Array(parts) if parts.iter().all(Value::is_object) => {
            let mut input = ModerationInput {
                text: String::new(),
                image: false,
            };
            for (i, p) in parts.iter().enumerate() {
                match (p["type"].as_str(), p["text"].as_str(), p["image_url"]["url"].as_str()) {
                    (Some("text"), Some(t), _) => {
                        if !input.text.is_empty() {
                            input.text.push('\n');
                        }
                        input.text.push_str(t);
                    }
                    (Some("image_url"), _, Some(_)) => input.image = true,
                    _ => {
                        return Err((
                            format!("Invalid value for 'input[{i}]': expected a text part with 'text' or an image_url part with 'image_url.url'."),
                            "invalid_value",
                        ))
                    }
                }
            }
            Ok(vec![input])
        }
        Value::Array(_) => Err((
            "Invalid 'input': expected an array of strings or an array of content parts, not a mix.".into(),
            "invalid_type",
        )),
        other => Err((
            format!(
                "Invalid type for 'input': expected a string or an array, but got {} instead.",
                match other {
                    Value::Bool(_) => "a boolean",
                    Value::Number(_) => "a number",
                    _ => "an object",
                }
            ),
            "invalid_type",
        )),
    }
}

/// The scores of the mock's triggers in a text (category, score), the higher kept.
fn moderation_scores(text: &str) -> Vec<(&'static str, f64)> {
    let lower = text.to_lowercase();
    let mut found: Vec<(&'static str, f64)> = Vec::new();
    let mut hit = |category: &'static str, score: f64| match found.iter_mut().find(|(c, _)| *c == category) {
        Some((_, s)) => *s = s.max(score),
        None => found.push((category, score)),
    };
    if lower.contains("kill") {
        hit("violence", 0.97);
    }
    if lower.contains("hurt myself") {
        hit("self-harm", 0.91);
        hit("self-harm/intent", 0.88);
    }
    if lower.contains("borderline") {
        hit("violence", 0.45);
    }
    found
}

/// One moderation result, as omni-moderation (or, `legacy`, text-moderation) answers it.
pub fn moderation_result(input: &ModerationInput, legacy: bool) -> Value {
    let scores = moderation_scores(&input.text);
    let (mut categories, mut category_scores, mut applied) = (Map::new(), Map::new(), Map::new());
    for c in MODERATION_CATEGORIES {
        if legacy && c.starts_with("illicit") {
            continue;
        }
        let score = scores.iter().find(|(n, _)| *n == c).map_or(0.000_012, |(_, s)| *s);
        categories.insert(c.to_owned(), json!(score >= MODERATION_THRESHOLD));
        category_scores.insert(c.to_owned(), json!(score));
        let mut types = vec!["text"];
        if input.image && IMAGE_CATEGORIES.contains(&c) {
            types.push("image");
        }
        applied.insert(c.to_owned(), json!(types));
    }
    let flagged = categories.values().any(|v| v == &Value::Bool(true));
    let mut v = json!({"flagged": flagged, "categories": categories, "category_scores": category_scores});
    if !legacy {
        v["category_applied_input_types"] = Value::Object(applied);
    }
    v
}

// ---------------------------------------------------------------------------------------
// Judges

/// Whether `model` is a judge: `guard-model`, or a name that starts `llama-guard` after
/// any `org/` (`meta-llama/Llama-Guard-3-8B`), directives aside.
pub fn is_judge(model: &str) -> bool {
    let name = model.split('?').next().unwrap_or_default();
    let base = name.rsplit('/').next().unwrap_or_default();
    name == "guard-model" || base.to_ascii_lowercase().starts_with("llama-guard")
}

/// A judge's answer to the last user message, in Llama Guard's words.
pub fn judge_verdict(last_user: &str) -> &'static str {
    if last_user.to_lowercase().contains("bomb") {
        "unsafe\nS1"
    } else {
        "safe"
    }
}

// ---------------------------------------------------------------------------------------
// Presidio analyzer

/// The entities Presidio's default English registry supports (its `/supportedentities`).
const PRESIDIO_ENTITIES: [&str; 23] = [
    "PHONE_NUMBER",
    "US_DRIVER_LICENSE",
    "US_PASSPORT",
    "SG_NRIC_FIN",
    "LOCATION",
    "CREDIT_CARD",
    "CRYPTO",
    "UK_NHS",
    "US_SSN",
    "US_BANK_NUMBER",
    "EMAIL_ADDRESS",
    "DATE_TIME",
    "IP_ADDRESS",
    "PERSON",
    "IBAN_CODE",
    "NRP",
    "US_ITIN",
    "MEDICAL_LICENSE",
    "AU_ABN",
    "AU_ACN",
    "AU_TFN",
    "AU_MEDICARE",
    "URL",
];
/// The people the mock's "NER model" knows.
pub const PERSONS: [&str; 4] = ["John Smith", "Alice Jones", "Jane Doe", "Zoë Müller"];
/// Words that raise a phone number's score when among the five words before it.
const PHONE_CONTEXT: [&str; 7] = ["phone", "number", "telephone", "cell", "cellphone", "mobile", "call"];

static EMAIL: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\b[\w.!#$%&'*+/=?^`{|}~-]+@\w+(?:[-.]\w+)*\.\w{2,}\b").expect("valid regex"));
static PHONE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?:\+1[ .-]?)?(?:\(\d{3}\)|\b\d{3})[ .-]?\d{3}[ .-]\d{4}\b").expect("valid regex"));

/// Presidio's error body.
fn presidio_error(status: StatusCode, message: &str) -> Response {
    full(status, &json!({"error": message}))
}

/// A Python string index: code points before byte offset `at`.
fn code_points(text: &str, at: usize) -> usize {
    text[..at].chars().count()
}

/// One found entity, Presidio's `RecognizerResult` as its REST server writes it.
struct Found {
    entity: &'static str,
    start: usize,
    end: usize,
    score: f64,
}

fn recognize(text: &str) -> Vec<Found> {
    let mut found = Vec::new();
    for m in EMAIL.find_iter(text) {
        found.push(Found {
            entity: "EMAIL_ADDRESS",
            start: code_points(text, m.start()),
            end: code_points(text, m.end()),
            score: 1.0,
        });
    }
    for m in PHONE.find_iter(text) {
        let before: Vec<String> = text[..m.start()]
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .collect();
        let context = before.iter().rev().take(5).any(|w| PHONE_CONTEXT.contains(&w.as_str()));
        found.push(Found {
            entity: "PHONE_NUMBER",
            start: code_points(text, m.start()),
            end: code_points(text, m.end()),
            score: if context { 0.75 } else { 0.4 },
        });
    }
    for name in PERSONS {
        for (at, _) in text.match_indices(name) {
            let end = at + name.len();
            let word_before = text[..at].chars().next_back().is_some_and(char::is_alphanumeric);
            let word_after = text[end..].chars().next().is_some_and(char::is_alphanumeric);
            if !word_before && !word_after {
                found.push(Found {
                    entity: "PERSON",
                    start: code_points(text, at),
                    end: code_points(text, end),
                    score: 0.85,
                });
            }
        }
    }
    // Presidio's order (EntityRecognizer.remove_duplicates): score down, start up, longer first.
    found.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then(a.start.cmp(&b.start))
            .then((b.end - b.start).cmp(&(a.end - a.start)))
    });
    found
}

/// `POST /analyze`.
pub fn analyze(body: &[u8]) -> Response {
    let req: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        // Flask's BadRequest has no args, so the handler's own `e.args[0]` fails and
        // Flask answers its generic 500 through the app's HTTPException handler.
        Err(_) => {
            return presidio_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "The server encountered an internal error and was unable to complete your request. Either the server is overloaded or there is an error in the application.",
            )
        }
    };
    if !req.is_object() {
        let kind = match req {
            Value::Array(_) => "list",
            Value::String(_) => "str",
            Value::Number(_) => "int",
            Value::Bool(_) => "bool",
            _ => "NoneType",
        };
        return presidio_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("'{kind}' object has no attribute 'get'"),
        );
    }
    let texts: Vec<&str> = match &req["text"] {
        Value::String(s) if !s.is_empty() => vec![s.as_str()],
        Value::Array(a) if !a.is_empty() => match a.iter().map(Value::as_str).collect::<Option<Vec<_>>>() {
            Some(t) => t,
            None => return presidio_error(
                StatusCode::BAD_REQUEST,
                "Failed to parse /analyze request for AnalyzerEngine.analyze(). expected string or bytes-like object",
            ),
        },
        _ => return presidio_error(StatusCode::INTERNAL_SERVER_ERROR, "No text provided"),
    };
    let language = match &req["language"] {
        Value::String(s) if !s.is_empty() => s.as_str(),
        _ => return presidio_error(StatusCode::INTERNAL_SERVER_ERROR, "No language provided"),
    };
    let no_recognizers = || {
        presidio_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "No matching recognizers were found to serve the request.",
        )
    };
    if language != "en" {
        return no_recognizers();
    }
    let entities: Option<Vec<&str>> = match &req["entities"] {
        Value::Null => None,
        Value::Array(a) => match a.iter().map(Value::as_str).collect::<Option<Vec<_>>>() {
            Some(e) => Some(e),
            None => {
                return presidio_error(
                    StatusCode::BAD_REQUEST,
                    "Failed to parse /analyze request for AnalyzerEngine.analyze(). unhashable type: 'dict'",
                )
            }
        },
        _ => {
            return presidio_error(
                StatusCode::BAD_REQUEST,
                "Failed to parse /analyze request for AnalyzerEngine.analyze(). entities must be a list",
            )
        }
    };
    if let Some(e) = &entities {
        if !e.is_empty() && !e.iter().any(|x| PRESIDIO_ENTITIES.contains(x)) {
            return no_recognizers();
        }
    }
    let threshold = match &req["score_threshold"] {
        Value::Null => 0.0,
        Value::Number(n) => n.as_f64().unwrap_or(0.0),
        // Python compares a bool as the number it is.
        Value::Bool(b) => f64::from(u8::from(*b)),
        other => {
            let kind = if other.is_string() { "str" } else { "dict" };
            return presidio_error(
                StatusCode::BAD_REQUEST,
                &format!("Failed to parse /analyze request for AnalyzerEngine.analyze(). '>=' not supported between instances of 'float' and '{kind}'"),
            );
        }
    };
    let wanted = |entity: &str| entities.as_ref().is_none_or(|e| e.is_empty() || e.contains(&entity));
    let results: Vec<Value> = texts
        .iter()
        .map(|text| {
            let found: Vec<Value> = recognize(text)
                .into_iter()
                .filter(|f| wanted(f.entity) && f.score >= threshold)
                .map(|f| {
                    json!({"entity_type": f.entity, "start": f.start, "end": f.end, "score": f.score,
                        "analysis_explanation": null})
                })
                .collect();
            Value::Array(found)
        })
        .collect();
    if req["text"].is_array() {
        full(StatusCode::OK, &Value::Array(results))
    } else {
        full(StatusCode::OK, &results.into_iter().next().unwrap_or_default())
    }
}

// ---------------------------------------------------------------------------------------
// Presidio anonymizer

/// An analyzer result as the anonymizer reads it (offsets in code points).
#[derive(Clone, Debug, PartialEq)]
struct Span {
    entity: String,
    start: usize,
    end: usize,
    score: f64,
}

impl Span {
    fn intersects(&self, o: &Span) -> usize {
        if self.end < o.start || o.end < self.start {
            return 0;
        }
        self.end.min(o.end).saturating_sub(self.start.max(o.start))
    }
    fn contains(&self, o: &Span) -> bool {
        self.start <= o.start && self.end >= o.end
    }
    fn has_conflict(&self, o: &Span) -> bool {
        if self.start == o.start && self.end == o.end {
            return self.score <= o.score;
        }
        o.contains(self)
    }
}

/// An operator as the anonymizer applies it.
enum Operator {
    Replace(Option<String>),
    Redact,
    Mask { with: char, count: i64, from_end: bool },
    Keep,
}

impl Operator {
    fn name(&self) -> &'static str {
        match self {
            Operator::Replace(_) => "replace",
            Operator::Redact => "redact",
            Operator::Mask { .. } => "mask",
            Operator::Keep => "keep",
        }
    }
    fn operate(&self, entity: &str, text: &str) -> String {
        match self {
            Operator::Replace(Some(v)) if !v.is_empty() => v.clone(),
            Operator::Replace(_) => format!("<{entity}>"),
            Operator::Redact => String::new(),
            Operator::Keep => text.to_owned(),
            Operator::Mask { with, count, from_end } => {
                let chars: Vec<char> = text.chars().collect();
                let n = usize::try_from(*count).unwrap_or(0).min(chars.len());
                let mask = std::iter::repeat_n(*with, n);
                if *from_end {
                    chars[..chars.len() - n].iter().copied().chain(mask).collect()
                } else {
                    mask.chain(chars[n..].iter().copied()).collect()
                }
            }
        }
    }
}

/// Python's name for a JSON value's type, as Presidio's messages say it.
fn json_type(v: &Value) -> Option<&'static str> {
    match v {
        Value::String(_) => Some("string"),
        Value::Bool(_) => Some("boolean"),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some("number"),
        Value::Array(_) => Some("array"),
        _ => None,
    }
}

fn bad_type(name: &str, expected: &str, v: &Value) -> String {
    match json_type(v) {
        Some(actual) => format!("Invalid parameter value for {name}. Expecting '{expected}', but got '{actual}'."),
        None => format!("Invalid parameter value for '{name}'."),
    }
}

/// One operator config (`{"type": ..., params}`), or Presidio's 422 message.
fn operator(config: &Value) -> Result<Operator, String> {
    let name = config["type"].as_str().filter(|s| !s.is_empty());
    let Some(name) = name else {
        return Err("Invalid input, operator config must contain operator_name".into());
    };
    match name {
        "replace" => match &config["new_value"] {
            Value::Null => Ok(Operator::Replace(None)),
            Value::String(s) => Ok(Operator::Replace(Some(s.clone()))),
            other => Err(bad_type("new_value", "string", other)),
        },
        "redact" => Ok(Operator::Redact),
        "keep" => Ok(Operator::Keep),
        "mask" => {
            let c = &config["masking_char"];
            let Some(s) = c.as_str() else {
                return Err(if c.is_null() {
                    "Expected parameter masking_char".into()
                } else {
                    bad_type("masking_char", "string", c)
                });
            };
            let mut chars = s.chars();
            let (Some(ch), None) = (chars.next(), chars.next()) else {
                return Err("Invalid input, masking_char must be a character".into());
            };
            let count = match &config["chars_to_mask"] {
                Value::Null => return Err("Expected parameter chars_to_mask".into()),
                v => v.as_i64().ok_or_else(|| bad_type("chars_to_mask", "number", v))?,
            };
            let from_end = match &config["from_end"] {
                Value::Null => return Err("Expected parameter from_end".into()),
                v => v.as_bool().ok_or_else(|| bad_type("from_end", "boolean", v))?,
            };
            Ok(Operator::Mask {
                with: ch,
                count,
                from_end,
            })
        }
        "hash" | "encrypt" => Err(format!("the mock's anonymizer does not implement '{name}'")),
        other => Err(format!("Invalid operator class '{other}'.")),
    }
}

/// One analyzer result as the anonymizer validates it, or Presidio's 422 message.
fn span(v: &Value) -> Result<Span, String> {
    let offset = |name: &str| -> Result<usize, String> {
        match &v[name] {
            Value::Null => Err(format!("Invalid input, result must contain {name}")),
            Value::Number(n) if n.is_i64() => {
                let n = n.as_i64().unwrap_or_default();
                usize::try_from(n).map_err(|_| "Invalid input, result start and end must be positive".into())
            }
            other => Err(bad_type(name, "number", other)),
        }
    };
    let start = offset("start")?;
    let end = offset("end")?;
    let entity = v["entity_type"]
        .as_str()
        .filter(|s| !s.is_empty())
        .ok_or("Invalid input, result must contain entity_type")?;
    if start > end {
        return Err(format!(
            "Invalid input, start index '{start}' must be smaller than end index '{end}'"
        ));
    }
    let score = v["score"]
        .as_f64()
        .ok_or("Invalid input, analyzer result must contain score")?;
    Ok(Span {
        entity: entity.to_owned(),
        start,
        end,
        score,
    })
}

/// Presidio's `_remove_conflicts_and_get_text_manipulation_data` with its default
/// strategy, then `_merge_entities_with_spaces_between`, step for step.
fn resolve(mut results: Vec<Span>, text: &[char]) -> Vec<Span> {
    results.sort_by_key(|r| (r.start, r.end));
    // 1. Results of one type that intersect merge into another (Python mutates that
    // object in place, wherever it is held: hence indices into one arena).
    let mut arena = results;
    let mut others: Vec<usize> = (0..arena.len()).collect();
    let mut kept: Vec<usize> = Vec::new();
    for i in 0..arena.len() {
        // `list.remove` takes the first element equal by value.
        if let Some(at) = others.iter().position(|&o| arena[o] == arena[i]) {
            others.remove(at);
        }
        let into = others
            .iter()
            .copied()
            .find(|&o| arena[o].entity == arena[i].entity && arena[i].intersects(&arena[o]) > 0);
        match into {
            Some(o) => {
                let (start, end, score) = (arena[i].start, arena[i].end, arena[i].score);
                let other = &mut arena[o];
                other.start = other.start.min(start);
                other.end = other.end.max(end);
                other.score = other.score.max(score);
            }
            None => {
                others.push(i);
                kept.push(i);
            }
        }
    }
    let kept: Vec<Span> = kept.into_iter().map(|i| arena[i].clone()).collect();
    // 2. A result inside another, or with the same span and no higher score, goes.
    let mut unique = Vec::new();
    let mut others = kept.clone();
    for result in kept {
        if let Some(at) = others.iter().position(|o| *o == result) {
            others.remove(at);
        }
        if !others.iter().any(|o| result.has_conflict(o)) {
            others.push(result.clone());
            unique.push(result);
        }
    }
    // 3. Neighbours of one type with only spaces between become one.
    let mut merged: Vec<Span> = Vec::new();
    for mut result in unique {
        if let Some(prev) = merged.last() {
            let gap = text.get(prev.end..result.start);
            if prev.entity == result.entity && gap.is_some_and(|g| !g.is_empty() && g.iter().all(|c| *c == ' ')) {
                result.start = prev.start;
                merged.pop();
            }
        }
        merged.push(result);
    }
    merged
}

/// `POST /anonymize`.
pub fn anonymize(body: &[u8]) -> Response {
    let internal = || presidio_error(StatusCode::INTERNAL_SERVER_ERROR, "Internal server error");
    let Ok(req) = serde_json::from_slice::<Value>(body) else {
        return presidio_error(
            StatusCode::BAD_REQUEST,
            "The browser (or proxy) sent a request that this server could not understand.",
        );
    };
    let empty = match &req {
        Value::Object(o) => o.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::String(s) => s.is_empty(),
        Value::Null | Value::Bool(false) => true,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::Bool(true) => false,
    };
    if empty {
        return presidio_error(StatusCode::BAD_REQUEST, "Invalid request json");
    }
    if !req.is_object() {
        return internal();
    }
    let mut operators: Vec<(String, Operator)> = Vec::new();
    match &req["anonymizers"] {
        Value::Null => {}
        Value::Object(o) => {
            for (key, config) in o {
                if !config.is_object() {
                    return internal();
                }
                if config["type"] == "custom" {
                    return presidio_error(StatusCode::BAD_REQUEST, "Custom type anonymizer is not supported");
                }
                match operator(config) {
                    Ok(op) => operators.push((key.clone(), op)),
                    Err(why) => return presidio_error(StatusCode::UNPROCESSABLE_ENTITY, &why),
                }
            }
        }
        _ => return internal(),
    }
    let results = match &req["analyzer_results"] {
        Value::Null => {
            return presidio_error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid input, request must contain analyzer results",
            )
        }
        Value::Array(a) => {
            if !a.iter().all(Value::is_object) {
                return internal();
            }
            match a.iter().map(span).collect::<Result<Vec<_>, _>>() {
                Ok(r) => r,
                Err(why) => return presidio_error(StatusCode::UNPROCESSABLE_ENTITY, &why),
            }
        }
        _ => return internal(),
    };
    let text: Vec<char> = match &req["text"] {
        Value::Null => Vec::new(),
        Value::String(s) => s.chars().collect(),
        _ => return internal(),
    };
    let default = Operator::Replace(None);
    let operator_for = |entity: &str| {
        operators
            .iter()
            .find(|(k, _)| k == entity)
            .or_else(|| operators.iter().find(|(k, _)| k == "DEFAULT"))
            .map_or(&default, |(_, op)| op)
    };
    // Presidio's `_operate`: from the last result to the first, each replaced in the text
    // so far up to where the one after it began.
    let mut spans = resolve(results, &text);
    spans.sort_by_key(|s| (s.start, s.end));
    let mut output = text.clone();
    let mut last_start = text.len();
    let mut items: Vec<(usize, String, String, &'static str)> = Vec::new();
    for s in spans.iter().rev() {
        if text.len() < s.start || s.end > text.len() {
            return presidio_error(
                StatusCode::UNPROCESSABLE_ENTITY,
                &format!(
                    "Invalid analyzer result, start: {} and end: {}, while text length is only {}.",
                    s.start,
                    s.end,
                    text.len()
                ),
            );
        }
        let original: String = text[s.start..s.end].iter().collect();
        let op = operator_for(&s.entity);
        let changed = op.operate(&s.entity, &original);
        let cut = s.end.min(last_start);
        last_start = s.start;
        let after: Vec<char> = output[cut.min(output.len())..].to_vec();
        let index_from_end = after.len() + changed.chars().count();
        output.truncate(s.start);
        output.extend(changed.chars());
        output.extend(after);
        items.push((index_from_end, s.entity.clone(), changed, op.name()));
    }
    let len = output.len();
    let items: Vec<Value> = items
        .into_iter()
        .map(|(from_end, entity, changed, op)| {
            let start = len - from_end;
            let end = start + changed.chars().count();
            json!({"start": start, "end": end, "entity_type": entity, "text": changed, "operator": op})
        })
        .collect();
    full(
        StatusCode::OK,
        &json!({"text": output.into_iter().collect::<String>(), "items": items}),
    )
}

// ---------------------------------------------------------------------------------------
// Bedrock ApplyGuardrail

/// An error as Bedrock writes it: `{"message"}` and its type in `x-amzn-errortype`.
fn aws_error(status: StatusCode, kind: &'static str, message: &str) -> Response {
    let mut r = full(status, &json!({"message": message}));
    r.headers_mut()
        .insert("x-amzn-errortype", http::HeaderValue::from_static(kind));
    r
}

fn validation(message: &str) -> Response {
    aws_error(StatusCode::BAD_REQUEST, "ValidationException", message)
}

static GUARDRAIL_ID_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(([a-z0-9]+)|(arn:aws(-[^:]+)?:bedrock:[a-z0-9-]{1,20}:[0-9]{12}:guardrail/[a-z0-9]+))$")
        .expect("valid regex")
});
static GUARDRAIL_VERSION_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^(([1-9][0-9]{0,7})|(DRAFT))$").expect("valid regex"));

/// `POST /guardrail/{id}/version/{version}/apply`.
pub fn apply_guardrail(path: &str, pq: &str, headers: &http::HeaderMap, body: &[u8], secret: &str) -> Response {
    if let Err(why) = bedrock::verify(headers, pq, body, secret) {
        let kind = if why.starts_with("no Authorization") {
            "MissingAuthenticationTokenException"
        } else {
            "InvalidSignatureException"
        };
        return aws_error(StatusCode::FORBIDDEN, kind, &why);
    }
    let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned();
    let inner = path
        .strip_prefix("/guardrail/")
        .and_then(|p| p.strip_suffix("/apply"))
        .and_then(|p| p.rsplit_once("/version/"));
    let Some((id, version)) = inner.map(|(i, v)| (decode(i), decode(v))) else {
        return aws_error(StatusCode::NOT_FOUND, "UnknownOperationException", "Unknown operation");
    };
    let pattern_error = |field: &str, value: &str, re: &Regex| {
        validation(&format!(
            "1 validation error detected: Value '{value}' at '{field}' failed to satisfy constraint: Member must satisfy regular expression pattern: {}",
            re.as_str()
        ))
    };
    if !GUARDRAIL_ID_RE.is_match(&id) {
        return pattern_error("guardrailIdentifier", &id, &GUARDRAIL_ID_RE);
    }
    if !GUARDRAIL_VERSION_RE.is_match(&version) {
        return pattern_error("guardrailVersion", &version, &GUARDRAIL_VERSION_RE);
    }
    let Ok(req) = serde_json::from_slice::<Value>(body) else {
        return aws_error(
            StatusCode::BAD_REQUEST,
            "SerializationException",
            "Unable to parse the request body as JSON",
        );
    };
    match req["source"].as_str() {
        Some("INPUT" | "OUTPUT") => {}
        Some(other) => {
            return validation(&format!(
                "1 validation error detected: Value '{other}' at 'source' failed to satisfy constraint: Member must satisfy enum value set: [INPUT, OUTPUT]"
            ))
        }
        None => {
            return validation("1 validation error detected: Value null at 'source' failed to satisfy constraint: Member must not be null")
        }
    }
    let Some(content) = req["content"].as_array() else {
        return validation("1 validation error detected: Value null at 'content' failed to satisfy constraint: Member must not be null");
    };
    let mut texts: Vec<&str> = Vec::new();
    for (i, block) in content.iter().enumerate() {
        if let Some(t) = block.get("text") {
            let Some(text) = t["text"].as_str() else {
                return validation(&format!("1 validation error detected: Value null at 'content.{}.member.text.text' failed to satisfy constraint: Member must not be null", i + 1));
            };
            let qualifiers_ok = match &t["qualifiers"] {
                Value::Null => true,
                Value::Array(q) => q
                    .iter()
                    .all(|q| matches!(q.as_str(), Some("grounding_source" | "query" | "guard_content"))),
                _ => false,
            };
            if !qualifiers_ok {
                return validation(&format!("1 validation error detected: Value at 'content.{}.member.text.qualifiers' failed to satisfy constraint: Member must satisfy constraint: [Member must satisfy enum value set: [grounding_source, query, guard_content]]", i + 1));
            }
            texts.push(text);
        } else if block.get("image").is_none() {
            return validation("Invalid input: each content block must have text or image");
        }
    }
    let known = id == GUARDRAIL_ID || id.ends_with(&format!(":guardrail/{GUARDRAIL_ID}"));
    if !known || !(version == "DRAFT" || version == "1") {
        return aws_error(
            StatusCode::NOT_FOUND,
            "ResourceNotFoundException",
            "The guardrail identifier or version provided is invalid. Check the identifier and version and try again.",
        );
    }
    guardrail_verdict(&texts)
}

fn guardrail_verdict(texts: &[&str]) -> Response {
    let chars: usize = texts.iter().map(|t| t.chars().count()).sum();
    let units = chars.div_ceil(1000) as u64;
    let usage = json!({"topicPolicyUnits": units, "contentPolicyUnits": units, "wordPolicyUnits": units,
        "sensitiveInformationPolicyUnits": units, "sensitiveInformationPolicyFreeUnits": 0,
        "contextualGroundingPolicyUnits": 0, "contentPolicyImageUnits": 0});
    let coverage = json!({"textCharacters": {"guarded": chars, "total": chars}});
    let blocked = texts.iter().any(|t| t.to_lowercase().contains("forbidden topic"));
    let emails: Vec<&str> = texts
        .iter()
        .flat_map(|t| EMAIL.find_iter(t).map(|m| m.as_str()))
        .collect();
    let mut assessment = json!({"invocationMetrics": {"guardrailProcessingLatency": 1, "usage": usage,
        "guardrailCoverage": coverage}});
    if blocked {
        assessment["topicPolicy"] = json!({"topics": [{"name": "Forbidden topic", "type": "DENY",
            "action": "BLOCKED", "detected": true}]});
    }
    if !emails.is_empty() {
        let pii: Vec<Value> = emails
            .iter()
            .map(|m| json!({"match": m, "type": "EMAIL", "action": "ANONYMIZED", "detected": true}))
            .collect();
        assessment["sensitiveInformationPolicy"] = json!({"piiEntities": pii});
    }
    let (action, reason, outputs) = if blocked {
        (
            "GUARDRAIL_INTERVENED",
            "Guardrail blocked.",
            json!([{"text": BLOCKED_MESSAGE}]),
        )
    } else if !emails.is_empty() {
        let masked: Vec<Value> = texts
            .iter()
            .map(|t| json!({"text": EMAIL.replace_all(t, "{EMAIL}")}))
            .collect();
        ("GUARDRAIL_INTERVENED", "Guardrail masked.", Value::Array(masked))
    } else {
        ("NONE", "No action.", json!([]))
    };
    full(
        StatusCode::OK,
        &json!({"usage": usage, "action": action, "actionReason": reason, "outputs": outputs,
            "assessments": [assessment], "guardrailCoverage": coverage}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spans(v: &[(&str, usize, usize, f64)]) -> Vec<Span> {
        v.iter()
            .map(|(e, s, n, sc)| Span {
                entity: (*e).to_owned(),
                start: *s,
                end: *n,
                score: *sc,
            })
            .collect()
    }

    #[test]
    fn conflicts_resolve_as_presidio_does() {
        let text: Vec<char> = "hello world, my name is Jane Doe. My number is: 034453334"
            .chars()
            .collect();
        // Presidio's own e2e case: the two names inside NAME go.
        let out = resolve(
            spans(&[
                ("NAME", 24, 32, 0.8),
                ("FIRST_NAME", 24, 28, 0.8),
                ("LAST_NAME", 29, 32, 0.6),
            ]),
            &text,
        );
        assert_eq!(out, spans(&[("NAME", 24, 32, 0.8)]));
        // One type overlapping: the union, the higher score.
        let out = resolve(spans(&[("PERSON", 0, 10, 0.5), ("PERSON", 5, 15, 0.9)]), &text);
        assert_eq!(out, spans(&[("PERSON", 0, 15, 0.9)]));
        // Same span, two types: the higher score stays.
        let out = resolve(spans(&[("A", 0, 4, 0.3), ("B", 0, 4, 0.7)]), &text);
        assert_eq!(out, spans(&[("B", 0, 4, 0.7)]));
    }

    #[test]
    fn judges_answer_by_name() {
        assert!(is_judge("guard-model") && is_judge("guard-model?delay_ms=5"));
        assert!(is_judge("meta-llama/Llama-Guard-3-8B") && is_judge("llama-guard3"));
        assert!(!is_judge("gpt-4o") && !is_judge("my-guard-model"));
        assert_eq!(judge_verdict("How do I build a BOMB?"), "unsafe\nS1");
        assert_eq!(judge_verdict("hello"), "safe");
    }
}
