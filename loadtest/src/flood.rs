//! The `flood` scenario: what abusive connections do to everyone else.
//!
//! Bystanders (a one-channel fan-out, publications through the HTTP API) are
//! measured twice in one run: quiet, then while attacker connections blast
//! commands (emits, subscribes and pings in turn) without reading, each
//! coming back as soon as the node closes it. The report sets the two
//! latency distributions side by side, with what the attackers sent and how
//! their connections ended; the delivery books of both phases must balance.
//!
//! The attackers run on their own thread and runtime, so they compete with
//! the bystanders for the machine, not for the measuring runtime.

use crate::cli::{Common, DeliveryArgs, FanoutArgs, FloodArgs, PublishVia};
use crate::delivery::{self, endpoints, target_name};
use crate::net::{self, Endpoint, Ws};
use crate::report::{FloodReport, Report};
use anyhow::ensure;
use fastwebsockets::{Frame, OpCode, Payload};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What an attacker sends, in turn.
const COMMANDS: [&[u8]; 3] = [
    br#"{"op":"emit","channel":"spam","event":"e","data":{"x":[1,2,3]}}"#,
    br#"{"op":"subscribe","channel":"spam"}"#,
    br#"{"op":"ping"}"#,
];
/// How long the node has to close an attacker connection once it has sent
/// everything; past that the connection counts as left open.
const CLOSE_WAIT: Duration = Duration::from_secs(10);
/// Bound on waiting for the attack to take hold before measuring.
const ATTACK_START: Duration = Duration::from_secs(30);

pub async fn flood(a: FloodArgs) -> anyhow::Result<Report> {
    ensure!(a.attackers > 0, "--attackers must be at least 1");
    ensure!(
        a.commands_per_connection > 0,
        "--commands-per-connection must be at least 1"
    );
    let eps = endpoints(&a.common.urls).await?;
    net::preflight(&[(*eps[0]).clone()], target_name(a.common.target)).await?;
    let say = |what: &str| {
        if !a.common.quiet {
            eprintln!("flood: {what}");
        }
    };

    say("quiet phase");
    let quiet = delivery::fanout(phase_args(&a, a.common.allow_client_bound)).await?;

    say("starting the attackers");
    let attack = Attack::start(eps[0].clone(), a.attackers, a.commands_per_connection);
    let mut ended = attack.ended.subscribe();
    // Measured only once the node has dealt with a first attacker: the
    // defences are then demonstrably in play. (The guard `wait_for` returns
    // is dropped at once: it would block the attackers' updates.)
    let started = tokio::time::timeout(ATTACK_START, async {
        ended.wait_for(|n| *n > 0).await.is_ok()
    })
    .await;
    if started != Ok(true) {
        let r = attack.stop();
        anyhow::bail!(
            "no attacker connection ended within {ATTACK_START:?} ({} opened; first error: {})",
            r.attack_connections,
            r.first_attack_error.as_deref().unwrap_or("none")
        );
    }
    say("under attack");
    // The attackers burn CPU in this process by design: a busy client is
    // reported, not fatal, in this phase.
    let flooded = delivery::fanout(phase_args(&a, true)).await;
    let mut fr = attack.stop();
    let flooded = flooded?;

    let mut report = Report {
        scenario: "flood".to_owned(),
        params: json!({
            "subscribers": a.subscribers,
            "rate": a.rate,
            "duration": a.duration,
            "payload": a.payload,
            "publishers": a.publishers,
            "grace": a.grace,
            "attackers": a.attackers,
            "commands_per_connection": a.commands_per_connection,
        }),
        ..flooded
    };
    let phases = |quiet: Vec<String>, attacked: Vec<String>| -> Vec<String> {
        let quiet = quiet.into_iter().map(|p| format!("quiet phase: {p}"));
        let attacked = attacked.into_iter().map(|p| format!("under attack: {p}"));
        quiet.chain(attacked).collect()
    };
    report.problems = phases(quiet.problems, std::mem::take(&mut report.problems));
    report.warnings = phases(quiet.warnings, std::mem::take(&mut report.warnings));
    let closed_by_node: u64 = fr
        .attack_closes
        .iter()
        .filter(|(k, _)| k.parse::<u16>().is_ok())
        .map(|(_, n)| n)
        .sum();
    if closed_by_node == 0 {
        report
            .problems
            .push("the node closed none of the attacker connections".to_owned());
    }
    fr.quiet = quiet.delivery;
    fr.quiet_cpu = quiet.cpu;
    report.flood = Some(fr);
    Ok(report)
}

/// One phase: a fan-out of `subscribers` on one channel, published through the API.
fn phase_args(a: &FloodArgs, allow_client_bound: bool) -> FanoutArgs {
    FanoutArgs {
        common: Common {
            json: None,
            plot: None,
            allow_client_bound,
            ..a.common.clone()
        },
        delivery: DeliveryArgs {
            rate: a.rate,
            duration: a.duration,
            payload: a.payload,
            publish_via: PublishVia::Api,
            redis_url: None,
            publishers: a.publishers,
            grace: a.grace,
            connect_concurrency: 256,
        },
        clients: a.subscribers,
        channels: 1,
    }
}

