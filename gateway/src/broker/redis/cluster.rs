//! Redis Cluster: every channel's keys and its shard channel carry the
//! channel's hash tag, so they live on the shard that owns its slot. The
//! publish script runs there and publishes with `SPUBLISH`; nodes
//! `SSUBSCRIBE` on that shard.
//!
//! Sits under [`super`] like [`super::single`]. The redis-rs cluster
//! connection keeps one RESP3 connection per cluster node, carrying both
//! commands and sharded pub/sub (so at most one pub/sub connection per
//! shard), and follows `MOVED`/`ASK` redirects itself. Pub/sub messages
//! arrive as RESP3 pushes and go straight to the sink.
//!
//! Two events put subscriptions in doubt, and both end in the same resync
//! (resubscribe, read positions, lost-writes check, sink told):
//! - the server's `sunsubscribe` for a channel this node still wants: its
//!   slot moved (resharding, or a failover that demoted its master);
//! - a lost connection to any cluster node (a crashed master): every
//!   wanted channel is resubscribed, wherever its slot now lives.
//!
//! URL form: `redis+cluster://[user:pass@]host1:port1[,host2:port2...]`
//! (`rediss+cluster://` over TLS); the hosts are seeds, the rest of the
//! cluster is discovered.

use super::commands::{Commands, Wanted, deliver, first_error, unavailable};
use super::{probe_tls, redact, tls_certificates};
use crate::broker::{BoxFuture, Broker, BrokerError, History, HistoryConfig, Position, Sink};
use crate::config::RedisConfig;
use crate::metrics::{BrokerOp, RedisCommand, metrics};
use herald_proto::redis::{meta_key, pubsub_channel};
use redis::cluster_async::ClusterConnection;
use redis::{PushInfo, PushKind, Value};
use serde_json::value::RawValue;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// A parsed `redis+cluster://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClusterUrl {
    pub(crate) tls: bool,
    /// One `redis://` (or `rediss://`) URL per seed node, with the credentials.
    pub(crate) nodes: Vec<String>,
}

impl ClusterUrl {
    /// `None` when `url` is not a cluster URL; `Some(Err)` when it is, but malformed.
    pub(crate) fn parse(url: &str) -> Option<Result<Self, String>> {
        let (tls, rest) = match url.strip_prefix("redis+cluster://") {
            Some(rest) => (false, rest),
            None => (true, url.strip_prefix("rediss+cluster://")?),
        };
        Some(Self::parse_rest(tls, rest))
    }

    fn parse_rest(tls: bool, rest: &str) -> Result<Self, String> {
        let (userinfo, hosts) = match rest.rfind('@') {
            Some(at) => (&rest[..=at], &rest[at + 1..]),
            None => ("", rest),
        };
        let hosts = hosts.strip_suffix('/').unwrap_or(hosts);
        if hosts.contains('/') {
            return Err("a Redis Cluster has only database 0: no /db after the hosts".to_owned());
        }
        let scheme = if tls { "rediss" } else { "redis" };
        let mut nodes = Vec::new();
        for h in hosts.split(',') {
            let ok = h
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            if !ok {
                return Err(format!("cluster node address {h:?} is not host:port"));
            }
            nodes.push(format!("{scheme}://{userinfo}{h}"));
        }
        Ok(Self { tls, nodes })
    }
}

/// What the push callback and the broker share.
struct Shared {
    sink: Arc<dyn Sink>,
    /// Channels this node wants delivered.
    wanted: Wanted,
    /// Channels the server unsubscribed while still wanted (slot moved).
    moved: Mutex<HashSet<Box<str>>>,
    /// A connection to some cluster node was lost: resync everything.
    all: AtomicBool,
    /// Wakes the maintenance task for either of the above.
    wake: Notify,
}

impl Shared {
    /// Called by the cluster connection for every RESP3 push, in order per
    /// cluster node; must not block.
    fn push(&self, info: PushInfo) {
        match info.kind {
            PushKind::SMessage => {
                if let [Value::BulkString(name), Value::BulkString(payload), ..] = &info.data[..] {
                    deliver(&*self.sink, name, payload);
                }
            }
            PushKind::SUnsubscribe => {
                let Some(Value::BulkString(name)) = info.data.first() else {
                    return;
                };
                let Some(channel) = super::commands::channel_of(name) else {
                    return;
                };
                if self.wanted.contains(channel) {
                    tracing::info!(
                        "Redis Cluster moved a subscribed channel's slot; resubscribing"
                    );
                    self.moved
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(channel.into());
                    self.wake.notify_one();
                }
            }
            PushKind::Disconnection => {
                self.all.store(true, Ordering::Release);
                self.wake.notify_one();
            }
            _ => {}
        }
    }
}

pub(crate) struct ClusterBroker {
    shared: Arc<Shared>,
    client: redis::cluster::ClusterClient,
    /// `None` until the first connection to the cluster succeeds.
    conn: Mutex<Option<ClusterConnection>>,
    cmds: Commands,
    /// The URL with its password hidden, for logs.
    shown: String,
    up: AtomicBool,
}

