//! Guardrail services (issue 38) end to end: a real gateway calls the mock's fakes of a
//! webhook, OpenAI's moderation model, Presidio, Bedrock Guardrails (SigV4 checked) and a
//! judge model, on requests, whole answers (translated too) and MCP calls; with block,
//! mask and monitor; and when the service is slow, fails, or answers garbage.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{json, Value};

/// `BASE_CONFIG`'s provider, an echo model (the answer is the prompt), and `{GUARDS}`.
const CONFIG: &str = r#"
version: 1
server:
  listen: ["127.0.0.1:{PORT}"]
  admin_listen: "127.0.0.1:{ADMIN}"
provider_keys:
  - {name: mock, provider: openai_compatible, base_url: "{MOCK}/v1", api_key: "{PROVIDER_KEY}"}
  - {name: oa, provider: openai, base_url: "{MOCK}/v1", api_key: "{PROVIDER_KEY}"}
  - name: anth
    provider: anthropic
    base_url: "{MOCK}"
    api_key: "{PROVIDER_KEY}"
models:
  - {name: chat, provider_key: mock, model: "upstream-chat?echo"}
  - {name: claude, provider_key: anth, model: "claude-x?echo"}
  - {name: resp, provider_key: oa, model: "up?echo"}
  - {name: guard-model, provider_key: mock, model: guard-model}
api_keys:
  - {name: main, key: "{CALLER_KEY}", owner: team-a, guardrails: [{GUARD_NAMES}]}
guardrails:
{GUARDS}
"#;

fn config(guards: &str, names: &str) -> String {
    CONFIG.replace("{GUARDS}", guards).replace("{GUARD_NAMES}", names)
}

fn chat(text: &str) -> Value {
    json!({"model": "chat", "messages": [{"role": "user", "content": text}]})
}

