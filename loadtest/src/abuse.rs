//! The `abuse` scenario: what half-open connections from one address do to
//! everyone else.
//!
//! Normal clients connect from other loopback addresses (127.0.0.2 on),
//! subscribe to one channel and receive publications sent through the HTTP
//! API; they are measured twice in one run: quiet, then while an attacker
//! tries to hold `--attackers` connections from one address, each sending
//! half a request head (`GET /ws HTTP/1.1`, `Host`, then silence) and coming
//! back, at most `--attack-rate` new ones per second, once the node closes
//! or refuses it. Per phase: connect latency (TCP connect → `connected`) of
//! the clients and of steady probe connections, delivery latency and the
//! delivery books. For the attacker: attempts, the most sockets open at once
//! (sampled), how each ended (closed silently, `429`, `503`, reset) and how
//! long it lived; from the node's `/metrics`, its timeouts and refusals over
//! the attack.
//!
//! The attacker runs on its own thread and runtime, so it competes with the
//! clients for the machine, not for the measuring runtime.

use crate::cli::{AbuseArgs, Common, PublishVia, Target};
use crate::client::{Run, close_reason, send_text};
use crate::delivery::endpoints;
use crate::net::{self, Endpoint, Ws};
use crate::plot;
use crate::publish::{PublishOutcome, PublishPlan, Publishers};
use crate::report::{ClientsReport, DeliveryReport, Report};
use crate::scan;
use crate::stats::{Latency, LatencyBatch, LatencySink, LatencySummary, SeqTracker};
use crate::sys::{self, CpuMeter, CpuReport};
use anyhow::{Context, bail, ensure};
use fastwebsockets::{Frame, OpCode};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The one channel every normal client subscribes to: `abuse-0`.
const PREFIX: &str = "abuse-";
/// Bound on a client's TCP connect → `connected` → `subscribed`.
const SETUP_TIMEOUT: Duration = Duration::from_secs(15);
/// Bound on waiting for the node to end a first attacker connection.
const ATTACK_START: Duration = Duration::from_secs(60);
/// How often the attacker's open sockets are counted.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// How often the node's `/metrics` is read during the attack.
const NODE_SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// The outcome of an `abuse` run (`--json` writes it whole).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AbuseReport {
    pub scenario: String,
    pub target: String,
    pub urls: Vec<String>,
    /// Where the API and `/metrics` were reached.
    pub admin_url: String,
    pub params: serde_json::Value,
    pub quiet: PhaseReport,
    pub attacked: PhaseReport,
    pub attack: AttackReport,
    /// The node's own counters over the attack; `None` when `/metrics`
    /// could not be read.
    pub node: Option<NodeCounters>,
    /// Reasons for a non-zero exit.
    pub problems: Vec<String>,
    pub warnings: Vec<String>,
}

/// The normal clients in one phase.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PhaseReport {
    /// The subscribers, connected at the start of the phase.
    pub clients: Connects,
    /// Connections opened at `--probe-rate` through the phase, closed once `connected`.
    pub probes: Connects,
    pub delivery: DeliveryReport,
    /// The load client's CPU over the phase.
    pub cpu: CpuReport,
    pub seconds: f64,
}

/// Connection attempts and how long they took.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Connects {
    pub attempted: u64,
    /// Not connected, or (clients) not subscribed.
    pub failed: u64,
    pub first_error: Option<String>,
    /// From the TCP connect to the `connected` reply.
    pub latency: LatencySummary,
}

/// What the attacker did and how the node answered.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AttackReport {
    /// Connections the attacker tries to hold at once.
    pub attackers: u64,
    /// Most new connections per second.
    pub attack_rate: f64,
    pub source: String,
    pub seconds: f64,
    /// TCP connects tried.
    pub attempted: u64,
    /// TCP connects that succeeded.
    pub opened: u64,
    /// Most attacker sockets open at once, counted every 100 ms.
    pub peak_open: u64,
    /// How connections ended: `closed silently`, an HTTP status (`429`,
    /// `503`), `reset` or `connect failed`; each with how long it lived
    /// (from the TCP connect; for `connect failed`, the attempt).
    pub endings: BTreeMap<String, Ending>,
    /// Still open when the attack stopped.
    pub still_open: u64,
    pub first_error: Option<String>,
    /// Once a second of the attacked phase.
    pub series: Vec<AttackPoint>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Ending {
    pub count: u64,
    pub lifetime: LatencySummary,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AttackPoint {
    /// Seconds since the attacked phase began.
    pub t: f64,
    /// Attacker sockets open.
    pub open: u64,
    /// The node's `herald_tcp_connections`.
    pub node_tcp: Option<u64>,
}

/// Deltas of the node's connection-abuse counters over the attack.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NodeCounters {
    /// `herald_connection_timeouts_total`, by stage.
    pub timeouts: BTreeMap<String, u64>,
    /// `herald_connections_refused_total`, by reason.
    pub refused: BTreeMap<String, u64>,
    /// Highest `herald_tcp_connections` read (once a second).
    pub peak_tcp_connections: Option<u64>,
}

