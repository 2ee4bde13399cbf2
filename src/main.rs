//! The `aigw` command line. Parsing only; the work is in the library.

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc instead of the system allocator: a proxied request allocates a few dozen
/// small objects; see docs/benchmarks.md for what it saved. Built with
/// `no_thp`: mimalloc otherwise asks for transparent huge pages on its arenas, which on a
/// host with THP in `madvise` mode (Debian's default) backs them in 2 MiB pages and
/// nearly doubled the RSS (production profile: 84 -> 43 MiB, same throughput).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "aigw", version, about = "A self-hosted AI gateway on Pingora")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the config, then serve until SIGTERM (SIGHUP reloads the config).
    Serve {
        /// Config file [default: $AIGW_CONFIG, then conf/aigw.yaml]
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Take the listening sockets over from the running process (through
        /// `server.upgrade_sock`) once it gets SIGQUIT: a binary upgrade without a gap.
        #[arg(long)]
        upgrade: bool,
    },
    /// Check a config file: every error with its YAML path (exit 1), or a summary (exit 0).
    Validate {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Copy the config file's resources into its config store (etcd), replacing what is
    /// there, in one transaction.
    Import {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Print the config store's resources as a YAML config.
    Export {
        /// Names the config store [default: $AIGW_CONFIG, then conf/aigw.yaml]
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print provider keys as stored instead of redacted.
        #[arg(long)]
        include_secrets: bool,
    },
    /// Print the running gateway's status (`GET /admin/v1/status`) as tables.
    Status {
        /// Config file, to find the admin listener [default: $AIGW_CONFIG, then conf/aigw.yaml]
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The admin listener's URL [default: from the config's server.admin_listen]
        #[arg(long)]
        admin: Option<String>,
        /// An admin key (`server.admin_keys`)
        #[arg(long, env = "AIGW_ADMIN_KEY", hide_env_values = true)]
        admin_key: String,
    },
    /// Caller keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Print `blake3:<hex>` for a caller key, for `key_hash` in the config.
    HashKey {
        /// The key; read from standard input when absent (keeps it out of shell history).
        key: Option<String>,
    },
    /// Run the deterministic fake provider used by the quickstart, tests and load tests.
    MockUpstream {
        #[arg(long, default_value = "127.0.0.1:8000")]
        listen: SocketAddr,
        /// Require this provider key (as `Authorization: Bearer` or `api-key`).
        #[arg(long)]
        api_key: Option<String>,
        /// Keep the last requests for `GET /_mock/requests` (tests only).
        #[arg(long)]
        record: bool,
        /// Serve Vertex AI: a Google token endpoint at `/token` that verifies assertions
        /// with this RSA public key (PEM), and the Vertex AI paths behind its tokens.
        #[arg(long)]
        google_public_key: Option<PathBuf>,
        /// Serve an OpenID provider at `/idp/` (discovery and `/idp/jwks`) whose key set is
        /// this file, read on every fetch.
        #[arg(long)]
        jwks_file: Option<PathBuf>,
        /// Require `Authorization: Bearer <token>` on the fake guard webhook (`/guard/check`).
        #[arg(long, env = "MOCK_GUARD_TOKEN", hide_env_values = true)]
        guard_token: Option<String>,
        /// Worker threads [default: one per CPU]
        #[arg(long)]
        threads: Option<usize>,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Make a new caller key and print it once. Only its hash is kept: written to the
    /// config store through the admin API with --apply, else printed as an `api_keys`
    /// entry for the config file.
    Create {
        #[command(flatten)]
        key: aigw::ops::NewKey,
        /// Write it to the config store through the running gateway's admin API.
        #[arg(long)]
        apply: bool,
        /// Config file, to find the admin listener [default: $AIGW_CONFIG, then conf/aigw.yaml]
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The admin listener's URL [default: from the config's server.admin_listen]
        #[arg(long)]
        admin: Option<String>,
        /// An admin key, for --apply
        #[arg(long, env = "AIGW_ADMIN_KEY", hide_env_values = true)]
        admin_key: Option<String>,
    },
}

/// Runs an operator command's future to its end, on a small runtime of its own.
fn block_on<T>(f: impl std::future::Future<Output = Result<T, String>>) -> Result<T, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?
        .block_on(f)
}

