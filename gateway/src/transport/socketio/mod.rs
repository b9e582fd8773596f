//! Socket.IO v5 over Engine.IO v4: an adapter that lets the unmodified
//! `socket.io-client` talk to the session core.
//!
//! Sits between the server's `/socket.io/` handlers and `session`. Two
//! carriers share the packet layer here: over WebSocket it uses
//! `transport::ws`'s connection machinery (message reader, writer task,
//! closing), and only the reading of text messages ([`SioInbound`]) and the
//! writing of items ([`SioFraming`]) differ; HTTP long-polling
//! ([`polling`]) runs the same two halves from request handlers, writing
//! `\x1e`-joined payloads ([`payload`]), until an upgrade hands the
//! session to a WebSocket.
//!
//! The mapping (`docs/socketio.md`):
//! - the first CONNECT of any namespace is the Herald `connect` (its `auth`
//!   object's `token` is the connection JWT); the main namespace `/`
//!   carries only that connection;
//! - CONNECT to `/name` subscribes to channel `name` (`40/name,{sid,pid}`
//!   or CONNECT_ERROR `44/name,{message,data:{code}}`), with recovery from
//!   the `pid`/`offset` the client sends back (both `EPOCH:OFFSET`);
//! - EVENT on `/name` is an `emit` on `name`, its ack `{offset}` or `{error}`;
//!   DISCONNECT of `/name` unsubscribes;
//! - publications arrive as `42/name,["event",data,"EPOCH:OFFSET"]`, built
//!   once per publication ([`crate::publication::Wire::SocketIo`]).
//!
//! The core answers in Herald replies; the reader notes, under the command
//! id it gives each command, which Socket.IO packet the reply becomes
//! ([`Pending`]), and the writer turns each reply into that packet.
//! Packets the transport answers itself (a bad namespace, the open packet)
//! are queued already encoded.

pub(crate) mod packet;
pub(crate) mod payload;
pub(crate) mod polling;

use super::ws::write::{Framing, push_frame};
use super::ws::{Inbound, OpenedParts};
use crate::hooks::ClientHeaders;
use crate::hub::{Ending, SessionLink};
use crate::publication::{Outbound, Wire};
use crate::session::{Session, SessionCtx};
use fastwebsockets::OpCode;
use herald_proto::{CloseCode, Command, DecodeError, Op, Since};
use packet::{Engine, Kind, Packet};
use serde::Deserialize;
use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::io::{AsyncRead, AsyncWrite};

/// Runs one Socket.IO WebSocket connection (after the upgrade) to its end.
pub(crate) fn run<S>(
    io: S,
    ctx: Arc<SessionCtx>,
    headers: ClientHeaders,
) -> impl Future<Output = ()> + Send
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    // Not async, like `ws::serve`: no extra copy in every connection's task.
    let (framing, inbound) = halves(false);
    super::ws::serve(io, ctx, Wire::SocketIo, headers, framing, inbound)
}

/// The writing and reading halves of one Engine.IO session, sharing its
/// book; `polling`: written as polling payloads (else WebSocket messages).
fn halves(polling: bool) -> (SioFraming, SioInbound) {
    let book = Arc::new(Mutex::new(Book::default()));
    let framing = SioFraming {
        book: Arc::clone(&book),
        polling,
    };
    (framing, SioInbound { book, next_id: 0 })
}

/// What a command's reply becomes, noted under the command's id.
#[derive(Debug)]
enum Pending {
    /// The Herald `connect` made by the first CONNECT, of namespace `nsp`.
    Connect { nsp: Box<str> },
    /// A subscribe made by CONNECT to `nsp`, with the client's recovery pid.
    Join {
        nsp: Box<str>,
        pid: Option<Box<str>>,
    },
    /// An unsubscribe made by DISCONNECT: nothing to answer.
    Leave,
    /// An emit made by an EVENT, acknowledged when the client gave an id.
    Emit { nsp: Box<str>, ack: Option<u64> },
    /// A CONNECT to `/` on a connection already made: answered by the
    /// reply to a `ping`, so that it costs a command like any other.
    Main,
}

/// Pending replies kept at most: an entry this much older than the newest
/// belongs to a command the rate limit dropped unanswered.
const PENDING_WINDOW: u64 = 4096;

