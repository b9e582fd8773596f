//! The shared harness (`herald-testkit`), bound to the `herald` binary that
//! Cargo built for these tests.

pub(crate) use herald_testkit::*;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Writes `toml` to a `herald.toml` in a fresh temporary directory (named
/// after `what`) and returns its path, for `--config`.
pub(crate) fn config_file(what: &str, toml: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "herald-{what}-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).expect("config dir");
    let path = dir.join("herald.toml");
    std::fs::write(&path, toml).expect("write config");
    path
}

/// The `herald` executable under test.
pub(crate) fn herald() -> Herald {
    Herald::at(env!("CARGO_BIN_EXE_herald"))
}

/// Publishes `{"i": n}` on a channel through a node every 20 ms until
/// stopped, counting the accepted ones; failures (Redis down) are simply
/// retried.
pub(crate) struct SteadyPublisher {
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl SteadyPublisher {
    pub(crate) fn start(gw: &Gateway, channel: &str) -> Self {
        let (admin, channel) = (gw.admin, channel.to_owned());
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let (s, n) = (Arc::clone(&stop), Arc::clone(&accepted));
        let task = tokio::spawn(async move {
            let mut i = 0u64;
            while !s.load(Ordering::Relaxed) {
                let body = json!({"channel":channel,"event":"tick","data":{"i":i}}).to_string();
                let (status, _) = http_post(admin, "/api/v1/publish", &body).await;
                if status == 200 {
                    n.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        Self {
            stop,
            accepted,
            task,
        }
    }

    /// Waits until 20 more publications are accepted.
    pub(crate) async fn flowing(&self, what: &str) {
        let before = self.accepted.load(Ordering::Relaxed);
        eventually(what, || async {
            self.accepted.load(Ordering::Relaxed) >= before + 20
        })
        .await;
    }

    pub(crate) async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("publisher");
    }
}

/// `subscribe` with `since`; asserts it is accepted and returns the reply.
pub(crate) async fn subscribe_since(
    c: &mut Client,
    channel: &str,
    epoch: &Value,
    offset: u64,
) -> Value {
    let r = c
        .request(
            json!({"op":"subscribe","channel":channel,"since":{"epoch":epoch,"offset":offset}}),
        )
        .await;
    assert_eq!(r["op"], "subscribed", "{r}");
    r
}

/// Reads one channel until its `last` publication: every message exactly
/// once, in offset order. Returns `Err(position)` when the node closed with
/// 4004 first, with the last position seen.
pub(crate) async fn read_until_last(
    c: &mut Client,
    epoch: &Value,
    mut offset: u64,
) -> Result<(), u64> {
    loop {
        match c.next_event().await {
            Event::Frame(m) if m["op"] == "message" => {
                assert_eq!(&m["epoch"], epoch, "{m}");
                assert_eq!(m["offset"], offset + 1, "exactly once, in order: {m}");
                offset += 1;
                if m["event"] == "last" {
                    return Ok(());
                }
            }
            Event::Frame(_) => {}
            Event::Close(4004, _) => return Err(offset),
            Event::Close(code, why) => panic!("closed with {code} {why}"),
        }
    }
}

/// Reads `channel` on `sub` (joined at `epoch`/`start`) until its `last`
/// publication; when the node closed with 4004 first, resumes on `gw` from
/// the last position seen, and checks that recovery is exact or says it is
/// not (`recovered: false`). Returns the client left subscribed.
pub(crate) async fn nothing_missed_silently(
    gw: &Gateway,
    mut sub: Client,
    channel: &str,
    epoch: &Value,
    start: u64,
) -> Client {
    let Err(seen) = read_until_last(&mut sub, epoch, start).await else {
        return sub;
    };
    let mut back = gw.connected().await;
    let r = subscribe_since(&mut back, channel, epoch, seen).await;
    match r["recovered"].as_bool() {
        Some(true) => {
            assert_eq!(&r["epoch"], epoch, "{r}");
            if read_until_last(&mut back, epoch, seen).await.is_err() {
                panic!("closed again after recovering");
            }
        }
        Some(false) => {}
        None => panic!("recovered must be explicit: {r}"),
    }
    back
}

/// Waits until every node answers `/readyz` with 200.
pub(crate) async fn all_ready(nodes: &[Gateway]) {
    for gw in nodes {
        eventually("node ready", || async { gw.ready().await == 200 }).await;
    }
}

/// Reads until every channel of `last` has delivered its `last` event:
/// every channel's messages exactly once, in offset order from 1, the
/// `last` one at `last[channel]`.
pub(crate) async fn read_channels_until_last(c: &mut Client, last: &HashMap<String, u64>) {
    let mut seen: HashMap<String, u64> = last.keys().map(|ch| (ch.clone(), 0)).collect();
    let mut done = 0;
    while done < last.len() {
        let m = c.message().await;
        let ch = m["channel"].as_str().expect("channel").to_owned();
        let offset = seen
            .get_mut(&ch)
            .unwrap_or_else(|| panic!("unexpected {m}"));
        assert_eq!(m["offset"], *offset + 1, "exactly once, in order: {m}");
        *offset += 1;
        if m["event"] == "last" {
            assert_eq!(m["offset"], last[&ch], "{m}");
            done += 1;
        }
    }
}

/// A real HAProxy in front of nodes, on one loopback address, stopped by PID
/// on drop: one URL for a client, as in a deployment. The first node that is
/// up takes every new connection (`balance first`); a connection a node
/// refuses is retried on another one at once (`retries`, `option
/// redispatch`), and a node failing its `/readyz` check is taken out at the
/// first failure. A lone node is not checked (there is nowhere else to go).
/// Timeouts are long: a stream through it is never cut.
pub(crate) struct HaProxy {
    pub(crate) addr: SocketAddr,
    child: std::process::Child,
    dir: std::path::PathBuf,
}

impl HaProxy {
    /// HAProxy on `nodes`, in that order of preference; with
    /// `proxy_protocol`, it sends each node a PROXY protocol v2 header.
    pub(crate) fn start<'a>(
        nodes: impl IntoIterator<Item = &'a Gateway>,
        proxy_protocol: bool,
    ) -> Self {
        let nodes: Vec<&Gateway> = nodes.into_iter().collect();
        let check = nodes.len() > 1;
        let servers: String = nodes
            .iter()
            .enumerate()
            .map(|(i, gw)| {
                let mut line = format!("    server node{i} {}", gw.public);
                if proxy_protocol {
                    line.push_str(" send-proxy-v2");
                }
                if check {
                    line.push_str(" check");
                    // Probes on the admin listener (which takes no PROXY header).
                    if gw.admin != gw.public {
                        line += &format!(" addr {} port {}", gw.admin.ip(), gw.admin.port());
                    }
                }
                line + "\n"
            })
            .collect();
        let nonce = fastrand::u64(..);
        let dir =
            std::env::temp_dir().join(format!("herald-haproxy-{}-{nonce:x}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("haproxy.cfg");
        let monitor = format!("/.herald-haproxy-{nonce:x}");
        // HAProxy cannot report a port the kernel chose: take one the kernel
        // just gave out, and try another should something else hold it. The
        // unique monitor URI tells this HAProxy from whatever else listens.
        for _ in 0..20 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let cfg = format!(
                "global\n    maxconn 1000\n    noreuseport\n\n\
                 defaults\n    mode http\n    timeout connect 2s\n    timeout client 1h\n    \
                 timeout server 1h\n    timeout tunnel 1h\n    timeout check 1s\n    \
                 retries 3\n    option redispatch 1\n\n\
                 frontend clients\n    bind 127.0.0.1:{port}\n    monitor-uri {monitor}\n    \
                 default_backend herald\n\n\
                 backend herald\n    balance first\n    option httpchk GET /readyz\n    \
                 http-check expect status 200\n    default-server inter 200ms fall 1 rise 1\n\
                 {servers}"
            );
            std::fs::write(&path, cfg).expect("config");
            let mut child = std::process::Command::new("haproxy")
                .args(["-db", "-f", path.to_str().expect("path")])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("haproxy not found: install it (scripts/test.sh does)");
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            for _ in 0..250 {
                if child.try_wait().ok().flatten().is_some() {
                    break; // the port is taken: try another
                }
                if answers(addr, &monitor) {
                    return Self { addr, child, dir };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&dir);
        panic!("haproxy did not start");
    }
}

/// Whether `addr` answers `GET path` with 200.
fn answers(addr: SocketAddr, path: &str) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    let mut head = [0u8; 12];
    s.write_all(req.as_bytes()).is_ok()
        && s.read_exact(&mut head).is_ok()
        && head.starts_with(b"HTTP/1.")
        && &head[8..] == b" 200"
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
