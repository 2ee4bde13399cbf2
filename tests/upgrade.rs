//! Zero-downtime binary upgrade: `aigw serve --upgrade` takes the listening sockets over
//! from the running process (SIGQUIT) while clients keep it busy, on kept-alive and on new
//! connections, and not one request fails. The upgrade socket is a door to those
//! listeners: another user can neither take them nor feed the new process its own, a
//! directory others can write is refused, and a malformed handover is an error, never a
//! panic (docs/security.md, "The upgrade socket hands listeners only to the same user").
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{IoSlice, IoSliceMut};
use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::socket::{self, sockopt, AddressFamily, Backlog, ControlMessage, MsgFlags, SockFlag, SockType, UnixAddr};
use nix::sys::time::{TimeVal, TimeValLike};

use common::*;

/// `BASE_CONFIG` with the upgrade socket at `sock` and a grace period of `grace` s.
fn upgrade_config(sock: &Path, grace: u32) -> String {
    BASE_CONFIG.replace(
        "  grace_period_s: 10",
        &format!("  grace_period_s: {grace}\n  upgrade_sock: \"{}\"", sock.display()),
    )
}

/// Starts `aigw serve --upgrade` on `config`, which waits for the listening sockets;
/// its log lines are collected.
fn take_over(config: &Path, env: &[(&str, &str)]) -> (Child, Arc<Mutex<Vec<String>>>) {
    let mut new = Command::new(BIN)
        .args(["serve", "--upgrade", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let logs = capture(&mut new);
    (new, logs)
}

fn text(logs: &Mutex<Vec<String>>) -> String {
    logs.lock().unwrap().join("\n")
}

/// Sends SIGQUIT to `gw` once it handles it: until its handler is installed (a little
/// after its ports open), SIGQUIT would kill it outright.
fn quit(gw: &Gateway) {
    let status = format!("/proc/{}/status", gw.child.id());
    let catches_quit = || {
        let text = std::fs::read_to_string(&status).unwrap_or_default();
        let mask = text.lines().find_map(|l| l.strip_prefix("SigCgt:")).unwrap_or("0");
        u64::from_str_radix(mask.trim(), 16).is_ok_and(|m| m & (1 << (libc::SIGQUIT - 1)) != 0)
    };
    assert!(wait_until(10, catches_quit), "no SIGQUIT handler:\n{}", gw.log_text());
    gw.signal("QUIT");
}

/// Waits (at most `secs`) for `child` to exit; whether it did.
fn exits_within(child: &mut Child, secs: u64) -> bool {
    wait_until(secs, || child.try_wait().unwrap().is_some())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upgrade_under_load_fails_no_request() {
    upgrade_under_load(false).await;
}

/// The same with one runtime per core (`work_stealing: false`): every thread accepts on
/// its own duplicate of the listening socket, and the socket the upgrade hands over is
/// the one they all duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upgrade_under_load_fails_no_request_per_core() {
    upgrade_under_load(true).await;
}

async fn upgrade_under_load(per_core: bool) {
    let mock = Mock::start();
    let sock_dir = tempfile::tempdir().unwrap();
    let sock = sock_dir.path().join("upgrade.sock");
    let mut config = upgrade_config(&sock, 3);
    if per_core {
        config = config.replace(
            "  grace_period_s:",
            "  threads: 2\n  work_stealing: false\n  grace_period_s:",
        );
    }
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
    let (mut new, new_logs) = take_over(&old.config_path(), &[]);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let before = ok.load(Ordering::Relaxed);
    quit(&old);

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
    let text = text(&new_logs);
    assert!(text.contains("aigw serving"), "{text}");
    new.kill().unwrap();
    new.wait().unwrap();
}

// ---- another user ------------------------------------------------------------------

/// The other user: nobody.
const NOBODY: u32 = 65534;

/// Running a process under another uid needs root (CI runs the suite as root).
fn is_root() -> bool {
    // /proc/self belongs to the process's effective uid.
    let root = std::fs::metadata("/proc/self").unwrap().uid() == 0;
    if !root {
        eprintln!("skipped: running a process as another user needs root");
    }
    root
}

/// Makes one system call on the Unix socket `sock` as uid and gid 65534: `call` is
/// `connect PATH`, `listen` or `bind-listen PATH`. The kernel records the caller's
/// credentials with connect(2) and listen(2), so for SO_PEERCRED the socket is then that
/// user's. The call runs in a copy of this test binary (`as_nobody_helper`) in a
/// directory that user can reach, with the socket as its standard input.
fn as_nobody(call: &str, sock: &OwnedFd) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let exe = dir.path().join("helper");
    let this = std::env::current_exe().unwrap();
    std::fs::hard_link(&this, &exe)
        .or_else(|_| std::fs::copy(&this, &exe).map(drop))
        .unwrap();
    let out = Command::new(&exe)
        .args(["as_nobody_helper", "--exact", "--ignored", "--nocapture"])
        .env("AIGW_AS_NOBODY", call)
        .stdin(Stdio::from(sock.try_clone().unwrap()))
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap();
    match out.status.success() {
        true => Ok(()),
        false => Err(format!("{call}: {}", String::from_utf8_lossy(&out.stderr))),
    }
}

/// Not a test: the part of the tests above that runs as another user (`as_nobody`).
#[test]
#[ignore = "run by as_nobody, as another user"]
fn as_nobody_helper() {
    let call = std::env::var("AIGW_AS_NOBODY").expect("run by as_nobody");
    let stdin = std::io::stdin();
    let sock = stdin.as_fd();
    let listen = || socket::listen(&sock, Backlog::new(8).unwrap());
    let done = match call.split_once(' ') {
        Some(("connect", path)) => socket::connect(sock.as_raw_fd(), &UnixAddr::new(path).unwrap()),
        Some(("bind-listen", path)) => {
            socket::bind(sock.as_raw_fd(), &UnixAddr::new(path).unwrap()).and_then(|()| listen())
        }
        _ if call == "listen" => listen(),
        _ => panic!("unknown call {call:?}"),
    };
    // the call was made with nobody's credentials
    assert_eq!(std::fs::metadata("/proc/self").unwrap().uid(), NOBODY);
    done.unwrap();
}

/// A Unix stream socket that nothing has bound or connected yet.
fn unix_socket() -> OwnedFd {
    socket::socket(AddressFamily::Unix, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).unwrap()
}

/// Hands `fds` and `names` over on the connected `conn`, as a sender of the upgrade
/// socket's protocol does, and closes it.
fn hand_over(conn: OwnedFd, names: &str, fds: &[RawFd]) {
    let scm = [ControlMessage::ScmRights(fds)];
    socket::sendmsg::<UnixAddr>(
        conn.as_raw_fd(),
        &[IoSlice::new(names.as_bytes())],
        &scm,
        MsgFlags::empty(),
        None,
    )
    .unwrap();
}

/// Accepts one connection on the listening `trap` (waiting at most `secs`) and counts
/// the descriptors handed over on it until it closes.
fn descriptors_received(trap: OwnedFd, secs: i64) -> usize {
    socket::setsockopt(&trap, sockopt::ReceiveTimeout, &TimeVal::seconds(secs)).unwrap();
    let Ok((conn, _)) = UnixListener::from(trap).accept() else {
        return 0;
    };
    socket::setsockopt(&conn, sockopt::ReceiveTimeout, &TimeVal::seconds(5)).unwrap();
    let mut received = 0;
    loop {
        let mut buf = [0u8; 4096];
        let mut iov = [IoSliceMut::new(&mut buf)];
        let mut cmsg = nix::cmsg_space!([RawFd; 253]);
        let Ok(msg) =
            socket::recvmsg::<UnixAddr>(conn.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)
        else {
            return received;
        };
        for c in msg.cmsgs().unwrap() {
            if let socket::ControlMessageOwned::ScmRights(fds) = c {
                received += fds.len();
                fds.into_iter().for_each(|fd| nix::unistd::close(fd).unwrap());
            }
        }
        if msg.bytes == 0 {
            return received;
        }
    }
}

/// A request to the gateway's port after the swap: who answers it.
async fn answers(url: &str) -> Result<u16, String> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap()
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(CALLER_KEY)
        .json(&chat_body("chat"))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| format!("{e:?}"))
}

