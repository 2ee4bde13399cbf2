//! AWS Bedrock end to end: OpenAI and Anthropic callers reach a `bedrock` provider's
//! Converse and ConverseStream (AWS's binary event stream), every request signed with
//! SigV4 and verified by the mock; errors in the caller's envelope with failover on
//! throttling, stream exceptions and cuts ending with an error event, credentials from
//! the config or the standard AWS variables, and never shown.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{json, Value};

const SECRET_FROM_ENV: &str = "env-secret-key-0123456789abcdef";
const SESSION_TOKEN: &str = "IQoJb3JpZ2luX2VjEXAMPLESESSIONTOKEN";

const CONFIG: &str = r#"
{SERVER}
provider_keys:
  - name: br
    provider: bedrock
    base_url: "{MOCK}"
    aws: {region: us-east-1, access_key_id: AKIDAIGWTEST, secret_access_key: "{PROVIDER_KEY}"}
  - name: br-env
    provider: bedrock
    base_url: "{MOCK}"
  - name: br-wrong
    provider: bedrock
    base_url: "{MOCK}"
    aws: {region: us-east-1, access_key_id: AKIDAIGWTEST, secret_access_key: not-the-secret}
  - {name: oa, provider: openai_compatible, base_url: "{MOCK}/v1", api_key: "{PROVIDER_KEY}"}
models:
  - {name: nova, provider_key: br, model: "amazon.nova-pro-v1:0", pricing: {input_per_mtok: 1, output_per_mtok: 2}}
  - {name: claude, provider_key: br, model: "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-sonnet-4-20250514-v1:0"}
  - {name: throttled, provider_key: br, model: "x?status=429&retry_after=2"}
  - {name: invalid, provider_key: br, model: "x?status=400"}
  - {name: failing, provider_key: br, model: "x?bad_json"}
  - {name: cut, provider_key: br, model: "x?drop_after=3&chunk_delay_ms=30"}
  - {name: from-env, provider_key: br-env, model: "meta.llama3-70b-instruct-v1:0"}
  - {name: wrong-secret, provider_key: br-wrong, model: m}
  - {name: gpt, provider_key: oa, model: up-gpt}
  - name: throttled-then-gpt
    routing: {targets: [{model: throttled}, {model: gpt, priority: 1}]}
api_keys:
  - {name: main, key: "{CALLER_KEY}", owner: team}
"#;

fn start(mock: &Mock) -> Gateway {
    Gateway::start_with(
        CONFIG,
        mock,
        &[
            ("AWS_REGION", "us-west-2"),
            ("AWS_ACCESS_KEY_ID", "AKIDFROMENV"),
            // The mock knows one secret, its --api-key: the env credentials sign with it
            // too, so that what is checked is that they were used (key id, token).
            ("AWS_SECRET_ACCESS_KEY", PROVIDER_KEY),
            ("AWS_SESSION_TOKEN", SESSION_TOKEN),
        ],
    )
}

/// No credential in what the gateway printed.
fn assert_no_credentials(gw: &Gateway) {
    let out = gw.log_text() + &gw.access_lines().join("\n");
    for secret in [
        PROVIDER_KEY,
        SESSION_TOKEN,
        SECRET_FROM_ENV,
        "not-the-secret",
        "AWS4-HMAC-SHA256",
    ] {
        assert!(!out.contains(secret), "{secret} in the gateway's output:\n{out}");
    }
}

fn authorization(seen: &Value) -> String {
    seen["headers"]["authorization"].as_str().unwrap_or("").to_owned()
}

