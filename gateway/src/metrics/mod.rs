//! Prometheus metrics: a leaf every layer may use.
//!
//! One process-wide registry behind [`metrics()`]. Labels are low-cardinality
//! by construction: every labelled metric is recorded through a method that
//! takes label enums ([`labels`]), never a string, and every value of those
//! enums exists at zero from start-up. Never a channel or user id.

mod labels;

use herald_proto::{CloseCode, ErrorCode};
pub(crate) use labels::{
    AcceptError, ApiRoute, ApiStatus, AuthFailure, AuthKind, BrokerOp, DenialAction, DenialReason,
    DropReason, Ended, Hook, HookOutcome, Label, PollMethod, PollOutcome, Protocol, RedisCommand,
    RedisResult, RefuseReason, Reload, ResetReason, Source, TimeoutStage, UpgradeOutcome,
    WebhookOutcome, labels,
};

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::LazyLock;

pub(crate) struct Metrics {
    registry: Registry,
    /// Open connections (connected or still handshaking the protocol), by `protocol`.
    pub(crate) connections: PerProtocol<IntGauge>,
    /// Session → channel subscriptions on this node.
    pub(crate) subscriptions: IntGauge,
    /// Channels with at least one local subscriber (= broker subscriptions).
    pub(crate) channels: IntGauge,
    /// Publications accepted by the broker, by `source` (api, client).
    published: IntCounterVec,
    /// Frames of publications queued to local subscribers, by `protocol`.
    pub(crate) delivered: PerProtocol<IntCounter>,
    /// Publications not delivered, by `reason` (slow_consumer, duplicate, no_subscribers).
    dropped: IntCounterVec,
    /// Server-initiated closes, by close `code`.
    disconnects: IntCounterVec,
    /// Clients closed because their outbound queue was full.
    pub(crate) slow_consumers: IntCounter,
    /// Broker failures, by `op` (publish, subscribe, unsubscribe, pubsub, connect, decode, refresh).
    broker_errors: IntCounterVec,
    /// 1 while the broker is reachable, by `shard`.
    broker_up: IntGaugeVec,
    /// Channels whose subscribers were closed with 4004 after a gap or lost state, by `reason`.
    state_resets: IntCounterVec,
    /// Error replies sent to clients, by `code`.
    client_errors: IntCounterVec,
    /// HTTP API requests, by `route` and `status`.
    api_requests: IntCounterVec,
    /// Subscriptions that asked to recover, by `outcome` (recovered or the refusal).
    recoveries: IntCounterVec,
    /// Publications replayed to recovering clients.
    replayed: IntCounter,
    /// `connect` with `resume`, by `outcome` (resumed, or why the token was refused).
    resumes: IntCounterVec,
    /// WebSocket upgrades and connects refused, by `reason` (max_connections, origin, draining, per_user).
    refused: IntCounterVec,
    /// Socket.IO long-polling requests, by `method` (open, get, post) and `outcome`.
    polling_requests: IntCounterVec,
    /// Engine.IO upgrades from polling to WebSocket, by `outcome`.
    upgrades: IntCounterVec,
    /// Distinct authenticated users connected to this node.
    pub(crate) users: IntGauge,
    /// Token checks, by `kind` (connect, subscribe, refresh) and `outcome` (ok or why not).
    auth: IntCounterVec,
    /// Subscribes and emits refused by channel rules, by `action` and `reason`.
    denials: IntCounterVec,
    /// JWKS file reloads, by `outcome` (ok, failed).
    jwks_reloads: IntCounterVec,
    /// WebSocket sessions started.
    pub(crate) accepted: IntCounter,
    /// Sessions ended, by `code`: the server's close code, `client` (the
    /// client closed) or `gone` (the socket failed).
    closed: IntCounterVec,
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
    /// TCP connections held on the listeners (before and after upgrade), read when scraped.
    pub(crate) tcp_connections: IntGauge,
    /// Connections closed for running out of time, by `stage`.
    timeouts: IntCounterVec,
    /// Failed `accept` calls, by `kind`.
    accept_errors: IntCounterVec,
    /// Publications received from the broker for local subscribers.
    pub(crate) received: IntCounter,
    /// Redis commands and scripts, by `shard`, `command` and `result` (ok, error, timeout).
    redis_commands: IntCounterVec,
    /// Lua script round trips, by `shard` and `script` (publish, history, position).
    redis_script_duration: HistogramVec,
    /// Pub/sub connections re-established after a loss, by `shard`.
    pubsub_reconnects: IntCounterVec,
    /// Redis Sentinel named a different master than the one connected to, by `shard`.
    redis_master_changes: IntCounterVec,
    /// Channels this node is subscribed to on Redis, by `shard`.
    redis_subscriptions: IntGaugeVec,
    /// API request latency, by `route` and `status`.
    api_duration: HistogramVec,
    /// Proxy hook calls, by `hook` and `outcome`.
    hook_requests: IntCounterVec,
    /// Proxy hook call latency, by `hook`.
    hook_duration: HistogramVec,
    /// Subscribes refused because the channel's presence was full.
    presence_refused: IntCounter,
    /// Presence entries removed because their node stopped heartbeating.
    presence_expired: IntCounter,
    /// Webhook POSTs by `event` and `outcome`.
    webhooks: IntCounterVec,
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
}

