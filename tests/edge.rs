//! The TLS edge: several certificates on one listener picked by SNI (wildcards included),
//! rotated by a reload without dropping established connections, a certificate that
//! fails to load leaving the old one serving, TLS 1.3-only listeners, each certificate's
//! expiry as a metric, and callers authenticated by a verified client certificate. Real
//! handshakes, with OpenSSL as the client.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;

use common::*;
use openssl::ssl::{SslConnector, SslMethod, SslStream, SslVerifyMode, SslVersion};
use rcgen::{CertificateParams, KeyPair};

/// A self-signed certificate for `names`, valid until `year`, written as `{stem}.pem`
/// and `{stem}.key`.
fn write_cert(dir: &Path, stem: &str, names: &[&str], year: i32) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params.not_after = rcgen::date_time_ymd(year, 1, 1);
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.join(format!("{stem}.pem")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{stem}.key")), key.serialize_pem()).unwrap();
}

/// A TLS connection to the listener with this SNI (none: no SNI sent), verifying nothing:
/// the test reads which certificate was served.
fn connect(port: u16, sni: Option<&str>, max: Option<SslVersion>) -> Result<SslStream<TcpStream>, String> {
    let mut b = SslConnector::builder(SslMethod::tls()).unwrap();
    b.set_verify(SslVerifyMode::NONE);
    b.set_max_proto_version(max).unwrap();
    let mut cfg = b.build().configure().unwrap();
    cfg.set_use_server_name_indication(sni.is_some());
    cfg.set_verify_hostname(false);
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    cfg.connect(sni.unwrap_or("unused"), tcp).map_err(|e| e.to_string())
}

/// The DNS names and expiry year of the certificate served for this SNI.
fn served(port: u16, sni: Option<&str>) -> (Vec<String>, String) {
    let s = connect(port, sni, None).unwrap();
    let cert = s.ssl().peer_certificate().unwrap();
    let names = cert
        .subject_alt_names()
        .unwrap()
        .iter()
        .filter_map(|n| n.dnsname().map(str::to_owned))
        .collect();
    (names, cert.not_after().to_string())
}

/// One HTTP/1.1 request on an open TLS connection, its answer read whole (by its
/// Content-Length) so the connection can carry the next; the status line.
fn get_models(s: &mut SslStream<TcpStream>) -> String {
    let req = format!("GET /v1/models HTTP/1.1\r\nHost: a.test\r\nAuthorization: Bearer {CALLER_KEY}\r\n\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "connection closed");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap();
            if body.len() >= len {
                return head.lines().next().unwrap().to_owned();
            }
        }
    }
}

/// What every config here ends with: a model and a caller key.
const TAIL: &str = r#"provider_keys:
  - {name: mock, provider: openai_compatible, base_url: "{MOCK}/v1", api_key: "{PROVIDER_KEY}"}
models:
  - {name: chat, provider_key: mock}
api_keys:
  - {name: main, key: "{CALLER_KEY}"}
"#;

fn config(port: u16, port13: u16, dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"
{{SERVER}}
  tls:
    - listen: "127.0.0.1:{port}"
      certificates:
        - {{cert_file: "{d}/default.pem", key_file: "{d}/default.key"}}
        - {{cert_file: "{d}/wild.pem", key_file: "{d}/wild.key"}}
        - {{cert_file: "{d}/api.pem", key_file: "{d}/api.key"}}
    - {{listen: "127.0.0.1:{port13}", cert_file: "{d}/default.pem", key_file: "{d}/default.key", min_version: "1.3"}}
{TAIL}"#
    )
}

