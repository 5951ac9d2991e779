//! corelb's configuration: `config.toml` is read into a typed [`Config`] in one pass that reports every problem at
//! once with its key path. Nothing here touches the network; backend host names are resolved by the control thread.

mod build;
pub mod duration;
mod error;
pub mod names;
mod network;
mod reader;
mod render;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use build::parse_config;
pub use error::{ConfigError, ConfigErrors};
pub use network::Network;
pub use render::{diff, to_toml, to_toml_redacted};

/// `control.socket` when the config does not name one, relative to the config file's folder.
pub const DEFAULT_CONTROL_SOCKET: &str = "corelb.sock";

/// The whole, validated configuration. Immutable once built: a change is a new `Config`.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub server: ServerConfig,
    pub frontends: Vec<FrontendConfig>,
    pub backends: Vec<BackendConfig>,
    pub balancer: BalancerConfig,
    pub timeouts: Timeouts,
    pub upstream: UpstreamConfig,
    pub retries: RetriesConfig,
    pub limits: Limits,
    pub healthcheck: HealthCheckConfig,
    pub tls: TlsConfig,
    pub ratelimit: RateLimitConfig,
    pub circuitbreaker: CircuitBreakerConfig,
    pub outlier_detection: OutlierConfig,
    pub logging: LoggingConfig,
    pub metrics: MetricsConfig,
    pub control: ControlConfig,
    pub admin: AdminConfig,
    pub access_log: AccessLogConfig,
    pub health_endpoint: HealthEndpointConfig,
}

impl Config {
    /// Some frontend terminates TLS.
    pub fn terminates_tls(&self) -> bool {
        self.frontends.iter().any(|frontend| frontend.tls.is_some())
    }

    /// Some backend is `https://`, so `[upstream.tls]` is read.
    pub fn has_https_backends(&self) -> bool {
        self.backends.iter().any(|backend| backend.tls)
    }
}

/// How many worker threads run, on which I/O driver, and how they stop.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub workers: Workers,
    pub io_driver: IoDriverChoice,
    /// Pin worker `i` to core `i mod cores`; off when sharing a machine with other pinned work.
    pub pin_workers: bool,
    /// How long in-flight requests may run after a shutdown signal before connections are cut.
    pub shutdown_grace: Duration,
    /// Add `X-Corelb-Worker: <n>` to responses, to see how SO_REUSEPORT spreads connections.
    pub expose_worker_header: bool,
    /// Move large bodies with splice(2) instead of copying them through user memory (less proxy CPU per byte).
    pub splice_bodies: bool,
    /// Client connections the whole process holds at most; past it, workers stop accepting until one closes.
    /// `None` ("auto") derives it from the descriptor limit (see `net::descriptors`).
    pub max_connections: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workers {
    /// One per available core.
    Auto,
    Count(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoDriverChoice {
    /// io_uring when the kernel allows it, epoll otherwise.
    Auto,
    IoUring,
    Epoll,
}

/// One listening address. Every worker binds its own SO_REUSEPORT socket on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontendConfig {
    pub name: String,
    pub listen: SocketAddr,
    /// This frontend's own `timeouts.request`.
    pub request_timeout: Option<Duration>,
    /// This frontend's own `timeouts.per_try`.
    pub per_try_timeout: Option<Duration>,
    /// TLS termination: clients speak TLS to this frontend. `None`: plain HTTP.
    pub tls: Option<FrontendTls>,
}

impl FrontendConfig {
    /// The scheme clients use to reach this frontend, as `X-Forwarded-Proto` tells backends: decided by the
    /// frontend, so the request path needs to know nothing about TLS.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }
}

/// A frontend's TLS (`[[frontends]] tls = { ... }`), with `[tls]`'s defaults already filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontendTls {
    /// Certificate chains and their keys. The first is the default for a client whose name matches none
    /// (unless `strict_sni`).
    pub certificates: Vec<CertificateFiles>,
    /// Refuse, at the handshake, a client that names no host or a host no certificate is valid for.
    pub strict_sni: bool,
    /// How long a client has to complete the handshake, from the moment its connection is accepted.
    pub handshake_timeout: Duration,
    /// The oldest TLS version accepted; 1.0 and 1.1 never are.
    pub min_version: TlsVersion,
    pub client_auth: ClientAuth,
    /// The CA bundle client certificates are verified against (needed unless `client_auth` is `none`).
    pub client_ca: Option<PathBuf>,
    /// The request header that carries the verified client certificate's subject to the backend. Always removed
    /// from what the client sent, so a client cannot claim an identity.
    pub client_identity_header: Option<String>,
}

