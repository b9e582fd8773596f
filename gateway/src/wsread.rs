//! Server-side WebSocket frame reader with a small, give-back buffer.
//!
//! Used by `session` on the read half of every connection. It parses client
//! frames (RFC 6455 §5.2) into fastwebsockets [`Frame`]s, like
//! fastwebsockets' own reader, but that reader keeps an 8 KiB buffer for the
//! life of each connection, which at tens of thousands of idle connections is
//! most of a node's memory (measured: docs/benchmarks.md). This one idles on
//! a 512-byte buffer, grows only for the frame at hand, and returns large
//! buffers once they are drained. Writing still goes through fastwebsockets'
//! frame encoding.

use bytes::{Buf, BytesMut};
use fastwebsockets::{Frame, OpCode, Payload};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Buffer kept while idle.
const IDLE_CAPACITY: usize = 512;
/// Above this, a drained buffer is dropped instead of kept.
const KEEP_CAPACITY: usize = 8 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("connection closed")]
    Eof,
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame larger than the limit")]
    TooLarge,
    #[error("{0}")]
    Protocol(&'static str),
}

/// Fuzzing entry point (the `frames` target in `fuzz/`, and the corpus
/// replay test): the first byte picks the frame size limit, the rest is read
/// as a client byte stream; text frames go through the command decoder.
/// Must never panic. Reading from a slice never waits, so one poll suffices.
#[doc(hidden)]
pub fn fuzz_frames(data: &[u8]) {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};
    let Some((size, stream)) = data.split_first() else {
        return;
    };
    let mut reader = FrameReader::new(stream, 16 + usize::from(*size) * 8);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..256 {
        let frame = {
            let mut fut = std::pin::pin!(reader.read_frame());
            match fut.as_mut().poll(&mut cx) {
                Poll::Ready(Ok(f)) => f,
                _ => return,
            }
        };
        if frame.opcode == OpCode::Text {
            herald_proto::fuzz_command(&frame.payload);
        }
    }
}

pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    max_frame: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R, max_frame: usize) -> Self {
        Self {
            inner,
            buf: BytesMut::new(),
            max_frame,
        }
    }

    /// Reads until at least `n` bytes are buffered.
    async fn fill(&mut self, n: usize) -> Result<(), ReadError> {
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

    /// Reads one frame, unmasked. Control frames are returned like any other.
    pub async fn read_frame(&mut self) -> Result<Frame<'static>, ReadError> {
        self.fill(2).await?;
        let (b0, b1) = (self.buf[0], self.buf[1]);
        let fin = b0 & 0x80 != 0;
        if b0 & 0x70 != 0 {
            return Err(ReadError::Protocol(
                "reserved bits set (no extension was negotiated)",
            ));
        }
        let opcode =
            OpCode::try_from(b0 & 0x0f).map_err(|_| ReadError::Protocol("unknown frame opcode"))?;
        if b1 & 0x80 == 0 {
            return Err(ReadError::Protocol("client frames must be masked"));
        }
        let extra = match b1 & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let head = 2 + extra + 4;
        self.fill(head).await?;
        let len = match extra {
            0 => u64::from(b1 & 0x7f),
            2 => u64::from(u16::from_be_bytes([self.buf[2], self.buf[3]])),
            _ => u64::from_be_bytes(self.buf[2..10].try_into().expect("8 bytes")),
        };
        let is_control = matches!(opcode, OpCode::Close | OpCode::Ping | OpCode::Pong);
        if is_control && (!fin || len > 125) {
            return Err(ReadError::Protocol(
                "control frames must be whole and at most 125 bytes",
            ));
        }
        if len > self.max_frame as u64 {
            return Err(ReadError::TooLarge);
        }
        let len = len as usize;
        let mask: [u8; 4] = self.buf[head - 4..head].try_into().expect("4 bytes");
        self.fill(head + len).await?;
        self.buf.advance(head);
        let mut payload = self.buf.split_to(len);
        fastwebsockets::unmask(&mut payload, mask);
        if self.buf.is_empty() && self.buf.capacity() > KEEP_CAPACITY {
            // The allocation goes away with the payload.
            self.buf = BytesMut::new();
        }
        Ok(Frame::new(fin, opcode, None, Payload::Bytes(payload)))
    }

    /// Bytes of buffer currently held, for tests.
    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.buf.capacity()
    }
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
}
