//! `herald`: the gateway binary (`serve`) and operator tools (`publish`).

use anyhow::{Context, bail};
use clap::{ArgAction, CommandFactory, Parser, Subcommand};
use herald::config::{self, Config, Overrides};
use herald::server::Server;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "herald",
    version,
    about = "Pub/sub notification gateway over WebSocket"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a gateway node (embedded broker, or a cluster node with --redis-url).
    Serve(Box<ServeArgs>),
    /// Publish one event through a node's HTTP API.
    Publish(PublishArgs),
    /// Mint an HS256 connection token with the configured secret (for trying things out).
    Token(TokenArgs),
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

/// Every flag has a `HERALD_*` twin; flags win over env, env over the file.
#[derive(clap::Args)]
struct ServeArgs {
    /// TOML config file.
    #[arg(long, env = "HERALD_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Public listener (WebSocket and demo page) [default: 127.0.0.1:8080].
    #[arg(long, env = "HERALD_LISTEN", value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Separate listener for the API, /metrics and probes.
    #[arg(long, env = "HERALD_ADMIN_LISTEN", value_name = "ADDR")]
    admin_listen: Option<SocketAddr>,
    /// Redis URL: makes this node a cluster node.
    #[arg(long, env = "HERALD_REDIS_URL", value_name = "URL")]
    redis_url: Option<String>,
    /// Node id shown to clients [default: random].
    #[arg(long, env = "HERALD_NODE_ID", value_name = "ID")]
    node_id: Option<String>,
    /// Allow open mode (no authentication) on a non-loopback address.
    #[arg(long, env = "HERALD_ALLOW_OPEN", action = ArgAction::SetTrue)]
    allow_open: bool,
    /// Log filter, e.g. `info` or `herald=debug`.
    #[arg(long, env = "HERALD_LOG", value_name = "FILTER")]
    log: Option<String>,
    /// Log line format [default: text].
    #[arg(long, env = "HERALD_LOG_FORMAT", value_name = "FORMAT")]
    log_format: Option<config::LogFormat>,
    /// Window over which clients are told to reconnect on shutdown [default: 10s].
    #[arg(long, env = "HERALD_DRAIN_TIMEOUT", value_parser = duration, value_name = "DURATION")]
    drain_timeout: Option<Duration>,
    /// Close sockets that send no `connect` within this long [default: 10s].
    #[arg(long, env = "HERALD_CONNECT_TIMEOUT", value_parser = duration, value_name = "DURATION")]
    connect_timeout: Option<Duration>,
    /// Server ping period [default: 25s].
    #[arg(long, env = "HERALD_PING_INTERVAL", value_parser = duration, value_name = "DURATION")]
    ping_interval: Option<Duration>,
    /// Time allowed for a pong [default: 10s].
    #[arg(long, env = "HERALD_PONG_TIMEOUT", value_parser = duration, value_name = "DURATION")]
    pong_timeout: Option<Duration>,
    /// Largest `data` payload in bytes [default: 65536].
    #[arg(long, env = "HERALD_MAX_PAYLOAD", value_name = "BYTES")]
    max_payload: Option<usize>,
    /// Outbound frames queued per connection before it is a slow consumer [default: 1024].
    #[arg(long, env = "HERALD_OUTBOUND_QUEUE", value_name = "FRAMES")]
    outbound_queue: Option<usize>,
    /// Outbound bytes queued per connection before it is a slow consumer [default: 2097152].
    #[arg(long, env = "HERALD_OUTBOUND_QUEUE_BYTES", value_name = "BYTES")]
    outbound_queue_bytes: Option<usize>,
    /// Subscriptions allowed per connection [default: 256].
    #[arg(long, env = "HERALD_MAX_SUBSCRIPTIONS", value_name = "N")]
    max_subscriptions: Option<usize>,
    /// Runtime worker threads [default: one per CPU].
    #[arg(long, env = "HERALD_WORKER_THREADS", value_name = "N")]
    worker_threads: Option<usize>,
    /// Publications kept per channel for recovery, 0 = none [default: 100].
    #[arg(long, env = "HERALD_HISTORY_SIZE", value_name = "N")]
    history_size: Option<usize>,
    /// Age beyond which publications are not replayed [default: 5m].
    #[arg(long, env = "HERALD_HISTORY_TTL", value_parser = duration, value_name = "DURATION")]
    history_ttl: Option<Duration>,
    /// Most publications replayed per channel on recovery [default: 1000].
    #[arg(long, env = "HERALD_RECOVERY_MAX", value_name = "N")]
    recovery_max: Option<usize>,
    /// Reconnect-token secret shared by the cluster; repeat (or comma-separate
    /// in the env) to rotate: the first signs, all verify [default: agreed
    /// through Redis, or random on a single node].
    #[arg(
        long,
        env = "HERALD_RECONNECT_SECRET",
        value_name = "SECRET",
        value_delimiter = ',',
        hide_env_values = true
    )]
    reconnect_secret: Vec<String>,
    /// WebSocket sessions accepted at once; 0 = no limit but file descriptors [default: 0].
    #[arg(long, env = "HERALD_MAX_CONNECTIONS", value_name = "N")]
    max_connections: Option<usize>,
    /// Browser Origin allowed to connect, e.g. https://app.example.com; repeat
    /// (or comma-separate in the env) [default: any].
    #[arg(
        long,
        env = "HERALD_ALLOWED_ORIGIN",
        value_name = "ORIGIN",
        value_delimiter = ','
    )]
    allowed_origin: Vec<String>,
    /// Sustained client commands per second per connection [default: 100].
    #[arg(long, env = "HERALD_COMMAND_RATE", value_name = "N")]
    command_rate: Option<u32>,
    /// Client commands allowed in a burst [default: 200].
    #[arg(long, env = "HERALD_COMMAND_BURST", value_name = "N")]
    command_burst: Option<u32>,
    /// Key the publish API accepts as `Authorization: Bearer KEY`; repeat (or
    /// comma-separate in the env) for several [default: none, API open].
    #[arg(
        long,
        env = "HERALD_API_KEY",
        value_name = "KEY",
        value_delimiter = ',',
        hide_env_values = true
    )]
    api_key: Vec<String>,
    /// File of API keys, one per line (`#` comments).
    #[arg(long, env = "HERALD_API_KEYS_FILE", value_name = "FILE")]
    api_keys_file: Option<PathBuf>,
    /// HS256 secret for connection JWTs (at least 32 bytes); turns authentication on.
    #[arg(
        long,
        env = "HERALD_JWT_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    jwt_secret: Option<String>,
    /// PEM public key (RSA or P-256) for RS256/ES256 connection JWTs.
    #[arg(long, env = "HERALD_JWT_PUBLIC_KEY", value_name = "FILE")]
    jwt_public_key: Option<PathBuf>,
    /// JWKS file of public keys, chosen by `kid`, re-read when it changes.
    #[arg(long, env = "HERALD_JWKS_FILE", value_name = "FILE")]
    jwks_file: Option<PathBuf>,
    /// Required `iss` of JWTs.
    #[arg(long, env = "HERALD_JWT_ISSUER", value_name = "ISS")]
    jwt_issuer: Option<String>,
    /// Required `aud` of JWTs.
    #[arg(long, env = "HERALD_JWT_AUDIENCE", value_name = "AUD")]
    jwt_audience: Option<String>,
    /// Connections one user may hold on this node; 0 = no limit [default: 64].
    #[arg(long, env = "HERALD_MAX_CONNECTIONS_PER_USER", value_name = "N")]
    max_connections_per_user: Option<usize>,
    /// Validity of reconnect tokens [default: 5m].
    #[arg(long, env = "HERALD_RECONNECT_TTL", value_parser = duration, value_name = "DURATION")]
    reconnect_ttl: Option<Duration>,
}