/// One certificate chain (leaf first) and its private key, both PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A TLS protocol version corelb speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

/// One origin server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    /// Stable name used by logs and the control plane; defaults to `host:port`.
    pub id: String,
    /// The URL as written, for display.
    pub url: String,
    pub host: String,
    pub port: u16,
    /// Relative share for weighted algorithms, 1..=1000.
    pub weight: u32,
    /// Draining: no new requests are sent to it; requests in flight finish.
    pub drain: bool,
    /// This backend's own active health check settings, over `[healthcheck]`.
    pub healthcheck: BackendHealthCheck,
    /// Free-form metadata (`tags = { zone = "eu-1" }`), shown by `ctl backends`, the admin API and `/health`.
    pub tags: std::collections::BTreeMap<String, String>,
    /// Most connections corelb opens to it at once, across every worker (the specification's capacity); each
    /// worker enforces its part ([`capacity_share`]). `None`: no limit of its own.
    pub max_connections: Option<u32>,
    /// `https://`: connections to it are TLS, verified as `[upstream.tls]` says.
    pub tls: bool,
    /// The name its certificate is verified for and sent as SNI (default: the URL's host).
    pub server_name: Option<String>,
}

/// The first backend whose `max_connections` is smaller than `workers`, as (key path, reason): split evenly, some
/// worker would get no connection to it at all and refuse every request it could have served.
pub fn capacity_below_workers(config: &Config, workers: usize) -> Option<(String, String)> {
    config.backends.iter().enumerate().find_map(|(index, backend)| {
        let limit = backend.max_connections?;
        ((limit as usize) < workers).then(|| {
            (
                format!("backends[{index}].max_connections"),
                format!(
                    "{limit} is fewer than the {workers} workers it is split over (each needs at least one \
                     connection); raise it or lower server.workers"
                ),
            )
        })
    })
}

/// Worker `worker`'s part of a process-wide connection limit `total` split over `workers`: the split is even and
/// the parts add up to `total` exactly, so no worker needs to ask another before it connects.
pub fn capacity_share(total: u32, worker: usize, workers: usize) -> u32 {
    let workers = workers.max(1) as u32;
    let worker = worker as u32 % workers;
    total / workers + u32::from(worker < total % workers)
}

/// Most tags one backend may carry, and the longest name and value.
pub const MAX_TAGS: usize = 32;
pub const MAX_TAG_NAME: usize = 64;
pub const MAX_TAG_VALUE: usize = 256;

/// A backend's overrides of `[healthcheck]` (`[[backends]] healthcheck = { ... }`); unset keys take the section's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackendHealthCheck {
    pub enabled: Option<bool>,
    pub path: Option<String>,
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
    pub host: Option<String>,
}

impl BackendHealthCheck {
    pub fn is_empty(&self) -> bool {
        *self == BackendHealthCheck::default()
    }
}

impl BackendConfig {
    /// The name the backend's certificate must be valid for.
    pub fn tls_name(&self) -> &str {
        self.server_name.as_deref().unwrap_or(&self.host)
    }

    /// `host:port`, as sent in `Host` when a client did not send one.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct BalancerConfig {
    pub algorithm: Algorithm,
    /// What `consistent_hash` hashes (`ip_hash` always hashes the client address).
    pub hash_key: HashKey,
    pub hash_method: HashMethod,
    pub dynamic_weights: DynamicWeightsConfig,
    pub sticky: StickyConfig,
}

