//! `herald-load floor`: the machine's floor for fan-out, a WebSocket server
//! with no Herald code path (issue 18).
//!
//! It speaks just enough of Herald protocol v1 for the load client: it
//! answers `connect` and `subscribe`, takes `POST /api/v1/publish`, builds
//! the `message` frame once, and queues the same bytes to every subscriber
//! of the channel, each connection writing its own queue. There is no broker,
//! no history, no auth, no limits, and no bookkeeping beyond a counter per
//! channel. Several floor processes stand in for a cluster: the one that
//! takes a publication forwards the finished frame to its `--peer`s over
//! one WebSocket each (`GET /floor/link`), streamed in order with no answer
//! per frame as Redis pub/sub streams to a node, and they write it out as
//! is. `fanout` and `idle` then measure it exactly as they measure Herald
//! (`--url` at the floor processes), so Herald's figures can be read as a
//! ratio to what any server could do on the same machine at the same time.

use anyhow::Context;
use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, upgrade};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// `herald-load floor` options.
#[derive(Debug, Clone, clap::Args)]
pub struct FloorArgs {
    /// Address to listen on (port 0: any; the chosen one is printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Another floor process (`http://HOST:PORT`) to forward publications
    /// to; repeat for each.
    #[arg(long = "peer", value_name = "URL")]
    pub peers: Vec<String>,
    /// Frames queued per connection; a connection past it is dropped, as
    /// Herald drops a slow consumer.
    #[arg(long, default_value_t = 1024)]
    pub queue: usize,
    /// Runtime worker threads (default: one per CPU), e.g. 1 to match
    /// `herald serve --worker-threads 1`.
    #[arg(long)]
    pub worker_threads: Option<usize>,
}

/// A channel's subscribers' queues and its latest offset.
#[derive(Default)]
struct Chan {
    subs: Vec<mpsc::Sender<Bytes>>,
    offset: u64,
}

struct Floor {
    /// One lock for offsets and fan-out, so every queue gets a channel's
    /// frames in offset order.
    channels: Mutex<HashMap<String, Chan>>,
    sessions: AtomicU64,
    queue: usize,
    /// One ordered forwarding queue per peer.
    peers: Vec<mpsc::Sender<(String, Bytes)>>,
}

impl Floor {
    /// Queues `frame` (a complete WebSocket frame) to every subscriber of
    /// `channel`, dropping those whose queue is full or gone.
    fn fan_out(chan: &mut Chan, frame: &Bytes) {
        chan.subs.retain(|tx| tx.try_send(frame.clone()).is_ok());
    }
}

/// Runs the floor server until the process is stopped.
pub async fn serve(a: FloorArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("binding {}", a.listen))?;
    let mut peers = Vec::new();
    for url in &a.peers {
        let (tx, rx) = mpsc::channel(65_536);
        let ep = crate::net::Endpoint::resolve(url).await?;
        tokio::spawn(forward(ep, rx));
        peers.push(tx);
    }
    let floor = Arc::new(Floor {
        channels: Mutex::new(HashMap::new()),
        sessions: AtomicU64::new(0),
        queue: a.queue.max(1),
        peers,
    });
    println!("floor listening on {}", listener.local_addr()?);
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        let floor = Arc::clone(&floor);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(Arc::clone(&floor), req));
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .with_upgrades();
            let _ = conn.await;
        });
    }
}

type Resp = Response<Full<Bytes>>;

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
}

