//! Rate limits end to end: request, token and concurrency rules, per owner and per model,
//! in one process and shared by two processes through Redis, and Redis outages.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::task::JoinSet;

const CONFIG: &str = r#"
{SERVER}
provider_keys:
  - name: mock
    provider: openai_compatible
    base_url: "{MOCK}/v1"
    api_key: "{PROVIDER_KEY}"
    timeouts: {connect_ms: 1000, first_byte_ms: 1500, idle_ms: 5000}
  - {name: an, provider: anthropic, base_url: "{MOCK}", api_key: "{PROVIDER_KEY}"}
rate_limits:
  - {name: three-per-min, requests_per_minute: 3}
  - {name: model-cap, requests_per_minute: 4}
  - {name: small-tokens, tokens_per_minute: 50}
  - {name: big-tokens, tokens_per_minute: 1000, requests_per_second: 100}
  - {name: two-at-once, concurrency: 2}
  - {name: mixed, concurrency: 20, requests_per_minute: 100000}
models:
  - {name: chat, provider_key: mock, model: upstream-chat}
  - {name: capped, provider_key: mock, model: upstream-capped, rate_limit: model-cap}
  - {name: long, provider_key: mock, model: "x?words=60"}
  - {name: claude, provider_key: an, model: "claude-x?words=60"}
  - {name: fails, provider_key: mock, model: "x?status=503"}
  - {name: slow, provider_key: mock, model: "x?delay_ms=1200"}
  - {name: too-slow, provider_key: mock, model: "x?delay_ms=3000"}
  - {name: slow-stream, provider_key: mock, model: "x?chunk_delay_ms=50&words=20"}
  - {name: dropped, provider_key: mock, model: "x?drop_after=3&chunk_delay_ms=20"}
  - name: failover
    routing:
      strategy: failover
      targets: [{model: fails, priority: 0}, {model: chat, priority: 1}]
api_keys:
  - {name: a1, key: sk-a1, owner: team-a, rate_limit: three-per-min}
  - {name: a2, key: sk-a2, owner: team-a, rate_limit: three-per-min}
  - {name: b, key: sk-b, owner: team-b}
  - {name: c, key: sk-c, owner: team-c}
  - {name: tok, key: sk-tok, owner: team-tok, rate_limit: small-tokens}
  - {name: tok2, key: sk-tok2, owner: team-tok2, rate_limit: big-tokens}
  - {name: conc, key: sk-conc, owner: team-conc, rate_limit: two-at-once}
  - {name: mix, key: sk-mix, owner: team-mix, rate_limit: mixed}
"#;

async fn call(gw: &Gateway, key: &str, body: &Value) -> reqwest::Response {
    post_as(gw, key, "/v1/chat/completions", body).await
}

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

async fn wait_metric(gw: &Gateway, series: &str, want: f64) -> bool {
    wait_until_async(|| async { metric(gw, series).await == want }).await
}

#[tokio::test]
async fn the_n_plus_first_request_is_refused_with_openai_headers() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    for left in ["2", "1", "0"] {
        let r = call(&gw, "sk-a1", &chat_body("chat")).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(header(&r, "x-ratelimit-limit-requests"), "3");
        assert_eq!(header(&r, "x-ratelimit-remaining-requests"), left);
        assert!(header(&r, "x-ratelimit-reset-requests").ends_with('s'), "{r:?}");
        assert_eq!(header(&r, "x-ratelimit-limit-tokens"), "", "no token rule applies");
    }
    let r = call(&gw, "sk-a1", &chat_body("chat")).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = header(&r, "retry-after").parse().unwrap();
    // 3 per minute refill one every 20 s.
    assert!((1..=20).contains(&retry), "retry-after {retry}");
    assert_eq!(header(&r, "x-ratelimit-remaining-requests"), "0");
    assert_eq!(header(&r, "x-ratelimit-limit-requests"), "3");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    assert_eq!(body["error"]["type"], "requests");
    assert!(body["error"]["message"].as_str().unwrap().contains("three-per-min"));
    assert_eq!(mock.requests().len(), 3, "the refused request never went upstream");

    // The same owner shares the counter; another owner does not.
    let r = call(&gw, "sk-a2", &chat_body("chat")).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(call(&gw, "sk-b", &chat_body("chat")).await.status(), StatusCode::OK);

    // Anthropic callers get Anthropic's envelope.
    let r = client()
        .post(format!("{}/v1/messages", gw.url()))
        .header("x-api-key", "sk-a1")
        .json(&json!({"model": "chat", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(!header(&r, "retry-after").is_empty());
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert_eq!(
        metric(&gw, "aigw_ratelimit_rejections_total{policy=\"three-per-min\"}").await,
        3.0
    );
}

#[tokio::test]
async fn a_model_limit_counts_every_caller_and_the_tightest_wins() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    for key in ["sk-b", "sk-c", "sk-b", "sk-c"] {
        let r = call(&gw, key, &chat_body("capped")).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(header(&r, "x-ratelimit-limit-requests"), "4");
    }
    for key in ["sk-b", "sk-c"] {
        let r = call(&gw, key, &chat_body("capped")).await;
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS, "{key}");
        let body: Value = r.json().await.unwrap();
        assert!(body["error"]["message"].as_str().unwrap().contains("model-cap"));
    }
    // Other models are not affected.
    assert_eq!(call(&gw, "sk-b", &chat_body("chat")).await.status(), StatusCode::OK);

    // A caller with 3 per minute on a model with 4 per minute: its own limit is tighter,
    // and its headers say so.
    let mock2 = Mock::start();
    let gw2 = Gateway::start(CONFIG, &mock2);
    let r = call(&gw2, "sk-a1", &chat_body("capped")).await;
    assert_eq!(header(&r, "x-ratelimit-limit-requests"), "3");
    assert_eq!(header(&r, "x-ratelimit-remaining-requests"), "2");
}

