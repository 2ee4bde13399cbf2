//! Files and batches end to end: a real gateway and the mock's Files and Batches APIs,
//! with ids kept in memory and in a Redis shared by two gateways. Ownership (another
//! owner's id is 404 everywhere and absent from lists), batch files checked line by line,
//! uploads bounded, and a completed batch charged once however often it is retrieved.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// The mock reports 100 input and 20 output tokens per batch line; at $1 per output
/// token a line costs $20, $10 at the default batch discount of one half.
fn config(redis: Option<&PrivateRedis>, max_body: u64) -> String {
    let redis = match redis {
        Some(r) => format!("\n  redis: {{url: \"{}\", timeout_ms: 500}}", r.url()),
        None => String::new(),
    };
    format!(
        r#"
{{SERVER}}{redis}
  max_request_body_bytes: {max_body}
  admin_keys: [{{key: adm-files}}]
provider_keys:
  - {{name: oa, provider: openai_compatible, base_url: "{{MOCK}}/v1", api_key: "{{PROVIDER_KEY}}"}}
  - {{name: oa2, provider: openai_compatible, base_url: "{{MOCK}}/v1", api_key: "{{PROVIDER_KEY}}"}}
  - {{name: an, provider: anthropic, base_url: "{{MOCK}}", api_key: "{{PROVIDER_KEY}}"}}
budgets:
  - {{name: monthly, usd: 100000, period: month}}
rate_limits:
  - {{name: two, requests_per_minute: 2}}
models:
  - {{name: mini, provider_key: oa, model: up-mini, pricing: {{input_per_mtok: 0, output_per_mtok: 1000000}}}}
  - {{name: big, provider_key: oa, model: up-big, pricing: {{input_per_mtok: 0, output_per_mtok: 1000000, batch_discount: 0.25}}}}
  - {{name: other, provider_key: oa2, model: up-other}}
  - {{name: claude, provider_key: an, model: up-claude}}
  - {{name: secret, provider_key: oa, model: up-secret}}
api_keys:
  - {{name: a, key: sk-a, owner: team-a, budget: monthly, models: [mini, big, claude]}}
  - {{name: a-other, key: sk-a2, owner: team-a, budget: monthly, models: [mini, big]}}
  - {{name: b, key: sk-b, owner: team-b, budget: monthly, models: [mini, big]}}
  - {{name: both, key: sk-both, owner: team-c, models: [mini, other]}}
  - {{name: limited, key: sk-limited, owner: team-d, models: [mini], rate_limit: two}}
"#
    )
}

fn line(n: usize, model: &str) -> String {
    json!({"custom_id": format!("r{n}"), "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": "hi"}]}})
    .to_string()
}

async fn upload(gw: &Gateway, key: &str, purpose: &str, content: Vec<u8>) -> reqwest::Response {
    let form = reqwest::multipart::Form::new()
        .text("purpose", purpose.to_owned())
        .part(
            "file",
            reqwest::multipart::Part::bytes(content).file_name("input.jsonl"),
        );
    client()
        .post(format!("{}/v1/files", gw.url()))
        .bearer_auth(key)
        .multipart(form)
        .send()
        .await
        .unwrap()
}

/// Uploads a file that must be accepted; its id.
async fn upload_id(gw: &Gateway, key: &str, purpose: &str, content: Vec<u8>) -> String {
    let r = upload(gw, key, purpose, content).await;
    assert_eq!(r.status(), StatusCode::OK);
    r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned()
}

