//! Test harness: the real `aigw` binary as gateway and as mock upstream, on ephemeral
//! ports, talked to over real sockets.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod etcd;
pub mod otlp;

pub const BIN: &str = env!("CARGO_BIN_EXE_aigw");
pub const PROVIDER_KEY: &str = "sk-test-provider-0123456789";
pub const CALLER_KEY: &str = "sk-test-caller-abcdef";

/// A port no other test process of this run holds. Ports handed out by `bind(0)` and then
/// released went to two tests at once under a full parallel run: a mock that lost the race
/// never started, its readiness check found the other test's gateway on the port, and that
/// gateway answered in its place. So ports come from 20000-31999, below the kernel's
/// ephemeral range (no outgoing connection takes one), each claimed with an flock on
/// `$TMPDIR/aigw-test-ports/<port>` that this process holds until it exits, and checked
/// free with a bind.
pub fn free_port() -> u16 {
    use nix::fcntl::{Flock, FlockArg};
    static HELD: Mutex<Vec<Flock<std::fs::File>>> = Mutex::new(Vec::new());
    const FIRST: u32 = 20_000;
    const COUNT: u32 = 12_000;
    let dir = std::env::temp_dir().join("aigw-test-ports");
    std::fs::create_dir_all(&dir).unwrap();
    let start = fastrand::u32(0..COUNT);
    for i in 0..COUNT {
        let port = (FIRST + (start + i) % COUNT) as u16;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(port.to_string()))
            .unwrap();
        let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) else {
            continue; // another test process holds it
        };
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            HELD.lock().unwrap().push(lock);
            return port;
        }
    }
    panic!("no free test port in {FIRST}..{}", FIRST + COUNT);
}

/// Polls `f` until it is true, for at most `secs` seconds. Waits on behaviour, not time.
pub fn wait_until(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Collects a child's stderr lines in the background.
pub fn capture(child: &mut Child) -> Arc<Mutex<Vec<String>>> {
    capture_from(child.stderr.take().unwrap())
}

/// Collects the lines of one of a child's outputs in the background.
fn capture_from(out: impl std::io::Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

pub struct Mock {
    child: Child,
    pub addr: SocketAddr,
}

impl Mock {
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    /// A mock on a given port (to bring a stopped replica back at the same address).
    pub fn start_on(port: u16) -> Self {
        Self::spawn(port, &[])
    }

    /// A mock that is also an OpenID provider serving `jwks_file` at `/idp/jwks`.
    pub fn with_jwks(jwks_file: &Path) -> Self {
        Self::spawn(
            free_port(),
            &[std::ffi::OsStr::new("--jwks-file"), jwks_file.as_os_str()],
        )
    }

    /// A mock whose guard webhook (`/guard/check`) requires `Authorization: Bearer <token>`.
    pub fn with_guard_token(token: &str) -> Self {
        Self::spawn(
            free_port(),
            &[std::ffi::OsStr::new("--guard-token"), std::ffi::OsStr::new(token)],
        )
    }

    fn spawn(port: u16, extra: &[&std::ffi::OsStr]) -> Self {
        let mut child = Command::new(BIN)
            .args([
                "mock-upstream",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--record",
                "--threads",
                "1",
            ])
            .args(["--api-key", PROVIDER_KEY])
            .arg("--google-public-key")
            .arg(asset("tests/assets/vertex-test-key.pub.pem"))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        if !wait_until(10, || TcpStream::connect(addr).is_ok()) {
            let _ = child.kill();
            panic!("mock upstream did not start");
        }
        Mock { child, addr }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests the mock received, oldest first.
    pub fn requests(&self) -> Vec<Value> {
        match blocking_get_json(&format!("{}/_mock/requests", self.url())) {
            Value::Array(items) => items,
            other => panic!("unexpected /_mock/requests answer: {other}"),
        }
    }

    pub fn last_request(&self) -> Value {
        self.requests().pop().expect("the mock saw no request")
    }

    pub fn stats(&self) -> Value {
        blocking_get_json(&format!("{}/_mock/stats", self.url()))
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        self.stop();
    }
}

fn blocking_get_json(url: &str) -> Value {
    let url = url.to_owned();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async { reqwest::get(&url).await.unwrap().json::<Value>().await.unwrap() })
    })
    .join()
    .unwrap()
}