/// `[balancer.sticky]`: cookie-inserted sticky sessions. The cookie names the backend by an opaque value the
/// control thread signs (`control::sticky`), never by its address, so a client cannot steer itself to a backend it
/// was not sent to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StickyConfig {
    pub enabled: bool,
    /// The cookie's name (an RFC 6265 token).
    pub cookie: String,
    /// `Max-Age`; `None`: a session cookie, gone when the browser closes.
    pub ttl: Option<Duration>,
    pub path: String,
    pub domain: Option<String>,
    pub secure: bool,
    pub http_only: bool,
    pub same_site: SameSite,
    /// A file of at least 32 bytes to sign cookie values with, so that several corelb processes (and restarts)
    /// agree on them; `None`: a random key per process, so cookies last until corelb restarts.
    pub secret_file: Option<PathBuf>,
}

/// The cookie's `SameSite` attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    Lax,
    Strict,
    None,
}

/// `[balancer.dynamic_weights]`: each worker thins out the turns of backends that answer slower or fail more than
/// their peers (`balance::dynamic`); the configured weight stays the ceiling.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DynamicWeightsConfig {
    pub enabled: bool,
    /// The time constant of the latency and error averages: how fast old observations fade, and so how gradually
    /// a recovered backend regains its weight.
    pub decay: Duration,
    /// Latency differences well under this hardly matter.
    pub latency_slack: Duration,
    /// The least share of its weight a backend keeps (so it goes on being measured), 0.01 to 1.
    pub min_share: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// Each backend in turn; weights are not used.
    RoundRobin,
    /// Smooth weighted round-robin (nginx's): proportional and interleaved.
    WeightedRoundRobin,
    /// The fewest requests in flight on this worker, by weight; ties at random.
    LeastConnections,
    /// The less loaded of two backends drawn at random.
    PowerOfTwo,
    /// A backend drawn at random, by weight.
    Random,
    /// The shorter expected wait (peak EWMA response time × requests in flight) of two drawn at random.
    LeastResponseTime,
    /// Consistent hashing on the client address.
    IpHash,
    /// Consistent hashing on `hash_key`.
    ConsistentHash,
}

/// How the hashing algorithms map keys to backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashMethod {
    /// A lookup table, one probe per pick (the default).
    Maglev,
    /// Highest random weight: minimal movement, O(backends) per pick.
    Rendezvous,
}

/// What the hashing algorithms hash (`balancer.hash_key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    ClientIp,
    /// The request path, without the query.
    Path,
    /// A request header's value (the name lowercased); a request without it hashes its client address.
    Header(String),
    /// A cookie's value; a request without it hashes its client address.
    Cookie(String),
}

impl HashKey {
    /// Reads `client_ip`, `path`, `header:NAME` or `cookie:NAME`.
    pub fn parse(text: &str) -> Result<HashKey, String> {
        let token = |name: &str| {
            !name.is_empty()
                && name
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte))
        };
        match text.split_once(':') {
            None if text == "client_ip" => Ok(HashKey::ClientIp),
            None if text == "path" => Ok(HashKey::Path),
            Some(("header", name)) if token(name) => Ok(HashKey::Header(name.to_ascii_lowercase())),
            Some(("cookie", name)) if token(name) => Ok(HashKey::Cookie(name.to_string())),
            _ => Err(format!(
                "must be \"client_ip\", \"path\", \"header:NAME\" or \"cookie:NAME\", got {text:?}"
            )),
        }
    }

    /// The spelling `parse` reads.
    pub fn name(&self) -> String {
        match self {
            HashKey::ClientIp => "client_ip".into(),
            HashKey::Path => "path".into(),
            HashKey::Header(name) => format!("header:{name}"),
            HashKey::Cookie(name) => format!("cookie:{name}"),
        }
    }
}

