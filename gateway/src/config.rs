//! Configuration: one serde tree, read once at start-up.
//!
//! A leaf every layer may use. Sources are layered file → `HERALD_*`
//! environment → command-line flags (flags and their env twins are parsed by
//! `main.rs` into [`Overrides`]); [`Config::validate`] runs once, and each
//! module receives only its own sub-struct.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("unknown environment variable {0}: not a Herald setting (see `herald serve --help`)")]
    UnknownEnv(String),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The whole configuration tree.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Shown to clients and in logs; defaults to a random id so two nodes never clash.
    pub node_id: Option<String>,
    /// `tracing` filter directive, e.g. `info` or `herald=debug`.
    pub log: String,
    /// `text` for people, `json` for log shippers.
    pub log_format: LogFormat,
    pub server: ServerConfig,
    pub api: ApiConfig,
    pub session: SessionConfig,
    pub broker: BrokerConfig,
    pub auth: AuthConfig,
    /// Rules for channels outside any configured namespace.
    pub channels: ChannelRuleConfig,
    /// Per-namespace rules: the part of a channel name before its first `:`.
    pub namespaces: BTreeMap<String, ChannelRuleConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            node_id: None,
            log: "info".to_owned(),
            log_format: LogFormat::Text,
            server: ServerConfig::default(),
            api: ApiConfig::default(),
            session: SessionConfig::default(),
            broker: BrokerConfig::Memory(MemoryConfig::default()),
            auth: AuthConfig::default(),
            channels: ChannelRuleConfig::default(),
            namespaces: BTreeMap::new(),
        }
    }
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Connect authentication. With none of `jwt_secret`, `jwt_public_key`,
/// `jwks_file` set the node runs in open mode (development only).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// HS256 shared secret (at least 32 bytes, as RFC 7518 asks).
    pub jwt_secret: Option<String>,
    /// PEM public key for RS256 or ES256 tokens.
    pub jwt_public_key: Option<PathBuf>,
    /// Pins the algorithm of `jwt_public_key`; default: the one its key type implies.
    pub jwt_algorithm: Option<JwtAlgorithm>,
    /// JWKS document (RSA and P-256 keys, chosen by `kid`), re-read when it changes
    /// so keys can be rotated without a restart.
    pub jwks_file: Option<PathBuf>,
    /// When set, tokens must carry this `iss`.
    pub issuer: Option<String>,
    /// When set, tokens must carry this `aud`.
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf` between the token issuer and this node.
    #[serde(with = "duration_str")]
    pub leeway: Duration,
    /// Connections one user may hold on this node; 0 = no limit. Caps the damage
    /// of one leaked token or one runaway client.
    pub max_connections_per_user: usize,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            jwt_secret: None,
            jwt_public_key: None,
            jwt_algorithm: None,
            jwks_file: None,
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(5),
            max_connections_per_user: 64,
        }
    }
}

impl AuthConfig {
    /// True when connect tokens are checked.
    pub fn enabled(&self) -> bool {
        self.jwt_secret.is_some() || self.jwt_public_key.is_some() || self.jwks_file.is_some()
    }
}

/// Signature algorithms a key can be pinned to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum JwtAlgorithm {
    HS256,
    RS256,
    ES256,
}

/// Who may do what on a set of channels.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChannelRuleConfig {
    pub subscribe: SubscribeRule,
    /// Whether clients may `emit`; unset = allowed in open mode, refused with auth.
    pub client_emit: Option<bool>,
    /// Overrides the broker's history size for these channels.
    pub history_size: Option<usize>,
    /// Overrides the broker's history TTL for these channels.
    #[serde(with = "opt_duration_str")]
    pub history_ttl: Option<Duration>,
}

/// Who may subscribe.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubscribeRule {
    /// Any connected client.
    #[default]
    Any,
    /// Only users whose connect token's `channels` claim lists the channel
    /// (or a `*` pattern matching it), or who present a subscribe token.
    Claim,
}

/// Listeners and process lifecycle.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Public listener: `/ws` and the demo page (plus the admin routes unless `admin_listen` is set).
    pub listen: SocketAddr,
    /// When set, the publish API, metrics and probes move here, off the public listener.
    pub admin_listen: Option<SocketAddr>,
    /// Open mode (no auth) on a non-loopback address is refused unless this is set.
    pub allow_open: bool,
    /// Window over which clients are told to reconnect on SIGTERM, so they do not stampede.
    #[serde(with = "duration_str")]
    pub drain_timeout: Duration,
    /// Runtime worker threads; `None` = one per CPU. Several nodes sharing a
    /// machine run best with their cores split between them (measured:
    /// docs/benchmarks.md), since work stealing across oversubscribed cores
    /// costs more than it gains.
    pub worker_threads: Option<usize>,
    /// WebSocket sessions this node accepts at once; 0 = as many as file
    /// descriptors allow. Beyond it, upgrades get HTTP 503 so a load
    /// balancer can try another node.
    pub max_connections: usize,
    /// Browser origins allowed to open WebSockets (exact `scheme://host[:port]`);
    /// empty = any. Requests without an `Origin` header (non-browsers) pass.
    pub allowed_origins: Vec<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: None,
            allow_open: false,
            drain_timeout: Duration::from_secs(10),
            worker_threads: None,
            max_connections: 0,
            allowed_origins: Vec::new(),
        }
    }
}

