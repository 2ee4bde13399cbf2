//! Fleets: one provider spread over several replicas (three real mock processes).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;
use serde_json::{json, Value};

fn config(replicas: &[&Mock], balance: &str, extra: &str) -> String {
    let endpoints: Vec<String> = replicas.iter().map(|m| format!("\"{}\"", m.addr)).collect();
    format!(
        r#"
version: 1
server:
  listen: ["127.0.0.1:{{PORT}}"]
  admin_listen: "127.0.0.1:{{ADMIN}}"
provider_keys:
  - name: fleet
    provider: openai_compatible
    base_url: "http://fleet.internal:8000/v1"
    api_key: "{{PROVIDER_KEY}}"
    fleet:
      endpoints: [{}]
      balance: {balance}
{extra}
models:
  - {{name: llama, provider_key: fleet}}
api_keys:
  - {{name: main, key: "{{CALLER_KEY}}"}}
"#,
        endpoints.join(", ")
    )
}

fn seen(m: &Mock) -> usize {
    m.requests().len()
}

#[tokio::test]
async fn round_robin_spreads_and_keeps_the_base_urls_host() {
    let r = [Mock::start(), Mock::start(), Mock::start()];
    let gw = Gateway::start(&config(&[&r[0], &r[1], &r[2]], "round_robin", ""), &r[0]);
    for _ in 0..90 {
        assert_eq!(
            post(&gw, "/v1/chat/completions", &chat_body("llama")).await.status(),
            200
        );
    }
    let counts: Vec<usize> = r.iter().map(seen).collect();
    assert_eq!(counts, [30, 30, 30]);
    assert_eq!(r[1].last_request()["headers"]["host"], "fleet.internal:8000");
}

fn conversation(i: usize) -> Value {
    json!({"model": "llama", "messages": [
        {"role": "system", "content": format!("You are assistant number {i}.")},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi"},
        {"role": "user", "content": format!("turn {}", fastrand::u32(..))}
    ]})
}

/// Which replica answered each of 30 conversations.
async fn placement(gw: &Gateway, replicas: &[Mock; 3]) -> Vec<usize> {
    let mut out = Vec::new();
    for i in 0..30 {
        let before: Vec<usize> = replicas.iter().map(seen).collect();
        assert_eq!(post(gw, "/v1/chat/completions", &conversation(i)).await.status(), 200);
        let after: Vec<usize> = replicas.iter().map(seen).collect();
        out.push((0..3).find(|&k| after[k] > before[k]).unwrap());
    }
    out
}

#[tokio::test]
async fn consistent_hash_keeps_conversations_on_one_replica_and_respreads_on_failure() {
    let mut r = [Mock::start(), Mock::start(), Mock::start()];
    let gw = Gateway::start(
        &config(&[&r[0], &r[1], &r[2]], "consistent_hash", "      hash_on: prefix"),
        &r[0],
    );
    let first = placement(&gw, &r).await;
    let again = placement(&gw, &r).await;
    assert_eq!(first, again, "a conversation's later turns reach the same replica");
    assert!(
        (0..3).all(|k| first.contains(&k)),
        "conversations spread over replicas: {first:?}"
    );

    // Replica 1 dies: its conversations move (and none fails); the others stay put.
    r[1].stop();
    let mut after = Vec::new();
    for i in 0..30 {
        let before: Vec<usize> = [0, 2].iter().map(|&k| seen(&r[k])).collect();
        assert_eq!(
            post(&gw, "/v1/chat/completions", &conversation(i)).await.status(),
            200,
            "conversation {i}"
        );
        let now: Vec<usize> = [0, 2].iter().map(|&k| seen(&r[k])).collect();
        after.push(if now[0] > before[0] { 0 } else { 2 });
    }
    for (i, (b, a)) in first.iter().zip(&after).enumerate() {
        if *b != 1 {
            assert_eq!(b, a, "conversation {i} moved although its replica is healthy");
        }
    }
}

#[tokio::test]
async fn health_checks_eject_and_restore_a_replica() {
    let mut r = [Mock::start(), Mock::start(), Mock::start()];
    let hc = "      health_check: {path: /health, interval_s: 1, unhealthy_after: 1, healthy_after: 1}";
    let gw = Gateway::start(&config(&[&r[0], &r[1], &r[2]], "round_robin", hc), &r[0]);
    let port = r[2].addr.port();
    r[2].stop();
    // Once the health check has marked it down, requests flow without touching it.
    assert!(
        wait_until(10, || gw.log_text().contains("unhealthy")
            || gw.log_text().contains("Unhealthy")),
        "{}",
        gw.log_text()
    );
    for _ in 0..20 {
        assert_eq!(
            post(&gw, "/v1/chat/completions", &chat_body("llama")).await.status(),
            200
        );
    }
    // Back on the same port: the health check lets it in again.
    r[2] = Mock::start_on(port);
    let mut back = false;
    for _ in 0..100 {
        post(&gw, "/v1/chat/completions", &chat_body("llama")).await;
        if seen(&r[2]) > 0 {
            back = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(back, "the restored replica never got traffic again");
}

/// The experiment of the issue: a replica is killed in the middle of a load; every request
/// that had not started answering is served by another replica.
#[tokio::test]
async fn killing_a_replica_mid_load_loses_no_request() {
    let mut r = [Mock::start(), Mock::start(), Mock::start()];
    let gw = Arc::new(Gateway::start(
        &config(&[&r[0], &r[1], &r[2]], "round_robin", ""),
        &r[0],
    ));
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (gw, done) = (gw.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut statuses = HashMap::new();
            for _ in 0..50 {
                let s = post(&gw, "/v1/chat/completions", &chat_body("llama"))
                    .await
                    .status()
                    .as_u16();
                *statuses.entry(s).or_insert(0usize) += 1;
                done.fetch_add(1, Ordering::Relaxed);
            }
            statuses
        }));
    }
    while done.load(Ordering::Relaxed) < 100 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    r[1].stop();
    let mut total: HashMap<u16, usize> = HashMap::new();
    for t in tasks {
        for (s, n) in t.await.unwrap() {
            *total.entry(s).or_default() += n;
        }
    }
    eprintln!("400 requests, replica killed after {}: statuses {total:?}", 100);
    assert_eq!(total.get(&200), Some(&400), "{total:?}");
}

