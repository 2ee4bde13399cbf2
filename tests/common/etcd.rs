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
}

impl Etcd {
    pub fn start() -> Self {
        let mut e = Etcd {
            child: None,
            dir: tempfile::tempdir().unwrap(),
            port: free_port(),
            peer_port: free_port(),
        };
        e.resume();
        e
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
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
