//! Charges cannot be dodged: a streaming caller that hangs up after the last content
//! event, before the usage the gateway asked for arrives, is still charged (an estimate,
//! marked as such); a stream that ends without its end marker is not a clean finish.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};

const CONFIG: &str = r#"
{SERVER}
  admin_keys: [{key: adm-charges}]
provider_keys:
  - {name: mock, provider: openai_compatible, base_url: "{MOCK}/v1", api_key: "{PROVIDER_KEY}"}
  - {name: an, provider: anthropic, base_url: "{MOCK}", api_key: "{PROVIDER_KEY}"}
  - name: br
    provider: bedrock
    base_url: "{MOCK}"
    aws: {region: us-east-1, access_key_id: AKIDAIGWTEST, secret_access_key: "{PROVIDER_KEY}"}
budgets:
  - {name: team, usd: 100, period: day}
models:
  - name: paced
    provider_key: mock
    model: "x?words=12&chunk_delay_ms=60"
    pricing: {input_per_mtok: 1000, output_per_mtok: 1000}
  - name: claude-paced
    provider_key: an
    model: "c?words=12&chunk_delay_ms=60"
    pricing: {input_per_mtok: 1000, output_per_mtok: 1000}
  - name: bedrock-paced
    provider_key: br
    model: "x?words=12&chunk_delay_ms=60"
    pricing: {input_per_mtok: 1000, output_per_mtok: 1000}
  - {name: no-done, provider_key: mock, model: "x?no_done"}
  - {name: uncounted, provider_key: mock, model: "x?no_usage", pricing: {input_per_mtok: 1000, output_per_mtok: 1000}}
  - {name: claude-uncounted, provider_key: an, model: "c?no_usage", pricing: {input_per_mtok: 1000, output_per_mtok: 1000}}
  - {name: claude-no-done, provider_key: an, model: "c?no_done"}
api_keys:
  - {name: main, key: "{CALLER_KEY}", owner: team-a, budget: team}
"#;

/// Streams `body` and hangs up as soon as an event satisfying `last` arrives.
async fn hang_up_after(gw: &Gateway, path: &str, body: &Value, last: impl Fn(&str) -> bool) -> usize {
    let mut req = client().post(format!("{}{path}", gw.url())).json(body);
    req = if path == "/v1/messages" {
        req.header("x-api-key", CALLER_KEY)
    } else {
        req.bearer_auth(CALLER_KEY)
    };
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut seen = String::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        seen.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        if sse_data(&seen).iter().any(|d| last(d)) {
            break;
        }
    }
    // Dropping the stream closes the connection before the usage arrives.
    seen.len()
}

#[tokio::test]
async fn a_caller_who_hangs_up_before_the_usage_is_charged_an_estimate() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    let chat = json!({"model": "paced", "stream": true, "messages": [{"role": "user", "content": "hello"}]});
    hang_up_after(&gw, "/v1/chat/completions", &chat, |d| {
        serde_json::from_str::<Value>(d).is_ok_and(|v| v["choices"][0]["finish_reason"] == "stop")
    })
    .await;
    let msgs = json!({"model": "claude-paced", "max_tokens": 100, "stream": true, "messages": [{"role": "user", "content": "hello"}]});
    hang_up_after(&gw, "/v1/messages", &msgs, |d| d.contains("content_block_stop")).await;

    let series = |model: &str| format!("aigw_usage_estimated_total{{model=\"{model}\"}}");
    assert!(
        wait_until_async(|| async {
            metric(&gw, &series("paced")).await == 1.0 && metric(&gw, &series("claude-paced")).await == 1.0
        })
        .await,
        "{}",
        metrics_text(&gw).await
    );
    for model in ["paced", "claude-paced"] {
        let out = metric(
            &gw,
            &format!("aigw_tokens_total{{model=\"{model}\",owner=\"team-a\",type=\"output\"}}"),
        )
        .await;
        assert!(out >= 12.0, "{model}: 12 words streamed, {out} output tokens charged");
    }
    // Anthropic reported the input in message_start: that count is kept.
    let spent = spend_of(&gw, "adm-charges", "team-a").await;
    assert!(
        spent["spent_usd"].as_f64().unwrap() > 0.0,
        "the budget was charged: {spent}"
    );
    let lines = gw.access_lines_until(2, |l| l.contains("\"usage_estimated\":true"));
    assert_eq!(
        lines.iter().filter(|l| l.contains("\"usage_estimated\":true")).count(),
        2,
        "{lines:?}"
    );
    // The upstream was cancelled: nothing keeps running for the caller who left.
    assert!(wait_until(5, || mock.stats()["cancelled_streams"].as_u64() >= Some(2)));
}

