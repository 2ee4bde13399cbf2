//! Translation fidelity and honest costs, end to end: prompt-cache breakpoints reach
//! Anthropic and Bedrock at the positions the caller marked, cached and reasoning tokens
//! come back in every caller's dialect, cost prices each kind of token once, and
//! extended thinking crosses dialects with its signatures intact (the mock checks them,
//! as Claude does, and refuses a tool turn that lost its thinking).
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{json, Value};

const CONFIG: &str = r#"
{SERVER}
provider_keys:
  - {name: mock, provider: openai_compatible, base_url: "{MOCK}/v1", api_key: "{PROVIDER_KEY}"}
  - {name: an, provider: anthropic, base_url: "{MOCK}", api_key: "{PROVIDER_KEY}"}
  - {name: gm, provider: gemini, base_url: "{MOCK}", api_key: "{PROVIDER_KEY}"}
  - {name: h2, provider: openai_compatible, base_url: "{MOCK}/v1", api_key: "{PROVIDER_KEY}", http2: always}
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
  - {name: claude-br, provider_key: br, model: "anthropic.claude-sonnet-4-5-v1:0"}
  - {name: gem, provider_key: gm, model: gemini-2.5-flash}
  - {name: reasoner, provider_key: mock, model: "r1?reasoning=9"}
  - {name: small-openai, provider_key: mock, model: "s?error=context_length"}
  - {name: small-claude, provider_key: an, model: "c?error=context_length"}
  - {name: small-gemini, provider_key: gm, model: "g?error=context_length"}
  - {name: small-bedrock, provider_key: br, model: "b?error=context_length"}
  - {name: azure-filter, provider_key: mock, model: "f?error=content_filter"}
  - {name: claude-filter, provider_key: an, model: "c?error=content_filter"}
  - {name: small-h2, provider_key: h2, model: "s?error=context_length"}
  - {name: big, provider_key: mock, model: big-window}
  - name: long-context
    routing:
      retry_on: [429, 503, context_length_exceeded]
      failures_before_cooldown: 1   # one failure would cool a target: none is cooled here
      targets: [{model: small-openai}, {model: small-claude, priority: 1}, {model: small-gemini, priority: 2},
                {model: small-bedrock, priority: 3}, {model: small-h2, priority: 4}, {model: big, priority: 5}]
  - name: unlisted
    routing: {targets: [{model: small-claude}, {model: big, priority: 1}]}
  - name: filtered
    routing: {retry_on: [400, 503], targets: [{model: azure-filter}, {model: big, priority: 1}]}
  - name: filtered-listed
    routing: {retry_on: [content_filter], targets: [{model: claude-filter}, {model: big, priority: 1}]}
  - {name: azure-filter-70k, provider_key: mock, model: "f?error=content_filter&error_pad=71680&error_piece=1024&chunk_delay_ms=1"}
  - {name: azure-filter-70k-h2, provider_key: h2, model: "f?error=content_filter&error_pad=71680&error_piece=1024&chunk_delay_ms=1"}
  - {name: azure-filter-70k-whole, provider_key: mock, model: "f?error=content_filter&error_pad=71680"}
  - {name: claude-filter-70k, provider_key: an, model: "c?error=content_filter&error_pad=71680&error_piece=1024&chunk_delay_ms=1"}
  - name: filtered-70k
    routing: {retry_on: [400, 503, context_length_exceeded], targets: [{model: azure-filter-70k}, {model: big, priority: 1}]}
  - name: filtered-70k-h2
    routing: {retry_on: [400, 503], targets: [{model: azure-filter-70k-h2}, {model: big, priority: 1}]}
  - name: filtered-70k-whole
    routing: {retry_on: [400, 503], targets: [{model: azure-filter-70k-whole}, {model: big, priority: 1}]}
  - name: claude-filtered-70k
    routing: {retry_on: [400], targets: [{model: claude-filter-70k}, {model: big, priority: 1}]}
  - name: filtered-70k-listed
    routing: {retry_on: [400, content_filter], targets: [{model: azure-filter-70k}, {model: big, priority: 1}]}
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