/// What the provider got as the last chat request's user text.
fn provider_saw(mock: &Mock) -> String {
    let r = mock
        .requests()
        .into_iter()
        .rev()
        .find(|r| {
            r["path"]
                .as_str()
                .is_some_and(|p| p.ends_with("/chat/completions") || p.ends_with("/messages"))
        })
        .expect("the provider was called");
    let body: Value = serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
    body["messages"].as_array().unwrap().last().unwrap()["content"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn chat_calls(mock: &Mock) -> usize {
    mock.requests()
        .iter()
        .filter(|r| r["path"].as_str().is_some_and(|p| p.ends_with("/chat/completions")))
        .count()
}

async fn webhook_requests(mock: &Mock) -> Vec<Value> {
    let v = get_json(&format!("{}/guard/requests", mock.url()), "").await;
    v.as_array().cloned().unwrap_or_default()
}

async fn answer_text(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

const WEBHOOK_BLOCK: &str = r#"  - name: inhouse
    service: {kind: webhook, url: "{MOCK}/guard/check", timeout_ms: 800}
    action: block"#;

#[tokio::test]
async fn a_webhook_blocks_a_request_and_is_told_only_the_contract() {
    let mock = Mock::start();
    let gw = Gateway::start(&config(WEBHOOK_BLOCK, "inhouse"), &mock);
    // A text that tries to become a header of the service's request.
    let sneaky = "tell me about the forbidden thing\r\nX-Injected: 1\r\n\r\n";
    let (status, v) = answer_text(post(&gw, "/v1/chat/completions", &chat(sneaky)).await).await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["code"], "content_filter");
    assert!(v["error"]["message"].as_str().unwrap().contains("'inhouse'"), "{v}");
    assert!(!v.to_string().contains("forbidden"), "the text is never echoed: {v}");
    assert_eq!(chat_calls(&mock), 0, "the provider was not called");
    let seen = webhook_requests(&mock).await;
    let last = seen.last().unwrap();
    let body: Value =
        serde_json::from_str(last["body"].as_str().unwrap_or("null")).unwrap_or_else(|_| last["body"].clone());
    assert_eq!(body["stage"], "request");
    assert_eq!(body["model"], "chat");
    assert_eq!(body["owner"], "team-a");
    assert!(body["request_id"].as_str().is_some_and(|id| !id.is_empty()));
    assert_eq!(body["texts"][0]["id"], "0");
    assert_eq!(body["texts"][0]["text"], sneaky, "the text arrives whole, in the body");
    let headers = last["headers"].as_object().unwrap();
    assert!(!headers.contains_key("x-injected"), "{headers:?}");
    assert!(
        !headers.contains_key("authorization"),
        "no credential of the caller's: {headers:?}"
    );

    // A clean text passes, and the provider gets it.
    let ok = post(&gw, "/v1/chat/completions", &chat("hello")).await;
    assert_eq!(ok.status(), 200);
    assert_eq!(provider_saw(&mock), "hello");
}

#[tokio::test]
async fn a_webhook_masks_request_and_answer_in_both_dialects() {
    let mock = Mock::start();
    let guards = r#"  - name: inhouse
    service: {kind: webhook, url: "{MOCK}/guard/check"}
    action: mask"#;
    let gw = Gateway::start(&config(guards, "inhouse"), &mock);
    let (status, v) = answer_text(post(&gw, "/v1/chat/completions", &chat("my token is secret-abc123 ok")).await).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(provider_saw(&mock), "my token is [MASKED] ok");
    // The echo answer was judged too (it carried the masked text already: no change).
    assert_eq!(v["choices"][0]["message"]["content"], "my token is [MASKED] ok");

    // Anthropic's dialect, to an Anthropic provider: the request masked, and the answer
    // (the provider's echo of a text the request stage let through) judged as JSON.
    let body = json!({"model": "claude", "max_tokens": 50,
        "messages": [{"role": "user", "content": "again secret-XYZ9 here"}]});
    let r = post_messages_as(&gw, CALLER_KEY, &body).await;
    let (status, v) = answer_text(r).await;
    assert_eq!(status, 200, "{v}");
    assert!(!v.to_string().contains("secret-XYZ9"), "{v}");
    let hits = metric(&gw, r#"aigw_guardrail_hits_total{action="mask",guardrail="inhouse"}"#).await;
    assert!(hits >= 2.0, "{hits}");
}

#[tokio::test]
async fn a_service_judges_the_answer_and_a_block_withholds_the_choice() {
    let mock = Mock::start();
    let guards = r#"  - name: inhouse
    service: {kind: webhook, url: "{MOCK}/guard/check"}
    stage: response
    action: block"#;
    let gw = Gateway::start(&config(guards, "inhouse"), &mock);
    // The request stage is not the service's: the echo comes back and is refused there.
    let (status, v) = answer_text(post(&gw, "/v1/chat/completions", &chat("say forbidden words")).await).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "content_filter", "{v}");
    assert!(v["choices"][0]["message"]["content"].is_null(), "{v}");
    assert!(!v.to_string().contains("forbidden"), "{v}");
    let seen = webhook_requests(&mock).await;
    let body: Value = serde_json::from_str(seen.last().unwrap()["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["stage"], "response");
}

#[tokio::test]
async fn a_stream_is_judged_in_windows_and_a_block_ends_it() {
    let mock = Mock::start();
    let guards = r#"  - name: inhouse
    service: {kind: webhook, url: "{MOCK}/guard/check", window_chars: 40}
    stage: response
    action: block
  - name: masker
    service: {kind: webhook, url: "{MOCK}/guard/check"}
    stage: response
    action: mask"#;
    let gw = Gateway::start(&config(guards, "inhouse"), &mock);
    let stream = |text: &str| {
        let mut b = chat(text);
        b["stream"] = json!(true);
        b
    };
    // A clean answer of some 150 characters: judged in windows of 40, all of it released.
    let long = "one two three four five six seven eight nine ten ".repeat(3);
    let text = post(&gw, "/v1/chat/completions", &stream(&long))
        .await
        .text()
        .await
        .unwrap();
    let data = sse_data(&text);
    assert_eq!(data.last().unwrap(), "[DONE]", "{text}");
    let said: String = data
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| v["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(said, long);
    let calls = webhook_requests(&mock).await;
    assert!(calls.len() >= 3, "windows of 40 characters: {} calls", calls.len());
    // A word split across deltas is judged whole; the stream ends with the error and no
    // [DONE], and the forbidden word never reaches the caller.
    let text = post(&gw, "/v1/chat/completions", &stream("we may not say forbidden here"))
        .await
        .text()
        .await
        .unwrap();
    assert!(text.contains("content_filter") && text.contains("'inhouse'"), "{text}");
    assert!(!text.contains("forbidden"), "{text}");
    assert!(!text.contains("[DONE]"), "{text}");
}

/// A masking service on streams: the held deltas are rewritten where the caller reads
/// them, in every dialect (OpenAI's, Anthropic's, Gemini's, Responses), whatever the window; a Responses stream's events that repeat
/// the text whole (`.done`, `response.completed`) are masked too.
#[tokio::test]
async fn a_masking_service_rewrites_streams_in_every_dialect() {
    let mock = Mock::start();
    let guards = r#"  - name: masker
    service: {kind: webhook, url: "{MOCK}/guard/check"}
    stage: response
    action: mask
  - name: small
    service: {kind: webhook, url: "{MOCK}/guard/check", window_chars: 8}
    stage: response
    action: mask"#;
    let said = "my token is secret-abc123 and secret-zz9 ok";
    let masked = "my token is [MASKED] and [MASKED] ok";
    let gw = Gateway::start(&config(guards, "masker"), &mock);
    let mut body = chat(said);
    body["stream"] = json!(true);
    let text = post(&gw, "/v1/chat/completions", &body).await.text().await.unwrap();
    assert_eq!(completion_text(&text), masked, "{text}");
    assert!(!text.contains("secret-"), "{text}");
    assert_eq!(sse_data(&text).last().unwrap(), "[DONE]", "{text}");
    assert!(metric(&gw, r#"aigw_guardrail_hits_total{action="mask",guardrail="masker"}"#).await >= 1.0);
    // Anthropic's dialect, translated from the OpenAI-style provider's stream.
    let r = post_messages_as(
        &gw,
        CALLER_KEY,
        &json!({"model": "chat", "max_tokens": 50, "stream": true, "messages": [{"role": "user", "content": said}]}),
    )
    .await;
    let text = r.text().await.unwrap();
    assert_eq!(completion_text(&text), masked, "{text}");
    assert!(text.contains("message_stop") && !text.contains("secret-"), "{text}");
    // Responses: deltas and every event that repeats the text.
    let r = post(
        &gw,
        "/v1/responses",
        &json!({"model": "resp", "input": said, "stream": true}),
    )
    .await;
    let text = r.text().await.unwrap();
    assert!(!text.contains("secret-"), "{text}");
    let events: Vec<Value> = sse_data(&text)
        .iter()
        .filter_map(|d| serde_json::from_str(d).ok())
        .collect();
    let deltas: String = events
        .iter()
        .filter(|v| v["type"] == "response.output_text.delta")
        .filter_map(|v| v["delta"].as_str())
        .collect();
    assert_eq!(deltas, masked, "{text}");
    let done = events
        .iter()
        .find(|v| v["type"] == "response.output_text.done")
        .unwrap();
    assert_eq!(done["text"], masked, "{text}");
    let completed = events.iter().find(|v| v["type"] == "response.completed").unwrap();
    assert_eq!(
        completed["response"]["output"][0]["content"][0]["text"], masked,
        "{text}"
    );
    // A secret at the very end: its mask stays inside its string (the part's `type`
    // beside it is not text the mask can run into).
    let r = post(
        &gw,
        "/v1/responses",
        &json!({"model": "resp", "input": "my token is secret-abc123", "stream": true}),
    )
    .await;
    let text = r.text().await.unwrap();
    let events: Vec<Value> = sse_data(&text)
        .iter()
        .filter_map(|d| serde_json::from_str(d).ok())
        .collect();
    let completed = events.iter().find(|v| v["type"] == "response.completed").unwrap();
    let part = &completed["response"]["output"][0]["content"][0];
    assert_eq!(part["text"], "my token is [MASKED]", "{text}");
    assert_eq!(part["type"], "output_text", "{text}");

    // Gemini's dialect, translated: each candidate's parts.
    let r = client()
        .post(format!("{}/v1beta/models/chat:streamGenerateContent?alt=sse", gw.url()))
        .header("x-goog-api-key", CALLER_KEY)
        .json(&json!({"contents": [{"role": "user", "parts": [{"text": said}]}]}))
        .send()
        .await
        .unwrap();
    let text = r.text().await.unwrap();
    let parts: String = sse_data(&text)
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .flat_map(|v| {
            v["candidates"][0]["content"]["parts"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|p| p["text"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(parts, masked, "{text}");

    // Windows of 8 characters: a secret is cut across windows, yet no secret's value
    // reaches the caller (the last window's tail gives the service the whole token).
    let small = Gateway::start(&config(guards, "small"), &mock);
    let text = post(&small, "/v1/chat/completions", &body).await.text().await.unwrap();
    let got = completion_text(&text);
    assert!(
        got.contains("[MASKED]") && !got.contains("abc123") && !got.contains("zz9"),
        "{got}"
    );
    assert!(got.starts_with("my token is ") && got.ends_with(" ok"), "{got}");
    assert_eq!(sse_data(&text).last().unwrap(), "[DONE]", "{text}");
}

#[tokio::test]
async fn a_monitor_counts_and_changes_nothing() {
    let mock = Mock::start();
    let guards = r#"  - name: watch
    service: {kind: webhook, url: "{MOCK}/guard/check"}
    action: monitor"#;
    let gw = Gateway::start(&config(guards, "watch"), &mock);
    let r = post(&gw, "/v1/chat/completions", &chat("forbidden secret-aaa")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(provider_saw(&mock), "forbidden secret-aaa");
    assert_eq!(
        metric(&gw, r#"aigw_guardrail_hits_total{action="monitor",guardrail="watch"}"#).await,
        1.0
    );
    // A monitor that gets no verdict lets everything through, whatever on_error says.
    let r = post(&gw, "/v1/chat/completions", &chat("guard-500 please")).await;
    assert_eq!(r.status(), 200);
    // On the response stage nothing is held for a monitor: the answer goes out and is
    // judged as it leaves, for the record.
    let guards = r#"  - name: watch
    service: {kind: webhook, url: "{MOCK}/guard/check"}
    stage: response
    action: monitor"#;
    let gw = Gateway::start(&config(guards, "watch"), &mock);
    let (status, v) = answer_text(post(&gw, "/v1/chat/completions", &chat("a forbidden word")).await).await;
    assert_eq!(status, 200);
    assert_eq!(v["choices"][0]["message"]["content"], "a forbidden word");
    assert_eq!(
        metric(&gw, r#"aigw_guardrail_hits_total{action="monitor",guardrail="watch"}"#).await,
        1.0
    );
}

#[tokio::test]
async fn a_service_without_a_verdict_fails_closed_or_open_as_configured() {
    let mock = Mock::start();
    let guards = r#"  - name: closed
    service: {kind: webhook, url: "{MOCK}/guard/check", timeout_ms: 400}
    action: block
  - name: open
    service: {kind: webhook, url: "{MOCK}/guard/check", timeout_ms: 400, on_error: allow}
    action: block"#;
    let closed = Gateway::start(&config(guards, "closed"), &mock);
    let open = Gateway::start(&config(guards, "open"), &mock);
    for trouble in [
        "guard-slow",
        "guard-500",
        "guard-malformed",
        "guard-huge",
        "guard-badids",
    ] {
        let text = format!("{trouble} secret-x1");
        let started = std::time::Instant::now();
        let (status, v) = answer_text(post(&closed, "/v1/chat/completions", &chat(&text)).await).await;
        assert_eq!(status, 503, "{trouble}: {v}");
        assert_eq!(v["error"]["code"], "guardrail_unavailable", "{trouble}: {v}");
        assert!(v["error"]["message"].as_str().unwrap().contains("'closed'"), "{v}");
        assert!(
            !v.to_string().contains(&mock.url()),
            "the service's address is not told: {v}"
        );
        assert!(
            started.elapsed() < std::time::Duration::from_millis(2500),
            "{trouble}: bounded by timeout_ms"
        );
        let r = post(&open, "/v1/chat/completions", &chat(&text)).await;
        assert_eq!(r.status(), 200, "{trouble}");
    }
    let m = metrics(&closed).await;
    assert!(m[r#"aigw_guardrail_service_calls_total{guardrail="closed",outcome="timeout"}"#] >= 1.0);
    assert!(m[r#"aigw_guardrail_service_calls_total{guardrail="closed",outcome="error"}"#] >= 4.0);
    // The service's answer of 20 MB was refused, not held: the gateway is still here.
    assert_eq!(
        post(&closed, "/v1/chat/completions", &chat("hello")).await.status(),
        200
    );
}

#[tokio::test]
async fn a_token_protected_webhook_gets_its_token_and_a_wrong_one_fails_closed() {
    let mock = Mock::with_guard_token("guard-tok-1");
    let guards = r#"  - name: good
    service: {kind: webhook, url: "{MOCK}/guard/check", headers: {authorization: "Bearer guard-tok-1"}}
    action: block
  - name: bad
    service: {kind: webhook, url: "{MOCK}/guard/check", headers: {authorization: "Bearer nope"}}
    action: block"#;
    let good = Gateway::start(&config(guards, "good"), &mock);
    let bad = Gateway::start(&config(guards, "bad"), &mock);
    assert_eq!(post(&good, "/v1/chat/completions", &chat("hi")).await.status(), 200);
    assert_eq!(post(&bad, "/v1/chat/completions", &chat("hi")).await.status(), 503);
    // Neither the token nor the service's answer reaches the log.
    assert!(!good.log_text().contains("guard-tok-1"));
    assert!(!bad.log_text().contains("guard-tok-1"));
}

#[tokio::test]
async fn identical_texts_are_judged_once_within_the_cache_window() {
    let mock = Mock::start();
    let gw = Gateway::start(&config(WEBHOOK_BLOCK, "inhouse"), &mock);
    for _ in 0..3 {
        assert_eq!(
            post(&gw, "/v1/chat/completions", &chat("the same words"))
                .await
                .status(),
            200
        );
    }
    let calls = webhook_requests(&mock).await.len();
    // One for the request stage, one for the answer (the same text, another stage).
    assert_eq!(calls, 2, "three identical requests, one call per stage");
    assert_eq!(
        metric(
            &gw,
            r#"aigw_guardrail_service_calls_total{guardrail="inhouse",outcome="cached"}"#
        )
        .await,
        4.0
    );
}

#[tokio::test]
async fn openai_moderation_blocks_by_category_and_threshold() {
    let mock = Mock::start();
    let guards = r#"  - name: mod
    service: {kind: openai_moderation, provider_key: mock, categories: [violence], threshold: 0.5}
    stage: request
    action: block
  - name: mod-flag
    service: {kind: openai_moderation, provider_key: mock}
    stage: request
    action: mask"#;
    let gw = Gateway::start(&config(guards, "mod"), &mock);
    let (status, v) = answer_text(post(&gw, "/v1/chat/completions", &chat("I will kill it")).await).await;
    assert_eq!(status, 400, "{v}");
    // 0.45 is under the threshold.
    assert_eq!(
        post(&gw, "/v1/chat/completions", &chat("a borderline case"))
            .await
            .status(),
        200
    );
    // Self-harm is not a listed category.
    assert_eq!(
        post(&gw, "/v1/chat/completions", &chat("I want to hurt myself"))
            .await
            .status(),
        200
    );
    let moderation = mock
        .requests()
        .into_iter()
        .find(|r| r["path"].as_str().is_some_and(|p| p.ends_with("/moderations")))
        .unwrap();
    assert_eq!(moderation["headers"]["authorization"], format!("Bearer {PROVIDER_KEY}"));

    // Mask with `flagged`: a flagged text is replaced whole, the others kept.
    let masking = Gateway::start(&config(guards, "mod-flag"), &mock);
    let body = json!({"model": "chat", "messages": [
        {"role": "system", "content": "be kind"},
        {"role": "user", "content": "I will kill it"}]});
    assert_eq!(post(&masking, "/v1/chat/completions", &body).await.status(), 200);
    let r = mock
        .requests()
        .into_iter()
        .rev()
        .find(|r| r["path"].as_str().is_some_and(|p| p.ends_with("/chat/completions")))
        .unwrap();
    let sent: Value = serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
    assert_eq!(sent["messages"][0]["content"], "be kind");
    assert_eq!(sent["messages"][1]["content"], "[REDACTED:mod-flag]");
}

#[tokio::test]
async fn presidio_masks_entities_with_its_anonymizer() {
    let mock = Mock::start();
    let guards = r#"  - name: pii
    service: {kind: presidio, analyzer_url: "{MOCK}", anonymizer_url: "{MOCK}",
              entities: [EMAIL_ADDRESS, PERSON], score_threshold: 0.5}
    action: mask"#;
    let gw = Gateway::start(&config(guards, "pii"), &mock);
    // Non-ASCII before the entities: Presidio's offsets are code points.
    let text = "Zoë 🙂 says: write to john.smith@example.com for John Smith";
    let (status, v) = answer_text(post(&gw, "/v1/chat/completions", &chat(text)).await).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        provider_saw(&mock),
        "Zoë 🙂 says: write to <EMAIL_ADDRESS> for <PERSON>"
    );
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "Zoë 🙂 says: write to <EMAIL_ADDRESS> for <PERSON>"
    );
    // Nothing found: the text goes on as it was.
    assert_eq!(
        post(&gw, "/v1/chat/completions", &chat("plain words")).await.status(),
        200
    );
    assert_eq!(provider_saw(&mock), "plain words");
}

#[tokio::test]
async fn bedrock_guardrails_anonymise_and_refuse_with_a_signed_call() {
    let mock = Mock::start();
    let guards = r#"  - name: br
    service: {kind: bedrock, guardrail_id: mockguard1, guardrail_version: "1", base_url: "{MOCK}",
              aws: {region: us-east-1, access_key_id: AKIDAIGWTEST, secret_access_key: "{PROVIDER_KEY}"}}
    action: mask
  - name: br-block
    service: {kind: bedrock, guardrail_id: mockguard1, guardrail_version: "1", base_url: "{MOCK}",
              aws: {region: us-east-1, access_key_id: AKIDAIGWTEST, secret_access_key: "{PROVIDER_KEY}"}}
    action: block
  - name: br-badsig
    service: {kind: bedrock, guardrail_id: mockguard1, guardrail_version: "1", base_url: "{MOCK}",
              aws: {region: us-east-1, access_key_id: AKIDAIGWTEST, secret_access_key: wrong}}
    action: block"#;
    let gw = Gateway::start(&config(guards, "br"), &mock);
    let (status, v) = answer_text(post(&gw, "/v1/chat/completions", &chat("mail me at a.b@example.com")).await).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(provider_saw(&mock), "mail me at {EMAIL}");
    let block = Gateway::start(&config(guards, "br-block"), &mock);
    let (status, v) = answer_text(post(&block, "/v1/chat/completions", &chat("a forbidden topic")).await).await;
    assert_eq!(status, 400, "{v}");
    // A signature Bedrock refuses is no verdict: fail closed.
    let badsig = Gateway::start(&config(guards, "br-badsig"), &mock);
    let (status, v) = answer_text(post(&badsig, "/v1/chat/completions", &chat("hello")).await).await;
    assert_eq!(status, 503, "{v}");
    assert!(!badsig.log_text().contains(PROVIDER_KEY));
}

#[tokio::test]
async fn a_judge_model_blocks_and_its_own_call_is_internal() {
    let mock = Mock::start();
    let guards = r#"  - name: judge
    service: {kind: llm, model: guard-model}
    stage: request
    action: block"#;
    let gw = Gateway::start(&config(guards, "judge"), &mock);
    let (status, v) = answer_text(post(&gw, "/v1/chat/completions", &chat("how to build a bomb")).await).await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["code"], "content_filter");
    // The judge was asked (with the text in its prompt) and the chat model never was.
    let asked: Vec<Value> = mock
        .requests()
        .into_iter()
        .filter(|r| r["path"].as_str().is_some_and(|p| p.ends_with("/chat/completions")))
        .collect();
    assert_eq!(asked.len(), 1, "{asked:?}");
    let judged: Value = serde_json::from_str(asked[0]["body"].as_str().unwrap()).unwrap();
    assert_eq!(judged["model"], "guard-model");
    assert!(judged.to_string().contains("how to build a bomb"));
    assert_eq!(
        post(&gw, "/v1/chat/completions", &chat("how to bake bread"))
            .await
            .status(),
        200
    );
    // Only the caller's requests are counted as requests: the judge's calls are not.
    let m = metrics(&gw).await;
    let judge_requests: f64 = m
        .iter()
        .filter(|(k, _)| k.starts_with("aigw_requests_total") && k.contains(r#"model="guard-model""#))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(judge_requests, 0.0);
}

#[tokio::test]
async fn mcp_tool_calls_go_through_a_webhook() {
    let mock = Mock::start();
    let config = r#"
version: 1
server:
  listen: ["127.0.0.1:{PORT}"]
  admin_listen: "127.0.0.1:{ADMIN}"
mcp_servers:
  - {name: math, url: "{MOCK}/mcp"}
api_keys:
  - {name: agent, key: "{CALLER_KEY}", mcp: {servers: ["*"]}, guardrails: [inhouse]}
guardrails:
  - name: inhouse
    service: {kind: webhook, url: "{MOCK}/guard/check"}
    action: block
"#;
    let gw = Gateway::start(config, &mock);
    let rpc =
        |id: u64, method: &str, params: Value| json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
    let call = |body: Value| {
        client()
            .post(format!("{}/mcp", gw.url()))
            .bearer_auth(CALLER_KEY)
            .header("accept", "application/json, text/event-stream")
            .json(&body)
            .send()
    };
    let init = call(rpc(
        1,
        "initialize",
        json!({"protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"}}),
    ))
    .await
    .unwrap();
    assert_eq!(init.status(), 200);
    let session = init
        .headers()
        .get("mcp-session-id")
        .map(|v| v.to_str().unwrap().to_owned());
    // A list: every item judged (at once), none refused.
    let mut req = client()
        .post(format!("{}/mcp", gw.url()))
        .bearer_auth(CALLER_KEY)
        .header("accept", "application/json, text/event-stream")
        .json(&rpc(3, "tools/list", json!({})));
    if let Some(s) = &session {
        req = req.header("mcp-session-id", s);
    }
    let listed = req.send().await.unwrap().text().await.unwrap();
    for tool in ["math__echo", "math__say", "math__fail_with", "math__blob"] {
        assert!(listed.contains(tool), "{listed}");
    }
    let listed_calls = webhook_requests(&mock).await.len();
    assert!(listed_calls >= 4, "one call per item: {listed_calls}");
    let mut req = client()
        .post(format!("{}/mcp", gw.url()))
        .bearer_auth(CALLER_KEY)
        .header("accept", "application/json, text/event-stream")
        .json(&rpc(
            2,
            "tools/call",
            json!({"name": "math__echo", "arguments": {"text": "a forbidden plan"}}),
        ));
    if let Some(s) = &session {
        req = req.header("mcp-session-id", s);
    }
    let text = req.send().await.unwrap().text().await.unwrap();
    assert!(text.contains("blocked by the guardrail 'inhouse'"), "{text}");
    let seen = webhook_requests(&mock).await;
    let body: Value = serde_json::from_str(seen.last().unwrap()["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["model"], "mcp");
    assert!(body["texts"].to_string().contains("a forbidden plan"));
}

#[test]
fn service_settings_are_checked_when_the_config_loads() {
    assert_config_errors(
        r#"version: 1
provider_keys:
  - {name: p, provider: openai, api_key: k}
models:
  - {name: m, provider_key: p}
guardrails:
  - {name: a, service: {url: "http://x"}}
  - {name: b, service: {kind: webhook}, rules: [{kind: keyword, words: [x]}]}
  - {name: c, service: {kind: webhook, url: "ftp://x", timeout_ms: 0}}
  - {name: d, service: {kind: openai_moderation, provider_key: nope}}
  - {name: e, service: {kind: presidio, analyzer_url: "http://p"}, action: mask}
  - {name: f, service: {kind: llm, model: missing}}
  - {name: g, service: {kind: webhook, url: "http://x", analyzer_url: "http://p", headers: {"bad header": v}}}
  - {name: h, service: {kind: bedrock, guardrail_id: "a b", guardrail_version: latest, aws: {region: us-east-1, access_key_id: k, secret_access_key: TOPSECRET}}}
  - {name: i, service: {kind: openai_moderation, provider_key: p, categories: [violence]}}
"#,
        &[
            "guardrails[0].service.kind: required",
            "guardrails[1]: has a service and rules",
            "guardrails[1].service.url: required for kind webhook",
            "guardrails[2].service.url: must be an http or https URL",
            "guardrails[2].service.timeout_ms: must be between 1 and 600000",
            "guardrails[3].service.provider_key: no provider key named 'nope'",
            "guardrails[4].service.anonymizer_url: required",
            "guardrails[5].service.model: no model named 'missing'",
            "guardrails[6].service.analyzer_url: applies to kind presidio only",
            "guardrails[6].service.headers.bad header: is not a valid HTTP header",
            "guardrails[7].service.guardrail_id: must be a guardrail id or ARN",
            "guardrails[7].service.guardrail_version: must be DRAFT or a version number",
            "guardrails[8].service.threshold: required with categories",
        ],
        "TOPSECRET",
    );
}

/// Each kind of service, with a text it flags and the `service:` settings that reach the
/// mock (`{AT}`: where the service is; the mock, or an address that never answers, or
/// one that refuses).
const KINDS: &[(&str, &str, &str)] = &[
    (
        "webhook",
        r#"{kind: webhook, url: "{AT}/guard/check"}"#,
        "a forbidden plan",
    ),
    (
        "moderation",
        r#"{kind: openai_moderation, provider_key: at}"#,
        "I will kill it",
    ),
    (
        "presidio",
        r#"{kind: presidio, analyzer_url: "{AT}", anonymizer_url: "{AT}"}"#,
        "write to jane.doe@example.com",
    ),
    (
        "bedrock",
        r#"{kind: bedrock, guardrail_id: mockguard1, guardrail_version: DRAFT, base_url: "{AT}",
              aws: {region: us-east-1, access_key_id: AKIDAIGWTEST, secret_access_key: "{PROVIDER_KEY}"}}"#,
        "a forbidden topic",
    ),
    ("judge", r#"{kind: llm, model: judge-at}"#, "how to build a bomb"),
];

/// One guardrail `g` of `kind` on `stage` with `action`, its service at `at`.
fn kind_config(kind: &str, at: &str, stage: &str, action: &str, extra: &str) -> String {
    let (_, service, _) = KINDS.iter().find(|(k, _, _)| *k == kind).unwrap();
    let service = service.replace("{AT}", at);
    let service = match extra {
        "" => service,
        _ => format!("{}, {extra}}}", service.strip_suffix('}').unwrap()),
    };
    let guards = format!("  - name: g\n    service: {service}\n    stage: {stage}\n    action: {action}");
    config(&guards, "g").replace(
        "models:\n",
        &format!(
            "  - {{name: at, provider: openai_compatible, base_url: \"{at}/v1\", api_key: \"{{PROVIDER_KEY}}\"}}\nmodels:\n  - {{name: judge-at, provider_key: at, model: guard-model}}\n"
        ),
    )
}

/// A listener that accepts connections and never answers: a service past its timeout.
fn black_hole() -> (std::net::TcpListener, String) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    (l, url)
}

#[tokio::test]
async fn every_kind_blocks_and_masks_in_both_dialects_and_streams_and_monitors() {
    let mock = Mock::start();
    for (kind, _, trigger) in KINDS {
        let gw = Gateway::start(&kind_config(kind, &mock.url(), "both", "block", ""), &mock);
        // The request stage, OpenAI's dialect: refused before the provider.
        let (status, v) = answer_text(post(&gw, "/v1/chat/completions", &chat(trigger)).await).await;
        assert_eq!(status, 400, "{kind}: {v}");
        assert_eq!(v["error"]["code"], "content_filter", "{kind}: {v}");
        // Anthropic's dialect, translated to the OpenAI-style provider.
        let r = post_messages_as(
            &gw,
            CALLER_KEY,
            &json!({"model": "chat", "max_tokens": 50, "messages": [{"role": "user", "content": trigger}]}),
        )
        .await;
        let (status, v) = answer_text(r).await;
        assert_eq!(status, 400, "{kind}: {v}");
        assert_eq!(v["type"], "error", "{kind}: Anthropic's envelope: {v}");
        // A clean text passes both stages.
        assert_eq!(
            post(&gw, "/v1/chat/completions", &chat("hello there")).await.status(),
            200,
            "{kind}"
        );

        // The response stage on a stream: the echo carries the trigger back.
        let gw = Gateway::start(&kind_config(kind, &mock.url(), "response", "block", ""), &mock);
        let mut body = chat(trigger);
        body["stream"] = json!(true);
        let text = post(&gw, "/v1/chat/completions", &body).await.text().await.unwrap();
        assert!(
            text.contains("content_filter") && !text.contains("[DONE]"),
            "{kind}: {text}"
        );
        body["messages"][0]["content"] = json!("hello there");
        let text = post(&gw, "/v1/chat/completions", &body).await.text().await.unwrap();
        assert!(text.contains("[DONE]"), "{kind}: {text}");

        // Mask: the provider never reads the flagged words. Presidio and Bedrock replace
        // what they found; the others give no replacement, so the text goes whole.
        let gw = Gateway::start(&kind_config(kind, &mock.url(), "request", "mask", ""), &mock);
        assert_eq!(
            post(&gw, "/v1/chat/completions", &chat(trigger)).await.status(),
            200,
            "{kind}"
        );
        let saw = provider_saw(&mock);
        let expected = match *kind {
            "presidio" => "write to <EMAIL_ADDRESS>".to_owned(),
            _ => "[REDACTED:g]".to_owned(),
        };
        assert_eq!(saw, expected, "{kind}");

        // Mask on a stream, OpenAI's dialect and translated to Anthropic's: the answer's
        // deltas read as the masked text.
        let gw = Gateway::start(&kind_config(kind, &mock.url(), "response", "mask", ""), &mock);
        let mut body = chat(trigger);
        body["stream"] = json!(true);
        let text = post(&gw, "/v1/chat/completions", &body).await.text().await.unwrap();
        assert_eq!(completion_text(&text), expected, "{kind}: {text}");
        assert!(text.contains("[DONE]"), "{kind}: {text}");
        let r = post_messages_as(
            &gw,
            CALLER_KEY,
            &json!({"model": "chat", "max_tokens": 50, "stream": true, "messages": [{"role": "user", "content": trigger}]}),
        )
        .await;
        let text = r.text().await.unwrap();
        assert_eq!(completion_text(&text), expected, "{kind}: {text}");

        // A monitor counts the same text and lets it through.
        let gw = Gateway::start(&kind_config(kind, &mock.url(), "request", "monitor", ""), &mock);
        assert_eq!(
            post(&gw, "/v1/chat/completions", &chat(trigger)).await.status(),
            200,
            "{kind}"
        );
        assert_eq!(
            metric(&gw, r#"aigw_guardrail_hits_total{action="monitor",guardrail="g"}"#).await,
            1.0,
            "{kind}"
        );
    }
}

#[tokio::test]
async fn every_kind_fails_closed_or_open_on_a_timeout_and_an_error() {
    let mock = Mock::start();
    let (_hole, hole) = black_hole();
    let refused = format!("http://127.0.0.1:{}", free_port());
    for (kind, _, _) in KINDS {
        for (at, outcome) in [(&hole, "timeout"), (&refused, "error")] {
            for (on_error, status) in [("block", 503), ("allow", 200)] {
                let extra = format!("timeout_ms: 300, on_error: {on_error}");
                let gw = Gateway::start(&kind_config(kind, at, "request", "block", &extra), &mock);
                let started = std::time::Instant::now();
                let (got, v) = answer_text(post(&gw, "/v1/chat/completions", &chat("hello")).await).await;
                assert_eq!(got, status, "{kind} {outcome} {on_error}: {v}");
                if status == 503 {
                    assert_eq!(v["error"]["code"], "guardrail_unavailable", "{kind}: {v}");
                }
                assert!(
                    started.elapsed() < std::time::Duration::from_secs(3),
                    "{kind} {outcome}"
                );
                let series = format!(r#"aigw_guardrail_service_calls_total{{guardrail="g",outcome="{outcome}"}}"#);
                assert_eq!(metric(&gw, &series).await, 1.0, "{kind} {outcome}");
            }
        }
    }
}

/// Keys of free-form objects are text: a service that masks one renames it, which moves
/// it in the object. The replacements still land on the texts they were made for.
#[tokio::test]
async fn masks_land_on_their_own_texts_when_a_masked_key_moves() {
    let mock = Mock::start();
    let guards = r#"  - name: pii
    service: {kind: presidio, analyzer_url: "{MOCK}", anonymizer_url: "{MOCK}", entities: [EMAIL_ADDRESS, PERSON]}
    stage: request
    action: mask"#;
    let gw = Gateway::start(&config(guards, "pii"), &mock);
    let body = json!({"model": "claude", "max_tokens": 50, "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "lookup",
            "input": {"a": "hello", "zed@example.com": "call John Smith", "b": "plain"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ok"}]}]});
    let r = post_messages_as(&gw, CALLER_KEY, &body).await;
    assert_eq!(r.status(), 200);
    let sent = mock
        .requests()
        .into_iter()
        .rev()
        .find(|r| r["path"].as_str().is_some_and(|p| p.ends_with("/messages")))
        .unwrap();
    let sent: Value = serde_json::from_str(sent["body"].as_str().unwrap()).unwrap();
    let input = &sent["messages"][1]["content"][0]["input"];
    assert_eq!(input["<EMAIL_ADDRESS>"], "call <PERSON>", "{input}");
    assert_eq!(input["a"], "hello", "{input}");
    assert_eq!(input["b"], "plain", "{input}");
    assert!(
        !sent.to_string().contains("John Smith") && !sent.to_string().contains("zed@"),
        "{sent}"
    );
}

/// A judge that answers neither `safe` nor `unsafe` (a refusal, chatter) gave no verdict:
/// `on_error` decides, never a default of "safe".
#[tokio::test]
async fn a_judge_that_says_neither_is_no_verdict() {
    let mock = Mock::start();
    let guards = r#"  - name: judge
    service: {kind: llm, model: chat}
    stage: request
    action: block"#;
    let gw = Gateway::start(&config(guards, "judge"), &mock);
    // `chat` echoes the judge's prompt back: not an answer a judge gives.
    let (status, v) = answer_text(post(&gw, "/v1/chat/completions", &chat("hello")).await).await;
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["error"]["code"], "guardrail_unavailable");
}
