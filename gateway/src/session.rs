//! Session: one WebSocket connection, speaking protocol v1.
//!
//! Top of the data flow. Each connection is a task pair:
//! - the **reader** (this task) decodes frames and runs commands against
//!   `node`, one at a time, in arrival order;
//! - the **writer** owns the socket's write half and the session's bounded
//!   outbound queue, batches queued frames into few writes, sends heartbeats,
//!   enforces the connect and pong deadlines, and writes the final
//!   `disconnect` + close frame whatever the reason.
//!
//! `read_frame` is not cancel-safe, so it is never raced in a `select!`: the
//! read half is wrapped in [`CancelRead`], which turns a cancellation into an
//! I/O error that `read_frame` returns normally.

use crate::auth::{Auth, AuthError, Identity, UserConnections, UserSlot};
use crate::broker::Position;
use crate::config::SessionConfig;
use crate::hub::{Ending, SessionLink, Signal};
use crate::metrics::metrics;
use crate::node::{Node, Source};
use crate::recovery::{self, Refusal};
use crate::token::{self, Tokens};
use crate::wsread::{FrameReader, ReadError};
use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Payload, WebSocket};
use herald_proto::{CloseCode, Command, ErrorCode, Reply, Since, validate_channel, validate_event};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf, WriteHalf};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tracing::Instrument;

type Io = TokioIo<Upgraded>;

/// What every session of a node shares.
pub struct SessionCtx {
    pub node: Arc<Node>,
    pub cfg: SessionConfig,
    /// Raised on SIGTERM/SIGINT: sessions then leave within `drain`.
    pub shutdown: Arc<Signal>,
    pub tokens: Arc<Tokens>,
    pub drain: Duration,
    /// Connect authentication; `None` in open mode.
    pub auth: Option<Arc<Auth>>,
    /// Per-user connection counts on this node.
    pub users: Arc<UserConnections>,
}

/// Session id, user id, channels, and the channels a subscribe token granted.
type TokenClaims = (String, String, Vec<String>, Vec<String>);

/// Flags the reader sets and the writer reads.
#[derive(Default)]
struct Shared {
    connected: AtomicBool,
    pong_seen: AtomicBool,
    /// Payload of the latest WebSocket-level ping, for the writer to answer
    /// (a slot, not a queue: only the newest ping needs a pong).
    ws_pong: std::sync::Mutex<Option<Bytes>>,
    ws_pong_ready: tokio::sync::Notify,
    /// What the latest reconnect token vouched for (session id, user,
    /// channels), so the writer can push a fresh one before it expires.
    token_claims: std::sync::Mutex<Option<TokenClaims>>,
    /// `exp` of the connection token (UNIX seconds), 0 = none; `refresh` moves it.
    expires_at: std::sync::atomic::AtomicU64,
    /// When a token was last issued, seconds since the UNIX epoch.
    token_issued: std::sync::atomic::AtomicU64,
}

/// Largest batch of queued frames coalesced into one write.
const BATCH_BYTES: usize = 64 * 1024;

/// Runs one connection to its end.
pub async fn run(ws: WebSocket<Io>, ctx: Arc<SessionCtx>) {
    let m = metrics();
    m.connections.inc();
    m.accepted.inc();
    let id = fastrand::u64(..);
    // No span around the session: entering one on every poll of every
    // writer costs ~3% at high fan-out (measured); events carry the id.
    {
        let (r, w) = tokio::io::split(ws.into_inner());
        let read_stop = CancellationToken::new();
        let mut socket = CancelRead::new(r, read_stop.clone());
        // Borrowed, so the raw socket can still be drained after the frame reader gives up.
        let mut reader = FrameReader::new(&mut socket, ctx.cfg.max_frame());
        let (tx, rx) = mpsc::channel(ctx.cfg.outbound_queue);
        let link = Arc::new(SessionLink::new(id, tx));
        let shared = Arc::new(Shared::default());
        let writer = tokio::spawn(
            Writer {
                w,
                rx,
                link: Arc::clone(&link),
                shared: Arc::clone(&shared),
                ctx: Arc::clone(&ctx),
                read_stop: read_stop.clone(),
                buf: Vec::new(),
                unreported: 0,
                batches: 0,
            }
            .run(),
        );
        let mut r = Reader {
            link: Arc::clone(&link),
            shared,
            ctx: Arc::clone(&ctx),
            subs: HashSet::new(),
            session: format!("{id:016x}"),
            identity: Identity::default(),
            granted: HashSet::new(),
            _slot: None,
            broken: false,
            bucket: Bucket {
                tokens: f64::from(ctx.cfg.command_burst),
                last: Instant::now(),
                refused: 0,
            },
        };
        r.run(&mut reader).await;
        drop(reader);
        if r.broken && matches!(link.ending(), Some(Ending::Close { .. })) {
            // Keep reading (and discarding) until the client closes or the
            // writer's close timeout passes: dropping a socket with unread
            // input resets it, and the client could lose our close frame.
            let mut scratch = vec![0u8; 4096];
            while let Ok(n) = socket.read(&mut scratch).await {
                if n == 0 {
                    break;
                }
            }
        }
        read_stop.cancel();
        link.finish(Ending::Gone);
        let _ = writer.await;
        for ch in r.subs.drain() {
            ctx.node.unsubscribe(&ch, id).await;
        }
        let code = match link.ending() {
            Some(Ending::Close { code, .. }) => Cow::Owned(code.code().to_string()),
            Some(Ending::ClientClosed) => Cow::Borrowed("client"),
            Some(Ending::Gone) | None => Cow::Borrowed("gone"),
        };
        m.closed.with_label_values(&[&*code]).inc();
        tracing::debug!(session = %format_args!("{id:016x}"), ending = ?link.ending(), "session ended");
    }
    m.connections.dec();
}

