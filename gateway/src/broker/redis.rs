//! Redis broker: the cluster backend.
//!
//! Key layout (all keys of a channel share the hash tag `{<channel>}`, so one
//! channel lives in one Redis Cluster slot):
//! - `herald:{<channel>}:m` — hash `e` (epoch), `o` (latest offset); expires
//!   after `state_ttl` without publish or subscribe, which starts a new epoch.
//! - `herald:{<channel>}` — the pub/sub channel nodes subscribe to.
//!
//! The layout and [`PUBLISH_SCRIPT`] live in `herald_proto::redis`, so that
//! backends and tools can publish straight into Redis. The script assigns the offset and publishes in one Lua call, so the
//! order on the pub/sub channel is the offset order; the recovery issue adds
//! the history stream append to that same script. A pub/sub payload is
//! `<offset> <epoch>\n<complete client message frame>`: nodes forward the
//! frame without re-encoding it.
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

use super::sentinel::SentinelUrl;
use super::{BoxFuture, Broker, BrokerError, History, HistoryConfig, Position, Sink, new_epoch};
use crate::config::RedisConfig;
use crate::metrics::{BrokerOp, RedisCommand, RedisResult, ResetReason, metrics};
use bytes::Bytes;
use futures_util::StreamExt;
use herald_proto::MessageFrame;
use herald_proto::redis::{HISTORY_SCRIPT, PUBLISH_SCRIPT, history_key, meta_key, pubsub_channel};
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink};
use serde_json::value::RawValue;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// KEYS: meta, history stream. ARGV: fresh epoch (used if none), ttl
/// seconds. Returns `{epoch, offset}`. A new epoch clears old history, whose
/// stream ids would otherwise block the next append.
pub(crate) const POSITION_SCRIPT: &str = r#"
local e = redis.call('HGET', KEYS[1], 'e')
if not e then
  e = ARGV[1]
  redis.call('HSET', KEYS[1], 'e', e, 'o', 0)
  redis.call('DEL', KEYS[2])
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
local o = redis.call('HGET', KEYS[1], 'o') or '0'
return {e, tonumber(o)}
"#;

/// KEYS: meta, history stream. ARGV: epoch the node knows, highest offset it
/// delivered, fresh epoch, ttl seconds. When the channel still has that epoch
/// but a lower offset (Redis lost writes: a failover to a lagging replica, a
/// restore), starts the fresh epoch so no client can mistake the new
/// timeline's offsets for the ones it saw. Returns `{epoch, offset}`.
const EPOCH_BUMP_SCRIPT: &str = r#"
local e = redis.call('HGET', KEYS[1], 'e')
local o = tonumber(redis.call('HGET', KEYS[1], 'o') or '0')
if e == ARGV[1] and o < tonumber(ARGV[2]) then
  e = ARGV[3]
  redis.call('HSET', KEYS[1], 'e', e)
  redis.call('DEL', KEYS[2])
  redis.call('EXPIRE', KEYS[1], ARGV[4])
end
return {e or false, o}
"#;

fn channel_of(pubsub_name: &str) -> Option<&str> {
    pubsub_name.strip_prefix("herald:{")?.strip_suffix('}')
}

/// A pub/sub payload: `<offset> <epoch>[ <ms publish time>]\n<frame>`.
struct Payload<'a> {
    offset: u64,
    epoch: &'a str,
    /// Redis clock at publish, milliseconds since the UNIX epoch.
    published_ms: Option<u64>,
    frame: &'a [u8],
}

fn parse_payload(payload: &[u8]) -> Option<Payload<'_>> {
    let nl = payload.iter().position(|&b| b == b'\n')?;
    let head = std::str::from_utf8(&payload[..nl]).ok()?;
    let mut parts = head.split(' ');
    let offset = parts.next()?.parse().ok()?;
    let epoch = parts.next()?;
    let published_ms = parts.next().and_then(|t| t.parse().ok());
    Some(Payload {
        offset,
        epoch,
        published_ms,
        frame: &payload[nl + 1..],
    })
}

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
    sink: Arc<dyn Sink>,
    /// Channels this node wants delivered; replayed on every pub/sub reconnect.
    wanted: Mutex<HashSet<Box<str>>>,
    /// Subscribe handle of the live pub/sub connection; `None` while down.
    pubsub: Mutex<Option<PubSubSink>>,
    up: AtomicBool,
    publish: redis::Script,
    position: redis::Script,
    epoch_bump: redis::Script,
    history: redis::Script,
}

fn unavailable(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(e.to_string())
}

