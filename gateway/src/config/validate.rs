//! Validation: the rules no single field can state, checked once at start-up
//! (and by `herald config check`). Every problem is collected, so an
//! operator fixes them all in one go, and they are reported by section.

use super::{BrokerConfig, Config, ConfigError, JwtAlgorithm};
use std::fmt;
use std::time::Duration;

/// Every problem found, each with the config section it concerns.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Problems(Vec<(&'static str, String)>);

impl Problems {
    fn add(&mut self, section: &'static str, message: impl Into<String>) {
        self.0.push((section, message.into()));
    }

    /// Adds `message` unless `ok`.
    fn check(&mut self, ok: bool, section: &'static str, message: impl FnOnce() -> String) {
        if !ok {
            self.add(section, message());
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The messages, grouped by section (in a stable order).
    pub fn by_section(&self) -> Vec<(&'static str, Vec<&str>)> {
        let mut out: Vec<(&'static str, Vec<&str>)> = Vec::new();
        for (section, msg) in &self.0 {
            match out.iter_mut().find(|(s, _)| s == section) {
                Some((_, msgs)) => msgs.push(msg),
                None => out.push((section, vec![msg])),
            }
        }
        out.sort_by_key(|(s, _)| *s);
        out
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let [(section, msg)] = self.0.as_slice() {
            return write!(f, "[{section}] {msg}");
        }
        write!(f, "{} problems:", self.0.len())?;
        for (section, msgs) in self.by_section() {
            write!(f, "\n  [{section}]")?;
            for m in msgs {
                write!(f, "\n    - {m}")?;
            }
        }
        Ok(())
    }
}

impl Config {
    /// Checks every cross-field rule once, before anything listens, and
    /// reports all problems found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut p = Problems::default();
        self.check_auth(&mut p);
        self.check_channels(&mut p);
        self.check_session(&mut p);
        self.check_broker(&mut p);
        self.check_presence(&mut p);
        self.check_webhooks(&mut p);
        self.check_exposure(&mut p);
        self.check_hooks(&mut p);
        let srv = &self.server;
        p.check(
            srv.header_timeout >= Duration::from_millis(100)
                && srv.header_timeout <= Duration::from_secs(300),
            "server",
            || {
                format!(
                    "server.header_timeout must be between 100ms and 5m, got {:?}",
                    srv.header_timeout
                )
            },
        );
        p.check(
            srv.connection_rate_per_ip == 0 || srv.connection_burst_per_ip > 0,
            "server",
            || "server.connection_burst_per_ip must be at least 1 when connection_rate_per_ip is set".to_owned(),
        );
        if let Err(e) = crate::server::TrustedProxies::parse(&srv.trusted_proxies) {
            p.add("server", format!("server.trusted_proxies: {e}"));
        }
        if let Some(n) = self.server.worker_threads {
            p.check((1..=1024).contains(&n), "server", || {
                format!("server.worker_threads must be 1 to 1024, got {n}")
            });
        }
        if let Some(id) = &self.node_id {
            let ok = !id.is_empty() && id.len() <= 64 && !id.chars().any(char::is_whitespace);
            p.check(ok, "node_id", || {
                format!("node_id must be 1-64 bytes without whitespace, got {id:?}")
            });
        }
        if p.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(p))
        }
    }

    fn check_auth(&self, p: &mut Problems) {
        let a = &self.auth;
        let sources = [
            a.jwt_secret.is_some(),
            a.jwt_public_key.is_some(),
            a.jwks_file.is_some(),
        ];
        p.check(sources.iter().filter(|s| **s).count() <= 1, "auth", || {
            "auth: set only one of jwt_secret, jwt_public_key and jwks_file".to_owned()
        });
        if let Some(s) = &a.jwt_secret {
            p.check(s.len() >= 32, "auth", || {
                format!(
                    "auth.jwt_secret needs at least 32 bytes for HS256, got {}",
                    s.len()
                )
            });
        }
        match a.jwt_algorithm {
            Some(JwtAlgorithm::HS256) if a.jwt_secret.is_none() => {
                p.add(
                    "auth",
                    "auth.jwt_algorithm = \"HS256\" needs auth.jwt_secret",
                );
            }
            Some(alg @ (JwtAlgorithm::RS256 | JwtAlgorithm::ES256))
                if a.jwt_public_key.is_none() && a.jwks_file.is_none() =>
            {
                p.add(
                    "auth",
                    format!(
                        "auth.jwt_algorithm = \"{alg:?}\" needs auth.jwt_public_key or auth.jwks_file"
                    ),
                );
            }
            _ => {}
        }
        p.check(a.leeway <= Duration::from_secs(300), "auth", || {
            format!("auth.leeway must be at most 5m, got {:?}", a.leeway)
        });
    }