#[tokio::test]
async fn tokens_are_charged_from_the_real_usage_streamed_or_not() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);

    // A failed request uses nothing.
    let r = call(&gw, "sk-tok2", &chat_body("fails")).await;
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    let r = call(&gw, "sk-tok2", &chat_body("chat")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "x-ratelimit-limit-tokens"), "1000");
    assert_eq!(
        header(&r, "x-ratelimit-remaining-tokens"),
        "1000",
        "nothing charged yet"
    );
    let used = r.json::<Value>().await.unwrap()["usage"]["total_tokens"]
        .as_u64()
        .unwrap();
    assert!(used > 0);
    // The JSON answer's usage is charged (the refill of a few ms may give back a token).
    let mut last = 1000;
    for _ in 0..250 {
        let r = call(&gw, "sk-tok2", &json!({"model": "chat", "messages": []})).await;
        last = header(&r, "x-ratelimit-remaining-tokens").parse::<u64>().unwrap();
        if last < 1000 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        last <= 1000 - used + 1 && last + 10 >= 1000 - used,
        "charged {used}: {last} left"
    );

    // A streamed answer: usage comes from the usage chunk the gateway asked for.
    let body = json!({"model": "long", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let r = call(&gw, "sk-tok", &body).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "x-ratelimit-remaining-tokens"), "50");
    let text = r.text().await.unwrap();
    assert!(text.contains("[DONE]"));
    assert!(
        !text.contains("\"usage\":{"),
        "the gateway's usage chunk is not shown: {text}"
    );
    // 60 words overshoot the 50-token budget: the next request waits for the refill.
    let refused = wait_until_async(|| async {
        call(&gw, "sk-tok", &chat_body("chat")).await.status() == StatusCode::TOO_MANY_REQUESTS
    })
    .await;
    assert!(refused, "the streamed usage was charged");
    let r = call(&gw, "sk-tok", &chat_body("chat")).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&r, "x-ratelimit-remaining-tokens"), "0");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["type"], "tokens");
}

#[tokio::test]
async fn anthropic_streamed_usage_is_charged() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    let r = client()
        .post(format!("{}/v1/messages", gw.url()))
        .header("x-api-key", "sk-tok")
        .json(&json!({"model": "claude", "max_tokens": 100, "stream": true,
                      "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "x-ratelimit-remaining-tokens"), "50");
    assert!(r.text().await.unwrap().contains("message_stop"));
    let refused = wait_until_async(|| async {
        call(&gw, "sk-tok", &chat_body("chat")).await.status() == StatusCode::TOO_MANY_REQUESTS
    })
    .await;
    assert!(refused, "Anthropic's usage was charged");
}

#[tokio::test]
async fn concurrency_slots_are_held_while_in_flight_and_come_back() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    let gw = std::sync::Arc::new(gw);
    let mut set = JoinSet::new();
    for _ in 0..6 {
        let gw = gw.clone();
        set.spawn(async move { call(&gw, "sk-conc", &chat_body("slow")).await.status() });
    }
    let mut codes = Vec::new();
    while let Some(c) = set.join_next().await {
        codes.push(c.unwrap());
    }
    // The upstream holds each request 1.2 s: two run, four are refused at once.
    assert_eq!(codes.iter().filter(|c| **c == StatusCode::OK).count(), 2, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == StatusCode::TOO_MANY_REQUESTS).count(), 4);
    let series = "aigw_ratelimit_concurrency_in_use{policy=\"two-at-once\"}";
    assert!(wait_metric(&gw, series, 0.0).await);
    let r = call(&gw, "sk-conc", &chat_body("chat")).await;
    assert_eq!(
        header(&r, "x-ratelimit-limit-requests"),
        "",
        "concurrency is not a request rate"
    );
    assert_eq!(r.status(), StatusCode::OK);
}

