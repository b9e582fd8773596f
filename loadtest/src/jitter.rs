//! The `jitter` scenario: clients on one channel that keep losing their
//! connection, and what reaches them through it.
//!
//! Every client connects (staggered), subscribes, and once publishing starts
//! drops its TCP connection every `drop_every ± drop_jitter` of online time
//! (the socket is closed, no close frame), stays away `offline ±
//! offline_jitter`, and comes back as a client library would, retrying with
//! exponential backoff and full jitter:
//!
//! - Herald, like the JS SDK: `connect` with `resume` (the latest reconnect
//!   token) and `positions` (epoch and last offset); on `resumed: false`,
//!   `subscribe` with `since`. Offsets at or below the last one seen are
//!   duplicates and are not counted as deliveries.
//! - Socket.IO: a new Engine.IO session. When the server handed out a `pid`
//!   (connection state recovery on), the CONNECT carries it with the last
//!   offset; a reply with the same `pid` means the missed packets follow.
//!
//! Positions are checked per client by Herald offset or by the publisher's
//! sequence number; latency is receive time minus send time, so a message
//! replayed after a drop counts its time offline.

use crate::cli::{JitterArgs, PublishVia, Target};
use crate::client::{HERALD_PONG, Recv, SETUP_TIMEOUT, Setup, close_reason, send_text};
use crate::delivery::{
    SetupTally, abort, check_room, drain, endpoints, judge_cpu, publish_problems, target_name,
};
use crate::net::{self, Endpoint, Ws};
use crate::progress::Progress;
use crate::publish::{PublishOutcome, PublishPlan, Publishers};
use crate::report::{ClientsReport, DeliveryReport, JitterReport, Report};
use crate::scan;
use crate::sio;
use crate::stats::{Latency, Seen, SeqCounts, SeqTracker};
use crate::sys::CpuMeter;
use anyhow::{Context, bail, ensure};
use fastwebsockets::OpCode;
use serde_json::{Value, json};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The one channel (publisher prefix + index 0).
const PREFIX: &str = "jitter-";
const CHANNEL: &str = "jitter-0";
/// Bound on one reconnect: TCP connect to subscribed again.
const RECONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Backoff after a failed attempt: uniform in 0..min(CAP, BASE × 2^n).
const BACKOFF_BASE: Duration = Duration::from_millis(500);
const BACKOFF_CAP: Duration = Duration::from_secs(30);

/// Settings shared by every client task.
struct Plan {
    target: Target,
    drop_every: Duration,
    drop_jitter: Duration,
    offline: Duration,
    offline_jitter: Duration,
    /// Cancelled when publishing starts: drops begin.
    drops_begin: CancellationToken,
    /// Cancelled when publishing stops: no more drops.
    drops_end: CancellationToken,
    reconnect_latency: Mutex<Latency>,
}

impl Plan {
    fn dropping(&self) -> bool {
        !self.drop_every.is_zero()
            && self.drops_begin.is_cancelled()
            && !self.drops_end.is_cancelled()
    }

    /// Online time before the next drop.
    fn online_period(&self, rng: &mut fastrand::Rng) -> Duration {
        around(self.drop_every, self.drop_jitter, rng)
    }

    fn offline_period(&self, rng: &mut fastrand::Rng) -> Duration {
        around(self.offline, self.offline_jitter, rng)
    }
}

/// Uniform in `mid ± spread` (never negative).
fn around(mid: Duration, spread: Duration, rng: &mut fastrand::Rng) -> Duration {
    let lo = mid.saturating_sub(spread);
    lo + (mid + spread - lo).mul_f64(rng.f64())
}

/// Wait before retry `attempt` (1 = first retry): exponential, full jitter.
fn backoff(attempt: u32, rng: &mut fastrand::Rng) -> Duration {
    let ceiling = BACKOFF_BASE
        .saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(BACKOFF_CAP);
    ceiling.mul_f64(rng.f64())
}

/// An error after which the client gives up (close codes 4500 to 4999).
#[derive(Debug)]
struct Fatal(String);

impl std::fmt::Display for Fatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Fatal {}

fn closed_with(code: u64, what: String) -> anyhow::Error {
    if (4500..5000).contains(&code) {
        Fatal(what).into()
    } else {
        anyhow::anyhow!(what)
    }
}

fn is_fatal(e: &anyhow::Error) -> bool {
    e.downcast_ref::<Fatal>().is_some()
}

/// What one client went through.
#[derive(Debug, Default)]
struct ClientLog {
    drops: u64,
    reconnects: u64,
    reconnect_failures: u64,
    first_failure: Option<String>,
    recovered: u64,
    unrecovered: u64,
    resubscribed: u64,
    server_closes: u64,
    first_server_close: Option<String>,
    epoch_changes: u64,
    online_at_end: bool,
    /// Why the client gave up, if it did.
    fatal: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for `connected` (Herald) or the CONNECT reply (Socket.IO).
    Hello,
    /// Herald: waiting for `subscribed`.
    Subscribe,
    Ready,
}

