//! Flags and their `HERALD_*` twins: the one declaration of every setting
//! that can be given on the command line.
//!
//! Each entry below says, once: the flag, its environment variable and help
//! (the `#[arg]`), the config key it sets and how (the closure). Its default
//! is the one of [`Config::default`]. `herald serve --help`, the unknown-env
//! check and the reference table in `docs/configuration.md`
//! ([`reference_table`]) are all derived from this list.
//!
//! To add a setting: add its field to the config tree (`config/mod.rs`, with
//! its default), add an entry here, and regenerate the docs table with
//! `herald config reference` (a test fails until you do).

use super::{BrokerConfig, Config, LogFormat, RedisConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

/// What a flag sets, for help and docs.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    /// The clap argument id (the field name).
    pub id: &'static str,
    /// The config key it sets, e.g. `session.max_payload`.
    pub key: &'static str,
    /// Shown after the key in the docs table, e.g. "(either broker type)".
    pub note: &'static str,
    /// The default in words when the config tree has no value for the key.
    pub unset: &'static str,
}

/// A flag value that was actually given: `Some` for options, a non-empty
/// list, or a raised switch.
trait Given: Sized {
    type Value;
    fn given(self) -> Option<Self::Value>;
}

impl<T> Given for Option<T> {
    type Value = T;
    fn given(self) -> Option<T> {
        self
    }
}

impl<T> Given for Vec<T> {
    type Value = Vec<T>;
    fn given(self) -> Option<Vec<T>> {
        (!self.is_empty()).then_some(self)
    }
}

impl Given for bool {
    type Value = bool;
    fn given(self) -> Option<bool> {
        self.then_some(true)
    }
}

/// The Redis section, switching a memory-broker config to Redis (default
/// URL) first; the history settings carry over to the new backend.
fn redis_mut(c: &mut Config) -> &mut RedisConfig {
    if let BrokerConfig::Memory(m) = &c.broker {
        c.broker = BrokerConfig::Redis(RedisConfig {
            history_size: m.history_size,
            history_ttl: m.history_ttl,
            ..RedisConfig::default()
        });
    }
    match &mut c.broker {
        BrokerConfig::Redis(r) => r,
        BrokerConfig::Memory(_) => unreachable!("switched to Redis above"),
    }
}

