//! Gemini-format callers end to end (Google's REST API, as the `google-genai` SDK calls
//! it): `models/{alias}:generateContent`, `:streamGenerateContent?alt=sse`,
//! `:countTokens`, `:embedContent` and `:batchEmbedContents` under `/v1beta` and `/v1`,
//! passed through to Gemini targets and translated through the chat hub to OpenAI-style,
//! Anthropic and Bedrock ones; the caller key in `x-goog-api-key`, `?key=` or a bearer
//! token; every gateway error in Google's envelope; guardrails, usage and the cache in
//! Gemini's shapes; and the attacks on the path and the query key.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{json, Value};

const CONFIG: &str = r#"
version: 1
server:
  listen: ["127.0.0.1:{PORT}"]
  admin_listen: "127.0.0.1:{ADMIN}"
  max_request_body_bytes: 200000
provider_keys:
  - {name: gm, provider: gemini, base_url: "{MOCK}", api_key: "{PROVIDER_KEY}"}
  - {name: oa, provider: openai_compatible, base_url: "{MOCK}/v1", api_key: "{PROVIDER_KEY}"}
  - {name: an, provider: anthropic, base_url: "{MOCK}", api_key: "{PROVIDER_KEY}"}
  - name: br
    provider: bedrock
    base_url: "{MOCK}"
    aws: {region: us-east-1, access_key_id: AKIDAIGWTEST, secret_access_key: "{PROVIDER_KEY}"}
guardrails:
  - name: no-falcon
    rules: [{kind: keyword, words: [falcon], whole_word: true}]
    stage: request
    action: block
  - name: mask-out
    rules: [{kind: keyword, words: [secretword]}]
    stage: response
    action: mask
cache:
  - {name: mem, backend: memory, ttl_s: 60}
models:
  - name: gemini
    provider_key: gm
    model: gemini-2.5-flash
    pricing: {input_per_mtok: 1000000, output_per_mtok: 2000000}
  - {name: "llama3:8b", provider_key: gm, model: gemini-2.5-flash}
  - {name: gemini-echo, provider_key: gm, model: "g?echo", guardrails: [mask-out]}
  - {name: gemini-drop, provider_key: gm, model: "g?drop_after=3&chunk_delay_ms=20"}
  - {name: gemini-400, provider_key: gm, model: "g?status=400"}
  - {name: gemini-cached, provider_key: gm, model: gemini-2.5-flash, cache: mem}
  - {name: gemini-odd, provider_key: gm, model: "g?usage=candidatesTokenCount:-5"}
  - {name: gpt-odd, provider_key: oa, model: 'x?usage=completion_tokens:"7"'}
  - {name: gpt, provider_key: oa, model: up-gpt, pricing: {input_per_mtok: 1000000, output_per_mtok: 2000000}}
  - {name: gpt-echo, provider_key: oa, model: "x?echo", guardrails: [mask-out]}
  - {name: gpt-429, provider_key: oa, model: "x?status=429&retry_after=3"}
  - {name: gpt-drop, provider_key: oa, model: "x?drop_after=3&chunk_delay_ms=20"}
  - {name: emb, provider_key: oa, model: up-emb}
  - {name: claude, provider_key: an, model: claude-up}
  - {name: nova, provider_key: br, model: "amazon.nova-pro-v1:0"}
api_keys:
  - {name: main, key: "{CALLER_KEY}", owner: team-g, guardrails: [no-falcon]}
  - {name: narrow, key: sk-narrow, owner: team-n, models: [gpt]}
  - {name: plain, key: sk-plain, owner: team-p}
"#;

fn ask(text: &str) -> Value {
    json!({"contents": [{"role": "user", "parts": [{"text": text}]}],
        "generationConfig": {"maxOutputTokens": 64}})
}

/// POSTs to the gateway with the caller key in `x-goog-api-key`, as Google's SDKs send it.
async fn goog(gw: &Gateway, path: &str, body: &Value) -> reqwest::Response {
    client()
        .post(format!("{}{path}", gw.url()))
        .header("x-goog-api-key", CALLER_KEY)
        .json(body)
        .send()
        .await
        .unwrap()
}

