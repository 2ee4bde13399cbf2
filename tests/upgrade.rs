//! Zero-downtime binary upgrade: `aigw serve --upgrade` takes the listening sockets over
//! from the running process (SIGQUIT) while clients keep it busy, on kept-alive and on new
//! connections, and not one request fails.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upgrade_under_load_fails_no_request() {
    let mock = Mock::start();
    let sock_dir = tempfile::tempdir().unwrap();
    let sock = sock_dir.path().join("upgrade.sock");
    let config = BASE_CONFIG.replace(
        "  grace_period_s: 10",
        &format!("  grace_period_s: 3\n  upgrade_sock: \"{}\"", sock.display()),
    );
    let mut old = Gateway::start(&config, &mock);
    let url = format!("{}/v1/chat/completions", old.url());

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut clients = Vec::new();
    for i in 0..8 {
        // Half keep their connections alive, half open a new one for every request.
        let client = if i % 2 == 0 {
            client()
        } else {
            reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap()
        };
        let (url, stop, ok, failed) = (url.clone(), stop.clone(), ok.clone(), failed.clone());
        clients.push(tokio::spawn(async move {
            let mut errors = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let sent = client
                    .post(&url)
                    .bearer_auth(CALLER_KEY)
                    .json(&chat_body("chat"))
                    .send()
                    .await;
                // The whole answer must arrive, not only its status.
                let outcome = match sent {
                    Ok(r) if r.status() == 200 => r.bytes().await.map(|_| ()).map_err(|e| format!("{e:?}")),
                    Ok(r) => Err(format!("status {}", r.status())),
                    Err(e) => Err(format!("{e:?}")),
                };
                match outcome {
                    Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        errors.push(e);
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
            errors
        }));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;

    // The new binary starts and waits for the sockets; the old one hands them over.
    let mut new = Command::new(env!("CARGO_BIN_EXE_aigw"))
        .args(["serve", "--upgrade", "--config"])
        .arg(old.config_path())
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let new_logs = capture(&mut new);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let before = ok.load(Ordering::Relaxed);
    old.signal("QUIT");

    // The old process stops accepting after 5 s and exits when its grace period ends.
    let mut exited = false;
    for _ in 0..200 {
        if old.child.try_wait().unwrap().is_some() {
            exited = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let during = ok.load(Ordering::Relaxed) - before;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut errors = Vec::new();
    for c in clients {
        errors.extend(c.await.unwrap());
    }
    assert!(exited, "the old process exited; its log:\n{}", old.log_text());
    assert_eq!(failed.load(Ordering::Relaxed), 0, "failed requests: {errors:?}");
    assert!(during > 100, "requests kept flowing through the swap: {during}");
    // After the old process is gone, the new one answers on the same port.
    let resp = client()
        .post(&url)
        .bearer_auth(CALLER_KEY)
        .json(&chat_body("chat"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = new_logs.lock().unwrap().join("\n");
    assert!(text.contains("aigw serving"), "{text}");
    new.kill().unwrap();
    new.wait().unwrap();
}
