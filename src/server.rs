//! `aigw serve`: assembles the Pingora server (proxy listeners, TLS, admin listener,
//! background DNS refresh) and owns the process signals.
//!
//! Signals are handled here rather than by Pingora's default watcher: SIGHUP reloads the
//! config, and SIGTERM drains — Pingora alone always sleeps the whole grace period, while
//! aigw exits as soon as the last in-flight request is done (or the grace period ends).

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::http_app::HttpServer;
use pingora::apps::HttpServerOptions;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::ListenerConfig;
use pingora::protocols::l4::stream::L4BufferSettings;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;
use tokio::signal::unix::{signal, SignalKind};

use crate::admin::Admin;
use crate::config::compile::EtcdSettings;
use crate::proxy::Gateway;
use crate::state::AppState;

/// Starts serving; returns only on a startup error (after a clean shutdown the process exits).
pub fn serve(config: PathBuf, upgrade: bool) -> Result<(), String> {
    let state = match AppState::load(config.clone()) {
        Ok(s) => s,
        Err(errors) => {
            let mut msg = format!("{}: {} error(s):", config.display(), errors.len());
            for e in errors {
                msg.push_str(&format!("\n  {e}"));
            }
            return Err(msg);
        }
    };
    let snap = state.snapshot();
    tracing::info!(config = %config.display(), "loaded: {}", snap.summary());

    // Resolve provider addresses before the first request, off any request path.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?
        .block_on(state.upstreams.resolve_new());

    let threads = match snap.server.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let upgrade_sock = upgrade_socket(snap.server.upgrade_sock.as_deref(), upgrade)?;
    let conf = ServerConf {
        threads,
        grace_period_seconds: Some(snap.server.grace_period_s),
        graceful_shutdown_timeout_seconds: Some(1),
        work_stealing: snap.server.work_stealing,
        // Without one, SIGQUIT never reaches Pingora's handover (`Signals`).
        upgrade_sock: upgrade_sock.clone().unwrap_or_default(),
        ..ServerConf::default()
    };
    // With --upgrade, bootstrap waits on upgrade_sock for the running process's listening
    // sockets (it sends them on SIGQUIT) instead of binding them.
    let opt = pingora::server::configuration::Opt {
        upgrade,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let mut proxy = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        Gateway {
            state: state.clone(),
            pool_per_thread: !snap.server.work_stealing,
        },
        "aigw",
    );
    if let Some(app) = proxy.app_logic_mut() {
        let mut opts = HttpServerOptions::default();
        // Prior-knowledge HTTP/2 on plaintext listeners, for internal clients that use it.
        opts.h2c = true;
        // Unlimited by default in Pingora; nginx closes after 1000 to free per-connection
        // memory. Applies to HTTP/1.1 (an HTTP/2 connection's streams are not counted).
        // Pingora counts reuses, after the first request.
        opts.keepalive_request_limit = Some(snap.server.keepalive_requests.saturating_sub(1));
        app.server_options = Some(opts);
    }
    // Pingora's default 64 KiB read buffer per connection is most of what an idle
    // kept-alive connection costs; 16 KiB still holds a whole TLS record.
    let buffers = L4BufferSettings::default().read(snap.server.read_buffer_bytes);
    for addr in &snap.server.listen {
        proxy.add_listener(ListenerConfig::tcp(addr.as_str()).l4_buffer(buffers));
    }
    for t in &snap.server.tls {
        // Each handshake's certificate comes from the snapshot of the moment, by SNI: a
        // reload rotates them without a restart (`tls::CertPicker`).
        let (state_now, listen) = (state.clone(), t.listen.clone());
        let picker = crate::tls::CertPicker {
            current: Box::new(move || {
                let snap = state_now.snapshot();
                let t = snap.server.tls.iter().find(|t| t.listen == listen)?;
                Some(t.certificates.clone())
            }),
            listen: t.listen.clone(),
            initial: t.certificates.clone(),
            client_ca: t.client_ca.as_ref().map(|c| c.id),
        };
        let mut tls =
            TlsSettings::with_callbacks(Box::new(picker)).map_err(|e| format!("server.tls {}: {e}", t.listen))?;
        if t.tls13_only {
            tls.set_min_proto_version(Some(pingora::tls::ssl::SslVersion::TLS1_3))
                .map_err(|e| format!("server.tls {}: {e}", t.listen))?;
        }
        if let Some(cas) = &t.client_ca {
            // Asked for, not required: callers without one use keys. One that is
            // presented must verify, or the handshake fails. The CAs are the ones the
            // config compiled (and `CertPicker::client_ca` names), read once.
            let fail = |e: &dyn std::fmt::Display| format!("server.tls {}: client_ca_file: {e}", t.listen);
            tls.set_verify(pingora::tls::ssl::SslVerifyMode::PEER);
            // The CAs' names go in the certificate request, so clients pick the right one.
            let mut names = openssl::stack::Stack::new().map_err(|e| fail(&e))?;
            for c in &cas.certs {
                tls.cert_store_mut().add_cert(c.clone()).map_err(|e| fail(&e))?;
                names
                    .push(c.subject_name().to_owned().map_err(|e| fail(&e))?)
                    .map_err(|e| fail(&e))?;
            }
            tls.set_client_ca_list(names);
        }
        // OpenSSL refuses to resume a session on a context that verifies clients but has
        // no session id context (a fatal alert on every resumed handshake). Each listener
        // has its own, naming its address and CA bundle: a session resumes only where it
        // was made, and brings back the client certificate it verified, which
        // `CertPicker` reads again as the identity.
        let mut sid = blake3::Hasher::new();
        sid.update(t.listen.as_bytes());
        if let Some(cas) = &t.client_ca {
            sid.update(&cas.id.digest());
        }
        tls.set_session_id_context(sid.finalize().as_bytes())
            .map_err(|e| format!("server.tls {}: {e}", t.listen))?;
        tls.enable_h2();
        proxy.add_listener(ListenerConfig::tcp(t.listen.as_str()).tls(tls).l4_buffer(buffers));
    }
    server.add_service(proxy);

    if let Some(addr) = &snap.server.admin_listen {
        let mut admin = Service::new(
            "aigw admin".to_owned(),
            HttpServer::new_app(Admin {
                state: state.clone(),
                api: Default::default(),
            }),
        );
        admin.add_tcp(addr);
        server.add_service(admin);
    }
    server.add_service(background_service(
        "upstream refresh",
        Refresher { state: state.clone() },
    ));
    if let Some(es) = snap.server.config_store.clone() {
        server.add_service(background_service(
            "config store",
            StoreFollower {
                state: state.clone(),
                settings: es,
            },
        ));
    }
    drop(snap);

    tracing::info!("aigw serving");
    server.run(RunArgs {
        shutdown_signal: Box::new(Signals {
            state: state.clone(),
            can_hand_over: upgrade_sock.is_some(),
        }),
    });
    before_exit(&state);
    std::process::exit(0)
}

