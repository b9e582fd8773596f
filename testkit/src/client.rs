//! A protocol-speaking WebSocket test client: requests matched to their
//! replies by id, server pings answered, closes reported with their code.

use crate::TIMEOUT;
use bytes::Bytes;
use fastwebsockets::{FragmentCollector, Frame, OpCode, Payload};
use http_body_util::Empty;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

/// Runs hyper's connection task for the upgrade on the test's runtime.
struct SpawnExecutor;

impl<Fut> hyper::rt::Executor<Fut> for SpawnExecutor
where
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    fn execute(&self, fut: Fut) {
        tokio::spawn(fut);
    }
}

/// What a client read off the socket.
#[derive(Debug)]
pub enum Event {
    Frame(Value),
    Close(u16, String),
}

/// A protocol-speaking WebSocket test client.
pub struct Client {
    ws: FragmentCollector<TokioIo<Upgraded>>,
    next_id: u64,
    /// Frames read while waiting for a particular reply.
    pending: VecDeque<Value>,
    /// Answer server `{"op":"ping"}` automatically.
    pub auto_pong: bool,
}

impl Client {
    pub async fn open(addr: SocketAddr) -> Self {
        Self::try_open(addr, None, &[])
            .await
            .unwrap_or_else(|e| panic!("websocket handshake: {e}"))
    }

