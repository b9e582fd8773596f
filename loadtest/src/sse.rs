//! Server-Sent Events subscribers (`--target herald-sse`): one plain
//! HTTP/1.1 `GET /sse?channel=…` per client, read by hand.
//!
//! The response head is read once; the body (chunked, as Herald sends it,
//! or up to the end of the connection) is de-chunked into a line buffer
//! that is consumed in place, so the receive path allocates nothing after
//! set-up. Per event only what the delivery books need is read: `t` from
//! the `data:` payload (latency), and from `id:` each channel's offset. An
//! SSE event does not name its channel: the channel whose offset moved in
//! the `id:` is the one it was published on, and that offset goes to the
//! channel's [`SeqTracker`] as a WebSocket `message` frame's would (an
//! event that moves none repeats the last one: a duplicate). The stream's
//! opening `id:` (an event without `data:`) gives the start positions, as
//! `subscribed` does over WebSocket: set-up is over when it has arrived.
//!
//! Like the `herald` target, the request carries no token (the node runs
//! without auth); channel names are the load tool's own (`bench-3`,
//! `user-12`), which need no percent-encoding in the query or the `id:`.

use crate::client::{Channels, Recv};
use crate::net::{self, Endpoint};
use crate::scan;
use crate::stats::SeqTracker;
use anyhow::{Context, bail, ensure};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Room made for each read from the socket.
const READ_ROOM: usize = 8 * 1024;
/// Largest response head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Longest line accepted (an event's `data:`).
const MAX_LINE: usize = 16 << 20;

/// The request line and headers of a stream of `channels`.
fn request(ep: &Endpoint, channels: &Channels) -> Vec<u8> {
    let mut q = String::new();
    for j in 0..channels.count {
        q.push(if j == 0 { '?' } else { '&' });
        q.push_str("channel=");
        q.push_str(&channels.name(j));
    }
    format!(
        "GET {}/sse{q} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
        ep.prefix, ep.authority
    )
    .into_bytes()
}

/// How the response body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    /// Until the connection closes.
    UntilClose,
    /// Chunked: reading a size line.
    Size,
    /// Chunked: this many data bytes still to come.
    Data(usize),
    /// Chunked: the CRLF after a chunk's data.
    DataEnd,
    /// Chunked: the last chunk came.
    Done,
}

/// One open stream, past its `200` head.
pub(crate) struct Stream {
    io: TcpStream,
    /// Bytes read, not yet de-chunked from `at` on.
    raw: Vec<u8>,
    at: usize,
    /// Body bytes, not yet split into lines.
    lines: Vec<u8>,
    body: Body,
    /// `raw` holds bytes that came with the head: decode them before reading.
    buffered: bool,
}

/// Opens a stream of `channels` on `ep` (connect, request, a `200` head),
/// within [`net::CONNECT_TIMEOUT`].
pub(crate) async fn connect(
    ep: &Endpoint,
    channels: &Channels,
    source: Option<SocketAddr>,
) -> anyhow::Result<Stream> {
    tokio::time::timeout(net::CONNECT_TIMEOUT, connect_inner(ep, channels, source))
        .await
        .with_context(|| format!("timed out after {:?}", net::CONNECT_TIMEOUT))?
}

async fn connect_inner(
    ep: &Endpoint,
    channels: &Channels,
    source: Option<SocketAddr>,
) -> anyhow::Result<Stream> {
    let mut io = net::tcp_connect(ep.addr, source)
        .await
        .with_context(|| format!("TCP connect to {}", ep.addr))?;
    io.write_all(&request(ep, channels)).await?;
    let mut raw = Vec::with_capacity(READ_ROOM);
    let head_end = loop {
        if let Some(i) = scan::find(&raw, b"\r\n\r\n") {
            break i + 4;
        }
        ensure!(raw.len() < MAX_HEAD, "response head over {MAX_HEAD} bytes");
        raw.reserve(READ_ROOM);
        if io.read_buf(&mut raw).await? == 0 {
            bail!("{} closed the connection before answering", ep.url);
        }
    };
    let head = String::from_utf8_lossy(&raw[..head_end]);
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .with_context(|| format!("not an HTTP response: {:?}", head.lines().next()))?;
    if status != 200 {
        // The refusal's reason is a short text body, there with the head.
        let why = String::from_utf8_lossy(&raw[head_end..]);
        bail!("GET /sse answered {status}: {}", why.trim());
    }
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    Ok(Stream {
        io,
        raw,
        at: head_end,
        lines: Vec::new(),
        body: if chunked {
            Body::Size
        } else {
            Body::UntilClose
        },
        buffered: true,
    })
}

