//! A real etcd (Debian's `etcd-server`) on private ports with a temporary data dir, which
//! a test can stop and start again with its data.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

use super::{free_port, wait_until};

pub struct Etcd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    pub port: u16,
    peer_port: u16,
    /// Clients must present a certificate signed by `ca.pem` in this directory, which
    /// also holds `client.pem` and `client.key`.
    tls: bool,
}

impl Etcd {
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// An etcd that speaks TLS only and requires client certificates.
    pub fn start_tls() -> Self {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> Self {
        let mut e = Etcd {
            child: None,
            dir: tempfile::tempdir().unwrap(),
            port: free_port(),
            peer_port: free_port(),
            tls,
        };
        if tls {
            make_certs(e.dir.path());
        }
        e.resume();
        e
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The directory of `ca.pem`, `client.pem` and `client.key` (with `start_tls`).
    pub fn cert_dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Starts (again) on the same ports and data.
    pub fn resume(&mut self) {
        let client = self.url();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new("etcd")
            .args(["--name", "test", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("test={peer}")])
            .args(self.tls_args())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd is installed (Debian package etcd-server)");
        self.child = Some(child);
        let port = self.port;
        assert!(
            wait_until(20, || TcpStream::connect(("127.0.0.1", port)).is_ok()),
            "etcd did not start"
        );
    }

    fn tls_args(&self) -> Vec<String> {
        if !self.tls {
            return Vec::new();
        }
        let f = |name: &str| self.dir.path().join(name).display().to_string();
        vec![
            "--cert-file".into(),
            f("server.pem"),
            "--key-file".into(),
            f("server.key"),
            "--client-cert-auth".into(),
            "--trusted-ca-file".into(),
            f("ca.pem"),
        ]
    }

    /// Kills etcd; its data stays for `resume`.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `etcdctl put`, for states the admin API would refuse to write.
    pub fn put_raw(&self, key: &str, value: &str) {
        let ok = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.url(), "put", key, value])
            .stdout(Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(ok, "etcdctl put {key}");
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files.
fn make_certs(dir: &std::path::Path) {
    let ca = super::TestCa::new("aigw test etcd CA");
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    ca.write_leaf(dir, "server", &["127.0.0.1"]);
    ca.write_leaf(dir, "client", &["aigw"]);
}
