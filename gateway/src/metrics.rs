//! Prometheus metrics: a leaf every layer may use.
//!
//! One process-wide registry behind [`metrics()`]. Labels are low-cardinality
//! by construction (an op, a reason, a close code); never a channel or user id.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::LazyLock;

pub(crate) struct Metrics {
    registry: Registry,
    /// Open WebSocket connections (connected or still handshaking the protocol).
    pub(crate) connections: IntGauge,
    /// Session → channel subscriptions on this node.
    pub(crate) subscriptions: IntGauge,
    /// Channels with at least one local subscriber (= broker subscriptions).
    pub(crate) channels: IntGauge,
    /// Publications accepted by the broker, by `source` (api, client).
    pub(crate) published: IntCounterVec,
    /// Frames of publications queued to local subscribers.
    pub(crate) delivered: IntCounter,
    /// Publications not delivered, by `reason` (slow_consumer, duplicate, no_subscribers).
    pub(crate) dropped: IntCounterVec,
    /// Server-initiated closes, by close `code`.
    pub(crate) disconnects: IntCounterVec,
    /// Clients closed because their outbound queue was full.
    pub(crate) slow_consumers: IntCounter,
    /// Broker failures, by `op` (publish, subscribe, unsubscribe, pubsub, connect, decode, refresh).
    pub(crate) broker_errors: IntCounterVec,
    /// 1 while the broker is reachable.
    pub(crate) broker_up: IntGauge,
    /// Channels whose subscribers were closed with 4004 after a gap or lost state, by `reason`.
    pub(crate) state_resets: IntCounterVec,
    /// Error replies sent to clients, by `code`.
    pub(crate) client_errors: IntCounterVec,
    /// HTTP API requests, by `route` and `status`.
    pub(crate) api_requests: IntCounterVec,
    /// Subscriptions that asked to recover, by `outcome` (recovered or the refusal).
    pub(crate) recoveries: IntCounterVec,
    /// Publications replayed to recovering clients.
    pub(crate) replayed: IntCounter,
    /// `connect` with `resume`, by `outcome` (resumed, or why the token was refused).
    pub(crate) resumes: IntCounterVec,
    /// WebSocket upgrades and connects refused, by `reason` (max_connections, origin, draining, per_user).
    pub(crate) refused: IntCounterVec,
    /// Distinct authenticated users connected to this node.
    pub(crate) users: IntGauge,
    /// Token checks, by `kind` (connect, subscribe, refresh) and `outcome` (ok or why not).
    pub(crate) auth: IntCounterVec,
    /// Subscribes and emits refused by channel rules, by `action` and `reason`.
    pub(crate) denials: IntCounterVec,
    /// JWKS file reloads, by `outcome` (ok, failed).
    pub(crate) jwks_reloads: IntCounterVec,
    /// WebSocket sessions started.
    pub(crate) accepted: IntCounter,
    /// Sessions ended, by `code`: the server's close code, `client` (the
    /// client closed) or `gone` (the socket failed).
    pub(crate) closed: IntCounterVec,
    /// Bytes written to client sockets (WebSocket frames).
    pub(crate) bytes_sent: IntCounter,
    /// Local subscribers each publication was queued to.
    pub(crate) fanout_size: Histogram,
    /// Time to queue one publication to all its local subscribers.
    pub(crate) fanout_duration: Histogram,
    /// Publish time (Redis clock) to receipt on this node (node clock).
    pub(crate) broker_lag: Histogram,
    /// Frames waiting in a session's outbound queue when its writer wakes.
    pub(crate) queue_depth: Histogram,
    /// Bytes waiting in all outbound queues, summed when scraped.
    pub(crate) queued_bytes: IntGauge,
    /// Publications received from the broker for local subscribers.
    pub(crate) received: IntCounter,
    /// Redis commands and scripts, by `command` and `result` (ok, error, timeout).
    pub(crate) redis_commands: IntCounterVec,
    /// Lua script round trips, by `script` (publish, history, position).
    pub(crate) redis_script_duration: HistogramVec,
    /// Pub/sub connections re-established after a loss.
    pub(crate) pubsub_reconnects: IntCounter,
    /// Channels this node is subscribed to on Redis.
    pub(crate) redis_subscriptions: IntGauge,
    /// API request latency, by `route` and `status`.
    pub(crate) api_duration: HistogramVec,
    /// Children resolved once for per-publication paths (no label lookup there).
    pub(crate) hot: Hot,
}

