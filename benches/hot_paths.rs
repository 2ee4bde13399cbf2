//! Micro-benchmarks of the per-request hot path: caller key lookup, request parse and
//! model rewrite, SSE usage extraction, Anthropic translation, the local rate limit check,
//! guardrail scans, the cache key.
//! `make bench`.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;

use aigw::config::{self, CompileCtx};
use aigw::provider::body;
use aigw::stream::SseState;
use aigw::upstream::UpstreamRegistry;
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn key_lookup(c: &mut Criterion) {
    let mut text = String::from(
        "version: 1\nprovider_keys: [{name: p, provider: openai_compatible, base_url: 'http://127.0.0.1:9'}]\nmodels: [{name: m, provider_key: p}]\napi_keys:\n",
    );
    for i in 0..10_000 {
        text.push_str(&format!("  - {{name: k{i}, key: sk-caller-{i:08}}}\n"));
    }
    let env = |_: &str| None;
    let reg = UpstreamRegistry::default();
    let snap = config::load_str(
        &text,
        &CompileCtx {
            env: &env,
            upstreams: &reg,
            limits: &Default::default(),
            metrics: None,
        },
    )
    .unwrap();
    c.bench_function("key lookup (10k keys)", |b| {
        b.iter(|| black_box(snap.keys.lookup(black_box(b"sk-caller-00004242")).is_some()))
    });
}

fn parse_and_rewrite(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse + rewrite");
    for size in [1024usize, 64 * 1024] {
        let body = Bytes::from(
            serde_json::json!({
                "model": "gpt-4o-mini", "stream": true, "temperature": 0.2,
                "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "x".repeat(size)}],
            })
            .to_string(),
        );
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size), &body, |b, body| {
            b.iter(|| {
                let view = body::parse(body).unwrap();
                black_box(body::rewrite(body, &view, "upstream-model-id", true))
            })
        });
    }
    g.finish();
}

fn sse_usage(c: &mut Criterion) {
    let mut stream = String::new();
    for i in 0..200 {
        stream.push_str(&format!(
            "data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"tok{i} \"}}}}],\"usage\":null}}\n\n"
        ));
    }
    stream.push_str("data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":200}}\n\ndata: [DONE]\n\n");
    // As a provider sends it: a few events per read.
    let chunks: Vec<Bytes> = stream.as_bytes().chunks(512).map(Bytes::copy_from_slice).collect();
    let mut g = c.benchmark_group("sse");
    g.throughput(Throughput::Bytes(stream.len() as u64));
    g.bench_function("200-event stream, usage stripped", |b| {
        b.iter(|| {
            let mut s = SseState::new(true);
            for ch in &chunks {
                black_box(s.feed(ch.clone()));
            }
            black_box(s.finish());
            s.usage
        })
    });
    g.finish();
}