/// The server publish API.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Bearer keys accepted by `/api/v1/*`; none configured = no API auth (development).
    pub keys: Vec<String>,
    /// File with one key per line (`#` comments), so a Kubernetes secret can be mounted.
    pub keys_file: Option<PathBuf>,
}

impl ApiConfig {
    /// Every accepted key: the listed ones plus the file's, read now.
    pub fn all_keys(&self) -> Result<Vec<String>, ConfigError> {
        let mut keys = self.keys.clone();
        if let Some(path) = &self.keys_file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            keys.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_owned),
            );
        }
        Ok(keys)
    }
}

/// Per-connection behaviour.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    /// A socket that never says `connect` is closed with 4502 after this long.
    #[serde(with = "duration_str")]
    pub connect_timeout: Duration,
    #[serde(with = "duration_str")]
    pub ping_interval: Duration,
    /// How long after a server ping the client's pong may take before 4002.
    #[serde(with = "duration_str")]
    pub pong_timeout: Duration,
    /// Largest `data` payload in bytes; a frame larger than this plus an
    /// envelope allowance is closed with 4503.
    pub max_payload: usize,
    /// Frames buffered per connection before it counts as a slow consumer (4001).
    pub outbound_queue: usize,
    /// Bytes buffered per connection before it counts as a slow consumer
    /// (4001): with payloads of up to `max_payload`, a frame bound alone
    /// would let one client that stops reading hold tens of MiB.
    pub outbound_queue_bytes: usize,
    pub max_subscriptions: usize,
    /// Sustained client commands per second per connection (token bucket);
    /// beyond it commands are refused with `rate_limited`.
    pub command_rate: u32,
    /// Commands a connection may send in a burst above the sustained rate.
    pub command_burst: u32,
    /// Most publications replayed per channel on recovery; a larger gap is `recovered: false`.
    pub recovery_max: usize,
    /// Secrets for reconnect tokens: the first signs, all verify (rotation).
    /// Every node of a cluster needs the same list; when empty, nodes on one
    /// Redis agree on a generated secret, and a single node makes one up.
    pub reconnect_secrets: Vec<String>,
    /// How long a reconnect token stays valid after it was issued.
    #[serde(with = "duration_str")]
    pub reconnect_ttl: Duration,
    /// How long a final `disconnect` + close frame may take to reach a client.
    #[serde(with = "duration_str")]
    pub close_timeout: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(25),
            pong_timeout: Duration::from_secs(10),
            max_payload: 64 * 1024,
            outbound_queue: 1024,
            outbound_queue_bytes: 2 * 1024 * 1024,
            max_subscriptions: 256,
            command_rate: 100,
            command_burst: 200,
            recovery_max: 1000,
            reconnect_secrets: Vec::new(),
            reconnect_ttl: Duration::from_secs(300),
            close_timeout: Duration::from_secs(3),
        }
    }
}

