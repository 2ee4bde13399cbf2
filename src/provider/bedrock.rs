//! AWS Bedrock: the `bedrock` provider, through the Converse API (`POST
//! /model/{modelId}/converse`, and `/converse-stream`, whose answer is the AWS binary
//! event stream), signed with SigV4 (service `bedrock`). Converse is one format for every
//! model family on Bedrock (Claude, Llama, Mistral, Nova, ...).
//!
//! OpenAI chat is the hub, as for Gemini: an Anthropic caller's request reaches Bedrock as
//! Messages -> chat -> Converse and its answer comes back Converse -> chat -> Messages.
//! Streams are decoded frame by frame (`aws-smithy-eventstream`) in `stream/`, each
//! message handed to [`BedrockToChat`] as `{"<event type>": payload}`, the shape of the
//! ConverseStream output union.

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use percent_encoding::utf8_percent_encode;
use pingora::http::RequestHeader;
use serde_json::{json, Map, Value};

use super::anthropic::add_thinking;
use super::{
    bad, cache_mark, content_text, has_cache_mark, image_of, marked_text_parts, push_turn, thinking_ask,
    thinking_blocks, Image, UNRESERVED,
};
use super::{Provider, Target};
use crate::api::Dialect;
use crate::error::GwError;
use crate::provider::ErrorClass;
use crate::raw::AwsSettings;
use crate::stream::translate::{fail, parse_event, Chunks, Thinking};
use crate::stream::Translate;
use crate::usage::{Count, Usage, Whole};

/// The SigV4 service name of Bedrock's runtime API.
const SERVICE: &str = "bedrock";

/// A `bedrock` provider's region and credentials (never in `Debug` output: the
/// credential type redacts its secret and token).
#[derive(Debug)]
pub struct Aws {
    pub region: String,
    pub credentials: Credentials,
}

/// Region and credentials: each field from the `aws` section (optional), else from the
/// standard variable (`AWS_REGION` or `AWS_DEFAULT_REGION`, `AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`). Each problem goes to `error` with the
/// field it concerns; `None` after any.
pub fn compile(
    section: Option<&AwsSettings>,
    env: &dyn Fn(&str) -> Option<String>,
    error: &mut dyn FnMut(&str, &str),
) -> Option<Aws> {
    let empty = AwsSettings::default();
    let a = section.unwrap_or(&empty);
    let pick = |given: &Option<String>, vars: &[&str]| {
        given
            .clone()
            .or_else(|| vars.iter().find_map(|v| env(v)))
            .filter(|s| !s.is_empty())
    };
    let region = pick(&a.region, &["AWS_REGION", "AWS_DEFAULT_REGION"]);
    let key_id = pick(&a.access_key_id, &["AWS_ACCESS_KEY_ID"]);
    let secret = pick(&a.secret_access_key, &["AWS_SECRET_ACCESS_KEY"]);
    let token = pick(&a.session_token, &["AWS_SESSION_TOKEN"]);
    let region = match region {
        Some(r) if r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') => Some(r),
        Some(_) => {
            error("region", "must be a region such as us-east-1");
            None
        }
        None => {
            error("region", "required (or AWS_REGION)");
            None
        }
    };
    if key_id.is_none() {
        error("access_key_id", "required (or AWS_ACCESS_KEY_ID)");
    }
    if secret.is_none() {
        error("secret_access_key", "required (or AWS_SECRET_ACCESS_KEY)");
    }
    Some(Aws {
        region: region?,
        credentials: Credentials::new(key_id?, secret?, token, None, "aigw-config"),
    })
}

/// `https://bedrock-runtime.{region}.amazonaws.com`.
pub fn default_base_url(region: &str) -> String {
    format!("https://bedrock-runtime.{region}.amazonaws.com")
}

