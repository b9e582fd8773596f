//! Redis broker: the cluster backend, on one Redis, a Sentinel group, a
//! Redis Cluster, or several independent Redis instances (client-side
//! shards).
//!
//! Sits below `node` like [`super::memory`]; [`start`] picks the backend
//! from the configuration:
//! - [`single`]: one `redis://`/`rediss://` URL, or the master a
//!   `redis+sentinel://` group names ([`sentinel`]);
//! - [`cluster`]: a `redis+cluster://` (or `rediss+cluster://`) URL; every
//!   channel's keys and its shard channel live on the shard that owns its
//!   slot, and nodes use sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`);
//! - [`sharded`]: `broker.shards`, each channel mapped to one of the
//!   listed instances by jump consistent hash
//!   ([`herald_proto::redis::shard_of`]), each instance a [`single`].
//!
//! Key layout (all keys of a channel share the hash tag `{<channel>}`, so one
//! channel lives in one Redis Cluster slot):
//! - `herald:{<channel>}:m` — hash `e` (epoch), `o` (latest offset); expires
//!   after `state_ttl` without publish or subscribe, which starts a new epoch.
//! - `herald:{<channel>}:h` — the history stream.
//! - `herald:{<channel>}` — the pub/sub (or shard) channel nodes subscribe to.
//!
//! The layout and the publish script live in `herald_proto::redis`, so that
//! backends and tools can publish straight into Redis. The script assigns the
//! offset, appends to history and publishes in one Lua call, so the order on
//! the pub/sub channel is the offset order. A pub/sub payload is
//! `<offset> <epoch> <ms>\n<complete client message frame>`: nodes forward
//! the frame without re-encoding it.
//!
//! Whatever the backend, a lost or moved subscription ends the same way:
//! resubscribe, read each channel's position, start a new epoch where Redis
//! lost writes this node saw, and let the sink tell clients that missed
//! something (4004), so nobody misses a publication silently.

/// The presence and occupancy methods of [`Broker`] for a backend whose
/// commands go through `self.cmds` on the connection `self.$conn()` gives
/// (a `Result`): the same on one Redis and on a cluster.
macro_rules! presence_methods {
    ($conn:ident) => {
        fn presence_add<'a>(
            &'a self,
            channel: &'a str,
            session: &'a str,
            entry: &'a str,
            max: usize,
        ) -> BoxFuture<'a, Result<bool, BrokerError>> {
            Box::pin(async move {
                let mut conn = self.$conn()?;
                self.cmds
                    .presence_add(&mut conn, channel, session, entry, max)
                    .await
            })
        }

        fn presence_remove<'a>(
            &'a self,
            channel: &'a str,
            session: &'a str,
        ) -> BoxFuture<'a, Result<bool, BrokerError>> {
            Box::pin(async move {
                let mut conn = self.$conn()?;
                self.cmds.presence_remove(&mut conn, channel, session).await
            })
        }

        fn presence<'a>(
            &'a self,
            channel: &'a str,
        ) -> BoxFuture<'a, Result<Vec<String>, BrokerError>> {
            Box::pin(async move { self.cmds.presence(&mut self.$conn()?, channel).await })
        }

        fn notice<'a>(
            &'a self,
            channel: &'a str,
            frame: bytes::Bytes,
        ) -> BoxFuture<'a, Result<(), BrokerError>> {
            Box::pin(async move { self.cmds.notice(&mut self.$conn()?, channel, &frame).await })
        }

        fn heartbeat<'a>(
            &'a self,
            node: &'a str,
            ttl: std::time::Duration,
        ) -> BoxFuture<'a, Result<(), BrokerError>> {
            Box::pin(async move { self.cmds.heartbeat(&mut self.$conn()?, node, ttl).await })
        }

        fn alive<'a>(
            &'a self,
            nodes: &'a [String],
        ) -> BoxFuture<'a, Result<Vec<bool>, BrokerError>> {
            Box::pin(async move { self.cmds.alive(&mut self.$conn()?, nodes).await })
        }

        fn occupy<'a>(
            &'a self,
            channel: &'a str,
            node: &'a str,
        ) -> BoxFuture<'a, Result<bool, BrokerError>> {
            Box::pin(async move {
                let mut conn = self.$conn()?;
                let first = self.cmds.occupy(&mut conn, channel, node).await?;
                self.cmds.track(&mut conn, node, channel, true).await?;
                Ok(first)
            })
        }

        fn vacate<'a>(
            &'a self,
            channel: &'a str,
            node: &'a str,
        ) -> BoxFuture<'a, Result<bool, BrokerError>> {
            Box::pin(async move {
                let mut conn = self.$conn()?;
                let last = self.cmds.vacate(&mut conn, channel, node).await?;
                self.cmds.track(&mut conn, node, channel, false).await?;
                Ok(last)
            })
        }

        fn orphans<'a>(
            &'a self,
            me: &'a str,
        ) -> BoxFuture<'a, Result<Vec<crate::broker::Orphan>, BrokerError>> {
            Box::pin(async move { self.cmds.orphans(&mut self.$conn()?, me).await })
        }

        fn forget_node<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
            Box::pin(async move { self.cmds.forget_node(&mut self.$conn()?, node).await })
        }
    };
}

pub(crate) mod cluster;
mod commands;
pub(crate) mod sentinel;
mod sharded;
mod single;

