//! Test harness: real `herald` processes, real `redis-server` processes, real
//! WebSocket and HTTP clients. Every server gets its own free loopback port
//! and is killed by PID when its handle drops.

#![allow(dead_code, unreachable_pub)]

use bytes::Bytes;
use fastwebsockets::{FragmentCollector, Frame, OpCode, Payload};
use http_body_util::Empty;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const TIMEOUT: Duration = Duration::from_secs(10);

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A `redis-server` on its own port, without persistence.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
}

impl Redis {
    pub fn start() -> Self {
        let mut r = Self {
            port: free_port(),
            child: None,
        };
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port, with an empty dataset.
    pub fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server not found: install it (scripts/test.sh does) to run these tests");
        self.child = Some(child);
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                use std::io::{Read, Write};
                let _ = s.write_all(b"PING\r\n");
                let mut buf = [0u8; 7];
                if s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n" {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "redis-server did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs one command (no argument may contain spaces); returns the first reply line.
    pub fn cmd(&self, args: &[&str]) -> String {
        use std::io::{BufRead, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).expect("redis");
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes()).expect("write");
        let mut line = String::new();
        std::io::BufReader::new(s)
            .read_line(&mut line)
            .expect("read");
        line.trim_end().to_owned()
    }

    /// Drops every key, as an operator's `FLUSHALL` would.
    pub fn flushall(&self) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).expect("redis");
        s.write_all(b"FLUSHALL\r\n").expect("write");
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).expect("read");
        assert_eq!(&buf, b"+OK\r\n");
    }

    /// SIGKILL, like a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A running `herald serve` process.
pub struct Gateway {
    pub public: SocketAddr,
    pub admin: SocketAddr,
    pub node: String,
    child: Option<Child>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Gateway {
    /// Starts a node on a free port with the given extra flags.
    pub fn start(args: &[&str]) -> Self {
        Self::start_env(args, &[])
    }

    pub fn start_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        // Only what the test means the node to see: the node rejects unknown
        // HERALD_* variables, and the caller's environment is none of its business.
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
        cmd.env_clear().arg("serve");
        if !args.contains(&"--listen") && !env.iter().any(|(k, _)| *k == "HERALD_LISTEN") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        cmd.args(args)
            .env("HERALD_LOG", "info,herald=debug")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn herald");
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let err_pipe = child.stderr.take().expect("stderr");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err_pipe).lines().map_while(Result::ok) {
                let mut s = sink.lock().expect("lock");
                s.push_str(&line);
                s.push('\n');
            }
        });
        let out = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(out).lines();
        let line = match lines.next() {
            Some(Ok(l)) => l,
            _ => {
                let _ = child.wait();
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "herald did not start; stderr:\n{}",
                    stderr.lock().expect("lock")
                );
            }
        };
        std::thread::spawn(move || for _ in lines {});
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .unwrap_or_else(|| panic!("no {k} in {line:?}"))
                .to_owned()
        };
        Self {
            public: field("public=").parse().expect("addr"),
            admin: field("admin=").parse().expect("addr"),
            node: field("node="),
            child: Some(child),
            stderr,
        }
    }

    /// Runs `herald serve` expecting it to refuse to start; returns its stderr.
    pub fn fail_to_start(args: &[&str], env: &[(&str, &str)]) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_herald"))
            .env_clear()
            .arg("serve")
            .args(args)
            .envs(env.iter().copied())
            .output()
            .expect("run herald");
        assert!(!out.status.success(), "herald should have refused to start");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    pub fn logs(&self) -> String {
        self.stderr.lock().expect("lock").clone()
    }

    /// Waits until the node's log contains `needle`.
    pub async fn log_contains(&self, needle: &str) -> bool {
        let deadline = Instant::now() + TIMEOUT;
        while !self.logs().contains(needle) {
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(ok.success());
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(st) = child.try_wait().expect("wait") {
                self.child = None;
                return st.code();
            }
            assert!(
                Instant::now() < deadline,
                "herald did not exit in {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub async fn client(&self) -> Client {
        Client::open(self.public).await
    }

    /// A client that has completed `connect`.
    pub async fn connected(&self) -> Client {
        let mut c = self.client().await;
        let r = c.request(json!({"op":"connect"})).await;
        assert_eq!(r["op"], "connected", "{r}");
        c
    }

    pub async fn publish(&self, channel: &str, event: &str, data: Value) -> (u16, Value) {
        http_post(
            self.admin,
            "/api/v1/publish",
            &json!({"channel": channel, "event": event, "data": data}).to_string(),
        )
        .await
    }

    pub async fn metric(&self, name: &str) -> f64 {
        let (_, text) = http_get(self.admin, "/metrics").await;
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| {
                l.split([' ', '{']).next() == Some(name) || l.starts_with(&format!("{name}{{"))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub async fn ready(&self) -> u16 {
        http_get(self.admin, "/readyz").await.0
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Polls `f` until it returns true or the timeout passes.
pub async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + TIMEOUT;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

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
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .expect("tcp connect");
        let req = hyper::Request::builder()
            .method("GET")
            .uri(format!("http://{addr}/ws"))
            .header("Host", addr.to_string())
            .header(hyper::header::UPGRADE, "websocket")
            .header(hyper::header::CONNECTION, "upgrade")
            .header(
                "Sec-WebSocket-Key",
                fastwebsockets::handshake::generate_key(),
            )
            .header("Sec-WebSocket-Version", "13")
            .body(Empty::<Bytes>::new())
            .expect("request");
        let (ws, _) = fastwebsockets::handshake::client(&SpawnExecutor, req, stream)
            .await
            .expect("websocket handshake");
        Self {
            ws: FragmentCollector::new(ws),
            next_id: 100,
            pending: VecDeque::new(),
            auto_pong: true,
        }
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

    /// Asserts nothing arrives for `d`.
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

/// Sends a raw HTTP/1.1 request (which should say `Connection: close`).
pub async fn http(addr: SocketAddr, req: String) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("http connect");
    s.write_all(req.as_bytes()).await.expect("http write");
    let mut buf = Vec::new();
    tokio::time::timeout(TIMEOUT, s.read_to_end(&mut buf))
        .await
        .expect("http timeout")
        .expect("http read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_owned())
        .unwrap_or_default();
    (status, body)
}

pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    )
    .await
}

pub async fn http_post_raw(addr: SocketAddr, path: &str, body: &str) -> (u16, String) {
    http(
        addr,
        format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .await
}

/// POST with `Authorization: Bearer KEY`.
pub async fn http_post_key(addr: SocketAddr, path: &str, body: &str, key: &str) -> (u16, Value) {
    let (status, body) = http(
        addr,
        format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .await;
    (
        status,
        serde_json::from_str(&body).unwrap_or_else(|_| panic!("JSON body, got {body:?}")),
    )
}

pub async fn http_post(addr: SocketAddr, path: &str, body: &str) -> (u16, Value) {
    let (status, body) = http_post_raw(addr, path, body).await;
    (
        status,
        serde_json::from_str(&body).unwrap_or_else(|_| panic!("JSON body, got {body:?}")),
    )
}
