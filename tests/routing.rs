//! Multi-target routing end to end: failover order, cooldowns, retries, distributions.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;

use common::*;
use serde_json::{json, Value};

const CONFIG: &str = r#"
version: 1
server:
  listen: ["127.0.0.1:{PORT}"]
  admin_listen: "127.0.0.1:{ADMIN}"
provider_keys:
  - name: mock
    provider: openai_compatible
    base_url: "{MOCK}/v1"
    api_key: "{PROVIDER_KEY}"
    timeouts: {first_byte_ms: 800}
  - {name: dead, provider: openai_compatible, base_url: "http://127.0.0.1:1/v1"}
models:
  - {name: ok-a, provider_key: mock, model: ok-a}
  - {name: ok-b, provider_key: mock, model: ok-b}
  - {name: ok-c, provider_key: mock, model: ok-c}
  - {name: down-503, provider_key: mock, model: "down?status=503"}
  - {name: down-500, provider_key: mock, model: "down5?status=500"}
  - {name: busy-429, provider_key: mock, model: "busy?status=429&retry_after=1"}
  - {name: busy-429-long, provider_key: mock, model: "busyl?status=429&retry_after=60"}
  - {name: refused, provider_key: dead}
  - {name: slow, provider_key: mock, model: "slow?delay_ms=3000"}
  - {name: teapot, provider_key: mock, model: "tea?status=418"}
  - {name: drops, provider_key: mock, model: "drop?drop_after=3&chunk_delay_ms=30"}
  - name: failover
    routing: {failures_before_cooldown: 1, targets: [{model: down-503}, {model: ok-b, priority: 1}]}
  - name: cool-long
    routing: {failures_before_cooldown: 1, cooldown_s: 300, targets: [{model: down-500}, {model: ok-b, priority: 1}]}
  - name: retry-after
    routing: {failures_before_cooldown: 2, cooldown_s: 300, targets: [{model: busy-429}, {model: ok-b, priority: 1}]}
  - name: capped
    routing: {max_attempts: 2, targets: [{model: down-503}, {model: down-500, priority: 1}, {model: ok-c, priority: 2}]}
  - name: all-429
    routing: {failures_before_cooldown: 1, targets: [{model: down-503}, {model: busy-429-long, priority: 1}]}
  - {name: long-a, provider_key: mock, model: "long-a?delay_ms=3000&slow_from_tokens=1000"}
  - {name: long-b, provider_key: mock, model: "long-b?delay_ms=3000&slow_from_tokens=1000"}
  - name: shared
    routing: {targets: [{model: long-a}, {model: long-b, priority: 1}]}
  - name: breaker
    routing: {failures_before_cooldown: 3, targets: [{model: down-503}, {model: ok-b, priority: 1}]}
  - name: connect
    routing: {targets: [{model: refused}, {model: ok-a, priority: 1}]}
  - name: timeout
    routing: {targets: [{model: slow}, {model: ok-a, priority: 1}]}
  - name: not-retried
    routing: {targets: [{model: teapot}, {model: ok-a, priority: 1}]}
  - name: midstream
    routing: {targets: [{model: drops}, {model: ok-a, priority: 1}]}
  - {name: tpm, provider_key: mock, model: "tpm?error=request_too_large&fail_from_tokens=1000"}
  - {name: itpm, provider_key: mock, model: "itpm?status=429&retry_after=60&fail_from_tokens=1000"}
  - {name: bytes, provider_key: mock, model: "bytes?status=413&fail_from_tokens=1000"}
  - name: too-large
    routing: {failures_before_cooldown: 1, targets: [{model: tpm}, {model: ok-b, priority: 1}]}
  - name: token-bucket
    routing: {failures_before_cooldown: 2, targets: [{model: itpm}, {model: ok-b, priority: 1}]}
  - name: listed-413
    routing: {failures_before_cooldown: 1, retry_on: [413, 429, 503], targets: [{model: bytes}, {model: ok-b, priority: 1}]}
  - name: rr
    routing: {strategy: round_robin, targets: [{model: ok-a}, {model: ok-b}, {model: ok-c}]}
  - name: weighted
    routing: {strategy: weighted, targets: [{model: ok-a, weight: 3}, {model: ok-b, weight: 1}]}
  - {name: q-a, provider_key: mock, model: q-a, quota: {rpm: 2}}
  - {name: q-b, provider_key: mock, model: q-b, quota: {rpm: 2}}
  - name: quota
    routing: {targets: [{model: q-a}, {model: q-b, priority: 1}]}
  - {name: t-a, provider_key: mock, model: t-a, quota: {tpm: 20}}
  - name: tokens-quota
    routing: {targets: [{model: t-a}, {model: ok-b, priority: 1}]}
  - {name: lat-a, provider_key: mock, model: "lat-a?delay_ms=40&slow_from_tokens=1000"}
  - {name: lat-b, provider_key: mock, model: "lat-b?delay_ms=120&slow_from_tokens=3000"}
  - name: fastest
    routing: {strategy: least_latency, targets: [{model: lat-a}, {model: lat-b}]}
  - {name: busy-a, provider_key: mock, model: "busy-a?delay_ms=400"}
  - {name: busy-b, provider_key: mock, model: "busy-b?delay_ms=400"}
  - name: least-busy
    routing: {strategy: least_busy, targets: [{model: busy-a}, {model: busy-b}]}
  - {name: cheap, provider_key: mock, model: cheap, pricing: {input_per_mtok: 0.1, output_per_mtok: 0.4}}
  - {name: mid, provider_key: mock, model: mid, pricing: {input_per_mtok: 1, output_per_mtok: 2}}
  - {name: pricey, provider_key: mock, model: pricey, pricing: {input_per_mtok: 5, output_per_mtok: 15}}
  - {name: cheap-down, provider_key: mock, model: "cheapd?status=503", pricing: {input_per_mtok: 0.01, output_per_mtok: 0}}
  - name: cheapest
    routing: {strategy: cost, targets: [{model: pricey}, {model: mid}, {model: cheap}]}
  - name: cheapest-down
    routing: {strategy: cost, failures_before_cooldown: 100, targets: [{model: pricey}, {model: mid}, {model: cheap-down}]}
  - {name: u-a, provider_key: mock, model: u-a, quota: {rpm: 6}}
  - {name: u-b, provider_key: mock, model: u-b, quota: {rpm: 3}}
  - name: headroom
    routing: {strategy: usage, targets: [{model: u-a}, {model: u-b}]}
  - {name: canary-new, provider_key: mock, model: canary-new}
  - name: canary
    routing: {targets: [{model: canary-new, percent: 10}, {model: ok-a, priority: 1}]}
  - name: canary-sticky
    routing: {sticky: owner, targets: [{model: canary-new, percent: 50}, {model: ok-a, priority: 1}]}
  - name: pinned
    routing: {targets: [{model: canary-new, owners: [other]}, {model: ok-a, priority: 1}]}