/// The Gemini stream events of an SSE body.
fn events(body: &str) -> Vec<Value> {
    sse_data(body)
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

fn text_of(ev: &[Value]) -> String {
    ev.iter()
        .flat_map(|e| {
            e["candidates"][0]["content"]["parts"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter(|p| p["thought"] != true)
        .filter_map(|p| p["text"].as_str().map(str::to_owned))
        .collect()
}

fn assert_google_error(v: &Value, code: u16, status: &str) {
    assert_eq!(v["error"]["code"], code, "{v}");
    assert_eq!(v["error"]["status"], status, "{v}");
    assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert_eq!(v.as_object().unwrap().len(), 1, "{v}");
}

#[tokio::test]
async fn generate_content_passes_through_to_gemini_with_the_providers_key() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    let body = json!({"contents": [{"role": "user", "parts": [{"text": "Say hello"}]}],
        "safetySettings": [{"category": "HARM_CATEGORY_HATE_SPEECH", "threshold": "BLOCK_NONE"}],
        "generationConfig": {"maxOutputTokens": 64}});
    let resp = goog(&gw, "/v1beta/models/gemini:generateContent", &body).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-aigw-model"], "gemini");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["candidates"][0]["finishReason"], "STOP");
    assert_eq!(v["usageMetadata"]["candidatesTokenCount"], 8);
    let seen = mock.last_request();
    assert_eq!(seen["path"], "/v1beta/models/gemini-2.5-flash:generateContent");
    assert_eq!(seen["headers"]["x-goog-api-key"], PROVIDER_KEY);
    assert!(!seen.to_string().contains(CALLER_KEY));
    // Native: the body reaches Gemini as the caller wrote it, fields chat has no word for
    // included.
    let sent: Value = serde_json::from_str(seen["body"].as_str().unwrap()).unwrap();
    assert_eq!(sent, body);
    // Counted and charged like chat: 8 + 2 thinking tokens of output.
    let m = metrics_text(&gw).await;
    assert!(
        m.lines().any(|l| l.starts_with("aigw_tokens_total{")
            && l.contains("team-g")
            && l.contains("output")
            && l.ends_with(" 10")),
        "{m}"
    );

    // `/v1/...` too, and an alias with a colon of its own.
    let resp = goog(&gw, "/v1/models/llama3:8b:generateContent", &ask("hi")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-aigw-model"], "llama3:8b");
}

#[tokio::test]
async fn the_key_is_read_from_each_place_and_the_query_key_goes_nowhere() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    let url = |q: &str| format!("{}/v1beta/models/gemini:generateContent{q}", gw.url());
    let ok = [
        client().post(url("")).header("x-goog-api-key", CALLER_KEY),
        client().post(url(&format!("?key={CALLER_KEY}"))),
        client().post(url("")).bearer_auth(CALLER_KEY),
    ];
    for req in ok {
        let resp = req.json(&ask("hi")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
    }
    let bad = [
        client().post(url("")).header("x-goog-api-key", "sk-wrong"),
        client().post(url("?key=sk-wrong-in-query")),
        client().post(url("")).bearer_auth("sk-wrong"),
        client().post(url("")),
    ];
    for req in bad {
        let resp = req.json(&ask("hi")).send().await.unwrap();
        assert_eq!(resp.status(), 401);
        assert_google_error(&resp.json().await.unwrap(), 401, "UNAUTHENTICATED");
    }
    // A stream with the key in the query: the rest of the query still says SSE.
    let resp = client()
        .post(format!(
            "{}/v1beta/models/gemini:streamGenerateContent?key={CALLER_KEY}&alt=sse",
            gw.url()
        ))
        .json(&ask("hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.text().await.unwrap().contains("finishReason"));

    // Neither key of a query reached the provider, the access log or the process log.
    for r in mock.requests() {
        let r = r.to_string();
        assert!(!r.contains(CALLER_KEY) && !r.contains("sk-wrong-in-query"), "{r}");
    }
    let lines = gw.access_lines_until(9, |l| l.contains("generateContent") || l.contains("GenerateContent"));
    assert!(
        lines.iter().filter(|l| l.contains(":generateContent")).count() >= 7,
        "{lines:?}"
    );
    for text in [lines.join("\n"), gw.log_text()] {
        assert!(!text.contains(CALLER_KEY), "{text}");
        assert!(!text.contains("sk-wrong-in-query"), "{text}");
        assert!(!text.contains("key="), "{text}");
    }
}

#[tokio::test]
async fn streams_pass_through_from_gemini_and_are_translated_from_others() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    for alias in ["gemini", "gpt", "claude", "nova"] {
        let resp = goog(
            &gw,
            &format!("/v1beta/models/{alias}:streamGenerateContent?alt=sse"),
            &ask("Say hello"),
        )
        .await;
        assert_eq!(resp.status(), 200, "{alias}");
        assert!(resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        let ev = events(&resp.text().await.unwrap());
        assert!(ev.len() >= 2, "{alias}: {ev:?}");
        assert_eq!(
            text_of(&ev),
            "Hello from the aigw mock upstream model today.",
            "{alias}: {ev:?}"
        );
        let last = ev.last().unwrap();
        assert_eq!(last["candidates"][0]["finishReason"], "STOP", "{alias}: {last}");
        let u = &last["usageMetadata"];
        assert!(u["promptTokenCount"].as_u64().unwrap() > 0, "{alias}: {last}");
        assert!(u["candidatesTokenCount"].as_u64().unwrap() > 0, "{alias}: {last}");
        assert!(ev.iter().all(|e| e.get("error").is_none()), "{alias}: {ev:?}");
    }
    // What each provider was sent: its own format, streaming.
    let seen = mock.requests();
    let paths: Vec<&str> = seen.iter().map(|r| r["path"].as_str().unwrap()).collect();
    assert!(
        paths.contains(&"/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"),
        "{paths:?}"
    );
    assert!(
        paths.contains(&"/v1/chat/completions") && paths.contains(&"/v1/messages"),
        "{paths:?}"
    );
    let chat = seen.iter().find(|r| r["path"] == "/v1/chat/completions").unwrap();
    let chat: Value = serde_json::from_str(chat["body"].as_str().unwrap()).unwrap();
    assert_eq!(chat["model"], "up-gpt");
    assert_eq!(chat["stream"], true);
    assert_eq!(chat["max_tokens"], 64);
    assert_eq!(chat["messages"], json!([{"role": "user", "content": "Say hello"}]));
}

#[tokio::test]
async fn whole_answers_are_translated_with_usage_and_finish_reasons() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    for alias in ["gpt", "claude", "nova"] {
        let body = json!({"systemInstruction": {"parts": [{"text": "Be brief."}]},
            "contents": [{"role": "user", "parts": [{"text": "Say hello"}]}],
            "generationConfig": {"maxOutputTokens": 64, "temperature": 0.5}});
        let resp = goog(&gw, &format!("/v1beta/models/{alias}:generateContent"), &body).await;
        assert_eq!(resp.status(), 200, "{alias}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["candidates"][0]["content"]["role"], "model", "{alias}: {v}");
        assert_eq!(
            text_of(std::slice::from_ref(&v)),
            "Hello from the aigw mock upstream model today."
        );
        assert_eq!(v["candidates"][0]["finishReason"], "STOP", "{alias}: {v}");
        let u = &v["usageMetadata"];
        assert_eq!(
            u["totalTokenCount"].as_u64().unwrap(),
            u["promptTokenCount"].as_u64().unwrap()
                + u["candidatesTokenCount"].as_u64().unwrap()
                + u["thoughtsTokenCount"].as_u64().unwrap_or(0),
            "{alias}: {v}"
        );
    }
    // The cost is charged from the translated usage: what the mock counted.
    let m = metrics_text(&gw).await;
    assert!(
        m.lines()
            .any(|l| l.starts_with("aigw_cost_usd_total{") && l.contains("gpt") && l.contains("team-g")),
        "{m}"
    );
    // A tool round trip through chat: the call comes back as a functionCall, its answer
    // goes to the provider as the tool message of that call.
    let tools = json!([{"functionDeclarations": [{"name": "lookup", "description": "Look it up",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}]}]);
    let resp = goog(
        &gw,
        "/v1beta/models/gpt:generateContent",
        &json!({"contents": [{"role": "user", "parts": [{"text": "Find it"}]}], "tools": tools}),
    )
    .await;
    let v: Value = resp.json().await.unwrap();
    let call = &v["candidates"][0]["content"]["parts"][0]["functionCall"];
    assert_eq!(call["name"], "lookup", "{v}");
    let resp = goog(
        &gw,
        "/v1beta/models/gpt:generateContent",
        &json!({"contents": [{"role": "user", "parts": [{"text": "Find it"}]},
            {"role": "model", "parts": [{"functionCall": call}]},
            {"role": "user", "parts": [{"functionResponse": {"name": "lookup", "response": {"found": 42}}}]}],
            "tools": tools}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let sent: Value = serde_json::from_str(mock.last_request()["body"].as_str().unwrap()).unwrap();
    let msgs = sent["messages"].as_array().unwrap();
    assert_eq!(msgs[1]["tool_calls"][0]["id"], "call_0");
    assert_eq!(
        msgs[2],
        json!({"role": "tool", "tool_call_id": "call_0", "content": "{\"found\":42}"})
    );
}

#[tokio::test]
async fn count_tokens_is_native_on_gemini_and_an_estimate_elsewhere() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    let body =
        json!({"contents": [{"role": "user", "parts": [{"text": "twelve chars but forty bytes of text here"}]}]});
    let resp = goog(&gw, "/v1beta/models/gemini:countTokens", &body).await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    // The mock's count (it counts the role too), passed through.
    assert_eq!(v, json!({"totalTokens": 12}));
    assert_eq!(
        mock.last_request()["path"],
        "/v1beta/models/gemini-2.5-flash:countTokens"
    );
    let before = mock.requests().len();
    for alias in ["gpt", "claude"] {
        let resp = goog(&gw, &format!("/v1beta/models/{alias}:countTokens"), &body).await;
        assert_eq!(resp.status(), 200);
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["totalTokens"], 11, "{v}");
        assert_eq!(v["aigw"]["estimated"], true, "{v}");
    }
    assert_eq!(mock.requests().len(), before, "an estimate calls no provider");
    // Still admitted like any request: a model the key may not use is refused.
    let resp = client()
        .post(format!("{}/v1beta/models/claude:countTokens", gw.url()))
        .header("x-goog-api-key", "sk-narrow")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
}

#[tokio::test]
async fn embeddings_are_native_on_gemini_translated_to_openai_and_refused_elsewhere() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    let one = json!({"content": {"parts": [{"text": "hello"}]}});
    let batch = json!({"requests": [
        {"model": "models/ALIAS", "content": {"parts": [{"text": "hello"}]}},
        {"model": "models/ALIAS", "content": {"parts": [{"text": "world"}]}}]});
    let batch_for = |alias: &str| serde_json::from_str::<Value>(&batch.to_string().replace("ALIAS", alias)).unwrap();

    let native: Value = goog(&gw, "/v1beta/models/gemini:embedContent", &one)
        .await
        .json()
        .await
        .unwrap();
    let translated: Value = goog(&gw, "/v1beta/models/emb:embedContent", &one)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(native["embedding"]["values"].as_array().unwrap().len(), 8, "{native}");
    // The mock embeds a text to the same vector either way.
    assert_eq!(native, translated);
    let sent: Value = serde_json::from_str(mock.last_request()["body"].as_str().unwrap()).unwrap();
    assert_eq!(sent["input"], "hello");
    assert_eq!(sent["model"], "up-emb");

    let native = goog(&gw, "/v1beta/models/gemini:batchEmbedContents", &batch_for("gemini")).await;
    assert_eq!(native.status(), 200);
    let native: Value = native.json().await.unwrap();
    // Each request of the batch names the target's model upstream, not the alias.
    let sent: Value = serde_json::from_str(mock.last_request()["body"].as_str().unwrap()).unwrap();
    assert_eq!(sent["requests"][1]["model"], "models/gemini-2.5-flash");
    let translated: Value = goog(&gw, "/v1beta/models/emb:batchEmbedContents", &batch_for("emb"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(native["embeddings"].as_array().unwrap().len(), 2);
    assert_eq!(native, translated);

    // A batch request naming another model is refused: it would reach a model the path
    // (and the key's allowlist check) never named.
    let resp = goog(&gw, "/v1beta/models/emb:batchEmbedContents", &batch_for("gpt")).await;
    assert_eq!(resp.status(), 400);
    assert_google_error(&resp.json().await.unwrap(), 400, "INVALID_ARGUMENT");
    let resp = goog(&gw, "/v1beta/models/gemini:batchEmbedContents", &batch_for("gpt")).await;
    assert_eq!(resp.status(), 400);
    // Kinds without embeddings: a clear error, before any upstream call.
    let before = mock.requests().len();
    let resp = goog(&gw, "/v1beta/models/claude:embedContent", &one).await;
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_google_error(&v, 400, "INVALID_ARGUMENT");
    assert!(v["error"]["message"].as_str().unwrap().contains(":embedContent"), "{v}");
    assert_eq!(mock.requests().len(), before);
}

#[tokio::test]
async fn every_gateway_error_is_in_googles_envelope() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    let send = |key: &'static str, path: String, body: reqwest::Body| {
        client()
            .post(format!("{}{path}", gw.url()))
            .header("x-goog-api-key", key)
            .header("content-type", "application/json")
            .body(body)
    };
    let cases: Vec<(&str, String, reqwest::Body, u16, &str)> = vec![
        (
            "sk-narrow",
            "/v1beta/models/gemini:generateContent".into(),
            ask("hi").to_string().into(),
            403,
            "PERMISSION_DENIED",
        ),
        (
            CALLER_KEY,
            "/v1beta/models/nope:generateContent".into(),
            ask("hi").to_string().into(),
            404,
            "NOT_FOUND",
        ),
        (
            CALLER_KEY,
            "/v1beta/models/gemini:launch".into(),
            ask("hi").to_string().into(),
            404,
            "NOT_FOUND",
        ),
        (
            CALLER_KEY,
            "/v1beta/models/gemini:generateContent".into(),
            "{\"contents\": [".into(),
            400,
            "INVALID_ARGUMENT",
        ),
        (
            CALLER_KEY,
            "/v1beta/models/gemini:generateContent".into(),
            "[1, 2]".into(),
            400,
            "INVALID_ARGUMENT",
        ),
        (
            CALLER_KEY,
            "/v1beta/models/gemini:streamGenerateContent".into(),
            ask("hi").to_string().into(),
            400,
            "INVALID_ARGUMENT",
        ),
        (
            CALLER_KEY,
            "/v1beta/models/gpt:generateContent".into(),
            json!({"contents": "no"}).to_string().into(),
            400,
            "INVALID_ARGUMENT",
        ),
        // The request guardrail blocks before any upstream call.
        (
            CALLER_KEY,
            "/v1beta/models/gemini:generateContent".into(),
            ask("about the falcon").to_string().into(),
            400,
            "INVALID_ARGUMENT",
        ),
        // Larger than server.max_request_body_bytes.
        (
            CALLER_KEY,
            "/v1beta/models/gemini:generateContent".into(),
            ask(&"x".repeat(300_000)).to_string().into(),
            413,
            "INVALID_ARGUMENT",
        ),
        // Deeper than any parser here goes: refused, not a stack overflow.
        (
            "sk-plain",
            "/v1beta/models/gpt:generateContent".into(),
            format!(
                "{{\"contents\": [{{\"parts\": {}{}}}]}}",
                "[".repeat(50_000),
                "]".repeat(50_000)
            )
            .into(),
            400,
            "INVALID_ARGUMENT",
        ),
        // A provider's own error to a translated caller: its message, Google's envelope.
        (
            CALLER_KEY,
            "/v1beta/models/gpt-429:generateContent".into(),
            ask("hi").to_string().into(),
            429,
            "RESOURCE_EXHAUSTED",
        ),
    ];
    let before = mock.requests().len();
    for (key, path, body, code, status) in cases {
        let resp = send(key, path.clone(), body).send().await.unwrap();
        assert_eq!(resp.status(), code, "{path}");
        let v: Value = resp.json().await.unwrap();
        assert_google_error(&v, code, status);
    }
    // Only the last case went upstream.
    assert_eq!(mock.requests().len(), before + 1);
    // Native, with no guardrail to read it, a deep body is skipped over (without recursion)
    // and reaches the provider as it is, whose refusal the caller gets.
    let deep = format!("{{\"contents\": {}{}}}", "[".repeat(50_000), "]".repeat(50_000));
    let resp = send("sk-plain", "/v1beta/models/gemini:generateContent".into(), deep.into())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.json::<Value>().await.unwrap()["error"]["code"], 400);
    let resp = client()
        .get(format!("{}/v1beta/models/gemini:generateContent", gw.url()))
        .header("x-goog-api-key", CALLER_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    assert_google_error(&resp.json().await.unwrap(), 405, "UNIMPLEMENTED");
    // Gemini's own errors to a Gemini caller pass through as Gemini wrote them.
    let resp = goog(&gw, "/v1beta/models/gemini-400:generateContent", &ask("hi")).await;
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["message"], "mock failure 400 for model g?status=400", "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn alias_tricks_in_the_path_find_no_model() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    let paths = [
        "/v1beta/models/../v1/models/gemini:generateContent",
        "/v1beta/models/gemini/../gpt:generateContent",
        "/v1beta/models/%67emini:generateContent",
        "/v1beta/models/gemini%3AgenerateContent",
        "/v1beta/models/gemini:generateContent:generateContent",
        "/v1beta/models/gemini%2F..%2Fgpt:generateContent",
        "/v1beta/models/:generateContent",
        "/v1beta/tunedModels/gemini:generateContent",
    ];
    let body = ask("hi").to_string();
    for path in paths {
        // Sent as written: an HTTP client would resolve `..` before sending.
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nx-goog-api-key: {CALLER_KEY}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let status = tokio::task::block_in_place(|| raw(&gw, request.as_bytes()));
        assert!(status.contains(" 404 "), "{path}: {status}");
    }
    // The same through a client, which resolves `..`: a model this key may use is then
    // what it names, and the envelope is Google's.
    let resp = goog(&gw, "/v1beta/models/%67emini:generateContent", &ask("hi")).await;
    assert_eq!(resp.status(), 404);
    assert_google_error(&resp.json().await.unwrap(), 404, "NOT_FOUND");
    assert!(mock.requests().is_empty(), "{:?}", mock.requests());
}

#[tokio::test]
async fn a_stream_that_breaks_ends_with_an_error_event_and_is_charged_an_estimate() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    for alias in ["gemini-drop", "gpt-drop"] {
        let resp = goog(
            &gw,
            &format!("/v1beta/models/{alias}:streamGenerateContent?alt=sse"),
            &ask("Say hello"),
        )
        .await;
        assert_eq!(resp.status(), 200);
        let ev = events(&resp.text().await.unwrap());
        let last = ev.last().unwrap();
        assert_eq!(last["error"]["status"], "UNAVAILABLE", "{alias}: {ev:?}");
        assert!(
            ev.iter().all(|e| e["candidates"][0]["finishReason"].is_null()),
            "{alias}: {ev:?}"
        );
    }
    let m = metrics_text(&gw).await;
    for alias in ["gemini-drop", "gpt-drop"] {
        assert!(
            m.lines()
                .any(|l| l.starts_with("aigw_usage_estimated_total{") && l.contains(&format!("\"{alias}\""))),
            "{alias}: {m}"
        );
    }
}

#[tokio::test]
async fn response_guardrails_mask_gemini_answers_json_and_streamed() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    for alias in ["gemini-echo", "gpt-echo"] {
        let resp = goog(
            &gw,
            &format!("/v1beta/models/{alias}:generateContent"),
            &ask("the secretword is here"),
        )
        .await;
        let v: Value = resp.json().await.unwrap();
        let text = text_of(std::slice::from_ref(&v));
        assert!(!text.contains("secretword") && text.contains("is here"), "{alias}: {v}");
        let resp = goog(
            &gw,
            &format!("/v1beta/models/{alias}:streamGenerateContent?alt=sse"),
            &ask("the secretword is here"),
        )
        .await;
        let ev = events(&resp.text().await.unwrap());
        let streamed = text_of(&ev);
        assert_eq!(
            streamed, text,
            "{alias}: a stream says what the JSON answer says: {ev:?}"
        );
        assert_eq!(ev.last().unwrap()["candidates"][0]["finishReason"], "STOP", "{ev:?}");
    }
}

#[tokio::test]
async fn the_cache_answers_gemini_requests_json_and_streamed() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    let path = "/v1beta/models/gemini-cached:generateContent";
    let first = goog(&gw, path, &ask("cache me")).await;
    assert_eq!(first.headers()["x-aigw-cache"], "miss");
    let first: Value = first.json().await.unwrap();
    let n = mock.requests().len();
    // The store is written in a task: the next lookup may come before it.
    let hit =
        wait_until_async(|| async { goog(&gw, path, &ask("cache me")).await.headers()["x-aigw-cache"] == "hit" }).await;
    assert!(hit);
    let again: Value = goog(&gw, path, &ask("cache me")).await.json().await.unwrap();
    assert_eq!(again, first);
    let resp = goog(
        &gw,
        "/v1beta/models/gemini-cached:streamGenerateContent?alt=sse",
        &ask("cache me"),
    )
    .await;
    assert_eq!(resp.headers()["x-aigw-cache"], "hit");
    let ev = events(&resp.text().await.unwrap());
    assert_eq!(text_of(&ev), text_of(std::slice::from_ref(&first)));
    assert_eq!(ev.last().unwrap()["candidates"][0]["finishReason"], "STOP");
    assert_eq!(mock.requests().len(), n, "hits call no provider");
    // Another request is another entry.
    let other = goog(&gw, path, &ask("cache me not")).await;
    assert_eq!(other.headers()["x-aigw-cache"], "miss");
}

#[tokio::test]
async fn usage_reported_wrong_is_charged_an_estimate_never_nothing() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    for alias in ["gemini-odd", "gpt-odd"] {
        let resp = goog(
            &gw,
            &format!("/v1beta/models/{alias}:generateContent"),
            &ask("Say hello"),
        )
        .await;
        assert_eq!(resp.status(), 200, "{alias}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(
            text_of(std::slice::from_ref(&v)),
            "Hello from the aigw mock upstream model today."
        );
        let resp = goog(
            &gw,
            &format!("/v1beta/models/{alias}:streamGenerateContent?alt=sse"),
            &ask("Say hello"),
        )
        .await;
        let ev = events(&resp.text().await.unwrap());
        assert_eq!(
            ev.last().unwrap()["candidates"][0]["finishReason"],
            "STOP",
            "{alias}: {ev:?}"
        );
    }
    let m = metrics(&gw).await;
    for alias in ["gemini-odd", "gpt-odd"] {
        let estimated = m
            .iter()
            .filter(|(k, _)| k.starts_with("aigw_usage_estimated_total{") && k.contains(&format!("\"{alias}\"")))
            .map(|(_, v)| *v)
            .sum::<f64>();
        assert_eq!(estimated, 2.0, "{alias}: {m:?}");
        let output = m
            .iter()
            .filter(|(k, _)| {
                k.starts_with("aigw_tokens_total{") && k.contains(&format!("\"{alias}\"")) && k.contains("output")
            })
            .map(|(_, v)| *v)
            .sum::<f64>();
        assert!(output > 0.0, "{alias}: an unreadable count is never free: {m:?}");
    }
}