/// The series of one broker shard (`shard` = its index in `broker.shards`;
/// "0" for one Redis, a Sentinel group or a Redis Cluster), resolved once by
/// the backend that owns the connection.
pub(crate) struct ShardMetrics {
    pub(crate) up: IntGauge,
    pub(crate) subscriptions: IntGauge,
    pub(crate) reconnects: IntCounter,
    pub(crate) master_changes: IntCounter,
    label: String,
    /// `herald_redis_commands_total{command=publish|history|position, result=ok}`.
    redis_ok: [IntCounter; 3],
    /// `herald_redis_script_duration_seconds{script=publish|history|position}`.
    redis_script: [Histogram; 3],
}

/// One metric child per [`Protocol`], resolved once: hot paths index it
/// instead of looking label values up.
pub(crate) struct PerProtocol<T> {
    herald: T,
    socketio: T,
    sse: T,
}

impl<T> PerProtocol<T> {
    fn new(f: impl Fn(Protocol) -> T) -> Self {
        Self {
            herald: f(Protocol::Herald),
            socketio: f(Protocol::Socketio),
            sse: f(Protocol::Sse),
        }
    }

    /// The child for `p`.
    pub(crate) fn get(&self, p: Protocol) -> &T {
        match p {
            Protocol::Herald => &self.herald,
            Protocol::Socketio => &self.socketio,
            Protocol::Sse => &self.sse,
        }
    }
}

