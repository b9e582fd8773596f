//! The `idle` scenario: ramp up many idle subscribed connections and read
//! each server's resident memory before and after, per connection.
//!
//! Connections come from several loopback source addresses (so ephemeral
//! ports do not run out) and, past what one process may hold, from worker
//! processes: the tool re-executes itself as `idle --worker`, each worker
//! ramps its share, prints one JSON line with its counts, and holds its
//! connections until its stdin closes.

use crate::cli::{IdleArgs, Target};
use crate::client::{Channels, ClientOutcome, ClientPlan, Hold, Run, Setup, run_client};
use crate::delivery::{endpoints, judge_cpu, target_name};
use crate::net::{self, Endpoint};
use crate::progress::Progress;
use crate::report::{ClientsReport, KernelPerConnection, NodeMemory, Report};
use crate::stats::Latency;
use crate::sys::{self, CpuMeter};
use anyhow::{Context, bail, ensure};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::ops::Range;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Connections per loopback source address (ephemeral ports are ~28k per address).
const PER_SOURCE: usize = 10_000;
/// Descriptors kept free for everything else in a process.
const FD_RESERVE: u64 = 256;

/// What a ramp (in-process or one worker) achieved; a worker prints it as one JSON line.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct RampResult {
    pub connected: u64,
    pub failed: u64,
    pub first_error: Option<String>,
    /// Connections established per URL, in `--url` order.
    pub per_url: Vec<u64>,
    pub seconds: f64,
    /// Connect + subscribe latency as `(µs, count)` pairs.
    pub latency: Vec<(u64, u64)>,
}

impl RampResult {
    fn absorb(&mut self, o: Self) {
        self.connected += o.connected;
        self.failed += o.failed;
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
        if self.per_url.len() < o.per_url.len() {
            self.per_url.resize(o.per_url.len(), 0);
        }
        for (a, b) in self.per_url.iter_mut().zip(&o.per_url) {
            *a += b;
        }
        self.seconds = self.seconds.max(o.seconds);
        let mut l = Latency::from_pairs(&self.latency);
        l.merge(&Latency::from_pairs(&o.latency));
        self.latency = l.pairs();
    }
}

fn check(a: &IdleArgs) -> anyhow::Result<()> {
    ensure!(a.clients > 0, "need at least one client");
    ensure!(
        a.connect_rate > 0.0 && a.connect_rate.is_finite(),
        "--connect-rate must be positive"
    );
    ensure!(a.hold >= 0.0 && a.hold.is_finite(), "--hold must be >= 0");
    ensure!(
        matches!(a.common.target, Target::Herald | Target::HeraldSse) || a.channels_per_client <= 1,
        "the Socket.IO peer has one room: --channels-per-client does not apply"
    );
    Ok(())
}

fn sources_for(a: &IdleArgs, eps: &[Arc<Endpoint>]) -> usize {
    if !eps.iter().all(|e| e.is_loopback_v4()) {
        return 1;
    }
    a.source_addrs
        .unwrap_or_else(|| a.clients.div_ceil(PER_SOURCE))
        .clamp(1, 254)
}

/// Opens clients `range` (global indices) at `rate` per second; keeps them open until `run.stop`.
async fn ramp(
    a: &IdleArgs,
    eps: &[Arc<Endpoint>],
    range: Range<usize>,
    rate: f64,
    sources: usize,
    run: &Arc<Run>,
) -> (RampResult, Vec<JoinHandle<ClientOutcome>>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Setup>();
    let start = tokio::time::Instant::now();
    let k = u32::try_from(a.channels_per_client).unwrap_or(u32::MAX);
    let mut handles = Vec::with_capacity(range.len());
    for (n, i) in range.enumerate() {
        tokio::time::sleep_until(start + Duration::from_secs_f64(n as f64 / rate)).await;
        let plan = ClientPlan {
            index: i,
            ep: eps[i % eps.len()].clone(),
            source: net::source_addr(i, sources),
            target: a.common.target,
            channels: Channels {
                prefix: Arc::from("idle-"),
                first: u32::try_from(i).unwrap_or(u32::MAX).saturating_mul(k),
                count: k,
            },
            slot: None,
            measure: false,
            hold: Hold::UntilStop,
        };
        handles.push(tokio::spawn(run_client(
            plan,
            run.clone(),
            None,
            tx.clone(),
        )));
    }
    drop(tx);
    let mut out = RampResult {
        per_url: vec![0; eps.len()],
        ..RampResult::default()
    };
    let mut lat = Latency::new();
    while let Some(s) = rx.recv().await {
        match s.result {
            Ok(d) => {
                out.connected += 1;
                out.per_url[s.index % eps.len()] += 1;
                lat.record_duration(d);
            }
            Err(e) => {
                out.failed += 1;
                out.first_error.get_or_insert(e);
            }
        }
    }
    out.seconds = start.elapsed().as_secs_f64();
    out.latency = lat.pairs();
    (out, handles)
}