    /// Opens from a chosen local address (e.g. `127.0.0.2`, to look like
    /// another client) with extra request headers; the error says why the
    /// upgrade was refused (its HTTP status, when there was one).
    pub async fn try_open(
        addr: SocketAddr,
        from: Option<std::net::IpAddr>,
        headers: &[(&str, &str)],
    ) -> Result<Self, String> {
        let socket = match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
        }
        .map_err(|e| e.to_string())?;
        if let Some(ip) = from {
            socket
                .bind(SocketAddr::new(ip, 0))
                .map_err(|e| format!("bind {ip}: {e}"))?;
        }
        let stream = socket.connect(addr).await.map_err(|e| e.to_string())?;
        let mut req = hyper::Request::builder()
            .method("GET")
            .uri(format!("http://{addr}/ws"))
            .header("Host", addr.to_string())
            .header(hyper::header::UPGRADE, "websocket")
            .header(hyper::header::CONNECTION, "upgrade")
            .header(
                "Sec-WebSocket-Key",
                fastwebsockets::handshake::generate_key(),
            )
            .header("Sec-WebSocket-Version", "13");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Empty::<Bytes>::new()).expect("request");
        let (ws, _) = fastwebsockets::handshake::client(&SpawnExecutor, req, stream)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Self {
            ws: FragmentCollector::new(ws),
            next_id: 100,
            pending: VecDeque::new(),
            auto_pong: true,
        })
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws
            .write_frame(Frame::text(Payload::Borrowed(text.as_bytes())))
            .await
            .expect("send");
    }

    pub async fn send(&mut self, v: Value) {
        self.send_text(&v.to_string()).await;
    }

    pub async fn send_frame(&mut self, frame: Frame<'_>) {
        self.ws.write_frame(frame).await.expect("send frame");
    }

    /// Next frame or close from the socket, skipping (and answering) pings.
    pub async fn next_event(&mut self) -> Event {
        if let Some(v) = self.pending.pop_front() {
            return Event::Frame(v);
        }
        self.read_event().await
    }

    async fn read_event(&mut self) -> Event {
        loop {
            let frame = tokio::time::timeout(TIMEOUT, self.ws.read_frame())
                .await
                .expect("timed out waiting for a frame");
            let frame = match frame {
                Ok(f) => f,
                Err(e) => return Event::Close(1006, e.to_string()),
            };
            match frame.opcode {
                OpCode::Text => {
                    let v: Value =
                        serde_json::from_slice(&frame.payload).expect("server sends JSON");
                    if self.auto_pong && v["op"] == "ping" && v.get("id").is_none() {
                        self.send(json!({"op":"pong"})).await;
                        continue;
                    }
                    return Event::Frame(v);
                }
                OpCode::Close => {
                    let p = &frame.payload;
                    let code = if p.len() >= 2 {
                        u16::from_be_bytes([p[0], p[1]])
                    } else {
                        1005
                    };
                    return Event::Close(
                        code,
                        String::from_utf8_lossy(p.get(2..).unwrap_or(&[])).into_owned(),
                    );
                }
                _ => {}
            }
        }
    }

    /// Next text frame exactly as the server sent it.
    pub async fn recv_text(&mut self) -> String {
        assert!(
            self.pending.is_empty(),
            "frames already parsed: {:?}",
            self.pending
        );
        loop {
            let f = tokio::time::timeout(TIMEOUT, self.ws.read_frame())
                .await
                .expect("timed out waiting for a frame")
                .expect("read");
            if f.opcode == OpCode::Text {
                return String::from_utf8(f.payload.to_vec()).expect("UTF-8");
            }
        }
    }

    /// Sends a WebSocket-level ping and returns the payload of the pong.
    pub async fn ws_ping(&mut self, payload: &[u8]) -> Vec<u8> {
        self.send_frame(Frame::new(
            true,
            OpCode::Ping,
            None,
            Payload::Borrowed(payload),
        ))
        .await;
        loop {
            let f = tokio::time::timeout(TIMEOUT, self.ws.read_frame())
                .await
                .expect("timed out waiting for pong")
                .expect("read");
            if f.opcode == OpCode::Pong {
                return f.payload.to_vec();
            }
        }
    }

    /// Next JSON frame; panics on close.
    pub async fn recv(&mut self) -> Value {
        match self.next_event().await {
            Event::Frame(v) => v,
            Event::Close(c, r) => panic!("connection closed ({c} {r}) while waiting for a frame"),
        }
    }

    /// Sends `v` with a fresh id and returns the reply carrying that id;
    /// other frames read meanwhile are kept for `recv`.
    pub async fn request(&mut self, mut v: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        v["id"] = json!(id);
        self.send(v).await;
        let mut stash = Vec::new();
        let reply = loop {
            let f = match self.pending.pop_front() {
                Some(f) => f,
                None => match self.read_event().await {
                    Event::Frame(f) => f,
                    Event::Close(c, r) => panic!("closed ({c} {r}) awaiting reply {id}"),
                },
            };
            if f["id"] == json!(id) {
                break f;
            }
            stash.push(f);
        };
        for f in stash.into_iter().rev() {
            self.pending.push_front(f);
        }
        reply
    }

    /// Like [`Client::request`], but gives up after `within` (for commands
    /// a rate-limited node may drop unanswered). Frames read meanwhile are
    /// kept for `recv`.
    pub async fn request_within(&mut self, mut v: Value, within: Duration) -> Option<Value> {
        self.next_id += 1;
        let id = self.next_id;
        v["id"] = json!(id);
        self.send(v).await;
        let deadline = tokio::time::Instant::now() + within;
        loop {
            // Giving up mid-frame would lose its start: meant for small
            // replies on an otherwise quiet connection.
            let f = match tokio::time::timeout_at(deadline, self.read_event()).await {
                Err(_) => return None,
                Ok(Event::Frame(f)) => f,
                Ok(Event::Close(c, r)) => panic!("closed ({c} {r}) awaiting reply {id}"),
            };
            if f["id"] == json!(id) {
                return Some(f);
            }
            self.pending.push_back(f);
        }
    }

    pub async fn subscribe(&mut self, channel: &str) -> Value {
        let r = self
            .request(json!({"op":"subscribe","channel":channel}))
            .await;
        assert_eq!(r["op"], "subscribed", "{r}");
        r
    }

    /// Next `message` frame.
    pub async fn message(&mut self) -> Value {
        loop {
            let v = self.recv().await;
            if v["op"] == "message" {
                return v;
            }
        }
    }

    /// Reads until the server closes; returns the close code and the
    /// `disconnect` notice if one came before it.
    pub async fn closed(&mut self) -> (u16, Option<Value>) {
        let mut notice = None;
        loop {
            match self.next_event().await {
                Event::Frame(v) if v["op"] == "disconnect" => notice = Some(v),
                Event::Frame(_) => {}
                Event::Close(c, _) => return (c, notice),
            }
        }
    }

    /// Asserts nothing arrives for `d`. The wait is the assertion: use it
    /// only where no later frame could reveal an unwanted one (an absence
    /// across channels); on one channel, a sentinel publication is exact.
    pub async fn silent_for(&mut self, d: Duration) {
        assert!(
            self.pending.is_empty(),
            "unexpected frames: {:?}",
            self.pending
        );
        if let Ok(f) = tokio::time::timeout(d, self.ws.read_frame()).await {
            let f = f.expect("read");
            panic!("unexpected frame: {}", String::from_utf8_lossy(&f.payload));
        }
    }
}
