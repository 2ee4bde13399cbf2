//! Micro-benchmarks of the per-request hot path: caller key lookup, request parse and
//! model rewrite, SSE usage extraction. `make bench`.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;

use aigw::config::{self, CompileCtx};
use aigw::provider::body;
use aigw::route::UpstreamRegistry;
use aigw::stream::SseState;
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

criterion_group!(benches, key_lookup, parse_and_rewrite, sse_usage);
criterion_main!(benches);
