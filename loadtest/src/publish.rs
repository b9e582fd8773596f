//! Publishers: paced publications through the HTTP API, straight into
//! Redis, or through a client WebSocket (Herald `emit`, Socket.IO `publish`).
//!
//! `connections` tasks share the schedule: publication i is due at
//! `start + i / rate` and is sent by task `i % connections`, so a slow
//! answer on one connection does not stall the others. Each payload carries
//! its send time and sequence number; the offsets Herald assigns are kept per
//! channel so that receivers can tell what they never got.

use crate::cli::{PublishVia, Target};
use crate::client::{Run, close_reason, send_text};
use crate::net::{self, Endpoint, Http, RawWs, Ws};
use crate::scan;
use crate::sio;
use crate::stats::now_us;
use anyhow::{Context, bail};
use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Payload, WebSocketError};
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::time::Instant;

/// Event name of every publication.
pub const EVENT: &str = "e";
/// Bound on one publish round trip.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);

/// What to publish and how.
#[derive(Debug, Clone)]
pub struct PublishPlan {
    pub target: Target,
    pub via: PublishVia,
    pub rate: f64,
    pub duration: Duration,
    pub prefix: Arc<str>,
    pub channels: u32,
    /// Pick channels at random instead of in rotation.
    pub random: bool,
    pub pad: usize,
    pub connections: usize,
    pub redis_url: Option<String>,
}

impl PublishPlan {
    /// Publications in the whole run.
    pub fn total(&self) -> u64 {
        (self.rate * self.duration.as_secs_f64()).round() as u64
    }
}

/// What the publishers did.
#[derive(Debug, Default)]
pub struct PublishOutcome {
    pub published: u64,
    pub failed: u64,
    pub first_error: Option<String>,
    /// Highest offset assigned per channel (Herald; 0 = none).
    pub last_offset: Vec<u64>,
    pub elapsed: Duration,
}

impl PublishOutcome {
    /// Copies what was published, and how fast, into a delivery report.
    pub fn fill(&self, d: &mut crate::report::DeliveryReport) {
        d.published = self.published;
        d.publish_failed = self.failed;
        d.publish_first_error.clone_from(&self.first_error);
        d.publish_seconds = self.elapsed.as_secs_f64();
        d.publish_rate = self.published as f64 / d.publish_seconds.max(1e-9);
    }

    fn absorb(&mut self, o: Self) {
        self.published += o.published;
        self.failed += o.failed;
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
        if self.last_offset.len() < o.last_offset.len() {
            self.last_offset.resize(o.last_offset.len(), 0);
        }
        for (a, b) in self.last_offset.iter_mut().zip(o.last_offset) {
            *a = (*a).max(b);
        }
    }

    fn fail(&mut self, e: &anyhow::Error) {
        self.failed += 1;
        if self.first_error.is_none() {
            self.first_error = Some(format!("{e:#}"));
        }
    }
}

