//! Settings of `relay serve`: every one a flag and an environment variable
//! (CONTRACT §1), parsed by clap and then validated as a whole into a
//! [`Config`] before anything binds a port.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    str::FromStr,
    time::Duration,
};

use clap::{
    Args, ValueEnum,
    builder::{BoolishValueParser, RangedU64ValueParser},
};

/// A value that must never reach a log line or a `Debug` dump.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(\"***\")")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Smallest client payload limit: a Socket.IO CONNECT carrying a JWT (a
/// merchant's lists its stores) and a `last_event_id` must fit, with room.
const MIN_PAYLOAD: u64 = 4096;
/// Largest client payload limit: socketioxide's own default, 64 MiB.
const MAX_PAYLOAD: u64 = 64 * 1024 * 1024;

/// Raw settings as clap reads them from flags and the environment. Every
/// number has a range, checked by its value parser (one line naming the
/// setting, exit code 2), so that no value starts a node that cannot work.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// HTTP + Socket.IO listen address.
    #[arg(long, env = "RELAY_ADDR", default_value = "0.0.0.0:3000")]
    pub addr: SocketAddr,

    /// Redis to share state through; unset (and no REDIS_CLUSTER_URLS) =
    /// embedded single-node mode.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<Secret>,

    /// Seed nodes of a Redis Cluster (7.0 or later), comma-separated, all
    /// redis:// or all rediss://; exclusive with REDIS_URL.
    #[arg(
        long,
        env = "REDIS_CLUSTER_URLS",
        hide_env_values = true,
        value_delimiter = ','
    )]
    pub redis_cluster_urls: Vec<Secret>,

    /// PEM file of the CA(s) that sign the Redis server's certificate
    /// (needs rediss:// Redis URLs) [default: the system's roots].
    #[arg(long, env = "RELAY_REDIS_CA_FILE")]
    pub redis_ca_file: Option<PathBuf>,

    /// PEM client certificate (chain), for a Redis that requires mutual TLS;
    /// needs RELAY_REDIS_CLIENT_KEY.
    #[arg(long, env = "RELAY_REDIS_CLIENT_CERT")]
    pub redis_client_cert: Option<PathBuf>,

    /// PEM private key of RELAY_REDIS_CLIENT_CERT.
    #[arg(long, env = "RELAY_REDIS_CLIENT_KEY")]
    pub redis_client_key: Option<PathBuf>,

    /// HS256 secret for client tokens.
    #[arg(long, env = "RELAY_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<Secret>,

    /// Path to a PEM public key (RS256, ES256 or EdDSA) for client tokens.
    #[arg(long, env = "RELAY_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,

    /// Required `iss` claim, checked when set.
    #[arg(long, env = "RELAY_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Required `aud` claim, checked when set.
    #[arg(long, env = "RELAY_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Clock skew tolerated on `exp` and `nbf`, in seconds (0 to 300).
    #[arg(long, env = "RELAY_JWT_LEEWAY_S", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(0..=300))]
    pub jwt_leeway_s: u64,

    /// How long before a socket's token expires it is sent `auth:expiring`,
    /// in seconds (0 = never; at most 86400).
    #[arg(long, env = "RELAY_TOKEN_REFRESH_NOTICE_S", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub token_refresh_notice_s: u64,

    /// How long a store or driver whose last socket left stays online, in
    /// ms (0 to 3600000): a reconnect within it is not an outage.
    #[arg(long, env = "RELAY_PRESENCE_GRACE_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(0..=3_600_000))]
    pub presence_grace_ms: u64,

    /// Bearer key for the publish API; unset = publish API off.
    #[arg(long, env = "RELAY_API_KEY", hide_env_values = true)]
    pub api_key: Option<Secret>,

    /// This node's name in metrics, logs and stream consumer names [default: hostname-pid].
    #[arg(long, env = "RELAY_NODE_ID")]
    pub node_id: Option<String>,

    /// Prefix of every Redis key, stream and pub/sub channel.
    #[arg(long, env = "RELAY_KEY_PREFIX", default_value = "relay:")]
    pub key_prefix: String,

    /// How long a driver's cached location stays fresh, in seconds (1 to 86400).
    #[arg(long, env = "RELAY_LOCATION_TTL_S", default_value_t = 120,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub location_ttl_s: u64,

    /// Per driver, updates closer together than this are dropped, in ms (0 = no
    /// limit; at most 3600000 and below RELAY_LOCATION_TTL_S).
    #[arg(long, env = "RELAY_LOCATION_MIN_INTERVAL_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(0..=3_600_000))]
    pub location_min_interval_ms: u64,

    /// Per socket, client events beyond this rate are dropped (0 = no limit; at most 100000).
    #[arg(long, env = "RELAY_CLIENT_EVENTS_PER_S", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub client_events_per_s: u32,

    /// Sockets a node holds at most; beyond, new sessions get HTTP 503 (0 = no limit; at most 10000000).
    #[arg(long, env = "RELAY_MAX_CONNECTIONS", default_value_t = 100_000,
          value_parser = RangedU64ValueParser::<usize>::new().range(0..=10_000_000))]
    pub max_connections: usize,

    /// Sockets one user (token `sub`) may hold on all nodes together; beyond, `too many connections` (0 = no limit; at most 10000).
    #[arg(long, env = "RELAY_MAX_CONNECTIONS_PER_USER", default_value_t = 20,
          value_parser = RangedU64ValueParser::<usize>::new().range(0..=10_000))]
    pub max_connections_per_user: usize,

    /// New sessions a node accepts per second; beyond, HTTP 503 and the client retries (0 = no limit; at most 1000000).
    #[arg(long, env = "RELAY_MAX_NEW_CONNECTIONS_PER_S", default_value_t = 2000,
          value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub max_new_connections_per_s: u32,

    /// New sessions one client address may start per second, beside the
    /// node-wide budget; beyond, HTTP 503 and the client retries (0 = no
    /// limit; at most 1000000). IPv6 addresses count per /64. Behind a load
    /// balancer, set RELAY_TRUSTED_PROXIES: otherwise every client shares
    /// the balancer's address.
    #[arg(long, env = "RELAY_MAX_NEW_CONNECTIONS_PER_ADDR_PER_S", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub max_new_connections_per_addr_per_s: u32,

    /// Proxies (IPs or CIDRs, comma-separated) whose X-Forwarded-For is
    /// believed: the client is the right-most address not among them.
    /// Unset: the TCP peer is the client.
    #[arg(long, env = "RELAY_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<String>,

    /// A session that sends no Socket.IO CONNECT within this time is closed, in ms (500 to 60000).
    #[arg(long, env = "RELAY_CONNECT_TIMEOUT_MS", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(500..=60_000))]
    pub connect_timeout_ms: u64,

    /// Events kept per room for recovery (1 to 10000).
    #[arg(long, env = "RELAY_HISTORY_SIZE", default_value_t = 100,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..=10_000))]
    pub history_size: usize,

    /// Longest text of a chat message, in characters (1 to 10000).
    #[arg(long, env = "RELAY_CHAT_MAX_CHARS", default_value_t = 1000,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..=10_000))]
    pub chat_max_chars: usize,

    /// Messages kept per order chat for `chat:history` (1 to 10000).
    #[arg(long, env = "RELAY_CHAT_HISTORY", default_value_t = 200,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..=10_000))]
    pub chat_history: usize,

    /// Longest time an event is kept for recovery, in seconds (1 to 86400).
    #[arg(long, env = "RELAY_HISTORY_TTL_S", default_value_t = 600,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub history_ttl_s: u64,

    /// Idle time after which a stopped node's stream entries are claimed, in ms (500 to 3600000).
    // Below 500 ms the keep-alive of held entries (every claim_idle / 4, at
    // least 100 ms) no longer keeps live nodes' entries from being claimed.
    #[arg(long, env = "RELAY_CLAIM_IDLE_MS", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(500..=3_600_000))]
    pub claim_idle_ms: u64,

    /// Deliveries of one stream entry before it goes to the dead letters (1 to 1000).
    #[arg(long, env = "RELAY_MAX_DELIVERIES", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_deliveries: u32,

    // Stream entries: one block for the size limit (issue #15, 7d).
    /// Largest stream entry (its field names and values) and publish API
    /// event, in bytes; larger entries go to the dead letters as
    /// `too_large`, larger events get 413 (4096 to 67108864).
    #[arg(long, env = "RELAY_MAX_EVENT_BYTES", default_value_t = 64 * 1024,
          value_parser = RangedU64ValueParser::<usize>::new().range(MIN_PAYLOAD..=MAX_PAYLOAD))]
    pub max_event_bytes: usize,

    /// Accept WebSocket connections only (no long-polling, no sticky sessions needed).
    #[arg(long, env = "RELAY_WEBSOCKET_ONLY", value_parser = BoolishValueParser::new())]
    pub websocket_only: bool,

    /// Browser origins allowed to call the relay cross-origin (long-polling
    /// and the HTTP API), comma-separated, or `*` for any (no credentials).
    /// Unset: same-origin only.
    #[arg(long, env = "RELAY_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,

    /// Largest WebSocket message a client may send, in bytes (4096 to 67108864).
    #[arg(long, env = "RELAY_WS_MAX_MESSAGE_BYTES", default_value_t = 64 * 1024,
          value_parser = RangedU64ValueParser::<usize>::new().range(MIN_PAYLOAD..=MAX_PAYLOAD))]
    pub ws_max_message_bytes: usize,

    /// Largest WebSocket frame a client may send, in bytes (4096 to RELAY_WS_MAX_MESSAGE_BYTES).
    #[arg(long, env = "RELAY_WS_MAX_FRAME_BYTES", default_value_t = 64 * 1024,
          value_parser = RangedU64ValueParser::<usize>::new().range(MIN_PAYLOAD..=MAX_PAYLOAD))]
    pub ws_max_frame_bytes: usize,

    /// Largest long-polling request body a client may send, in bytes (4096 to 67108864).
    #[arg(long, env = "RELAY_POLLING_MAX_PAYLOAD_BYTES", default_value_t = 64 * 1024,
          value_parser = clap::value_parser!(u64).range(MIN_PAYLOAD..=MAX_PAYLOAD))]
    pub polling_max_payload_bytes: u64,

    /// Engine.IO ping interval, in ms (1000 to 3600000).
    #[arg(long, env = "RELAY_PING_INTERVAL_MS", default_value_t = 25_000,
          value_parser = clap::value_parser!(u64).range(1000..=3_600_000))]
    pub ping_interval_ms: u64,

    /// Engine.IO ping timeout, in ms: a client silent this long after a ping is dropped (1000 to 3600000).
    #[arg(long, env = "RELAY_PING_TIMEOUT_MS", default_value_t = 20_000,
          value_parser = clap::value_parser!(u64).range(1000..=3_600_000))]
    pub ping_timeout_ms: u64,

    /// Longest time from SIGTERM to exit, in seconds (1 to 3600).
    #[arg(long, env = "RELAY_SHUTDOWN_GRACE_S", default_value_t = 15,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub shutdown_grace_s: u64,

    /// After SIGTERM, how long /readyz answers 503 while the node still
    /// serves and accepts, before the drain proper closes the listener, in
    /// ms (0 to 3600000, at most half of RELAY_SHUTDOWN_GRACE_S) [default:
    /// 5000, or a third of RELAY_SHUTDOWN_GRACE_S when that is less].
    #[arg(long, env = "RELAY_SHUTDOWN_DELAY_MS",
          value_parser = clap::value_parser!(u64).range(0..=3_600_000))]
    pub shutdown_delay_ms: Option<u64>,

    /// Longest time to receive a request's headers, from the connection's
    /// start or from the first byte of a next request, in ms (100 to 600000).
    #[arg(long, env = "RELAY_HTTP_HEADER_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub http_header_timeout_ms: u64,

    /// Longest time a kept-alive HTTP connection may sit between two requests,
    /// in ms (100 to 3600000). Upgraded WebSockets are governed by the ping instead.
    #[arg(long, env = "RELAY_HTTP_IDLE_TIMEOUT_MS", default_value_t = 75_000,
          value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub http_idle_timeout_ms: u64,

    /// Connections a node holds that are not (yet) Socket.IO sessions;
    /// beyond, new connections are closed at once (1 to 1000000).
    #[arg(long, env = "RELAY_MAX_PENDING_CONNECTIONS", default_value_t = 10_000,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    pub max_pending_connections: usize,

    /// Threads that run the node's tasks (0 = one per CPU the process may
    /// use, cgroup quotas included; at most 1024). A node given a share of
    /// a machine runs leaner with as many threads as its share in cores:
    /// each idle thread woken for a message costs context switches.
    #[arg(long, env = "RELAY_WORKER_THREADS", default_value_t = 0,
          value_parser = RangedU64ValueParser::<usize>::new().range(0..=1024))]
    pub worker_threads: usize,

    /// Serve the live demo page at /demo, which hands an admin token to
    /// anyone who can reach this port: development only.
    #[arg(long, env = "RELAY_DEMO", value_parser = BoolishValueParser::new())]
    pub demo: bool,

    /// Log format.
    #[arg(long, env = "RELAY_LOG_FORMAT", value_enum, default_value = "human")]
    pub log_format: LogFormat,

    /// Log filter (tracing EnvFilter syntax, e.g. `info,relay=debug`).
    #[arg(long, env = "RELAY_LOG", default_value = "info")]
    pub log: String,
}