impl PerProtocol<IntGauge> {
    /// Every protocol's connections together (admission and drain count these).
    pub(crate) fn total(&self) -> i64 {
        self.herald.get() + self.socketio.get() + self.sse.get()
    }
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
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
        let connections = gauge_vec(
            &r,
            "herald_connections",
            "Open client connections (WebSocket, or Socket.IO polling sessions), by protocol.",
            &["protocol"],
        );
        let delivered = counter_vec(
            &r,
            "herald_messages_delivered_total",
            "Publication frames queued to local subscribers, by the subscribers' protocol.",
            &["protocol"],
        );
        let redis_commands = counter_vec(
            &r,
            "herald_redis_commands_total",
            "Redis commands and scripts by shard, command and result.",
            &["shard", "command", "result"],
        );
        let redis_script_duration = histogram_vec(
            &r,
            "herald_redis_script_duration_seconds",
            "Lua script round trips by shard and script.",
            &["shard", "script"],
            seconds(),
        );
        Self {
            connections: PerProtocol::new(|p| connections.with_label_values(&[p.label()])),
            subscriptions: gauge(
                &r,
                "herald_subscriptions",
                "Session subscriptions on this node.",
            ),
            channels: gauge(&r, "herald_channels", "Channels with local subscribers."),
            published: published.clone(),
            delivered: PerProtocol::new(|p| delivered.with_label_values(&[p.label()])),
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
            broker_up: gauge_vec(
                &r,
                "herald_broker_up",
                "1 while the broker (shard) is reachable.",
                &["shard"],
            ),
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
            polling_requests: counter_vec(
                &r,
                "herald_socketio_polling_requests_total",
                "Socket.IO HTTP long-polling requests by method and outcome.",
                &["method", "outcome"],
            ),
            upgrades: counter_vec(
                &r,
                "herald_socketio_upgrades_total",
                "Engine.IO upgrades from polling to WebSocket by outcome.",
                &["outcome"],
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
            tcp_connections: gauge(
                &r,
                "herald_tcp_connections",
                "TCP connections held on the listeners, before and after upgrade.",
            ),
            timeouts: counter_vec(
                &r,
                "herald_connection_timeouts_total",
                "Connections closed for running out of time, by stage.",
                &["stage"],
            ),
            accept_errors: counter_vec(
                &r,
                "herald_accept_errors_total",
                "Failed accept calls on the listeners, by kind.",
                &["kind"],
            ),
            received: counter(
                &r,
                "herald_broker_messages_received_total",
                "Publications received from the broker for local subscribers.",
            ),
            redis_commands: redis_commands.clone(),
            redis_script_duration: redis_script_duration.clone(),
            pubsub_reconnects: counter_vec(
                &r,
                "herald_redis_pubsub_reconnects_total",
                "Redis pub/sub connections re-established after a loss, by shard.",
                &["shard"],
            ),
            redis_master_changes: counter_vec(
                &r,
                "herald_redis_master_changes_total",
                "Times Redis Sentinel named a new master and the node moved to it, by shard.",
                &["shard"],
            ),
            redis_subscriptions: gauge_vec(
                &r,
                "herald_redis_subscriptions",
                "Channels this node is subscribed to on Redis, by shard.",
                &["shard"],
            ),
            presence_refused: counter(
                &r,
                "herald_presence_refused_total",
                "Subscribes refused because the channel's presence held presence.max_clients.",
            ),
            presence_expired: counter(
                &r,
                "herald_presence_expired_total",
                "Presence entries removed because their node stopped heartbeating (crash).",
            ),
            webhooks: counter_vec(
                &r,
                "herald_webhooks_total",
                "Webhook POSTs by event and outcome (delivered, retried, failed, dropped).",
                &["event", "outcome"],
            ),
            api_duration: histogram_vec(
                &r,
                "herald_api_request_duration_seconds",
                "HTTP API request latency by route and status.",
                &["route", "status"],
                seconds(),
            ),
            hook_requests: counter_vec(
                &r,
                "herald_hook_requests_total",
                "Proxy hook calls to the backend by hook and outcome.",
                &["hook", "outcome"],
            ),
            hook_duration: histogram_vec(
                &r,
                "herald_hook_duration_seconds",
                "Proxy hook call latency by hook (timeouts included).",
                &["hook"],
                seconds(),
            ),
            hot: Hot {
                published_api: published.with_label_values(&["api"]),
                published_client: published.with_label_values(&["client"]),
                dropped_duplicate: dropped.with_label_values(&["duplicate"]),
                dropped_slow_consumer: dropped.with_label_values(&["slow_consumer"]),
                dropped_no_subscribers: dropped.with_label_values(&["no_subscribers"]),
            },
            registry: r,
        }
    }

    /// Creates every label combination a code path can record, at zero, so
    /// every series exists from start-up: dashboards and `rate()` alerts
    /// see 0, not "no data".
    fn preinit(&self) {
        for (vec, values) in self.one_label_series() {
            for v in values {
                vec.with_label_values(&[v]);
            }
        }
        for (vec, series) in self.two_label_series() {
            for (a, b) in series {
                vec.with_label_values(&[a, b]);
            }
        }
        // Every node has shard 0; a backend with more resolves the others.
        drop(self.shard(0));
        for (r, st) in pairs::<ApiRoute, ApiStatus>() {
            self.api_duration.with_label_values(&[r, st]);
        }
        for h in labels_of::<Hook>() {
            self.hook_duration.with_label_values(&[h]);
        }
    }