#[tokio::test]
async fn the_model_list_is_the_keys_own_paged_and_its_errors_are_googles() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    let get = |key: &'static str, path: String| {
        let url = format!("{}{path}", gw.url());
        async move {
            let r = client().get(url).header("x-goog-api-key", key).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    // A key limited to one model sees that one, and none other by name.
    let (s, v) = get("sk-narrow", "/v1beta/models".into()).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["models"],
        json!([{"name": "models/gpt", "baseModelId": "gpt", "version": "aigw",
        "displayName": "gpt", "supportedGenerationMethods":
        ["generateContent", "streamGenerateContent", "countTokens", "embedContent", "batchEmbedContents"]}])
    );
    assert!(v.get("nextPageToken").is_none(), "{v}");
    let (s, v) = get("sk-narrow", "/v1beta/models/gemini".into()).await;
    assert_eq!(s, 404);
    assert_google_error(&v, 404, "NOT_FOUND");
    // Pages of one, followed to the end: every model once, in order.
    let (mut token, mut seen) = (String::new(), Vec::new());
    loop {
        let (s, v) = get(CALLER_KEY, format!("/v1beta/models?pageSize=1&pageToken={token}")).await;
        assert_eq!(s, 200, "{v}");
        seen.extend(v["models"].as_array().unwrap().iter().map(|m| m["name"].clone()));
        match v["nextPageToken"].as_str() {
            Some(t) => token = t.to_owned(),
            None => break,
        }
    }
    let (_, all) = get(CALLER_KEY, "/v1beta/models?pageSize=1000".into()).await;
    let all: Vec<Value> = all["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].clone())
        .collect();
    assert!(all.len() > 2);
    assert_eq!(seen, all);
    // A page token it never gave, a page size that is no number, a wrong key.
    for (key, path, code, status) in [
        (CALLER_KEY, "/v1beta/models?pageToken=nope", 400, "INVALID_ARGUMENT"),
        (CALLER_KEY, "/v1beta/models?pageSize=-1", 400, "INVALID_ARGUMENT"),
        ("sk-wrong", "/v1beta/models", 401, "UNAUTHENTICATED"),
    ] {
        let (s, v) = get(key, path.into()).await;
        assert_eq!(s, code, "{path}: {v}");
        assert_google_error(&v, code, status);
    }
    assert!(mock.requests().is_empty());
}