/// A setting that failed validation, named as the operator wrote it.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting {setting}: {reason}")]
pub struct ConfigError {
    pub setting: &'static str,
    pub reason: String,
}

impl ConfigError {
    pub fn new(setting: &'static str, reason: impl Into<String>) -> Self {
        Self {
            setting,
            reason: reason.into(),
        }
    }
}

/// How client tokens are verified: exactly one key source.
#[derive(Debug, Clone)]
pub enum JwtKeySource {
    Secret(Secret),
    PublicKeyPem { path: PathBuf, pem: Vec<u8> },
}

#[derive(Debug, Clone)]
pub struct JwtConfig {
    pub key: JwtKeySource,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub leeway: Duration,
}

#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// A session without a Socket.IO CONNECT by then is closed.
    pub connect_timeout: Duration,
    pub websocket_only: bool,
    pub ws_max_message_bytes: usize,
    pub ws_max_frame_bytes: usize,
    pub polling_max_payload_bytes: u64,
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct LocationConfig {
    pub ttl: Duration,
    pub min_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct HistoryConfig {
    pub size: usize,
    pub ttl: Duration,
}

/// Order chat (CONTRACT §7).
#[derive(Debug, Clone, Copy)]
pub struct ChatConfig {
    /// Longest message text, in characters.
    pub max_chars: usize,
    /// Messages kept per order.
    pub history: usize,
}

#[derive(Debug, Clone)]
pub struct StreamConfig {
    pub claim_idle: Duration,
    pub max_deliveries: u32,
    pub max_event_bytes: usize,
}

/// Connection limits of a node (0 = no limit).
#[derive(Debug, Clone)]
pub struct ConnectionLimitsConfig {
    pub max_connections: usize,
    pub max_per_user: usize,
    pub new_per_s: u32,
    /// New sessions per client address a second.
    pub new_per_addr_per_s: u32,
    /// Peers whose X-Forwarded-For names the client.
    pub trusted_proxies: Vec<IpNet>,
}

/// An address block, `10.0.0.0/8` or `2001:db8::/32`; a bare address is
/// a block of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for IpNet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let addr = addr
            .parse::<IpAddr>()
            .map_err(|_| format!("'{s}' is not an IP address or CIDR block"))?
            .to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("'{s}': the prefix length must be 0 to {max}"))?,
        };
        Ok(Self { addr, prefix })
    }
}