macro_rules! settings {
    ($(
        $(#[doc = $doc:literal])+
        #[arg($($arg:tt)*)]
        $field:ident: $ty:ty => $key:literal $note:literal $unset:literal,
            |$c:ident, $v:ident| $apply:expr;
    )+) => {
        /// Values from flags or their `HERALD_*` env twins; unset ones keep the file's value.
        #[derive(Debug, Default, Clone, clap::Args)]
        pub struct Overrides {
            $( $(#[doc = $doc])+ #[arg($($arg)*)] pub $field: $ty, )+
        }

        impl Overrides {
            /// Every flag's setting, in declaration order.
            pub const SETTINGS: &[Setting] = &[
                $( Setting { id: stringify!($field), key: $key, note: $note, unset: $unset }, )+
            ];

            /// Layers the given values over `cfg`.
            pub(super) fn apply_to(self, cfg: &mut Config) {
                $(
                    if let Some($v) = Given::given(self.$field) {
                        let $c = &mut *cfg;
                        $apply;
                    }
                )+
            }
        }
    };
}

settings! {
    /// Public listener (WebSocket and demo page).
    #[arg(long, env = "HERALD_LISTEN", value_name = "ADDR")]
    listen: Option<SocketAddr> => "server.listen" "" "",
        |c, v| c.server.listen = v;
    /// Separate listener for the API, /metrics and probes.
    #[arg(long, env = "HERALD_ADMIN_LISTEN", value_name = "ADDR")]
    admin_listen: Option<SocketAddr> => "server.admin_listen" "" "unset (on the public listener)",
        |c, v| c.server.admin_listen = Some(v);
    /// Redis URL: makes this node a cluster node.
    #[arg(long, env = "HERALD_REDIS_URL", value_name = "URL")]
    redis_url: Option<String> => "broker.url" "with `broker.type = \"redis\"`" "unset (memory broker)",
        |c, v| redis_mut(c).url = v;
    /// Redis instance to spread channels over by hash (client-side sharding);
    /// repeat in order (or space-separate in the env). Replaces --redis-url.
    #[arg(long, env = "HERALD_REDIS_SHARDS", value_name = "URL", value_delimiter = ' ', hide_env_values = true)]
    redis_shard: Vec<String> => "broker.shards" "in the order given" "none",
        |c, v| redis_mut(c).shards = v;
    /// PEM CA certificate(s) that verify a `rediss://` Redis, replacing the system roots.
    #[arg(long, env = "HERALD_REDIS_TLS_CA_FILE", value_name = "FILE")]
    redis_tls_ca_file: Option<PathBuf> => "broker.tls_ca_file" "" "unset (system roots)",
        |c, v| redis_mut(c).tls_ca_file = Some(v);
    /// PEM client certificate for mutual TLS to Redis (with `--redis-tls-key-file`).
    #[arg(long, env = "HERALD_REDIS_TLS_CERT_FILE", value_name = "FILE")]
    redis_tls_cert_file: Option<PathBuf> => "broker.tls_cert_file" "" "unset (no client certificate)",
        |c, v| redis_mut(c).tls_cert_file = Some(v);
    /// PEM private key of the Redis client certificate.
    #[arg(long, env = "HERALD_REDIS_TLS_KEY_FILE", value_name = "FILE")]
    redis_tls_key_file: Option<PathBuf> => "broker.tls_key_file" "" "unset",
        |c, v| redis_mut(c).tls_key_file = Some(v);
    /// Key the publish API accepts as `Authorization: Bearer KEY`; repeat (or
    /// comma-separate in the env) for several.
    #[arg(long, env = "HERALD_API_KEY", value_name = "KEY", value_delimiter = ',', hide_env_values = true)]
    api_key: Vec<String> => "api.keys" "" "none (API open)",
        |c, v| c.api.keys = v;
    /// File of API keys, one per line (`#` comments).
    #[arg(long, env = "HERALD_API_KEYS_FILE", value_name = "FILE")]
    api_keys_file: Option<PathBuf> => "api.keys_file" "" "unset",
        |c, v| c.api.keys_file = Some(v);
    /// Node id shown to clients.
    #[arg(long, env = "HERALD_NODE_ID", value_name = "ID")]
    node_id: Option<String> => "node_id" "" "random",
        |c, v| c.node_id = Some(v);
    /// Allow open mode (no authentication) on a non-loopback address.
    #[arg(long, env = "HERALD_ALLOW_OPEN", action = clap::ArgAction::SetTrue)]
    allow_open: bool => "server.allow_open" "" "",
        |c, v| c.server.allow_open = v;
    /// Log filter, e.g. `info` or `herald=debug`.
    #[arg(long, env = "HERALD_LOG", value_name = "FILTER")]
    log: Option<String> => "log" "" "",
        |c, v| c.log = v;
    /// Log line format.
    #[arg(long, env = "HERALD_LOG_FORMAT", value_name = "FORMAT")]
    log_format: Option<LogFormat> => "log_format" "" "",
        |c, v| c.log_format = v;
    /// Window over which clients are told to reconnect on shutdown.
    #[arg(long, env = "HERALD_DRAIN_TIMEOUT", value_parser = duration, value_name = "DURATION")]
    drain_timeout: Option<Duration> => "server.drain_timeout" "" "",
        |c, v| c.server.drain_timeout = v;
    /// Runtime worker threads.
    #[arg(long, env = "HERALD_WORKER_THREADS", value_name = "N")]
    worker_threads: Option<usize> => "server.worker_threads" "" "one per CPU",
        |c, v| c.server.worker_threads = Some(v);
    /// WebSocket sessions accepted at once; 0 = no limit but file descriptors.
    #[arg(long, env = "HERALD_MAX_CONNECTIONS", value_name = "N")]
    max_connections: Option<usize> => "server.max_connections" "" "",
        |c, v| c.server.max_connections = v;
    /// Browser Origin allowed to connect, e.g. https://app.example.com; repeat
    /// (or comma-separate in the env).
    #[arg(long, env = "HERALD_ALLOWED_ORIGIN", value_name = "ORIGIN", value_delimiter = ',')]
    allowed_origin: Vec<String> => "server.allowed_origins" "" "any",
        |c, v| c.server.allowed_origins = v;
    /// Time to send a complete request head, from connect or the previous response.
    #[arg(long, env = "HERALD_HEADER_TIMEOUT", value_parser = duration, value_name = "DURATION")]
    header_timeout: Option<Duration> => "server.header_timeout" "(also the keep-alive idle timeout)" "",
        |c, v| c.server.header_timeout = v;
    /// Concurrent public connections per client address; 0 = no limit.
    #[arg(long, env = "HERALD_MAX_CONNECTIONS_PER_IP", value_name = "N")]
    max_connections_per_ip: Option<usize> => "server.max_connections_per_ip" "" "",
        |c, v| c.server.max_connections_per_ip = v;
    /// New public connections per second per client address; 0 = no limit.
    #[arg(long, env = "HERALD_CONNECTION_RATE_PER_IP", value_name = "N")]
    connection_rate_per_ip: Option<u32> => "server.connection_rate_per_ip" "" "",
        |c, v| c.server.connection_rate_per_ip = v;
    /// New public connections per client address in a burst.
    #[arg(long, env = "HERALD_CONNECTION_BURST_PER_IP", value_name = "N")]
    connection_burst_per_ip: Option<u32> => "server.connection_burst_per_ip" "" "",
        |c, v| c.server.connection_burst_per_ip = v;
    /// Load balancer trusted to name the client (address or CIDR range); repeat
    /// (or comma-separate in the env).
    #[arg(long, env = "HERALD_TRUSTED_PROXY", value_name = "ADDR", value_delimiter = ',')]
    trusted_proxy: Vec<String> => "server.trusted_proxies" "" "none",
        |c, v| c.server.trusted_proxies = v;
    /// Expect a PROXY protocol (v1 or v2) header on every public connection.
    #[arg(long, env = "HERALD_PROXY_PROTOCOL", action = clap::ArgAction::SetTrue)]
    proxy_protocol: bool => "server.proxy_protocol" "" "",
        |c, v| c.server.proxy_protocol = v;
    /// File descriptors kept free of public connections.
    #[arg(long, env = "HERALD_FD_RESERVE", value_name = "N")]
    fd_reserve: Option<usize> => "server.fd_reserve" "" "",
        |c, v| c.server.fd_reserve = v;
    /// Close sockets that send no `connect` within this long.
    #[arg(long, env = "HERALD_CONNECT_TIMEOUT", value_parser = duration, value_name = "DURATION")]
    connect_timeout: Option<Duration> => "session.connect_timeout" "" "",
        |c, v| c.session.connect_timeout = v;
    /// Server ping period.
    #[arg(long, env = "HERALD_PING_INTERVAL", value_parser = duration, value_name = "DURATION")]
    ping_interval: Option<Duration> => "session.ping_interval" "" "",
        |c, v| c.session.ping_interval = v;
    /// Time allowed for a pong.
    #[arg(long, env = "HERALD_PONG_TIMEOUT", value_parser = duration, value_name = "DURATION")]
    pong_timeout: Option<Duration> => "session.pong_timeout" "" "",
        |c, v| c.session.pong_timeout = v;
    /// Largest `data` payload in bytes.
    #[arg(long, env = "HERALD_MAX_PAYLOAD", value_name = "BYTES")]
    max_payload: Option<usize> => "session.max_payload" "" "",
        |c, v| c.session.max_payload = v;
    /// Outbound frames queued per connection before it is a slow consumer.
    #[arg(long, env = "HERALD_OUTBOUND_QUEUE", value_name = "FRAMES")]
    outbound_queue: Option<usize> => "session.outbound_queue" "" "",
        |c, v| c.session.outbound_queue = v;
    /// Outbound bytes queued per connection before it is a slow consumer.
    #[arg(long, env = "HERALD_OUTBOUND_QUEUE_BYTES", value_name = "BYTES")]
    outbound_queue_bytes: Option<usize> => "session.outbound_queue_bytes" "" "",
        |c, v| c.session.outbound_queue_bytes = v;
    /// Subscriptions allowed per connection.
    #[arg(long, env = "HERALD_MAX_SUBSCRIPTIONS", value_name = "N")]
    max_subscriptions: Option<usize> => "session.max_subscriptions" "" "",
        |c, v| c.session.max_subscriptions = v;
    /// Publications kept per channel for recovery, 0 = none.
    #[arg(long, env = "HERALD_HISTORY_SIZE", value_name = "N")]
    history_size: Option<usize> => "broker.history_size" "(either broker type)" "",
        |c, v| match &mut c.broker {
            BrokerConfig::Memory(m) => m.history_size = v,
            BrokerConfig::Redis(r) => r.history_size = v,
        };
    /// Age beyond which publications are not replayed.
    #[arg(long, env = "HERALD_HISTORY_TTL", value_parser = duration, value_name = "DURATION")]
    history_ttl: Option<Duration> => "broker.history_ttl" "(either broker type)" "",
        |c, v| match &mut c.broker {
            BrokerConfig::Memory(m) => m.history_ttl = v,
            BrokerConfig::Redis(r) => r.history_ttl = v,
        };
    /// Most publications replayed per channel on recovery.
    #[arg(long, env = "HERALD_RECOVERY_MAX", value_name = "N")]
    recovery_max: Option<usize> => "session.recovery_max" "" "",
        |c, v| c.session.recovery_max = v;
    /// Sustained client commands per second per connection.
    #[arg(long, env = "HERALD_COMMAND_RATE", value_name = "N")]
    command_rate: Option<u32> => "session.command_rate" "" "",
        |c, v| c.session.command_rate = v;
    /// Client commands allowed in a burst.
    #[arg(long, env = "HERALD_COMMAND_BURST", value_name = "N")]
    command_burst: Option<u32> => "session.command_burst" "" "",
        |c, v| c.session.command_burst = v;
    /// Reconnect-token secret shared by the cluster; repeat (or comma-separate
    /// in the env) to rotate: the first signs, all verify.
    #[arg(long, env = "HERALD_RECONNECT_SECRET", value_name = "SECRET", value_delimiter = ',', hide_env_values = true)]
    reconnect_secret: Vec<String> => "session.reconnect_secrets" "in the order given" "none: agreed through Redis, or random on a single node",
        |c, v| c.session.reconnect_secrets = v;
    /// Validity of reconnect tokens.
    #[arg(long, env = "HERALD_RECONNECT_TTL", value_parser = duration, value_name = "DURATION")]
    reconnect_ttl: Option<Duration> => "session.reconnect_ttl" "" "",
        |c, v| c.session.reconnect_ttl = v;
    /// HS256 secret for connection JWTs (at least 32 bytes); turns authentication on.
    #[arg(long, env = "HERALD_JWT_SECRET", value_name = "SECRET", hide_env_values = true)]
    jwt_secret: Option<String> => "auth.jwt_secret" "" "unset",
        |c, v| c.auth.jwt_secret = Some(v);
    /// PEM public key (RSA or P-256) for RS256/ES256 connection JWTs.
    #[arg(long, env = "HERALD_JWT_PUBLIC_KEY", value_name = "FILE")]
    jwt_public_key: Option<PathBuf> => "auth.jwt_public_key" "" "unset",
        |c, v| c.auth.jwt_public_key = Some(v);
    /// JWKS file of public keys, chosen by `kid`, re-read when it changes.
    #[arg(long, env = "HERALD_JWKS_FILE", value_name = "FILE")]
    jwks_file: Option<PathBuf> => "auth.jwks_file" "" "unset",
        |c, v| c.auth.jwks_file = Some(v);
    /// Required `iss` of JWTs.
    #[arg(long, env = "HERALD_JWT_ISSUER", value_name = "ISS")]
    jwt_issuer: Option<String> => "auth.issuer" "" "unset",
        |c, v| c.auth.issuer = Some(v);
    /// Required `aud` of JWTs.
    #[arg(long, env = "HERALD_JWT_AUDIENCE", value_name = "AUD")]
    jwt_audience: Option<String> => "auth.audience" "" "unset",
        |c, v| c.auth.audience = Some(v);
    /// Connections one user may hold on this node; 0 = no limit.
    #[arg(long, env = "HERALD_MAX_CONNECTIONS_PER_USER", value_name = "N")]
    max_connections_per_user: Option<usize> => "auth.max_connections_per_user" "" "",
        |c, v| c.auth.max_connections_per_user = v;
}

impl Config {
    /// Layers flag/env values over the file's.
    pub fn apply(&mut self, o: Overrides) {
        o.apply_to(self);
    }

    /// The default of a config key, as it is written in a config file.
    pub fn default_of(key: &str) -> Option<String> {
        let tree = toml::Value::try_from(Config::default()).ok()?;
        let mut v = &tree;
        for part in key.split('.') {
            v = v.get(part)?;
        }
        Some(match v {
            toml::Value::String(s) => s.clone(),
            toml::Value::Array(a) if a.is_empty() => return None,
            other => other.to_string(),
        })
    }
}

/// The flags table of `docs/configuration.md`, in Markdown, from the
/// `serve` command's arguments and [`Overrides::SETTINGS`].
pub fn reference_table(serve: &clap::Command) -> String {
    let mut out = String::from(
        "| Flag | Environment | Sets | Default |\n|---|---|---|---|\n\
         | `--config FILE` | `HERALD_CONFIG` | config file to read | none |\n",
    );
    for s in Overrides::SETTINGS {
        let Some(arg) = serve.get_arguments().find(|a| a.get_id() == s.id) else {
            continue;
        };
        let long = arg.get_long().unwrap_or(s.id);
        let env = arg
            .get_env()
            .map(|e| e.to_string_lossy().into_owned())
            .unwrap_or_default();
        let takes_value = arg.get_action().takes_values();
        let repeatable = matches!(arg.get_action(), clap::ArgAction::Append);
        let flag = match arg.get_value_names().and_then(|v| v.first()) {
            Some(name) if takes_value => format!("`--{long} {name}`"),
            _ => format!("`--{long}`"),
        };
        let flag = if repeatable {
            format!("{flag} (repeatable)")
        } else {
            flag
        };
        let env = if arg.get_value_delimiter().is_some() {
            format!("`{env}` (comma-separated)")
        } else if !takes_value {
            format!("`{env}` (`true`/`false`)")
        } else {
            format!("`{env}`")
        };
        let sets = match s.note {
            "" => format!("`{}`", s.key),
            note => format!("`{}` {note}", s.key),
        };
        let default = match Config::default_of(s.key) {
            Some(d) if s.unset.is_empty() => format!("`{d}`"),
            _ => s.unset.to_owned(),
        };
        out.push_str(&format!("| {flag} | {env} | {sets} | {default} |\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setting_names_a_key_with_a_default_or_says_why_not() {
        for s in Overrides::SETTINGS {
            let has_default = Config::default_of(s.key).is_some();
            assert!(
                has_default == s.unset.is_empty(),
                "{}: the default comes from Config::default() ({has_default}) or `unset` ({:?}), exactly one",
                s.id,
                s.unset
            );
        }
    }

    #[test]
    fn flags_layer_over_the_file() {
        let mut c = Config::default();
        c.apply(Overrides {
            history_size: Some(7),
            redis_url: Some("redis://h:1".into()),
            allow_open: false,
            ..Overrides::default()
        });
        assert_eq!(
            c.broker.history().size,
            7,
            "carried over to the Redis broker"
        );
        assert!(
            !c.server.allow_open,
            "an unset switch leaves the file's value"
        );
    }
}