async fn handle(floor: Arc<Floor>, mut req: Request<Incoming>) -> Result<Resp, hyper::Error> {
    let path = req.uri().path().to_owned();
    Ok(match (req.method(), path.as_str()) {
        (&Method::GET, "/ws") => match upgrade::upgrade(&mut req) {
            Ok((resp, fut)) => {
                tokio::spawn(async move {
                    if let Ok(ws) = fut.await {
                        session(floor, ws).await;
                    }
                });
                let (parts, _) = resp.into_parts();
                Response::from_parts(parts, Full::new(Bytes::new()))
            }
            Err(e) => reply(StatusCode::BAD_REQUEST, e.to_string()),
        },
        (&Method::GET, "/readyz" | "/healthz") => reply(StatusCode::OK, "ok\n"),
        (&Method::GET, "/metrics") => reply(
            StatusCode::OK,
            format!("process_resident_memory_bytes {}\n", resident_bytes()),
        ),
        (&Method::POST, "/api/v1/publish") => {
            let body = req.into_body().collect().await?.to_bytes();
            publish(&floor, &body)
        }
        (&Method::GET, "/floor/link") => match upgrade::upgrade(&mut req) {
            Ok((resp, fut)) => {
                tokio::spawn(async move {
                    if let Ok(ws) = fut.await {
                        link(floor, ws).await;
                    }
                });
                let (parts, _) = resp.into_parts();
                Response::from_parts(parts, Full::new(Bytes::new()))
            }
            Err(e) => reply(StatusCode::BAD_REQUEST, e.to_string()),
        },
        _ => reply(StatusCode::NOT_FOUND, "not found\n"),
    })
}

#[derive(Deserialize)]
struct PublishReq<'a> {
    channel: &'a str,
    event: &'a str,
    #[serde(borrow)]
    data: &'a RawValue,
}

/// Builds the WebSocket frame once, queues it to local subscribers and
/// forwards it, all under the channels lock (offset order everywhere).
fn publish(floor: &Floor, body: &[u8]) -> Resp {
    let Ok(p) = serde_json::from_slice::<PublishReq<'_>>(body) else {
        return reply(StatusCode::BAD_REQUEST, "{\"error\":\"bad body\"}");
    };
    let mut map = floor.channels.lock().unwrap_or_else(|e| e.into_inner());
    let chan = map.entry(p.channel.to_owned()).or_default();
    chan.offset += 1;
    let offset = chan.offset;
    // Names are the load tool's own, plain ASCII: no escaping needed.
    let frame = ws_text(
        format!(
            r#"{{"op":"message","channel":"{}","event":"{}","data":{},"epoch":"floor","offset":{offset}}}"#,
            p.channel,
            p.event,
            p.data.get()
        )
        .as_bytes(),
    );
    for peer in &floor.peers {
        let _ = peer.try_send((format!("{}\n{offset}", p.channel), frame.clone()));
    }
    Floor::fan_out(chan, &frame);
    drop(map);
    reply(
        StatusCode::OK,
        format!(r#"{{"epoch":"floor","offset":{offset}}}"#),
    )
}

/// An unmasked server text frame: header and payload, ready to write.
fn ws_text(payload: &[u8]) -> Bytes {
    let n = payload.len();
    let mut out = Vec::with_capacity(n + 10);
    out.push(0x81);
    if n < 126 {
        out.push(n as u8);
    } else if n < 65_536 {
        out.push(126);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(n as u64).to_be_bytes());
    }
    out.extend_from_slice(payload);
    Bytes::from(out)
}

/// Largest batch of queued frames written at once.
const BATCH_BYTES: usize = 64 * 1024;