/// Path of the upstream request: the model id, inference profile id or ARN as one
/// percent-encoded segment, as AWS SDKs send it.
pub fn upstream_path(t: &Target, stream: bool) -> String {
    let model = utf8_percent_encode(&t.upstream_model, UNRESERVED);
    let method = if stream { "converse-stream" } else { "converse" };
    format!("{}/model/{model}/{method}", t.provider.base.path)
}

/// Signs the upstream request (its path, host, content type and body) with SigV4 and
/// sets the provider's extra headers. Called last, once the request header is final.
pub fn sign_request(p: &Provider, req: &mut RequestHeader, body: &[u8]) -> pingora::Result<()> {
    for (name, value) in &p.headers {
        req.insert_header(name.clone(), value.clone())?;
    }
    let Some(aws) = &p.aws else {
        return Err(pingora::Error::explain(
            pingora::ErrorType::InternalError,
            "no AWS credentials",
        ));
    };
    let scheme = if p.base.tls { "https" } else { "http" };
    let uri = format!(
        "{scheme}://{}{}",
        p.base.authority,
        req.uri.path_and_query().map_or("/", |pq| pq.as_str())
    );
    let content_type = req
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_owned();
    // Signed, so it must be sent as signed, even when the caller sent none.
    req.insert_header(http::header::CONTENT_TYPE, content_type.as_str())?;
    let headers = [
        ("host", p.base.authority.as_str()),
        ("content-type", content_type.as_str()),
    ];
    let signed = sign_headers(aws, &uri, &headers, body)
        .map_err(|e| pingora::Error::explain(pingora::ErrorType::InternalError, e))?;
    for (name, value) in signed {
        req.insert_header(name, value)?;
    }
    Ok(())
}

