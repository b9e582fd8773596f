//! A helper process serving HTTP on loopback (e.g. the proxy-hook backend in
//! `gateway/tests/fixtures/hook_backend.py`): started on port 0, addressed
//! by the port it prints, killed by PID when its handle drops.

use crate::TIMEOUT;
use crate::http::http_get;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;

/// The first line a child prints, sent once read; the rest is drained so
/// the child never writes to a full or closed pipe.
pub(crate) fn first_line(out: ChildStdout) -> mpsc::Receiver<Option<String>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(out).lines();
        let _ = tx.send(lines.next().and_then(Result::ok));
        for _ in lines {}
    });
    rx
}

/// A running backend process, killed (SIGKILL) when dropped.
pub struct Backend {
    pub addr: SocketAddr,
    child: Child,
}

impl Backend {
    /// Runs `python3 SCRIPT 0`; the script prints `port N` once it listens.
    pub fn python(script: &Path) -> Self {
        let mut child = Command::new("python3")
            .arg(script)
            .arg("0")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning python3 {}: {e}", script.display()));
        let rx = first_line(child.stdout.take().expect("stdout"));
        let port: u16 = match rx.recv_timeout(TIMEOUT) {
            Ok(Some(line)) => line
                .strip_prefix("port ")
                .and_then(|p| p.trim().parse().ok())
                .unwrap_or_else(|| panic!("{}: unexpected first line {line:?}", script.display())),
            _ => {
                let _ = child.kill();
                panic!("{} did not report its port", script.display());
            }
        };
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child,
        }
    }

    /// `http://ADDR` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// GETs `path` and parses the JSON answer.
    pub async fn get_json(&self, path: &str) -> Value {
        let (status, body) = http_get(self.addr, path).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
