//! Every scenario, run in-process for about a second with small numbers
//! against a real `herald` node (and a real `redis-server` for the cluster
//! case), checking that each report adds up. No timing thresholds. Nodes
//! and Redis come from the harness the gateway's tests use (herald-testkit).

use clap::Parser;
use herald_loadtest::cli::{Cli, Command};
use herald_loadtest::report::Report;
use herald_testkit::{Gateway, Herald, Redis};
use std::path::PathBuf;

/// The `herald` binary of this build: Cargo gives integration tests only
/// their own package's binaries, so it is found in the target directory
/// this test runs from (whatever CARGO_TARGET_DIR says).
fn herald() -> Herald {
    // target/debug/deps/scenarios-HASH → target/debug/herald
    let exe = std::env::current_exe().expect("test executable path");
    let bin: PathBuf = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("herald"))
        .expect("target directory");
    assert!(
        bin.exists(),
        "{} is missing: build the workspace first: cargo build --workspace",
        bin.display()
    );
    Herald::at(bin)
}

/// A node on a kernel-chosen port with quiet logs; returns it and its base URL.
fn start_herald(extra: &[&str]) -> (Gateway, String) {
    let mut args = vec!["--log", "warn"];
    args.extend_from_slice(extra);
    let node = herald().start(&args);
    let url = format!("http://{}", node.public);
    (node, url)
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
    let redis = Redis::start();
    let redis_url = redis.url();
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
async fn sse_streams_get_every_publication_once_in_order() {
    let (_node, url) = start_herald(&[]);
    // Two channels per stream: each event's channel is read from its `id:`.
    let r = scenario(&[
        "fanout",
        "--target",
        "herald-sse",
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
    ])
    .await;
    assert_eq!(r.target, "herald-sse");
    assert_eq!(r.clients.connected, 20);
    assert_clean_delivery(&r, 20);
    let r = scenario(&[
        "channels",
        "--target",
        "herald-sse",
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
    assert_clean_delivery(&r, 1);
    let cli = Cli::try_parse_from([
        "herald-load",
        "jitter",
        "--target",
        "herald-sse",
        "--url",
        &url,
    ])
    .expect("valid arguments");
    let err = herald_loadtest::run(cli.cmd).await.expect_err("refused");
    assert!(format!("{err:#}").contains("herald-sse"), "{err:#}");
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
async fn flood_measures_bystanders_quiet_and_under_attack() {
    let (_node, url) = start_herald(&[]);
    let r = scenario(&[
        "flood",
        "--url",
        &url,
        "--subscribers",
        "10",
        "--rate",
        "100",
        "--duration",
        "0.5",
        "--attackers",
        "2",
    ])
    .await;
    assert_eq!(r.scenario, "flood");
    // Both phases balance their books; the attack is the delivery report.
    assert_clean_delivery(&r, 10);
    let f = r.flood.as_ref().expect("flood report");
    let quiet = f.quiet.as_ref().expect("quiet phase");
    assert_eq!((quiet.published, quiet.delivered), (50, 500));
    assert_eq!(
        (quiet.lost, quiet.duplicated, quiet.out_of_order),
        (0, 0, 0)
    );
    assert_eq!(quiet.latency.count, 500);
    // The node cut the attackers off as a command flood.
    assert_eq!(f.attackers, 2);
    assert!(f.attack_connections >= 2, "{f:?}");
    assert!(
        f.attack_closes.get("4502").is_some_and(|n| *n >= 1),
        "{f:?}"
    );
    assert!(f.attack_commands >= 1500, "{f:?}");
    let table = r.table();
    assert!(
        table.contains("latency, quiet") && table.contains("latency, under attack"),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abuse_measures_clients_quiet_and_beside_half_open_connections() {
    let node = herald().start(&[
        "--log",
        "warn",
        "--admin-listen",
        "127.0.0.1:0",
        "--header-timeout",
        "1s",
    ]);
    let (url, admin) = (
        format!("http://{}", node.public),
        format!("http://{}", node.admin),
    );
    let argv = [
        "herald-load",
        "abuse",
        "--url",
        &url,
        "--admin-url",
        &admin,
        "--clients",
        "10",
        "--client-addrs",
        "2",
        "--rate",
        "20",
        "--duration",
        "1",
        "--grace",
        "1",
        "--probe-rate",
        "5",
        "--attackers",
        "20",
        "--attack-rate",
        "200",
        "--quiet",
        "--allow-client-bound",
    ];
    let Command::Abuse(a) = Cli::try_parse_from(argv).expect("valid arguments").cmd else {
        panic!("abuse")
    };
    let r = herald_loadtest::abuse::abuse(a)
        .await
        .unwrap_or_else(|e| panic!("abuse failed: {e:#}"));
    assert!(r.problems.is_empty(), "problems: {:?}", r.problems);
    for p in [&r.quiet, &r.attacked] {
        assert_eq!((p.clients.attempted, p.clients.failed), (10, 0));
        assert_eq!(p.clients.latency.count, 10);
        assert_eq!(p.probes.failed, 0, "{:?}", p.probes.first_error);
        assert_eq!(p.probes.latency.count, p.probes.attempted);
        let d = &p.delivery;
        assert_eq!((d.published, d.publish_failed), (20, 0));
        assert_eq!((d.expected, d.delivered), (200, 200));
        assert_eq!((d.lost, d.duplicated, d.out_of_order), (0, 0, 0));
        assert_eq!(d.latency.count, 200);
    }
    // The node closed the attacker's half-open connections at the header
    // timeout, and says so in its metrics.
    let at = &r.attack;
    assert_eq!(at.source, "127.0.0.1");
    assert!(at.opened >= 20 && at.attempted >= at.opened, "{at:?}");
    assert!(at.peak_open >= 1, "{at:?}");
    let silent = at
        .endings
        .get("closed silently")
        .expect("timed-out attackers");
    assert!(
        silent.count >= 1 && silent.lifetime.count == silent.count,
        "{at:?}"
    );
    let node = r.node.as_ref().expect("node counters");
    assert!(
        node.timeouts.get("request_head").is_some_and(|n| *n >= 1),
        "{node:?}"
    );
    let json = serde_json::to_string(&r).expect("serializes");
    let back: herald_loadtest::abuse::AbuseReport = serde_json::from_str(&json).expect("parses");
    assert_eq!(back.attack.opened, at.opened);
    let table = r.table();
    assert!(
        table.contains("under attack") && table.contains("closed silently"),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jitter_clients_resume_across_two_nodes_without_loss() {
    let redis = Redis::start();
    let redis_url = redis.url();
    let cluster = [
        "--redis-url",
        &redis_url,
        "--max-connections-per-ip",
        "0",
        "--connection-rate-per-ip",
        "0",
    ];
    let (_a, url_a) = start_herald(&cluster);
    let (_b, url_b) = start_herald(&cluster);
    let r = scenario(&[
        "jitter",
        "--url",
        &url_a,
        "--url",
        &url_b,
        "--clients",
        "20",
        "--rate",
        "20",
        "--duration",
        "6s",
        "--drop-every",
        "1.5s",
        "--drop-jitter",
        "0.5s",
        "--offline",
        "0.3s",
        "--offline-jitter",
        "0.1s",
        "--grace",
        "3s",
    ])
    .await;
    assert_clean_delivery(&r, 20);
    let j = r.jitter.as_ref().expect("jitter report");
    // Every client dropped a few times and came back each time, recovered.
    assert!(j.drops >= 40, "{j:?}");
    assert_eq!(j.reconnects, j.drops + j.server_closes, "{j:?}");
    assert_eq!(j.recovered, j.reconnects, "{j:?}");
    assert_eq!(
        (j.unrecovered, j.epoch_changes, j.offline_at_end),
        (0, 0, 0)
    );
    assert!((j.delivered_percent - 100.0).abs() < 1e-9);
    assert_eq!(j.reconnect_latency.count, j.reconnects);
    assert!(r.table().contains("unrecovered"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_target_is_a_clear_error() {
    // Bound but not listening: the port is ours and refuses connections.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let addr = socket.local_addr().expect("addr");
    let url = format!("http://{addr}");
    let cli = Cli::try_parse_from(["herald-load", "fanout", "--url", &url, "--quiet"])
        .expect("valid arguments");
    let err = herald_loadtest::run(cli.cmd)
        .await
        .expect_err("nothing listens there");
    let msg = format!("{err:#}");
    assert!(msg.contains("cannot reach") && msg.contains(&url), "{msg}");
}

/// A `herald-load floor` process, killed when dropped.
struct FloorProcess(std::process::Child);

impl Drop for FloorProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Two free loopback ports (bound, then released for the floors to take).
fn two_free_ports() -> [u16; 2] {
    let a = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let b = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    [
        a.local_addr().expect("addr").port(),
        b.local_addr().expect("addr").port(),
    ]
}

fn start_floor(port: u16, peer: u16) -> FloorProcess {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_herald-load"))
        .args(["floor", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--peer", &format!("http://127.0.0.1:{peer}")])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("herald-load floor");
    FloorProcess(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_floor_processes_are_measured_like_a_cluster() {
    let [p1, p2] = two_free_ports();
    let _floors = (start_floor(p1, p2), start_floor(p2, p1));
    let urls = [
        format!("http://127.0.0.1:{p1}"),
        format!("http://127.0.0.1:{p2}"),
    ];
    for u in &urls {
        let ep = herald_loadtest::net::Endpoint::resolve(u)
            .await
            .expect("url");
        herald_testkit::eventually("floor up", || async {
            herald_loadtest::net::http_get(&ep, "/readyz").await.is_ok()
        })
        .await;
    }
    // Publications enter through the first floor; clients on both get each
    // one once, in order, exactly as the books of a Herald run require; a
    // second run on the same floors starts where the first ended.
    for _ in 0..2 {
        let r = scenario(&[
            "fanout",
            "--url",
            &urls[0],
            "--url",
            &urls[1],
            "--clients",
            "20",
            "--rate",
            "50",
            "--duration",
            "1",
        ])
        .await;
        assert_clean_delivery(&r, 20);
    }
    let r = scenario(&[
        "idle",
        "--url",
        &urls[0],
        "--url",
        &urls[1],
        "--clients",
        "20",
        "--hold",
        "0.2",
    ])
    .await;
    assert!(r.problems.is_empty(), "problems: {:?}", r.problems);
    assert_eq!(r.memory.len(), 2, "{:?}", r.memory);
    assert!(
        r.memory.iter().all(|m| m.connections == 10),
        "{:?}",
        r.memory
    );
}