/// A chat request that offers a tool and asks for thinking.
fn thinking_chat(model: &str) -> Value {
    json!({"model": model, "reasoning_effort": "low", "messages": [{"role": "user", "content": "Weather in Oslo?"}],
        "tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]})
}

/// The next turn: the assistant's message as the caller got it (thinking blocks and
/// tool calls), then the tool's result.
fn next_turn(first: &Value, assistant: Value) -> Value {
    let mut body = first.clone();
    let call_id = assistant["tool_calls"][0]["id"].clone();
    let msgs = body["messages"].as_array_mut().unwrap();
    msgs.push(assistant);
    msgs.push(json!({"role": "tool", "tool_call_id": call_id, "content": "Sunny, 21 C"}));
    body
}

/// The assistant message a streaming chat caller assembles: content, reasoning, tool
/// calls, and the thinking blocks of every `thinking_blocks` delta.
fn assemble_stream(text: &str) -> (Value, String) {
    let mut reasoning = String::new();
    let mut blocks = Vec::new();
    let mut call = json!({"type": "function", "function": {"arguments": ""}});
    for d in sse_data(text).iter().filter(|d| d.as_str() != "[DONE]") {
        let c: Value = serde_json::from_str(d).unwrap();
        let delta = &c["choices"][0]["delta"];
        if let Some(r) = delta["reasoning_content"].as_str() {
            reasoning.push_str(r);
        }
        blocks.extend(delta["thinking_blocks"].as_array().cloned().unwrap_or_default());
        if let Some(tc) = delta["tool_calls"].get(0) {
            for k in ["id", "type"] {
                if !tc[k].is_null() {
                    call[k] = tc[k].clone();
                }
            }
            if let Some(n) = tc["function"]["name"].as_str() {
                call["function"]["name"] = json!(n);
            }
            let args = call["function"]["arguments"].as_str().unwrap().to_owned()
                + tc["function"]["arguments"].as_str().unwrap_or("");
            call["function"]["arguments"] = json!(args);
        }
    }
    let msg = json!({"role": "assistant", "content": null, "tool_calls": [call], "thinking_blocks": blocks});
    (msg, reasoning)
}

#[tokio::test]
async fn openai_callers_think_on_claude_and_send_the_signed_blocks_back() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    for model in ["claude", "claude-br"] {
        let first = thinking_chat(model);
        let v = chat(&gw, &first).await;
        let sent = sent_body(&mock);
        // low = a 1,024-token budget, with room for it above the default max_tokens.
        let (thinking, max) = if model == "claude" {
            (&sent["thinking"], &sent["max_tokens"])
        } else {
            (
                &sent["additionalModelRequestFields"]["thinking"],
                &sent["inferenceConfig"]["maxTokens"],
            )
        };
        assert_eq!(
            thinking,
            &json!({"type": "enabled", "budget_tokens": 1024}),
            "{model}: {sent}"
        );
        assert_eq!(max, 4096 + 1024, "{model}");
        let msg = v["choices"][0]["message"].clone();
        let reasoning = msg["reasoning_content"].as_str().unwrap();
        assert!(reasoning.contains("Weather in Oslo?"), "{model}: {msg}");
        let block = &msg["thinking_blocks"][0];
        assert_eq!(block["thinking"], reasoning);
        assert!(block["signature"].as_str().unwrap().len() > 20, "{model}: {msg}");
        assert_eq!(msg["tool_calls"][0]["function"]["name"], "weather");

        // Sent back with its signed block, the tool turn goes on.
        let v = chat(&gw, &next_turn(&first, msg.clone())).await;
        assert!(
            v["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .contains("Sunny"),
            "{model}: {v}"
        );
        // Without it, or with its text changed, Claude refuses the turn: the blocks are
        // what it checks, and they arrive unchanged.
        let mut lost = msg.clone();
        lost.as_object_mut().unwrap().remove("thinking_blocks");
        let resp = post(&gw, "/v1/chat/completions", &next_turn(&first, lost)).await;
        assert_eq!(resp.status(), 400, "{model}");
        let mut forged = msg.clone();
        forged["thinking_blocks"][0]["thinking"] = json!("Something else.");
        let resp = post(&gw, "/v1/chat/completions", &next_turn(&first, forged)).await;
        assert_eq!(resp.status(), 400, "{model}");

        // Streamed: reasoning deltas, then the signed block in a delta of its own.
        let mut body = first.clone();
        body["stream"] = json!(true);
        let resp = post(&gw, "/v1/chat/completions", &body).await;
        assert_eq!(resp.status(), 200);
        let (assistant, streamed) = assemble_stream(&resp.text().await.unwrap());
        assert_eq!(streamed, reasoning, "{model}");
        assert_eq!(assistant["thinking_blocks"][0], *block, "{model}");
        let v = chat(&gw, &next_turn(&first, assistant)).await;
        assert!(v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .contains("Sunny"));
    }
}

#[tokio::test]
async fn anthropic_callers_keep_their_thinking_through_converse_and_see_reasoning_text() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    let first = json!({"model": "claude-br", "max_tokens": 4000, "thinking": {"type": "enabled", "budget_tokens": 2000},
        "messages": [{"role": "user", "content": "Weather in Oslo?"}],
        "tools": [{"name": "weather", "input_schema": {"type": "object"}}]});
    for stream in [false, true] {
        let mut body = first.clone();
        body["stream"] = json!(stream);
        let resp = post_messages_as(&gw, CALLER_KEY, &body).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(
            sent_body(&mock)["additionalModelRequestFields"]["thinking"],
            first["thinking"]
        );
        let content: Value = if stream {
            assemble_messages(&resp.text().await.unwrap())
        } else {
            resp.json::<Value>().await.unwrap()["content"].clone()
        };
        assert_eq!(content[0]["type"], "thinking", "{content}");
        assert!(content[0]["signature"].as_str().unwrap().len() > 20, "{content}");
        assert_eq!(content[1]["type"], "tool_use");
        // The whole assistant turn back, with a tool result: Claude takes it.
        let mut next = first.clone();
        let msgs = next["messages"].as_array_mut().unwrap();
        msgs.push(json!({"role": "assistant", "content": content}));
        msgs.push(json!({"role": "user", "content": [{"type": "tool_result", "tool_use_id": content[1]["id"], "content": "Sunny"}]}));
        let resp = post_messages_as(&gw, CALLER_KEY, &next).await;
        assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    }

    // An OpenAI-style reasoning model's text reaches Anthropic callers as a thinking block.
    for stream in [false, true] {
        let body = json!({"model": "reasoner", "max_tokens": 100, "stream": stream,
            "messages": [{"role": "user", "content": "Hi"}]});
        let resp = post_messages_as(&gw, CALLER_KEY, &body).await;
        assert_eq!(resp.status(), 200);
        let content: Value = if stream {
            assemble_messages(&resp.text().await.unwrap())
        } else {
            resp.json::<Value>().await.unwrap()["content"].clone()
        };
        assert_eq!(content[0]["type"], "thinking", "{content}");
        assert_eq!(content[0]["thinking"], "Reasoned in 9 tokens.");
        assert_eq!(content[1]["type"], "text");
    }
}

#[tokio::test]
async fn gemini_thinks_on_a_budget_and_its_thought_summaries_are_reasoning_content() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    let body = json!({"model": "gem", "reasoning_effort": "medium", "messages": [{"role": "user", "content": "Hi"}]});
    let v = chat(&gw, &body).await;
    assert_eq!(
        sent_body(&mock)["generationConfig"]["thinkingConfig"],
        json!({"thinkingBudget": 4096, "includeThoughts": true})
    );
    assert_eq!(v["choices"][0]["message"]["reasoning_content"], "Thinking it over.");
    assert!(!v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .contains("Thinking"));
    assert_eq!(v["usage"]["completion_tokens_details"]["reasoning_tokens"], 2);
    // A bad effort, or no room for the budget, is the caller's error.
    for bad in [
        json!({"model": "gem", "reasoning_effort": "extreme", "messages": [{"role": "user", "content": "Hi"}]}),
        json!({"model": "claude", "reasoning_effort": "high", "max_completion_tokens": 500,
            "messages": [{"role": "user", "content": "Hi"}]}),
    ] {
        let resp = post(&gw, "/v1/chat/completions", &bad).await;
        assert_eq!(resp.status(), 400);
        let e: Value = resp.json().await.unwrap();
        assert!(
            e["error"]["message"].as_str().unwrap().contains("reasoning_effort"),
            "{e}"
        );
    }
}

