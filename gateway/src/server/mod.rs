//! Server: wires the layers together and owns the listeners and lifecycle.
//!
//! Builds hub → broker → node once, mounts `/ws`, `/socket.io/`, `/sse` + the demo page on the
//! public listener and the API, metrics and probes on the admin listener (or
//! the public one when no admin listener is configured), and runs until
//! SIGTERM/SIGINT, then shuts down in order: stop accepting (new WebSockets
//! get 503, `/readyz` says draining); tell every client to reconnect (4000)
//! at moments spread over `drain_timeout`, still delivering to each until
//! its turn; stop the broker once the last session has left or the drain
//! timed out; return.
//!
//! Below the routes, [`accept`] runs each listener's loop (time limits,
//! PROXY protocol, per-address and file-descriptor admission from
//! [`admission`]).

mod accept;
mod admission;

pub(crate) use admission::TrustedProxies;

use crate::api::{self, ApiState};
use crate::auth::{Auth, UserConnections};
use crate::broker::memory::MemoryBroker;
use crate::broker::{Broker, BrokerError};
use crate::channels::Rules;
use crate::config::{BrokerConfig, Config};
use crate::hooks::{ClientHeaders, Hooks};
use crate::hub::Hub;
use crate::metrics::{PollMethod, PollOutcome, RefuseReason, metrics};
use crate::node::Node;
use crate::session::SessionCtx;
use crate::signal::Signal;
use crate::token::Tokens;
use crate::transport;
use crate::transport::socketio::polling::{Answer, EngineError, Handle, Polls};
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use fastwebsockets::upgrade::IncomingUpgrade;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const DEMO_PAGE: &str = include_str!("../../assets/demo.html");
/// The browser build of the JS client (`clients/js`, `npm run build`), so a
/// plain HTML page can `<script src="/herald.js">` without a build step.
const CLIENT_BUNDLE: &str = include_str!("../../assets/herald.js");

async fn client_bundle() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        CLIENT_BUNDLE,
    )
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Broker(String),
    #[error(transparent)]
    Config(crate::config::ConfigError),
    #[error("auth: {0}")]
    Auth(crate::auth::AuthSetupError),
}

#[derive(Clone)]
struct AppState {
    /// Admission rules for new WebSockets.
    limits: Arc<crate::config::ServerConfig>,
    node: Arc<Node>,
    sessions: Arc<SessionCtx>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    /// Stops the broker's background tasks (pub/sub, expiry): cancelled only
    /// after the sessions have drained, so they keep receiving until then.
    broker_stop: CancellationToken,
    /// What the listeners share: admission state and the accept loops' stop.
    accept: Arc<accept::AcceptCtx>,
    /// This node's Socket.IO long-polling sessions.
    polls: Arc<Polls>,
}

/// A node ready to serve: listeners bound, broker started.
pub struct Server {
    public: TcpListener,
    admin: Option<TcpListener>,
    state: AppState,
    max_payload: usize,
    api_keys: Arc<[[u8; 32]]>,
    close_timeout: Duration,
}