/// Bedrock sends the usage in a `metadata` event after `messageStop`: a caller who hangs
/// up once the text is in (translated from AWS's event stream) is charged the estimate.
/// (A hang-up between `messageStop` and `metadata` is estimated too: the translator is
/// complete only with the metadata, `stream::translate` unit tests.)
#[tokio::test]
async fn a_bedrock_caller_who_hangs_up_before_the_metadata_is_charged_an_estimate() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    let chat = json!({"model": "bedrock-paced", "stream": true, "messages": [{"role": "user", "content": "hello"}]});
    // The twelfth and last word ("aigw", without the space the others carry).
    hang_up_after(&gw, "/v1/chat/completions", &chat, |d| {
        d.contains(r#""content":"aigw""#)
    })
    .await;
    let series = r#"aigw_usage_estimated_total{model="bedrock-paced"}"#;
    assert!(
        wait_until_async(|| async { metric(&gw, series).await == 1.0 }).await,
        "{}",
        metrics_text(&gw).await
    );
    let out = metric(
        &gw,
        r#"aigw_tokens_total{model="bedrock-paced",owner="team-a",type="output"}"#,
    )
    .await;
    assert!(out >= 12.0, "12 words streamed, {out} output tokens charged");
}

#[tokio::test]
async fn a_stream_without_its_end_marker_ends_with_an_error_event() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    let chat = json!({"model": "no-done", "stream": true, "messages": [{"role": "user", "content": "hello"}]});
    let r = post(&gw, "/v1/chat/completions", &chat).await;
    assert_eq!(r.status(), 200);
    let body = r.text().await.unwrap();
    let data = sse_data(&body);
    assert!(!data.iter().any(|d| d == "[DONE]"), "{body}");
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "upstream_error", "{body}");
    let msgs = json!({"model": "claude-no-done", "max_tokens": 100, "stream": true, "messages": [{"role": "user", "content": "hello"}]});
    let r = post_messages_as(&gw, CALLER_KEY, &msgs).await;
    let body = r.text().await.unwrap();
    assert!(
        body.contains("event: error") && !body.contains("message_stop"),
        "{body}"
    );
    // The usage came before the missing end marker: it is the provider's own count, not
    // an estimate; the request is logged as the broken stream it was.
    let lines = gw.access_lines_until(1, |l| l.contains("\"alias\":\"no-done\""));
    let line: Value =
        serde_json::from_str(lines.iter().find(|l| l.contains("\"alias\":\"no-done\"")).unwrap()).unwrap();
    assert_eq!(line["error"], "upstream_error", "{line}");
    assert_eq!(line["usage_estimated"], false, "{line}");
    assert!(line["output_tokens"].as_u64().unwrap() > 0, "{line}");
}

/// Models whose provider writes one odd field into its usage report, each provider's
/// shape in turn (`usage=PATH:JSON` in the mock's script), priced so a charge shows.
const ODD_USAGE: &str = r#"
  - {name: odd-detail, provider_key: mock, model: 'x?usage=prompt_tokens_details.cached_tokens:-1&usage=completion_tokens_details.reasoning_tokens:"0"', pricing: {input_per_mtok: 1, output_per_mtok: 1}}
  - {name: odd-float, provider_key: mock, model: 'x?usage=completion_tokens_details.reasoning_tokens:0.0&usage=prompt_tokens_details.cached_tokens:1.5', pricing: {input_per_mtok: 1, output_per_mtok: 1}}
  - {name: odd-prompt, provider_key: mock, model: 'x?usage=prompt_tokens:"12"', pricing: {input_per_mtok: 1, output_per_mtok: 1}}
  - {name: odd-responses, provider_key: mock, model: 'x?usage=input_tokens_details.cached_tokens:-1&usage=output_tokens:"3"', pricing: {input_per_mtok: 1, output_per_mtok: 1}}
  - {name: claude-odd, provider_key: an, model: 'c?usage=cache_read_input_tokens:-1', pricing: {input_per_mtok: 1, output_per_mtok: 1}}
  - {name: claude-odd-out, provider_key: an, model: 'c?usage=output_tokens:0.5', pricing: {input_per_mtok: 1, output_per_mtok: 1}}
  - {name: claude-huge, provider_key: an, model: 'c?usage=input_tokens:18446744073709551615&usage=cache_creation_input_tokens:18446744073709551615'}
  - {name: gemini-odd, provider_key: gm, model: 'g?usage=cachedContentTokenCount:"0"&usage=candidatesTokenCount:-1', pricing: {input_per_mtok: 1, output_per_mtok: 1}}
  - {name: bedrock-odd, provider_key: br, model: 'x?usage=cacheReadInputTokens:-1', pricing: {input_per_mtok: 1, output_per_mtok: 1}}
api_keys:"#;