async fn call(
    gw: &Gateway,
    key: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut r = client().request(method, format!("{}{path}", gw.url())).bearer_auth(key);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().await.unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

async fn create_batch(gw: &Gateway, key: &str, file: &str, metadata: Value) -> (StatusCode, Value) {
    let body = json!({"input_file_id": file, "endpoint": "/v1/chat/completions", "completion_window": "24h",
        "metadata": metadata});
    call(gw, key, reqwest::Method::POST, "/v1/batches", Some(body)).await
}

async fn get(gw: &Gateway, key: &str, path: &str) -> (StatusCode, Value) {
    call(gw, key, reqwest::Method::GET, path, None).await
}

async fn spent(gw: &Gateway, owner: &str) -> f64 {
    spend_of(gw, "adm-files", owner).await["spent_usd"]
        .as_f64()
        .unwrap_or(0.0)
}

/// A batch of lines for `mini` and `big` (CRLF line ends, `model` written with an escape):
/// uploaded, created, completed and charged.
async fn batch_lifecycle(gw: &Gateway, mock: &Mock, other_gw: &Gateway) {
    let content = format!(
        "{}\r\n{}\r\n\r\n",
        line(1, "mini"),
        line(2, "big").replace("\"model\"", "\"mod\\u0065l\"")
    );
    let r = upload(gw, "sk-a", "batch", content.into_bytes()).await;
    assert_eq!(r.status(), StatusCode::OK);
    let file: Value = r.json().await.unwrap();
    let fid = file["id"].as_str().unwrap().to_owned();
    assert!(fid.starts_with("file-") && !fid.contains("mock"), "{file}");
    // The provider got the upstream models, written from the parsed lines.
    let up = mock
        .requests()
        .into_iter()
        .rev()
        .find(|r| r["path"] == "/v1/files")
        .unwrap();
    let sent = up["body"].as_str().unwrap();
    assert!(
        sent.contains(r#""model":"up-mini""#) && sent.contains(r#""model":"up-big""#),
        "{sent}"
    );
    assert!(!sent.contains(r#""mini""#) && !sent.contains("u0065"), "{sent}");
    assert_eq!(up["headers"]["authorization"], format!("Bearer {PROVIDER_KEY}"));

    let (s, v) = get(other_gw, "sk-a2", &format!("/v1/files/{fid}")).await;
    assert_eq!((s, v["id"].as_str()), (StatusCode::OK, Some(fid.as_str())), "{v}");
    let (s, v) = get(other_gw, "sk-a", "/v1/files").await;
    assert_eq!(s, StatusCode::OK);
    assert!(v["data"].as_array().unwrap().iter().any(|f| f["id"] == fid), "{v}");

    let (s, batch) = create_batch(gw, "sk-a", &fid, json!({})).await;
    assert_eq!(s, StatusCode::OK, "{batch}");
    let bid = batch["id"].as_str().unwrap().to_owned();
    assert!(bid.starts_with("batch_") && !bid.contains("mock"), "{batch}");
    assert_eq!(batch["input_file_id"], fid);
    let before = spent(gw, "team-a").await;

    // Retrieved many times, at once, from two instances (with Redis): charged once.
    let path = format!("/v1/batches/{bid}");
    let all = futures_util::future::join_all((0..8).map(|i| {
        let (g, p) = (if i % 2 == 0 { gw } else { other_gw }, path.clone());
        async move { get(g, "sk-a", &p).await }
    }))
    .await;
    for (s, v) in &all {
        assert_eq!(*s, StatusCode::OK, "{v}");
        assert_eq!(v["status"], "completed");
        assert_eq!(v["id"], bid.as_str());
    }
    let out = all[0].1["output_file_id"].as_str().unwrap().to_owned();
    assert!(out.starts_with("file-") && !out.contains("mock"), "{out}");
    assert!(all.iter().all(|(_, v)| v["output_file_id"] == out.as_str()));
    // mini: 20 output tokens x $1 x 0.5; big: 20 x $1 x 0.25.
    let want = before + 10.0 + 5.0;
    let ok = wait_until_async(|| async { (spent(gw, "team-a").await - want).abs() < 1e-6 }).await;
    assert!(ok, "spent {} want {want}", spent(gw, "team-a").await);
    for _ in 0..3 {
        assert_eq!(get(other_gw, "sk-a", &path).await.0, StatusCode::OK);
    }
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert!((spent(gw, "team-a").await - want).abs() < 1e-6);
    assert!((spent(other_gw, "team-a").await - want).abs() < 1e-6);

    // The output file comes back as the provider wrote it.
    let r = client()
        .get(format!("{}/v1/files/{out}/content", other_gw.url()))
        .bearer_auth("sk-a")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let text = r.text().await.unwrap();
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(text.contains(r#""completion_tokens":20"#), "{text}");

    let (_, list) = get(gw, "sk-a", "/v1/batches").await;
    assert!(
        list["data"].as_array().unwrap().iter().any(|b| b["id"] == bid.as_str()),
        "{list}"
    );

    // Another owner: every id is 404, every list is empty of them.
    for (method, p) in [
        (reqwest::Method::GET, format!("/v1/files/{fid}")),
        (reqwest::Method::GET, format!("/v1/files/{fid}/content")),
        (reqwest::Method::GET, format!("/v1/files/{out}/content")),
        (reqwest::Method::DELETE, format!("/v1/files/{fid}")),
        (reqwest::Method::GET, format!("/v1/batches/{bid}")),
        (reqwest::Method::POST, format!("/v1/batches/{bid}/cancel")),
        // Guessed ids, and the provider's own.
        (
            reqwest::Method::GET,
            "/v1/files/file-00000000000000000000000000000000".to_owned(),
        ),
        (reqwest::Method::GET, "/v1/files/file-mock1".to_owned()),
    ] {
        let (s, v) = call(other_gw, "sk-b", method.clone(), &p, None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{method} {p}: {v}");
        assert_eq!(v["error"]["code"], "not_found");
    }
    let (_, v) = create_batch(gw, "sk-b", &fid, json!({})).await;
    assert_eq!(v["error"]["code"], "not_found", "{v}");
    for p in ["/v1/files", "/v1/batches"] {
        let (s, v) = get(gw, "sk-b", p).await;
        assert_eq!((s, v["data"].as_array().unwrap().len()), (StatusCode::OK, 0), "{v}");
    }
    assert!((spent(gw, "team-b").await).abs() < 1e-9);

    // Deleted: gone for its owner too.
    let (s, v) = call(gw, "sk-a", reqwest::Method::DELETE, &format!("/v1/files/{fid}"), None).await;
    assert_eq!((s, &v["deleted"]), (StatusCode::OK, &json!(true)), "{v}");
    assert_eq!(
        get(other_gw, "sk-a", &format!("/v1/files/{fid}")).await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn a_batch_runs_end_to_end_in_one_instance() {
    let mock = Mock::start();
    let gw = Gateway::start(&config(None, 1 << 20), &mock);
    batch_lifecycle(&gw, &mock, &gw).await;
    // Admitted like any request: in the access log with its owner, and in the metrics.
    let lines = gw.access_lines_until(1, |l| l.contains(r#""path":"/v1/batches""#));
    let l = lines.iter().find(|l| l.contains(r#""path":"/v1/batches""#)).unwrap();
    assert!(
        l.contains(r#""owner":"team-a""#) && l.contains(r#""status":200"#),
        "{l}"
    );
    let m = metrics(&gw).await;
    assert!(
        m.contains_key(r#"aigw_requests_total{model="",owner="team-b",status="404"}"#),
        "{m:?}"
    );
    assert_eq!(
        m.get(r#"aigw_cost_usd_total{model="mini",owner="team-a"}"#),
        Some(&10.0),
        "{m:?}"
    );
    assert_eq!(
        m.get(r#"aigw_tokens_total{model="big",owner="team-a",type="output"}"#),
        Some(&20.0)
    );
}

#[tokio::test]
async fn a_fleet_shares_ids_and_charges_once_through_redis() {
    let redis = PrivateRedis::start_any();
    let mock = Mock::start();
    let one = Gateway::start(&config(Some(&redis), 1 << 20), &mock);
    let two = Gateway::start(&config(Some(&redis), 1 << 20), &mock);
    batch_lifecycle(&one, &mock, &two).await;
}

#[tokio::test]
async fn batch_files_that_break_the_rules_are_refused_naming_the_line() {
    let mock = Mock::start();
    let gw = Gateway::start(&config(None, 64 << 10), &mock);
    let seen = mock.requests().len();
    let cases: Vec<(&str, String, &str)> = vec![
        // A model the key may not use, and one that does not exist.
        (
            "sk-a",
            format!("{}\n{}\n", line(1, "mini"), line(2, "secret")),
            "line 2",
        ),
        ("sk-a", format!("{}\n{}\n", line(1, "mini"), line(2, "nope")), "line 2"),
        // Not an OpenAI-style provider.
        ("sk-a", format!("{}\n", line(1, "claude")), "line 1"),
        // Two provider keys.
        (
            "sk-both",
            format!("{}\n\n{}\n", line(1, "mini"), line(2, "other")),
            "line 3",
        ),
        // Malformed, and a model hidden behind a duplicate key: the last one counts, and
        // it is the one checked.
        ("sk-a", format!("{}\n{{\"custom_id\":\n", line(1, "mini")), "line 2"),
        (
            "sk-a",
            line(1, "mini").replace("\"model\":\"mini\"", "\"model\":\"mini\",\"model\":\"secret\""),
            "line 1",
        ),
    ];
    for (key, content, want) in cases {
        let r = upload(&gw, key, "batch", content.clone().into_bytes()).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{content}");
        let v: Value = r.json().await.unwrap();
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(want), "{want}: {msg}");
    }
    // Bigger than max_request_body_bytes: 413.
    let big = (0..2000).map(|i| line(i, "mini")).collect::<Vec<_>>().join("\n");
    let r = upload(&gw, "sk-a", "batch", big.into_bytes()).await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // Nothing reached the provider.
    assert_eq!(mock.requests().len(), seen);

    // A file of another purpose goes to the one OpenAI-style key the caller reaches; a
    // caller reaching two has no rule to choose by.
    let r = upload(&gw, "sk-a", "assistants", b"notes".to_vec()).await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = upload(&gw, "sk-both", "assistants", b"notes".to_vec()).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = upload(&gw, "sk-a", "bogus", b"notes".to_vec()).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // A non-batch file cannot feed a batch.
    let fid = upload_id(&gw, "sk-a", "assistants", b"notes".to_vec()).await;
    let (s, _) = create_batch(&gw, "sk-a", &fid, json!({})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // The key's rate limits count these requests like any other.
    for want in [StatusCode::OK, StatusCode::OK, StatusCode::TOO_MANY_REQUESTS] {
        assert_eq!(get(&gw, "sk-limited", "/v1/batches").await.0, want);
    }
    // No caller credential: 401 before anything.
    let r = client().get(format!("{}/v1/files", gw.url())).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn ids_the_provider_reports_are_mapped_or_dropped() {
    let mock = Mock::start();
    let gw = Gateway::start(&config(None, 1 << 20), &mock);
    let fid = upload_id(&gw, "sk-a", "batch", line(1, "mini").into_bytes()).await;
    let (_, b) = create_batch(&gw, "sk-a", &fid, json!({"mock": "foreign"})).await;
    let bid = b["id"].as_str().unwrap().to_owned();
    let (s, v) = get(&gw, "sk-a", &format!("/v1/batches/{bid}")).await;
    assert_eq!(s, StatusCode::OK);
    let text = v.to_string();
    assert!(
        !text.contains("mock") || text.contains("\"mock\":\"foreign\""),
        "{text}"
    );
    assert!(!text.contains("file-foreign") && !text.contains("batch_mock"), "{text}");
    assert_eq!(v["input_file_id"], fid.as_str());
    let err = v["error_file_id"].as_str().unwrap();
    // The unknown file is the batch owner's: another owner cannot see it.
    assert_eq!(
        get(&gw, "sk-b", &format!("/v1/files/{err}")).await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn batch_files_are_bounded_by_lines_and_bytes_not_by_what_they_hold() {
    let mock = Mock::start();
    let gw = Gateway::start(&config(None, 16 << 20), &mock);
    let short = |n: usize| {
        json!({"custom_id": format!("{n}"), "method": "POST", "url": "/v1/embeddings", "body": {"model": "mini"}})
            .to_string()
    };
    // One request too many: refused at the line past the limit.
    let lines: Vec<String> = (0..50_001).map(short).collect();
    let r = upload(&gw, "sk-a", "batch", lines.join("\n").into_bytes()).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"]["message"].as_str().unwrap().contains("line 50001"), "{v}");
    // A million blank lines hold no request.
    let r = upload(&gw, "sk-a", "batch", vec![b'\n'; 1_000_000]).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // One huge line within the byte bound is a request like any other.
    let huge = line(1, "mini").replace("\"hi\"", &format!("\"{}\"", "x".repeat(4 << 20)));
    let r = upload(&gw, "sk-a", "batch", huge.into_bytes()).await;
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_file_whose_model_moved_to_another_provider_key_cannot_feed_a_batch() {
    let mock = Mock::start();
    let gw = Gateway::start(&config(None, 1 << 20), &mock);
    let fid = upload_id(&gw, "sk-a", "batch", line(1, "mini").into_bytes()).await;
    // `mini` now lives at the other provider key.
    let moved = config(None, 1 << 20).replace("{name: mini, provider_key: oa,", "{name: mini, provider_key: oa2,");
    gw.write_config(&moved, &mock);
    gw.signal("HUP");
    assert!(wait_until_async(|| async { metric(&gw, r#"aigw_config_reloads_total{result="ok"}"#).await == 1.0 }).await);
    let (s, v) = create_batch(&gw, "sk-a", &fid, json!({})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("no longer served"),
        "{v}"
    );
}

#[tokio::test]
async fn azure_keeps_files_and_batches_under_openai_with_its_api_version() {
    let mock = Mock::start();
    let config = r#"
{SERVER}
provider_keys:
  - {name: az, provider: azure, base_url: "{MOCK}", api_key: "{PROVIDER_KEY}", api_version: "2024-10-21"}
models:
  - {name: az-chat, provider_key: az, model: my-deployment}
api_keys:
  - {name: a, key: sk-a, owner: team-a}
"#;
    let gw = Gateway::start(config, &mock);
    let fid = upload_id(&gw, "sk-a", "batch", line(1, "az-chat").into_bytes()).await;
    let up = mock.last_request();
    assert_eq!(up["path"], "/openai/files?api-version=2024-10-21");
    assert_eq!(up["headers"]["api-key"], PROVIDER_KEY);
    assert!(up["headers"].get("authorization").is_none(), "{up}");
    assert!(up["body"].as_str().unwrap().contains(r#""model":"my-deployment""#));
    let (s, b) = create_batch(&gw, "sk-a", &fid, json!({})).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, b) = get(&gw, "sk-a", &format!("/v1/batches/{}", b["id"].as_str().unwrap())).await;
    assert_eq!((s, &b["status"]), (StatusCode::OK, &json!("completed")), "{b}");
    assert!(mock.last_request()["path"]
        .as_str()
        .unwrap()
        .ends_with("/content?api-version=2024-10-21"));
}

#[tokio::test]
async fn a_batch_is_admitted_against_the_budget_and_its_charge_counts() {
    let mock = Mock::start();
    // $15 per batch of the lifecycle's two lines; the budget admits one batch.
    let gw = Gateway::start(&config(None, 1 << 20).replace("usd: 100000", "usd: 12"), &mock);
    let content = format!("{}\n{}\n", line(1, "mini"), line(2, "big"));
    let fid = upload_id(&gw, "sk-a", "batch", content.into_bytes()).await;
    let (s, b) = create_batch(&gw, "sk-a", &fid, json!({})).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(
        get(&gw, "sk-a", &format!("/v1/batches/{}", b["id"].as_str().unwrap()))
            .await
            .0,
        StatusCode::OK
    );
    let (s, v) = create_batch(&gw, "sk-a2", &fid, json!({})).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert_eq!(v["error"]["code"], "budget_exceeded");
    // Another owner's budget is its own.
    let fid_b = upload_id(&gw, "sk-b", "batch", line(1, "mini").into_bytes()).await;
    assert_eq!(create_batch(&gw, "sk-b", &fid_b, json!({})).await.0, StatusCode::OK);
}