impl Server {
    /// Binds the listeners and starts the broker; `shutdown` begins the drain.
    pub async fn bind(
        cfg: &Config,
        node_id: String,
        shutdown: CancellationToken,
    ) -> Result<Self, ServerError> {
        let hub = Arc::new(Hub::new());
        let broker_stop = CancellationToken::new();
        let broker: Arc<dyn Broker> = match &cfg.broker {
            BrokerConfig::Memory(m) => MemoryBroker::start(m, hub.clone(), broker_stop.clone()),
            BrokerConfig::Redis(r) => {
                crate::broker::redis::start(r, hub.clone(), broker_stop.clone())
                    .await
                    .map_err(|e: BrokerError| ServerError::Broker(e.to_string()))?
            }
        };
        let rules = Arc::new(Rules::from_config(cfg));
        let polls = Polls::new(&node_id);
        let webhooks = crate::hooks::webhooks::Webhooks::start(
            &cfg.webhooks,
            Arc::clone(&broker),
            node_id.clone(),
            cfg.presence.heartbeat * 2,
            broker_stop.clone(),
        );
        let node = Arc::new(Node::new(
            node_id,
            hub,
            Arc::clone(&broker),
            Arc::clone(&rules),
            webhooks,
        ));
        let auth = Auth::from_config(&cfg.auth)
            .map_err(ServerError::Auth)?
            .map(Arc::new);
        // Sessions watch a cheap signal rather than the token itself.
        let drain = Arc::new(Signal::default());
        let (sd, raise) = (shutdown.clone(), Arc::clone(&drain));
        tokio::spawn(async move {
            sd.cancelled().await;
            raise.raise();
        });
        let tokens = Arc::new(Tokens::new(
            &cfg.session.reconnect_secrets,
            cfg.session.reconnect_ttl,
        ));
        if !tokens.ready() {
            tokio::spawn(agree_on_secret(Arc::clone(&broker), Arc::clone(&tokens)));
        }
        let presence = crate::presence::Presence::start(
            Arc::clone(&broker),
            Arc::clone(&rules),
            node.id.clone(),
            cfg.presence.clone(),
            broker_stop.clone(),
        );
        let sessions = Arc::new(SessionCtx {
            node: node.clone(),
            presence,
            rules,
            links: Default::default(),
            cfg: cfg.session.clone(),
            shutdown: drain,
            tokens,
            drain: cfg.server.drain_timeout,
            auth,
            users: UserConnections::new(cfg.auth.max_connections_per_user),
            hooks: Hooks::from_config(&cfg.hooks, &node.id).map(Arc::new),
        });
        let bind = |addr: SocketAddr| async move {
            listen(addr).map_err(|source| ServerError::Bind { addr, source })
        };
        let public = bind(cfg.server.listen).await?;
        let admin = match cfg.server.admin_listen {
            Some(a) => Some(bind(a).await?),
            None => None,
        };
        Ok(Self {
            public,
            admin,
            state: AppState {
                limits: Arc::new(cfg.server.clone()),
                node,
                sessions,
                tracker: TaskTracker::new(),
                shutdown,
                broker_stop,
                accept: Arc::new(accept_ctx(&cfg.server)?),
                polls,
            },
            max_payload: cfg.session.max_payload,
            api_keys: ApiState::hash_keys(&cfg.api.all_keys().map_err(ServerError::Config)?),
            close_timeout: cfg.session.close_timeout,
        })
    }

    pub fn public_addr(&self) -> std::io::Result<SocketAddr> {
        self.public.local_addr()
    }

    pub fn admin_addr(&self) -> Option<std::io::Result<SocketAddr>> {
        self.admin.as_ref().map(TcpListener::local_addr)
    }

    /// Serves until shutdown, then drains sessions for up to `drain_timeout`.
    pub async fn run(self) {
        let st = self.state;
        let api_state = ApiState {
            node: st.node.clone(),
            max_payload: self.max_payload,
            keys: self.api_keys,
            presence: st.sessions.presence.clone(),
        };
        let admin_routes = Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics_text))
            .with_state(st.clone())
            .merge(
                Router::new()
                    .route("/api/v1/publish", post(api::publish))
                    .route("/api/v1/broadcast", post(api::broadcast))
                    .route("/api/v1/presence", get(api::presence))
                    .with_state(api_state),
            );
        let public_routes = Router::new()
            .route("/", get(|| async { Html(DEMO_PAGE) }))
            .route("/herald.js", get(client_bundle))
            .route("/ws", get(ws_upgrade))
            .route("/sse", get(sse_get).options(socketio_preflight))
            .route(
                "/socket.io",
                get(socketio_get)
                    .post(socketio_post)
                    .options(socketio_preflight),
            )
            .route(
                "/socket.io/",
                get(socketio_get)
                    .post(socketio_post)
                    .options(socketio_preflight),
            )
            .with_state(st.clone());
        let (public_app, admin_app) = match self.admin {
            Some(l) => (
                public_routes.fallback(not_found),
                Some((l, admin_routes.fallback(not_found))),
            ),
            None => (public_routes.merge(admin_routes).fallback(not_found), None),
        };
        // Listeners stay open through the drain: new WebSockets get 503 and
        // /readyz says "draining", so probes see why; they close once every
        // session has ended.
        let listeners = std::iter::once((self.public, true, public_app))
            .chain(admin_app.map(|(l, app)| (l, false, app)));
        let mut loops = Vec::new();
        for (listener, public, app) in listeners {
            loops.push(tokio::spawn(accept::serve(
                listener,
                public,
                app,
                Arc::clone(&st.accept),
            )));
        }
        st.shutdown.cancelled().await;
        let drain = st.sessions.drain;
        tracing::info!(sessions = metrics().connections.total(), ?drain, "draining");
        st.tracker.close();
        let limit = drain + self.close_timeout + Duration::from_secs(1);
        if tokio::time::timeout(limit, st.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(left = st.tracker.len(), "drain timed out; closing the rest");
        }
        // Only now: until the last session has gone, it still receives.
        st.broker_stop.cancel();
        // Then the listeners close, and open HTTP connections finish their
        // request in flight (briefly) or are dropped.
        st.accept.stop.cancel();
        for l in loops {
            let _ = l.await;
        }
        st.accept.conns.close();
        let _ = tokio::time::timeout(Duration::from_secs(1), st.accept.conns.wait()).await;
        tracing::info!("stopped");
    }
}

