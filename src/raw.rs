//! Serde types that mirror the YAML file one to one (SPEC §2). Unknown fields are errors.
//! Nothing here is validated beyond its type: each section is compiled by the module that
//! owns it, and `config::compile` assembles the snapshot. Imports nothing of the crate.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer};

fn default_listen() -> Vec<String> {
    vec!["127.0.0.1:8080".into()]
}
fn default_admin_listen() -> Option<String> {
    Some("127.0.0.1:9090".into())
}
fn default_grace() -> u64 {
    10
}
fn default_max_body() -> u64 {
    10 * 1024 * 1024
}

fn default_keepalive_timeout() -> u64 {
    60
}

fn default_keepalive_requests() -> u32 {
    1000
}

fn default_read_buffer() -> usize {
    16 * 1024
}

fn default_client_body_timeout() -> u64 {
    60_000
}
fn default_true() -> bool {
    true
}
fn default_one() -> u32 {
    1
}

/// A string that may have been written (or interpolated) as a bare number, e.g. a
/// numeric secret: `api_key: ${KEY}` with `KEY=12345`.
pub(crate) fn de_text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Text {
        S(String),
        I(i64),
        U(u64),
        F(f64),
        B(bool),
    }
    Ok(match Text::deserialize(d)? {
        Text::S(s) => s,
        Text::I(v) => v.to_string(),
        Text::U(v) => v.to_string(),
        Text::F(v) => v.to_string(),
        Text::B(v) => v.to_string(),
    })
}

pub(crate) fn de_opt_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    de_text(d).map(Some)
}

fn de_text_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    #[derive(Deserialize)]
    struct T(#[serde(deserialize_with = "de_text")] String);
    let m = BTreeMap::<String, T>::deserialize(d)?;
    Ok(m.into_iter().map(|(k, T(v))| (k, v)).collect())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    #[serde(default = "default_listen")]
    pub listen: Vec<String>,
    #[serde(default)]
    pub tls: Vec<TlsListener>,
    #[serde(default = "default_admin_listen")]
    pub admin_listen: Option<String>,
    #[serde(default)]
    pub threads: usize,
    /// Tokio work stealing between the worker threads (Pingora's `work_stealing`).
    #[serde(default = "default_true")]
    pub work_stealing: bool,
    #[serde(default = "default_grace")]
    pub grace_period_s: u64,
    /// The Unix socket a new process (`aigw serve --upgrade`) takes the listening sockets
    /// over from. Unset: a default in the runtime directory, or none (`compile`).
    #[serde(default)]
    pub upgrade_sock: Option<String>,
    #[serde(default = "default_max_body")]
    pub max_request_body_bytes: u64,
    /// Longest wait for the next piece of a request body (nginx's client_body_timeout).
    #[serde(default = "default_client_body_timeout")]
    pub client_body_timeout_ms: u64,
    /// How long an idle HTTP/1.1 connection waits for the next request (nginx's
    /// keepalive_timeout); also the longest wait for each read of a request head.
    #[serde(default = "default_keepalive_timeout")]
    pub keepalive_timeout_s: u64,
    /// Requests served on one HTTP/1.1 connection before it is closed (nginx's
    /// keepalive_requests).
    #[serde(default = "default_keepalive_requests")]
    pub keepalive_requests: u32,
    /// Each caller connection's read buffer (Pingora's is 64 KiB): most of what an idle
    /// kept-alive connection costs.
    #[serde(default = "default_read_buffer")]
    pub read_buffer_bytes: usize,
    /// Bounds of a realtime WebSocket session (`GET /v1/realtime`).
    #[serde(default)]
    pub realtime: Realtime,
    /// How long and how many file and batch ids are kept (`/v1/files`, `/v1/batches`).
    #[serde(default)]
    pub files: FileIds,
    pub redis: Option<Redis>,
    pub config_store: Option<ConfigStore>,
    #[serde(default)]
    pub admin_keys: Vec<KeySource>,
}

/// `server.realtime`: what one realtime session may hold. A session holds a caller's
/// concurrency slot, an upstream socket and a task, so none may last or grow unbounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Realtime {
    /// A session with no message either way for this long is closed.
    pub idle_timeout_s: u64,
    /// A session is closed this long after it opened, however busy.
    pub max_session_s: u64,
    /// The largest WebSocket message (and frame) either side may send.
    pub max_message_bytes: usize,
}