impl Stream {
    /// Reads once from the socket and hands every complete line (without
    /// its line end) to `on_line`. Fails when the response ends.
    pub(crate) async fn read(
        &mut self,
        mut on_line: impl FnMut(&[u8]) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        if self.buffered {
            self.buffered = false;
        } else {
            if self.at == self.raw.len() {
                self.raw.clear();
                self.at = 0;
            } else if self.raw.capacity() - self.raw.len() < READ_ROOM / 2 {
                self.raw.drain(..self.at);
                self.at = 0;
            }
            self.raw.reserve(READ_ROOM / 2);
            if self.io.read_buf(&mut self.raw).await? == 0 {
                self.body = Body::Done;
            }
        }
        self.decode()?;
        let mut from = 0;
        while let Some(n) = self.lines[from..].iter().position(|&c| c == b'\n') {
            let line = &self.lines[from..from + n];
            on_line(line.strip_suffix(b"\r").unwrap_or(line))?;
            from += n + 1;
        }
        self.lines.drain(..from);
        ensure!(self.lines.len() <= MAX_LINE, "a line over {MAX_LINE} bytes");
        if self.body == Body::Done {
            bail!("the server ended the stream");
        }
        Ok(())
    }

    /// Moves the body bytes of `raw` into `lines`.
    fn decode(&mut self) -> anyhow::Result<()> {
        loop {
            let rest = &self.raw[self.at..];
            let line_end = || rest.iter().position(|&c| c == b'\n');
            match self.body {
                Body::UntilClose => {
                    self.lines.extend_from_slice(rest);
                    self.at = self.raw.len();
                    return Ok(());
                }
                Body::Size => {
                    let Some(n) = line_end() else {
                        ensure!(rest.len() < 1024, "a chunk size line over 1 KiB");
                        return Ok(());
                    };
                    let hex = rest[..n]
                        .iter()
                        .take_while(|c| c.is_ascii_hexdigit())
                        .try_fold(0usize, |acc, &c| {
                            let d = (c as char).to_digit(16).unwrap_or(0) as usize;
                            acc.checked_mul(16)?.checked_add(d)
                        })
                        .context("a chunk size out of range")?;
                    self.at += n + 1;
                    self.body = if hex == 0 {
                        Body::Done
                    } else {
                        Body::Data(hex)
                    };
                }
                Body::Data(left) => {
                    if rest.is_empty() {
                        return Ok(());
                    }
                    let k = left.min(rest.len());
                    self.lines.extend_from_slice(&rest[..k]);
                    self.at += k;
                    self.body = if k == left {
                        Body::DataEnd
                    } else {
                        Body::Data(left - k)
                    };
                }
                Body::DataEnd => {
                    let Some(n) = line_end() else {
                        return Ok(());
                    };
                    self.at += n + 1;
                    self.body = Body::Size;
                }
                Body::Done => return Ok(()),
            }
        }
    }
}

/// What the current event is, from its `event:` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `message` (no `event:` line) or any name the tool does not publish.
    Other,
    /// A publication of the load tool ([`crate::publish::EVENT`]).
    Publication,
    /// `herald:disconnect`: the server ends the stream.
    Disconnect,
}

/// Position not named by the current `id:`.
const NONE: u64 = u64::MAX;