impl Algorithm {
    /// Whether backend weights change what it picks.
    pub fn uses_weights(self) -> bool {
        self != Algorithm::RoundRobin
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect to a backend.
    pub connect: Duration,
    /// Waiting for the backend's response head, and between reads of its body.
    pub upstream_response: Duration,
    /// Reading a whole request head once its first byte arrived.
    pub client_header: Duration,
    /// A kept-alive client connection with no request in progress, and a stalled client read or write.
    pub client_idle: Duration,
    /// The whole request's budget, from its head read to the backend's response head, across every try.
    pub request: Duration,
    /// One try's wait for the response head; past it an idempotent request may go to another backend.
    /// `None`: `upstream_response`.
    pub per_try: Option<Duration>,
    /// Time a request body gets before it must keep up `limits.min_body_rate`: its whole-body deadline is this
    /// plus one second per `min_body_rate` bytes received, so a trickle is cut while a large upload is not.
    pub client_body: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamConfig {
    /// Idle keep-alive connections kept per backend, per worker.
    pub max_idle_per_backend: usize,
    /// An idle upstream connection older than this is closed rather than reused.
    pub idle_timeout: Duration,
    /// Backends tried for one request when connecting fails (connect failures are always safe to retry).
    pub max_connect_attempts: u32,
    /// A backend that refused a connection is skipped by this worker for this long.
    pub fail_timeout: Duration,
    /// A backend that joins (by a config change) or recovers (health check, circuit breaker) takes this long to
    /// reach its full share; zero turns slow start off.
    pub slow_start: Duration,
    /// Upstream connections (in use and idle) one worker holds, per backend in the set: the worker's cap is this
    /// times the number of backends (and never more than its share of the descriptor budget). Past it requests
    /// queue, first come first served, for up to `timeouts.connect`. Bounding it keeps the queue in corelb, where
    /// it is fair, instead of in thousands of connections at the backend.
    pub max_connections_per_backend: usize,
    /// Requests that may wait, on each worker, for a backend under its `max_connections` when every backend it
    /// could use is at capacity; zero answers 503 at once.
    pub capacity_queue: usize,
    /// How long such a request waits before it is answered 503 `backend_at_capacity`.
    pub capacity_queue_timeout: Duration,
    /// How `https://` backends are verified, and the certificate corelb shows them.
    pub tls: UpstreamTlsConfig,
}

/// `[upstream.tls]`: TLS to `https://` backends.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UpstreamTlsConfig {
    /// The CA bundle backend certificates are verified against (default: the system's roots).
    pub ca: Option<PathBuf>,
    /// A client certificate and key for backends that ask for one.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Accept any backend certificate. Only for testing: logged as a warning at every load.
    pub insecure_skip_verify: bool,
}

/// When and how a failed try is sent again (`[retries]`); tries are bounded by `upstream.max_connect_attempts`.
#[derive(Debug, Clone, PartialEq)]
pub struct RetriesConfig {
    /// Response statuses (5xx) that send an idempotent, bodiless request to another backend instead of the
    /// client, while tries and budget last.
    pub on_status: Vec<u16>,
    /// The first backoff before a try that follows a response, a timeout or a lost connection; it doubles with
    /// each retry (with full jitter) up to `backoff_max`. A failover after a refused connect does not wait.
    pub backoff: Duration,
    pub backoff_max: Duration,
    /// Retries allowed per request seen over `budget_window`.
    pub budget_ratio: f64,
    /// Retries per second allowed besides, for the whole process.
    pub budget_min_per_second: f64,
    pub budget_window: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest request or response head (request line and headers); larger is 431 / 502.
    pub max_header_bytes: usize,
    /// Longest request line; longer is 414.
    pub max_request_line: usize,
    /// Most header fields in one head.
    pub max_headers: usize,
    /// Largest request body; a larger Content-Length gets 413 before a backend is chosen, a chunked body that
    /// grows past it is cut off.
    pub max_body_bytes: u64,
    /// Slowest average rate, in bytes a second, a request body may arrive at once `timeouts.client_body` has
    /// passed (see there).
    pub min_body_rate: u64,
}

/// Active health checks: one prober thread for the whole process asks every backend `method path` each `interval`.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheckConfig {
    pub enabled: bool,
    pub interval: Duration,
    /// One probe's whole budget: connect, send, read the status line.
    pub timeout: Duration,
    pub path: String,
    /// `GET` or `HEAD`.
    pub method: String,
    /// `Host` sent with probes; the backend's `host:port` when unset.
    pub host: Option<String>,
    /// Statuses that mean healthy, inclusive.
    pub expected_status: (u16, u16),
    /// Consecutive passed probes that make an unhealthy backend healthy again.
    pub healthy_threshold: u32,
    /// Consecutive failed probes that make a healthy backend unhealthy.
    pub unhealthy_threshold: u32,
    /// Each interval is stretched or shrunk at random by up to this fraction, so probes do not march in step.
    pub jitter: f64,
    /// What requests do when every backend that is not draining is unhealthy.
    pub panic_mode: PanicMode,
}

