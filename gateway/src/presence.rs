//! Presence: who is subscribed to a channel, on every node, and `join` /
//! `leave` notices.
//!
//! Sits beside `node`, on top of `broker`: the session core calls
//! [`Presence::join`] after a subscribe in a namespace with `presence`, and
//! [`Presence::leave`] when the subscription ends; `api` and the `presence`
//! commands read [`Presence::list`]. Entries live in the broker (a Redis hash
//! per channel, or memory), each naming its node. Every node says it is
//! alive every `presence.heartbeat` (a key that expires after two
//! heartbeats); answers leave out entries of nodes that stopped saying so,
//! and each node sweeps the channels it has local entries in, removing dead
//! nodes' entries and sending their `leave` (the removal is atomic, so one
//! node sends it). Notices are at most once and not in history.

use crate::broker::{Broker, BrokerError};
use crate::channels::Rules;
use crate::config::PresenceConfig;
use crate::metrics::{BrokerOp, metrics};
use bytes::Bytes;
use herald_proto::{PresenceClient, Reply};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

pub(crate) struct Presence {
    broker: Arc<dyn Broker>,
    rules: Arc<Rules>,
    node: String,
    cfg: PresenceConfig,
    /// Channels this node has presence entries in, and how many: the
    /// channels whose dead-node entries this node sweeps.
    local: Mutex<HashMap<Box<str>, usize>>,
}

/// Why a client could not join a channel's presence.
#[derive(Debug, thiserror::Error)]
pub(crate) enum JoinError {
    #[error("channel presence is full: {0} clients, the limit (presence.max_clients)")]
    Full(usize),
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

impl Presence {
    /// Creates the presence service and starts its heartbeat and sweep,
    /// which stop with `shutdown`.
    pub(crate) fn start(
        broker: Arc<dyn Broker>,
        rules: Arc<Rules>,
        node: String,
        cfg: PresenceConfig,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let p = Arc::new(Self {
            broker,
            rules,
            node,
            cfg,
            local: Mutex::new(HashMap::new()),
        });
        let weak = Arc::downgrade(&p);
        let every = p.cfg.heartbeat;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let Some(p) = weak.upgrade() else { return };
                p.beat().await;
            }
        });
        p
    }

    /// Whether `channel`'s namespace keeps presence.
    pub(crate) fn enabled(&self, channel: &str) -> bool {
        self.rules.rule(channel).presence
    }

    /// The entry this node would store for a session.
    pub(crate) fn client(&self, who: &crate::auth::Identity, session: &str) -> PresenceClient {
        PresenceClient {
            user: who.user.clone(),
            session: session.to_owned(),
            node: self.node.clone(),
            joined_at: crate::clock::now_millis(),
            info: who.info.clone(),
        }
    }

    /// Adds `client` to `channel`'s presence (no-op outside presence
    /// namespaces), then tells the channel's subscribers with `join`.
    pub(crate) async fn join(
        &self,
        channel: &str,
        client: &PresenceClient,
    ) -> Result<(), JoinError> {
        if !self.enabled(channel) {
            return Ok(());
        }
        let entry = serde_json::to_string(client).unwrap_or_default();
        let max = self.cfg.max_clients;
        if !self
            .broker
            .presence_add(channel, &client.session, &entry, max)
            .await?
        {
            metrics().presence_refused();
            return Err(JoinError::Full(max));
        }
        *self
            .local
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(channel.into())
            .or_default() += 1;
        self.announce(channel, client, true).await;
        Ok(())
    }

    /// Removes `client` from `channel`'s presence and tells the subscribers
    /// with `leave` (when it was there).
    pub(crate) async fn leave(&self, channel: &str, client: &PresenceClient) {
        if !self.enabled(channel) {
            return;
        }
        {
            let mut local = self.local.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = local.get_mut(channel) {
                *n -= 1;
                if *n == 0 {
                    local.remove(channel);
                }
            }
        }
        match self.broker.presence_remove(channel, &client.session).await {
            Ok(true) => self.announce(channel, client, false).await,
            Ok(false) => {}
            Err(e) => metrics().broker_failure(BrokerOp::Presence, &e),
        }
    }

    /// Everyone in `channel`'s presence on a live node, ordered by join time.
    pub(crate) async fn list(&self, channel: &str) -> Result<Vec<PresenceClient>, BrokerError> {
        let entries = self.broker.presence(channel).await?;
        let clients: Vec<PresenceClient> = entries
            .iter()
            .filter_map(|e| serde_json::from_str(e).ok())
            .collect();
        let nodes: Vec<String> = clients
            .iter()
            .map(|c| c.node.clone())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let alive = self.broker.alive(&nodes).await?;
        let dead: HashSet<&str> = nodes
            .iter()
            .zip(alive)
            .filter(|(n, up)| !up && **n != self.node)
            .map(|(n, _)| n.as_str())
            .collect();
        let (mut live, gone): (Vec<_>, Vec<_>) = clients
            .into_iter()
            .partition(|c| !dead.contains(c.node.as_str()));
        for c in gone {
            // Whoever removes it first tells the subscribers, once.
            if let Ok(true) = self.broker.presence_remove(channel, &c.session).await {
                metrics().presence_expired();
                self.announce(channel, &c, false).await;
            }
        }
        live.sort_by(|a, b| (a.joined_at, &a.session).cmp(&(b.joined_at, &b.session)));
        Ok(live)
    }

    /// Connections and distinct users in `channel`'s presence.
    pub(crate) async fn stats(&self, channel: &str) -> Result<(u64, u64), BrokerError> {
        let clients = self.list(channel).await?;
        let users: HashSet<&str> = clients.iter().map(|c| c.user.as_str()).collect();
        Ok((clients.len() as u64, users.len() as u64))
    }

    /// Sends a `join`/`leave` notice where the namespace asks for them.
    async fn announce(&self, channel: &str, client: &PresenceClient, join: bool) {
        if !self.rules.rule(channel).join_leave {
            return;
        }
        let reply = if join {
            Reply::Join { channel, client }
        } else {
            Reply::Leave { channel, client }
        };
        if let Err(e) = self
            .broker
            .notice(channel, Bytes::from(reply.to_vec()))
            .await
        {
            metrics().broker_failure(BrokerOp::Presence, &e);
        }
    }

    /// One heartbeat: say this node is alive, then sweep dead nodes' entries
    /// out of the channels this node has entries in.
    async fn beat(&self) {
        if let Err(e) = self
            .broker
            .heartbeat(&self.node, self.cfg.heartbeat * 2)
            .await
        {
            metrics().broker_failure(BrokerOp::Presence, &e);
            return;
        }
        let channels: Vec<Box<str>> = self
            .local
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        for ch in channels {
            if let Err(e) = self.list(&ch).await {
                metrics().broker_failure(BrokerOp::Presence, &e);
            }
        }
    }
}
