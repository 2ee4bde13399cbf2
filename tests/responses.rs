//! OpenAI's Responses API end to end: passthrough of JSON and `response.*` event streams
//! to OpenAI-style providers (Azure's path too), usage for limits and metrics, failover,
//! guardrails on input items and output text, and a clear 400 for other providers.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

const CONFIG: &str = r#"
{SERVER}
provider_keys:
  - {name: oa, provider: openai, base_url: "{MOCK}/v1", api_key: "{PROVIDER_KEY}"}
  - {name: az, provider: azure, base_url: "{MOCK}", api_key: "{PROVIDER_KEY}", api_version: "2025-04-01-preview"}
  - {name: an, provider: anthropic, base_url: "{MOCK}", api_key: "{PROVIDER_KEY}"}
guardrails:
  - {name: no-secrets, pack: filters/secrets.yaml, stage: request}
  - {name: pii-out, pack: filters/pii.yaml, stage: response, action: mask}
  - {name: no-falcon, rules: [{kind: keyword, words: [falcon]}], stage: response}
models:
  - {name: gpt, provider_key: oa, model: "up?echo", guardrails: [no-secrets, pii-out]}
  - {name: falcon, provider_key: oa, model: "up?echo&chunk_delay_ms=5", guardrails: [no-falcon]}
  - {name: azure-gpt, provider_key: az, model: "deploy-1"}
  - {name: down, provider_key: oa, model: "x?status=503"}
  - name: routed
    routing: {targets: [{model: down}, {model: gpt, priority: 1}]}
  - {name: claude, provider_key: an, model: c}
api_keys:
  - {name: main, key: "{CALLER_KEY}", owner: team-a}
"#;

async fn responses(gw: &Gateway, body: &Value) -> reqwest::Response {
    post(gw, "/v1/responses", body).await
}

fn events(body: &str) -> Vec<Value> {
    sse_data(body)
        .iter()
        .map(|d| serde_json::from_str::<Value>(d).unwrap())
        .collect()
}

#[tokio::test]
async fn json_and_streams_pass_through_with_usage() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    let r = responses(&gw, &json!({"model": "gpt", "input": "hello there"})).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-aigw-model"], "gpt");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "response");
    assert_eq!(v["output"][0]["content"][0]["text"], "hello there");
    let seen = mock.last_request();
    assert_eq!(seen["path"], "/v1/responses");
    let sent: Value = serde_json::from_str(seen["body"].as_str().unwrap()).unwrap();
    assert_eq!(sent["model"], "up?echo");
    assert!(sent.get("stream_options").is_none(), "nothing chat-specific is added");

    let r = responses(
        &gw,
        &json!({"model": "routed", "stream": true, "input": [{"role": "user", "content": [{"type": "input_text", "text": "one two three"}]}]}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK, "failover to the second target");
    let evs = events(&r.text().await.unwrap());
    let text: String = evs
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    assert_eq!(text, "one two three");
    assert_eq!(evs.last().unwrap()["type"], "response.completed");
    // Usage from response.completed (streams) and the JSON body reaches the metrics.
    assert!(
        wait_until_async(|| async {
            metric(&gw, r#"aigw_tokens_total{model="gpt",owner="team-a",type="output"}"#).await == 5.0
        })
        .await,
        "{}",
        metrics_text(&gw).await
    );

    // Azure: the Responses path is per resource, the deployment is the body's model.
    let r = responses(&gw, &json!({"model": "azure-gpt", "input": "hi"})).await;
    assert_eq!(r.status(), StatusCode::OK);
    let seen = mock.last_request();
    assert_eq!(seen["path"], "/openai/responses?api-version=2025-04-01-preview");
    assert_eq!(seen["headers"]["api-key"], PROVIDER_KEY);

    // A provider that has no Responses API.
    let r = responses(&gw, &json!({"model": "claude", "input": "hi"})).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"]["message"].as_str().unwrap().contains("/responses"));
}

#[tokio::test]
async fn guardrails_cover_input_items_and_output_text() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    let before = mock.requests().len();
    for input in [
        json!("key sk-proj-EXAMPLE_not_a_real_key_0000"),
        json!([{"role": "user", "content": [{"type": "input_text", "text": "sk-proj-EXAMPLE_not_a_real_key_0000"}]}]),
        json!([{"type": "function_call_output", "call_id": "c", "output": "sk-proj-EXAMPLE_not_a_real_key_0000"}]),
    ] {
        let r = responses(&gw, &json!({"model": "gpt", "input": input})).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{input}");
        assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "content_filter");
    }
    let r = responses(
        &gw,
        &json!({"model": "gpt", "instructions": "use sk-proj-EXAMPLE_not_a_real_key_0000", "input": "x"}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(mock.requests().len(), before, "the provider was never called");

    // Output text is masked in JSON and in every event that carries it.
    let text = "write to jane.doe@example.com please";
    let v: Value = responses(&gw, &json!({"model": "gpt", "input": text}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["output"][0]["content"][0]["text"], "write to [REDACTED:email] please");
    let body = responses(&gw, &json!({"model": "gpt", "stream": true, "input": text}))
        .await
        .text()
        .await
        .unwrap();
    assert!(!body.contains("jane.doe"), "{body}");
    let evs = events(&body);
    let deltas: String = evs
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    assert_eq!(deltas, "write to [REDACTED:email] please");
    let done = evs.iter().find(|e| e["type"] == "response.output_text.done").unwrap();
    assert_eq!(done["text"], "write to [REDACTED:email] please");

    // A blocked stream ends with an error event and no response.completed; JSON is
    // marked incomplete, as the API reports its own content filter.
    let body = responses(
        &gw,
        &json!({"model": "falcon", "stream": true, "input": "the falcon flies"}),
    )
    .await
    .text()
    .await
    .unwrap();
    let evs = events(&body);
    assert_eq!(evs.last().unwrap()["error"]["code"], "content_filter", "{body}");
    assert!(evs.iter().all(|e| e["type"] != "response.completed"));
    let v: Value = responses(&gw, &json!({"model": "falcon", "input": "the falcon flies"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["status"], "incomplete");
    assert_eq!(v["incomplete_details"]["reason"], "content_filter");
    assert_eq!(v["output"], json!([]));
}
