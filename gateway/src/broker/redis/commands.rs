//! The Redis commands of one broker shard, over any connection: a single
//! Redis's [`ConnectionManager`](redis::aio::ConnectionManager) or a Redis
//! Cluster's connection (which follows `MOVED`/`ASK` itself).
//!
//! Sits under [`super::single`] and [`super::cluster`], which own the
//! connections and the pub/sub side. Every call runs under the command
//! timeout and is counted on the shard's series.

use super::super::{BrokerError, History, HistoryConfig, Position, Sink, new_epoch};
use crate::config::RedisConfig;
use crate::metrics::{BrokerOp, RedisCommand, RedisResult, ResetReason, ShardMetrics, metrics};
use bytes::Bytes;
use futures_util::StreamExt;
use herald_proto::MessageFrame;
use herald_proto::redis::{HISTORY_SCRIPT, PUBLISH_SCRIPT, history_key, meta_key, presence_key};
use redis::aio::ConnectionLike;
use serde_json::value::RawValue;

/// KEYS: meta, history stream. ARGV: fresh epoch (used if none), ttl
/// seconds. Returns `{epoch, offset}`. A new epoch clears old history, whose
/// stream ids would otherwise block the next append.
const POSITION_SCRIPT: &str = r#"
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

/// KEYS: presence hash. ARGV: session, entry, max entries, ttl seconds.
/// Returns 1 when added or replaced, 0 when the hash is full.
const PRESENCE_ADD_SCRIPT: &str = r#"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
"#;

/// KEYS: the channel's pub/sub (shard) channel. ARGV: payload, `s` to
/// `SPUBLISH`. A script, so that a cluster routes it by the channel's slot.
const NOTICE_SCRIPT: &str = r#"
local cmd = 'PUBLISH'
if ARGV[2] == 's' then cmd = 'SPUBLISH' end
redis.call(cmd, KEYS[1], ARGV[1])
return 1
"#;

/// KEYS: the channel's occupancy set (nodes with subscribers). ARGV: node.
/// 1 when the node is the first one in.
const OCCUPY_SCRIPT: &str = r#"
if redis.call('SADD', KEYS[1], ARGV[1]) == 1 and redis.call('SCARD', KEYS[1]) == 1 then
  return 1
end
return 0
"#;

/// KEYS: the channel's occupancy set. ARGV: node. 1 when it was the last one out.
const VACATE_SCRIPT: &str = r#"
if redis.call('SREM', KEYS[1], ARGV[1]) == 1 and redis.call('SCARD', KEYS[1]) == 0 then
  return 1
end
return 0
"#;

/// Every node that ever occupied a channel (webhooks), for the dead-node sweep.
const NODES_KEY: &str = "herald:nodes";

/// A pub/sub payload that is a presence notice, not a publication.
pub(super) const NOTICE_PREFIX: &[u8] = b"- notice\n";

/// Where nodes without a configured reconnect secret agree on one.
const SECRET_KEY: &str = "herald:reconnect-secret";

/// The channels a node wants delivered from one shard (or cluster),
/// replayed after every reconnect; its size is the shard's
/// `herald_redis_subscriptions`.
pub(super) struct Wanted {
    set: std::sync::Mutex<std::collections::HashSet<Box<str>>>,
    gauge: prometheus::IntGauge,
}

impl Wanted {
    pub(super) fn new(metrics: &ShardMetrics) -> Self {
        Self {
            set: Default::default(),
            gauge: metrics.subscriptions.clone(),
        }
    }