/// Herald client state that outlives its connections.
#[derive(Debug)]
struct HeraldSide {
    phase: Phase,
    token: String,
    epoch: String,
    /// Position checks since the first `subscribed`.
    tracker: Option<SeqTracker>,
    /// Offset of the first `subscribed`: deliveries are expected after it.
    first_offset: u64,
    /// Counts of trackers given up after an epoch change.
    carried: SeqCounts,
    /// The last `connect` carried `resume`.
    resuming: bool,
    next_id: u64,
}

/// Socket.IO client state that outlives its connections.
#[derive(Debug)]
struct SioSide {
    phase: Phase,
    tracker: SeqTracker,
    /// Session id for connection state recovery, when the server gave one.
    pid: Option<String>,
    /// Offset of the last event (recovery only).
    offset: String,
    /// The `pid` the last CONNECT asked to recover.
    asked: Option<String>,
    /// Connected before: a later CONNECT is a reconnect.
    connected_once: bool,
    /// `""` (the peer's default namespace) or `/channel` (Herald).
    ns: String,
    /// The publications' event name.
    event: &'static [u8],
}

#[derive(Debug)]
enum Proto {
    Herald(HeraldSide),
    Sio(SioSide),
}

impl Proto {
    fn new(target: Target) -> Self {
        match target {
            Target::Herald => Self::Herald(HeraldSide {
                phase: Phase::Hello,
                token: String::new(),
                epoch: String::new(),
                tracker: None,
                first_offset: 0,
                carried: SeqCounts::default(),
                resuming: false,
                next_id: 1,
            }),
            Target::HeraldSse => unreachable!("validate() refuses --target herald-sse"),
            Target::Socketio | Target::HeraldSocketio => Self::Sio(SioSide {
                phase: Phase::Hello,
                tracker: SeqTracker::starting_at(0),
                pid: None,
                offset: String::new(),
                asked: None,
                connected_once: false,
                ns: target.namespace(CHANNEL),
                event: match target {
                    Target::HeraldSocketio => crate::publish::EVENT.as_bytes(),
                    _ => b"msg",
                },
            }),
        }
    }

    fn phase(&self) -> Phase {
        match self {
            Self::Herald(h) => h.phase,
            Self::Sio(s) => s.phase,
        }
    }

    /// Says hello on a fresh socket and reads until subscribed again.
    async fn establish(
        &mut self,
        ws: &mut Ws,
        recv: &mut Recv<'_>,
        log: &mut ClientLog,
    ) -> anyhow::Result<()> {
        match self {
            Self::Herald(h) => {
                h.phase = Phase::Hello;
                send_text(ws, h.hello()).await?;
            }
            // The server speaks first (Engine.IO open).
            Self::Sio(s) => s.phase = Phase::Hello,
        }
        self.read_while(ws, recv, log, Phase::Hello)
            .await
            .context("waiting for the connect reply")?;
        if let Self::Herald(h) = self
            && h.phase == Phase::Subscribe
        {
            send_text(ws, h.subscribe()).await?;
            self.read_while(ws, recv, log, Phase::Subscribe)
                .await
                .context("waiting for `subscribed`")?;
        }
        Ok(())
    }

    async fn read_while(
        &mut self,
        ws: &mut Ws,
        recv: &mut Recv<'_>,
        log: &mut ClientLog,
        phase: Phase,
    ) -> anyhow::Result<()> {
        while self.phase() == phase {
            let frame = ws.read_frame().await?;
            self.handle(ws, recv, log, frame.opcode, &frame.payload)
                .await?;
        }
        Ok(())
    }

    async fn handle(
        &mut self,
        ws: &mut Ws,
        recv: &mut Recv<'_>,
        log: &mut ClientLog,
        opcode: OpCode,
        payload: &[u8],
    ) -> anyhow::Result<()> {
        match opcode {
            OpCode::Text => {
                let reply = match self {
                    Self::Herald(h) => h.on_frame(payload, recv, log)?,
                    Self::Sio(s) => s.on_frame(payload, recv, log)?,
                };
                if let Some(bytes) = reply {
                    send_text(ws, bytes).await?;
                }
                Ok(())
            }
            OpCode::Close => {
                let code = match payload {
                    [a, b, ..] => u64::from(u16::from_be_bytes([*a, *b])),
                    _ => 0,
                };
                Err(closed_with(
                    code,
                    format!("server closed: {}", close_reason(payload)),
                ))
            }
            _ => Ok(()),
        }
    }

    /// Distinct deliveries and anomalies against the publications, and how
    /// many were expected.
    fn books(&self, published: &PublishOutcome) -> (SeqCounts, u64) {
        match self {
            Self::Herald(h) => {
                let Some(t) = &h.tracker else {
                    return (SeqCounts::default(), 0);
                };
                let last = published.last_offset.first().copied().unwrap_or(0);
                let mut c = h.carried;
                c.add(&t.finish(last + 1));
                (c, last.saturating_sub(h.first_offset))
            }
            Self::Sio(s) => (s.tracker.finish(published.published), published.published),
        }
    }
}