use super::{Broker, BrokerError, Sink};
use crate::config::RedisConfig;
use crate::metrics::{BrokerOp, metrics};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Starts the Redis backend `cfg` describes; does not wait for Redis, so a
/// node can start (not ready) while Redis is still coming up. A `rediss://`
/// Redis whose certificate does not verify is fatal ([`BrokerError::Tls`]).
pub(crate) async fn start(
    cfg: &RedisConfig,
    sink: Arc<dyn Sink>,
    shutdown: CancellationToken,
) -> Result<Arc<dyn Broker>, BrokerError> {
    if !cfg.shards.is_empty() {
        let mut shards = Vec::with_capacity(cfg.shards.len());
        for (i, url) in cfg.shards.iter().enumerate() {
            let shard = single::RedisBroker::start(cfg, url, i, sink.clone(), shutdown.clone());
            shards.push(shard.await?);
        }
        return Ok(Arc::new(sharded::ShardedBroker::new(shards)));
    }
    if let Some(url) = cluster::ClusterUrl::parse(&cfg.url) {
        let url = url.map_err(|e| BrokerError::Internal(format!("invalid Redis URL: {e}")))?;
        let broker: Arc<dyn Broker> =
            cluster::ClusterBroker::start(cfg, url, sink, shutdown).await?;
        return Ok(broker);
    }
    let broker: Arc<dyn Broker> =
        single::RedisBroker::start(cfg, &cfg.url, 0, sink, shutdown).await?;
    Ok(broker)
}

/// The Redis client for `url` (the configured one, a shard's, or the
/// master's under Sentinel), with the configured CA and client certificate
/// for `rediss://` (the system roots when no CA file is given).
fn client(cfg: &RedisConfig, url: &str) -> Result<redis::Client, BrokerError> {
    let bad_url = |e: redis::RedisError| BrokerError::Internal(format!("invalid Redis URL: {e}"));
    // The TLS files serve `rediss://` URLs only: shards may mix both.
    if !url.starts_with("rediss://") {
        return redis::Client::open(url).map_err(bad_url);
    }
    match tls_certificates(cfg)? {
        None => redis::Client::open(url).map_err(bad_url),
        Some(certs) => {
            redis::Client::build_with_tls(url, certs).map_err(|e| BrokerError::Tls(e.to_string()))
        }
    }
}

/// The configured TLS files, read; `None` when none is configured.
fn tls_certificates(cfg: &RedisConfig) -> Result<Option<redis::TlsCertificates>, BrokerError> {
    if !cfg.has_tls_files() {
        return Ok(None);
    }
    let read = |path: &std::path::Path| {
        std::fs::read(path)
            .map_err(|e| BrokerError::Tls(format!("cannot read {}: {e}", path.display())))
    };
    let root_cert = cfg.tls_ca_file.as_deref().map(read).transpose()?;
    let client_tls = match (&cfg.tls_cert_file, &cfg.tls_key_file) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: read(cert)?,
            client_key: read(key)?,
        }),
        _ => None,
    };
    Ok(Some(redis::TlsCertificates {
        client_tls,
        root_cert,
    }))
}

/// A lazy command connection that reconnects on its own.
fn manager(client: &redis::Client, cfg: &RedisConfig) -> Result<ConnectionManager, BrokerError> {
    let mgr_cfg = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(cfg.timeout))
        .set_response_timeout(Some(cfg.timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_lazy_with_config(client.clone(), mgr_cfg)
        .map_err(|e| BrokerError::Internal(e.to_string()))
}

/// The TLS failure inside a Redis connection error, if that is what it is.
fn tls_failure(e: &redis::RedisError) -> Option<&rustls::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let io = err.downcast_ref::<std::io::Error>().or_else(|| {
            err.downcast_ref::<Arc<dyn std::error::Error + Send + Sync>>()
                .and_then(|a| a.downcast_ref::<std::io::Error>())
        });
        if let Some(tls) = io
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(tls);
        }
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        cur = err.source();
    }
    None
}

/// One connection to a `rediss://` Redis (`url`, for messages) under the
/// command timeout: a TLS failure is fatal, anything else (refused, timed
/// out) only warned about, since the node keeps retrying and reports not
/// ready meanwhile.
async fn probe_tls(
    client: &redis::Client,
    cfg: &RedisConfig,
    url: &str,
) -> Result<(), BrokerError> {
    let url = redact(url);
    let attempt = tokio::time::timeout(cfg.timeout, async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await
    })
    .await;
    let e = match attempt {
        Ok(Ok(_)) => return Ok(()),
        Ok(Err(e)) => e,
        Err(_) => {
            tracing::warn!(url = %url, "Redis TLS: no answer in time at start-up; retrying in the background");
            return Ok(());
        }
    };
    let Some(tls) = tls_failure(&e) else {
        tracing::warn!(url = %url, error = %e, "cannot reach Redis at start-up; retrying in the background");
        return Ok(());
    };
    metrics().broker_error(BrokerOp::Connect);
    let trust = match &cfg.tls_ca_file {
        Some(ca) => format!("CA file {}", ca.display()),
        None => "the system roots".to_owned(),
    };
    let msg = match tls {
        rustls::Error::InvalidCertificate(_) => {
            format!("the server's certificate does not verify against {trust}: {tls}")
        }
        rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired) => format!(
            "{url} requires a client certificate (broker.tls_cert_file and tls_key_file): {tls}"
        ),
        rustls::Error::AlertReceived(
            rustls::AlertDescription::BadCertificate | rustls::AlertDescription::UnknownCA,
        ) => format!("{url} rejected this node's client certificate: {tls}"),
        _ => format!("handshake with {url} failed: {tls}"),
    };
    tracing::error!(url = %url, error = %tls, "Redis TLS handshake failed");
    Err(BrokerError::Tls(msg))
}

/// Hides a password in a Redis URL for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***{}", &url[..s], &url[at..]),
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("redis://:secret@h:1/0"), "redis://***@h:1/0");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
        assert_eq!(
            redact("redis+cluster://u:pw@a:1,b:2"),
            "redis+cluster://***@a:1,b:2"
        );
    }
}