fn config_path(arg: Option<PathBuf>) -> PathBuf {
    arg.or_else(|| std::env::var_os("AIGW_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("conf/aigw.yaml"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config, upgrade } => {
            aigw::telemetry::log::init();
            match aigw::server::serve(config_path(config), upgrade) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("aigw: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Validate { config } => {
            let path = config_path(config);
            let upstreams = aigw::upstream::UpstreamRegistry::default();
            let env = |n: &str| std::env::var(n).ok();
            let ctx = aigw::config::CompileCtx {
                env: &env,
                upstreams: &upstreams,
                limits: &Default::default(),
                metrics: None,
            };
            match aigw::config::load_file(&path, &ctx) {
                Ok(snap) => {
                    println!("{}: OK: {}", path.display(), snap.summary());
                    ExitCode::SUCCESS
                }
                Err(errors) => {
                    eprintln!("{}: {} error(s):", path.display(), errors.len());
                    for e in errors {
                        eprintln!("  {e}");
                    }
                    ExitCode::FAILURE
                }
            }
        }
        Command::Status {
            config,
            admin,
            admin_key,
        } => {
            let admin = admin.unwrap_or_else(|| aigw::ops::admin_url(&config_path(config)));
            match block_on(aigw::ops::status(&admin, &admin_key)) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("aigw status: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Keys {
            command:
                KeysCommand::Create {
                    key: spec,
                    apply,
                    config,
                    admin,
                    admin_key,
                },
        } => {
            let key = match aigw::ops::generate_key() {
                Ok(k) => k,
                Err(e) => {
                    eprintln!("aigw keys create: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let entry = aigw::ops::entry(&key, &spec);
            if apply {
                let Some(admin_key) = admin_key else {
                    eprintln!("aigw keys create: --apply needs an admin key (--admin-key or AIGW_ADMIN_KEY)");
                    return ExitCode::FAILURE;
                };
                let admin = admin.unwrap_or_else(|| aigw::ops::admin_url(&config_path(config)));
                if let Err(e) = block_on(aigw::ops::store_entry(&admin, &admin_key, &entry)) {
                    eprintln!("aigw keys create: {e}");
                    return ExitCode::FAILURE;
                }
                eprintln!(
                    "stored api_keys/{} (its hash only)",
                    entry["name"].as_str().unwrap_or("")
                );
            } else {
                eprint!("{}", aigw::ops::yaml_snippet(&entry));
            }
            eprintln!("the new key, shown this once:");
            println!("{key}");
            ExitCode::SUCCESS
        }
        Command::Import { config } => report(aigw::store::import(&config_path(config))),
        Command::Export {
            config,
            include_secrets,
        } => report(aigw::store::export(&config_path(config), include_secrets)),
        Command::HashKey { key } => {
            let key = match key {
                Some(k) => k,
                None => {
                    let mut s = String::new();
                    if let Err(e) = std::io::stdin().read_to_string(&mut s) {
                        eprintln!("aigw: cannot read the key from stdin: {e}");
                        return ExitCode::FAILURE;
                    }
                    s.trim_end_matches(['\r', '\n']).to_owned()
                }
            };
            if key.is_empty() {
                eprintln!("aigw: the key is empty");
                return ExitCode::FAILURE;
            }
            println!("{}", aigw::auth::hash_key(&key));
            ExitCode::SUCCESS
        }
        Command::MockUpstream {
            listen,
            api_key,
            record,
            google_public_key,
            jwks_file,
            guard_token,
            threads,
        } => {
            let google = match google_public_key.map(std::fs::read).transpose() {
                Ok(pem) => pem,
                Err(e) => {
                    eprintln!("aigw mock-upstream: --google-public-key: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let mut rt = tokio::runtime::Builder::new_multi_thread();
            if let Some(n) = threads {
                rt.worker_threads(n.max(1));
            }
            let rt = match rt.enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("aigw: cannot start a runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(aigw::mock::run(listen, api_key, record, google, jwks_file, guard_token)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("aigw mock-upstream: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Prints what a command produced, or its errors (exit 1).
fn report(result: Result<String, Vec<aigw::config::ConfigError>>) -> ExitCode {
    match result {
        Ok(out) => {
            println!("{}", out.trim_end());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("aigw: {} error(s):", errors.len());
            for e in errors {
                eprintln!("  {e}");
            }
            ExitCode::FAILURE
        }
    }
}
