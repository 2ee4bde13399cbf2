//! The `server` section: listeners, TLS, Redis, the config store, admin keys; and the
//! `observability` settings that are checked here too.

use std::fmt;
use std::time::Duration;

use super::{raw, Errors};

#[derive(Debug, Clone)]
pub struct TlsListener {
    pub listen: String,
    /// Loaded with the config: a reload re-reads them.
    pub certificates: std::sync::Arc<crate::tls::Certificates>,
    /// TLS 1.3 only (else 1.2 and 1.3). Read at start.
    pub tls13_only: bool,
    /// CAs whose client certificates are verified and may authenticate callers (the
    /// `api_keys` entries bound to this bundle). The listener keeps those read at start.
    pub client_ca: Option<std::sync::Arc<crate::tls::ClientCas>>,
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen: Vec<String>,
    pub tls: Vec<TlsListener>,
    pub admin_listen: Option<String>,
    pub threads: usize,
    pub work_stealing: bool,
    pub grace_period_s: u64,
    /// Where listeners are handed over on SIGQUIT; `None`: nowhere (`upgrade_sock`).
    pub upgrade_sock: Option<String>,
    pub max_request_body_bytes: u64,
    pub client_body_timeout: Duration,
    pub keepalive_timeout_s: u64,
    pub keepalive_requests: u32,
    pub read_buffer_bytes: usize,
    pub realtime: raw::Realtime,
    pub files: raw::FileIds,
    pub redis: Option<RedisSettings>,
    /// Resources come from etcd instead of the file.
    pub config_store: Option<EtcdSettings>,
    /// BLAKE3 hashes of the admin API's keys.
    pub admin_keys: Vec<[u8; 32]>,
}

/// `server.config_store.etcd`. The password is never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdSettings {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub cache_file: Option<std::path::PathBuf>,
    pub tls: Option<EtcdTlsFiles>,
    pub user: Option<String>,
    pub password: Option<String>,
}

impl fmt::Debug for EtcdSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdSettings")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("cache_file", &self.cache_file)
            .field("tls", &self.tls)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTlsFiles {
    pub ca_file: String,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
}

/// `server.redis`. The URL may hold a password: it is never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisSettings {
    pub url: String,
    pub pool_size: usize,
    pub timeout: Duration,
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("pool_size", &self.pool_size)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

pub(super) fn check_listen(path: String, addr: &str, errs: &mut Errors) {
    if addr.parse::<std::net::SocketAddr>().is_err() {
        errs.push(
            path,
            format!("'{addr}' is not an address like 127.0.0.1:8080 or [::]:8080"),
        );
    }
}

/// A TLS listener: its address, and every certificate read and checked now (chain, key
/// matching it, names, expiry).
fn compile_tls(i: usize, t: &raw::TlsListener, errs: &mut Errors) -> Option<TlsListener> {
    let path = format!("server.tls[{i}]");
    let before = errs.0.len();
    check_listen(format!("{path}.listen"), &t.listen, errs);
    let pairs: Vec<(String, &str, &str)> = match (&t.cert_file, &t.key_file, t.certificates.is_empty()) {
        (Some(c), Some(k), true) => vec![(path.clone(), c.as_str(), k.as_str())],
        (None, None, false) => t
            .certificates
            .iter()
            .enumerate()
            .map(|(j, c)| {
                (
                    format!("{path}.certificates[{j}]"),
                    c.cert_file.as_str(),
                    c.key_file.as_str(),
                )
            })
            .collect(),
        _ => {
            errs.push(
                path,
                "give either cert_file and key_file, or certificates: [{cert_file, key_file}, ...]",
            );
            return None;
        }
    };
    let mut certs = Vec::new();
    for (at, cert, key) in pairs {
        match crate::tls::Certificate::load(cert, key) {
            Ok(c) => certs.push(c),
            Err((field, msg)) => errs.push(format!("{at}.{field}"), msg),
        }
    }
    let tls13_only = match t.min_version.as_deref() {
        None | Some("1.2") => false,
        Some("1.3") => true,
        Some(_) => {
            errs.push(format!("{path}.min_version"), "must be \"1.2\" or \"1.3\"");
            false
        }
    };
    let client_ca = t.client_ca_file.as_deref().and_then(|ca| {
        crate::tls::ClientCas::load(ca)
            .map_err(|e| errs.push(format!("{path}.client_ca_file"), e))
            .ok()
    });
    (errs.0.len() == before).then(|| TlsListener {
        listen: t.listen.clone(),
        certificates: std::sync::Arc::new(crate::tls::Certificates(certs)),
        tls13_only,
        client_ca: client_ca.map(std::sync::Arc::new),
    })
}