api_keys:
  - {name: main, key: "{CALLER_KEY}"}
  - {name: other, key: sk-other-caller}
"#;

const OTHER_KEY: &str = "sk-other-caller";

/// How many requests the mock saw per upstream model id.
fn per_model(mock: &Mock) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for r in mock.requests() {
        let body: Value = serde_json::from_str(r["body"].as_str().unwrap_or("{}")).unwrap_or_default();
        *m.entry(body["model"].as_str().unwrap_or("?").to_owned()).or_default() += 1;
    }
    m
}

fn count(m: &HashMap<String, usize>, model: &str) -> usize {
    m.get(model).copied().unwrap_or(0)
}

#[tokio::test]
async fn fails_over_in_priority_order_then_skips_the_cooling_target() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    // A body well past Pingora's 64 KiB retry buffer must be replayed intact.
    let body = json!({"model": "failover", "messages": [{"role": "user", "content": "z".repeat(40_000)}]});
    let resp = post(&gw, "/v1/chat/completions", &body).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-aigw-model"], "ok-b");
    let seen = mock.requests();
    assert_eq!(seen.len(), 2);
    let replayed = body.to_string().replace(r#""model":"failover""#, r#""model":"ok-b""#);
    assert_eq!(seen[1]["body_len"], replayed.len());

    // Within cooldown_s the failed target is not tried again.
    for _ in 0..3 {
        assert_eq!(
            post(&gw, "/v1/chat/completions", &chat_body("failover")).await.status(),
            200
        );
    }
    let m = per_model(&mock);
    assert_eq!(count(&m, "down?status=503"), 1, "{m:?}");
    assert_eq!(count(&m, "ok-b"), 4, "{m:?}");
}