/// Worker mode: ramp, print one JSON line, hold until stdin closes.
pub async fn worker(a: IdleArgs) -> anyhow::Result<()> {
    check(&a)?;
    let eps = endpoints(&a.common.urls).await?;
    let sources = a.source_addrs.unwrap_or(1).clamp(1, 254);
    let run = Run::new(0);
    let range = a.client_offset..a.client_offset + a.clients;
    let (result, _handles) = ramp(&a, &eps, range, a.connect_rate, sources, &run).await;
    println!("{}", serde_json::to_string(&result)?);
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    while stdin.read(&mut buf).await.map(|n| n > 0).unwrap_or(false) {}
    run.stop.cancel();
    Ok(())
}

/// A running worker process.
struct Worker {
    child: tokio::process::Child,
    pid: Option<u32>,
}

async fn spawn_workers(
    a: &IdleArgs,
    count: usize,
    sources: usize,
) -> anyhow::Result<(Vec<Worker>, RampResult)> {
    let exe = match &a.worker_exe {
        Some(p) => p.clone(),
        None => std::env::current_exe().context("locating this executable for worker processes")?,
    };
    let per = a.clients.div_ceil(count);
    let mut workers = Vec::with_capacity(count);
    let mut lines = Vec::with_capacity(count);
    for w in 0..count {
        let offset = w * per;
        let n = per.min(a.clients - offset);
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.arg("idle")
            .arg("--worker")
            .arg("--quiet")
            .args(["--target", a.common.target.name()])
            .args(["--clients", &n.to_string()])
            .args(["--client-offset", &offset.to_string()])
            .args(["--channels-per-client", &a.channels_per_client.to_string()])
            .args([
                "--connect-rate",
                &(a.connect_rate / count as f64).to_string(),
            ])
            .args(["--source-addrs", &sources.to_string()]);
        for u in &a.common.urls {
            cmd.args(["--url", u]);
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting worker process {}", exe.display()))?;
        let stdout = child.stdout.take().context("worker stdout")?;
        lines.push(tokio::spawn(async move {
            BufReader::new(stdout).lines().next_line().await
        }));
        workers.push(Worker {
            pid: child.id(),
            child,
        });
    }
    let mut total = RampResult::default();
    let limit =
        Duration::from_secs_f64(a.clients as f64 / a.connect_rate) + Duration::from_secs(60);
    for (w, line) in lines.into_iter().enumerate() {
        let line = tokio::time::timeout(limit, line)
            .await
            .with_context(|| format!("worker {w} did not report within {limit:?}"))?
            .context("worker reader")?
            .context("reading a worker's report")?
            .with_context(|| format!("worker {w} exited without a report"))?;
        let r: RampResult = serde_json::from_str(&line)
            .with_context(|| format!("worker {w} printed an unexpected line: {line}"))?;
        total.absorb(r);
    }
    Ok((workers, total))
}

/// Resident memory of a server in bytes: Herald's `/metrics` or the peer's `/stats`.
pub async fn rss(target: Target, ep: &Endpoint) -> anyhow::Result<u64> {
    let path = match target.server() {
        Target::Socketio => "/stats",
        _ => "/metrics",
    };
    let resp = net::http_get(ep, path).await?;
    if !resp.status.is_success() {
        bail!("GET {}{path}: {}", ep.url, resp.status);
    }
    let text = String::from_utf8_lossy(&resp.body);
    match target.server() {
        Target::Socketio => parse_stats_rss(&text),
        _ => parse_prometheus_rss(&text),
    }
    .with_context(|| format!("no resident memory in {}{path}", ep.url))
}

/// `process_resident_memory_bytes` from Prometheus text.
pub fn parse_prometheus_rss(text: &str) -> Option<u64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

/// `mem.rss` from the Socket.IO peer's `/stats` JSON.
pub fn parse_stats_rss(text: &str) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    v["mem"]["rss"].as_u64()
}

