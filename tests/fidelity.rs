//! Translation fidelity and honest costs, end to end: prompt-cache breakpoints reach
//! Anthropic and Bedrock at the positions the caller marked, cached and reasoning tokens
//! come back in every caller's dialect, and cost prices each kind of token once.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{json, Value};

const CONFIG: &str = r#"
{SERVER}
provider_keys:
  - {name: mock, provider: openai_compatible, base_url: "{MOCK}/v1", api_key: "{PROVIDER_KEY}"}
  - {name: an, provider: anthropic, base_url: "{MOCK}", api_key: "{PROVIDER_KEY}"}
  - name: br
    provider: bedrock
    base_url: "{MOCK}"
    aws: {region: us-east-1, access_key_id: AKIDAIGWTEST, secret_access_key: "{PROVIDER_KEY}"}
models:
  - name: claude
    provider_key: an
    model: claude-sonnet-4-5
    pricing: {input_per_mtok: 3, output_per_mtok: 15, cached_input_per_mtok: 0.3, cache_write_per_mtok: 3.75}
  - name: nova
    provider_key: br
    model: amazon.nova-pro-v1:0
    pricing: {input_per_mtok: 3, output_per_mtok: 15, cached_input_per_mtok: 0.3, cache_write_per_mtok: 3.75}
  - name: gpt
    provider_key: mock
    model: "gpt-x?cached=40&reasoning=7"
    pricing: {input_per_mtok: 2, output_per_mtok: 8, cached_input_per_mtok: 0.5}
api_keys:
  - {name: main, key: "{CALLER_KEY}", owner: team}
"#;

/// A long system prompt worth caching, marked; a marked tool; a question.
fn marked_chat(model: &str, question: &str) -> Value {
    json!({"model": model, "max_tokens": 64, "messages": [
        {"role": "system", "content": [
            {"type": "text", "text": "You are the reference desk. ".repeat(40), "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "Today is Monday."}]},
        {"role": "user", "content": question}],
        "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}},
            "cache_control": {"type": "ephemeral"}}],
        "tool_choice": "none"})
}

fn sent_body(mock: &Mock) -> Value {
    serde_json::from_str(mock.last_request()["body"].as_str().unwrap()).unwrap()
}

async fn chat(gw: &Gateway, body: &Value) -> Value {
    let resp = post(gw, "/v1/chat/completions", body).await;
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

/// The access log line of the `n`th request (1-based), parsed.
fn access_line(gw: &Gateway, n: usize) -> Value {
    let lines = gw.access_lines_until(n, |_| true);
    serde_json::from_str(&lines[n - 1]).unwrap()
}

fn assert_cost(line: &Value, want: f64) {
    let got = line["cost_usd"].as_f64().unwrap();
    assert!((got - want).abs() < 1e-12, "cost {got}, want {want}: {line}");
}

#[tokio::test]
async fn chat_breakpoints_reach_anthropic_and_cached_tokens_are_priced_apart() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    let v = chat(&gw, &marked_chat("claude", "Where is the atlas?")).await;
    let sent = sent_body(&mock);
    // The marked system part keeps its breakpoint, so system stays a list.
    assert_eq!(sent["system"][0]["cache_control"], json!({"type": "ephemeral"}));
    assert!(sent["system"][1].get("cache_control").is_none());
    assert_eq!(sent["system"][1]["text"], "Today is Monday.");
    assert_eq!(sent["tools"][0]["cache_control"], json!({"type": "ephemeral"}));
    // First time: the prefix is written to the cache.
    let first = v["usage"].clone();
    assert_eq!(first["prompt_tokens_details"]["cached_tokens"], 0);
    let line = access_line(&gw, 1);
    let (input, write) = (
        line["input_tokens"].as_u64().unwrap(),
        line["cache_write_tokens"].as_u64().unwrap(),
    );
    assert!(write > 200 && write < input, "{line}");
    assert_eq!(first["prompt_tokens"], input, "prompt tokens include cache writes");
    let output = line["output_tokens"].as_u64().unwrap() as f64;
    assert_cost(
        &line,
        ((input - write) as f64 * 3.0 + write as f64 * 3.75 + output * 15.0) / 1e6,
    );

    // Same prefix, another question: read from the cache.
    let v = chat(&gw, &marked_chat("claude", "And the globe?")).await;
    let read = v["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap();
    assert_eq!(read, write);
    let line = access_line(&gw, 2);
    assert_eq!(line["cache_read_tokens"], read);
    assert_eq!(line["cache_write_tokens"], 0);
    let input = line["input_tokens"].as_u64().unwrap();
    let output = line["output_tokens"].as_u64().unwrap() as f64;
    assert_cost(
        &line,
        ((input - read) as f64 * 3.0 + read as f64 * 0.3 + output * 15.0) / 1e6,
    );
    assert_eq!(
        metric(
            &gw,
            r#"aigw_tokens_detail_total{model="claude",owner="team",type="cache_read"}"#
        )
        .await,
        read as f64
    );
    assert_eq!(
        metric(
            &gw,
            r#"aigw_tokens_detail_total{model="claude",owner="team",type="cache_write"}"#
        )
        .await,
        write as f64
    );
}

#[tokio::test]
async fn breakpoints_become_bedrock_cache_points_from_both_dialects() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    chat(&gw, &marked_chat("nova", "Where is the atlas?")).await;
    let sent = sent_body(&mock);
    let point = json!({"cachePoint": {"type": "default"}});
    assert_eq!(sent["system"][1], point, "{sent}");
    assert_eq!(sent["system"][2], json!({"text": "Today is Monday."}));
    // tool_choice none leaves the tools out of a Converse request, so no tool point here.
    let v = chat(&gw, &marked_chat("nova", "And the globe?")).await;
    let read = v["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap();
    assert!(read > 200, "{v}");

    // An Anthropic caller's breakpoints, through the chat hub, land at the same places.
    let body = json!({"model": "nova", "max_tokens": 64,
        "system": [{"type": "text", "text": "Catalogue rules. ".repeat(50), "cache_control": {"type": "ephemeral"}}],
        "tools": [{"name": "lookup", "input_schema": {"type": "object"}, "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "Earlier talk. ".repeat(30), "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "Find the atlas."}]}]});
    let resp = post_messages_as(&gw, CALLER_KEY, &body).await;
    assert_eq!(resp.status(), 200);
    let first: Value = resp.json().await.unwrap();
    let sent = sent_body(&mock);
    assert_eq!(sent["system"][1], point, "{sent}");
    assert_eq!(sent["toolConfig"]["tools"][1], point, "{sent}");
    let content = &sent["messages"][0]["content"];
    assert_eq!(content[1], point, "{sent}");
    assert_eq!(content[2], json!({"text": "Find the atlas."}));
    let write = first["usage"]["cache_creation_input_tokens"].as_u64().unwrap();
    assert!(write > 300, "{first}");
    assert_eq!(first["usage"]["cache_read_input_tokens"], 0);
    let resp = post_messages_as(&gw, CALLER_KEY, &body).await;
    let again: Value = resp.json().await.unwrap();
    assert_eq!(again["usage"]["cache_read_input_tokens"], write);
    assert_eq!(again["usage"]["cache_creation_input_tokens"], 0);
    // Anthropic's input_tokens is the uncached part, as Anthropic reports it.
    assert_eq!(again["usage"]["input_tokens"], first["usage"]["input_tokens"]);
}