#[derive(clap::Args)]
struct TokenArgs {
    /// User id (`sub`).
    #[arg(long)]
    sub: String,
    /// Channel or `*` pattern the user may subscribe to in `claim` namespaces; repeat or comma-separate.
    #[arg(long, value_delimiter = ',')]
    channels: Vec<String>,
    /// Make a subscribe token for this one channel instead of a connection token.
    #[arg(long, value_name = "CHANNEL", conflicts_with = "channels")]
    channel: Option<String>,
    /// Lifetime.
    #[arg(long, value_parser = duration, default_value = "1h")]
    ttl: Duration,
    /// TOML config file to take `auth.jwt_secret` (and `issuer`/`audience`) from.
    #[arg(long, env = "HERALD_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// HS256 secret (overrides the config file).
    #[arg(
        long,
        env = "HERALD_JWT_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    jwt_secret: Option<String>,
}

#[derive(clap::Args)]
struct PublishArgs {
    channel: String,
    event: String,
    /// JSON payload, e.g. '{"text":"hi"}'.
    data: String,
    /// Base URL of a node's API listener.
    #[arg(long, env = "HERALD_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// API key, sent as `Authorization: Bearer KEY` (the first one, if a list).
    #[arg(
        long,
        env = "HERALD_API_KEY",
        value_name = "KEY",
        value_delimiter = ',',
        hide_env_values = true
    )]
    api_key: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    match cli.cmd {
        Cmd::Serve(args) => {
            let cfg = load_config(*args)?;
            if let Some(n) = cfg.server.worker_threads {
                rt.worker_threads(n);
            }
            let rt = rt.build().context("starting the async runtime")?;
            rt.block_on(serve(cfg))
        }
        Cmd::Publish(args) => {
            let rt = rt.build().context("starting the async runtime")?;
            rt.block_on(publish(args))
        }
        Cmd::Token(args) => token(args),
    }
}

