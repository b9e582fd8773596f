//! Accept: each listener's loop, from a raw TCP connection to HTTP.
//!
//! Part of the server, below the routes and above the kernel. Every stage
//! before a session exists has a time limit and a cost cap: the PROXY
//! protocol header (when configured) and every HTTP request head must arrive
//! within `header_timeout` (hyper restarts that timer after each response,
//! so it is also the keep-alive idle timeout); public connections are
//! charged to their client address and to the file-descriptor budget, and
//! refused cheaply (a one-shot 429/503 with `Connection: close`, or a close)
//! past either. A WebSocket upgrade takes the connection's charges with it
//! into the session, so they last as long as the socket does.

use super::admission::{AddressSlot, FdBudget, FdSlot, PerAddress, TrustedProxies, refused};
use crate::metrics::{AcceptError, RefuseReason, TimeoutStage, metrics};
use crate::proxy_protocol::{self, ProxyHeader, Rewind};
use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response};
use bytes::Bytes;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What every connection of a node's listeners shares.
pub(crate) struct AcceptCtx {
    pub(crate) per_address: Arc<PerAddress>,
    pub(crate) trusted: TrustedProxies,
    pub(crate) fds: Arc<FdBudget>,
    /// The public listener expects a PROXY protocol header on every connection.
    pub(crate) proxy_protocol: bool,
    pub(crate) header_timeout: Duration,
    /// Ends the accept loops, and asks open HTTP connections to finish.
    pub(crate) stop: CancellationToken,
    /// HTTP connections (not upgraded sessions, which the server tracks).
    pub(crate) conns: TaskTracker,
}

/// Who is on the other end, as request handlers see it (an extension of
/// every request).
#[derive(Debug, Clone)]
pub(crate) struct Client {
    /// The client address: the peer, or what the PROXY header said.
    pub(crate) ip: IpAddr,
    /// The connection's charges; an upgrade takes them (see [`Charges::take`]).
    pub(crate) charges: Charges,
    /// Drops the connection at once, whatever it is doing: for a streamed
    /// response (SSE) whose reader stopped reading.
    pub(crate) abort: CancellationToken,
}

/// The fd-budget slot and address slot a connection holds.
#[derive(Clone, Default)]
pub(crate) struct Charges(Arc<Mutex<Option<Held>>>);

impl std::fmt::Debug for Charges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Charges")
    }
}

pub(crate) struct Held {
    _fd: FdSlot,
    _address: Option<AddressSlot>,
}

impl Charges {
    fn new(fd: FdSlot, address: Option<AddressSlot>) -> Self {
        Self(Arc::new(Mutex::new(Some(Held {
            _fd: fd,
            _address: address,
        }))))
    }

    /// Moves the charges out, for a session that outlives the HTTP exchange.
    pub(crate) fn take(&self) -> Option<Held> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// Accepts until `ctx.stop`; each connection is served on its own task.
pub(crate) async fn serve(listener: TcpListener, public: bool, app: Router, ctx: Arc<AcceptCtx>) {
    let mut quiet_until = Instant::now();
    loop {
        let accepted = tokio::select! {
            biased;
            () = ctx.stop.cancelled() => break,
            // Cancel-safe: a connection is either returned or left queued.
            r = listener.accept() => r,
        };
        let (tcp, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                accept_failed(&e, &mut quiet_until).await;
                continue;
            }
        };
        let fd = match ctx.fds.take(public) {
            Ok(s) => s,
            Err(r) => {
                refuse(&tcp, r);
                continue;
            }
        };
        // Without a PROXY header the client is the peer: charge it now,
        // before spending a task on it.
        let address = if public && !ctx.proxy_protocol {
            match charge(&ctx, peer.ip()) {
                Ok(a) => a,
                Err(r) => {
                    refuse(&tcp, r);
                    continue;
                }
            }
        } else {
            None
        };
        let (app, ctx2) = (app.clone(), Arc::clone(&ctx));
        ctx.conns
            .spawn(connection(tcp, peer, public, app, ctx2, fd, address));
    }
}

/// Charges a public connection to its client address, unless that address
/// is a trusted proxy (whose requests name their clients one by one).
fn charge(ctx: &Arc<AcceptCtx>, ip: IpAddr) -> Result<Option<AddressSlot>, RefuseReason> {
    if ctx.trusted.contains(ip) {
        return Ok(None);
    }
    ctx.per_address.admit(ip).map(Some)
}

