//! Subscriber connections: one task per client, Herald or Socket.IO over
//! WebSocket, or Herald's Server-Sent Events ([`crate::sse`]).
//!
//! A client connects, says hello (`connect` / Engine.IO `40`), subscribes
//! (an SSE stream names its channels in its URL and is set up once its
//! first `id:` came), reports its set-up on a channel, then reads until the
//! run stops (or its hold time is over). The receive path is allocation-free: frames are
//! scanned with [`crate::scan`], positions checked by a [`SeqTracker`] per
//! channel, latencies batched in a [`LatencyBatch`], and the delivery count
//! published through the client's own atomic slot.

use crate::cli::Target;
use crate::net::{self, Endpoint, Ws};
use crate::scan;
use crate::sio;
use crate::sse;
use crate::stats::{LatencyBatch, LatencySink, SeqTracker, now_us};
use anyhow::{Context, bail};
use fastwebsockets::{Frame, OpCode, Payload};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

/// Bound on connect + hello + subscribe of one client.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
pub(crate) const HERALD_PONG: &[u8] = br#"{"op":"pong"}"#;

/// State shared by every task of one run.
pub struct Run {
    pub sink: LatencySink,
    /// Deliveries so far, one slot per counted client (single writer each).
    pub delivered: Box<[AtomicU64]>,
    pub connected: AtomicU64,
    pub published: AtomicU64,
    /// Cancelled when the run is over.
    pub stop: CancellationToken,
}

impl Run {
    pub fn new(slots: usize) -> Arc<Self> {
        Arc::new(Self {
            sink: LatencySink::new(crate::sys::cores() * 2),
            delivered: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            connected: AtomicU64::new(0),
            published: AtomicU64::new(0),
            stop: CancellationToken::new(),
        })
    }

    pub fn delivered_total(&self) -> u64 {
        self.delivered
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .sum()
    }
}

/// Channels `prefix{first}` .. `prefix{first+count-1}`.
#[derive(Debug, Clone)]
pub struct Channels {
    pub prefix: Arc<str>,
    pub first: u32,
    pub count: u32,
}

impl Channels {
    pub fn name(&self, j: u32) -> String {
        format!("{}{}", self.prefix, self.first + j)
    }

    /// Local index of a channel name, if it is one of ours.
    pub(crate) fn slot(&self, name: &[u8]) -> Option<usize> {
        let idx = scan::channel_index(name, self.prefix.as_bytes())?;
        let j = idx.checked_sub(self.first)?;
        (j < self.count).then_some(j as usize)
    }
}

/// How long a client stays after set-up.
#[derive(Debug, Clone, Copy)]
pub enum Hold {
    UntilStop,
    /// Then it sends a close frame and leaves.
    For(Duration),
}

/// Everything one client task needs.
pub struct ClientPlan {
    pub index: usize,
    pub ep: Arc<Endpoint>,
    pub source: Option<SocketAddr>,
    pub target: Target,
    pub channels: Channels,
    /// Slot in [`Run::delivered`]; `None` for clients that are not counted.
    pub slot: Option<usize>,
    /// Record latencies.
    pub measure: bool,
    pub hold: Hold,
}

/// Result of a client's set-up: how long it took, or why it failed.
pub struct Setup {
    pub index: usize,
    pub result: Result<Duration, String>,
}

/// What a client task returns when it ends.
pub struct ClientOutcome {
    pub index: usize,
    /// Whether set-up succeeded.
    pub set_up: bool,
    /// Per channel of [`ClientPlan::channels`]; `None` if never subscribed.
    pub trackers: Vec<Option<SeqTracker>>,
    /// Why the connection ended before the run did.
    pub ended: Option<String>,
}