impl HeraldSide {
    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// `connect`, resuming when there is a token and a position.
    fn hello(&mut self) -> Vec<u8> {
        let id = self.id();
        self.resuming = self.tracker.is_some() && !self.token.is_empty();
        let frame = match &self.tracker {
            Some(t) if self.resuming => json!({
                "op": "connect",
                "id": id,
                "resume": self.token,
                "positions": {CHANNEL: {"epoch": self.epoch, "offset": t.next() - 1}},
            }),
            _ => json!({"op": "connect", "id": id}),
        };
        frame.to_string().into_bytes()
    }

    /// `subscribe`, with `since` once the channel was seen.
    fn subscribe(&mut self) -> Vec<u8> {
        let id = self.id();
        let frame = match &self.tracker {
            Some(t) => json!({
                "op": "subscribe",
                "id": id,
                "channel": CHANNEL,
                "since": {"epoch": self.epoch, "offset": t.next() - 1},
            }),
            None => json!({"op": "subscribe", "id": id, "channel": CHANNEL}),
        };
        frame.to_string().into_bytes()
    }

    fn on_frame(
        &mut self,
        f: &[u8],
        recv: &mut Recv<'_>,
        log: &mut ClientLog,
    ) -> anyhow::Result<Option<Vec<u8>>> {
        if let Some(d) = scan::herald_message(f) {
            if d.channel == CHANNEL.as_bytes()
                && let (Some(t), Some(off)) = (&mut self.tracker, d.offset)
                && t.observe(off) != Seen::Duplicate
            {
                recv.delivery(d.t);
            }
            return Ok(None);
        }
        let op = scan::herald_op(f).unwrap_or_default();
        if op == b"ping" {
            return Ok(Some(HERALD_PONG.to_vec()));
        }
        if !matches!(
            op,
            b"connected" | b"subscribed" | b"token" | b"error" | b"disconnect"
        ) {
            return Ok(None);
        }
        let v: Value = serde_json::from_slice(f).context("malformed control frame")?;
        if let Some(t) = v["reconnect_token"].as_str() {
            t.clone_into(&mut self.token);
        }
        match op {
            b"connected" => self.on_connected(&v, log),
            b"subscribed" => self.on_subscribed(&v, log)?,
            b"error" => bail!("server error: {v}"),
            b"disconnect" => {
                let code = v["code"].as_u64().unwrap_or(0);
                return Err(closed_with(code, format!("server disconnected: {v}")));
            }
            _ => {}
        }
        Ok(None)
    }

    fn on_connected(&mut self, v: &Value, log: &mut ClientLog) {
        self.phase = Phase::Subscribe;
        if !self.resuming {
            return;
        }
        let entry = &v["channels"][CHANNEL];
        match (v["resumed"].as_bool(), entry["recovered"].as_bool()) {
            (Some(true), Some(recovered)) => {
                self.restored(entry, recovered, log);
                self.phase = Phase::Ready;
            }
            // Refused, or the channel came back with an error: subscribe with `since`.
            _ => log.resubscribed += 1,
        }
    }

    fn on_subscribed(&mut self, v: &Value, log: &mut ClientLog) -> anyhow::Result<()> {
        let offset = v["offset"]
            .as_u64()
            .context("`subscribed` without offset")?;
        if self.tracker.is_none() {
            self.tracker = Some(SeqTracker::starting_at(offset + 1));
            self.first_offset = offset;
            v["epoch"]
                .as_str()
                .unwrap_or("")
                .clone_into(&mut self.epoch);
        } else {
            let recovered = v["recovered"].as_bool().unwrap_or(false);
            self.restored(v, recovered, log);
        }
        self.phase = Phase::Ready;
        Ok(())
    }

    /// The channel is back (`recovered` or not) at `entry`'s position.
    fn restored(&mut self, entry: &Value, recovered: bool, log: &mut ClientLog) {
        if recovered {
            log.recovered += 1;
        } else {
            // The gap shows up as lost when the next message arrives.
            log.unrecovered += 1;
        }
        let epoch = entry["epoch"].as_str().unwrap_or("");
        if epoch != self.epoch
            && let Some(t) = &mut self.tracker
        {
            // Offsets of another history: close these books, start again.
            log.epoch_changes += 1;
            self.carried.add(&t.finish(t.next()));
            let offset = entry["offset"].as_u64().unwrap_or(0);
            *t = SeqTracker::starting_at(offset + 1);
            epoch.clone_into(&mut self.epoch);
        }
    }
}

impl SioSide {
    /// CONNECT to the namespace, asking to recover when there is a `pid`:
    /// like socket.io-client, with the last offset when an event came, and
    /// the `pid` alone when none did (Herald recovers from the `pid`'s
    /// position; the peer cannot).
    fn hello(&mut self) -> Vec<u8> {
        match &self.pid {
            Some(pid) => {
                self.asked = Some(pid.clone());
                let body = if self.offset.is_empty() {
                    json!({ "pid": pid })
                } else {
                    json!({"pid": pid, "offset": self.offset})
                };
                sio::connect_packet(&self.ns, Some(&body.to_string()))
            }
            None => {
                self.asked = None;
                sio::connect_packet(&self.ns, None)
            }
        }
    }

