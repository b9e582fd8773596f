//! PROXY protocol reader (HAProxy's `proxy-protocol.txt`, versions 1 and 2).
//!
//! Sits between a listener's accept and HTTP: when the node runs behind a
//! TCP load balancer that prefixes each connection with a PROXY header, the
//! listener calls [`read_header`] (under its own timeout) to turn the
//! connection's first bytes into the real client address, then hands HTTP a
//! [`Rewind`] so the bytes read past the header are not lost.
//!
//! Which listeners expect a header is configuration, never guessed from the
//! bytes: a client that could choose to send one could choose its address.
//!
//! Spec corners decided here:
//! - v1: the line must start `PROXY ` and end in CRLF within 107 bytes; a bare
//!   CR or LF is an error. Fields are single-space separated; addresses are
//!   dotted quads without leading zeros (`TCP4`) or IPv6 text (`TCP6`, which
//!   also takes the `::ffff:a.b.c.d` form HAProxy prints for IPv4 clients on
//!   an IPv6 side, returned as that IPv6 address: unmapping is the caller's
//!   choice); ports are 0-65535 in plain decimal without leading zeros.
//!   `UNKNOWN` ignores the rest of its line.
//! - v2: the family byte is checked only for PROXY (LOCAL ignores it, as the
//!   spec says); TLVs are skipped without interpretation (CRC32C is not
//!   verified) but must tile the rest of the block exactly; a header is at
//!   most [`V2_MAX`] bytes, which real senders stay far below.
//! - Every check runs as soon as its bytes are in, so a connection that is
//!   not speaking the protocol fails at its first wrong byte.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// What a v1 line starts with.
const V1_PREFIX: &[u8; 6] = b"PROXY ";
/// Longest v1 line, CRLF included (`PROXY UNKNOWN` with two full IPv6
/// addresses and ports).
const V1_MAX: usize = 107;
/// What a v2 header starts with.
const V2_SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Fixed part of a v2 header: signature, version/command, family, length.
const V2_FIXED: usize = 16;
/// Cap on a whole v2 header. The length field allows 64 KiB; real headers
/// (addresses plus a few TLVs: ALPN, authority, SSL details, cloud endpoint
/// ids) are a few hundred bytes, and the cap bounds what a bad peer can make
/// us buffer.
const V2_MAX: usize = 4096;
/// Smallest read: a v1 line or a typical v2 header plus the start of the
/// request in one go.
const READ_CHUNK: usize = 512;

const CMD_LOCAL: u8 = 0x0;
const CMD_PROXY: u8 = 0x1;
const AF_UNSPEC: u8 = 0x0;
const AF_INET: u8 = 0x1;
const AF_INET6: u8 = 0x2;
const AF_UNIX: u8 = 0x3;
const TRANSPORT_UNSPEC: u8 = 0x0;
const STREAM: u8 = 0x1;
const DGRAM: u8 = 0x2;

/// What the header says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProxyHeader {
    /// A proxied connection: the client's address and the address it connected to.
    Proxied {
        source: SocketAddr,
        destination: SocketAddr,
    },
    /// v2 LOCAL (the proxy's own health check), v1 UNKNOWN, or a v2
    /// family/transport we don't carry (AF_UNSPEC, AF_UNIX, UDP): use the
    /// socket's own peer address.
    Local,
}