/// The SigV4 headers (`authorization`, `x-amz-date`, a session's token) of a POST of
/// `body` to `uri` with `headers` (which must name the host), for Bedrock's runtime
/// API; the credential-bearing ones marked sensitive.
pub fn sign_headers(
    aws: &Aws,
    uri: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Vec<(String, http::HeaderValue)>, String> {
    let identity = aws.credentials.clone().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(&aws.region)
        .name(SERVICE)
        .time(SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| format!("SigV4: {e}"))?
        .into();
    let signable = SignableRequest::new("POST", uri, headers.iter().copied(), SignableBody::Bytes(body))
        .map_err(|e| format!("SigV4: {e}"))?;
    let (instructions, _) = sign(signable, &params).map_err(|e| format!("SigV4: {e}"))?.into_parts();
    let mut out = Vec::new();
    for (name, value) in instructions.headers() {
        let mut v = http::HeaderValue::from_str(value).map_err(|_| "SigV4 header".to_owned())?;
        if name.eq_ignore_ascii_case("authorization") || name.eq_ignore_ascii_case("x-amz-security-token") {
            v.set_sensitive(true);
        }
        out.push((name.to_owned(), v));
    }
    Ok(out)
}

/// An OpenAI image part -> a Converse image block. Bedrock does not fetch URLs, so only
/// base64 data URLs are taken.
fn image_block(p: &Value, i: usize) -> Result<Value, GwError> {
    let Image::Base64 { media_type, data } = image_of(p).map_err(|e| bad(format!("messages[{i}]: {e}")))? else {
        return Err(bad(format!(
            "messages[{i}]: Bedrock takes images as base64 data URLs only"
        )));
    };
    let format = match media_type {
        "image/png" => "png",
        "image/jpeg" | "image/jpg" => "jpeg",
        "image/gif" => "gif",
        "image/webp" => "webp",
        other => return Err(bad(format!("messages[{i}]: Bedrock does not take {other} images"))),
    };
    Ok(json!({"image": {"format": format, "source": {"bytes": data}}}))
}

/// Converse's prompt-cache breakpoint: caches everything before it.
fn cache_point() -> Value {
    json!({"cachePoint": {"type": "default"}})
}

/// The content blocks of a chat message's `content` (a string or a list of parts), with a
/// `cachePoint` after each part that carries a `cache_control` breakpoint.
fn content_blocks(content: &Value, i: usize) -> Result<Vec<Value>, GwError> {
    match content {
        Value::Null => Ok(Vec::new()),
        Value::String(s) if s.is_empty() => Ok(Vec::new()),
        Value::String(s) => Ok(vec![json!({"text": s})]),
        Value::Array(parts) => {
            let mut blocks = Vec::with_capacity(parts.len());
            for p in parts {
                match p["type"].as_str() {
                    Some("text") if p["text"].as_str() == Some("") => continue,
                    Some("text") => blocks.push(json!({"text": p["text"].as_str().unwrap_or_default()})),
                    Some("image_url") => blocks.push(image_block(p, i)?),
                    other => {
                        return Err(bad(format!(
                            "messages[{i}]: content part type {} is not supported by Bedrock",
                            other.unwrap_or("(none)")
                        )))
                    }
                }
                if cache_mark(p).is_some() {
                    blocks.push(cache_point());
                }
            }
            Ok(blocks)
        }
        _ => Err(bad(format!(
            "messages[{i}].content must be a string or a list of parts"
        ))),
    }
}

/// OpenAI chat request -> Converse request (the model is in the path).
pub fn chat_request_to_converse(req: &Value, _model: &str) -> Result<Value, GwError> {
    if req["n"].as_u64().is_some_and(|n| n > 1) {
        return Err(bad("n > 1 is not supported by Bedrock"));
    }
    match req["response_format"]["type"].as_str() {
        None | Some("text") => {}
        Some(other) => return Err(bad(format!("response_format {other} is not supported by Bedrock"))),
    }
    let msgs = req["messages"]
        .as_array()
        .ok_or_else(|| bad("messages must be a list"))?;
    let mut system = Vec::new();
    let mut turns: Vec<Value> = Vec::new();
    for (i, m) in msgs.iter().enumerate() {
        match m["role"].as_str() {
            Some("system" | "developer") if has_cache_mark(&m["content"]) => {
                for part in marked_text_parts(&m["content"]) {
                    system.push(json!({"text": part["text"]}));
                    if cache_mark(&part).is_some() {
                        system.push(cache_point());
                    }
                }
            }
            Some("system" | "developer") => {
                let t = content_text(&m["content"]);
                if !t.is_empty() {
                    system.push(json!({"text": t}));
                }
            }
            Some("user") => push_turn(&mut turns, "user", "content", content_blocks(&m["content"], i)?),
            Some("assistant") => {
                // Signed reasoning goes back first, unchanged, as Claude requires.
                let mut blocks: Vec<Value> = thinking_blocks(m, i)?.iter().map(reasoning_block).collect();
                blocks.extend(content_blocks(&m["content"], i)?);
                for call in m["tool_calls"].as_array().map(Vec::as_slice).unwrap_or_default() {
                    let args = call["function"]["arguments"].as_str().unwrap_or("{}");
                    let input: Value = if args.trim().is_empty() {
                        json!({})
                    } else {
                        serde_json::from_str(args)
                            .map_err(|_| bad(format!("messages[{i}]: tool call arguments must be JSON")))?
                    };
                    blocks.push(
                        json!({"toolUse": {"toolUseId": call["id"], "name": call["function"]["name"], "input": input}}),
                    );
                }
                push_turn(&mut turns, "assistant", "content", blocks);
            }
            Some("tool") => {
                let id = m["tool_call_id"]
                    .as_str()
                    .ok_or_else(|| bad(format!("messages[{i}]: a tool message needs tool_call_id")))?;
                let mut blocks =
                    vec![json!({"toolResult": {"toolUseId": id, "content": [{"text": content_text(&m["content"])}]}})];
                if has_cache_mark(&m["content"]) {
                    blocks.push(cache_point());
                }
                push_turn(&mut turns, "user", "content", blocks);
            }
            other => {
                return Err(bad(format!(
                    "messages[{i}]: role {} is not supported",
                    other.unwrap_or("(none)")
                )))
            }
        }
    }
    let mut out = Map::new();
    out.insert("messages".into(), Value::Array(turns));
    if !system.is_empty() {
        out.insert("system".into(), Value::Array(system));
    }
    let mut cfg = Map::new();
    // Thinking is a Claude field Converse passes on as it is.
    let max = match thinking_ask(req, super::anthropic::DEFAULT_MAX_TOKENS)? {
        Some(ask) => {
            out.insert("additionalModelRequestFields".into(), json!({"thinking": ask.thinking}));
            Some(ask.max_tokens)
        }
        None => req["max_completion_tokens"].as_u64().or(req["max_tokens"].as_u64()),
    };
    if let Some(n) = max {
        cfg.insert("maxTokens".into(), json!(n));
    }
    for (from, to) in [("temperature", "temperature"), ("top_p", "topP")] {
        if req[from].is_number() {
            cfg.insert(to.into(), req[from].clone());
        }
    }
    match &req["stop"] {
        Value::String(s) => {
            cfg.insert("stopSequences".into(), json!([s]));
        }
        Value::Array(a) if !a.is_empty() => {
            cfg.insert("stopSequences".into(), Value::Array(a.clone()));
        }
        _ => {}
    }
    if !cfg.is_empty() {
        out.insert("inferenceConfig".into(), Value::Object(cfg));
    }
    if let Some(tools) = req["tools"].as_array().filter(|t| !t.is_empty()) {
        let choice = match &req["tool_choice"] {
            Value::Null => Some(json!({"auto": {}})),
            Value::String(s) if s == "auto" => Some(json!({"auto": {}})),
            Value::String(s) if s == "required" => Some(json!({"any": {}})),
            // Converse has no "none": the tools are left out.
            Value::String(s) if s == "none" => None,
            v if v["function"]["name"].is_string() => Some(json!({"tool": {"name": v["function"]["name"]}})),
            _ => return Err(bad("tool_choice must be auto, none, required or a function")),
        };
        if let Some(choice) = choice {
            let mut specs = Vec::with_capacity(tools.len());
            for t in tools {
                if t["type"] != "function" {
                    return Err(bad("only function tools are supported by Bedrock"));
                }
                let f = &t["function"];
                let mut spec = json!({"name": f["name"], "inputSchema": {"json":
                    if f["parameters"].is_null() { json!({"type": "object"}) } else { f["parameters"].clone() }}});
                if let Some(d) = f["description"].as_str() {
                    spec["description"] = json!(d);
                }
                specs.push(json!({"toolSpec": spec}));
                if cache_mark(t).is_some() {
                    specs.push(cache_point());
                }
            }
            out.insert("toolConfig".into(), json!({"tools": specs, "toolChoice": choice}));
        }
    }
    Ok(Value::Object(out))
}

/// Converse `stopReason` -> chat `finish_reason`.
pub fn finish_reason(reason: &str) -> &'static str {
    match reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "guardrail_intervened" | "content_filtered" => "content_filter",
        _ => "stop",
    }
}