    /// Every value of every one-label counter, from the label enums.
    fn one_label_series(&self) -> Vec<(&IntCounterVec, Vec<&'static str>)> {
        let with = |words: &[&'static str], rest: Vec<&'static str>| {
            words.iter().copied().chain(rest).collect::<Vec<_>>()
        };
        vec![
            (&self.published, labels_of::<Source>()),
            (&self.dropped, labels_of::<DropReason>()),
            (&self.disconnects, labels_of::<CloseCode>()),
            (
                &self.closed,
                with(
                    &[],
                    [labels_of::<CloseCode>(), labels_of::<Ended>()].concat(),
                ),
            ),
            (&self.broker_errors, labels_of::<BrokerOp>()),
            (&self.state_resets, labels_of::<ResetReason>()),
            (
                &self.client_errors,
                with(&[RATE_LIMITED_SILENT], labels_of::<ErrorCode>()),
            ),
            (
                &self.recoveries,
                with(&[RECOVERED], labels_of::<crate::recovery::Refusal>()),
            ),
            (
                &self.resumes,
                with(
                    &[RESUMED, WRONG_USER],
                    labels_of::<crate::token::TokenError>(),
                ),
            ),
            (&self.refused, labels_of::<RefuseReason>()),
            (&self.upgrades, labels_of::<UpgradeOutcome>()),
            (&self.jwks_reloads, labels_of::<Reload>()),
            (&self.timeouts, labels_of::<TimeoutStage>()),
            (&self.accept_errors, labels_of::<AcceptError>()),
        ]
    }

    /// Every combination of every two-label counter.
    fn two_label_series(&self) -> Vec<(&IntCounterVec, Vec<(&'static str, &'static str)>)> {
        let auth = AuthKind::all()
            .into_iter()
            .flat_map(|k| {
                std::iter::once(OK)
                    .chain(labels_of::<AuthFailure>())
                    .map(move |o| (k.label(), o))
            })
            .collect();
        vec![
            (&self.auth, auth),
            (&self.denials, pairs::<DenialAction, DenialReason>()),
            (&self.api_requests, pairs::<ApiRoute, ApiStatus>()),
            (&self.polling_requests, pairs::<PollMethod, PollOutcome>()),
            (&self.hook_requests, pairs::<Hook, HookOutcome>()),
        ]
    }

    /// Prometheus text exposition of every metric.
    pub(crate) fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl ShardMetrics {
    /// Counts one Redis round trip, and times it when it ran a script.
    pub(crate) fn redis(&self, cmd: RedisCommand, result: RedisResult, took: std::time::Duration) {
        let m = metrics();
        match (cmd.hot_slot(), result) {
            (Some(i), RedisResult::Ok) => self.redis_ok[i].inc(),
            _ => m
                .redis_commands
                .with_label_values(&[&self.label, cmd.label(), result.label()])
                .inc(),
        }
        match cmd.hot_slot() {
            Some(i) => self.redis_script[i].observe(took.as_secs_f64()),
            None if cmd.is_script() => m
                .redis_script_duration
                .with_label_values(&[&self.label, cmd.label()])
                .observe(took.as_secs_f64()),
            None => {}
        }
    }
}

/// Scripts run on every publish, recovery or subscribe: their series are resolved once.
const HOT_SCRIPTS: [RedisCommand; 3] = [
    RedisCommand::Publish,
    RedisCommand::History,
    RedisCommand::Position,
];

const OK: &str = "ok";
const RECOVERED: &str = "recovered";
const RESUMED: &str = "resumed";
const WRONG_USER: &str = "wrong_user";
const RATE_LIMITED_SILENT: &str = "rate_limited_silent";

fn labels_of<L: Label>() -> Vec<&'static str> {
    L::all().into_iter().map(Label::label).collect()
}

fn pairs<A: Label, B: Label>() -> Vec<(&'static str, &'static str)> {
    A::all()
        .into_iter()
        .flat_map(|a| B::all().into_iter().map(move |b| (a.label(), b.label())))
        .collect()
}

/// Recording: one method per labelled metric, taking label enums.
impl Metrics {
    /// Counts a failed broker operation and logs it.
    pub(crate) fn broker_failure(&self, op: BrokerOp, error: &dyn std::fmt::Display) {
        self.broker_error(op);
        tracing::warn!(op = op.label(), %error, "broker operation failed");
    }

    /// Counts a failed broker operation (the caller logs it its own way).
    pub(crate) fn broker_error(&self, op: BrokerOp) {
        self.broker_errors.with_label_values(&[op.label()]).inc();
    }

    /// The series of broker shard `index`, every command and result
    /// created at zero.
    pub(crate) fn shard(&self, index: usize) -> ShardMetrics {
        let label = index.to_string();
        let l = label.as_str();
        for (c, r) in pairs::<RedisCommand, RedisResult>() {
            self.redis_commands.with_label_values(&[l, c, r]);
        }
        for c in RedisCommand::all().into_iter().filter(|c| c.is_script()) {
            self.redis_script_duration
                .with_label_values(&[l, c.label()]);
        }
        ShardMetrics {
            up: self.broker_up.with_label_values(&[l]),
            subscriptions: self.redis_subscriptions.with_label_values(&[l]),
            reconnects: self.pubsub_reconnects.with_label_values(&[l]),
            master_changes: self.redis_master_changes.with_label_values(&[l]),
            redis_ok: HOT_SCRIPTS
                .map(|c| self.redis_commands.with_label_values(&[l, c.label(), "ok"])),
            redis_script: HOT_SCRIPTS.map(|c| {
                self.redis_script_duration
                    .with_label_values(&[l, c.label()])
            }),
            label,
        }
    }