/// What the reader and the writer of one connection share.
#[derive(Debug, Default)]
struct Book {
    pending: HashMap<u64, Pending>,
    /// Namespaces the client is connected to (told so by a CONNECT reply).
    joined: BTreeSet<Box<str>>,
    /// The Engine.IO session id, also every Socket.IO socket's `sid`.
    sid: String,
}

fn lock(book: &Mutex<Book>) -> MutexGuard<'_, Book> {
    book.lock().unwrap_or_else(|e| e.into_inner())
}

/// Reads Engine.IO / Socket.IO packets and runs them as session commands.
struct SioInbound {
    book: Arc<Mutex<Book>>,
    next_id: u64,
}

/// Queues a packet the transport answers itself (already encoded).
fn send(link: &SessionLink, packet: String) {
    link.send_frame(packet.into_bytes().into_boxed_slice());
}

impl SioInbound {
    /// Takes `sid` as the session's; returns its open packet (`upgrade`:
    /// offering the WebSocket transport, to a polling session).
    fn open(&mut self, sid: &str, upgrade: bool, ctx: &SessionCtx) -> String {
        sid.clone_into(&mut lock(&self.book).sid);
        packet::open(
            sid,
            upgrade,
            ctx.cfg.ping_interval.as_millis() as u64,
            ctx.cfg.pong_timeout.as_millis() as u64,
            ctx.cfg.max_payload,
        )
    }

    /// Notes what the reply to the next command becomes; returns its id.
    fn expect(&mut self, pending: Pending) -> u64 {
        self.next_id += 1;
        let mut book = lock(&self.book);
        book.pending.insert(self.next_id, pending);
        if let Some(old) = self.next_id.checked_sub(PENDING_WINDOW) {
            book.pending.remove(&old);
        }
        self.next_id
    }

    /// Refuses a packet through the session core, so that refusals count
    /// against the command rate and in the error metrics like any command:
    /// the core answers `bad_request`, which `pending` turns into a packet.
    async fn refuse(&mut self, session: &mut Session, pending: Pending, message: &str) {
        let id = self.expect(pending);
        let message = message.to_owned();
        session
            .command(|| Err((Some(id), DecodeError(message))))
            .await;
    }

    async fn connect(&mut self, session: &mut Session, parts: &OpenedParts, p: &Packet<'_>) {
        let join = || Pending::Join {
            nsp: p.nsp.into(),
            pid: None,
        };
        let auth = match packet::connect_auth(p.data) {
            Ok(a) => a,
            Err(e) => return self.refuse(session, join(), e.0).await,
        };
        let channel = if p.nsp == "/" {
            None
        } else {
            match packet::namespace_channel(p.nsp) {
                Ok(ch) => Some(ch),
                Err(e) => return self.refuse(session, join(), &e).await,
            }
        };
        if !parts.shared.is_connected() {
            let id = self.expect(Pending::Connect { nsp: p.nsp.into() });
            let token = auth.token.clone();
            session
                .command(|| {
                    Ok(Command {
                        op: Op::Connect,
                        id: Some(id),
                        token,
                        ..Command::default()
                    })
                })
                .await;
            if !parts.shared.is_connected() {
                return;
            }
        } else if channel.is_none() {
            let id = self.expect(Pending::Main);
            return session
                .command(|| {
                    Ok(Command {
                        op: Op::Ping,
                        id: Some(id),
                        ..Command::default()
                    })
                })
                .await;
        }
        let Some(ch) = channel else { return };
        // The offset of the last event seen, or else the pid: the position
        // the subscription started at (a client that saw no event yet).
        // The client keeps its last offset when it gets a fresh pid, so an
        // offset from another epoch than the pid's is older than the pid.
        let pid = auth.pid.as_deref().and_then(packet::parse_position);
        let offset = auth.offset.as_deref().and_then(packet::parse_position);
        let since = match (offset, pid) {
            (Some(o), Some(p)) if o.0 != p.0 => Some(p),
            (o, p) => o.or(p),
        }
        .map(|(epoch, offset)| Since {
            epoch: Cow::Borrowed(epoch),
            offset,
        });
        let id = self.expect(Pending::Join {
            nsp: p.nsp.into(),
            pid: auth.pid.as_deref().map(Into::into),
        });
        session
            .command(|| {
                Ok(Command {
                    op: Op::Subscribe,
                    id: Some(id),
                    channel: Some(Cow::Borrowed(ch)),
                    since,
                    ..Command::default()
                })
            })
            .await;
    }

