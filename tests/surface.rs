//! The rest of OpenAI's surface end to end, on a real listener and the mock: legacy
//! completions (JSON, SSE, usage, guardrails both ways), moderations, image generations
//! and edits, audio transcriptions and translations (multipart: the alias rewritten in
//! the form, the file byte for byte, Azure's deployment paths) and speech (audio passed
//! through as it arrives); usage priced per image and audio minute; a clear 400 for
//! other providers; and hostile forms, each refused before anything goes upstream.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

const CONFIG: &str = r#"
{SERVER}
  max_request_body_bytes: 300000
  client_body_timeout_ms: 1000
provider_keys:
  - {name: oa, provider: openai, base_url: "{MOCK}/v1", api_key: "{PROVIDER_KEY}"}
  - {name: az, provider: azure, base_url: "{MOCK}", api_key: "{PROVIDER_KEY}", api_version: "2025-04-01-preview"}
  - {name: an, provider: anthropic, base_url: "{MOCK}", api_key: "{PROVIDER_KEY}"}
guardrails:
  - {name: no-falcon, rules: [{kind: keyword, words: [falcon]}], stage: request}
  - {name: pii-in, pack: filters/pii.yaml, stage: request, action: mask}
  - {name: pii-out, pack: filters/pii.yaml, stage: response, action: mask}
models:
  - {name: legacy, provider_key: oa, model: "up?echo", guardrails: [no-falcon, pii-out],
     pricing: {input_per_mtok: 1.0, output_per_mtok: 2.0}}
  - {name: mod, provider_key: oa, model: omni-moderation-latest, guardrails: [no-falcon]}
  - {name: img, provider_key: oa, model: gpt-image-1, guardrails: [no-falcon],
     pricing: {per_image: 0.04, input_per_mtok: 5.0, output_per_mtok: 40.0}}
  - {name: dalle, provider_key: oa, model: dall-e-2, pricing: {per_image: 0.02}}
  - {name: whisper, provider_key: oa, model: whisper-1, guardrails: [no-falcon, pii-in],
     pricing: {per_audio_minute: 0.006}}
  - {name: tts, provider_key: oa, model: tts-1, guardrails: [no-falcon]}
  - {name: tts-cut, provider_key: oa, model: "tts-1?drop_after=2&chunk_delay_ms=500"}
  - {name: az-whisper, provider_key: az, model: whisper-deploy}
  - {name: az-legacy, provider_key: az, model: "instruct-deploy"}
  - {name: az-mod, provider_key: az, model: m}
  - {name: claude, provider_key: an, model: c}
  - {name: forbidden, provider_key: oa, model: whisper-1}
  - {name: whisper-down, provider_key: oa, model: "whisper-1?status=503"}
  - {name: whisper-az, provider_key: az, model: "whisper-deploy-2"}
  - name: whisper-routed
    routing: {targets: [{model: whisper-down}, {model: whisper-az, priority: 1}]}
api_keys:
  - {name: main, key: "{CALLER_KEY}", owner: team-a,
     models: [legacy, mod, img, dalle, whisper, tts, tts-cut, az-whisper, az-legacy, az-mod, claude, whisper-routed]}
"#;

const BOUNDARY: &str = "aigw-test-boundary-7e3f";

