//! Prometheus metrics: a leaf every layer may use.
//!
//! One process-wide registry behind [`metrics()`]. Labels are low-cardinality
//! by construction (an op, a reason, a close code); never a channel or user id.

use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};
use std::sync::LazyLock;

pub struct Metrics {
    registry: Registry,
    /// Open WebSocket connections (connected or still handshaking the protocol).
    pub connections: IntGauge,
    /// Session → channel subscriptions on this node.
    pub subscriptions: IntGauge,
    /// Channels with at least one local subscriber (= broker subscriptions).
    pub channels: IntGauge,
    /// Publications accepted by the broker, by `source` (api, client).
    pub published: IntCounterVec,
    /// Frames of publications queued to local subscribers.
    pub delivered: IntCounter,
    /// Publications not delivered, by `reason` (slow_consumer, duplicate, no_subscribers).
    pub dropped: IntCounterVec,
    /// Server-initiated closes, by close `code`.
    pub disconnects: IntCounterVec,
    /// Clients closed because their outbound queue was full.
    pub slow_consumers: IntCounter,
    /// Broker failures, by `op` (publish, subscribe, unsubscribe, pubsub, connect, decode, refresh).
    pub broker_errors: IntCounterVec,
    /// 1 while the broker is reachable.
    pub broker_up: IntGauge,
    /// Channels whose subscribers were closed with 4004 after a gap or lost state, by `reason`.
    pub state_resets: IntCounterVec,
    /// Error replies sent to clients, by `code`.
    pub client_errors: IntCounterVec,
    /// HTTP API requests, by `route` and `status`.
    pub api_requests: IntCounterVec,
    /// Subscriptions that asked to recover, by `outcome` (recovered or the refusal).
    pub recoveries: IntCounterVec,
    /// Publications replayed to recovering clients.
    pub replayed: IntCounter,
    /// `connect` with `resume`, by `outcome` (resumed, or why the token was refused).
    pub resumes: IntCounterVec,
    /// WebSocket upgrades and connects refused, by `reason` (max_connections, origin, draining, per_user).
    pub refused: IntCounterVec,
    /// Distinct authenticated users connected to this node.
    pub users: IntGauge,
    /// Token checks, by `kind` (connect, subscribe, refresh) and `outcome` (ok or why not).
    pub auth: IntCounterVec,
    /// Subscribes and emits refused by channel rules, by `action` and `reason`.
    pub denials: IntCounterVec,
    /// JWKS file reloads, by `outcome` (ok, failed).
    pub jwks_reloads: IntCounterVec,
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

impl Metrics {
    fn new() -> Self {
        let r = Registry::new();
        #[cfg(target_os = "linux")]
        {
            let pc = prometheus::process_collector::ProcessCollector::for_self();
            r.register(Box::new(pc)).expect("process collector");
        }
        Self {
            connections: gauge(&r, "herald_connections", "Open WebSocket connections."),
            subscriptions: gauge(
                &r,
                "herald_subscriptions",
                "Session subscriptions on this node.",
            ),
            channels: gauge(&r, "herald_channels", "Channels with local subscribers."),
            published: counter_vec(
                &r,
                "herald_messages_published_total",
                "Publications accepted by the broker through this node.",
                &["source"],
            ),
            delivered: counter(
                &r,
                "herald_messages_delivered_total",
                "Publication frames queued to local subscribers.",
            ),
            dropped: counter_vec(
                &r,
                "herald_messages_dropped_total",
                "Publication frames not delivered.",
                &["reason"],
            ),
            disconnects: counter_vec(
                &r,
                "herald_disconnects_total",
                "Server-initiated closes by close code.",
                &["code"],
            ),
            slow_consumers: counter(
                &r,
                "herald_slow_consumer_disconnects_total",
                "Clients closed with 4001 because their outbound queue was full.",
            ),
            broker_errors: counter_vec(
                &r,
                "herald_broker_errors_total",
                "Broker operation failures.",
                &["op"],
            ),
            broker_up: gauge(&r, "herald_broker_up", "1 while the broker is reachable."),
            state_resets: counter_vec(
                &r,
                "herald_channel_state_resets_total",
                "Channels whose local subscribers were told to recover (4004).",
                &["reason"],
            ),
            client_errors: counter_vec(
                &r,
                "herald_client_errors_total",
                "Error replies sent to clients.",
                &["code"],
            ),
            api_requests: counter_vec(
                &r,
                "herald_api_requests_total",
                "HTTP API requests.",
                &["route", "status"],
            ),
            recoveries: counter_vec(
                &r,
                "herald_recoveries_total",
                "Recovery attempts by outcome.",
                &["outcome"],
            ),
            replayed: counter(
                &r,
                "herald_messages_replayed_total",
                "Publications replayed from history to recovering clients.",
            ),
            resumes: counter_vec(
                &r,
                "herald_resumes_total",
                "Session resume attempts by outcome.",
                &["outcome"],
            ),
            refused: counter_vec(
                &r,
                "herald_connections_refused_total",
                "WebSocket upgrades refused before a session started.",
                &["reason"],
            ),
            users: gauge(
                &r,
                "herald_users",
                "Distinct authenticated users connected to this node.",
            ),
            auth: counter_vec(
                &r,
                "herald_auth_total",
                "Token checks by kind and outcome.",
                &["kind", "outcome"],
            ),
            denials: counter_vec(
                &r,
                "herald_permission_denials_total",
                "Subscribes and emits refused by channel rules.",
                &["action", "reason"],
            ),
            jwks_reloads: counter_vec(
                &r,
                "herald_jwks_reloads_total",
                "JWKS file reloads by outcome.",
                &["outcome"],
            ),
            registry: r,
        }
    }

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}