/// The upgrade socket, ready for a handover: its directory made (0700) when missing, and
/// checked private to this user (`pingora::server::private_socket_path`, which checks it
/// again at the handover itself). A directory others can write is refused now rather than
/// at SIGQUIT, when the old process would stop with no successor. `--upgrade` needs one.
fn upgrade_socket(configured: Option<&str>, upgrade: bool) -> Result<Option<String>, String> {
    use std::os::unix::fs::DirBuilderExt;
    let Some(path) = configured else {
        if upgrade {
            return Err(concat!(
                "--upgrade needs server.upgrade_sock: set it, or start aigw with $RUNTIME_DIRECTORY ",
                "(systemd's RuntimeDirectory=) or $XDG_RUNTIME_DIR set"
            )
            .to_owned());
        }
        tracing::info!(
            "no upgrade socket (server.upgrade_sock unset, and neither RUNTIME_DIRECTORY nor XDG_RUNTIME_DIR set): \
             SIGQUIT drains and stops as SIGTERM does"
        );
        return Ok(None);
    };
    let fail = |e: &dyn std::fmt::Display| format!("server.upgrade_sock {path}: {e}");
    if let Some(dir) = std::path::Path::new(path).parent() {
        match std::fs::DirBuilder::new().mode(0o700).create(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(fail(&format!("cannot create {}: {e}", dir.display())))
            }
            _ => {}
        }
    }
    pingora::server::private_socket_path(std::path::Path::new(path)).map_err(|e| fail(&e))?;
    tracing::info!(
        upgrade_sock = path,
        "listeners are handed over through this socket on SIGQUIT"
    );
    Ok(Some(path.to_owned()))
}

