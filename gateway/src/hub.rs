//! Hub: this node's index of channel → local sessions, and the fan-out.
//!
//! Sits between `session` (which registers [`SessionLink`]s through `node`)
//! and `broker` (which calls [`Hub`] as its [`Sink`]). Everything here is
//! synchronous: a sharded `std::sync::Mutex` map, never held across an
//! `.await`. A publication arrives as one shared [`Publication`] and is
//! handed to every subscriber with `try_send` (a refcount bump, no copy, no
//! re-encoding); a queue over its frame or byte bound closes that one client
//! with 4001 instead of waiting for it.
//!
//! The hub also guards per-channel continuity: it remembers each channel's
//! epoch and latest offset, drops duplicates, and closes the channel's local
//! subscribers with 4004 when a gap or an epoch change shows that messages
//! may have been missed.

use crate::broker::{Position, Sink};
use crate::metrics::{Label, Protocol, ResetReason, metrics};
use crate::outbox::{Outbox, Queue, Refused};
use crate::publication::{Outbound, Publication};
use crate::signal::Signal;
use bytes::Bytes;
use herald_proto::CloseCode;
use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

const SHARDS: usize = 64;
/// Publications held for a channel while its broker subscription is being set up.
const PENDING_LIMIT: usize = 4096;

/// How a session ends; the first one set wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// The server closes: a `disconnect` frame, then a close frame with `code`.
    Close {
        code: CloseCode,
        reason: &'static str,
    },
    /// The client sent a close frame: echo it.
    ClientClosed,
    /// The connection is gone or broken: nothing more to send.
    Gone,
}

/// What the hub (and the rest of the node) holds of a session: its bounded
/// outbound queue and how it ends.
pub(crate) struct SessionLink {
    pub(crate) id: u64,
    /// Bounded in items; `queued` bounds it in bytes as well.
    queue: Queue,
    /// Bytes queued and not yet taken by the writer. Payloads vary from a
    /// few bytes to `max_payload`, so a frame bound alone lets one client
    /// that stops reading make the node hold up to 64 MiB.
    queued: AtomicUsize,
    max_bytes: usize,
    ending: OnceLock<Ending>,
    closed: Signal,
    /// What the session speaks: deliveries are counted by it.
    pub(crate) protocol: Protocol,
}

impl SessionLink {
    /// A link whose queue holds at most `cap` items and `max_bytes` bytes,
    /// and the writer's end of that queue.
    pub(crate) fn new(
        id: u64,
        cap: usize,
        max_bytes: usize,
        protocol: Protocol,
    ) -> (Arc<Self>, Outbox) {
        let link = Arc::new(Self {
            id,
            queue: Queue::new(cap),
            queued: AtomicUsize::new(0),
            max_bytes,
            ending: OnceLock::new(),
            closed: Signal::default(),
            protocol,
        });
        let outbox = Outbox::new(Arc::clone(&link) as _);
        (link, outbox)
    }

    /// Queues an item; over either bound the session is a slow consumer
    /// (closed with 4001). Returns false when the item was not queued.
    pub(crate) fn send(&self, item: Outbound) -> bool {
        let n = item.size();
        let held = self.queued.fetch_add(n, Ordering::Relaxed) + n;
        let full = if held > self.max_bytes {
            true
        } else {
            match self.queue.push(item) {
                Ok(()) => return true,
                Err(Refused::Full) => true,
                Err(Refused::Closed) => false,
            }
        };
        self.queued.fetch_sub(n, Ordering::Relaxed);
        if full && self.close(CloseCode::SlowConsumer) {
            metrics().slow_consumers.inc();
            tracing::info!(
                session = self.id,
                queued_bytes = held - n,
                "slow consumer: outbound queue full, closing"
            );
        }
        false
    }

    /// Queues an encoded reply or notice.
    pub(crate) fn send_frame(&self, frame: Box<[u8]>) -> bool {
        self.send(Outbound::Frame(frame))
    }

    /// The writer took `n` bytes of items off the queue.
    pub(crate) fn taken(&self, n: usize) {
        self.queued.fetch_sub(n, Ordering::Relaxed);
    }

