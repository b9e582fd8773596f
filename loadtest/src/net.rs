//! Network plumbing: target URLs, TCP connects from chosen loopback source
//! addresses, the WebSocket client handshake, and a minimal keep-alive HTTP/1
//! client for the publish API and the memory probes.

use anyhow::{Context, bail};
use bytes::Bytes;
use fastwebsockets::{FragmentCollector, WebSocket};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::net::{TcpSocket, TcpStream};

/// A client WebSocket after the handshake.
pub type Ws = FragmentCollector<TokioIo<Upgraded>>;
/// The same without fragment reassembly, for splitting into halves.
pub type RawWs = WebSocket<TokioIo<Upgraded>>;

/// Largest frame accepted from a server.
const MAX_FRAME: usize = 16 << 20;

/// Bound on one TCP connect plus WebSocket handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// One server, as given by `--url`.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The URL as given, for messages.
    pub url: String,
    /// `host:port`, sent as the Host header.
    pub authority: String,
    pub addr: SocketAddr,
    /// Path prefix without trailing slash ("" for none).
    pub prefix: String,
}

impl Endpoint {
    /// Parses `http://host[:port][/prefix]` (`ws://` is accepted too) and resolves it.
    pub async fn resolve(url: &str) -> anyhow::Result<Self> {
        let (authority, prefix) = split_url(url)?;
        let with_port = if has_port(&authority) {
            authority.clone()
        } else {
            format!("{authority}:80")
        };
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(&with_port)
            .await
            .with_context(|| format!("cannot resolve {url}"))?
            .collect();
        let addr = addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or(addrs.first())
            .copied()
            .with_context(|| format!("{url} resolves to no address"))?;
        Ok(Self {
            url: url.to_owned(),
            authority,
            addr,
            prefix,
        })
    }

    /// Whether connections may be bound to other 127.0.0.x source addresses.
    pub fn is_loopback_v4(&self) -> bool {
        matches!(self.addr.ip(), IpAddr::V4(ip) if ip.is_loopback())
    }
}

fn has_port(authority: &str) -> bool {
    match authority.rfind(':') {
        Some(i) => !authority[i..].contains(']'),
        None => false,
    }
}

/// Splits a URL into authority and path prefix.
pub fn split_url(url: &str) -> anyhow::Result<(String, String)> {
    let rest = ["http://", "ws://"]
        .iter()
        .find_map(|s| url.strip_prefix(s))
        .with_context(|| {
            format!("URL {url:?} must start with http:// or ws:// (TLS is not supported)")
        })?;
    let (authority, prefix) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    if authority.is_empty() {
        bail!("URL {url:?} has no host");
    }
    Ok((authority.to_owned(), prefix.to_owned()))
}

/// The i-th loopback source address 127.0.0.(i+1), or `None` to let the kernel pick.
pub fn source_addr(i: usize, count: usize) -> Option<SocketAddr> {
    if count <= 1 {
        return None;
    }
    let count = count.min(254);
    let n = u8::try_from(i % count + 1).unwrap_or(1);
    // An explicit port per client: letting the kernel pick one at bind()
    // scans the whole range per call and turns quadratic past ~10k sockets.
    let port = FIRST_SOURCE_PORT + u16::try_from((i / count) % SOURCE_PORTS).unwrap_or(0);
    Some(SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, n)),
        port,
    ))
}

/// Source ports used with explicit source addresses (above typical server ports).
const FIRST_SOURCE_PORT: u16 = 40_000;
const SOURCE_PORTS: usize = 20_000;

/// TCP connect, bound to `source` first when given.
pub async fn tcp_connect(
    addr: SocketAddr,
    source: Option<SocketAddr>,
) -> std::io::Result<TcpStream> {
    let stream = match source {
        Some(src) => match connect_from(addr, src).await {
            Ok(s) => s,
            // The 4-tuple is still taken (e.g. TIME_WAIT of an earlier run
            // to the same server port): let the kernel pick a port instead.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::AddrNotAvailable | std::io::ErrorKind::AddrInUse
                ) =>
            {
                connect_from(addr, SocketAddr::new(src.ip(), 0)).await?
            }
            Err(e) => return Err(e),
        },
        None => TcpStream::connect(addr).await?,
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

async fn connect_from(addr: SocketAddr, src: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // Let ports still in TIME_WAIT from an earlier run be reused.
    sock.set_reuseaddr(true)?;
    if sock.bind(src).is_err() {
        // Port taken (by another program): let the kernel choose.
        sock.bind(SocketAddr::new(src.ip(), 0))?;
    }
    sock.connect(addr).await
}

/// Runs hyper's connection futures on the tokio runtime.
struct SpawnExecutor;

impl<F> hyper::rt::Executor<F> for SpawnExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(fut);
    }
}