/// The same experiment one level up: a whole provider dies mid-load and a multi-target
/// alias fails over to the other provider.
#[tokio::test]
async fn killing_a_provider_mid_load_loses_no_request() {
    let mut primary = Mock::start();
    let backup = Mock::start();
    let config = format!(
        r#"
version: 1
server:
  listen: ["127.0.0.1:{{PORT}}"]
  admin_listen: "127.0.0.1:{{ADMIN}}"
provider_keys:
  - {{name: primary, provider: openai_compatible, base_url: "http://{}/v1", api_key: "{{PROVIDER_KEY}}"}}
  - {{name: backup, provider: openai_compatible, base_url: "http://{}/v1", api_key: "{{PROVIDER_KEY}}"}}
models:
  - {{name: p, provider_key: primary}}
  - {{name: b, provider_key: backup}}
  - name: chat
    routing: {{targets: [{{model: p}}, {{model: b, priority: 1}}]}}
api_keys:
  - {{name: main, key: "{{CALLER_KEY}}"}}
"#,
        primary.addr, backup.addr
    );
    let gw = Arc::new(Gateway::start(&config, &primary));
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (gw, done) = (gw.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut ok = 0;
            for _ in 0..50 {
                if post(&gw, "/v1/chat/completions", &chat_body("chat")).await.status() == 200 {
                    ok += 1;
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            ok
        }));
    }
    while done.load(Ordering::Relaxed) < 100 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    primary.stop();
    let mut ok = 0;
    for t in tasks {
        ok += t.await.unwrap();
    }
    eprintln!("400 requests, primary provider killed after 100: {ok} answered 200, backup recorded at least {} (the mock keeps 256)", seen(&backup));
    assert_eq!(ok, 400);
    assert!(seen(&backup) > 0);
}

/// Upstream connections are pooled, and `http2: always` speaks HTTP/2 to the provider
/// (prior-knowledge h2c on plaintext): large bodies, streams and failover retries included.
#[tokio::test]
async fn keepalive_pool_and_http2_upstream() {
    pool_and_http2(false).await;
}

/// The same with one runtime per core (`work_stealing: false`): each thread accepts its
/// own connections and pools its own provider connections, so the 20 requests (each on a
/// new caller connection) open at most one provider connection per thread.
#[tokio::test]
async fn keepalive_pool_per_thread_and_http2_upstream() {
    pool_and_http2(true).await;
}

async fn pool_and_http2(per_core: bool) {
    let mock = Mock::start();
    let server = if per_core {
        "\n  threads: 2\n  work_stealing: false"
    } else {
        ""
    };
    let config = r#"
version: 1
server:
  listen: ["127.0.0.1:{PORT}"]
  admin_listen: "127.0.0.1:{ADMIN}"{SERVER}
provider_keys:
  - {name: h1, provider: openai_compatible, base_url: "{MOCK}/v1", api_key: "{PROVIDER_KEY}"}
  - {name: h2, provider: openai_compatible, base_url: "{MOCK}/v1", api_key: "{PROVIDER_KEY}", http2: always}
models:
  - {name: one, provider_key: h1}
  - {name: two, provider_key: h2}
  - {name: two-503, provider_key: h2, model: "x?status=503"}
  - name: two-failover
    routing: {targets: [{model: two-503}, {model: two, priority: 1}]}
api_keys:
  - {name: main, key: "{CALLER_KEY}"}
"#
    .replace("{SERVER}", server);
    let gw = Gateway::start(&config, &mock);
    let before = mock.stats()["connections"].as_u64().unwrap();
    for _ in 0..20 {
        assert_eq!(post(&gw, "/v1/chat/completions", &chat_body("one")).await.status(), 200);
    }
    let after = mock.stats()["connections"].as_u64().unwrap();
    // One connection per pool for the gateway's 20 requests, one for this stats call itself.
    let pools = if per_core { 2 } else { 1 };
    assert!(
        (2..=pools + 1).contains(&(after - before)),
        "20 sequential requests share one pooled connection per pool: {}",
        after - before
    );
    assert_eq!(mock.last_request()["version"], "HTTP/1.1");

    let big = json!({"model": "two", "messages": [{"role": "user", "content": "q".repeat(1 << 20)}]});
    let resp = post(&gw, "/v1/chat/completions", &big).await;
    assert_eq!(resp.status(), 200);
    let seen = mock.last_request();
    assert_eq!(seen["version"], "HTTP/2.0");
    let expected = big.to_string();
    assert_eq!(
        seen["body_len"],
        expected.len(),
        "the whole 1 MiB body went over HTTP/2"
    );

    let mut body = chat_body("two");
    body["stream"] = json!(true);
    let text = post(&gw, "/v1/chat/completions", &body).await.text().await.unwrap();
    assert_eq!(sse_data(&text).last().unwrap(), "[DONE]");

    let resp = post(&gw, "/v1/chat/completions", &chat_body("two-failover")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-aigw-model"], "two");
}
