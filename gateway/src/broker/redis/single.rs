//! One Redis (or the master a Sentinel group names): a command connection
//! and one pub/sub connection, under [`super`] which picks this backend for
//! `redis://`, `rediss://` and `redis+sentinel://` URLs (and once per
//! client-side shard).
//!
//! One task owns the pub/sub connection: on loss it marks the broker down,
//! reconnects with backoff, resubscribes every wanted channel and reports each
//! channel's position to the sink, which tells affected clients (4004).
//!
//! With a `redis+sentinel://` URL ([`super::sentinel`]) every pub/sub
//! (re)connect first asks the sentinels for the master and, when it moved,
//! rebuilds the command connection there; while connected the task keeps
//! asking, and a new master ends the pub/sub connection, so the reconnect
//! above (resubscribe, lost-writes check) runs after every failover.

use super::commands::{Commands, Wanted, deliver, unavailable};
use super::sentinel::SentinelUrl;
use super::{client, manager, probe_tls, redact};
use crate::broker::{BoxFuture, Broker, BrokerError, History, HistoryConfig, Position, Sink};
use crate::config::RedisConfig;
use crate::metrics::{BrokerOp, RedisCommand, metrics};
use futures_util::StreamExt;
use herald_proto::redis::pubsub_channel;
use redis::aio::{ConnectionManager, PubSubSink};
use serde_json::value::RawValue;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Where commands and pub/sub go: the URL's Redis, or Sentinel's master.
struct Target {
    client: redis::Client,
    conn: ConnectionManager,
    /// The master's `host:port` under Sentinel.
    master: Option<String>,
}

pub(crate) struct RedisBroker {
    target: Mutex<Target>,
    sentinel: Option<SentinelUrl>,
    cfg: RedisConfig,
    cmds: Commands,
    sink: Arc<dyn Sink>,
    /// Channels this node wants delivered; replayed on every pub/sub reconnect.
    wanted: Wanted,
    /// Subscribe handle of the live pub/sub connection; `None` while down.
    pubsub: Mutex<Option<PubSubSink>>,
    up: AtomicBool,
}