    fn check_channels(&self, p: &mut Problems) {
        let state_ttl = self.broker.state_ttl();
        let rules = std::iter::once(("channels".to_owned(), &self.channels)).chain(
            self.namespaces
                .iter()
                .map(|(n, r)| (format!("namespaces.{n}"), r)),
        );
        for (name, r) in rules {
            let section = if name == "channels" {
                "channels"
            } else {
                "namespaces"
            };
            p.check(r.history_size.is_none_or(|n| n <= 100_000), section, || {
                format!("{name}.history_size must be at most 100000")
            });
            let ttl_ok = r
                .history_ttl
                .is_none_or(|t| t >= Duration::from_secs(1) && t <= state_ttl);
            p.check(ttl_ok, section, || {
                format!(
                    "{name}.history_ttl must be between 1s and broker.state_ttl ({state_ttl:?})"
                )
            });
        }
        for ns in self.namespaces.keys() {
            let ok = !ns.is_empty()
                && ns.len() <= 64
                && ns
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
            p.check(ok, "namespaces", || {
                format!("namespace name {ns:?}: use 1-64 of a-z A-Z 0-9 _ - .")
            });
        }
    }

    fn check_session(&self, p: &mut Problems) {
        let s = &self.session;
        for (name, d) in [
            ("session.connect_timeout", s.connect_timeout),
            ("session.ping_interval", s.ping_interval),
            ("session.pong_timeout", s.pong_timeout),
            ("session.close_timeout", s.close_timeout),
        ] {
            p.check(!d.is_zero(), "session", || {
                format!("{name} must be greater than zero")
            });
        }
        p.check(
            (1..=16 * 1024 * 1024).contains(&s.max_payload),
            "session",
            || {
                format!(
                    "session.max_payload must be between 1 and 16777216 bytes, got {}",
                    s.max_payload
                )
            },
        );
        p.check(s.outbound_queue >= 8, "session", || {
            format!(
                "session.outbound_queue must be at least 8, got {}",
                s.outbound_queue
            )
        });
        p.check(
            s.outbound_queue_bytes >= 2 * s.max_frame(),
            "session",
            || {
                format!(
                    "session.outbound_queue_bytes must hold two of the largest frames \
                 (2 × (max_payload + 4096) = {}), got {}",
                    2 * s.max_frame(),
                    s.outbound_queue_bytes
                )
            },
        );
        if let Some(short) = s.reconnect_secrets.iter().find(|k| k.len() < 16) {
            p.add(
                "session",
                format!(
                    "session.reconnect_secrets: each secret needs at least 16 bytes, one has {}",
                    short.len()
                ),
            );
        }
        p.check(s.command_rate > 0 && s.command_burst > 0, "session", || {
            "session.command_rate and session.command_burst must be at least 1".to_owned()
        });
        p.check(s.reconnect_ttl >= Duration::from_secs(1), "session", || {
            "session.reconnect_ttl must be at least 1s".to_owned()
        });
        p.check(s.max_subscriptions > 0, "session", || {
            "session.max_subscriptions must be at least 1".to_owned()
        });
    }

    fn check_webhooks(&self, p: &mut Problems) {
        let w = &self.webhooks;
        let Some(url) = &w.url else { return };
        p.check(
            url.starts_with("http://") && url.parse::<hyper::Uri>().is_ok(),
            "webhooks",
            || format!("webhooks.url must be an http:// URL, got {url:?}"),
        );
        p.check(
            w.secret.as_ref().is_some_and(|s| s.len() >= 16),
            "webhooks",
            || "webhooks.secret (16+ bytes) is required with webhooks.url: receivers verify the signature".to_owned(),
        );
        for e in &w.events {
            p.check(
                crate::hooks::webhooks::Event::ALL.iter().any(|k| k.name() == e),
                "webhooks",
                || format!("webhooks.events: unknown event {e:?} (channel_occupied, channel_vacated, user_connected, user_disconnected)"),
            );
        }
        p.check(w.max_attempts >= 1 && w.queue >= 1 && !w.timeout.is_zero(), "webhooks", || {
            "webhooks.max_attempts and webhooks.queue must be at least 1, webhooks.timeout above zero".to_owned()
        });
    }