    /// Bytes queued now, for the `herald_outbound_queued_bytes` gauge.
    pub(crate) fn queued_bytes(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Asks the session to end with `code`. Returns true for the first caller.
    pub(crate) fn close(&self, code: CloseCode) -> bool {
        self.close_with(code, code.reason())
    }

    /// Like [`close`](Self::close) with a more specific reason text.
    pub(crate) fn close_with(&self, code: CloseCode, reason: &'static str) -> bool {
        self.finish(Ending::Close { code, reason })
    }

    /// Records how the session ends and wakes its writer. True for the first caller.
    pub(crate) fn finish(&self, ending: Ending) -> bool {
        let first = self.ending.set(ending).is_ok();
        self.closed.raise();
        self.queue.wake();
        first
    }

    /// Wakes the writer to look at its flags (e.g. a pong to send).
    pub(crate) fn wake_writer(&self) {
        self.queue.wake();
    }

    pub(crate) fn ending(&self) -> Option<Ending> {
        self.ending.get().copied()
    }

    /// The close code the server chose, if it chose one.
    #[cfg(test)]
    pub(crate) fn close_reason(&self) -> Option<CloseCode> {
        match self.ending.get() {
            Some(Ending::Close { code, .. }) => Some(*code),
            _ => None,
        }
    }

    /// Raised once the session should end.
    pub(crate) fn closed(&self) -> &Signal {
        &self.closed
    }
}

impl AsRef<Queue> for SessionLink {
    fn as_ref(&self) -> &Queue {
        &self.queue
    }
}

enum State {
    /// Broker subscription in progress: publications are held, not dropped.
    Pending {
        held: VecDeque<Arc<Publication>>,
        /// Highest offset dropped from `held` because it overflowed.
        skipped: Option<(Arc<str>, u64)>,
    },
    Active(Position),
}

struct Channel {
    state: State,
    subs: Vec<Sub>,
}

/// A subscriber. New subscribers start *held*: their publications are kept
/// aside until the session has sent its `subscribed` reply and any recovered
/// history, then [`Hub::release`] hands them over in order.
struct Sub {
    link: Arc<SessionLink>,
    held: Option<Vec<Arc<Publication>>>,
}

/// Most publications kept aside for one held subscriber before it counts as
/// a slow consumer.
const HOLD_LIMIT: usize = 4096;

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Leave {
    /// The session was not subscribed.
    NotSubscribed,
    /// Others remain on this node.
    Remaining,
    /// That was the last local subscriber: the broker subscription should go.
    LastOut,
}

type Shard = Mutex<HashMap<Arc<str>, Channel>>;

pub(crate) struct Hub {
    shards: Box<[Shard]>,
    hasher: RandomState,
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

impl Hub {
    pub(crate) fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, channel: &str) -> MutexGuard<'_, HashMap<Arc<str>, Channel>> {
        let i = (self.hasher.hash_one(channel) as usize) % SHARDS;
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `link`, held, to an already active channel and returns the
    /// position its subscription starts after. `None` when the channel is not
    /// active here (the slow path through the broker is needed). A session
    /// already subscribed keeps its place (and stays live).
    pub(crate) fn try_join(&self, channel: &str, link: &Arc<SessionLink>) -> Option<Position> {
        let mut map = self.shard(channel);
        let ch = map.get_mut(channel)?;
        let State::Active(pos) = &ch.state else {
            return None;
        };
        let pos = pos.clone();
        Self::add(ch, link);
        Some(pos)
    }

    fn add(ch: &mut Channel, link: &Arc<SessionLink>) {
        if !ch.subs.iter().any(|s| s.link.id == link.id) {
            ch.subs.push(Sub {
                link: Arc::clone(link),
                held: Some(Vec::new()),
            });
            metrics().subscriptions.inc();
        }
    }

    /// Starts holding publications of `channel` before its broker subscription.
    pub(crate) fn prepare(&self, channel: &str) {
        let mut map = self.shard(channel);
        if !map.contains_key(channel) {
            map.insert(
                channel.into(),
                Channel {
                    state: State::Pending {
                        held: VecDeque::new(),
                        skipped: None,
                    },
                    subs: Vec::new(),
                },
            );
            metrics().channels.inc();
        }
    }

    /// Completes a channel's broker subscription: the broker reported `pos`
    /// after delivery started. Adds `link` (held) and passes publications
    /// received meanwhile on in order. Returns where `link` starts.
    pub(crate) fn activate(
        &self,
        channel: &str,
        mut pos: Position,
        link: &Arc<SessionLink>,
    ) -> Position {
        let mut map = self.shard(channel);
        let Some(ch) = map.get_mut(channel) else {
            return pos;
        };
        let held = match std::mem::replace(&mut ch.state, State::Active(pos.clone())) {
            State::Pending { held, skipped } => {
                if let Some((epoch, offset)) = skipped {
                    if *epoch == *pos.epoch && offset > pos.offset {
                        pos.offset = offset;
                        ch.state = State::Active(pos.clone());
                    }
                }
                held
            }
            State::Active(p) => {
                // Someone else activated it first: join at its position.
                ch.state = State::Active(p.clone());
                pos = p;
                VecDeque::new()
            }
        };
        Self::add(ch, link);
        for p in held {
            Self::deliver_locked(ch, p);
        }
        pos
    }