/// Converse `usage`: prompt tokens include cache reads and writes, as OpenAI counts them.
pub fn usage(u: &Value) -> Usage {
    if !u.is_object() && !u.is_null() {
        return Usage::unreadable();
    }
    let n = |k: &str| Count::of(u, k);
    let (read, write) = (n("cacheReadInputTokens"), n("cacheWriteInputTokens"));
    Usage::from_parts(
        Whole::of(&[n("inputTokens"), read, write]),
        Whole::of(&[n("outputTokens")]),
        read,
        write,
        Count::Absent,
    )
}

/// A Converse `reasoningContent` as a chat `thinking_blocks` entry (Anthropic's shape).
fn thinking_block(r: &Value) -> Option<Value> {
    if let Some(data) = r["redactedContent"].as_str() {
        return Some(json!({"type": "redacted_thinking", "data": data}));
    }
    let t = &r["reasoningText"];
    Some(
        json!({"type": "thinking", "thinking": t["text"].as_str()?, "signature": t["signature"].as_str().unwrap_or_default()}),
    )
}

/// A chat `thinking_blocks` entry as Converse `reasoningContent`.
fn reasoning_block(b: &Value) -> Value {
    match b["type"].as_str() {
        Some("redacted_thinking") => json!({"reasoningContent": {"redactedContent": b["data"]}}),
        _ => json!({"reasoningContent": {"reasoningText": {"text": b["thinking"], "signature": b["signature"]}}}),
    }
}

