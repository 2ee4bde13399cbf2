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
  - {{name: guarded, provider_key: oa, model: up-guarded, guardrails: [no-codes]}}
  - {{name: watched, provider_key: oa, model: up-watched, guardrails: [watch]}}
guardrails:
  - {{name: no-codes, rules: [{{kind: keyword, words: [falcon]}}], action: block}}
  - {{name: watch, rules: [{{kind: keyword, words: [falcon]}}], action: monitor}}
api_keys:
  - {{name: a, key: sk-a, owner: team-a, budget: monthly, models: [mini, big, claude]}}
  - {{name: a-other, key: sk-a2, owner: team-a, budget: monthly, models: [mini, big]}}
  - {{name: b, key: sk-b, owner: team-b, budget: monthly, models: [mini, big]}}
  - {{name: both, key: sk-both, owner: team-c, models: [mini, other]}}
  - {{name: limited, key: sk-limited, owner: team-d, models: [mini], rate_limit: two}}
  - {{name: guarded-key, key: sk-guarded, owner: team-e, models: [mini, guarded, watched], guardrails: [no-codes]}}
  - {{name: plain, key: sk-plain, owner: team-f, models: [guarded, watched]}}
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
    // An output file named while the batch runs is not shown (nor mapped) before it ends:
    // the charge is made when the results are first shown.
    let files = || async { get(&gw, "sk-a", "/v1/files").await.1["data"].as_array().unwrap().len() };
    let before = files().await;
    let (s, b) = create_batch(&gw, "sk-a", &fid, json!({"mock": "early"})).await;
    assert_eq!((s, &b["status"]), (StatusCode::OK, &json!("in_progress")), "{b}");
    assert_eq!(b["output_file_id"], Value::Null, "{b}");
    assert_eq!(files().await, before);
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

/// A file of `n` requests (CRLF line ends, a blank line between each two), and what the
/// provider must get for it: each line as parsed, its model rewritten, LF-ended.
fn many_lines(n: usize) -> (Vec<u8>, String) {
    let (mut sent, mut want) = (String::new(), String::new());
    for i in 0..n {
        let l = json!({"custom_id": format!("r{i}"), "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": if i % 2 == 0 { "mini" } else { "big" }, "n": 1,
                     "messages": [{"role": "user", "content": format!("question {i} {}", "·".repeat(i % 97))}]}});
        // Written by hand with odd spacing: what goes upstream is written anew.
        sent.push_str(&format!("{}  \r\n\r\n", l.to_string().replace(",\"", ", \"")));
        let mut up = l.clone();
        up["body"]["model"] = json!(if i % 2 == 0 { "up-mini" } else { "up-big" });
        want.push_str(&up.to_string());
        want.push('\n');
    }
    (sent.into_bytes(), want)
}

async fn content(gw: &Gateway, key: &str, id: &str) -> (StatusCode, bytes::Bytes) {
    let r = client()
        .get(format!("{}/v1/files/{id}/content", gw.url()))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    (r.status(), r.bytes().await.unwrap())
}

#[tokio::test]
async fn uploads_reach_the_provider_whole_and_a_batch_file_rewritten_across_chunks() {
    let mock = Mock::start();
    let gw = Gateway::start(&config(None, 16 << 20), &mock);
    // A batch file of many 64 KiB chunks as it is written upstream.
    let (sent, want) = many_lines(6_000);
    assert!(want.len() > 10 * 64 * 1024, "{}", want.len());
    let r = upload(&gw, "sk-a", "batch", sent).await;
    assert_eq!(r.status(), StatusCode::OK);
    let file: Value = r.json().await.unwrap();
    assert_eq!(file["bytes"], want.len(), "the declared length is what was sent");
    let (s, got) = content(&gw, "sk-a", file["id"].as_str().unwrap()).await;
    assert_eq!(s, StatusCode::OK);
    assert!(got == want.as_bytes(), "{} bytes against {}", got.len(), want.len());
    // Any other purpose: the caller's bytes, untouched (every byte value, CRLFs included).
    let blob: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let r = upload(&gw, "sk-a", "user_data", blob.clone()).await;
    assert_eq!(r.status(), StatusCode::OK);
    let id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let (s, got) = content(&gw, "sk-a", &id).await;
    assert_eq!(s, StatusCode::OK);
    assert!(got == blob, "{} bytes against {}", got.len(), blob.len());
    // A form with two files, or two purposes, is refused: which one counts is ambiguous.
    let twice = reqwest::multipart::Form::new()
        .text("purpose", "user_data")
        .part("file", reqwest::multipart::Part::bytes(b"a".to_vec()).file_name("a"))
        .part("file", reqwest::multipart::Part::bytes(b"b".to_vec()).file_name("b"));
    let r = client()
        .post(format!("{}/v1/files", gw.url()))
        .bearer_auth("sk-a")
        .multipart(twice)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"].as_str().unwrap().contains("more than one 'file'"),
        "{v}"
    );
}