/// `{"t":µs,"s":seq,"p":"xxx.."}`, written into `out`.
pub fn payload(out: &mut String, seq: u64, pad: usize) {
    out.clear();
    let _ = write!(out, r#"{{"t":{},"s":{seq},"p":""#, now_us());
    out.extend(std::iter::repeat_n('x', pad));
    out.push_str("\"}");
}

/// One open publishing connection.
enum Conn {
    Api(Http),
    Redis(RedisPub, Arc<redis::Script>),
    Herald(Box<Ws>),
    Sio(Box<RawWs>),
}

/// Where `--publish-via redis` publishes, as the nodes' broker is set up.
#[derive(Clone)]
enum RedisPub {
    /// `redis://…`: one Redis.
    One(redis::aio::MultiplexedConnection),
    /// `redis://a redis://b …` (space-separated): client-side shards, in
    /// the nodes' `--redis-shard` order.
    Shards(Vec<redis::aio::MultiplexedConnection>),
    /// `redis+cluster://h1:p1,h2:p2`: a Redis Cluster (`SPUBLISH`).
    Cluster(redis::cluster_async::ClusterConnection),
}

impl RedisPub {
    async fn connect(url: &str) -> anyhow::Result<Self> {
        async fn one(url: &str) -> anyhow::Result<redis::aio::MultiplexedConnection> {
            let client =
                redis::Client::open(url).with_context(|| format!("invalid Redis URL {url}"))?;
            tokio::time::timeout(
                net::CONNECT_TIMEOUT,
                client.get_multiplexed_async_connection(),
            )
            .await
            .with_context(|| format!("connecting to Redis at {url} timed out"))?
            .with_context(|| format!("cannot connect to Redis at {url}"))
        }
        if let Some(hosts) = url.strip_prefix("redis+cluster://") {
            let nodes: Vec<String> = hosts
                .trim_end_matches('/')
                .split(',')
                .map(|h| format!("redis://{h}"))
                .collect();
            let client = redis::cluster::ClusterClient::new(nodes)
                .with_context(|| format!("invalid Redis Cluster URL {url}"))?;
            let con = tokio::time::timeout(net::CONNECT_TIMEOUT, client.get_async_connection())
                .await
                .with_context(|| format!("connecting to Redis Cluster at {url} timed out"))?
                .with_context(|| format!("cannot connect to Redis Cluster at {url}"))?;
            return Ok(Self::Cluster(con));
        }
        let urls: Vec<&str> = url.split_whitespace().collect();
        if urls.len() > 1 {
            let mut cons = Vec::with_capacity(urls.len());
            for u in urls {
                cons.push(one(u).await?);
            }
            return Ok(Self::Shards(cons));
        }
        Ok(Self::One(one(url).await?))
    }
}

/// Opens every publishing connection before the measured phase.
pub struct Publishers {
    plan: PublishPlan,
    conns: Vec<Conn>,
}

impl Publishers {
    pub async fn connect(plan: PublishPlan, ep: &Endpoint) -> anyhow::Result<Self> {
        let n = match plan.target {
            // One socket keeps the sequence numbers in order for every
            // receiver (Socket.IO clients check order by them).
            Target::Socketio | Target::HeraldSocketio => 1,
            // Herald clients check order by offset.
            Target::Herald | Target::HeraldSse => plan.connections.max(1),
        };
        let mut conns = Vec::with_capacity(n);
        match (plan.target, plan.via) {
            (Target::Socketio, _) => {
                let mut ws = net::ws_connect_raw(ep, sio::WS_PATH, None).await?;
                sio_hello(&mut ws).await?;
                conns.push(Conn::Sio(Box::new(ws)));
            }
            (_, PublishVia::Api) => {
                for _ in 0..n {
                    conns.push(Conn::Api(Http::connect(ep).await?));
                }
            }
            (_, PublishVia::Redis) => {
                let url = plan
                    .redis_url
                    .as_deref()
                    .context("--publish-via redis needs --redis-url")?;
                let con = RedisPub::connect(url).await?;
                let script = Arc::new(redis::Script::new(herald_proto::redis::PUBLISH_SCRIPT));
                for _ in 0..n {
                    conns.push(Conn::Redis(con.clone(), script.clone()));
                }
            }
            (_, PublishVia::Client) => {
                for _ in 0..n {
                    let mut ws = net::ws_connect(ep, "/ws", None).await?;
                    herald_hello(&mut ws).await?;
                    conns.push(Conn::Herald(Box::new(ws)));
                }
            }
        }
        Ok(Self { plan, conns })
    }

    /// Publishes the whole schedule; returns when the last one is answered.
    pub async fn run(self, run: Arc<Run>) -> PublishOutcome {
        let start = Instant::now();
        let plan = Arc::new(self.plan);
        let n = self.conns.len() as u64;
        let mut tasks = Vec::with_capacity(self.conns.len());
        for (k, conn) in self.conns.into_iter().enumerate() {
            let plan = plan.clone();
            let run = run.clone();
            tasks.push(tokio::spawn(async move {
                match conn {
                    Conn::Sio(ws) => publish_sio(*ws, &plan, &run, start).await,
                    conn => publish_loop(conn, &plan, &run, start, k as u64, n).await,
                }
            }));
        }
        let mut out = PublishOutcome {
            last_offset: vec![0; plan.channels as usize],
            ..PublishOutcome::default()
        };
        for t in tasks {
            match t.await {
                Ok(o) => out.absorb(o),
                Err(e) => out.fail(&anyhow::anyhow!("publisher task failed: {e}")),
            }
        }
        out.elapsed = start.elapsed();
        out
    }
}

fn due(start: Instant, seq: u64, rate: f64) -> Instant {
    start + Duration::from_secs_f64(seq as f64 / rate)
}

fn pick_channel(plan: &PublishPlan, seq: u64, rng: &mut fastrand::Rng) -> u32 {
    if plan.random {
        rng.u32(0..plan.channels.max(1))
    } else {
        (seq % u64::from(plan.channels.max(1))) as u32
    }
}

/// Request/answer publishing for the Herald paths.
async fn publish_loop(
    mut conn: Conn,
    plan: &PublishPlan,
    run: &Run,
    start: Instant,
    first: u64,
    step: u64,
) -> PublishOutcome {
    let mut out = PublishOutcome {
        last_offset: vec![0; plan.channels as usize],
        ..PublishOutcome::default()
    };
    let mut rng = fastrand::Rng::new();
    let mut data = String::new();
    let total = plan.total();
    let mut seq = first;
    while seq < total {
        tokio::time::sleep_until(due(start, seq, plan.rate)).await;
        let ch = pick_channel(plan, seq, &mut rng);
        let name = format!("{}{ch}", plan.prefix);
        payload(&mut data, seq, plan.pad);
        let res = tokio::time::timeout(PUBLISH_TIMEOUT, publish_one(&mut conn, &name, &data, seq))
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {PUBLISH_TIMEOUT:?}")));
        match res {
            Ok(offset) => {
                out.published += 1;
                run.published.fetch_add(1, Ordering::Relaxed);
                let slot = &mut out.last_offset[ch as usize];
                *slot = (*slot).max(offset);
            }
            Err(e) => {
                out.fail(&e);
                // A broken connection would fail every later publish the same way.
                if broken(&conn) {
                    break;
                }
            }
        }
        seq += step;
    }
    out
}

fn broken(conn: &Conn) -> bool {
    match conn {
        Conn::Api(h) => h.is_closed(),
        Conn::Herald(_) | Conn::Sio(_) => true,
        Conn::Redis(..) => false,
    }
}

/// Publishes one payload; returns the offset Herald assigned.
async fn publish_one(conn: &mut Conn, channel: &str, data: &str, seq: u64) -> anyhow::Result<u64> {
    match conn {
        Conn::Api(http) => {
            let body = format!(r#"{{"channel":"{channel}","event":"{EVENT}","data":{data}}}"#);
            let resp = http
                .request(
                    hyper::Method::POST,
                    "/api/v1/publish",
                    Some(Bytes::from(body)),
                )
                .await?;
            if !resp.status.is_success() {
                bail!("POST /api/v1/publish: {}: {}", resp.status, resp.text());
            }
            scan::number_field(&resp.body, b"offset")
                .with_context(|| format!("no offset in the API answer {}", resp.text()))
        }
        Conn::Redis(con, script) => {
            let raw = serde_json::value::RawValue::from_string(data.to_owned())?;
            let prefix = herald_proto::MessageFrame::prefix(channel, EVENT, &raw);
            let epoch: String = std::iter::repeat_with(fastrand::alphanumeric)
                .take(12)
                .collect();
            let mut inv = script.key(herald_proto::redis::meta_key(channel));
            inv.key(herald_proto::redis::pubsub_channel(channel))
                .key(herald_proto::redis::history_key(channel))
                .arg(epoch)
                .arg(3600)
                .arg(prefix)
                .arg(100)
                .arg(300);
            let res: redis::RedisResult<(String, u64)> = match con {
                RedisPub::One(c) => inv.invoke_async(c).await,
                RedisPub::Shards(cs) => {
                    let n = cs.len();
                    inv.invoke_async(&mut cs[herald_proto::redis::shard_of(channel, n)])
                        .await
                }
                RedisPub::Cluster(c) => {
                    inv.arg(herald_proto::redis::SHARDED);
                    inv.invoke_async(c).await
                }
            };
            let (_epoch, offset) = res.context("Redis publish script")?;
            Ok(offset)
        }
        Conn::Herald(ws) => {
            let id = seq + 1;
            let frame = format!(
                r#"{{"op":"emit","id":{id},"channel":"{channel}","event":"{EVENT}","data":{data}}}"#
            );
            send_text(ws, frame.into_bytes()).await?;
            loop {
                let f = ws.read_frame().await?;
                match f.opcode {
                    OpCode::Text => {}
                    OpCode::Close => bail!("server closed: {}", close_reason(&f.payload)),
                    _ => continue,
                }
                let p = &f.payload[..];
                match scan::herald_op(p).unwrap_or_default() {
                    b"emitted" if scan::number_field(p, b"id") == Some(id) => {
                        return scan::number_field(p, b"offset").context("emitted without offset");
                    }
                    b"ping" => send_text(ws, br#"{"op":"pong"}"#.to_vec()).await?,
                    b"error" => bail!("emit refused: {}", String::from_utf8_lossy(p)),
                    b"disconnect" => bail!("server disconnected: {}", String::from_utf8_lossy(p)),
                    _ => {}
                }
            }
        }
        Conn::Sio(_) => bail!("Socket.IO publishes through publish_sio"),
    }
}

async fn herald_hello(ws: &mut Ws) -> anyhow::Result<()> {
    send_text(ws, br#"{"op":"connect","id":1}"#.to_vec()).await?;
    loop {
        let f = ws.read_frame().await?;
        if f.opcode == OpCode::Close {
            bail!("server closed: {}", close_reason(&f.payload));
        }
        match scan::herald_op(&f.payload).unwrap_or_default() {
            b"connected" => return Ok(()),
            b"error" => bail!("connect refused: {}", String::from_utf8_lossy(&f.payload)),
            _ => {}
        }
    }
}

async fn sio_hello(ws: &mut RawWs) -> anyhow::Result<()> {
    loop {
        let f = ws.read_frame().await?;
        if f.opcode == OpCode::Close {
            bail!("server closed: {}", close_reason(&f.payload));
        }
        let answer = match sio::decode(&f.payload) {
            sio::Packet::Open(_) => sio::CONNECT,
            sio::Packet::Ping => sio::PONG,
            sio::Packet::Connect(_) => return Ok(()),
            sio::Packet::ConnectError(e) => {
                bail!("Socket.IO connect refused: {}", String::from_utf8_lossy(e))
            }
            _ => continue,
        };
        ws.write_frame(Frame::text(Payload::Owned(answer.to_vec())))
            .await?;
    }
}

/// Socket.IO: fire-and-forget `42["publish",..]` on one socket. The server
/// echoes every publication to this socket too, so a reader task drains it
/// and asks the writer to answer pings.
async fn publish_sio(ws: RawWs, plan: &PublishPlan, run: &Run, start: Instant) -> PublishOutcome {
    let mut out = PublishOutcome::default();
    let (mut rd, mut wr) = ws.split(tokio::io::split);
    let (ping_tx, mut ping_rx) = tokio::sync::mpsc::channel::<()>(4);
    let reader = tokio::spawn(async move {
        let mut ignore = |_: Frame<'_>| async { Ok::<(), WebSocketError>(()) };
        while let Ok(f) = rd.read_frame(&mut ignore).await {
            match f.opcode {
                OpCode::Text if sio::decode(&f.payload) == sio::Packet::Ping => {
                    let _ = ping_tx.try_send(());
                }
                OpCode::Close => break,
                _ => {}
            }
        }
    });
    let total = plan.total();
    let mut data = String::new();
    let mut frame = Vec::new();
    let mut seq = 0;
    while seq < total {
        tokio::select! {
            Some(()) = ping_rx.recv() => {
                let mut pong = *b"3";
                if let Err(e) = wr.write_frame(Frame::text(Payload::BorrowedMut(&mut pong))).await {
                    out.fail(&e.into());
                    break;
                }
            }
            () = tokio::time::sleep_until(due(start, seq, plan.rate)) => {
                payload(&mut data, seq, plan.pad);
                frame.clear();
                sio::encode_event(&mut frame, "publish", data.as_bytes());
                if let Err(e) = wr.write_frame(Frame::text(Payload::BorrowedMut(&mut frame))).await {
                    out.fail(&e.into());
                    break;
                }
                out.published += 1;
                run.published.fetch_add(1, Ordering::Relaxed);
                seq += 1;
            }
        }
    }
    // Keep draining until the run stops, so the echo never backs up.
    let stop = run.stop.clone();
    tokio::spawn(async move {
        stop.cancelled().await;
        reader.abort();
        drop(wr);
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_shape() {
        let mut s = String::new();
        payload(&mut s, 42, 5);
        let v: serde_json::Value = serde_json::from_str(&s).expect("json");
        assert_eq!(v["s"], 42);
        assert_eq!(v["p"], "xxxxx");
        assert!(v["t"].as_u64().expect("t") > 1_600_000_000_000_000);
        assert_eq!(scan::payload_fields(s.as_bytes()).1, Some(42));
    }

    #[test]
    fn schedule_and_channels() {
        let plan = PublishPlan {
            target: Target::Herald,
            via: PublishVia::Api,
            rate: 50.0,
            duration: Duration::from_secs(2),
            prefix: Arc::from("bench-"),
            channels: 3,
            random: false,
            pad: 0,
            connections: 2,
            redis_url: None,
        };
        assert_eq!(plan.total(), 100);
        let mut rng = fastrand::Rng::with_seed(1);
        let picks: Vec<u32> = (0..4).map(|s| pick_channel(&plan, s, &mut rng)).collect();
        assert_eq!(picks, [0, 1, 2, 0]);
        let start = Instant::now();
        assert_eq!(due(start, 50, 50.0) - start, Duration::from_secs(1));
        let mut o = PublishOutcome::default();
        o.absorb(PublishOutcome {
            published: 2,
            last_offset: vec![3, 9],
            ..PublishOutcome::default()
        });
        o.absorb(PublishOutcome {
            published: 1,
            last_offset: vec![5, 1],
            ..PublishOutcome::default()
        });
        assert_eq!((o.published, o.last_offset), (3, vec![5, 9]));
    }
}