/// The content blocks an Anthropic streaming client assembles.
fn assemble_messages(text: &str) -> Value {
    let mut blocks: Vec<Value> = Vec::new();
    let mut json_args: Vec<String> = Vec::new();
    for d in sse_data(text) {
        let ev: Value = serde_json::from_str(&d).unwrap();
        let i = ev["index"].as_u64().unwrap_or(0) as usize;
        match ev["type"].as_str().unwrap() {
            "content_block_start" => {
                blocks.push(ev["content_block"].clone());
                json_args.push(String::new());
            }
            "content_block_delta" => {
                let delta = &ev["delta"];
                let b = &mut blocks[i];
                match delta["type"].as_str().unwrap() {
                    "text_delta" => {
                        b["text"] = json!(b["text"].as_str().unwrap().to_owned() + delta["text"].as_str().unwrap())
                    }
                    "thinking_delta" => {
                        b["thinking"] =
                            json!(b["thinking"].as_str().unwrap().to_owned() + delta["thinking"].as_str().unwrap())
                    }
                    "signature_delta" => b["signature"] = delta["signature"].clone(),
                    "input_json_delta" => json_args[i].push_str(delta["partial_json"].as_str().unwrap()),
                    other => panic!("{other}"),
                }
            }
            "content_block_stop" if blocks[i]["type"] == "tool_use" => {
                blocks[i]["input"] = serde_json::from_str(&json_args[i]).unwrap();
            }
            _ => {}
        }
    }
    Value::Array(blocks)
}

