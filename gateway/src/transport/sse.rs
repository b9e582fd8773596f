//! Server-Sent Events: `GET /sse?channel=a&channel=b`, a one-way stream of
//! publications over plain HTTP/1.1, resumable from `Last-Event-ID`.
//!
//! Sits between the server's `/sse` handler and `session`, like the other
//! transports: it maps the request to session commands (a `connect` with the
//! request's token, then one `subscribe` per channel, each with the `since`
//! position `Last-Event-ID` gives it) and writes what the core queues as SSE
//! events. Auth, channel rules, recovery, the per-user limit, the bounded
//! queue (a slow reader is cut), token expiry and drain are the core's.
//!
//! One task per stream owns the session, its queue and its timers. It runs
//! the commands first, collecting what the core queues meanwhile, so that a
//! refusal is an HTTP status (401, 403, …) with the core's message, not a
//! stream; then it hands the server the response whose body it feeds
//! through a one-chunk channel (hyper pulls a chunk only when the socket
//! takes it, so a reader that stops reading fills the session's queue).
//!
//! The stream (`docs/sse.md`):
//! - first `retry:` (1–3 s, random per stream, so a fleet of browsers does
//!   not reconnect in lockstep) and `id:` with every channel's start position;
//! - `event: unrecovered` + `data: {"channels":[...]}` naming the channels
//!   whose missed publications cannot be replayed;
//! - each publication: `event:` its event name, `data:` its JSON payload on
//!   one line, `id:` every channel's position (see [`encode_id`]);
//! - `: ping` comments every `session.ping_interval`;
//! - a server close: `event: herald:disconnect` + `data: {code, reason,
//!   reconnect}`, then the end of the response.

use crate::hooks::ClientHeaders;
use crate::hub::{Ending, SessionLink};
use crate::metrics::metrics;
use crate::publication::{Outbound, Wire};
use crate::query;
use crate::session::timers::Timers;
use crate::session::{Opened, Session, SessionCtx};
use axum::http::{HeaderMap, StatusCode, header};
use bytes::Bytes;
use herald_proto::{CloseCode, Command, Op, Reply, Since};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// The cookie a browser's `EventSource` can carry the connection JWT in.
pub(crate) const TOKEN_COOKIE: &str = "herald_token";

/// Largest batch of queued events written as one chunk.
const BATCH_BYTES: usize = 64 * 1024;

/// The reconnect delay told to each stream: random in this range (ms).
const RETRY_MS: std::ops::RangeInclusive<u64> = 1000..=3000;

/// A `GET /sse` request, read.
#[derive(Debug, Default)]
pub(crate) struct SseRequest {
    /// The channels, in request order, without repeats.
    pub(crate) channels: Vec<String>,
    /// The connection JWT: `Authorization: Bearer`, else the cookie, else `?token=`.
    pub(crate) token: Option<String>,
    /// Positions from `Last-Event-ID`: `None` without the header; a header
    /// that cannot be read counts as one naming no channel.
    pub(crate) since: Option<HashMap<String, (String, u64)>>,
}

impl SseRequest {
    /// Reads the request's query and headers.
    pub(crate) fn read(query: Option<&str>, headers: &HeaderMap) -> Result<Self, String> {
        let mut req = Self::default();
        let mut query_token = None;
        for (k, v) in query.unwrap_or("").split('&').filter_map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            Some((query::decode(k, true)?, query::decode(v, true)?))
        }) {
            match k.as_str() {
                "channel" if !req.channels.contains(&v) => req.channels.push(v),
                "token" if !v.is_empty() => query_token = Some(v),
                _ => {}
            }
        }
        if req.channels.is_empty() {
            return Err("name at least one channel: /sse?channel=NAME (repeat for more)".into());
        }
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|t| t.trim().to_owned());
        let cookie = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().split_once('='))
            .find(|(k, _)| *k == TOKEN_COOKIE)
            .map(|(_, v)| v.trim_matches('"').to_owned());
        req.token = bearer.or(cookie).or(query_token);
        req.since = headers
            .get("last-event-id")
            .map(|v| v.to_str().ok().and_then(parse_id).unwrap_or_default());
        Ok(req)
    }
}

/// Whether a channel-name byte stays as it is in an `id:` (RFC 3986 unreserved).
fn unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

