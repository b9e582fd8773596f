//! `redis-server` processes without persistence.
//!
//! Redis cannot report a port the kernel chose, so it gets a random one
//! outside the ephemeral range (where the kernel puts every port-0 listener
//! and client socket); when that port turns out to be taken, by a process
//! that beat us to it, the next candidate is tried.

use crate::TIMEOUT;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Ports tried before giving up.
const ATTEMPTS: usize = 8;

/// A `redis-server` on its own loopback port, killed (SIGKILL) when dropped.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    /// The TLS flags of a TLS-only server (`rediss://`); empty for plain TCP.
    tls: Vec<String>,
}

impl Redis {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Like [`Redis::start`], with more `redis-server` arguments.
    pub fn start_with(extra: &[&str]) -> Self {
        let mut failures = Vec::new();
        for _ in 0..ATTEMPTS {
            let port = candidate_port();
            match spawn_on(port, extra) {
                Ok(child) => {
                    return Self {
                        port,
                        child: Some(child),
                        tls: Vec::new(),
                    };
                }
                Err(e) => failures.push(format!("port {port}: {e}")),
            }
        }
        panic!("redis-server did not start:\n{}", failures.join("\n"));
    }

    /// A TLS-only `redis-server` (`--port 0`) presenting `files`' server
    /// certificate; with `auth_clients` it requires a client certificate
    /// signed by the same CA.
    pub fn start_tls(files: &crate::TlsFiles, auth_clients: bool) -> Self {
        let p = |p: &std::path::Path| p.display().to_string();
        let tls = vec![
            "--tls-cert-file".to_owned(),
            p(&files.server_cert),
            "--tls-key-file".to_owned(),
            p(&files.server_key),
            "--tls-ca-cert-file".to_owned(),
            p(&files.ca),
            "--tls-auth-clients".to_owned(),
            if auth_clients { "yes" } else { "no" }.to_owned(),
        ];
        let mut failures = Vec::new();
        for _ in 0..ATTEMPTS {
            let port = candidate_port();
            match spawn_tls_on(port, &tls) {
                Ok(child) => {
                    return Self {
                        port,
                        child: Some(child),
                        tls,
                    };
                }
                Err(e) => failures.push(format!("port {port}: {e}")),
            }
        }
        panic!("TLS redis-server did not start:\n{}", failures.join("\n"));
    }

    /// `redis://127.0.0.1:PORT`, or `rediss://` for a TLS-only server.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_empty() {
            "redis"
        } else {
            "rediss"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Starts again on the same port (nodes know it by its URL), with an
    /// empty dataset. Retried a few times should the port be taken meanwhile.
    pub fn restart(&mut self) {
        self.kill();
        let mut failures = Vec::new();
        for _ in 0..ATTEMPTS {
            let spawned = if self.tls.is_empty() {
                spawn_on(self.port, &[])
            } else {
                spawn_tls_on(self.port, &self.tls)
            };
            match spawned {
                Ok(child) => {
                    self.child = Some(child);
                    return;
                }
                Err(e) => failures.push(e),
            }
        }
        panic!(
            "redis-server did not restart on port {}:\n{}",
            self.port,
            failures.join("\n")
        );
    }

    /// Runs one command (no argument may contain spaces) over plain TCP
    /// (not on a TLS-only server); returns the first reply line.
    pub fn cmd(&self, args: &[&str]) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("redis");
        s.write_all(&resp_command(args)).expect("write");
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).expect("read");
        line.trim_end().to_owned()
    }

    /// Runs one command over plain TCP; the whole reply as text (an
    /// array's elements one per line, an error with its leading `-`).
    pub fn call(&self, args: &[&str]) -> String {
        call(self.port, args).unwrap_or_else(|| panic!("no answer from redis on {}", self.port))
    }

    /// Drops every key, as an operator's `FLUSHALL` would.
    pub fn flushall(&self) {
        assert_eq!(self.cmd(&["FLUSHALL"]), "+OK");
    }

    /// SIGKILL, like a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

fn resp_command(args: &[&str]) -> Vec<u8> {
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    req.into_bytes()
}

/// A random port below the kernel's ephemeral range (or above it, when the
/// range starts low).
fn candidate_port() -> u16 {
    let (low, high) = ephemeral_range();
    if low > 11_000 {
        fastrand::u16(10_000..low)
    } else if high < 64_000 {
        fastrand::u16(high + 1..=65_535)
    } else {
        fastrand::u16(1024..=65_535)
    }
}

