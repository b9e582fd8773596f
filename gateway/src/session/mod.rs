//! Session: the transport-independent protocol core of one client connection.
//!
//! Top of the data flow. A transport (`transport::ws`, `socketio`, `sse`)
//! decodes client commands and hands them to [`Session::command`], one at a time in arrival
//! order; the core runs them against `node` and says everything through the
//! session's bounded outbound queue ([`SessionLink`]): replies encoded for
//! the session's [`Wire`], and publications the hub shares with every
//! subscriber. How the session ends is data on the link ([`Ending`]); the
//! transport writes it. The core never touches a socket, so tests drive it
//! with a channel.
//!
//! One file per command family: [`connect`] (and auth), [`subscribe`] (and
//! recovery), [`emit`], [`refresh`], [`resume`]. Time-driven rules (connect
//! timeout, pong deadline, token expiry, drain, reconnect-token push) live
//! in [`timers`], which the transport's writer polls; the command rate
//! bucket lives in [`limits`].

mod connect;
mod emit;
pub(crate) mod limits;
mod presence;
mod refresh;
mod resume;
mod subscribe;
pub(crate) mod timers;

use crate::auth::{Auth, Identity, UserConnections, UserSlot};
use crate::channels::Rules;
use crate::config::SessionConfig;
use crate::hooks::{Caller, ClientHeaders, Hooks};
use crate::hub::{Ending, SessionLink};
use crate::metrics::{Ended, metrics};
use crate::node::Node;
use crate::outbox::Outbox;
use crate::publication::Wire;
use crate::signal::Signal;
use crate::token::Tokens;
use herald_proto::{Command, DecodeError, ErrorCode, Op, Reply, validate_channel};
use limits::{Admit, Bucket};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tracing::Instrument;

/// What every session of a node shares.
pub(crate) struct SessionCtx {
    pub(crate) node: Arc<Node>,
    pub(crate) rules: Arc<Rules>,
    pub(crate) cfg: SessionConfig,
    /// Raised on SIGTERM/SIGINT: sessions then leave within `drain`.
    pub(crate) shutdown: Arc<Signal>,
    pub(crate) tokens: Arc<Tokens>,
    pub(crate) drain: Duration,
    /// Connect authentication; `None` in open mode.
    pub(crate) auth: Option<Arc<Auth>>,
    /// Per-user connection counts on this node.
    pub(crate) users: Arc<UserConnections>,
    /// Every live session's link, so a scrape can sum their queued bytes
    /// without the delivery path touching a shared counter.
    pub(crate) links: Links,
    /// The backend's proxy hooks; `None` when none is configured.
    pub(crate) hooks: Option<Arc<Hooks>>,
    /// Who is subscribed where (namespaces with `presence`).
    pub(crate) presence: Arc<crate::presence::Presence>,
}

/// The links of this node's live sessions, sharded by id.
#[derive(Default)]
pub(crate) struct Links {
    shards: [Mutex<HashMap<u64, Arc<SessionLink>>>; 16],
}

impl Links {
    fn shard(&self, id: u64) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<SessionLink>>> {
        self.shards[(id % 16) as usize]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes waiting in every session's outbound queue.
    pub(crate) fn queued_bytes(&self) -> usize {
        (0..16u64)
            .map(|i| {
                self.shard(i)
                    .values()
                    .map(|l| l.queued_bytes())
                    .sum::<usize>()
            })
            .sum()
    }
}

/// Session id, user id, channels, and the channels a subscribe token granted.
type TokenClaims = (String, String, Vec<String>, Vec<String>);

/// What the command half (the core) and the timer half (the transport's
/// writer, through [`timers::Timers`]) of one session share.
#[derive(Default)]
pub(crate) struct Shared {
    connected: AtomicBool,
    pong_seen: AtomicBool,
    /// What the latest reconnect token vouched for, and when it was issued,
    /// so the writer can push a fresh one before it expires.
    token: Mutex<Option<(TokenClaims, Instant)>>,
    /// `exp` of the connection token (UNIX seconds), 0 = none; `refresh` moves it.
    expires_at: AtomicU64,
}

impl Shared {
    pub(crate) fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }
}

