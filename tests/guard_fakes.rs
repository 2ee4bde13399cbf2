//! The mock's guardrail services (issue 38), talked to directly over a real listener:
//! OpenAI moderations, Presidio's analyzer and anonymizer, Bedrock's ApplyGuardrail (SigV4
//! checked), the webhook guard and the judge model, each in its real shapes, with its
//! triggers, and strict about malformed requests as the real service is.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant, SystemTime};

use common::*;
use serde_json::{json, Value};

const GUARD_TOKEN: &str = "guard-token-0123";

async fn post_mock(mock: &Mock, path: &str, body: &Value) -> (u16, Value) {
    let r = client()
        .post(format!("{}{path}", mock.url()))
        .bearer_auth(PROVIDER_KEY)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

async fn post_raw(mock: &Mock, path: &str, body: &'static str) -> (u16, Value) {
    let r = client()
        .post(format!("{}{path}", mock.url()))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

/// A Python string index (code points) of `needle` in `text`.
fn py_index(text: &str, needle: &str) -> usize {
    text[..text.find(needle).unwrap()].chars().count()
}

#[tokio::test]
async fn moderations_score_each_input_in_order_with_omni_categories() {
    let mock = Mock::start();
    let inputs = [
        "hello there",
        "I will kill it",
        "I want to hurt myself",
        "a borderline case",
    ];
    let (status, v) = post_mock(
        &mock,
        "/v1/moderations",
        &json!({"model": "omni-moderation-latest", "input": inputs}),
    )
    .await;
    assert_eq!(status, 200);
    assert!(v["id"].as_str().unwrap().starts_with("modr-"));
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 4);
    for r in results {
        assert_eq!(r["categories"].as_object().unwrap().len(), 13);
        assert_eq!(r["category_scores"].as_object().unwrap().len(), 13);
        assert_eq!(r["category_applied_input_types"]["illicit/violent"], json!(["text"]));
        assert_eq!(r["category_applied_input_types"]["violence"], json!(["text"]));
    }
    assert_eq!(results[0]["flagged"], false);
    assert_eq!(results[1]["flagged"], true);
    assert_eq!(results[1]["categories"]["violence"], true);
    assert_eq!(results[1]["category_scores"]["violence"], 0.97);
    assert_eq!(results[2]["flagged"], true);
    assert_eq!(results[2]["category_scores"]["self-harm"], 0.91);
    assert_eq!(results[2]["category_scores"]["self-harm/intent"], 0.88);
    assert_eq!(results[2]["categories"]["self-harm/intent"], true);
    assert_eq!(results[2]["categories"]["violence"], false);
    // Under 0.5: scored, not flagged.
    assert_eq!(results[3]["category_scores"]["violence"], 0.45);
    assert_eq!(results[3]["categories"]["violence"], false);
    assert_eq!(results[3]["flagged"], false);

    // One string, one result; content parts are one multimodal input.
    let (_, v) = post_mock(&mock, "/v1/moderations", &json!({"input": "kill"})).await;
    assert_eq!(v["results"].as_array().unwrap().len(), 1);
    assert_eq!(v["model"], "omni-moderation-latest");
    let parts = json!([{"type": "text", "text": "a picture"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]);
    let (_, v) = post_mock(&mock, "/v1/moderations", &json!({"input": parts})).await;
    assert_eq!(v["results"].as_array().unwrap().len(), 1);
    let applied = &v["results"][0]["category_applied_input_types"];
    assert_eq!(applied["violence"], json!(["text", "image"]));
    assert_eq!(applied["hate"], json!(["text"]));
    // Legacy models: eleven categories, no applied input types.
    let (_, v) = post_mock(
        &mock,
        "/v1/moderations",
        &json!({"model": "text-moderation-latest", "input": "x"}),
    )
    .await;
    assert_eq!(v["results"][0]["categories"].as_object().unwrap().len(), 11);
    assert!(v["results"][0].get("category_applied_input_types").is_none());

    // Malformed: OpenAI's 400 envelope.
    for bad in [
        json!({}),
        json!({"input": 5}),
        json!({"input": []}),
        json!({"input": ["a", {"type": "text"}]}),
    ] {
        let (status, v) = post_mock(&mock, "/v1/moderations", &bad).await;
        assert_eq!(status, 400, "{bad}");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(v["error"]["message"].as_str().unwrap().contains("input"), "{v}");
    }
}

#[tokio::test]
async fn presidio_analyzer_finds_entities_at_code_point_offsets() {
    let mock = Mock::start();
    // Non-ASCII before every entity: 'ë' is two bytes, the emoji four (and two UTF-16 units).
    let text = "Zoë 😀 wrote to john.doe@example.com; call 555-123-4567 or ask John Smith.";
    let (status, v) = post_mock(&mock, "/analyze", &json!({"text": text, "language": "en"})).await;
    assert_eq!(status, 200);
    let found = v.as_array().unwrap();
    let email = py_index(text, "john.doe@");
    let phone = py_index(text, "555-");
    let person = py_index(text, "John Smith");
    assert_ne!(email, text.find("john.doe@").unwrap(), "offsets must not be bytes");
    // Presidio's order: score down, then start.
    assert_eq!(
        found,
        &vec![
            json!({"entity_type": "EMAIL_ADDRESS", "start": email, "end": email + 20, "score": 1.0, "analysis_explanation": null}),
            json!({"entity_type": "PERSON", "start": person, "end": person + 10, "score": 0.85, "analysis_explanation": null}),
            json!({"entity_type": "PHONE_NUMBER", "start": phone, "end": phone + 12, "score": 0.75, "analysis_explanation": null}),
        ]
    );
    let chars: Vec<char> = text.chars().collect();
    let slice: String = chars[email..email + 20].iter().collect();
    assert_eq!(slice, "john.doe@example.com");

    // `entities` and `score_threshold`; a phone number without a context word scores 0.4.
    let (_, v) = post_mock(
        &mock,
        "/analyze",
        &json!({"text": text, "language": "en", "entities": ["PERSON", "PHONE_NUMBER"]}),
    )
    .await;
    let types: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["entity_type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["PERSON", "PHONE_NUMBER"]);
    let (_, v) = post_mock(
        &mock,
        "/analyze",
        &json!({"text": "+1 555 123 4567 and Alice Jones", "language": "en", "score_threshold": 0.5}),
    )
    .await;
    assert_eq!(
        v,
        json!([{"entity_type": "PERSON", "start": 20, "end": 31, "score": 0.85, "analysis_explanation": null}])
    );
    let (_, v) = post_mock(&mock, "/analyze", &json!({"text": "+1 555 123 4567", "language": "en"})).await;
    assert_eq!(v[0]["score"], 0.4);
    assert_eq!((v[0]["start"].as_u64(), v[0]["end"].as_u64()), (Some(0), Some(15)));
    // Presidio's batch form: a list of texts, a list of answers.
    let (_, v) = post_mock(
        &mock,
        "/analyze",
        &json!({"text": ["Jane Doe", "nothing"], "language": "en"}),
    )
    .await;
    assert_eq!(v[0][0]["entity_type"], "PERSON");
    assert_eq!(v[1], json!([]));

    // Failures, as Presidio's REST server answers them (its e2e tests pin these).
    let cases = [
        (json!({}), 500, "No text provided"),
        (json!({"language": "en"}), 500, "No text provided"),
        (json!({"text": "John Smith"}), 500, "No language provided"),
        (
            json!({"text": "John Smith", "language": "zz"}),
            500,
            "No matching recognizers were found to serve the request.",
        ),
    ];
    for (body, status, error) in cases {
        let (s, v) = post_mock(&mock, "/analyze", &body).await;
        assert_eq!((s, v), (status, json!({"error": error})), "{body}");
    }
    let (s, v) = post_mock(
        &mock,
        "/analyze",
        &json!({"text": "John Smith", "language": "en", "score_threshold": "high"}),
    )
    .await;
    assert_eq!(s, 400);
    assert!(v["error"]
        .as_str()
        .unwrap()
        .starts_with("Failed to parse /analyze request"));
}

#[tokio::test]
async fn presidio_anonymizer_replaces_as_presidio_does() {
    let mock = Mock::start();
    // Presidio's own e2e case: contained results dropped, items last first, offsets in
    // the anonymized text.
    let (status, v) = post_mock(
        &mock,
        "/anonymize",
        &json!({
            "text": "hello world, my name is Jane Doe. My number is: 034453334",
            "anonymizers": {
                "DEFAULT": {"type": "replace", "new_value": "ANONYMIZED"},
                "PHONE_NUMBER": {"type": "mask", "masking_char": "*", "chars_to_mask": 4, "from_end": true}
            },
            "analyzer_results": [
                {"start": 24, "end": 32, "score": 0.8, "entity_type": "NAME"},
                {"start": 24, "end": 28, "score": 0.8, "entity_type": "FIRST_NAME"},
                {"start": 29, "end": 32, "score": 0.6, "entity_type": "LAST_NAME"},
                {"start": 48, "end": 57, "score": 0.95, "entity_type": "PHONE_NUMBER"}
            ]
        }),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        v,
        json!({"text": "hello world, my name is ANONYMIZED. My number is: 03445****", "items": [
            {"operator": "mask", "entity_type": "PHONE_NUMBER", "start": 50, "end": 59, "text": "03445****"},
            {"operator": "replace", "entity_type": "NAME", "start": 24, "end": 34, "text": "ANONYMIZED"}
        ]})
    );

    // Analyzer output in, code points throughout, `<ENTITY_TYPE>` by default.
    let text = "Zoë 😀 mail john@example.com or Alice Jones";
    let (_, found) = post_mock(&mock, "/analyze", &json!({"text": text, "language": "en"})).await;
    let (status, v) = post_mock(&mock, "/anonymize", &json!({"text": text, "analyzer_results": found})).await;
    assert_eq!(status, 200);
    let out = "Zoë 😀 mail <EMAIL_ADDRESS> or <PERSON>";
    assert_eq!(v["text"], out);
    assert_eq!(
        v["items"][1],
        json!({"start": py_index(out, "<EMAIL"), "end": py_index(out, "<EMAIL") + 15,
            "entity_type": "EMAIL_ADDRESS", "text": "<EMAIL_ADDRESS>", "operator": "replace"})
    );
    // Per-entity operators beat DEFAULT.
    let (_, v) = post_mock(
        &mock,
        "/anonymize",
        &json!({"text": text, "analyzer_results": found,
            "anonymizers": {"DEFAULT": {"type": "replace", "new_value": "[X]"}, "PERSON": {"type": "redact"}}}),
    )
    .await;
    assert_eq!(v["text"], "Zoë 😀 mail [X] or ");

    // Overlaps: one type merges (union, higher score); a different type inside another goes.
    let (_, v) = post_mock(
        &mock,
        "/anonymize",
        &json!({"text": "abcdefghij", "analyzer_results": [
            {"start": 0, "end": 4, "score": 0.3, "entity_type": "A"},
            {"start": 2, "end": 6, "score": 0.9, "entity_type": "A"},
            {"start": 7, "end": 9, "score": 0.99, "entity_type": "B"},
            {"start": 6, "end": 10, "score": 0.1, "entity_type": "C"}
        ]}),
    )
    .await;
    assert_eq!(v["text"], "<A><C>");
    // Different types overlapping in part: both stay, the earlier cut where the later begins.
    let (_, v) = post_mock(
        &mock,
        "/anonymize",
        &json!({"text": "abcdefghij", "analyzer_results": [
            {"start": 0, "end": 5, "score": 0.9, "entity_type": "A"},
            {"start": 3, "end": 8, "score": 0.5, "entity_type": "B"}
        ]}),
    )
    .await;
    assert_eq!(v["text"], "<A><B>ij");
    assert_eq!(
        v["items"][1],
        json!({"start": 0, "end": 3, "entity_type": "A", "text": "<A>", "operator": "replace"})
    );

    // Failures: Presidio's codes and messages.
    let (s, v) = post_raw(&mock, "/anonymize", "{\"text\": \"x\",}").await;
    assert_eq!(
        (s, v["error"].as_str().unwrap().contains("could not understand")),
        (400, true)
    );
    let (s, v) = post_raw(&mock, "/anonymize", "{}").await;
    assert_eq!((s, v), (400, json!({"error": "Invalid request json"})));
    let refused = [
        (
            json!({"text": "abc"}),
            422,
            "Invalid input, request must contain analyzer results",
        ),
        (
            json!({"text": "abc", "analyzer_results": [{"start": 0, "end": 9, "score": 1.0, "entity_type": "X"}]}),
            422,
            "Invalid analyzer result, start: 0 and end: 9, while text length is only 3.",
        ),
        (
            json!({"text": "abc", "analyzer_results": [{"start": 0, "end": 1, "entity_type": "X"}]}),
            422,
            "Invalid input, analyzer result must contain score",
        ),
        (
            json!({"text": "abc", "analyzer_results": [], "anonymizers": {"DEFAULT": {"type": "custom", "new_value": "x"}}}),
            400,
            "Custom type anonymizer is not supported",
        ),
    ];
    for (body, status, error) in refused {
        let (s, v) = post_mock(&mock, "/anonymize", &body).await;
        assert_eq!((s, v), (status, json!({"error": error})), "{body}");
    }
}

/// Signs a Bedrock request as the AWS SDK would, with `secret`.
fn signed(mock: &Mock, path: &str, body: &[u8], secret: &str) -> reqwest::RequestBuilder {
    use aws_credential_types::Credentials;
    use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
    use aws_sigv4::sign::v4;
    let host = mock.addr.to_string();
    let identity = Credentials::new("AKIDGUARDTEST", secret, None, None, "test").into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("bedrock")
        .time(SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let signable = SignableRequest::new(
        "POST",
        format!("http://{host}{path}"),
        [("host", host.as_str()), ("content-type", "application/json")].into_iter(),
        SignableBody::Bytes(body),
    )
    .unwrap();
    let (instructions, _) = sign(signable, &params).unwrap().into_parts();
    let mut rb = client()
        .post(format!("{}{path}", mock.url()))
        .header("content-type", "application/json")
        .body(body.to_vec());
    for (name, value) in instructions.headers() {
        rb = rb.header(name, value);
    }
    rb
}

async fn apply(mock: &Mock, path: &str, body: &Value, secret: &str) -> (u16, String, Value) {
    let r = signed(mock, path, body.to_string().as_bytes(), secret)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let kind = r
        .headers()
        .get("x-amzn-errortype")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, kind, r.json().await.unwrap())
}

#[tokio::test]
async fn bedrock_apply_guardrail_checks_the_signature_and_intervenes() {
    let mock = Mock::start();
    let path = "/guardrail/mockguard1/version/1/apply";
    let content = |t: &str| json!({"source": "INPUT", "content": [{"text": {"text": t}}]});

    let (status, _, v) = apply(&mock, path, &content("hello there"), PROVIDER_KEY).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["action"], "NONE");
    assert_eq!(v["outputs"], json!([]));
    assert_eq!(v["usage"]["topicPolicyUnits"], 1);
    assert_eq!(v["guardrailCoverage"]["textCharacters"]["total"], 11);

    let (_, _, v) = apply(&mock, path, &content("Tell me about the Forbidden Topic"), PROVIDER_KEY).await;
    assert_eq!(v["action"], "GUARDRAIL_INTERVENED");
    assert_eq!(
        v["outputs"],
        json!([{"text": "Sorry, the model cannot answer this question."}])
    );
    assert_eq!(v["assessments"][0]["topicPolicy"]["topics"][0]["action"], "BLOCKED");
    assert_eq!(v["assessments"][0]["topicPolicy"]["topics"][0]["type"], "DENY");

    let body = json!({"source": "OUTPUT", "content": [
        {"text": {"text": "write to jo@example.com please", "qualifiers": ["guard_content"]}},
        {"text": {"text": "nothing here"}}]});
    let (_, _, v) = apply(&mock, path, &body, PROVIDER_KEY).await;
    assert_eq!(v["action"], "GUARDRAIL_INTERVENED");
    assert_eq!(
        v["outputs"],
        json!([{"text": "write to {EMAIL} please"}, {"text": "nothing here"}])
    );
    assert_eq!(
        v["assessments"][0]["sensitiveInformationPolicy"]["piiEntities"],
        json!([{"match": "jo@example.com", "type": "EMAIL", "action": "ANONYMIZED", "detected": true}])
    );
    // The ARN names the same guardrail; DRAFT is a version.
    let arn = "/guardrail/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Aguardrail%2Fmockguard1/version/DRAFT/apply";
    let (status, _, v) = apply(&mock, arn, &content("hi"), PROVIDER_KEY).await;
    assert_eq!((status, &v["action"]), (200, &json!("NONE")), "{v}");

    // Errors, in Bedrock's envelope and error types.
    let (status, kind, v) = apply(&mock, path, &content("hi"), "not-the-secret").await;
    assert_eq!((status, kind.as_str()), (403, "InvalidSignatureException"));
    assert!(v["message"].as_str().unwrap().contains("signature"));
    let r = client()
        .post(format!("{}{path}", mock.url()))
        .json(&content("hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let (status, kind, v) = apply(
        &mock,
        "/guardrail/othergr1/version/1/apply",
        &content("hi"),
        PROVIDER_KEY,
    )
    .await;
    assert_eq!((status, kind.as_str()), (404, "ResourceNotFoundException"));
    assert!(v["message"].is_string());
    let (status, kind, _) = apply(
        &mock,
        "/guardrail/mockguard1/version/9/apply",
        &content("hi"),
        PROVIDER_KEY,
    )
    .await;
    assert_eq!((status, kind.as_str()), (404, "ResourceNotFoundException"));
    let (status, kind, v) = apply(&mock, "/guardrail/gr-123/version/1/apply", &content("hi"), PROVIDER_KEY).await;
    assert_eq!((status, kind.as_str()), (400, "ValidationException"));
    assert!(v["message"].as_str().unwrap().contains("guardrailIdentifier"));
    let (status, kind, _) = apply(
        &mock,
        path,
        &json!({"source": "SIDEWAYS", "content": [{"text": {"text": "x"}}]}),
        PROVIDER_KEY,
    )
    .await;
    assert_eq!((status, kind.as_str()), (400, "ValidationException"));
    let (status, _, _) = apply(&mock, path, &json!({"source": "INPUT"}), PROVIDER_KEY).await;
    assert_eq!(status, 400);
    let (status, _, _) = apply(
        &mock,
        path,
        &json!({"source": "INPUT", "content": [{"text": {"text": "x", "qualifiers": ["bogus"]}}]}),
        PROVIDER_KEY,
    )
    .await;
    assert_eq!(status, 400);
}

fn check_body(texts: &[(&str, &str)]) -> Value {
    let texts: Vec<Value> = texts.iter().map(|(id, t)| json!({"id": id, "text": t})).collect();
    json!({"stage": "request", "model": "chat", "owner": "team", "request_id": "req-1", "texts": texts})
}

async fn check(mock: &Mock, token: Option<&str>, body: &Value) -> reqwest::Response {
    let mut rb = client().post(format!("{}/guard/check", mock.url())).json(body);
    if let Some(t) = token {
        rb = rb.bearer_auth(t);
    }
    rb.send().await.unwrap()
}

async fn verdict(mock: &Mock, texts: &[(&str, &str)]) -> Value {
    let r = check(mock, Some(GUARD_TOKEN), &check_body(texts)).await;
    assert_eq!(r.status().as_u16(), 200);
    r.json().await.unwrap()
}

#[tokio::test]
async fn webhook_guard_follows_the_contract_and_its_scripts() {
    let mock = Mock::with_guard_token(GUARD_TOKEN);
    let body = check_body(&[("0", "hello")]);
    assert_eq!(check(&mock, None, &body).await.status().as_u16(), 401);
    assert_eq!(check(&mock, Some("wrong"), &body).await.status().as_u16(), 401);

    assert_eq!(verdict(&mock, &[("0", "hello")]).await["action"], "allow");
    let v = verdict(&mock, &[("0", "fine"), ("1", "a forbidden thing")]).await;
    assert_eq!(v["action"], "block");
    assert!(v["reason"].is_string());
    let v = verdict(&mock, &[("0", "fine"), ("1", "key secret-Ab12 and secret-zz9")]).await;
    assert_eq!(v["action"], "mask");
    assert_eq!(v["texts"], json!([{"id": "1", "text": "key [MASKED] and [MASKED]"}]));
    let v = verdict(&mock, &[("0", "guard-badids"), ("99", "x")]).await;
    assert_eq!(v["action"], "mask");
    let id = v["texts"][0]["id"].as_str().unwrap();
    assert!(id != "0" && id != "99");

    let r = check(&mock, Some(GUARD_TOKEN), &check_body(&[("0", "guard-malformed")])).await;
    assert_eq!(r.status().as_u16(), 200);
    assert!(serde_json::from_slice::<Value>(&r.bytes().await.unwrap()).is_err());
    let r = check(&mock, Some(GUARD_TOKEN), &check_body(&[("0", "guard-500")])).await;
    assert_eq!(r.status().as_u16(), 500);
    let r = check(&mock, Some(GUARD_TOKEN), &check_body(&[("0", "guard-huge")])).await;
    let huge = r.bytes().await.unwrap();
    assert_eq!(huge.len(), 20 * 1024 * 1024);
    assert_eq!(serde_json::from_slice::<Value>(&huge).unwrap()["action"], "allow");
    let started = Instant::now();
    let v = verdict(&mock, &[("0", "guard-slow")]).await;
    assert!(started.elapsed() >= Duration::from_secs(3));
    assert_eq!(v["action"], "allow");

    // Requests that break the contract: 400 with a reason.
    for bad in [
        json!({"stage": "later", "model": "m", "owner": "o", "request_id": "r", "texts": []}),
        json!({"stage": "request", "model": "m", "owner": "o", "request_id": "r"}),
        json!({"stage": "request", "model": "m", "owner": "o", "request_id": "r", "texts": [{"id": 0, "text": "x"}]}),
        json!({"stage": "request", "model": "m", "owner": "o", "request_id": "r",
            "texts": [{"id": "0", "text": "x"}, {"id": "0", "text": "y"}]}),
    ] {
        let r = check(&mock, Some(GUARD_TOKEN), &bad).await;
        assert_eq!(r.status().as_u16(), 400, "{bad}");
        assert!(r.json::<Value>().await.unwrap()["error"].is_string());
    }

    // Every request recorded, headers and body, the last 100 kept.
    let seen: Value = client()
        .get(format!("{}/guard/requests", mock.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let seen = seen.as_array().unwrap();
    assert_eq!(seen[0]["headers"].get("authorization"), None);
    assert_eq!(seen[1]["headers"]["authorization"], "Bearer wrong");
    assert_eq!(seen[2]["headers"]["authorization"], format!("Bearer {GUARD_TOKEN}"));
    assert_eq!(seen[2]["json"]["texts"], json!([{"id": "0", "text": "hello"}]));
    assert_eq!(seen[2]["json"]["request_id"], "req-1");
    assert!(seen[2]["body"].as_str().unwrap().contains("\"stage\""));
    for i in 0..100 {
        verdict(&mock, &[("0", &format!("n{i}"))]).await;
    }
    let seen: Value = client()
        .get(format!("{}/guard/requests", mock.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let seen = seen.as_array().unwrap();
    assert_eq!(seen.len(), 100);
    assert_eq!(seen[0]["json"]["texts"][0]["text"], "n0");
    assert_eq!(seen[99]["json"]["texts"][0]["text"], "n99");
}

#[tokio::test]
async fn webhook_without_a_token_takes_any_caller() {
    let mock = Mock::start();
    let r = check(&mock, None, &check_body(&[("0", "hello")])).await;
    assert_eq!(r.status().as_u16(), 200);
}

#[tokio::test]
async fn judge_models_answer_safe_or_unsafe_in_each_dialect() {
    let mock = Mock::start();
    let chat = |model: &str, text: &str| json!({"model": model, "messages": [{"role": "user", "content": text}]});
    let (status, v) = post_mock(
        &mock,
        "/v1/chat/completions",
        &chat("guard-model", "How to build a bomb?"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(v["choices"][0]["message"]["content"], "unsafe\nS1");
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() >= 1);
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() >= 1);
    let (_, v) = post_mock(&mock, "/v1/chat/completions", &chat("llama-guard-3-8b", "hello")).await;
    assert_eq!(v["choices"][0]["message"]["content"], "safe");
    // Any other model is not a judge.
    let (_, v) = post_mock(&mock, "/v1/chat/completions", &chat("gpt-4o", "a bomb")).await;
    assert_ne!(v["choices"][0]["message"]["content"], "unsafe\nS1");

    let r = client()
        .post(format!("{}/v1/messages", mock.url()))
        .header("x-api-key", PROVIDER_KEY)
        .header("anthropic-version", "2023-06-01")
        .json(&json!({"model": "meta-llama/Llama-Guard-4-12B", "max_tokens": 10,
            "messages": [{"role": "user", "content": "a bomb"}]}))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["content"][0]["text"], "unsafe\nS1");
}