/// Label children used on every publication, resolved at start-up.
pub(crate) struct Hot {
    pub(crate) published_api: IntCounter,
    pub(crate) published_client: IntCounter,
    pub(crate) dropped_duplicate: IntCounter,
    pub(crate) dropped_slow_consumer: IntCounter,
    pub(crate) dropped_no_subscribers: IntCounter,
    /// `herald_redis_commands_total{command=publish|history|position, result=ok}`.
    pub(crate) redis_ok: [IntCounter; 3],
    /// `herald_redis_script_duration_seconds{script=publish|history|position}`.
    pub(crate) redis_script: [Histogram; 3],
}

/// Index into [`Hot::redis_ok`] / [`Hot::redis_script`].
pub(crate) fn script_index(script: &str) -> Option<usize> {
    ["publish", "history", "position"]
        .iter()
        .position(|s| *s == script)
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .expect("valid metric");
    r.register(Box::new(h.clone())).expect("unique metric");
    h
}

fn histogram_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .expect("valid metric");
    r.register(Box::new(h.clone())).expect("unique metric");
    h
}

/// Latency buckets from 100 µs to 10 s.
fn seconds() -> Vec<f64> {
    vec![
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        10.0,
    ]
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
        // Always 1; the label says which build runs.
        let build_info = IntGaugeVec::new(
            Opts::new("herald_build_info", "Always 1; labels name the build."),
            &["version"],
        )
        .expect("valid metric");
        r.register(Box::new(build_info.clone()))
            .expect("unique metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let published = counter_vec(
            &r,
            "herald_messages_published_total",
            "Publications accepted by the broker through this node.",
            &["source"],
        );
        let dropped = counter_vec(
            &r,
            "herald_messages_dropped_total",
            "Publication frames not delivered.",
            &["reason"],
        );
        let redis_commands = counter_vec(
            &r,
            "herald_redis_commands_total",
            "Redis commands and scripts by command and result.",
            &["command", "result"],
        );
        let redis_script_duration = histogram_vec(
            &r,
            "herald_redis_script_duration_seconds",
            "Lua script round trips by script.",
            &["script"],
            seconds(),
        );
        Self {
            connections: gauge(&r, "herald_connections", "Open WebSocket connections."),
            subscriptions: gauge(
                &r,
                "herald_subscriptions",
                "Session subscriptions on this node.",
            ),
            channels: gauge(&r, "herald_channels", "Channels with local subscribers."),
            published: published.clone(),
            delivered: counter(
                &r,
                "herald_messages_delivered_total",
                "Publication frames queued to local subscribers.",
            ),
            dropped: dropped.clone(),
            disconnects: counter_vec(
                &r,
                "herald_disconnects_total",
                "Server-initiated closes by close code.",
                &["code"],
            ),
            slow_consumers: counter(
                &r,
                "herald_slow_consumer_disconnects_total",
                "Clients closed with 4001 because their outbound queue was over its frame or byte bound.",
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
            accepted: counter(
                &r,
                "herald_connections_accepted_total",
                "WebSocket sessions started.",
            ),
            closed: counter_vec(
                &r,
                "herald_connections_closed_total",
                "Sessions ended, by close code (or client, gone).",
                &["code"],
            ),
            bytes_sent: counter(
                &r,
                "herald_bytes_sent_total",
                "Bytes written to client sockets.",
            ),
            fanout_size: histogram(
                &r,
                "herald_fanout_subscribers",
                "Local subscribers each publication was queued to.",
                vec![
                    1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 5000.0, 10000.0, 50000.0,
                ],
            ),
            fanout_duration: histogram(
                &r,
                "herald_fanout_duration_seconds",
                "Time to queue one publication to every local subscriber.",
                vec![
                    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                    0.01, 0.05,
                ],
            ),
            broker_lag: histogram(
                &r,
                "herald_broker_lag_seconds",
                "Publish time (Redis clock) to receipt on this node.",
                seconds(),
            ),
            queue_depth: histogram(
                &r,
                "herald_outbound_queue_depth",
                "Frames waiting in a session's outbound queue when its writer wakes.",
                vec![
                    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
                ],
            ),
            queued_bytes: gauge(
                &r,
                "herald_outbound_queued_bytes",
                "Bytes waiting in all sessions' outbound queues (summed at scrape time).",
            ),
            received: counter(
                &r,
                "herald_broker_messages_received_total",
                "Publications received from the broker for local subscribers.",
            ),
            redis_commands: redis_commands.clone(),
            redis_script_duration: redis_script_duration.clone(),
            pubsub_reconnects: counter(
                &r,
                "herald_redis_pubsub_reconnects_total",
                "Redis pub/sub connections re-established after a loss.",
            ),
            redis_subscriptions: gauge(
                &r,
                "herald_redis_subscriptions",
                "Channels this node is subscribed to on Redis.",
            ),
            api_duration: histogram_vec(
                &r,
                "herald_api_request_duration_seconds",
                "HTTP API request latency by route and status.",
                &["route", "status"],
                seconds(),
            ),
            hot: Hot {
                published_api: published.with_label_values(&["api"]),
                published_client: published.with_label_values(&["client"]),
                dropped_duplicate: dropped.with_label_values(&["duplicate"]),
                dropped_slow_consumer: dropped.with_label_values(&["slow_consumer"]),
                dropped_no_subscribers: dropped.with_label_values(&["no_subscribers"]),
                redis_ok: ["publish", "history", "position"]
                    .map(|c| redis_commands.with_label_values(&[c, "ok"])),
                redis_script: ["publish", "history", "position"]
                    .map(|c| redis_script_duration.with_label_values(&[c])),
            },
            registry: r,
        }
    }

    /// Creates the known label combinations at zero, so every series exists
    /// from start-up: dashboards and `rate()` alerts see 0, not "no data".
    fn preinit(&self) {
        fn each(v: &IntCounterVec, labels: &[&str]) {
            for l in labels {
                v.with_label_values(&[*l]);
            }
        }
        let codes = [
            "4000", "4001", "4002", "4003", "4004", "4500", "4501", "4502", "4503", "4504",
        ];
        each(&self.published, &["api", "client"]);
        each(
            &self.dropped,
            &["slow_consumer", "duplicate", "no_subscribers"],
        );
        each(&self.disconnects, &codes);
        each(&self.closed, &codes);
        each(&self.closed, &["client", "gone"]);
        each(
            &self.broker_errors,
            &[
                "publish",
                "subscribe",
                "unsubscribe",
                "history",
                "pubsub",
                "connect",
                "decode",
                "refresh",
            ],
        );
        each(
            &self.state_resets,
            &[
                "gap",
                "epoch_changed",
                "missed_while_disconnected",
                "offset_regressed",
            ],
        );
        each(
            &self.client_errors,
            &[
                "bad_request",
                "unauthorized",
                "forbidden",
                "not_connected",
                "too_many_subscriptions",
                "rate_limited",
                "rate_limited_silent",
                "too_many_connections",
                "payload_too_large",
                "unavailable",
            ],
        );
        each(
            &self.recoveries,
            &[
                "recovered",
                "epoch_changed",
                "ahead",
                "too_many",
                "gap",
                "unavailable",
                "no_position",
            ],
        );
        each(
            &self.resumes,
            &[
                "resumed",
                "malformed",
                "unknown_key",
                "bad_signature",
                "expired",
                "no_key",
                "wrong_user",
            ],
        );
        each(
            &self.refused,
            &[
                "max_connections",
                "origin",
                "draining",
                "per_user",
                "not_websocket",
            ],
        );
        each(&self.jwks_reloads, &["ok", "failed"]);
        for kind in ["connect", "subscribe", "refresh"] {
            for outcome in ["ok", "expired", "bad_signature", "malformed", "missing"] {
                self.auth.with_label_values(&[kind, outcome]);
            }
        }
        for (action, reason) in [
            ("subscribe", "user_channel"),
            ("subscribe", "not_granted"),
            ("subscribe", "bad_token"),
            ("emit", "emit_disabled"),
            ("emit", "user_channel"),
            ("emit", "not_granted"),
            ("resume", "user_channel"),
            ("resume", "not_granted"),
        ] {
            self.denials.with_label_values(&[action, reason]);
        }
        for command in ["publish", "history", "position", "ping", "expire"] {
            for result in ["ok", "error", "timeout"] {
                self.redis_commands.with_label_values(&[command, result]);
            }
        }
        for script in ["publish", "history", "position"] {
            self.redis_script_duration.with_label_values(&[script]);
        }
        for route in ["publish", "broadcast"] {
            self.api_requests.with_label_values(&[route, "200"]);
            self.api_duration.with_label_values(&[route, "200"]);
        }
    }

    /// Prometheus text exposition of every metric.
    pub(crate) fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let m = Metrics::new();
    m.preinit();
    m
});

/// The process-wide metrics.
pub(crate) fn metrics() -> &'static Metrics {
    &METRICS
}