impl SessionConfig {
    /// Envelope allowance on top of `max_payload` for a whole client frame.
    pub fn max_frame(&self) -> usize {
        self.max_payload + 4096
    }
}

/// Which broker backend carries publications between nodes.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum BrokerConfig {
    /// Single node, nothing else to run.
    Memory(MemoryConfig),
    /// Cluster node: every node on the same Redis sees every publication.
    Redis(RedisConfig),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryConfig {
    /// A channel nobody subscribes to or publishes on forgets its epoch/offset
    /// after this long, so millions of one-off channel names do not pile up.
    #[serde(with = "duration_str")]
    pub state_ttl: Duration,
    /// Latest publications kept per channel for recovery (0 turns history off).
    pub history_size: usize,
    /// Publications older than this are not replayed.
    #[serde(with = "duration_str")]
    pub history_ttl: Duration,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        let h = HistoryConfig::default();
        Self {
            state_ttl: Duration::from_secs(3600),
            history_size: h.size,
            history_ttl: h.ttl,
        }
    }
}

/// How much of each channel's past is kept for recovery; both backends
/// carry these two settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryConfig {
    pub size: usize,
    pub ttl: Duration,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            size: 100,
            ttl: Duration::from_secs(300),
        }
    }
}

impl BrokerConfig {
    pub fn history(&self) -> HistoryConfig {
        match self {
            Self::Memory(m) => HistoryConfig {
                size: m.history_size,
                ttl: m.history_ttl,
            },
            Self::Redis(r) => HistoryConfig {
                size: r.history_size,
                ttl: r.history_ttl,
            },
        }
    }

    fn set_history(&mut self, size: Option<usize>, ttl: Option<Duration>) {
        let (s, t) = match self {
            Self::Memory(m) => (&mut m.history_size, &mut m.history_ttl),
            Self::Redis(r) => (&mut r.history_size, &mut r.history_ttl),
        };
        set(s, size);
        set(t, ttl);
    }

    fn state_ttl(&self) -> Duration {
        match self {
            Self::Memory(m) => m.state_ttl,
            Self::Redis(r) => r.state_ttl,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    pub url: String,
    /// Expiry of a channel's epoch/offset key, refreshed by every publish and subscribe.
    #[serde(with = "duration_str")]
    pub state_ttl: Duration,
    /// Bound on every Redis command, so a hung Redis turns into `unavailable` quickly.
    #[serde(with = "duration_str")]
    pub timeout: Duration,
    /// Latest publications kept per channel in a Redis stream (0 turns history off).
    pub history_size: usize,
    /// Stream entries older than this are not replayed; the stream itself expires after it.
    #[serde(with = "duration_str")]
    pub history_ttl: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".to_owned(),
            state_ttl: Duration::from_secs(3600),
            timeout: Duration::from_secs(2),
            history_size: HistoryConfig::default().size,
            history_ttl: HistoryConfig::default().ttl,
        }
    }
}