/// Everything a phase needs.
struct Plan {
    ep: Arc<Endpoint>,
    api: Arc<Endpoint>,
    /// Normal clients' source addresses, in turn.
    sources: Vec<SocketAddr>,
    a: AbuseArgs,
}

impl Plan {
    fn source(&self, i: usize) -> SocketAddr {
        self.sources[i % self.sources.len()]
    }
}

pub async fn abuse(a: AbuseArgs) -> anyhow::Result<AbuseReport> {
    validate(&a)?;
    ensure!(
        a.common.urls.len() == 1,
        "abuse runs against one node: give one --url"
    );
    let eps = endpoints(&a.common.urls).await?;
    let ep = eps[0].clone();
    ensure!(
        ep.is_loopback_v4(),
        "abuse connects from several 127.0.0.x addresses: --url must be a 127.x.x.x address"
    );
    let api = match &a.admin_url {
        Some(u) => Arc::new(Endpoint::resolve(u).await?),
        None => ep.clone(),
    };
    net::preflight(&[(*ep).clone(), (*api).clone()], "Herald node").await?;
    let say = |what: &str| {
        if !a.common.quiet {
            eprintln!("abuse: {what}");
        }
    };
    let plan = Plan {
        sources: (0..a.client_addrs)
            .map(|k| SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + k)), 0))
            .collect(),
        ep: ep.clone(),
        api: api.clone(),
        a: a.clone(),
    };

    say("quiet phase");
    let quiet = phase(&plan).await?;

    say("starting the attack");
    let before = scrape(&api).await.ok();
    let attack = Attack::start(
        ep.addr,
        format!("GET {}/ws HTTP/1.1\r\nHost: x\r\n", ep.prefix).into_bytes(),
        SocketAddr::new(IpAddr::V4(a.attack_source), 0),
        a.attackers,
        a.attack_rate,
    );
    // Measured only once the node has ended a first attacker connection:
    // its defences are then demonstrably in play.
    let deadline = Instant::now() + ATTACK_START;
    while attack.tally.ended_by_node() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if attack.tally.ended_by_node() == 0 {
        let r = attack.stop(0);
        bail!(
            "the node ended no attacker connection within {ATTACK_START:?} ({} opened; first error: {})",
            r.opened,
            r.first_error.as_deref().unwrap_or("none")
        );
    }
    say("under attack");
    let sampler = Sampler::start(attack.tally.clone(), api.clone());
    let attacked = phase(&plan).await;
    let (peak_open, series) = sampler.stop().await;
    let mut ar = attack.stop(peak_open);
    let after = scrape(&api).await.ok();
    let attacked = attacked?;
    ar.series = series;

    let node = match (before, after) {
        (Some(b), Some(a)) => Some(NodeCounters {
            timeouts: delta(&b, &a, "herald_connection_timeouts_total", "stage"),
            refused: delta(&b, &a, "herald_connections_refused_total", "reason"),
            peak_tcp_connections: ar.series.iter().filter_map(|p| p.node_tcp).max(),
        }),
        _ => None,
    };
    let mut report = AbuseReport {
        scenario: "abuse".to_owned(),
        target: "herald".to_owned(),
        urls: a.common.urls.clone(),
        admin_url: api.url.clone(),
        params: json!({
            "clients": a.clients,
            "client_addrs": a.client_addrs,
            "rate": a.rate,
            "duration": a.duration,
            "payload": a.payload,
            "publishers": a.publishers,
            "grace": a.grace,
            "probe_rate": a.probe_rate,
            "attackers": a.attackers,
            "attack_rate": a.attack_rate,
            "attack_source": a.attack_source.to_string(),
        }),
        quiet,
        attacked,
        attack: ar,
        node,
        ..AbuseReport::default()
    };
    report.judge(&a);
    Ok(report)
}

fn validate(a: &AbuseArgs) -> anyhow::Result<()> {
    ensure!(
        a.common.target == Target::Herald,
        "abuse speaks Herald's protocol only (--target herald)"
    );
    ensure!(a.clients > 0, "--clients must be at least 1");
    ensure!(a.attackers > 0, "--attackers must be at least 1");
    ensure!(
        (1..=200).contains(&a.client_addrs),
        "--client-addrs must be 1..=200"
    );
    for (v, name) in [
        (a.rate, "--rate"),
        (a.duration, "--duration"),
        (a.attack_rate, "--attack-rate"),
    ] {
        ensure!(v > 0.0 && v.is_finite(), "{name} must be positive");
    }
    ensure!(
        a.grace >= 0.0 && a.grace.is_finite(),
        "--grace must be >= 0"
    );
    ensure!(
        a.probe_rate >= 0.0 && a.probe_rate.is_finite(),
        "--probe-rate must be >= 0"
    );
    let src = a.attack_source;
    ensure!(
        src.is_loopback(),
        "--attack-source must be a 127.x.x.x address"
    );
    let [_, b, c, d] = src.octets();
    ensure!(
        !(b == 0 && c == 0 && (2..2 + a.client_addrs).contains(&d)),
        "--attack-source {src} is one of the clients' addresses (127.0.0.2 to 127.0.0.{})",
        1 + a.client_addrs
    );
    // Unbound connections to loopback come from 127.0.0.1: the publishers'
    // would be charged to the attacker's address and refused with it.
    ensure!(
        a.admin_url.is_some() || src != Ipv4Addr::LOCALHOST,
        "without --admin-url the publish API is reached on the attacked listener from 127.0.0.1: \
         start the node with --admin-listen and pass --admin-url, or pick another --attack-source"
    );
    let fds = sys::nofile_limit().saturating_sub(256);
    let need = (a.attackers + a.clients) as u64;
    ensure!(
        need <= fds,
        "{need} sockets (attackers and clients) need as many open files, but this process may open {fds}"
    );
    Ok(())
}

