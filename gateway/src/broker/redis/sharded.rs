//! Client-side sharding: several independent Redis instances (each one a
//! [`super::single`] broker, plain, TLS or Sentinel), every channel mapped to
//! one of them by [`shard_of`] over the `broker.shards` list.
//!
//! Sits between `node` and the per-shard brokers: each call goes to the
//! channel's shard; the shards share this node's sink.
//!
//! When the list changes, channels that move find no state on their new
//! shard and start a new epoch there, so their clients are told (4004,
//! `recovered: false`) instead of missing history. So that a later change
//! back cannot revive a stale position on the old shard, a node that starts
//! a channel's state on one shard (offset 0 at subscribe, or its first
//! publication) deletes that channel's keys on every other shard.

use super::super::{BoxFuture, Broker, BrokerError, History, HistoryConfig, Position};
use super::single::RedisBroker;
use bytes::Bytes;
use herald_proto::redis::shard_of;
use serde_json::value::RawValue;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub(crate) struct ShardedBroker {
    shards: Vec<Arc<RedisBroker>>,
    /// Set once every shard has been up: a node does not report ready
    /// before it can reach all of its channels.
    all_seen_up: AtomicBool,
}

impl ShardedBroker {
    pub(crate) fn new(shards: Vec<Arc<RedisBroker>>) -> Self {
        Self {
            shards,
            all_seen_up: AtomicBool::new(false),
        }
    }

    fn shard(&self, channel: &str) -> (usize, &RedisBroker) {
        let i = shard_of(channel, self.shards.len());
        (i, &self.shards[i])
    }

    /// Deletes `channel`'s state on every shard but `home`, in the
    /// background (best effort: a shard that is down keeps a stale state
    /// only until its `state_ttl`).
    fn forget_elsewhere(&self, channel: &str, home: usize) {
        for (i, shard) in self.shards.iter().enumerate() {
            if i != home {
                let (shard, channel) = (Arc::clone(shard), channel.to_owned());
                tokio::spawn(async move { shard.forget(&channel).await });
            }
        }
    }
}

impl Broker for ShardedBroker {
    fn publish<'a>(
        &'a self,
        channel: &'a str,
        event: &'a str,
        data: &'a RawValue,
        history: HistoryConfig,
    ) -> BoxFuture<'a, Result<Position, BrokerError>> {
        Box::pin(async move {
            let (i, shard) = self.shard(channel);
            let pos = shard.publish(channel, event, data, history).await?;
            if pos.offset == 1 {
                self.forget_elsewhere(channel, i);
            }
            Ok(pos)
        })
    }

    fn subscribe<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<Position, BrokerError>> {
        Box::pin(async move {
            let (i, shard) = self.shard(channel);
            let pos = shard.subscribe(channel).await?;
            if pos.offset == 0 {
                self.forget_elsewhere(channel, i);
            }
            Ok(pos)
        })
    }

    fn unsubscribe<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
        self.shard(channel).1.unsubscribe(channel)
    }

    fn history<'a>(
        &'a self,
        channel: &'a str,
        after: u64,
        limit: usize,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<History, BrokerError>> {
        self.shard(channel).1.history(channel, after, limit, ttl)
    }

    /// Kept on the first shard: every node lists the same first shard.
    fn shared_secret(&self) -> BoxFuture<'_, Result<Option<String>, BrokerError>> {
        self.shards[0].shared_secret()
    }

    /// Ready once every shard has been reached, then while any one is: a
    /// shard outage hits every node alike, and taking them all out of
    /// service would turn a partial outage into a total one.
    fn is_ready(&self) -> bool {
        if self.all_seen_up.load(Ordering::Acquire) {
            return self.shards.iter().any(|s| s.is_ready());
        }
        let all = self.shards.iter().all(|s| s.is_ready());
        if all {
            self.all_seen_up.store(true, Ordering::Release);
        }
        all
    }

    fn presence_add<'a>(
        &'a self,
        channel: &'a str,
        session: &'a str,
        entry: &'a str,
        max: usize,
    ) -> BoxFuture<'a, Result<bool, BrokerError>> {
        self.shard(channel)
            .1
            .presence_add(channel, session, entry, max)
    }

    fn presence_remove<'a>(
        &'a self,
        channel: &'a str,
        session: &'a str,
    ) -> BoxFuture<'a, Result<bool, BrokerError>> {
        self.shard(channel).1.presence_remove(channel, session)
    }

    fn presence<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<Vec<String>, BrokerError>> {
        self.shard(channel).1.presence(channel)
    }

    fn notice<'a>(
        &'a self,
        channel: &'a str,
        frame: Bytes,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        self.shard(channel).1.notice(channel, frame)
    }

    /// Node liveness lives on the first shard, like the shared secret.
    fn heartbeat<'a>(
        &'a self,
        node: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        self.shards[0].heartbeat(node, ttl)
    }

    fn alive<'a>(&'a self, nodes: &'a [String]) -> BoxFuture<'a, Result<Vec<bool>, BrokerError>> {
        self.shards[0].alive(nodes)
    }

    /// Occupancy on the channel's shard; the node's list of channels on the
    /// first shard, with the node registry and liveness.
    fn occupy<'a>(
        &'a self,
        channel: &'a str,
        node: &'a str,
    ) -> BoxFuture<'a, Result<bool, BrokerError>> {
        Box::pin(async move {
            let first = self.shard(channel).1.occupy_channel(channel, node).await?;
            self.shards[0].track(node, channel, true).await?;
            Ok(first)
        })
    }

    fn vacate<'a>(
        &'a self,
        channel: &'a str,
        node: &'a str,
    ) -> BoxFuture<'a, Result<bool, BrokerError>> {
        Box::pin(async move {
            let last = self.shard(channel).1.vacate_channel(channel, node).await?;
            self.shards[0].track(node, channel, false).await?;
            Ok(last)
        })
    }

    fn orphans<'a>(
        &'a self,
        me: &'a str,
    ) -> BoxFuture<'a, Result<Vec<crate::broker::Orphan>, BrokerError>> {
        self.shards[0].orphans(me)
    }

    /// Vacates on each channel's own shard first: see [`Self::vacate`].
    fn forget_node<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
        self.shards[0].forget_node(node)
    }
}
