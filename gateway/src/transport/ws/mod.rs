//! Herald protocol v1 over WebSocket: one adapter around the session core.
//!
//! Sits between the server's upgrade handler and `session`. Each connection
//! is a task pair over any byte stream (the upgraded socket, or an
//! in-memory duplex in tests):
//! - the **reader** (this task) reads whole messages with [`read`] and
//!   hands each text message to the session core, in arrival order;
//! - the **writer** ([`write`]) owns the write half and the session's
//!   outbound queue, batches queued frames into few writes, pings on the
//!   session's timers, answers WebSocket pings, and writes the final
//!   `disconnect` + close frame whatever the reason.
//!
//! A message read is not cancel-safe, so it is never raced in a `select!`:
//! the read half is wrapped in [`CancelRead`], which turns a cancellation
//! into an I/O error that the read returns normally.

pub(crate) mod read;
pub(crate) mod write;

use crate::hooks::ClientHeaders;
use crate::hub::{Ending, SessionLink};
use crate::publication::Wire;
use crate::session::{Opened, Session, SessionCtx};
use bytes::Bytes;
use herald_proto::{CloseCode, Command, ErrorCode};
use read::{Message, MessageReader, ReadError};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use write::{HeraldFraming, Writer};

/// Runs one WebSocket connection (after the upgrade) to its end.
pub(crate) fn run<S>(
    io: S,
    ctx: Arc<SessionCtx>,
    headers: ClientHeaders,
) -> impl Future<Output = ()> + Send
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    serve(io, ctx, Wire::Herald, headers, HeraldFraming, HeraldInbound)
}

/// What a protocol over WebSocket does with the client's data messages;
/// the rest (control frames, closing, the writer) is shared.
pub(crate) trait Inbound: Send {
    /// Called once the session is open, before the writer starts.
    fn opened(&mut self, _link: &SessionLink, _ctx: &SessionCtx) {}
    /// Handles one text message; true when the stream must stop being read.
    fn text(
        &mut self,
        session: &mut Session,
        opened: &OpenedParts,
        text: &str,
    ) -> impl std::future::Future<Output = bool> + Send;
    /// Handles one (whole) binary message.
    fn binary(&mut self, session: &mut Session);
}

/// What an [`Inbound`] may look at besides the session core.
pub(crate) struct OpenedParts {
    pub(crate) link: Arc<SessionLink>,
    pub(crate) shared: Arc<crate::session::Shared>,
}

/// Herald protocol v1: each text message is one JSON command.
struct HeraldInbound;

impl Inbound for HeraldInbound {
    async fn text(&mut self, session: &mut Session, _: &OpenedParts, text: &str) -> bool {
        session.command(|| Command::decode(text)).await;
        false
    }

    fn binary(&mut self, session: &mut Session) {
        session.error(
            None,
            ErrorCode::BadRequest,
            "binary frames are not supported: send JSON text frames",
            None,
        );
    }
}

/// Runs one connection of any protocol over WebSocket to its end: the
/// reader here, the writer in its own task with `framing`. `headers`: the
/// upgrade request's, for the session's hooks. Opens the session now.
///
/// Not `async` (nor is [`run`]): each async layer would keep its own copy
/// of its arguments and of the future it awaits in every connection's task
/// (measured: ~0.9 KiB per connection for these two wrappers).
pub(crate) fn serve<S, F, I>(
    io: S,
    ctx: Arc<SessionCtx>,
    wire: Wire,
    headers: ClientHeaders,
    framing: F,
    mut inbound: I,
) -> impl Future<Output = ()> + Send
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    F: write::Framing,
    I: Inbound,
{
    let opened = Session::open_with(Arc::clone(&ctx), wire, headers);
    inbound.opened(&opened.link, &ctx);
    serve_opened(io, ctx, opened, framing, inbound)
}