/// One phase: connect and subscribe the clients, publish on schedule with
/// probes alongside, wait for stragglers, close the books.
async fn phase(p: &Plan) -> anyhow::Result<PhaseReport> {
    let a = &p.a;
    let cpu = CpuMeter::start();
    let started = Instant::now();
    let stop = CancellationToken::new();
    // Whatever happens below, the clients end with the phase.
    let _stop = stop.clone().drop_guard();
    let shared = Arc::new(Shared {
        sink: LatencySink::new(sys::cores() * 2),
        delivered: AtomicU64::new(0),
    });
    let channel: Arc<str> = Arc::from(format!("{PREFIX}0"));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let handles: Vec<_> = (0..a.clients)
        .map(|i| {
            tokio::spawn(subscriber(
                i,
                p.ep.clone(),
                p.source(i),
                channel.clone(),
                shared.clone(),
                tx.clone(),
                stop.clone(),
            ))
        })
        .collect();
    drop(tx);
    let mut clients = ConnectBook::default();
    while let Some(r) = rx.recv().await {
        clients.add(r);
    }

    let run = Run::new(0);
    let publishers = Publishers::connect(
        PublishPlan {
            target: Target::Herald,
            via: PublishVia::Api,
            rate: a.rate,
            duration: Duration::from_secs_f64(a.duration),
            prefix: Arc::from(PREFIX),
            channels: 1,
            random: false,
            pad: a.payload,
            connections: a.publishers,
            redis_url: None,
        },
        &p.api,
    )
    .await
    .context("setting up the publishers")?;
    let probe_stop = CancellationToken::new();
    let probes = tokio::spawn(probe(
        p.ep.clone(),
        p.sources.clone(),
        a.probe_rate,
        probe_stop.clone(),
    ));
    let published = publishers.run(run).await;
    probe_stop.cancel();

    let subscribed = a.clients as u64 - clients.book.failed;
    let expected = published.published * subscribed;
    let grace_end = Instant::now() + Duration::from_secs_f64(a.grace);
    while shared.delivered.load(Ordering::Relaxed) < expected && Instant::now() < grace_end {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let probes = probes.await.context("probe task")?;
    stop.cancel();
    let mut ends = Vec::with_capacity(handles.len());
    for h in handles {
        ends.push(h.await.context("client task")?);
    }
    let seconds = started.elapsed().as_secs_f64();
    let mut delivery = close_books(&ends, &published);
    delivery.subscribers_per_message = subscribed;
    delivery.expected = expected;
    delivery.deliveries_per_second = delivery.delivered as f64 / seconds.max(1e-9);
    let latency = shared.sink.snapshot();
    delivery.latency = latency.summary();
    delivery.latency_curve = latency.curve();
    Ok(PhaseReport {
        clients: clients.finish(),
        probes,
        delivery,
        cpu: cpu.finish(0.0),
        seconds,
    })
}

/// Connect results as they come in.
#[derive(Default)]
struct ConnectBook {
    book: Connects,
    latency: Latency,
}

impl ConnectBook {
    fn add(&mut self, r: Result<Duration, String>) {
        self.book.attempted += 1;
        match r {
            Ok(d) => self.latency.record_duration(d),
            Err(e) => {
                self.book.failed += 1;
                self.book.first_error.get_or_insert(e);
            }
        }
    }

    fn finish(mut self) -> Connects {
        self.book.latency = self.latency.summary();
        self.book
    }
}

/// Shared by the subscribers of one phase.
struct Shared {
    sink: LatencySink,
    /// Deliveries so far, all clients.
    delivered: AtomicU64,
}

/// What a subscriber leaves behind.
struct ClientEnd {
    index: usize,
    /// `None` if it never subscribed.
    tracker: Option<SeqTracker>,
    /// Why it ended before the phase did.
    ended: Option<String>,
}

/// TCP connect, upgrade, `connect` → `connected`; returns the socket and
/// how long that took.
async fn hello(ep: &Endpoint, source: SocketAddr) -> anyhow::Result<(Ws, Duration)> {
    let t0 = Instant::now();
    let mut ws = net::ws_connect(ep, "/ws", Some(source)).await?;
    send_text(&mut ws, br#"{"op":"connect","id":1}"#.to_vec()).await?;
    loop {
        let f = ws.read_frame().await?;
        if f.opcode == OpCode::Close {
            bail!("server closed: {}", close_reason(&f.payload));
        }
        match scan::herald_op(&f.payload).unwrap_or_default() {
            b"connected" => return Ok((ws, t0.elapsed())),
            b"error" | b"disconnect" => {
                bail!("connect refused: {}", String::from_utf8_lossy(&f.payload))
            }
            _ => {}
        }
    }
}

/// Subscribes; returns the tracker expecting the next offset.
async fn subscribe(ws: &mut Ws, channel: &str) -> anyhow::Result<SeqTracker> {
    let frame = json!({"op": "subscribe", "id": 2, "channel": channel});
    send_text(ws, frame.to_string().into_bytes()).await?;
    loop {
        let f = ws.read_frame().await?;
        if f.opcode == OpCode::Close {
            bail!("server closed: {}", close_reason(&f.payload));
        }
        let p = &f.payload[..];
        match scan::herald_op(p).unwrap_or_default() {
            b"subscribed" => {
                let off = scan::number_field(p, b"offset").context("subscribed without offset")?;
                return Ok(SeqTracker::starting_at(off + 1));
            }
            b"ping" => send_text(ws, br#"{"op":"pong"}"#.to_vec()).await?,
            b"error" | b"disconnect" => {
                bail!("subscribe refused: {}", String::from_utf8_lossy(p))
            }
            _ => {}
        }
    }
}

/// One normal client: connect, subscribe, report how long the connect took
/// (or why it failed), then receive until `stop`.
async fn subscriber(
    index: usize,
    ep: Arc<Endpoint>,
    source: SocketAddr,
    channel: Arc<str>,
    shared: Arc<Shared>,
    setup: mpsc::UnboundedSender<Result<Duration, String>>,
    stop: CancellationToken,
) -> ClientEnd {
    let set_up = tokio::time::timeout(SETUP_TIMEOUT, async {
        let (mut ws, took) = hello(&ep, source).await?;
        let tracker = subscribe(&mut ws, &channel).await?;
        anyhow::Ok((ws, took, tracker))
    })
    .await
    .unwrap_or_else(|_| Err(anyhow::anyhow!("set-up timed out after {SETUP_TIMEOUT:?}")));
    let (mut ws, mut tracker) = match set_up {
        Ok((ws, took, tracker)) => {
            let _ = setup.send(Ok(took));
            (ws, tracker)
        }
        Err(e) => {
            let msg = format!("from {}: {e:#}", source.ip());
            let _ = setup.send(Err(msg.clone()));
            return ClientEnd {
                index,
                tracker: None,
                ended: Some(msg),
            };
        }
    };
    drop(setup);
    let mut lat = LatencyBatch::new(index);
    let ended = loop {
        let frame = tokio::select! {
            biased;
            () = stop.cancelled() => break None,
            f = ws.read_frame() => f,
        };
        let f = match frame {
            Ok(f) => f,
            Err(e) => break Some(format!("{e}")),
        };
        match f.opcode {
            OpCode::Text => {}
            OpCode::Close => break Some(close_reason(&f.payload)),
            _ => continue,
        }
        let p = &f.payload[..];
        if let Some(d) = scan::herald_message(p) {
            if let Some(off) = d.offset {
                tracker.observe(off);
            }
            if let Some(t) = d.t {
                lat.push(crate::stats::now_us().saturating_sub(t), &shared.sink);
            }
            shared.delivered.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        match scan::herald_op(p).unwrap_or_default() {
            b"ping" => {
                if let Err(e) = send_text(&mut ws, br#"{"op":"pong"}"#.to_vec()).await {
                    break Some(format!("{e:#}"));
                }
            }
            b"error" | b"disconnect" => break Some(String::from_utf8_lossy(p).into_owned()),
            _ => {}
        }
    };
    lat.flush(&shared.sink);
    ClientEnd {
        index,
        tracker: Some(tracker),
        ended,
    }
}

/// Opens a connection `rate` times a second until `stop`, each closed once
/// `connected`; then waits for those in flight.
async fn probe(
    ep: Arc<Endpoint>,
    sources: Vec<SocketAddr>,
    rate: f64,
    stop: CancellationToken,
) -> Connects {
    let mut book = ConnectBook::default();
    if rate <= 0.0 {
        return book.finish();
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    let start = tokio::time::Instant::now();
    for i in 0u64.. {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep_until(due) => {}
        }
        let (ep, tx) = (ep.clone(), tx.clone());
        let source = sources[i as usize % sources.len()];
        tokio::spawn(async move {
            let r = tokio::time::timeout(SETUP_TIMEOUT, hello(&ep, source))
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out after {SETUP_TIMEOUT:?}")));
            let _ = tx.send(match r {
                Ok((mut ws, took)) => {
                    let _ = ws.write_frame(Frame::close(1000, b"")).await;
                    Ok(took)
                }
                Err(e) => Err(format!("from {}: {e:#}", source.ip())),
            });
        });
    }
    drop(tx);
    while let Some(r) = rx.recv().await {
        book.add(r);
    }
    book.finish()
}

/// Totals over the clients against what was published (one channel).
fn close_books(ends: &[ClientEnd], published: &PublishOutcome) -> DeliveryReport {
    let end = match published.last_offset.first() {
        Some(&last) if last > 0 => last + 1,
        _ => 0,
    };
    let mut d = DeliveryReport::default();
    published.fill(&mut d);
    for e in ends {
        let Some(t) = &e.tracker else { continue };
        d.add_client(e.index, t.finish(end), e.ended.as_ref());
    }
    d
}

/// Counters shared with the attacker thread.
#[derive(Default)]
struct Tally {
    attempted: AtomicU64,
    opened: AtomicU64,
    /// Attacker sockets open now.
    open: AtomicU64,
    /// Lifetimes by how the connection ended.
    endings: Mutex<BTreeMap<String, Latency>>,
    still_open: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Tally {
    fn ended(&self, how: String, lived: Duration) {
        lock(&self.endings)
            .entry(how)
            .or_default()
            .record_duration(lived);
    }

    fn error(&self, e: String) {
        lock(&self.first_error).get_or_insert(e);
    }

    /// Connections the node closed, refused or reset.
    fn ended_by_node(&self) -> u64 {
        lock(&self.endings)
            .iter()
            .filter(|(k, _)| *k != CONNECT_FAILED)
            .map(|(_, h)| h.count())
            .sum()
    }
}

const CONNECT_FAILED: &str = "connect failed";

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Hands out connection attempts at most `rate` a second, never in a burst.
struct Pacer {
    next: Mutex<tokio::time::Instant>,
    every: Duration,
}

impl Pacer {
    async fn wait(&self) {
        let due = {
            let mut next = lock(&self.next);
            let due = (*next).max(tokio::time::Instant::now());
            *next = due + self.every;
            due
        };
        tokio::time::sleep_until(due).await;
    }
}

/// The attacker thread.
struct Attack {
    tally: Arc<Tally>,
    stop: CancellationToken,
    thread: std::thread::JoinHandle<()>,
    attackers: usize,
    rate: f64,
    source: SocketAddr,
    started: Instant,
}

impl Attack {
    fn start(
        target: SocketAddr,
        head: Vec<u8>,
        source: SocketAddr,
        attackers: usize,
        rate: f64,
    ) -> Self {
        let tally = Arc::new(Tally::default());
        let stop = CancellationToken::new();
        let thread = {
            let (tally, stop) = (tally.clone(), stop.clone());
            std::thread::spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => return tally.error(format!("attacker runtime: {e}")),
                };
                rt.block_on(async move {
                    let pacer = Arc::new(Pacer {
                        next: Mutex::new(tokio::time::Instant::now()),
                        every: Duration::from_secs_f64(1.0 / rate),
                    });
                    let head: Arc<[u8]> = Arc::from(head);
                    let tasks: Vec<_> = (0..attackers)
                        .map(|_| {
                            tokio::spawn(attacker(
                                target,
                                source,
                                head.clone(),
                                pacer.clone(),
                                tally.clone(),
                                stop.clone(),
                            ))
                        })
                        .collect();
                    for t in tasks {
                        let _ = t.await;
                    }
                });
            })
        };
        Self {
            tally,
            stop,
            thread,
            attackers,
            rate,
            source,
            started: Instant::now(),
        }
    }

    /// Stops the attacker and sums up what it did.
    fn stop(self, peak_open: u64) -> AttackReport {
        self.stop.cancel();
        let seconds = self.started.elapsed().as_secs_f64();
        if self.thread.join().is_err() {
            self.tally.error("the attacker thread panicked".to_owned());
        }
        let t = &self.tally;
        AttackReport {
            attackers: self.attackers as u64,
            attack_rate: self.rate,
            source: self.source.ip().to_string(),
            seconds,
            attempted: t.attempted.load(Ordering::Relaxed),
            opened: t.opened.load(Ordering::Relaxed),
            peak_open,
            endings: lock(&t.endings)
                .iter()
                .map(|(k, h)| {
                    let e = Ending {
                        count: h.count(),
                        lifetime: h.summary(),
                    };
                    (k.clone(), e)
                })
                .collect(),
            still_open: t.still_open.load(Ordering::Relaxed),
            first_error: lock(&t.first_error).clone(),
            series: Vec::new(),
        }
    }
}

/// One attacker slot: open a half-open connection, wait for the node to end
/// it, note how and when, come back; until `stop`.
async fn attacker(
    target: SocketAddr,
    source: SocketAddr,
    head: Arc<[u8]>,
    pacer: Arc<Pacer>,
    tally: Arc<Tally>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = pacer.wait() => {}
        }
        tally.attempted.fetch_add(1, Ordering::Relaxed);
        let t0 = Instant::now();
        let connect =
            tokio::time::timeout(net::CONNECT_TIMEOUT, net::tcp_connect(target, Some(source)));
        let tcp = tokio::select! {
            () = stop.cancelled() => return,
            r = connect => r,
        };
        let mut tcp = match tcp {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tally.error(format!("connecting: {e}"));
                tally.ended(CONNECT_FAILED.to_owned(), t0.elapsed());
                continue;
            }
            Err(_) => {
                tally.error(format!(
                    "connecting: timed out after {:?}",
                    net::CONNECT_TIMEOUT
                ));
                tally.ended(CONNECT_FAILED.to_owned(), t0.elapsed());
                continue;
            }
        };
        tally.opened.fetch_add(1, Ordering::Relaxed);
        tally.open.fetch_add(1, Ordering::Relaxed);
        let opened = Instant::now();
        let how = tokio::select! {
            () = stop.cancelled() => None,
            how = half_open(&mut tcp, &head) => Some(how),
        };
        tally.open.fetch_sub(1, Ordering::Relaxed);
        match how {
            Some(how) => tally.ended(how, opened.elapsed()),
            None => {
                tally.still_open.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
}

/// Sends `head` and reads until the node ends the connection; returns how:
/// the HTTP status it answered with, else `closed silently` or `reset`.
async fn half_open(tcp: &mut TcpStream, head: &[u8]) -> String {
    let mut answer = Vec::new();
    let mut buf = [0u8; 512];
    let how = match tcp.write_all(head).await {
        Err(_) => "reset",
        Ok(()) => loop {
            match tcp.read(&mut buf).await {
                Ok(0) => break "closed silently",
                Ok(n) => {
                    if answer.len() < 16 {
                        answer.extend_from_slice(&buf[..n.min(16)]);
                    }
                }
                Err(_) => break "reset",
            }
        },
    };
    http_status(&answer).map_or_else(|| how.to_owned(), str::to_owned)
}

/// The status code of an HTTP/1 status line (`"429"`), or `answer` for
/// anything else that is not empty.
fn http_status(answer: &[u8]) -> Option<&str> {
    if answer.is_empty() {
        return None;
    }
    let code = answer
        .strip_prefix(b"HTTP/1.")
        .and_then(|r| r.get(2..5))
        .filter(|c| c.iter().all(u8::is_ascii_digit))
        .and_then(|c| std::str::from_utf8(c).ok());
    Some(code.unwrap_or("answer"))
}

/// Counts the attacker's open sockets every [`SAMPLE_EVERY`] and reads the
/// node's TCP connection gauge every [`NODE_SAMPLE_EVERY`].
struct Sampler {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<(u64, Vec<AttackPoint>)>,
}

impl Sampler {
    fn start(tally: Arc<Tally>, api: Arc<Endpoint>) -> Self {
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            let open = || tally.open.load(Ordering::Relaxed);
            let mut peak = open();
            let node = tokio::spawn({
                let (tally, token) = (tally.clone(), token.clone());
                async move {
                    let mut series = Vec::new();
                    let mut tick = tokio::time::interval(NODE_SAMPLE_EVERY);
                    loop {
                        tokio::select! {
                            () = token.cancelled() => return series,
                            _ = tick.tick() => {}
                        }
                        let node_tcp = scrape(&api).await.ok().and_then(|text| {
                            family(&text, "herald_tcp_connections", "")
                                .get("")
                                .map(|v| *v as u64)
                        });
                        series.push(AttackPoint {
                            t: start.elapsed().as_secs_f64(),
                            open: tally.open.load(Ordering::Relaxed),
                            node_tcp,
                        });
                    }
                }
            });
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            loop {
                tokio::select! {
                    () = token.cancelled() => break,
                    _ = tick.tick() => peak = peak.max(open()),
                }
            }
            (peak, node.await.unwrap_or_default())
        });
        Self { stop, task }
    }

    /// The most open sockets seen, and the per-second series.
    async fn stop(self) -> (u64, Vec<AttackPoint>) {
        self.stop.cancel();
        self.task.await.unwrap_or_default()
    }
}