    /// Ends a subscriber's hold: queues `replay` (recovered history, already
    /// trimmed to end at the join position), then what was held, and makes it
    /// live. The caller has queued its `subscribed` reply just before.
    pub(crate) fn release(&self, channel: &str, session: u64, replay: Vec<Arc<Publication>>) {
        let mut map = self.shard(channel);
        let Some(ch) = map.get_mut(channel) else {
            return;
        };
        let Some(sub) = ch.subs.iter_mut().find(|s| s.link.id == session) else {
            return;
        };
        let Some(held) = sub.held.take() else {
            return;
        };
        for p in replay.into_iter().chain(held) {
            if !sub.link.send(Outbound::Publication(p)) {
                break;
            }
        }
    }

    /// Drops a pending channel whose broker subscription failed.
    pub(crate) fn abort(&self, channel: &str) {
        let mut map = self.shard(channel);
        if map
            .get(channel)
            .is_some_and(|c| c.subs.is_empty() && matches!(c.state, State::Pending { .. }))
        {
            map.remove(channel);
            metrics().channels.dec();
        }
    }

    /// Removes a session from a channel.
    pub(crate) fn leave(&self, channel: &str, session: u64) -> Leave {
        let mut map = self.shard(channel);
        let Some(ch) = map.get_mut(channel) else {
            return Leave::NotSubscribed;
        };
        let Some(i) = ch.subs.iter().position(|s| s.link.id == session) else {
            return Leave::NotSubscribed;
        };
        ch.subs.swap_remove(i);
        metrics().subscriptions.dec();
        if ch.subs.is_empty() {
            map.remove(channel);
            metrics().channels.dec();
            Leave::LastOut
        } else {
            Leave::Remaining
        }
    }

    /// Local subscriber count of `channel`, for tests and introspection.
    #[cfg(test)]
    pub(crate) fn subscriber_count(&self, channel: &str) -> usize {
        self.shard(channel).get(channel).map_or(0, |c| c.subs.len())
    }

    fn deliver_locked(ch: &mut Channel, p: Arc<Publication>) {
        let State::Active(pos) = &mut ch.state else {
            return;
        };
        let (epoch, offset) = (&*p.epoch, p.offset);
        if *pos.epoch != *epoch {
            // The channel's state was lost and restarted: whatever subscribers
            // knew no longer lines up.
            let epoch = Arc::clone(&p.epoch);
            Self::reset(ch, epoch, offset, ResetReason::EpochChanged);
            return;
        }
        if offset <= pos.offset {
            metrics().hot.dropped_duplicate.inc();
            return;
        }
        if offset != pos.offset + 1 {
            let epoch = Arc::clone(&p.epoch);
            Self::reset(ch, epoch, offset, ResetReason::Gap);
            return;
        }
        pos.offset = offset;
        let started = std::time::Instant::now();
        // Queued, by protocol (`Protocol::Herald`, `Socketio`, `Sse`).
        let mut sent = [0u64; 3];
        let mut dropped = 0u64;
        for s in &mut ch.subs {
            match &mut s.held {
                None => {
                    if s.link.send(Outbound::Publication(Arc::clone(&p))) {
                        sent[s.link.protocol as usize] += 1;
                    } else {
                        dropped += 1;
                    }
                }
                Some(held) if held.len() < HOLD_LIMIT => held.push(Arc::clone(&p)),
                Some(_) => {
                    s.link.close(CloseCode::SlowConsumer);
                    dropped += 1;
                }
            }
        }
        let m = metrics();
        for p in [Protocol::Herald, Protocol::Socketio, Protocol::Sse] {
            if sent[p as usize] > 0 {
                m.delivered.get(p).inc_by(sent[p as usize]);
            }
        }
        let sent = sent.iter().sum::<u64>();
        m.fanout_size.observe(sent as f64);
        m.fanout_duration.observe(started.elapsed().as_secs_f64());
        if dropped > 0 {
            metrics().hot.dropped_slow_consumer.inc_by(dropped);
        }
    }