/// Opens a WebSocket to `path` on `ep` (connect + upgrade), within [`CONNECT_TIMEOUT`].
pub async fn ws_connect(
    ep: &Endpoint,
    path: &str,
    source: Option<SocketAddr>,
) -> anyhow::Result<Ws> {
    Ok(FragmentCollector::new(
        ws_connect_raw(ep, path, source).await?,
    ))
}

/// [`ws_connect`] without the fragment collector.
pub async fn ws_connect_raw(
    ep: &Endpoint,
    path: &str,
    source: Option<SocketAddr>,
) -> anyhow::Result<RawWs> {
    tokio::time::timeout(CONNECT_TIMEOUT, ws_connect_inner(ep, path, source))
        .await
        .with_context(|| format!("timed out after {CONNECT_TIMEOUT:?}"))?
}

async fn ws_connect_inner(
    ep: &Endpoint,
    path: &str,
    source: Option<SocketAddr>,
) -> anyhow::Result<RawWs> {
    let stream = tcp_connect(ep.addr, source)
        .await
        .with_context(|| match source {
            Some(ip) => format!("TCP connect to {} from {ip}", ep.addr),
            None => format!("TCP connect to {}", ep.addr),
        })?;
    let req = hyper::Request::get(format!("{}{path}", ep.prefix))
        .header(hyper::header::HOST, &ep.authority)
        .header(hyper::header::UPGRADE, "websocket")
        .header(hyper::header::CONNECTION, "upgrade")
        .header(
            "Sec-WebSocket-Key",
            fastwebsockets::handshake::generate_key(),
        )
        .header("Sec-WebSocket-Version", "13")
        .body(http_body_util::Empty::<Bytes>::new())?;
    let (mut ws, _resp) = fastwebsockets::handshake::client(&SpawnExecutor, req, stream)
        .await
        .map_err(|e| anyhow::anyhow!("WebSocket handshake with {}: {e}", ep.url))?;
    ws.set_max_message_size(MAX_FRAME);
    Ok(ws)
}

/// One keep-alive HTTP/1.1 connection.
pub struct Http {
    sender: SendRequest<Full<Bytes>>,
    authority: String,
    prefix: String,
}

/// A response: status and body.
pub struct HttpResponse {
    pub status: hyper::StatusCode,
    pub body: Bytes,
}

impl HttpResponse {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).trim_end().to_owned()
    }
}

impl Http {
    pub async fn connect(ep: &Endpoint) -> anyhow::Result<Self> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, tcp_connect(ep.addr, None))
            .await
            .with_context(|| format!("connecting to {} timed out", ep.url))?
            .with_context(|| format!("cannot connect to {} ({})", ep.url, ep.addr))?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(Self {
            sender,
            authority: ep.authority.clone(),
            prefix: ep.prefix.clone(),
        })
    }

    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    pub async fn request(
        &mut self,
        method: hyper::Method,
        path: &str,
        body: Option<Bytes>,
    ) -> anyhow::Result<HttpResponse> {
        self.sender.ready().await?;
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.prefix))
            .header(hyper::header::HOST, &self.authority);
        if body.is_some() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let req = req.body(Full::new(body.unwrap_or_default()))?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok(HttpResponse { status, body })
    }
}

/// One GET on a fresh connection.
pub async fn http_get(ep: &Endpoint, path: &str) -> anyhow::Result<HttpResponse> {
    let mut c = Http::connect(ep).await?;
    tokio::time::timeout(CONNECT_TIMEOUT, c.request(hyper::Method::GET, path, None))
        .await
        .with_context(|| format!("GET {}{path} timed out", ep.url))?
}

/// Fails with a clear message when a server cannot be reached at all.
pub async fn preflight(eps: &[Endpoint], what: &str) -> anyhow::Result<()> {
    for ep in eps {
        match tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(ep.addr)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => bail!(
                "cannot reach the {what} at {} ({}): {e}; is it running?",
                ep.url,
                ep.addr
            ),
            Err(_) => bail!(
                "cannot reach the {what} at {} ({}): no answer within 3 s",
                ep.url,
                ep.addr
            ),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_authority_and_prefix() {
        let (a, p) = split_url("http://127.0.0.1:8080").expect("ok");
        assert_eq!((a.as_str(), p.as_str()), ("127.0.0.1:8080", ""));
        let (a, p) = split_url("ws://h:1/base/").expect("ok");
        assert_eq!((a.as_str(), p.as_str()), ("h:1", "/base"));
        assert!(split_url("https://x").is_err());
        assert!(split_url("http:///x").is_err());
        assert!(has_port("[::1]:80") && !has_port("[::1]") && !has_port("host"));
    }

    #[test]
    fn source_addresses_cycle_over_loopback() {
        assert_eq!(source_addr(5, 1), None);
        assert_eq!(
            source_addr(0, 3),
            Some("127.0.0.1:40000".parse().expect("addr"))
        );
        assert_eq!(
            source_addr(4, 3),
            Some("127.0.0.2:40001".parse().expect("addr"))
        );
    }
}