/// The new process takes descriptors only from its own user (or root): another user who
/// reaches its socket (here the file system is loosened so that it can, as the stock
/// 0666 socket let anyone) is refused by SO_PEERCRED, its sockets are never used, and the
/// real handover that follows still succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_user_cannot_feed_sockets_to_the_new_process() {
    if !is_root() {
        return;
    }
    let mock = Mock::start();
    let sock_dir = tempfile::tempdir().unwrap();
    let sock = sock_dir.path().join("upgrade.sock");
    let mut old = Gateway::start(&upgrade_config(&sock, 1), &mock);
    let (mut new, new_logs) = take_over(&old.config_path(), &[]);
    assert!(wait_until(10, || sock.exists()), "{}", text(&new_logs));
    std::fs::set_permissions(sock_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();

    // nobody's own listeners, named as the gateway's: whoever holds them sees the
    // connections meant for the gateway.
    let bait = [
        TcpListener::bind("127.0.0.1:0").unwrap(),
        TcpListener::bind("127.0.0.1:0").unwrap(),
    ];
    let conn = unix_socket();
    as_nobody(&format!("connect {}", sock.display()), &conn).unwrap();
    let names = format!("127.0.0.1:{} 127.0.0.1:{}", old.port, old.admin_port);
    hand_over(conn, &names, &[bait[0].as_raw_fd(), bait[1].as_raw_fd()]);

    quit(&old);
    assert!(exits_within(&mut old.child, 20), "{}", old.log_text());
    let logs = text(&new_logs);
    assert_eq!(
        answers(&old.url()).await,
        Ok(200),
        "the new process took the real listeners:\n{logs}"
    );
    assert!(
        logs.contains(&format!("refused a connection from uid {NOBODY}")),
        "{logs}"
    );
    // Nothing serves on nobody's sockets: a request there waits in their backlog.
    let bait_url = format!("http://{}", bait[0].local_addr().unwrap());
    assert!(
        answers(&bait_url).await.is_err(),
        "the new process serves on nobody's socket"
    );
    new.kill().unwrap();
    new.wait().unwrap();
}