/// Before exiting: budget charges not yet written and limit capacity leased from Redis go
/// back to Redis (for at most 2 s), spans still queued go to the collector (for at most
/// 2 s), and the access log's last lines reach stdout.
fn before_exit(state: &AppState) {
    // Called from a plain thread: the Redis connections live on the server's runtimes,
    // which still run; this one only drives the calls.
    if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
        rt.block_on(async {
            let give_back = async {
                state.budgets.flush().await;
                state.limiter.close().await;
            };
            let _ = tokio::time::timeout(Duration::from_secs(2), give_back).await;
        });
    }
    if let Some(t) = &state.traces {
        t.flush(Duration::from_secs(2));
    }
    crate::telemetry::log::flush();
}

/// Re-resolves provider addresses, runs fleet health checks, keeps shared rate limit
/// leases alive, renews Vertex AI access tokens and JWT key sets, in the background.
struct Refresher {
    state: Arc<AppState>,
}

#[async_trait]
impl BackgroundService for Refresher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // Each upstream knows when its DNS refresh and health check are due.
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    // Its own task: a slow token endpoint must not hold up the rest.
                    tokio::spawn(crate::provider::vertex::refresh_due());
                    tokio::spawn(crate::auth::jwks::refresh_due(self.state.metrics.clone()));
                    self.state.upstreams.tick().await;
                    self.state.limiter.maintain().await;
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Keeps the served resources in step with the config store (etcd).
struct StoreFollower {
    state: Arc<AppState>,
    settings: EtcdSettings,
}

#[async_trait]
impl BackgroundService for StoreFollower {
    async fn start(&self, shutdown: ShutdownWatch) {
        crate::state::follow(self.state.clone(), self.settings.clone(), shutdown).await;
    }
}

struct Signals {
    state: Arc<AppState>,
    /// An upgrade socket is set: SIGQUIT hands the listeners over.
    can_hand_over: bool,
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let kinds = [
            SignalKind::hangup(),
            SignalKind::terminate(),
            SignalKind::interrupt(),
            SignalKind::quit(),
        ];
        let mut sigs = Vec::new();
        for k in kinds {
            match signal(k) {
                Ok(s) => sigs.push(s),
                Err(e) => {
                    tracing::error!(error = %e, "cannot install signal handlers; stopping needs SIGKILL");
                    std::future::pending::<()>().await;
                }
            }
        }
        let [hup, term, int, quit] = &mut sigs[..] else {
            unreachable!("four signals were installed")
        };
        loop {
            tokio::select! {
                _ = hup.recv() => self.reload().await,
                _ = term.recv() => break,
                _ = quit.recv() => {
                    if !self.can_hand_over {
                        tracing::error!("SIGQUIT: no upgrade socket to hand the listeners over through (server.upgrade_sock); draining as for SIGTERM");
                        break;
                    }
                    // A binary upgrade: Pingora hands the listening sockets to the new
                    // process (`aigw serve --upgrade`), keeps accepting for 5 s while it
                    // starts, then stops; the connections still open here are served to
                    // the end of the grace period, each closed after its current request.
                    // No early exit: a kept-alive connection's next request must not meet
                    // a closed socket.
                    tracing::info!(inflight = self.state.inflight(), "SIGQUIT: handing the listeners over");
                    self.state.handing_over.store(true, Ordering::Relaxed);
                    return ShutdownSignal::GracefulUpgrade;
                }
                _ = int.recv() => {
                    tracing::info!("SIGINT: stopping now");
                    return ShutdownSignal::FastShutdown;
                }
            }
        }
        self.start_drain();
        ShutdownSignal::GracefulTerminate
    }
}

impl Signals {
    async fn reload(&self) {
        match self.state.reload().await {
            Ok(()) => {
                tracing::info!(config = %self.state.config_path.display(), "config reloaded: {}", self.state.snapshot().summary())
            }
            Err(errors) => {
                let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
                tracing::error!(
                    config = %self.state.config_path.display(),
                    "config reload failed, still serving the last good config; {} error(s):\n  {}",
                    list.len(),
                    list.join("\n  ")
                );
            }
        }
    }

    /// Pingora stops accepting and waits the whole grace period; this watcher exits early
    /// once nothing is in flight any more.
    fn start_drain(&self) {
        self.state.draining.store(true, Ordering::Release);
        tracing::info!(inflight = self.state.inflight(), "SIGTERM: draining");
        let state = self.state.clone();
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(50));
            if state.inflight() == 0 {
                // Let a response that just finished reach its socket.
                std::thread::sleep(Duration::from_millis(100));
                if state.inflight() == 0 {
                    tracing::info!("drained; exiting");
                    before_exit(&state);
                    std::process::exit(0);
                }
            }
        });
    }
}