/// Runs a session already opened (e.g. one that began on another
/// transport) over a WebSocket connection to its end.
pub(crate) async fn serve_opened<S, F, I>(
    io: S,
    ctx: Arc<SessionCtx>,
    opened: Opened,
    framing: F,
    mut inbound: I,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    F: write::Framing,
    I: Inbound,
{
    let Opened {
        mut session,
        link,
        shared,
        rx,
    } = opened;
    let (r, w) = tokio::io::split(io);
    let read_stop = CancellationToken::new();
    let mut socket = CancelRead::new(r, read_stop.clone());
    let pong = Arc::new(PongSlot::default());
    let writer = tokio::spawn(
        Writer::new(
            w,
            framing,
            rx,
            Arc::clone(&link),
            Arc::clone(&shared),
            Arc::clone(&ctx),
            read_stop.clone(),
            Arc::clone(&pong),
        )
        .run(),
    );
    let parts = OpenedParts {
        link: Arc::clone(&link),
        shared,
    };
    // Borrowed, so the raw socket can still be drained after the reader gives up.
    let reader = MessageReader::new(&mut socket, ctx.cfg.max_frame());
    let broken = read_messages(&mut session, &parts, &pong, reader, &mut inbound).await;
    if broken && matches!(link.ending(), Some(Ending::Close { .. })) {
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
    // Boxed: the leaving phase's state would otherwise be part of every
    // connection's task for its whole life.
    Box::pin(session.close()).await;
}

/// Hands messages to the session until the connection ends. True when the
/// byte stream broke (it can no longer be read as frames).
async fn read_messages<R: AsyncRead + Unpin, I: Inbound>(
    session: &mut Session,
    parts: &OpenedParts,
    pong: &PongSlot,
    mut reader: MessageReader<R>,
    inbound: &mut I,
) -> bool {
    let link = &*parts.link;
    loop {
        // Messages parsed from an already-filled buffer never touch a
        // tokio resource, so without this a flooding client's reader
        // could hold a worker thread for a whole buffer of commands.
        tokio::task::coop::consume_budget().await;
        let msg = match reader.next().await {
            Ok(m) => m,
            Err(e) => {
                read_error(link, e);
                return true;
            }
        };
        if link.closed().is_raised() {
            // Closing: keep draining (so our close frame is not lost to a
            // reset) until the client's close or EOF.
            if matches!(msg, Message::Close(_)) {
                return false;
            }
            continue;
        }
        match msg {
            Message::Text(bytes) => match std::str::from_utf8(&bytes) {
                Ok(text) => {
                    // Boxed: a command's state exists only while it runs,
                    // not in every idle connection's task.
                    if Box::pin(inbound.text(session, parts, text)).await {
                        return true;
                    }
                }
                Err(_) => {
                    read_error(link, ReadError::Protocol("text message is not valid UTF-8"));
                    return true;
                }
            },
            Message::Binary => inbound.binary(session),
            Message::Close(_) => {
                link.finish(Ending::ClientClosed);
                return false;
            }
            Message::Ping(payload) => {
                pong.set(payload);
                link.wake_writer();
            }
            Message::Pong => {}
        }
    }
}

pub(crate) fn read_error(link: &SessionLink, e: ReadError) {
    match e {
        ReadError::TooLarge => {
            link.close(CloseCode::MessageTooLarge);
        }
        ReadError::Io(_) | ReadError::Eof => {
            link.finish(Ending::Gone);
        }
        ReadError::Protocol(why) => {
            tracing::debug!(why, "WebSocket protocol violation");
            link.close_with(CloseCode::ProtocolError, why);
        }
    }
}

/// The latest WebSocket ping's payload, for the writer to answer (a slot,
/// not a queue: only the newest ping needs a pong).
#[derive(Default)]
/// The payload of the last ping to answer. The reader sets it and wakes
/// the writer through the session's link.
pub(crate) struct PongSlot {
    payload: Mutex<Option<Bytes>>,
    /// A pong waits: the writer checks this flag on every wake.
    set: AtomicBool,
}

impl PongSlot {
    pub(crate) fn set(&self, payload: Bytes) {
        *self.payload.lock().unwrap_or_else(|e| e.into_inner()) = Some(payload);
        self.set.store(true, Ordering::Release);
    }

    fn is_set(&self) -> bool {
        self.set.load(Ordering::Acquire)
    }

    fn take(&self) -> Option<Bytes> {
        self.set.store(false, Ordering::Release);
        self.payload
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

/// A read half that fails with `ConnectionAborted` once `stop` is cancelled,
/// so a pending read returns instead of being dropped mid-frame.
pub(crate) struct CancelRead<R> {
    inner: R,
    stop: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl<R> CancelRead<R> {
    pub(crate) fn new(inner: R, stop: CancellationToken) -> Self {
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::session::tests::ctx_with;
    use fastwebsockets::{Frame, OpCode, Payload, Role, WebSocket};
    use serde_json::Value;
    use tokio::io::DuplexStream;

    /// A real WebSocket client over an in-memory stream, the server side
    /// run by `serve` (this transport's [`run`], or another protocol's).
    pub(crate) fn client<Fut>(serve: impl FnOnce(DuplexStream) -> Fut) -> WebSocket<DuplexStream>
    where
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let (client, server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(serve(server));
        WebSocket::after_handshake(client, Role::Client)
    }

    fn pair() -> WebSocket<DuplexStream> {
        let ctx = ctx_with(crate::config::SessionConfig::default(), None);
        client(|io| run(io, ctx, ClientHeaders::default()))
    }

    /// Sends one text message.
    pub(crate) async fn send(ws: &mut WebSocket<DuplexStream>, text: &str) {
        let frame = Frame::text(Payload::Owned(text.as_bytes().to_vec()));
        ws.write_frame(frame).await.expect("send");
    }

    async fn recv(ws: &mut WebSocket<DuplexStream>) -> Value {
        let f = ws.read_frame().await.expect("frame");
        assert_eq!(f.opcode, OpCode::Text);
        serde_json::from_slice(&f.payload).expect("JSON")
    }

    #[tokio::test]
    async fn speaks_protocol_v1_over_any_byte_stream() {
        let mut ws = pair();
        send(&mut ws, r#"{"op":"connect","id":1}"#).await;
        assert_eq!(recv(&mut ws).await["op"], "connected");
        send(&mut ws, r#"{"op":"subscribe","id":2,"channel":"c"}"#).await;
        assert_eq!(recv(&mut ws).await["op"], "subscribed");
        send(
            &mut ws,
            r#"{"op":"emit","id":3,"channel":"c","event":"e","data":[1]}"#,
        )
        .await;
        let (a, b) = (recv(&mut ws).await, recv(&mut ws).await);
        assert_eq!(
            (a["op"].as_str(), a["data"][0].as_u64()),
            (Some("message"), Some(1))
        );
        assert_eq!(
            (b["op"].as_str(), b["offset"].as_u64()),
            (Some("emitted"), Some(1))
        );
    }

    #[tokio::test]
    async fn a_data_frame_inside_a_fragmented_message_fails_the_connection() {
        let mut ws = pair();
        let part = |fin, op, s: &str| Frame::new(fin, op, None, Payload::Owned(s.into()));
        ws.write_frame(part(false, OpCode::Text, r#"{"op":"#))
            .await
            .expect("send");
        ws.write_frame(part(true, OpCode::Text, r#"{"op":"ping"}"#))
            .await
            .expect("send");
        let notice = recv(&mut ws).await;
        assert_eq!(
            (notice["op"].as_str(), notice["code"].as_u64()),
            (Some("disconnect"), Some(4502))
        );
        let close = ws.read_frame().await.expect("close frame");
        assert_eq!(close.opcode, OpCode::Close);
        assert_eq!(
            u16::from_be_bytes([close.payload[0], close.payload[1]]),
            4502
        );
    }
}