    fn check_presence(&self, p: &mut Problems) {
        let c = &self.presence;
        p.check(
            c.heartbeat >= Duration::from_millis(100) && c.heartbeat <= Duration::from_secs(60),
            "presence",
            || {
                format!(
                    "presence.heartbeat must be between 100ms and 60s, got {:?}",
                    c.heartbeat
                )
            },
        );
        p.check((1..=100_000).contains(&c.max_clients), "presence", || {
            format!(
                "presence.max_clients must be between 1 and 100000, got {}",
                c.max_clients
            )
        });
        let rules = std::iter::once(("channels".to_owned(), &self.channels)).chain(
            self.namespaces
                .iter()
                .map(|(n, r)| (format!("namespaces.{n}"), r)),
        );
        for (name, r) in rules {
            p.check(!r.join_leave || r.presence, "presence", || {
                format!("{name}.join_leave needs {name}.presence = true")
            });
        }
    }

    fn check_broker(&self, p: &mut Problems) {
        let state_ttl = self.broker.state_ttl();
        if let BrokerConfig::Redis(r) = &self.broker {
            let shards = !r.shards.is_empty();
            if shards && r.url != super::DEFAULT_REDIS_URL {
                p.add(
                    "broker",
                    "set broker.url (one Redis, Sentinel or Cluster) or broker.shards, not both",
                );
            }
            let urls: Vec<(&str, &str)> = if shards {
                r.shards
                    .iter()
                    .map(|u| ("broker.shards", u.as_str()))
                    .collect()
            } else {
                vec![("broker.url", r.url.as_str())]
            };
            let mut tls = false;
            for (key, url) in urls {
                match check_redis_url(url) {
                    Ok(kind) => {
                        tls |= kind.tls;
                        if shards && kind.cluster {
                            p.add(
                                "broker",
                                format!("{key}: a Redis Cluster cannot be a shard; give its URL as broker.url"),
                            );
                        }
                    }
                    Err(e) => p.add(
                        "broker",
                        format!("{key}: {e} (got {:?})", super::redact_url_password(url)),
                    ),
                }
            }
            if r.has_tls_files() && !tls {
                p.add(
                    "broker",
                    "broker.tls_ca_file, tls_cert_file and tls_key_file need a rediss:// URL (or rediss+cluster://)",
                );
            }
            p.check(
                r.tls_cert_file.is_some() == r.tls_key_file.is_some(),
                "broker",
                || {
                    "broker.tls_cert_file and broker.tls_key_file go together: set both or neither"
                        .to_owned()
                },
            );
            for (key, file, what) in [
                ("tls_ca_file", &r.tls_ca_file, PemKind::Certificates),
                ("tls_cert_file", &r.tls_cert_file, PemKind::Certificates),
                ("tls_key_file", &r.tls_key_file, PemKind::PrivateKey),
            ] {
                if let Some(path) = file {
                    if let Err(e) = what.check(path) {
                        p.add("broker", format!("broker.{key} {}: {e}", path.display()));
                    }
                }
            }
            p.check(!r.timeout.is_zero(), "broker", || {
                "broker.timeout must be greater than zero".to_owned()
            });
        }
        p.check(state_ttl >= Duration::from_secs(1), "broker", || {
            "broker.state_ttl must be at least 1s".to_owned()
        });
        let h = self.broker.history();
        p.check(h.size <= 100_000, "broker", || {
            format!("broker.history_size must be at most 100000, got {}", h.size)
        });
        let ttl_ok = h.size == 0 || (h.ttl >= Duration::from_secs(1) && h.ttl <= state_ttl);
        p.check(ttl_ok, "broker", || {
            format!(
                "broker.history_ttl must be between 1s and broker.state_ttl ({state_ttl:?}), got {:?}",
                h.ttl
            )
        });
    }

