//! Hostile input at the HTTP and JSON layers: each case gets a defined answer; what the
//! gateway must read is refused before the provider is called, what it does not read goes
//! through untouched; and the gateway keeps serving afterwards.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;

/// Sends raw bytes on a fresh connection; returns the status line of the answer.
fn raw(gw: &Gateway, data: &[u8]) -> String {
    let mut s = TcpStream::connect(gw.url().trim_start_matches("http://")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(data).unwrap();
    let mut buf = [0u8; 4096];
    let mut out = Vec::new();
    while !out.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).lines().next().unwrap_or("").to_owned()
}

fn post_raw(gw: &Gateway, body: &[u8]) -> String {
    let mut req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {CALLER_KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    raw(gw, &req)
}

#[tokio::test]
async fn malformed_json_and_http_get_defined_answers() {
    let mock = Mock::start();
    let gw = Gateway::start(BASE_CONFIG, &mock);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "invalid UTF-8",
            b"{\"model\":\"chat\",\"messages\":[{\"role\":\"user\",\"content\":\"\xff\xfe\"}]}".to_vec(),
        ),
        (
            "model twice",
            br#"{"model":"chat","model":"other","messages":[]}"#.to_vec(),
        ),
        ("trailing garbage", br#"{"model":"chat","messages":[]} {"#.to_vec()),
    ];
    for (what, body) in cases {
        assert_eq!(post_raw(&gw, &body), "HTTP/1.1 400 Bad Request", "{what}");
        assert!(
            mock.requests().is_empty(),
            "{what} reached the provider: {:?}",
            mock.requests()
        );
    }
    // Content-Length together with Transfer-Encoding (request smuggling): the chunked
    // framing wins and the empty body is refused; nothing is forwarded.
    let smuggle = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {CALLER_KEY}\r\nContent-Length: 60\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    );
    assert_eq!(raw(&gw, smuggle.as_bytes()), "HTTP/1.1 400 Bad Request");
    // Too many headers.
    let mut many = String::from("GET /v1/models HTTP/1.1\r\nHost: x\r\n");
    for i in 0..300 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    assert_eq!(raw(&gw, many.as_bytes()), "HTTP/1.1 400 Bad Request");
    // Not HTTP at all.
    let garbage = raw(&gw, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n");
    assert!(garbage.is_empty() || garbage.starts_with("HTTP/1.1 400"), "{garbage}");

    assert!(mock.requests().is_empty(), "nothing malformed reached the provider");

    // The gateway reads only the top level of a body, without recursion: what it does not
    // look into (100,000 levels of nesting, a number beyond f64, a lone surrogate) goes to
    // the provider untouched, the gateway's stack is safe, and the provider's 400 comes back.
    let nested = format!(
        r#"{{"model":"chat","x":{}{}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    for body in [
        nested.as_bytes(),
        br#"{"model":"chat","max_tokens":1e400,"messages":[]}"#,
        br#"{"model":"chat","messages":[{"role":"user","content":"\ud800"}]}"#,
    ] {
        assert_eq!(post_raw(&gw, body), "HTTP/1.1 400 Bad Request");
    }
    assert_eq!(mock.requests().len(), 3);
    // Still serving.
    let r = post(&gw, "/v1/chat/completions", &chat_body("chat")).await;
    assert_eq!(r.status(), 200);
}
