//! `herald`: the gateway binary (`serve`) and operator tools (`publish`).

use anyhow::{Context, bail};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use herald::config::{self, Config, Overrides};
use herald::server::Server;
use std::io::Write as _;
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
    /// Check or show the configuration a node would run with.
    #[command(subcommand)]
    Config(ConfigCmd),
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

/// Every flag has a `HERALD_*` twin; flags win over env, env over the file.
/// The settings themselves are declared once, in `config::Overrides`.
#[derive(clap::Args)]
struct ServeArgs {
    /// TOML config file.
    #[arg(long, env = "HERALD_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    overrides: Overrides,
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Validate the configuration (file, env and flags together); print every problem.
    Check(Box<ServeArgs>),
    /// Print the effective configuration as TOML, secrets redacted.
    Show(Box<ServeArgs>),
    /// Print the flags reference table of docs/configuration.md.
    #[command(hide = true)]
    Reference,
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
    /// Public details shown in presence, as JSON, e.g. '{"name":"Ada"}' (the `info` claim).
    #[arg(long, value_name = "JSON", value_parser = json_value)]
    info: Option<serde_json::Value>,
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

/// The CLI with each setting's default appended to its help, taken from
/// the config tree's defaults (so help cannot drift from them).
fn cli() -> clap::Command {
    Cli::command().mut_subcommand("serve", |serve| {
        let mut serve = serve;
        for s in Overrides::SETTINGS {
            let default = Config::default_of(s.key).filter(|_| s.unset.is_empty());
            let shown = default.as_deref().unwrap_or(s.unset);
            if shown.is_empty() {
                continue;
            }
            serve = serve.mut_arg(s.id, |a| {
                let help = a.get_help().map(ToString::to_string).unwrap_or_default();
                a.help(format!("{help} [default: {shown}]"))
            });
        }
        serve
    })
}

fn main() -> std::process::ExitCode {
    let cli = match Cli::from_arg_matches(&cli().get_matches()) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            // The message and its causes, never a backtrace: this is an
            // operator's mistake, not a crash (whatever RUST_BACKTRACE says).
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    let ok = std::process::ExitCode::SUCCESS;
    match cli.cmd {
        Cmd::Serve(args) => {
            let cfg = load_config(*args)?;
            if let Some(n) = cfg.server.worker_threads {
                rt.worker_threads(n);
            }
            let rt = rt.build().context("starting the async runtime")?;
            rt.block_on(serve(cfg)).map(|()| ok)
        }
        Cmd::Publish(args) => {
            let rt = rt.build().context("starting the async runtime")?;
            rt.block_on(publish(args)).map(|()| ok)
        }
        Cmd::Token(args) => token(args).map(|()| ok),
        Cmd::Config(ConfigCmd::Check(args)) => Ok(config_check(*args)),
        Cmd::Config(ConfigCmd::Show(args)) => {
            let cfg = merge_config(*args)?;
            println!("{}", cfg.to_redacted_toml().trim_end());
            Ok(ok)
        }
        Cmd::Config(ConfigCmd::Reference) => {
            let serve = Cli::command();
            let serve = serve.find_subcommand("serve").context("serve command")?;
            print!("{}", config::reference_table(serve));
            Ok(ok)
        }
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

/// File, then environment, then flags; not validated yet.
fn merge_config(a: ServeArgs) -> anyhow::Result<Config> {
    let known = known_env();
    let known: Vec<&str> = known.iter().map(String::as_str).collect();
    config::check_env(std::env::vars().map(|(k, _)| k), &known)?;
    let mut cfg = match &a.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    cfg.apply(a.overrides);
    Ok(cfg)
}

/// File, then environment, then flags; validated once.
fn load_config(a: ServeArgs) -> anyhow::Result<Config> {
    let cfg = merge_config(a)?;
    cfg.validate()?;
    Ok(cfg)
}

/// `herald config check`: every problem, by section; non-zero exit if any.
fn config_check(a: ServeArgs) -> std::process::ExitCode {
    let problems = match merge_config(a).map(|c| c.validate()) {
        Ok(Ok(())) => {
            println!("configuration OK");
            return std::process::ExitCode::SUCCESS;
        }
        Ok(Err(config::ConfigError::Invalid(p))) => p,
        Ok(Err(e)) => {
            eprintln!("Error: {e}");
            return std::process::ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("Error: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    eprintln!("{} problem(s) in the configuration:", problems.len());
    for (section, msgs) in problems.by_section() {
        eprintln!("[{section}]");
        for m in msgs {
            eprintln!("  - {m}");
        }
    }
    std::process::ExitCode::FAILURE
}

async fn serve(cfg: Config) -> anyhow::Result<()> {
    let open_mode = cfg.open_mode();

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
    // The admin routes (API, metrics, probes) are on the admin listener, or
    // on the public one when there is none; both lines say where.
    let admin_shown = admin.unwrap_or(public);
    tracing::info!(node = %node_id, %public, admin = %admin_shown, broker, "herald listening");
    // One machine-readable line on stdout, for scripts and tests.
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
        info: a.info,
    };
    println!("{}", herald::auth::mint_hs256(&secret, &claims)?);
    Ok(())
}

/// A `--info` value: any JSON.
fn json_value(s: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(s).map_err(|e| format!("not JSON: {e}"))
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