/// Ids are capped per owner and kind: past the cap an upload or a batch is refused
/// with a 400 until an id is deleted (files) or expires; a batch's own output files
/// are not counted, so a batch admitted always shows its results.
async fn capped(gw: &Gateway, mock: &Mock) {
    let f1 = upload_id(gw, "sk-a", "batch", line(1, "mini").into_bytes()).await;
    let f2 = upload_id(gw, "sk-a", "batch", line(2, "mini").into_bytes()).await;
    let calls = |path: &str| {
        mock.requests()
            .iter()
            .filter(|r| r["method"] == "POST" && r["path"] == path)
            .count()
    };
    let uploads = || calls("/v1/files");
    // Refused before the provider is called: nothing is created there for no id.
    let before = uploads();
    let r = upload(gw, "sk-a", "batch", line(3, "mini").into_bytes()).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"]["message"].as_str().unwrap().contains("holds 2 files"), "{v}");
    assert_eq!(uploads(), before);
    // Another owner is not held back by this one.
    upload_id(gw, "sk-b", "batch", line(1, "mini").into_bytes()).await;
    assert_eq!(uploads(), before + 1);
    // Deleting one makes room.
    let (s, _) = call(gw, "sk-a", reqwest::Method::DELETE, &format!("/v1/files/{f2}"), None).await;
    assert_eq!(s, StatusCode::OK);
    upload_id(gw, "sk-a", "batch", line(3, "mini").into_bytes()).await;
    // Two batches, then the cap; each batch's output file comes on top.
    for _ in 0..2 {
        let (s, b) = create_batch(gw, "sk-a", &f1, json!({})).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let (s, b) = get(gw, "sk-a", &format!("/v1/batches/{}", b["id"].as_str().unwrap())).await;
        assert_eq!((s, &b["status"]), (StatusCode::OK, &json!("completed")), "{b}");
        let out = b["output_file_id"].as_str().unwrap();
        assert_eq!(content(gw, "sk-a", out).await.0, StatusCode::OK);
    }
    let created = calls("/v1/batches");
    let (s, v) = create_batch(gw, "sk-a", &f1, json!({})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(
        calls("/v1/batches"),
        created,
        "no batch runs at the provider for a refused one"
    );
    assert!(
        v["error"]["message"].as_str().unwrap().contains("holds 2 batches"),
        "{v}"
    );
    let (_, list) = get(gw, "sk-a", "/v1/files").await;
    assert_eq!(
        list["data"].as_array().unwrap().len(),
        4,
        "two uploads, two outputs: {list}"
    );
}

fn capped_config(redis: Option<&PrivateRedis>) -> String {
    config(redis, 1 << 20).replace(
        "  admin_keys:",
        "  files: {max_ids_per_owner: 2, retention_hours: 48}\n  admin_keys:",
    )
}

#[tokio::test]
async fn an_owner_holds_at_most_its_cap_of_ids_in_memory() {
    let mock = Mock::start();
    let gw = Gateway::start(&capped_config(None), &mock);
    capped(&gw, &mock).await;
}

#[tokio::test]
async fn an_owner_holds_at_most_its_cap_of_ids_across_a_fleet() {
    let redis = PrivateRedis::start_any();
    let mock = Mock::start();
    let gw = Gateway::start(&capped_config(Some(&redis)), &mock);
    capped(&gw, &mock).await;
}

/// The store itself, as both kinds keep it: ids past the retention are forgotten (gets,
/// lists, and the cap stop counting them), an owner's list is its own, newest first.
async fn expiry(ids: &aigw::files::store::Ids) {
    use aigw::files::store::{Cap, Kind, Record};
    let keep = aigw::raw::FileIds {
        retention_hours: 48,
        max_ids_per_owner: 3,
        max_ids: 100,
    };
    let now = chrono::Utc::now().timestamp_millis();
    let rec = |owner: &str, age_h: i64| Record {
        kind: Kind::File,
        owner: owner.into(),
        provider: "oa".into(),
        upstream: "up".into(),
        created_ms: now - age_h * 3_600_000,
        object: None,
        aliases: Vec::new(),
        input: None,
        budget: None,
    };
    assert!(ids.put("old", &rec("o", 49), false, Cap::Owner, &keep).await.unwrap());
    assert!(ids.put("mid", &rec("o", 47), false, Cap::Owner, &keep).await.unwrap());
    assert!(ids.put("new", &rec("o", 1), false, Cap::Owner, &keep).await.unwrap());
    assert!(ids.put("theirs", &rec("p", 1), false, Cap::Owner, &keep).await.unwrap());
    assert!(ids.get("old", &keep).await.unwrap().is_none(), "past the retention");
    assert!(ids.get("mid", &keep).await.unwrap().is_some());
    let listed: Vec<String> = ids
        .list(Kind::File, "o", &keep)
        .await
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(listed, ["new", "mid"]);
    // The expired one does not count: a third fits, a fourth does not.
    assert!(ids.put("third", &rec("o", 0), false, Cap::Owner, &keep).await.unwrap());
    let full = ids
        .put("fourth", &rec("o", 0), false, Cap::Owner, &keep)
        .await
        .unwrap_err();
    assert!(full.to_string().contains("holds 3 files"), "{full}");
    // Exempt ids are kept past the cap, once.
    assert!(ids.put("out", &rec("o", 0), true, Cap::Exempt, &keep).await.unwrap());
    assert!(!ids.put("out", &rec("o", 0), true, Cap::Exempt, &keep).await.unwrap());
    // A shorter retention today forgets what an older one kept.
    let short = aigw::raw::FileIds {
        retention_hours: 25,
        ..keep
    };
    assert!(ids.get("mid", &short).await.unwrap().is_none());
    assert_eq!(ids.list(Kind::File, "o", &short).await.unwrap().len(), 3);
}

#[tokio::test]
async fn ids_expire_in_memory_and_in_redis() {
    expiry(&aigw::files::store::Ids::new(None)).await;
    // In memory, all owners together are bounded too: past it, a 503 and a warning.
    let ids = aigw::files::store::Ids::new(None);
    let keep = aigw::raw::FileIds {
        max_ids: 2,
        ..Default::default()
    };
    let rec = |owner: &str| aigw::files::store::Record {
        kind: aigw::files::store::Kind::Batch,
        owner: owner.into(),
        provider: "oa".into(),
        upstream: "up".into(),
        created_ms: chrono::Utc::now().timestamp_millis(),
        object: None,
        aliases: Vec::new(),
        input: None,
        budget: None,
    };
    use aigw::files::store::Cap;
    assert!(ids.put("a", &rec("a"), false, Cap::Owner, &keep).await.unwrap());
    assert!(ids.put("b", &rec("b"), false, Cap::Owner, &keep).await.unwrap());
    let e = ids.put("c", &rec("c"), false, Cap::Owner, &keep).await.unwrap_err();
    assert_eq!(e.status(), 503, "{e}");
    let redis = PrivateRedis::start_any();
    let pool = aigw::redis_pool::RedisPool::new(&redis.url(), 1, std::time::Duration::from_secs(2)).unwrap();
    expiry(&aigw::files::store::Ids::new(Some(std::sync::Arc::new(pool)))).await;
}

/// A batch's lines and answers pass no guardrail, so a batch must not be the way around
/// one: an alias under a guardrail that blocks or masks (the key's or the model's) cannot
/// be batched; a monitor's can.
#[tokio::test]
async fn guardrails_cannot_be_bypassed_through_a_batch() {
    let mock = Mock::start();
    let gw = Gateway::start(&config(None, 16 << 20), &mock);
    for (key, model, guard) in [("sk-guarded", "mini", "no-codes"), ("sk-plain", "guarded", "no-codes")] {
        let r = upload(&gw, key, "batch", line(1, model).into_bytes()).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{key} {model}");
        let v: Value = r.json().await.unwrap();
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(&format!("'{guard}'")), "{msg}");
    }
    upload_id(&gw, "sk-plain", "batch", line(1, "watched").into_bytes()).await;
}
