//! Webhooks: the backend learns when a channel becomes occupied or vacated
//! (cluster-wide) and when users connect or disconnect.
//!
//! Called by `node` (a channel's first local subscriber in, last out) and by
//! the session core (connect, end); uses `broker` for the cluster-wide
//! occupancy and sends from its own tasks. Occupancy is a set of node ids
//! per channel in the broker, changed atomically, so of two nodes racing
//! for a channel's first subscriber exactly one sends `channel_occupied`,
//! and `channel_vacated` goes out only when the last node leaves. A node
//! that dies leaves its ids behind: every node sweeps for nodes that
//! stopped heartbeating and vacates their channels (one sweeper per dead
//! node, claimed in the broker).
//!
//! Delivery is at least once: a bounded queue (events past it are dropped
//! and counted), a few concurrent POSTs, retries with exponential backoff on
//! a timeout, a connection error or a non-2xx answer. Every request carries
//! `x-herald-signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "t.body">`
//! and a unique `id` in the body, which receivers use to drop replays and
//! duplicates.

use crate::broker::Broker;
use crate::config::WebhooksConfig;
use crate::metrics::{BrokerOp, WebhookOutcome, metrics};
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sha2::Sha256;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

/// POSTs in flight at once.
const CONCURRENCY: usize = 8;
/// First retry delay; doubles per attempt up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What happened, as the `event` field says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    ChannelOccupied,
    ChannelVacated,
    UserConnected,
    UserDisconnected,
}

impl Event {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::ChannelOccupied => "channel_occupied",
            Self::ChannelVacated => "channel_vacated",
            Self::UserConnected => "user_connected",
            Self::UserDisconnected => "user_disconnected",
        }
    }

    pub(crate) const ALL: [Self; 4] = [
        Self::ChannelOccupied,
        Self::ChannelVacated,
        Self::UserConnected,
        Self::UserDisconnected,
    ];
}

struct Job {
    body: Bytes,
    id: String,
    event: Event,
}

pub(crate) struct Webhooks {
    tx: mpsc::Sender<Job>,
    broker: Arc<dyn Broker>,
    node: String,
    events: Vec<Event>,
}

impl Webhooks {
    /// `None` when no webhook URL is configured. Starts the sender and the
    /// dead-node sweep (every `sweep`), which stop with `shutdown`.
    pub(crate) fn start(
        cfg: &WebhooksConfig,
        broker: Arc<dyn Broker>,
        node: String,
        sweep: Duration,
        shutdown: CancellationToken,
    ) -> Option<Arc<Self>> {
        let url: hyper::Uri = cfg.url.as_deref()?.parse().ok()?;
        let secret = cfg.secret.clone().unwrap_or_default();
        let (tx, rx) = mpsc::channel(cfg.queue.max(1));
        let events = Event::ALL
            .into_iter()
            .filter(|e| cfg.events.iter().any(|n| n == e.name()))
            .collect();
        let w = Arc::new(Self {
            tx,
            broker,
            node,
            events,
        });
        let sender = Sender {
            client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
            url,
            secret: secret.into_bytes().into(),
            timeout: cfg.timeout,
            max_attempts: cfg.max_attempts.max(1),
        };
        tokio::spawn(sender.run(rx, shutdown.clone()));
        let weak = Arc::downgrade(&w);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(sweep);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let Some(w) = weak.upgrade() else { return };
                w.sweep().await;
            }
        });
        Some(w)
    }

    /// This node has its first subscriber on `channel`: tell the backend
    /// when no other node had any. Call under the channel's lock.
    pub(crate) async fn occupied(&self, channel: &str) {
        match self.broker.occupy(channel, &self.node).await {
            Ok(true) => self.channel_event(Event::ChannelOccupied, channel),
            Ok(false) => {}
            Err(e) => metrics().broker_failure(BrokerOp::Occupancy, &e),
        }
    }

    /// This node's last subscriber on `channel` left: tell the backend when
    /// no node has any now. Call under the channel's lock.
    pub(crate) async fn vacated(&self, channel: &str) {
        match self.broker.vacate(channel, &self.node).await {
            Ok(true) => self.channel_event(Event::ChannelVacated, channel),
            Ok(false) => {}
            Err(e) => metrics().broker_failure(BrokerOp::Occupancy, &e),
        }
    }

    /// A connection of `user` started (`connected`) or ended.
    pub(crate) fn user(&self, connected: bool, user: &str, session: &str) {
        let event = if connected {
            Event::UserConnected
        } else {
            Event::UserDisconnected
        };
        self.enqueue(event, |b| {
            b["user"] = user.into();
            b["session"] = session.into();
        });
    }

    fn channel_event(&self, event: Event, channel: &str) {
        self.enqueue(event, |b| b["channel"] = channel.into());
    }

    fn enqueue(&self, event: Event, fill: impl FnOnce(&mut serde_json::Value)) {
        if !self.events.contains(&event) {
            return;
        }
        let id = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        let mut body = serde_json::json!({
            "id": id,
            "event": event.name(),
            "node": self.node,
            "time_ms": crate::clock::now_millis(),
        });
        fill(&mut body);
        let job = Job {
            body: Bytes::from(body.to_string()),
            id,
            event,
        };
        if self.tx.try_send(job).is_err() {
            metrics().webhook(event.name(), WebhookOutcome::Dropped);
            tracing::warn!(event = event.name(), "webhook queue full; event dropped");
        }
    }

    /// Vacates the channels of nodes that stopped heartbeating.
    async fn sweep(&self) {
        let orphans = match self.broker.orphans(&self.node).await {
            Ok(o) => o,
            Err(e) => return metrics().broker_failure(BrokerOp::Occupancy, &e),
        };
        for o in orphans {
            tracing::warn!(dead = %o.node, channels = o.channels.len(), "vacating the channels of a node that stopped heartbeating");
            let mut ok = true;
            for ch in &o.channels {
                match self.broker.vacate(ch, &o.node).await {
                    Ok(true) => self.channel_event(Event::ChannelVacated, ch),
                    Ok(false) => {}
                    Err(e) => {
                        ok = false;
                        metrics().broker_failure(BrokerOp::Occupancy, &e);
                    }
                }
            }
            if ok {
                if let Err(e) = self.broker.forget_node(&o.node).await {
                    metrics().broker_failure(BrokerOp::Occupancy, &e);
                }
            }
        }
    }
}