/// The protocol state of one connection. Owned by the transport's reader task.
pub(crate) struct Session {
    link: Arc<SessionLink>,
    shared: Arc<Shared>,
    ctx: Arc<SessionCtx>,
    wire: Wire,
    subs: HashSet<Box<str>>,
    session: String,
    /// Who the connection token says this is (anonymous in open mode).
    identity: Identity,
    /// Subscriptions a subscribe token granted (rules alone would refuse them).
    granted: HashSet<Box<str>>,
    /// This connection's place in its user's per-node limit.
    _slot: Option<UserSlot>,
    bucket: Bucket,
    /// The client's request headers the hooks forward (empty without hooks).
    headers: ClientHeaders,
    /// This session's entry in each presence channel it is subscribed to.
    present: HashMap<Box<str>, herald_proto::PresenceClient>,
}

/// A session just opened: the core, and what its transport's writer needs.
pub(crate) struct Opened {
    /// Boxed: it moves through several transport futures, and each would
    /// otherwise keep its own copy of its space.
    pub(crate) session: Box<Session>,
    pub(crate) link: Arc<SessionLink>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) rx: Outbox,
}

impl Session {
    /// Opens a session speaking `wire`: its queue, its link, its counters.
    #[cfg(test)]
    pub(crate) fn open(ctx: Arc<SessionCtx>, wire: Wire) -> Opened {
        Self::open_with(ctx, wire, ClientHeaders::default())
    }

    /// Opens a session, with the client's request headers for the hooks.
    pub(crate) fn open_with(ctx: Arc<SessionCtx>, wire: Wire, headers: ClientHeaders) -> Opened {
        let m = metrics();
        m.connections.get(wire.protocol()).inc();
        m.accepted.inc();
        let id = fastrand::u64(..);
        let (link, rx) = SessionLink::new(
            id,
            ctx.cfg.outbound_queue,
            ctx.cfg.outbound_queue_bytes,
            wire.protocol(),
        );
        ctx.links.shard(id).insert(id, Arc::clone(&link));
        let shared = Arc::new(Shared::default());
        let session = Box::new(Session {
            link: Arc::clone(&link),
            shared: Arc::clone(&shared),
            bucket: Bucket::new(&ctx.cfg),
            ctx,
            wire,
            subs: HashSet::new(),
            present: HashMap::new(),
            session: format!("{id:016x}"),
            identity: Identity::default(),
            granted: HashSet::new(),
            _slot: None,
            headers,
        });
        Opened {
            session,
            link,
            shared,
            rx,
        }
    }

    /// Ends the session once its transport is done: leaves every channel
    /// and counts how it ended.
    pub(crate) async fn close(mut self) {
        let link = Arc::clone(&self.link);
        link.finish(Ending::Gone);
        if self.shared.is_connected() {
            if let Some(w) = &self.ctx.node.webhooks {
                w.user(false, &self.identity.user, &self.session);
            }
        }
        for ch in std::mem::take(&mut self.subs) {
            self.ctx.node.unsubscribe(&ch, link.id).await;
            self.presence_leave(&ch).await;
        }
        self.ctx.links.shard(link.id).remove(&link.id);
        let how = match link.ending() {
            Some(Ending::Close { code, .. }) => Ok(code),
            Some(Ending::ClientClosed) => Err(Ended::Client),
            Some(Ending::Gone) | None => Err(Ended::Gone),
        };
        let m = metrics();
        m.closed(how);
        m.connections.get(self.wire.protocol()).dec();
        tracing::debug!(session = %self.session, ending = ?link.ending(), "session ended");
    }