    fn locked(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<Box<str>>> {
        self.set.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn add(&self, channel: &str) {
        let mut set = self.locked();
        set.insert(channel.into());
        self.gauge.set(set.len() as i64);
    }

    pub(super) fn remove(&self, channel: &str) {
        let mut set = self.locked();
        set.remove(channel);
        self.gauge.set(set.len() as i64);
    }

    pub(super) fn contains(&self, channel: &str) -> bool {
        self.locked().contains(channel)
    }

    /// The channels, copied out of the lock.
    pub(super) fn snapshot(&self) -> Vec<Box<str>> {
        self.locked().iter().cloned().collect()
    }
}

/// Runs `op` on every channel, 64 at a time; the first error, if any.
pub(super) async fn first_error<'a, F>(
    channels: &'a [Box<str>],
    op: impl Fn(Box<str>) -> F,
) -> Result<(), BrokerError>
where
    F: std::future::Future<Output = Result<(), BrokerError>> + 'a,
{
    futures_util::stream::iter(channels.iter().cloned())
        .map(op)
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .find(Result::is_err)
        .unwrap_or(Ok(()))
}

pub(super) fn unavailable(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(e.to_string())
}

pub(super) struct Commands {
    pub(super) cfg: RedisConfig,
    pub(super) metrics: ShardMetrics,
    /// Publish with `SPUBLISH` (Redis Cluster: the shard channel lives
    /// with the channel's keys) instead of `PUBLISH`.
    sharded: bool,
    publish: redis::Script,
    position: redis::Script,
    epoch_bump: redis::Script,
    history: redis::Script,
    presence_add: redis::Script,
    notice: redis::Script,
    occupy: redis::Script,
    vacate: redis::Script,
}

impl Commands {
    pub(super) fn new(cfg: &RedisConfig, shard: usize, sharded: bool) -> Self {
        Self {
            cfg: cfg.clone(),
            metrics: metrics().shard(shard),
            sharded,
            publish: redis::Script::new(PUBLISH_SCRIPT),
            position: redis::Script::new(POSITION_SCRIPT),
            epoch_bump: redis::Script::new(EPOCH_BUMP_SCRIPT),
            history: redis::Script::new(HISTORY_SCRIPT),
            presence_add: redis::Script::new(PRESENCE_ADD_SCRIPT),
            notice: redis::Script::new(NOTICE_SCRIPT),
            occupy: redis::Script::new(OCCUPY_SCRIPT),
            vacate: redis::Script::new(VACATE_SCRIPT),
        }
    }

    /// Runs one Redis call under the command timeout, counts it by command
    /// and result (timing scripts), and maps a failure to `unavailable`
    /// saying what was being done (`doing`, e.g. "publishing").
    pub(super) async fn call<T>(
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
        self.metrics.redis(cmd, result, started.elapsed());
        match res {
            Ok(r) => r.map_err(unavailable),
            Err(_) => Err(unavailable(format!("timed out {doing}"))),
        }
    }

    fn ttl_secs(&self) -> u64 {
        self.cfg.state_ttl.as_secs().max(1)
    }

    pub(super) async fn publish(
        &self,
        conn: &mut impl ConnectionLike,
        channel: &str,
        event: &str,
        data: &RawValue,
        history: HistoryConfig,
    ) -> Result<Position, BrokerError> {
        let prefix = MessageFrame::prefix(channel, event, data);
        let mut inv = self.publish.key(meta_key(channel));
        inv.key(herald_proto::redis::pubsub_channel(channel))
            .key(history_key(channel))
            .arg(new_epoch())
            .arg(self.ttl_secs())
            .arg(prefix)
            .arg(history.size)
            .arg(history.ttl.as_secs().max(1));
        if self.sharded {
            inv.arg(herald_proto::redis::SHARDED);
        }
        let (epoch, offset): (String, u64) = self
            .call(RedisCommand::Publish, "publishing", inv.invoke_async(conn))
            .await?;
        Ok(Position {
            epoch: epoch.into(),
            offset,
        })
    }

    pub(super) async fn read_position(
        &self,
        conn: &mut impl ConnectionLike,
        channel: &str,
    ) -> Result<Position, BrokerError> {
        let mut inv = self.position.key(meta_key(channel));
        inv.key(history_key(channel))
            .arg(new_epoch())
            .arg(self.ttl_secs());
        let (epoch, offset): (String, u64) = self
            .call(
                RedisCommand::Position,
                "reading channel position",
                inv.invoke_async(conn),
            )
            .await?;
        Ok(Position {
            epoch: epoch.into(),
            offset,
        })
    }