/// Values from flags or their `HERALD_*` env twins; `None` keeps the file's value.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub admin_listen: Option<SocketAddr>,
    pub redis_url: Option<String>,
    pub node_id: Option<String>,
    pub allow_open: bool,
    pub log: Option<String>,
    pub drain_timeout: Option<Duration>,
    pub connect_timeout: Option<Duration>,
    pub ping_interval: Option<Duration>,
    pub pong_timeout: Option<Duration>,
    pub max_payload: Option<usize>,
    pub outbound_queue: Option<usize>,
    pub outbound_queue_bytes: Option<usize>,
    pub max_subscriptions: Option<usize>,
    pub worker_threads: Option<usize>,
    pub history_size: Option<usize>,
    pub history_ttl: Option<Duration>,
    pub recovery_max: Option<usize>,
    pub reconnect_secrets: Vec<String>,
    pub reconnect_ttl: Option<Duration>,
    pub api_keys: Vec<String>,
    pub api_keys_file: Option<PathBuf>,
    pub command_rate: Option<u32>,
    pub command_burst: Option<u32>,
    pub max_connections: Option<usize>,
    pub allowed_origins: Vec<String>,
    pub jwt_secret: Option<String>,
    pub jwt_public_key: Option<PathBuf>,
    pub jwks_file: Option<PathBuf>,
    pub jwt_issuer: Option<String>,
    pub jwt_audience: Option<String>,
    pub max_connections_per_user: Option<usize>,
    pub log_format: Option<LogFormat>,
}