    fn check_hooks(&self, p: &mut Problems) {
        let h = &self.hooks;
        for (key, url) in h.urls() {
            if let Err(e) = check_hook_url(url) {
                p.add("hooks", format!("{key}: {e} (got {url:?})"));
            }
        }
        p.check(
            h.timeout >= Duration::from_millis(1) && h.timeout <= Duration::from_secs(60),
            "hooks",
            || {
                format!(
                    "hooks.timeout must be between 1ms and 1m, got {:?}",
                    h.timeout
                )
            },
        );
        p.check(h.forward_headers.len() <= 32, "hooks", || {
            "hooks.forward_headers: at most 32 headers".to_owned()
        });
        for name in &h.forward_headers {
            let ok = !name.is_empty()
                && name.len() <= 64
                && name.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
                });
            p.check(ok, "hooks", || {
                format!("hooks.forward_headers: {name:?} is not a lower-case header name")
            });
        }
        p.check(
            !h.connect_always || h.connect_url.is_some(),
            "hooks",
            || "hooks.connect_always needs hooks.connect_url".to_owned(),
        );
        let rules = std::iter::once(("channels".to_owned(), &self.channels)).chain(
            self.namespaces
                .iter()
                .map(|(n, r)| (format!("namespaces.{n}"), r)),
        );
        for (name, r) in rules {
            p.check(
                !r.subscribe_hook || h.subscribe_url.is_some(),
                "hooks",
                || format!("{name}.subscribe_hook needs hooks.subscribe_url"),
            );
            p.check(!r.publish_hook || h.publish_url.is_some(), "hooks", || {
                format!("{name}.publish_hook needs hooks.publish_url")
            });
        }
    }

    /// Who can reach what: open mode and an unkeyed publish API stay on loopback
    /// unless the operator says otherwise.
    fn check_exposure(&self, p: &mut Problems) {
        let api_keys = match self.api.all_keys() {
            Ok(k) => k,
            Err(e) => {
                p.add("api", e.to_string());
                Vec::new()
            }
        };
        if let Some(short) = api_keys.iter().find(|k| k.len() < 16) {
            p.add(
                "api",
                format!(
                    "api keys need at least 16 bytes each, one has {}",
                    short.len()
                ),
            );
        }
        let srv = &self.server;
        let open_mode = self.open_mode();
        if open_mode && !srv.allow_open {
            // The admin listener is fine anywhere once the API needs keys
            // (its probes and metrics are meant to be scraped).
            let admin = srv.admin_listen.filter(|_| api_keys.is_empty());
            let exposed = std::iter::once(srv.listen)
                .chain(admin)
                .find(|a| !a.ip().is_loopback());
            if let Some(addr) = exposed {
                p.add(
                    "server",
                    format!(
                        "refusing to run without authentication on non-loopback address {addr}; \
                         pass --allow-open (HERALD_ALLOW_OPEN=true) if you really mean it"
                    ),
                );
            }
        }
        // With client auth on, the publish API must not be left open to the network either.
        let api_addr = srv.admin_listen.unwrap_or(srv.listen);
        if !open_mode && api_keys.is_empty() && !srv.allow_open && !api_addr.ip().is_loopback() {
            p.add(
                "api",
                format!(
                    "the publish API listens on non-loopback address {api_addr} without API keys; \
                     set --api-key/--api-keys-file, move it with --admin-listen to a loopback \
                     address, or pass --allow-open if the network is trusted"
                ),
            );
        }
        // Port 0 means "any free port": two of those never clash.
        let clash = srv.admin_listen == Some(srv.listen) && srv.listen.port() != 0;
        p.check(!clash, "server", || {
            "server.admin_listen must differ from server.listen".to_owned()
        });
    }
}

/// A hook URL: plain `http://host[:port]/path` (no TLS client here).
fn check_hook_url(url: &str) -> Result<(), String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err("must start with http:// (https is not supported; put a TLS proxy on loopback in front)".to_owned());
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("has no host".to_owned());
    }
    Ok(())
}

/// What kind of Redis a URL names.
struct RedisUrlKind {
    tls: bool,
    cluster: bool,
}

/// Checks a Redis URL's scheme (and a Sentinel or Cluster URL's shape).
fn check_redis_url(url: &str) -> Result<RedisUrlKind, String> {
    let kind = |tls, cluster| Ok(RedisUrlKind { tls, cluster });
    if let Some(s) = crate::broker::redis::sentinel::SentinelUrl::parse(url) {
        return s.and(kind(false, false));
    }
    if let Some(c) = crate::broker::redis::cluster::ClusterUrl::parse(url) {
        return c.map(|c| RedisUrlKind {
            tls: c.tls,
            cluster: true,
        });
    }
    match url.split_once("://").map(|(s, _)| s) {
        Some("rediss") => kind(true, false),
        Some("redis" | "redis+unix" | "unix") => kind(false, false),
        _ => Err(
            "must start with redis://, rediss://, redis+sentinel://, redis+cluster:// or rediss+cluster://"
                .to_owned(),
        ),
    }
}