/// The HTTP side: signs and POSTs, with retries.
struct Sender {
    client: Client<HttpConnector, Full<Bytes>>,
    url: hyper::Uri,
    secret: Arc<[u8]>,
    timeout: Duration,
    max_attempts: u32,
}

impl Sender {
    async fn run(self, mut rx: mpsc::Receiver<Job>, shutdown: CancellationToken) {
        let this = Arc::new(self);
        let slots = Arc::new(Semaphore::new(CONCURRENCY));
        loop {
            let job = tokio::select! {
                _ = shutdown.cancelled() => return,
                j = rx.recv() => match j { Some(j) => j, None => return },
            };
            let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
                return;
            };
            let this = Arc::clone(&this);
            tokio::spawn(async move {
                this.deliver(job).await;
                drop(permit);
            });
        }
    }

    async fn deliver(&self, job: Job) {
        let span = tracing::info_span!("webhook", event = job.event.name(), id = %job.id);
        let mut backoff = FIRST_BACKOFF;
        for attempt in 1..=self.max_attempts {
            match self.post(&job).await {
                Ok(()) => {
                    metrics().webhook(job.event.name(), WebhookOutcome::Delivered);
                    return;
                }
                Err(why) if attempt < self.max_attempts => {
                    metrics().webhook(job.event.name(), WebhookOutcome::Retried);
                    tracing::debug!(parent: &span, attempt, %why, retry_in = ?backoff, "webhook failed; retrying");
                    tokio::time::sleep(backoff + Duration::from_millis(fastrand::u64(..100))).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(why) => {
                    metrics().webhook(job.event.name(), WebhookOutcome::Failed);
                    tracing::warn!(parent: &span, attempts = attempt, %why, "webhook failed; giving up");
                }
            }
        }
    }

    async fn post(&self, job: &Job) -> Result<(), String> {
        let t = crate::clock::now_millis() / 1000;
        let sig = sign(&self.secret, t, &job.body);
        let req = hyper::Request::post(self.url.clone())
            .header("content-type", "application/json")
            .header("x-herald-event", job.event.name())
            .header("x-herald-delivery", job.id.as_str())
            .header("x-herald-signature", format!("t={t},v1={sig}"))
            .body(Full::new(job.body.clone()))
            .map_err(|e| e.to_string())?;
        match tokio::time::timeout(self.timeout, self.client.request(req)).await {
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
            Ok(Err(e)) => Err(e.to_string()),
            Ok(Ok(resp)) if resp.status().is_success() => Ok(()),
            Ok(Ok(resp)) => Err(format!("answered {}", resp.status())),
        }
    }
}

/// Hex HMAC-SHA256 of `"<t>.<body>"` under `secret`.
pub(crate) fn sign(secret: &[u8], t: u64, body: &[u8]) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_of_time_dot_body() {
        // Computed independently:
        // (python3 -c "import hmac,hashlib;print(hmac.new(b'key',b'1700000000.{}',hashlib.sha256).hexdigest())").
        assert_eq!(
            sign(b"key", 1_700_000_000, b"{}"),
            "9d713ed406bb7076d4123f0dc2c39d2df5c654ed4b0cd56b52c8b4c940bd63ae"
        );
    }
}