/// Bounds on HTTP connections that are not (yet) Socket.IO sessions.
#[derive(Debug, Clone, Copy)]
pub struct HttpConfig {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_pending: usize,
}

/// TLS files for a `rediss://` Redis, read and parsed at start. Empty:
/// the system's roots, no client certificate.
#[derive(Debug, Clone, Default)]
pub struct RedisTls {
    /// PEM of the CA(s) to trust instead of the system's roots.
    pub ca_pem: Option<Vec<u8>>,
    pub client: Option<ClientIdentity>,
}

/// A client certificate and its key, for mutual TLS.
#[derive(Clone)]
pub struct ClientIdentity {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientIdentity { .. }")
    }
}

impl RedisTls {
    fn from_args(args: &ServeArgs) -> Result<Self, ConfigError> {
        use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

        let certificates = |setting: &'static str, path: &PathBuf| {
            let pem = read_file(setting, path)?;
            let parsed = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| {
                    ConfigError::new(setting, format!("{} is not PEM: {e}", path.display()))
                })?;
            if parsed.is_empty() {
                return Err(ConfigError::new(
                    setting,
                    format!("{} holds no PEM certificate", path.display()),
                ));
            }
            Ok(pem)
        };
        let ca_pem = match &args.redis_ca_file {
            Some(path) => Some(certificates("RELAY_REDIS_CA_FILE", path)?),
            None => None,
        };
        let client = match (&args.redis_client_cert, &args.redis_client_key) {
            (Some(cert), Some(key)) => {
                let cert_pem = certificates("RELAY_REDIS_CLIENT_CERT", cert)?;
                let key_pem = read_file("RELAY_REDIS_CLIENT_KEY", key)?;
                // The parser's message names the PEM section, never the key.
                PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| {
                    ConfigError::new(
                        "RELAY_REDIS_CLIENT_KEY",
                        format!("{} holds no PEM private key", key.display()),
                    )
                })?;
                Some(ClientIdentity { cert_pem, key_pem })
            }
            (Some(_), None) => {
                return Err(ConfigError::new(
                    "RELAY_REDIS_CLIENT_KEY",
                    "required with RELAY_REDIS_CLIENT_CERT",
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    "RELAY_REDIS_CLIENT_CERT",
                    "required with RELAY_REDIS_CLIENT_KEY",
                ));
            }
            (None, None) => None,
        };
        let tls = Self { ca_pem, client };
        if !tls.is_empty() {
            let is_tls = match RedisTarget::from_args(args)? {
                Some(target) => target.is_tls(),
                None => false,
            };
            if !is_tls {
                let setting = if args.redis_ca_file.is_some() {
                    "RELAY_REDIS_CA_FILE"
                } else {
                    "RELAY_REDIS_CLIENT_CERT"
                };
                return Err(ConfigError::new(
                    setting,
                    "needs a rediss:// REDIS_URL or REDIS_CLUSTER_URLS (TLS); redis:// or unset ones would not use it",
                ));
            }
        }
        Ok(tls)
    }

    /// No file given: the system's roots, no client certificate.
    pub fn is_empty(&self) -> bool {
        self.ca_pem.is_none() && self.client.is_none()
    }
}

fn read_file(setting: &'static str, path: &PathBuf) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path)
        .map_err(|e| ConfigError::new(setting, format!("cannot read {}: {e}", path.display())))
}

/// The Redis a node shares its state through: one server (or a managed
/// primary endpoint), or the seed nodes of a Redis Cluster.
#[derive(Debug, Clone)]
pub enum RedisTarget {
    Server(Secret),
    Cluster(Vec<Secret>),
}