/// The `id:` of a stream: every channel's position, sorted by channel,
/// `CHANNEL=EPOCH:OFFSET` joined by `,`; channel names are percent-encoded
/// (all but RFC 3986 unreserved bytes), so `=`, `:` and `,` in a name never
/// collide. E.g. `reviews=K3x9Qa1bZ0pd:17,user%3A42=Hx81nd0Lq2aa:3`.
///
/// Unsigned on purpose: a position is no secret (it counts publications),
/// and a forged one can only ask for history of channels the request is
/// subscribed to anyway, under the same rules and auth; recovery is bounded
/// by `recovery_max` whatever the id says.
pub(crate) fn encode_id(out: &mut Vec<u8>, positions: &BTreeMap<Box<str>, (Arc<str>, u64)>) {
    for (i, (ch, (epoch, offset))) in positions.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        for &c in ch.as_bytes() {
            if unreserved(c) {
                out.push(c);
            } else {
                out.extend_from_slice(format!("%{c:02X}").as_bytes());
            }
        }
        out.push(b'=');
        for &c in epoch.as_bytes() {
            // Epochs are alphanumeric; anything else is dropped rather than
            // allowed to break the line.
            if unreserved(c) {
                out.push(c);
            }
        }
        out.push(b':');
        out.extend_from_slice(offset.to_string().as_bytes());
    }
}

/// Reads an `id:` made by [`encode_id`]; `None` when it is not one.
pub(crate) fn parse_id(id: &str) -> Option<HashMap<String, (String, u64)>> {
    let mut out = HashMap::new();
    for pair in id.split(',').filter(|p| !p.is_empty()) {
        let (ch, pos) = pair.split_once('=')?;
        let (epoch, offset) = pos.rsplit_once(':')?;
        let offset = offset.parse().ok()?;
        out.insert(query::decode(ch, false)?, (epoch.to_owned(), offset));
    }
    Some(out)
}

/// `event: NAME` + `data: JSON` lines of one event (without `id:` and the
/// blank line that ends it). JSON has no raw line breaks inside strings,
/// only as whitespace between tokens, so those become spaces and the
/// payload stays one `data:` line; an event name never has control
/// characters (`validate_event`), but one that did would lose them.
pub(crate) fn event_lines(event: &str, data: &str) -> Box<[u8]> {
    let mut out = Vec::with_capacity(event.len() + data.len() + 16);
    out.extend_from_slice(b"event: ");
    out.extend(event.bytes().filter(|c| !matches!(c, b'\r' | b'\n')));
    out.extend_from_slice(b"\ndata: ");
    out.extend(data.bytes().map(|c| match c {
        b'\r' | b'\n' => b' ',
        c => c,
    }));
    out.push(b'\n');
    out.into_boxed_slice()
}

/// How a stream starts: the body to send, or a refusal.
pub(crate) enum Start {
    Stream(axum::body::Body),
    Refused(StatusCode, String),
}

/// A reply the core queued, as the stream needs to read it.
#[derive(serde::Deserialize)]
struct ReplyView<'a> {
    #[serde(borrow)]
    op: Cow<'a, str>,
    #[serde(default, borrow)]
    channel: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    code: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    message: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    epoch: Option<Cow<'a, str>>,
    #[serde(default)]
    offset: Option<u64>,
    #[serde(default)]
    recovered: Option<bool>,
}

/// The HTTP status a refusal of the core becomes.
fn status(code: &str) -> StatusCode {
    match code {
        "unauthorized" => StatusCode::UNAUTHORIZED,
        "forbidden" => StatusCode::FORBIDDEN,
        "too_many_connections" | "rate_limited" => StatusCode::TOO_MANY_REQUESTS,
        "unavailable" => StatusCode::SERVICE_UNAVAILABLE,
        "internal" => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    }
}

/// Runs one SSE stream to its end: sends how it starts through `start`,
/// then feeds the body. `abort` drops the HTTP connection (a slow reader,
/// or a farewell that cannot be written within `close_timeout`).
pub(crate) async fn run(
    ctx: Arc<SessionCtx>,
    req: SseRequest,
    headers: ClientHeaders,
    start: oneshot::Sender<Start>,
    abort: CancellationToken,
) {
    // Every channel is a subscribe: within the subscription limit, and
    // within the command burst together with the connect.
    let most = (ctx.cfg.max_subscriptions).min((ctx.cfg.command_burst as usize).saturating_sub(1));
    if req.channels.len() > most {
        let why = format!("too_many_subscriptions: at most {most} channels per stream\n");
        let _ = start.send(Start::Refused(StatusCode::BAD_REQUEST, why));
        return;
    }
    let opened = Session::open_with(Arc::clone(&ctx), Wire::Sse, headers);
    let span = tracing::info_span!(
        "sse",
        session = %format_args!("{:016x}", opened.link.id),
        channels = req.channels.len(),
        resume = req.since.is_some()
    );
    stream(ctx, req, opened, start, abort)
        .instrument(span)
        .await;
}