/// The old process hands its listeners only to its own user (or root): a socket at the
/// path that looks right (root's file, in a private directory) but on which another user
/// listens gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_user_listening_at_the_path_gets_no_listener() {
    if !is_root() {
        return;
    }
    let mock = Mock::start();
    let sock_dir = tempfile::tempdir().unwrap();
    let sock = sock_dir.path().join("upgrade.sock");
    let old = Gateway::start(&upgrade_config(&sock, 1), &mock);

    let trap = unix_socket();
    socket::bind(trap.as_raw_fd(), &UnixAddr::new(&sock).unwrap()).unwrap();
    as_nobody("listen", &trap).unwrap();
    quit(&old);
    let received = tokio::task::spawn_blocking(move || descriptors_received(trap, 10))
        .await
        .unwrap();
    assert_eq!(received, 0, "another user received the listeners:\n{}", old.log_text());
    // The refusal is logged after the connection is dropped: wait for the line.
    let line = format!("runs as uid {NOBODY}");
    assert!(wait_until(10, || old.log_text().contains(&line)), "{}", old.log_text());
}

/// A directory other users can write (here sticky and world-writable, as /tmp is) is
/// refused by the new process, by a starting one, and by the old one at SIGQUIT, where
/// another user has made the socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_others_can_write_is_refused_both_ways() {
    if !is_root() {
        return;
    }
    let mock = Mock::start();
    let base = tempfile::tempdir().unwrap();
    // nobody passes through it, and cannot write it
    std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let shared = base.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let sock = shared.join("upgrade.sock");
    let config = base.path().join("aigw.yaml");
    std::fs::write(
        &config,
        fill(&upgrade_config(&sock, 1), &mock, free_port(), free_port()),
    )
    .unwrap();

    for upgrade in [true, false] {
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .args(upgrade.then_some("--upgrade"))
            .arg("--config")
            .arg(&config);
        let out = cmd.env("RUST_LOG", "info").output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "upgrade: {upgrade}\n{err}");
        assert!(err.contains("is writable by other users"), "upgrade: {upgrade}\n{err}");
        assert!(!sock.exists(), "nothing was bound in the shared directory");
    }

    // The directory was private when the old process started, and is shared by SIGQUIT.
    let private = base.path().join("later-shared");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let sock = private.join("upgrade.sock");
    let old = Gateway::start(&upgrade_config(&sock, 1), &mock);
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let trap = unix_socket();
    as_nobody(&format!("bind-listen {}", sock.display()), &trap).unwrap();
    assert_eq!(std::fs::symlink_metadata(&sock).unwrap().uid(), NOBODY);
    quit(&old);
    let received = tokio::task::spawn_blocking(move || descriptors_received(trap, 8))
        .await
        .unwrap();
    assert_eq!(received, 0, "another user received the listeners:\n{}", old.log_text());
    let logs = old.log_text();
    assert!(logs.contains("is writable by other users"), "{logs}");
}

