//! Embedded in-memory broker: the single-node default, nothing to install.
//!
//! Per-channel state (epoch, offset) lives in a sharded map. Publishing takes
//! the channel's shard lock, assigns the offset and hands the frame to the
//! sink before releasing it, which makes assignment and delivery one atomic,
//! ordered step. State of channels nobody uses expires after `state_ttl`.

use super::{BoxFuture, Broker, BrokerError, History, HistoryConfig, Position, Sink, new_epoch};
use crate::config::MemoryConfig;
use bytes::Bytes;
use herald_proto::MessageFrame;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const SHARDS: usize = 64;

struct ChannelState {
    epoch: Arc<str>,
    offset: u64,
    /// Nodes (here: this node, counted once per `subscribe`) wanting delivery;
    /// state with subscribers never expires.
    subscribers: u32,
    last_used: Instant,
    /// Latest publications `(offset, published at, frame)`; the frame is the
    /// same shared buffer the subscribers got.
    history: VecDeque<(u64, Instant, Bytes)>,
}

type Shard = Mutex<HashMap<Box<str>, ChannelState>>;

pub(crate) struct MemoryBroker {
    shards: Box<[Shard]>,
    hasher: std::collections::hash_map::RandomState,
    sink: Arc<dyn Sink>,
    /// Idle time after which a channel without subscribers forgets its state.
    ttl: Duration,
    /// Presence: channel → session → entry (JSON). One node: nobody else
    /// to tell, and nothing outlives the process.
    presence: Mutex<HashMap<Box<str>, Present>>,
    /// Occupied channels (one node: occupied while it has subscribers).
    occupied: Mutex<std::collections::HashSet<Box<str>>>,
}

/// One channel's presence: session → entry (JSON).
type Present = HashMap<Box<str>, String>;

impl MemoryBroker {
    /// Creates the broker and starts its expiry sweeper, which stops with `shutdown`.
    pub(crate) fn start(
        cfg: &MemoryConfig,
        sink: Arc<dyn Sink>,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let broker = Arc::new(Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: Default::default(),
            sink,
            ttl: cfg.state_ttl,
            presence: Mutex::new(HashMap::new()),
            occupied: Mutex::new(Default::default()),
        });
        crate::metrics::metrics().shard(0).up.set(1);
        let weak = Arc::downgrade(&broker);
        let period = (cfg.state_ttl / 4).clamp(Duration::from_millis(50), Duration::from_secs(60));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let Some(b) = weak.upgrade() else { break };
                let removed = b.sweep(Instant::now());
                if removed > 0 {
                    tracing::debug!(removed, "expired idle channel state");
                }
            }
        });
        broker
    }

    fn shard(&self, channel: &str) -> MutexGuard<'_, HashMap<Box<str>, ChannelState>> {
        let i = (self.hasher.hash_one(channel) as usize) % SHARDS;
        // A poisoned shard only means another thread panicked mid-update of
        // plain integers; the data is still usable.
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops state of channels without subscribers idle for longer than the TTL.
    fn sweep(&self, now: Instant) -> usize {
        let mut removed = 0;
        for shard in self.shards.iter() {
            let mut map = shard.lock().unwrap_or_else(|e| e.into_inner());
            let before = map.len();
            map.retain(|_, s| s.subscribers > 0 || now.duration_since(s.last_used) < self.ttl);
            removed += before - map.len();
        }
        removed
    }

    /// Number of channels whose state is held, for tests.
    #[cfg(test)]
    pub(crate) fn channel_count(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    fn entry<'m>(
        map: &'m mut HashMap<Box<str>, ChannelState>,
        channel: &str,
    ) -> &'m mut ChannelState {
        if !map.contains_key(channel) {
            map.insert(
                channel.into(),
                ChannelState {
                    epoch: new_epoch().into(),
                    offset: 0,
                    subscribers: 0,
                    last_used: Instant::now(),
                    history: VecDeque::new(),
                },
            );
        }
        map.get_mut(channel).expect("inserted above")
    }
}