impl RedisBroker {
    /// Runs one Redis call under the command timeout, counts it by command
    /// and result (timing scripts), and maps a failure to `unavailable`
    /// saying what was being done (`doing`, e.g. "publishing").
    async fn call<T>(
        &self,
        cmd: RedisCommand,
        doing: &str,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, BrokerError> {
        let started = std::time::Instant::now();
        let res = tokio::time::timeout(self.cfg.timeout, fut).await;
        let result = match &res {
            Ok(Ok(_)) => RedisResult::Ok,
            Ok(Err(_)) => RedisResult::Error,
            Err(_) => RedisResult::Timeout,
        };
        metrics().redis(cmd, result, started.elapsed());
        match res {
            Ok(r) => r.map_err(unavailable),
            Err(_) => Err(unavailable(format!("timed out {doing}"))),
        }
    }

    /// Creates the broker and starts its pub/sub task; does not wait for Redis,
    /// so a node can start (not ready) while Redis is still coming up.
    ///
    /// A `rediss://` Redis gets one connection attempt first: a certificate
    /// that does not verify is fatal ([`BrokerError::Tls`]), while an
    /// unreachable Redis is only warned about.
    pub(crate) async fn start(
        cfg: &RedisConfig,
        sink: Arc<dyn Sink>,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, BrokerError> {
        let sentinel = SentinelUrl::parse(&cfg.url)
            .transpose()
            .map_err(|e| BrokerError::Internal(format!("invalid Redis URL: {e}")))?;
        // Under Sentinel the pub/sub task's first connect asks for the
        // master; until then (not ready) commands go nowhere: nothing listens
        // on port 0, and no credentials are sent anywhere.
        let url = match &sentinel {
            Some(_) => "redis://127.0.0.1:0".to_owned(),
            None => cfg.url.clone(),
        };
        let client = client(cfg, &url)?;
        if cfg.url.starts_with("rediss://") {
            probe_tls(&client, cfg).await?;
        }
        let conn = manager(&client, cfg)?;
        let broker = Arc::new(Self {
            target: Mutex::new(Target {
                client,
                conn,
                master: None,
            }),
            sentinel,
            cfg: cfg.clone(),
            sink,
            wanted: Mutex::new(HashSet::new()),
            pubsub: Mutex::new(None),
            up: AtomicBool::new(false),
            publish: redis::Script::new(PUBLISH_SCRIPT),
            position: redis::Script::new(POSITION_SCRIPT),
            epoch_bump: redis::Script::new(EPOCH_BUMP_SCRIPT),
            history: redis::Script::new(HISTORY_SCRIPT),
        });
        metrics().broker_up.set(0);
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
                metrics().redis_master_changes.inc();
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

    fn ttl_secs(&self) -> u64 {
        self.cfg.state_ttl.as_secs().max(1)
    }

    async fn read_position(&self, channel: &str) -> Result<Position, BrokerError> {
        let mut conn = self.conn();
        let mut inv = self.position.key(meta_key(channel));
        inv.key(history_key(channel))
            .arg(new_epoch())
            .arg(self.ttl_secs());
        let (epoch, offset): (String, u64) = self
            .call(
                RedisCommand::Position,
                "reading channel position",
                inv.invoke_async(&mut conn),
            )
            .await?;
        Ok(Position {
            epoch: epoch.into(),
            offset,
        })
    }

    fn current_pubsub(&self) -> Option<PubSubSink> {
        self.pubsub
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Release);
        metrics().broker_up.set(i64::from(up));
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
                metrics().pubsub_reconnects.inc();
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
                        self.refresh_ttls().await;
                        continue;
                    }
                    _ = connection.cancelled() => None,
                    m = stream.next() => m,
                };
                let Some(msg) = msg else { break };
                let Some(channel) = channel_of(msg.get_channel_name()) else {
                    continue;
                };
                match parse_payload(msg.get_payload_bytes()) {
                    Some(p) => {
                        if let Some(ms) = p.published_ms {
                            let now = crate::clock::now_millis();
                            metrics()
                                .broker_lag
                                .observe(now.saturating_sub(ms) as f64 / 1000.0);
                        }
                        self.sink.publication(
                            channel,
                            p.epoch,
                            p.offset,
                            Bytes::copy_from_slice(p.frame),
                        );
                    }
                    None => {
                        metrics().broker_error(BrokerOp::Decode);
                        tracing::warn!("ignoring a malformed pub/sub payload");
                    }
                }
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
            match self.call(RedisCommand::Ping, "pinging", ping).await {
                Ok(_) => return Ok(pubsub),
                Err(e) => last = Some(e.to_string()),
            }
        }
        Err(unavailable(last.unwrap_or_default()))
    }

    fn count_wanted(&self) {
        let n = self.wanted.lock().unwrap_or_else(|e| e.into_inner()).len();
        metrics().redis_subscriptions.set(n as i64);
    }

    /// The channels this node wants, copied out of the lock.
    fn wanted_snapshot(&self) -> Vec<Box<str>> {
        let wanted = self.wanted.lock().unwrap_or_else(|e| e.into_inner());
        wanted.iter().cloned().collect()
    }

    /// Pushes back the expiry of every subscribed channel's state.
    async fn refresh_ttls(&self) {
        let channels = self.wanted_snapshot();
        for chunk in channels.chunks(500) {
            let mut pipe = redis::pipe();
            for c in chunk {
                pipe.expire(meta_key(c), self.ttl_secs() as i64).ignore();
            }
            let mut conn = self.conn();
            let expire = pipe.query_async::<()>(&mut conn);
            if let Err(e) = self
                .call(RedisCommand::Expire, "refreshing expiry", expire)
                .await
            {
                metrics().broker_failure(BrokerOp::Refresh, &e);
                return;
            }
        }
        tracing::debug!(channels = channels.len(), "refreshed channel state expiry");
    }

    /// Replays every wanted subscription and reports each channel's position,
    /// so the sink can tell clients that may have missed publications.
    /// The channel's offset went backwards under a known epoch: replace the epoch.
    async fn bump_epoch(&self, channel: &str, known: &Position) -> Result<Position, BrokerError> {
        tracing::warn!(
            known = known.offset,
            "channel offset went backwards in Redis (lost writes, e.g. a failover); starting a new epoch"
        );
        metrics().state_reset(ResetReason::OffsetRegressed);
        let mut conn = self.conn();
        let mut inv = self.epoch_bump.key(meta_key(channel));
        inv.key(history_key(channel))
            .arg(&*known.epoch)
            .arg(known.offset)
            .arg(new_epoch())
            .arg(self.ttl_secs());
        let (epoch, offset): (Option<String>, u64) = self
            .call(
                RedisCommand::EpochBump,
                "starting a new epoch",
                inv.invoke_async(&mut conn),
            )
            .await?;
        match epoch {
            Some(epoch) => Ok(Position {
                epoch: epoch.into(),
                offset,
            }),
            // The state vanished meanwhile: the position script starts one.
            None => self.read_position(channel).await,
        }
    }

    async fn resubscribe_all(&self, sub: &mut PubSubSink) -> Result<(), BrokerError> {
        let channels = self.wanted_snapshot();
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
        let this = self;
        let positions = futures_util::stream::iter(channels.iter().cloned())
            .map(|c| async move {
                let p = this.read_position(&c).await;
                (c, p)
            })
            .buffer_unordered(64)
            .collect::<Vec<_>>()
            .await;
        for (channel, pos) in positions {
            let mut pos = pos?;
            if let Some(known) = self.sink.position(&channel) {
                if known.epoch == pos.epoch && known.offset > pos.offset {
                    pos = self.bump_epoch(&channel, &known).await?;
                }
            }
            self.sink.resync(&channel, &pos);
        }
        tracing::info!(channels = channels.len(), "resubscribed after reconnect");
        Ok(())
    }
}

