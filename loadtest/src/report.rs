//! The outcome of one run: a serde struct written as JSON with `--json` and
//! rendered as a human-readable table on stdout.

use crate::stats::{LatencySummary, SeqCounts};
use crate::sys::CpuReport;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    pub scenario: String,
    pub target: String,
    pub urls: Vec<String>,
    /// The scenario's settings, as run.
    pub params: serde_json::Value,
    pub clients: ClientsReport,
    pub delivery: Option<DeliveryReport>,
    pub churn: Option<ChurnReport>,
    /// The quiet phase and the attackers of a `flood` run (`delivery` is
    /// the phase under attack).
    pub flood: Option<FloodReport>,
    /// Drops and reconnects of a `jitter` run.
    pub jitter: Option<JitterReport>,
    /// Server memory per node (idle).
    pub memory: Vec<NodeMemory>,
    /// Kernel socket memory per connection, machine-wide (idle).
    pub kernel: Option<KernelPerConnection>,
    pub cpu: Option<CpuReport>,
    /// One point per second of the measured phase.
    pub series: Vec<SeriesPoint>,
    /// Reasons for a non-zero exit.
    pub problems: Vec<String>,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClientsReport {
    pub requested: u64,
    pub connected: u64,
    pub failed: u64,
    pub first_error: Option<String>,
    /// Seconds from the first connection attempt to the last one settled.
    pub setup_seconds: f64,
    /// Connections established per second of setup.
    pub connect_rate: f64,
    /// Connect + `connect` + subscribe time per client.
    pub connect_latency: Option<LatencySummary>,
}