#[tokio::test]
async fn openai_cached_and_reasoning_tokens_reach_both_dialects_and_the_bill() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    let question = "Please list every atlas in the reading room. ".repeat(10);
    let v = chat(
        &gw,
        &json!({"model": "gpt", "messages": [{"role": "user", "content": question}]}),
    )
    .await;
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 40);
    assert_eq!(v["usage"]["completion_tokens_details"]["reasoning_tokens"], 7);
    let line = access_line(&gw, 1);
    assert_eq!(
        (line["cache_read_tokens"].as_u64(), line["reasoning_tokens"].as_u64()),
        (Some(40), Some(7))
    );
    let (input, output) = (
        line["input_tokens"].as_u64().unwrap(),
        line["output_tokens"].as_u64().unwrap(),
    );
    // Reasoning is part of the output and priced once, with it.
    assert_cost(
        &line,
        ((input - 40) as f64 * 2.0 + 40.0 * 0.5 + output as f64 * 8.0) / 1e6,
    );

    // An Anthropic caller gets them in Anthropic's terms.
    let resp = post_messages_as(
        &gw,
        CALLER_KEY,
        &json!({"model": "gpt", "max_tokens": 64, "messages": [{"role": "user", "content": question}]}),
    )
    .await;
    let m: Value = resp.json().await.unwrap();
    assert_eq!(m["usage"]["cache_read_input_tokens"], 40);
    assert_eq!(m["usage"]["input_tokens"], input - 40);
    // OpenAI-style providers get no Anthropic field they would refuse.
    assert!(!mock.last_request()["body"].as_str().unwrap().contains("cache_control"));
}

#[test]
fn cache_prices_are_checked_when_the_config_loads() {
    let config = r#"
version: 1
provider_keys:
  - {name: mock, provider: openai_compatible, base_url: "http://127.0.0.1:9/v1"}
models:
  - {name: a, provider_key: mock, pricing: {input_per_mtok: 1, cached_input_per_mtok: -1}}
  - {name: b, provider_key: mock, pricing: {input_per_mtok: 1, cache_write_per_mtok: .nan}}
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