/// The longest path a Unix socket address holds (`sun_path` is 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// `server.upgrade_sock`, or its default: `$RUNTIME_DIRECTORY/upgrade.sock` (systemd's
/// `RuntimeDirectory=`, the first when it lists several), else
/// `$XDG_RUNTIME_DIR/aigw/upgrade.sock`, else none. Never a fixed path in a shared
/// directory such as /tmp, where another user can be listening first. Whether the
/// directory is private is checked when aigw starts and at each handover (`server`).
fn upgrade_sock(configured: Option<&str>, env: &dyn Fn(&str) -> Option<String>, errs: &mut Errors) -> Option<String> {
    let absolute = |v: String| v.starts_with('/').then(|| v.trim_end_matches('/').to_owned());
    let (path, from) = match configured {
        Some(p) => (p.to_owned(), None),
        None => env("RUNTIME_DIRECTORY")
            .and_then(|v| v.split(':').next().map(str::to_owned))
            .and_then(absolute)
            .map(|d| (format!("{d}/upgrade.sock"), "$RUNTIME_DIRECTORY"))
            .or_else(|| {
                env("XDG_RUNTIME_DIR")
                    .and_then(absolute)
                    .map(|d| (format!("{d}/aigw/upgrade.sock"), "$XDG_RUNTIME_DIR"))
            })
            .map(|(p, var)| (p, Some(var)))?,
    };
    let problem = if !path.starts_with('/') {
        "must be an absolute path".to_owned()
    } else if path.ends_with('/') || path.ends_with("/.") || path.ends_with("/..") {
        "must name the socket file, not a directory".to_owned()
    } else if path.contains('\0') {
        "must not contain a NUL byte".to_owned()
    } else if path.len() > MAX_SOCKET_PATH {
        format!(
            "is {} bytes long; a Unix socket path holds at most {MAX_SOCKET_PATH}",
            path.len()
        )
    } else {
        return Some(path);
    };
    let msg = match from {
        None => problem,
        Some(var) => format!("the default from {var}, {path}, {problem}; set server.upgrade_sock"),
    };
    errs.push("server.upgrade_sock", msg);
    None
}

/// The most listening sockets one upgrade hands over (the vendored Pingora's
/// `transfer_fd::MAX_FDS`).
const MAX_HANDOVER: usize = 32;