    /// The channel's offset went backwards under a known epoch: replace the epoch.
    async fn bump_epoch(
        &self,
        conn: &mut impl ConnectionLike,
        channel: &str,
        known: &Position,
    ) -> Result<Position, BrokerError> {
        tracing::warn!(
            known = known.offset,
            "channel offset went backwards in Redis (lost writes, e.g. a failover); starting a new epoch"
        );
        metrics().state_reset(ResetReason::OffsetRegressed);
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
                inv.invoke_async(conn),
            )
            .await?;
        match epoch {
            Some(epoch) => Ok(Position {
                epoch: epoch.into(),
                offset,
            }),
            // The state vanished meanwhile: the position script starts one.
            None => self.read_position(conn, channel).await,
        }
    }

    /// After (re)subscribing `channels`: reads each one's position, starts a
    /// new epoch where Redis lost writes the node saw, and reports it to
    /// the sink, which tells the clients that missed something (4004).
    pub(super) async fn resync<C: ConnectionLike + Clone + Send>(
        &self,
        conn: &C,
        sink: &dyn Sink,
        channels: &[Box<str>],
    ) -> Result<(), BrokerError> {
        let this = self;
        let positions = futures_util::stream::iter(channels.iter().cloned())
            .map(|c| {
                let mut conn = conn.clone();
                async move {
                    let p = this.read_position(&mut conn, &c).await;
                    (c, p)
                }
            })
            .buffer_unordered(64)
            .collect::<Vec<_>>()
            .await;
        for (channel, pos) in positions {
            let mut pos = pos?;
            if let Some(known) = sink.position(&channel) {
                if known.epoch == pos.epoch && known.offset > pos.offset {
                    pos = self.bump_epoch(&mut conn.clone(), &channel, &known).await?;
                }
            }
            sink.resync(&channel, &pos);
        }
        Ok(())
    }

    pub(super) async fn history(
        &self,
        conn: &mut impl ConnectionLike,
        channel: &str,
        after: u64,
        limit: usize,
        ttl: std::time::Duration,
    ) -> Result<History, BrokerError> {
        let mut inv = self.history.key(meta_key(channel));
        inv.key(history_key(channel))
            .arg(after)
            .arg(limit.max(1))
            .arg(ttl.as_secs().max(1));
        let raw: Vec<redis::Value> = self
            .call(
                RedisCommand::History,
                "reading history",
                inv.invoke_async(conn),
            )
            .await?;
        parse_history(raw)
    }

    pub(super) async fn presence_add(
        &self,
        conn: &mut impl ConnectionLike,
        channel: &str,
        session: &str,
        entry: &str,
        max: usize,
    ) -> Result<bool, BrokerError> {
        let mut inv = self.presence_add.key(presence_key(channel));
        inv.arg(session).arg(entry).arg(max).arg(self.ttl_secs());
        let added: i64 = self
            .call(
                RedisCommand::Presence,
                "adding to presence",
                inv.invoke_async(conn),
            )
            .await?;
        Ok(added == 1)
    }

    pub(super) async fn presence_remove(
        &self,
        conn: &mut impl ConnectionLike,
        channel: &str,
        session: &str,
    ) -> Result<bool, BrokerError> {
        let mut del = redis::cmd("HDEL");
        del.arg(presence_key(channel)).arg(session);
        let n: i64 = self
            .call(
                RedisCommand::Presence,
                "removing from presence",
                del.query_async(conn),
            )
            .await?;
        Ok(n == 1)
    }

    pub(super) async fn presence(
        &self,
        conn: &mut impl ConnectionLike,
        channel: &str,
    ) -> Result<Vec<String>, BrokerError> {
        let mut vals = redis::cmd("HVALS");
        vals.arg(presence_key(channel));
        self.call(
            RedisCommand::Presence,
            "reading presence",
            vals.query_async(conn),
        )
        .await
    }