impl Config {
    /// Parses a TOML document; unknown keys are rejected with their name.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })
    }

    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// Layers flag/env values over the file's.
    pub fn apply(&mut self, o: Overrides) {
        set(&mut self.server.listen, o.listen);
        set(&mut self.server.admin_listen, o.admin_listen.map(Some));
        if let Some(url) = o.redis_url {
            match &mut self.broker {
                BrokerConfig::Redis(r) => r.url = url,
                BrokerConfig::Memory(_) => {
                    self.broker = BrokerConfig::Redis(RedisConfig {
                        url,
                        ..RedisConfig::default()
                    })
                }
            }
        }
        set(&mut self.node_id, o.node_id.map(Some));
        if o.allow_open {
            self.server.allow_open = true;
        }
        set(&mut self.log, o.log);
        set(&mut self.log_format, o.log_format);
        set(&mut self.server.drain_timeout, o.drain_timeout);
        set(&mut self.server.worker_threads, o.worker_threads.map(Some));
        set(&mut self.server.max_connections, o.max_connections);
        if !o.allowed_origins.is_empty() {
            self.server.allowed_origins = o.allowed_origins;
        }
        self.broker.set_history(o.history_size, o.history_ttl);
        if !o.api_keys.is_empty() {
            self.api.keys = o.api_keys;
        }
        set(&mut self.api.keys_file, o.api_keys_file.map(Some));
        let s = &mut self.session;
        set(&mut s.connect_timeout, o.connect_timeout);
        set(&mut s.ping_interval, o.ping_interval);
        set(&mut s.pong_timeout, o.pong_timeout);
        set(&mut s.max_payload, o.max_payload);
        set(&mut s.outbound_queue, o.outbound_queue);
        set(&mut s.outbound_queue_bytes, o.outbound_queue_bytes);
        set(&mut s.max_subscriptions, o.max_subscriptions);
        set(&mut s.recovery_max, o.recovery_max);
        set(&mut s.command_rate, o.command_rate);
        set(&mut s.command_burst, o.command_burst);
        if !o.reconnect_secrets.is_empty() {
            s.reconnect_secrets = o.reconnect_secrets;
        }
        set(&mut s.reconnect_ttl, o.reconnect_ttl);
        let a = &mut self.auth;
        set(&mut a.jwt_secret, o.jwt_secret.map(Some));
        set(&mut a.jwt_public_key, o.jwt_public_key.map(Some));
        set(&mut a.jwks_file, o.jwks_file.map(Some));
        set(&mut a.issuer, o.jwt_issuer.map(Some));
        set(&mut a.audience, o.jwt_audience.map(Some));
        set(&mut a.max_connections_per_user, o.max_connections_per_user);
    }

    /// Checks cross-field rules once, before anything listens.
    ///
    /// Open mode: no connect authentication configured.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let open_mode = !self.auth.enabled();
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let a = &self.auth;
        let sources = [
            a.jwt_secret.is_some(),
            a.jwt_public_key.is_some(),
            a.jwks_file.is_some(),
        ];
        if sources.iter().filter(|s| **s).count() > 1 {
            return bad(
                "auth: set only one of jwt_secret, jwt_public_key and jwks_file".to_owned(),
            );
        }
        if let Some(s) = &a.jwt_secret {
            if s.len() < 32 {
                return bad(format!(
                    "auth.jwt_secret needs at least 32 bytes for HS256, got {}",
                    s.len()
                ));
            }
        }
        match a.jwt_algorithm {
            Some(JwtAlgorithm::HS256) if a.jwt_secret.is_none() => {
                return bad("auth.jwt_algorithm = \"HS256\" needs auth.jwt_secret".to_owned());
            }
            Some(alg @ (JwtAlgorithm::RS256 | JwtAlgorithm::ES256))
                if a.jwt_public_key.is_none() && a.jwks_file.is_none() =>
            {
                return bad(format!(
                    "auth.jwt_algorithm = \"{alg:?}\" needs auth.jwt_public_key or auth.jwks_file"
                ));
            }
            _ => {}
        }
        if a.leeway > Duration::from_secs(300) {
            return bad(format!(
                "auth.leeway must be at most 5m, got {:?}",
                a.leeway
            ));
        }
        let state_ttl = self.broker.state_ttl();
        let rules = std::iter::once(("channels".to_owned(), &self.channels)).chain(
            self.namespaces
                .iter()
                .map(|(n, r)| (format!("namespaces.{n}"), r)),
        );
        for (name, r) in rules {
            if r.history_size.is_some_and(|n| n > 100_000) {
                return bad(format!("{name}.history_size must be at most 100000"));
            }
            if r.history_ttl
                .is_some_and(|t| t < Duration::from_secs(1) || t > state_ttl)
            {
                return bad(format!(
                    "{name}.history_ttl must be between 1s and broker.state_ttl ({state_ttl:?})"
                ));
            }
        }
        for ns in self.namespaces.keys() {
            if ns.is_empty()
                || ns.len() > 64
                || !ns
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            {
                return bad(format!(
                    "namespace name {ns:?}: use 1-64 of a-z A-Z 0-9 _ - ."
                ));
            }
        }
        let s = &self.session;
        for (name, d) in [
            ("session.connect_timeout", s.connect_timeout),
            ("session.ping_interval", s.ping_interval),
            ("session.pong_timeout", s.pong_timeout),
            ("session.close_timeout", s.close_timeout),
        ] {
            if d.is_zero() {
                return bad(format!("{name} must be greater than zero"));
            }
        }
        if s.max_payload == 0 || s.max_payload > 16 * 1024 * 1024 {
            return bad(format!(
                "session.max_payload must be between 1 and 16777216 bytes, got {}",
                s.max_payload
            ));
        }
        if s.outbound_queue < 8 {
            return bad(format!(
                "session.outbound_queue must be at least 8, got {}",
                s.outbound_queue
            ));
        }
        if s.outbound_queue_bytes < 2 * s.max_frame() {
            return bad(format!(
                "session.outbound_queue_bytes must hold two of the largest frames \
                 (2 × (max_payload + 4096) = {}), got {}",
                2 * s.max_frame(),
                s.outbound_queue_bytes
            ));
        }
        if let Some(n) = self.server.worker_threads {
            if n == 0 || n > 1024 {
                return bad(format!("server.worker_threads must be 1 to 1024, got {n}"));
            }
        }
        if let Some(short) = s.reconnect_secrets.iter().find(|k| k.len() < 16) {
            return bad(format!(
                "session.reconnect_secrets: each secret needs at least 16 bytes, one has {}",
                short.len()
            ));
        }
        if s.command_rate == 0 || s.command_burst == 0 {
            return bad(
                "session.command_rate and session.command_burst must be at least 1".to_owned(),
            );
        }
        if s.reconnect_ttl < Duration::from_secs(1) {
            return bad("session.reconnect_ttl must be at least 1s".to_owned());
        }
        if s.max_subscriptions == 0 {
            return bad("session.max_subscriptions must be at least 1".to_owned());
        }
        if let Some(id) = &self.node_id {
            if id.is_empty() || id.len() > 64 || id.chars().any(|c| c.is_whitespace()) {
                return bad(format!(
                    "node_id must be 1-64 bytes without whitespace, got {id:?}"
                ));
            }
        }
        match &self.broker {
            BrokerConfig::Redis(r) => {
                if r.url.starts_with("rediss://") {
                    return bad(
                        "broker.url: TLS (rediss://) is not supported by this build; \
                         reach Redis over a private network or a TLS sidecar"
                            .to_owned(),
                    );
                }
                if !(r.url.starts_with("redis://")
                    || r.url.starts_with("redis+unix://")
                    || r.url.starts_with("unix://"))
                {
                    return bad(format!(
                        "broker.url must start with redis:// (got {:?})",
                        r.url
                    ));
                }
                if r.timeout.is_zero() {
                    return bad("broker.timeout must be greater than zero".to_owned());
                }
                if r.state_ttl < Duration::from_secs(1) {
                    return bad("broker.state_ttl must be at least 1s".to_owned());
                }
            }
            BrokerConfig::Memory(m) => {
                if m.state_ttl < Duration::from_secs(1) {
                    return bad("broker.state_ttl must be at least 1s".to_owned());
                }
            }
        }
        let h = self.broker.history();
        if h.size > 100_000 {
            return bad(format!(
                "broker.history_size must be at most 100000, got {}",
                h.size
            ));
        }
        if h.size > 0 && (h.ttl < Duration::from_secs(1) || h.ttl > self.broker.state_ttl()) {
            return bad(format!(
                "broker.history_ttl must be between 1s and broker.state_ttl ({:?}), got {:?}",
                self.broker.state_ttl(),
                h.ttl
            ));
        }
        let api_keys = self.api.all_keys()?;
        if let Some(short) = api_keys.iter().find(|k| k.len() < 16) {
            return bad(format!(
                "api keys need at least 16 bytes each, one has {}",
                short.len()
            ));
        }
        if open_mode && !self.server.allow_open {
            // The admin listener is fine anywhere once the API needs keys
            // (its probes and metrics are meant to be scraped).
            let admin = self.server.admin_listen.filter(|_| api_keys.is_empty());
            let exposed = std::iter::once(self.server.listen)
                .chain(admin)
                .find(|a| !a.ip().is_loopback());
            if let Some(addr) = exposed {
                return bad(format!(
                    "refusing to run without authentication on non-loopback address {addr}; \
                     pass --allow-open (HERALD_ALLOW_OPEN=true) if you really mean it"
                ));
            }
        }
        // With client auth on, the publish API must not be left open to the network either.
        let api_addr = self.server.admin_listen.unwrap_or(self.server.listen);
        if !open_mode
            && api_keys.is_empty()
            && !self.server.allow_open
            && !api_addr.ip().is_loopback()
        {
            return bad(format!(
                "the publish API listens on non-loopback address {api_addr} without API keys; \
                 set --api-key/--api-keys-file, move it with --admin-listen to a loopback \
                 address, or pass --allow-open if the network is trusted"
            ));
        }
        if let Some(admin) = self.server.admin_listen {
            if admin == self.server.listen {
                return bad("server.admin_listen must differ from server.listen".to_owned());
            }
        }
        Ok(())
    }

    /// The rules for channels in namespace `ns` (or outside any: `None`).
    pub fn channel_rule(&self, ns: Option<&str>) -> &ChannelRuleConfig {
        ns.and_then(|n| self.namespaces.get(n))
            .unwrap_or(&self.channels)
    }
}