fn anthropic_translation(c: &mut Criterion) {
    use aigw::provider::anthropic;
    use aigw::provider::anthropic::AnthropicToChat;
    use aigw::stream::Mode;
    // A 4 KiB conversation: system prompt, several turns, a tool.
    let mut messages =
        vec![serde_json::json!({"role": "system", "content": "You are a careful assistant. ".repeat(8)})];
    for i in 0..12 {
        let role = if i % 2 == 0 { "user" } else { "assistant" };
        messages.push(
            serde_json::json!({"role": role, "content": format!("turn {i}: {}", "lorem ipsum dolor ".repeat(16))}),
        );
    }
    let req = serde_json::json!({"model": "m", "max_tokens": 500, "messages": messages,
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]});
    let size = req.to_string().len();
    let mut g = c.benchmark_group("translation");
    g.throughput(Throughput::Bytes(size as u64));
    g.bench_function(format!("chat request -> messages ({size} B)"), |b| {
        b.iter(|| black_box(anthropic::chat_request_to_messages(black_box(&req), "claude").unwrap()))
    });
    let mut stream = String::from("event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"c\",\"usage\":{\"input_tokens\":9}}}\n\n");
    for i in 0..198 {
        stream.push_str(&format!("event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"tok{i} \"}}}}\n\n"));
    }
    stream.push_str("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
    let chunks: Vec<Bytes> = stream.as_bytes().chunks(512).map(Bytes::copy_from_slice).collect();
    g.throughput(Throughput::Bytes(stream.len() as u64));
    g.bench_function("200-event stream -> chat chunks", |b| {
        b.iter(|| {
            let mut s = SseState::with_mode(Mode::Translate(Box::new(AnthropicToChat::new(true, 0))));
            for ch in &chunks {
                black_box(s.feed(ch.clone()));
            }
            black_box(s.finish())
        })
    });
    g.bench_function(format!("chat request -> gemini ({size} B)"), |b| {
        b.iter(|| black_box(aigw::provider::gemini::chat_request_to_gemini(black_box(&req), "g").unwrap()))
    });
    let mut gemini = String::new();
    for i in 0..200 {
        let finish = if i == 199 { ",\"finishReason\":\"STOP\"" } else { "" };
        gemini.push_str(&format!("data: {{\"candidates\":[{{\"content\":{{\"role\":\"model\",\"parts\":[{{\"text\":\"tok{i} \"}}]}}{finish}}}],\"usageMetadata\":{{\"promptTokenCount\":9,\"candidatesTokenCount\":{i}}},\"responseId\":\"r\"}}\r\n\r\n"));
    }
    let chunks: Vec<Bytes> = gemini.as_bytes().chunks(512).map(Bytes::copy_from_slice).collect();
    g.throughput(Throughput::Bytes(gemini.len() as u64));
    g.bench_function("200-event gemini stream -> chat chunks", |b| {
        b.iter(|| {
            let mut s = SseState::with_mode(Mode::Translate(Box::new(aigw::provider::gemini::GeminiToChat::new(
                true, 0, "g",
            ))));
            for ch in &chunks {
                black_box(s.feed(ch.clone()));
            }
            black_box(s.finish())
        })
    });
    g.finish();
}

/// The in-process limiter: a caller policy (requests per second and minute, tokens per
/// minute, concurrency) and a model policy checked together, then the slot released.
fn local_limiter(c: &mut Criterion) {
    use aigw::limit::{local, Cells, Rule};
    use aigw::raw::RateLimit;
    let cells = Cells::default();
    let policy = |name: &str, conc| RateLimit {
        name: name.into(),
        requests_per_second: Some(1 << 40),
        requests_per_minute: Some(1 << 40),
        requests_per_hour: None,
        requests_per_day: None,
        tokens_per_minute: Some(1 << 40),
        tokens_per_day: None,
        concurrency: conc,
    };
    let caller = cells.bind(&policy("team", Some(1 << 40)), "owner=team-a");
    let model = cells.bind(&policy("model-cap", None), "model=gpt-4o-mini");
    let store = local::LocalStore::new();
    let start = std::time::Instant::now();
    c.bench_function("local limiter check (2 policies, 7 rules)", |b| {
        b.iter(|| {
            let rules: Vec<&Rule> = caller.rules.iter().chain(&model.rules).collect();
            let now = start.elapsed().as_micros() as u64;
            let v = local::acquire_at(black_box(&rules), now);
            assert!(v.iter().all(|v| v.allowed));
            aigw::limit::LimitStore::release(&store, &rules);
        })
    });
}

/// Guardrails from every shipped pack, as a request would carry them.
fn shipped_guards(action: aigw::raw::Action) -> Vec<std::sync::Arc<aigw::guard::Guardrail>> {
    use aigw::raw::{Guardrail as Raw, Stage};
    ["pii", "secrets", "prompt-injection"]
        .iter()
        .map(|p| {
            let raw = Raw {
                name: (*p).into(),
                pack: Some(format!("{}/filters/{p}.yaml", env!("CARGO_MANIFEST_DIR"))),
                rules: Vec::new(),
                stage: Stage::Both,
                action,
                service: None,
            };
            std::sync::Arc::new(aigw::guard::Guardrail::compile("g", &raw, None).unwrap())
        })
        .collect()
}

/// English-like text with numbers, no match: every rule runs over every byte.
fn prose(size: usize) -> String {
    const S: &str = "The quarterly report shows revenue growth of 12 percent across 7 regions, and the team plans to expand in 2025 after review. ";
    S.repeat(size / S.len() + 1)[..size].to_owned()
}