/// A target cools after `failures_before_cooldown` 429s in a row, for the provider's
/// Retry-After rather than cooldown_s.
#[tokio::test]
async fn retry_after_sets_the_cooldown() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    let busy = "busy?status=429&retry_after=1";
    for _ in 0..3 {
        let resp = post(&gw, "/v1/chat/completions", &chat_body("retry-after")).await;
        assert_eq!(resp.status(), 200);
    }
    // Two 429s in a row cool it; the third request skips it.
    assert_eq!(count(&per_model(&mock), busy), 2);
    // cooldown_s is 300, Retry-After is 1: the target comes back after about a second.
    let mut back = false;
    for _ in 0..100 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        post(&gw, "/v1/chat/completions", &chat_body("retry-after")).await;
        if count(&per_model(&mock), busy) == 3 {
            back = true;
            break;
        }
    }
    assert!(back, "the 429 target never came back");
}

#[tokio::test]
async fn max_attempts_last_429_and_all_cooling() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    // Two attempts allowed, both fail: 502, and the third target is never tried.
    let resp = post(&gw, "/v1/chat/completions", &chat_body("capped")).await;
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.json::<Value>().await.unwrap()["error"]["code"], "upstream_error");
    assert_eq!(count(&per_model(&mock), "ok-c"), 0);

    // Every target failed and the last said 429: that 429 reaches the caller as it is.
    let resp = post(&gw, "/v1/chat/completions", &chat_body("all-429")).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "60");

    // Now both targets cool down: 503 with the soonest recovery.
    let resp = post(&gw, "/v1/chat/completions", &chat_body("all-429")).await;
    assert_eq!(resp.status(), 503);
    let retry_after: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry_after), "{retry_after}");
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"]["code"],
        "no_healthy_target"
    );
}

#[tokio::test]
async fn connect_errors_and_timeouts_fail_over() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    let resp = post(&gw, "/v1/chat/completions", &chat_body("connect")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-aigw-model"], "ok-a");
    let resp = post(&gw, "/v1/chat/completions", &chat_body("timeout")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-aigw-model"], "ok-a");
    // A 4xx that is not in retry_on is the answer.
    let resp = post(&gw, "/v1/chat/completions", &chat_body("not-retried")).await;
    assert_eq!(resp.status(), 418);
    assert_eq!(
        count(&per_model(&mock), "ok-a"),
        2,
        "connect and timeout ended on ok-a; the 418 did not fail over"
    );
}

#[tokio::test]
async fn no_failover_after_the_first_streamed_byte() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    let mut body = chat_body("midstream");
    body["stream"] = json!(true);
    let text = post(&gw, "/v1/chat/completions", &body).await.text().await.unwrap();
    let data = sse_data(&text);
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "upstream_error", "{text}");
    assert_eq!(
        count(&per_model(&mock), "ok-a"),
        0,
        "the stream had started: no second target"
    );
}

// The mock remembers its last 256 requests; each distribution test has its own mock.
#[tokio::test]
async fn round_robin_is_exact() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    for _ in 0..240 {
        assert_eq!(post(&gw, "/v1/chat/completions", &chat_body("rr")).await.status(), 200);
    }
    let m = per_model(&mock);
    for t in ["ok-a", "ok-b", "ok-c"] {
        assert_eq!(count(&m, t), 80, "{m:?}");
    }
}

#[tokio::test]
async fn weighted_follows_the_weights() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    for _ in 0..250 {
        assert_eq!(
            post(&gw, "/v1/chat/completions", &chat_body("weighted")).await.status(),
            200
        );
    }
    let m = per_model(&mock);
    let share = count(&m, "ok-a") as f64 / 250.0;
    // Weights 3:1; 0.65..0.85 is about 3.7 standard deviations either side of 0.75.
    assert!((0.65..=0.85).contains(&share), "{share:.2} {m:?}");
}

#[tokio::test]
async fn cooldowns_survive_a_reload() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    assert_eq!(
        post(&gw, "/v1/chat/completions", &chat_body("cool-long"))
            .await
            .status(),
        200
    );
    assert_eq!(count(&per_model(&mock), "down5?status=500"), 1);
    gw.write_config(
        &CONFIG.replace("api_keys:\n", "api_keys:\n  - {name: extra, key: sk-extra}\n"),
        &mock,
    );
    gw.signal("HUP");
    assert!(wait_until(10, || gw.log_text().contains("config reloaded")));
    assert_eq!(
        post(&gw, "/v1/chat/completions", &chat_body("cool-long"))
            .await
            .status(),
        200
    );
    assert_eq!(
        count(&per_model(&mock), "down5?status=500"),
        1,
        "the cooling target was skipped after the reload"
    );
}