    pub(super) async fn notice(
        &self,
        conn: &mut impl ConnectionLike,
        channel: &str,
        frame: &[u8],
    ) -> Result<(), BrokerError> {
        let mut payload = NOTICE_PREFIX.to_vec();
        payload.extend_from_slice(frame);
        let mut inv = self
            .notice
            .key(herald_proto::redis::pubsub_channel(channel));
        inv.arg(payload);
        if self.sharded {
            inv.arg(herald_proto::redis::SHARDED);
        }
        self.call(
            RedisCommand::Presence,
            "sending a presence notice",
            inv.invoke_async::<()>(conn),
        )
        .await
    }

    pub(super) async fn heartbeat(
        &self,
        conn: &mut impl ConnectionLike,
        node: &str,
        ttl: std::time::Duration,
    ) -> Result<(), BrokerError> {
        let mut set = redis::cmd("SET");
        set.arg(node_key(node))
            .arg(1)
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64);
        self.call(
            RedisCommand::Heartbeat,
            "saying this node is alive",
            set.query_async::<()>(conn),
        )
        .await
    }

    pub(super) async fn alive(
        &self,
        conn: &mut impl ConnectionLike,
        nodes: &[String],
    ) -> Result<Vec<bool>, BrokerError> {
        let mut out = Vec::with_capacity(nodes.len());
        for n in nodes {
            let mut exists = redis::cmd("EXISTS");
            exists.arg(node_key(n));
            let e: i64 = self
                .call(
                    RedisCommand::Heartbeat,
                    "checking node liveness",
                    exists.query_async(conn),
                )
                .await?;
            out.push(e == 1);
        }
        Ok(out)
    }

    /// Adds `node` to `channel`'s occupancy; true when it is the first.
    pub(super) async fn occupy(
        &self,
        conn: &mut impl ConnectionLike,
        channel: &str,
        node: &str,
    ) -> Result<bool, BrokerError> {
        let mut inv = self.occupy.key(occupancy_key(channel));
        inv.arg(node);
        let first: i64 = self
            .call(
                RedisCommand::Occupancy,
                "recording an occupied channel",
                inv.invoke_async(conn),
            )
            .await?;
        Ok(first == 1)
    }

    /// Removes `node` from `channel`'s occupancy; true when it was the last.
    pub(super) async fn vacate(
        &self,
        conn: &mut impl ConnectionLike,
        channel: &str,
        node: &str,
    ) -> Result<bool, BrokerError> {
        let mut inv = self.vacate.key(occupancy_key(channel));
        inv.arg(node);
        let last: i64 = self
            .call(
                RedisCommand::Occupancy,
                "recording a vacated channel",
                inv.invoke_async(conn),
            )
            .await?;
        Ok(last == 1)
    }

    /// Adds (or removes) `channel` in `node`'s list of occupied channels,
    /// which the dead-node sweep reads.
    pub(super) async fn track(
        &self,
        conn: &mut impl ConnectionLike,
        node: &str,
        channel: &str,
        add: bool,
    ) -> Result<(), BrokerError> {
        let mut pipe = redis::pipe();
        if add {
            pipe.sadd(NODES_KEY, node).ignore();
            pipe.sadd(node_channels_key(node), channel).ignore();
        } else {
            pipe.srem(node_channels_key(node), channel).ignore();
        }
        // Keys of different slots: one command each on a cluster.
        for cmd in pipe.cmd_iter() {
            self.call(
                RedisCommand::Occupancy,
                "tracking a node's channels",
                cmd.query_async::<()>(conn),
            )
            .await?;
        }
        Ok(())
    }

    /// Dead nodes (no liveness key) and their channels, each claimed for
    /// `me` with a `SET NX` so that one node cleans each up.
    pub(super) async fn orphans(
        &self,
        conn: &mut impl ConnectionLike,
        me: &str,
    ) -> Result<Vec<crate::broker::Orphan>, BrokerError> {
        let mut members = redis::cmd("SMEMBERS");
        members.arg(NODES_KEY);
        let nodes: Vec<String> = self
            .call(
                RedisCommand::Occupancy,
                "listing nodes",
                members.query_async(conn),
            )
            .await?;
        let nodes: Vec<String> = nodes.into_iter().filter(|n| n != me).collect();
        let alive = self.alive(conn, &nodes).await?;
        let mut out = Vec::new();
        for (node, up) in nodes.into_iter().zip(alive) {
            if up {
                continue;
            }
            let mut claim = redis::cmd("SET");
            claim
                .arg(format!("herald:node:{node}:sweep"))
                .arg(me)
                .arg("NX")
                .arg("PX")
                .arg(60_000);
            let got: Option<String> = self
                .call(
                    RedisCommand::Occupancy,
                    "claiming a dead node",
                    claim.query_async(conn),
                )
                .await?;
            if got.is_none() {
                continue;
            }
            let mut chans = redis::cmd("SMEMBERS");
            chans.arg(node_channels_key(&node));
            let channels: Vec<String> = self
                .call(
                    RedisCommand::Occupancy,
                    "listing a dead node's channels",
                    chans.query_async(conn),
                )
                .await?;
            out.push(crate::broker::Orphan { node, channels });
        }
        Ok(out)
    }

    pub(super) async fn forget_node(
        &self,
        conn: &mut impl ConnectionLike,
        node: &str,
    ) -> Result<(), BrokerError> {
        let mut del = redis::cmd("DEL");
        del.arg(node_channels_key(node));
        self.call(
            RedisCommand::Occupancy,
            "forgetting a dead node",
            del.query_async::<()>(conn),
        )
        .await?;
        let mut srem = redis::cmd("SREM");
        srem.arg(NODES_KEY).arg(node);
        self.call(
            RedisCommand::Occupancy,
            "forgetting a dead node",
            srem.query_async::<()>(conn),
        )
        .await
    }

    /// Deletes `channel`'s state and history (client-side shards: the
    /// channel now lives on another shard).
    pub(super) async fn forget(&self, conn: &mut impl ConnectionLike, channel: &str) {
        let mut del = redis::cmd("DEL");
        del.arg(meta_key(channel)).arg(history_key(channel));
        let res = self
            .call(
                RedisCommand::Forget,
                "deleting a moved channel's state",
                del.query_async::<()>(conn),
            )
            .await;
        if let Err(e) = res {
            metrics().broker_failure(BrokerOp::Refresh, &e);
        }
    }

    /// First node to ask sets it; everyone reads the same value.
    pub(super) async fn shared_secret(
        &self,
        conn: &mut impl ConnectionLike,
    ) -> Result<Option<String>, BrokerError> {
        let candidate = crate::token::random_secret();
        let mut set = redis::cmd("SET");
        set.arg(SECRET_KEY).arg(&candidate).arg("NX");
        let mut get = redis::cmd("GET");
        get.arg(SECRET_KEY);
        let res = async {
            set.query_async::<Option<String>>(conn).await?;
            get.query_async::<Option<String>>(conn).await
        };
        tokio::time::timeout(self.cfg.timeout, res)
            .await
            .map_err(|_| unavailable("timed out reading the shared secret"))?
            .map_err(unavailable)
    }

    /// Pushes back the expiry of every subscribed channel's state, so a
    /// quiet channel with live subscribers does not start a new epoch
    /// under their feet. One pipeline per 500 channels on a single Redis;
    /// one command each on a cluster (whose channels live on many shards).
    pub(super) async fn refresh_ttls<C: ConnectionLike + Clone + Send>(
        &self,
        conn: &C,
        channels: &[Box<str>],
    ) {
        let ttl = self.ttl_secs() as i64;
        let res = if self.sharded {
            first_error(channels, |c| {
                let mut conn = conn.clone();
                async move {
                    let mut cmd = redis::cmd("EXPIRE");
                    cmd.arg(meta_key(&c)).arg(ttl);
                    let expire = cmd.query_async::<()>(&mut conn);
                    self.call(RedisCommand::Expire, "refreshing expiry", expire)
                        .await?;
                    let mut cmd = redis::cmd("EXPIRE");
                    cmd.arg(presence_key(&c)).arg(ttl);
                    let expire = cmd.query_async::<()>(&mut conn);
                    self.call(RedisCommand::Expire, "refreshing expiry", expire)
                        .await
                }
            })
            .await
        } else {
            let mut res = Ok(());
            for chunk in channels.chunks(500) {
                let mut pipe = redis::pipe();
                for c in chunk {
                    pipe.expire(meta_key(c), ttl).ignore();
                    pipe.expire(presence_key(c), ttl).ignore();
                }
                let mut conn = conn.clone();
                let expire = pipe.query_async::<()>(&mut conn);
                res = self
                    .call(RedisCommand::Expire, "refreshing expiry", expire)
                    .await;
                if res.is_err() {
                    break;
                }
            }
            res
        };
        match res {
            Ok(()) => tracing::debug!(channels = channels.len(), "refreshed channel state expiry"),
            Err(e) => metrics().broker_failure(BrokerOp::Refresh, &e),
        }
    }
}