    pub(crate) fn presence_refused(&self) {
        self.presence_refused.inc();
    }

    pub(crate) fn webhook(&self, event: &str, outcome: WebhookOutcome) {
        self.webhooks
            .with_label_values(&[event, outcome.label()])
            .inc();
    }

    pub(crate) fn presence_expired(&self) {
        self.presence_expired.inc();
    }

    pub(crate) fn state_reset(&self, reason: ResetReason) {
        self.state_resets.with_label_values(&[reason.label()]).inc();
    }

    /// A Socket.IO long-polling request and how it ended.
    pub(crate) fn polling(&self, method: PollMethod, outcome: PollOutcome) {
        self.polling_requests
            .with_label_values(&[method.label(), outcome.label()])
            .inc();
    }

    /// An Engine.IO upgrade from polling to WebSocket, done or failed.
    pub(crate) fn upgrade(&self, ok: bool) {
        let outcome = if ok {
            UpgradeOutcome::Ok
        } else {
            UpgradeOutcome::Failed
        };
        self.upgrades.with_label_values(&[outcome.label()]).inc();
    }

    pub(crate) fn refused(&self, reason: RefuseReason) {
        self.refused.with_label_values(&[reason.label()]).inc();
    }

    /// A token check: accepted, or why not.
    pub(crate) fn auth(&self, kind: AuthKind, outcome: Result<(), AuthFailure>) {
        let o = outcome.err().map_or(OK, Label::label);
        self.auth.with_label_values(&[kind.label(), o]).inc();
    }

    /// A proxy hook call: how it ended and how long it took.
    pub(crate) fn hook(&self, hook: Hook, outcome: HookOutcome, took: std::time::Duration) {
        self.hook_requests
            .with_label_values(&[hook.label(), outcome.label()])
            .inc();
        self.hook_duration
            .with_label_values(&[hook.label()])
            .observe(took.as_secs_f64());
    }

    pub(crate) fn denial(&self, action: DenialAction, reason: DenialReason) {
        self.denials
            .with_label_values(&[action.label(), reason.label()])
            .inc();
    }

    /// A recovery attempt: the publications it replays, or why it was refused.
    pub(crate) fn recovery(&self, outcome: Result<usize, crate::recovery::Refusal>) {
        match outcome {
            Ok(n) => {
                self.recoveries.with_label_values(&[RECOVERED]).inc();
                self.replayed.inc_by(n as u64);
            }
            Err(r) => self.recoveries.with_label_values(&[r.label()]).inc(),
        }
    }

    /// A resume: done, or refused for the token's reason, or because the
    /// token belongs to another user (`None`).
    pub(crate) fn resume(&self, outcome: Result<(), Option<crate::token::TokenError>>) {
        let o = match outcome {
            Ok(()) => RESUMED,
            Err(Some(e)) => e.label(),
            Err(None) => WRONG_USER,
        };
        self.resumes.with_label_values(&[o]).inc();
    }

    /// An error reply sent to a client.
    pub(crate) fn client_error(&self, code: ErrorCode) {
        self.client_errors.with_label_values(&[code.label()]).inc();
    }

    /// A command of a flood dropped without an answer.
    pub(crate) fn client_error_silent(&self) {
        self.client_errors
            .with_label_values(&[RATE_LIMITED_SILENT])
            .inc();
    }

    /// The server closed a session with `code`.
    pub(crate) fn disconnect(&self, code: CloseCode) {
        self.disconnects.with_label_values(&[code.label()]).inc();
    }

    /// A session ended: closed by the server with a code, or otherwise.
    pub(crate) fn closed(&self, how: Result<CloseCode, Ended>) {
        let l = match how {
            Ok(c) => c.label(),
            Err(e) => e.label(),
        };
        self.closed.with_label_values(&[l]).inc();
    }

    pub(crate) fn api(&self, route: ApiRoute, status: u16, took: std::time::Duration) {
        let labels = [route.label(), ApiStatus::of(status).label()];
        self.api_requests.with_label_values(&labels).inc();
        self.api_duration
            .with_label_values(&labels)
            .observe(took.as_secs_f64());
    }