/// A 5xx outside retry_on is final: no second target, no retry on the same one.
#[tokio::test]
async fn a_5xx_outside_retry_on_is_final() {
    let mock = Mock::start();
    let config = CONFIG.replace(
        "  - name: failover\n",
        "  - name: only-503\n    routing: {retry_on: [503], targets: [{model: down-500}, {model: ok-a, priority: 1}]}\n  - name: failover\n",
    );
    let gw = Gateway::start(&config, &mock);
    let resp = post(&gw, "/v1/chat/completions", &chat_body("only-503")).await;
    assert_eq!(resp.status(), 502);
    let m = per_model(&mock);
    assert_eq!(count(&m, "down5?status=500"), 1, "{m:?}");
    assert_eq!(count(&m, "ok-a"), 0, "{m:?}");
}

/// One caller's request that times out on every target (a long answer past first_byte_ms)
/// is replayed to each target, but takes none of them out of rotation for the others.
#[tokio::test]
async fn one_slow_request_cools_no_target_for_other_callers() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    let mut long = chat_body("shared");
    long["max_tokens"] = json!(4000);
    let resp = post(&gw, "/v1/chat/completions", &long).await;
    assert_eq!(resp.status(), 504, "both targets timed out");
    let m = per_model(&mock);
    assert_eq!(count(&m, "long-a?delay_ms=3000&slow_from_tokens=1000"), 1);
    assert_eq!(count(&m, "long-b?delay_ms=3000&slow_from_tokens=1000"), 1);
    // Another caller's short request goes to the first target, as before.
    let resp = post(&gw, "/v1/chat/completions", &chat_body("shared")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-aigw-model"], "long-a");
}

/// A target cools down only after `failures_before_cooldown` failures in a row.
#[tokio::test]
async fn a_target_cools_after_failures_in_a_row() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    for i in 1..=4 {
        let resp = post(&gw, "/v1/chat/completions", &chat_body("breaker")).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-aigw-model"], "ok-b");
        let tried = count(&per_model(&mock), "down?status=503");
        // Three requests each try the failing target; from the fourth on, it cools.
        assert_eq!(tried, i.min(3), "request {i}");
    }
}

/// What one caller's request gets from a target, `n` times in a row: the answering model.
async fn oversized(gw: &Gateway, alias: &str, n: usize) {
    let mut big = chat_body(alias);
    big["max_tokens"] = json!(4000);
    for i in 0..n {
        let resp = post(gw, "/v1/chat/completions", &big).await;
        assert_eq!(resp.status(), 200, "request {i}");
        assert_eq!(resp.headers()["x-aigw-model"], "ok-b", "request {i} moved on");
    }
}

/// The model that answers the other caller's ordinary request.
async fn other_callers_model(gw: &Gateway, alias: &str) -> String {
    let resp = post_as(gw, OTHER_KEY, "/v1/chat/completions", &chat_body(alias)).await;
    assert_eq!(resp.status(), 200);
    resp.headers()["x-aigw-model"].to_str().unwrap().to_owned()
}

/// One caller's requests that are too large for the primary (OpenAI's 429 "Request too
/// large ... tokens per min", without Retry-After) move on to the next target, however
/// many come in a row, and never divert another caller's request from the primary: not
/// even at a threshold of one failure.
#[tokio::test]
async fn one_callers_oversized_requests_cool_no_target_for_the_others() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    oversized(&gw, "too-large", 4).await;
    assert_eq!(other_callers_model(&gw, "too-large").await, "tpm");
    let m = metrics_text(&gw).await;
    assert!(
        m.contains(r#"aigw_upstream_attempts_total{outcome="retryable_status",provider="mock",target="tpm"} 4"#),
        "{m}"
    );
    // A listed 4xx (413, the request's size) moves on the same way, and counts nothing.
    oversized(&gw, "listed-413", 3).await;
    assert_eq!(other_callers_model(&gw, "listed-413").await, "bytes");
}