/// The events of one stream, read line by line.
pub(crate) struct Events {
    channels: Channels,
    /// Per channel; set by the opening `id:`.
    pub(crate) trackers: Vec<Option<SeqTracker>>,
    /// Each channel's offset in the last `id:`.
    last: Vec<u64>,
    /// Each channel's offset in the current event's `id:`.
    next: Vec<u64>,
    /// The channel of the last publication.
    last_slot: Option<usize>,
    started: bool,
    // The event being read.
    kind: Kind,
    has_data: bool,
    has_id: bool,
    t: Option<u64>,
    /// The `data:` of a `herald:disconnect`.
    farewell: String,
}

impl Events {
    pub(crate) fn new(channels: Channels) -> Self {
        let n = channels.count as usize;
        Self {
            channels,
            trackers: vec![None; n],
            last: vec![NONE; n],
            next: vec![NONE; n],
            last_slot: None,
            started: false,
            kind: Kind::Other,
            has_data: false,
            has_id: false,
            t: None,
            farewell: String::new(),
        }
    }

    /// Whether the opening `id:` (every channel's start) has arrived.
    pub(crate) fn started(&self) -> bool {
        self.started
    }

    /// One line of the stream.
    pub(crate) fn on_line(&mut self, line: &[u8], recv: &mut Recv<'_>) -> anyhow::Result<()> {
        if line.is_empty() {
            return self.dispatch(recv);
        }
        if line[0] == b':' {
            return Ok(());
        }
        let (field, value) = match line.iter().position(|&c| c == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"event" => {
                self.kind = if value == crate::publish::EVENT.as_bytes() {
                    Kind::Publication
                } else if value == b"herald:disconnect" {
                    Kind::Disconnect
                } else {
                    Kind::Other
                };
            }
            b"data" => {
                self.has_data = true;
                match self.kind {
                    Kind::Publication => self.t = scan::number_field(value, b"t"),
                    Kind::Disconnect => {
                        self.farewell = String::from_utf8_lossy(value).into_owned();
                    }
                    Kind::Other => {}
                }
            }
            b"id" => {
                self.has_id = true;
                self.next.fill(NONE);
                for pair in value.split(|&c| c == b',') {
                    let Some(eq) = pair.iter().position(|&c| c == b'=') else {
                        continue;
                    };
                    let pos = &pair[eq + 1..];
                    let (Some(j), Some(colon)) = (
                        self.channels.slot(&pair[..eq]),
                        pos.iter().rposition(|&c| c == b':'),
                    ) else {
                        continue;
                    };
                    if let Some(off) = scan::leading_u64(&pos[colon + 1..]) {
                        self.next[j] = off;
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The end of an event (a blank line).
    fn dispatch(&mut self, recv: &mut Recv<'_>) -> anyhow::Result<()> {
        let (kind, has_data, has_id) = (self.kind, self.has_data, self.has_id);
        self.kind = Kind::Other;
        self.has_data = false;
        self.has_id = false;
        if !self.started {
            if !has_id {
                return Ok(());
            }
            for j in 0..self.next.len() {
                let off = self.next[j];
                if off == NONE {
                    bail!(
                        "the stream's first id did not name {}",
                        self.channels.name(j as u32)
                    );
                }
                self.trackers[j] = Some(SeqTracker::starting_at(off + 1));
            }
            self.last.copy_from_slice(&self.next);
            self.started = true;
            return Ok(());
        }
        match kind {
            Kind::Disconnect => bail!("server ended the stream: {}", self.farewell),
            Kind::Publication if has_data => {
                if has_id {
                    let mut moved = false;
                    for j in 0..self.next.len() {
                        let off = self.next[j];
                        if off == NONE || off == self.last[j] {
                            continue;
                        }
                        moved = true;
                        self.last[j] = off;
                        self.last_slot = Some(j);
                        if let Some(t) = &mut self.trackers[j] {
                            t.observe(off);
                        }
                    }
                    if !moved && let Some(j) = self.last_slot {
                        // The same position again: a duplicate.
                        if let Some(t) = &mut self.trackers[j] {
                            t.observe(self.last[j]);
                        }
                    }
                }
                recv.delivery(self.t.take());
            }
            _ => {
                if has_id {
                    for (l, &n) in self.last.iter_mut().zip(&self.next) {
                        if n != NONE {
                            *l = n;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{LatencySink, now_us};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn feed(ev: &mut Events, recv: &mut Recv<'_>, text: &str) -> anyhow::Result<()> {
        for line in text.split('\n') {
            ev.on_line(line.as_bytes(), recv)?;
        }
        Ok(())
    }

    #[test]
    fn events_drive_the_trackers_per_channel() {
        let sink = LatencySink::new(1);
        let slot = AtomicU64::new(0);
        let mut recv = Recv::new(&sink, Some(&slot), true, 0);
        let mut ev = Events::new(Channels {
            prefix: Arc::from("bench-"),
            first: 0,
            count: 2,
        });
        feed(
            &mut ev,
            &mut recv,
            ": herald\nretry: 1500\nid: bench-0=E:4,bench-1=F:0\n",
        )
        .expect("opening");
        assert!(ev.started());
        let t = now_us();
        for (ch0, ch1) in [(5, 0), (5, 1), (6, 1), (6, 1), (8, 1)] {
            let text = format!(
                "event: e\ndata: {{\"t\":{t},\"s\":1,\"p\":\"\"}}\nid: bench-0=E:{ch0},bench-1=F:{ch1}\n"
            );
            feed(&mut ev, &mut recv, &text).expect("publication");
        }
        feed(&mut ev, &mut recv, ": ping\n").expect("comment");
        recv.flush();
        assert_eq!(slot.load(Ordering::Relaxed), 5);
        assert_eq!(sink.snapshot().count(), 5);
        let a = ev.trackers[0].expect("bench-0").finish(9);
        assert_eq!((a.received, a.lost, a.duplicated), (3, 1, 1));
        let b = ev.trackers[1].expect("bench-1").finish(2);
        assert_eq!((b.received, b.lost, b.duplicated), (1, 0, 0));
        let bye = "event: herald:disconnect\ndata: {\"op\":\"disconnect\",\"code\":4000}\n";
        let err = feed(&mut ev, &mut recv, bye).expect_err("disconnect");
        assert!(format!("{err}").contains("4000"), "{err}");
    }

    #[test]
    fn a_first_id_without_a_channel_is_an_error() {
        let sink = LatencySink::new(1);
        let mut recv = Recv::new(&sink, None, false, 0);
        let mut ev = Events::new(Channels {
            prefix: Arc::from("user-"),
            first: 3,
            count: 1,
        });
        assert!(feed(&mut ev, &mut recv, "id: user-4=E:1\n").is_err());
    }

    #[tokio::test]
    async fn chunked_bodies_are_split_into_lines() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("listen");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut req = vec![0u8; 1024];
            let n = s.read(&mut req).await.expect("request");
            let req = String::from_utf8_lossy(&req[..n]).into_owned();
            let body = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                        Transfer-Encoding: chunked\r\n\r\n6\r\n: hera\r\n3;x=1\r\nld\n\r\n0\r\n\r\n";
            s.write_all(body.as_bytes()).await.expect("answer");
            req
        });
        let ep = Endpoint::resolve(&url).await.expect("url");
        let ch = Channels {
            prefix: Arc::from("bench-"),
            first: 0,
            count: 2,
        };
        let mut st = connect(&ep, &ch, None).await.expect("200");
        let mut got = Vec::new();
        let mut err = None;
        for _ in 0..4 {
            if let Err(e) = st
                .read(|l| {
                    got.push(String::from_utf8_lossy(l).into_owned());
                    Ok(())
                })
                .await
            {
                err = Some(e);
                break;
            }
        }
        assert_eq!(got, [": herald"]);
        assert!(format!("{:#}", err.expect("ended")).contains("ended"));
        let req = server.await.expect("server task");
        assert!(req.starts_with("GET /sse?channel=bench-0&channel=bench-1 HTTP/1.1\r\n"));
    }
}
