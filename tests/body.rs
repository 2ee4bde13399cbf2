//! Request bodies of any size and framing, over HTTP/1.1, HTTP/2 (h2c and TLS/ALPN), and
//! `Expect: 100-continue`. These guard the vendored pingora-proxy patch (vendor/README.md).
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const MIB: usize = 1024 * 1024;

fn big_body() -> String {
    json!({"model": "chat", "messages": [{"role": "user", "content": "y".repeat(MIB)}]}).to_string()
}

/// The upstream must receive exactly the rewritten body, however it arrived.
fn assert_forwarded_whole(mock: &Mock, sent: &str) {
    let expected = sent.replacen(r#""model":"chat""#, r#""model":"upstream-chat""#, 1);
    let seen = mock.last_request();
    assert_eq!(seen["body_len"], expected.len());
    assert_eq!(
        seen["body_blake3"],
        blake3::hash(expected.as_bytes()).to_hex().to_string()
    );
    assert_eq!(seen["headers"]["content-length"], expected.len().to_string());
}

#[tokio::test]
async fn one_mib_over_http1() {
    let mock = Mock::start();
    let gw = Gateway::start(BASE_CONFIG, &mock);
    let body = big_body();
    let resp = post_raw_as(&gw, CALLER_KEY, "/v1/chat/completions", body.clone()).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), reqwest::Version::HTTP_11);
    assert_forwarded_whole(&mock, &body);
}

#[tokio::test]
async fn one_mib_chunked_over_http1() {
    let mock = Mock::start();
    let gw = Gateway::start(BASE_CONFIG, &mock);
    let body = big_body();
    let parts: Vec<Result<Vec<u8>, std::io::Error>> = body.as_bytes().chunks(7919).map(|c| Ok(c.to_vec())).collect();
    let resp = client()
        .post(format!("{}/v1/chat/completions", gw.url()))
        .bearer_auth(CALLER_KEY)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(parts)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_forwarded_whole(&mock, &body);
}

