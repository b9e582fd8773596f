//! Configuration: one serde tree, read once at start-up.
//!
//! A leaf every layer may use. Sources are layered file → `HERALD_*`
//! environment → command-line flags. Every setting with a flag is declared
//! once, in [`flags`] ([`Overrides`]): flag, env twin, help, the key it sets;
//! its default is the one here. [`Config::validate`] ([`validate`]) runs
//! once and reports every problem; each module then receives only its own
//! sub-struct.

mod flags;
mod validate;

pub use flags::{Overrides, Setting, reference_table};
pub use validate::Problems;

use serde::{Deserialize, Serialize};
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
    Invalid(Problems),
}

/// The whole configuration tree.
#[derive(Debug, Clone, Deserialize, Serialize)]
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
    /// HTTP calls to the backend at connect, subscribe, publish and refresh.
    pub hooks: HooksConfig,
    /// Who is subscribed where (namespaces opt in with `presence = true`).
    pub presence: PresenceConfig,
    /// Events POSTed to the backend: channels occupied/vacated, users connected/disconnected.
    pub webhooks: WebhooksConfig,
    /// Rules for channels outside any configured namespace.
    pub channels: ChannelRuleConfig,
    /// Per-namespace rules: the part of a channel name before its first `:`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
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
            hooks: HooksConfig::default(),
            presence: PresenceConfig::default(),
            webhooks: WebhooksConfig::default(),
            channels: ChannelRuleConfig::default(),
            namespaces: BTreeMap::new(),
        }
    }
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
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
#[derive(Debug, Clone, Deserialize, Serialize)]
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

impl Config {
    /// Open development mode: neither JWTs nor a connect hook say who connects.
    pub fn open_mode(&self) -> bool {
        !self.auth.enabled() && self.hooks.connect_url.is_none()
    }
}

/// Signature algorithms a key can be pinned to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum JwtAlgorithm {
    HS256,
    RS256,
    ES256,
}

/// Who may do what on a set of channels.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
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
    /// Ask the backend (`hooks.subscribe_url`) whether a client may subscribe
    /// here, instead of these rules.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub subscribe_hook: bool,
    /// Send client emits here to the backend (`hooks.publish_url`), which
    /// may allow, refuse or rewrite them.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub publish_hook: bool,
    /// Keep a cluster-wide list of who is subscribed here (`presence`,
    /// `presence_stats`, `GET /api/v1/presence`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub presence: bool,
    /// Tell subscribers here when a client joins or leaves (needs
    /// `presence`; at most once, not in history).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub join_leave: bool,
}

/// Webhooks (`docs/hooks.md#webhooks`): events POSTed to `url`, signed
/// with `secret`, delivered at least once.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// Where events are POSTed (`http://`); unset = no webhooks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// HMAC-SHA256 key of the `x-herald-signature` header; required with `url`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Which events to send: `channel_occupied`, `channel_vacated`,
    /// `user_connected`, `user_disconnected`.
    pub events: Vec<String>,
    /// Time the backend has to answer one POST.
    #[serde(with = "duration_str")]
    pub timeout: Duration,
    /// Tries per event (the first included), with exponential backoff.
    pub max_attempts: u32,
    /// Events waiting to be sent; past it new events are dropped (counted).
    pub queue: usize,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            url: None,
            secret: None,
            events: [
                "channel_occupied",
                "channel_vacated",
                "user_connected",
                "user_disconnected",
            ]
            .map(str::to_owned)
            .to_vec(),
            timeout: Duration::from_secs(2),
            max_attempts: 6,
            queue: 10_000,
        }
    }
}

/// Presence: the cluster-wide list of who is subscribed to a channel.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PresenceConfig {
    /// How often a node says it is alive. A node that stops (crash,
    /// partition) has its clients left out of every answer within 2 ×
    /// this, and `leave` follows within 3 ×.
    #[serde(with = "duration_str")]
    pub heartbeat: Duration,
    /// Most connections one channel's presence holds; a subscribe past it
    /// is refused, so one channel cannot make every answer unbounded.
    pub max_clients: usize,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(5),
            max_clients: 1000,
        }
    }
}

/// Proxy hooks: the backend decides, over HTTP, who connects (and as whom),
/// who subscribes where, what clients publish, and how long a connection
/// lives (`docs/hooks.md`). Each URL is optional; unset = no hook.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HooksConfig {
    /// Called at `connect` for connections without a JWT (every connection
    /// with `connect_always`); its answer names the user.
    pub connect_url: Option<String>,
    /// Called at `subscribe` on channels of namespaces with `subscribe_hook = true`.
    pub subscribe_url: Option<String>,
    /// Called at `emit` on channels of namespaces with `publish_hook = true`.
    pub publish_url: Option<String>,
    /// Called at a `refresh` without a token; its answer moves the expiry.
    pub refresh_url: Option<String>,
    /// Time the backend has to answer; past it the call fails closed.
    #[serde(with = "duration_str")]
    pub timeout: Duration,
    /// Client request headers (lower-case names) sent to the backend with every call.
    pub forward_headers: Vec<String>,
    /// Send every connection to `connect_url`, even those presenting a JWT
    /// (the token is passed along).
    pub connect_always: bool,
}