/// A refusal costs one non-blocking write and a close.
fn refuse(tcp: &TcpStream, reason: RefuseReason) {
    refused(reason);
    let response: &[u8] = match reason {
        RefuseReason::PerIp | RefuseReason::PerIpRate => {
            b"HTTP/1.1 429 Too Many Requests\r\nConnection: close\r\nContent-Length: 38\r\n\r\ntoo many connections from this address\n"
        }
        RefuseReason::FdReserve => {
            b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 26\r\n\r\nnode is full; try another\n"
        }
        _ => b"",
    };
    if !response.is_empty() {
        let _ = tcp.try_write(response);
    }
}

/// Out of descriptors (or another accept failure): count it, log it at most
/// every 10 s, and pause instead of spinning on a listener that stays readable.
async fn accept_failed(e: &std::io::Error, quiet_until: &mut Instant) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionReset, Interrupted};
    if matches!(e.kind(), ConnectionAborted | ConnectionReset | Interrupted) {
        return; // that one connection is gone; the listener is fine
    }
    // EMFILE, ENFILE, ENOBUFS, ENOMEM on Linux.
    let kind = match e.raw_os_error() {
        Some(24 | 23 | 105 | 12) => AcceptError::FdLimit,
        _ => AcceptError::Other,
    };
    metrics().accept_error(kind);
    if Instant::now() >= *quiet_until {
        tracing::warn!(error = %e, "accept failed; pausing the listener briefly");
        *quiet_until = Instant::now() + Duration::from_secs(10);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
}

async fn connection(
    mut tcp: TcpStream,
    peer: SocketAddr,
    public: bool,
    app: Router,
    ctx: Arc<AcceptCtx>,
    fd: FdSlot,
    address: Option<AddressSlot>,
) {
    // Deliveries are small frames that must leave at once: no Nagle.
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
    let (ip, rest, address) = if public && ctx.proxy_protocol {
        if !ctx.trusted.is_empty() && !ctx.trusted.contains(peer.ip()) {
            tracing::debug!(%peer, "PROXY protocol connection from an untrusted peer");
            return refused(RefuseReason::ProxyHeader);
        }
        let header =
            tokio::time::timeout(ctx.header_timeout, proxy_protocol::read_header(&mut tcp));
        let (ip, rest) = match header.await {
            Ok(Ok((ProxyHeader::Proxied { source, .. }, rest))) => (source.ip(), rest),
            Ok(Ok((ProxyHeader::Local, rest))) => (peer.ip(), rest),
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "bad PROXY protocol header");
                return refused(RefuseReason::ProxyHeader);
            }
            Err(_) => return metrics().timeout(TimeoutStage::ProxyHeader),
        };
        match charge(&ctx, ip) {
            Ok(a) => (ip, rest, a),
            Err(r) => return refuse(&tcp, r),
        }
    } else {
        (peer.ip(), Bytes::new(), address)
    };
    let served = Arc::new(AtomicBool::new(false));
    let abort = CancellationToken::new();
    let service = WithClient {
        app,
        client: Client {
            ip,
            charges: Charges::new(fd, address),
            abort: abort.clone(),
        },
        served: Arc::clone(&served),
    };
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(ctx.header_timeout);
    let conn = http
        .serve_connection(TokioIo::new(Rewind::new(rest, tcp)), service)
        .with_upgrades();
    tokio::pin!(conn);
    let res = tokio::select! {
        r = conn.as_mut() => r,
        () = ctx.stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                r = conn => r,
                () = abort.cancelled() => return,
            }
        }
        () = abort.cancelled() => return,
    };
    if let Err(e) = res {
        if e.is_timeout() {
            let stage = if served.load(Ordering::Relaxed) {
                TimeoutStage::KeepAlive
            } else {
                TimeoutStage::RequestHead
            };
            metrics().timeout(stage);
        } else {
            tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
        }
    }
}

/// The app, with the connection's [`Client`] put on every request.
struct WithClient {
    app: Router,
    client: Client,
    /// Set once a request has been received (timeouts after it are keep-alive ones).
    served: Arc<AtomicBool>,
}

impl hyper::service::Service<Request<Incoming>> for WithClient {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = axum::routing::future::RouteFuture<Infallible>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        self.served.store(true, Ordering::Relaxed);
        req.extensions_mut().insert(self.client.clone());
        let mut app = self.app.clone();
        tower_service::Service::call(&mut app, req)
    }
}