#[tokio::test]
async fn one_mib_over_h2c() {
    let mock = Mock::start();
    let gw = Gateway::start(BASE_CONFIG, &mock);
    let body = big_body();
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let resp = h2
        .post(format!("{}/v1/chat/completions", gw.url()))
        .bearer_auth(CALLER_KEY)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    assert_forwarded_whole(&mock, &body);
    // And a stream over HTTP/2.
    let resp = h2
        .post(format!("{}/v1/chat/completions", gw.url()))
        .bearer_auth(CALLER_KEY)
        .json(&json!({"model": "chat", "stream": true, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    let text = resp.text().await.unwrap();
    assert_eq!(sse_data(&text).last().unwrap(), "[DONE]");
}

/// A CA and a certificate for localhost and 127.0.0.1 signed by it (`gw.pem`, `gw.key`);
/// the CA's PEM.
fn make_certs(dir: &std::path::Path) -> String {
    let ca = TestCa::new("aigw test listener CA");
    ca.write_leaf(dir, "gw", &["localhost", "127.0.0.1"]);
    ca.pem()
}

#[tokio::test]
async fn tls_listener_with_alpn_h2_and_http11() {
    let mock = Mock::start();
    let certs = tempfile::tempdir().unwrap();
    let ca_pem = make_certs(certs.path());
    let tls_port = free_port();
    let config = BASE_CONFIG.replace(
        "  admin_listen:",
        &format!(
            "  tls: [{{listen: \"127.0.0.1:{tls_port}\", cert_file: \"{0}/gw.pem\", key_file: \"{0}/gw.key\"}}]\n  admin_listen:",
            certs.path().display()
        ),
    );
    let gw = Gateway::start(&config, &mock);
    assert!(wait_until(10, || TcpStream::connect(("127.0.0.1", tls_port)).is_ok()));
    let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap();
    let url = format!("https://localhost:{tls_port}/v1/chat/completions");
    let body = big_body();

    let h2 = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(ca.clone())
        .build()
        .unwrap();
    let resp = h2
        .post(&url)
        .bearer_auth(CALLER_KEY)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2, "ALPN picks h2");
    assert_eq!(resp.status(), 200);
    assert_forwarded_whole(&mock, &body);

    let h1 = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(ca)
        .http1_only()
        .build()
        .unwrap();
    let resp = h1
        .post(&url)
        .bearer_auth(CALLER_KEY)
        .json(&chat_body("chat"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_11);
    assert_eq!(resp.json::<Value>().await.unwrap()["model"], "upstream-chat");

    // A client that does not trust the certificate is refused by its own TLS check.
    let untrusting = reqwest::Client::builder().use_rustls_tls().build().unwrap();
    assert!(untrusting.post(&url).json(&chat_body("chat")).send().await.is_err());
    drop(gw);
}

fn read_head(reader: &mut BufReader<TcpStream>) -> String {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        head.push_str(&line);
        if line == "\r\n" || line.is_empty() {
            return head;
        }
    }
}

#[test]
fn expect_100_continue_is_answered_before_the_body() {
    let mock = Mock::start();
    let gw = Gateway::start(BASE_CONFIG, &mock);
    let body = big_body();
    let sock = TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut writer = sock.try_clone().unwrap();
    let mut reader = BufReader::new(sock);
    write!(
        writer,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {CALLER_KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        body.len()
    )
    .unwrap();
    let interim = read_head(&mut reader);
    assert!(interim.starts_with("HTTP/1.1 100"), "{interim}");
    writer.write_all(body.as_bytes()).unwrap();
    let head = read_head(&mut reader);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_forwarded_whole(&mock, &body);
    assert!(mock.last_request()["headers"].get("expect").is_none());

    // A rejected request gets its answer instead of 100, and no body is needed.
    let sock = TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut writer = sock.try_clone().unwrap();
    let mut reader = BufReader::new(sock);
    write!(
        writer,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer wrong\r\nContent-Length: 5000000\r\nExpect: 100-continue\r\n\r\n"
    )
    .unwrap();
    let head = read_head(&mut reader);
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    let mut rest = vec![0u8; 64];
    let _ = reader.read(&mut rest);
}

/// An HTTPS provider whose certificate the system store does not trust is refused: the
/// gateway verifies upstream certificates, and the caller gets a clear 502.
#[tokio::test]
async fn untrusted_upstream_certificate_is_refused() {
    let mock = Mock::start();
    let certs = tempfile::tempdir().unwrap();
    make_certs(certs.path());
    let port = free_port();
    let mut server = std::process::Command::new("openssl")
        .args(["s_server", "-quiet", "-www", "-accept", &port.to_string()])
        .arg("-cert")
        .arg(certs.path().join("gw.pem"))
        .arg("-key")
        .arg(certs.path().join("gw.key"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("openssl s_server");
    assert!(wait_until(10, || TcpStream::connect(("127.0.0.1", port)).is_ok()));
    let config = BASE_CONFIG
        .replace(
            "models:\n",
            &format!("  - {{name: tls-up, provider: openai, api_key: k, base_url: \"https://localhost:{port}/v1\"}}\nmodels:\n  - {{name: tls-chat, provider_key: tls-up}}\n"),
        )
        .replace("api_keys:\n", "api_keys:\n  - {name: all, key: sk-all}\n");
    let gw = Gateway::start(&config, &mock);
    let resp = client()
        .post(format!("{}/v1/chat/completions", gw.url()))
        .bearer_auth("sk-all")
        .json(&chat_body("tls-chat"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.json::<Value>().await.unwrap()["error"]["code"], "upstream_error");
    assert!(
        wait_until(5, || gw.log_text().contains("certificate verify failed")),
        "{}",
        gw.log_text()
    );
    let _ = server.kill();
    let _ = server.wait();
}

/// Memory follows the bytes that arrived, not the length a caller declared: 100
/// connections that each declare 10 MB and send 3 KB (in two writes) hold a few MB, not
/// a gigabyte.
#[tokio::test]
async fn declared_lengths_reserve_nothing() {
    let mock = Mock::start();
    let config = BASE_CONFIG.replace("max_request_body_bytes: 2097152", "max_request_body_bytes: 10485760");
    let gw = Gateway::start(&config, &mock);
    let before = proc_kib(gw.child.id(), "VmRSS:");
    let mut conns = Vec::new();
    for _ in 0..100 {
        let mut s = TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {CALLER_KEY}\r\nContent-Type: application/json\r\nContent-Length: 10000000\r\n\r\n"
        );
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(&[b' '; 1500]).unwrap();
        s.flush().unwrap();
        std::thread::sleep(Duration::from_millis(2));
        s.write_all(&[b' '; 1500]).unwrap();
        conns.push(s);
    }
    // Every connection's bytes have been read (the gateway waits for more).
    std::thread::sleep(Duration::from_millis(500));
    let grown = proc_kib(gw.child.id(), "VmRSS:").saturating_sub(before);
    assert!(grown < 32 * 1024, "100 half-sent bodies hold {grown} KiB");
    drop(conns);
}