#[tokio::test]
async fn chat_callers_reach_converse_signed_json_and_streams() {
    let mock = Mock::start();
    let gw = start(&mock);
    let mut body = json!({"model": "nova", "max_tokens": 64, "temperature": 0.5, "stop": ["END"],
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}]});
    let resp = post(&gw, "/v1/chat/completions", &body).await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "amazon.nova-pro-v1:0");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "Hello from the aigw mock upstream model today."
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["completion_tokens"], 8);
    let seen = mock.last_request();
    assert_eq!(seen["path"], "/model/amazon.nova-pro-v1%3A0/converse");
    assert!(
        authorization(&seen).starts_with("AWS4-HMAC-SHA256 Credential=AKIDAIGWTEST/"),
        "{seen}"
    );
    assert!(authorization(&seen).contains("/us-east-1/bedrock/aws4_request"));
    assert!(seen["headers"].get("x-amz-date").is_some());
    assert!(!seen.to_string().contains(CALLER_KEY));
    let sent: Value = serde_json::from_str(seen["body"].as_str().unwrap()).unwrap();
    assert_eq!(sent["system"], json!([{"text": "Be brief."}]));
    assert_eq!(
        sent["inferenceConfig"],
        json!({"maxTokens": 64, "temperature": 0.5, "stopSequences": ["END"]})
    );
    assert!(sent.get("model").is_none());

    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let resp = post(&gw, "/v1/chat/completions", &body).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let text = resp.text().await.unwrap();
    assert_eq!(completion_text(&text), "Hello from the aigw mock upstream model today.");
    let chunks = sse_data(&text);
    assert_eq!(chunks.last().unwrap(), "[DONE]");
    let usage: Value = serde_json::from_str(&chunks[chunks.len() - 2]).unwrap();
    assert_eq!(usage["usage"]["completion_tokens"], 8);
    assert_eq!(
        mock.last_request()["path"],
        "/model/amazon.nova-pro-v1%3A0/converse-stream"
    );
    // Usage and cost counted as for any provider.
    assert_eq!(
        metric(&gw, r#"aigw_tokens_total{model="nova",owner="team",type="output"}"#).await,
        16.0
    );
    assert_no_credentials(&gw);
}

#[tokio::test]
async fn anthropic_callers_and_tools_through_converse() {
    let mock = Mock::start();
    let gw = start(&mock);
    // An inference profile ARN is one percent-encoded path segment.
    let msg = json!({"model": "claude", "max_tokens": 50, "messages": [{"role": "user", "content": "Say hello"}]});
    let resp = post_messages_as(&gw, CALLER_KEY, &msg).await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["type"], "message");
    assert_eq!(
        v["content"][0]["text"],
        "Hello from the aigw mock upstream model today."
    );
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(
        mock.last_request()["path"],
        "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2Fus.anthropic.claude-sonnet-4-20250514-v1%3A0/converse"
    );
    let mut msg = msg;
    msg["stream"] = json!(true);
    let text = post_messages_as(&gw, CALLER_KEY, &msg).await.text().await.unwrap();
    assert!(text.contains("event: message_stop"), "{text}");
    assert!(text.contains("\"output_tokens\":8"), "{text}");

    // A tool call streamed in pieces, and its result sent back.
    let tools = json!([{"type": "function", "function": {"name": "lookup",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}}]);
    let mut body = json!({"model": "nova", "stream": true, "tools": tools,
        "messages": [{"role": "user", "content": "Weather in Oslo?"}]});
    let text = post(&gw, "/v1/chat/completions", &body).await.text().await.unwrap();
    let mut args = String::new();
    let mut id = String::new();
    for c in sse_data(&text).iter().filter(|c| c.as_str() != "[DONE]") {
        let c: Value = serde_json::from_str(c).unwrap();
        if let Some(call) = c["choices"][0]["delta"]["tool_calls"][0].as_object() {
            if let Some(i) = call.get("id").and_then(Value::as_str) {
                id = i.to_owned();
            }
            args.push_str(call["function"]["arguments"].as_str().unwrap_or(""));
        }
    }
    assert_eq!(
        serde_json::from_str::<Value>(&args).unwrap(),
        json!({"query": "Weather in Oslo?"})
    );
    assert!(text.contains("\"finish_reason\":\"tool_calls\""), "{text}");
    body["stream"] = json!(false);
    body["messages"] = json!([{"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": id, "type": "function",
            "function": {"name": "lookup", "arguments": args}}]},
        {"role": "tool", "tool_call_id": id, "content": "18C"}]);
    let v: Value = post(&gw, "/v1/chat/completions", &body).await.json().await.unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "The tool said: 18C");
    let sent: Value = serde_json::from_str(mock.last_request()["body"].as_str().unwrap()).unwrap();
    assert_eq!(sent["messages"][2]["content"][0]["toolResult"]["toolUseId"], json!(id));
    assert_no_credentials(&gw);
}

