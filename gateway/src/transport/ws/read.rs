//! Server-side WebSocket reader: frames (RFC 6455 §5.2) and messages (§5.4).
//!
//! Part of the Herald v1 WebSocket transport, on the read half of every
//! connection. It parses
//! client frames into fastwebsockets [`Frame`]s, like fastwebsockets' own
//! reader, but that reader keeps an 8 KiB buffer for the life of each
//! connection, which at tens of thousands of idle connections is most of a
//! node's memory (measured: docs/benchmarks.md). This one idles on a
//! 512-byte buffer, grows only for the frame at hand, and returns large
//! buffers once they are drained. Writing still goes through fastwebsockets'
//! frame encoding.
//!
//! [`MessageReader`] sits on top and owns every rule above the single frame:
//! fragmentation, UTF-8 of text messages, the message size cap, close frame
//! payloads. Each rule of RFC 6455 §5.2–§5.8 has a test named after it below.

use bytes::{Buf, Bytes, BytesMut};
use fastwebsockets::{Frame, OpCode, Payload};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The least a read asks for; also the stack buffer an idle connection waits with.
const IDLE_CAPACITY: usize = 512;
/// Above this, a drained buffer is dropped instead of kept.
const KEEP_CAPACITY: usize = 8 * 1024;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    #[error("connection closed")]
    Eof,
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame or message larger than the limit")]
    TooLarge,
    #[error("{0}")]
    Protocol(&'static str),
}

const NOT_UTF8: ReadError = ReadError::Protocol("text message is not valid UTF-8");

/// Fuzzing entry point (the `frames` target in `fuzz/`, and the corpus
/// replay test): the first byte picks the size limit, the rest is read as a
/// client byte stream, once as messages (text ones go through the command
/// decoder) and once as raw frames. Must never panic. Reading from a slice
/// never waits, so one poll suffices.
#[doc(hidden)]
pub fn fuzz_frames(data: &[u8]) {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};
    fn now<F: Future>(fut: F) -> Option<F::Output> {
        match std::pin::pin!(fut).poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(out) => Some(out),
            Poll::Pending => None,
        }
    }
    let Some((size, stream)) = data.split_first() else {
        return;
    };
    let limit = 16 + usize::from(*size) * 8;
    let mut messages = MessageReader::new(stream, limit);
    for _ in 0..256 {
        match now(messages.next()) {
            Some(Ok(Message::Text(text))) => {
                assert!(text.len() <= limit, "message over the cap");
                assert!(std::str::from_utf8(&text).is_ok(), "text not UTF-8");
                herald_proto::fuzz_command(&text);
            }
            Some(Ok(Message::Close(Some(code)))) => {
                assert!(close_code_allowed(code), "close code {code} let through");
            }
            Some(Ok(Message::Ping(p))) => assert!(p.len() <= 125, "ping over 125 bytes"),
            Some(Ok(Message::Binary | Message::Pong | Message::Close(None))) => {}
            Some(Err(_)) | None => break,
        }
    }
    let mut frames = FrameReader::new(stream, limit);
    for _ in 0..256 {
        if !matches!(now(frames.read_frame()), Some(Ok(_))) {
            break;
        }
    }
}

pub(crate) struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    max_frame: usize,
}

/// A frame header that passed the frame-level checks. Its bytes stay at the
/// front of the buffer until the payload is taken or skipped.
struct Header {
    fin: bool,
    opcode: OpCode,
    /// Payload length as sent; not yet checked against any size limit.
    len: u64,
    mask: [u8; 4],
    /// Header length in bytes (6 to 14, mask included).
    size: usize,
}