fn known_env() -> Vec<String> {
    let cmd = Cli::command();
    cmd.get_subcommands()
        .flat_map(|s| s.get_arguments())
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect()
}

/// File, then environment, then flags; validated once.
fn load_config(a: ServeArgs) -> anyhow::Result<Config> {
    let known = known_env();
    let known: Vec<&str> = known.iter().map(String::as_str).collect();
    config::check_env(std::env::vars().map(|(k, _)| k), &known)?;
    let mut cfg = match &a.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    cfg.apply(Overrides {
        listen: a.listen,
        admin_listen: a.admin_listen,
        redis_url: a.redis_url,
        node_id: a.node_id,
        allow_open: a.allow_open,
        log: a.log,
        drain_timeout: a.drain_timeout,
        connect_timeout: a.connect_timeout,
        ping_interval: a.ping_interval,
        pong_timeout: a.pong_timeout,
        max_payload: a.max_payload,
        outbound_queue: a.outbound_queue,
        outbound_queue_bytes: a.outbound_queue_bytes,
        max_subscriptions: a.max_subscriptions,
        worker_threads: a.worker_threads,
        history_size: a.history_size,
        history_ttl: a.history_ttl,
        recovery_max: a.recovery_max,
        reconnect_secrets: a.reconnect_secret,
        reconnect_ttl: a.reconnect_ttl,
        api_keys: a.api_key,
        api_keys_file: a.api_keys_file,
        command_rate: a.command_rate,
        command_burst: a.command_burst,
        max_connections: a.max_connections,
        allowed_origins: a.allowed_origin,
        jwt_secret: a.jwt_secret,
        jwt_public_key: a.jwt_public_key,
        jwks_file: a.jwks_file,
        jwt_issuer: a.jwt_issuer,
        jwt_audience: a.jwt_audience,
        max_connections_per_user: a.max_connections_per_user,
        log_format: a.log_format,
    });
    cfg.validate()?;
    Ok(cfg)
}