/// Spawn-friendly entry: waits for a set-up slot, runs the client to its end.
pub async fn run_client(
    plan: ClientPlan,
    run: Arc<Run>,
    gate: Option<Arc<Semaphore>>,
    setup_tx: mpsc::UnboundedSender<Setup>,
) -> ClientOutcome {
    let permit: Option<OwnedSemaphorePermit> = match gate {
        Some(g) => g.acquire_owned().await.ok(),
        None => None,
    };
    let index = plan.index;
    let mut proto = match plan.target {
        Target::Herald => Proto::Herald(Herald {
            trackers: vec![None; plan.channels.count as usize],
            pending: plan.channels.count,
            channels: plan.channels.clone(),
            connected: false,
        }),
        Target::HeraldSse => Proto::Sse(sse::Events::new(plan.channels.clone())),
        Target::Socketio | Target::HeraldSocketio => Proto::Sio(Sio {
            tracker: SeqTracker::starting_at(0),
            connected: false,
            ns: plan.target.namespace(&plan.channels.name(0)),
            event: match plan.target {
                Target::HeraldSocketio => crate::publish::EVENT.as_bytes(),
                _ => b"msg",
            },
        }),
    };
    let slot = plan.slot.and_then(|s| run.delivered.get(s));
    let mut recv = Recv::new(&run.sink, slot, plan.measure, index);
    let started = Instant::now();
    let setup = tokio::time::timeout(SETUP_TIMEOUT, async {
        if let Proto::Sse(events) = &mut proto {
            let mut stream = sse::connect(&plan.ep, &plan.channels, plan.source).await?;
            while !events.started() {
                stream
                    .read(|l| events.on_line(l, &mut recv))
                    .await
                    .context("waiting for the stream's first `id:`")?;
            }
            return anyhow::Ok(Link::Sse(stream));
        }
        let path = if plan.target.speaks_socketio() {
            sio::WS_PATH
        } else {
            "/ws"
        };
        let mut ws = net::ws_connect(&plan.ep, path, plan.source).await?;
        proto.setup(&mut ws, &mut recv).await?;
        anyhow::Ok(Link::Ws(ws))
    })
    .await
    .unwrap_or_else(|_| Err(anyhow::anyhow!("set-up timed out after {SETUP_TIMEOUT:?}")));
    drop(permit);
    let mut link = match setup {
        Ok(link) => link,
        Err(e) => {
            let msg = format!("{e:#}");
            let _ = setup_tx.send(Setup {
                index,
                result: Err(msg.clone()),
            });
            return ClientOutcome {
                index,
                set_up: false,
                trackers: proto.into_trackers(),
                ended: Some(msg),
            };
        }
    };
    run.connected.fetch_add(1, Ordering::Relaxed);
    let _ = setup_tx.send(Setup {
        index,
        result: Ok(started.elapsed()),
    });
    drop(setup_tx);

    let stop = run.stop.clone().cancelled_owned();
    tokio::pin!(stop);
    let deadline = match plan.hold {
        Hold::UntilStop => None,
        Hold::For(d) => Some(tokio::time::Instant::now() + d),
    };
    let far = tokio::time::Instant::now() + Duration::from_secs(365 * 86_400);
    // Armed once: a timer per frame would cost a timer-wheel lock per delivery.
    let hold_over = tokio::time::sleep_until(deadline.unwrap_or(far));
    tokio::pin!(hold_over);
    let ended = loop {
        // Reads are not cancel-safe, but a cancelled client drops its socket anyway.
        let res = tokio::select! {
            biased;
            () = &mut stop => break None,
            () = &mut hold_over, if deadline.is_some() => {
                // An SSE client just goes: dropping the stream closes it.
                if let Link::Ws(ws) = &mut link {
                    let _ = ws.write_frame(Frame::close(1000, b"")).await;
                }
                break None;
            }
            r = link.step(&mut proto, &mut recv) => r,
        };
        if let Err(e) = res {
            break Some(format!("{e:#}"));
        }
    };
    run.connected.fetch_sub(1, Ordering::Relaxed);
    recv.flush();
    ClientOutcome {
        index,
        set_up: true,
        trackers: proto.into_trackers(),
        ended,
    }
}

/// Per-connection receive bookkeeping.
pub(crate) struct Recv<'a> {
    sink: &'a LatencySink,
    slot: Option<&'a AtomicU64>,
    measure: bool,
    lat: LatencyBatch,
    count: u64,
}

impl<'a> Recv<'a> {
    /// Counts into `slot` and, when `measure`, records latencies (batch `shard`).
    pub(crate) fn new(
        sink: &'a LatencySink,
        slot: Option<&'a AtomicU64>,
        measure: bool,
        shard: usize,
    ) -> Self {
        Self {
            sink,
            slot,
            measure,
            lat: LatencyBatch::new(shard),
            count: 0,
        }
    }

    /// Hands the pending latency samples to the sink.
    pub(crate) fn flush(&mut self) {
        self.lat.flush(self.sink);
    }

    /// One delivery sent at `t` (µs since the epoch).
    pub(crate) fn delivery(&mut self, t: Option<u64>) {
        self.count += 1;
        if let Some(s) = self.slot {
            s.store(self.count, Ordering::Relaxed);
        }
        if self.measure
            && let Some(t) = t
        {
            self.lat.push(now_us().saturating_sub(t), self.sink);
        }
    }
}

