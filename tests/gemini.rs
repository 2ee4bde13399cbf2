//! Gemini end to end: OpenAI and Anthropic callers reach a `gemini` provider's native
//! generateContent / streamGenerateContent (translated both ways, tools included), with
//! the provider's key in `x-goog-api-key`, usage and cost counted, errors in the caller's
//! envelope, cut streams ending with an error, and failover to another provider.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{json, Value};

const CONFIG: &str = r#"
version: 1
server:
  listen: ["127.0.0.1:{PORT}"]
  admin_listen: "127.0.0.1:{ADMIN}"
provider_keys:
  - {name: gm, provider: gemini, base_url: "{MOCK}", api_key: "{PROVIDER_KEY}"}
  - {name: gm-v1, provider: gemini, base_url: "{MOCK}/v1", api_key: "{PROVIDER_KEY}"}
  - {name: oa, provider: openai_compatible, base_url: "{MOCK}/v1", api_key: "{PROVIDER_KEY}"}
models:
  - name: gemini
    provider_key: gm
    model: gemini-2.5-flash
    pricing: {input_per_mtok: 1000000, output_per_mtok: 2000000}
  - {name: gemini-v1, provider_key: gm-v1, model: models/gemini-2.5-pro}
  - {name: gemini-echo, provider_key: gm, model: "g?echo"}
  - {name: gemini-429, provider_key: gm, model: "g?status=429&retry_after=3"}
  - {name: gemini-400, provider_key: gm, model: "g?status=400"}
  - {name: gemini-503, provider_key: gm, model: "g?status=503"}
  - {name: gemini-drop, provider_key: gm, model: "g?drop_after=3&chunk_delay_ms=20"}
  - {name: gemini-bad-json, provider_key: gm, model: "g?bad_json"}
  - {name: gpt, provider_key: oa, model: up-gpt}
  - name: gemini-then-gpt
    routing: {targets: [{model: gemini-503}, {model: gpt, priority: 1}]}
api_keys:
  - {name: main, key: "{CALLER_KEY}"}
"#;

const SIGNED_CALL_ID: &str = "call_0~c2lnLW1vY2s=";

fn tools() -> Value {
    json!([{"type": "function", "function": {"name": "lookup", "description": "Look it up",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}}])
}

async fn post_messages(gw: &Gateway, body: &Value) -> reqwest::Response {
    post_messages_as(gw, CALLER_KEY, body).await
}