/// With no `upgrade_sock`, the socket goes in the runtime directory (systemd's
/// `$RUNTIME_DIRECTORY`, else `$XDG_RUNTIME_DIR/aigw`, made 0700), is 0600 there, and
/// with neither `--upgrade` is refused at once.
#[test]
fn the_default_socket_is_in_the_runtime_directory_and_private() {
    let mock = Mock::start();
    let base = tempfile::tempdir().unwrap();
    let config = base.path().join("aigw.yaml");
    std::fs::write(&config, fill(BASE_CONFIG, &mock, free_port(), free_port())).unwrap();
    let (xdg, runtime) = (base.path().join("xdg"), base.path().join("runtime"));
    for d in [&xdg, &runtime] {
        std::fs::create_dir(d).unwrap();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let (xdg_s, runtime_s) = (xdg.to_str().unwrap(), runtime.to_str().unwrap());
    for (env, sock) in [
        (
            [("XDG_RUNTIME_DIR", xdg_s), ("RUNTIME_DIRECTORY", "")],
            xdg.join("aigw/upgrade.sock"),
        ),
        (
            [("XDG_RUNTIME_DIR", xdg_s), ("RUNTIME_DIRECTORY", runtime_s)],
            runtime.join("upgrade.sock"),
        ),
    ] {
        let (mut new, logs) = take_over(&config, &env);
        assert!(
            wait_until(10, || sock.exists()),
            "{} not made:\n{}",
            sock.display(),
            text(&logs)
        );
        let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().mode() & 0o777;
        assert_eq!(mode(&sock), 0o600, "{}", sock.display());
        assert_eq!(mode(sock.parent().unwrap()), 0o700, "{}", sock.display());
        new.kill().unwrap();
        new.wait().unwrap();
    }

    let (mut new, logs) = take_over(&config, &[("XDG_RUNTIME_DIR", ""), ("RUNTIME_DIRECTORY", "")]);
    assert!(
        exits_within(&mut new, 5),
        "--upgrade with no socket waits:\n{}",
        text(&logs)
    );
    assert!(!new.wait().unwrap().success());
    let logs = text(&logs);
    assert!(logs.contains("--upgrade needs server.upgrade_sock"), "{logs}");
}

/// With no upgrade socket, SIGQUIT (the systemd recipe in docs/edge.md sends it on every stop)
/// drains and stops as SIGTERM does, instead of trying a handover.
#[test]
fn sigquit_without_an_upgrade_socket_drains_and_stops() {
    let mock = Mock::start();
    let mut gw = Gateway::start_with(
        BASE_CONFIG,
        &mock,
        &[("XDG_RUNTIME_DIR", ""), ("RUNTIME_DIRECTORY", "")],
    );
    quit(&gw);
    assert!(exits_within(&mut gw.child, 5), "{}", gw.log_text());
    let logs = gw.log_text();
    assert!(logs.contains("SIGQUIT: no upgrade socket"), "{logs}");
    assert!(logs.contains("drained; exiting"), "{logs}");
}

/// A handover from the same user that is malformed ends the new process with an error
/// naming what was wrong, never a panic, and leaves no descriptor in use.
#[test]
fn a_malformed_handover_is_refused_without_a_panic() {
    let mock = Mock::start();
    let base = tempfile::tempdir().unwrap();
    let sock = base.path().join("upgrade.sock");
    let config = base.path().join("aigw.yaml");
    let port = free_port();
    std::fs::write(&config, fill(&upgrade_config(&sock, 1), &mock, port, free_port())).unwrap();
    let name = format!("127.0.0.1:{port}");
    let (a, b) = (
        TcpListener::bind("127.0.0.1:0").unwrap(),
        TcpListener::bind("127.0.0.1:0").unwrap(),
    );
    let (connected, _peer) = UnixStream::pair().unwrap();
    let long = format!("{name} {}", "x".repeat(3000));
    let cases: [(&str, &str, Vec<RawFd>); 3] = [
        (
            "2 descriptors, 1 name",
            name.as_str(),
            vec![a.as_raw_fd(), b.as_raw_fd()],
        ),
        ("names past the buffer", long.as_str(), vec![a.as_raw_fd()]),
        ("not a listener", name.as_str(), vec![connected.as_raw_fd()]),
    ];
    let expected = [
        "2 descriptor(s) came with 1 bind address(es)",
        "payload is longer than 2048 bytes",
        "is not a listening stream socket",
    ];
    for ((case, names, fds), expected) in cases.into_iter().zip(expected) {
        let (mut new, logs) = take_over(&config, &[]);
        assert!(wait_until(10, || sock.exists()), "{case}: {}", text(&logs));
        let conn = UnixStream::connect(&sock).unwrap();
        hand_over(OwnedFd::from(conn), names, &fds);
        assert!(exits_within(&mut new, 10), "{case}: still running:\n{}", text(&logs));
        assert!(!new.wait().unwrap().success(), "{case}");
        let logs = text(&logs);
        assert!(!logs.contains("panicked"), "{case}:\n{logs}");
        assert!(logs.contains(expected), "{case}:\n{logs}");
        assert!(!sock.exists(), "{case}: the socket is removed");
    }
}