/// A chat completion id for an answer that has none (Converse names none).
pub fn completion_id() -> String {
    format!("chatcmpl-{}", uuid::Uuid::new_v4().simple())
}

/// Converse response -> OpenAI chat completion.
pub fn response_to_chat(v: &Value, created: i64, model: &str) -> Value {
    let blocks = v["output"]["message"]["content"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut text = String::new();
    let mut calls = Vec::new();
    let mut reasoning = String::new();
    let mut thinking = Vec::new();
    for b in blocks {
        if let Some(t) = b["text"].as_str() {
            text.push_str(t);
        } else if let Some(u) = b.get("toolUse") {
            calls.push(json!({"id": u["toolUseId"], "type": "function",
                "function": {"name": u["name"], "arguments": u["input"].to_string()}}));
        } else if let Some(r) = b.get("reasoningContent") {
            if let Some(t) = r["reasoningText"]["text"].as_str() {
                reasoning.push_str(t);
            }
            thinking.extend(thinking_block(r));
        }
    }
    let mut message = json!({"role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { json!(text) }});
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    add_thinking(&mut message, reasoning, thinking);
    let u = usage(&v["usage"]);
    json!({
        "id": completion_id(), "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": null,
            "finish_reason": finish_reason(v["stopReason"].as_str().unwrap_or("end_turn"))}],
        "usage": u.to_chat(),
    })
}

/// The class of a Bedrock error (its `message`, lowercased): a `ValidationException`
/// saying "input is too long for requested model", "too many input tokens" or, from
/// Claude, "prompt is too long". Guardrails and model refusals come back as 200 answers
/// (`guardrail_intervened`, `content_filtered`), so no error is `content_filter`. Its 429
/// `ThrottlingException` ("Too many tokens, please wait before trying again") does not
/// say whose request used the tokens up, so it has no class.
pub fn error_class(message: &str) -> Option<ErrorClass> {
    [
        "input is too long",
        "too many input tokens",
        "prompt is too long",
        "context window",
    ]
    .iter()
    .any(|m| message.contains(m))
    .then_some(ErrorClass::ContextLengthExceeded)
}

// ---- Streams ----

/// Bedrock ConverseStream events (each `{"<event type>": payload}`, decoded from AWS's
/// event stream in `SseState`) -> OpenAI `chat.completion.chunk`s. A stream ends cleanly
/// after `messageStop`; its usage comes in the `metadata` event that follows, and only
/// that event makes it [`Translate::complete`]: a caller who hangs up between the two is
/// charged the estimate, not the zero counted so far. An exception message ends the
/// stream with an error event.
#[derive(Debug, Default)]
pub struct BedrockToChat {
    chunks: Chunks,
    thinking: Thinking,
    started: bool,
    /// Tool calls so far, and which content block each one is.
    calls: Vec<u64>,
    reason: Option<String>,
    usage: Usage,
    /// The `metadata` event (the final usage) arrived.
    metered: bool,
    ended: bool,
}

impl BedrockToChat {
    pub fn new(include_usage: bool, created: i64, model: &str) -> Self {
        Self {
            chunks: Chunks {
                include_usage,
                created,
                id: json!(completion_id()),
                model: json!(model),
            },
            ..Self::default()
        }
    }

    fn start(&mut self, out: &mut Vec<u8>) {
        if !self.started {
            self.started = true;
            self.chunks.send(out, json!({"role": "assistant", "content": ""}), None);
        }
    }
}

impl Translate for BedrockToChat {
    fn event(&mut self, data: &[u8], out: &mut Vec<u8>) {
        if self.ended {
            return;
        }
        let Some(ev) = parse_event(data, Dialect::OpenAi, out) else {
            self.ended = true;
            return;
        };
        if let Some(e) = ev.get("exception") {
            self.ended = true;
            let msg = e["message"]
                .as_str()
                .unwrap_or("The provider reported an error mid-stream.");
            return fail(out, Dialect::OpenAi, msg);
        }
        if ev.get("messageStart").is_some() {
            self.start(out);
        } else if let Some(b) = ev.get("contentBlockStart") {
            if let Some(u) = b["start"].get("toolUse") {
                self.start(out);
                let block = b["contentBlockIndex"].as_u64().unwrap_or(0);
                let call = json!({"index": self.calls.len(), "id": u["toolUseId"], "type": "function",
                    "function": {"name": u["name"], "arguments": ""}});
                self.calls.push(block);
                self.chunks.send(out, json!({"tool_calls": [call]}), None);
            }
        } else if let Some(d) = ev.get("contentBlockDelta") {
            self.start(out);
            let block = d["contentBlockIndex"].as_u64().unwrap_or(0);
            if let Some(t) = d["delta"]["text"].as_str() {
                if !t.is_empty() {
                    self.chunks.send(out, json!({"content": t}), None);
                }
            } else if let Some(args) = d["delta"]["toolUse"]["input"].as_str() {
                if let Some(index) = self.calls.iter().position(|&b| b == block) {
                    self.chunks.send(
                        out,
                        json!({"tool_calls": [{"index": index, "function": {"arguments": args}}]}),
                        None,
                    );
                }
            } else if let Some(r) = d["delta"].get("reasoningContent") {
                if let Some(t) = r["text"].as_str() {
                    self.thinking.text(&self.chunks, out, t);
                } else if let Some(s) = r["signature"].as_str() {
                    self.thinking.signature(s);
                } else if let Some(data) = r["redactedContent"].as_str() {
                    self.thinking.start(&json!({"type": "redacted_thinking", "data": data}));
                }
            }
        } else if ev.get("contentBlockStop").is_some() {
            self.thinking.end(&self.chunks, out);
        } else if let Some(s) = ev.get("messageStop") {
            self.reason = Some(s["stopReason"].as_str().unwrap_or("end_turn").to_owned());
        } else if let Some(m) = ev.get("metadata") {
            self.usage = usage(&m["usage"]);
            self.metered = true;
        }
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        if self.ended {
            return;
        }
        self.ended = true;
        let Some(finish) = self.reason.as_deref().map(finish_reason) else {
            return fail(
                out,
                Dialect::OpenAi,
                "The provider's stream ended before a stop reason.",
            );
        };
        self.start(out);
        self.chunks.end(out, finish, self.usage);
    }

    fn usage(&self) -> Usage {
        self.usage
    }

    fn complete(&self) -> bool {
        self.metered
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_becomes_converse_with_system_tools_and_results() {
        let req = json!({"model": "m", "max_tokens": 50, "temperature": 0.2, "stop": "END",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Weather?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}}]},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "t1", "type": "function",
                    "function": {"name": "w", "arguments": "{\"q\":\"Oslo\"}"}}]},
                {"role": "tool", "tool_call_id": "t1", "content": "18C"},
            ],
            "tools": [{"type": "function", "function": {"name": "w", "parameters": {"type": "object"}}}]});
        let c = chat_request_to_converse(&req, "m").unwrap();
        assert_eq!(c["system"], json!([{"text": "Be brief."}]));
        assert_eq!(c["messages"][0]["content"][1]["image"]["format"], "png");
        assert_eq!(c["messages"][1]["content"][0]["toolUse"]["input"], json!({"q": "Oslo"}));
        assert_eq!(c["messages"][2]["content"][0]["toolResult"]["toolUseId"], "t1");
        assert_eq!(
            c["inferenceConfig"],
            json!({"maxTokens": 50, "temperature": 0.2, "stopSequences": ["END"]})
        );
        assert_eq!(c["toolConfig"]["toolChoice"], json!({"auto": {}}));
        assert!(c.get("model").is_none());
    }

    #[test]
    fn what_converse_cannot_take_is_refused_before_the_call() {
        let msgs =
            json!([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/a.png"}}]}]);
        let e = chat_request_to_converse(&json!({"messages": msgs}), "m").unwrap_err();
        assert!(e.to_string().contains("base64 data URLs"), "{e}");
        let e = chat_request_to_converse(&json!({"n": 2, "messages": []}), "m").unwrap_err();
        assert!(e.to_string().contains("n > 1"));
    }

    #[test]
    fn converse_answer_becomes_chat() {
        let v = json!({"output": {"message": {"role": "assistant", "content": [
            {"reasoningContent": {"reasoningText": {"text": "hmm"}}}, {"text": "Hi"},
            {"toolUse": {"toolUseId": "t9", "name": "w", "input": {"q": 1}}}]}},
            "stopReason": "tool_use", "usage": {"inputTokens": 5, "outputTokens": 3, "cacheReadInputTokens": 2}});
        let c = response_to_chat(&v, 7, "m");
        assert_eq!(c["choices"][0]["message"]["content"], "Hi");
        assert_eq!(
            c["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
            "{\"q\":1}"
        );
        assert_eq!(c["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(c["usage"]["prompt_tokens"], 7);
    }
}

#[cfg(test)]
mod stream_tests {
    use super::*;

    fn feed(t: &mut BedrockToChat, events: &[Value]) -> String {
        let mut out = Vec::new();
        for e in events {
            t.event(e.to_string().as_bytes(), &mut out);
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn usage_is_final_only_with_the_metadata_event() {
        let body = [
            json!({"messageStart": {"role": "assistant"}}),
            json!({"contentBlockDelta": {"delta": {"text": "Hi"}, "contentBlockIndex": 0}}),
            json!({"messageStop": {"stopReason": "end_turn"}}),
        ];
        let mut t = BedrockToChat::new(true, 0, "m");
        assert!(feed(&mut t, &body).contains("\"content\":\"Hi\""));
        // Stopped but not yet metered: not complete, so a cut here is estimated.
        assert!(!t.complete());
        feed(
            &mut t,
            &[json!({"metadata": {"usage": {"inputTokens": 3, "outputTokens": 1}}})],
        );
        assert!(t.complete());
        assert_eq!(
            t.usage(),
            Usage {
                input_tokens: 3,
                output_tokens: 1,
                ..Usage::default()
            }
        );
        let mut out = Vec::new();
        t.finish(&mut out);
        let out = String::from_utf8(out).unwrap();
        assert!(
            out.contains("\"finish_reason\":\"stop\"") && out.ends_with("data: [DONE]\n\n"),
            "{out}"
        );
    }

    #[test]
    fn an_exception_or_an_end_before_the_stop_reason_is_an_error() {
        let mut t = BedrockToChat::new(false, 0, "m");
        let out = feed(
            &mut t,
            &[json!({"exception": {"type": "throttlingException", "message": "Too many"}})],
        );
        assert!(out.contains("Too many") && !out.contains("[DONE]"), "{out}");
        let mut t = BedrockToChat::new(false, 0, "m");
        feed(&mut t, &[json!({"messageStart": {"role": "assistant"}})]);
        let mut out = Vec::new();
        t.finish(&mut out);
        let out = String::from_utf8(out).unwrap();
        assert!(out.contains("before a stop reason") && !out.contains("[DONE]"), "{out}");
    }
}