pub struct Gateway {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub admin_port: u16,
    pub logs: Arc<Mutex<Vec<String>>>,
    /// Stdout: the access log.
    pub access: Arc<Mutex<Vec<String>>>,
}

/// The standard test config: `{MOCK}`, `{PORT}` and `{ADMIN}` are filled in.
pub const BASE_CONFIG: &str = r#"
version: 1
server:
  listen: ["127.0.0.1:{PORT}"]
  admin_listen: "127.0.0.1:{ADMIN}"
  grace_period_s: 10
  max_request_body_bytes: 2097152
provider_keys:
  - name: mock
    provider: openai_compatible
    base_url: "{MOCK}/v1"
    api_key: "{PROVIDER_KEY}"
    timeouts: {connect_ms: 1000, first_byte_ms: 1500, idle_ms: 5000}
models:
  - {name: chat, provider_key: mock, model: upstream-chat}
  - {name: emb, provider_key: mock, model: upstream-emb}
  - {name: slow, provider_key: mock, model: "x?delay_ms=4000"}
  - {name: slow-stream, provider_key: mock, model: "x?chunk_delay_ms=300&words=40"}
  - {name: broken-stream, provider_key: mock, model: "x?drop_after=3&chunk_delay_ms=50"}
  - {name: broken-early, provider_key: mock, model: "x?drop_after=0"}
  - {name: fails, provider_key: mock, model: "x?status=503"}
  - {name: teapot, provider_key: mock, model: "x?status=418"}
  - {name: limited, provider_key: mock, model: "x?status=429&retry_after=7"}
  - {name: secret-model, provider_key: mock}
api_keys:
  - {name: main, key: "{CALLER_KEY}", owner: team-a, models: [chat, emb, slow, slow-stream, broken-stream, broken-early, fails, teapot, limited]}
  - {name: expired, key: sk-expired, expires_at: "2020-01-01T00:00:00Z"}
  - {name: disabled, key: sk-disabled, disabled: true}
"#;

impl Gateway {
    /// Starts a gateway with `config` (placeholders filled) and waits until it is ready.
    pub fn start(config: &str, mock: &Mock) -> Self {
        Self::start_with(config, mock, &[])
    }