impl Header {
    fn is_control(&self) -> bool {
        matches!(self.opcode, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub(crate) fn new(inner: R, max_frame: usize) -> Self {
        Self {
            inner,
            buf: BytesMut::new(),
            max_frame,
        }
    }

    /// Reads until at least `n` bytes are buffered.
    async fn fill(&mut self, n: usize) -> Result<(), ReadError> {
        if self.buf.is_empty() {
            // Waiting for a message is an idle connection's whole life: it
            // holds no buffer meanwhile. Bytes are read into the stack and
            // copied once they arrive (measured: ~0.5 KiB per idle connection).
            self.buf = BytesMut::new();
            let (inner, buf) = (&mut self.inner, &mut self.buf);
            let got = std::future::poll_fn(|cx| {
                let mut scratch = [0u8; IDLE_CAPACITY];
                let mut rb = tokio::io::ReadBuf::new(&mut scratch);
                match std::pin::Pin::new(&mut *inner).poll_read(cx, &mut rb) {
                    std::task::Poll::Ready(Ok(())) => {
                        buf.extend_from_slice(rb.filled());
                        std::task::Poll::Ready(Ok(rb.filled().len()))
                    }
                    std::task::Poll::Ready(Err(e)) => std::task::Poll::Ready(Err(e)),
                    std::task::Poll::Pending => std::task::Poll::Pending,
                }
            })
            .await?;
            if got == 0 {
                return Err(ReadError::Eof);
            }
        }
        while self.buf.len() < n {
            let want = (n - self.buf.len()).max(IDLE_CAPACITY);
            if self.buf.capacity() - self.buf.len() < want.min(IDLE_CAPACITY) {
                self.buf.reserve(want);
            }
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                return Err(ReadError::Eof);
            }
        }
        Ok(())
    }

    /// Parses the next header and applies every rule that one frame can
    /// break on its own. Each check runs as soon as its bytes are in, so a
    /// bad first byte fails without waiting for the rest.
    async fn header(&mut self) -> Result<Header, ReadError> {
        self.fill(2).await?;
        let (b0, b1) = (self.buf[0], self.buf[1]);
        if b0 & 0x70 != 0 {
            // §5.2: no extension is ever negotiated, so RSV1-3 must be 0.
            return Err(ReadError::Protocol(
                "reserved bits set (no extension was negotiated)",
            ));
        }
        // §5.2: 0x3-0x7 and 0xB-0xF are reserved; fastwebsockets knows only the six defined ones.
        let opcode =
            OpCode::try_from(b0 & 0x0f).map_err(|_| ReadError::Protocol("unknown frame opcode"))?;
        if b1 & 0x80 == 0 {
            // §5.1/§5.3: the server must fail on an unmasked client frame.
            return Err(ReadError::Protocol("client frames must be masked"));
        }
        let extra = match b1 & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let size = 2 + extra + 4;
        self.fill(size).await?;
        // §5.2 also wants the minimal length encoding; we accept any (a
        // sender's rule, and the length is unambiguous either way; limits
        // apply to the decoded value).
        let len = match extra {
            0 => u64::from(b1 & 0x7f),
            2 => u64::from(u16::from_be_bytes([self.buf[2], self.buf[3]])),
            _ => u64::from_be_bytes(self.buf[2..10].try_into().expect("8 bytes")),
        };
        if len >> 63 != 0 {
            return Err(ReadError::Protocol(
                "64-bit payload length has its most significant bit set",
            ));
        }
        let header = Header {
            fin: b0 & 0x80 != 0,
            opcode,
            len,
            mask: self.buf[size - 4..size].try_into().expect("4 bytes"),
            size,
        };
        if header.is_control() && (!header.fin || len > 125) {
            // §5.5
            return Err(ReadError::Protocol(
                "control frames must be whole and at most 125 bytes",
            ));
        }
        Ok(header)
    }

    /// Takes the frame's payload, unmasked. The caller has checked its size.
    async fn payload(&mut self, h: &Header) -> Result<BytesMut, ReadError> {
        let len = usize::try_from(h.len).map_err(|_| ReadError::TooLarge)?;
        self.fill(h.size + len).await?;
        self.buf.advance(h.size);
        let mut payload = self.buf.split_to(len);
        fastwebsockets::unmask(&mut payload, h.mask);
        if self.buf.is_empty() && self.buf.capacity() > KEEP_CAPACITY {
            // The allocation goes away with the payload.
            self.buf = BytesMut::new();
        }
        Ok(payload)
    }

    /// Consumes the frame without keeping its payload: whatever its size,
    /// the buffer does not grow for it.
    async fn skip(&mut self, h: &Header) -> Result<(), ReadError> {
        self.buf.advance(h.size);
        let mut left = h.len;
        loop {
            let n = self
                .buf
                .len()
                .min(usize::try_from(left).unwrap_or(usize::MAX));
            self.buf.advance(n);
            left -= n as u64;
            if left == 0 {
                return Ok(());
            }
            self.fill(1).await?;
        }
    }

    /// Reads one frame, unmasked. Control frames are returned like any other;
    /// fragments are not joined (see [`MessageReader`]).
    pub(crate) async fn read_frame(&mut self) -> Result<Frame<'static>, ReadError> {
        let h = self.header().await?;
        if h.len > self.max_frame as u64 {
            return Err(ReadError::TooLarge);
        }
        let payload = self.payload(&h).await?;
        Ok(Frame::new(h.fin, h.opcode, None, Payload::Bytes(payload)))
    }

    /// Bytes of buffer currently held, for tests.
    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.buf.capacity()
    }
}

/// One client message, fragments joined (RFC 6455 §5.4).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Message {
    /// A whole text message; valid UTF-8.
    Text(Bytes),
    /// A whole binary message, read and dropped: the protocol is JSON text
    /// only, but the session answers it with an error and keeps the connection.
    Binary,
    /// Its payload, to be echoed in the pong (§5.5.2).
    Ping(Bytes),
    /// Solicited or not (§5.5.3); nothing to answer.
    Pong,
    /// The client's close, with its status code if it sent one. The code is
    /// one a peer may send (§7.4) and the reason, if any, is UTF-8.
    Close(Option<u16>),
}

/// Reads whole messages. The state between frames is one `Option`: no heap
/// while no fragmented message is open, so idle connections cost only the
/// frame reader's small buffer.
///
/// After an error the stream is out of step; stop calling [`Self::next`].
/// Like `read_frame`, `next` is not cancel-safe.
pub(crate) struct MessageReader<R> {
    frames: FrameReader<R>,
    open: Option<Open>,
}

/// A fragmented message started and not yet finished.
enum Open {
    /// Bytes so far; `buf[..checked]` is known to be UTF-8 and the rest (at
    /// most 3 bytes) is a character cut by a fragment boundary.
    Text { buf: Vec<u8>, checked: usize },
    /// Only the size is kept, to enforce the cap.
    Binary { len: usize },
}