impl Broker for MemoryBroker {
    fn publish<'a>(
        &'a self,
        channel: &'a str,
        event: &'a str,
        data: &'a RawValue,
        history: HistoryConfig,
    ) -> BoxFuture<'a, Result<Position, BrokerError>> {
        let mut frame = MessageFrame::prefix(channel, event, data);
        let mut map = self.shard(channel);
        let st = Self::entry(&mut map, channel);
        st.offset += 1;
        st.last_used = Instant::now();
        let pos = Position {
            epoch: st.epoch.clone(),
            offset: st.offset,
        };
        MessageFrame::finish(&mut frame, &pos.epoch, pos.offset);
        let frame = Bytes::from(frame);
        while st.history.len() >= history.size.max(1) {
            st.history.pop_front();
        }
        if history.size > 0 {
            st.history
                .push_back((pos.offset, st.last_used, frame.clone()));
        }
        if st.subscribers > 0 {
            self.sink
                .publication(channel, &pos.epoch, pos.offset, frame);
        }
        drop(map);
        Box::pin(async move { Ok(pos) })
    }

    fn subscribe<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<Position, BrokerError>> {
        let mut map = self.shard(channel);
        let st = Self::entry(&mut map, channel);
        st.subscribers += 1;
        st.last_used = Instant::now();
        let pos = Position {
            epoch: st.epoch.clone(),
            offset: st.offset,
        };
        drop(map);
        Box::pin(async move { Ok(pos) })
    }

    fn unsubscribe<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
        let mut map = self.shard(channel);
        if let Some(st) = map.get_mut(channel) {
            st.subscribers = st.subscribers.saturating_sub(1);
            st.last_used = Instant::now();
        }
        drop(map);
        Box::pin(async { Ok(()) })
    }

    fn history<'a>(
        &'a self,
        channel: &'a str,
        after: u64,
        limit: usize,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<History, BrokerError>> {
        let map = self.shard(channel);
        let h = match map.get(channel) {
            None => History::default(),
            Some(st) => {
                let oldest = Instant::now().checked_sub(ttl);
                History {
                    epoch: Some(st.epoch.clone()),
                    entries: st
                        .history
                        .iter()
                        .filter(|(o, at, _)| *o > after && oldest.is_none_or(|old| *at >= old))
                        .take(limit)
                        .map(|(o, _, f)| (*o, f.clone()))
                        .collect(),
                }
            }
        };
        drop(map);
        Box::pin(async move { Ok(h) })
    }

    fn shared_secret(&self) -> BoxFuture<'_, Result<Option<String>, BrokerError>> {
        Box::pin(async { Ok(None) })
    }

    fn is_ready(&self) -> bool {
        true
    }

    fn presence_add<'a>(
        &'a self,
        channel: &'a str,
        session: &'a str,
        entry: &'a str,
        max: usize,
    ) -> BoxFuture<'a, Result<bool, BrokerError>> {
        let mut all = self.presence.lock().unwrap_or_else(|e| e.into_inner());
        let ch = all.entry(channel.into()).or_default();
        let added = if ch.len() >= max && !ch.contains_key(session) {
            false
        } else {
            ch.insert(session.into(), entry.to_owned());
            true
        };
        Box::pin(std::future::ready(Ok(added)))
    }

    fn presence_remove<'a>(
        &'a self,
        channel: &'a str,
        session: &'a str,
    ) -> BoxFuture<'a, Result<bool, BrokerError>> {
        let mut all = self.presence.lock().unwrap_or_else(|e| e.into_inner());
        let removed = all
            .get_mut(channel)
            .is_some_and(|ch| ch.remove(session).is_some());
        if all.get(channel).is_some_and(HashMap::is_empty) {
            all.remove(channel);
        }
        Box::pin(std::future::ready(Ok(removed)))
    }

    fn presence<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<Vec<String>, BrokerError>> {
        let all = self.presence.lock().unwrap_or_else(|e| e.into_inner());
        let entries = all
            .get(channel)
            .map(|ch| ch.values().cloned().collect())
            .unwrap_or_default();
        Box::pin(std::future::ready(Ok(entries)))
    }

    fn notice<'a>(
        &'a self,
        channel: &'a str,
        frame: Bytes,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        self.sink.notice(channel, frame);
        Box::pin(std::future::ready(Ok(())))
    }

    fn heartbeat<'a>(&'a self, _: &'a str, _: Duration) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn alive<'a>(&'a self, nodes: &'a [String]) -> BoxFuture<'a, Result<Vec<bool>, BrokerError>> {
        Box::pin(std::future::ready(Ok(vec![true; nodes.len()])))
    }

    fn occupy<'a>(
        &'a self,
        channel: &'a str,
        _: &'a str,
    ) -> BoxFuture<'a, Result<bool, BrokerError>> {
        let mut o = self.occupied.lock().unwrap_or_else(|e| e.into_inner());
        Box::pin(std::future::ready(Ok(o.insert(channel.into()))))
    }

    fn vacate<'a>(
        &'a self,
        channel: &'a str,
        _: &'a str,
    ) -> BoxFuture<'a, Result<bool, BrokerError>> {
        let mut o = self.occupied.lock().unwrap_or_else(|e| e.into_inner());
        Box::pin(std::future::ready(Ok(o.remove(channel))))
    }

    fn orphans<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<Vec<super::Orphan>, BrokerError>> {
        Box::pin(std::future::ready(Ok(Vec::new())))
    }

    fn forget_node<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(std::future::ready(Ok(())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Collect(Mutex<Vec<(String, String, u64, Bytes)>>);

    impl Sink for Collect {
        fn publication(&self, channel: &str, epoch: &str, offset: u64, frame: Bytes) {
            self.0.lock().expect("lock").push((
                channel.to_owned(),
                epoch.to_owned(),
                offset,
                frame,
            ));
        }
        fn resync(&self, _: &str, _: &Position) {}
        fn notice(&self, _: &str, _: Bytes) {}
        fn position(&self, _: &str) -> Option<Position> {
            None
        }
    }

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).expect("json")
    }

    #[tokio::test]
    async fn offsets_are_consecutive_and_delivered_only_when_subscribed() {
        let sink = Arc::new(Collect::default());
        let b = MemoryBroker::start(
            &MemoryConfig::default(),
            sink.clone(),
            CancellationToken::new(),
        );
        let d = raw("{\"a\":1}");
        let p1 = b
            .publish("c", "e", &d, HistoryConfig::default())
            .await
            .expect("publish");
        assert_eq!(p1.offset, 1);
        assert!(sink.0.lock().expect("lock").is_empty(), "nobody subscribed");
        let pos = b.subscribe("c").await.expect("subscribe");
        assert_eq!(pos, p1);
        let p2 = b
            .publish("c", "e", &d, HistoryConfig::default())
            .await
            .expect("publish");
        assert_eq!((p2.offset, &p2.epoch), (2, &p1.epoch));
        let got = sink.0.lock().expect("lock").clone();
        assert_eq!(got.len(), 1);
        let msg: herald_proto::Message = serde_json::from_slice(&got[0].3).expect("frame");
        assert_eq!((msg.offset, msg.epoch.as_str()), (2, &*p1.epoch));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_state_expires_but_subscribed_state_stays() {
        let sink = Arc::new(Collect::default());
        let cfg = MemoryConfig {
            state_ttl: Duration::from_secs(60),
            ..MemoryConfig::default()
        };
        let b = MemoryBroker::start(&cfg, sink, CancellationToken::new());
        let d = raw("1");
        for i in 0..1000 {
            b.publish(&format!("one-off-{i}"), "e", &d, HistoryConfig::default())
                .await
                .expect("publish");
        }
        let kept = b.subscribe("kept").await.expect("subscribe");
        assert_eq!(b.channel_count(), 1001);
        tokio::time::sleep(Duration::from_secs(120)).await;
        assert_eq!(b.channel_count(), 1, "only the subscribed channel remains");
        let again = b.subscribe("kept").await.expect("subscribe");
        assert_eq!(again.epoch, kept.epoch);
        b.unsubscribe("kept").await.expect("unsubscribe");
        b.unsubscribe("kept").await.expect("unsubscribe");
        tokio::time::sleep(Duration::from_secs(120)).await;
        assert_eq!(b.channel_count(), 0);
        let fresh = b
            .publish("kept", "e", &d, HistoryConfig::default())
            .await
            .expect("publish");
        assert_ne!(fresh.epoch, kept.epoch, "lost state means a new epoch");
        assert_eq!(fresh.offset, 1);
    }
}
