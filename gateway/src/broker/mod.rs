//! Broker: assigns every publication its channel position and carries it to
//! every node that has subscribers.
//!
//! Sits below `node` in the data flow. `node` calls [`Broker::publish`],
//! [`Broker::subscribe`] and [`Broker::unsubscribe`]; the backend hands each
//! publication, already encoded once as a client `message` frame, to the
//! node's [`Sink`] (the hub). Publishing assigns `(epoch, offset)` and
//! delivers in one atomic step per channel, so every sink sees a channel's
//! publications in offset order. Backends: [`memory`] (single node) and
//! [`redis`] (several nodes: one Redis, Sentinel, Redis Cluster or
//! client-side shards).
//!
//! One concern here is not about publications: [`Broker::shared_secret`].
//! Reconnect tokens must verify on every node, and when the operator sets
//! no secret the broker is the only store all nodes of a cluster share, so
//! it is where they agree on one (`SET NX` on Redis; the embedded broker,
//! shared with nobody, has none). It belongs to the backend because it needs
//! the backend's connection, not because brokers know about tokens.

pub(crate) mod memory;
pub(crate) mod redis;

use bytes::Bytes;
use serde_json::value::RawValue;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub(crate) use crate::config::HistoryConfig;

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum BrokerError {
    /// The broker cannot be reached or did not answer in time; nothing was published.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The broker answered something this node does not understand.
    #[error("broker error: {0}")]
    Internal(String),
    /// A `rediss://` Redis whose certificate does not verify (or that refuses
    /// this node's): retrying cannot help, so the node does not start.
    #[error("Redis TLS: {0}")]
    Tls(String),
}

/// Where a channel stands: its epoch (changes when its state is lost) and
/// the offset of its latest publication (0 when none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Position {
    pub(crate) epoch: Arc<str>,
    pub(crate) offset: u64,
}

/// Receives what a broker delivers to this node. Called synchronously from
/// the broker's delivery path; must not block.
pub(crate) trait Sink: Send + Sync + 'static {
    /// One publication, `frame` being the complete client `message` frame.
    fn publication(&self, channel: &str, epoch: &str, offset: u64, frame: Bytes);
    /// After the broker reconnected, the channel's position now; publications
    /// between the last one seen and this one may have been missed.
    fn resync(&self, channel: &str, position: &Position);
    /// The position of the last publication this node delivered on `channel`
    /// (`None` when it has no live subscription there).
    fn position(&self, channel: &str) -> Option<Position>;
    /// A presence notice (`join`/`leave` frame) for `channel`'s subscribers,
    /// outside its offsets (at most once).
    fn notice(&self, channel: &str, frame: Bytes);
}

/// A pub/sub backend with per-channel ordered positions.
pub(crate) trait Broker: Send + Sync + 'static {
    /// Assigns the next offset on `channel`, appends to its history (kept as
    /// `history` says: the channel's namespace decides), and delivers to
    /// every subscribed node.
    fn publish<'a>(
        &'a self,
        channel: &'a str,
        event: &'a str,
        data: &'a RawValue,
        history: HistoryConfig,
    ) -> BoxFuture<'a, Result<Position, BrokerError>>;

    /// Starts delivery of `channel` to this node's sink and returns the
    /// channel's position read *after* delivery started.
    fn subscribe<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<Position, BrokerError>>;

    /// Stops delivery of `channel` to this node.
    fn unsubscribe<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// Publications of `channel` after offset `after`, oldest first, at most
    /// `limit`, together with the channel's epoch and latest offset read in
    /// the same atomic step. Entries older than `ttl` are left out.
    fn history<'a>(
        &'a self,
        channel: &'a str,
        after: u64,
        limit: usize,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<History, BrokerError>>;

    /// A secret every node on this broker agrees on (reconnect tokens), or
    /// `None` when the broker is not shared (embedded).
    fn shared_secret(&self) -> BoxFuture<'_, Result<Option<String>, BrokerError>>;

    /// True while publish and subscribe can succeed.
    fn is_ready(&self) -> bool;

    /// Adds (or replaces) `session`'s entry (`entry`, JSON) in `channel`'s
    /// presence, unless it holds `max` others already: then `Ok(false)`.
    fn presence_add<'a>(
        &'a self,
        channel: &'a str,
        session: &'a str,
        entry: &'a str,
        max: usize,
    ) -> BoxFuture<'a, Result<bool, BrokerError>>;

    /// Removes `session`'s entry from `channel`'s presence; whether it was there.
    fn presence_remove<'a>(
        &'a self,
        channel: &'a str,
        session: &'a str,
    ) -> BoxFuture<'a, Result<bool, BrokerError>>;

    /// Every entry of `channel`'s presence, as added.
    fn presence<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<Vec<String>, BrokerError>>;

    /// Hands a presence notice to every node's sink for `channel`.
    fn notice<'a>(
        &'a self,
        channel: &'a str,
        frame: Bytes,
    ) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// Says `node` is alive for `ttl` (presence entries of nodes that stop
    /// saying so are left out and removed).
    fn heartbeat<'a>(
        &'a self,
        node: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// Which of `nodes` are alive, in order.
    fn alive<'a>(&'a self, nodes: &'a [String]) -> BoxFuture<'a, Result<Vec<bool>, BrokerError>>;

    /// Records that `node` has subscribers on `channel`; true when no node
    /// had any before (the channel is now occupied, cluster-wide). Atomic:
    /// of nodes racing for the first subscriber, one gets true.
    fn occupy<'a>(
        &'a self,
        channel: &'a str,
        node: &'a str,
    ) -> BoxFuture<'a, Result<bool, BrokerError>>;

    /// Records that `node` has no subscribers left on `channel`; true when
    /// no node has any now (the channel is vacated, cluster-wide).
    fn vacate<'a>(
        &'a self,
        channel: &'a str,
        node: &'a str,
    ) -> BoxFuture<'a, Result<bool, BrokerError>>;

    /// Nodes that stopped heartbeating, with the channels they occupied,
    /// each claimed for `me` to clean up (no other node gets the same one).
    fn orphans<'a>(&'a self, me: &'a str) -> BoxFuture<'a, Result<Vec<Orphan>, BrokerError>>;

    /// Forgets a dead node once its channels are vacated.
    fn forget_node<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<(), BrokerError>>;
}

/// A node that stopped heartbeating, and the channels it still occupied.
#[derive(Debug, Clone)]
pub(crate) struct Orphan {
    pub(crate) node: String,
    pub(crate) channels: Vec<String>,
}

/// What a broker still holds of a channel's past.
#[derive(Debug, Clone, Default)]
pub(crate) struct History {
    /// `None` when the channel has no state at all (never used, or lost).
    pub(crate) epoch: Option<Arc<str>>,
    /// `(offset, complete message frame)`, ascending.
    pub(crate) entries: Vec<(u64, Bytes)>,
}

/// A fresh random epoch. Twelve alphanumerics make a repeat after a reset
/// practically impossible, so an old epoch never matches a new one.
pub(crate) fn new_epoch() -> String {
    std::iter::repeat_with(fastrand::alphanumeric)
        .take(12)
        .collect()
}