/// The kernel's ephemeral port range (Linux's default when unknown).
fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(str::parse::<u16>);
            Some((it.next()?.ok()?, it.next()?.ok()?))
        })
        .unwrap_or((32768, 60999))
}

/// Starts `redis-server` on `port` and waits until it answers; fails when it
/// exits (port taken) or when another process answers there.
fn spawn_on(port: u16, extra: &[&str]) -> Result<Child, String> {
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string()])
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server not found: install it (scripts/test.sh does) to run these tests");
    serving_on(child, port)
}

/// Waits until `child` answers on `port`; fails when it exits first (port
/// taken) or when another process answers there.
fn serving_on(mut child: Child, port: u16) -> Result<Child, String> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut log = String::new();
            if let Some(mut out) = child.stdout.take() {
                let _ = out.read_to_string(&mut log);
            }
            let why = log
                .lines()
                .rev()
                .find(|l| l.contains('#'))
                .unwrap_or_default();
            return Err(format!("exited ({status}): {why}"));
        }
        match server_pid(port) {
            Some(pid) if pid == child.id() => {
                // Its log is not needed any more; nothing must block on it.
                drop(child.stdout.take());
                return Ok(child);
            }
            Some(other) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("taken by another redis-server (pid {other})"));
            }
            None => {}
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err("no answer within the timeout".to_owned());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A master, one replica and three sentinels monitoring the master as `m`
/// (quorum 2, down after 1 s, failover timeout 3 s); every process is
/// killed (SIGKILL) when dropped, and the sentinels' config files removed.
pub struct Sentinels {
    pub master: Redis,
    pub replica: Redis,
    sentinels: Vec<(u16, Child)>,
    dir: std::path::PathBuf,
}

impl Sentinels {
    pub fn start() -> Self {
        let dir = temp_dir("sentinel");
        let d = dir.display().to_string();
        // No wait before the full sync (diskless sync waits 5 s by default);
        // the replica's copy of the dataset goes to `dir`.
        let master = Redis::start_with(&["--repl-diskless-sync-delay", "0", "--dir", &d]);
        let of = master.port.to_string();
        let replica = Redis::start_with(&["--replicaof", "127.0.0.1", &of, "--dir", &d]);
        let mut sentinels = Vec::new();
        for i in 0..3 {
            let mut failures = Vec::new();
            let started = (0..ATTEMPTS).find_map(|_| {
                let port = candidate_port();
                let conf = dir.join(format!("sentinel-{i}.conf"));
                let text = format!(
                    "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                     sentinel monitor m 127.0.0.1 {of} 2\n\
                     sentinel down-after-milliseconds m 1000\n\
                     sentinel failover-timeout m 3000\n",
                    dir = dir.display()
                );
                std::fs::write(&conf, text).expect("sentinel config");
                match spawn_sentinel(port, &conf) {
                    Ok(child) => Some((port, child)),
                    Err(e) => {
                        failures.push(format!("port {port}: {e}"));
                        None
                    }
                }
            });
            let Some(s) = started else {
                panic!("redis sentinel did not start:\n{}", failures.join("\n"));
            };
            sentinels.push(s);
        }
        Self {
            master,
            replica,
            sentinels,
            dir,
        }
    }

    /// `redis+sentinel://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3/m`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|(p, _)| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+sentinel://{}/m", hosts.join(","))
    }

    /// Whether every sentinel sees the replica and a quorum of sentinels
    /// able to authorise a failover (they find each other within seconds).
    pub fn ready_for_failover(&self) -> bool {
        let synced = info(self.replica.port, "replication")
            .is_some_and(|i| i.lines().any(|l| l == "master_link_status:up"));
        synced
            && self.sentinels.iter().all(|(port, _)| {
                sentinel_cmd(*port, &["SENTINEL", "CKQUORUM", "m"]).starts_with("+OK 3 ")
                    && sentinel_cmd(*port, &["SENTINEL", "REPLICAS", "m"]) == "*1"
            })
    }

    /// `SENTINEL FAILOVER m`: promotes the replica with the master alive
    /// (the master becomes its replica).
    pub fn failover(&self) {
        let (port, _) = self.sentinels[0];
        let reply = sentinel_cmd(port, &["SENTINEL", "FAILOVER", "m"]);
        assert_eq!(reply, "+OK", "SENTINEL FAILOVER");
    }

    /// The master's port as the first sentinel names it.
    pub fn master_port(&self) -> Option<u16> {
        let (port, _) = self.sentinels[0];
        let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
        s.write_all(&resp_command(&["SENTINEL", "get-master-addr-by-name", "m"]))
            .ok()?;
        // *2, $9, 127.0.0.1, $N, port
        let mut lines = BufReader::new(s).lines().map_while(Result::ok);
        lines.nth(4)?.parse().ok()
    }
}