    /// A connection closed for running out of time.
    pub(crate) fn timeout(&self, stage: TimeoutStage) {
        self.timeouts.with_label_values(&[stage.label()]).inc();
    }

    pub(crate) fn accept_error(&self, kind: AcceptError) {
        self.accept_errors.with_label_values(&[kind.label()]).inc();
    }

    pub(crate) fn jwks_reload(&self, outcome: Reload) {
        self.jwks_reloads
            .with_label_values(&[outcome.label()])
            .inc();
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every label value any recording method can be given is on the scrape
    /// from start-up (a new enum value, or a new metric left out of
    /// `preinit`, fails here).
    #[test]
    fn every_recordable_series_exists_at_start() {
        let m = metrics();
        let text = m.render();
        let has = |name: &str, labels: &[(&str, &str)]| {
            let want: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            text.lines().any(|l| {
                l.starts_with(&format!("{name}{{")) && want.iter().all(|w| l.contains(w.as_str()))
            })
        };
        let one = [
            (
                "herald_messages_published_total",
                "source",
                labels_of::<Source>(),
            ),
            (
                "herald_messages_dropped_total",
                "reason",
                labels_of::<DropReason>(),
            ),
            ("herald_disconnects_total", "code", labels_of::<CloseCode>()),
            (
                "herald_connections_closed_total",
                "code",
                [labels_of::<CloseCode>(), labels_of::<Ended>()].concat(),
            ),
            ("herald_broker_errors_total", "op", labels_of::<BrokerOp>()),
            (
                "herald_channel_state_resets_total",
                "reason",
                labels_of::<ResetReason>(),
            ),
            (
                "herald_client_errors_total",
                "code",
                [labels_of::<ErrorCode>(), vec![RATE_LIMITED_SILENT]].concat(),
            ),
            (
                "herald_recoveries_total",
                "outcome",
                [labels_of::<crate::recovery::Refusal>(), vec![RECOVERED]].concat(),
            ),
            (
                "herald_resumes_total",
                "outcome",
                [
                    labels_of::<crate::token::TokenError>(),
                    vec![RESUMED, WRONG_USER],
                ]
                .concat(),
            ),
            (
                "herald_connections_refused_total",
                "reason",
                labels_of::<RefuseReason>(),
            ),
            (
                "herald_jwks_reloads_total",
                "outcome",
                labels_of::<Reload>(),
            ),
            (
                "herald_socketio_upgrades_total",
                "outcome",
                labels_of::<UpgradeOutcome>(),
            ),
        ];
        for (name, key, values) in one {
            for v in values {
                assert!(has(name, &[(key, v)]), "{name}{{{key}=\"{v}\"}} missing");
            }
        }
        for k in AuthKind::all() {
            for o in std::iter::once(OK).chain(labels_of::<AuthFailure>()) {
                assert!(
                    has("herald_auth_total", &[("kind", k.label()), ("outcome", o)]),
                    "auth {k:?} {o}"
                );
            }
        }
        for (h, o) in pairs::<Hook, HookOutcome>() {
            assert!(has(
                "herald_hook_requests_total",
                &[("hook", h), ("outcome", o)]
            ));
        }
        for h in labels_of::<Hook>() {
            assert!(has("herald_hook_duration_seconds_bucket", &[("hook", h)]));
        }
        for (a, r) in pairs::<DenialAction, DenialReason>() {
            assert!(has(
                "herald_permission_denials_total",
                &[("action", a), ("reason", r)]
            ));
        }
        for (c, r) in pairs::<RedisCommand, RedisResult>() {
            assert!(
                has(
                    "herald_redis_commands_total",
                    &[("shard", "0"), ("command", c), ("result", r)]
                ),
                "{c} {r}"
            );
        }
        for c in RedisCommand::all().into_iter().filter(|c| c.is_script()) {
            assert!(has(
                "herald_redis_script_duration_seconds_bucket",
                &[("shard", "0"), ("script", c.label())]
            ));
        }
        for (m, o) in pairs::<PollMethod, PollOutcome>() {
            assert!(has(
                "herald_socketio_polling_requests_total",
                &[("method", m), ("outcome", o)]
            ));
        }
        for (r, s) in pairs::<ApiRoute, ApiStatus>() {
            assert!(has(
                "herald_api_requests_total",
                &[("route", r), ("status", s)]
            ));
            assert!(has(
                "herald_api_request_duration_seconds_bucket",
                &[("route", r), ("status", s)]
            ));
        }
    }
}