#[tokio::test]
async fn bedrock_errors_reach_the_caller_in_its_envelope_and_throttling_fails_over() {
    let mock = Mock::start();
    let gw = start(&mock);
    // ThrottlingException: 429 with its Retry-After, in the caller's envelope.
    let resp = post(&gw, "/v1/chat/completions", &chat_body("throttled")).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "2");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(
        v["error"]["message"],
        "mock failure 429 for model x?status=429&retry_after=2"
    );
    assert_eq!(v["error"]["type"], "rate_limit_error");
    // ... and a route moves on to its next target.
    let resp = post(&gw, "/v1/chat/completions", &chat_body("throttled-then-gpt")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-aigw-model"], "gpt");
    // ValidationException: 400, Anthropic's envelope for an Anthropic caller.
    let msg = json!({"model": "invalid", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]});
    let resp = post_messages_as(&gw, CALLER_KEY, &msg).await;
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    // A signature Bedrock refuses is the gateway's fault: 502, the reason logged.
    let resp = post(&gw, "/v1/chat/completions", &chat_body("wrong-secret")).await;
    assert_eq!(resp.status(), 502);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(
        v["error"]["message"],
        "The provider refused the gateway's credential (status 403)."
    );
    // An exception event mid-stream, and a cut stream: each ends with an error event.
    for model in ["failing", "cut"] {
        let mut body = chat_body(model);
        body["stream"] = json!(true);
        let text = post(&gw, "/v1/chat/completions", &body).await.text().await.unwrap();
        assert!(!text.contains("[DONE]"), "{model}: {text}");
        let last: Value =
            serde_json::from_str(sse_data(&text).last().unwrap_or_else(|| panic!("{model}: {text:?}"))).unwrap();
        assert!(last["error"]["message"].is_string(), "{model}: {text}");
    }
    // What Converse cannot take is refused before the provider is called.
    let before = mock.requests().len();
    let body = json!({"model": "nova", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]});
    let resp = post(&gw, "/v1/chat/completions", &body).await;
    assert_eq!(resp.status(), 400);
    assert_eq!(mock.requests().len(), before);
    assert_no_credentials(&gw);
}