    async fn disconnect(&mut self, session: &mut Session, p: &Packet<'_>) {
        lock(&self.book).joined.remove(p.nsp);
        let Ok(ch) = packet::namespace_channel(p.nsp) else {
            return;
        };
        let id = self.expect(Pending::Leave);
        session
            .command(|| {
                Ok(Command {
                    op: Op::Unsubscribe,
                    id: Some(id),
                    channel: Some(Cow::Borrowed(ch)),
                    ..Command::default()
                })
            })
            .await;
    }

    async fn event(&mut self, session: &mut Session, p: &Packet<'_>) {
        let emit = || Pending::Emit {
            nsp: p.nsp.into(),
            ack: p.id,
        };
        let why = if p.kind == Kind::BinaryEvent {
            Some("binary attachments are not supported: send JSON data")
        } else if p.nsp == "/" {
            Some(
                "the main namespace carries no channel: emit on a channel's namespace, e.g. io(\"/reviews\")",
            )
        } else if !lock(&self.book).joined.contains(p.nsp) {
            Some("this namespace is not connected")
        } else {
            None
        };
        if let Some(why) = why {
            return self.refuse(session, emit(), why).await;
        }
        let Ok(ch) = packet::namespace_channel(p.nsp) else {
            return self
                .refuse(session, emit(), "this namespace names no channel")
                .await;
        };
        let args = match packet::event_args(p.data) {
            Ok(a) => a,
            Err(e) => return self.refuse(session, emit(), e.0).await,
        };
        let data = match args.args.as_slice() {
            [] => None,
            [one] => Some(*one),
            _ => {
                let why = "an event carries one data argument (and an optional ack)";
                return self.refuse(session, emit(), why).await;
            }
        };
        let id = self.expect(Pending::Emit {
            nsp: p.nsp.into(),
            ack: p.id,
        });
        let event = args.name;
        // Presence questions ride on emits with an ack (Socket.IO has no
        // other request/response), named so no application event collides.
        let op = match &*event {
            PRESENCE_EVENT => Op::Presence,
            PRESENCE_STATS_EVENT => Op::PresenceStats,
            _ => Op::Emit,
        };
        session
            .command(|| {
                Ok(Command {
                    op,
                    id: Some(id),
                    channel: Some(Cow::Borrowed(ch)),
                    event: Some(event),
                    data,
                    ..Command::default()
                })
            })
            .await;
    }
}

/// The emit a Socket.IO client sends (with an ack) to ask who is in its
/// namespace's channel; the ack carries the presence list.
const PRESENCE_EVENT: &str = "herald:presence";
/// The same for the counts: the ack carries `{"clients","users"}`.
const PRESENCE_STATS_EVENT: &str = "herald:presence_stats";

/// Closes the connection for a packet that cannot be read; true (stop reading).
fn unreadable(link: &SessionLink, e: packet::PacketError) -> bool {
    tracing::debug!(why = e.0, "unreadable Socket.IO packet");
    link.close_with(CloseCode::ProtocolError, e.0);
    true
}

impl Inbound for SioInbound {
    fn opened(&mut self, link: &SessionLink, ctx: &SessionCtx) {
        let sid = format!("{:016x}", link.id);
        let open = self.open(&sid, false, ctx);
        send(link, open);
    }

    async fn text(&mut self, session: &mut Session, parts: &OpenedParts, text: &str) -> bool {
        let link = &parts.link;
        let message = match packet::decode_engine(text) {
            Ok(Engine::Message(m)) => m,
            Ok(Engine::Pong) => {
                session
                    .command(|| {
                        Ok(Command {
                            op: Op::Pong,
                            ..Command::default()
                        })
                    })
                    .await;
                return false;
            }
            Ok(Engine::Close) => {
                link.finish(Ending::ClientClosed);
                return false;
            }
            // Client pings only probe a new transport during an upgrade,
            // which `polling::upgrade` answers before the session gets here;
            // `5` ends that upgrade.
            Ok(Engine::Ping(_) | Engine::Upgrade | Engine::Ignored) => return false,
            Err(e) => return unreadable(link, e),
        };
        let p = match packet::decode(message) {
            Ok(p) => p,
            Err(e) => return unreadable(link, e),
        };
        match p.kind {
            Kind::Connect => self.connect(session, parts, &p).await,
            Kind::Disconnect => self.disconnect(session, &p).await,
            Kind::Event | Kind::BinaryEvent => self.event(session, &p).await,
            // Herald has no server-side handlers waiting for client acks.
            Kind::Ack | Kind::BinaryAck | Kind::ConnectError => {}
        }
        false
    }