#[tokio::test]
async fn chat_completion_reaches_generate_content_and_comes_back_as_chat() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    let body = json!({"model": "gemini", "max_tokens": 64, "temperature": 0.5,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}]});
    let resp = post(&gw, "/v1/chat/completions", &body).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-aigw-model"], "gemini");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "gemini-2.5-flash");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-mock-"), "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    // The mock's thought part is not part of the answer.
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "Hello from the aigw mock upstream model today."
    );
    // 8 words of output plus the mock's 2 thinking tokens, billed as output.
    assert_eq!(v["usage"]["completion_tokens"], 10);
    let prompt = v["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(prompt > 0);

    let seen = mock.last_request();
    assert_eq!(seen["path"], "/v1beta/models/gemini-2.5-flash:generateContent");
    assert_eq!(seen["headers"]["x-goog-api-key"], PROVIDER_KEY);
    assert!(seen["headers"].get("authorization").is_none());
    assert!(!seen.to_string().contains(CALLER_KEY));
    let sent: Value = serde_json::from_str(seen["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        sent,
        json!({"contents": [{"role": "user", "parts": [{"text": "Say hello"}]}],
            "systemInstruction": {"parts": [{"text": "Be brief."}]},
            "generationConfig": {"temperature": 0.5, "maxOutputTokens": 64}})
    );

    // Cost: prompt tokens at $1/token and 10 output tokens at $2/token.
    let expected_cost = prompt as f64 + 20.0;
    let line = gw.access_lines_until(1, |l| l.contains("\"cost_usd\""));
    let entry: Value = serde_json::from_str(line.last().unwrap()).unwrap();
    assert_eq!(entry["cost_usd"].as_f64().unwrap(), expected_cost, "{entry}");
    assert_eq!(entry["output_tokens"], 10, "{entry}");
}

#[tokio::test]
async fn a_versioned_base_url_and_models_prefix_are_kept() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    let resp = post(&gw, "/v1/chat/completions", &chat_body("gemini-v1")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(mock.last_request()["path"], "/v1/models/gemini-2.5-pro:generateContent");
}

#[tokio::test]
async fn chat_stream_is_translated_with_usage_and_done() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    let body = json!({"model": "gemini", "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "Say hello"}]});
    let resp = post(&gw, "/v1/chat/completions", &body).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let text = resp.text().await.unwrap();
    let data = sse_data(&text);
    assert_eq!(data.last().unwrap(), "[DONE]", "{text}");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(completion_text(&text), "Hello from the aigw mock upstream model today.");
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    let usage = &chunks[chunks.len() - 1];
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 10);
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk"));
    assert_eq!(
        mock.last_request()["path"],
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    );
    // Without include_usage the caller gets no usage chunk, and usage is still counted.
    let body = json!({"model": "gemini", "stream": true, "messages": [{"role": "user", "content": "Say hello"}]});
    let text = post(&gw, "/v1/chat/completions", &body).await.text().await.unwrap();
    assert!(!text.contains("\"usage\""), "{text}");
    let lines = gw.access_lines_until(2, |l| l.contains("\"stream\":true"));
    let entry: Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    assert_eq!(entry["output_tokens"], 10, "{entry}");
}

#[tokio::test]
async fn tool_calls_round_trip_with_the_thought_signature() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    let ask = json!({"model": "gemini", "tools": tools(), "tool_choice": "required",
        "messages": [{"role": "user", "content": "Find aigw"}]});
    let v: Value = post(&gw, "/v1/chat/completions", &ask).await.json().await.unwrap();
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{v}");
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["id"], SIGNED_CALL_ID);
    assert_eq!(call["function"]["name"], "lookup");
    assert_eq!(
        serde_json::from_str::<Value>(call["function"]["arguments"].as_str().unwrap()).unwrap(),
        json!({"query": "Find aigw"})
    );
    let sent: Value = serde_json::from_str(mock.last_request()["body"].as_str().unwrap()).unwrap();
    assert_eq!(sent["tools"][0]["functionDeclarations"][0]["name"], "lookup");
    assert_eq!(sent["toolConfig"], json!({"functionCallingConfig": {"mode": "ANY"}}));

    // The same call streamed: one whole tool call chunk, then finish_reason tool_calls.
    let mut streamed = ask.clone();
    streamed["stream"] = json!(true);
    let text = post(&gw, "/v1/chat/completions", &streamed).await.text().await.unwrap();
    let chunks: Vec<Value> = sse_data(&text)
        .iter()
        .filter_map(|d| serde_json::from_str(d).ok())
        .collect();
    let call_chunk = chunks
        .iter()
        .find(|c| !c["choices"][0]["delta"]["tool_calls"].is_null())
        .unwrap();
    assert_eq!(call_chunk["choices"][0]["delta"]["tool_calls"][0]["id"], SIGNED_CALL_ID);
    assert!(chunks.iter().any(|c| c["choices"][0]["finish_reason"] == "tool_calls"));

    // The result goes back: the signature returns with the call, the result by name.
    let answer = json!({"model": "gemini", "tools": tools(), "messages": [
        {"role": "user", "content": "Find aigw"},
        {"role": "assistant", "content": null, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": SIGNED_CALL_ID, "content": "{\"hits\": 3}"}]});
    let v: Value = post(&gw, "/v1/chat/completions", &answer).await.json().await.unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"], "The tool said: {\"hits\":3}",
        "{v}"
    );
    let sent: Value = serde_json::from_str(mock.last_request()["body"].as_str().unwrap()).unwrap();
    let contents = sent["contents"].as_array().unwrap();
    assert_eq!(contents[1]["role"], "model");
    assert_eq!(contents[1]["parts"][0]["thoughtSignature"], "c2lnLW1vY2s=");
    assert_eq!(
        contents[2]["parts"][0],
        json!({"functionResponse": {"name": "lookup", "response": {"hits": 3}}})
    );
}