impl<R: AsyncRead + Unpin> MessageReader<R> {
    /// `max_message` caps a message's payload summed over its fragments.
    pub(crate) fn new(inner: R, max_message: usize) -> Self {
        Self {
            // `max_frame` doubles as the message cap; only `read_frame` reads
            // it as a per-frame one.
            frames: FrameReader::new(inner, max_message),
            open: None,
        }
    }

    /// The bytes read past the last whole message, for a new reader to
    /// start from (only meaningful between messages).
    pub(crate) fn into_leftover(self) -> Bytes {
        self.frames.buf.freeze()
    }

    /// Reads frames until a message is complete. Control frames come back as
    /// soon as they arrive, also between the fragments of a message (§5.4).
    pub(crate) async fn next(&mut self) -> Result<Message, ReadError> {
        loop {
            let h = self.frames.header().await?;
            match h.opcode {
                OpCode::Ping => {
                    // Copied (at most 125 bytes): the session keeps it until the
                    // pong is written, and a slice would pin the read buffer.
                    let payload = self.frames.payload(&h).await?;
                    return Ok(Message::Ping(Bytes::copy_from_slice(&payload)));
                }
                OpCode::Pong => {
                    self.frames.skip(&h).await?;
                    return Ok(Message::Pong);
                }
                OpCode::Close => {
                    let payload = self.frames.payload(&h).await?;
                    return close_payload(&payload).map(Message::Close);
                }
                OpCode::Text | OpCode::Binary if self.open.is_some() => {
                    // §5.4: fragments of two messages must not interleave.
                    return Err(ReadError::Protocol(
                        "new data frame inside a fragmented message",
                    ));
                }
                OpCode::Continuation if self.open.is_none() => {
                    return Err(ReadError::Protocol("continuation frame without a message"));
                }
                _ => {}
            }
            let so_far = match &self.open {
                None => 0,
                Some(Open::Text { buf, .. }) => buf.len(),
                Some(Open::Binary { len }) => *len,
            };
            // Refused on the header, before reading the payload.
            if h.len > self.frames.max_frame.saturating_sub(so_far) as u64 {
                return Err(ReadError::TooLarge);
            }
            let len = h.len as usize;
            // Left here: Text or Binary with nothing open, Continuation with something open.
            match &mut self.open {
                None if h.opcode == OpCode::Binary => {
                    self.frames.skip(&h).await?;
                    if h.fin {
                        return Ok(Message::Binary);
                    }
                    self.open = Some(Open::Binary { len });
                }
                None if h.fin => {
                    let payload = self.frames.payload(&h).await?;
                    std::str::from_utf8(&payload).map_err(|_| NOT_UTF8)?;
                    return Ok(Message::Text(payload.freeze()));
                }
                None => {
                    let buf = self.frames.payload(&h).await?.to_vec();
                    let mut checked = 0;
                    // §8.1: fail as soon as the bytes cannot become UTF-8.
                    check_utf8(&buf, &mut checked, false)?;
                    self.open = Some(Open::Text { buf, checked });
                }
                Some(Open::Binary { len: total }) => {
                    self.frames.skip(&h).await?;
                    *total += len;
                    if h.fin {
                        self.open = None;
                        return Ok(Message::Binary);
                    }
                }
                Some(Open::Text { buf, checked }) => {
                    buf.extend_from_slice(&self.frames.payload(&h).await?);
                    check_utf8(buf, checked, h.fin)?;
                    if h.fin {
                        let buf = std::mem::take(buf);
                        self.open = None;
                        return Ok(Message::Text(buf.into()));
                    }
                }
            }
        }
    }
}

/// Checks `buf[*checked..]` and moves `checked` past whole characters. A
/// character cut at the end waits for the next fragment unless this is the
/// last one (§5.6: a frame may end mid-character, the message may not).
fn check_utf8(buf: &[u8], checked: &mut usize, fin: bool) -> Result<(), ReadError> {
    match std::str::from_utf8(&buf[*checked..]) {
        Ok(_) => *checked = buf.len(),
        Err(e) if e.error_len().is_none() && !fin => *checked += e.valid_up_to(),
        Err(_) => return Err(NOT_UTF8),
    }
    Ok(())
}