async fn stream(
    ctx: Arc<SessionCtx>,
    req: SseRequest,
    opened: Opened,
    start: oneshot::Sender<Start>,
    abort: CancellationToken,
) {
    let Opened {
        mut session,
        link,
        shared,
        mut rx,
    } = opened;
    // The commands, while collecting what the core queues meanwhile (a
    // replay may be longer than the queue).
    let mut queued = Vec::new();
    // Boxed: this phase's state would otherwise stay in every idle
    // stream's task for its whole life.
    Box::pin(async {
        let commands = commands(&mut session, &shared, &req);
        let collect = async {
            loop {
                let item = rx.recv().await;
                link.taken(item.size());
                queued.push(item);
            }
        };
        tokio::select! {
            biased;
            () = commands => {}
            () = collect => {}
        }
    })
    .await;
    while let Some(item) = rx.try_recv() {
        link.taken(item.size());
        queued.push(item);
    }
    let mut open = match opening(&req, &queued, &link, shared.is_connected()) {
        Ok(o) => o,
        Err((status, message)) => {
            tracing::debug!(%status, message, "SSE stream refused");
            let _ = start.send(Start::Refused(status, message));
            link.finish(Ending::Gone);
            Box::pin(session.close()).await;
            return;
        }
    };
    let (tx, body_rx) = mpsc::channel::<Bytes>(1);
    let body = futures_util::stream::unfold(body_rx, |mut rx| async move {
        // An empty chunk ends the stream.
        match rx.recv().await {
            Some(b) if !b.is_empty() => Some((Ok::<_, std::convert::Infallible>(b), rx)),
            _ => None,
        }
    });
    if start
        .send(Start::Stream(axum::body::Body::from_stream(body)))
        .is_err()
    {
        link.finish(Ending::Gone);
        Box::pin(session.close()).await;
        return;
    }
    let mut buf = Vec::new();
    buf.extend_from_slice(
        format!(": herald\nretry: {}\nid: ", fastrand::u64(RETRY_MS.clone())).as_bytes(),
    );
    encode_id(&mut buf, &open.positions);
    buf.extend_from_slice(b"\n\n");
    if !open.unrecovered.is_empty() {
        let data = serde_json::json!({ "channels": open.unrecovered }).to_string();
        buf.extend_from_slice(&event_lines("unrecovered", &data));
        buf.push(b'\n');
    }
    for item in &queued {
        open.push(&mut buf, item);
    }
    drop(queued);
    let w = Writer {
        ctx: Arc::clone(&ctx),
        link: Arc::clone(&link),
        tx,
        abort,
    };
    w.run(&mut session, &mut rx, shared, open, buf).await;
    link.finish(Ending::Gone);
    Box::pin(session.close()).await;
}

/// `connect` with the request's token, then (if it connected) a
/// `subscribe` per channel.
async fn commands(session: &mut Session, shared: &crate::session::Shared, req: &SseRequest) {
    session
        .command(|| {
            Ok(Command {
                op: Op::Connect,
                id: Some(0),
                token: req.token.as_deref().map(Cow::Borrowed),
                ..Command::default()
            })
        })
        .await;
    if !shared.is_connected() {
        return;
    }
    for (i, ch) in req.channels.iter().enumerate() {
        let since = req
            .since
            .as_ref()
            .and_then(|s| s.get(ch))
            .map(|(epoch, offset)| Since {
                epoch: Cow::Borrowed(epoch.as_str()),
                offset: *offset,
            });
        session
            .command(|| {
                Ok(Command {
                    op: Op::Subscribe,
                    id: Some(i as u64 + 1),
                    channel: Some(Cow::Borrowed(ch)),
                    since,
                    ..Command::default()
                })
            })
            .await;
    }
}

/// What a stream knows once its commands have run.
struct Open {
    /// Each channel's latest position delivered on this stream.
    positions: BTreeMap<Box<str>, (Arc<str>, u64)>,
    unrecovered: Vec<String>,
}