/// One odd field in a provider's usage report (`cached_tokens: -1`, `reasoning_tokens:
/// "0"`, a count as a string or a fraction) costs only itself: a detail counts as none,
/// a whole count that cannot be read is charged its estimate (and the line says so), and
/// the request is never free. Huge counts saturate instead of wrapping (or panicking).
/// Every provider's shape, JSON and streamed, passed through and translated.
#[tokio::test]
async fn odd_usage_fields_never_make_a_request_free() {
    let mock = Mock::start();
    let config = CONFIG.replace("api_keys:", ODD_USAGE).replace(
        "budgets:",
        "  - {name: gm, provider: gemini, base_url: \"{MOCK}\", api_key: \"{PROVIDER_KEY}\"}\nbudgets:",
    );
    let gw = Gateway::start(&config, &mock);
    let (chat, messages, responses) = ("/v1/chat/completions", "/v1/messages", "/v1/responses");
    // (alias, endpoint, stream, charged an estimate)
    let cases = [
        ("odd-detail", chat, false, false),
        ("odd-detail", chat, true, false),
        ("odd-detail", messages, false, false),
        ("odd-float", chat, false, false),
        ("odd-prompt", chat, false, true),
        ("odd-prompt", chat, true, true),
        ("odd-responses", responses, false, true),
        ("odd-responses", responses, true, true),
        ("claude-odd", messages, false, true),
        ("claude-odd", messages, true, true),
        ("claude-odd", chat, false, true),
        ("claude-odd", chat, true, true),
        ("claude-odd-out", messages, true, true),
        ("claude-odd-out", chat, false, true),
        ("gemini-odd", chat, false, true),
        ("gemini-odd", chat, true, true),
        ("bedrock-odd", chat, false, true),
        ("bedrock-odd", messages, true, true),
        ("claude-huge", messages, false, false),
    ];
    for (i, (alias, path, stream, _)) in cases.iter().enumerate() {
        let body = if *path == responses {
            json!({"model": alias, "input": "hello there", "stream": stream})
        } else {
            json!({"model": alias, "max_tokens": 50, "stream": stream,
                "messages": [{"role": "user", "content": "hello there"}]})
        };
        let resp = client()
            .post(format!("{}{path}", gw.url()))
            .bearer_auth(CALLER_KEY)
            .header("x-request-id", format!("odd-{i}"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{alias} {path} stream={stream}");
        let text = resp.text().await.unwrap();
        assert!(!text.contains("\"error\""), "{alias} {path} stream={stream}: {text}");
    }
    let lines = gw.access_lines_until(cases.len(), |_| true);
    for (i, (alias, path, stream, estimated)) in cases.iter().enumerate() {
        let line: Value = lines
            .iter()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .find(|l| l["request_id"] == format!("odd-{i}"))
            .unwrap_or_else(|| panic!("no line for {alias} {path} stream={stream}: {lines:#?}"));
        let case = format!("{alias} {path} stream={stream}: {line}");
        let (input, output) = (
            line["input_tokens"].as_u64().unwrap(),
            line["output_tokens"].as_u64().unwrap(),
        );
        assert!(input > 0 && output > 0, "{case}");
        assert_eq!(line["usage_estimated"], *estimated, "{case}");
        if *alias == "claude-huge" {
            assert_eq!(input, u64::MAX, "{case}");
        } else {
            assert!(line["cost_usd"].as_f64().unwrap() > 0.0, "{case}");
        }
    }
}

/// A JSON answer with no usage at all (some OpenAI-compatible servers never send one) is
/// charged an estimate, marked as such, passed through or translated: a provider that
/// reports nothing cannot make its callers' requests free of their budget.
#[tokio::test]
async fn a_json_answer_without_usage_is_charged_an_estimate() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    for (i, (alias, path)) in [
        ("uncounted", "/v1/chat/completions"),
        ("uncounted", "/v1/messages"),
        ("claude-uncounted", "/v1/messages"),
        ("claude-uncounted", "/v1/chat/completions"),
    ]
    .iter()
    .enumerate()
    {
        let resp = client()
            .post(format!("{}{path}", gw.url()))
            .bearer_auth(CALLER_KEY)
            .header("x-request-id", format!("uncounted-{i}"))
            .json(&json!({"model": alias, "max_tokens": 50,
                "messages": [{"role": "user", "content": "hello there"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{alias} {path}");
        let lines = gw.access_lines_until(1, |l| l.contains(&format!("\"uncounted-{i}\"")));
        let line: Value = lines
            .iter()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .find(|l| l["request_id"] == format!("uncounted-{i}"))
            .unwrap();
        assert_eq!(line["usage_estimated"], true, "{alias} {path}: {line}");
        assert!(line["input_tokens"].as_u64().unwrap() > 0, "{line}");
        assert!(line["output_tokens"].as_u64().unwrap() > 0, "{line}");
        assert!(line["cost_usd"].as_f64().unwrap() > 0.0, "{line}");
    }
}