impl ClusterBroker {
    /// Creates the broker and its maintenance task; does not wait for the
    /// cluster (a `rediss+cluster://` seed is probed once for TLS errors).
    pub(crate) async fn start(
        cfg: &RedisConfig,
        url: ClusterUrl,
        sink: Arc<dyn Sink>,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, BrokerError> {
        let cmds = Commands::new(cfg, 0, true);
        let shared = Arc::new(Shared {
            sink,
            wanted: Wanted::new(&cmds.metrics),
            moved: Mutex::new(HashSet::new()),
            all: AtomicBool::new(false),
            wake: Notify::new(),
        });
        let on_push = {
            let shared = Arc::clone(&shared);
            move |info: PushInfo| -> Result<(), std::convert::Infallible> {
                shared.push(info);
                Ok(())
            }
        };
        let mut builder = redis::cluster::ClusterClientBuilder::new(url.nodes.clone())
            .use_protocol(redis::ProtocolVersion::RESP3)
            .push_sender(on_push)
            .connection_timeout(cfg.timeout)
            .response_timeout(cfg.timeout)
            .retries(3)
            .min_retry_wait(50)
            .max_retry_wait(500);
        if let Some(certs) = tls_certificates(cfg)? {
            builder = builder.certs(certs);
        }
        let client = builder
            .build()
            .map_err(|e| BrokerError::Internal(format!("invalid Redis URL: {e}")))?;
        if url.tls {
            let seed = super::client(cfg, &url.nodes[0])?;
            probe_tls(&seed, cfg, &url.nodes[0]).await?;
        }
        let broker = Arc::new(Self {
            shared,
            client,
            conn: Mutex::new(None),
            cmds,
            shown: redact(&cfg.url),
            up: AtomicBool::new(false),
        });
        broker.cmds.metrics.up.set(0);
        tokio::spawn(Arc::clone(&broker).maintain(shutdown));
        Ok(broker)
    }

    fn conn(&self) -> Result<ClusterConnection, BrokerError> {
        self.conn
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| unavailable("Redis Cluster is not connected"))
    }

    fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Release);
        self.cmds.metrics.up.set(i64::from(up));
    }

    /// Connects, then resubscribes and resyncs whatever the pushes put in
    /// doubt, and keeps wanted channels' state from expiring; for the life
    /// of the process.
    async fn maintain(self: Arc<Self>, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        let mut refresh = tokio::time::interval(self.cmds.cfg.state_ttl / 3);
        refresh.tick().await;
        loop {
            let ok = match self.conn() {
                Err(_) => self.connect().await,
                Ok(conn) => self.resync_pending(&conn).await,
            };
            if ok {
                backoff = Duration::from_millis(100);
            } else {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.shared.wake.notified() => {}
                _ = refresh.tick() => {
                    if let Ok(conn) = self.conn() {
                        self.cmds.refresh_ttls(&conn, &self.shared.wanted.snapshot()).await;
                    }
                }
            }
        }
    }

    /// The first connection to the cluster.
    async fn connect(&self) -> bool {
        let attempt = tokio::time::timeout(
            self.cmds.cfg.timeout * 2,
            self.client.get_async_connection(),
        )
        .await;
        match attempt {
            Ok(Ok(conn)) => {
                *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = Some(conn);
                self.set_up(true);
                tracing::info!(url = %self.shown, "Redis Cluster connected");
                true
            }
            Ok(Err(e)) => {
                metrics().broker_error(BrokerOp::Connect);
                tracing::warn!(url = %self.shown, error = %e, "cannot connect to Redis Cluster");
                false
            }
            Err(_) => {
                metrics().broker_error(BrokerOp::Connect);
                tracing::warn!(url = %self.shown, "Redis Cluster: no answer in time");
                false
            }
        }
    }

    /// Resubscribes and resyncs the channels put in doubt since the last
    /// call; on failure puts them back, so the next attempt retries them.
    async fn resync_pending(&self, conn: &ClusterConnection) -> bool {
        let all = self.shared.all.swap(false, Ordering::AcqRel);
        let moved: Vec<Box<str>> = self
            .shared
            .moved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        let channels: Vec<Box<str>> = if all {
            self.shared.wanted.snapshot()
        } else {
            moved
                .iter()
                .filter(|c| self.shared.wanted.contains(c))
                .cloned()
                .collect()
        };
        if !all && channels.is_empty() {
            return true;
        }
        let res = async {
            self.ssubscribe_all(conn, &channels).await?;
            self.cmds.resync(conn, &*self.shared.sink, &channels).await
        }
        .await;
        match res {
            Ok(()) => {
                if all {
                    self.cmds.metrics.reconnects.inc();
                }
                self.set_up(true);
                tracing::info!(
                    channels = channels.len(),
                    after = if all {
                        "a lost connection"
                    } else {
                        "slot moves"
                    },
                    "resubscribed on Redis Cluster"
                );
                true
            }
            Err(e) => {
                metrics().broker_error(BrokerOp::Pubsub);
                tracing::warn!(error = %e, "resubscribing on Redis Cluster failed; retrying");
                if all {
                    self.shared.all.store(true, Ordering::Release);
                    self.set_up(false);
                } else {
                    let mut m = self.shared.moved.lock().unwrap_or_else(|e| e.into_inner());
                    m.extend(moved);
                }
                false
            }
        }
    }

    /// `SSUBSCRIBE` each channel on the shard owning its slot (one command
    /// per channel: a shard channel command cannot span slots).
    async fn ssubscribe_all(
        &self,
        conn: &ClusterConnection,
        channels: &[Box<str>],
    ) -> Result<(), BrokerError> {
        first_error(channels, |c| {
            let mut conn = conn.clone();
            async move { self.ssubscribe(&mut conn, &c).await }
        })
        .await
    }

    /// `SSUBSCRIBE` on the master owning `channel`'s slot.
    ///
    /// A replica accepts `SSUBSCRIBE` for its master's slots, so after a
    /// failover the client's stale slot map would send it to the demoted
    /// master, and the client drops its connection to a replica at its next
    /// slot refresh, subscription and all, silently. A keyed read goes
    /// first: the demoted master answers `MOVED`, and the client refreshes
    /// its slot map before the `SSUBSCRIBE` is routed.
    async fn ssubscribe(
        &self,
        conn: &mut ClusterConnection,
        channel: &str,
    ) -> Result<(), BrokerError> {
        let mut exists = redis::cmd("EXISTS");
        exists.arg(meta_key(channel));
        let locate = exists.query_async::<i64>(conn);
        self.cmds
            .call(
                RedisCommand::Subscribe,
                "locating a channel's shard",
                locate,
            )
            .await?;
        self.cmds
            .call(
                RedisCommand::Subscribe,
                "subscribing",
                conn.ssubscribe(pubsub_channel(channel)),
            )
            .await
    }
}