struct Reader {
    link: Arc<SessionLink>,
    shared: Arc<Shared>,
    ctx: Arc<SessionCtx>,
    subs: HashSet<Box<str>>,
    session: String,
    /// Who the connection token says this is (anonymous in open mode).
    identity: Identity,
    /// Subscriptions a subscribe token granted (rules alone would refuse them).
    granted: HashSet<Box<str>>,
    /// This connection's place in its user's per-node limit.
    _slot: Option<UserSlot>,
    /// The byte stream is no longer parseable as frames (protocol error, oversized frame).
    broken: bool,
    bucket: Bucket,
}

/// Token bucket for client commands: `rate` per second, up to `burst` saved.
struct Bucket {
    tokens: f64,
    last: Instant,
    /// Commands refused since the client last let its bucket refill to half;
    /// persistent flooding ends the connection.
    refused: u32,
}

/// Refusals without a pause answered with `rate_limited`; later ones are dropped unanswered.
const QUIET_AFTER: u32 = 100;

/// Refusals without a pause after which a flooding connection is closed (4502).
const ABUSE_LIMIT: u32 = 1000;

impl Reader {
    async fn run(&mut self, ws: &mut FrameReader<&mut CancelRead<tokio::io::ReadHalf<Io>>>) {
        let max_frame = self.ctx.cfg.max_frame();
        let mut fragments: Option<Vec<u8>> = None;
        // Bytes of a fragmented binary message being skipped (0: none).
        let mut skipping_binary = 0usize;
        loop {
            // Frames parsed from an already-filled buffer never touch a
            // tokio resource, so without this a flooding client's reader
            // could hold a worker thread for a whole buffer of commands.
            tokio::task::coop::consume_budget().await;
            let frame = match ws.read_frame().await {
                Ok(f) => f,
                Err(e) => {
                    self.read_error(e);
                    self.broken = true;
                    return;
                }
            };
            if self.link.closed().is_raised() {
                // Closing: keep draining the socket (so our close frame is not
                // lost to a reset) until the client's close or EOF.
                if frame.opcode == OpCode::Close {
                    return;
                }
                continue;
            }
            match frame.opcode {
                OpCode::Text if frame.fin => match std::str::from_utf8(&frame.payload) {
                    Ok(text) => self.handle(text).await,
                    Err(_) => return self.protocol_error("text frame is not valid UTF-8"),
                },
                OpCode::Text => fragments = Some(frame.payload.to_vec()),
                OpCode::Continuation if skipping_binary > 0 => {
                    // Rest of a refused binary message: count it, drop it.
                    skipping_binary += frame.payload.len();
                    if skipping_binary > max_frame {
                        self.link.close(CloseCode::MessageTooLarge);
                        self.broken = true;
                        return;
                    }
                    if frame.fin {
                        skipping_binary = 0;
                    }
                }
                OpCode::Continuation => {
                    let Some(buf) = fragments.as_mut() else {
                        return self.protocol_error("continuation frame without a message");
                    };
                    // fastwebsockets caps single frames only; cap the whole message here.
                    if buf.len() + frame.payload.len() > max_frame {
                        self.link.close(CloseCode::MessageTooLarge);
                        self.broken = true;
                        return;
                    }
                    buf.extend_from_slice(&frame.payload);
                    if frame.fin {
                        let buf = fragments.take().unwrap_or_default();
                        match std::str::from_utf8(&buf) {
                            Ok(text) => self.handle(text).await,
                            Err(_) => {
                                return self.protocol_error("text message is not valid UTF-8");
                            }
                        }
                    }
                }
                OpCode::Binary => {
                    if !frame.fin {
                        skipping_binary = frame.payload.len().max(1);
                    }
                    self.error(
                        None,
                        ErrorCode::BadRequest,
                        "binary frames are not supported: send JSON text frames",
                        None,
                    )
                }
                OpCode::Close => {
                    self.link.finish(Ending::ClientClosed);
                    return;
                }
                OpCode::Ping => {
                    // Answered by the writer; only the latest ping needs a pong.
                    *self
                        .shared
                        .ws_pong
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()) = Some(frame.payload.to_vec().into());
                    self.shared.ws_pong_ready.notify_one();
                }
                OpCode::Pong => {}
            }
        }
    }

    fn read_error(&self, e: ReadError) {
        match e {
            ReadError::TooLarge => {
                self.link.close(CloseCode::MessageTooLarge);
            }
            ReadError::Io(_) | ReadError::Eof => {
                self.link.finish(Ending::Gone);
            }
            ReadError::Protocol(why) => {
                tracing::debug!(why, "WebSocket protocol violation");
                self.link.close_with(CloseCode::ProtocolError, why);
            }
        }
    }

    fn protocol_error(&mut self, why: &'static str) {
        self.broken = true;
        tracing::debug!(why, "closing on protocol error");
        self.link.close_with(CloseCode::ProtocolError, why);
    }

    fn reply(&self, reply: &Reply<'_>) {
        self.link.send(Bytes::from(reply.to_vec()));
    }

    fn error(&self, id: Option<u64>, code: ErrorCode, message: &str, channel: Option<&str>) {
        metrics()
            .client_errors
            .with_label_values(&[code.as_str()])
            .inc();
        self.reply(&Reply::Error {
            id,
            code,
            message,
            channel,
        });
    }

    /// Takes one command token; false when the connection is over its rate.
    fn admit(&mut self) -> bool {
        let cfg = &self.ctx.cfg;
        let now = Instant::now();
        let b = &mut self.bucket;
        let refill = now.duration_since(b.last).as_secs_f64() * f64::from(cfg.command_rate);
        b.tokens = (b.tokens + refill).min(f64::from(cfg.command_burst));
        b.last = now;
        if b.tokens >= 1.0 {
            // Only a client that slowed down enough to refill half its burst
            // is forgiven: a sustained flood, admitted a trickle at a time,
            // keeps counting towards the close.
            if b.tokens >= f64::from(cfg.command_burst) / 2.0 {
                b.refused = 0;
            }
            b.tokens -= 1.0;
            true
        } else {
            b.refused += 1;
            false
        }
    }

    async fn handle(&mut self, text: &str) {
        if !self.admit() {
            if self.bucket.refused >= ABUSE_LIMIT {
                tracing::info!(session = %self.session, "closing a connection that keeps flooding");
                self.link
                    .close_with(CloseCode::ProtocolError, "command flood");
                return;
            }
            if self.bucket.refused > QUIET_AFTER {
                // Answering every command of a flood costs the node as much
                // as the flood; past this point refusals are only counted.
                metrics()
                    .client_errors
                    .with_label_values(&["rate_limited_silent"])
                    .inc();
                return;
            }
            let msg = format!(
                "more than {} commands per second; slow down",
                self.ctx.cfg.command_rate
            );
            let id = Command::decode(text).ok().and_then(|c| c.id);
            return self.error(id, ErrorCode::RateLimited, &msg, None);
        }
        let cmd = match Command::decode(text) {
            Ok(c) => c,
            Err((id, e)) => return self.error(id, ErrorCode::BadRequest, &e.0, None),
        };
        let id = cmd.id;
        let connected = self.shared.connected.load(Ordering::Acquire);
        match cmd.op.as_ref() {
            "ping" => self.reply(&Reply::Pong { id }),
            "pong" => self.shared.pong_seen.store(true, Ordering::Release),
            "connect" if connected => {
                self.error(id, ErrorCode::BadRequest, "already connected", None)
            }
            "connect" => {
                let span = tracing::info_span!(
                    "connect",
                    session = %self.session,
                    user = tracing::field::Empty,
                    resume = cmd.resume.is_some()
                );
                let _entered = span.enter();
                if !self.authenticate(id, cmd.token.as_deref()) {
                    return;
                }
                span.record("user", self.identity.user.as_str());
                self.shared.connected.store(true, Ordering::Release);
                drop(_entered);
                match cmd.resume.as_deref() {
                    Some(t) => {
                        // Boxed, like the other commands below: their state
                        // lives only while they run instead of enlarging
                        // every idle session's task (measured: ~0.6 KiB).
                        Box::pin(self.resume(id, t, cmd.positions.as_ref()).instrument(span)).await
                    }
                    None => {
                        self.reply_connected(id, None, None);
                    }
                }
            }
            "subscribe" | "unsubscribe" | "emit" | "refresh" if !connected => self.error(
                id,
                ErrorCode::NotConnected,
                "send {\"op\":\"connect\"} first",
                None,
            ),
            "subscribe" => {
                let span = tracing::info_span!(
                    "subscribe",
                    session = %self.session,
                    recover = cmd.since.is_some()
                );
                Box::pin(
                    self.subscribe(
                        id,
                        cmd.channel.as_deref(),
                        cmd.since.clone(),
                        cmd.token.as_deref(),
                    )
                    .instrument(span),
                )
                .await
            }
            "refresh" => self.refresh(id, cmd.token.as_deref()),
            "unsubscribe" => Box::pin(self.unsubscribe(id, cmd.channel.as_deref())).await,
            "emit" => {
                let span = tracing::info_span!("emit", session = %self.session);
                Box::pin(
                    self.emit(id, cmd.channel.as_deref(), cmd.event.as_deref(), cmd.data)
                        .instrument(span),
                )
                .await
            }
            other => {
                let msg = format!(
                    "unknown op {other:?}: expected connect, subscribe, unsubscribe, emit, refresh, ping or pong"
                );
                self.error(id, ErrorCode::BadRequest, &msg, None)
            }
        }
    }

    /// Checks the connection token (when auth is configured) and the user's
    /// connection limit. On refusal answers, closes, and returns false.
    fn authenticate(&mut self, id: Option<u64>, token: Option<&str>) -> bool {
        let Some(auth) = self.ctx.auth.clone() else {
            return true;
        };
        let m = metrics();
        let verified = match token {
            Some(t) => auth.connect(t),
            None => Err(AuthError::Missing),
        };
        let identity = match verified {
            Ok(i) => i,
            Err(e) => {
                m.auth.with_label_values(&["connect", e.label()]).inc();
                tracing::debug!(reason = %e, "connect refused");
                self.error(id, ErrorCode::Unauthorized, &e.to_string(), None);
                let code = if e == AuthError::Expired {
                    CloseCode::TokenExpired
                } else {
                    CloseCode::Unauthorized
                };
                self.link.close(code);
                return false;
            }
        };
        m.auth.with_label_values(&["connect", "ok"]).inc();
        let Some(slot) = self.ctx.users.admit(&identity.user) else {
            m.refused.with_label_values(&["per_user"]).inc();
            tracing::info!(user = %identity.user, "user is at the per-node connection limit");
            self.error(
                id,
                ErrorCode::TooManyConnections,
                "this user already has the most connections allowed on this node",
                None,
            );
            self.link.close(CloseCode::TooManyConnections);
            return false;
        };
        self._slot = Some(slot);
        self.set_expiry(&identity);
        self.identity = identity;
        true
    }

    fn set_expiry(&self, identity: &Identity) {
        self.shared
            .expires_at
            .store(identity.expires.unwrap_or(0), Ordering::Release);
    }

    /// `refresh`: a new connection token for the same user extends the connection.
    fn refresh(&mut self, id: Option<u64>, token: Option<&str>) {
        let Some(auth) = self.ctx.auth.clone() else {
            return self.error(
                id,
                ErrorCode::BadRequest,
                "authentication is not configured; nothing to refresh",
                None,
            );
        };
        let Some(token) = token else {
            return self.error(id, ErrorCode::BadRequest, "missing \"token\"", None);
        };
        let m = metrics();
        let identity = auth.connect(token).and_then(|i| {
            if i.user == self.identity.user {
                Ok(i)
            } else {
                Err(AuthError::WrongUser)
            }
        });
        match identity {
            Ok(i) => {
                m.auth.with_label_values(&["refresh", "ok"]).inc();
                self.set_expiry(&i);
                let expires_at = i.expires.unwrap_or(0);
                self.identity = i;
                self.reply(&Reply::Refreshed { id, expires_at });
            }
            Err(e) => {
                // The connection keeps its current token until that expires.
                m.auth.with_label_values(&["refresh", e.label()]).inc();
                self.error(id, ErrorCode::Unauthorized, &e.to_string(), None);
            }
        }
    }

    /// Channel rules first; a subscribe token can grant what they refuse.
    /// Ok(true) when only the subscribe token allowed it.
    fn may_subscribe(&self, ch: &str, token: Option<&str>) -> Result<bool, String> {
        let denied = match self.ctx.node.rules.may_subscribe(&self.identity, ch) {
            Ok(()) => return Ok(false),
            Err(d) => d,
        };
        let (Some(token), Some(auth)) = (token, self.ctx.auth.as_deref()) else {
            Self::count_denial("subscribe", denied.label());
            return Err(denied.message().to_owned());
        };
        match auth.subscribe(token, &self.identity.user, ch) {
            Ok(()) => {
                metrics().auth.with_label_values(&["subscribe", "ok"]).inc();
                Ok(true)
            }
            Err(e) => {
                metrics()
                    .auth
                    .with_label_values(&["subscribe", e.label()])
                    .inc();
                Self::count_denial("subscribe", "bad_token");
                Err(format!("subscribe token refused: {e}"))
            }
        }
    }

    fn count_denial(action: &str, reason: &str) {
        metrics().denials.with_label_values(&[action, reason]).inc();
    }

    /// Checks a channel field; on failure answers the client and returns None.
    fn channel<'c>(&self, id: Option<u64>, channel: Option<&'c str>) -> Option<&'c str> {
        let Some(ch) = channel else {
            self.error(id, ErrorCode::BadRequest, "missing \"channel\"", None);
            return None;
        };
        if let Err(e) = validate_channel(ch) {
            self.error(id, ErrorCode::BadRequest, &e, None);
            return None;
        }
        Some(ch)
    }

    async fn subscribe(
        &mut self,
        id: Option<u64>,
        channel: Option<&str>,
        since: Option<Since<'_>>,
        token: Option<&str>,
    ) {
        let Some(ch) = self.channel(id, channel) else {
            return;
        };
        let by_token = match self.may_subscribe(ch, token) {
            Ok(by_token) => by_token,
            Err(msg) => return self.error(id, ErrorCode::Forbidden, &msg, Some(ch)),
        };
        let already = self.subs.contains(ch);
        if !already && self.subs.len() >= self.ctx.cfg.max_subscriptions {
            let msg = format!(
                "this connection already has {} subscriptions, the limit",
                self.subs.len()
            );
            return self.error(id, ErrorCode::TooManySubscriptions, &msg, Some(ch));
        }
        let node = &self.ctx.node;
        let start = match node.subscribe(ch, &self.link).await {
            Ok(p) => p,
            Err(e) => return self.error(id, ErrorCode::Unavailable, &e.to_string(), Some(ch)),
        };
        self.subs.insert(ch.into());
        if by_token {
            self.granted.insert(ch.into());
        }
        // Recovery only makes sense for a new subscription: a live one has
        // already been given everything since it started.
        let since = since.filter(|_| !already);
        let (recovered, replay) = match since {
            None => (None, Vec::new()),
            Some(s) => {
                let outcome = self.recover(ch, &s, &start).await;
                Self::count_recovery(&outcome);
                (Some(outcome.is_ok()), outcome.unwrap_or_default())
            }
        };
        let token = self.token();
        self.reply(&Reply::Subscribed {
            id,
            channel: ch,
            epoch: &start.epoch,
            offset: start.offset,
            recovered,
            reconnect_token: token.as_deref(),
        });
        node.hub.release(ch, self.link.id, &replay);
    }

    fn reply_connected(
        &self,
        id: Option<u64>,
        resumed: Option<bool>,
        channels: Option<&serde_json::Value>,
    ) {
        let token = self.token();
        let user = Some(self.identity.user.as_str()).filter(|u| !u.is_empty());
        self.reply(&Reply::Connected {
            id,
            session: &self.session,
            node: &self.ctx.node.id,
            ping_interval_ms: self.ctx.cfg.ping_interval.as_millis() as u64,
            resumed,
            channels,
            user,
            expires_at: self.identity.expires,
            reconnect_token: token.as_deref(),
        });
    }

    /// Counts a recovery attempt by outcome, and what it replays.
    fn count_recovery(outcome: &Result<Vec<Bytes>, Refusal>) {
        let m = metrics();
        match outcome {
            Ok(frames) => {
                m.recoveries.with_label_values(&["recovered"]).inc();
                m.replayed.inc_by(frames.len() as u64);
            }
            Err(r) => m.recoveries.with_label_values(&[r.label()]).inc(),
        }
    }

    /// A reconnect token for the session as it stands now.
    fn token(&self) -> Option<String> {
        let mut channels: Vec<String> = self.subs.iter().map(|c| c.to_string()).collect();
        channels.sort_unstable();
        let mut granted: Vec<String> = self.granted.iter().map(|c| c.to_string()).collect();
        granted.sort_unstable();
        let user = &self.identity.user;
        let token = self.ctx.tokens.issue(
            &self.session,
            user,
            channels.iter().cloned(),
            granted.clone(),
        );
        *self
            .shared
            .token_claims
            .lock()
            .unwrap_or_else(|e| e.into_inner()) =
            Some((self.session.clone(), user.clone(), channels, granted));
        self.shared
            .token_issued
            .store(token::now_secs(), Ordering::Release);
        token
    }

    /// `connect` with `resume`: restores the token's subscriptions, each
    /// recovered from the client's position when one is given. The
    /// `connected` reply comes first, then every channel's missed
    /// publications, then live ones.
    async fn resume(
        &mut self,
        id: Option<u64>,
        token: &str,
        positions: Option<&HashMap<Cow<'_, str>, Since<'_>>>,
    ) {
        let m = metrics();
        let verified = self
            .ctx
            .tokens
            .verify(token, token::now_secs())
            .map_err(|e| (e.label(), e.to_string()))
            .and_then(|c| {
                // A reconnect token only resumes its own user's session.
                if c.uid == self.identity.user {
                    Ok(c)
                } else {
                    Err(("wrong_user", "token belongs to another user".to_owned()))
                }
            });
        let claims = match verified {
            Ok(c) => c,
            Err((label, e)) => {
                // The reason is logged and counted, never told to the client.
                m.resumes.with_label_values(&[label]).inc();
                tracing::info!(reason = %e, "resume refused");
                return self.reply_connected(id, Some(false), None);
            }
        };
        self.session = claims.sid;
        let mut channels = serde_json::Map::new();
        let mut releases = Vec::new();
        let max = self.ctx.cfg.max_subscriptions;
        for ch in claims.ch.iter().take(max) {
            if validate_channel(ch).is_err() {
                continue;
            }
            // Rules are applied again (the user's claims may have changed);
            // only what a subscribe token granted is taken on trust.
            let by_token = claims.gr.contains(ch);
            if let Err(d) = self.ctx.node.rules.may_subscribe(&self.identity, ch) {
                if !by_token {
                    Self::count_denial("resume", d.label());
                    let err =
                        serde_json::json!({"code": ErrorCode::Forbidden, "message": d.message()});
                    channels.insert(ch.clone(), serde_json::json!({ "error": err }));
                    continue;
                }
            }
            let start = match self.ctx.node.subscribe(ch, &self.link).await {
                Ok(p) => p,
                Err(e) => {
                    let err = serde_json::json!({"code": ErrorCode::Unavailable, "message": e.to_string()});
                    channels.insert(ch.clone(), serde_json::json!({ "error": err }));
                    continue;
                }
            };
            self.subs.insert(ch.as_str().into());
            if by_token {
                self.granted.insert(ch.as_str().into());
            }
            let since = positions.and_then(|p| p.get(ch.as_str()));
            let replay = match since {
                Some(s) => self.recover(ch, s, &start).await,
                None => Err(Refusal::NoPosition),
            };
            let recovered = replay.is_ok();
            Self::count_recovery(&replay);
            channels.insert(
                ch.clone(),
                serde_json::json!({"epoch": &*start.epoch, "offset": start.offset, "recovered": recovered}),
            );
            releases.push((ch.clone(), replay.unwrap_or_default()));
        }
        m.resumes.with_label_values(&["resumed"]).inc();
        let channels = serde_json::Value::Object(channels);
        self.reply_connected(id, Some(true), Some(&channels));
        for (ch, replay) in releases {
            self.ctx.node.hub.release(&ch, self.link.id, &replay);
        }
    }

    /// The publications a client at `since` missed before `start`, all or none.
    async fn recover(
        &self,
        ch: &str,
        since: &Since<'_>,
        start: &Position,
    ) -> Result<Vec<Bytes>, Refusal> {
        let need = recovery::missed(&since.epoch, since.offset, start, self.ctx.cfg.recovery_max)?;
        if need == 0 {
            return Ok(Vec::new());
        }
        let history = self
            .ctx
            .node
            .history(ch, since.offset, need as usize)
            .await
            .map_err(|_| Refusal::Unavailable)?;
        recovery::plan(since.offset, start, history)
    }

    async fn unsubscribe(&mut self, id: Option<u64>, channel: Option<&str>) {
        let Some(ch) = self.channel(id, channel) else {
            return;
        };
        self.granted.remove(ch);
        if self.subs.remove(ch) {
            self.ctx.node.unsubscribe(ch, self.link.id).await;
        }
        let token = self.token();
        self.reply(&Reply::Unsubscribed {
            id,
            channel: ch,
            reconnect_token: token.as_deref(),
        });
    }

    async fn emit(
        &mut self,
        id: Option<u64>,
        channel: Option<&str>,
        event: Option<&str>,
        data: Option<&RawValue>,
    ) {
        let Some(ch) = self.channel(id, channel) else {
            return;
        };
        let subscribed = self.subs.contains(ch);
        if let Err(d) = self.ctx.node.rules.may_emit(&self.identity, ch, subscribed) {
            Self::count_denial("emit", d.label());
            return self.error(id, ErrorCode::Forbidden, d.message(), Some(ch));
        }
        let Some(event) = event else {
            return self.error(id, ErrorCode::BadRequest, "missing \"event\"", Some(ch));
        };
        if let Err(e) = validate_event(event) {
            return self.error(id, ErrorCode::BadRequest, &e, Some(ch));
        }
        let null = RawValue::NULL;
        let data = data.unwrap_or(null);
        let max = self.ctx.cfg.max_payload;
        if data.get().len() > max {
            let msg = format!("\"data\" is {} bytes, the limit is {max}", data.get().len());
            return self.error(id, ErrorCode::PayloadTooLarge, &msg, Some(ch));
        }
        if let Err(e) = herald_proto::validate_data_depth(data.get()) {
            return self.error(id, ErrorCode::BadRequest, &e, Some(ch));
        }
        match self.ctx.node.publish(ch, event, data, Source::Client).await {
            Ok(pos) => self.reply(&Reply::Emitted {
                id,
                channel: ch,
                epoch: &pos.epoch,
                offset: pos.offset,
            }),
            Err(e) => self.error(id, ErrorCode::Unavailable, &e.to_string(), Some(ch)),
        }
    }
}

