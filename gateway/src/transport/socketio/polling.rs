//! Engine.IO v4 HTTP long-polling, and the upgrade from it to WebSocket.
//!
//! Part of the Socket.IO transport, beside the WebSocket carrier: the same
//! session core, the same [`SioInbound`] reading packets and [`SioFraming`]
//! writing them (as `\x1e`-joined payloads instead of WebSocket messages).
//! HTTP requests come and go, so each polling session is one task, the
//! **driver**, which owns what a WebSocket connection's reader and writer
//! own: the session core, its bounded outbound queue, its timers. Request
//! handlers only talk to it ([`Msg`]):
//! - `GET` waits for the queue (or a ping) and takes what is there, up to
//!   [`BATCH_BYTES`]; one at a time (a second concurrent GET closes the
//!   session, as the spec says);
//! - `POST` hands the driver a body of at most `max_payload` + 4 KiB, whose
//!   packets run as commands in order; one at a time as well;
//! - the upgrade: a WebSocket naming the sid sends `2probe` (answered
//!   `3probe`; pending and later GETs are answered `6` at once), then `5`:
//!   the driver hands the session over whole ([`Handover`]) and the
//!   WebSocket carrier runs it from there, with what is still queued.
//!
//! A client that stops polling misses its pings, so the pong deadline
//! closes its session, like a WebSocket client's. Sessions live in this
//! node's [`Polls`] registry under their sid, which starts with the node's
//! tag so that a load balancer can route every request of a session to the
//! node that holds it.

use super::packet::{self, Engine};
use super::payload::{self, Item};
use super::{SioFraming, SioInbound, halves};
use crate::hub::{Ending, SessionLink};
use crate::metrics::{PollMethod, PollOutcome, metrics};
use crate::publication::Wire;
use crate::session::timers::Timers;
use crate::session::{Opened, Session, SessionCtx};
use crate::transport::ws::read::{Message, MessageReader};
use crate::transport::ws::write::{Framing, push_frame};
use crate::transport::ws::{Inbound, OpenedParts};
use bytes::Bytes;
use fastwebsockets::OpCode;
use herald_proto::CloseCode;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

/// Most bytes of queued items one GET answer carries.
const BATCH_BYTES: usize = 64 * 1024;

/// An Engine.IO error a request gets (HTTP 400, `{"code","message"}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EngineError {
    TransportUnknown,
    UnknownSid,
    BadRequest,
    UnsupportedVersion,
}

impl EngineError {
    pub(crate) fn code(self) -> u8 {
        match self {
            Self::TransportUnknown => 0,
            Self::UnknownSid => 1,
            Self::BadRequest => 3,
            Self::UnsupportedVersion => 5,
        }
    }

    pub(crate) fn message(self) -> &'static str {
        match self {
            Self::TransportUnknown => "Transport unknown",
            Self::UnknownSid => "Session ID unknown",
            Self::BadRequest => "Bad request",
            Self::UnsupportedVersion => "Unsupported protocol version",
        }
    }
}

/// What a polling request gets.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// 200, a payload (or `ok` for a POST).
    Body(Vec<u8>),
    /// 400, an Engine.IO error.
    Error(EngineError),
    /// 413: a POST body over the cap (the session is closed).
    TooLarge,
}

/// This node's polling sessions, by sid.
pub(crate) struct Polls {
    /// Starts every sid (then `.`): names this node to a load balancer.
    tag: String,
    map: Mutex<HashMap<Box<str>, Arc<Handle>>>,
}

/// What request handlers hold of a polling session.
pub(crate) struct Handle {
    sid: Box<str>,
    link: Arc<SessionLink>,
    tx: mpsc::Sender<Msg>,
    /// A GET is waiting for the driver's answer.
    get_busy: AtomicBool,
    /// A POST is being read or run.
    post_busy: AtomicBool,
    /// A WebSocket has claimed the session (one upgrade at a time).
    upgrading: AtomicBool,
}

/// A request handler's message to the driver.
enum Msg {
    /// A GET: answer it with a payload.
    Get(oneshot::Sender<Vec<u8>>),
    /// A POST body: run its packets; say whether it was readable.
    Post(Bytes, oneshot::Sender<bool>),
    /// A WebSocket answered the probe (true), or the upgrade failed (false).
    Probe(bool),
    /// The client sent `5` on the WebSocket: hand the session over.
    Upgrade(oneshot::Sender<Handover>),
}