impl Default for HooksConfig {
    fn default() -> Self {
        Self {
            connect_url: None,
            subscribe_url: None,
            publish_url: None,
            refresh_url: None,
            timeout: Duration::from_secs(1),
            forward_headers: ["cookie", "authorization", "user-agent", "origin"]
                .map(str::to_owned)
                .to_vec(),
            connect_always: false,
        }
    }
}

impl HooksConfig {
    /// Every configured URL with its key, for validation.
    pub(crate) fn urls(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            ("hooks.connect_url", &self.connect_url),
            ("hooks.subscribe_url", &self.subscribe_url),
            ("hooks.publish_url", &self.publish_url),
            ("hooks.refresh_url", &self.refresh_url),
        ]
        .into_iter()
        .filter_map(|(k, u)| u.as_deref().map(|u| (k, u)))
    }
}

/// Who may subscribe.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
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
#[derive(Debug, Clone, Deserialize, Serialize)]
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
    /// Time a connection has to send a complete request head (and its PROXY
    /// header), counted from when it opens or from the end of its previous
    /// response; so it is also the keep-alive idle timeout. Without it, a
    /// socket that sends half a request holds a file descriptor forever.
    #[serde(with = "duration_str")]
    pub header_timeout: Duration,
    /// Concurrent connections one client address may hold on the public
    /// listener, before and after upgrade; 0 = no limit. Sized so that a
    /// NAT'd office does not reach it, and one address cannot take all the
    /// node's file descriptors.
    pub max_connections_per_ip: usize,
    /// New public connection attempts one client address may make per
    /// second, sustained (refused ones count too); 0 = no limit.
    pub connection_rate_per_ip: u32,
    /// New public connections one client address may open in a burst (a
    /// whole office reconnecting after a restart).
    pub connection_burst_per_ip: u32,
    /// Load balancers trusted to name the client: addresses or CIDR ranges.
    /// Only their `X-Forwarded-For`/`Forwarded` headers (and PROXY headers)
    /// are believed; anyone else's are ignored.
    pub trusted_proxies: Vec<String>,
    /// Every public connection starts with a PROXY protocol (v1 or v2)
    /// header, as HAProxy's `send-proxy` sends it. With `trusted_proxies`
    /// set, connections from other peers are refused.
    pub proxy_protocol: bool,
    /// File descriptors kept free of public connections, so probes, the
    /// admin listener and existing sessions keep working when the node is full.
    pub fd_reserve: usize,
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
            header_timeout: Duration::from_secs(10),
            max_connections_per_ip: 4096,
            connection_rate_per_ip: 200,
            connection_burst_per_ip: 1000,
            trusted_proxies: Vec::new(),
            proxy_protocol: false,
            fd_reserve: 256,
        }
    }
}

/// The server publish API.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
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
#[derive(Debug, Clone, Deserialize, Serialize)]
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
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum BrokerConfig {
    /// Single node, nothing else to run.
    Memory(MemoryConfig),
    /// Cluster node: every node on the same Redis sees every publication.
    Redis(RedisConfig),
}