    /// Runs one client command. `decode` is called only when the command is
    /// admitted by the rate limit (or its refusal needs the frame's `id`),
    /// so a flooding client's frames cost no parsing.
    pub(crate) async fn command<'a>(
        &mut self,
        decode: impl FnOnce() -> Result<Command<'a>, (Option<u64>, DecodeError)>,
    ) {
        match self.bucket.admit(&self.ctx.cfg, Instant::now()) {
            Admit::Yes => {}
            Admit::Close => {
                tracing::info!(session = %self.session, "closing a connection that keeps flooding");
                self.link
                    .close_with(herald_proto::CloseCode::ProtocolError, "command flood");
                return;
            }
            Admit::Silent => {
                // Answering every command of a flood costs the node as much
                // as the flood; past this point refusals are only counted.
                metrics().client_error_silent();
                return;
            }
            Admit::Refuse => {
                let msg = format!(
                    "more than {} commands per second; slow down",
                    self.ctx.cfg.command_rate
                );
                let id = decode().map_or_else(|(id, _)| id, |c| c.id);
                return self.error(id, ErrorCode::RateLimited, &msg, None);
            }
        }
        let cmd = match decode() {
            Ok(c) => c,
            Err((id, e)) => return self.error(id, ErrorCode::BadRequest, &e.0, None),
        };
        self.run(cmd).await;
    }

    async fn run(&mut self, cmd: Command<'_>) {
        let id = cmd.id;
        let connected = self.shared.is_connected();
        match &cmd.op {
            Op::Ping => self.reply(&Reply::Pong { id }),
            Op::Pong => self.shared.pong_seen.store(true, Ordering::Release),
            Op::Connect if connected => {
                self.error(id, ErrorCode::BadRequest, "already connected", None)
            }
            // Boxed, like the other commands below: their state lives only
            // while they run instead of enlarging every idle session's task
            // (measured: ~0.6 KiB).
            Op::Connect => Box::pin(self.connect(&cmd)).await,
            Op::Subscribe
            | Op::Unsubscribe
            | Op::Emit
            | Op::Refresh
            | Op::Presence
            | Op::PresenceStats
                if !connected =>
            {
                self.error(
                    id,
                    ErrorCode::NotConnected,
                    "send {\"op\":\"connect\"} first",
                    None,
                )
            }
            Op::Subscribe => {
                let span = tracing::info_span!(
                    "subscribe",
                    session = %self.session,
                    recover = cmd.since.is_some()
                );
                Box::pin(self.subscribe(&cmd).instrument(span)).await
            }
            Op::Refresh => Box::pin(self.refresh(id, cmd.token.as_deref())).await,
            Op::Unsubscribe => Box::pin(self.unsubscribe(id, cmd.channel.as_deref())).await,
            Op::Emit => {
                let span = tracing::info_span!("emit", session = %self.session);
                Box::pin(self.emit(&cmd).instrument(span)).await
            }
            Op::Presence | Op::PresenceStats => {
                let stats = matches!(cmd.op, Op::PresenceStats);
                Box::pin(self.presence(id, cmd.channel.as_deref(), stats)).await
            }
            Op::Unknown(other) => {
                let msg = format!(
                    "unknown op {other:?}: expected connect, subscribe, unsubscribe, emit, refresh, presence, presence_stats, ping or pong"
                );
                self.error(id, ErrorCode::BadRequest, &msg, None)
            }
        }
    }

    /// Queues a reply, encoded for this session's wire.
    fn reply(&self, reply: &Reply<'_>) {
        self.link.send_frame(self.wire.reply(reply));
    }

    /// Answers with an error (counted by code).
    pub(crate) fn error(
        &self,
        id: Option<u64>,
        code: ErrorCode,
        message: &str,
        channel: Option<&str>,
    ) {
        metrics().client_error(code);
        self.reply(&Reply::Error {
            id,
            code,
            message,
            channel,
        });
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

    /// The session as the hooks describe it to the backend.
    fn caller(&self) -> Caller<'_> {
        Caller {
            session: &self.session,
            transport: match self.wire {
                Wire::Herald => "websocket",
                Wire::SocketIo => "socketio",
                Wire::Sse => "sse",
            },
            headers: &self.headers,
            user: Some(self.identity.user.as_str()).filter(|u| !u.is_empty()),
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
        let claims = (self.session.clone(), user.clone(), channels, granted);
        *self.shared.token.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((claims, Instant::now()));
        token
    }
}

#[cfg(test)]
pub(crate) mod tests;