/// A 429 with Retry-After that cannot say whose traffic caused it (Anthropic's "This
/// request would exceed the rate limit ... input tokens per minute" reads the same for one
/// large request) is one failure, not a cooldown: another caller's success in between
/// resets the count, and only failures in a row cool the target, for the Retry-After.
#[tokio::test]
async fn a_429_with_retry_after_cools_only_after_failures_in_a_row() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    for _ in 0..3 {
        oversized(&gw, "token-bucket", 1).await;
        assert_eq!(other_callers_model(&gw, "token-bucket").await, "itpm");
    }
    // Two in a row (the threshold here) cool it, for the provider's 60 s.
    oversized(&gw, "token-bucket", 2).await;
    assert_eq!(other_callers_model(&gw, "token-bucket").await, "ok-b");
}

/// A target whose provider quota is used up is passed over before it is called: the
/// caller sees no 429 while another has room, then a 429 with the wait for the soonest.
#[tokio::test]
async fn a_quota_spills_to_the_next_target_then_answers_429() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    let mut served = Vec::new();
    for _ in 0..4 {
        let r = post(&gw, "/v1/chat/completions", &chat_body("quota")).await;
        assert_eq!(r.status(), 200);
        served.push(r.headers()["x-aigw-model"].to_str().unwrap().to_owned());
    }
    assert_eq!(served, ["q-a", "q-a", "q-b", "q-b"]);
    let r = post(&gw, "/v1/chat/completions", &chat_body("quota")).await;
    assert_eq!(r.status(), 429);
    let wait: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "rate_limit_exceeded", "{v}");
    let m = per_model(&mock);
    assert_eq!(
        (count(&m, "q-a"), count(&m, "q-b")),
        (2, 2),
        "the full targets were never called: {m:?}"
    );
    let used = metric(&gw, r#"aigw_target_quota_used_ratio{kind="requests",target="q-a"}"#).await;
    assert_eq!(used, 1.0);

    // Tokens: a target whose minute's tokens are spent (charged from the usage of its
    // answer) is passed over too.
    let first = post(&gw, "/v1/chat/completions", &chat_body("tokens-quota")).await;
    assert_eq!(first.headers()["x-aigw-model"], "t-a");
    let spilled = wait_until_async(|| async {
        let r = post(&gw, "/v1/chat/completions", &chat_body("tokens-quota")).await;
        r.headers()["x-aigw-model"] == "ok-b"
    })
    .await;
    assert!(spilled, "t-a's tokens were charged and it was passed over");
}

/// Two instances on one Redis share each target's quota.
#[tokio::test]
async fn two_instances_share_a_quota_in_redis() {
    let mock = Mock::start();
    let redis = PrivateRedis::start_any();
    let config = CONFIG.replace(
        "  admin_listen: \"127.0.0.1:{ADMIN}\"\n",
        &format!(
            "  admin_listen: \"127.0.0.1:{{ADMIN}}\"\n  redis: {{url: \"{}\"}}\n",
            redis.url()
        ),
    );
    assert!(config.contains("redis:"));
    let (one, two) = (Gateway::start(&config, &mock), Gateway::start(&config, &mock));
    let mut served = Vec::new();
    for gw in [&one, &one, &two, &two] {
        let r = post(gw, "/v1/chat/completions", &chat_body("quota")).await;
        assert_eq!(r.status(), 200);
        served.push(r.headers()["x-aigw-model"].to_str().unwrap().to_owned());
    }
    assert_eq!(
        served,
        ["q-a", "q-a", "q-b", "q-b"],
        "the second instance saw q-a's minute used"
    );
    assert_eq!(
        post(&one, "/v1/chat/completions", &chat_body("quota")).await.status(),
        429
    );
}

/// `least_latency`: traffic leaves a target that got slow, and comes back to it when
/// it is the faster again (its probes, one request in 20, measure it).
#[tokio::test]
async fn least_latency_moves_away_from_a_slow_target_and_back() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    let ask = |max_tokens: u64| json!({"model": "fastest", "max_tokens": max_tokens, "messages": [{"role": "user", "content": "hi"}]});
    let served = |n: usize, max_tokens: u64| {
        let gw = &gw;
        async move {
            let mut to_a = 0;
            for _ in 0..n {
                let r = post(gw, "/v1/chat/completions", &ask(max_tokens)).await;
                assert_eq!(r.status(), 200);
                to_a += usize::from(r.headers()["x-aigw-model"] == "lat-a");
            }
            to_a
        }
    };
    // At 2,000 tokens lat-a waits 40 ms before its first byte, lat-b answers at once.
    let slow = served(60, 2000).await;
    assert!(slow <= 12, "{slow} of 60 went to the slow target");
    // At 4,000 lat-b waits 120 ms: its average climbs past lat-a's within a few
    // answers, and the traffic goes back.
    served(50, 4000).await;
    let back = served(100, 4000).await;
    assert!(back >= 80, "{back} of 100 went back to lat-a");
}