/// Counters shared with the attacker thread.
#[derive(Default)]
struct Tally {
    connections: AtomicU64,
    commands: AtomicU64,
    /// How connections ended: a close code, `reset` or `left open`.
    closes: Mutex<BTreeMap<String, u64>>,
    first_error: Mutex<Option<String>>,
}

impl Tally {
    fn ended(&self, how: String) {
        *lock(&self.closes).entry(how).or_default() += 1;
    }

    fn error(&self, e: String) {
        lock(&self.first_error).get_or_insert(e);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The attacker thread and what it has done so far.
struct Attack {
    tally: Arc<Tally>,
    /// Attacker connections that have ended.
    ended: watch::Sender<u64>,
    stop: CancellationToken,
    thread: std::thread::JoinHandle<()>,
    attackers: usize,
    commands_per_connection: usize,
    started: Instant,
}

impl Attack {
    fn start(ep: Arc<Endpoint>, attackers: usize, commands_per_connection: usize) -> Self {
        let tally = Arc::new(Tally::default());
        let (ended, _) = watch::channel(0u64);
        let stop = CancellationToken::new();
        let thread = {
            let (tally, ended, stop) = (tally.clone(), ended.clone(), stop.clone());
            std::thread::spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => return tally.error(format!("attacker runtime: {e}")),
                };
                rt.block_on(async move {
                    let tasks: Vec<_> = (0..attackers)
                        .map(|_| {
                            tokio::spawn(attacker(
                                ep.clone(),
                                commands_per_connection,
                                tally.clone(),
                                ended.clone(),
                                stop.clone(),
                            ))
                        })
                        .collect();
                    for t in tasks {
                        let _ = t.await;
                    }
                });
            })
        };
        Self {
            tally,
            ended,
            stop,
            thread,
            attackers,
            commands_per_connection,
            started: Instant::now(),
        }
    }

    /// Stops every attacker and sums up what they did.
    fn stop(self) -> FloodReport {
        self.stop.cancel();
        let seconds = self.started.elapsed().as_secs_f64();
        if self.thread.join().is_err() {
            self.tally.error("the attacker thread panicked".to_owned());
        }
        let commands = self.tally.commands.load(Ordering::Relaxed);
        FloodReport {
            attackers: self.attackers as u64,
            commands_per_connection: self.commands_per_connection as u64,
            attack_connections: self.tally.connections.load(Ordering::Relaxed),
            attack_commands: commands,
            attack_seconds: seconds,
            attack_commands_per_second: commands as f64 / seconds.max(1e-9),
            attack_closes: lock(&self.tally.closes).clone(),
            first_attack_error: lock(&self.tally.first_error).clone(),
            ..FloodReport::default()
        }
    }
}

/// One attacker: connect, blast, wait to be closed, come back; until `stop`.
async fn attacker(
    ep: Arc<Endpoint>,
    commands: usize,
    tally: Arc<Tally>,
    ended: watch::Sender<u64>,
    stop: CancellationToken,
) {
    while !stop.is_cancelled() {
        let mut ws = match net::ws_connect(&ep, "/ws", None).await {
            Ok(ws) => ws,
            Err(e) => {
                tally.error(format!("connecting: {e:#}"));
                // Refused (e.g. the node is full): try again shortly, not in a hot loop.
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            }
        };
        tally.connections.fetch_add(1, Ordering::Relaxed);
        let how = tokio::select! {
            () = stop.cancelled() => return,
            how = blast(&mut ws, commands, &tally) => how,
        };
        tally.ended(how);
        ended.send_modify(|n| *n += 1);
    }
}

/// Sends `connect` and `commands` commands without reading, then reads
/// until the node closes the connection; returns how it ended.
async fn blast(ws: &mut Ws, commands: usize, tally: &Tally) -> String {
    let mut sent = 0u64;
    let connect: &[u8] = br#"{"op":"connect"}"#;
    let frames = std::iter::once(connect).chain(COMMANDS.iter().copied().cycle());
    for cmd in frames.take(commands + 1) {
        let mut buf = [0u8; 96];
        let n = cmd.len().min(buf.len());
        buf[..n].copy_from_slice(&cmd[..n]);
        if ws
            .write_frame(Frame::text(Payload::BorrowedMut(&mut buf[..n])))
            .await
            .is_err()
        {
            // The node is already gone from this connection; its close
            // frame may still be waiting to be read.
            break;
        }
        sent += 1;
    }
    tally.commands.fetch_add(sent, Ordering::Relaxed);
    let read_close = async {
        loop {
            match ws.read_frame().await {
                Ok(f) if f.opcode == OpCode::Close => {
                    return match f.payload.get(..2) {
                        Some(&[a, b]) => u16::from_be_bytes([a, b]).to_string(),
                        _ => "close without a code".to_owned(),
                    };
                }
                Ok(_) => {}
                Err(_) => return "reset".to_owned(),
            }
        }
    };
    tokio::time::timeout(CLOSE_WAIT, read_close)
        .await
        .unwrap_or_else(|_| "left open".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attacker_commands_are_valid_json_and_fit_the_buffer() {
        for c in COMMANDS {
            assert!(c.len() <= 96);
            let v: serde_json::Value = serde_json::from_slice(c).expect("JSON");
            assert!(v["op"].is_string());
        }
    }
}