/// What a PEM file given for Redis TLS must hold.
#[derive(Clone, Copy)]
enum PemKind {
    Certificates,
    PrivateKey,
}

impl PemKind {
    /// Reads and parses the file; the error never quotes its contents.
    fn check(self, path: &std::path::Path) -> Result<(), String> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let bytes = std::fs::read(path).map_err(|e| format!("cannot be read: {e}"))?;
        match self {
            Self::Certificates => {
                let certs = CertificateDer::pem_slice_iter(&bytes)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("is not PEM certificates: {e}"))?;
                if certs.is_empty() {
                    return Err("holds no PEM certificate".to_owned());
                }
            }
            Self::PrivateKey => {
                PrivateKeyDer::from_pem_slice(&bytes)
                    .map_err(|e| format!("holds no PEM private key: {e}"))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_is_reported_at_once_by_section() {
        let mut c = Config::default();
        c.session.outbound_queue = 4;
        c.session.ping_interval = Duration::ZERO;
        c.auth.jwt_secret = Some("short".into());
        c.server.worker_threads = Some(0);
        let Err(ConfigError::Invalid(p)) = c.validate() else {
            panic!("invalid");
        };
        assert_eq!(p.len(), 4, "{p}");
        let sections: Vec<&str> = p.by_section().iter().map(|(s, _)| *s).collect();
        assert_eq!(sections, ["auth", "server", "session"]);
        let text = p.to_string();
        assert!(text.starts_with("4 problems:"), "{text}");
        assert!(
            text.contains("session.outbound_queue must be at least 8, got 4"),
            "{text}"
        );
        assert!(
            text.contains("session.ping_interval must be greater than zero"),
            "{text}"
        );
    }

    #[test]
    fn redis_cluster_and_shard_urls_are_checked() {
        use crate::config::RedisConfig;
        let with = |url: &str, shards: &[&str]| Config {
            broker: BrokerConfig::Redis(RedisConfig {
                url: url.into(),
                shards: shards.iter().map(|s| (*s).to_owned()).collect(),
                ..RedisConfig::default()
            }),
            ..Config::default()
        };
        let ok = |c: Config| c.validate().map_err(|e| e.to_string());
        ok(with("redis+cluster://a:7000,b:7001", &[])).expect("cluster");
        ok(with("rediss+cluster://:pw@a:7000", &[])).expect("cluster over TLS");
        ok(with(
            crate::config::DEFAULT_REDIS_URL,
            &["redis://a:1", "rediss://b:2", "redis+sentinel://s:1/m"],
        ))
        .expect("shards");
        let err = |c: Config| ok(c).expect_err("invalid");
        assert!(err(with("redis+cluster://a:7000/2", &[])).contains("database 0"));
        assert!(err(with("redis://x:1", &["redis://a:1"])).contains("not both"));
        assert!(
            err(with(
                crate::config::DEFAULT_REDIS_URL,
                &["redis+cluster://a:1"]
            ))
            .contains("cannot be a shard")
        );
        let e = err(with(crate::config::DEFAULT_REDIS_URL, &["http://a:1"]));
        assert!(e.contains("broker.shards: must start with redis://"), "{e}");
    }

    #[test]
    fn redis_tls_files_are_checked() {
        use crate::config::RedisConfig;
        let dir = std::env::temp_dir().join(format!("herald-tls-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not a certificate").expect("write");
        let c = Config {
            broker: BrokerConfig::Redis(RedisConfig {
                url: "redis://127.0.0.1:6379".into(),
                tls_ca_file: Some(junk.clone()),
                tls_cert_file: Some(dir.join("missing.pem")),
                ..RedisConfig::default()
            }),
            ..Config::default()
        };
        let text = c.validate().expect_err("invalid").to_string();
        for want in [
            "need a rediss:// URL",
            "set both or neither",
            "junk.pem: holds no PEM certificate",
            "missing.pem: cannot be read",
        ] {
            assert!(text.contains(want), "{want}: {text}");
        }
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn one_problem_reads_as_one_line() {
        let mut c = Config::default();
        c.session.max_subscriptions = 0;
        let err = c.validate().expect_err("invalid").to_string();
        assert_eq!(
            err,
            "invalid configuration: [session] session.max_subscriptions must be at least 1"
        );
    }
}