/// Request stage: a chat body with a 4 KiB and a 64 KiB prompt, scanned by all shipped
/// packs (JSON parse, text walk, automaton and regex set); and a 200-event stream through
/// the response-stage hold-back with all packs masking.
fn guardrail_scan(c: &mut Criterion) {
    use aigw::api::Endpoint;
    use aigw::raw::Action;
    let guards = shipped_guards(Action::Block);
    let mut g = c.benchmark_group("guardrails: request, all packs");
    for size in [4 * 1024usize, 64 * 1024] {
        let body = serde_json::json!({"model": "m", "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": prose(size)}]})
        .to_string();
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size), &body, |b, body| {
            b.iter(|| {
                let mut hits = Vec::new();
                let out = aigw::guard::check_request(&guards, Endpoint::ChatCompletions, body.as_bytes(), &mut hits);
                assert!(matches!(out, Ok(None)) && hits.is_empty());
            })
        });
    }
    g.finish();

    let masks = shipped_guards(Action::Mask);
    let text = prose(200 * 24);
    let mut stream = String::new();
    for piece in text.as_bytes().chunks(24) {
        let c = serde_json::json!({"id": "c", "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {"content": std::str::from_utf8(piece).unwrap()}, "finish_reason": null}]});
        stream.push_str(&format!("data: {c}\n\n"));
    }
    stream.push_str("data: [DONE]\n\n");
    c.bench_function("guardrails: 200-event stream, all packs masking", |b| {
        b.iter(|| {
            let mut sg = aigw::guard::stream::StreamGuard::new(masks.clone(), aigw::api::Endpoint::ChatCompletions);
            let mut hits = Vec::new();
            black_box(sg.feed(stream.as_bytes(), true, &mut hits).unwrap())
        })
    });

    // Event by event, 16-byte deltas: 200 KB of prose, and a private key header followed
    // by 60 KB of base64 (a match in progress the whole way: held, never rescanned).
    let events = |text: &str| -> Vec<String> {
        text.as_bytes()
            .chunks(16)
            .map(|p| {
                let c = serde_json::json!({"choices": [{"index": 0, "delta": {"content": String::from_utf8_lossy(p)}, "finish_reason": null}]});
                format!("data: {c}\n\n")
            })
            .collect()
    };
    let prose_events = events(&prose(200 * 1024));
    let key_events = events(&format!("-----BEGIN PRIVATE KEY-----\n{}", "QUJD".repeat(15_000)));
    let secrets: Vec<_> = masks.iter().filter(|g| g.name.contains("secrets")).cloned().collect();
    let mut g = c.benchmark_group("guardrails: stream in 16-byte deltas");
    g.sample_size(10);
    for (name, evs, guards) in [
        ("200 KB prose, all packs", &prose_events, &masks),
        ("key + 60 KB base64, secrets", &key_events, &secrets),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut sg =
                    aigw::guard::stream::StreamGuard::new(guards.clone(), aigw::api::Endpoint::ChatCompletions);
                let mut hits = Vec::new();
                for e in evs.iter() {
                    black_box(sg.feed(e.as_bytes(), false, &mut hits).unwrap());
                }
                black_box(sg.feed(b"data: [DONE]\n\n", true, &mut hits).unwrap())
            })
        });
    }
    g.finish();
}

/// The cache key of a chat request: parse, canonicalise, BLAKE3.
fn cache_key(c: &mut Criterion) {
    use aigw::api::Endpoint;
    let mut g = c.benchmark_group("cache key");
    for size in [1024usize, 16 * 1024] {
        let body = serde_json::json!({"model": "gpt-4o-mini", "temperature": 0.2, "stream": true,
            "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": prose(size)}]})
        .to_string();
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size), &body, |b, body| {
            b.iter(|| {
                let v: serde_json::Value = serde_json::from_slice(body.as_bytes()).unwrap();
                black_box(aigw::cache::key::key(
                    "owner=team-a",
                    "gpt-4o-mini",
                    Endpoint::ChatCompletions,
                    &v,
                ))
            })
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    cache_key,
    guardrail_scan,
    key_lookup,
    parse_and_rewrite,
    sse_usage,
    anthropic_translation,
    local_limiter
);
criterion_main!(benches);