    pub fn start_with(config: &str, mock: &Mock, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let admin_port = free_port();
        let text = fill(config, mock, port, admin_port);
        let path = dir.path().join("aigw.yaml");
        std::fs::write(&path, text).unwrap();
        let mut child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&path)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let logs = capture(&mut child);
        let access = capture_from(child.stdout.take().unwrap());
        let gw = Gateway {
            child,
            dir,
            port,
            admin_port,
            logs,
            access,
        };
        let ready = wait_until(20, || {
            TcpStream::connect(("127.0.0.1", port)).is_ok() && TcpStream::connect(("127.0.0.1", admin_port)).is_ok()
        });
        assert!(ready, "gateway did not start; logs:\n{}", gw.log_text());
        gw
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("aigw.yaml")
    }

    /// The access log lines written so far.
    pub fn access_lines(&self) -> Vec<String> {
        self.access.lock().unwrap().clone()
    }

    /// The access log lines once `n` lines matching `pred` were written (the gateway
    /// writes its lines out every 100 ms); at most 5 s.
    pub fn access_lines_until(&self, n: usize, pred: impl Fn(&str) -> bool) -> Vec<String> {
        wait_until(5, || self.access_lines().iter().filter(|l| pred(l)).count() >= n);
        self.access_lines()
    }

    pub fn log_text(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args(["-s", sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -s {sig} failed");
    }

    /// Rewrites the config file (placeholders filled as at start).
    pub fn write_config(&self, config: &str, mock: &Mock) {
        std::fs::write(self.config_path(), fill(config, mock, self.port, self.admin_port)).unwrap();
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `{SERVER}` in a test config: the version and a server section on the test's ports.
const SERVER_BLOCK: &str =
    "version: 1\nserver:\n  listen: [\"127.0.0.1:{PORT}\"]\n  admin_listen: \"127.0.0.1:{ADMIN}\"";

pub fn fill(config: &str, mock: &Mock, port: u16, admin_port: u16) -> String {
    config
        .replace("{SERVER}", SERVER_BLOCK)
        .replace("{MOCK}", &mock.url())
        .replace("{PORT}", &port.to_string())
        .replace("{ADMIN}", &admin_port.to_string())
        .replace("{PROVIDER_KEY}", PROVIDER_KEY)
        .replace("{CALLER_KEY}", CALLER_KEY)
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// A process's memory figure from `/proc/<pid>/status` (`VmRSS`, `VmHWM`), in KiB.
pub fn proc_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// GETs `url` with a bearer key and reads the JSON answer.
pub async fn get_json(url: &str, key: &str) -> Value {
    client()
        .get(url)
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// One owner's entry of `GET /admin/v1/spend` (Null when it has none).
pub async fn spend_of(gw: &Gateway, admin_key: &str, owner: &str) -> Value {
    let v = get_json(&format!("{}/admin/v1/spend", gw.admin_url()), admin_key).await;
    v["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["owner"] == owner)
        .cloned()
        .unwrap_or(Value::Null)
}

/// POSTs JSON with the test caller key.
/// Sends raw bytes on a fresh connection; returns the status line of the answer.
pub fn raw(gw: &Gateway, data: &[u8]) -> String {
    use std::io::{Read, Write};
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

pub async fn post(gw: &Gateway, path: &str, body: &Value) -> reqwest::Response {
    post_as(gw, CALLER_KEY, path, body).await
}

/// POSTs JSON with the caller key `key`.
pub async fn post_as(gw: &Gateway, key: &str, path: &str, body: &Value) -> reqwest::Response {
    client()
        .post(format!("{}{path}", gw.url()))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .unwrap()
}

/// POSTs `body` as it is, labelled JSON, with the caller key `key`: for bodies `json!`
/// cannot write (a field order, a duplicate key, an exact byte layout).
pub async fn post_raw_as(gw: &Gateway, key: &str, path: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
    client()
        .post(format!("{}{path}", gw.url()))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

/// POSTs an Anthropic Messages request with the caller key `key` in `x-api-key`.
pub async fn post_messages_as(gw: &Gateway, key: &str, body: &Value) -> reqwest::Response {
    client()
        .post(format!("{}/v1/messages", gw.url()))
        .header("x-api-key", key)
        .header("anthropic-version", "2023-06-01")
        .json(body)
        .send()
        .await
        .unwrap()
}

/// The gateway's `/metrics` text.
pub async fn metrics_text(gw: &Gateway) -> String {
    client()
        .get(format!("{}/metrics", gw.admin_url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Every sample of `/metrics`, by series as printed (name and labels).
pub async fn metrics(gw: &Gateway) -> std::collections::HashMap<String, f64> {
    metrics_text(gw)
        .await
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap();
            (k.to_owned(), v.parse().unwrap())
        })
        .collect()
}

/// One sample of `/metrics`, 0 when absent.
pub async fn metric(gw: &Gateway, series: &str) -> f64 {
    metrics(gw).await.get(series).copied().unwrap_or(0.0)
}

/// Polls the async `f` until it is true, for at most about 5 seconds.
pub async fn wait_until_async<F, Fut>(mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..250 {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

pub fn chat_body(model: &str) -> Value {
    serde_json::json!({"model": model, "messages": [{"role": "user", "content": "Say hello"}]})
}

/// The SSE `data:` payloads of a stream body.
pub fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|ev| ev.lines().find_map(|l| l.strip_prefix("data: ")).map(str::to_owned))
        .collect()
}

/// The completion text of a JSON answer or of a stream's deltas, chat or Anthropic.
pub fn completion_text(body: &str) -> String {
    let pick = |v: &Value| {
        [
            "/choices/0/message/content",
            "/choices/0/delta/content",
            "/content/0/text",
            "/delta/text",
        ]
        .iter()
        .find_map(|p| v.pointer(p).and_then(Value::as_str))
        .unwrap_or("")
        .to_owned()
    };
    match serde_json::from_str::<Value>(body) {
        Ok(v) => pick(&v),
        Err(_) => sse_data(body)
            .iter()
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .map(|v| pick(&v))
            .collect(),
    }
}

/// A name (or prompt) no other test, process or earlier run against a shared Redis used.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

pub fn asset(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// `aigw validate` on `config` (with no `AWS_*` variables) must fail with each of
/// `expected` among its errors, and never print `secret`.
pub fn assert_config_errors(config: &str, expected: &[&str], secret: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("aigw.yaml");
    std::fs::write(&path, config).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["validate", "--config"]).arg(&path);
    for var in [
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    ] {
        cmd.env_remove(var);
    }
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for e in expected {
        assert!(err.contains(e), "missing {e:?} in:\n{err}");
    }
    assert!(!err.contains(secret), "{err}");
}

/// Writes a Vertex AI service account key file (the test key pair of tests/assets) whose
/// token URI is the mock's `/token`, with `query` (`expires_in=N`, `fail=1`) to script it.
pub fn vertex_key_file(dir: &Path, mock: &Mock, query: &str) -> PathBuf {
    let pem = std::fs::read_to_string(asset("tests/assets/vertex-test-key.pem")).unwrap();
    let file = serde_json::json!({
        "type": "service_account",
        "project_id": "aigw-test",
        "private_key_id": "0123456789abcdef",
        "private_key": pem,
        "client_email": "gateway@aigw-test.iam.gserviceaccount.com",
        "token_uri": format!("{}/token?{query}", mock.url()),
    });
    let path = dir.join(format!("sa-{}.json", unique("k")));
    std::fs::write(&path, file.to_string()).unwrap();
    path
}

/// A Redis of a test's own, on `port`: no test needs a Redis running beforehand, and
/// tests that count its calls or stop it see only their own traffic.
pub struct PrivateRedis {
    child: Child,
    pub port: u16,
}

impl PrivateRedis {
    pub fn start(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (.ci/run installs it)");
        assert!(wait_until(10, || TcpStream::connect(("127.0.0.1", port)).is_ok()));
        Self { child, port }
    }

    /// One on a free port.
    pub fn start_any() -> Self {
        Self::start(free_port())
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        assert!(wait_until(10, || TcpStream::connect(("127.0.0.1", self.port)).is_err()));
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli is installed with redis-server");
    String::from_utf8(out.stdout).unwrap()
}

/// How many times Redis ran these commands (lower case, as INFO names them).
pub fn redis_calls(port: u16, commands: &[&str]) -> u64 {
    redis_cli(port, &["INFO", "commandstats"])
        .lines()
        .filter(|l| commands.iter().any(|c| l.starts_with(&format!("cmdstat_{c}:"))))
        .filter_map(|l| l.split("calls=").nth(1)?.split(',').next()?.parse::<u64>().ok())
        .sum()
}

/// A certificate authority of a test's own, and the leaves it signs. The CA and each leaf
/// get names of their own: OpenSSL reads a leaf named like its issuer as self-signed
/// (rcgen names every certificate alike unless told).
pub struct TestCa {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Self { cert, key }
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A leaf for `names` (DNS names or IP addresses; the first is its common name).
    pub fn leaf(&self, names: &[&str]) -> (rcgen::Certificate, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, names[0]);
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert, key)
    }

    /// A leaf for `names` written as `{stem}.pem` and `{stem}.key` in `dir`.
    pub fn write_leaf(&self, dir: &Path, stem: &str, names: &[&str]) {
        let (cert, key) = self.leaf(names);
        std::fs::write(dir.join(format!("{stem}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{stem}.key")), key.serialize_pem()).unwrap();
    }
}

/// A provider behind a private CA: a TLS front for `to` (the mock) with a certificate
/// for `localhost` signed by a CA of its own, whose PEM file is `ca_file`. Bytes pass
/// through both ways; runs until the test's runtime ends.
pub struct TlsFront {
    pub port: u16,
    pub ca_file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl TlsFront {
    pub async fn start(to: SocketAddr) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        use tokio_rustls::rustls;
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Names of their own: OpenSSL takes a leaf named like its issuer for self-signed.
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "aigw test provider CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut leaf_params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        leaf_params.distinguished_name.push(DnType::CommonName, "localhost");
        let leaf = leaf_params.signed_by(&key, &ca, &ca_key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    if let Ok(mut up) = tokio::net::TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
                    }
                });
            }
        });
        Self {
            port,
            ca_file,
            _dir: dir,
        }
    }
}