/// What to do after a frame.
enum Step {
    Continue,
    /// Send this small text frame.
    Send(&'static [u8]),
    /// Send this text frame (built per connection).
    SendOwned(Vec<u8>),
}

enum Proto {
    Herald(Herald),
    Sio(Sio),
    Sse(sse::Events),
}

/// A set-up client's connection.
enum Link {
    Ws(Ws),
    Sse(sse::Stream),
}

impl Link {
    /// Reads one frame, or what one read of the stream brings, and handles it.
    async fn step(&mut self, proto: &mut Proto, recv: &mut Recv<'_>) -> anyhow::Result<()> {
        match (self, proto) {
            (Self::Sse(stream), Proto::Sse(events)) => {
                stream.read(|l| events.on_line(l, recv)).await
            }
            (Self::Ws(ws), proto) => {
                let f = ws.read_frame().await?;
                proto.handle(ws, recv, f).await
            }
            (Self::Sse(_), _) => bail!("an SSE stream carries only SSE events"),
        }
    }
}

struct Herald {
    channels: Channels,
    trackers: Vec<Option<SeqTracker>>,
    /// Subscriptions not yet confirmed.
    pending: u32,
    connected: bool,
}

struct Sio {
    tracker: SeqTracker,
    connected: bool,
    /// `""` (the peer's default namespace) or `/channel` (Herald).
    ns: String,
    /// The publications' event name: the peer's `msg`, or what Herald publishers send.
    event: &'static [u8],
}

impl Proto {
    fn into_trackers(self) -> Vec<Option<SeqTracker>> {
        match self {
            Self::Herald(h) => h.trackers,
            Self::Sio(s) => vec![Some(s.tracker)],
            Self::Sse(e) => e.trackers,
        }
    }