impl RedisTarget {
    /// REDIS_URL or REDIS_CLUSTER_URLS, each checked; neither is embedded mode.
    fn from_args(args: &ServeArgs) -> Result<Option<Self>, ConfigError> {
        let seeds: Vec<&Secret> = args
            .redis_cluster_urls
            .iter()
            .filter(|s| !s.expose().trim().is_empty())
            .collect();
        match (&args.redis_url, seeds.is_empty()) {
            (Some(_), false) => Err(ConfigError::new(
                "REDIS_CLUSTER_URLS",
                "set either REDIS_URL or REDIS_CLUSTER_URLS, not both",
            )),
            (Some(url), true) => {
                url_info("REDIS_URL", url)?;
                Ok(Some(Self::Server(url.clone())))
            }
            (None, true) => Ok(None),
            (None, false) => {
                let mut tls = None;
                for seed in &seeds {
                    let info = url_info("REDIS_CLUSTER_URLS", seed)?;
                    let is_tls = matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. });
                    if !matches!(
                        info.addr(),
                        redis::ConnectionAddr::Tcp(..) | redis::ConnectionAddr::TcpTls { .. }
                    ) {
                        return Err(ConfigError::new(
                            "REDIS_CLUSTER_URLS",
                            "each seed must be a redis:// or rediss:// URL with a host and port",
                        ));
                    }
                    if *tls.get_or_insert(is_tls) != is_tls {
                        return Err(ConfigError::new(
                            "REDIS_CLUSTER_URLS",
                            "mixes redis:// and rediss:// seeds: all must be one or the other",
                        ));
                    }
                }
                let seeds = seeds
                    .into_iter()
                    .map(|s| Secret::new(s.expose().trim()))
                    .collect();
                Ok(Some(Self::Cluster(seeds)))
            }
        }
    }

    /// `rediss://`: every connection speaks TLS.
    pub fn is_tls(&self) -> bool {
        let tls = |url: &Secret| {
            matches!(
                redis::IntoConnectionInfo::into_connection_info(url.expose().trim())
                    .map(|info| info.addr().clone()),
                Ok(redis::ConnectionAddr::TcpTls { .. })
            )
        };
        match self {
            Self::Server(url) => tls(url),
            Self::Cluster(seeds) => seeds.iter().all(tls),
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }
}

/// A Redis URL parsed, the error naming the setting but never the URL (the
/// redis crate's message does not echo it, so the password stays out).
fn url_info(setting: &'static str, url: &Secret) -> Result<redis::ConnectionInfo, ConfigError> {
    redis::IntoConnectionInfo::into_connection_info(url.expose().trim())
        .map_err(|e| ConfigError::new(setting, format!("not a Redis URL ({:?})", e.kind())))
}

/// Default readiness drain after SIGTERM, when the grace period allows it.
const SHUTDOWN_DELAY: Duration = Duration::from_secs(5);

/// A node's validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub addr: SocketAddr,
    /// None: embedded mode.
    pub redis: Option<RedisTarget>,
    pub redis_tls: RedisTls,
    pub jwt: JwtConfig,
    pub api_key: Option<Secret>,
    pub node_id: String,
    pub key_prefix: String,
    pub location: LocationConfig,
    pub client_events_per_s: u32,
    /// `auth:expiring` goes out this long before a token's `exp` (zero: never).
    pub token_refresh_notice: Duration,
    /// An id with no socket left goes offline after this.
    pub presence_grace: Duration,
    pub limits: ConnectionLimitsConfig,
    /// Allowed browser origins; empty: same-origin only; `*`: any.
    pub cors_origins: Vec<String>,
    pub history: HistoryConfig,
    pub chat: ChatConfig,
    pub stream: StreamConfig,
    pub transport: TransportConfig,
    pub shutdown_grace: Duration,
    /// From SIGTERM until the listener closes: /readyz answers 503 meanwhile.
    pub shutdown_delay: Duration,
    pub http: HttpConfig,
    /// Runtime worker threads; None: one per CPU the process may use.
    pub worker_threads: Option<std::num::NonZeroUsize>,
    /// The /demo page (and its admin token) is served.
    pub demo: bool,
    pub log_format: LogFormat,
    pub log: String,
}