#[tokio::test]
async fn error_classes_pick_the_fallback_and_a_refusal_stays_final() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    // Each provider's own "too long" error, read from its body: on to the next target,
    // until the model with the big window answers. Both dialects, JSON and stream.
    for stream in [false, true] {
        let mut body = json!({"model": "long-context", "messages": [{"role": "user", "content": "A long prompt"}]});
        body["stream"] = json!(stream);
        let resp = post(&gw, "/v1/chat/completions", &body).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-aigw-model"], "big");
        let text = resp.text().await.unwrap();
        let answer = if stream { completion_text(&text) } else { text.clone() };
        assert!(answer.contains("Hello from the aigw mock"), "{text}");
    }
    let body =
        json!({"model": "long-context", "max_tokens": 50, "messages": [{"role": "user", "content": "A long prompt"}]});
    let resp = post_messages_as(&gw, CALLER_KEY, &body).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-aigw-model"], "big");
    let line = access_line(&gw, 3);
    // Over HTTP/1.1 and HTTP/2 to the provider alike.
    assert_eq!(
        (line["attempts"].as_u64(), line["model"].as_str()),
        (Some(6), Some("big")),
        "{line}"
    );
    // No target was cooled for it: the next request starts at the first again.
    let m = metrics_text(&gw).await;
    assert!(
        m.contains(
            r#"aigw_upstream_attempts_total{outcome="retryable_status",provider="mock",target="small-openai"} 3"#
        ),
        "{m}"
    );

    // Not listed: the provider's 400 is the answer, in the caller's envelope.
    let resp = post(&gw, "/v1/chat/completions", &chat_body("unlisted")).await;
    assert_eq!(resp.status(), 400);
    let e: Value = resp.json().await.unwrap();
    assert!(
        e["error"]["message"].as_str().unwrap().contains("prompt is too long"),
        "{e}"
    );

    // A content refusal is final although its status (400) is listed...
    let resp = post(&gw, "/v1/chat/completions", &chat_body("filtered")).await;
    assert_eq!(resp.status(), 400);
    let e: Value = resp.json().await.unwrap();
    assert_eq!(e["error"]["code"], "content_filter", "{e}");
    // ...and moves on only where the class is listed.
    let resp = post(&gw, "/v1/chat/completions", &chat_body("filtered-listed")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-aigw-model"], "big");
}