impl Drop for Sentinels {
    fn drop(&mut self) {
        for (_, c) in &mut self.sentinels {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis Cluster of 3 masters and 3 replicas (one each), cluster node
/// timeout 2 s; every process is killed (SIGKILL) when dropped, and the
/// nodes' config files removed.
///
/// Every node needs its port and the cluster bus port (port + 10000), so the
/// ports are chosen where both are outside the ephemeral range.
pub struct RedisCluster {
    /// Every node, the three first masters first.
    nodes: Vec<ClusterNode>,
    dir: std::path::PathBuf,
}

struct ClusterNode {
    port: u16,
    child: Option<Child>,
}

impl RedisCluster {
    pub fn start() -> Self {
        let dir = temp_dir("cluster");
        let mut cluster = Self {
            nodes: Vec::new(),
            dir,
        };
        for _ in 0..6 {
            let node = cluster.spawn_node();
            cluster.nodes.push(node);
        }
        let mut create = Command::new("redis-cli");
        create.args(["--cluster", "create"]);
        for n in &cluster.nodes {
            create.arg(format!("127.0.0.1:{}", n.port));
        }
        let out = create
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli not found: install redis-tools (scripts/test.sh does)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let deadline = Instant::now() + 3 * TIMEOUT;
        while !(cluster.settled() && cluster.replicas_synced()) {
            assert!(
                Instant::now() < deadline,
                "the Redis Cluster did not settle:\n{}",
                cluster.call(cluster.nodes[0].port, &["CLUSTER", "NODES"])
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        cluster
    }

    /// One node on a fresh port whose bus port is free too.
    fn spawn_node(&self) -> ClusterNode {
        let mut failures = Vec::new();
        for _ in 0..ATTEMPTS {
            let port = cluster_candidate_port();
            let conf = self.dir.join(format!("nodes-{port}.conf"));
            let (conf, dir) = (conf.display().to_string(), self.dir.display().to_string());
            let args = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                &conf,
                "--cluster-node-timeout",
                "2000",
                "--repl-diskless-sync-delay",
                "0",
                "--dir",
                &dir,
            ];
            match spawn_on(port, &args) {
                Ok(child) => {
                    return ClusterNode {
                        port,
                        child: Some(child),
                    };
                }
                Err(e) => failures.push(format!("port {port}: {e}")),
            }
        }
        panic!(
            "cluster redis-server did not start:\n{}",
            failures.join("\n")
        );
    }

    /// `redis+cluster://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3`: the three
    /// first masters, as seeds.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self.nodes[..3]
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    /// The ports of every node still running.
    pub fn alive(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.port)
            .collect()
    }

    /// The ports of the nodes that currently serve slots.
    pub fn masters(&self) -> Vec<u16> {
        let view = self.nodes_view(self.alive()[0]);
        let mut ports: Vec<u16> = view
            .iter()
            .filter(|n| n.master.is_none() && !n.slots.is_empty())
            .map(|n| n.port)
            .collect();
        ports.sort_unstable();
        ports
    }

    /// Runs one command on the node at `port`; the reply as text (an array's
    /// elements one per line, an error with its leading `-`), or "" when the
    /// node does not answer.
    pub fn call(&self, port: u16, args: &[&str]) -> String {
        call(port, args).unwrap_or_default()
    }

    /// `CLUSTER KEYSLOT key`.
    pub fn slot_of(&self, key: &str) -> u16 {
        let port = self.alive()[0];
        let reply = self.call(port, &["CLUSTER", "KEYSLOT", key]);
        reply
            .parse()
            .unwrap_or_else(|_| panic!("KEYSLOT: {reply:?}"))
    }

    /// The port of the master serving `slot`, as the first live node sees it.
    pub fn master_of_slot(&self, slot: u16) -> u16 {
        let view = self.nodes_view(self.alive()[0]);
        view.iter()
            .find(|n| n.serves(slot))
            .unwrap_or_else(|| panic!("nobody serves slot {slot}: {view:?}"))
            .port
    }

    /// The port of a replica of the master at `master_port`.
    pub fn replica_of(&self, master_port: u16) -> u16 {
        let view = self.nodes_view(self.alive()[0]);
        let id = &view
            .iter()
            .find(|n| n.port == master_port)
            .unwrap_or_else(|| panic!("no node on {master_port}: {view:?}"))
            .id;
        view.iter()
            .find(|n| n.master.as_ref() == Some(id))
            .unwrap_or_else(|| panic!("no replica of {master_port}: {view:?}"))
            .port
    }

    /// The lowest slot the master at `master_port` serves.
    pub fn first_slot_of(&self, master_port: u16) -> u16 {
        let view = self.nodes_view(self.alive()[0]);
        view.iter()
            .find(|n| n.port == master_port)
            .and_then(|n| n.slots.iter().map(|r| r.0).min())
            .unwrap_or_else(|| panic!("{master_port} serves no slot: {view:?}"))
    }

    /// A channel named `prefix-N` whose Herald keys (hash tag `{channel}`)
    /// live in the lowest slot of the master at `master_port`: the slot
    /// `redis-cli --cluster reshard` moves first. Asks `CLUSTER KEYSLOT`,
    /// pipelined in batches.
    pub fn channel_in_first_slot_of(&self, master_port: u16, prefix: &str) -> String {
        const BATCH: u64 = 4096;
        let target = self.first_slot_of(master_port);
        let mut s = TcpStream::connect(("127.0.0.1", master_port)).expect("cluster node");
        s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        let mut r = BufReader::new(s.try_clone().expect("clone"));
        for start in (0..64).map(|b| b * BATCH) {
            let names: Vec<String> = (start..start + BATCH)
                .map(|n| format!("{prefix}-{n}"))
                .collect();
            let mut req = Vec::new();
            for name in &names {
                let key = format!("herald:{{{name}}}");
                req.extend(resp_command(&["CLUSTER", "KEYSLOT", &key]));
            }
            s.write_all(&req).expect("write");
            let mut found = None;
            for name in names {
                let mut line = String::new();
                r.read_line(&mut line).expect("read");
                let slot: u16 = line
                    .trim_end()
                    .strip_prefix(':')
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("KEYSLOT: {line:?}"));
                if slot == target && found.is_none() {
                    found = Some(name);
                }
            }
            if let Some(name) = found {
                return name;
            }
        }
        panic!("no {prefix}-N in slot {target}");
    }

    /// SIGKILL of the node at `port`, like a crash.
    pub fn kill(&mut self, port: u16) {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("no cluster node on {port}"));
        if let Some(mut c) = node.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `CLUSTER FAILOVER` on the replica at `replica_port`: a planned
    /// failover with its master alive; waits until it serves its master's
    /// slots and every node agrees.
    pub async fn failover(&self, replica_port: u16) {
        let reply = self.call(replica_port, &["CLUSTER", "FAILOVER"]);
        assert_eq!(reply, "OK", "CLUSTER FAILOVER");
        self.wait_promoted(replica_port).await;
    }

    /// Waits until the node at `replica_port` is a master serving slots,
    /// every live node says `cluster_state:ok` and they all agree on the
    /// slot map.
    pub async fn wait_promoted(&self, replica_port: u16) {
        crate::eventually_within(
            "the replica is promoted and the cluster agrees",
            2 * TIMEOUT,
            || async {
                let me = self.nodes_view(replica_port);
                let promoted = me
                    .iter()
                    .any(|n| n.myself && n.master.is_none() && !n.slots.is_empty());
                promoted && self.settled()
            },
        )
        .await;
    }

    /// Moves `slot` to the master at `to_master_port` with `redis-cli
    /// --cluster reshard` (which moves the source's lowest slot: `slot` must
    /// be it, see [`RedisCluster::channel_in_first_slot_of`]), then waits
    /// until every node agrees.
    pub async fn reshard_slot(&self, slot: u16, to_master_port: u16) {
        let from = self.master_of_slot(slot);
        assert_eq!(
            self.first_slot_of(from),
            slot,
            "redis-cli moves the source's lowest slot"
        );
        let src = self.call(from, &["CLUSTER", "MYID"]);
        let dst = self.call(to_master_port, &["CLUSTER", "MYID"]);
        let out = tokio::process::Command::new("redis-cli")
            .args(["--cluster", "reshard", &format!("127.0.0.1:{from}")])
            .args(["--cluster-from", &src, "--cluster-to", &dst])
            .args(["--cluster-slots", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .await
            .expect("redis-cli");
        assert!(
            out.status.success(),
            "redis-cli --cluster reshard failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        crate::eventually_within("every node agrees the slot moved", 2 * TIMEOUT, || async {
            self.settled() && self.master_of_slot(slot) == to_master_port
        })
        .await;
    }

    /// Every live node says `cluster_state:ok` and sees the same masters,
    /// replicas and slots.
    fn settled(&self) -> bool {
        let alive = self.alive();
        let ok = alive.iter().all(|&p| {
            call(p, &["CLUSTER", "INFO"])
                .is_some_and(|i| i.lines().any(|l| l.trim_end() == "cluster_state:ok"))
        });
        if !ok {
            return false;
        }
        let views: Vec<Vec<String>> = alive
            .iter()
            .map(|&p| {
                let mut v: Vec<String> = self
                    .nodes_view(p)
                    .iter()
                    .map(|n| format!("{} {:?} {:?}", n.id, n.master, n.slots))
                    .collect();
                v.sort();
                v
            })
            .collect();
        !views[0].is_empty() && views.iter().all(|v| *v == views[0])
    }

    /// Every replica's link to its master is up (it holds the data).
    fn replicas_synced(&self) -> bool {
        self.alive().iter().all(|&p| {
            info(p, "replication").is_some_and(|i| {
                i.lines().any(|l| l == "role:master")
                    || i.lines().any(|l| l == "master_link_status:up")
            })
        })
    }

    /// `CLUSTER NODES` as the node at `port` sees it (empty when it does
    /// not answer).
    fn nodes_view(&self, port: u16) -> Vec<NodeLine> {
        call(port, &["CLUSTER", "NODES"])
            .unwrap_or_default()
            .lines()
            .filter_map(NodeLine::parse)
            .collect()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One line of `CLUSTER NODES`.
#[derive(Debug)]
struct NodeLine {
    id: String,
    port: u16,
    myself: bool,
    /// The master's id, for a replica.
    master: Option<String>,
    /// Served slot ranges, inclusive; migrations (`[s->-id]`) as (s, s).
    slots: Vec<(u16, u16)>,
}

impl NodeLine {
    fn parse(line: &str) -> Option<Self> {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (id, addr, flags, master) = (f.first()?, f.get(1)?, f.get(2)?, f.get(3)?);
        let port = addr.split('@').next()?.rsplit_once(':')?.1.parse().ok()?;
        let slots = f[8.min(f.len())..]
            .iter()
            .filter(|s| !s.starts_with('['))
            .filter_map(|s| match s.split_once('-') {
                Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                None => s.parse().ok().map(|a| (a, a)),
            })
            .collect();
        Some(Self {
            id: (*id).to_owned(),
            port,
            myself: flags.split(',').any(|f| f == "myself"),
            master: (*master != "-").then(|| (*master).to_owned()),
            slots,
        })
    }

    fn serves(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(a, b)| (a..=b).contains(&slot))
    }
}

/// A random port whose cluster bus port (+10000) is free too; both outside
/// the ephemeral range.
fn cluster_candidate_port() -> u16 {
    let (low, high) = ephemeral_range();
    loop {
        let port = if low > 21_000 {
            fastrand::u16(10_000..low - 10_000)
        } else if high < 55_000 {
            fastrand::u16(high + 1..=55_535)
        } else {
            fastrand::u16(1024..=55_535)
        };
        let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + 10_000) {
            return port;
        }
    }
}

/// One command to the Redis on `port`; the reply as text (see
/// [`RedisCluster::call`]), `None` when it does not answer.
fn call(port: u16, args: &[&str]) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(&resp_command(args)).ok()?;
    read_reply(&mut BufReader::new(s))
}

/// One RESP2 reply as text: an array's elements one per line, an error
/// with its leading `-`, nil as "".
fn read_reply(r: &mut impl BufRead) -> Option<String> {
    let mut head = String::new();
    r.read_line(&mut head).ok()?;
    let head = head.trim_end();
    let (kind, rest) = head.split_at_checked(1)?;
    match kind {
        "+" | ":" => Some(rest.to_owned()),
        "-" => Some(head.to_owned()),
        "$" => {
            let Ok(len) = rest.parse::<usize>() else {
                return Some(String::new()); // $-1: nil
            };
            let mut body = vec![0u8; len + 2];
            r.read_exact(&mut body).ok()?;
            body.truncate(len);
            Some(String::from_utf8_lossy(&body).replace("\r\n", "\n"))
        }
        "*" => {
            let n = rest.parse::<usize>().unwrap_or(0);
            let items: Option<Vec<String>> = (0..n).map(|_| read_reply(r)).collect();
            Some(items?.join("\n"))
        }
        _ => None,
    }
}

/// A new directory for `kind`'s config and data files, unique to this
/// process and call; the caller removes it.
fn temp_dir(kind: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "herald-{kind}-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{kind} dir: {e}"));
    dir
}