impl Broker for ClusterBroker {
    fn publish<'a>(
        &'a self,
        channel: &'a str,
        event: &'a str,
        data: &'a RawValue,
        history: HistoryConfig,
    ) -> BoxFuture<'a, Result<Position, BrokerError>> {
        Box::pin(async move {
            self.cmds
                .publish(&mut self.conn()?, channel, event, data, history)
                .await
        })
    }

    fn subscribe<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<Position, BrokerError>> {
        Box::pin(async move {
            let mut conn = self.conn()?;
            self.shared.wanted.add(channel);
            let res = async {
                self.ssubscribe(&mut conn, channel).await?;
                // Read after SSUBSCRIBE is confirmed: nothing after this position can be missed.
                self.cmds.read_position(&mut conn, channel).await
            }
            .await;
            if res.is_err() {
                self.shared.wanted.remove(channel);
                let _ = conn.sunsubscribe(pubsub_channel(channel)).await;
            }
            res
        })
    }

    fn unsubscribe<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            self.shared.wanted.remove(channel);
            let mut conn = self.conn()?;
            tokio::time::timeout(
                self.cmds.cfg.timeout,
                conn.sunsubscribe(pubsub_channel(channel)),
            )
            .await
            .map_err(|_| unavailable("timed out unsubscribing"))?
            .map_err(unavailable)
        })
    }

    fn history<'a>(
        &'a self,
        channel: &'a str,
        after: u64,
        limit: usize,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<History, BrokerError>> {
        Box::pin(async move {
            self.cmds
                .history(&mut self.conn()?, channel, after, limit, ttl)
                .await
        })
    }

    fn shared_secret(&self) -> BoxFuture<'_, Result<Option<String>, BrokerError>> {
        Box::pin(async move { self.cmds.shared_secret(&mut self.conn()?).await })
    }

    fn is_ready(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    presence_methods!(conn);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cluster_urls() {
        let u = ClusterUrl::parse("redis+cluster://app:pw@r1:7000,r2:7001")
            .expect("cluster")
            .expect("valid");
        assert_eq!(
            u,
            ClusterUrl {
                tls: false,
                nodes: vec![
                    "redis://app:pw@r1:7000".to_owned(),
                    "redis://app:pw@r2:7001".to_owned()
                ],
            }
        );
        let u = ClusterUrl::parse("rediss+cluster://r1:7000/")
            .expect("cluster")
            .expect("valid");
        assert!(u.tls);
        assert_eq!(u.nodes, vec!["rediss://r1:7000".to_owned()]);
        assert!(ClusterUrl::parse("redis://r1:7000").is_none());
        let bad = |u: &str| ClusterUrl::parse(u).expect("cluster").expect_err(u);
        assert!(bad("redis+cluster://r1:7000/3").contains("database 0"));
        assert!(bad("redis+cluster://r1,r2:7001").contains("host:port"));
    }
}