    /// Closes every local subscriber of the channel with 4004 and restarts
    /// tracking from the given position.
    fn reset(ch: &mut Channel, epoch: Arc<str>, offset: u64, reason: ResetReason) {
        tracing::warn!(
            reason = reason.label(),
            subscribers = ch.subs.len(),
            "channel continuity lost; closing its subscribers with 4004"
        );
        metrics().state_reset(reason);
        for s in &ch.subs {
            s.link.close(CloseCode::InsufficientState);
        }
        ch.state = State::Active(Position { epoch, offset });
    }
}

impl Sink for Hub {
    fn publication(&self, channel: &str, epoch: &str, offset: u64, frame: Bytes) {
        metrics().received.inc();
        let mut map = self.shard(channel);
        let Some(ch) = map.get_mut(channel) else {
            metrics().hot.dropped_no_subscribers.inc();
            return;
        };
        let p = Publication::new(epoch.into(), offset, frame);
        match &mut ch.state {
            State::Pending { held, skipped } => {
                if held.len() >= PENDING_LIMIT {
                    if let Some(old) = held.pop_front() {
                        *skipped = Some((Arc::clone(&old.epoch), old.offset));
                    }
                }
                held.push_back(p);
            }
            State::Active(_) => Self::deliver_locked(ch, p),
        }
    }

    fn position(&self, channel: &str) -> Option<Position> {
        match &self.shard(channel).get(channel)?.state {
            State::Active(pos) => Some(pos.clone()),
            State::Pending { .. } => None,
        }
    }

    fn notice(&self, channel: &str, frame: Bytes) {
        let map = self.shard(channel);
        let Some(ch) = map.get(channel) else {
            return;
        };
        let notice = crate::publication::Notice::new(frame);
        for s in &ch.subs {
            // A full queue closes the session, as a publication would.
            let _ = s.link.send(Outbound::Notice(Arc::clone(&notice)));
        }
    }

