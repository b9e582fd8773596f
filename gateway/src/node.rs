//! Node: turns local subscriptions into broker subscriptions.
//!
//! Sits between `session`/`api` above and `hub` + `broker` below. The first
//! local subscriber of a channel makes the node subscribe through the broker,
//! the last one leaving unsubscribes; a per-channel async lock serialises
//! those transitions so a channel is never half subscribed. Publishing (from
//! clients or the API) goes node → broker, never straight into the hub, so
//! every publication gets its position and reaches every node the same way.

use crate::broker::{Broker, BrokerError, History, Position};
use crate::channels::Rules;
use crate::hub::{Hub, Leave, SessionLink};
pub(crate) use crate::metrics::Source;
use crate::metrics::{BrokerOp, Label, metrics};
use crate::publication::Publication;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::OwnedMutexGuard;

pub(crate) struct Node {
    pub(crate) id: String,
    hub: Arc<Hub>,
    broker: Arc<dyn Broker>,
    locks: ChannelLocks,
    /// Per-namespace history size and TTL.
    rules: Arc<Rules>,
    /// Told when a channel gets its first local subscriber or loses its
    /// last (cluster-wide occupancy); `None` without webhooks.
    pub(crate) webhooks: Option<Arc<crate::hooks::webhooks::Webhooks>>,
}

/// A session's place on a channel, held: publications wait in the hub until
/// [`Joined::release`] (after the caller has queued its reply and any
/// recovered history), so nothing overtakes the reply and nothing is lost.
#[must_use = "a joined subscriber receives nothing until released"]
pub(crate) struct Joined {
    hub: Arc<Hub>,
    channel: Box<str>,
    session: u64,
    /// Where the subscription starts: it receives every offset after this.
    pub(crate) start: Position,
    released: bool,
}

impl Joined {
    /// Queues `replay` (recovered history ending at `start`), then what was
    /// held meanwhile, and makes the subscriber live.
    pub(crate) fn release(mut self, replay: Vec<Arc<Publication>>) {
        self.released = true;
        self.hub.release(&self.channel, self.session, replay);
    }
}

impl Drop for Joined {
    fn drop(&mut self) {
        // A subscriber abandoned mid-subscribe (its task ended) must not stay held.
        if !self.released {
            self.hub.release(&self.channel, self.session, Vec::new());
        }
    }
}

impl Node {
    pub(crate) fn new(
        id: String,
        hub: Arc<Hub>,
        broker: Arc<dyn Broker>,
        rules: Arc<Rules>,
        webhooks: Option<Arc<crate::hooks::webhooks::Webhooks>>,
    ) -> Self {
        Self {
            id,
            hub,
            broker,
            locks: ChannelLocks::default(),
            rules,
            webhooks,
        }
    }

    pub(crate) fn is_ready(&self) -> bool {
        self.broker.is_ready()
    }

    /// Subscribes `link` to `channel`, held: nothing reaches it until the
    /// caller, having queued its reply (and any replay), releases the
    /// returned [`Joined`].
    pub(crate) async fn subscribe(
        &self,
        channel: &str,
        link: &Arc<SessionLink>,
    ) -> Result<Joined, BrokerError> {
        let start = self.join(channel, link).await?;
        Ok(Joined {
            hub: Arc::clone(&self.hub),
            channel: channel.into(),
            session: link.id,
            start,
            released: false,
        })
    }

    async fn join(&self, channel: &str, link: &Arc<SessionLink>) -> Result<Position, BrokerError> {
        // Fast path: the channel is already live on this node.
        if let Some(pos) = self.hub.try_join(channel, link) {
            return Ok(pos);
        }
        let _guard = self.locks.lock(channel).await;
        if let Some(pos) = self.hub.try_join(channel, link) {
            return Ok(pos);
        }
        self.hub.prepare(channel);
        let span = tracing::debug_span!("broker_subscribe");
        let res = tracing::Instrument::instrument(self.broker.subscribe(channel), span).await;
        match res {
            Ok(pos) => {
                if let Some(w) = &self.webhooks {
                    w.occupied(channel).await;
                }
                Ok(self.hub.activate(channel, pos, link))
            }
            Err(e) => {
                self.hub.abort(channel);
                metrics().broker_failure(BrokerOp::Subscribe, &e);
                Err(e)
            }
        }
    }

    /// Reads the channel's history after `after` (see [`Broker::history`]).
    pub(crate) async fn history(
        &self,
        channel: &str,
        after: u64,
        limit: usize,
    ) -> Result<History, BrokerError> {
        self.broker
            .history(channel, after, limit, self.rules.history(channel).ttl)
            .await
            .inspect_err(|e| metrics().broker_failure(BrokerOp::History, e))
    }