/// The node's `/metrics` text.
async fn scrape(api: &Endpoint) -> anyhow::Result<String> {
    let r = net::http_get(api, "/metrics").await?;
    ensure!(r.status.is_success(), "GET /metrics: {}", r.status);
    Ok(String::from_utf8_lossy(&r.body).into_owned())
}

/// Samples of one metric family by the value of `label` ("" for an
/// unlabelled metric).
fn family(text: &str, name: &str, label: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let key = if series == name {
            String::new()
        } else if let Some(labels) = series
            .strip_prefix(name)
            .and_then(|r| r.strip_prefix('{'))
            .and_then(|r| r.strip_suffix('}'))
        {
            let wanted = format!("{label}=\"");
            let Some(v) = labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&wanted))
                .and_then(|v| v.strip_suffix('"'))
            else {
                continue;
            };
            v.to_owned()
        } else {
            continue;
        };
        *out.entry(key).or_default() += value;
    }
    out
}

/// How much each series of a counter family grew between two scrapes.
fn delta(before: &str, after: &str, name: &str, label: &str) -> BTreeMap<String, u64> {
    let b = family(before, name, label);
    family(after, name, label)
        .into_iter()
        .map(|(k, v)| {
            let grew = (v - b.get(&k).copied().unwrap_or(0.0)).max(0.0);
            (k, grew as u64)
        })
        .filter(|(_, n)| *n > 0)
        .collect()
}