#[tokio::test]
async fn credentials_come_from_the_standard_aws_variables() {
    let mock = Mock::start();
    let gw = start(&mock);
    let resp = post(&gw, "/v1/chat/completions", &chat_body("from-env")).await;
    assert_eq!(resp.status(), 200);
    let seen = mock.last_request();
    assert!(
        authorization(&seen).starts_with("AWS4-HMAC-SHA256 Credential=AKIDFROMENV/"),
        "{seen}"
    );
    assert!(authorization(&seen).contains("/us-west-2/bedrock/aws4_request"));
    // The session token is sent, and signed (the mock checks with it).
    assert_eq!(seen["headers"]["x-amz-security-token"], SESSION_TOKEN);
    assert!(authorization(&seen).contains("x-amz-security-token"));
    // A caller that names no Content-Type (or asks for SSE): the signed request still
    // carries the type it was signed with, and no Accept.
    let resp = client()
        .post(format!("{}/v1/chat/completions", gw.url()))
        .bearer_auth(CALLER_KEY)
        .header("accept", "text/event-stream")
        .body(chat_body("from-env").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = mock.last_request();
    assert_eq!(seen["headers"]["content-type"], "application/json");
    assert!(seen["headers"].get("accept").is_none(), "{seen}");
    assert_no_credentials(&gw);
}

#[test]
fn bedrock_settings_are_checked_when_the_config_loads() {
    assert_config_errors(
        r#"
version: 1
provider_keys:
  - {name: a, provider: bedrock}
  - {name: b, provider: bedrock, api_key: sk-x, aws: {region: "us east", access_key_id: k, secret_access_key: TOPSECRET}}
  - {name: c, provider: openai, api_key: k, aws: {region: us-east-1}}
"#,
        &[
            "provider_keys[0].aws.region: required (or AWS_REGION)",
            "provider_keys[0].aws.access_key_id: required (or AWS_ACCESS_KEY_ID)",
            "provider_keys[0].aws.secret_access_key: required (or AWS_SECRET_ACCESS_KEY)",
            "provider_keys[1].api_key: bedrock providers sign with aws credentials",
            "provider_keys[1].aws.region: must be a region",
            "provider_keys[2].aws: only bedrock providers take the aws section",
        ],
        "TOPSECRET",
    );
}

/// Guardrails, the cache, budgets' cost and traces work on a Bedrock (and a Vertex AI)
/// answer as on any other: they read the caller's dialect, after translation.
#[tokio::test]
async fn policies_hold_on_both_clouds() {
    let rx = common::otlp::Receiver::start().await;
    let mock = Mock::start();
    let dir = tempfile::tempdir().unwrap();
    let key = vertex_key_file(dir.path(), &mock, "");
    let config = format!(
        r#"
{{SERVER}}
provider_keys:
  - name: br
    provider: bedrock
    base_url: "{{MOCK}}"
    aws: {{region: us-east-1, access_key_id: AKIDAIGWTEST, secret_access_key: "{{PROVIDER_KEY}}"}}
  - name: vx
    provider: vertex
    base_url: "{{MOCK}}"
    vertex: {{project: aigw-test, location: us-east5, credentials_file: "{}"}}
models:
  - {{name: br-echo, provider_key: br, model: "x?echo", guardrails: [pii], cache: c, pricing: {{input_per_mtok: 1000000, output_per_mtok: 1000000}}}}
  - {{name: vx-echo, provider_key: vx, model: "claude-x?echo", guardrails: [pii]}}
guardrails:
  - {{name: pii, pack: filters/pii.yaml, stage: response, action: mask}}
cache:
  - {{name: c, ttl_s: 60}}
api_keys:
  - {{name: main, key: "{{CALLER_KEY}}", owner: team}}
observability:
  otlp: {{endpoint: "{}", sample_ratio: 1.0}}
"#,
        key.display(),
        rx.endpoint()
    );
    let gw = Gateway::start(&config, &mock);
    let said = "write to alice@example.com today";
    for model in ["br-echo", "vx-echo"] {
        for stream in [false, true] {
            let body = json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": said}]});
            let text = post(&gw, "/v1/chat/completions", &body).await.text().await.unwrap();
            let answer = if stream {
                completion_text(&text)
            } else {
                serde_json::from_str::<Value>(&text).unwrap()["choices"][0]["message"]["content"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            };
            assert!(
                !answer.contains("alice@example.com"),
                "{model} stream={stream}: {answer}"
            );
            assert!(answer.starts_with("write to "), "{model} stream={stream}: {answer}");
        }
    }
    // The same request again: a cache hit, the provider not called.
    let before = mock.requests().len();
    let body = json!({"model": "br-echo", "messages": [{"role": "user", "content": said}]});
    let r = post(&gw, "/v1/chat/completions", &body).await;
    assert_eq!(r.headers()["x-aigw-cache"], "hit");
    assert_eq!(mock.requests().len(), before);
    // Cost counted at the model's prices.
    assert!(metric(&gw, r#"aigw_cost_usd_total{model="br-echo",owner="team"}"#).await > 0.0);
    // Each cloud's client spans name it, and no span carries a credential.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    for model in ["br-echo", "vx-echo"] {
        let body = json!({"model": model, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});
        let r = client()
            .post(format!("{}/v1/chat/completions", gw.url()))
            .bearer_auth(CALLER_KEY)
            .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let spans = rx.trace(trace, 4).await;
    let providers: Vec<String> = spans
        .iter()
        .filter_map(|s| common::otlp::attr(s, "gen_ai.provider.name"))
        .collect();
    assert!(providers.contains(&"aws.bedrock".to_owned()), "{providers:?}");
    assert!(providers.contains(&"gcp.vertex_ai".to_owned()), "{providers:?}");
    let everything = format!("{spans:?}");
    for secret in [PROVIDER_KEY, "ya29.", "AWS4-HMAC-SHA256", "PRIVATE KEY"] {
        assert!(!everything.contains(secret), "{secret} in a span");
    }
    assert_no_credentials(&gw);
}
