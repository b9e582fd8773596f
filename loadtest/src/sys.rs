//! Process resources: the open-files limit and CPU time, read from /proc.
//!
//! Used to raise the descriptor limit before opening thousands of sockets
//! and to tell when the load client, rather than the server, was the
//! bottleneck of a run.

use serde::{Deserialize, Serialize};
use std::time::Instant;

/// Share of all cores above which the client counts as CPU-bound.
pub const CLIENT_BOUND_SHARE: f64 = 0.9;
/// `/proc/*/stat` times are in USER_HZ, which Linux fixes at 100 for user space.
const TICKS_PER_SEC: f64 = 100.0;

/// Raises the soft open-files limit to the hard limit; returns the new soft limit.
pub fn raise_nofile_limit() -> u64 {
    match rlimit::getrlimit(rlimit::Resource::NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            match rlimit::setrlimit(rlimit::Resource::NOFILE, hard, hard) {
                Ok(()) => hard,
                Err(_) => soft,
            }
        }
        Ok((soft, _)) => soft,
        Err(_) => 1024,
    }
}

/// The current soft open-files limit.
pub fn nofile_limit() -> u64 {
    rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
}

/// Cores this process may use.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

/// User + system CPU seconds of a process (`None`: this one).
pub fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    parse_stat_cpu(&std::fs::read_to_string(path).ok()?)
}

/// utime + stime (fields 14 and 15) of a `/proc/PID/stat` line, in seconds.
pub fn parse_stat_cpu(stat: &str) -> Option<f64> {
    // The command name may hold spaces and parentheses: fields restart after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / TICKS_PER_SEC)
}

/// How much CPU the load client used over the measured part of a run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CpuReport {
    pub cpu_seconds: f64,
    pub wall_seconds: f64,
    pub cores: usize,
    /// CPU time over wall time × cores, in percent.
    pub percent_of_cores: f64,
    pub client_bound: bool,
}

/// Measures this process's CPU time from creation to [`CpuMeter::finish`].
pub struct CpuMeter {
    start_cpu: f64,
    start: Instant,
}

impl Default for CpuMeter {
    fn default() -> Self {
        Self::start()
    }
}

impl CpuMeter {
    pub fn start() -> Self {
        Self {
            start_cpu: cpu_seconds(None).unwrap_or(0.0),
            start: Instant::now(),
        }
    }

    /// `extra`: CPU seconds of worker processes over the same period.
    pub fn finish(&self, extra: f64) -> CpuReport {
        let cpu = (cpu_seconds(None).unwrap_or(0.0) - self.start_cpu).max(0.0) + extra;
        verdict(cpu, self.start.elapsed().as_secs_f64(), cores())
    }
}

/// Builds the report for `cpu` seconds used over `wall` seconds on `cores` cores.
pub fn verdict(cpu: f64, wall: f64, cores: usize) -> CpuReport {
    let share = if wall > 0.0 {
        cpu / (wall * cores as f64)
    } else {
        0.0
    };
    CpuReport {
        cpu_seconds: cpu,
        wall_seconds: wall,
        cores,
        percent_of_cores: share * 100.0,
        // Very short runs read too coarse a clock to judge.
        client_bound: wall >= 0.5 && share > CLIENT_BOUND_SHARE,
    }
}

/// Kernel memory that sockets hold, machine-wide: what a connection costs
/// beyond the server's RSS. On loopback both ends count (the server's and
/// the load client's socket).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct KernelMemory {
    /// TCP sockets in use (`/proc/net/sockstat`).
    pub tcp_sockets: u64,
    /// TCP send and receive buffers (`/proc/net/sockstat` "mem", pages).
    pub tcp_buffer_bytes: u64,
    /// Slab (`/proc/meminfo`): socket, inode, file and epoll structures.
    pub slab_bytes: u64,
}

/// Reads [`KernelMemory`] now; `None` off Linux.
pub fn kernel_memory() -> Option<KernelMemory> {
    let sockstat = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_kernel_memory(&sockstat, &meminfo)
}

fn parse_kernel_memory(sockstat: &str, meminfo: &str) -> Option<KernelMemory> {
    let tcp = sockstat.lines().find(|l| l.starts_with("TCP:"))?;
    let field = |name: &str| -> Option<u64> {
        let mut it = tcp.split_whitespace();
        it.find(|w| *w == name)?;
        it.next()?.parse().ok()
    };
    let slab_kib: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("Slab:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(KernelMemory {
        tcp_sockets: field("inuse")?,
        tcp_buffer_bytes: field("mem")? * 4096,
        slab_bytes: slab_kib * 1024,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kernel_socket_memory() {
        let sockstat = "sockets: used 20\nTCP: inuse 10012 orphan 0 tw 3 alloc 10020 mem 7\nUDP: inuse 1 mem 0\n";
        let meminfo = "MemTotal: 24000000 kB\nSlab:  204800 kB\nSReclaimable: 1 kB\n";
        let k = parse_kernel_memory(sockstat, meminfo).expect("parsed");
        assert_eq!(k.tcp_sockets, 10012);
        assert_eq!(k.tcp_buffer_bytes, 7 * 4096);
        assert_eq!(k.slab_bytes, 204_800 * 1024);
        assert!(parse_kernel_memory("TCP: inuse x\n", meminfo).is_none());
    }

    #[test]
    fn parses_stat_with_awkward_names() {
        let line = "1234 (my (weird) prog) S 1 2 3 4 5 6 7 8 9 10 250 150 0 0 20 0 1 0 99 0 0";
        assert_eq!(parse_stat_cpu(line), Some(4.0));
        assert_eq!(parse_stat_cpu("garbage"), None);
        assert!(cpu_seconds(None).is_some());
    }

    #[test]
    fn client_bound_verdict() {
        assert!(verdict(1.9, 1.0, 2).client_bound);
        assert!(!verdict(1.0, 1.0, 2).client_bound);
        assert!(!verdict(0.2, 0.1, 2).client_bound);
        assert!((verdict(1.0, 1.0, 2).percent_of_cores - 50.0).abs() < 1e-9);
    }
}