impl Config {
    /// Checks the settings against each other and loads the files they name.
    pub fn from_args(args: ServeArgs) -> Result<Self, ConfigError> {
        let redis = RedisTarget::from_args(&args)?;
        let redis_tls = RedisTls::from_args(&args)?;
        let key = match (args.jwt_secret, args.jwt_public_key) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    "RELAY_JWT_SECRET",
                    "set either RELAY_JWT_SECRET or RELAY_JWT_PUBLIC_KEY, not both",
                ));
            }
            (None, None) => {
                return Err(ConfigError::new(
                    "RELAY_JWT_SECRET",
                    "required (or RELAY_JWT_PUBLIC_KEY): clients cannot be authenticated without a key",
                ));
            }
            (Some(secret), None) if secret.expose().is_empty() => {
                return Err(ConfigError::new("RELAY_JWT_SECRET", "must not be empty"));
            }
            (Some(secret), None) => JwtKeySource::Secret(secret),
            (None, Some(path)) => {
                let pem = std::fs::read(&path).map_err(|e| {
                    ConfigError::new(
                        "RELAY_JWT_PUBLIC_KEY",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                JwtKeySource::PublicKeyPem { path, pem }
            }
        };
        // The page signs its own admin token; with only a public key it cannot.
        if args.demo && !matches!(key, JwtKeySource::Secret(_)) {
            return Err(ConfigError::new(
                "RELAY_DEMO",
                "needs RELAY_JWT_SECRET: the demo page signs its own HS256 admin token",
            ));
        }
        if args.api_key.as_ref().is_some_and(|k| k.expose().is_empty()) {
            return Err(ConfigError::new(
                "RELAY_API_KEY",
                "must not be empty (unset it to turn the publish API off)",
            ));
        }
        let cors_origins: Vec<String> = args
            .cors_origins
            .iter()
            .map(|o| o.trim().trim_end_matches('/').to_owned())
            .filter(|o| !o.is_empty())
            .collect();
        for origin in &cors_origins {
            let looks_right = origin == "*"
                || ((origin.starts_with("http://") || origin.starts_with("https://"))
                    && !origin.contains(char::is_whitespace)
                    && origin
                        .split("://")
                        .nth(1)
                        .is_some_and(|h| !h.is_empty() && !h.contains('/')));
            if !looks_right {
                return Err(ConfigError::new(
                    "RELAY_CORS_ORIGINS",
                    "each origin must be scheme://host[:port] (e.g. https://app.example.com), or * alone",
                ));
            }
        }
        if cors_origins.len() > 1 && cors_origins.iter().any(|o| o == "*") {
            return Err(ConfigError::new(
                "RELAY_CORS_ORIGINS",
                "* allows any origin and cannot be combined with others",
            ));
        }
        let node_id = match args.node_id {
            Some(id) => id,
            None => default_node_id(),
        };
        if node_id.is_empty() || node_id.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ConfigError::new(
                "RELAY_NODE_ID",
                "must be non-empty, without spaces or control characters",
            ));
        }
        if args
            .key_prefix
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(ConfigError::new(
                "RELAY_KEY_PREFIX",
                "must not contain spaces or control characters",
            ));
        }
        // On a cluster the relay puts its own hash tags after the prefix; a
        // brace in the prefix would change which part Redis hashes.
        if redis.as_ref().is_some_and(RedisTarget::is_cluster)
            && args.key_prefix.contains(['{', '}'])
        {
            return Err(ConfigError::new(
                "RELAY_KEY_PREFIX",
                "must not contain { or } with REDIS_CLUSTER_URLS (the relay sets the hash tags itself)",
            ));
        }
        // Each number's own range is checked by its value parser; here only
        // the ranges that depend on another setting.
        // tungstenite needs a frame no larger than a message.
        if args.ws_max_frame_bytes > args.ws_max_message_bytes {
            return Err(ConfigError::new(
                "RELAY_WS_MAX_FRAME_BYTES",
                "must be at most RELAY_WS_MAX_MESSAGE_BYTES",
            ));
        }
        // Otherwise a driver sending steadily drops out of the cache between
        // two accepted updates.
        if args.location_min_interval_ms >= args.location_ttl_s.saturating_mul(1000) {
            return Err(ConfigError::new(
                "RELAY_LOCATION_MIN_INTERVAL_MS",
                "must be below RELAY_LOCATION_TTL_S (in ms)",
            ));
        }
        let trusted_proxies = args
            .trusted_proxies
            .iter()
            .filter(|p| !p.trim().is_empty())
            .map(|p| p.parse::<IpNet>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ConfigError::new("RELAY_TRUSTED_PROXIES", e))?;
        // The drain proper (stream hand-back, closing clients) keeps the
        // other half of the grace period at least.
        let shutdown_grace = Duration::from_secs(args.shutdown_grace_s);
        let shutdown_delay = match args.shutdown_delay_ms {
            Some(ms) if Duration::from_millis(ms) > shutdown_grace / 2 => {
                return Err(ConfigError::new(
                    "RELAY_SHUTDOWN_DELAY_MS",
                    "must be at most half of RELAY_SHUTDOWN_GRACE_S (in ms)",
                ));
            }
            Some(ms) => Duration::from_millis(ms),
            None => SHUTDOWN_DELAY.min(shutdown_grace / 3),
        };
        tracing_subscriber::EnvFilter::try_new(&args.log)
            .map_err(|e| ConfigError::new("RELAY_LOG", e.to_string()))?;

        Ok(Self {
            addr: args.addr,
            redis,
            redis_tls,
            jwt: JwtConfig {
                key,
                issuer: args.jwt_issuer.filter(|s| !s.is_empty()),
                audience: args.jwt_audience.filter(|s| !s.is_empty()),
                leeway: Duration::from_secs(args.jwt_leeway_s),
            },
            api_key: args.api_key,
            node_id,
            key_prefix: args.key_prefix,
            location: LocationConfig {
                ttl: Duration::from_secs(args.location_ttl_s),
                min_interval: Duration::from_millis(args.location_min_interval_ms),
            },
            client_events_per_s: args.client_events_per_s,
            token_refresh_notice: Duration::from_secs(args.token_refresh_notice_s),
            presence_grace: Duration::from_millis(args.presence_grace_ms),
            cors_origins,
            limits: ConnectionLimitsConfig {
                max_connections: args.max_connections,
                max_per_user: args.max_connections_per_user,
                new_per_s: args.max_new_connections_per_s,
                new_per_addr_per_s: args.max_new_connections_per_addr_per_s,
                trusted_proxies,
            },
            history: HistoryConfig {
                size: args.history_size,
                ttl: Duration::from_secs(args.history_ttl_s),
            },
            chat: ChatConfig {
                max_chars: args.chat_max_chars,
                history: args.chat_history,
            },
            stream: StreamConfig {
                claim_idle: Duration::from_millis(args.claim_idle_ms),
                max_deliveries: args.max_deliveries,
                max_event_bytes: args.max_event_bytes,
            },
            transport: TransportConfig {
                connect_timeout: Duration::from_millis(args.connect_timeout_ms),
                websocket_only: args.websocket_only,
                ws_max_message_bytes: args.ws_max_message_bytes,
                ws_max_frame_bytes: args.ws_max_frame_bytes,
                polling_max_payload_bytes: args.polling_max_payload_bytes,
                ping_interval: Duration::from_millis(args.ping_interval_ms),
                ping_timeout: Duration::from_millis(args.ping_timeout_ms),
            },
            shutdown_grace,
            shutdown_delay,
            http: HttpConfig {
                header_timeout: Duration::from_millis(args.http_header_timeout_ms),
                idle_timeout: Duration::from_millis(args.http_idle_timeout_ms),
                max_pending: args.max_pending_connections,
            },
            demo: args.demo,
            worker_threads: std::num::NonZeroUsize::new(args.worker_threads),
            log_format: args.log_format,
            log: args.log,
        })
    }

    /// Embedded single-node mode: no Redis, everything in process.
    pub fn is_embedded(&self) -> bool {
        self.redis.is_none()
    }
}

/// A duration on the command line: plain seconds (`90`, `0`) or humantime's
/// forms (`90s`, `15m`, `1h`, `7d`, `1h30m`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let parsed = match s.parse::<u64>() {
        Ok(secs) => Ok(Duration::from_secs(secs)),
        Err(_) => humantime::parse_duration(s),
    };
    parsed.map_err(|_| format!("'{s}' is not a duration like 90s, 15m, 1h or 7d"))
}

/// A `RELAY_*` environment variable that is no setting: most likely a
/// misspelt one, which would otherwise be ignored without a word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownVariable {
    pub name: String,
    /// The setting it is closest to, if one is close.
    pub did_you_mean: Option<String>,
}