impl AbuseReport {
    /// Problems (non-zero exit) and warnings from the figures.
    fn judge(&mut self, a: &AbuseArgs) {
        for (name, p) in [
            ("quiet phase", &self.quiet),
            ("under attack", &self.attacked),
        ] {
            let mut problem = |s: String| self.problems.push(format!("{name}: {s}"));
            for (what, c) in [("clients", &p.clients), ("probe connections", &p.probes)] {
                if c.failed > 0 {
                    problem(format!(
                        "{} of {} {what} could not connect; first error: {}",
                        c.failed,
                        c.attempted,
                        c.first_error.as_deref().unwrap_or("?")
                    ));
                }
            }
            let d = &p.delivery;
            if d.published == 0 {
                problem("nothing was published".to_owned());
            }
            if d.publish_failed > 0 {
                problem(format!(
                    "{} publications failed; first error: {}",
                    d.publish_failed,
                    d.publish_first_error.as_deref().unwrap_or("?")
                ));
            }
            if d.lost > 0 || d.duplicated > 0 || d.out_of_order > 0 {
                problem(format!(
                    "delivery check failed: {} lost, {} duplicated, {} out of order",
                    d.lost, d.duplicated, d.out_of_order
                ));
            }
            if d.clients_dropped > 0 {
                problem(format!(
                    "{} client connections ended early; first: {}",
                    d.clients_dropped,
                    d.first_drop_reason.as_deref().unwrap_or("?")
                ));
            }
            let mut notes = Vec::new();
            if d.publish_seconds > a.duration * 1.1 {
                notes.push(format!(
                    "{name}: publishing fell behind: {:.0}/s achieved of {}/s asked",
                    d.publish_rate, a.rate
                ));
            }
            if p.cpu.client_bound {
                let msg = format!(
                    "{name}: the load client itself was CPU-bound ({:.0}% of {} cores); results understate the server",
                    p.cpu.percent_of_cores, p.cpu.cores
                );
                if a.common.allow_client_bound {
                    notes.push(msg);
                } else {
                    self.problems.push(msg);
                }
            }
            self.warnings.extend(notes);
        }
        let by_node: u64 = self
            .attack
            .endings
            .iter()
            .filter(|(k, _)| *k != CONNECT_FAILED)
            .map(|(_, e)| e.count)
            .sum();
        if by_node == 0 {
            self.problems
                .push("the node ended none of the attacker connections".to_owned());
        }
        if self.node.is_none() {
            self.warnings.push(format!(
                "could not read {}/metrics: no node counters",
                self.admin_url
            ));
        }
    }

