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
        let dir = std::env::temp_dir().join(format!(
            "herald-sentinel-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).expect("sentinel dir");
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
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    s.write_all(&resp_command(&["INFO", section])).ok()?;
    let mut r = BufReader::new(s);
    let mut head = String::new();
    r.read_line(&mut head).ok()?;
    let len: usize = head.trim_end().strip_prefix('$')?.parse().ok()?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).ok()?;
    Some(String::from_utf8_lossy(&body).replace("\r\n", "\n"))
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
}
