//! The WebSocket writer: the session's outbound queue onto the socket.
//!
//! Part of the Herald v1 WebSocket transport, and shared by every protocol
//! spoken over WebSocket (`transport::socketio` too): what differs between
//! them is the [`Framing`], which turns queued items, pings and the ending
//! into text messages. Owns the write half; wakes for queued items
//! (batched, up to 64 KiB per write), the session's timers (pings, and
//! deadlines that end it), WebSocket pings to answer, the drain signal, and
//! the session's end, which it writes as the framing's farewell + close.
//! The last two are flags that wake it through the outbox's waker, so the
//! writer holds no future per event (memory per idle connection).

use super::PongSlot;
use crate::hub::{Ending, SessionLink};
use crate::metrics::metrics;
use crate::outbox::Outbox;
use crate::publication::{Outbound, Wire};
use crate::session::timers::Timers;
use crate::session::{SessionCtx, Shared};
use fastwebsockets::{Frame, OpCode, Payload};
use herald_proto::{CloseCode, Reply};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// Largest batch of queued frames coalesced into one write.
const BATCH_BYTES: usize = 64 * 1024;

/// Bytes a writer accumulates before adding them to the shared counter.
const REPORT_BYTES: u64 = 64 * 1024;

/// A server ping, as Herald v1 sends it.
const PING: &[u8] = br#"{"op":"ping"}"#;

/// How one protocol writes a session's items, pings and ending as
/// WebSocket messages (appended to a batch with [`push_frame`]).
pub(crate) trait Framing: Send + 'static {
    /// Appends one queued item.
    fn item(&mut self, buf: &mut Vec<u8>, item: &Outbound);
    /// Appends a server ping, after a fresh reconnect token when one is due.
    fn ping(&mut self, buf: &mut Vec<u8>, token: Option<&str>);
    /// Appends what tells the client the server closes with `code` (the
    /// close frame itself follows).
    fn closing(&mut self, buf: &mut Vec<u8>, code: CloseCode, reason: &str);
}

/// Herald protocol v1: items as queued, `{"op":"ping"}`, a `disconnect` notice.
pub(crate) struct HeraldFraming;

impl Framing for HeraldFraming {
    fn item(&mut self, buf: &mut Vec<u8>, item: &Outbound) {
        push_frame(buf, OpCode::Text, item.encoded(Wire::Herald));
    }

    fn ping(&mut self, buf: &mut Vec<u8>, token: Option<&str>) {
        if let Some(t) = token {
            let frame = Wire::Herald.reply(&Reply::Token { reconnect_token: t });
            push_frame(buf, OpCode::Text, &frame);
        }
        push_frame(buf, OpCode::Text, PING);
    }

    fn closing(&mut self, buf: &mut Vec<u8>, code: CloseCode, reason: &str) {
        let notice = Wire::Herald.reply(&Reply::Disconnect {
            code,
            reason,
            reconnect: code.reconnect(),
        });
        push_frame(buf, OpCode::Text, &notice);
    }
}

/// What woke the writer.
enum Wake {
    /// The session is closing or a pong waits: the loop checks which.
    Flag,
    Shutdown,
    /// A ping is due, with a fresh reconnect token when one is.
    Ping(Option<String>),
    Item(Outbound),
}

pub(crate) struct Writer<W, F> {
    w: W,
    framing: F,
    rx: Outbox,
    link: Arc<SessionLink>,
    shared: Arc<Shared>,
    ctx: Arc<SessionCtx>,
    read_stop: CancellationToken,
    pong: Arc<PongSlot>,
    /// Reused between batches; shrunk after big bursts so idle sessions stay small.
    buf: Vec<u8>,
    /// Bytes written but not yet added to `herald_bytes_sent_total`: the
    /// shared counter is touched once per 64 KiB, a ping or the end, not per write.
    unreported: u64,
    /// Batches written; the queue depth is sampled on every 64th.
    batches: u32,
}

/// Appends one whole unmasked frame (the server's) to `buf`.
pub(crate) fn push_frame(buf: &mut Vec<u8>, opcode: OpCode, payload: &[u8]) {
    let mut frame = Frame::new(true, opcode, None, Payload::Borrowed(payload));
    let mut head = [0u8; 10];
    let n = frame.fmt_head(&mut head);
    buf.extend_from_slice(&head[..n]);
    buf.extend_from_slice(payload);
}

impl<W: AsyncWrite + Unpin, F: Framing> Writer<W, F> {
    #[expect(clippy::too_many_arguments, reason = "the parts of one opened session")]
    pub(crate) fn new(
        w: W,
        framing: F,
        rx: Outbox,
        link: Arc<SessionLink>,
        shared: Arc<Shared>,
        ctx: Arc<SessionCtx>,
        read_stop: CancellationToken,
        pong: Arc<PongSlot>,
    ) -> Self {
        Self {
            w,
            framing,
            rx,
            link,
            shared,
            ctx,
            read_stop,
            pong,
            buf: Vec::new(),
            unreported: 0,
            batches: 0,
        }
    }