impl Open {
    /// Appends one queued item as SSE.
    fn push(&mut self, buf: &mut Vec<u8>, item: &Outbound) {
        match item {
            Outbound::Publication(p) => {
                let ev = p.sse();
                buf.extend_from_slice(&ev.lines);
                match self.positions.get_mut(&*ev.channel) {
                    Some(pos) => {
                        if !Arc::ptr_eq(&pos.0, &p.epoch) {
                            pos.0 = Arc::clone(&p.epoch);
                        }
                        pos.1 = p.offset;
                    }
                    None => {
                        self.positions
                            .insert(ev.channel.clone(), (Arc::clone(&p.epoch), p.offset));
                    }
                }
                buf.extend_from_slice(b"id: ");
                encode_id(buf, &self.positions);
                buf.extend_from_slice(b"\n\n");
            }
            Outbound::Notice(n) => buf.extend_from_slice(n.encoded(Wire::Sse)),
            // Replies after the start (none expected: the stream sends no
            // more commands but pongs) have no place in the stream.
            Outbound::Frame(_) => {}
        }
    }
}

/// Reads the core's replies to the commands: the stream's start positions,
/// or the refusal to answer with.
fn opening(
    req: &SseRequest,
    queued: &[Outbound],
    link: &SessionLink,
    connected: bool,
) -> Result<Open, (StatusCode, String)> {
    let mut open = Open {
        positions: BTreeMap::new(),
        unrecovered: Vec::new(),
    };
    let mut refusal = None;
    for item in queued {
        let Outbound::Frame(f) = item else { continue };
        let Ok(r) = serde_json::from_slice::<ReplyView<'_>>(f) else {
            continue;
        };
        match r.op.as_ref() {
            "error" if refusal.is_none() => {
                let code = r.code.as_deref().unwrap_or("internal");
                let mut message = r.message.as_deref().unwrap_or("refused").to_owned();
                if let Some(ch) = &r.channel {
                    message = format!("channel {ch:?}: {message}");
                }
                refusal = Some((status(code), format!("{code}: {message}\n")));
            }
            "subscribed" => {
                let (Some(ch), Some(epoch), Some(offset)) = (r.channel, r.epoch, r.offset) else {
                    continue;
                };
                // A recovered channel starts where the client was: its
                // replay follows. Any other starts where it joined.
                let start = match (r.recovered, req.since.as_ref().and_then(|s| s.get(&*ch))) {
                    (Some(true), Some((e, o))) => (e.as_str().into(), *o),
                    _ => (epoch.as_ref().into(), offset),
                };
                if r.recovered == Some(false) {
                    open.unrecovered.push(ch.to_string());
                }
                open.positions.insert(ch.as_ref().into(), start);
            }
            _ => {}
        }
    }
    if let Some(r) = refusal {
        return Err(r);
    }
    if !connected {
        return Err((StatusCode::UNAUTHORIZED, "unauthorized\n".into()));
    }
    if let Some(Ending::Close { code, reason }) = link.ending() {
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{}: {reason}\n", code.code()),
        ));
    }
    // A resume whose id did not name a channel cannot say what it missed.
    if let Some(since) = &req.since {
        for ch in &req.channels {
            if !since.contains_key(ch) && !open.unrecovered.contains(ch) {
                open.unrecovered.push(ch.clone());
            }
        }
    }
    Ok(open)
}

/// The running stream's writer.
struct Writer {
    ctx: Arc<SessionCtx>,
    link: Arc<SessionLink>,
    tx: mpsc::Sender<Bytes>,
    abort: CancellationToken,
}

impl Writer {
    /// Sends a chunk; false when the session closed first or the client is gone.
    async fn send(&self, buf: &mut Vec<u8>) -> bool {
        let chunk = Bytes::from(std::mem::take(buf));
        metrics().bytes_sent.inc_by(chunk.len() as u64);
        tokio::select! {
            biased;
            () = self.link.closed().wait() => false,
            r = self.tx.send(chunk) => {
                if r.is_err() {
                    self.link.finish(Ending::Gone);
                }
                r.is_ok()
            }
        }
    }

    async fn run(
        self,
        session: &mut Session,
        rx: &mut crate::outbox::Outbox,
        shared: Arc<crate::session::Shared>,
        mut open: Open,
        mut buf: Vec<u8>,
    ) {
        let ctx = Arc::clone(&self.ctx);
        let link = Arc::clone(&self.link);
        let mut timers = Timers::new(Arc::clone(&ctx), shared, Arc::clone(&link));
        if self.send(&mut buf).await {
            let closed_fut = link.closed().wait();
            let shutdown_fut = ctx.shutdown.wait();
            tokio::pin!(closed_fut, shutdown_fut);
            loop {
                tokio::select! {
                    biased;
                    _ = &mut closed_fut => break,
                    () = self.tx.closed() => {
                        link.finish(Ending::Gone);
                        break;
                    }
                    _ = &mut shutdown_fut, if !timers.draining() => timers.drain(),
                    _ = timers.ping_due() => {
                        // The heartbeat; an SSE client cannot answer, so
                        // the written comment stands for its pong (a gone
                        // client fails the write instead).
                        Box::pin(session.command(|| Ok(Command { op: Op::Pong, ..Command::default() }))).await;
                        buf.extend_from_slice(b": ping\n\n");
                        if !self.send(&mut buf).await { break }
                    }
                    first = rx.recv() => {
                        let mut taken = first.size();
                        open.push(&mut buf, &first);
                        while buf.len() < BATCH_BYTES {
                            let Some(m) = rx.try_recv() else { break };
                            taken += m.size();
                            open.push(&mut buf, &m);
                        }
                        link.taken(taken);
                        if !self.send(&mut buf).await { break }
                    }
                }
            }
        }
        self.finish().await;
    }