impl ClientsReport {
    /// Every one of `clients` connected, in `setup_seconds`.
    pub fn all_set_up(clients: usize, setup_seconds: f64, latency: &crate::stats::Latency) -> Self {
        Self {
            requested: clients as u64,
            connected: clients as u64,
            failed: 0,
            first_error: None,
            setup_seconds,
            connect_rate: clients as f64 / setup_seconds.max(1e-9),
            connect_latency: Some(latency.summary()),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DeliveryReport {
    pub published: u64,
    pub publish_failed: u64,
    pub publish_first_error: Option<String>,
    pub publish_seconds: f64,
    pub publish_rate: f64,
    /// Subscribers that receive each publication.
    pub subscribers_per_message: u64,
    pub expected: u64,
    /// Distinct deliveries received (duplicates not included).
    pub delivered: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    pub deliveries_per_second: f64,
    pub clients_with_loss: u64,
    pub clients_with_duplicates: u64,
    pub clients_with_reordering: u64,
    /// Clients whose counts were not clean (first 1000).
    pub per_client_anomalies: Vec<ClientAnomaly>,
    /// Clients whose connection ended before the run did.
    pub clients_dropped: u64,
    pub first_drop_reason: Option<String>,
    /// Publish → receive latency.
    pub latency: LatencySummary,
    /// `(quantile, µs)` points of the latency distribution.
    pub latency_curve: Vec<(f64, u64)>,
}

/// Clients whose anomalies are listed one by one; the rest are only counted.
const MAX_ANOMALY_ROWS: usize = 1000;

impl DeliveryReport {
    /// Adds one client's sequence counts (and how its connection ended, if
    /// it ended early) to the totals.
    pub fn add_client(&mut self, client: usize, c: SeqCounts, ended: Option<&String>) {
        self.delivered += c.received;
        self.lost += c.lost;
        self.duplicated += c.duplicated;
        self.out_of_order += c.out_of_order;
        self.clients_with_loss += u64::from(c.lost > 0);
        self.clients_with_duplicates += u64::from(c.duplicated > 0);
        self.clients_with_reordering += u64::from(c.out_of_order > 0);
        if !c.clean() && self.per_client_anomalies.len() < MAX_ANOMALY_ROWS {
            self.per_client_anomalies
                .push(ClientAnomaly { client, counts: c });
        }
        if let Some(why) = ended {
            self.clients_dropped += 1;
            self.first_drop_reason.get_or_insert_with(|| why.clone());
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClientAnomaly {
    pub client: usize,
    #[serde(flatten)]
    pub counts: SeqCounts,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ChurnReport {
    pub started: u64,
    pub completed: u64,
    pub failed: u64,
    pub first_error: Option<String>,
    /// Connect + subscribe latency of churning clients.
    pub connect_subscribe: LatencySummary,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FloodReport {
    /// Attacker connections at a time.
    pub attackers: u64,
    pub commands_per_connection: u64,
    /// Attacker connections opened over the attack.
    pub attack_connections: u64,
    /// Commands the attackers sent.
    pub attack_commands: u64,
    pub attack_seconds: f64,
    pub attack_commands_per_second: f64,
    /// How attacker connections ended: by close code (`"4502"`), `reset`
    /// or `left open`.
    pub attack_closes: BTreeMap<String, u64>,
    pub first_attack_error: Option<String>,
    /// The same measurement before the attack.
    pub quiet: Option<DeliveryReport>,
    pub quiet_cpu: Option<CpuReport>,
}

/// What the clients of a `jitter` run went through. Expected deliveries
/// (in [`DeliveryReport::expected`]) are, per client, every publication made
/// after its first subscribe until publishing stopped.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct JitterReport {
    /// Delivered (distinct) over expected, in percent.
    pub delivered_percent: f64,
    /// Connections the clients dropped on purpose (no close frame).
    pub drops: u64,
    /// Reconnects that got the client subscribed again.
    pub reconnects: u64,
    /// Reconnect attempts that failed (each retried with backoff).
    pub reconnect_failures: u64,
    pub first_reconnect_error: Option<String>,
    /// Reconnects after which the missed messages were replayed.
    pub recovered: u64,
    /// Reconnects after which they were not: Herald `recovered: false`; a
    /// Socket.IO reconnect without a recovered session.
    pub unrecovered: u64,
    /// Herald: resumes refused (`resumed: false`), then subscribed with `since`.
    pub resubscribed: u64,
    /// Connections the server ended (close frame, `disconnect`, reset).
    pub server_closes: u64,
    pub first_server_close: Option<String>,
    /// Herald: resumes that came back in another epoch.
    pub epoch_changes: u64,
    /// Clients not connected when the run stopped.
    pub offline_at_end: u64,
    /// TCP connect to subscribed again, successful reconnects.
    pub reconnect_latency: LatencySummary,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NodeMemory {
    pub url: String,
    pub metrics_url: String,
    pub connections: u64,
    pub rss_before: u64,
    pub rss_after: u64,
    pub kib_per_connection: Option<f64>,
}

/// What the kernel held per connection while the connections were open:
/// deltas of [`crate::sys::KernelMemory`] over the ramp, divided by the
/// connections. On loopback this counts both ends of each connection.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct KernelPerConnection {
    pub connections: u64,
    /// Socket, inode, file and epoll structures (slab).
    pub slab_kib: f64,
    /// Queued TCP send and receive buffers.
    pub tcp_buffer_kib: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SeriesPoint {
    /// Seconds since the measured phase began.
    pub t: f64,
    pub delivered_per_second: f64,
    pub published_per_second: f64,
    pub connections: u64,
}

fn ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn latency_rows(out: &mut String, title: &str, l: &LatencySummary) {
    let _ = writeln!(
        out,
        "  {title:<24} p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  ({} samples)",
        ms(l.p50_us),
        ms(l.p90_us),
        ms(l.p99_us),
        ms(l.p999_us),
        ms(l.max_us),
        thousands(l.count)
    );
}

fn jitter_rows(o: &mut String, j: &JitterReport) {
    let _ = writeln!(
        o,
        "  {:<24} {:.3}%",
        "delivered of expected", j.delivered_percent
    );
    let _ = writeln!(
        o,
        "  {:<24} {} drops, {} reconnects, {} failed attempts, {} offline at the end",
        "drops",
        thousands(j.drops),
        thousands(j.reconnects),
        thousands(j.reconnect_failures),
        thousands(j.offline_at_end)
    );
    if let Some(e) = &j.first_reconnect_error {
        let _ = writeln!(o, "  {:<24} {e}", "first reconnect error");
    }
    let _ = writeln!(
        o,
        "  {:<24} {} recovered, {} unrecovered, {} resubscribed, {} epoch changes",
        "recovery",
        thousands(j.recovered),
        thousands(j.unrecovered),
        thousands(j.resubscribed),
        thousands(j.epoch_changes)
    );
    if j.server_closes > 0 {
        let _ = writeln!(
            o,
            "  {:<24} {} ({})",
            "closed by the server",
            thousands(j.server_closes),
            j.first_server_close.as_deref().unwrap_or("?")
        );
    }
    latency_rows(o, "reconnect", &j.reconnect_latency);
}

impl Report {
    /// The human-readable summary printed on stdout.
    pub fn table(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "herald-load {} against {} ({})",
            self.scenario,
            self.target,
            self.urls.join(", ")
        );
        let c = &self.clients;
        let _ = writeln!(
            o,
            "  {:<24} {} of {} ({} failed) in {:.1} s, {:.0}/s",
            "clients connected",
            thousands(c.connected),
            thousands(c.requested),
            thousands(c.failed),
            c.setup_seconds,
            c.connect_rate
        );
        if let Some(e) = &c.first_error {
            let _ = writeln!(o, "  {:<24} {e}", "first connect error");
        }
        if let Some(l) = &c.connect_latency {
            latency_rows(&mut o, "connect+subscribe", l);
        }
        if let Some(d) = &self.delivery {
            let _ = writeln!(
                o,
                "  {:<24} {} in {:.1} s ({:.0}/s), {} failed",
                "published",
                thousands(d.published),
                d.publish_seconds,
                d.publish_rate,
                thousands(d.publish_failed)
            );
            let _ = writeln!(
                o,
                "  {:<24} {} (× {} subscribers)",
                "expected deliveries",
                thousands(d.expected),
                thousands(d.subscribers_per_message)
            );
            let _ = writeln!(
                o,
                "  {:<24} {} ({:.0}/s)",
                "delivered",
                thousands(d.delivered),
                d.deliveries_per_second
            );
            let _ = writeln!(
                o,
                "  {:<24} lost {} ({} clients), duplicated {} ({}), out of order {} ({})",
                "anomalies",
                thousands(d.lost),
                d.clients_with_loss,
                thousands(d.duplicated),
                d.clients_with_duplicates,
                thousands(d.out_of_order),
                d.clients_with_reordering
            );
            if d.clients_dropped > 0 {
                let _ = writeln!(
                    o,
                    "  {:<24} {} ({})",
                    "connections dropped",
                    d.clients_dropped,
                    d.first_drop_reason.as_deref().unwrap_or("?")
                );
            }
            latency_rows(&mut o, "latency", &d.latency);
        }
        if let Some(f) = &self.flood {
            let closes: Vec<String> = f
                .attack_closes
                .iter()
                .map(|(how, n)| format!("{how} × {}", thousands(*n)))
                .collect();
            let _ = writeln!(
                o,
                "  {:<24} {} at a time, {} connections, {} commands ({:.0}/s); ended: {}",
                "attackers",
                f.attackers,
                thousands(f.attack_connections),
                thousands(f.attack_commands),
                f.attack_commands_per_second,
                if closes.is_empty() {
                    "none".to_owned()
                } else {
                    closes.join(", ")
                }
            );
            if let Some(e) = &f.first_attack_error {
                let _ = writeln!(o, "  {:<24} {e}", "first attacker error");
            }
            if let Some(q) = &f.quiet {
                let _ = writeln!(
                    o,
                    "  {:<24} {} of {} delivered; lost {}, duplicated {}, out of order {}",
                    "quiet phase",
                    thousands(q.delivered),
                    thousands(q.expected),
                    thousands(q.lost),
                    thousands(q.duplicated),
                    thousands(q.out_of_order)
                );
                latency_rows(&mut o, "latency, quiet", &q.latency);
            }
            if let Some(d) = &self.delivery {
                latency_rows(&mut o, "latency, under attack", &d.latency);
            }
        }
        if let Some(j) = &self.jitter {
            jitter_rows(&mut o, j);
        }
        if let Some(ch) = &self.churn {
            let _ = writeln!(
                o,
                "  {:<24} {} started, {} completed, {} failed",
                "churn",
                thousands(ch.started),
                thousands(ch.completed),
                thousands(ch.failed)
            );
            if let Some(e) = &ch.first_error {
                let _ = writeln!(o, "  {:<24} {e}", "first churn error");
            }
            latency_rows(&mut o, "churn connect+subscribe", &ch.connect_subscribe);
        }
        for m in &self.memory {
            let per = m
                .kib_per_connection
                .map_or_else(|| "n/a".to_owned(), |k| format!("{k:.1} KiB/conn"));
            let _ = writeln!(
                o,
                "  {:<24} {}: {} conns, RSS {:.1} → {:.1} MiB, {per}",
                "server memory",
                m.url,
                thousands(m.connections),
                m.rss_before as f64 / 1048576.0,
                m.rss_after as f64 / 1048576.0
            );
        }
        if let Some(k) = &self.kernel {
            let _ = writeln!(
                o,
                "  {:<24} {:.1} KiB/conn slab + {:.1} KiB/conn TCP buffers (machine-wide; on loopback both ends)",
                "kernel memory", k.slab_kib, k.tcp_buffer_kib
            );
        }
        if let Some(cpu) = &self.cpu {
            let _ = writeln!(
                o,
                "  {:<24} {:.1} s CPU over {:.1} s = {:.0}% of {} cores",
                "load client CPU",
                cpu.cpu_seconds,
                cpu.wall_seconds,
                cpu.percent_of_cores,
                cpu.cores
            );
        }
        for w in &self.warnings {
            let _ = writeln!(o, "  warning: {w}");
        }
        for p in &self.problems {
            let _ = writeln!(o, "  PROBLEM: {p}");
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
    }

    #[test]
    fn table_mentions_the_numbers() {
        let r = Report {
            scenario: "fanout".to_owned(),
            target: "herald".to_owned(),
            delivery: Some(DeliveryReport {
                published: 500,
                delivered: 10_000,
                ..DeliveryReport::default()
            }),
            problems: vec!["boom".to_owned()],
            ..Report::default()
        };
        let t = r.table();
        assert!(t.contains("10,000") && t.contains("PROBLEM: boom"), "{t}");
        let json = serde_json::to_string(&r).expect("serializes");
        let back: Report = serde_json::from_str(&json).expect("round trip");
        assert_eq!(back.delivery.map(|d| d.published), Some(500));
    }
}