/// A multipart form: `(name, filename, bytes)` parts, as SDKs write them.
fn form(parts: &[(&str, Option<&str>, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, file, value) in parts {
        out.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        let head = match file {
            Some(f) => format!(
                "Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            ),
            None => format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n"),
        };
        out.extend_from_slice(head.as_bytes());
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    out
}

async fn upload(gw: &Gateway, path: &str, body: Vec<u8>) -> reqwest::Response {
    client()
        .post(format!("{}{path}", gw.url()))
        .bearer_auth(CALLER_KEY)
        .header("content-type", format!("multipart/form-data; boundary={BOUNDARY}"))
        .body(body)
        .send()
        .await
        .unwrap()
}

/// `n` bytes of "audio" that no two offsets repeat soon.
fn audio(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 251) as u8).collect()
}

fn hash(b: &[u8]) -> String {
    blake3::hash(b).to_hex().to_string()
}

async fn error_code(r: reqwest::Response) -> (StatusCode, String) {
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    (status, v["error"]["code"].as_str().unwrap_or_default().to_owned())
}

#[tokio::test]
async fn completions_json_and_stream_carry_usage_and_pass_the_guardrails() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    let r = post(
        &gw,
        "/v1/completions",
        &json!({"model": "legacy", "prompt": "Say this is a test"}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-aigw-model"], "legacy");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["text"], "Say this is a test");
    let seen = mock.last_request();
    assert_eq!(seen["path"], "/v1/completions");
    assert_eq!(seen["headers"]["authorization"], format!("Bearer {PROVIDER_KEY}"));
    let sent: Value = serde_json::from_str(seen["body"].as_str().unwrap()).unwrap();
    assert_eq!(sent["model"], "up?echo");
    // Usage counted like chat's (5 prompt tokens, 5 completion tokens at 4 bytes each).
    let m = metrics(&gw).await;
    assert_eq!(
        m[r#"aigw_tokens_total{model="legacy",owner="team-a",type="input"}"#],
        5.0
    );

    // A stream: the gateway asks for usage, reads it and strips the chunk the caller
    // did not ask for.
    let r = post(
        &gw,
        "/v1/completions",
        &json!({"model": "legacy", "prompt": "one two three", "stream": true}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let body = r.text().await.unwrap();
    let data = sse_data(&body);
    assert_eq!(data.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let text: String = chunks.iter().filter_map(|c| c["choices"][0]["text"].as_str()).collect();
    assert_eq!(text, "one two three");
    assert!(chunks.iter().all(|c| c.get("usage").is_none()), "{body}");
    let sent: Value = serde_json::from_str(mock.last_request()["body"].as_str().unwrap()).unwrap();
    assert_eq!(sent["stream_options"]["include_usage"], true);
    assert!(
        wait_until_async(|| async {
            metric(&gw, r#"aigw_tokens_total{model="legacy",owner="team-a",type="input"}"#).await == 9.0
        })
        .await
    );

    // Request guardrails read the prompt; response guardrails the answer's text, whole
    // and streamed.
    let r = post(
        &gw,
        "/v1/completions",
        &json!({"model": "legacy", "prompt": ["ok", "the falcon flies"]}),
    )
    .await;
    assert_eq!(error_code(r).await, (StatusCode::BAD_REQUEST, "content_filter".into()));
    let leak = "write to bob@example.com now";
    let r = post(&gw, "/v1/completions", &json!({"model": "legacy", "prompt": leak})).await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["choices"][0]["text"], "write to [REDACTED:email] now");
    let r = post(
        &gw,
        "/v1/completions",
        &json!({"model": "legacy", "prompt": leak, "stream": true}),
    )
    .await;
    let body = r.text().await.unwrap();
    assert!(!body.contains("bob@example.com"), "{body}");
    let text: String = sse_data(&body)
        .iter()
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|c| c["choices"][0]["text"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(text, "write to [REDACTED:email] now");

    // Azure: the deployment's path.
    let r = post(&gw, "/v1/completions", &json!({"model": "az-legacy", "prompt": "hi"})).await;
    assert_eq!(r.status(), StatusCode::OK);
    let seen = mock.last_request();
    assert_eq!(
        seen["path"],
        "/openai/deployments/instruct-deploy/completions?api-version=2025-04-01-preview"
    );
    assert_eq!(seen["headers"]["api-key"], PROVIDER_KEY);
}

#[tokio::test]
async fn moderations_and_images_are_served_counted_and_priced() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    let r = post(
        &gw,
        "/v1/moderations",
        &json!({"model": "mod", "input": ["hello", "I will kill it"]}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["results"][1]["flagged"], true);
    assert_eq!(v["model"], "omni-moderation-latest");
    // Moderation input passes the request guardrails too.
    let r = post(&gw, "/v1/moderations", &json!({"model": "mod", "input": "a falcon"})).await;
    assert_eq!(error_code(r).await, (StatusCode::BAD_REQUEST, "content_filter".into()));
    // Azure has no moderations endpoint: refused before any upstream call.
    let before = mock.requests().len();
    let r = post(&gw, "/v1/moderations", &json!({"model": "az-mod", "input": "x"})).await;
    assert_eq!(error_code(r).await, (StatusCode::BAD_REQUEST, "invalid_request".into()));
    assert_eq!(mock.requests().len(), before);

    let r = post(
        &gw,
        "/v1/images/generations",
        &json!({"model": "img", "prompt": "a red square", "n": 2}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    assert_eq!(
        serde_json::from_str::<Value>(mock.last_request()["body"].as_str().unwrap()).unwrap()["model"],
        "gpt-image-1"
    );
    // Two images at 0.04, plus the tokens gpt-image-1 reports (3 in at 5/M, 544 out at 40/M).
    let want = 2.0 * 0.04 + (3.0 * 5.0 + 544.0 * 40.0) / 1e6;
    assert!(
        wait_until_async(|| async {
            (metric(&gw, r#"aigw_cost_usd_total{model="img",owner="team-a"}"#).await - want).abs() < 1e-9
        })
        .await
    );
    assert_eq!(
        metric(&gw, r#"aigw_media_total{model="img",owner="team-a",unit="image"}"#).await,
        2.0
    );
    // A model that reports no usage is still charged per image.
    let r = post(
        &gw,
        "/v1/images/generations",
        &json!({"model": "dalle", "prompt": "x", "n": 3}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        wait_until_async(|| async {
            (metric(&gw, r#"aigw_cost_usd_total{model="dalle",owner="team-a"}"#).await - 0.06).abs() < 1e-9
        })
        .await
    );
    let r = post(
        &gw,
        "/v1/images/generations",
        &json!({"model": "img", "prompt": "falcon"}),
    )
    .await;
    assert_eq!(error_code(r).await, (StatusCode::BAD_REQUEST, "content_filter".into()));

    // Image edits: a multipart form with the image a file and the alias a field.
    let png = audio(5000);
    let body = form(&[
        ("image", Some("in.png"), &png),
        ("prompt", None, b"make it blue"),
        ("model", None, b"img"),
        ("n", None, b"1"),
    ]);
    let r = upload(&gw, "/v1/images/edits", body).await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["data"][0]["revised_prompt"], "make it blue");
    let r = upload(
        &gw,
        "/v1/images/edits",
        form(&[
            ("image", Some("in.png"), &png),
            ("prompt", None, b"falcon"),
            ("model", None, b"img"),
        ]),
    )
    .await;
    assert_eq!(error_code(r).await, (StatusCode::BAD_REQUEST, "content_filter".into()));
}

#[tokio::test]
async fn transcriptions_rewrite_the_alias_in_the_form_and_keep_the_file() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    // 160,000 bytes: ten seconds of the mock's audio.
    let file = audio(160_000);
    let body = form(&[
        ("file", Some("speech.wav"), &file),
        ("model", None, b"whisper"),
        ("prompt", None, b"names: bob@example.com"),
        ("response_format", None, b"json"),
    ]);
    let r = upload(&gw, "/v1/audio/transcriptions", body).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-aigw-model"], "whisper");
    let v: Value = r.json().await.unwrap();
    // The provider got the upstream model and the file byte for byte, and the prompt
    // field as the request guardrail masked it.
    assert_eq!(
        v["text"],
        format!(
            "transcribed 160000 bytes {} by whisper-1; prompt: names: [REDACTED:email]",
            hash(&file)
        )
    );
    let seen = mock.last_request();
    assert_eq!(seen["path"], "/v1/audio/transcriptions");
    assert_eq!(seen["headers"]["authorization"], format!("Bearer {PROVIDER_KEY}"));
    assert!(seen["headers"]["content-type"].as_str().unwrap().contains(BOUNDARY));
    // Ten seconds at 0.006 a minute.
    assert!(
        wait_until_async(|| async {
            (metric(&gw, r#"aigw_cost_usd_total{model="whisper",owner="team-a"}"#).await - 0.001).abs() < 1e-9
        })
        .await
    );
    assert_eq!(
        metric(
            &gw,
            r#"aigw_media_total{model="whisper",owner="team-a",unit="audio_second"}"#
        )
        .await,
        10.0
    );

    // Plain text answers pass through as they are.
    let body = form(&[
        ("model", None, b"whisper"),
        ("file", Some("a.wav"), &file[..100]),
        ("response_format", None, b"text"),
    ]);
    let r = upload(&gw, "/v1/audio/translations", body).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    assert!(r.text().await.unwrap().starts_with("translated 100 bytes"));

    // Azure: the deployment path, the form's model the deployment's.
    let body = form(&[("file", Some("a.wav"), &file[..1000]), ("model", None, b"az-whisper")]);
    let r = upload(&gw, "/v1/audio/transcriptions", body).await;
    assert_eq!(r.status(), StatusCode::OK);
    let seen = mock.last_request();
    assert_eq!(
        seen["path"],
        "/openai/deployments/whisper-deploy/audio/transcriptions?api-version=2025-04-01-preview"
    );
    assert!(seen["body"].as_str().unwrap().contains("\r\n\r\nwhisper-deploy\r\n"));
    assert_eq!(seen["headers"]["api-key"], PROVIDER_KEY);
}

#[tokio::test]
async fn a_form_fails_over_with_its_model_rewritten_for_each_target() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    let file = audio(20_000);
    let body = form(&[("model", None, b"whisper-routed"), ("file", Some("a.wav"), &file)]);
    let r = upload(&gw, "/v1/audio/transcriptions", body).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-aigw-model"], "whisper-az");
    let v: Value = r.json().await.unwrap();
    // The second target got its own model in the form (rewritten again from the first
    // attempt's), and the same file.
    assert_eq!(
        v["text"],
        format!("transcribed 20000 bytes {} by whisper-deploy-2; prompt: ", hash(&file))
    );
    let seen = mock.requests();
    assert_eq!(seen.len(), 2);
    assert!(seen[0]["body"]
        .as_str()
        .unwrap()
        .contains("\r\n\r\nwhisper-1?status=503\r\n"));
    assert!(seen[1]["body"]
        .as_str()
        .unwrap()
        .contains("\r\n\r\nwhisper-deploy-2\r\n"));
    assert_eq!(
        seen[0]["body_len"].as_u64().unwrap() - seen[1]["body_len"].as_u64().unwrap(),
        4
    );
}

#[tokio::test]
async fn refused_uploads_never_reach_the_provider() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    let file = audio(1000);
    let path = "/v1/audio/transcriptions";
    let cases: Vec<(&str, Vec<u8>, StatusCode, &str)> = vec![
        // Over max_request_body_bytes (300,000): 413, declared or not.
        (
            "oversized",
            form(&[("model", None, b"whisper"), ("file", Some("a"), &audio(300_001))]),
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
        ),
        // A model the key may not use, inside the form.
        (
            "forbidden",
            form(&[("model", None, b"forbidden"), ("file", Some("a"), &file)]),
            StatusCode::FORBIDDEN,
            "model_not_allowed",
        ),
        // A provider without the endpoint.
        (
            "anthropic",
            form(&[("model", None, b"claude"), ("file", Some("a"), &file)]),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        // Two models: which one a provider reads is its parser's choice.
        (
            "two models",
            form(&[
                ("model", None, b"whisper"),
                ("file", Some("a"), &file),
                ("model", None, b"forbidden"),
            ]),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        // The model as a file part.
        (
            "model file",
            form(&[("model", Some("whisper"), b"whisper"), ("file", Some("a"), &file)]),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        // A text field the provider would read as a file.
        (
            "prompt file",
            form(&[
                ("model", None, b"whisper"),
                ("file", Some("a"), &file),
                ("prompt", Some("p.txt"), b"falcon"),
            ]),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        // The request guardrail reads text fields.
        (
            "guarded",
            form(&[
                ("model", None, b"whisper"),
                ("file", Some("a"), &file),
                ("prompt", None, b"the falcon"),
            ]),
            StatusCode::BAD_REQUEST,
            "content_filter",
        ),
        // No model at all.
        (
            "no model",
            form(&[("file", Some("a"), &file)]),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
    ];
    let mut bodies = cases;
    // A missing closing delimiter.
    let mut cut = form(&[("model", None, b"whisper"), ("file", Some("a"), &file)]);
    cut.truncate(cut.len() - BOUNDARY.len() - 6);
    bodies.push(("unclosed", cut, StatusCode::BAD_REQUEST, "invalid_request"));
    // The boundary inside the file's data: the rest of the "file" becomes a headless part.
    let mut inside = file.clone();
    inside.extend_from_slice(format!("\r\n--{BOUNDARY}\r\nX: y\r\n\r\nmodel").as_bytes());
    bodies.push((
        "boundary inside",
        form(&[("model", None, b"whisper"), ("file", Some("a"), &inside)]),
        StatusCode::BAD_REQUEST,
        "invalid_request",
    ));
    // A huge field count.
    let names: Vec<String> = (0..500).map(|i| format!("f{i}")).collect();
    let mut many: Vec<(&str, Option<&str>, &[u8])> = names.iter().map(|n| (n.as_str(), None, &b"x"[..])).collect();
    many.push(("model", None, b"whisper"));
    bodies.push(("many fields", form(&many), StatusCode::BAD_REQUEST, "invalid_request"));
    // Header injection: a part naming its field twice, and two Content-Dispositions.
    let twice = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"prompt\"; name=\"model\"\r\n\r\nforbidden\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper\r\n--{BOUNDARY}--\r\n"
    );
    bodies.push((
        "name twice",
        twice.into_bytes(),
        StatusCode::BAD_REQUEST,
        "invalid_request",
    ));
    let two_cd = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"prompt\"\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nforbidden\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper\r\n--{BOUNDARY}--\r\n"
    );
    bodies.push((
        "two dispositions",
        two_cd.into_bytes(),
        StatusCode::BAD_REQUEST,
        "invalid_request",
    ));
    for (what, body, status, code) in bodies {
        let r = upload(&gw, path, body).await;
        assert_eq!(error_code(r).await, (status, code.to_owned()), "{what}");
    }
    // Chunked, with no length declared: cut off at the limit as it arrives.
    let big = form(&[("model", None, b"whisper"), ("file", Some("a"), &audio(400_000))]);
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> = big.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
    let r = client()
        .post(format!("{}{path}", gw.url()))
        .bearer_auth(CALLER_KEY)
        .header("content-type", format!("multipart/form-data; boundary={BOUNDARY}"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(pieces)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // Not a form at all: JSON, or multipart without a boundary.
    let r = post(&gw, path, &json!({"model": "whisper", "file": "aGVsbG8="})).await;
    assert_eq!(error_code(r).await, (StatusCode::BAD_REQUEST, "invalid_request".into()));
    let r = client()
        .post(format!("{}{path}", gw.url()))
        .bearer_auth(CALLER_KEY)
        .header("content-type", "multipart/form-data")
        .body(form(&[("model", None, b"whisper")]))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, (StatusCode::BAD_REQUEST, "invalid_request".into()));
    // A Content-Length that lies: shorter cuts the form before its end; longer waits for
    // bytes that never come (client_body_timeout_ms).
    let ok = form(&[("model", None, b"whisper"), ("file", Some("a"), &file)]);
    for declared in [ok.len() - 20, ok.len() + 20] {
        let mut req = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {CALLER_KEY}\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {declared}\r\n\r\n"
        )
        .into_bytes();
        req.extend_from_slice(&ok);
        assert!(raw(&gw, &req).contains(" 400 "), "declared {declared}");
    }
    // Nothing above reached the provider.
    assert_eq!(mock.requests().len(), 0, "{:?}", mock.requests());
    // And the same form, honest, does.
    let r = upload(&gw, path, ok).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(mock.requests().len(), 1);
    // Completions to a non-OpenAI target: the same clear 400.
    let r = post(&gw, "/v1/completions", &json!({"model": "claude", "prompt": "x"})).await;
    assert_eq!(error_code(r).await, (StatusCode::BAD_REQUEST, "invalid_request".into()));
    let r = post(
        &gw,
        "/v1/audio/speech",
        &json!({"model": "claude", "input": "x", "voice": "alloy"}),
    )
    .await;
    assert_eq!(error_code(r).await, (StatusCode::BAD_REQUEST, "invalid_request".into()));
    assert_eq!(mock.requests().len(), 1);
}

#[tokio::test]
async fn speech_streams_audio_to_the_caller_as_it_arrives() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    let r = post(
        &gw,
        "/v1/audio/speech",
        &json!({"model": "tts", "input": "Hello there", "voice": "alloy"}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "audio/mpeg");
    let audio = r.bytes().await.unwrap();
    assert_eq!(audio.len(), 8 * 4096);
    assert_eq!(
        serde_json::from_str::<Value>(mock.last_request()["body"].as_str().unwrap()).unwrap()["model"],
        "tts-1"
    );
    // The provider sends a piece, then another half a second later, and breaks off: a
    // gateway that
    // buffered the answer would have nothing to give but an error; this one passed the
    // pieces on as they came, under a 200 it could no longer take back.
    let mut r = post(
        &gw,
        "/v1/audio/speech",
        &json!({"model": "tts-cut", "input": "Hello there", "voice": "alloy"}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let mut got = 0;
    let ended = loop {
        match r.chunk().await {
            Ok(Some(c)) => got += c.len(),
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    assert!(
        ended.is_err() && got >= 4096,
        "the cut shows: {ended:?} after {got} bytes"
    );
    // Speech input passes the request guardrails.
    let r = post(
        &gw,
        "/v1/audio/speech",
        &json!({"model": "tts", "input": "falcon", "voice": "alloy"}),
    )
    .await;
    assert_eq!(error_code(r).await, (StatusCode::BAD_REQUEST, "content_filter".into()));
}

#[test]
fn media_prices_are_checked_when_the_config_loads() {
    let config = r#"
version: 1
provider_keys:
  - {name: mock, provider: openai_compatible, base_url: "http://127.0.0.1:9/v1"}
models:
  - {name: a, provider_key: mock, pricing: {per_image: -0.04}}
  - {name: b, provider_key: mock, pricing: {per_audio_minute: .inf}}
  - {name: c, provider_key: mock, pricing: {per_image: 0.04, per_audio_minute: 0.006}}
"#;
    assert_config_errors(
        config,
        &[
            "models[0].pricing: prices must be zero or positive numbers",
            "models[1].pricing: prices must be zero or positive numbers",
        ],
        "no secret here",
    );
}