    /// Ends the response: a farewell when the server closes, then the end
    /// of the body, within `close_timeout`; else the connection is dropped.
    async fn finish(self) {
        let ending = self.link.ending().unwrap_or(Ending::Gone);
        let Ending::Close { code, reason } = ending else {
            return;
        };
        metrics().disconnect(code);
        tracing::debug!(code = code.code(), reason, "server closing SSE stream");
        if code == CloseCode::SlowConsumer {
            // It is not reading: nothing more will reach it.
            self.abort.cancel();
            return;
        }
        let farewell = Wire::Sse.reply(&Reply::Disconnect {
            code,
            reason,
            reconnect: code.reconnect(),
        });
        let mut buf =
            event_lines("herald:disconnect", &String::from_utf8_lossy(&farewell)).into_vec();
        buf.push(b'\n');
        let tx = &self.tx;
        let end = async {
            tx.send(Bytes::from(buf)).await.ok()?;
            tx.send(Bytes::new()).await.ok()?;
            // Taken by the body: the response is complete.
            tx.closed().await;
            Some(())
        };
        let timeout = self.ctx.cfg.close_timeout;
        if !matches!(tokio::time::timeout(timeout, end).await, Ok(Some(()))) {
            self.abort.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_with_any_channel_name() {
        let mut p = BTreeMap::new();
        p.insert("reviews".into(), ("K3x9Qa1bZ0pd".into(), 17));
        p.insert("user:42".into(), ("Hx81nd0Lq2aa".into(), 3));
        p.insert("a=b,c%".into(), ("E".into(), 0));
        let mut out = Vec::new();
        encode_id(&mut out, &p);
        let id = String::from_utf8(out).expect("ascii");
        assert_eq!(
            id,
            "a%3Db%2Cc%25=E:0,reviews=K3x9Qa1bZ0pd:17,user%3A42=Hx81nd0Lq2aa:3"
        );
        let back = parse_id(&id).expect("parses");
        assert_eq!(back["user:42"], ("Hx81nd0Lq2aa".to_owned(), 3));
        assert_eq!(back["a=b,c%"], ("E".to_owned(), 0));
        assert_eq!(back.len(), 3);
        assert!(parse_id("reviews=E").is_none());
        assert!(parse_id("garbage").is_none());
        assert_eq!(parse_id("").map(|m| m.len()), Some(0));
    }

    #[test]
    fn payloads_stay_on_one_data_line() {
        let ev = event_lines("added", "{\"a\":\r\n [1,\n2]}");
        assert_eq!(&*ev, b"event: added\ndata: {\"a\":   [1, 2]}\n");
    }

    #[test]
    fn requests_take_the_token_from_header_cookie_or_query() {
        let mut h = HeaderMap::new();
        let q = Some("channel=a&channel=b%3Ax&channel=a&token=Q");
        let r = SseRequest::read(q, &h).expect("read");
        assert_eq!(r.channels, ["a", "b:x"]);
        assert_eq!(r.token.as_deref(), Some("Q"));
        assert!(r.since.is_none());
        h.insert(header::COOKIE, "x=1; herald_token=C".parse().expect("hv"));
        assert_eq!(
            SseRequest::read(q, &h).expect("read").token.as_deref(),
            Some("C")
        );
        h.insert(header::AUTHORIZATION, "Bearer B".parse().expect("hv"));
        h.insert("last-event-id", "a=E:4".parse().expect("hv"));
        let r = SseRequest::read(q, &h).expect("read");
        assert_eq!(r.token.as_deref(), Some("B"));
        assert_eq!(r.since.expect("since")["a"], ("E".to_owned(), 4));
        assert!(SseRequest::read(Some("token=x"), &h).is_err());
    }
}
