//! Command line: one subcommand per scenario, each with sane defaults.
//!
//! The structs are public so that tests build a scenario exactly as a user
//! would, with `Cli::try_parse_from`.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "herald-load",
    version,
    about = "Load-test tool for Herald and the Socket.IO peer"
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// C clients all subscribed to S channels; publish R msg/s; measure delivery.
    Fanout(FanoutArgs),
    /// Ramp up C idle subscribed connections; measure server memory per connection.
    Idle(IdleArgs),
    /// N channels with one subscriber each; publish to random channels.
    Channels(ChannelsArgs),
    /// A steady fan-out plus clients that connect, subscribe and leave.
    Churn(ChurnArgs),
    /// Bystanders' delivery latency, quiet and then while connections flood the node.
    Flood(FloodArgs),
    /// Clients' connect and delivery latency, quiet and then while half-open connections from one address pile up.
    Abuse(AbuseArgs),
    /// Clients that drop their connection every few seconds and resume: delivery through it.
    Jitter(JitterArgs),
    /// Serve the fan-out floor: a bare WebSocket fan-out server (no Herald code) to measure against.
    Floor(crate::floor::FloorArgs),
}

/// Server kind behind `--url`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Herald,
    Socketio,
    /// Herald's Socket.IO endpoint: clients speak Socket.IO (`/socket.io/`,
    /// one namespace per channel); publications enter as for `herald`.
    #[value(name = "herald-socketio")]
    #[serde(rename = "herald-socketio")]
    HeraldSocketio,
    /// Herald's Server-Sent Events endpoint: clients read `GET /sse`;
    /// publications enter as for `herald`.
    #[value(name = "herald-sse")]
    #[serde(rename = "herald-sse")]
    HeraldSse,
}

impl Target {
    /// The server behind the URL: Herald's API and metrics, or the peer's.
    pub fn server(self) -> Self {
        match self {
            Self::HeraldSocketio | Self::HeraldSse => Self::Herald,
            t => t,
        }
    }

    /// Whether clients speak Socket.IO over Engine.IO.
    pub fn speaks_socketio(self) -> bool {
        matches!(self, Self::Socketio | Self::HeraldSocketio)
    }

    /// The `--target` spelling.
    pub fn name(self) -> &'static str {
        match self {
            Self::Herald => "herald",
            Self::Socketio => "socketio",
            Self::HeraldSocketio => "herald-socketio",
            Self::HeraldSse => "herald-sse",
        }
    }

    /// The Socket.IO namespace a client of `channel` joins: Herald maps a
    /// namespace to a channel, the peer keeps everyone in `/`.
    pub fn namespace(self, channel: &str) -> String {
        match self {
            Self::HeraldSocketio => format!("/{channel}"),
            _ => String::new(),
        }
    }
}

/// How publications enter the system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PublishVia {
    /// HTTP `POST /api/v1/publish` on the first URL.
    Api,
    /// Straight into Redis with Herald's publish script (needs --redis-url).
    Redis,
    /// Through a client WebSocket (`emit`; always so for Socket.IO).
    Client,
}

/// Options every scenario takes.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Server base URL; repeat to spread clients round-robin over several nodes.
    #[arg(
        long = "url",
        env = "LOADTEST_URL",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:8080"
    )]
    pub urls: Vec<String>,
    /// Which server speaks at the URLs.
    #[arg(long, value_enum, default_value_t = Target::Herald)]
    pub target: Target,
    /// Write the full report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Draw the latency distribution and delivery rate into this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Only warn (exit 0) when the load client itself was CPU-bound.
    #[arg(long)]
    pub allow_client_bound: bool,
    /// No live progress on stderr.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Publishing and measuring options shared by fanout, channels and churn.
#[derive(Debug, Clone, Args)]
pub struct DeliveryArgs {
    /// Publications per second, over all channels.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Padding bytes in each payload (`"p"`).
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Publish path for Herald (Socket.IO always publishes through a client).
    #[arg(long, value_enum, default_value_t = PublishVia::Api)]
    pub publish_via: PublishVia,
    /// Redis of the Herald cluster, for --publish-via redis: `redis://…`,
    /// `redis+cluster://h1:p1,h2:p2` (Redis Cluster), or several
    /// space-separated `redis://` URLs in the nodes' `--redis-shard` order.
    #[arg(long, env = "LOADTEST_REDIS_URL", value_name = "URL")]
    pub redis_url: Option<String>,
    /// Concurrent publishing connections (api, redis, client).
    #[arg(long, default_value_t = 4)]
    pub publishers: usize,
    /// Seconds to wait for stragglers after publishing stops.
    #[arg(long, default_value_t = 2.0)]
    pub grace: f64,
    /// Connections being opened at once while setting up.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
}