/// One backend's resolved health check settings.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckSettings {
    pub interval: Duration,
    pub timeout: Duration,
    pub path: String,
    pub method: String,
    pub host: String,
    pub expected_status: (u16, u16),
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    pub jitter: f64,
}

impl HealthCheckConfig {
    /// The settings `backend` is checked with, or `None` when it is not checked.
    pub fn for_backend(&self, backend: &BackendConfig) -> Option<CheckSettings> {
        let own = &backend.healthcheck;
        if !own.enabled.unwrap_or(self.enabled) {
            return None;
        }
        Some(CheckSettings {
            interval: own.interval.unwrap_or(self.interval),
            timeout: own.timeout.unwrap_or(self.timeout),
            path: own.path.clone().unwrap_or_else(|| self.path.clone()),
            method: self.method.clone(),
            host: own
                .host
                .clone()
                .or_else(|| self.host.clone())
                .unwrap_or_else(|| backend.authority()),
            expected_status: self.expected_status,
            healthy_threshold: self.healthy_threshold,
            unhealthy_threshold: self.unhealthy_threshold,
            jitter: self.jitter,
        })
    }
}

/// What requests do when every backend that is not draining is unhealthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PanicMode {
    /// Spread them over every backend that is not draining, as if all were healthy (Envoy's panic routing): the
    /// checks may be what is broken.
    FailOpen,
    /// Answer 503 `no_healthy_backend`.
    FailClosed,
}

/// `[tls]`: the defaults of every frontend's `tls` table. TLS itself is switched on per frontend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub ca: Option<PathBuf>,
    pub client_auth: ClientAuth,
    /// Resume TLS sessions by ticket, with keys the control thread makes and shares with every core.
    pub session_tickets: bool,
    /// How long a ticket key makes tickets before the next replaces it (tickets live one to two of these).
    pub ticket_rotation: Duration,
    /// How often the control thread looks at the certificate, key and CA files for a change, and reloads them when
    /// one changed (`0s`: never; `cert reload`, `reload` and SIGHUP still do).
    pub watch: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    None,
    Optional,
    Required,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitConfig {
    pub enabled: bool,
    /// Requests per second for the whole process.
    pub rate: f64,
    pub burst: u32,
    pub algorithm: RateLimitAlgorithm,
    pub scope: RateLimitScope,
    /// Per-client limiters kept per worker (client_ip scope); the least recently seen is evicted past this.
    pub max_clients: usize,
    /// Client networks never limited.
    pub allow: Vec<Network>,
    /// Per-frontend limits replacing the global one.
    pub overrides: Vec<RateLimitOverride>,
}