    /// The attacked phase as a generic [`Report`] (for `--plot` and
    /// [`crate::run`]); the quiet phase and the attacker are only here.
    pub fn summary(&self) -> Report {
        let p = &self.attacked;
        Report {
            scenario: self.scenario.clone(),
            target: self.target.clone(),
            urls: self.urls.clone(),
            params: self.params.clone(),
            clients: ClientsReport {
                requested: p.clients.attempted,
                connected: p.clients.attempted - p.clients.failed,
                failed: p.clients.failed,
                first_error: p.clients.first_error.clone(),
                connect_latency: Some(p.clients.latency.clone()),
                ..ClientsReport::default()
            },
            delivery: Some(p.delivery.clone()),
            cpu: Some(p.cpu.clone()),
            problems: self.problems.clone(),
            warnings: self.warnings.clone(),
            ..Report::default()
        }
    }

    /// Writes `--json` (this report) and `--plot` (the attacked phase).
    pub fn write_outputs(&self, common: &Common) -> anyhow::Result<()> {
        if let Some(path) = &common.json {
            let text = serde_json::to_string_pretty(self)?;
            std::fs::write(path, text + "\n")
                .with_context(|| format!("writing {}", path.display()))?;
        }
        if let Some(path) = &common.plot {
            std::fs::write(path, plot::svg(&self.summary()))
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }

    /// The human-readable summary: both phases side by side, then the attacker.
    pub fn table(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "herald-load abuse against {} (API and metrics at {})",
            self.urls.join(", "),
            self.admin_url
        );
        let _ = writeln!(o, "  {:<26} {:<34} under attack", "", "quiet");
        let (q, x) = (&self.quiet, &self.attacked);
        let row = |o: &mut String, title: &str, f: &dyn Fn(&PhaseReport) -> String| {
            let _ = writeln!(o, "  {title:<26} {:<34} {}", f(q), f(x));
        };
        let conns = |c: &Connects| format!("{} of {}", c.attempted - c.failed, c.attempted);
        let lat =
            |l: &LatencySummary| format!("{} / {} / {}", ms(l.p50_us), ms(l.p99_us), ms(l.max_us));
        row(&mut o, "clients connected", &|p| conns(&p.clients));
        row(&mut o, "  connect p50/p99/max", &|p| {
            lat(&p.clients.latency)
        });
        row(&mut o, "probes connected", &|p| conns(&p.probes));
        row(&mut o, "  connect p50/p99/max", &|p| lat(&p.probes.latency));
        row(&mut o, "published", &|p| {
            format!(
                "{} ({} failed)",
                p.delivery.published, p.delivery.publish_failed
            )
        });
        row(&mut o, "delivered", &|p| {
            format!("{} of {}", p.delivery.delivered, p.delivery.expected)
        });
        row(&mut o, "lost/duplicated/reordered", &|p| {
            let d = &p.delivery;
            format!("{} / {} / {}", d.lost, d.duplicated, d.out_of_order)
        });
        row(&mut o, "delivery p50/p99/max", &|p| {
            lat(&p.delivery.latency)
        });
        row(&mut o, "load client CPU", &|p| {
            format!("{:.0}% of {} cores", p.cpu.percent_of_cores, p.cpu.cores)
        });
        let at = &self.attack;
        let _ = writeln!(
            o,
            "  {:<26} {} from {} at ≤{}/s for {:.1} s: {} connects tried, {} opened, most open at once {}, {} open at the end",
            "attacker",
            at.attackers,
            at.source,
            at.attack_rate,
            at.seconds,
            at.attempted,
            at.opened,
            at.peak_open,
            at.still_open
        );
        for (how, e) in &at.endings {
            let l = &e.lifetime;
            let _ = writeln!(
                o,
                "  {:<26} {} × {how}, lived p50 {} p99 {} max {}",
                "  ended",
                e.count,
                secs(l.p50_us),
                secs(l.p99_us),
                secs(l.max_us)
            );
        }
        if let Some(e) = &at.first_error {
            let _ = writeln!(o, "  {:<26} {e}", "  first attacker error");
        }
        if let Some(n) = &self.node {
            let list = |m: &BTreeMap<String, u64>| {
                if m.is_empty() {
                    "none".to_owned()
                } else {
                    m.iter()
                        .map(|(k, v)| format!("{k} {v}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            };
            let _ = writeln!(
                o,
                "  {:<26} timeouts: {}; refused: {}; TCP connections at most {}",
                "node, over the attack",
                list(&n.timeouts),
                list(&n.refused),
                n.peak_tcp_connections
                    .map_or_else(|| "?".to_owned(), |v| v.to_string())
            );
        }
        for w in &self.warnings {
            let _ = writeln!(o, "  warning: {w}");
        }
        for p in &self.problems {
            let _ = writeln!(o, "  PROBLEM: {p}");
        }
        o
    }
}

fn ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}

fn secs(us: u64) -> String {
    if us < 1_000_000 {
        ms(us)
    } else {
        format!("{:.2} s", us as f64 / 1e6)
    }
}

/// The binary's `abuse` command: runs on `rt`, prints the table, writes the
/// files; non-zero exit on an error or a problem.
pub fn main(rt: tokio::runtime::Runtime, a: AbuseArgs) -> ExitCode {
    let common = a.common.clone();
    let report = match rt.block_on(abuse(a)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    print!("{}", report.table());
    let written = report.write_outputs(&common);
    crate::conclude(rt, written, &report.problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_and_silence() {
        assert_eq!(http_status(b""), None);
        assert_eq!(http_status(b"HTTP/1.1 429 Too Many"), Some("429"));
        assert_eq!(http_status(b"HTTP/1.0 503 "), Some("503"));
        assert_eq!(http_status(b"garbage"), Some("answer"));
    }

    #[test]
    fn metric_families_by_label_and_deltas() {
        let before = "# HELP x\nherald_connections_refused_total{reason=\"per_ip\"} 3\n";
        let after = "herald_connections_refused_total{reason=\"per_ip\"} 10\n\
                     herald_connections_refused_total{reason=\"per_ip_rate\"} 2\n\
                     herald_connections_refused_total_x{reason=\"no\"} 9\n\
                     herald_tcp_connections 17\n";
        let d = delta(before, after, "herald_connections_refused_total", "reason");
        assert_eq!(
            d.into_iter().collect::<Vec<_>>(),
            [("per_ip".to_owned(), 7), ("per_ip_rate".to_owned(), 2)]
        );
        let g = family(after, "herald_tcp_connections", "");
        assert_eq!(g.get(""), Some(&17.0));
    }

    #[tokio::test]
    async fn pacer_spaces_attempts() {
        let p = Pacer {
            next: Mutex::new(tokio::time::Instant::now()),
            every: Duration::from_millis(5),
        };
        let t0 = Instant::now();
        for _ in 0..5 {
            p.wait().await;
        }
        assert!(t0.elapsed() >= Duration::from_millis(20));
    }
}