    fn resync(&self, channel: &str, now: &Position) {
        let mut map = self.shard(channel);
        let Some(ch) = map.get_mut(channel) else {
            return;
        };
        let State::Active(pos) = &ch.state else {
            return;
        };
        if pos.epoch != now.epoch {
            Self::reset(
                ch,
                Arc::clone(&now.epoch),
                now.offset,
                ResetReason::EpochChanged,
            );
        } else if now.offset > pos.offset {
            Self::reset(
                ch,
                Arc::clone(&now.epoch),
                now.offset,
                ResetReason::MissedWhileDisconnected,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::publication::Wire;

    fn link(id: u64, cap: usize) -> (Arc<SessionLink>, Outbox) {
        SessionLink::new(id, cap, usize::MAX, Protocol::Herald)
    }

    /// Everything queued so far, as the Herald wire would write it.
    fn drain(rx: &mut Outbox) -> Vec<Bytes> {
        std::iter::from_fn(|| rx.try_recv())
            .map(|o| Bytes::copy_from_slice(o.encoded(Wire::Herald)))
            .collect()
    }

    fn pos(e: &str, o: u64) -> Position {
        Position {
            epoch: e.into(),
            offset: o,
        }
    }

    fn frame(o: u64) -> Bytes {
        Bytes::from(o.to_string())
    }

    #[test]
    fn held_publications_after_the_start_position_follow_the_reply() {
        let hub = Hub::new();
        let (a, mut rx) = link(1, 16);
        hub.prepare("c");
        for o in 4..=7 {
            hub.publication("c", "E", o, frame(o));
        }
        let start = hub.activate("c", pos("E", 5), &a);
        assert!(rx.try_recv().is_none(), "held until released");
        hub.publication("c", "E", 8, frame(8));
        assert!(a.send_frame(format!("reply {}", start.offset).into_bytes().into()));
        let replay = Publication::new("E".into(), 5, Bytes::from("replay"));
        hub.release("c", 1, vec![replay]);
        hub.publication("c", "E", 9, frame(9));
        let got = drain(&mut rx);
        let want = [
            Bytes::from("reply 5"),
            Bytes::from("replay"),
            frame(6),
            frame(7),
            frame(8),
            frame(9),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn full_queue_closes_only_the_slow_subscriber() {
        let hub = Hub::new();
        let (slow, _keep_rx) = link(1, 2);
        let (fast, mut fast_rx) = link(2, 64);
        hub.prepare("c");
        hub.activate("c", pos("E", 0), &slow);
        hub.release("c", 1, Vec::new());
        assert!(hub.try_join("c", &fast).is_some());
        hub.release("c", 2, Vec::new());
        for o in 1..=5 {
            hub.publication("c", "E", o, frame(o));
            while fast_rx.try_recv().is_some() {}
        }
        assert_eq!(slow.close_reason(), Some(CloseCode::SlowConsumer));
        assert_eq!(fast.close_reason(), None);
    }

    #[test]
    fn duplicates_dropped_gaps_and_epoch_changes_close_with_4004() {
        let hub = Hub::new();
        let (a, mut rx) = link(1, 64);
        hub.prepare("c");
        hub.activate("c", pos("E", 10), &a);
        hub.release("c", 1, Vec::new());
        hub.publication("c", "E", 9, frame(9));
        hub.publication("c", "E", 11, frame(11));
        assert_eq!(drain(&mut rx), [frame(11)], "duplicate 9 dropped");
        assert_eq!(a.close_reason(), None);
        hub.publication("c", "E", 13, frame(13));
        assert_eq!(a.close_reason(), Some(CloseCode::InsufficientState));

        let (b, _rx) = link(2, 64);
        hub.prepare("d");
        hub.activate("d", pos("E", 1), &b);
        hub.publication("d", "F", 1, frame(1));
        assert_eq!(b.close_reason(), Some(CloseCode::InsufficientState));
    }

    #[test]
    fn a_held_subscriber_that_overflows_is_a_slow_consumer() {
        let hub = Hub::new();
        let (a, _rx) = link(1, 4);
        hub.prepare("c");
        hub.activate("c", pos("E", 0), &a);
        for o in 1..=(HOLD_LIMIT as u64 + 1) {
            hub.publication("c", "E", o, frame(o));
        }
        assert_eq!(a.close_reason(), Some(CloseCode::SlowConsumer));
    }

    #[test]
    fn a_queue_over_its_byte_bound_is_a_slow_consumer() {
        let hub = Hub::new();
        let (slow, mut rx) = SessionLink::new(1, 1024, 100, Protocol::Herald);
        let (fast, mut fast_rx) = link(2, 1024);
        hub.prepare("c");
        hub.activate("c", pos("E", 0), &slow);
        hub.release("c", 1, Vec::new());
        assert!(hub.try_join("c", &fast).is_some());
        hub.release("c", 2, Vec::new());
        let big = |o: u64| Bytes::from(vec![b'x'; 40 + o as usize]);
        hub.publication("c", "E", 1, big(1));
        hub.publication("c", "E", 2, big(2));
        assert_eq!(slow.queued_bytes(), 83);
        assert_eq!(slow.close_reason(), None);
        hub.publication("c", "E", 3, big(3));
        assert_eq!(slow.close_reason(), Some(CloseCode::SlowConsumer));
        assert_eq!(slow.queued_bytes(), 83, "the refused item is not counted");
        let taken: usize = std::iter::from_fn(|| rx.try_recv()).map(|o| o.size()).sum();
        slow.taken(taken);
        assert_eq!(slow.queued_bytes(), 0);
        assert_eq!(
            drain(&mut fast_rx).len(),
            3,
            "the healthy subscriber got all"
        );
    }

    #[test]
    fn resync_closes_only_when_something_was_missed() {
        let hub = Hub::new();
        let (a, _rx) = link(1, 64);
        hub.prepare("c");
        hub.activate("c", pos("E", 3), &a);
        hub.resync("c", &pos("E", 3));
        assert_eq!(a.close_reason(), None);
        hub.resync("c", &pos("E", 4));
        assert_eq!(a.close_reason(), Some(CloseCode::InsufficientState));
    }

    #[test]
    fn last_out_is_reported_once() {
        let hub = Hub::new();
        let (a, _ra) = link(1, 4);
        let (b, _rb) = link(2, 4);
        hub.prepare("c");
        hub.activate("c", pos("E", 0), &a);
        assert!(hub.try_join("c", &b).is_some());
        assert!(hub.try_join("c", &b).is_some(), "idempotent");
        assert_eq!(hub.subscriber_count("c"), 2);
        assert_eq!(hub.leave("c", 1), Leave::Remaining);
        assert_eq!(hub.leave("c", 1), Leave::NotSubscribed);
        assert_eq!(hub.leave("c", 2), Leave::LastOut);
        assert!(hub.try_join("c", &a).is_none(), "gone");
    }
}