/// Overwrites `slot` when a flag or env value was given.
fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *slot = v;
    }
}

/// Rejects `HERALD_*` variables that no flag reads, naming the first one.
pub fn check_env(vars: impl Iterator<Item = String>, known: &[&str]) -> Result<(), ConfigError> {
    for name in vars {
        if name.starts_with("HERALD_") && !known.contains(&name.as_str()) {
            return Err(ConfigError::UnknownEnv(name));
        }
    }
    Ok(())
}

/// Durations written as humane strings: `"10s"`, `"250ms"`, `"5m"`.
mod duration_str {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map_err(|e| serde::de::Error::custom(format!("invalid duration {s:?}: {e}")))
    }
}

/// Optional humane durations.
mod opt_duration_str {
    use serde::Deserializer;
    use std::time::Duration;

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        super::duration_str::deserialize(d).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_named() {
        let err = Config::from_toml("[session]\nping_intervall = \"1s\"\n", Path::new("h.toml"))
            .expect_err("unknown key");
        assert!(err.to_string().contains("ping_intervall"), "{err}");
        let err = Config::from_toml("listen = \"127.0.0.1:1\"\n", Path::new("h.toml"))
            .expect_err("top-level unknown key");
        assert!(err.to_string().contains("listen"), "{err}");
    }