    fn on_frame(
        &mut self,
        f: &[u8],
        recv: &mut Recv<'_>,
        log: &mut ClientLog,
    ) -> anyhow::Result<Option<Vec<u8>>> {
        match sio::decode_in(f, self.ns.as_bytes()) {
            sio::Packet::Event { name, args } if name == self.event => {
                let (t, s) = scan::payload_fields(args);
                if let Some(s) = s
                    && self.tracker.observe(s) != Seen::Duplicate
                {
                    recv.delivery(t);
                }
                if self.pid.is_some()
                    && let Some(o) = trailing_string(args)
                {
                    self.offset.clear();
                    self.offset.push_str(&String::from_utf8_lossy(o));
                }
            }
            sio::Packet::Open(_) => return Ok(Some(self.hello())),
            sio::Packet::Ping => return Ok(Some(sio::PONG.to_vec())),
            sio::Packet::Connect(j) => {
                let pid = scan::string_field(j, b"pid").map(|p| String::from_utf8_lossy(p));
                match self.asked.take() {
                    Some(asked) if pid.as_deref() == Some(asked.as_str()) => log.recovered += 1,
                    // A new session: what was sent meanwhile is gone.
                    _ if self.connected_once => log.unrecovered += 1,
                    _ => {}
                }
                self.connected_once = true;
                if pid.as_deref() != self.pid.as_deref() {
                    self.offset.clear();
                }
                self.pid = pid.map(std::borrow::Cow::into_owned);
                self.phase = Phase::Ready;
            }
            sio::Packet::ConnectError(j) => {
                return Err(Fatal(format!(
                    "Socket.IO connect refused: {}",
                    String::from_utf8_lossy(j)
                ))
                .into());
            }
            sio::Packet::Disconnect => bail!("server disconnected the client (41)"),
            sio::Packet::Close => bail!("server closed the Engine.IO session"),
            _ => {}
        }
        Ok(None)
    }
}

/// The last argument of an event when it is a plain string: the offset
/// Socket.IO appends with connection state recovery (`{..},"1700-0"`).
fn trailing_string(args: &[u8]) -> Option<&[u8]> {
    let body = args.strip_suffix(b"\"")?;
    let open = body.iter().rposition(|&c| c == b'"')?;
    body[..open]
        .ends_with(b",")
        .then(|| &body[open + 1..])
        .filter(|o| !o.contains(&b'\\'))
}

/// How a connection ended.
enum Exit {
    Stop,
    /// Dropped on purpose.
    Dropped,
    Lost(anyhow::Error),
}

/// Everything a client task needs.
struct Client {
    index: usize,
    ep: Arc<Endpoint>,
    plan: Arc<Plan>,
    run: Arc<crate::client::Run>,
    proto: Proto,
    log: ClientLog,
    rng: fastrand::Rng,
}

/// What a client task hands back.
struct ClientEnd {
    index: usize,
    proto: Proto,
    log: ClientLog,
}