/// `RELAY_*` names the project's own tooling sets around a node that are not
/// settings of `relay serve`: the commit baked in at build time (the Makefile
/// exports it), scripts/run.sh's mode switch and binaries, and the test
/// suite's log switch and crash hook.
const NOT_SETTINGS: [&str; 6] = [
    "RELAY_COMMIT",
    "RELAY_EMBEDDED",
    "RELAY_BIN",
    "RELAY_SIM_BIN",
    "RELAY_TEST_LOGS",
    "RELAY_TEST_CRASH_BEFORE_ACK",
];

/// The `RELAY_*` variables among `names` that `relay serve` does not read.
/// Only names are looked at, never values (they may be secrets). The known
/// names are the `env` names of [`ServeArgs`]' own clap definitions.
pub fn unknown_variables(
    names: impl IntoIterator<Item = std::ffi::OsString>,
) -> Vec<UnknownVariable> {
    let command = ServeArgs::augment_args(clap::Command::new("serve"));
    let known: Vec<String> = command
        .get_arguments()
        .filter_map(|a| a.get_env())
        .filter_map(|e| e.to_str())
        .map(str::to_owned)
        .collect();
    let mut unknown: Vec<UnknownVariable> = names
        .into_iter()
        .filter_map(|n| n.into_string().ok())
        .filter(|n| n.starts_with("RELAY_"))
        .filter(|n| !known.contains(n) && !NOT_SETTINGS.contains(&n.as_str()))
        .filter(|n| !is_service_link(n))
        .map(|name| {
            let did_you_mean = closest(&name, &known).map(str::to_owned);
            UnknownVariable { name, did_you_mean }
        })
        .collect();
    unknown.sort_by(|a, b| a.name.cmp(&b.name));
    unknown
}

/// Kubernetes injects `{SERVICE}_SERVICE_HOST`, `{SERVICE}_PORT_3000_TCP_ADDR`
/// and friends for every Service of the namespace, so a Service called
/// `relay` (or `relay-headless`) makes `RELAY_*` variables that are nobody's
/// typo. No setting ends like these.
fn is_service_link(name: &str) -> bool {
    if name.ends_with("_SERVICE_HOST") || name.ends_with("_PORT") {
        return true;
    }
    if let Some((_, rest)) = name.split_once("_SERVICE_PORT") {
        return rest.is_empty() || rest.starts_with('_');
    }
    // {SERVICE}_PORT_<port>_<PROTO>[_PROTO|_PORT|_ADDR]
    let parts: Vec<&str> = name.split('_').collect();
    parts.windows(3).any(|w| {
        w[0] == "PORT"
            && !w[1].is_empty()
            && w[1].bytes().all(|b| b.is_ascii_digit())
            && matches!(w[2], "TCP" | "UDP" | "SCTP")
    })
}

/// The known name a typo most likely meant: `REDIS_URL` for `RELAY_REDIS_URL`,
/// else the nearest by edit distance, if at most 3 edits away.
fn closest<'a>(name: &str, known: &'a [String]) -> Option<&'a str> {
    let bare = name.trim_start_matches("RELAY_");
    if let Some(k) = known.iter().find(|k| *k == bare) {
        return Some(k);
    }
    known
        .iter()
        .map(|k| (edit_distance(name, k), k))
        .filter(|(d, _)| *d <= 3)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k.as_str())
}

/// Levenshtein distance, counting a swap of two neighbours as one edit.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
}