    fn binary(&mut self, _session: &mut Session) {
        // The attachment of a binary packet, already refused.
    }
}

/// A Herald reply as the writer needs to read it.
#[derive(Deserialize)]
struct ReplyView<'a> {
    #[serde(borrow)]
    op: Cow<'a, str>,
    #[serde(default)]
    id: Option<u64>,
    #[serde(default, borrow)]
    session: Option<Cow<'a, str>>,
    #[serde(default)]
    code: Option<serde_json::Value>,
    #[serde(default, borrow)]
    message: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    epoch: Option<Cow<'a, str>>,
    #[serde(default)]
    offset: Option<u64>,
    #[serde(default)]
    recovered: Option<bool>,
    /// `presence`: the list; `presence_stats`: the connection count.
    #[serde(default, borrow)]
    clients: Option<&'a serde_json::value::RawValue>,
    #[serde(default)]
    users: Option<u64>,
}

/// Writes items as Engine.IO/Socket.IO text messages, or as the packets
/// of a polling payload.
struct SioFraming {
    book: Arc<Mutex<Book>>,
    /// Packets joined by `\x1e` (polling), else one WebSocket text message each.
    polling: bool,
}

impl SioFraming {
    /// Appends one Engine.IO packet.
    fn push(&self, buf: &mut Vec<u8>, packet: &[u8]) {
        if self.polling {
            payload::push(buf, packet);
        } else {
            push_frame(buf, OpCode::Text, packet);
        }
    }

    /// The Socket.IO packet a Herald reply becomes, if any.
    fn translate(&self, frame: &[u8]) -> Option<String> {
        let r: ReplyView<'_> = match serde_json::from_slice(frame) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "unreadable reply from the session core");
                return None;
            }
        };
        let mut book = lock(&self.book);
        let pending = book.pending.remove(&r.id?)?;
        let code = r
            .code
            .as_ref()
            .and_then(|c| c.as_str())
            .unwrap_or("internal");
        let message = r.message.as_deref().unwrap_or("refused");
        match (r.op.as_ref(), pending) {
            ("connected", Pending::Connect { nsp }) => {
                if let Some(s) = r.session {
                    book.sid = s.into_owned();
                }
                (&*nsp == "/").then(|| {
                    book.joined.insert(nsp);
                    packet::connected("/", &book.sid, None)
                })
            }
            ("subscribed", Pending::Join { nsp, pid }) => {
                let pid = match pid {
                    Some(pid) if r.recovered == Some(true) => pid.into_string(),
                    _ => packet::position(r.epoch.as_deref().unwrap_or(""), r.offset.unwrap_or(0)),
                };
                let out = packet::connected(&nsp, &book.sid, Some(&pid));
                book.joined.insert(nsp);
                Some(out)
            }
            ("error", Pending::Connect { nsp } | Pending::Join { nsp, .. }) => {
                Some(packet::connect_error(&nsp, code, message))
            }
            (
                "emitted",
                Pending::Emit {
                    nsp,
                    ack: Some(ack),
                },
            ) => Some(packet::ack(
                &nsp,
                ack,
                &packet::ack_offset(r.offset.unwrap_or(0)),
            )),
            (
                "error",
                Pending::Emit {
                    nsp,
                    ack: Some(ack),
                },
            ) => Some(packet::ack(&nsp, ack, &packet::ack_error(code, message))),
            (
                "presence",
                Pending::Emit {
                    nsp,
                    ack: Some(ack),
                },
            ) => Some(packet::ack(&nsp, ack, r.clients.map_or("[]", |c| c.get()))),
            (
                "presence_stats",
                Pending::Emit {
                    nsp,
                    ack: Some(ack),
                },
            ) => Some(packet::ack(
                &nsp,
                ack,
                &format!(
                    "{{\"clients\":{},\"users\":{}}}",
                    r.clients.map_or("0", |c| c.get()),
                    r.users.unwrap_or(0)
                ),
            )),
            ("pong", Pending::Main) => {
                book.joined.insert("/".into());
                Some(packet::connected("/", &book.sid, None))
            }
            ("error", Pending::Main) => Some(packet::connect_error("/", code, message)),
            ("error", Pending::Emit { nsp, ack: None }) => {
                tracing::debug!(nsp = &*nsp, code, message, "unacknowledged emit refused");
                None
            }
            _ => None,
        }
    }
}