    /// Queues one item's frame; returns the bytes it counted in the queue.
    fn push(&mut self, item: &Outbound) -> usize {
        self.framing.item(&mut self.buf, item);
        item.size()
    }

    pub(crate) async fn run(mut self) {
        let ctx = Arc::clone(&self.ctx);
        let link = Arc::clone(&self.link);
        let pong = Arc::clone(&self.pong);
        let mut timers = Timers::new(
            Arc::clone(&ctx),
            Arc::clone(&self.shared),
            Arc::clone(&link),
        );
        // Pinned once: re-creating it every loop would re-register its
        // waker (a lock) on every batch.
        let shutdown_fut = ctx.shutdown.wait();
        tokio::pin!(shutdown_fut);
        loop {
            // The session closing and a pong to answer are flags: they wake
            // this task through the queue's waker, so no future waits on them.
            if link.closed().is_raised() {
                break;
            }
            if pong.is_set() {
                let p = pong.take();
                push_frame(&mut self.buf, OpCode::Pong, &p.unwrap_or_default());
                if self.flush().await.is_err() {
                    break;
                }
                continue;
            }
            // A delivery is the common wake, so queued items are polled
            // first and such a wake polls nothing else. When the drain has
            // begun, and every 32nd batch (for the timers), those come first.
            let urgent = self.batches % 32 == 0 || (!timers.draining() && ctx.shutdown.is_raised());
            let wake = if urgent {
                tokio::select! {
                    biased;
                    _ = &mut shutdown_fut, if !timers.draining() => Wake::Shutdown,
                    due = timers.ping_due() => Wake::Ping(due.token),
                    w = std::future::poll_fn(|cx| self.poll_next(cx)) => w,
                }
            } else {
                tokio::select! {
                    biased;
                    w = std::future::poll_fn(|cx| self.poll_next(cx)) => w,
                    _ = &mut shutdown_fut, if !timers.draining() => Wake::Shutdown,
                    due = timers.ping_due() => Wake::Ping(due.token),
                }
            };
            let written = match wake {
                Wake::Flag => continue,
                Wake::Shutdown => {
                    timers.drain();
                    Ok(())
                }
                Wake::Ping(token) => {
                    self.report_bytes();
                    self.framing.ping(&mut self.buf, token.as_deref());
                    self.flush().await
                }
                Wake::Item(first) => self.batch(first).await,
            };
            if written.is_err() {
                break;
            }
        }
        // Boxed, like the session's close: only a closing writer needs its state.
        Box::pin(self.finish()).await;
    }

    /// A raised flag (closing, a pong to send) or the next queued item.
    /// Flags are checked again after the queue registers the waker, so a
    /// flag raised meanwhile is not missed (raising it wakes that waker).
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Wake> {
        let flagged = |w: &Self| w.link.closed().is_raised() || w.pong.is_set();
        if flagged(self) {
            return Poll::Ready(Wake::Flag);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(item) => Poll::Ready(Wake::Item(item)),
            Poll::Pending if flagged(self) => Poll::Ready(Wake::Flag),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Writes `first` and what else is queued, up to a batch.
    async fn batch(&mut self, first: Outbound) -> std::io::Result<()> {
        if self.batches % 64 == 0 {
            metrics().queue_depth.observe((self.rx.len() + 1) as f64);
        }
        self.batches = self.batches.wrapping_add(1);
        let mut taken = self.push(&first);
        while self.buf.len() < BATCH_BYTES {
            match self.rx.try_recv() {
                Some(m) => taken += self.push(&m),
                None => break,
            }
        }
        self.link.taken(taken);
        self.flush().await
    }

    /// Writes the batch; gives up early (keeping the rest) if the session is closed meanwhile.
    async fn flush(&mut self) -> std::io::Result<()> {
        let mut pos = 0;
        while pos < self.buf.len() {
            let written = std::future::poll_fn(|cx| {
                if self.link.closed().is_raised() {
                    return Poll::Ready(None);
                }
                // Closing wakes this task through the queue, also mid-write
                // (checked again after registering, as in `poll_next`).
                self.rx.register(cx);
                match Pin::new(&mut self.w).poll_write(cx, &self.buf[pos..]) {
                    Poll::Ready(r) => Poll::Ready(Some(r)),
                    Poll::Pending if self.link.closed().is_raised() => Poll::Ready(None),
                    Poll::Pending => Poll::Pending,
                }
            })
            .await;
            match written {
                None => {
                    self.buf.drain(..pos);
                    return Ok(());
                }
                Some(Ok(0)) => return Err(std::io::ErrorKind::WriteZero.into()),
                Some(Ok(n)) => {
                    pos += n;
                    self.unreported += n as u64;
                }
                Some(Err(e)) => {
                    self.link.finish(Ending::Gone);
                    return Err(e);
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
            self.rx.shrink();
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
                        let Some(m) = self.rx.try_recv() else { break };
                        let n = self.push(&m);
                        self.link.taken(n);
                    }
                }
                metrics().disconnect(code);
                tracing::debug!(session = %format_args!("{:016x}", self.link.id), code = code.code(), reason, "server closing session");
                self.framing.closing(&mut self.buf, code, reason);
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