/// One command to the sentinel on `port`; the first reply line, or "" when
/// it does not answer.
fn sentinel_cmd(port: u16, args: &[&str]) -> String {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(&resp_command(args)).is_err() {
        return String::new();
    }
    let mut line = String::new();
    let _ = BufReader::new(s).read_line(&mut line);
    line.trim_end().to_owned()
}

/// Starts `redis-server <conf> --sentinel` and waits until it answers on `port`.
fn spawn_sentinel(port: u16, conf: &std::path::Path) -> Result<Child, String> {
    let child = Command::new("redis-server")
        .arg(conf)
        .arg("--sentinel")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server not found: install it (scripts/test.sh does) to run these tests");
    serving_on(child, port)
}

/// Starts a TLS-only `redis-server` on `port` and waits for its "Ready"
/// log line; fails when it exits first (port taken).
fn spawn_tls_on(port: u16, tls: &[String]) -> Result<Child, String> {
    let mut child = Command::new("redis-server")
        .args(["--port", "0", "--tls-port", &port.to_string()])
        .args(tls)
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server not found: install it (scripts/test.sh does) to run these tests");
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut log = Vec::new();
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if line.contains("Ready to accept connections") {
                let _ = tx.send(Ok(()));
                // Keep draining: the server must never block on a full pipe.
                continue;
            }
            log.push(line);
        }
        let why = log.iter().rev().find(|l| l.contains('#')).cloned();
        let _ = tx.send(Err(why.unwrap_or_default()));
    });
    match rx.recv_timeout(TIMEOUT) {
        Ok(Ok(())) => Ok(child),
        outcome => {
            let _ = child.kill();
            let status = child.wait().expect("wait");
            Err(match outcome {
                Ok(Err(why)) => format!("exited ({status}): {why}"),
                _ => "not ready within the timeout".to_owned(),
            })
        }
    }
}