/// Status codes a peer may put in a close frame (§7.4): those RFC 6455
/// defines for use, 1012-1014 that IANA registered since, and the ranges for
/// libraries (3000-3999) and applications (4000-4999). 1004 is reserved,
/// 1005, 1006 and 1015 only report locally and must never be sent, the rest
/// of 1000-2999 is unassigned, 0-999 unused, and nothing from 5000 up exists.
fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Validates a close payload (§5.5.1): empty, or a status code and an
/// optional UTF-8 reason.
fn close_payload(payload: &[u8]) -> Result<Option<u16>, ReadError> {
    let [hi, lo, reason @ ..] = payload else {
        return if payload.is_empty() {
            Ok(None)
        } else {
            Err(ReadError::Protocol("close frame payload of 1 byte"))
        };
    };
    let code = u16::from_be_bytes([*hi, *lo]);
    if !close_code_allowed(code) {
        return Err(ReadError::Protocol("close code not allowed on the wire"));
    }
    if std::str::from_utf8(reason).is_err() {
        return Err(ReadError::Protocol("close reason is not valid UTF-8"));
    }
    Ok(Some(code))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_frame(fin: bool, opcode: OpCode, payload: &[u8]) -> Vec<u8> {
        let mut f = Frame::new(
            fin,
            opcode,
            Some([1, 2, 3, 4]),
            Payload::Owned(payload.to_vec()),
        );
        f.mask();
        let mut out = Vec::new();
        f.write(&mut out).to_vec()
    }

    #[tokio::test]
    async fn reads_masked_frames_of_every_length_class() {
        let mut wire = Vec::new();
        for n in [0usize, 5, 125, 126, 300, 70_000] {
            wire.extend(client_frame(true, OpCode::Text, &vec![b'a'; n]));
        }
        let mut r = FrameReader::new(&wire[..], 100_000);
        for n in [0usize, 5, 125, 126, 300, 70_000] {
            let f = r.read_frame().await.expect("frame");
            assert_eq!((f.opcode, f.fin, f.payload.len()), (OpCode::Text, true, n));
            assert!(f.payload.iter().all(|&b| b == b'a'), "unmasked");
        }
        assert!(matches!(r.read_frame().await, Err(ReadError::Eof)));
    }

    #[tokio::test]
    async fn gives_big_buffers_back() {
        let mut wire = client_frame(true, OpCode::Text, &[b'x'; 50_000]);
        wire.extend(client_frame(true, OpCode::Text, b"{}"));
        let mut r = FrameReader::new(&wire[..], 100_000);
        drop(r.read_frame().await.expect("big"));
        assert_eq!(&r.read_frame().await.expect("small").payload[..], b"{}");
        assert!(r.capacity() <= KEEP_CAPACITY, "held {}", r.capacity());
    }

    /// Hands out at most `chunk` bytes per read, as a slow network would.
    struct Chunked {
        data: Vec<u8>,
        pos: usize,
        chunk: usize,
    }

    impl AsyncRead for Chunked {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let n = self
                .chunk
                .min(self.data.len() - self.pos)
                .min(buf.remaining());
            let start = self.pos;
            buf.put_slice(&self.data[start..start + n]);
            self.pos += n;
            std::task::Poll::Ready(Ok(()))
        }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    // Hostile input: any byte stream yields frames or an error, never a
    // panic; valid frames survive any split into reads. Failing cases are
    // kept in gateway/proptest-regressions/ and replayed on every run.
    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1000))]

        #[test]
        fn arbitrary_bytes_never_panic(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..3000),
        ) {
            block_on(async {
                let mut r = FrameReader::new(&bytes[..], 2048);
                for _ in 0..64 {
                    if r.read_frame().await.is_err() {
                        break;
                    }
                }
                let mut r = MessageReader::new(&bytes[..], 2048);
                for _ in 0..64 {
                    match r.next().await {
                        Ok(Message::Text(t)) => assert!(std::str::from_utf8(&t).is_ok()),
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
            });
        }

        #[test]
        fn valid_frames_survive_any_split(
            payloads in proptest::collection::vec(
                proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
                1..8,
            ),
            chunk in 1usize..97,
        ) {
            let mut data = Vec::new();
            for p in &payloads {
                data.extend(client_frame(true, OpCode::Binary, p));
            }
            let got = block_on(async {
                let mut r = FrameReader::new(Chunked { data, pos: 0, chunk }, 1024);
                let mut got = Vec::new();
                while let Ok(f) = r.read_frame().await {
                    got.push(f.payload.to_vec());
                }
                got
            });
            proptest::prop_assert_eq!(got, payloads);
        }

        #[test]
        fn any_fragmentation_of_text_reassembles_under_any_split(
            messages in proptest::collection::vec(
                (
                    proptest::collection::vec(proptest::prelude::any::<char>(), 0..60),
                    // Cut points (duplicates make empty fragments), each
                    // maybe followed by a ping.
                    proptest::collection::vec(
                        (
                            proptest::prelude::any::<proptest::sample::Index>(),
                            proptest::prelude::any::<bool>(),
                        ),
                        0..6,
                    ),
                ),
                1..4,
            ),
            chunk in 1usize..97,
        ) {
            let mut data = Vec::new();
            let mut want = Vec::new();
            for (chars, cuts) in &messages {
                let text = chars.iter().collect::<String>();
                let bytes = text.as_bytes();
                let mut cuts: Vec<(usize, bool)> = cuts
                    .iter()
                    .map(|(at, ping)| (at.index(bytes.len() + 1), *ping))
                    .collect();
                cuts.push((bytes.len(), false));
                cuts.sort_unstable();
                let mut start = 0;
                for (i, &(end, ping)) in cuts.iter().enumerate() {
                    let last = i + 1 == cuts.len();
                    let opcode = if i == 0 { OpCode::Text } else { OpCode::Continuation };
                    data.extend(client_frame(last, opcode, &bytes[start..end]));
                    start = end;
                    if ping && !last {
                        data.extend(client_frame(true, OpCode::Ping, &[i as u8]));
                        want.push(Message::Ping(Bytes::copy_from_slice(&[i as u8])));
                    }
                }
                want.push(Message::Text(Bytes::copy_from_slice(bytes)));
            }
            let (got, end) = block_on(async {
                let mut r = MessageReader::new(Chunked { data, pos: 0, chunk }, 1024);
                let mut got = Vec::new();
                loop {
                    match r.next().await {
                        Ok(m) => got.push(m),
                        Err(e) => return (got, e),
                    }
                }
            });
            proptest::prop_assert!(matches!(end, ReadError::Eof), "ended with {:?}", end);
            proptest::prop_assert_eq!(got, want);
        }
    }

    #[tokio::test]
    async fn refuses_bad_frames() {
        let big = client_frame(true, OpCode::Text, &[0; 2000]);
        let mut r = FrameReader::new(&big[..], 1000);
        assert!(matches!(r.read_frame().await, Err(ReadError::TooLarge)));

        let mut unmasked = Vec::new();
        Frame::text(Payload::Borrowed(b"hi")).write(&mut unmasked);
        let mut r = FrameReader::new(&unmasked[..], 1000);
        assert!(matches!(r.read_frame().await, Err(ReadError::Protocol(_))));

        let mut rsv = client_frame(true, OpCode::Text, b"x");
        rsv[0] |= 0x40;
        let mut r = FrameReader::new(&rsv[..], 1000);
        assert!(matches!(r.read_frame().await, Err(ReadError::Protocol(_))));

        let ping = client_frame(false, OpCode::Ping, b"x");
        let mut r = FrameReader::new(&ping[..], 1000);
        assert!(matches!(r.read_frame().await, Err(ReadError::Protocol(_))));

        let cut = &client_frame(true, OpCode::Text, b"hello")[..4];
        let mut r = FrameReader::new(cut, 1000);
        assert!(matches!(r.read_frame().await, Err(ReadError::Eof)));
    }

    // ---- RFC 6455 §5.2-§5.8, one test per rule, through `MessageReader` ----

    /// How a hand-built frame encodes its payload length.
    #[derive(Clone, Copy)]
    enum Len {
        Minimal,
        Sixteen,
        SixtyFour,
        /// A 64-bit length field with this value, whatever the payload.
        Claim(u64),
    }

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// A client frame built by hand: `b0` as given (FIN, RSV, opcode), the
    /// payload masked.
    fn raw_frame(b0: u8, payload: &[u8], len: Len) -> Vec<u8> {
        let n = payload.len();
        let mut out = vec![b0];
        match len {
            Len::Minimal if n < 126 => out.push(0x80 | n as u8),
            Len::Minimal | Len::Sixteen if n <= 0xffff => {
                out.push(0x80 | 126);
                out.extend((n as u16).to_be_bytes());
            }
            Len::Minimal | Len::Sixteen | Len::SixtyFour => {
                out.push(0x80 | 127);
                out.extend((n as u64).to_be_bytes());
            }
            Len::Claim(v) => {
                out.push(0x80 | 127);
                out.extend(v.to_be_bytes());
            }
        }
        out.extend(MASK);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
        out
    }

    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        raw_frame(if fin { 0x80 } else { 0 } | opcode, payload, Len::Minimal)
    }

    const CONT: u8 = 0x0;
    const TEXT: u8 = 0x1;
    const BINARY: u8 = 0x2;
    const CLOSE: u8 = 0x8;
    const PING: u8 = 0x9;
    const PONG: u8 = 0xA;

    fn close_frame(code: u16, reason: &[u8]) -> Vec<u8> {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(reason);
        frame(true, CLOSE, &payload)
    }

    /// Every message `wire` yields, then the error that ends it.
    async fn messages(wire: &[u8], max: usize) -> (Vec<Message>, ReadError) {
        let mut r = MessageReader::new(wire, max);
        let mut got = Vec::new();
        loop {
            match r.next().await {
                Ok(m) => got.push(m),
                Err(e) => return (got, e),
            }
        }
    }

    fn text(s: impl AsRef<[u8]>) -> Message {
        Message::Text(Bytes::copy_from_slice(s.as_ref()))
    }

    fn ping(p: &[u8]) -> Message {
        Message::Ping(Bytes::copy_from_slice(p))
    }

    /// The whole stream is refused with this reason, nothing delivered.
    async fn refused(wire: &[u8], why: &str) {
        let (got, e) = messages(wire, 1 << 20).await;
        assert!(got.is_empty(), "delivered {got:?} before refusing");
        assert!(
            matches!(e, ReadError::Protocol(w) if w == why),
            "{e:?}, wanted {why:?}"
        );
    }

    /// The stream yields exactly `want`, then ends cleanly.
    async fn delivers(wire: &[u8], want: &[Message]) {
        let (got, e) = messages(wire, 1 << 20).await;
        assert_eq!(got, want);
        assert!(matches!(e, ReadError::Eof), "ended with {e:?}");
    }

    #[tokio::test]
    async fn rfc6455_5_2_rsv_bits_without_extension_fail() {
        for rsv in [0x40, 0x20, 0x10, 0x70] {
            for op in [TEXT, BINARY, CONT, PING, CLOSE] {
                let wire = raw_frame(0x80 | rsv | op, b"x", Len::Minimal);
                refused(&wire, "reserved bits set (no extension was negotiated)").await;
            }
        }
    }

    #[tokio::test]
    async fn rfc6455_5_2_reserved_opcodes_fail() {
        for op in (0x3..=0x7).chain(0xB..=0xF) {
            for fin in [0x80, 0] {
                refused(
                    &raw_frame(fin | op, b"", Len::Minimal),
                    "unknown frame opcode",
                )
                .await;
            }
        }
    }

    #[tokio::test]
    async fn rfc6455_5_2_64_bit_length_with_msb_set_fails() {
        const WHY: &str = "64-bit payload length has its most significant bit set";
        for claim in [1 << 63, u64::MAX] {
            // Refused on the header, not read as an oversized (or endless) frame.
            let wire = raw_frame(0x82, b"", Len::Claim(claim));
            refused(&wire, WHY).await;
            let mut r = FrameReader::new(&wire[..], 1000);
            assert!(matches!(
                r.read_frame().await,
                Err(ReadError::Protocol(WHY))
            ));
        }
        // The largest length with the bit clear is merely too large.
        let wire = raw_frame(0x82, b"", Len::Claim(u64::MAX >> 1));
        let (_, e) = messages(&wire, 1000).await;
        assert!(matches!(e, ReadError::TooLarge), "{e:?}");
    }

    /// §5.2 says the minimal number of bytes MUST encode the length. That
    /// binds the sender; the decoded length is unambiguous either way and is
    /// what every limit applies to, so we tolerate longer encodings rather
    /// than fail clients with lax encoders.
    #[tokio::test]
    async fn rfc6455_5_2_non_minimal_length_encoding_is_tolerated() {
        let mut wire = raw_frame(0x81, b"hello", Len::Sixteen);
        wire.extend(raw_frame(0x81, b"hello", Len::SixtyFour));
        wire.extend(raw_frame(0x89, b"p", Len::Sixteen));
        delivers(&wire, &[text("hello"), text("hello"), ping(b"p")]).await;
    }

    #[tokio::test]
    async fn rfc6455_5_3_unmasked_client_frame_fails() {
        const WHY: &str = "client frames must be masked";
        // §5.7's unmasked examples: a text frame and a ping.
        refused(&[0x81, 0x05, b'H', b'e', b'l', b'l', b'o'], WHY).await;
        refused(&[0x89, 0x05, b'H', b'e', b'l', b'l', b'o'], WHY).await;
        refused(&[0x88, 0x00], WHY).await;
        // Also after a valid frame, and mid-message.
        let mut wire = frame(false, TEXT, b"a");
        wire.extend([0x80, 0x01, b'b']);
        let (got, e) = messages(&wire, 100).await;
        assert!(
            got.is_empty() && matches!(e, ReadError::Protocol(WHY)),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn rfc6455_5_4_fragmented_text_reassembled_with_interleaved_control_frames() {
        let mut wire = frame(false, TEXT, b"Hel");
        wire.extend(frame(true, PING, b"p"));
        wire.extend(frame(false, CONT, b"lo, "));
        wire.extend(frame(true, PONG, b""));
        wire.extend(frame(true, CONT, b"world"));
        wire.extend(frame(true, TEXT, b"next"));
        delivers(
            &wire,
            &[
                ping(b"p"),
                Message::Pong,
                text("Hello, world"),
                text("next"),
            ],
        )
        .await;

        // A close in the middle comes back at once too; the session stops there.
        let mut wire = frame(false, TEXT, b"Hel");
        wire.extend(close_frame(1000, b""));
        delivers(&wire, &[Message::Close(Some(1000))]).await;
    }

    #[tokio::test]
    async fn rfc6455_5_4_fragmented_binary_reported_once_when_whole() {
        let mut wire = frame(false, BINARY, &[1, 2]);
        wire.extend(frame(false, CONT, &[3]));
        wire.extend(frame(true, PING, b""));
        wire.extend(frame(true, CONT, &[4, 5]));
        wire.extend(frame(true, TEXT, b"{}"));
        delivers(&wire, &[ping(b""), Message::Binary, text("{}")]).await;
    }

    #[tokio::test]
    async fn rfc6455_5_4_continuation_without_start_fails() {
        const WHY: &str = "continuation frame without a message";
        for fin in [true, false] {
            refused(&frame(fin, CONT, b"x"), WHY).await;
            // Nor after a finished message.
            let mut wire = frame(true, TEXT, b"a");
            wire.extend(frame(fin, CONT, b"x"));
            let (got, e) = messages(&wire, 100).await;
            assert_eq!(got, [text("a")]);
            assert!(matches!(e, ReadError::Protocol(WHY)), "{e:?}");
        }
    }

    /// The bug this reader was written for: the session used to let a new
    /// message silently replace the open one.
    #[tokio::test]
    async fn rfc6455_5_4_new_data_frame_inside_fragmented_message_fails() {
        for open in [TEXT, BINARY] {
            for new in [TEXT, BINARY] {
                for fin in [true, false] {
                    let mut wire = frame(false, open, b"first");
                    wire.extend(frame(false, CONT, b"more"));
                    wire.extend(frame(fin, new, b"second"));
                    wire.extend(frame(true, CONT, b"end"));
                    refused(&wire, "new data frame inside a fragmented message").await;
                }
            }
        }
    }

    #[tokio::test]
    async fn rfc6455_5_4_zero_length_fragments() {
        let mut wire = frame(true, TEXT, b"");
        wire.extend(frame(false, TEXT, b""));
        wire.extend(frame(false, CONT, b""));
        wire.extend(frame(true, CONT, b""));
        wire.extend(frame(false, TEXT, b""));
        wire.extend(frame(true, CONT, b"ok"));
        wire.extend(frame(true, BINARY, b""));
        wire.extend(frame(false, BINARY, b""));
        wire.extend(frame(true, CONT, b""));
        let want = [
            text(""),
            text(""),
            text("ok"),
            Message::Binary,
            Message::Binary,
        ];
        delivers(&wire, &want).await;
    }

    #[tokio::test]
    async fn rfc6455_5_5_zero_length_control_frames() {
        let mut wire = frame(true, PING, b"");
        wire.extend(frame(true, PONG, b""));
        wire.extend(frame(true, CLOSE, b""));
        delivers(&wire, &[ping(b""), Message::Pong, Message::Close(None)]).await;
    }

    #[tokio::test]
    async fn rfc6455_5_5_control_frame_over_125_bytes_fails() {
        const WHY: &str = "control frames must be whole and at most 125 bytes";
        for op in [PING, PONG, CLOSE] {
            refused(&frame(true, op, &[b'a'; 126]), WHY).await;
        }
        let mut wire = frame(true, PING, &[b'a'; 125]);
        wire.extend(frame(true, PONG, &[b'a'; 125]));
        let mut close = 1000u16.to_be_bytes().to_vec();
        close.extend([b'a'; 123]);
        wire.extend(frame(true, CLOSE, &close));
        delivers(
            &wire,
            &[
                ping(&[b'a'; 125]),
                Message::Pong,
                Message::Close(Some(1000)),
            ],
        )
        .await;
    }

    #[tokio::test]
    async fn rfc6455_5_5_fragmented_control_frame_fails() {
        for op in [PING, PONG, CLOSE] {
            let wire = frame(false, op, b"x");
            refused(&wire, "control frames must be whole and at most 125 bytes").await;
        }
    }

    #[tokio::test]
    async fn rfc6455_5_5_1_close_payload_of_one_byte_fails() {
        refused(
            &frame(true, CLOSE, &[0x03]),
            "close frame payload of 1 byte",
        )
        .await;
    }

    #[tokio::test]
    async fn rfc6455_5_5_1_close_codes_invalid_on_the_wire_fail() {
        // Unused (0-999), reserved (1004), local-only (1005, 1006, 1015),
        // unassigned (1016-2999), undefined (5000 up).
        for code in [
            0, 1, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            refused(
                &close_frame(code, b""),
                "close code not allowed on the wire",
            )
            .await;
        }
    }

    #[tokio::test]
    async fn rfc6455_7_4_close_codes_defined_or_registered_are_accepted() {
        for code in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999,
            4000, 4502, 4999,
        ] {
            delivers(&close_frame(code, b"bye"), &[Message::Close(Some(code))]).await;
        }
    }

    #[tokio::test]
    async fn rfc6455_5_5_1_close_reason_not_utf8_fails() {
        const WHY: &str = "close reason is not valid UTF-8";
        refused(&close_frame(1000, &[0xff]), WHY).await;
        refused(&close_frame(1000, &"€".as_bytes()[..2]), WHY).await;
        delivers(
            &close_frame(1001, "ça va".as_bytes()),
            &[Message::Close(Some(1001))],
        )
        .await;
    }

    #[tokio::test]
    async fn rfc6455_5_5_2_ping_payload_handed_back_for_pong() {
        let payload: Vec<u8> = (0..125).collect();
        let mut wire = frame(true, PING, &payload);
        wire.extend(frame(true, TEXT, b"{}"));
        let mut r = MessageReader::new(&wire[..], 100);
        let Ok(Message::Ping(got)) = r.next().await else {
            panic!("no ping");
        };
        assert_eq!(got, payload);
        assert_eq!(r.next().await.expect("text"), text("{}"));
    }

    #[tokio::test]
    async fn rfc6455_5_5_3_unsolicited_pong_is_ignored() {
        // Reported (the session does nothing with it), harmless anywhere.
        let mut wire = frame(true, PONG, b"heartbeat");
        wire.extend(frame(false, TEXT, b"{"));
        wire.extend(frame(true, PONG, b""));
        wire.extend(frame(true, CONT, b"}"));
        delivers(&wire, &[Message::Pong, Message::Pong, text("{}")]).await;
    }

    #[tokio::test]
    async fn rfc6455_5_6_text_not_utf8_fails_binary_need_not_be() {
        const WHY: &str = "text message is not valid UTF-8";
        // Stray byte, overlong '/', UTF-16 surrogate, above U+10FFFF.
        for bad in [
            &[0xff][..],
            &[0xc0, 0xaf],
            &[0xed, 0xa0, 0x80],
            &[0xf4, 0x90, 0x80, 0x80],
        ] {
            refused(&frame(true, TEXT, bad), WHY).await;
        }
        delivers(&frame(true, BINARY, &[0xff, 0xc0]), &[Message::Binary]).await;
    }

    #[tokio::test]
    async fn rfc6455_8_1_invalid_utf8_split_across_fragments_fails() {
        const WHY: &str = "text message is not valid UTF-8";
        // A lead byte whose character the next fragment does not finish.
        let mut wire = frame(false, TEXT, &"€".as_bytes()[..1]);
        wire.extend(frame(true, CONT, b"x"));
        refused(&wire, WHY).await;
        // A character still cut when the message ends.
        let mut wire = frame(false, TEXT, b"a");
        wire.extend(frame(true, CONT, &"€".as_bytes()[..2]));
        refused(&wire, WHY).await;
        // Fail fast: a first fragment that can never become UTF-8 is refused
        // before the rest of the message arrives (here: never).
        refused(&frame(false, TEXT, &[b'a', 0xff]), WHY).await;
        let mut wire = frame(false, TEXT, b"a");
        wire.extend(frame(false, CONT, &[0xc0]));
        refused(&wire, WHY).await;
    }

    #[tokio::test]
    async fn rfc6455_8_1_multibyte_char_split_across_fragments_is_valid() {
        let euro = "€".as_bytes();
        let mut wire = frame(false, TEXT, &euro[..1]);
        wire.extend(frame(true, CONT, &euro[1..]));
        let smile = "a😀b".as_bytes();
        wire.extend(frame(false, TEXT, &smile[..2]));
        wire.extend(frame(false, CONT, &smile[2..3]));
        wire.extend(frame(true, PING, b""));
        wire.extend(frame(false, CONT, &smile[3..4]));
        wire.extend(frame(false, CONT, b""));
        wire.extend(frame(true, CONT, &smile[4..]));
        delivers(&wire, &[text("€"), ping(b""), text("a😀b")]).await;
    }

    /// §10.4: implementations should cap message size; ours counts a
    /// message's payload over all its fragments, not control frames.
    #[tokio::test]
    async fn rfc6455_10_4_message_size_cap_counts_all_fragments() {
        let mut wire = frame(false, TEXT, &[b'a'; 6]);
        wire.extend(frame(true, PING, &[0; 100]));
        wire.extend(frame(true, CONT, &[b'a'; 4]));
        wire.extend(frame(true, TEXT, &[b'b'; 10]));
        let (got, e) = messages(&wire, 10).await;
        assert_eq!(got, [ping(&[0; 100]), text([b'a'; 10]), text([b'b'; 10])]);
        assert!(matches!(e, ReadError::Eof), "{e:?}");

        for op in [TEXT, BINARY] {
            let mut wire = frame(false, op, &[b'a'; 6]);
            wire.extend(frame(false, CONT, &[b'a'; 4]));
            wire.extend(frame(true, CONT, &[b'a'; 1]));
            let (got, e) = messages(&wire, 10).await;
            assert!(got.is_empty() && matches!(e, ReadError::TooLarge), "{e:?}");
            let (_, e) = messages(&frame(true, op, &[b'a'; 11]), 10).await;
            assert!(matches!(e, ReadError::TooLarge), "{e:?}");
        }
        // Decided on the header: the oversized payload need not arrive.
        let (_, e) = messages(&frame(true, TEXT, &[b'a'; 1000])[..8], 10).await;
        assert!(matches!(e, ReadError::TooLarge), "{e:?}");
    }

    /// The examples of §5.7, masked where the RFC's are not (a server must
    /// refuse unmasked ones, see the §5.3 test).
    #[tokio::test]
    async fn rfc6455_5_7_examples() {
        // "A single-frame masked text message" and the masked pong, verbatim.
        let mut wire = vec![
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        wire.extend([
            0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ]);
        // "A fragmented text message".
        wire.extend(raw_frame(0x01, b"Hel", Len::Minimal));
        wire.extend(raw_frame(0x80, b"lo", Len::Minimal));
        // 256 bytes and 64 KiB of binary, with 16- and 64-bit lengths.
        let b256 = frame(true, BINARY, &[0; 256]);
        assert_eq!(b256[..4], [0x82, 0xfe, 0x01, 0x00]);
        let b64k = frame(true, BINARY, &[0; 65536]);
        assert_eq!(b64k[..10], [0x82, 0xff, 0, 0, 0, 0, 0, 1, 0, 0]);
        wire.extend(b256);
        wire.extend(b64k);
        let want = [
            text("Hello"),
            Message::Pong,
            text("Hello"),
            Message::Binary,
            Message::Binary,
        ];
        delivers(&wire, &want).await;
    }

    #[tokio::test]
    async fn message_cut_short_is_eof() {
        let wire = frame(false, TEXT, b"a");
        let (got, e) = messages(&wire, 100).await;
        assert!(got.is_empty() && matches!(e, ReadError::Eof), "{e:?}");
        let (_, e) = messages(&frame(true, BINARY, &[0; 1000])[..500], 2000).await;
        assert!(matches!(e, ReadError::Eof), "{e:?}");
    }

    #[tokio::test]
    async fn message_reader_idles_without_buffers() {
        let mut wire = frame(false, TEXT, &[b'a'; 20_000]);
        wire.extend(frame(true, CONT, &[b'a'; 20_000]));
        wire.extend(frame(false, BINARY, &[0; 100_000]));
        wire.extend(frame(true, CONT, &[0; 100_000]));
        wire.extend(frame(true, TEXT, b"{}"));
        let mut r = MessageReader::new(&wire[..], 200_000);
        assert_eq!(r.next().await.expect("text"), text([b'a'; 40_000]));
        assert!(r.open.is_none());
        assert!(
            r.frames.capacity() <= KEEP_CAPACITY,
            "held {}",
            r.frames.capacity()
        );
        // Binary is skipped through the small buffer, never held whole.
        assert_eq!(r.next().await.expect("binary"), Message::Binary);
        assert!(r.open.is_none());
        assert!(
            r.frames.capacity() <= KEEP_CAPACITY,
            "held {}",
            r.frames.capacity()
        );
        assert_eq!(r.next().await.expect("small"), text("{}"));
    }
}