#[tokio::test]
async fn anthropic_callers_reach_gemini_json_and_stream() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    let body = json!({"model": "gemini-echo", "max_tokens": 50, "system": "Be brief.",
        "messages": [{"role": "user", "content": "Echo me"}]});
    let resp = post_messages(&gw, &body).await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["type"], "message");
    assert_eq!(v["content"], json!([{"type": "text", "text": "Echo me"}]));
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(v["usage"]["output_tokens"], 4, "{v}");
    let seen = mock.last_request();
    assert!(seen["headers"].get("anthropic-version").is_none(), "{seen}");
    assert!(seen["headers"].get("x-api-key").is_none(), "{seen}");
    let sent: Value = serde_json::from_str(seen["body"].as_str().unwrap()).unwrap();
    assert_eq!(sent["systemInstruction"], json!({"parts": [{"text": "Be brief."}]}));
    assert_eq!(sent["generationConfig"]["maxOutputTokens"], 50);

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let text = post_messages(&gw, &streamed).await.text().await.unwrap();
    let names: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("event: ")).collect();
    assert_eq!(names.first(), Some(&"message_start"), "{text}");
    assert_eq!(names.last(), Some(&"message_stop"), "{text}");
    assert_eq!(completion_text(&text), "Echo me");
    let delta: Value = sse_data(&text)
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find(|v| v["type"] == "message_delta")
        .unwrap();
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert_eq!(delta["usage"]["output_tokens"], 4);

    // Tools from an Anthropic caller come back as tool_use blocks.
    let ask = json!({"model": "gemini", "max_tokens": 50,
        "tools": [{"name": "lookup", "input_schema": {"type": "object"}}],
        "messages": [{"role": "user", "content": "Find aigw"}]});
    let v: Value = post_messages(&gw, &ask).await.json().await.unwrap();
    assert_eq!(v["stop_reason"], "tool_use", "{v}");
    assert_eq!(v["content"][0]["type"], "tool_use");
    assert_eq!(v["content"][0]["id"], SIGNED_CALL_ID);
    assert_eq!(v["content"][0]["input"], json!({"query": "Find aigw"}));
}

#[tokio::test]
async fn provider_errors_arrive_in_the_callers_envelope() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    let resp = post(&gw, "/v1/chat/completions", &chat_body("gemini-429")).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "3");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["type"], "rate_limit_error", "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("mock failure 429"));

    let resp = post(&gw, "/v1/chat/completions", &chat_body("gemini-400")).await;
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");

    let body = json!({"model": "gemini-400", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]});
    let resp = post_messages(&gw, &body).await;
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");

    // A provider 5xx is the gateway's own 502.
    let resp = post(&gw, "/v1/chat/completions", &chat_body("gemini-503")).await;
    assert_eq!(resp.status(), 502);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "upstream_error");

    // A 200 whose body is not JSON.
    let resp = post(&gw, "/v1/chat/completions", &chat_body("gemini-bad-json")).await;
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "upstream_error", "{v}");
}

#[tokio::test]
async fn a_cut_stream_ends_with_an_error_event_and_no_done() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    let body = json!({"model": "gemini-drop", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let text = post(&gw, "/v1/chat/completions", &body).await.text().await.unwrap();
    let data = sse_data(&text);
    assert!(!data.iter().any(|d| d == "[DONE]"), "{text}");
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "upstream_error", "{text}");

    let body = json!({"model": "gemini-drop", "stream": true, "max_tokens": 5,
        "messages": [{"role": "user", "content": "hi"}]});
    let text = post_messages(&gw, &body).await.text().await.unwrap();
    assert!(!text.contains("message_stop"), "{text}");
    assert!(text.contains("event: error"), "{text}");
}

#[tokio::test]
async fn failover_from_gemini_to_another_provider_and_unservable_endpoints() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    let resp = post(&gw, "/v1/chat/completions", &chat_body("gemini-then-gpt")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-aigw-model"], "gpt");
    let paths: Vec<String> = mock
        .requests()
        .iter()
        .map(|r| r["path"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        paths,
        [
            "/v1beta/models/g%3Fstatus%3D503:generateContent",
            "/v1/chat/completions"
        ]
    );

    for (path, body) in [
        ("/v1/embeddings", json!({"model": "gemini", "input": "x"})),
        ("/v1/responses", json!({"model": "gemini", "input": "x"})),
    ] {
        let resp = post(&gw, path, &body).await;
        assert_eq!(resp.status(), 400, "{path}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(
            v["error"]["message"],
            format!("The model 'gemini' cannot serve {}.", &path[3..])
        );
    }
    // A request Gemini cannot take is refused before the provider is called.
    let before = mock.requests().len();
    let bad = json!({"model": "gemini", "messages": [{"role": "tool", "tool_call_id": "nope", "content": "x"}]});
    let resp = post(&gw, "/v1/chat/completions", &bad).await;
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("matches no earlier assistant tool call"));
    assert_eq!(mock.requests().len(), before);
}