impl Client {
    fn path(&self) -> &'static str {
        if self.plan.target.speaks_socketio() {
            sio::WS_PATH
        } else {
            "/ws"
        }
    }

    /// One attempt: TCP + WebSocket, then hello and subscribe (or resume).
    async fn open(&mut self, recv: &mut Recv<'_>) -> anyhow::Result<Ws> {
        let mut ws = net::ws_connect(&self.ep, self.path(), None).await?;
        self.proto.establish(&mut ws, recv, &mut self.log).await?;
        Ok(ws)
    }

    /// Connects at `start`; reports the outcome on `setup_tx`.
    async fn run(mut self, start: Instant, setup_tx: mpsc::UnboundedSender<Setup>) -> ClientEnd {
        let run = self.run.clone();
        let slot = run.delivered.get(self.index);
        let mut recv = Recv::new(&run.sink, slot, true, self.index);
        tokio::select! {
            () = run.stop.cancelled() => return self.end(),
            () = tokio::time::sleep_until(start) => {}
        }
        let t0 = Instant::now();
        let first = tokio::time::timeout(SETUP_TIMEOUT, self.open(&mut recv))
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("set-up timed out after {SETUP_TIMEOUT:?}")));
        let mut ws = match first {
            Ok(ws) => {
                let _ = setup_tx.send(Setup {
                    index: self.index,
                    result: Ok(t0.elapsed()),
                });
                ws
            }
            Err(e) => {
                let msg = format!("{e:#}");
                let _ = setup_tx.send(Setup {
                    index: self.index,
                    result: Err(msg.clone()),
                });
                self.log.fatal = Some(msg);
                return self.end();
            }
        };
        drop(setup_tx);
        loop {
            run.connected.fetch_add(1, Ordering::Relaxed);
            let exit = self.online(ws, &mut recv).await;
            run.connected.fetch_sub(1, Ordering::Relaxed);
            let wait = match exit {
                Exit::Stop => {
                    self.log.online_at_end = true;
                    break;
                }
                Exit::Dropped => {
                    self.log.drops += 1;
                    self.plan.offline_period(&mut self.rng)
                }
                Exit::Lost(e) => {
                    let msg = format!("{e:#}");
                    self.log.server_closes += 1;
                    if is_fatal(&e) {
                        self.log.fatal = Some(msg);
                        break;
                    }
                    self.log.first_server_close.get_or_insert(msg);
                    backoff(1, &mut self.rng)
                }
            };
            match self.reconnect(wait, &mut recv).await {
                Some(w) => ws = w,
                None => break,
            }
        }
        recv.flush();
        self.end()
    }

    fn end(self) -> ClientEnd {
        ClientEnd {
            index: self.index,
            proto: self.proto,
            log: self.log,
        }
    }

    /// Reads until the run stops, the connection breaks, or it is time to
    /// drop it; the socket is closed (without a close frame) on return.
    async fn online(&mut self, mut ws: Ws, recv: &mut Recv<'_>) -> Exit {
        let plan = self.plan.clone();
        let stop = self.run.stop.clone();
        let far = Instant::now() + Duration::from_secs(365 * 86_400);
        // Drops start with publishing, the first one anywhere in the first period.
        let mut due = plan
            .dropping()
            .then(|| Instant::now() + plan.online_period(&mut self.rng));
        let mut waiting =
            due.is_none() && !plan.drop_every.is_zero() && !plan.drops_end.is_cancelled();
        let timer = tokio::time::sleep_until(due.unwrap_or(far));
        tokio::pin!(timer);
        loop {
            // `read_frame` is not cancel-safe, but the socket is dropped then anyway.
            let frame = tokio::select! {
                biased;
                () = stop.cancelled() => return Exit::Stop,
                () = plan.drops_begin.cancelled(), if waiting => {
                    waiting = false;
                    let at = Instant::now() + plan.drop_every.mul_f64(self.rng.f64());
                    due = Some(at);
                    timer.as_mut().reset(at);
                    continue;
                }
                () = &mut timer, if due.is_some() => {
                    if plan.drops_end.is_cancelled() {
                        due = None;
                        continue;
                    }
                    return Exit::Dropped;
                }
                f = ws.read_frame() => f,
            };
            let res = match frame {
                Ok(f) => {
                    self.proto
                        .handle(&mut ws, recv, &mut self.log, f.opcode, &f.payload)
                        .await
                }
                Err(e) => Err(e.into()),
            };
            if let Err(e) = res {
                return Exit::Lost(e);
            }
        }
    }

    /// Waits `wait`, then tries until subscribed again (backoff between
    /// attempts); `None` when the run stopped or the server refused for good.
    async fn reconnect(&mut self, mut wait: Duration, recv: &mut Recv<'_>) -> Option<Ws> {
        let stop = self.run.stop.clone();
        let mut attempt = 0u32;
        loop {
            tokio::select! {
                () = stop.cancelled() => return None,
                () = tokio::time::sleep(wait) => {}
            }
            let t0 = Instant::now();
            let res = tokio::select! {
                () = stop.cancelled() => return None,
                r = tokio::time::timeout(RECONNECT_TIMEOUT, self.open(recv)) => r,
            };
            let e = match res {
                Ok(Ok(ws)) => {
                    self.log.reconnects += 1;
                    if let Ok(mut l) = self.plan.reconnect_latency.lock() {
                        l.record_duration(t0.elapsed());
                    }
                    return Some(ws);
                }
                Ok(Err(e)) => e,
                Err(_) => anyhow::anyhow!("reconnect timed out after {RECONNECT_TIMEOUT:?}"),
            };
            self.log.reconnect_failures += 1;
            let msg = format!("{e:#}");
            if is_fatal(&e) {
                self.log.fatal = Some(msg);
                return None;
            }
            self.log.first_failure.get_or_insert(msg);
            attempt += 1;
            wait = backoff(attempt, &mut self.rng);
        }
    }
}

fn validate(a: &JitterArgs) -> anyhow::Result<()> {
    ensure!(a.clients > 0, "need at least one client");
    ensure!(
        a.rate > 0.0 && a.rate.is_finite(),
        "--rate must be positive"
    );
    ensure!(!a.duration.is_zero(), "--duration must be positive");
    ensure!(
        a.common.target != Target::HeraldSse,
        "jitter resumes over WebSocket or Socket.IO: --target herald-sse is not supported \
         (an SSE client resumes with Last-Event-ID, which this scenario does not model)"
    );
    ensure!(
        a.connect_rate > 0.0 && a.connect_rate.is_finite(),
        "--connect-rate must be positive"
    );
    ensure!(
        a.drop_jitter <= a.drop_every,
        "--drop-jitter must not exceed --drop-every"
    );
    ensure!(
        a.offline_jitter <= a.offline,
        "--offline-jitter must not exceed --offline"
    );
    check_room(
        a.clients,
        a.common.target,
        a.publish_via,
        a.redis_url.as_deref(),
    )
}