/// `least_busy`: each request goes where the fewest are in flight.
#[tokio::test]
async fn least_busy_spreads_requests_in_flight() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    // Each request is on its way upstream (400 ms there) before the next is routed.
    let served: Vec<String> = futures_util::future::join_all((0..6u64).map(|i| {
        let gw = &gw;
        async move {
            tokio::time::sleep(std::time::Duration::from_millis(40 * i)).await;
            let r = post(gw, "/v1/chat/completions", &chat_body("least-busy")).await;
            r.headers()["x-aigw-model"].to_str().unwrap().to_owned()
        }
    }))
    .await;
    let a = served.iter().filter(|m| *m == "busy-a").count();
    assert_eq!(a, 3, "{served:?}");
}

/// `cost`: the cheapest target at the route's token mix, then the next cheapest.
#[tokio::test]
async fn cost_goes_to_the_cheapest_then_the_next() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    for _ in 0..5 {
        let r = post(&gw, "/v1/chat/completions", &chat_body("cheapest")).await;
        assert_eq!(r.headers()["x-aigw-model"], "cheap");
    }
    for _ in 0..3 {
        let r = post(&gw, "/v1/chat/completions", &chat_body("cheapest-down")).await;
        assert_eq!(r.headers()["x-aigw-model"], "mid");
    }
    let m = per_model(&mock);
    assert_eq!(
        (
            count(&m, "cheap"),
            count(&m, "cheapd?status=503"),
            count(&m, "mid"),
            count(&m, "pricey")
        ),
        (5, 3, 3, 0),
        "{m:?}"
    );
}

/// `usage`: the target with the most quota headroom, so both fill together, and the
/// caller is refused only once both are full.
#[tokio::test]
async fn usage_fills_quotas_by_headroom() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    let mut served = Vec::new();
    for _ in 0..9 {
        let r = post(&gw, "/v1/chat/completions", &chat_body("headroom")).await;
        assert_eq!(r.status(), 200);
        served.push(r.headers()["x-aigw-model"].to_str().unwrap().to_owned());
    }
    assert!(
        served[..2].contains(&"u-a".to_owned()) && served[..2].contains(&"u-b".to_owned()),
        "{served:?}"
    );
    let a = served.iter().filter(|m| *m == "u-a").count();
    assert_eq!(a, 6, "{served:?}");
    assert_eq!(
        post(&gw, "/v1/chat/completions", &chat_body("headroom")).await.status(),
        429
    );
}

/// Canaries: a target with `percent` takes about that share of requests; with `sticky:
/// owner` an owner is in the share or not, request after request; `owners` pins a target
/// to some owners.
#[tokio::test]
async fn canaries_take_their_share_and_their_owners() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    let served = |alias: &'static str, key: &'static str, n: usize| {
        let gw = &gw;
        async move {
            let mut to_canary = 0;
            for _ in 0..n {
                let r = post_as(gw, key, "/v1/chat/completions", &chat_body(alias)).await;
                assert_eq!(r.status(), 200);
                to_canary += usize::from(r.headers()["x-aigw-model"] == "canary-new");
            }
            to_canary
        }
    };
    // 10% of 400: 40 expected, 6 standard deviations of 6 either side.
    let share = served("canary", CALLER_KEY, 400).await;
    assert!((10..=76).contains(&share), "{share} of 400");
    // Sticky: each owner all in or all out.
    for key in [CALLER_KEY, OTHER_KEY] {
        let n = served("canary-sticky", key, 20).await;
        assert!(n == 0 || n == 20, "{key}: {n} of 20");
    }
    // Pinned to one owner.
    assert_eq!(served("pinned", OTHER_KEY, 10).await, 10);
    assert_eq!(served("pinned", CALLER_KEY, 10).await, 0);
}