#[derive(Debug, Clone, Args)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub delivery: DeliveryArgs,
    /// Subscribing clients.
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    /// Channels bench-0.. that every client subscribes to; publications rotate over them.
    #[arg(long, default_value_t = 1)]
    pub channels: usize,
}

#[derive(Debug, Clone, Args)]
pub struct ChannelsArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub delivery: DeliveryArgs,
    /// Channels user-0.. with one subscriber each (client i subscribes user-i).
    #[arg(long, default_value_t = 10_000)]
    pub channels: usize,
}

#[derive(Debug, Clone, Args)]
pub struct ChurnArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub delivery: DeliveryArgs,
    /// Steady subscribing clients.
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    /// Churning clients started per second (connect, subscribe, stay, leave).
    #[arg(long, default_value_t = 50.0)]
    pub churn_rate: f64,
    /// Milliseconds a churning client stays subscribed before leaving.
    #[arg(long, default_value_t = 500)]
    pub churn_hold_ms: u64,
}

#[derive(Debug, Clone, Args)]
pub struct FloodArgs {
    #[command(flatten)]
    pub common: Common,
    /// Subscribing bystanders, all on one channel.
    #[arg(long, default_value_t = 20)]
    pub subscribers: usize,
    /// Publications per second through the API, in each phase.
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    /// Seconds of publishing in each phase (quiet, then under attack).
    #[arg(long, default_value_t = 2.0)]
    pub duration: f64,
    /// Padding bytes in each payload.
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Concurrent publishing connections.
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// Seconds to wait for stragglers after each phase.
    #[arg(long, default_value_t = 2.0)]
    pub grace: f64,
    /// Attacker connections at a time (to the first URL); each comes back
    /// as soon as the node closes it.
    #[arg(long, default_value_t = 1)]
    pub attackers: usize,
    /// Commands each attacker connection sends without reading (emit,
    /// subscribe and ping in turn).
    #[arg(long, default_value_t = 1500)]
    pub commands_per_connection: usize,
}

#[derive(Debug, Clone, Args)]
pub struct AbuseArgs {
    #[command(flatten)]
    pub common: Common,
    /// Where the publish API and /metrics are (the node's admin listener);
    /// without it they are reached on --url, so --attack-source must then
    /// not be 127.0.0.1.
    #[arg(long, value_name = "URL")]
    pub admin_url: Option<String>,
    /// Normal clients, all subscribed to one channel.
    #[arg(long, default_value_t = 200)]
    pub clients: usize,
    /// Loopback addresses the normal clients connect from: 127.0.0.2 onwards.
    #[arg(long, default_value_t = 4)]
    pub client_addrs: u8,
    /// Publications per second through the API, in each phase.
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
    /// Seconds of publishing in each phase (quiet, then under attack); more
    /// than twice the node's --header-timeout shows how long attackers live.
    #[arg(long, default_value_t = 20.0)]
    pub duration: f64,
    /// Padding bytes in each payload.
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Concurrent publishing connections.
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// Seconds to wait for stragglers after each phase.
    #[arg(long, default_value_t = 2.0)]
    pub grace: f64,
    /// Extra connections per second, each closed once `connected`, timing
    /// connects throughout each phase (0: none).
    #[arg(long, default_value_t = 10.0)]
    pub probe_rate: f64,
    /// Half-open connections the attacker tries to hold (to the first URL);
    /// each sends half a request head, then nothing.
    #[arg(long, default_value_t = 3000)]
    pub attackers: usize,
    /// New attacker connections per second at most (the ramp, and re-opening
    /// those the node closed or refused).
    #[arg(long, default_value_t = 1000.0)]
    pub attack_rate: f64,
    /// The one loopback address every attacker connection comes from.
    #[arg(long, default_value_t = Ipv4Addr::LOCALHOST)]
    pub attack_source: Ipv4Addr,
}

#[derive(Debug, Clone, Args)]
pub struct JitterArgs {
    #[command(flatten)]
    pub common: Common,
    /// Subscribing clients, all on one channel (`jitter-0`; the room for Socket.IO).
    #[arg(long, default_value_t = 10_000)]
    pub clients: usize,
    /// Initial connections opened per second (they are staggered).
    #[arg(long, default_value_t = 1000.0)]
    pub connect_rate: f64,
    /// Publications per second.
    #[arg(long, default_value_t = 2.0)]
    pub rate: f64,
    /// Publishing time (`180`, `180s`, `3m`); clients drop only meanwhile.
    #[arg(long, default_value = "180s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Padding bytes in each payload.
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Publish path for Herald (Socket.IO always publishes through a client).
    #[arg(long, value_enum, default_value_t = PublishVia::Api)]
    pub publish_via: PublishVia,
    /// Redis of the Herald cluster, for --publish-via redis.
    #[arg(long, value_name = "URL")]
    pub redis_url: Option<String>,
    /// Concurrent publishing connections (Herald).
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// Mean time a client stays connected before it drops the TCP
    /// connection without a close frame (0: never).
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub drop_every: Duration,
    /// Each online period is uniform in drop-every ± this.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub drop_jitter: Duration,
    /// Time offline after a drop, before the first reconnect attempt.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub offline: Duration,
    /// Each offline period is uniform in offline ± this.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub offline_jitter: Duration,
    /// Time after publishing stops for reconnects and replays to finish.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub grace: Duration,
}

