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
        let mut failures = Vec::new();
        for _ in 0..ATTEMPTS {
            let port = candidate_port();
            match spawn_on(port) {
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
                spawn_on(self.port)
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
fn spawn_on(port: u16) -> Result<Child, String> {
    let mut child = Command::new("redis-server")
        .args(["--port", &port.to_string()])
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server not found: install it (scripts/test.sh does) to run these tests");
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
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    s.write_all(&resp_command(&["INFO", "server"])).ok()?;
    let mut r = BufReader::new(s);
    let mut head = String::new();
    r.read_line(&mut head).ok()?;
    let len: usize = head.trim_end().strip_prefix('$')?.parse().ok()?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).ok()?;
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|p| p.trim().parse().ok())
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
        assert!(spawn_on(first.port).is_err(), "port of a running redis");
        let second = Redis::start();
        assert_ne!(first.port, second.port);
        assert_eq!(second.cmd(&["PING"]), "+PONG");
    }
}