/// A frontend's own limit.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitOverride {
    pub frontend: String,
    /// `false` exempts the frontend from rate limiting.
    pub enabled: bool,
    pub rate: f64,
    pub burst: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimitAlgorithm {
    TokenBucket,
    SlidingWindow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimitScope {
    Global,
    ClientIp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CircuitBreakerConfig {
    pub enabled: bool,
    /// Consecutive failures that open the breaker.
    pub threshold: u32,
    /// How long the breaker stays open before letting probes through.
    pub timeout: Duration,
    /// Probe requests allowed at once while half-open, on each worker.
    pub max_half_open: u32,
    /// Response statuses counted as failures (5xx only), besides connect errors, resets and timeouts.
    pub failure_statuses: Vec<u16>,
}

/// Passive outlier detection (`[outlier_detection]`): the control thread ejects a backend that the workers together
/// saw fail too often, for a time that grows with each ejection (see ARCHITECTURE.md, "Outlier ejection").
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierConfig {
    pub enabled: bool,
    /// Consecutive gateway errors (over every worker) that eject a backend; 0 turns the rule off.
    pub consecutive_errors: u32,
    /// The share of failed requests over `window` that ejects a backend; 0 turns the rule off.
    pub failure_ratio: f64,
    /// Requests a backend must have taken over `window` before its ratio counts.
    pub min_requests: u32,
    pub window: Duration,
    /// The first ejection lasts this long; the n-th, n times as long, up to `max_ejection_time`.
    pub base_ejection_time: Duration,
    pub max_ejection_time: Duration,
    /// At most this share of the backends is ejected at once, but always at least one may be.
    pub max_ejection_percent: u32,
    /// Each ejection lasts up to this share longer, at random, so that ejected backends do not all return at once.
    pub jitter: f64,
    /// Response statuses counted as failures (5xx only), besides connect errors, resets and timeouts.
    pub failure_statuses: Vec<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggingConfig {
    pub level: LogLevel,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    /// The level's name, from its table in `names`.
    pub fn as_str(self) -> &'static str {
        names::Choice::name(self)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    pub enabled: bool,
    pub address: IpAddr,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlConfig {
    /// Unix control socket; a relative path is relative to the config file's folder.
    pub socket: PathBuf,
    /// Applied config versions kept for `versions` and `rollback`.
    pub history: usize,
}

/// One line per request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogConfig {
    pub enabled: bool,
    pub format: AccessLogFormat,
    /// `None` writes to stderr; a file is appended to and reopened on SIGUSR1.
    pub path: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLogFormat {
    Json,
    /// The combined log format, followed by corelb's own fields as `key=value`.
    Combined,
}

/// corelb's own health answer on every frontend (and on the metrics listener).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthEndpointConfig {
    pub enabled: bool,
    pub path: String,
}

/// The admin REST API listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    pub enabled: bool,
    pub listen: SocketAddr,
    /// Bearer token the API requires; mandatory when `listen` is not a loopback address.
    pub token: Option<String>,
}

/// Why a config file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is invalid:\n{errors}")]
    Invalid { path: PathBuf, errors: ConfigErrors },
}

/// Reads and validates a config file.
pub fn load_config(path: &Path) -> Result<Config, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut config = parse_config(&text).map_err(|errors| LoadError::Invalid {
        path: path.to_path_buf(),
        errors,
    })?;
    resolve_relative_paths(&mut config, path.parent().unwrap_or(Path::new("")));
    Ok(config)
}

/// Makes paths in `config` that are relative (to the config file) absolute against `folder`.
pub fn resolve_relative_paths(config: &mut Config, folder: &Path) {
    if config.control.socket.is_relative() {
        config.control.socket = folder.join(&config.control.socket);
    }
    if let Some(path) = config.access_log.path.as_mut().filter(|path| path.is_relative()) {
        *path = folder.join(&*path);
    }
    if let Some(path) = config
        .balancer
        .sticky
        .secret_file
        .as_mut()
        .filter(|path| path.is_relative())
    {
        *path = folder.join(&*path);
    }
    let tls_paths = config
        .frontends
        .iter_mut()
        .filter_map(|frontend| frontend.tls.as_mut())
        .flat_map(|tls| {
            let certificates = tls
                .certificates
                .iter_mut()
                .flat_map(|files| [&mut files.cert, &mut files.key]);
            certificates.chain(tls.client_ca.as_mut())
        });
    let upstream = &mut config.upstream.tls;
    let defaults = [
        &mut config.tls.cert,
        &mut config.tls.key,
        &mut config.tls.ca,
        &mut upstream.ca,
        &mut upstream.cert,
        &mut upstream.key,
    ];
    for path in tls_paths.chain(defaults.into_iter().flatten()) {
        if path.is_relative() {
            *path = folder.join(&*path);
        }
    }
}