#[derive(Debug, Clone, Deserialize, Serialize)]
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

    pub(crate) fn state_ttl(&self) -> Duration {
        match self {
            Self::Memory(m) => m.state_ttl,
            Self::Redis(r) => r.state_ttl,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://`, `rediss://`, `redis+sentinel://` or `redis+cluster://`
    /// (`rediss+cluster://` with TLS); unused when `shards` is set.
    pub url: String,
    /// Independent Redis instances (or Sentinel groups) to spread channels
    /// over by a stable hash, for those who do not run Redis Cluster. The
    /// order matters: it is the mapping.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shards: Vec<String>,
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
    /// PEM CA certificate(s) that verify a `rediss://` server, instead of the system roots.
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate chain for mutual TLS (with `tls_key_file`).
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`; its contents are never printed.
    pub tls_key_file: Option<PathBuf>,
}

impl RedisConfig {
    /// Whether any TLS file is configured.
    pub fn has_tls_files(&self) -> bool {
        self.tls_ca_file.is_some() || self.tls_cert_file.is_some() || self.tls_key_file.is_some()
    }
}

/// Where a node looks for Redis when only `broker.type = "redis"` is said.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: DEFAULT_REDIS_URL.to_owned(),
            shards: Vec::new(),
            state_ttl: Duration::from_secs(3600),
            timeout: Duration::from_secs(2),
            history_size: HistoryConfig::default().size,
            history_ttl: HistoryConfig::default().ttl,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
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

    /// The configuration as a TOML file would say it, secrets replaced by
    /// `"<redacted>"` (for `herald config show`).
    pub fn to_redacted_toml(&self) -> String {
        let mut c = self.clone();
        let hide = |s: &mut String| *s = REDACTED.to_owned();
        c.auth.jwt_secret.as_mut().map(hide);
        c.session.reconnect_secrets.iter_mut().for_each(hide);
        c.api.keys.iter_mut().for_each(hide);
        c.webhooks.secret.as_mut().map(hide);
        if let BrokerConfig::Redis(r) = &mut c.broker {
            r.url = redact_url_password(&r.url);
            r.shards
                .iter_mut()
                .for_each(|u| *u = redact_url_password(u));
        }
        // Serializing this tree of plain values cannot fail.
        toml::to_string(&c).unwrap_or_default()
    }

    /// The rules for channels in namespace `ns` (or outside any: `None`).
    pub fn channel_rule(&self, ns: Option<&str>) -> &ChannelRuleConfig {
        ns.and_then(|n| self.namespaces.get(n))
            .unwrap_or(&self.channels)
    }
}

const REDACTED: &str = "<redacted>";

/// `redis://user:secret@host` → `redis://user:<redacted>@host`.
fn redact_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:{REDACTED}@{host}"),
        None => url.to_owned(),
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
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map_err(|e| serde::de::Error::custom(format!("invalid duration {s:?}: {e}")))
    }
}

/// Optional humane durations.
mod opt_duration_str {
    use serde::{Deserializer, Serializer};
    use std::time::Duration;

    pub(super) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::duration_str::serialize(d, s),
            None => s.serialize_none(),
        }
    }

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
    fn shown_config_hides_secrets_and_reads_back() {
        let mut c = Config::default();
        c.auth.jwt_secret = Some("an-hs256-secret-of-at-least-32-bytes!!".into());
        c.api.keys = vec!["a-key-of-sixteen-bytes".into()];
        c.session.reconnect_secrets = vec!["sixteen-byte-secret".into()];
        c.broker = BrokerConfig::Redis(RedisConfig {
            url: "redis://app:hunter2@redis:6379/0".into(),
            ..RedisConfig::default()
        });
        let shown = c.to_redacted_toml();
        for secret in ["an-hs256", "a-key-of", "sixteen-byte", "hunter2"] {
            assert!(!shown.contains(secret), "{secret} leaked:\n{shown}");
        }
        assert!(
            shown.contains("redis://app:<redacted>@redis:6379/0"),
            "{shown}"
        );
        let back = Config::from_toml(&shown, Path::new("shown.toml")).expect("reads back");
        assert_eq!(back.session.ping_interval, c.session.ping_interval);
        assert_eq!(back.broker.history(), c.broker.history());
        // TLS and a password-only URL: the password goes, the file paths stay.
        c.broker = BrokerConfig::Redis(RedisConfig {
            url: "rediss://:hunter3@redis:6380/2".into(),
            tls_ca_file: Some("/etc/herald/ca.pem".into()),
            tls_key_file: Some("/etc/herald/client.key".into()),
            ..RedisConfig::default()
        });
        let shown = c.to_redacted_toml();
        assert!(!shown.contains("hunter3"), "{shown}");
        // Shard and cluster URLs too.
        let mut shards = c.clone();
        shards.broker = BrokerConfig::Redis(RedisConfig {
            shards: vec![
                "redis://:hunter4@a:6379".into(),
                "redis+sentinel://u:hunter5@s1:26379,s2:26379/m".into(),
            ],
            ..RedisConfig::default()
        });
        let shown_shards = shards.to_redacted_toml();
        for secret in ["hunter4", "hunter5"] {
            assert!(!shown_shards.contains(secret), "{secret}:\n{shown_shards}");
        }
        shards.broker = BrokerConfig::Redis(RedisConfig {
            url: "redis+cluster://u:hunter6@a:7000,b:7001".into(),
            ..RedisConfig::default()
        });
        assert!(!shards.to_redacted_toml().contains("hunter6"));
        assert!(
            shown.contains("rediss://:<redacted>@redis:6380/2"),
            "{shown}"
        );
        assert!(
            shown.contains("tls_ca_file = \"/etc/herald/ca.pem\""),
            "{shown}"
        );
        assert!(shown.contains("/etc/herald/client.key"), "{shown}");
    }

    #[test]
    fn unknown_env_is_named() {
        let vars = ["PATH", "HERALD_LISTEN", "HERALD_LISTN"].map(str::to_owned);
        let err = check_env(vars.into_iter(), &["HERALD_LISTEN"]).expect_err("typo");
        assert!(err.to_string().contains("HERALD_LISTN"));
    }
}
