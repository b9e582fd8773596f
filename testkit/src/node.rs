//! `herald serve` processes: started on port 0 with only the environment the
//! test gives them, addressed by the ports they report on stdout.

use crate::http::{http_get, http_post};
use crate::{Client, TIMEOUT};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The `herald` executable under test. The gateway's tests give
/// `env!("CARGO_BIN_EXE_herald")`; other packages find it in their target
/// directory.
#[derive(Debug, Clone)]
pub struct Herald {
    bin: PathBuf,
}

impl Herald {
    pub fn at(bin: impl Into<PathBuf>) -> Self {
        Self { bin: bin.into() }
    }

    pub fn path(&self) -> &Path {
        &self.bin
    }

    /// `herald` with an empty environment, for one-shot subcommands
    /// (`publish`, `token`, `config`).
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.env_clear();
        cmd
    }

    /// Starts a node on a kernel-chosen port with the given extra flags.
    pub fn start(&self, args: &[&str]) -> Gateway {
        self.start_env(args, &[])
    }

    /// Starts a node with flags and exactly these environment variables
    /// (plus `HERALD_LOG`, which a flag or `env` may override).
    pub fn start_env(&self, args: &[&str], env: &[(&str, &str)]) -> Gateway {
        // Only what the test means the node to see: the node rejects unknown
        // HERALD_* variables, and the caller's environment is none of its business.
        let mut cmd = self.command();
        cmd.arg("serve");
        if !args.contains(&"--listen") && !env.iter().any(|(k, _)| *k == "HERALD_LISTEN") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        cmd.args(args)
            .env("HERALD_LOG", "info,herald=debug")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", self.bin.display()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let err_pipe = child.stderr.take().expect("stderr");
        let sink = stderr.clone();
        let stderr_reader = std::thread::spawn(move || {
            for line in BufReader::new(err_pipe).lines().map_while(Result::ok) {
                let mut s = sink.lock().expect("lock");
                s.push_str(&line);
                s.push('\n');
            }
        });
        // The first stdout line names the ports.
        let rx = crate::backend::first_line(child.stdout.take().expect("stdout"));
        let line = match rx.recv_timeout(TIMEOUT) {
            Ok(Some(line)) => line,
            outcome => {
                let _ = child.kill();
                let status = child.wait().expect("wait");
                // The pipe closes with the process: the reader has everything.
                let _ = stderr_reader.join();
                panic!(
                    "herald did not report its ports ({}; {status}); stderr:\n{}",
                    if outcome.is_err() {
                        "nothing on stdout within the timeout"
                    } else {
                        "stdout closed"
                    },
                    stderr.lock().expect("lock")
                );
            }
        };
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .unwrap_or_else(|| panic!("no {k} in {line:?}"))
                .to_owned()
        };
        Gateway {
            public: field("public=").parse().expect("addr"),
            admin: field("admin=").parse().expect("addr"),
            node: field("node="),
            child: Some(child),
            stderr,
        }
    }

    /// Runs `herald serve` expecting it to refuse to start; returns its stderr.
    pub fn fail_to_start(&self, args: &[&str], env: &[(&str, &str)]) -> String {
        let out = self
            .command()
            .arg("serve")
            .args(args)
            .envs(env.iter().copied())
            .output()
            .expect("run herald");
        assert!(!out.status.success(), "herald should have refused to start");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

/// A running `herald serve` process, killed (SIGKILL) when dropped.
pub struct Gateway {
    pub public: SocketAddr,
    /// Where the API, metrics and probes are: the admin listener, or the
    /// public one when there is none.
    pub admin: SocketAddr,
    pub node: String,
    child: Option<Child>,
    stderr: Arc<Mutex<String>>,
}

impl Gateway {
    /// Everything the node logged so far.
    pub fn logs(&self) -> String {
        self.stderr.lock().expect("lock").clone()
    }

    /// Waits until the node's log contains `needle`; false after [`TIMEOUT`].
    pub async fn log_contains(&self, needle: &str) -> bool {
        let deadline = Instant::now() + TIMEOUT;
        while !self.logs().contains(needle) {
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends a signal by name (`TERM`, `KILL`, …).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(ok.success());
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(st) = child.try_wait().expect("wait") {
                self.child = None;
                return st.code();
            }
            assert!(
                Instant::now() < deadline,
                "herald did not exit in {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub async fn client(&self) -> Client {
        Client::open(self.public).await
    }

    /// A client that has completed `connect`.
    pub async fn connected(&self) -> Client {
        let mut c = self.client().await;
        let r = c.request(json!({"op":"connect"})).await;
        assert_eq!(r["op"], "connected", "{r}");
        c
    }

    /// Publishes through the HTTP API; returns the status and the JSON answer.
    pub async fn publish(&self, channel: &str, event: &str, data: Value) -> (u16, Value) {
        http_post(
            self.admin,
            "/api/v1/publish",
            &json!({"channel": channel, "event": event, "data": data}).to_string(),
        )
        .await
    }

    /// Sum of the samples of a metric: every series of `name`, or exactly
    /// one when `name` carries labels as exported
    /// (`herald_disconnects_total{code="4502"}`).
    pub async fn metric(&self, name: &str) -> f64 {
        let (_, text) = http_get(self.admin, "/metrics").await;
        sum_samples(&text, name)
    }

    /// Status of `/readyz`.
    pub async fn ready(&self) -> u16 {
        http_get(self.admin, "/readyz").await.0
    }
}

fn sum_samples(exposition: &str, name: &str) -> f64 {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| {
            *series == name || (!name.contains('{') && series.starts_with(&format!("{name}{{")))
        })
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .sum()
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::sum_samples;

    #[test]
    fn metric_sums_a_family_or_one_series() {
        let text = "# TYPE x counter\nx{code=\"1\"} 2\nx{code=\"2\"} 3\nx_total 7\nxy 1\n";
        assert_eq!(sum_samples(text, "x"), 5.0);
        assert_eq!(sum_samples(text, "x{code=\"2\"}"), 3.0);
        assert_eq!(sum_samples(text, "x_total"), 7.0);
        assert_eq!(sum_samples(text, "nothing"), 0.0);
    }
}