impl RedisBroker {
    /// Creates the broker and starts its pub/sub task; does not wait for Redis,
    /// so a node can start (not ready) while Redis is still coming up.
    ///
    /// A `rediss://` Redis gets one connection attempt first: a certificate
    /// that does not verify is fatal ([`BrokerError::Tls`]), while an
    /// unreachable Redis is only warned about.
    pub(crate) async fn start(
        cfg: &RedisConfig,
        url: &str,
        shard: usize,
        sink: Arc<dyn Sink>,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, BrokerError> {
        let sentinel = SentinelUrl::parse(url)
            .transpose()
            .map_err(|e| BrokerError::Internal(format!("invalid Redis URL: {e}")))?;
        // Under Sentinel the pub/sub task's first connect asks for the
        // master; until then (not ready) commands go nowhere: nothing listens
        // on port 0, and no credentials are sent anywhere.
        let target_url = match &sentinel {
            Some(_) => "redis://127.0.0.1:0",
            None => url,
        };
        let client = client(cfg, target_url)?;
        if url.starts_with("rediss://") {
            probe_tls(&client, cfg, url).await?;
        }
        let conn = manager(&client, cfg)?;
        let cmds = Commands::new(cfg, shard, false);
        let wanted = Wanted::new(&cmds.metrics);
        let broker = Arc::new(Self {
            target: Mutex::new(Target {
                client,
                conn,
                master: None,
            }),
            sentinel,
            cfg: RedisConfig {
                url: url.to_owned(),
                ..cfg.clone()
            },
            cmds,
            sink,
            wanted,
            pubsub: Mutex::new(None),
            up: AtomicBool::new(false),
        });
        broker.cmds.metrics.up.set(0);
        tokio::spawn(Arc::clone(&broker).pubsub_task(shutdown));
        Ok(broker)
    }

    fn conn(&self) -> ConnectionManager {
        self.target
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .conn
            .clone()
    }

    /// Under Sentinel: asks for the master and, when it is not the one
    /// connected to, moves the command connection there. Returns the client
    /// of the current target.
    async fn follow_master(&self) -> Result<redis::Client, BrokerError> {
        let Some(sentinel) = &self.sentinel else {
            return Ok(self
                .target
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .client
                .clone());
        };
        let addr = sentinel
            .master_addr(self.cfg.timeout)
            .await
            .map_err(unavailable)?;
        let mut target = self.target.lock().unwrap_or_else(|e| e.into_inner());
        if target.master.as_deref() == Some(addr.as_str()) {
            return Ok(target.client.clone());
        }
        let client = client(&self.cfg, &sentinel.master_url(&addr))?;
        let conn = manager(&client, &self.cfg)?;
        match &target.master {
            Some(old) => {
                self.cmds.metrics.master_changes.inc();
                tracing::warn!(old = %old, new = %addr, master = %sentinel.master, "Redis Sentinel names a new master; moving to it");
            }
            None => {
                tracing::info!(master = %sentinel.master, addr = %addr, "Redis Sentinel names the master")
            }
        }
        *target = Target {
            client: client.clone(),
            conn,
            master: Some(addr),
        };
        Ok(client)
    }

    /// Under Sentinel, whether the sentinels now name another master than the
    /// connected one (an unreachable sentinel set is not a move).
    async fn master_moved(&self) -> bool {
        let Some(sentinel) = &self.sentinel else {
            return false;
        };
        let Ok(addr) = sentinel.master_addr(self.cfg.timeout).await else {
            return false;
        };
        let target = self.target.lock().unwrap_or_else(|e| e.into_inner());
        target.master.as_deref() != Some(addr.as_str())
    }

    /// Asks the sentinels every [`SENTINEL_POLL`] until `connection` ends,
    /// and ends it when they name another master than the connected one.
    async fn watch_master(self: Arc<Self>, connection: CancellationToken) {
        loop {
            tokio::select! {
                _ = connection.cancelled() => return,
                _ = tokio::time::sleep(SENTINEL_POLL) => {}
            }
            let moved = tokio::select! {
                _ = connection.cancelled() => return,
                m = self.master_moved() => m,
            };
            if moved {
                connection.cancel();
                return;
            }
        }
    }

    /// Occupancy of a channel on this shard only (client-side shards keep
    /// the node's channel list on the first shard).
    pub(super) async fn occupy_channel(
        &self,
        channel: &str,
        node: &str,
    ) -> Result<bool, BrokerError> {
        self.cmds.occupy(&mut self.conn(), channel, node).await
    }

    pub(super) async fn vacate_channel(
        &self,
        channel: &str,
        node: &str,
    ) -> Result<bool, BrokerError> {
        self.cmds.vacate(&mut self.conn(), channel, node).await
    }

    pub(super) async fn track(
        &self,
        node: &str,
        channel: &str,
        add: bool,
    ) -> Result<(), BrokerError> {
        self.cmds.track(&mut self.conn(), node, channel, add).await
    }

    /// [`Self::conn`] for code shared with backends whose connection may be missing.
    fn checked_conn(&self) -> Result<ConnectionManager, BrokerError> {
        Ok(self.conn())
    }

    /// Deletes `channel`'s state here (it lives on another shard now).
    pub(super) async fn forget(&self, channel: &str) {
        self.cmds.forget(&mut self.conn(), channel).await;
    }

    fn current_pubsub(&self) -> Option<PubSubSink> {
        self.pubsub
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Release);
        self.cmds.metrics.up.set(i64::from(up));
    }

    /// Owns the pub/sub connection for the life of the process.
    async fn pubsub_task(self: Arc<Self>, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        let mut first = true;
        loop {
            if !first {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            let reconnect = !first;
            first = false;
            let (mut sub, mut stream) = match self.connect_pubsub().await {
                Ok(p) => p.split(),
                Err(e) => {
                    metrics().broker_error(BrokerOp::Connect);
                    tracing::warn!(error = %e, retry_in = ?backoff, "cannot connect to Redis");
                    continue;
                }
            };
            *self.pubsub.lock().unwrap_or_else(|e| e.into_inner()) = Some(sub.clone());
            if let Err(e) = self.resubscribe_all(&mut sub).await {
                metrics().broker_error(BrokerOp::Pubsub);
                tracing::warn!(error = %e, retry_in = ?backoff, "resubscribing after reconnect failed");
                *self.pubsub.lock().unwrap_or_else(|e| e.into_inner()) = None;
                continue;
            }
            backoff = Duration::from_millis(100);
            if reconnect {
                self.cmds.metrics.reconnects.inc();
            }
            self.set_up(true);
            tracing::info!(url = %redact(&self.cfg.url), "Redis pub/sub connected");
            // Keys of channels with live subscribers must not expire while
            // quiet: that would start a new epoch under their feet.
            let mut refresh = tokio::time::interval(self.cfg.state_ttl / 3);
            refresh.tick().await;
            // Ended by the watcher when Sentinel names another master, and
            // by this task when the connection ends (which stops the watcher).
            let connection = shutdown.child_token();
            if self.sentinel.is_some() {
                tokio::spawn(Arc::clone(&self).watch_master(connection.clone()));
            }
            loop {
                let msg = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = refresh.tick() => {
                        self.cmds.refresh_ttls(&self.conn(), &self.wanted.snapshot()).await;
                        continue;
                    }
                    _ = connection.cancelled() => None,
                    m = stream.next() => m,
                };
                let Some(msg) = msg else { break };
                deliver(
                    &*self.sink,
                    msg.get_channel_name().as_bytes(),
                    msg.get_payload_bytes(),
                );
            }
            connection.cancel();
            if shutdown.is_cancelled() {
                return;
            }
            self.set_up(false);
            *self.pubsub.lock().unwrap_or_else(|e| e.into_inner()) = None;
            metrics().broker_error(BrokerOp::Pubsub);
            tracing::warn!("Redis pub/sub connection lost; reconnecting");
        }
    }