pub(super) fn compile_server(
    s: &raw::Server,
    env: &dyn Fn(&str) -> Option<String>,
    errs: &mut Errors,
) -> ServerSettings {
    if s.listen.is_empty() && s.tls.is_empty() {
        errs.push("server.listen", "at least one plaintext or TLS listener is needed");
    }
    for (i, l) in s.listen.iter().enumerate() {
        check_listen(format!("server.listen[{i}]"), l, errs);
    }
    let tls: Vec<TlsListener> = s
        .tls
        .iter()
        .enumerate()
        .filter_map(|(i, t)| compile_tls(i, t, errs))
        .collect();
    if let Some(a) = &s.admin_listen {
        check_listen("server.admin_listen".into(), a, errs);
    }
    // An upgrade hands every listening socket to the new process in one message, which
    // carries at most MAX_HANDOVER descriptors: more would start, then fail to upgrade.
    let sockets = s.listen.len() + s.tls.len() + usize::from(s.admin_listen.is_some());
    if sockets > MAX_HANDOVER {
        errs.push(
            "server.listen",
            format!(
                "{sockets} listening sockets (listen, tls and admin_listen together): an upgrade hands over at most {MAX_HANDOVER}"
            ),
        );
    }
    if s.max_request_body_bytes == 0 {
        errs.push("server.max_request_body_bytes", "must be at least 1");
    }
    if !(1..=3_600_000).contains(&s.client_body_timeout_ms) {
        errs.push("server.client_body_timeout_ms", "must be between 1 and 3600000");
    }
    if !(1..=3600).contains(&s.keepalive_timeout_s) {
        errs.push("server.keepalive_timeout_s", "must be between 1 and 3600");
    }
    if s.keepalive_requests == 0 {
        errs.push("server.keepalive_requests", "must be at least 1");
    }
    if !(1024..=1024 * 1024).contains(&s.read_buffer_bytes) {
        errs.push("server.read_buffer_bytes", "must be between 1024 and 1048576");
    }
    let rt = &s.realtime;
    if !(1..=86_400).contains(&rt.idle_timeout_s) {
        errs.push("server.realtime.idle_timeout_s", "must be between 1 and 86400");
    }
    if !(1..=86_400).contains(&rt.max_session_s) {
        errs.push("server.realtime.max_session_s", "must be between 1 and 86400");
    }
    if !(1024..=64 << 20).contains(&rt.max_message_bytes) {
        errs.push("server.realtime.max_message_bytes", "must be between 1024 and 67108864");
    }
    let f = &s.files;
    // Longer than a batch's 24 h completion window, so no batch is forgotten while it runs.
    if !(25..=87_600).contains(&f.retention_hours) {
        errs.push("server.files.retention_hours", "must be between 25 and 87600");
    }
    if !(1..=raw::FileIds::MAX_PER_OWNER).contains(&f.max_ids_per_owner) {
        errs.push(
            "server.files.max_ids_per_owner",
            format!("must be between 1 and {}", raw::FileIds::MAX_PER_OWNER),
        );
    }
    if !(1..=10_000_000).contains(&f.max_ids) {
        errs.push("server.files.max_ids", "must be between 1 and 10000000");
    }
    if let Some(r) = &s.redis {
        if !(r.url.starts_with("redis://") || r.url.starts_with("rediss://") || r.url.starts_with("unix://")) {
            errs.push("server.redis.url", "must start with redis://, rediss:// or unix://");
        } else if let Err(e) = redis::Client::open(r.url.as_str()) {
            errs.push("server.redis.url", format!("not a valid redis URL ({:?})", e.kind()));
        }
        if !(1..=64).contains(&r.pool_size) {
            errs.push("server.redis.pool_size", "must be between 1 and 64");
        }
        if !(1..=10_000).contains(&r.timeout_ms) {
            errs.push("server.redis.timeout_ms", "must be between 1 and 10000");
        }
    }
    if let Some(cs) = &s.config_store {
        let e = &cs.etcd;
        if e.endpoints.is_empty() {
            errs.push("server.config_store.etcd.endpoints", "needs at least one endpoint");
        }
        for (i, ep) in e.endpoints.iter().enumerate() {
            let tls = e.tls.is_some();
            let scheme = if tls { "https://" } else { "http://" };
            if !ep.starts_with(scheme) {
                errs.push(
                    format!("server.config_store.etcd.endpoints[{i}]"),
                    format!(
                        "must start with {scheme} (tls is {})",
                        if tls { "set" } else { "not set" }
                    ),
                );
            }
        }
        if !e.prefix.starts_with('/') || e.prefix.trim_end_matches('/').is_empty() {
            errs.push(
                "server.config_store.etcd.prefix",
                "must start with / and name a directory, e.g. /aigw",
            );
        }
        if e.user.is_some() != e.password.is_some() {
            errs.push("server.config_store.etcd", "set user and password together");
        }
        if let Some(t) = &e.tls {
            if t.cert_file.is_some() != t.key_file.is_some() {
                errs.push("server.config_store.etcd.tls", "set cert_file and key_file together");
            }
        }
    }
    ServerSettings {
        listen: s.listen.clone(),
        tls,
        admin_listen: s.admin_listen.clone(),
        threads: s.threads,
        work_stealing: s.work_stealing,
        grace_period_s: s.grace_period_s,
        upgrade_sock: upgrade_sock(s.upgrade_sock.as_deref(), env, errs),
        max_request_body_bytes: s.max_request_body_bytes,
        client_body_timeout: Duration::from_millis(s.client_body_timeout_ms),
        keepalive_timeout_s: s.keepalive_timeout_s,
        keepalive_requests: s.keepalive_requests,
        read_buffer_bytes: s.read_buffer_bytes,
        realtime: s.realtime,
        files: s.files,
        redis: s.redis.as_ref().map(|r| RedisSettings {
            url: r.url.clone(),
            pool_size: r.pool_size,
            timeout: Duration::from_millis(r.timeout_ms),
        }),
        config_store: s.config_store.as_ref().map(|c| EtcdSettings {
            endpoints: c.etcd.endpoints.clone(),
            prefix: c.etcd.prefix.trim_end_matches('/').to_owned(),
            cache_file: c.etcd.cache_file.as_ref().map(std::path::PathBuf::from),
            tls: c.etcd.tls.as_ref().map(|t| EtcdTlsFiles {
                ca_file: t.ca_file.clone(),
                cert_file: t.cert_file.clone(),
                key_file: t.key_file.clone(),
            }),
            user: c.etcd.user.clone(),
            password: c.etcd.password.clone(),
        }),
        // Resolved in `compile`, which has the environment.
        admin_keys: Vec::new(),
    }
}