/// Hides a password in a Redis URL for logs.
/// The Redis client, with the configured CA and client certificate for a
/// `rediss://` URL (the system roots when no CA file is given).
/// `url` is the configured one, or the master's under Sentinel.
fn client(cfg: &RedisConfig, url: &str) -> Result<redis::Client, BrokerError> {
    let bad_url = |e: redis::RedisError| BrokerError::Internal(format!("invalid Redis URL: {e}"));
    if !cfg.has_tls_files() {
        return redis::Client::open(url).map_err(bad_url);
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
    redis::Client::build_with_tls(
        url,
        redis::TlsCertificates {
            client_tls,
            root_cert,
        },
    )
    .map_err(|e| BrokerError::Tls(e.to_string()))
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

/// How often a connected node under Sentinel asks whether the master moved.
const SENTINEL_POLL: Duration = Duration::from_secs(1);

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

/// One connection to a `rediss://` Redis under the command timeout: a TLS
/// failure is fatal, anything else (refused, timed out) only warned about,
/// since the node keeps retrying and reports not ready meanwhile.
async fn probe_tls(client: &redis::Client, cfg: &RedisConfig) -> Result<(), BrokerError> {
    let url = redact(&cfg.url);
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

fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***{}", &url[..s], &url[at..]),
        _ => url.to_owned(),
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
            let prefix = MessageFrame::prefix(channel, event, data);
            let mut conn = self.conn();
            let mut inv = self.publish.key(meta_key(channel));
            inv.key(pubsub_channel(channel))
                .key(history_key(channel))
                .arg(new_epoch())
                .arg(self.ttl_secs())
                .arg(prefix)
                .arg(history.size)
                .arg(history.ttl.as_secs().max(1));
            let (epoch, offset): (String, u64) = self
                .call(
                    RedisCommand::Publish,
                    "publishing",
                    inv.invoke_async(&mut conn),
                )
                .await?;
            Ok(Position {
                epoch: epoch.into(),
                offset,
            })
        })
    }

    fn subscribe<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<Position, BrokerError>> {
        Box::pin(async move {
            let Some(mut sub) = self.current_pubsub() else {
                return Err(unavailable("Redis pub/sub is not connected"));
            };
            self.wanted
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(channel.into());
            self.count_wanted();
            let res = async {
                tokio::time::timeout(self.cfg.timeout, sub.subscribe(pubsub_channel(channel)))
                    .await
                    .map_err(|_| unavailable("timed out subscribing"))?
                    .map_err(unavailable)?;
                // Read after SUBSCRIBE is confirmed: nothing after this position can be missed.
                self.read_position(channel).await
            }
            .await;
            if res.is_err() {
                self.wanted
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(channel);
                self.count_wanted();
                let _ = sub.unsubscribe(pubsub_channel(channel)).await;
            }
            res
        })
    }

    fn unsubscribe<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            self.wanted
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(channel);
            self.count_wanted();
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
            let mut conn = self.conn();
            let mut inv = self.history.key(meta_key(channel));
            inv.key(history_key(channel))
                .arg(after)
                .arg(limit.max(1))
                .arg(ttl.as_secs().max(1));
            let raw: Vec<redis::Value> = self
                .call(
                    RedisCommand::History,
                    "reading history",
                    inv.invoke_async(&mut conn),
                )
                .await?;
            parse_history(raw)
        })
    }

    fn shared_secret(&self) -> BoxFuture<'_, Result<Option<String>, BrokerError>> {
        Box::pin(async move {
            // First node to ask sets it; everyone reads the same value.
            let mut conn = self.conn();
            let candidate = crate::token::random_secret();
            let mut set = redis::cmd("SET");
            set.arg(SECRET_KEY).arg(&candidate).arg("NX");
            let mut get = redis::cmd("GET");
            get.arg(SECRET_KEY);
            let res = async {
                set.query_async::<Option<String>>(&mut conn).await?;
                get.query_async::<Option<String>>(&mut conn).await
            };
            tokio::time::timeout(self.cfg.timeout, res)
                .await
                .map_err(|_| unavailable("timed out reading the shared secret"))?
                .map_err(unavailable)
        })
    }

    fn is_ready(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }
}