/// One client: replies to `connect` and `subscribe`; its writer writes
/// queued frames as raw bytes, batched, one write per wake.
async fn session(
    floor: Arc<Floor>,
    ws: fastwebsockets::WebSocket<TokioIo<hyper::upgrade::Upgraded>>,
) {
    let (r, mut w) = tokio::io::split(ws.into_inner());
    let (mut reader, _) =
        fastwebsockets::after_handshake_split(r, tokio::io::sink(), fastwebsockets::Role::Server);
    let (tx, mut queue) = mpsc::channel::<Bytes>(floor.queue);
    let writer = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let mut buf = Vec::new();
        while let Some(first) = queue.recv().await {
            buf.extend_from_slice(&first);
            while buf.len() < BATCH_BYTES {
                match queue.try_recv() {
                    Ok(b) => buf.extend_from_slice(&b),
                    Err(_) => break,
                }
            }
            if w.write_all(&buf).await.is_err() {
                return;
            }
            buf.clear();
        }
    });
    let id = floor.sessions.fetch_add(1, Ordering::Relaxed);
    let mut ignore = |_: Frame<'_>| async { Ok::<_, std::convert::Infallible>(()) };
    while let Ok(f) = reader.read_frame(&mut ignore).await {
        match f.opcode {
            OpCode::Close => break,
            OpCode::Text => {}
            _ => continue,
        }
        let Ok(cmd) = serde_json::from_slice::<serde_json::Value>(&f.payload) else {
            continue;
        };
        let rid = cmd["id"].clone();
        let answer = match cmd["op"].as_str() {
            Some("connect") => serde_json::json!({
                "op": "connected", "id": rid, "session": format!("{id:016x}"),
                "node": "floor", "ping_interval_ms": 25_000,
            }),
            Some("subscribe") => {
                let ch = cmd["channel"].as_str().unwrap_or_default().to_owned();
                // Queued under the lock: no publication slips in between.
                let mut map = floor.channels.lock().unwrap_or_else(|e| e.into_inner());
                let chan = map.entry(ch.clone()).or_default();
                chan.subs.push(tx.clone());
                let answer = serde_json::json!({"op": "subscribed", "id": rid, "channel": ch, "epoch": "floor", "offset": chan.offset});
                if tx.try_send(ws_text(answer.to_string().as_bytes())).is_err() {
                    break;
                }
                continue;
            }
            Some("ping") => serde_json::json!({"op": "pong", "id": rid}),
            _ => continue,
        };
        if tx.try_send(ws_text(answer.to_string().as_bytes())).is_err() {
            break;
        }
    }
    drop(tx);
    // The channel map still holds senders until the next publication finds them closed.
    writer.abort();
}

/// Streams frames to one peer, in order, over one WebSocket (no answer per
/// frame, as Redis pub/sub streams to a node): each binary message is
/// `<channel>\n<offset>\n<complete WebSocket frame>`.
async fn forward(ep: crate::net::Endpoint, mut rx: mpsc::Receiver<(String, Bytes)>) {
    let mut ws: Option<crate::net::Ws> = None;
    let mut msg = Vec::new();
    while let Some((channel, frame)) = rx.recv().await {
        msg.clear();
        msg.extend_from_slice(channel.as_bytes());
        msg.push(b'\n');
        msg.extend_from_slice(&frame);
        for _ in 0..2 {
            if ws.is_none() {
                ws = crate::net::ws_connect(&ep, "/floor/link", None).await.ok();
            }
            let Some(w) = ws.as_mut() else { continue };
            let sent = w
                .write_frame(Frame::binary(fastwebsockets::Payload::Borrowed(&msg)))
                .await;
            if sent.is_ok() {
                break;
            }
            ws = None;
        }
    }
}

/// A peer's stream of forwarded frames: fans each out locally, as is.
async fn link(floor: Arc<Floor>, ws: fastwebsockets::WebSocket<TokioIo<hyper::upgrade::Upgraded>>) {
    let mut ws = fastwebsockets::FragmentCollector::new(ws);
    while let Ok(f) = ws.read_frame().await {
        match f.opcode {
            OpCode::Close => return,
            OpCode::Binary => {}
            _ => continue,
        }
        let mut parts = f.payload.splitn(3, |&b| b == b'\n');
        let (Some(ch), Some(off), Some(frame)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let channel = String::from_utf8_lossy(ch).into_owned();
        let offset = std::str::from_utf8(off)
            .ok()
            .and_then(|o| o.parse().ok())
            .unwrap_or(0);
        let frame = Bytes::copy_from_slice(frame);
        let mut map = floor.channels.lock().unwrap_or_else(|e| e.into_inner());
        // The origin's offset, so this floor's `subscribed` answers line up.
        let chan = map.entry(channel).or_default();
        chan.offset = chan.offset.max(offset);
        Floor::fan_out(chan, &frame);
    }
}

/// This process's resident memory, from `/proc/self/statm`.
fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}