/// `observability.otlp`: a plain-HTTP endpoint and a ratio between 0 and 1.
pub(super) fn check_observability(o: &raw::Observability, errs: &mut Errors) {
    let Some(o) = &o.otlp else { return };
    match crate::provider::BaseUrl::parse(&o.endpoint) {
        Err(e) => errs.push("observability.otlp.endpoint", e),
        // The exporter is built without TLS: spans go to a collector or agent nearby.
        Ok(b) if b.tls => errs.push(
            "observability.otlp.endpoint",
            "must be http:// (a local collector or agent; aigw's exporter has no TLS)",
        ),
        Ok(_) => {}
    }
    if !(0.0..=1.0).contains(&o.sample_ratio) {
        errs.push("observability.otlp.sample_ratio", "must be between 0 and 1");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `upgrade_sock` with `configured` in an environment of `vars`: the path, or errors.
    fn resolve(configured: Option<&str>, vars: &[(&str, &str)]) -> Result<Option<String>, Vec<String>> {
        let env = |n: &str| vars.iter().find(|(k, _)| *k == n).map(|(_, v)| (*v).to_owned());
        let mut errs = Errors(Vec::new());
        let path = upgrade_sock(configured, &env, &mut errs);
        match errs.0.is_empty() {
            true => Ok(path),
            false => Err(errs.0.iter().map(ToString::to_string).collect()),
        }
    }

    #[test]
    fn the_default_upgrade_socket_is_in_the_runtime_directory_or_nowhere() {
        let both = [
            ("RUNTIME_DIRECTORY", "/run/aigw:/run/other"),
            ("XDG_RUNTIME_DIR", "/run/user/1000/"),
        ];
        assert_eq!(resolve(None, &both), Ok(Some("/run/aigw/upgrade.sock".into())));
        assert_eq!(
            resolve(None, &both[1..]),
            Ok(Some("/run/user/1000/aigw/upgrade.sock".into()))
        );
        // set but not absolute (or empty): as if unset, never relative to the working directory
        assert_eq!(
            resolve(None, &[("RUNTIME_DIRECTORY", "run"), ("XDG_RUNTIME_DIR", "")]),
            Ok(None)
        );
        // never a fixed path in /tmp
        assert_eq!(resolve(None, &[]), Ok(None));
        // the configured path wins
        assert_eq!(resolve(Some("/srv/a.sock"), &both), Ok(Some("/srv/a.sock".into())));
    }

    #[test]
    fn an_upgrade_socket_path_the_kernel_cannot_take_is_a_config_error() {
        let long = format!("/{}", "d".repeat(120));
        for (path, expected) in [
            ("upgrade.sock", "must be an absolute path"),
            ("", "must be an absolute path"),
            ("/run/aigw/", "must name the socket file"),
            ("/run/aigw/..", "must name the socket file"),
            ("/run/\0x", "NUL"),
        ] {
            let errs = resolve(Some(path), &[]).unwrap_err();
            assert!(
                errs[0].contains("server.upgrade_sock") && errs[0].contains(expected),
                "{path:?}: {errs:?}"
            );
        }
        let errs = resolve(Some(&format!("{long}.sock")), &[]).unwrap_err();
        assert!(errs[0].contains("at most 107"), "{errs:?}");
        assert_eq!(
            resolve(Some(&format!("/{}", "d".repeat(106))), &[]).map(|p| p.map(|p| p.len())),
            Ok(Some(107))
        );
        // a default too long names the variable it came from
        let errs = resolve(None, &[("XDG_RUNTIME_DIR", &long)]).unwrap_err();
        assert!(
            errs[0].contains("$XDG_RUNTIME_DIR") && errs[0].contains("set server.upgrade_sock"),
            "{errs:?}"
        );
    }
}