/// Where nodes without a configured reconnect secret agree on one.
const SECRET_KEY: &str = "herald:reconnect-secret";

/// Decodes [`HISTORY_SCRIPT`]'s reply.
fn parse_history(raw: Vec<redis::Value>) -> Result<History, BrokerError> {
    use redis::Value;
    let bad = || BrokerError::Internal("unexpected history reply".to_owned());
    let int = |v: &Value| match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        _ => None,
    };
    let mut it = raw.into_iter();
    let epoch = match it.next().ok_or_else(bad)? {
        Value::BulkString(b) => Some(String::from_utf8(b).map_err(|_| bad())?.into()),
        Value::Nil => None,
        _ => return Err(bad()),
    };
    // The channel's top offset; recovery compares against the join position instead.
    it.next().as_ref().and_then(int).ok_or_else(bad)?;
    let mut entries = Vec::new();
    while let Some(o) = it.next() {
        let offset = int(&o).ok_or_else(bad)?;
        let frame = match it.next() {
            Some(Value::BulkString(b)) => Bytes::from(b),
            _ => return Err(bad()),
        };
        entries.push((offset, frame));
    }
    Ok(History { epoch, entries })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_a_hash_tag() {
        assert_eq!(meta_key("news:a"), "herald:{news:a}:m");
        assert_eq!(pubsub_channel("news:a"), "herald:{news:a}");
        assert_eq!(channel_of("herald:{news:a}"), Some("news:a"));
        assert_eq!(channel_of("other"), None);
    }

    #[test]
    fn payload_parses() {
        let p = parse_payload(b"42 abc\n{\"op\":\"message\"}").expect("valid");
        assert_eq!(
            (p.offset, p.epoch, p.published_ms, p.frame),
            (42, "abc", None, &b"{\"op\":\"message\"}"[..])
        );
        let p = parse_payload(b"7 e 1700000000123\n{}").expect("valid");
        assert_eq!((p.offset, p.published_ms), (7, Some(1_700_000_000_123)));
        assert!(parse_payload(b"garbage").is_none());
        assert!(parse_payload(b"x abc\n{}").is_none());
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("redis://:secret@h:1/0"), "redis://***@h:1/0");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
    }
}
