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
use herald_proto::redis::{HISTORY_SCRIPT, PUBLISH_SCRIPT, history_key, meta_key};
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