pub async fn jitter(a: JitterArgs) -> anyhow::Result<Report> {
    validate(&a)?;
    let target = a.common.target;
    let eps = endpoints(&a.common.urls).await?;
    let plain: Vec<Endpoint> = eps.iter().map(|e| (**e).clone()).collect();
    net::preflight(&plain, target_name(target)).await?;

    let clients = a.clients;
    let run = crate::client::Run::new(clients);
    let progress = Progress::start(run.clone(), a.common.quiet, clients as u64);
    progress.phase("connecting");
    let plan = Arc::new(Plan {
        target,
        drop_every: a.drop_every,
        drop_jitter: a.drop_jitter,
        offline: a.offline,
        offline_jitter: a.offline_jitter,
        drops_begin: CancellationToken::new(),
        drops_end: CancellationToken::new(),
        reconnect_latency: Mutex::new(Latency::new()),
    });

    // 1. Every client connected and subscribed, staggered.
    let (tx, mut rx) = mpsc::unbounded_channel::<Setup>();
    let t0 = Instant::now();
    let mut handles = Vec::with_capacity(clients);
    for i in 0..clients {
        let c = Client {
            index: i,
            ep: eps[i % eps.len()].clone(),
            plan: plan.clone(),
            run: run.clone(),
            proto: Proto::new(target),
            log: ClientLog::default(),
            rng: fastrand::Rng::new(),
        };
        let start = t0 + Duration::from_secs_f64(i as f64 / a.connect_rate);
        handles.push(tokio::spawn(c.run(start, tx.clone())));
    }
    drop(tx);
    let setups = SetupTally::collect(&mut rx).await;
    let setup_seconds = t0.elapsed().as_secs_f64();
    if let Err(e) = setups.check(clients) {
        return abort(&run, progress, e).await;
    }

    // 2. Publishing, with drops meanwhile.
    let via = match target.server() {
        Target::Herald => a.publish_via,
        _ => PublishVia::Client,
    };
    let publish = PublishPlan {
        target,
        via,
        rate: a.rate,
        duration: a.duration,
        prefix: Arc::from(PREFIX),
        channels: 1,
        random: false,
        pad: a.payload,
        connections: a.publishers,
        redis_url: a.redis_url.clone(),
    };
    let publishers = match Publishers::connect(publish, &eps[0]).await {
        Ok(p) => p,
        Err(e) => return abort(&run, progress, e.context("setting up the publishers")).await,
    };
    progress.phase("publishing");
    let cpu = CpuMeter::start();
    progress.begin_measuring();
    plan.drops_begin.cancel();
    let published = publishers.run(run.clone()).await;
    plan.drops_end.cancel();

    // 3. Grace: reconnects and replays finish, or time is up.
    progress.phase("grace");
    drain(&run, published.published * clients as u64, a.grace).await;
    let cpu = cpu.finish(0.0);
    run.stop.cancel();
    let mut ends = Vec::with_capacity(clients);
    for h in handles {
        ends.push(h.await.context("client task")?);
    }
    let series = progress.finish().await;
    let latency = run.sink.snapshot();

    // 4. Books.
    let (mut delivery, mut j) = books(&ends, &published);
    published.fill(&mut delivery);
    delivery.subscribers_per_message = clients as u64;
    delivery.deliveries_per_second = delivery.delivered as f64 / cpu.wall_seconds.max(1e-9);
    delivery.latency = latency.summary();
    delivery.latency_curve = latency.curve();
    j.reconnect_latency = plan
        .reconnect_latency
        .lock()
        .map(|l| l.summary())
        .unwrap_or_default();

    let mut report = Report {
        scenario: "jitter".to_owned(),
        target: target.name().to_owned(),
        urls: a.common.urls.clone(),
        params: json!({
            "clients": clients,
            "connect_rate": a.connect_rate,
            "rate": a.rate,
            "duration": a.duration.as_secs_f64(),
            "payload": a.payload,
            "publish_via": via,
            "publishers": a.publishers,
            "drop_every": a.drop_every.as_secs_f64(),
            "drop_jitter": a.drop_jitter.as_secs_f64(),
            "offline": a.offline.as_secs_f64(),
            "offline_jitter": a.offline_jitter.as_secs_f64(),
            "grace": a.grace.as_secs_f64(),
            "channel": CHANNEL,
        }),
        clients: ClientsReport::all_set_up(clients, setup_seconds, &setups.latency),
        cpu: Some(cpu),
        series,
        ..Report::default()
    };
    problems(&mut report, &delivery, &j, target);
    report.delivery = Some(delivery);
    report.jitter = Some(j);
    judge_cpu(&mut report, a.common.allow_client_bound);
    Ok(report)
}