/// hostname-pid: unique per process on a host, and stable for a pod's lifetime.
fn default_node_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "relay".to_owned());
    format!("{host}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert!(parse_duration("1x").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("-5").is_err());
    }
    use clap::{CommandFactory, Parser};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        let mut argv = vec!["relay"];
        argv.extend_from_slice(args);
        Config::from_args(Cli::parse_from(argv).serve)
    }

    #[test]
    fn redis_tls_files_are_checked_at_start() {
        let dir = std::env::temp_dir().join(format!("relay-tls-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let not_pem = dir.join("not.pem");
        std::fs::write(&not_pem, "not a certificate").expect("write");
        let not_pem = not_pem.to_str().expect("path");
        let missing = dir.join("missing.pem");
        let missing = missing.to_str().expect("path");
        let setting = |args: &[&str]| {
            let mut argv = vec!["--jwt-secret", "s"];
            argv.extend_from_slice(args);
            parse(&argv).expect_err("must be refused").setting
        };
        let tls = ["--redis-url", "rediss://127.0.0.1:6380"];
        assert_eq!(
            setting(&[&tls[..], &["--redis-ca-file", missing]].concat()),
            "RELAY_REDIS_CA_FILE"
        );
        assert_eq!(
            setting(&[&tls[..], &["--redis-ca-file", not_pem]].concat()),
            "RELAY_REDIS_CA_FILE"
        );
        assert_eq!(
            setting(&[&tls[..], &["--redis-client-cert", not_pem]].concat()),
            "RELAY_REDIS_CLIENT_KEY"
        );
        assert_eq!(
            setting(&[&tls[..], &["--redis-client-key", not_pem]].concat()),
            "RELAY_REDIS_CLIENT_CERT"
        );
        assert_eq!(
            setting(
                &[
                    &tls[..],
                    &[
                        "--redis-client-cert",
                        not_pem,
                        "--redis-client-key",
                        not_pem
                    ]
                ]
                .concat()
            ),
            "RELAY_REDIS_CLIENT_CERT"
        );
        // A CA for a URL without TLS would be ignored: refused instead.
        let pem = "-----BEGIN CERTIFICATE-----\nMIIBAA==\n-----END CERTIFICATE-----\n";
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, pem).expect("write");
        let ca = ca.to_str().expect("path");
        assert_eq!(
            setting(&[
                "--redis-url",
                "redis://127.0.0.1:6379",
                "--redis-ca-file",
                ca
            ]),
            "RELAY_REDIS_CA_FILE"
        );
        assert_eq!(setting(&["--redis-ca-file", ca]), "RELAY_REDIS_CA_FILE");
        let config = parse(&[
            "--jwt-secret",
            "s",
            "--redis-url",
            "rediss://h:6380",
            "--redis-ca-file",
            ca,
        ])
        .expect("valid");
        assert!(config.redis_tls.ca_pem.is_some() && config.redis_tls.client.is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn defaults_follow_the_contract() {
        let config = parse(&["--jwt-secret", "s"]).expect("valid");
        assert_eq!(config.addr.to_string(), "0.0.0.0:3000");
        assert!(config.is_embedded());
        assert_eq!(config.key_prefix, "relay:");
        assert_eq!(config.location.ttl, Duration::from_secs(120));
        assert_eq!(config.location.min_interval, Duration::from_millis(1000));
        assert_eq!(config.client_events_per_s, 20);
        assert_eq!(config.token_refresh_notice, Duration::from_secs(60));
        assert_eq!(config.presence_grace, Duration::from_millis(10_000));
        assert_eq!(config.history.size, 100);
        assert_eq!(config.history.ttl, Duration::from_secs(600));
        assert_eq!(config.chat.max_chars, 1000);
        assert_eq!(config.chat.history, 200);
        assert_eq!(config.stream.claim_idle, Duration::from_millis(5000));
        assert_eq!(config.stream.max_deliveries, 5);
        assert_eq!(config.stream.max_event_bytes, 65_536);
        assert!(!config.demo);
        assert_eq!(config.shutdown_delay, Duration::from_secs(5));
        assert_eq!(config.http.header_timeout, Duration::from_secs(10));
        assert_eq!(config.http.idle_timeout, Duration::from_secs(75));
        assert_eq!(config.http.max_pending, 10_000);
    }

    #[test]
    fn the_shutdown_delay_leaves_the_drain_half_the_grace_period() {
        let short = parse(&["--jwt-secret", "s", "--shutdown-grace-s", "3"]).unwrap();
        assert_eq!(short.shutdown_delay, Duration::from_secs(1));
        let off = parse(&["--jwt-secret", "s", "--shutdown-delay-ms", "0"]).unwrap();
        assert_eq!(off.shutdown_delay, Duration::ZERO);
        let err = parse(&[
            "--jwt-secret",
            "s",
            "--shutdown-grace-s",
            "4",
            "--shutdown-delay-ms",
            "2001",
        ])
        .unwrap_err();
        assert_eq!(err.setting, "RELAY_SHUTDOWN_DELAY_MS");
    }

    #[test]
    fn the_demo_needs_a_secret_to_sign_its_token() {
        assert!(parse(&["--jwt-secret", "s", "--demo"]).unwrap().demo);
        let err =
            parse(&["--jwt-public-key", "tests/fixtures/ec_public.pem", "--demo"]).unwrap_err();
        assert_eq!(err.setting, "RELAY_DEMO");
    }

    #[test]
    fn both_key_sources_is_an_error() {
        let err = parse(&["--jwt-secret", "s", "--jwt-public-key", "/k.pem"]).unwrap_err();
        assert_eq!(err.setting, "RELAY_JWT_SECRET");
    }

    #[test]
    fn cors_origins_are_checked() {
        let ok = parse(&[
            "--jwt-secret",
            "s",
            "--cors-origins",
            "https://app.example.com/, http://localhost:5173",
        ])
        .unwrap();
        assert_eq!(
            ok.cors_origins,
            ["https://app.example.com", "http://localhost:5173"]
        );
        for bad in [
            "app.example.com",
            "https://a.example/path",
            "*,https://a.example",
        ] {
            let err = parse(&["--jwt-secret", "s", "--cors-origins", bad]).unwrap_err();
            assert_eq!(err.setting, "RELAY_CORS_ORIGINS", "{bad}");
        }
    }

    #[test]
    fn no_key_source_is_an_error() {
        let err = parse(&[]).unwrap_err();
        assert_eq!(err.setting, "RELAY_JWT_SECRET");
    }

    #[test]
    fn unreadable_public_key_names_the_setting() {
        let err = parse(&["--jwt-public-key", "/nonexistent/key.pem"]).unwrap_err();
        assert_eq!(err.setting, "RELAY_JWT_PUBLIC_KEY");
    }

    #[test]
    fn cluster_seeds_are_checked_and_exclusive_with_redis_url() {
        let config = parse(&[
            "--jwt-secret",
            "s",
            "--redis-cluster-urls",
            "redis://127.0.0.1:7000, redis://127.0.0.1:7001",
        ])
        .unwrap();
        assert!(matches!(&config.redis, Some(RedisTarget::Cluster(seeds)) if seeds.len() == 2));
        let both = parse(&[
            "--jwt-secret",
            "s",
            "--redis-url",
            "redis://u:hunter2@h:1",
            "--redis-cluster-urls",
            "redis://u:hunter2@h:2",
        ])
        .unwrap_err();
        assert_eq!(both.setting, "REDIS_CLUSTER_URLS");
        assert!(both.reason.contains("REDIS_URL") && both.reason.contains("REDIS_CLUSTER_URLS"));
        assert!(!both.to_string().contains("hunter2"));
        let mixed = parse(&[
            "--jwt-secret",
            "s",
            "--redis-cluster-urls",
            "redis://u:hunter2@h:1,rediss://u:hunter2@h:2",
        ])
        .unwrap_err();
        assert_eq!(mixed.setting, "REDIS_CLUSTER_URLS");
        assert!(!mixed.to_string().contains("hunter2"));
        let bad = parse(&[
            "--jwt-secret",
            "s",
            "--redis-cluster-urls",
            "http://u:hunter2@h",
        ])
        .unwrap_err();
        assert_eq!(bad.setting, "REDIS_CLUSTER_URLS");
        assert!(!bad.to_string().contains("hunter2"));
        let braces = parse(&[
            "--jwt-secret",
            "s",
            "--redis-cluster-urls",
            "redis://h:1",
            "--key-prefix",
            "{relay}:",
        ])
        .unwrap_err();
        assert_eq!(braces.setting, "RELAY_KEY_PREFIX");
    }

    #[test]
    fn bad_redis_url_names_the_setting_without_the_password() {
        let err = parse(&["--jwt-secret", "s", "--redis-url", "http://u:hunter2@h"]).unwrap_err();
        assert_eq!(err.setting, "REDIS_URL");
        assert!(!err.to_string().contains("hunter2"));
    }

    /// The flag a refused value is reported under: clap's own error names
    /// it, as does a [`ConfigError`].
    fn refused(args: &[&str]) -> String {
        let mut argv = vec!["relay", "--jwt-secret", "s"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv) {
            Err(e) => e
                .get(clap::error::ContextKind::InvalidArg)
                .map(|a| a.to_string())
                .unwrap_or_default(),
            Ok(cli) => match Config::from_args(cli.serve) {
                Err(e) => e.setting.to_owned(),
                Ok(_) => panic!("{args:?} accepted"),
            },
        }
    }

    #[test]
    fn values_that_break_a_node_are_refused_naming_the_setting() {
        let cases: &[(&[&str], &str)] = &[
            (&["--max-deliveries", "0"], "--max-deliveries"),
            (&["--history-size", "0"], "--history-size"),
            (&["--chat-max-chars", "0"], "--chat-max-chars"),
            (&["--chat-history", "10001"], "--chat-history"),
            (
                &["--polling-max-payload-bytes", "1"],
                "--polling-max-payload-bytes",
            ),
            (
                &["--ws-max-message-bytes", "1024"],
                "--ws-max-message-bytes",
            ),
            (&["--ping-interval-ms", "0"], "--ping-interval-ms"),
            (&["--claim-idle-ms", "10"], "--claim-idle-ms"),
            (&["--connect-timeout-ms", "0"], "--connect-timeout-ms"),
            (&["--max-event-bytes", "1000"], "--max-event-bytes"),
            (&["--jwt-leeway-s", "86400"], "--jwt-leeway-s"),
            (
                &["--token-refresh-notice-s", "86401"],
                "--token-refresh-notice-s",
            ),
            (&["--presence-grace-ms", "3600001"], "--presence-grace-ms"),
            (
                &["--http-header-timeout-ms", "0"],
                "--http-header-timeout-ms",
            ),
            (&["--http-idle-timeout-ms", "0"], "--http-idle-timeout-ms"),
            (
                &["--max-pending-connections", "0"],
                "--max-pending-connections",
            ),
            (&["--shutdown-delay-ms", "3600001"], "--shutdown-delay-ms"),
            (
                &["--ws-max-frame-bytes", "1000000"],
                "RELAY_WS_MAX_FRAME_BYTES",
            ),
            (
                &[
                    "--location-ttl-s",
                    "2",
                    "--location-min-interval-ms",
                    "2000",
                ],
                "RELAY_LOCATION_MIN_INTERVAL_MS",
            ),
        ];
        for (args, setting) in cases {
            assert!(
                refused(args).contains(setting),
                "{args:?}: {}",
                refused(args)
            );
        }
    }

    #[test]
    fn every_number_has_a_range() {
        // Found from clap's own definitions, so a new number cannot forget its range.
        let command = Cli::command();
        let numbers: Vec<String> = command
            .get_arguments()
            .filter(|a| {
                a.get_default_values()
                    .first()
                    .and_then(|v| v.to_str())
                    .is_some_and(|v| v.parse::<u64>().is_ok())
            })
            .map(|a| format!("--{}", a.get_long().expect("long flag")))
            .collect();
        assert!(numbers.len() >= 17, "{numbers:?}");
        for flag in &numbers {
            for huge in ["18446744073709551615", "4294967296", "100000001"] {
                assert!(
                    refused(&[flag, huge]).contains(flag.as_str()),
                    "{flag} {huge}"
                );
            }
        }
    }

    #[test]
    fn zero_keeps_its_documented_meaning_of_no_limit() {
        let config = parse(&[
            "--jwt-secret",
            "s",
            "--location-min-interval-ms",
            "0",
            "--client-events-per-s",
            "0",
            "--max-connections",
            "0",
            "--max-connections-per-user",
            "0",
            "--max-new-connections-per-s",
            "0",
            "--jwt-leeway-s",
            "0",
            "--token-refresh-notice-s",
            "0",
        ])
        .expect("valid");
        assert_eq!(config.token_refresh_notice, Duration::ZERO);
        assert_eq!(config.location.min_interval, Duration::ZERO);
        assert_eq!(config.client_events_per_s, 0);
        assert_eq!(config.limits.max_connections, 0);
    }

    #[test]
    fn trusted_proxies_are_addresses_or_blocks() {
        let config = parse(&[
            "--jwt-secret",
            "s",
            "--trusted-proxies",
            "127.0.0.1, 10.0.0.0/8,fd00::/8",
        ])
        .expect("valid");
        let nets = &config.limits.trusted_proxies;
        assert_eq!(nets.len(), 3);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(nets[0].contains(ip("127.0.0.1")));
        assert!(nets[0].contains(ip("::ffff:127.0.0.1")));
        assert!(!nets[0].contains(ip("127.0.0.2")));
        assert!(nets[1].contains(ip("10.200.3.4")));
        assert!(!nets[1].contains(ip("11.0.0.1")));
        assert!(nets[2].contains(ip("fd12::1")));
        assert!(!nets[2].contains(ip("10.0.0.1")));
        assert!(
            "0.0.0.0/0"
                .parse::<IpNet>()
                .unwrap()
                .contains(ip("8.8.8.8"))
        );
        for bad in ["10.0.0.0/33", "proxy.local", "10.0.0.1/x"] {
            let err = parse(&["--jwt-secret", "s", "--trusted-proxies", bad]).unwrap_err();
            assert_eq!(err.setting, "RELAY_TRUSTED_PROXIES", "{bad}");
        }
        assert!(
            parse(&["--jwt-secret", "s"])
                .unwrap()
                .limits
                .trusted_proxies
                .is_empty()
        );
    }

    #[test]
    fn unknown_relay_variables_are_found_with_a_suggestion() {
        let names = [
            "RELAY_HISTROY_SIZE",
            "RELAY_JWT_SECRET",
            "RELAY_REDIS_URL",
            "RELAY_SOMETHING_ELSE",
            "RELAY_COMMIT",
            "REDIS_URL",
            "HOME",
            "RELAY_SERVICE_HOST",
            "RELAY_SERVICE_PORT",
            "RELAY_SERVICE_PORT_HTTP",
            "RELAY_PORT",
            "RELAY_PORT_3000_TCP",
            "RELAY_PORT_3000_TCP_ADDR",
            "RELAY_HEADLESS_SERVICE_HOST",
        ];
        let unknown = unknown_variables(names.iter().map(Into::into));
        let found: Vec<(&str, Option<&str>)> = unknown
            .iter()
            .map(|u| (u.name.as_str(), u.did_you_mean.as_deref()))
            .collect();
        assert_eq!(
            found,
            [
                ("RELAY_HISTROY_SIZE", Some("RELAY_HISTORY_SIZE")),
                ("RELAY_REDIS_URL", Some("REDIS_URL")),
                ("RELAY_SOMETHING_ELSE", None),
            ]
        );
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let config = parse(&[
            "--jwt-secret",
            "topsecret",
            "--api-key",
            "apikey123",
            "--redis-url",
            "redis://:pw999@localhost",
        ])
        .expect("valid");
        let debug = format!("{config:?}");
        for secret in ["topsecret", "apikey123", "pw999"] {
            assert!(!debug.contains(secret), "{secret} leaked: {debug}");
        }
    }
}