/// The listeners' shared admission state, from `[server]`.
fn accept_ctx(cfg: &crate::config::ServerConfig) -> Result<accept::AcceptCtx, ServerError> {
    let trusted = TrustedProxies::parse(&cfg.trusted_proxies).map_err(|e| {
        ServerError::Config(crate::config::ConfigError::Parse {
            path: "server.trusted_proxies".into(),
            message: e,
        })
    })?;
    // The descriptor limit as the process has it now (main raised it to the hard limit).
    let limit = rlimit::getrlimit(rlimit::Resource::NOFILE)
        .map_or(u64::MAX, |(soft, _)| soft)
        .min(usize::MAX as u64) as usize;
    Ok(accept::AcceptCtx {
        per_address: admission::PerAddress::new(admission::Limits {
            max_per_ip: cfg.max_connections_per_ip,
            rate_per_ip: cfg.connection_rate_per_ip,
            burst_per_ip: cfg.connection_burst_per_ip,
        }),
        trusted,
        fds: admission::FdBudget::new(limit, cfg.fd_reserve),
        proxy_protocol: cfg.proxy_protocol,
        header_timeout: cfg.header_timeout,
        stop: CancellationToken::new(),
        conns: TaskTracker::new(),
    })
}

/// Without a configured secret: the nodes of one Redis share a generated
/// one; a single node makes its own (its tokens die with it, as does its
/// history).
async fn agree_on_secret(broker: Arc<dyn Broker>, tokens: Arc<Tokens>) {
    loop {
        match broker.shared_secret().await {
            Ok(Some(s)) => return tokens.set_secret(&s),
            Ok(None) => return tokens.set_secret(&crate::token::random_secret()),
            Err(e) => {
                tracing::debug!(error = %e, "reconnect secret not agreed yet; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Binds with a deep accept backlog: after a node restart thousands of
/// clients reconnect at once, and a full backlog drops SYNs (1 s retries).
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

async fn ws_upgrade(
    State(st): State<AppState>,
    client: Option<axum::Extension<accept::Client>>,
    headers: axum::http::HeaderMap,
    upgrade: Result<IncomingUpgrade, StatusCode>,
) -> Response {
    upgrade_to(st, client, headers, upgrade, Protocol::Herald)
}

/// What an upgraded WebSocket speaks.
enum Protocol {
    Herald,
    SocketIo,
    /// A Socket.IO polling session moving to this WebSocket.
    SocketIoUpgrade(Arc<Handle>),
}

/// The query of an Engine.IO request.
#[derive(serde::Deserialize)]
struct EngineQuery {
    #[serde(rename = "EIO")]
    eio: Option<String>,
    transport: Option<String>,
    sid: Option<String>,
}

/// An Engine.IO error: HTTP 400, `{"code","message"}`.
fn engine_error(e: EngineError) -> Response {
    let body = serde_json::json!({ "code": e.code(), "message": e.message() });
    (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
}

/// The Engine.IO query, checked: `EIO=4` and a transport it serves.
fn engine_query(
    query: Result<axum::extract::Query<EngineQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<EngineQuery, EngineError> {
    let Ok(axum::extract::Query(q)) = query else {
        return Err(EngineError::BadRequest);
    };
    if !matches!(q.transport.as_deref(), Some("websocket" | "polling")) {
        metrics().refused(RefuseReason::NotWebsocket);
        return Err(EngineError::TransportUnknown);
    }
    if q.eio.as_deref() != Some("4") {
        return Err(EngineError::UnsupportedVersion);
    }
    Ok(q)
}

type EngineQueryResult =
    Result<axum::extract::Query<EngineQuery>, axum::extract::rejection::QueryRejection>;

/// `GET /socket.io/`: Engine.IO v4 (`EIO=4`). `transport=websocket`
/// upgrades (a new session, or with `sid` a polling session moving over);
/// `transport=polling` opens a polling session, or with `sid` long-polls it.
/// Anything else gets the Engine.IO error (HTTP 400, `{"code","message"}`).
async fn socketio_get(
    State(st): State<AppState>,
    client: Option<axum::Extension<accept::Client>>,
    headers: axum::http::HeaderMap,
    query: EngineQueryResult,
    upgrade: Result<IncomingUpgrade, StatusCode>,
) -> Response {
    let q = match engine_query(query) {
        Ok(q) => q,
        Err(e) => return engine_error(e),
    };
    if q.transport.as_deref() == Some("polling") {
        if let Some(r) = foreign_origin(&st, &headers) {
            return r;
        }
        let answer = match q.sid {
            Some(sid) => st.polls.poll(&sid).await,
            None => {
                if let Some(r) = refuse_new(&st, &headers, true) {
                    metrics().polling(PollMethod::Open, PollOutcome::Refused);
                    return r;
                }
                let hooked = client_headers(&st, &headers);
                let (open, driver) = st.polls.open(st.sessions.clone(), hooked);
                st.tracker.spawn(driver);
                Answer::Body(open)
            }
        };
        return polling_answer(answer, &headers);
    }
    if q.sid.as_deref().is_some_and(|sid| !st.polls.holds(sid)) {
        metrics().upgrade(false);
        return engine_error(EngineError::UnknownSid);
    }
    if upgrade.is_err() {
        metrics().refused(RefuseReason::NotWebsocket);
        return engine_error(EngineError::BadRequest);
    }
    let protocol = match q.sid {
        None => Protocol::SocketIo,
        Some(sid) => match st.polls.claim(&sid) {
            Ok(h) => Protocol::SocketIoUpgrade(h),
            Err(e) => {
                metrics().upgrade(false);
                return engine_error(e);
            }
        },
    };
    upgrade_to(st, client, headers, upgrade, protocol)
}

/// `POST /socket.io/?EIO=4&transport=polling&sid=…`: the client's packets,
/// a body of at most `max_payload` + 4 KiB.
async fn socketio_post(
    State(st): State<AppState>,
    headers: axum::http::HeaderMap,
    query: EngineQueryResult,
    body: axum::body::Body,
) -> Response {
    let q = match engine_query(query) {
        Ok(q) => q,
        Err(e) => return engine_error(e),
    };
    let (Some("polling"), Some(sid)) = (q.transport.as_deref(), q.sid) else {
        return engine_error(EngineError::BadRequest);
    };
    if let Some(r) = foreign_origin(&st, &headers) {
        return r;
    }
    let limit = st.sessions.cfg.max_frame();
    let read = async move { axum::body::to_bytes(body, limit).await.ok() };
    let answer = st.polls.post(&sid, read).await;
    polling_answer(answer, &headers)
}

/// `OPTIONS /socket.io/`: the CORS preflight a browser sends before a
/// polling request from another origin that carries headers of its own
/// (socket.io-client's `extraHeaders`). Allowed origins (all, when
/// `allowed_origins` is empty) may `GET` and `POST` with the headers they ask
/// for; the answer is cached for 10 minutes.
async fn socketio_preflight(
    State(st): State<AppState>,
    headers: axum::http::HeaderMap,
) -> Response {
    if let Some(r) = foreign_origin(&st, &headers) {
        return r;
    }
    let mut resp = StatusCode::NO_CONTENT.into_response();
    let h = resp.headers_mut();
    allow_origin(h, &headers);
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        header::HeaderValue::from_static("GET, POST"),
    );
    // The headers asked for, as asked (bounded like any header value).
    if let Some(asked) = headers
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .filter(|v| v.len() <= 1024)
    {
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
    }
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        header::HeaderValue::from_static("600"),
    );
    h.insert(
        header::VARY,
        header::HeaderValue::from_static("origin, access-control-request-headers"),
    );
    resp
}

/// Lets the request's `Origin` (allowed, or it would not get here) read the
/// answer, with credentials (CORS).
fn allow_origin(h: &mut axum::http::HeaderMap, request: &axum::http::HeaderMap) {
    if let Some(origin) = request.get(header::ORIGIN) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            header::HeaderValue::from_static("true"),
        );
    }
}

/// A polling answer as HTTP; a request with an `Origin` (allowed, or it
/// would not get here) may read it (CORS).
fn polling_answer(answer: Answer, headers: &axum::http::HeaderMap) -> Response {
    let mut resp = match answer {
        Answer::Body(body) => {
            ([(header::CONTENT_TYPE, "text/plain; charset=UTF-8")], body).into_response()
        }
        Answer::Error(e) => engine_error(e),
        Answer::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload too large\n").into_response(),
    };
    if headers.contains_key(header::ORIGIN) {
        let h = resp.headers_mut();
        allow_origin(h, headers);
        h.insert(header::VARY, header::HeaderValue::from_static("origin"));
    }
    resp
}

/// 403 for a request whose `Origin` is not in `allowed_origins` (if set).
fn foreign_origin(st: &AppState, headers: &axum::http::HeaderMap) -> Option<Response> {
    let origin = headers.get(header::ORIGIN)?;
    let allowed = &st.limits.allowed_origins;
    if allowed.is_empty() || allowed.iter().any(|a| a.as_bytes() == origin.as_bytes()) {
        return None;
    }
    metrics().refused(RefuseReason::Origin);
    Some(
        (
            StatusCode::FORBIDDEN,
            [(header::CONNECTION, "close")],
            "origin not allowed\n",
        )
            .into_response(),
    )
}

/// Whether a new session may start here now (drain, origin, and, when
/// `count`, `max_connections`): the refusal to answer with, if not.
fn refuse_new(st: &AppState, headers: &axum::http::HeaderMap, count: bool) -> Option<Response> {
    let refuse = |reason: RefuseReason, status: StatusCode, text: &'static str| {
        metrics().refused(reason);
        // A refused upgrade has nothing more to say on this connection.
        Some((status, [(header::CONNECTION, "close")], text).into_response())
    };
    if st.shutdown.is_cancelled() {
        return refuse(
            RefuseReason::Draining,
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting down\n",
        );
    }
    if let Some(r) = foreign_origin(st, headers) {
        return Some(r);
    }
    let max = st.limits.max_connections;
    if count && max > 0 && metrics().connections.total() >= max as i64 {
        return refuse(
            RefuseReason::MaxConnections,
            StatusCode::SERVICE_UNAVAILABLE,
            "node is full; try another\n",
        );
    }
    None
}

/// The request headers the proxy hooks forward (none without hooks).
fn client_headers(st: &AppState, headers: &axum::http::HeaderMap) -> ClientHeaders {
    st.sessions
        .hooks
        .as_ref()
        .map(|h| h.capture(headers))
        .unwrap_or_default()
}

/// Admits a WebSocket upgrade (drain, origin, connection limits) and runs
/// the session in `protocol` on it.
fn upgrade_to(
    st: AppState,
    client: Option<axum::Extension<accept::Client>>,
    headers: axum::http::HeaderMap,
    upgrade: Result<IncomingUpgrade, StatusCode>,
    protocol: Protocol,
) -> Response {
    let Ok(upgrade) = upgrade else {
        metrics().refused(RefuseReason::NotWebsocket);
        return (
            StatusCode::UPGRADE_REQUIRED,
            [
                (header::UPGRADE, "websocket"),
                (header::CONNECTION, "close"),
            ],
            "this endpoint speaks WebSocket (version 13): send a GET with \
             Upgrade: websocket, Sec-WebSocket-Key and Sec-WebSocket-Version: 13\n",
        )
            .into_response();
    };
    // A polling session moving over is counted already.
    let new = !matches!(protocol, Protocol::SocketIoUpgrade(_));
    if let Some(r) = refuse_new(&st, &headers, new) {
        if let Protocol::SocketIoUpgrade(h) = &protocol {
            h.abandon();
        }
        return r;
    }
    let behind_proxy = match charge_forwarded(&st, client.as_ref(), &headers) {
        Ok(slot) => slot,
        Err(r) => {
            if let Protocol::SocketIoUpgrade(h) = &protocol {
                h.abandon();
            }
            return *r;
        }
    };
    let (resp, fut) = match upgrade.upgrade() {
        Ok(x) => x,
        Err(e) => {
            if let Protocol::SocketIoUpgrade(h) = &protocol {
                h.abandon();
            }
            return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response();
        }
    };
    // The socket's charges now last as long as the session.
    let charges = client.and_then(|axum::Extension(c)| c.charges.take());
    let ctx = st.sessions.clone();
    let hooked = client_headers(&st, &headers);
    st.tracker.spawn(async move {
        let _held = (charges, behind_proxy);
        match fut.await {
            Ok(ws) => match protocol {
                // Boxed each: the task then holds the one protocol's state
                // it runs, not the largest of the three.
                Protocol::Herald => {
                    Box::pin(transport::ws::run(ws.into_inner(), ctx, hooked)).await
                }
                Protocol::SocketIo => {
                    Box::pin(transport::socketio::run(ws.into_inner(), ctx, hooked)).await
                }
                Protocol::SocketIoUpgrade(h) => {
                    Box::pin(transport::socketio::polling::upgrade(
                        ws.into_inner(),
                        ctx,
                        h,
                    ))
                    .await
                }
            },
            Err(e) => {
                if let Protocol::SocketIoUpgrade(h) = &protocol {
                    h.abandon();
                }
                tracing::debug!(error = %e, "WebSocket upgrade failed")
            }
        }
    });
    resp.into_response()
}

/// Behind a trusted proxy, the client named by the forwarding headers is
/// charged for a session (the proxy itself is not): its slot, or the 429.
fn charge_forwarded(
    st: &AppState,
    client: Option<&axum::Extension<accept::Client>>,
    headers: &axum::http::HeaderMap,
) -> Result<Option<admission::AddressSlot>, Box<Response>> {
    let Some(axum::Extension(c)) = client else {
        return Ok(None);
    };
    let trusted = &st.accept.trusted;
    if !trusted.contains(c.ip) {
        return Ok(None);
    }
    let hops = admission::forwarded_hops(headers);
    let real = trusted.client_from_headers(c.ip, hops.into_iter());
    if trusted.contains(real) {
        return Ok(None);
    }
    st.accept
        .per_address
        .admit(real)
        .map(Some)
        .map_err(|reason| {
            metrics().refused(reason);
            Box::new(
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    [(header::CONNECTION, "close")],
                    "too many connections from this address\n",
                )
                    .into_response(),
            )
        })
}

/// `GET /sse?channel=…`: a Server-Sent Events stream (`transport::sse`),
/// admitted like a WebSocket (drain, origin, `max_connections`, the
/// forwarded client's address); readable from allowed origins (CORS).
async fn sse_get(
    State(st): State<AppState>,
    client: Option<axum::Extension<accept::Client>>,
    headers: axum::http::HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    use transport::sse::{SseRequest, Start};
    let mut resp = 'resp: {
        if let Some(r) = refuse_new(&st, &headers, true) {
            return r;
        }
        let req = match SseRequest::read(uri.query(), &headers) {
            Ok(r) => r,
            Err(e) => break 'resp (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
        };
        let behind_proxy = match charge_forwarded(&st, client.as_ref(), &headers) {
            Ok(slot) => slot,
            Err(r) => return *r,
        };
        let abort = client.map(|c| c.0.abort).unwrap_or_default();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (ctx, hooked) = (st.sessions.clone(), client_headers(&st, &headers));
        st.tracker.spawn(async move {
            let _held = behind_proxy;
            transport::sse::run(ctx, req, hooked, tx, abort).await
        });
        match rx.await {
            Ok(Start::Stream(body)) => (
                [
                    (header::CONTENT_TYPE, "text/event-stream"),
                    (header::CACHE_CONTROL, "no-cache"),
                    (header::HeaderName::from_static("x-accel-buffering"), "no"),
                ],
                body,
            )
                .into_response(),
            Ok(Start::Refused(status, message)) => {
                let mut r = (status, message).into_response();
                if status == StatusCode::UNAUTHORIZED {
                    r.headers_mut().insert(
                        header::WWW_AUTHENTICATE,
                        header::HeaderValue::from_static("Bearer"),
                    );
                }
                r
            }
            Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response(),
        }
    };
    if headers.contains_key(header::ORIGIN) {
        let h = resp.headers_mut();
        allow_origin(h, &headers);
        h.insert(header::VARY, header::HeaderValue::from_static("origin"));
    }
    resp
}

async fn readyz(State(st): State<AppState>) -> Response {
    if st.shutdown.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
    } else if st.accept.fds.is_short() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "near the file descriptor limit\n",
        )
            .into_response()
    } else if !st.node.is_ready() {
        (StatusCode::SERVICE_UNAVAILABLE, "broker unavailable\n").into_response()
    } else {
        "ready\n".into_response()
    }
}

async fn metrics_text(State(st): State<AppState>) -> Response {
    // Summed at scrape time: the delivery path never touches a shared gauge.
    let queued = st.sessions.links.queued_bytes();
    metrics().queued_bytes.set(queued as i64);
    metrics().tcp_connections.set(st.accept.fds.open() as i64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics().render(),
    )
        .into_response()
}

async fn not_found() -> Response {
    let body = serde_json::json!({"error": {"code": "not_found", "message": "no such route"}});
    (StatusCode::NOT_FOUND, axum::Json(body)).into_response()
}