    /// Removes `session` from `channel`; the last local subscriber out
    /// unsubscribes the node from the broker.
    pub(crate) async fn unsubscribe(&self, channel: &str, session: u64) {
        let _guard = self.locks.lock(channel).await;
        if self.hub.leave(channel, session) == Leave::LastOut {
            if let Err(e) = self.broker.unsubscribe(channel).await {
                metrics().broker_failure(BrokerOp::Unsubscribe, &e);
            }
            if let Some(w) = &self.webhooks {
                w.vacated(channel).await;
            }
        }
    }

    /// Publishes through the broker; the returned position is the one every
    /// subscriber will see.
    pub(crate) async fn publish(
        &self,
        channel: &str,
        event: &str,
        data: &RawValue,
        source: Source,
    ) -> Result<Position, BrokerError> {
        if !self.broker.is_ready() {
            metrics().broker_error(BrokerOp::Publish);
            return Err(BrokerError::Unavailable(
                "broker is not connected".to_owned(),
            ));
        }
        let span = tracing::info_span!(
            "broker_publish",
            source = source.label(),
            offset = tracing::field::Empty
        );
        let res = tracing::Instrument::instrument(
            self.broker
                .publish(channel, event, data, self.rules.history(channel)),
            span.clone(),
        )
        .await;
        if let Ok(p) = &res {
            span.record("offset", p.offset);
        }
        match res {
            Ok(p) => {
                match source {
                    Source::Api => metrics().hot.published_api.inc(),
                    Source::Client => metrics().hot.published_client.inc(),
                }
                Ok(p)
            }
            Err(e) => {
                metrics().broker_failure(BrokerOp::Publish, &e);
                Err(e)
            }
        }
    }
}

/// Async locks per channel name, created on demand and dropped when unused.
#[derive(Default)]
struct ChannelLocks {
    map: Mutex<HashMap<Arc<str>, Arc<tokio::sync::Mutex<()>>>>,
}

struct ChannelLockGuard<'a> {
    locks: &'a ChannelLocks,
    name: Arc<str>,
    guard: Option<OwnedMutexGuard<()>>,
}

impl ChannelLocks {
    async fn lock(&self, channel: &str) -> ChannelLockGuard<'_> {
        let (name, mutex) = {
            let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
            match map.get_key_value(channel) {
                Some((k, m)) => (Arc::clone(k), Arc::clone(m)),
                None => {
                    let k: Arc<str> = channel.into();
                    let m = Arc::new(tokio::sync::Mutex::new(()));
                    map.insert(Arc::clone(&k), Arc::clone(&m));
                    (k, m)
                }
            }
        };
        let guard = mutex.lock_owned().await;
        ChannelLockGuard {
            locks: self,
            name,
            guard: Some(guard),
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl Drop for ChannelLockGuard<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut map = self.locks.map.lock().unwrap_or_else(|e| e.into_inner());
        // Only the map still holds it: nobody is waiting, forget the lock.
        if map
            .get(&self.name)
            .is_some_and(|m| Arc::strong_count(m) == 1)
        {
            map.remove(&self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::memory::MemoryBroker;
    use crate::config::MemoryConfig;
    use tokio_util::sync::CancellationToken;

    #[tokio::test]
    async fn concurrent_subscribers_share_one_broker_subscription() {
        let hub = Arc::new(Hub::new());
        let broker = MemoryBroker::start(
            &MemoryConfig::default(),
            hub.clone(),
            CancellationToken::new(),
        );
        let node = Arc::new(Node::new(
            "n".into(),
            hub.clone(),
            broker,
            Arc::new(Rules::from_config(&crate::config::Config::default())),
            None,
        ));
        let mut rxs = Vec::new();
        let mut tasks = Vec::new();
        for id in 0..50u64 {
            let (link, rx) = SessionLink::new(id, 64, usize::MAX, crate::metrics::Protocol::Herald);
            rxs.push(rx);
            let node = node.clone();
            tasks.push(tokio::spawn(async move {
                let joined = node.subscribe("c", &link).await.expect("subscribe");
                let offset = joined.start.offset;
                joined.release(Vec::new());
                (link, offset)
            }));
        }
        let mut links = Vec::new();
        for t in tasks {
            links.push(t.await.expect("task").0);
        }
        assert_eq!(hub.subscriber_count("c"), 50);
        assert_eq!(node.locks.len(), 0, "locks are dropped when idle");
        let data = RawValue::from_string("1".into()).expect("json");
        node.publish("c", "e", &data, Source::Api)
            .await
            .expect("publish");
        for rx in &mut rxs {
            assert!(rx.try_recv().is_some(), "every subscriber got the frame");
        }
        for l in &links {
            node.unsubscribe("c", l.id).await;
        }
        assert_eq!(hub.subscriber_count("c"), 0);
        node.publish("c", "e", &data, Source::Api)
            .await
            .expect("publish");
        for rx in &mut rxs {
            assert!(rx.try_recv().is_none(), "nobody receives after unsubscribe");
        }
    }
}