    /// Opens the pub/sub connection and makes sure the command connection
    /// works too (its first command after an outage may hit a dead socket).
    async fn connect_pubsub(&self) -> Result<redis::aio::PubSub, BrokerError> {
        let client = self.follow_master().await?;
        let pubsub = tokio::time::timeout(self.cfg.timeout, client.get_async_pubsub())
            .await
            .map_err(|_| unavailable("timed out connecting"))?
            .map_err(unavailable)?;
        let mut last = None;
        for _ in 0..3 {
            let mut conn = self.conn();
            let cmd = redis::cmd("PING");
            let ping = cmd.query_async::<String>(&mut conn);
            match self.cmds.call(RedisCommand::Ping, "pinging", ping).await {
                Ok(_) => return Ok(pubsub),
                Err(e) => last = Some(e.to_string()),
            }
        }
        Err(unavailable(last.unwrap_or_default()))
    }

    /// Replays every wanted subscription and reports each channel's position,
    /// so the sink can tell clients that may have missed publications.
    async fn resubscribe_all(&self, sub: &mut PubSubSink) -> Result<(), BrokerError> {
        let channels = self.wanted.snapshot();
        if channels.is_empty() {
            return Ok(());
        }
        for chunk in channels.chunks(512) {
            let names: Vec<String> = chunk.iter().map(|c| pubsub_channel(c)).collect();
            tokio::time::timeout(self.cfg.timeout, sub.subscribe(names))
                .await
                .map_err(|_| unavailable("timed out resubscribing"))?
                .map_err(unavailable)?;
        }
        self.cmds
            .resync(&self.conn(), &*self.sink, &channels)
            .await?;
        tracing::info!(channels = channels.len(), "resubscribed after reconnect");
        Ok(())
    }
}

impl Broker for RedisBroker {
    fn publish<'a>(
        &'a self,
        channel: &'a str,
        event: &'a str,
        data: &'a RawValue,
        history: HistoryConfig,
    ) -> BoxFuture<'a, Result<Position, BrokerError>> {
        Box::pin(async move {
            self.cmds
                .publish(&mut self.conn(), channel, event, data, history)
                .await
        })
    }

    fn subscribe<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<Position, BrokerError>> {
        Box::pin(async move {
            let Some(mut sub) = self.current_pubsub() else {
                return Err(unavailable("Redis pub/sub is not connected"));
            };
            self.wanted.add(channel);
            let res = async {
                tokio::time::timeout(self.cfg.timeout, sub.subscribe(pubsub_channel(channel)))
                    .await
                    .map_err(|_| unavailable("timed out subscribing"))?
                    .map_err(unavailable)?;
                // Read after SUBSCRIBE is confirmed: nothing after this position can be missed.
                self.cmds.read_position(&mut self.conn(), channel).await
            }
            .await;
            if res.is_err() {
                self.wanted.remove(channel);
                let _ = sub.unsubscribe(pubsub_channel(channel)).await;
            }
            res
        })
    }

    fn unsubscribe<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            self.wanted.remove(channel);
            let Some(mut sub) = self.current_pubsub() else {
                // Down: the reconnect will not resubscribe it, nothing else to do.
                return Ok(());
            };
            tokio::time::timeout(self.cfg.timeout, sub.unsubscribe(pubsub_channel(channel)))
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
                .history(&mut self.conn(), channel, after, limit, ttl)
                .await
        })
    }

    fn shared_secret(&self) -> BoxFuture<'_, Result<Option<String>, BrokerError>> {
        Box::pin(async move { self.cmds.shared_secret(&mut self.conn()).await })
    }

    fn is_ready(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    presence_methods!(checked_conn);
}

/// How often a connected node under Sentinel asks whether the master moved.
const SENTINEL_POLL: Duration = Duration::from_secs(1);