struct Writer {
    w: WriteHalf<Io>,
    rx: mpsc::Receiver<Bytes>,
    link: Arc<SessionLink>,
    shared: Arc<Shared>,
    ctx: Arc<SessionCtx>,
    read_stop: CancellationToken,
    /// Reused between batches; shrunk after big bursts so idle sessions stay small.
    buf: Vec<u8>,
    /// Bytes written but not yet added to `herald_bytes_sent_total`: the
    /// shared counter is touched once per 64 KiB, a ping or the end, not per write.
    unreported: u64,
    /// Batches written; the queue depth is sampled on every 64th.
    batches: u32,
}

/// Bytes a writer accumulates before adding them to the shared counter.
const REPORT_BYTES: u64 = 64 * 1024;

fn push_frame(buf: &mut Vec<u8>, opcode: OpCode, payload: &[u8]) {
    let mut frame = Frame::new(true, opcode, None, Payload::Borrowed(payload));
    let mut head = [0u8; 10];
    let n = frame.fmt_head(&mut head);
    buf.extend_from_slice(&head[..n]);
    buf.extend_from_slice(payload);
}

impl Writer {
    async fn run(mut self) {
        let ctx = Arc::clone(&self.ctx);
        let cfg = &ctx.cfg;
        let shared = Arc::clone(&self.shared);
        let link = Arc::clone(&self.link);
        // Long-lived futures are pinned once: re-creating them every loop
        // would re-register their wakers (a lock each) on every batch.
        let closed_fut = link.closed().wait();
        let shutdown_fut = ctx.shutdown.wait();
        let ws_pong = shared.ws_pong_ready.notified();
        let connect_deadline = Instant::now() + cfg.connect_timeout;
        let timer = sleep_until(connect_deadline);
        tokio::pin!(closed_fut, shutdown_fut, ws_pong, timer);
        let mut timer_at = Some(connect_deadline);
        let mut ping =
            tokio::time::interval_at(Instant::now() + cfg.ping_interval, cfg.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut awaiting_connect = true;
        let mut pong_deadline: Option<Instant> = None;
        let mut drain_at: Option<Instant> = None;
        let leeway = ctx.auth.as_ref().map(|a| a.leeway()).unwrap_or_default();
        // Connection token expiry: the `exp` last seen and when it falls due.
        let (mut exp_seen, mut expiry) = (0u64, None::<Instant>);
        loop {
            let connected = shared.connected.load(Ordering::Acquire);
            if connected {
                awaiting_connect = false;
            }
            let exp = shared.expires_at.load(Ordering::Acquire);
            if exp != exp_seen {
                exp_seen = exp;
                let left = Duration::from_secs(exp.saturating_sub(token::now_secs()));
                expiry = (exp > 0).then(|| Instant::now() + left + leeway);
            }
            // One timer serves the connect, pong, drain and expiry deadlines.
            let next = [
                awaiting_connect.then_some(connect_deadline),
                pong_deadline,
                drain_at,
                expiry,
            ]
            .into_iter()
            .flatten()
            .min();
            if next.is_some() && next != timer_at {
                timer.as_mut().reset(next.unwrap_or(connect_deadline));
                timer_at = next;
            }
            tokio::select! {
                biased;
                _ = &mut closed_fut => break,
                _ = &mut shutdown_fut, if drain_at.is_none() => {
                    // Spread reconnects over most of the drain window.
                    let window = self.ctx.drain.mul_f64(0.8);
                    drain_at = Some(Instant::now() + window.mul_f64(fastrand::f64()));
                }
                _ = &mut timer, if next.is_some() => {
                    timer_at = None;
                    let now = Instant::now();
                    if awaiting_connect && now >= connect_deadline {
                        self.link.close_with(CloseCode::ProtocolError, "no connect frame within connect_timeout");
                    }
                    if pong_deadline.is_some_and(|d| now >= d) {
                        if shared.pong_seen.load(Ordering::Acquire) {
                            pong_deadline = None;
                        } else {
                            self.link.close(CloseCode::PingTimeout);
                        }
                    }
                    if drain_at.is_some_and(|d| now >= d) {
                        self.link.close(CloseCode::Shutdown);
                    }
                    // Unless a `refresh` moved the expiry meanwhile.
                    if expiry.is_some_and(|d| now >= d)
                        && shared.expires_at.load(Ordering::Acquire) == exp_seen
                    {
                        self.link.close(CloseCode::TokenExpired);
                    }
                }
                _ = ping.tick(), if connected => {
                    self.report_bytes();
                    self.refresh_token();
                    push_frame(&mut self.buf, OpCode::Text, br#"{"op":"ping"}"#);
                    if pong_deadline.is_none() {
                        shared.pong_seen.store(false, Ordering::Release);
                        pong_deadline = Some(Instant::now() + cfg.pong_timeout);
                    }
                    if self.flush().await.is_err() { break }
                }
                _ = &mut ws_pong => {
                    ws_pong.set(shared.ws_pong_ready.notified());
                    let p = shared.ws_pong.lock().unwrap_or_else(|e| e.into_inner()).take();
                    push_frame(&mut self.buf, OpCode::Pong, &p.unwrap_or_default());
                    if self.flush().await.is_err() { break }
                }
                msg = self.rx.recv() => {
                    let Some(first) = msg else { break };
                    if self.batches % 64 == 0 {
                        metrics().queue_depth.observe((self.rx.len() + 1) as f64);
                    }
                    self.batches = self.batches.wrapping_add(1);
                    push_frame(&mut self.buf, OpCode::Text, &first);
                    while self.buf.len() < BATCH_BYTES {
                        match self.rx.try_recv() {
                            Ok(m) => push_frame(&mut self.buf, OpCode::Text, &m),
                            Err(_) => break,
                        }
                    }
                    if self.flush().await.is_err() { break }
                }
            }
        }
        self.finish().await;
    }

    /// Pushes a fresh reconnect token once half the last one's life is gone,
    /// so a long quiet connection can still resume.
    fn refresh_token(&mut self) {
        let now = token::now_secs();
        let issued = self.shared.token_issued.load(Ordering::Acquire);
        if now.saturating_sub(issued) < self.ctx.cfg.reconnect_ttl.as_secs() / 2 {
            return;
        }
        let claims = self
            .shared
            .token_claims
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some((sid, uid, channels, granted)) = claims else {
            return;
        };
        if let Some(t) = self
            .ctx
            .tokens
            .issue(&sid, &uid, channels.into_iter(), granted)
        {
            self.shared.token_issued.store(now, Ordering::Release);
            let frame = Reply::Token {
                reconnect_token: &t,
            }
            .to_vec();
            push_frame(&mut self.buf, OpCode::Text, &frame);
        }
    }

    /// Writes the batch; gives up early (keeping the rest) if the session is closed meanwhile.
    async fn flush(&mut self) -> std::io::Result<()> {
        let mut pos = 0;
        while pos < self.buf.len() {
            tokio::select! {
                biased;
                r = self.w.write(&self.buf[pos..]) => match r {
                    Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                    Ok(n) => {
                        pos += n;
                        self.unreported += n as u64;
                    }
                    Err(e) => {
                        self.link.finish(Ending::Gone);
                        return Err(e);
                    }
                },
                _ = self.link.closed().wait() => {
                    self.buf.drain(..pos);
                    return Ok(());
                }
            }
        }
        self.buf.clear();
        if self.unreported >= REPORT_BYTES {
            self.report_bytes();
        }
        if self.rx.is_empty() || self.buf.capacity() > 4 * BATCH_BYTES {
            // Idle connections hold no write buffer (measured: ~0.6 KiB each).
            self.buf = Vec::new();
        }
        Ok(())
    }

    fn report_bytes(&mut self) {
        metrics()
            .bytes_sent
            .inc_by(std::mem::take(&mut self.unreported));
    }

    /// Final frames: the rest of the current batch, then `disconnect` and a
    /// close frame (or the echo of the client's close), bounded by `close_timeout`.
    async fn finish(mut self) {
        self.report_bytes();
        let ending = self.link.ending().unwrap_or(Ending::Gone);
        match ending {
            Ending::Gone => {
                self.read_stop.cancel();
                return;
            }
            Ending::ClientClosed => {
                push_frame(&mut self.buf, OpCode::Close, &1000u16.to_be_bytes())
            }
            Ending::Close { code, reason } => {
                // Replies queued before the close (e.g. the `error` that
                // explains it) go out first, except to a slow consumer,
                // whose full queue is the reason it is closed.
                if code != CloseCode::SlowConsumer {
                    while self.buf.len() < 4 * BATCH_BYTES {
                        let Ok(m) = self.rx.try_recv() else { break };
                        push_frame(&mut self.buf, OpCode::Text, &m);
                    }
                }
                metrics()
                    .disconnects
                    .with_label_values(&[&code.code().to_string()])
                    .inc();
                tracing::debug!(session = %format_args!("{:016x}", self.link.id), code = code.code(), reason, "server closing session");
                let notice = Reply::Disconnect {
                    code: code.code(),
                    reason,
                    reconnect: code.reconnect(),
                }
                .to_vec();
                push_frame(&mut self.buf, OpCode::Text, &notice);
                let mut payload = code.code().to_be_bytes().to_vec();
                payload.extend_from_slice(reason.as_bytes());
                push_frame(&mut self.buf, OpCode::Close, &payload);
            }
        }
        let timeout = self.ctx.cfg.close_timeout;
        let write = async {
            self.w.write_all(&self.buf).await?;
            self.w.shutdown().await
        };
        if tokio::time::timeout(timeout, write).await.is_ok() {
            // Let the client read our close and answer it before the socket drops.
            let _ = tokio::time::timeout(timeout, self.read_stop.cancelled()).await;
        }
        self.read_stop.cancel();
    }
}

/// A read half that fails with `ConnectionAborted` once `stop` is cancelled,
/// so a pending `read_frame` returns instead of being dropped mid-frame.
struct CancelRead<R> {
    inner: R,
    stop: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl<R> CancelRead<R> {
    fn new(inner: R, stop: CancellationToken) -> Self {
        Self {
            inner,
            stop: Box::pin(stop.cancelled_owned()),
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for CancelRead<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.stop.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(std::io::ErrorKind::ConnectionAborted.into()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

// Keeps the writer's stream type honest: it must be writable.
const _: fn() = || {
    fn writable<T: AsyncWrite>() {}
    writable::<WriteHalf<Io>>();
};