/// The `process_id` of the Redis answering on `port`, if one does.
fn server_pid(port: u16) -> Option<u32> {
    info(port, "server")?
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|p| p.trim().parse().ok())
}

/// `INFO <section>` of the Redis answering on `port`, if one does.
fn info(port: u16, section: &str) -> Option<String> {
    call(port, &["INFO", section])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_avoid_the_ephemeral_range() {
        let (low, high) = ephemeral_range();
        for _ in 0..100 {
            let p = candidate_port();
            assert!(!(low..=high).contains(&p), "{p} in {low}..={high}");
        }
    }

    #[test]
    fn a_taken_port_is_refused_and_the_next_one_used() {
        let first = Redis::start();
        assert!(
            spawn_on(first.port, &[]).is_err(),
            "port of a running redis"
        );
        let second = Redis::start();
        assert_ne!(first.port, second.port);
        assert_eq!(second.cmd(&["PING"]), "+PONG");
    }

    #[tokio::test]
    async fn a_cluster_shares_its_slots_among_three_masters_and_follows_resharding() {
        let cluster = RedisCluster::start();
        let masters = cluster.masters();
        assert_eq!(masters.len(), 3, "{masters:?}");
        let m = cluster.master_of_slot(0);
        let ch = cluster.channel_in_first_slot_of(m, "t");
        let slot = cluster.slot_of(&format!("herald:{{{ch}}}"));
        assert_eq!(slot, cluster.first_slot_of(m));
        let to = *masters.iter().find(|&&p| p != m).expect("another master");
        cluster.reshard_slot(slot, to).await;
        assert_eq!(cluster.master_of_slot(slot), to);
        let replica = cluster.replica_of(to);
        cluster.failover(replica).await;
        assert_eq!(cluster.master_of_slot(slot), replica);
    }
}