/// Why a connection's first bytes were refused. Every one of them means the
/// connection is dropped: the spec allows no fallback to "no header".
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyError {
    #[error("not a PROXY protocol header")]
    NotProxy,
    #[error("PROXY v1 line longer than 107 bytes")]
    V1TooLong,
    #[error("bad PROXY v1 line: {0}")]
    V1(&'static str),
    #[error("bad PROXY v2 version {0} (only 2 is defined)")]
    V2Version(u8),
    #[error("bad PROXY v2 command {0:#x} (only LOCAL and PROXY are defined)")]
    V2Command(u8),
    #[error("bad PROXY v2 address family/transport byte {0:#04x}")]
    V2Family(u8),
    #[error("PROXY v2 header of {0} bytes is over the {V2_MAX}-byte limit")]
    V2TooLong(usize),
    #[error("truncated PROXY v2 header: {0}")]
    Truncated(&'static str),
    #[error("EOF before the header ended")]
    Eof,
    #[error("reading the PROXY header: {0}")]
    Io(#[from] io::Error),
}

/// Reads exactly one PROXY header (v1 or v2, detected from the first bytes)
/// from `io`.
///
/// Returns the header and the bytes read past it (the start of the HTTP
/// request), which the caller must not lose: wrap the stream in
/// [`Rewind::new`]. Each read offers at least [`READ_CHUNK`] bytes of room,
/// so a header normally takes one read, yet any split of the input gives the
/// same answer. Timeouts are the caller's job.
pub(crate) async fn read_header<R: AsyncRead + Unpin>(
    io: &mut R,
) -> Result<(ProxyHeader, Bytes), ProxyError> {
    let mut buf = BytesMut::new();
    loop {
        match parse(&buf)? {
            Parsed::Done(header, used) => {
                buf.advance(used);
                return Ok((header, buf.freeze()));
            }
            Parsed::Need(more) => {
                // At least READ_CHUNK spare, so a read of 0 only means EOF.
                buf.reserve(more.max(READ_CHUNK));
                if io.read_buf(&mut buf).await? == 0 {
                    return Err(ProxyError::Eof);
                }
            }
        }
    }
}

/// Outcome of parsing what has arrived so far.
#[derive(Debug)]
enum Parsed {
    /// The header and its length in bytes.
    Done(ProxyHeader, usize),
    /// Not decided yet: at least this many more bytes are needed.
    Need(usize),
}

/// Parses a header from the start of `buf`. Checks run in a fixed order,
/// each as soon as its bytes are present, so any prefix of an input either
/// needs more or gives the same answer as the whole input; that is what
/// makes the result independent of how reads split.
fn parse(buf: &[u8]) -> Result<Parsed, ProxyError> {
    let n = buf.len();
    if n == 0 {
        return Ok(Parsed::Need(V1_PREFIX.len()));
    }
    if V1_PREFIX.starts_with(&buf[..n.min(V1_PREFIX.len())]) {
        if n < V1_PREFIX.len() {
            return Ok(Parsed::Need(V1_PREFIX.len() - n));
        }
        return parse_v1(buf);
    }
    if V2_SIG.starts_with(&buf[..n.min(V2_SIG.len())]) {
        return parse_v2(buf);
    }
    Err(ProxyError::NotProxy)
}

/// v1: finds the CRLF within [`V1_MAX`] bytes, then parses the line.
fn parse_v1(buf: &[u8]) -> Result<Parsed, ProxyError> {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(i) = window.iter().position(|&b| b == b'\r' || b == b'\n') else {
        return if buf.len() >= V1_MAX {
            Err(ProxyError::V1TooLong)
        } else {
            Ok(Parsed::Need(1))
        };
    };
    if window[i] == b'\n' {
        return Err(ProxyError::V1("LF without CR"));
    }
    if i + 1 == V1_MAX {
        // The LF would be byte 108.
        return Err(ProxyError::V1TooLong);
    }
    match buf.get(i + 1) {
        None => Ok(Parsed::Need(1)),
        Some(b'\n') => Ok(Parsed::Done(parse_v1_line(&buf[..i])?, i + 2)),
        Some(_) => Err(ProxyError::V1("CR not followed by LF")),
    }
}

/// Parses `PROXY <proto> <src> <dst> <sport> <dport>` (CRLF removed).
fn parse_v1_line(line: &[u8]) -> Result<ProxyHeader, ProxyError> {
    let mut fields = line[V1_PREFIX.len()..].split(|&b| b == b' ');
    let v4 = match fields.next() {
        // The spec: for UNKNOWN the receiver ignores the rest of the line.
        Some(b"UNKNOWN") => return Ok(ProxyHeader::Local),
        Some(b"TCP4") => true,
        Some(b"TCP6") => false,
        _ => return Err(ProxyError::V1("protocol is not TCP4, TCP6 or UNKNOWN")),
    };
    let (Some(src), Some(dst), Some(sport), Some(dport), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(ProxyError::V1(
            "want exactly four single-space separated fields after the protocol",
        ));
    };
    Ok(ProxyHeader::Proxied {
        source: SocketAddr::new(v1_ip(src, v4)?, v1_port(sport)?),
        destination: SocketAddr::new(v1_ip(dst, v4)?, v1_port(dport)?),
    })
}

/// An address of the line's family. std's parsers are the strict ones the
/// spec wants: no leading zeros in IPv4, no zone ids or brackets in IPv6.
fn v1_ip(field: &[u8], v4: bool) -> Result<IpAddr, ProxyError> {
    let text = std::str::from_utf8(field).unwrap_or("");
    if v4 {
        text.parse::<Ipv4Addr>()
            .map(IpAddr::V4)
            .map_err(|_| ProxyError::V1("bad IPv4 address for TCP4"))
    } else {
        text.parse::<Ipv6Addr>()
            .map(IpAddr::V6)
            .map_err(|_| ProxyError::V1("bad IPv6 address for TCP6"))
    }
}

/// A port: 1-5 decimal digits, no sign, no leading zero, at most 65535.
/// (`u16::from_str` would take `+80` and `080`.)
fn v1_port(field: &[u8]) -> Result<u16, ProxyError> {
    const BAD: ProxyError = ProxyError::V1("bad port (want 0-65535, no leading zeros)");
    let digits = matches!(field.len(), 1..=5) && field.iter().all(u8::is_ascii_digit);
    if !digits || (field.len() > 1 && field[0] == b'0') {
        return Err(BAD);
    }
    let n = field.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
    u16::try_from(n).map_err(|_| BAD)
}

/// v2: 16 fixed bytes, then `len` bytes of addresses and TLVs.
fn parse_v2(buf: &[u8]) -> Result<Parsed, ProxyError> {
    let need = |n: usize| Ok(Parsed::Need(n - buf.len()));
    let Some(&ver_cmd) = buf.get(12) else {
        return need(V2_FIXED);
    };
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::V2Version(ver_cmd >> 4));
    }
    let command = ver_cmd & 0x0f;
    if command != CMD_LOCAL && command != CMD_PROXY {
        return Err(ProxyError::V2Command(command));
    }
    let Some(&fam) = buf.get(13) else {
        return need(V2_FIXED);
    };
    let (family, transport) = (fam >> 4, fam & 0x0f);
    // LOCAL discards the whole block, family included.
    if command == CMD_PROXY && (family > AF_UNIX || transport > DGRAM) {
        return Err(ProxyError::V2Family(fam));
    }
    let Some(&[hi, lo]) = buf.get(14..V2_FIXED) else {
        return need(V2_FIXED);
    };
    let total = V2_FIXED + usize::from(u16::from_be_bytes([hi, lo]));
    if total > V2_MAX {
        return Err(ProxyError::V2TooLong(total));
    }
    let Some(block) = buf.get(V2_FIXED..total) else {
        return need(total);
    };
    if command == CMD_LOCAL {
        return Ok(Parsed::Done(ProxyHeader::Local, total));
    }
    let header = match (family, transport) {
        (AF_INET, STREAM) => {
            let Some((addrs, tlvs)) = block.split_first_chunk::<12>() else {
                return Err(ProxyError::Truncated(
                    "TCP over IPv4 needs 12 address bytes",
                ));
            };
            check_tlvs(tlvs)?;
            let mut a = addrs.as_slice();
            let (src, dst) = (Ipv4Addr::from(a.get_u32()), Ipv4Addr::from(a.get_u32()));
            with_ports(src.into(), dst.into(), a)
        }
        (AF_INET6, STREAM) => {
            let Some((addrs, tlvs)) = block.split_first_chunk::<36>() else {
                return Err(ProxyError::Truncated(
                    "TCP over IPv6 needs 36 address bytes",
                ));
            };
            check_tlvs(tlvs)?;
            let mut a = addrs.as_slice();
            let (src, dst) = (Ipv6Addr::from(a.get_u128()), Ipv6Addr::from(a.get_u128()));
            with_ports(src.into(), dst.into(), a)
        }
        // The spec lets a receiver fall back to UNSPEC (use the real
        // endpoints) for valid combinations it does not carry.
        (AF_UNSPEC | AF_UNIX, _) | (_, TRANSPORT_UNSPEC | DGRAM) => ProxyHeader::Local,
        _ => return Err(ProxyError::V2Family(fam)),
    };
    Ok(Parsed::Done(header, total))
}

/// The PROXY answer from a v2 address block's addresses and its last four
/// bytes, the two ports.
fn with_ports(src: IpAddr, dst: IpAddr, mut ports: &[u8]) -> ProxyHeader {
    ProxyHeader::Proxied {
        source: SocketAddr::new(src, ports.get_u16()),
        destination: SocketAddr::new(dst, ports.get_u16()),
    }
}

/// TLVs (type, 16-bit length, value) are skipped, but they must tile the
/// block exactly: a ragged end means the length field or a sender is wrong,
/// and then the addresses are not to be trusted either.
fn check_tlvs(mut tlvs: &[u8]) -> Result<(), ProxyError> {
    while !tlvs.is_empty() {
        let Some(&[_, hi, lo]) = tlvs.get(..3) else {
            return Err(ProxyError::Truncated("TLV header runs past the end"));
        };
        let end = 3 + usize::from(u16::from_be_bytes([hi, lo]));
        let Some(rest) = tlvs.get(end..) else {
            return Err(ProxyError::Truncated("TLV value runs past the end"));
        };
        tlvs = rest;
    }
    Ok(())
}

/// A stream that yields `prefix` first, then reads from `inner`; writes go
/// straight to `inner`. It gives HTTP back the bytes [`read_header`] read
/// past the header.
#[derive(Debug)]
pub(crate) struct Rewind<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> Rewind<T> {
    pub(crate) fn new(prefix: Bytes, inner: T) -> Self {
        Self { prefix, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.prefix.is_empty() {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let n = this.prefix.len().min(buf.remaining());
        buf.put_slice(&this.prefix[..n]);
        this.prefix.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// An in-memory reader that hands out `data` in pieces whose sizes cycle
/// through `sizes` (so reads split wherever a test or the fuzzer says), and
/// with `pend` returns Pending (after waking) before each piece. Records how
/// far it got, so a caller can tell what [`read_header`] read past the header.
struct Trickle<'a> {
    data: &'a [u8],
    sizes: Vec<usize>,
    pend: bool,
    pos: usize,
    reads: usize,
    pended: bool,
}

impl<'a> Trickle<'a> {
    fn new(data: &'a [u8], sizes: Vec<usize>, pend: bool) -> Self {
        Self {
            data,
            sizes,
            pend,
            pos: 0,
            reads: 0,
            pended: false,
        }
    }
}

impl AsyncRead for Trickle<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pend && !this.pended {
            this.pended = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        this.pended = false;
        let size = match this.sizes.as_slice() {
            [] => usize::MAX,
            sizes => sizes[this.reads % sizes.len()].max(1),
        };
        this.reads += 1;
        let n = size.min(buf.remaining()).min(this.data.len() - this.pos);
        buf.put_slice(&this.data[this.pos..this.pos + n]);
        this.pos += n;
        Poll::Ready(Ok(()))
    }
}

/// Fuzz entry point: parse arbitrary bytes as a header; never panics.
///
/// The first byte picks the read size (1-16 bytes, or everything at once);
/// the rest is the stream. Checks what must hold for any input: reading in
/// pieces gives the same answer as parsing the whole input at once, a header
/// is never longer than the spec's (v1) or our (v2) bound, and the bytes
/// returned past the header are exactly the ones read past it.
#[doc(hidden)]
#[allow(unreachable_pub)] // `pub` so the crate root can re-export it for the fuzz target
pub fn fuzz_proxy(data: &[u8]) {
    use std::future::Future;
    use std::task::Waker;

    let Some((&step, stream)) = data.split_first() else {
        return;
    };
    let sizes = if step >= 0xf0 {
        Vec::new()
    } else {
        vec![usize::from(step % 16) + 1]
    };
    let mut reader = Trickle::new(stream, sizes, false);
    // The reader never returns Pending, so one poll finishes the read.
    let polled =
        std::pin::pin!(read_header(&mut reader)).poll(&mut Context::from_waker(Waker::noop()));
    let Poll::Ready(read) = polled else {
        panic!("read_header pending on a reader that never is");
    };
    let whole = match parse(stream) {
        Ok(Parsed::Done(header, used)) => Ok((header, used)),
        Ok(Parsed::Need(_)) => Err(ProxyError::Eof.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match (read, whole) {
        (Ok((header, leftover)), Ok((whole_header, used))) => {
            assert_eq!(header, whole_header, "split reads disagree");
            let limit = if stream[0] == b'P' { V1_MAX } else { V2_MAX };
            assert!(used <= limit, "{used}-byte header");
            assert_eq!(&leftover[..], &stream[used..reader.pos], "leftover");
        }
        (Err(e), Err(whole_err)) => assert_eq!(e.to_string(), whole_err, "split reads disagree"),
        (read, whole) => panic!("split reads disagree: {read:?} vs {whole:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tokio::io::{AsyncWriteExt, duplex};

    const HTTP: &[u8] = b"GET /connect HTTP/1.1\r\nHost: herald\r\nUpgrade: websocket\r\n\r\n";

    fn sock(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    fn proxied(source: &str, destination: &str) -> ProxyHeader {
        ProxyHeader::Proxied {
            source: sock(source),
            destination: sock(destination),
        }
    }

    fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    /// A v2 header: version 2, `ver_cmd`'s low nibble, `fam`, `block`.
    fn v2(cmd: u8, fam: u8, block: &[u8]) -> Vec<u8> {
        let len = u16::try_from(block.len()).expect("block fits");
        cat(&[V2_SIG, &[0x20 | cmd, fam], &len.to_be_bytes(), block])
    }

    fn tlv(kind: u8, value: &[u8]) -> Vec<u8> {
        let len = u16::try_from(value.len()).expect("value fits");
        cat(&[&[kind], &len.to_be_bytes(), value])
    }

    fn v4_block(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        cat(&[&src, &dst, &sport.to_be_bytes(), &dport.to_be_bytes()])
    }

    fn v6_block(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16) -> Vec<u8> {
        cat(&[
            &src.octets(),
            &dst.octets(),
            &sport.to_be_bytes(),
            &dport.to_be_bytes(),
        ])
    }

    /// Reads `input` in pieces of `sizes`, returning Pending between pieces;
    /// on success also reads the rest through a [`Rewind`], so the second
    /// value is everything after the header as HTTP would see it.
    async fn read_split(input: &[u8], sizes: Vec<usize>) -> Result<(ProxyHeader, Vec<u8>), String> {
        let mut reader = Trickle::new(input, sizes, true);
        let (header, leftover) = read_header(&mut reader).await.map_err(|e| e.to_string())?;
        let mut rest = Vec::new();
        Rewind::new(leftover, reader)
            .read_to_end(&mut rest)
            .await
            .expect("in-memory read");
        Ok((header, rest))
    }

    /// Every way of reading `input`: at once, byte by byte, and split in two
    /// at each position. All must agree; returns the common answer.
    async fn read_every_split(input: &[u8]) -> Result<(ProxyHeader, Vec<u8>), String> {
        let once = read_split(input, Vec::new()).await;
        assert_eq!(read_split(input, vec![1]).await, once, "byte by byte");
        for cut in 1..input.len() {
            let split = read_split(input, vec![cut, usize::MAX]).await;
            assert_eq!(split, once, "split at {cut}");
        }
        once
    }

    /// `header` followed by an HTTP request parses to `expect`, with the
    /// request intact, however the reads split.
    async fn accepts(header: &[u8], expect: ProxyHeader) {
        let input = cat(&[header, HTTP]);
        let got = read_every_split(&input).await;
        assert_eq!(
            got,
            Ok((expect, HTTP.to_vec())),
            "{:?}",
            String::from_utf8_lossy(header)
        );
    }

    /// `input` (followed by an HTTP request) is refused with an error
    /// containing `why`, however the reads split.
    async fn refuses(input: &[u8], why: &str) {
        let got = read_every_split(&cat(&[input, HTTP])).await;
        match got {
            Err(e) => assert!(
                e.contains(why),
                "{:?}: {e:?} lacks {why:?}",
                String::from_utf8_lossy(input)
            ),
            Ok(h) => panic!("{:?} accepted as {h:?}", String::from_utf8_lossy(input)),
        }
    }

    /// Like [`refuses`], for input that is cut short: nothing follows it.
    async fn refuses_at_eof(input: &[u8], why: &str) {
        match read_every_split(input).await {
            Err(e) => assert!(e.contains(why), "{e:?} lacks {why:?}"),
            Ok(h) => panic!("accepted as {h:?}"),
        }
    }

    // What HAProxy sends, byte for byte (src/connection.c,
    // make_proxy_line_v1 / make_proxy_line_v2).

    /// `server ... send-proxy`, IPv4 on both sides (the spec's own example).
    const HAPROXY_V1_TCP4: &[u8] = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n";
    /// `send-proxy` when either side is IPv6: the IPv4 side is printed as
    /// v4-mapped by inet_ntop.
    const HAPROXY_V1_TCP6_MAPPED: &[u8] =
        b"PROXY TCP6 ::ffff:192.168.0.1 2001:db8::11 56324 443\r\n";
    /// `send-proxy` when the addresses are not IP (e.g. a unix socket bind).
    const HAPROXY_V1_UNKNOWN: &[u8] = b"PROXY UNKNOWN\r\n";
    /// `send-proxy-v2`, IPv4, plain TCP frontend: no TLVs.
    const HAPROXY_V2_TCP4: &[u8] = &[
        0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, // signature
        0x21, // version 2, PROXY
        0x11, // AF_INET, STREAM
        0x00, 0x0c, // 12 address bytes
        0xc0, 0xa8, 0x00, 0x01, // 192.168.0.1
        0xc0, 0xa8, 0x00, 0x0b, // 192.168.0.11
        0xdc, 0x04, // 56324
        0x01, 0xbb, // 443
    ];
    /// `send-proxy-v2` behind a TLS frontend that negotiated h2: an ALPN TLV.
    const HAPROXY_V2_TCP4_ALPN: &[u8] = &[
        0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, //
        0x21, 0x11, 0x00, 0x11, // 12 address bytes + 5 TLV bytes
        0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8, 0x00, 0x0b, 0xdc, 0x04, 0x01, 0xbb, //
        0x01, 0x00, 0x02, b'h', b'2', // PP2_TYPE_ALPN "h2"
    ];
    /// `send-proxy-v2`, IPv6 on both sides.
    const HAPROXY_V2_TCP6: &[u8] = &[
        0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, //
        0x21, 0x21, 0x00, 0x24, // AF_INET6, STREAM, 36 address bytes
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, // 2001:db8::1
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x11, // 2001:db8::11
        0xdc, 0x04, 0x01, 0xbb,
    ];
    /// `send-proxy-v2` on HAProxy's own health checks: LOCAL, AF_UNSPEC,
    /// no addresses.
    const HAPROXY_V2_LOCAL: &[u8] = &[
        0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, //
        0x20, 0x00, 0x00, 0x00,
    ];

    #[tokio::test]
    async fn haproxy_fixtures() {
        let v4 = proxied("192.168.0.1:56324", "192.168.0.11:443");
        accepts(HAPROXY_V1_TCP4, v4).await;
        accepts(
            HAPROXY_V1_TCP6_MAPPED,
            proxied("[::ffff:192.168.0.1]:56324", "[2001:db8::11]:443"),
        )
        .await;
        accepts(HAPROXY_V1_UNKNOWN, ProxyHeader::Local).await;
        accepts(HAPROXY_V2_TCP4, v4).await;
        accepts(HAPROXY_V2_TCP4_ALPN, v4).await;
        accepts(
            HAPROXY_V2_TCP6,
            proxied("[2001:db8::1]:56324", "[2001:db8::11]:443"),
        )
        .await;
        accepts(HAPROXY_V2_LOCAL, ProxyHeader::Local).await;
    }

    #[tokio::test]
    async fn v1_accepts() {
        accepts(
            b"PROXY TCP4 255.255.255.255 0.0.0.0 65535 0\r\n",
            proxied("255.255.255.255:65535", "0.0.0.0:0"),
        )
        .await;
        accepts(
            b"PROXY TCP6 2001:DB8::1 ::1 1 2\r\n",
            proxied("[2001:db8::1]:1", "[::1]:2"),
        )
        .await;
        // The longest TCP6 line: 104 bytes.
        let full = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let line = format!("PROXY TCP6 {full} {full} 65535 65535\r\n");
        assert_eq!(line.len(), 104);
        let all = format!("[{full}]:65535");
        accepts(line.as_bytes(), proxied(&all, &all)).await;
        // UNKNOWN ignores the rest of the line, whatever it is; the longest
        // one is exactly 107 bytes.
        accepts(
            b"PROXY UNKNOWN 1.2.3.4 nonsense \xff\r\n",
            ProxyHeader::Local,
        )
        .await;
        let line = format!("PROXY UNKNOWN {full} {full} 65535 65535\r\n");
        assert_eq!(line.len(), V1_MAX);
        accepts(line.as_bytes(), ProxyHeader::Local).await;
    }

    #[tokio::test]
    async fn v1_refuses() {
        let cases: &[(&[u8], &str)] = &[
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "LF without CR"),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX\n",
                "CR not followed by LF",
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n",
                "CR not followed by LF",
            ),
            (b"PROXY TCP4 1.2.3.4\n5.6.7.8 1 2\r\n", "LF without CR"),
            (b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "protocol"),
            (b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n", "protocol"),
            (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "protocol"),
            (b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", "protocol"),
            (b"PROXY UNKNOWNX\r\n", "protocol"),
            (b"PROXY \r\n", "protocol"),
            (b"PROXY TCP4\r\n", "four"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "four"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "four"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", "four"),
            (b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", "four"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1  2\r\n", "four"),
            (b"PROXY TCP4 1.2.3.4\t5.6.7.8 1 2\r\n", "four"),
            (b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", "IPv4"),
            (b"PROXY TCP4 1.2.3.4.5 5.6.7.8 1 2\r\n", "IPv4"),
            (b"PROXY TCP4 256.2.3.4 5.6.7.8 1 2\r\n", "IPv4"),
            (b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", "IPv4"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.08 1 2\r\n", "IPv4"),
            (b"PROXY TCP4 1..3.4 5.6.7.8 1 2\r\n", "IPv4"),
            (b"PROXY TCP4 1.2.3.4 0x5.6.7.8 1 2\r\n", "IPv4"),
            (b"PROXY TCP4 1.2.3.\xc4\xb4 5.6.7.8 1 2\r\n", "IPv4"),
            (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "IPv4"),
            (b"PROXY TCP4 1.2.3.4 ::ffff:5.6.7.8 1 2\r\n", "IPv4"),
            (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "IPv6"),
            (b"PROXY TCP6 ::1 1:::2 1 2\r\n", "IPv6"),
            (b"PROXY TCP6 12345::1 ::1 1 2\r\n", "IPv6"),
            (b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "IPv6"),
            (b"PROXY TCP6 [::1] ::1 1 2\r\n", "IPv6"),
            (b"PROXY TCP6 g::1 ::1 1 2\r\n", "IPv6"),
            (b"PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2\r\n", "IPv6"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "port"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 2\r\n", "port"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 100000 2\r\n", "port"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 +80 2\r\n", "port"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", "port"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n", "port"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 00 2\r\n", "port"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 8a 2\r\n", "port"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 0x2\r\n", "port"),
            // Not v1 at all: the space after PROXY is part of the signature.
            (b"PROXY\r\n", "not a PROXY protocol header"),
            (
                b"PROXYTCP4 1.2.3.4 5.6.7.8 1 2\r\n",
                "not a PROXY protocol header",
            ),
            (
                b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
                "not a PROXY protocol header",
            ),
            (
                b" PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
                "not a PROXY protocol header",
            ),
        ];
        for (input, why) in cases {
            refuses(input, why).await;
        }
    }

    #[tokio::test]
    async fn v1_length_limit() {
        // 105 bytes of line, then CRLF: 107, the most allowed.
        let mut line = b"PROXY UNKNOWN ".to_vec();
        line.resize(105, b'x');
        accepts(&cat(&[&line, b"\r\n"]), ProxyHeader::Local).await;
        // One more and the CRLF ends at byte 108.
        line.push(b'x');
        refuses(&cat(&[&line, b"\r\n"]), "longer than 107").await;
        // No CRLF at all: refused once 107 bytes are in, not at EOF.
        let endless = [b"PROXY TCP4 ".as_slice(), &[b'1'; 200]].concat();
        refuses(&endless, "longer than 107").await;
        refuses_at_eof(&endless[..V1_MAX], "longer than 107").await;
    }

    #[tokio::test]
    async fn v1_eof_before_crlf() {
        refuses_at_eof(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2", "EOF").await;
        refuses_at_eof(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r", "EOF").await;
        refuses_at_eof(b"PROX", "EOF").await;
        refuses_at_eof(b"", "EOF").await;
    }

    #[tokio::test]
    async fn v2_proxy_ipv4_and_ipv6_with_and_without_tlvs() {
        let v4 = v4_block([10, 0, 0, 1], [10, 0, 0, 2], 40000, 8080);
        let expect4 = proxied("10.0.0.1:40000", "10.0.0.2:8080");
        let src6 = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x42);
        let v6 = v6_block(src6, Ipv6Addr::LOCALHOST, 1, 65535);
        let expect6 = proxied("[2001:db8::42]:1", "[::1]:65535");
        let tlvs = cat(&[
            &tlv(0x01, b"http/1.1"),                                       // ALPN
            &tlv(0x02, b"herald.example"),                                 // authority
            &tlv(0x04, &[]),                                               // NOOP, empty
            &tlv(0x20, &[0x01, 0, 0, 0, 0, 0x21, 0, 3, b'1', b'.', b'3']), // SSL
            &tlv(0xea, &[0x01, b'v', b'p', b'c']),                         // AWS VPC endpoint
            &tlv(0xe0, &[0u8; 300]), // custom, longer than 255
        ]);
        accepts(&v2(1, 0x11, &v4), expect4).await;
        accepts(&v2(1, 0x11, &cat(&[&v4, &tlvs])), expect4).await;
        accepts(&v2(1, 0x21, &v6), expect6).await;
        accepts(&v2(1, 0x21, &cat(&[&v6, &tlvs])), expect6).await;
    }

    #[tokio::test]
    async fn v2_local_and_families_we_do_not_carry() {
        let v4 = v4_block([10, 0, 0, 1], [10, 0, 0, 2], 40000, 8080);
        let v6 = v6_block(Ipv6Addr::LOCALHOST, Ipv6Addr::LOCALHOST, 1, 2);
        let unix = [b'/'; 216];
        let local: &[Vec<u8>] = &[
            // LOCAL: whatever the block holds is skipped, family ignored.
            v2(0, 0x00, &[]),
            v2(0, 0x11, &v4),
            v2(0, 0x21, &cat(&[&v6, &tlv(0x01, b"h2")])),
            v2(0, 0xff, &[1, 2, 3]),
            v2(0, 0x11, &[]),
            // PROXY with what we don't carry.
            v2(1, 0x00, &[]),
            v2(1, 0x00, &v4),
            v2(1, 0x01, &v4),
            v2(1, 0x10, &v4),
            v2(1, 0x20, &v6),
            v2(1, 0x12, &v4),
            v2(1, 0x22, &v6),
            v2(1, 0x31, &unix),
            v2(1, 0x32, &unix),
            v2(1, 0x30, &[]),
        ];
        for header in local {
            accepts(header, ProxyHeader::Local).await;
        }
    }

    #[tokio::test]
    async fn v2_refuses() {
        let v4 = v4_block([10, 0, 0, 1], [10, 0, 0, 2], 40000, 8080);
        let v6 = v6_block(Ipv6Addr::LOCALHOST, Ipv6Addr::LOCALHOST, 1, 2);
        let with_version = |ver_cmd: u8| {
            let mut h = v2(1, 0x11, &v4);
            h[12] = ver_cmd;
            h
        };
        let mut bad_sig = v2(1, 0x11, &v4);
        bad_sig[10] = b'X';
        let cases: &[(Vec<u8>, &str)] = &[
            (bad_sig, "not a PROXY protocol header"),
            (
                b"\r\n\r\n\0\r\nquit\n".to_vec(),
                "not a PROXY protocol header",
            ),
            (
                b"\r\nGET / HTTP/1.1\r\n".to_vec(),
                "not a PROXY protocol header",
            ),
            (with_version(0x11), "version 1"),
            (with_version(0x01), "version 0"),
            (with_version(0x31), "version 3"),
            (with_version(0xf1), "version 15"),
            (with_version(0x22), "command 0x2"),
            (with_version(0x2f), "command 0xf"),
            (v2(1, 0x41, &v4), "family/transport byte 0x41"),
            (v2(1, 0x13, &v4), "family/transport byte 0x13"),
            (v2(1, 0xff, &v4), "family/transport byte 0xff"),
            (v2(1, 0x11, &v4[..11]), "12 address bytes"),
            (v2(1, 0x11, &[]), "12 address bytes"),
            (v2(1, 0x21, &v6[..35]), "36 address bytes"),
            (v2(1, 0x21, &v4), "36 address bytes"),
            (v2(1, 0x11, &cat(&[&v4, &[0x01, 0x00]])), "TLV header"),
            (v2(1, 0x11, &cat(&[&v4, &[0x01]])), "TLV header"),
            (
                v2(1, 0x11, &cat(&[&v4, &[0x01, 0x00, 0x03, b'h', b'2']])),
                "TLV value",
            ),
            (
                v2(
                    1,
                    0x21,
                    &cat(&[&v6, &tlv(0x01, b"h2"), &[0x04, 0xff, 0xff]]),
                ),
                "TLV value",
            ),
        ];
        for (input, why) in cases {
            refuses(input, why).await;
        }
    }

    #[tokio::test]
    async fn v2_length_limit() {
        // The largest allowed header, then one byte more.
        let block = vec![0u8; V2_MAX - V2_FIXED];
        accepts(&v2(0, 0x00, &block), ProxyHeader::Local).await;
        let mut over = v2(0, 0x00, &[]);
        over[14..16].copy_from_slice(&u16::try_from(V2_MAX - V2_FIXED + 1).unwrap().to_be_bytes());
        // Refused from the length field alone, without waiting for the block.
        refuses_at_eof(&over, "4097 bytes is over the 4096-byte limit").await;
        over[14..16].copy_from_slice(&[0xff, 0xff]);
        refuses_at_eof(&over, "over the 4096-byte limit").await;
    }

    #[tokio::test]
    async fn v2_truncated_by_eof() {
        let header = v2(
            1,
            0x21,
            &v6_block(Ipv6Addr::LOCALHOST, Ipv6Addr::LOCALHOST, 1, 2),
        );
        for end in 0..header.len() {
            refuses_at_eof(&header[..end], "EOF before the header ended").await;
        }
    }

    /// A connection that isn't speaking the protocol fails on its first
    /// byte, without waiting for more (the peer here never sends more).
    #[tokio::test]
    async fn refuses_without_waiting() {
        for first in [
            b"G".as_slice(),
            b"\x16\x03\x01",
            b"PROXZ",
            b"\r\n\r\n\0\r\nQUIT\n\x21\x99",
        ] {
            let (mut client, mut server) = duplex(64);
            client.write_all(first).await.unwrap();
            let err = read_header(&mut server).await.unwrap_err();
            assert!(!matches!(err, ProxyError::Eof), "{err}");
            drop(client);
        }
    }

    /// Over a real async pipe, written a byte at a time.
    #[tokio::test]
    async fn duplex_byte_by_byte() {
        for header in [HAPROXY_V1_TCP4, HAPROXY_V2_TCP4_ALPN] {
            let (mut client, mut server) = duplex(4);
            let input = cat(&[header, HTTP]);
            let writer = tokio::spawn(async move {
                for b in input {
                    client.write_all(&[b]).await.unwrap();
                    tokio::task::yield_now().await;
                }
            });
            let (got, leftover) = read_header(&mut server).await.unwrap();
            assert_eq!(got, proxied("192.168.0.1:56324", "192.168.0.11:443"));
            let mut rest = Vec::new();
            Rewind::new(leftover, server)
                .read_to_end(&mut rest)
                .await
                .unwrap();
            assert_eq!(rest, HTTP);
            writer.await.unwrap();
        }
    }

    #[tokio::test]
    async fn rewind_reads_prefix_then_inner_and_writes_to_inner() {
        let (mut far, near) = duplex(64);
        far.write_all(b" world").await.unwrap();
        drop(far.shutdown().await);
        let mut rewind = Rewind::new(Bytes::from_static(b"hello"), near);
        // Small reads split the prefix; it never merges with the inner data.
        let mut small = [0u8; 3];
        assert_eq!(rewind.read(&mut small).await.unwrap(), 3);
        assert_eq!(&small, b"hel");
        assert_eq!(rewind.read(&mut small).await.unwrap(), 2);
        assert_eq!(&small[..2], b"lo");
        rewind.write_all(b"pong").await.unwrap();
        rewind.flush().await.unwrap();
        let mut rest = Vec::new();
        rewind.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b" world");
        let mut written = [0u8; 4];
        far.read_exact(&mut written).await.unwrap();
        assert_eq!(&written, b"pong");
        rewind.shutdown().await.unwrap();
        assert_eq!(
            far.read(&mut written).await.unwrap(),
            0,
            "shutdown reaches inner"
        );

        // An empty prefix is a plain pass-through.
        let mut plain = Rewind::new(Bytes::new(), b"abc".as_slice());
        let mut all = Vec::new();
        plain.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"abc");
    }

    #[test]
    fn fuzz_entry_on_fixtures() {
        for header in [
            HAPROXY_V1_TCP4,
            HAPROXY_V1_TCP6_MAPPED,
            HAPROXY_V1_UNKNOWN,
            HAPROXY_V2_TCP4,
            HAPROXY_V2_TCP4_ALPN,
            HAPROXY_V2_TCP6,
            HAPROXY_V2_LOCAL,
        ] {
            for step in [0u8, 1, 7, 0xff] {
                fuzz_proxy(&cat(&[&[step], header, HTTP]));
                fuzz_proxy(&cat(&[&[step], &header[..header.len() - 1]]));
            }
        }
        fuzz_proxy(&[]);
        fuzz_proxy(&[0]);
    }

    /// The seeds in `fuzz/corpus/proxy/` (the fixtures above and their
    /// malformations, behind a read-size byte) go through the fuzz entry.
    #[test]
    fn fuzz_corpus_seeds() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/proxy");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).expect("fuzz/corpus/proxy") {
            fuzz_proxy(&std::fs::read(entry.expect("entry").path()).expect("seed"));
            n += 1;
        }
        assert!(n >= 20, "{n} seeds");
    }

    /// A valid header of any kind, with the answer it must give.
    fn valid_header() -> impl Strategy<Value = (Vec<u8>, ProxyHeader)> {
        let v4 = (
            any::<[u8; 4]>(),
            any::<[u8; 4]>(),
            any::<u16>(),
            any::<u16>(),
        );
        let v6 = (
            any::<[u8; 16]>(),
            any::<[u8; 16]>(),
            any::<u16>(),
            any::<u16>(),
        );
        let tlvs = proptest::collection::vec(
            (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..300)),
            0..5,
        )
        .prop_map(|list| {
            list.iter()
                .map(|(t, v)| tlv(*t, v))
                .collect::<Vec<_>>()
                .concat()
        });
        prop_oneof![
            v4.prop_map(|(s, d, sp, dp)| {
                let (s, d) = (Ipv4Addr::from(s), Ipv4Addr::from(d));
                let line = format!("PROXY TCP4 {s} {d} {sp} {dp}\r\n");
                let h = ProxyHeader::Proxied {
                    source: SocketAddr::new(s.into(), sp),
                    destination: SocketAddr::new(d.into(), dp),
                };
                (line.into_bytes(), h)
            }),
            (v6, any::<bool>()).prop_map(|((s, d, sp, dp), upper)| {
                let (s, d) = (Ipv6Addr::from(s), Ipv6Addr::from(d));
                // Rust prints lower case and `::`; hex is case-insensitive.
                let text = |ip: Ipv6Addr| {
                    let t = ip.to_string();
                    if upper { t.to_ascii_uppercase() } else { t }
                };
                let line = format!("PROXY TCP6 {} {} {sp} {dp}\r\n", text(s), text(d));
                let h = ProxyHeader::Proxied {
                    source: SocketAddr::new(s.into(), sp),
                    destination: SocketAddr::new(d.into(), dp),
                };
                (line.into_bytes(), h)
            }),
            // At most 14 + 91 + 2 = 107 bytes.
            "[ -~]{0,91}".prop_map(|rest| {
                (
                    format!("PROXY UNKNOWN {rest}\r\n").into_bytes(),
                    ProxyHeader::Local,
                )
            }),
            (v4, tlvs.clone()).prop_map(|((s, d, sp, dp), tlvs)| {
                let h = ProxyHeader::Proxied {
                    source: SocketAddr::new(Ipv4Addr::from(s).into(), sp),
                    destination: SocketAddr::new(Ipv4Addr::from(d).into(), dp),
                };
                (v2(1, 0x11, &cat(&[&v4_block(s, d, sp, dp), &tlvs])), h)
            }),
            (v6, tlvs).prop_map(|((s, d, sp, dp), tlvs)| {
                let (s, d) = (Ipv6Addr::from(s), Ipv6Addr::from(d));
                let h = ProxyHeader::Proxied {
                    source: SocketAddr::new(s.into(), sp),
                    destination: SocketAddr::new(d.into(), dp),
                };
                (v2(1, 0x21, &cat(&[&v6_block(s, d, sp, dp), &tlvs])), h)
            }),
            (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..400))
                .prop_map(|(fam, block)| (v2(0, fam, &block), ProxyHeader::Local)),
            (
                prop::sample::select(vec![
                    0x00u8, 0x01, 0x02, 0x10, 0x12, 0x20, 0x22, 0x30, 0x31, 0x32
                ]),
                proptest::collection::vec(any::<u8>(), 0..400),
            )
                .prop_map(|(fam, block)| (v2(1, fam, &block), ProxyHeader::Local)),
        ]
    }

    /// Bytes that start like a header, to get the fuzz entry past the first
    /// check now and then.
    fn header_like() -> impl Strategy<Value = Vec<u8>> {
        let tail = proptest::collection::vec(any::<u8>(), 0..200);
        prop_oneof![
            tail.clone(),
            tail.clone().prop_map(|t| cat(&[b"PROXY ", &t])),
            ("(TCP4|TCP6|UNKNOWN)[ 0-9a-fA-F:.+\r\n]{0,110}")
                .prop_map(|t| cat(&[b"PROXY ", t.as_bytes()])),
            (any::<[u8; 4]>(), tail).prop_map(|(fixed, t)| {
                let mut fixed = fixed;
                fixed[2] = 0;
                cat(&[V2_SIG, &fixed, &t])
            }),
        ]
    }

    proptest! {
        #[test]
        fn any_valid_header_parses_under_any_split(
            (header, expect) in valid_header(),
            after in proptest::collection::vec(any::<u8>(), 0..300),
            sizes in proptest::collection::vec(1usize..40, 1..8),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let input = cat(&[&header, &after]);
            let got = rt.block_on(read_split(&input, sizes));
            prop_assert_eq!(got, Ok((expect, after)));
        }

        #[test]
        fn arbitrary_bytes_never_panic(step in any::<u8>(), data in header_like()) {
            fuzz_proxy(&cat(&[&[step], &data]));
        }
    }
}