/// `server.files`: how long and how many file and batch ids aigw keeps. Every id is a
/// record (in memory, or in Redis), and a list reads an owner's, so neither may grow
/// without bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileIds {
    /// An id is forgotten this long after it was handed out (the provider's file or batch
    /// is not touched).
    pub retention_hours: u64,
    /// The most ids of each kind (files, batches) one owner may hold; past it an upload or
    /// a new batch is refused until an id is deleted or expires.
    pub max_ids_per_owner: usize,
    /// The most ids this process keeps in memory, all owners together (without Redis).
    pub max_ids: usize,
}

impl FileIds {
    /// The largest `max_ids_per_owner`: what one list reads at most, so a list sees all.
    pub const MAX_PER_OWNER: usize = 10_000;
}

impl Default for FileIds {
    fn default() -> Self {
        Self {
            retention_hours: 720,
            max_ids_per_owner: 10_000,
            max_ids: 100_000,
        }
    }
}

impl Default for Realtime {
    fn default() -> Self {
        Self {
            idle_timeout_s: 300,
            max_session_s: 3600,
            max_message_bytes: 4 << 20,
        }
    }
}

impl Default for Server {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            tls: Vec::new(),
            admin_listen: default_admin_listen(),
            threads: 0,
            work_stealing: true,
            grace_period_s: default_grace(),
            upgrade_sock: None,
            max_request_body_bytes: default_max_body(),
            client_body_timeout_ms: default_client_body_timeout(),
            keepalive_timeout_s: default_keepalive_timeout(),
            keepalive_requests: default_keepalive_requests(),
            read_buffer_bytes: default_read_buffer(),
            realtime: Realtime::default(),
            files: FileIds::default(),
            redis: None,
            config_store: None,
            admin_keys: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsListener {
    pub listen: String,
    /// One certificate: `cert_file` and `key_file`; several: `certificates`.
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    #[serde(default)]
    pub certificates: Vec<CertificateFiles>,
    /// `"1.2"` (the default) or `"1.3"`.
    pub min_version: Option<String>,
    /// PEM CA certificates: clients may present a certificate signed by one of them
    /// (optional; a presented certificate that does not verify fails the handshake).
    pub client_ca_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateFiles {
    pub cert_file: String,
    pub key_file: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Redis {
    pub url: String,
    /// Multiplexed connections kept open to Redis.
    #[serde(default = "default_redis_pool")]
    pub pool_size: usize,
    /// Deadline of one Redis call; past it the request is admitted unchecked.
    #[serde(default = "default_redis_timeout")]
    pub timeout_ms: u64,
}

fn default_redis_pool() -> usize {
    4
}
fn default_redis_timeout() -> u64 {
    100
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigStore {
    pub etcd: Etcd,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Etcd {
    pub endpoints: Vec<String>,
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Written after each good load; served from when etcd is unreachable at start.
    pub cache_file: Option<String>,
    pub tls: Option<EtcdTls>,
    /// etcd's own authentication, when enabled there.
    pub user: Option<String>,
    #[serde(default, deserialize_with = "de_opt_text")]
    pub password: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdTls {
    /// PEM CA bundle that signed etcd's certificate.
    pub ca_file: String,
    /// Client certificate and key, when etcd requires them (`--client-cert-auth`).
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
}
fn default_prefix() -> String {
    "/aigw".into()
}

/// Where a secret comes from: exactly one of the three (checked in compile.rs).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySource {
    #[serde(default, deserialize_with = "de_opt_text")]
    pub key: Option<String>,
    pub key_env: Option<String>,
    pub key_hash: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    Openai,
    OpenaiCompatible,
    Azure,
    Anthropic,
    Gemini,
    Vertex,
    Bedrock,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderKey {
    pub name: String,
    pub provider: ProviderKind,
    #[serde(default, deserialize_with = "de_opt_text")]
    pub api_key: Option<String>,
    pub base_url: Option<String>,
    #[serde(default, deserialize_with = "de_text_map")]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub timeouts: Timeouts,
    pub fleet: Option<Fleet>,
    pub api_version: Option<String>,
    pub anthropic_version: Option<String>,
    #[serde(default)]
    pub http2: Http2,
    /// Google Vertex AI's project, location and service account (`provider: vertex`).
    pub vertex: Option<VertexSettings>,
    /// AWS Bedrock's region and credentials (`provider: bedrock`); each from the standard
    /// `AWS_*` variables when left out.
    pub aws: Option<AwsSettings>,
}

/// HTTP/2 to the provider.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Http2 {
    /// Negotiated by ALPN over TLS (falls back to HTTP/1.1); HTTP/1.1 over plaintext.
    #[default]
    Auto,
    /// HTTP/2 only: ALPN h2 over TLS, prior-knowledge h2c over plaintext.
    Always,
    /// HTTP/1.1 only.
    Never,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    #[serde(default = "d_connect")]
    pub connect_ms: u64,
    #[serde(default = "d_first_byte")]
    pub first_byte_ms: u64,
    #[serde(default = "d_idle")]
    pub idle_ms: u64,
}
fn d_connect() -> u64 {
    3000
}
fn d_first_byte() -> u64 {
    60_000
}
fn d_idle() -> u64 {
    60_000
}
impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect_ms: d_connect(),
            first_byte_ms: d_first_byte(),
            idle_ms: d_idle(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fleet {
    #[serde(default)]
    pub endpoints: Vec<String>,
    #[serde(default)]
    pub balance: Balance,
    #[serde(default)]
    pub hash_on: HashOn,
    pub health_check: Option<HealthCheck>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    #[default]
    RoundRobin,
    Random,
    LeastBusy,
    ConsistentHash,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HashOn {
    #[default]
    Prefix,
    Caller,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    #[serde(default = "d_health_path")]
    pub path: String,
    #[serde(default = "d_interval")]
    pub interval_s: u64,
    #[serde(default = "d_two")]
    pub unhealthy_after: u32,
    #[serde(default = "d_two")]
    pub healthy_after: u32,
}
fn d_health_path() -> String {
    "/health".into()
}
fn d_interval() -> u64 {
    5
}
fn d_two() -> u32 {
    2
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Model {
    pub name: String,
    pub provider_key: Option<String>,
    pub model: Option<String>,
    pub routing: Option<Routing>,
    pub rate_limit: Option<String>,
    #[serde(default)]
    pub guardrails: Vec<String>,
    pub cache: Option<String>,
    pub pricing: Option<Pricing>,
    /// What the provider grants this concrete model (a deployment's requests and tokens
    /// per minute): routing keeps it under them.
    pub quota: Option<Quota>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pricing {
    #[serde(default)]
    pub input_per_mtok: f64,
    #[serde(default)]
    pub output_per_mtok: f64,
    /// Input read from the provider's prompt cache; the input price when left out.
    pub cached_input_per_mtok: Option<f64>,
    /// Input written to the provider's prompt cache (Anthropic, Bedrock); the input price
    /// when left out.
    pub cache_write_per_mtok: Option<f64>,
    /// USD per image an image endpoint answered with (`/v1/images/...`).
    #[serde(default)]
    pub per_image: f64,
    /// USD per minute of audio a transcription or translation read, as the provider
    /// reported it (`usage.seconds`).
    #[serde(default)]
    pub per_audio_minute: f64,
    /// The share of the normal price a batch's tokens are charged at
    /// ([`DEFAULT_BATCH_DISCOUNT`] when left out).
    pub batch_discount: Option<f64>,
    /// Audio input tokens (the Realtime API's and audio chat models'
    /// `input_token_details.audio_tokens`); the input price when left out.
    pub audio_input_per_mtok: Option<f64>,
    /// Audio output tokens (`output_token_details.audio_tokens`); the output price when
    /// left out.
    pub audio_output_per_mtok: Option<f64>,
}

/// `pricing.batch_discount` when left out: OpenAI's batch price is half the normal one.
pub const DEFAULT_BATCH_DISCOUNT: f64 = 0.5;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    #[default]
    Failover,
    Weighted,
    RoundRobin,
    /// The lowest recent time to first byte.
    LeastLatency,
    /// The fewest requests in flight on this instance.
    LeastBusy,
    /// The cheapest by `pricing`.
    Cost,
    /// The most quota headroom.
    Usage,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Routing {
    #[serde(default)]
    pub strategy: Strategy,
    pub targets: Vec<Target>,
    pub retry_on: Option<Vec<RetryOn>>,
    pub max_attempts: Option<u32>,
    #[serde(default = "d_cooldown")]
    pub cooldown_s: u64,
    /// Failures of a target in a row before it cools down; a 429 or a `Retry-After`
    /// from the provider cools it at once.
    #[serde(default = "d_failures_before_cooldown")]
    pub failures_before_cooldown: u32,
    /// `cost`: input tokens per output token in the traffic priced (a target's price is
    /// `input_per_mtok * input_per_output + output_per_mtok`).
    #[serde(default = "d_input_per_output")]
    pub input_per_output: f64,
    /// `sticky: owner`: a `percent` target's share is drawn per owner, not per request.
    pub sticky: Option<Sticky>,
}

fn d_input_per_output() -> f64 {
    3.0
}
/// A `retry_on` entry: an HTTP status, or an error class (`context_length_exceeded`,
/// `content_filter`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RetryOn {
    Status(u16),
    Class(String),
}

fn d_cooldown() -> u64 {
    30
}
fn d_failures_before_cooldown() -> u32 {
    5
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub model: String,
    #[serde(default)]
    pub priority: u32,
    #[serde(default = "default_one")]
    pub weight: u32,
    /// Only these owners' requests may use this target (a canary for some teams).
    pub owners: Option<Vec<String>>,
    /// Only this share of requests (0-100) may use this target (a canary).
    pub percent: Option<f64>,
}

/// What keeps a `percent` target's share stable per caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sticky {
    /// An owner is in a canary's share or not, request after request.
    Owner,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    pub name: String,
    #[serde(default, deserialize_with = "de_opt_text")]
    pub key: Option<String>,
    pub key_env: Option<String>,
    pub key_hash: Option<String>,
    /// Instead of a key: the identity of a verified client certificate, typed
    /// (`DNS:<name>`, `URI:<uri>` or `CN=<common name>`).
    pub client_cert: Option<String>,
    /// The CA bundle that must have verified that certificate: a listener's
    /// `client_ca_file` (the same CAs). Required once listeners trust different CAs.
    pub client_ca_file: Option<String>,
    pub owner: Option<String>,
    pub models: Option<Vec<String>>,
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub disabled: bool,
    pub rate_limit: Option<String>,
    #[serde(default)]
    pub guardrails: Vec<String>,
    pub budget: Option<String>,
    /// `false`: this key's requests never read or fill a response cache.
    #[serde(default = "default_true")]
    pub cache: bool,
    /// The MCP servers and tools this key may use; absent: none.
    pub mcp: Option<McpAccess>,
}

fn default_mcp_timeout() -> u64 {
    30_000
}

/// An upstream MCP server (Streamable HTTP transport), `mcp_servers` section.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpServer {
    pub name: String,
    /// The server's MCP endpoint, e.g. `https://tools.internal/mcp`.
    pub url: String,
    /// Sent on every call: the server's credential stays here, never the caller's.
    #[serde(default, deserialize_with = "de_text_map")]
    pub headers: BTreeMap<String, String>,
    /// The longest a call to this server may take, in milliseconds.
    #[serde(default = "default_mcp_timeout")]
    pub timeout_ms: u64,
    /// The server's tools callers may see at most; `None`: all of them.
    pub tools: Option<Vec<String>>,
    /// The most bytes of one answer, and of all pages of one list together.
    #[serde(default = "default_mcp_answer_bytes")]
    pub max_answer_bytes: u64,
    /// The most items (tools, prompts, resources) of one list, over all its pages.
    #[serde(default = "default_mcp_list_items")]
    pub max_list_items: u64,
}

fn default_mcp_answer_bytes() -> u64 {
    4 << 20
}

fn default_mcp_list_items() -> u64 {
    1000
}

/// What MCP a caller may reach (`api_keys[].mcp`, `jwt[].mcp`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpAccess {
    /// Server names; `"*"`: every server.
    #[serde(default)]
    pub servers: Vec<String>,
    /// Tools as callers see them (`{server}__{tool}`), `*` matching any run of characters;
    /// empty: every tool of the allowed servers.
    #[serde(default)]
    pub tools: Vec<String>,
}

/// One string or a list of them (`audience: aigw` or `audience: [aigw, aigw-batch]`).
fn de_one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

fn default_owner_claim() -> String {
    "sub".to_owned()
}
fn default_jwt_leeway() -> u64 {
    30
}
fn default_jwks_refresh() -> u64 {
    300
}

/// A JWT issuer whose tokens authenticate callers (`jwt` section).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtIssuer {
    pub name: String,
    /// The `iss` every token must carry; with neither `jwks_file` nor `jwks_url`, also
    /// where OIDC discovery starts (`{issuer}/.well-known/openid-configuration`).
    pub issuer: String,
    /// Accepted `aud` values; a token must name one of them.
    #[serde(default, deserialize_with = "de_one_or_many")]
    pub audience: Vec<String>,
    pub jwks_file: Option<String>,
    pub jwks_url: Option<String>,
    /// The claim naming the caller's owner (limits, budgets, metrics, the access log).
    #[serde(default = "default_owner_claim")]
    pub owner_claim: String,
    /// Where this issuer's owners live: `jwt:<name>` (the default, its own), `keys` (the
    /// owners of `api_keys`), or `jwt:<another issuer's name>`. Owners of one namespace
    /// share limits, budgets, caches and metrics; of two, never.
    pub owner_namespace: Option<String>,
    /// The claim listing the model aliases the caller may use (a list, or one string of
    /// space-separated aliases). Without it, `models` alone decides.
    pub models_claim: Option<String>,
    /// The aliases any token of this issuer may reach at most; `None`: every model.
    pub models: Option<Vec<String>>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    #[serde(default = "default_jwt_leeway")]
    pub leeway_s: u64,
    /// How often a remote key set is fetched again, in seconds.
    #[serde(default = "default_jwks_refresh")]
    pub refresh_s: u64,
    pub rate_limit: Option<String>,
    #[serde(default)]
    pub guardrails: Vec<String>,
    pub budget: Option<String>,
    #[serde(default = "default_true")]
    pub cache: bool,
    /// The MCP servers and tools this issuer's callers may use; absent: none.
    pub mcp: Option<McpAccess>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    Day,
    Week,
    Month,
    Total,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    pub name: String,
    pub usd: f64,
    pub period: Period,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub name: String,
    pub requests_per_second: Option<u64>,
    pub requests_per_minute: Option<u64>,
    pub requests_per_hour: Option<u64>,
    pub requests_per_day: Option<u64>,
    pub tokens_per_minute: Option<u64>,
    pub tokens_per_day: Option<u64>,
    pub concurrency: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Request,
    Response,
    #[default]
    Both,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    #[default]
    Block,
    Mask,
    Monitor,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PiiType {
    Email,
    CreditCard,
    UsSsn,
    Phone,
    Ipv4,
    Ipv6,
    Iban,
    ApiKey,
    Jwt,
    PrivateKey,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Rule {
    Keyword {
        words: Vec<String>,
        #[serde(default)]
        case_sensitive: bool,
        #[serde(default)]
        whole_word: bool,
        /// What masking writes: `[REDACTED:<label>]`; default `keyword`.
        label: Option<String>,
    },
    Regex {
        pattern: String,
        /// What masking writes: `[REDACTED:<label>]`; default `regex`.
        label: Option<String>,
    },
    Pii {
        types: Vec<PiiType>,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Guardrail {
    pub name: String,
    pub pack: Option<String>,
    #[serde(default)]
    pub rules: Vec<Rule>,
    #[serde(default)]
    pub stage: Stage,
    #[serde(default)]
    pub action: Action,
    /// A classifier called over HTTP instead of rules (`pack`/`rules`).
    pub service: Option<GuardService>,
}

/// The kinds of guardrail service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceKind {
    /// OpenAI's `/v1/moderations`, through one of the config's provider keys.
    OpenaiModeration,
    /// Microsoft Presidio's analyzer (and anonymizer, to mask).
    Presidio,
    /// A judge: an alias of this gateway, asked whether the texts are safe.
    Llm,
    /// Any HTTP service speaking aigw's webhook contract.
    Webhook,
    /// AWS Bedrock Guardrails' `ApplyGuardrail`.
    Bedrock,
}

/// What a guardrail service does when it cannot answer (timeout, error, malformed answer).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Fail closed: the request gets `guardrail_unavailable` (503).
    #[default]
    Block,
    /// Fail open: the text passes (the error is counted and logged).
    Allow,
}

/// A guardrail's `service:` section. Which fields apply depends on `kind`; the compiler
/// says which are missing or out of place.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardService {
    pub kind: Option<ServiceKind>,
    /// Per call; default 1000.
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub on_error: OnError,
    /// Streams: new text judged at a time; default 1000.
    pub window_chars: Option<usize>,
    /// openai_moderation: the provider key whose base URL and credential to use.
    pub provider_key: Option<String>,
    /// openai_moderation: the moderation model; llm: the judge's alias.
    pub model: Option<String>,
    /// openai_moderation: the categories that count (default: `flagged`).
    #[serde(default)]
    pub categories: Vec<String>,
    /// openai_moderation: a listed category's score at or above this is a hit.
    pub threshold: Option<f64>,
    /// presidio
    #[serde(default, deserialize_with = "de_opt_text")]
    pub analyzer_url: Option<String>,
    #[serde(default, deserialize_with = "de_opt_text")]
    pub anonymizer_url: Option<String>,
    #[serde(default)]
    pub entities: Vec<String>,
    pub score_threshold: Option<f64>,
    #[serde(default, deserialize_with = "de_opt_text")]
    pub language: Option<String>,
    /// llm: the judge's answer that means a hit (a regex); default `^\s*unsafe`.
    pub unsafe_pattern: Option<String>,
    /// llm: the judge's answer that means no hit; anything matching neither is no
    /// verdict (`on_error`). Default `(?i)^\s*safe\b`.
    pub safe_pattern: Option<String>,
    /// llm: the judge's prompt; `{texts}` is replaced by the texts.
    pub prompt: Option<String>,
    /// webhook
    #[serde(default, deserialize_with = "de_opt_text")]
    pub url: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// bedrock
    #[serde(default, deserialize_with = "de_opt_text")]
    pub guardrail_id: Option<String>,
    #[serde(default, deserialize_with = "de_opt_text")]
    pub guardrail_version: Option<String>,
    pub aws: Option<AwsSettings>,
    /// bedrock: the endpoint (default: the region's bedrock-runtime).
    #[serde(default, deserialize_with = "de_opt_text")]
    pub base_url: Option<String>,
}

/// A rule pack file in `filters/`: rules, and samples its tests check them against.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pack {
    #[serde(default)]
    pub description: String,
    pub rules: Vec<Rule>,
    #[serde(default)]
    pub samples: PackSamples,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackSamples {
    /// Texts every one of which the pack must catch.
    #[serde(default, rename = "match")]
    pub matching: Vec<String>,
    /// Texts the pack must let through.
    #[serde(default)]
    pub clean: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheBackend {
    #[default]
    Memory,
    Redis,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheScope {
    #[default]
    Owner,
    Global,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cache {
    pub name: String,
    #[serde(default = "d_ttl")]
    pub ttl_s: u64,
    #[serde(default = "d_entries")]
    pub max_entries: u64,
    /// Memory backend: the bytes all entries may hold together.
    #[serde(default = "d_cache_bytes")]
    pub max_bytes: u64,
    /// An answer larger than this is not stored (either backend).
    #[serde(default = "d_entry_bytes")]
    pub max_entry_bytes: u64,
    #[serde(default)]
    pub backend: CacheBackend,
    #[serde(default)]
    pub scope: CacheScope,
}
fn d_ttl() -> u64 {
    300
}
fn d_entries() -> u64 {
    10_000
}
fn d_cache_bytes() -> u64 {
    64 << 20
}
fn d_entry_bytes() -> u64 {
    1 << 20
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Observability {
    #[serde(default = "default_true")]
    pub prometheus: bool,
    pub access_log: Option<AccessLog>,
    pub otlp: Option<Otlp>,
}

impl Default for Observability {
    fn default() -> Self {
        Self {
            prometheus: true,
            access_log: None,
            otlp: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Json,
    Text,
    /// No access log.
    Off,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLog {
    #[serde(default)]
    pub format: LogFormat,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Otlp {
    pub endpoint: String,
    #[serde(default = "d_ratio")]
    pub sample_ratio: f64,
    #[serde(default)]
    pub capture_content: bool,
}
fn d_ratio() -> f64 {
    1.0
}

/// The `vertex` section of a `vertex` provider, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VertexSettings {
    #[serde(deserialize_with = "de_text")]
    pub project: String,
    #[serde(deserialize_with = "de_text")]
    pub location: String,
    /// A service account key file (JSON), as `gcloud iam service-accounts keys create` writes.
    #[serde(deserialize_with = "de_text")]
    pub credentials_file: String,
}

/// The `aws` section of a `bedrock` provider, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsSettings {
    #[serde(default, deserialize_with = "de_opt_text")]
    pub region: Option<String>,
    #[serde(default, deserialize_with = "de_opt_text")]
    pub access_key_id: Option<String>,
    #[serde(default, deserialize_with = "de_opt_text")]
    pub secret_access_key: Option<String>,
    #[serde(default, deserialize_with = "de_opt_text")]
    pub session_token: Option<String>,
}