/// Totals over every client.
fn books(ends: &[ClientEnd], published: &PublishOutcome) -> (DeliveryReport, JitterReport) {
    let mut d = DeliveryReport::default();
    let mut j = JitterReport::default();
    for e in ends {
        let (counts, expected) = e.proto.books(published);
        d.expected += expected;
        d.add_client(e.index, counts, e.log.fatal.as_ref());
        let l = &e.log;
        j.drops += l.drops;
        j.reconnects += l.reconnects;
        j.reconnect_failures += l.reconnect_failures;
        j.recovered += l.recovered;
        j.unrecovered += l.unrecovered;
        j.resubscribed += l.resubscribed;
        j.server_closes += l.server_closes;
        j.epoch_changes += l.epoch_changes;
        j.offline_at_end += u64::from(!l.online_at_end);
        if j.first_reconnect_error.is_none() {
            j.first_reconnect_error.clone_from(&l.first_failure);
        }
        if j.first_server_close.is_none() {
            j.first_server_close.clone_from(&l.first_server_close);
        }
    }
    j.delivered_percent = if d.expected == 0 {
        0.0
    } else {
        d.delivered as f64 * 100.0 / d.expected as f64
    };
    (d, j)
}

/// Herald must deliver everything exactly once; for Socket.IO loss is the
/// measurement, so its anomalies are warnings.
fn problems(report: &mut Report, d: &DeliveryReport, j: &JitterReport, target: Target) {
    publish_problems(report, d);
    let mut anomalies = Vec::new();
    if d.lost > 0 || d.duplicated > 0 || d.out_of_order > 0 {
        anomalies.push(format!(
            "delivery check failed: {} lost, {} duplicated, {} out of order ({:.3}% delivered)",
            d.lost, d.duplicated, d.out_of_order, j.delivered_percent
        ));
    }
    if target.server() == Target::Herald && (j.unrecovered > 0 || j.epoch_changes > 0) {
        anomalies.push(format!(
            "{} reconnects were not recovered, {} came back in another epoch",
            j.unrecovered, j.epoch_changes
        ));
    }
    if j.offline_at_end > 0 {
        anomalies.push(format!(
            "{} clients were not connected at the end; first reconnect error: {}",
            j.offline_at_end,
            j.first_reconnect_error.as_deref().unwrap_or("none")
        ));
    }
    if d.clients_dropped > 0 {
        anomalies.push(format!(
            "{} clients gave up; first: {}",
            d.clients_dropped,
            d.first_drop_reason.as_deref().unwrap_or("?")
        ));
    }
    // Loss is what the peer comparison measures; from Herald it is a failure.
    match target.server() {
        Target::Socketio => report.warnings.extend(anomalies),
        _ => report.problems.extend(anomalies),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{LatencySink, now_us};
    use std::sync::atomic::AtomicU64;

    fn message(offset: u64) -> String {
        format!(
            r#"{{"op":"message","channel":"{CHANNEL}","event":"e","data":{{"t":{},"s":0,"p":""}},"epoch":"E","offset":{offset}}}"#,
            now_us()
        )
    }

    #[test]
    fn waits_stay_in_their_ranges() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..1000 {
            let d = around(Duration::from_secs(15), Duration::from_secs(5), &mut rng);
            assert!(d >= Duration::from_secs(10) && d <= Duration::from_secs(20));
            assert!(backoff(1, &mut rng) <= BACKOFF_BASE);
            assert!(backoff(3, &mut rng) <= BACKOFF_BASE * 4);
            assert!(backoff(40, &mut rng) <= BACKOFF_CAP);
        }
    }

    #[test]
    fn herald_resumes_from_the_last_offset_and_skips_duplicates() {
        let sink = LatencySink::new(1);
        let slot = AtomicU64::new(0);
        let mut recv = Recv::new(&sink, Some(&slot), true, 0);
        let mut log = ClientLog::default();
        let Proto::Herald(mut h) = Proto::new(Target::Herald) else {
            panic!("herald")
        };
        let hello: Value = serde_json::from_slice(&h.hello()).expect("json");
        assert_eq!(hello, json!({"op": "connect", "id": 2}));
        let connected = br#"{"op":"connected","id":2,"session":"s","reconnect_token":"T1"}"#;
        assert!(h.on_frame(connected, &mut recv, &mut log).is_ok());
        assert_eq!(h.phase, Phase::Subscribe);
        let sub = br#"{"op":"subscribed","id":3,"channel":"jitter-0","epoch":"E","offset":4,"reconnect_token":"T2"}"#;
        assert!(h.on_frame(sub, &mut recv, &mut log).is_ok());
        assert_eq!(
            (h.phase, h.token.as_str(), h.first_offset),
            (Phase::Ready, "T2", 4)
        );
        for off in [5, 6, 6] {
            assert!(
                h.on_frame(message(off).as_bytes(), &mut recv, &mut log)
                    .is_ok()
            );
        }
        assert!(matches!(
            h.on_frame(br#"{"op":"ping"}"#, &mut recv, &mut log),
            Ok(Some(p)) if p == HERALD_PONG
        ));
        let push = br#"{"op":"token","reconnect_token":"T3"}"#;
        assert!(h.on_frame(push, &mut recv, &mut log).is_ok());
        let hello: Value = serde_json::from_slice(&h.hello()).expect("json");
        assert_eq!(hello["resume"], "T3");
        assert_eq!(
            hello["positions"][CHANNEL],
            json!({"epoch": "E", "offset": 6})
        );
        // Resumed, and the missed offsets 7 and 8 are replayed.
        let resumed = br#"{"op":"connected","id":4,"resumed":true,"channels":{"jitter-0":{"epoch":"E","offset":8,"recovered":true}},"reconnect_token":"T4"}"#;
        assert!(h.on_frame(resumed, &mut recv, &mut log).is_ok());
        assert_eq!((h.phase, log.recovered), (Phase::Ready, 1));
        for off in [7, 8, 9] {
            assert!(
                h.on_frame(message(off).as_bytes(), &mut recv, &mut log)
                    .is_ok()
            );
        }
        // A refused resume falls back to `subscribe` with `since`.
        let _ = h.hello();
        let refused = br#"{"op":"connected","id":5,"resumed":false,"reconnect_token":"T5"}"#;
        assert!(h.on_frame(refused, &mut recv, &mut log).is_ok());
        assert_eq!((h.phase, log.resubscribed), (Phase::Subscribe, 1));
        let sub: Value = serde_json::from_slice(&h.subscribe()).expect("json");
        assert_eq!(sub["since"], json!({"epoch": "E", "offset": 9}));
        let again = br#"{"op":"subscribed","id":7,"channel":"jitter-0","epoch":"E","offset":11,"recovered":false}"#;
        assert!(h.on_frame(again, &mut recv, &mut log).is_ok());
        assert!(
            h.on_frame(message(12).as_bytes(), &mut recv, &mut log)
                .is_ok()
        );
        assert_eq!(log.unrecovered, 1);
        let disconnect =
            br#"{"op":"disconnect","code":4500,"reason":"unauthorized","reconnect":false}"#;
        let err = h
            .on_frame(disconnect, &mut recv, &mut log)
            .expect_err("closes");
        assert!(is_fatal(&err));
        recv.flush();
        assert_eq!(slot.load(Ordering::Relaxed), 6);
        let proto = Proto::Herald(h);
        let published = PublishOutcome {
            published: 9,
            last_offset: vec![13],
            ..PublishOutcome::default()
        };
        let (c, expected) = proto.books(&published);
        assert_eq!(expected, 9);
        assert_eq!((c.received, c.duplicated, c.lost), (6, 1, 3));
    }

    #[test]
    fn socketio_recovers_with_pid_and_offset() {
        let sink = LatencySink::new(1);
        let mut recv = Recv::new(&sink, None, false, 0);
        let mut log = ClientLog::default();
        let Proto::Sio(mut s) = Proto::new(Target::Socketio) else {
            panic!("sio")
        };
        let open = br#"0{"sid":"e1","upgrades":[],"pingInterval":25000,"pingTimeout":20000}"#;
        assert!(matches!(s.on_frame(open, &mut recv, &mut log), Ok(Some(c)) if c == b"40"));
        assert!(
            s.on_frame(br#"40{"sid":"a","pid":"P1"}"#, &mut recv, &mut log)
                .is_ok()
        );
        assert_eq!((s.phase, s.pid.as_deref()), (Phase::Ready, Some("P1")));
        let ev = br#"42["msg",{"t":1,"s":0,"p":"x,\"y"},"1700-0"]"#;
        assert!(s.on_frame(ev, &mut recv, &mut log).is_ok());
        assert_eq!(s.offset, "1700-0");
        let hello = s.hello();
        let body: Value =
            serde_json::from_slice(hello.strip_prefix(b"40").expect("40")).expect("json");
        assert_eq!(body, json!({"pid": "P1", "offset": "1700-0"}));
        assert!(
            s.on_frame(br#"40{"sid":"b","pid":"P1"}"#, &mut recv, &mut log)
                .is_ok()
        );
        assert_eq!((log.recovered, log.unrecovered), (1, 0));
        let _ = s.hello();
        assert!(
            s.on_frame(br#"40{"sid":"c","pid":"P2"}"#, &mut recv, &mut log)
                .is_ok()
        );
        assert_eq!((log.recovered, log.unrecovered), (1, 1));
        assert!(s.offset.is_empty());
        let hello = s.hello();
        let body: Value =
            serde_json::from_slice(hello.strip_prefix(b"40").expect("40")).expect("json");
        assert_eq!(body, json!({"pid": "P2"}), "no event yet: the pid alone");
        assert_eq!(trailing_string(br#"{"t":1,"s":2,"p":"xx"}"#), None);
        assert_eq!(trailing_string(br#"{"p":"a"},"9-1""#), Some(&b"9-1"[..]));
        assert!(
            s.on_frame(b"2", &mut recv, &mut log)
                .is_ok_and(|r| r == Some(b"3".to_vec()))
        );
    }
}