    async fn setup(&mut self, ws: &mut Ws, recv: &mut Recv<'_>) -> anyhow::Result<()> {
        if let Self::Herald(h) = self {
            send_text(ws, br#"{"op":"connect","id":1}"#.to_vec()).await?;
            let channels = h.channels.clone();
            self.read_until(ws, recv, |p| matches!(p, Self::Herald(h) if h.connected))
                .await
                .context("waiting for `connected`")?;
            for j in 0..channels.count {
                let frame = serde_json::json!({
                    "op": "subscribe",
                    "id": 2 + u64::from(j),
                    "channel": channels.name(j),
                });
                send_text(ws, frame.to_string().into_bytes()).await?;
            }
            self.read_until(ws, recv, |p| matches!(p, Self::Herald(h) if h.pending == 0))
                .await
                .context("waiting for `subscribed`")
        } else {
            self.read_until(ws, recv, |p| matches!(p, Self::Sio(s) if s.connected))
                .await
                .context("waiting for the Socket.IO connect (40)")
        }
    }

    async fn read_until(
        &mut self,
        ws: &mut Ws,
        recv: &mut Recv<'_>,
        done: impl Fn(&Self) -> bool,
    ) -> anyhow::Result<()> {
        while !done(self) {
            let frame = ws.read_frame().await?;
            self.handle(ws, recv, frame).await?;
        }
        Ok(())
    }

    async fn handle(
        &mut self,
        ws: &mut Ws,
        recv: &mut Recv<'_>,
        frame: Frame<'_>,
    ) -> anyhow::Result<()> {
        match frame.opcode {
            OpCode::Text => {
                let step = match self {
                    Self::Herald(h) => h.on_frame(&frame.payload, recv)?,
                    Self::Sio(s) => s.on_frame(&frame.payload, recv)?,
                    Self::Sse(_) => bail!("a WebSocket frame on an SSE client"),
                };
                match step {
                    Step::Send(bytes) => send_small(ws, bytes).await?,
                    Step::SendOwned(bytes) => send_text(ws, bytes).await?,
                    Step::Continue => {}
                }
                Ok(())
            }
            OpCode::Close => bail!(
                "server closed the connection: {}",
                close_reason(&frame.payload)
            ),
            _ => Ok(()),
        }
    }
}

fn lossy(b: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(b)
}

/// "code 4001 (slow consumer)" from a close frame payload.
pub fn close_reason(payload: &[u8]) -> String {
    match payload {
        [a, b, rest @ ..] => format!("code {} ({})", u16::from_be_bytes([*a, *b]), lossy(rest)),
        _ => "no close code".to_owned(),
    }
}

impl Herald {
    fn on_frame(&mut self, f: &[u8], recv: &mut Recv<'_>) -> anyhow::Result<Step> {
        if let Some(d) = scan::herald_message(f) {
            if let (Some(j), Some(off)) = (self.channels.slot(d.channel), d.offset)
                && let Some(Some(t)) = self.trackers.get_mut(j)
            {
                t.observe(off);
            }
            recv.delivery(d.t);
            return Ok(Step::Continue);
        }
        match scan::herald_op(f).unwrap_or_default() {
            b"ping" => return Ok(Step::Send(HERALD_PONG)),
            b"connected" => self.connected = true,
            b"subscribed" => {
                let j = scan::string_field(f, b"channel").and_then(|c| self.channels.slot(c));
                let off = scan::number_field(f, b"offset");
                if let (Some(j), Some(off)) = (j, off)
                    && self.trackers[j].is_none()
                {
                    self.trackers[j] = Some(SeqTracker::starting_at(off + 1));
                    self.pending -= 1;
                }
            }
            b"error" => bail!(
                "server error {}: {}",
                lossy(scan::string_field(f, b"code").unwrap_or_default()),
                lossy(scan::string_field(f, b"message").unwrap_or_default())
            ),
            b"disconnect" => bail!(
                "server disconnected the client: code {} ({})",
                scan::number_field(f, b"code").unwrap_or_default(),
                lossy(scan::string_field(f, b"reason").unwrap_or_default())
            ),
            _ => {}
        }
        Ok(Step::Continue)
    }
}

impl Sio {
    fn on_frame(&mut self, f: &[u8], recv: &mut Recv<'_>) -> anyhow::Result<Step> {
        match sio::decode_in(f, self.ns.as_bytes()) {
            sio::Packet::Event { name, args } if name == self.event => {
                let (t, s) = scan::payload_fields(args);
                if let Some(s) = s {
                    self.tracker.observe(s);
                }
                recv.delivery(t);
            }
            sio::Packet::Open(_) => {
                return Ok(Step::SendOwned(sio::connect_packet(&self.ns, None)));
            }
            sio::Packet::Ping => return Ok(Step::Send(sio::PONG)),
            sio::Packet::Connect(_) => self.connected = true,
            sio::Packet::ConnectError(j) => bail!("Socket.IO connect refused: {}", lossy(j)),
            sio::Packet::Disconnect => bail!("server disconnected the client (41)"),
            sio::Packet::Close => bail!("server closed the Engine.IO session"),
            _ => {}
        }
        Ok(Step::Continue)
    }
}

/// Sends a short static frame without allocating (masking needs a mutable copy).
pub(crate) async fn send_small(ws: &mut Ws, bytes: &'static [u8]) -> anyhow::Result<()> {
    let mut buf = [0u8; 32];
    let n = bytes.len().min(buf.len());
    buf[..n].copy_from_slice(&bytes[..n]);
    ws.write_frame(Frame::text(Payload::BorrowedMut(&mut buf[..n])))
        .await?;
    Ok(())
}

pub async fn send_text(ws: &mut Ws, bytes: Vec<u8>) -> anyhow::Result<()> {
    ws.write_frame(Frame::text(Payload::Owned(bytes))).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_slots() {
        let c = Channels {
            prefix: Arc::from("user-"),
            first: 10,
            count: 2,
        };
        assert_eq!(c.name(1), "user-11");
        assert_eq!(c.slot(b"user-10"), Some(0));
        assert_eq!(c.slot(b"user-11"), Some(1));
        assert_eq!(c.slot(b"user-12"), None);
        assert_eq!(c.slot(b"user-9"), None);
        assert_eq!(close_reason(&[0x0f, 0xa1, b'x']), "code 4001 (x)");
    }

    #[test]
    fn herald_frames_drive_the_trackers() {
        let sink = LatencySink::new(1);
        let slot = AtomicU64::new(0);
        let mut recv = Recv::new(&sink, Some(&slot), true, 0);
        let mut h = Herald {
            channels: Channels {
                prefix: Arc::from("bench-"),
                first: 0,
                count: 1,
            },
            trackers: vec![None],
            pending: 1,
            connected: false,
        };
        let sub = br#"{"op":"subscribed","id":2,"channel":"bench-0","epoch":"E","offset":4}"#;
        assert!(matches!(h.on_frame(sub, &mut recv), Ok(Step::Continue)));
        assert_eq!(h.pending, 0);
        let t = now_us();
        for off in [5u64, 6, 6, 8] {
            let f = format!(
                r#"{{"op":"message","channel":"bench-0","event":"e","data":{{"t":{t},"s":1,"p":""}},"epoch":"E","offset":{off}}}"#
            );
            assert!(h.on_frame(f.as_bytes(), &mut recv).is_ok());
        }
        assert!(matches!(
            h.on_frame(br#"{"op":"ping"}"#, &mut recv),
            Ok(Step::Send(_))
        ));
        assert!(
            h.on_frame(br#"{"op":"error","code":"x","message":"y"}"#, &mut recv)
                .is_err()
        );
        recv.lat.flush(&sink);
        assert_eq!(slot.load(Ordering::Relaxed), 4);
        assert_eq!(sink.snapshot().count(), 4);
        let c = h.trackers[0].expect("subscribed").finish(9);
        assert_eq!((c.received, c.lost, c.duplicated), (3, 1, 1));
    }
}
