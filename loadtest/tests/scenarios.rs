//! Every scenario, run in-process for about a second with small numbers
//! against a real `herald` node (and a real `redis-server` for the cluster
//! case), checking that each report adds up. No timing thresholds.

use clap::Parser;
use herald_loadtest::cli::Cli;
use herald_loadtest::report::Report;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process killed by PID when dropped.
struct Proc {
    child: Child,
    _stdout: Option<BufReader<ChildStdout>>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn herald_bin() -> PathBuf {
    // target/debug/deps/scenarios-HASH → target/debug/herald
    let exe = std::env::current_exe().expect("test executable path");
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("herald"))
        .expect("target directory");
    assert!(
        bin.exists(),
        "{} is missing: build the workspace first: cargo build --workspace",
        bin.display()
    );
    bin
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Starts a node on a kernel-chosen port; returns it and its base URL.
fn start_herald(extra: &[&str]) -> (Proc, String) {
    let mut child = Command::new(herald_bin())
        .env_clear()
        .args(["serve", "--listen", "127.0.0.1:0", "--log", "warn"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting herald");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("herald's listening line");
    // Kept open so the node never writes to a closed pipe.
    let node = Proc {
        child,
        _stdout: Some(out),
    };
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("public="))
        .unwrap_or_else(|| panic!("unexpected herald output: {line:?}"));
    (node, format!("http://{addr}"))
}

fn start_redis() -> (Proc, String) {
    let port = free_port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server not found: install it to run this test");
    let proc_ = Proc {
        child,
        _stdout: None,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let mut buf = [0u8; 7];
            if s.write_all(b"PING\r\n").is_ok()
                && s.read_exact(&mut buf).is_ok()
                && &buf == b"+PONG\r\n"
            {
                break;
            }
        }
        assert!(Instant::now() < deadline, "redis-server did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
    (proc_, format!("redis://127.0.0.1:{port}"))
}

async fn scenario(args: &[&str]) -> Report {
    let argv = ["herald-load"]
        .iter()
        .chain(args)
        .chain(&["--quiet", "--allow-client-bound"]);
    let cli = Cli::try_parse_from(argv).expect("valid arguments");
    herald_loadtest::run(cli.cmd)
        .await
        .unwrap_or_else(|e| panic!("{args:?} failed: {e:#}"))
}

/// The delivery books balance exactly.
fn assert_clean_delivery(r: &Report, subscribers: u64) {
    assert!(r.problems.is_empty(), "problems: {:?}", r.problems);
    let d = r.delivery.as_ref().expect("delivery report");
    assert!(d.published > 0, "nothing published");
    assert_eq!(d.publish_failed, 0);
    assert_eq!(d.subscribers_per_message, subscribers);
    assert_eq!(d.expected, d.published * subscribers);
    assert_eq!(d.delivered, d.published * subscribers, "{d:?}");
    assert_eq!((d.lost, d.duplicated, d.out_of_order), (0, 0, 0));
    assert_eq!(d.clients_dropped, 0);
    assert_eq!(d.latency.count, d.delivered);
    assert!(d.latency.p50_us <= d.latency.p99_us && d.latency.p99_us <= d.latency.max_us);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_over_the_api_delivers_everything_once() {
    let (_node, url) = start_herald(&[]);
    let dir = std::env::temp_dir().join(format!("herald-load-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (json, svg) = (dir.join("r.json"), dir.join("r.svg"));
    let args = [
        "fanout",
        "--url",
        &url,
        "--clients",
        "20",
        "--channels",
        "2",
        "--rate",
        "50",
        "--duration",
        "1",
        "--json",
        json.to_str().expect("utf-8 path"),
        "--plot",
        svg.to_str().expect("utf-8 path"),
    ];
    let r = scenario(&args).await;
    assert_eq!(r.clients.connected, 20);
    assert_clean_delivery(&r, 20);
    assert_eq!(r.delivery.as_ref().map(|d| d.published), Some(50));

    let cli = Cli::try_parse_from(["herald-load"].iter().chain(&args)).expect("valid");
    herald_loadtest::write_outputs(&r, cli.cmd.common()).expect("outputs written");
    let back: Report =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json")).expect("parses");
    assert_eq!(back.delivery.map(|d| d.delivered), Some(1000));
    let plot = std::fs::read_to_string(&svg).expect("svg");
    assert!(plot.starts_with("<svg") && plot.contains("</svg>"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_through_client_emits() {
    let (_node, url) = start_herald(&[]);
    let r = scenario(&[
        "fanout",
        "--url",
        &url,
        "--clients",
        "20",
        "--rate",
        "50",
        "--duration",
        "1",
        "--publish-via",
        "client",
        "--publishers",
        "2",
    ])
    .await;
    assert_clean_delivery(&r, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_straight_into_redis_reaches_a_cluster_node() {
    let (_redis, redis_url) = start_redis();
    let (_node, url) = start_herald(&["--redis-url", &redis_url]);
    let r = scenario(&[
        "fanout",
        "--url",
        &url,
        "--clients",
        "20",
        "--rate",
        "50",
        "--duration",
        "1",
        "--publish-via",
        "redis",
        "--redis-url",
        &redis_url,
    ])
    .await;
    assert_clean_delivery(&r, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_with_one_subscriber_each() {
    let (_node, url) = start_herald(&[]);
    let r = scenario(&[
        "channels",
        "--url",
        &url,
        "--channels",
        "30",
        "--rate",
        "50",
        "--duration",
        "1",
    ])
    .await;
    assert_eq!(r.clients.connected, 30);
    assert_clean_delivery(&r, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_keeps_steady_clients_whole() {
    let (_node, url) = start_herald(&[]);
    let r = scenario(&[
        "churn",
        "--url",
        &url,
        "--clients",
        "20",
        "--rate",
        "50",
        "--duration",
        "1",
        "--churn-rate",
        "10",
        "--churn-hold-ms",
        "200",
    ])
    .await;
    assert_clean_delivery(&r, 20);
    let c = r.churn.expect("churn report");
    assert!(c.started > 0);
    assert_eq!(c.failed, 0, "{:?}", c.first_error);
    assert_eq!(c.completed, c.started);
    assert_eq!(c.connect_subscribe.count, c.started);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_all_come_up() {
    let (_node, url) = start_herald(&[]);
    let r = scenario(&[
        "idle",
        "--url",
        &url,
        "--clients",
        "20",
        "--channels-per-client",
        "2",
        "--hold",
        "0.5",
        "--source-addrs",
        "2",
    ])
    .await;
    assert!(r.problems.is_empty(), "problems: {:?}", r.problems);
    assert_eq!((r.clients.connected, r.clients.failed), (20, 0));
    assert_eq!(r.memory.len(), 1);
    assert_eq!(r.memory[0].connections, 20);
    assert!(r.memory[0].rss_before > 0 && r.memory[0].rss_after > 0);
    assert!(r.memory[0].kib_per_connection.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_spreads_over_worker_processes() {
    let (_node, url) = start_herald(&[]);
    let r = scenario(&[
        "idle",
        "--url",
        &url,
        "--clients",
        "20",
        "--hold",
        "0.2",
        "--max-per-process",
        "8",
        "--worker-exe",
        env!("CARGO_BIN_EXE_herald-load"),
    ])
    .await;
    assert!(r.problems.is_empty(), "problems: {:?}", r.problems);
    assert_eq!(r.params["worker_processes"], 3);
    assert_eq!((r.clients.connected, r.clients.failed), (20, 0));
    assert_eq!(r.memory[0].connections, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_target_is_a_clear_error() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let cli = Cli::try_parse_from(["herald-load", "fanout", "--url", &url, "--quiet"])
        .expect("valid arguments");
    let err = herald_loadtest::run(cli.cmd)
        .await
        .expect_err("nothing listens there");
    let msg = format!("{err:#}");
    assert!(msg.contains("cannot reach") && msg.contains(&url), "{msg}");
}