impl Framing for SioFraming {
    fn item(&mut self, buf: &mut Vec<u8>, item: &Outbound) {
        match item {
            Outbound::Publication(_) | Outbound::Notice(_) => {
                self.push(buf, item.encoded(Wire::SocketIo))
            }
            Outbound::Frame(f) if f.first() == Some(&b'{') => {
                if let Some(packet) = self.translate(f) {
                    self.push(buf, packet.as_bytes());
                }
            }
            Outbound::Frame(f) => self.push(buf, f),
        }
    }

    fn ping(&mut self, buf: &mut Vec<u8>, _token: Option<&str>) {
        self.push(buf, b"2");
    }

    fn closing(&mut self, buf: &mut Vec<u8>, code: CloseCode, _reason: &str) {
        // A reconnecting close is a plain transport close, which the client
        // answers by reconnecting (and recovering); otherwise each
        // namespace is told the server disconnected it, so it stays away.
        if !code.reconnect() {
            let joined: Vec<String> = lock(&self.book)
                .joined
                .iter()
                .map(|nsp| packet::disconnect(nsp))
                .collect();
            for p in joined {
                self.push(buf, p.as_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::tests::ctx_with;
    use crate::transport::ws::tests::{client, send};
    use fastwebsockets::WebSocket;
    use tokio::io::DuplexStream;

    fn pair() -> WebSocket<DuplexStream> {
        let ctx = ctx_with(crate::config::SessionConfig::default(), None);
        client(|io| run(io, ctx, ClientHeaders::default()))
    }

    async fn recv(ws: &mut WebSocket<DuplexStream>) -> String {
        let f = ws.read_frame().await.expect("frame");
        assert_eq!(f.opcode, OpCode::Text, "{:?}", f.payload);
        String::from_utf8(f.payload.to_vec()).expect("utf8")
    }

    #[tokio::test]
    async fn namespaces_subscribe_emit_and_receive() {
        let mut ws = pair();
        let open = recv(&mut ws).await;
        assert!(open.starts_with(r#"0{"sid":""#), "{open}");
        assert!(open.contains(r#""upgrades":[]"#), "{open}");
        send(&mut ws, "40").await;
        assert!(recv(&mut ws).await.starts_with(r#"40{"sid":""#));
        send(&mut ws, "40/c,").await;
        let joined = recv(&mut ws).await;
        assert!(joined.starts_with(r#"40/c,{"sid":""#), "{joined}");
        assert!(joined.contains(r#""pid":""#), "{joined}");
        send(&mut ws, r#"42/c,7["ev",{"n":1}]"#).await;
        let (a, b) = (recv(&mut ws).await, recv(&mut ws).await);
        assert!(a.starts_with(r#"42/c,["ev",{"n":1},""#), "{a}");
        assert!(a.ends_with(r#":1"]"#), "{a}");
        assert_eq!(b, r#"43/c,7[{"offset":1}]"#);
        // Errors come back in the ack; binary packets are refused, not fatal.
        send(&mut ws, r#"42/c,8["ev",1,2]"#).await;
        assert!(recv(&mut ws).await.starts_with(r#"43/c,8[{"error":"#));
        send(&mut ws, r#"451-/c,9["ev",{"_placeholder":true,"num":0}]"#).await;
        assert!(recv(&mut ws).await.contains("binary attachments"));
        send(&mut ws, "41/c,").await;
        send(&mut ws, r#"40/a b,"#).await;
        let refused = recv(&mut ws).await;
        assert!(refused.starts_with(r#"44/a b,{"message":"#), "{refused}");
        // The main namespace carries the connection, and no channel.
        send(&mut ws, "40").await;
        assert!(recv(&mut ws).await.starts_with(r#"40{"sid":""#));
        send(&mut ws, r#"423["ev",1]"#).await;
        let no = recv(&mut ws).await;
        assert!(
            no.starts_with(r#"433[{"error":"#) && no.contains("main namespace"),
            "{no}"
        );
    }

    #[tokio::test]
    async fn refusals_cost_commands_like_any_other() {
        let cfg = crate::config::SessionConfig {
            command_burst: 3,
            command_rate: 1,
            ..Default::default()
        };
        let ctx = ctx_with(cfg, None);
        let mut ws = client(|io| run(io, ctx, ClientHeaders::default()));
        recv(&mut ws).await;
        for _ in 0..4 {
            send(&mut ws, "40/a,b,").await;
        }
        let mut answers = Vec::new();
        for _ in 0..4 {
            answers.push(recv(&mut ws).await);
        }
        assert!(
            answers[..3]
                .iter()
                .all(|a| a.contains(r#""code":"bad_request""#)),
            "{answers:?}"
        );
        assert!(
            answers[3].contains(r#""code":"rate_limited""#),
            "{answers:?}"
        );
    }

    #[tokio::test]
    async fn the_server_pings_and_an_unanswered_ping_closes() {
        let cfg = crate::config::SessionConfig {
            ping_interval: std::time::Duration::from_millis(100),
            pong_timeout: std::time::Duration::from_millis(50),
            ..Default::default()
        };
        let ctx = ctx_with(cfg, None);
        let mut ws = client(|io| run(io, ctx, ClientHeaders::default()));
        let open = recv(&mut ws).await;
        assert!(
            open.contains(r#""pingInterval":100,"pingTimeout":50"#),
            "{open}"
        );
        send(&mut ws, "40").await;
        recv(&mut ws).await;
        assert_eq!(recv(&mut ws).await, "2");
        send(&mut ws, "3").await;
        assert_eq!(recv(&mut ws).await, "2");
        let close = ws.read_frame().await.expect("close frame");
        assert_eq!(close.opcode, OpCode::Close);
        assert_eq!(
            u16::from_be_bytes([close.payload[0], close.payload[1]]),
            4002
        );
    }

    #[tokio::test]
    async fn unreadable_packets_close_the_connection() {
        let mut ws = pair();
        recv(&mut ws).await;
        send(&mut ws, "4x").await;
        let close = ws.read_frame().await.expect("close frame");
        assert_eq!(close.opcode, OpCode::Close);
        assert_eq!(
            u16::from_be_bytes([close.payload[0], close.payload[1]]),
            4502
        );
    }

    #[tokio::test]
    async fn recovery_replays_from_the_pid_position() {
        let ctx = ctx_with(crate::config::SessionConfig::default(), None);
        let start = |ctx: &Arc<SessionCtx>| {
            let ctx = Arc::clone(ctx);
            client(|io| run(io, ctx, ClientHeaders::default()))
        };
        let mut a = start(&ctx);
        recv(&mut a).await;
        send(&mut a, "40/r,").await;
        let joined = recv(&mut a).await;
        let pid = joined
            .split(r#""pid":""#)
            .nth(1)
            .and_then(|s| s.strip_suffix(r#""}"#))
            .expect("pid")
            .to_owned();
        drop(a);
        // Published while the client was away, which never saw an event.
        let mut b = start(&ctx);
        recv(&mut b).await;
        send(&mut b, "40/r,").await;
        recv(&mut b).await;
        send(&mut b, r#"42/r,1["ev",1]"#).await;
        send(&mut b, r#"42/r,2["ev",2]"#).await;
        for _ in 0..4 {
            recv(&mut b).await;
        }
        let mut c = start(&ctx);
        recv(&mut c).await;
        send(&mut c, &format!(r#"40/r,{{"pid":"{pid}"}}"#)).await;
        let back = recv(&mut c).await;
        assert!(back.ends_with(&format!(r#""pid":"{pid}"}}"#)), "{back}");
        let (one, two) = (recv(&mut c).await, recv(&mut c).await);
        assert!(
            one.starts_with(r#"42/r,["ev",1,""#) && one.ends_with(r#":1"]"#),
            "{one}"
        );
        assert!(
            two.starts_with(r#"42/r,["ev",2,""#) && two.ends_with(r#":2"]"#),
            "{two}"
        );
        // An unknown position is not recovered: a fresh pid.
        let mut d = start(&ctx);
        recv(&mut d).await;
        send(&mut d, r#"40/r,{"pid":"nope:3","offset":"nope:9"}"#).await;
        let fresh = recv(&mut d).await;
        assert!(!fresh.contains("nope"), "{fresh}");
    }
}