    #[test]
    fn file_then_overrides() {
        let mut c = Config::from_toml(
            "node_id = \"a\"\n[server]\nlisten = \"127.0.0.1:9000\"\n[session]\nping_interval = \"5s\"\n[broker]\ntype = \"redis\"\nurl = \"redis://h:1\"\n",
            Path::new("h.toml"),
        )
        .expect("valid");
        assert_eq!(c.session.ping_interval, Duration::from_secs(5));
        assert_eq!(c.session.pong_timeout, Duration::from_secs(10));
        c.apply(Overrides {
            listen: Some("127.0.0.1:9001".parse().expect("addr")),
            redis_url: Some("redis://other:2".to_owned()),
            ..Overrides::default()
        });
        assert_eq!(c.server.listen.port(), 9001);
        assert_eq!(c.node_id.as_deref(), Some("a"));
        match &c.broker {
            BrokerConfig::Redis(r) => assert_eq!(r.url, "redis://other:2"),
            BrokerConfig::Memory(_) => panic!("expected redis"),
        }
        c.validate().expect("loopback open mode is fine");
    }

    #[test]
    fn open_mode_needs_consent_off_loopback() {
        let mut c = Config::default();
        c.server.listen = "0.0.0.0:8080".parse().expect("addr");
        let err = c.validate().expect_err("refused");
        assert!(err.to_string().contains("--allow-open"), "{err}");
        c.server.allow_open = true;
        c.validate().expect("consented");
        let mut c = Config::default();
        c.server.admin_listen = Some("0.0.0.0:9090".parse().expect("addr"));
        let err = c.validate().expect_err("admin API exposed too");
        assert!(err.to_string().contains("0.0.0.0:9090"), "{err}");
        c.api.keys = vec!["a-key-of-sixteen-bytes".to_owned()];
        c.validate().expect("a keyed API may listen anywhere");
        // Client auth on, API unkeyed on the public address: refused.
        let mut c = Config::default();
        c.auth.jwt_secret = Some("an-hs256-secret-of-at-least-32-bytes!!".to_owned());
        c.server.listen = "0.0.0.0:8080".parse().expect("addr");
        let err = c.validate().expect_err("unkeyed API exposed");
        assert!(err.to_string().contains("without API keys"), "{err}");
        c.server.admin_listen = Some("127.0.0.1:9090".parse().expect("addr"));
        c.validate()
            .expect("API on loopback, clients authenticated");
    }

    #[test]
    fn unknown_env_is_named() {
        let vars = ["PATH", "HERALD_LISTEN", "HERALD_LISTN"].map(str::to_owned);
        let err = check_env(vars.into_iter(), &["HERALD_LISTEN"]).expect_err("typo");
        assert!(err.to_string().contains("HERALD_LISTN"));
    }
}