/// The nodes that have subscribers on a channel (webhooks' occupancy).
fn occupancy_key(channel: &str) -> String {
    format!("herald:{{{channel}}}:o")
}

/// The channels a node occupies, for cleaning up after it dies.
fn node_channels_key(node: &str) -> String {
    format!("herald:node:{node}:ch")
}

/// A node's liveness key (presence), set with a TTL by its heartbeat.
fn node_key(node: &str) -> String {
    format!("herald:node:{node}")
}

/// The channel a Herald pub/sub (or shard) channel name carries.
pub(super) fn channel_of(pubsub_name: &[u8]) -> Option<&str> {
    std::str::from_utf8(pubsub_name)
        .ok()?
        .strip_prefix("herald:{")?
        .strip_suffix('}')
}

/// A pub/sub payload: `<offset> <epoch>[ <ms publish time>]\n<frame>`.
pub(super) struct Payload<'a> {
    pub(super) offset: u64,
    pub(super) epoch: &'a str,
    /// Redis clock at publish, milliseconds since the UNIX epoch.
    pub(super) published_ms: Option<u64>,
    pub(super) frame: &'a [u8],
}

pub(super) fn parse_payload(payload: &[u8]) -> Option<Payload<'_>> {
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

/// Hands one pub/sub message to the sink (or counts it malformed).
pub(super) fn deliver(sink: &dyn Sink, name: &[u8], payload: &[u8]) {
    let Some(channel) = channel_of(name) else {
        return;
    };
    if let Some(frame) = payload.strip_prefix(NOTICE_PREFIX) {
        sink.notice(channel, Bytes::copy_from_slice(frame));
        return;
    }
    match parse_payload(payload) {
        Some(p) => {
            if let Some(ms) = p.published_ms {
                let now = crate::clock::now_millis();
                metrics()
                    .broker_lag
                    .observe(now.saturating_sub(ms) as f64 / 1000.0);
            }
            sink.publication(channel, p.epoch, p.offset, Bytes::copy_from_slice(p.frame));
        }
        None => {
            metrics().broker_error(BrokerOp::Decode);
            tracing::warn!("ignoring a malformed pub/sub payload");
        }
    }
}

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
    use herald_proto::redis::pubsub_channel;

    #[test]
    fn keys_share_a_hash_tag() {
        assert_eq!(meta_key("news:a"), "herald:{news:a}:m");
        assert_eq!(pubsub_channel("news:a"), "herald:{news:a}");
        assert_eq!(channel_of(b"herald:{news:a}"), Some("news:a"));
        assert_eq!(channel_of(b"other"), None);
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
}