/// A refusal longer than the 64 KiB the gateway reads to find an error's class (a
/// provider quoting a long flagged prompt back, written as it goes in 1 KiB pieces) cannot
/// be classified, and may be a refusal: it stays final although its status is listed,
/// over HTTP/1.1 and HTTP/2 to the provider, in both callers' dialects, and reaches the
/// caller whole. (The same refusal in one write arrives whole within the read that
/// passes 64 KiB, and is read as the refusal it is.)
#[tokio::test]
async fn a_refusal_too_long_to_read_stays_final() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    for alias in [
        "filtered-70k",
        "filtered-70k-h2",
        "claude-filtered-70k",
        "filtered-70k-whole",
    ] {
        let resp = post(&gw, "/v1/chat/completions", &chat_body(alias)).await;
        assert_eq!(resp.status(), 400, "{alias}");
        let e: Value = resp.json().await.unwrap();
        let message = e["error"]["message"].as_str().unwrap();
        assert!(message.len() > 70 * 1024, "{alias}: the refusal arrived whole");
        assert!(message.contains("content") && message.ends_with("xxx"), "{alias}");
    }
    let body =
        json!({"model": "claude-filtered-70k", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]});
    let resp = post_messages_as(&gw, CALLER_KEY, &body).await;
    assert_eq!(resp.status(), 400);
    let e: Value = resp.json().await.unwrap();
    assert!(e["error"]["message"].as_str().unwrap().len() > 70 * 1024, "whole");
    let m = metrics_text(&gw).await;
    assert!(!m.contains(r#"target="big""#), "no refusal moved on: {m}");
    // Where refusals may move on, so may one that cannot be read: its status decides.
    let resp = post(&gw, "/v1/chat/completions", &chat_body("filtered-70k-listed")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-aigw-model"], "big");
}

#[test]
fn prices_and_error_classes_are_checked_when_the_config_loads() {
    let config = r#"
version: 1
provider_keys:
  - {name: mock, provider: openai_compatible, base_url: "http://127.0.0.1:9/v1"}
models:
  - {name: a, provider_key: mock, pricing: {input_per_mtok: 1, cached_input_per_mtok: -1}}
  - {name: b, provider_key: mock, pricing: {input_per_mtok: 1, cache_write_per_mtok: .nan}}
  - name: c
    routing: {retry_on: [context_length, 700, content_filter], targets: [{model: a}, {model: b}]}
"#;
    assert_config_errors(
        config,
        &[
            "models[0].pricing: prices must be zero or positive numbers",
            "models[1].pricing: prices must be zero or positive numbers",
            "models[2].routing.retry_on[0]: 'context_length' is neither an HTTP status nor an error class (context_length_exceeded, content_filter, request_too_large)",
            "models[2].routing.retry_on[1]: must be an HTTP error status (400-599)",
        ],
        "no secret here",
    );
}