async fn read_all_rss(
    target: Target,
    eps: &[Arc<Endpoint>],
    warnings: &mut Vec<String>,
) -> Vec<Option<u64>> {
    let mut out = Vec::with_capacity(eps.len());
    for ep in eps {
        match rss(target, ep).await {
            Ok(v) => out.push(Some(v)),
            Err(e) => {
                warnings.push(format!(
                    "cannot read memory from {} (use --metrics-url?): {e:#}",
                    ep.url
                ));
                out.push(None);
            }
        }
    }
    out
}

pub async fn idle(a: IdleArgs) -> anyhow::Result<Report> {
    check(&a)?;
    let eps = endpoints(&a.common.urls).await?;
    let eps_plain: Vec<Endpoint> = eps.iter().map(|e| (**e).clone()).collect();
    net::preflight(&eps_plain, target_name(a.common.target)).await?;
    let metrics_eps = if a.metrics_urls.is_empty() {
        eps.clone()
    } else {
        ensure!(
            a.metrics_urls.len() == a.common.urls.len(),
            "give one --metrics-url per --url ({} vs {})",
            a.metrics_urls.len(),
            a.common.urls.len()
        );
        endpoints(&a.metrics_urls).await?
    };
    let sources = sources_for(&a, &eps);
    let cap = (a.max_per_process as u64)
        .min(sys::nofile_limit().saturating_sub(FD_RESERVE))
        .max(1);
    let workers = if a.clients as u64 > cap {
        a.clients
            .div_ceil(usize::try_from(cap).unwrap_or(usize::MAX))
    } else {
        0
    };

    let mut report = Report {
        scenario: "idle".to_owned(),
        target: a.common.target.name().to_owned(),
        urls: a.common.urls.clone(),
        params: json!({
            "clients": a.clients,
            "channels_per_client": a.channels_per_client,
            "connect_rate": a.connect_rate,
            "hold": a.hold,
            "source_addrs": sources,
            "worker_processes": workers,
        }),
        ..Report::default()
    };
    let before = read_all_rss(a.common.target, &metrics_eps, &mut report.warnings).await;
    let kernel_before = sys::kernel_memory();

    let run = Run::new(0);
    let progress = Progress::start(run.clone(), a.common.quiet, a.clients as u64);
    progress.begin_measuring();
    let cpu = CpuMeter::start();
    let (ramped, handles, mut procs) = if workers == 0 {
        progress.phase("ramping");
        let (r, h) = ramp(&a, &eps, 0..a.clients, a.connect_rate, sources, &run).await;
        (r, h, Vec::new())
    } else {
        progress.phase(&format!("ramping in {workers} worker processes"));
        match spawn_workers(&a, workers, sources).await {
            Ok((w, r)) => (r, Vec::new(), w),
            Err(e) => {
                progress.finish().await;
                return Err(e);
            }
        }
    };
    progress.phase("holding");
    tokio::time::sleep(Duration::from_secs_f64(a.hold)).await;
    let after = read_all_rss(a.common.target, &metrics_eps, &mut report.warnings).await;
    let kernel_after = sys::kernel_memory();
    let worker_cpu: f64 = procs
        .iter()
        .filter_map(|w| w.pid.and_then(|p| sys::cpu_seconds(Some(p))))
        .sum();
    report.cpu = Some(cpu.finish(worker_cpu));

    // Close everything.
    run.stop.cancel();
    let mut dropped = 0u64;
    let mut first_drop = None;
    for h in handles {
        if let Ok(o) = h.await
            && o.set_up
            && let Some(e) = o.ended
        {
            dropped += 1;
            first_drop.get_or_insert(e);
        }
    }
    for w in &mut procs {
        drop(w.child.stdin.take());
    }
    for w in &mut procs {
        if tokio::time::timeout(Duration::from_secs(10), w.child.wait())
            .await
            .is_err()
        {
            let _ = w.child.kill().await;
        }
    }
    progress.finish().await;

    let latency = Latency::from_pairs(&ramped.latency);
    report.clients = ClientsReport {
        requested: a.clients as u64,
        connected: ramped.connected,
        failed: ramped.failed,
        first_error: ramped.first_error.clone(),
        setup_seconds: ramped.seconds,
        connect_rate: ramped.connected as f64 / ramped.seconds.max(1e-9),
        connect_latency: Some(latency.summary()),
    };
    // URLs that share a metrics endpoint are one server process.
    for (i, ep) in eps.iter().enumerate() {
        let murl = &metrics_eps[i].url;
        if metrics_eps[..i].iter().any(|m| &m.url == murl) {
            continue;
        }
        let conns: u64 = (0..eps.len())
            .filter(|&j| &metrics_eps[j].url == murl)
            .map(|j| ramped.per_url.get(j).copied().unwrap_or(0))
            .sum();
        let (b, af) = (before[i], after[i]);
        report.memory.push(NodeMemory {
            url: ep.url.clone(),
            metrics_url: murl.clone(),
            connections: conns,
            rss_before: b.unwrap_or(0),
            rss_after: af.unwrap_or(0),
            kib_per_connection: match (b, af) {
                (Some(b), Some(af)) if conns > 0 => {
                    Some((af as f64 - b as f64) / conns as f64 / 1024.0)
                }
                _ => None,
            },
        });
    }
    if let (Some(b), Some(af)) = (kernel_before, kernel_after)
        && ramped.connected > 0
    {
        let per = |x: u64, y: u64| (y as f64 - x as f64) / ramped.connected as f64 / 1024.0;
        report.kernel = Some(KernelPerConnection {
            connections: ramped.connected,
            slab_kib: per(b.slab_bytes, af.slab_bytes),
            tcp_buffer_kib: per(b.tcp_buffer_bytes, af.tcp_buffer_bytes),
        });
    }
    if report
        .memory
        .iter()
        .any(|m| m.kib_per_connection.is_some_and(|k| k < 0.0))
    {
        report.warnings.push(
            "a server's memory shrank during the ramp (garbage collection or freed caches); \
             use more connections or a longer --hold for a meaningful per-connection figure"
                .to_owned(),
        );
    }
    if ramped.failed > 0 {
        report.problems.push(format!(
            "{} of {} connections failed; first error: {}",
            ramped.failed,
            a.clients,
            ramped.first_error.as_deref().unwrap_or("?")
        ));
    }
    if dropped > 0 {
        report.problems.push(format!(
            "{dropped} connections ended during the hold; first: {}",
            first_drop.unwrap_or_default()
        ));
    }
    judge_cpu(&mut report, a.common.allow_client_bound);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_memory_from_both_servers() {
        let prom = "# HELP process_resident_memory_bytes Resident memory size in bytes.\n\
                    # TYPE process_resident_memory_bytes gauge\n\
                    process_resident_memory_bytes 1.2345e7\n\
                    process_virtual_memory_bytes 9e9\n";
        assert_eq!(parse_prometheus_rss(prom), Some(12_345_000));
        assert_eq!(parse_prometheus_rss("x 1\n"), None);
        let stats = r#"{"port":4001,"clients":3,"mem":{"rss":52428800,"heapUsed":1}}"#;
        assert_eq!(parse_stats_rss(stats), Some(52_428_800));
    }

    #[test]
    fn ramp_results_add_up() {
        let mut l = Latency::new();
        l.record(100);
        let mut a = RampResult {
            connected: 2,
            per_url: vec![1, 1],
            latency: l.pairs(),
            ..RampResult::default()
        };
        a.absorb(RampResult {
            connected: 3,
            failed: 1,
            first_error: Some("x".to_owned()),
            per_url: vec![2, 1],
            seconds: 1.5,
            latency: l.pairs(),
        });
        assert_eq!(
            (a.connected, a.failed, a.per_url.clone()),
            (5, 1, vec![3, 2])
        );
        assert_eq!(Latency::from_pairs(&a.latency).count(), 2);
        assert_eq!(a.first_error.as_deref(), Some("x"));
    }
}