/// Hundreds of requests ending every way a request can end: each one gives its slot back.
async fn mixed_requests_leak_no_slot(config: &str, policy: &str) {
    let mock = Mock::start();
    let gw = std::sync::Arc::new(Gateway::start(config, &mock));
    let mut set = JoinSet::new();
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(16));
    for i in 0..300 {
        let gw = gw.clone();
        let permit = sem.clone().acquire_owned().await.unwrap();
        set.spawn(async move {
            let _permit = permit;
            let (model, stream) = match i % 6 {
                0 => ("chat", false),
                1 => ("slow-stream", true),
                2 => ("fails", false),
                3 => ("dropped", true),
                4 => ("failover", false),
                _ => ("slow-stream", true),
            };
            let body = json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]});
            let r = call(&gw, "sk-mix", &body).await;
            if i % 6 == 5 {
                // The caller hangs up mid-stream.
                let mut r = r;
                let _ = r.chunk().await;
                drop(r);
            } else {
                let _ = r.bytes().await;
            }
        });
    }
    // And a few that time out upstream (first_byte_ms is 1.5 s).
    for _ in 0..4 {
        let gw = gw.clone();
        set.spawn(async move {
            let r = call(&gw, "sk-mix", &chat_body("too-slow")).await;
            assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    let series = format!("aigw_ratelimit_concurrency_in_use{{policy=\"{policy}\"}}");
    assert!(wait_metric(&gw, &series, 0.0).await);
    assert!(wait_metric(&gw, "aigw_inflight_requests", 0.0).await);
    // The store agrees with the gauge: all 20 slots can be taken at once again (a
    // shared store frees slots in a task: give it a moment).
    let mut all_free = false;
    for _ in 0..5 {
        let mut set = JoinSet::new();
        for _ in 0..20 {
            let gw = gw.clone();
            set.spawn(async move { call(&gw, "sk-mix", &chat_body("slow")).await.status() });
        }
        let mut ok = true;
        while let Some(c) = set.join_next().await {
            ok &= c.unwrap() == StatusCode::OK;
        }
        if ok {
            all_free = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(all_free, "every slot came back");
}

#[tokio::test]
async fn no_slot_leaks_after_hundreds_of_mixed_requests() {
    mixed_requests_leak_no_slot(CONFIG, "mixed").await;
}

#[tokio::test]
async fn no_slot_leaks_in_redis_either() {
    let policy = unique("mixed");
    let redis = PrivateRedis::start_any();
    let config = CONFIG
        .replace(
            "{SERVER}\n",
            &format!("{{SERVER}}\n  redis: {{url: \"{}\"}}\n", redis.url()),
        )
        .replace("name: mixed,", &format!("name: {policy},"))
        .replace("rate_limit: mixed}", &format!("rate_limit: {policy}}}"));
    assert!(config.contains("redis:") && config.contains(&policy));
    mixed_requests_leak_no_slot(&config, &policy).await;
}

#[tokio::test]
async fn counters_survive_a_reload_and_a_renamed_policy_starts_fresh() {
    let mock = Mock::start();
    let gw = Gateway::start(CONFIG, &mock);
    for _ in 0..3 {
        assert_eq!(call(&gw, "sk-a1", &chat_body("chat")).await.status(), StatusCode::OK);
    }
    let reloaded = || async {
        metrics_text(&gw)
            .await
            .contains("aigw_config_reloads_total{result=\"ok\"} 1")
    };
    gw.write_config(&format!("{CONFIG}  - {{name: extra, key: sk-extra}}\n"), &mock);
    gw.signal("HUP");
    assert!(wait_until_async(reloaded).await, "reloaded");
    assert_eq!(
        call(&gw, "sk-a1", &chat_body("chat")).await.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "the policy kept its name and its state"
    );
    let renamed = CONFIG.replace("three-per-min", "renamed");
    gw.write_config(&renamed, &mock);
    gw.signal("HUP");
    let fresh =
        wait_until_async(|| async { call(&gw, "sk-a1", &chat_body("chat")).await.status() == StatusCode::OK }).await;
    assert!(fresh, "a new policy name is a new counter");
}

fn shared_config(redis_url: &str, policy: &str) -> String {
    format!(
        r#"
{{SERVER}}
  redis: {{url: "{redis_url}", timeout_ms: 200}}
provider_keys:
  - {{name: mock, provider: openai_compatible, base_url: "{{MOCK}}/v1", api_key: "{{PROVIDER_KEY}}"}}
rate_limits:
  - {{name: {policy}, requests_per_minute: 6}}
  - {{name: {policy}-conc, concurrency: 2}}
  - {{name: {policy}-tok, tokens_per_minute: 40}}
models:
  - {{name: chat, provider_key: mock, model: upstream-chat}}
  - {{name: slow, provider_key: mock, model: "x?delay_ms=2000"}}
  - {{name: long, provider_key: mock, model: "x?words=60"}}
api_keys:
  - {{name: k, key: sk-k, owner: team, rate_limit: {policy}}}
  - {{name: c, key: sk-c, owner: team, rate_limit: {policy}-conc}}
  - {{name: t, key: sk-t, owner: team, rate_limit: {policy}-tok}}
"#
    )
}

#[tokio::test]
async fn two_gateways_share_one_limit_through_redis() {
    let mock = Mock::start();
    let redis = PrivateRedis::start_any();
    let config = shared_config(&redis.url(), &unique("shared"));
    let gws = [
        std::sync::Arc::new(Gateway::start(&config, &mock)),
        std::sync::Arc::new(Gateway::start(&config, &mock)),
    ];
    let (mut codes, mut left) = (Vec::new(), Vec::new());
    for i in 0..8 {
        let r = call(&gws[i % 2], "sk-k", &chat_body("chat")).await;
        codes.push(r.status().as_u16());
        left.push(header(&r, "x-ratelimit-remaining-requests"));
    }
    assert_eq!(
        codes,
        [200, 200, 200, 200, 200, 200, 429, 429],
        "one combined limit of 6"
    );
    assert_eq!(left, ["5", "4", "3", "2", "1", "0", "0", "0"]);
    assert_eq!(metric(&gws[0], "aigw_ratelimit_store_errors_total").await, 0.0);

    // Concurrency: one slow request on each instance fills the two shared slots.
    let mut set = JoinSet::new();
    for gw in &gws {
        let gw = gw.clone();
        set.spawn(async move { call(&gw, "sk-c", &chat_body("slow")).await.status() });
    }
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    for gw in &gws {
        assert_eq!(
            call(gw, "sk-c", &chat_body("chat")).await.status(),
            StatusCode::TOO_MANY_REQUESTS
        );
    }
    while let Some(c) = set.join_next().await {
        assert_eq!(c.unwrap(), StatusCode::OK);
    }
    // Released on both instances: the slots are free again.
    let free =
        wait_until_async(|| async { call(&gws[1], "sk-c", &chat_body("chat")).await.status() == StatusCode::OK }).await;
    assert!(free);

    // Tokens used on one instance count on the other.
    let r = call(&gws[0], "sk-t", &chat_body("long")).await;
    assert_eq!(r.status(), StatusCode::OK);
    let _ = r.bytes().await;
    let refused = wait_until_async(|| async {
        call(&gws[1], "sk-t", &chat_body("chat")).await.status() == StatusCode::TOO_MANY_REQUESTS
    })
    .await;
    assert!(refused);
}

#[tokio::test]
async fn a_redis_outage_admits_requests_and_recovers() {
    let port = free_port();
    let mut redis = PrivateRedis::start(port);
    let mock = Mock::start();
    let config = shared_config(&format!("redis://127.0.0.1:{port}/0"), "outage");
    let gw = Gateway::start(&config, &mock);
    let status = |key| {
        let gw = &gw;
        async move { call(gw, key, &chat_body("chat")).await.status() }
    };
    for _ in 0..6 {
        assert_eq!(status("sk-k").await, StatusCode::OK);
    }
    assert_eq!(status("sk-k").await, StatusCode::TOO_MANY_REQUESTS, "Redis enforces");

    redis.stop();
    for _ in 0..10 {
        assert_eq!(status("sk-k").await, StatusCode::OK, "admitted while Redis is down");
    }
    // Concurrency too: nothing is held, nothing leaks.
    assert_eq!(status("sk-c").await, StatusCode::OK);
    assert!(metric(&gw, "aigw_ratelimit_store_errors_total").await >= 10.0);
    let warnings = gw.log_text().matches("rate limit store unreachable").count();
    assert!(
        (1..=2).contains(&warnings),
        "warned once per interval, not per request: {warnings}"
    );
    assert!(
        !gw.log_text().contains("redis://"),
        "the Redis URL stays out of the logs"
    );

    // Redis comes back (empty): enforcement resumes on its own.
    let _redis = PrivateRedis::start(port);
    let enforced = wait_until_async(|| async { status("sk-k").await == StatusCode::TOO_MANY_REQUESTS }).await;
    assert!(enforced, "limits apply again once Redis answers");
    assert_eq!(
        metric(&gw, "aigw_ratelimit_concurrency_in_use{policy=\"outage-conc\"}").await,
        0.0
    );
}

/// A shared limit of 400 or more is leased in blocks of 1% (see src/limit/redis.rs).
fn leased_config(port: u16) -> String {
    format!(
        r#"
{{SERVER}}
  redis: {{url: "redis://127.0.0.1:{port}/0", timeout_ms: 500}}
provider_keys:
  - {{name: mock, provider: openai_compatible, base_url: "{{MOCK}}/v1", api_key: "{{PROVIDER_KEY}}"}}
rate_limits:
  - {{name: daily, requests_per_day: 400}}
  - {{name: wide, concurrency: 400}}
  - {{name: tokens, tokens_per_day: 20000}}
models:
  - {{name: chat, provider_key: mock, model: upstream-chat}}
api_keys:
  - {{name: k, key: sk-k, owner: team, rate_limit: daily}}
  - {{name: w, key: sk-w, owner: team, rate_limit: wide}}
  - {{name: t, key: sk-t, owner: team, rate_limit: tokens}}
"#
    )
}

/// Script calls Redis has run so far.
fn script_calls(port: u16) -> u64 {
    redis_calls(port, &["evalsha", "eval"])
}

/// Requests `gw` admits with key sk-k until the first refusal.
async fn admit_all(gw: &Gateway) -> usize {
    let mut admitted = 0;
    while call(gw, "sk-k", &chat_body("chat")).await.status() == StatusCode::OK {
        admitted += 1;
        assert!(admitted <= 400, "never past the limit");
    }
    admitted
}

#[tokio::test]
async fn leased_capacity_never_exceeds_the_shared_limit_and_goes_back_when_idle() {
    let port = free_port();
    let _redis = PrivateRedis::start(port);
    let mock = Mock::start();
    let config = leased_config(port);
    let (a, b) = (Gateway::start(&config, &mock), Gateway::start(&config, &mock));

    // `a` leases a block of 4 of the 400 and spends one.
    assert_eq!(call(&a, "sk-k", &chat_body("chat")).await.status(), StatusCode::OK);
    let before = script_calls(port);
    let admitted = admit_all(&b).await;
    // `a` holds 3 unspent that `b` cannot take, unless `b` took over a second and `a`
    // gave them back meanwhile.
    assert!(admitted == 396 || admitted == 399, "{admitted}");
    let calls = script_calls(port) - before;
    // One call per block of 4 (99) and the refusal; when `a` gave back meanwhile, its
    // call, one more lease and one more refusal. Without leases: one per request.
    assert!((99..=104).contains(&calls), "one Redis call per block of 4: {calls}");
    // Idle for a second, `a` gives its 3 back: `b` gets them and not one more.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(1 + admitted + admit_all(&b).await, 400, "400 in all");

    // Concurrency slots: the instance keeps what a fresh lease leaves idle, and gives it
    // back after a second without use.
    assert_eq!(call(&a, "sk-w", &chat_body("chat")).await.status(), StatusCode::OK);
    let key = "aigw:rl:wide:slots:owner=team";
    let held = || {
        redis_cli(port, &["HVALS", key])
            .split(':')
            .next()
            .unwrap_or("")
            .trim()
            .to_owned()
    };
    assert!(wait_until(5, || held() == "3"), "{}", held());
    assert!(wait_until(5, || redis_cli(port, &["HLEN", key]).trim() == "0"));
}

#[tokio::test]
async fn leased_tokens_charge_exactly_what_was_used() {
    let port = free_port();
    let _redis = PrivateRedis::start(port);
    let mock = Mock::start();
    let config = leased_config(port);
    let gws = [Gateway::start(&config, &mock), Gateway::start(&config, &mock)];
    let mut used = 0.0;
    for i in 0..30 {
        let body = json!({"model": "chat", "stream": i % 3 == 0, "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": "hello there"}]});
        let r = call(&gws[i % 2], "sk-t", &body).await;
        assert_eq!(r.status(), StatusCode::OK);
        let text = r.text().await.unwrap();
        let usage = if i % 3 == 0 {
            sse_data(&text)
                .iter()
                .filter_map(|d| serde_json::from_str::<Value>(d).ok())
                .filter_map(|v| v["usage"]["total_tokens"].as_f64())
                .sum::<f64>()
        } else {
            serde_json::from_str::<Value>(&text).unwrap()["usage"]["total_tokens"]
                .as_f64()
                .unwrap_or(0.0)
        };
        assert!(usage > 0.0, "{text}");
        used += usage;
    }
    // Tokens taken ahead and not used go back after a second idle; then Redis's state
    // is what the 30 requests used (20,000 a day refill 0.23 a second).
    let key = "aigw:rl:tokens:tpd:owner=team";
    let in_redis = || {
        let tat: f64 = redis_cli(port, &["GET", key]).trim().parse().unwrap_or(0.0);
        let time = redis_cli(port, &["TIME"]);
        let mut t = time.lines().map(|l| l.trim().parse::<f64>().unwrap());
        let now = (t.next().unwrap() - 1.7e9) * 1e6 + t.next().unwrap();
        (tat - now) / (86_400e6 / 20_000.0)
    };
    let settled = wait_until(5, || (in_redis() - used).abs() < 3.0);
    assert!(settled, "Redis holds {} tokens for {used} used", in_redis());
}

#[tokio::test]
async fn a_stopping_instance_gives_its_leased_capacity_back() {
    let port = free_port();
    let _redis = PrivateRedis::start(port);
    let mock = Mock::start();
    let config = leased_config(port);
    let (mut a, b) = (Gateway::start(&config, &mock), Gateway::start(&config, &mock));
    // `a` holds 3 of the 400 when it is told to stop: they go back before it exits.
    assert_eq!(call(&a, "sk-k", &chat_body("chat")).await.status(), StatusCode::OK);
    a.signal("TERM");
    assert!(wait_until(10, || a.child.try_wait().unwrap().is_some()));
    assert_eq!(admit_all(&b).await, 399);
}

/// `server.work_stealing: false` pins each connection to one thread's runtime (Pingora's
/// no-steal flavour): shared limits, whose Redis connections and lease tasks live on
/// whichever thread made them, still admit, count and give back across threads.
#[tokio::test]
async fn pinned_worker_threads_share_limits_across_threads() {
    let port = free_port();
    let _redis = PrivateRedis::start(port);
    let mock = Mock::start();
    let config = leased_config(port).replace("{SERVER}", "{SERVER}\n  threads: 2\n  work_stealing: false");
    let gw = Gateway::start(&config, &mock);
    // Many connections at once, so both threads serve some: every one admitted.
    let gw = std::sync::Arc::new(gw);
    let mut calls = JoinSet::new();
    for i in 0..40 {
        let gw = gw.clone();
        calls.spawn(async move {
            let mut body = chat_body("chat");
            body["stream"] = json!(i % 2 == 0);
            let key = if i % 4 < 2 { "sk-w" } else { "sk-t" };
            let r = call(&gw, key, &body).await;
            (r.status(), r.text().await.unwrap())
        });
    }
    while let Some(done) = calls.join_next().await {
        let (status, text) = done.unwrap();
        assert_eq!(status, StatusCode::OK, "{text}");
    }
    // Every concurrency slot went back to Redis; the daily limit still holds exactly.
    let key = "aigw:rl:wide:slots:owner=team";
    assert!(
        wait_until(5, || redis_cli(port, &["HLEN", key]).trim() == "0"),
        "{}",
        redis_cli(port, &["HGETALL", key])
    );
    assert_eq!(admit_all(&gw).await, 400);
}