#[tokio::test]
async fn sni_picks_the_certificate_and_a_reload_rotates_it_without_dropping_connections() {
    let dir = tempfile::tempdir().unwrap();
    write_cert(dir.path(), "default", &["a.test"], 2031);
    write_cert(dir.path(), "wild", &["*.b.test"], 2032);
    write_cert(dir.path(), "api", &["api.b.test"], 2033);
    let mock = Mock::start();
    let (port, port13) = (free_port(), free_port());
    let gw = Gateway::start(&config(port, port13, dir.path()), &mock);
    assert!(wait_until(10, || TcpStream::connect(("127.0.0.1", port)).is_ok()));

    // By SNI: the exact name before the wildcard, the wildcard for one label, and the
    // first certificate for anything else or no SNI at all.
    assert_eq!(served(port, Some("api.b.test")).0, ["api.b.test"]);
    assert_eq!(served(port, Some("www.b.test")).0, ["*.b.test"]);
    assert_eq!(served(port, Some("a.test")).0, ["a.test"]);
    assert_eq!(served(port, Some("x.y.b.test")).0, ["a.test"]);
    assert_eq!(served(port, None).0, ["a.test"]);
    let m = metrics_text(&gw).await;
    for name in ["a.test", "*.b.test", "api.b.test"] {
        let series =
            format!(r#"aigw_tls_certificate_expiry_timestamp_seconds{{listen="127.0.0.1:{port}",name="{name}"}}"#);
        assert!(m.contains(&series), "{series} in\n{m}");
    }
    // 2033-01-01T00:00:00Z.
    assert!(
        m.contains(&format!(r#"listen="127.0.0.1:{port}",name="api.b.test"}} 1988150400"#)),
        "{m}"
    );

    // A connection opened before the rotation...
    let mut kept = connect(port, Some("a.test"), None).unwrap();
    assert!(get_models(&mut kept).contains("200"));
    let before = served(port, Some("a.test")).1;
    // ...the certificate is replaced on disk and the gateway told to reload.
    write_cert(dir.path(), "default", &["a.test"], 2035);
    gw.signal("HUP");
    assert!(
        wait_until(10, || served(port, Some("a.test")).1 != before),
        "new handshakes get the new certificate"
    );
    assert!(served(port, Some("a.test")).1.contains("2035"));
    assert!(get_models(&mut kept).contains("200"), "the old connection carries on");

    // A certificate that does not load fails the reload; the last good one keeps serving.
    std::fs::write(dir.path().join("wild.pem"), "not a certificate").unwrap();
    let failed = metric(&gw, r#"aigw_config_reloads_total{result="error"}"#).await;
    gw.signal("HUP");
    assert!(
        wait_until_async(|| async { metric(&gw, r#"aigw_config_reloads_total{result="error"}"#).await > failed }).await
    );
    assert_eq!(served(port, Some("www.b.test")).0, ["*.b.test"]);
    assert!(
        gw.log_text().contains("server.tls[0].certificates[1].cert_file"),
        "the reload error names the file"
    );

    // The TLS 1.3-only listener refuses a TLS 1.2 client and serves a 1.3 one.
    assert!(connect(port13, Some("a.test"), Some(SslVersion::TLS1_2)).is_err());
    assert!(connect(port13, Some("a.test"), None).is_ok());
    assert!(connect(port, Some("a.test"), Some(SslVersion::TLS1_2)).is_ok());
    drop(gw);
}

/// A CA, and client certificates it signs: PEM certificate and key of each.
struct ClientPki {
    ca_pem: String,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
}

impl ClientPki {
    fn new() -> Self {
        let ca_key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "aigw test client CA");
        let ca = p.self_signed(&ca_key).unwrap();
        Self {
            ca_pem: ca.pem(),
            ca,
            ca_key,
        }
    }

    /// A client certificate with these SANs (DNS names, or URIs when they contain ":")
    /// and common name.
    fn client(&self, sans: &[&str], cn: &str) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        for s in sans {
            p.subject_alt_names.push(if s.contains(':') {
                rcgen::SanType::URI(s.to_string().try_into().unwrap())
            } else {
                rcgen::SanType::DnsName(s.to_string().try_into().unwrap())
            });
        }
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        let cert = p.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// A TLS connection that presents this client certificate (PEM certificate and key).
fn connect_as(port: u16, client: Option<&(String, String)>) -> Result<SslStream<TcpStream>, String> {
    let mut b = SslConnector::builder(SslMethod::tls()).unwrap();
    b.set_verify(SslVerifyMode::NONE);
    if let Some((cert, key)) = client {
        b.set_certificate(&openssl::x509::X509::from_pem(cert.as_bytes()).unwrap())
            .unwrap();
        b.set_private_key(&openssl::pkey::PKey::private_key_from_pem(key.as_bytes()).unwrap())
            .unwrap();
    }
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut s = b.build().configure().unwrap();
    s.set_verify_hostname(false);
    let mut stream = s.connect("a.test", tcp).map_err(|e| e.to_string())?;
    // TLS 1.3 reports a refused client certificate after the handshake, on first use.
    stream.write_all(b"").map_err(|e| e.to_string())?;
    Ok(stream)
}

/// One request with an optional bearer key on a fresh connection; the status line, or
/// the error when the connection failed.
fn status_as(port: u16, client: Option<&(String, String)>, key: Option<&str>) -> String {
    let mut s = match connect_as(port, client) {
        Ok(s) => s,
        Err(e) => return format!("handshake failed: {e}"),
    };
    let auth = key.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
    let req = format!("GET /v1/models HTTP/1.1\r\nHost: a.test\r\n{auth}Connection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return "handshake failed: refused on first write".into();
    }
    let mut out = String::new();
    match s.read_to_string(&mut out) {
        Ok(_) => out.lines().next().unwrap_or("").to_owned(),
        Err(e) if out.is_empty() => format!("handshake failed: {e}"),
        Err(_) => out.lines().next().unwrap_or("").to_owned(),
    }
}

#[tokio::test]
async fn a_verified_client_certificate_authenticates_a_caller() {
    let dir = tempfile::tempdir().unwrap();
    write_cert(dir.path(), "default", &["a.test"], 2031);
    let pki = ClientPki::new();
    std::fs::write(dir.path().join("clients.pem"), &pki.ca_pem).unwrap();
    let svc_a = pki.client(&["svc-a.internal"], "ignored-a");
    let svc_b = pki.client(&[], "svc-b");
    let spiffe = pki.client(&["spiffe://corp/ns/jobs/sa/batch"], "batch");
    let stranger = pki.client(&["svc-z.internal"], "svc-z");
    let other_ca = ClientPki::new().client(&["svc-a.internal"], "svc-a");
    let mock = Mock::start();
    let port = free_port();
    let d = dir.path().display();
    let config = format!(
        r#"
{{SERVER}}
  tls:
    - {{listen: "127.0.0.1:{port}", cert_file: "{d}/default.pem", key_file: "{d}/default.key", client_ca_file: "{d}/clients.pem"}}
{TAIL}  - {{name: svc-a, client_cert: "DNS:svc-a.internal", owner: platform}}
  - {{name: svc-b, client_cert: "CN=svc-b"}}
  - {{name: batch, client_cert: "URI:spiffe://corp/ns/jobs/sa/batch", models: []}}
"#
    );
    let gw = Gateway::start(&config, &mock);
    assert!(wait_until(10, || TcpStream::connect(("127.0.0.1", port)).is_ok()));
    // By a SAN, by the common name, by a URI SAN; the last may use no model.
    assert!(status_as(port, Some(&svc_a), None).contains("200"));
    assert!(status_as(port, Some(&svc_b), None).contains("200"));
    assert!(status_as(port, Some(&spiffe), None).contains("200"));
    let lines = gw.access_lines_until(3, |_| true);
    assert!(
        lines
            .iter()
            .any(|l| l.contains(r#""key":"svc-a""#) && l.contains(r#""owner":"platform""#)),
        "{lines:?}"
    );
    // A trusted certificate no entry names, or none at all: the one 401.
    assert!(status_as(port, Some(&stranger), None).contains("401"));
    assert!(status_as(port, None, None).contains("401"));
    // A key still works without a certificate, and decides when both are given.
    assert!(status_as(port, None, Some(CALLER_KEY)).contains("200"));
    assert!(status_as(port, Some(&svc_a), Some("sk-wrong")).contains("401"));
    // A certificate from another CA never gets through the handshake.
    assert!(status_as(port, Some(&other_ca), None).starts_with("handshake failed"));
    drop(gw);
}

#[test]
fn tls_settings_are_checked_when_the_config_loads() {
    let dir = tempfile::tempdir().unwrap();
    write_cert(dir.path(), "one", &["a.test"], 2031);
    write_cert(dir.path(), "two", &["b.test"], 2031);
    let d = dir.path().display();
    let config = format!(
        r#"
version: 1
server:
  tls:
    - {{listen: "127.0.0.1:9443"}}
    - {{listen: "127.0.0.1:9444", cert_file: "{d}/one.pem", key_file: "{d}/two.key"}}
    - {{listen: "127.0.0.1:9445", cert_file: "{d}/one.pem", key_file: "{d}/one.key", min_version: "1.1"}}
    - {{listen: "127.0.0.1:9446", certificates: [{{cert_file: "{d}/missing.pem", key_file: "{d}/one.key"}}]}}
    - {{listen: "127.0.0.1:9447", cert_file: "{d}/one.pem", key_file: "{d}/one.key", client_ca_file: "{d}/one.key"}}
api_keys:
  - {{name: both, key: sk-both-1234, client_cert: "DNS:svc.internal"}}
  - {{name: one, client_cert: "DNS:svc.internal"}}
  - {{name: two, client_cert: "DNS:svc.internal"}}
"#
    );
    let key = std::fs::read_to_string(dir.path().join("two.key")).unwrap();
    assert_config_errors(
        &config,
        &[
            "server.tls[0]: give either cert_file and key_file, or certificates",
            "server.tls[1].key_file: '",
            "two.key' is not the key of '",
            "server.tls[2].min_version: must be \"1.2\" or \"1.3\"",
            "server.tls[3].certificates[0].cert_file: cannot read '",
            "server.tls[4].client_ca_file: '",
            "one.key' holds no PEM certificate",
            "api_keys[0]: set either a key (key, key_env or key_hash) or client_cert, not both",
            "api_keys[2].client_cert: another api_keys entry bound to the same CAs has this client_cert",
        ],
        &key[30..70],
    );
}

/// Two listeners, each trusting its own CA: the internal one and a partner's. `{d}` holds
/// `default.pem`/`.key`, `internal.pem`, `internal-copy.pem` (the same CA under another
/// name) and `partner.pem`.
fn two_ca_config(d: &str, internal_port: u16, partner_port: u16) -> String {
    format!(
        r#"
{{SERVER}}
  tls:
    - {{listen: "127.0.0.1:{internal_port}", cert_file: "{d}/default.pem", key_file: "{d}/default.key", client_ca_file: "{d}/internal.pem"}}
    - {{listen: "127.0.0.1:{partner_port}", cert_file: "{d}/default.pem", key_file: "{d}/default.key", client_ca_file: "{d}/partner.pem"}}
{TAIL}  - {{name: billing, client_cert: "DNS:billing.internal", client_ca_file: "{d}/internal-copy.pem"}}
  - {{name: cn-billing, client_cert: "CN=billing", client_ca_file: "{d}/internal.pem"}}
  - {{name: partner-acme, client_cert: "DNS:acme.partner.example", client_ca_file: "{d}/partner.pem"}}
"#
    )
}

/// A server certificate and two client CAs, an internal one (also copied under another
/// file name: the same bundle by content) and a partner's, written in a fresh directory.
fn two_client_cas() -> (tempfile::TempDir, ClientPki, ClientPki) {
    let dir = tempfile::tempdir().unwrap();
    write_cert(dir.path(), "default", &["a.test"], 2031);
    let (internal, partner) = (ClientPki::new(), ClientPki::new());
    std::fs::write(dir.path().join("internal.pem"), &internal.ca_pem).unwrap();
    std::fs::write(dir.path().join("internal-copy.pem"), &internal.ca_pem).unwrap();
    std::fs::write(dir.path().join("partner.pem"), &partner.ca_pem).unwrap();
    (dir, internal, partner)
}

#[tokio::test]
async fn a_client_certificate_names_a_caller_only_through_its_ca_and_by_type() {
    let (dir, internal, partner) = two_client_cas();
    let billing = internal.client(&["billing.internal"], "svc-billing");
    let billing_upper = internal.client(&["Billing.INTERNAL"], "svc-billing-2");
    let cn_billing = internal.client(&[], "billing");
    // The partner's CA signs what it likes: the internal name, in a SAN and as the CN.
    let forged = partner.client(&["billing.internal"], "billing");
    let acme = partner.client(&["acme.partner.example"], "acme");
    // A DNS name whose text is "CN=billing", from the internal CA, is no common name.
    let dns_cn = internal.client(&["CN=billing"], "svc-other");
    let mock = Mock::start();
    let (int_port, partner_port) = (free_port(), free_port());
    let d = dir.path().display().to_string();
    let gw = Gateway::start(&two_ca_config(&d, int_port, partner_port), &mock);
    assert!(wait_until(10, || TcpStream::connect(("127.0.0.1", partner_port)).is_ok()));

    // The partner listener verifies the partner's certificate, but no entry bound to the
    // partner's CA is billing: the one 401, whether it names billing by SAN or by CN.
    assert!(status_as(partner_port, Some(&forged), None).contains("401"));
    assert!(status_as(partner_port, Some(&acme), None).contains("200"));
    // The internal listener refuses the partner's CA at the handshake, and takes its own.
    assert!(status_as(int_port, Some(&forged), None).starts_with("handshake failed"));
    assert!(status_as(int_port, Some(&billing), None).contains("200"));
    assert!(
        status_as(int_port, Some(&billing_upper), None).contains("200"),
        "DNS names ignore case"
    );
    assert!(status_as(int_port, Some(&cn_billing), None).contains("200"));
    assert!(status_as(int_port, Some(&dns_cn), None).contains("401"));
    let lines = gw.access_lines_until(7, |_| true);
    let keys: Vec<String> = lines
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| format!("{} {}", v["status"], v["key"].as_str().unwrap()))
        .collect();
    assert_eq!(
        keys,
        [
            "401 ",
            "200 partner-acme",
            "200 billing",
            "200 billing",
            "200 cn-billing",
            "401 "
        ],
        "{lines:?}"
    );
}

#[test]
fn client_certificate_bindings_are_checked_when_the_config_loads() {
    let dir = tempfile::tempdir().unwrap();
    write_cert(dir.path(), "default", &["a.test"], 2031);
    let (internal, partner, third) = (ClientPki::new(), ClientPki::new(), ClientPki::new());
    std::fs::write(dir.path().join("internal.pem"), &internal.ca_pem).unwrap();
    std::fs::write(dir.path().join("partner.pem"), &partner.ca_pem).unwrap();
    std::fs::write(dir.path().join("third.pem"), &third.ca_pem).unwrap();
    let d = dir.path().display();
    let config = format!(
        r#"
version: 1
server:
  tls:
    - {{listen: "127.0.0.1:9443", cert_file: "{d}/default.pem", key_file: "{d}/default.key", client_ca_file: "{d}/internal.pem"}}
    - {{listen: "127.0.0.1:9444", cert_file: "{d}/default.pem", key_file: "{d}/default.key", client_ca_file: "{d}/partner.pem"}}
api_keys:
  - {{name: unbound, client_cert: "DNS:billing.internal"}}
  - {{name: untyped, client_cert: billing.internal, client_ca_file: "{d}/internal.pem"}}
  - {{name: stranger, client_cert: "URI:spiffe://x/y", client_ca_file: "{d}/third.pem"}}
  - {{name: empty, client_cert: "CN=", client_ca_file: "{d}/missing.pem"}}
  - {{name: key, key: sk-key-abcdef, client_ca_file: "{d}/internal.pem"}}
"#
    );
    assert_config_errors(
        &config,
        &[
            "api_keys[0].client_ca_file: required: the TLS listeners trust different CAs",
            "api_keys[1].client_cert: must name the identity with its type: DNS:<name>, URI:<uri> or CN=<common name>",
            "api_keys[2].client_ca_file: no server.tls listener has a client_ca_file with the same CAs as '",
            "api_keys[3].client_cert: names the type but no identity",
            "api_keys[3].client_ca_file: cannot read '",
            "api_keys[4].client_ca_file: belongs with client_cert",
        ],
        "sk-key-abcdef",
    );
}

/// One request through `openssl s_client` (`-tls1_2` or `-tls1_3`): with this client
/// certificate (PEM files), saving the session to `sess_out` or resuming `sess_in`. Whether
/// the session was resumed, and the answer's status line.
fn s_client(
    port: u16,
    version: &str,
    cert: Option<(&Path, &Path)>,
    sess_out: Option<&Path>,
    sess_in: Option<&Path>,
) -> (bool, String) {
    let mut cmd = std::process::Command::new("openssl");
    cmd.args([
        "s_client",
        "-connect",
        &format!("127.0.0.1:{port}"),
        "-servername",
        "a.test",
        version,
        "-ign_eof",
    ]);
    if let Some((c, k)) = cert {
        cmd.arg("-cert").arg(c).arg("-key").arg(k);
    }
    if let Some(p) = sess_out {
        cmd.arg("-sess_out").arg(p);
    }
    if let Some(p) = sess_in {
        cmd.arg("-sess_in").arg(p);
    }
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the openssl command-line tool is installed");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"GET /v1/models HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // s_client may print a session ticket's dump around the answer: the status line is
    // found wherever it starts.
    let status = text
        .find("HTTP/1.1 ")
        .and_then(|at| text[at..].split("\r\n").next())
        .map_or_else(
            || format!("no answer: {}", String::from_utf8_lossy(&out.stderr)),
            str::to_owned,
        );
    (text.contains("\nReused, "), status)
}

#[tokio::test]
async fn a_resumed_tls_session_keeps_its_client_identity_and_gives_no_other() {
    let (dir, internal, _partner) = two_client_cas();
    let (cert, key) = internal.client(&["billing.internal"], "svc");
    let (cert_path, key_path) = (dir.path().join("billing.pem"), dir.path().join("billing.key"));
    std::fs::write(&cert_path, cert).unwrap();
    std::fs::write(&key_path, key).unwrap();
    let mock = Mock::start();
    let (int_port, partner_port) = (free_port(), free_port());
    let gw = Gateway::start(
        &two_ca_config(&dir.path().display().to_string(), int_port, partner_port),
        &mock,
    );
    assert!(wait_until(10, || TcpStream::connect(("127.0.0.1", partner_port)).is_ok()));
    let client = Some((cert_path.as_path(), key_path.as_path()));
    for version in ["-tls1_3", "-tls1_2"] {
        let sess = dir.path().join(format!("sess{version}.pem"));
        assert_eq!(
            s_client(int_port, version, client, Some(&sess), None),
            (false, "HTTP/1.1 200 OK".into()),
            "{version}: the first handshake"
        );
        // Resumed without presenting the certificate again: the session brings it back.
        assert_eq!(
            s_client(int_port, version, None, None, Some(&sess)),
            (true, "HTTP/1.1 200 OK".into()),
            "{version}: the resumed handshake"
        );
        // The session does not resume on the partner's listener: a new handshake without
        // a certificate, and no caller.
        assert_eq!(
            s_client(partner_port, version, None, None, Some(&sess)),
            (false, "HTTP/1.1 401 Unauthorized".into()),
            "{version}: another listener"
        );
        // A session made without a certificate resumes as no one.
        let anonymous = dir.path().join(format!("anon{version}.pem"));
        assert_eq!(
            s_client(int_port, version, None, Some(&anonymous), None).1,
            "HTTP/1.1 401 Unauthorized"
        );
        assert_eq!(
            s_client(int_port, version, None, None, Some(&anonymous)),
            (true, "HTTP/1.1 401 Unauthorized".into()),
            "{version}: an anonymous session"
        );
    }
    let lines = gw.access_lines_until(10, |_| true);
    let billing = lines.iter().filter(|l| l.contains(r#""key":"billing""#)).count();
    assert_eq!(billing, 4, "{lines:?}");
}