/// A polling session, handed to the WebSocket that takes it over.
pub(crate) struct Handover {
    opened: Opened,
    framing: SioFraming,
    inbound: SioInbound,
}

/// The node tag a sid starts with: the node id's characters that a URL
/// query and an HAProxy rule take as they are (at most 32).
pub(crate) fn node_tag(node_id: &str) -> String {
    node_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(32)
        .collect()
}

impl Polls {
    pub(crate) fn new(node_id: &str) -> Arc<Self> {
        Arc::new(Self {
            tag: node_tag(node_id),
            map: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Arc<Handle>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, sid: &str) -> Option<Arc<Handle>> {
        self.lock().get(sid).cloned()
    }

    /// Whether this node holds the polling session `sid`.
    pub(crate) fn holds(&self, sid: &str) -> bool {
        self.lock().contains_key(sid)
    }

    /// The session `sid` names, for a WebSocket about to take it over.
    pub(crate) fn claim(&self, sid: &str) -> Result<Arc<Handle>, EngineError> {
        let h = self.get(sid).ok_or(EngineError::UnknownSid)?;
        if h.upgrading.swap(true, Ordering::AcqRel) {
            return Err(EngineError::BadRequest);
        }
        Ok(h)
    }

    /// Opens a polling session: the open packet to answer with, and the
    /// driver to spawn (the caller tracks it, like a WebSocket session).
    pub(crate) fn open(
        self: &Arc<Self>,
        ctx: Arc<SessionCtx>,
        headers: crate::hooks::ClientHeaders,
    ) -> (Vec<u8>, impl Future<Output = ()> + Send + 'static) {
        let opened = Session::open_with(Arc::clone(&ctx), Wire::SocketIo, headers);
        let suffix: String = std::iter::repeat_with(fastrand::alphanumeric)
            .take(20)
            .collect();
        let sid = format!("{}.{suffix}", self.tag);
        let (framing, mut inbound) = halves(true);
        let (tx, msgs) = mpsc::channel(4);
        let handle = Arc::new(Handle {
            sid: sid.as_str().into(),
            link: Arc::clone(&opened.link),
            tx,
            get_busy: AtomicBool::new(false),
            post_busy: AtomicBool::new(false),
            upgrading: AtomicBool::new(false),
        });
        self.lock().insert(sid.as_str().into(), handle);
        let open = inbound.open(&sid, true, &ctx);
        metrics().polling(PollMethod::Open, PollOutcome::Ok);
        let driver = Driver {
            polls: Arc::clone(self),
            sid: sid.into(),
            ctx,
            msgs,
            framing,
            inbound,
            out: Vec::new(),
            get: None,
            upgrading: false,
        };
        (open.into_bytes(), driver.run(opened))
    }

    /// A GET on `sid`: waits for packets to send.
    pub(crate) async fn poll(&self, sid: &str) -> Answer {
        let Some(h) = self.get(sid) else {
            tracing::debug!(sid, "polling GET for a session this node does not hold");
            metrics().polling(PollMethod::Get, PollOutcome::UnknownSid);
            return Answer::Error(EngineError::UnknownSid);
        };
        if h.get_busy.swap(true, Ordering::AcqRel) {
            metrics().polling(PollMethod::Get, PollOutcome::Overlap);
            tracing::debug!(sid, "concurrent polling GETs: closing the session");
            h.link
                .close_with(CloseCode::ProtocolError, "concurrent polling requests");
            return Answer::Error(EngineError::BadRequest);
        }
        // Cleared by the driver when it answers, or here if this request
        // goes away first (the client may poll again).
        let guard = Busy(&h.get_busy);
        let (tx, rx) = oneshot::channel();
        if h.tx.send(Msg::Get(tx)).await.is_err() {
            metrics().polling(PollMethod::Get, PollOutcome::UnknownSid);
            return Answer::Error(EngineError::UnknownSid);
        }
        let answer = rx.await;
        drop(guard);
        match answer {
            Ok(body) => {
                metrics().polling(PollMethod::Get, PollOutcome::Ok);
                Answer::Body(body)
            }
            Err(_) => {
                metrics().polling(PollMethod::Get, PollOutcome::UnknownSid);
                Answer::Error(EngineError::UnknownSid)
            }
        }
    }

    /// A POST on `sid`; `body` reads it, capped at `limit` bytes (None: over
    /// the cap, or unreadable).
    pub(crate) async fn post<B>(&self, sid: &str, body: B) -> Answer
    where
        B: Future<Output = Option<Bytes>>,
    {
        let Some(h) = self.get(sid) else {
            tracing::debug!(sid, "polling POST for a session this node does not hold");
            metrics().polling(PollMethod::Post, PollOutcome::UnknownSid);
            return Answer::Error(EngineError::UnknownSid);
        };
        if h.post_busy.swap(true, Ordering::AcqRel) {
            metrics().polling(PollMethod::Post, PollOutcome::Overlap);
            tracing::debug!(sid, "overlapping polling POSTs: closing the session");
            h.link
                .close_with(CloseCode::ProtocolError, "overlapping polling requests");
            return Answer::Error(EngineError::BadRequest);
        }
        let _guard = Busy(&h.post_busy);
        let Some(body) = body.await else {
            metrics().polling(PollMethod::Post, PollOutcome::TooLarge);
            tracing::debug!(sid, "polling POST over the size cap: closing the session");
            h.link.close(CloseCode::MessageTooLarge);
            return Answer::TooLarge;
        };
        let (tx, rx) = oneshot::channel();
        if h.tx.send(Msg::Post(body, tx)).await.is_err() {
            metrics().polling(PollMethod::Post, PollOutcome::UnknownSid);
            return Answer::Error(EngineError::UnknownSid);
        }
        match rx.await {
            Ok(true) => {
                metrics().polling(PollMethod::Post, PollOutcome::Ok);
                Answer::Body(b"ok".to_vec())
            }
            Ok(false) => {
                metrics().polling(PollMethod::Post, PollOutcome::BadRequest);
                Answer::Error(EngineError::BadRequest)
            }
            Err(_) => {
                metrics().polling(PollMethod::Post, PollOutcome::UnknownSid);
                Answer::Error(EngineError::UnknownSid)
            }
        }
    }

    /// Polling sessions on this node now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

impl Handle {
    /// The WebSocket that claimed the session will not take it over.
    pub(crate) fn abandon(&self) {
        metrics().upgrade(false);
        self.upgrading.store(false, Ordering::Release);
        let _ = self.tx.try_send(Msg::Probe(false));
    }
}

/// Clears a request's busy flag when the request ends, however it ends.
struct Busy<'a>(&'a AtomicBool);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// The task that runs one polling session.
struct Driver {
    polls: Arc<Polls>,
    sid: Box<str>,
    ctx: Arc<SessionCtx>,
    msgs: mpsc::Receiver<Msg>,
    framing: SioFraming,
    inbound: SioInbound,
    /// The payload the next GET answer carries.
    out: Vec<u8>,
    /// The GET waiting for an answer.
    get: Option<oneshot::Sender<Vec<u8>>>,
    /// A WebSocket answered the probe: GETs are answered at once.
    upgrading: bool,
}

impl Driver {
    async fn run(mut self, opened: Opened) {
        let Opened {
            mut session,
            link,
            shared,
            mut rx,
        } = opened;
        let parts = OpenedParts {
            link: Arc::clone(&link),
            shared: Arc::clone(&shared),
        };
        let mut timers = Timers::new(
            Arc::clone(&self.ctx),
            Arc::clone(&shared),
            Arc::clone(&link),
        );
        let ctx = Arc::clone(&self.ctx);
        let closed = link.closed().wait();
        let shutdown = ctx.shutdown.wait();
        tokio::pin!(closed, shutdown);
        loop {
            if self.get.is_some() && (!self.out.is_empty() || self.upgrading) {
                self.answer();
            }
            tokio::select! {
                biased;
                _ = &mut closed => break,
                _ = &mut shutdown, if !timers.draining() => timers.drain(),
                msg = self.msgs.recv() => match msg {
                    None => break,
                    Some(Msg::Get(tx)) => {
                        if let Some(old) = self.get.replace(tx) {
                            // Its request went away unanswered.
                            drop(old);
                        }
                    }
                    Some(Msg::Post(body, done)) => {
                        let ok = self.post(&mut session, &parts, &body).await;
                        let _ = done.send(ok);
                    }
                    Some(Msg::Probe(ok)) => self.upgrading = ok,
                    Some(Msg::Upgrade(tx)) => {
                        // Queued items stay queued for the WebSocket; what
                        // `out` holds without a GET waiting is pings only.
                        self.upgrading = true;
                        if self.get.is_some() {
                            self.answer();
                        }
                        self.polls.lock().remove(&self.sid);
                        let parts = Handover {
                            opened: Opened { session, link: Arc::clone(&link), shared, rx },
                            framing: self.framing,
                            inbound: self.inbound,
                        };
                        if let Err(back) = tx.send(parts) {
                            // The WebSocket went away meanwhile.
                            back.opened.link.finish(Ending::Gone);
                            back.opened.session.close().await;
                        }
                        return;
                    }
                },
                due = timers.ping_due() => self.framing.ping(&mut self.out, due.token.as_deref()),
                first = rx.recv(), if self.get.is_some() => {
                    let mut taken = first.size();
                    self.framing.item(&mut self.out, &first);
                    while self.out.len() < BATCH_BYTES {
                        let Some(m) = rx.try_recv() else { break };
                        taken += m.size();
                        self.framing.item(&mut self.out, &m);
                    }
                    link.taken(taken);
                }
            }
        }
        self.finish(&link, &mut rx).await;
        session.close().await;
    }

    /// Answers the waiting GET with `out` (a noop when empty).
    fn answer(&mut self) {
        let Some(get) = self.get.take() else { return };
        if self.out.is_empty() {
            payload::push(&mut self.out, b"6");
        }
        if let Err(body) = get.send(std::mem::take(&mut self.out)) {
            // Its request went away: the next GET takes the payload.
            self.out = body;
        }
    }

    /// Runs a POST body's packets in order; false when it is unreadable
    /// (the session is closed).
    async fn post(&mut self, session: &mut Session, parts: &OpenedParts, body: &[u8]) -> bool {
        let items = match std::str::from_utf8(body)
            .map_err(|_| packet::PacketError("polling payload is not valid UTF-8"))
            .and_then(payload::decode)
        {
            Ok(items) => items,
            Err(e) => {
                tracing::debug!(sid = &*self.sid, why = e.0, "unreadable polling payload");
                parts.link.close_with(CloseCode::ProtocolError, e.0);
                return false;
            }
        };
        for item in items {
            tokio::task::coop::consume_budget().await;
            if parts.link.closed().is_raised() {
                break;
            }
            match item {
                Item::Text(t) => {
                    if matches!(packet::decode_engine(t), Ok(Engine::Ping(_))) {
                        // A probe belongs on the new transport, not here.
                        continue;
                    }
                    if self.inbound.text(session, parts, t).await {
                        return false;
                    }
                }
                Item::Binary => self.inbound.binary(session),
            }
        }
        true
    }

    /// The session ended: the waiting GET (or the next one, within
    /// `close_timeout`) gets what is left, then the close packet.
    async fn finish(mut self, link: &SessionLink, rx: &mut crate::outbox::Outbox) {
        if let Some(Ending::Close { code, reason }) = link.ending() {
            if code != CloseCode::SlowConsumer && self.get.is_some() {
                while self.out.len() < BATCH_BYTES {
                    let Some(m) = rx.try_recv() else { break };
                    self.framing.item(&mut self.out, &m);
                    link.taken(m.size());
                }
            }
            metrics().disconnect(code);
            tracing::debug!(
                sid = &*self.sid,
                code = code.code(),
                reason,
                "server closing polling session"
            );
            self.framing.closing(&mut self.out, code, reason);
        }
        payload::push(&mut self.out, b"1");
        let deadline = tokio::time::Instant::now() + self.ctx.cfg.close_timeout;
        loop {
            if self.get.is_some() {
                self.upgrading = false;
                self.answer();
                if self.out.is_empty() {
                    break;
                }
            }
            match tokio::time::timeout_at(deadline, self.msgs.recv()).await {
                Ok(Some(Msg::Get(tx))) => self.get = Some(tx),
                // A POST (or an upgrade) now finds no session.
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        // From now on requests for this sid get "Session ID unknown".
        self.polls.lock().remove(&self.sid);
        self.msgs.close();
    }
}

/// Reads one whole message (and what came after it) within `wait`.
async fn read_one<S: AsyncRead + Unpin>(
    io: &mut S,
    max: usize,
    wait: std::time::Duration,
) -> Option<(Message, Bytes)> {
    let mut reader = MessageReader::new(io, max);
    let msg = tokio::time::timeout(wait, reader.next()).await.ok()?.ok()?;
    Some((msg, reader.into_leftover()))
}

fn is_text(msg: &Message, want: &str) -> bool {
    matches!(msg, Message::Text(t) if &t[..] == want.as_bytes())
}

/// Runs the upgrade of `handle`'s polling session to the WebSocket `io`:
/// `2probe` → `3probe`, then `5`, then the session on the WebSocket.
pub(crate) async fn upgrade<S>(mut io: S, ctx: Arc<SessionCtx>, handle: Arc<Handle>)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let wait = ctx.cfg.connect_timeout;
    let max = ctx.cfg.max_frame();
    let failed = |why: &'static str| {
        tracing::debug!(sid = &*handle.sid, why, "Engine.IO upgrade failed");
        handle.abandon();
    };
    let Some((probe, rest)) = read_one(&mut io, max, wait).await else {
        return failed("no probe");
    };
    if !is_text(&probe, "2probe") {
        return failed("the first message is not the probe");
    }
    let mut buf = Vec::new();
    push_frame(&mut buf, OpCode::Text, b"3probe");
    if io.write_all(&buf).await.is_err() {
        return failed("cannot answer the probe");
    }
    if handle.tx.send(Msg::Probe(true)).await.is_err() {
        return failed("the polling session ended");
    }
    let mut io = crate::proxy_protocol::Rewind::new(rest, io);
    let Some((upgrade, rest)) = read_one(&mut io, max, wait).await else {
        return failed("no upgrade packet");
    };
    if !is_text(&upgrade, "5") {
        return failed("the message after the probe is not the upgrade packet");
    }
    let (tx, rx) = oneshot::channel();
    if handle.tx.send(Msg::Upgrade(tx)).await.is_err() {
        return failed("the polling session ended");
    }
    let Ok(Handover {
        opened,
        mut framing,
        inbound,
    }) = rx.await
    else {
        return failed("the polling session ended");
    };
    metrics().upgrade(true);
    framing.polling = false;
    let io = crate::proxy_protocol::Rewind::new(rest, io);
    super::super::ws::serve_opened(io, ctx, opened, framing, inbound).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SessionConfig;
    use crate::session::tests::ctx_with;
    use crate::transport::ws::tests::{client, send};
    use std::time::Duration;

    fn start(cfg: SessionConfig) -> (Arc<Polls>, Arc<SessionCtx>, String) {
        let ctx = ctx_with(cfg, None);
        let polls = Polls::new("node 1/é");
        let (open, driver) = polls.open(Arc::clone(&ctx), Default::default());
        tokio::spawn(driver);
        let open = String::from_utf8(open).expect("utf8");
        assert!(open.contains(r#""upgrades":["websocket"]"#), "{open}");
        let sid = open
            .split(r#""sid":""#)
            .nth(1)
            .and_then(|s| s.split('"').next())
            .expect("sid")
            .to_owned();
        assert!(sid.starts_with("node1.") && sid.len() == 26, "{sid}");
        (polls, ctx, sid)
    }

    async fn get(polls: &Polls, sid: &str) -> String {
        match polls.poll(sid).await {
            Answer::Body(b) => String::from_utf8(b).expect("utf8"),
            other => panic!("GET: {other:?}"),
        }
    }

    async fn post(polls: &Polls, sid: &str, body: &str) -> Answer {
        let body = Bytes::copy_from_slice(body.as_bytes());
        polls.post(sid, async move { Some(body) }).await
    }

    #[tokio::test]
    async fn packets_in_and_out_as_payloads() {
        let (polls, _ctx, sid) = start(SessionConfig::default());
        assert_eq!(
            post(&polls, &sid, "40\u{1e}40/c,").await,
            Answer::Body(b"ok".to_vec())
        );
        let out = get(&polls, &sid).await;
        let packets: Vec<&str> = out.split('\u{1e}').collect();
        assert_eq!(packets.len(), 2, "{out}");
        assert!(packets[0].starts_with(r#"40{"sid":""#), "{out}");
        assert!(packets[1].starts_with(r#"40/c,{"sid":""#), "{out}");
        // A GET waits for what comes next.
        let waiting = {
            let polls = Arc::clone(&polls);
            let sid = sid.clone();
            tokio::spawn(async move { get(&polls, &sid).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        post(&polls, &sid, r#"42/c,1["ev",1]"#).await;
        let out = waiting.await.expect("GET");
        assert!(out.starts_with(r#"42/c,["ev",1,""#), "{out}");
        assert!(out.ends_with("\u{1e}43/c,1[{\"offset\":1}]"), "{out}");
        assert_eq!(
            polls.poll("nope").await,
            Answer::Error(EngineError::UnknownSid)
        );
    }

    #[tokio::test]
    async fn a_second_get_closes_the_session() {
        let (polls, _ctx, sid) = start(SessionConfig::default());
        post(&polls, &sid, "40").await;
        get(&polls, &sid).await;
        let first = {
            let polls = Arc::clone(&polls);
            let sid = sid.clone();
            tokio::spawn(async move { get(&polls, &sid).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            polls.poll(&sid).await,
            Answer::Error(EngineError::BadRequest)
        );
        let last = first.await.expect("GET");
        assert!(last.ends_with("\u{1e}1"), "{last}");
        assert_eq!(
            polls.poll(&sid).await,
            Answer::Error(EngineError::UnknownSid)
        );
        assert_eq!(polls.len(), 0);
    }

    #[tokio::test]
    async fn a_client_that_stops_polling_misses_its_ping_and_is_closed() {
        let cfg = SessionConfig {
            ping_interval: Duration::from_millis(100),
            pong_timeout: Duration::from_millis(50),
            close_timeout: Duration::from_millis(50),
            ..Default::default()
        };
        let (polls, _ctx, sid) = start(cfg);
        post(&polls, &sid, "40").await;
        get(&polls, &sid).await;
        // One ping answered...
        assert_eq!(get(&polls, &sid).await, "2");
        post(&polls, &sid, "3").await;
        // ...then no GET: the next ping never leaves, and the session ends.
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(
            polls.poll(&sid).await,
            Answer::Error(EngineError::UnknownSid)
        );
        assert_eq!(polls.len(), 0);
    }

    #[tokio::test]
    async fn oversized_and_unreadable_posts_close_the_session() {
        let (polls, _ctx, sid) = start(SessionConfig::default());
        assert_eq!(polls.post(&sid, async { None }).await, Answer::TooLarge);
        assert!(get(&polls, &sid).await.ends_with('1'));
        let (polls, _ctx, sid) = start(SessionConfig::default());
        assert_eq!(
            post(&polls, &sid, "40\u{1e}").await,
            Answer::Error(EngineError::BadRequest)
        );
        assert!(get(&polls, &sid).await.ends_with('1'));
    }

    #[tokio::test]
    async fn the_upgrade_moves_the_session_to_a_websocket_losing_nothing() {
        let (polls, ctx, sid) = start(SessionConfig::default());
        post(&polls, &sid, "40\u{1e}40/c,").await;
        get(&polls, &sid).await;
        // Queued while polling, not yet taken by a GET.
        post(&polls, &sid, r#"42/c,1["ev",1]"#).await;
        let handle = polls.claim(&sid).expect("claim");
        assert!(polls.claim(&sid).is_err(), "one upgrade at a time");
        let mut ws = client(|io| upgrade(io, Arc::clone(&ctx), handle));
        send(&mut ws, "2probe").await;
        let recv =
            |f: fastwebsockets::Frame<'_>| String::from_utf8(f.payload.to_vec()).expect("utf8");
        assert_eq!(recv(ws.read_frame().await.expect("3probe")), "3probe");
        // A GET meanwhile is answered at once with a noop.
        assert_eq!(get(&polls, &sid).await, "6");
        send(&mut ws, "5").await;
        let a = recv(ws.read_frame().await.expect("event"));
        assert!(a.starts_with(r#"42/c,["ev",1,""#), "{a}");
        let b = recv(ws.read_frame().await.expect("ack"));
        assert_eq!(b, r#"43/c,1[{"offset":1}]"#);
        // The session goes on over the WebSocket; the sid no longer polls.
        send(&mut ws, r#"42/c,2["ev",2]"#).await;
        let c = recv(ws.read_frame().await.expect("event"));
        assert!(c.starts_with(r#"42/c,["ev",2,""#), "{c}");
        assert_eq!(
            polls.poll(&sid).await,
            Answer::Error(EngineError::UnknownSid)
        );
    }
}