/// Parses `180`, `1.5s`, `300ms` or `3m`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || format!("{s:?} is not a duration like 15s, 300ms, 1.5s or 3m");
    let v: f64 = num.trim().parse().map_err(|_| bad())?;
    let secs = match unit {
        "" | "s" => v,
        "ms" => v / 1000.0,
        "m" => v * 60.0,
        _ => return Err(bad()),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(secs))
}

#[derive(Debug, Clone, Args)]
pub struct IdleArgs {
    #[command(flatten)]
    pub common: Common,
    /// Idle connections to open.
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    /// Channels each connection subscribes to (client i: idle-(i*K+j) mod C).
    #[arg(long, default_value_t = 1)]
    pub channels_per_client: usize,
    /// New connections per second during the ramp.
    #[arg(long, default_value_t = 1000.0)]
    pub connect_rate: f64,
    /// Seconds to keep every connection open once all are up.
    #[arg(long, default_value_t = 5.0)]
    pub hold: f64,
    /// Where each URL's memory is read (same order as --url), when not on the URL itself.
    #[arg(long = "metrics-url", value_name = "URL")]
    pub metrics_urls: Vec<String>,
    /// Loopback source addresses 127.0.0.1..N to connect from [default: one per 10,000 connections].
    #[arg(long, value_name = "N")]
    pub source_addrs: Option<usize>,
    /// Most connections one process holds before the tool forks workers.
    #[arg(long, default_value_t = 18_000, hide = true)]
    pub max_per_process: usize,
    /// Internal: run as a worker of a parent `idle` run.
    #[arg(long, hide = true)]
    pub worker: bool,
    /// Internal: global index of this worker's first client.
    #[arg(long, default_value_t = 0, hide = true)]
    pub client_offset: usize,
    /// Internal: program to run as a worker [default: this executable].
    #[arg(long, hide = true, value_name = "PATH")]
    pub worker_exe: Option<PathBuf>,
}

impl Command {
    pub fn common(&self) -> &Common {
        match self {
            Self::Fanout(a) => &a.common,
            Self::Idle(a) => &a.common,
            Self::Channels(a) => &a.common,
            Self::Churn(a) => &a.common,
            Self::Flood(a) => &a.common,
            Self::Abuse(a) => &a.common,
            Self::Jitter(a) => &a.common,
            // `main` serves the floor before it looks for scenario options.
            Self::Floor(_) => unreachable!("the floor server runs no scenario"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_repeatable_urls() {
        let cli = Cli::try_parse_from([
            "herald-load",
            "fanout",
            "--url",
            "http://a:1",
            "--url",
            "http://b:2",
        ])
        .expect("parses");
        let Command::Fanout(f) = cli.cmd else {
            panic!("fanout")
        };
        assert_eq!(f.common.urls, ["http://a:1", "http://b:2"]);
        assert_eq!(f.clients, 1000);
        assert_eq!(f.delivery.rate, 100.0);
        assert_eq!(f.delivery.publish_via, PublishVia::Api);
        let cli = Cli::try_parse_from(["herald-load", "idle"]).expect("parses");
        assert_eq!(cli.cmd.common().urls, ["http://127.0.0.1:8080"]);
    }

    #[test]
    fn jitter_defaults_and_durations() {
        let cli =
            Cli::try_parse_from(["herald-load", "jitter", "--drop-every", "1.5s"]).expect("parses");
        let Command::Jitter(j) = cli.cmd else {
            panic!("jitter")
        };
        assert_eq!(j.clients, 10_000);
        assert_eq!(j.rate, 2.0);
        assert_eq!(j.duration, Duration::from_secs(180));
        assert_eq!(j.drop_every, Duration::from_millis(1500));
        assert_eq!(j.offline_jitter, Duration::from_millis(500));
        assert_eq!(parse_duration("3m"), Ok(Duration::from_secs(180)));
        assert_eq!(parse_duration("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(parse_duration(" 2 "), Ok(Duration::from_secs(2)));
        assert!(parse_duration("2h").is_err() && parse_duration("-1s").is_err());
        assert!(parse_duration("s").is_err());
    }
}