async fn serve(cfg: Config) -> anyhow::Result<()> {
    let open_mode = !cfg.auth.enabled();

    let node_id = cfg.node_id.clone().unwrap_or_else(|| {
        let suffix: String = std::iter::repeat_with(fastrand::alphanumeric)
            .take(6)
            .collect();
        format!("herald-{suffix}")
    });
    let telemetry = herald::telemetry::init(&cfg.log, cfg.log_format, &node_id)?;
    if telemetry.exporting() {
        tracing::info!("exporting traces over OTLP");
    }
    // Every connection is a file descriptor: take all the kernel allows.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(max_open_files = n, "raised the file descriptor limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the file descriptor limit"),
    }
    let shutdown = CancellationToken::new();
    let server = Server::bind(&cfg, node_id.clone(), shutdown.clone()).await?;
    let public = server.public_addr()?;
    let admin = server.admin_addr().transpose()?;
    if open_mode {
        tracing::warn!(
            "OPEN MODE: auth not configured; anyone who can reach {public} may connect, \
             subscribe to any channel and emit. Use only for development."
        );
    }
    if cfg.api.keys.is_empty() && cfg.api.keys_file.is_none() {
        tracing::warn!(
            "the publish API takes no key: anyone who can reach it may publish; \
             set --api-key or --api-keys-file outside development"
        );
    }
    let broker = match &cfg.broker {
        config::BrokerConfig::Memory(_) => "memory",
        config::BrokerConfig::Redis(_) => "redis",
    };
    tracing::info!(node = %node_id, %public, admin = ?admin, broker, "herald listening");
    // One machine-readable line on stdout, for scripts and tests.
    let admin_shown = admin.unwrap_or(public);
    // Not println!: a closed stdout (`herald serve | head -1`) must not stop the node.
    let _ = writeln!(
        std::io::stdout(),
        "herald listening public={public} admin={admin_shown} node={node_id}"
    );

    let sd = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received");
        sd.cancel();
    });
    server.run().await;
    telemetry.shutdown();
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Prints a token signed with the configured HS256 secret.
fn token(a: TokenArgs) -> anyhow::Result<()> {
    let file = match &a.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    let Some(secret) = a.jwt_secret.or(file.auth.jwt_secret) else {
        bail!(
            "no HS256 secret: pass --jwt-secret, set HERALD_JWT_SECRET, or auth.jwt_secret in --config"
        );
    };
    let exp = herald::clock::now_secs() + a.ttl.as_secs();
    let claims = herald::auth::Claims {
        sub: Some(a.sub),
        exp,
        channels: (!a.channels.is_empty()).then_some(a.channels),
        channel: a.channel,
        iss: file.auth.issuer,
        aud: file.auth.audience.map(serde_json::Value::from),
    };
    println!("{}", herald::auth::mint_hs256(&secret, &claims)?);
    Ok(())
}

/// Minimal HTTP/1.1 POST over hyper's client connection: no TLS, no pooling,
/// enough for an operator tool talking to an internal listener.
async fn publish(a: PublishArgs) -> anyhow::Result<()> {
    let data: serde_json::Value = serde_json::from_str(&a.data)
        .with_context(|| format!("DATA is not valid JSON: {}", a.data))?;
    let body = serde_json::json!({"channel": a.channel, "event": a.event, "data": data});
    let key = a.api_key.first().map(String::as_str);
    let (status, text) = http_post(&a.url, "/api/v1/publish", &body.to_string(), key).await?;
    if status.is_success() {
        println!("{text}");
        Ok(())
    } else {
        bail!("{status}: {text}")
    }
}

async fn http_post(
    base: &str,
    path: &str,
    body: &str,
    key: Option<&str>,
) -> anyhow::Result<(hyper::StatusCode, String)> {
    use http_body_util::{BodyExt, Full};
    let rest = base
        .strip_prefix("http://")
        .with_context(|| format!("--url must start with http:// (got {base})"))?;
    let (authority, prefix) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    let addr = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let stream = tokio::net::TcpStream::connect(&addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut req = hyper::Request::post(format!("{prefix}{path}"))
        .header(hyper::header::HOST, authority)
        .header(hyper::header::CONTENT_TYPE, "application/json");
    if let Some(k) = key {
        req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {k}"));
    }
    let req = req.body(Full::new(bytes::Bytes::from(body.to_owned())))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();
    Ok((
        status,
        String::from_utf8_lossy(&bytes).trim_end().to_owned(),
    ))
}
