//! Admission: who may open a connection, before any session exists.
//!
//! Part of the server, between the listener's accept and HTTP. Every public
//! connection is charged to its client address: a cap on concurrent
//! connections (counting sockets that have not finished their HTTP request
//! yet) and a token-bucket connection rate. The client address is the
//! socket's peer, or what a trusted proxy says it is (PROXY protocol header,
//! or `X-Forwarded-For`/`Forwarded` on the request); a header from anyone
//! else is ignored. Near the process's file-descriptor limit, public
//! connections are refused early so probes, the admin listener and existing
//! sessions keep working.

use crate::metrics::{RefuseReason, metrics};
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Per-address limits; 0 turns one off.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) max_per_ip: usize,
    /// Sustained new connections per second per address.
    pub(crate) rate_per_ip: u32,
    /// New connections an address may open in a burst.
    pub(crate) burst_per_ip: u32,
}

const SHARDS: usize = 32;

/// What one address holds now.
struct Entry {
    open: usize,
    tokens: f64,
    last: Instant,
}

/// Per-address connection counts and rates, sharded.
pub(crate) struct PerAddress {
    limits: Limits,
    shards: Box<[Mutex<HashMap<IpAddr, Entry>>]>,
    hasher: RandomState,
}

/// A connection's place in its address's count; given back on drop.
pub(crate) struct AddressSlot {
    owner: Arc<PerAddress>,
    ip: IpAddr,
}

impl PerAddress {
    pub(crate) fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
        })
    }

    fn shard(&self, ip: &IpAddr) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Entry>> {
        let i = (self.hasher.hash_one(ip) as usize) % SHARDS;
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Charges one new connection to `ip`, or says why not.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<AddressSlot, RefuseReason> {
        self.admit_at(ip, Instant::now())
    }

    fn admit_at(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<AddressSlot, RefuseReason> {
        let l = self.limits;
        let mut map = self.shard(&ip);
        let e = map.entry(ip).or_insert(Entry {
            open: 0,
            tokens: f64::from(l.burst_per_ip),
            last: now,
        });
        // Every attempt costs a token, refused or not: an address that keeps
        // knocking at its cap is slowed down when its held sockets time out,
        // instead of refilling them all at once.
        if l.rate_per_ip > 0 {
            let refill = now.duration_since(e.last).as_secs_f64() * f64::from(l.rate_per_ip);
            e.tokens = (e.tokens + refill).min(f64::from(l.burst_per_ip));
            e.last = now;
            if e.tokens < 1.0 {
                return Err(RefuseReason::PerIpRate);
            }
            e.tokens -= 1.0;
        }
        if l.max_per_ip > 0 && e.open >= l.max_per_ip {
            return Err(RefuseReason::PerIp);
        }
        e.open += 1;
        Ok(AddressSlot {
            owner: Arc::clone(self),
            ip,
        })
    }

    /// Connections open from `ip` now.
    #[cfg(test)]
    pub(crate) fn open(&self, ip: IpAddr) -> usize {
        self.shard(&ip).get(&ip).map_or(0, |e| e.open)
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let l = self.owner.limits;
        let mut map = self.owner.shard(&self.ip);
        if let Some(e) = map.get_mut(&self.ip) {
            e.open = e.open.saturating_sub(1);
            // Forget an idle address once its bucket is full again, so the
            // map holds only addresses with connections or recent bursts.
            let full = l.rate_per_ip == 0
                || e.tokens + e.last.elapsed().as_secs_f64() * f64::from(l.rate_per_ip)
                    >= f64::from(l.burst_per_ip);
            if e.open == 0 && full {
                map.remove(&self.ip);
            }
        }
    }
}

/// Proxies whose word about the client address is taken: single addresses
/// or CIDR ranges (`10.0.0.0/8`, `fd00::/8`).
#[derive(Debug, Clone, Default)]
pub(crate) struct TrustedProxies(Vec<(IpAddr, u8)>);

impl TrustedProxies {
    /// Parses `addr` or `addr/len` entries; the error names the bad one.
    pub(crate) fn parse(entries: &[String]) -> Result<Self, String> {
        let mut out = Vec::new();
        for e in entries {
            let (addr, len) = match e.split_once('/') {
                Some((a, l)) => (a, Some(l)),
                None => (e.as_str(), None),
            };
            let ip: IpAddr = addr
                .trim()
                .parse()
                .map_err(|_| format!("trusted proxy {e:?}: not an IP address or CIDR range"))?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let len =
                match len {
                    None => max,
                    Some(l) => l.parse::<u8>().ok().filter(|l| *l <= max).ok_or_else(|| {
                        format!("trusted proxy {e:?}: prefix length must be 0-{max}")
                    })?,
                };
            out.push((ip, len));
        }
        Ok(Self(out))
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0
            .iter()
            .any(|(net, len)| in_range(ip, canonical(*net), *len))
    }

    /// The client behind a trusted `peer`, from `X-Forwarded-For` (or
    /// `Forwarded: for=`) values in header order: the rightmost address that
    /// is not itself a trusted proxy. Anything unparsable ends the walk.
    pub(crate) fn client_from_headers<'a>(
        &self,
        peer: IpAddr,
        forwarded_for: impl DoubleEndedIterator<Item = &'a str>,
    ) -> IpAddr {
        if !self.contains(peer) {
            return peer;
        }
        let mut client = peer;
        for hop in forwarded_for.rev() {
            let Some(ip) = parse_hop(hop) else { break };
            client = ip;
            if !self.contains(ip) {
                break;
            }
        }
        client
    }
}

/// The addresses of `X-Forwarded-For` and `Forwarded: for=` header values,
/// in order (a request normally has only one of the two).
pub(crate) fn forwarded_hops(headers: &axum::http::HeaderMap) -> Vec<&str> {
    let mut hops = Vec::new();
    for v in headers.get_all("x-forwarded-for") {
        if let Ok(s) = v.to_str() {
            hops.extend(s.split(',').map(str::trim));
        }
    }
    for v in headers.get_all(axum::http::header::FORWARDED) {
        let Ok(s) = v.to_str() else { continue };
        for element in s.split(',') {
            for pair in element.split(';') {
                if let Some((k, v)) = pair.trim().split_once('=') {
                    if k.eq_ignore_ascii_case("for") {
                        hops.push(v.trim().trim_matches('"'));
                    }
                }
            }
        }
    }
    hops
}

/// One hop: `1.2.3.4`, `1.2.3.4:5678`, `[::1]`, `[::1]:80`, or `::1`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    if let Ok(ip) = hop.parse() {
        return Some(ip);
    }
    if let Some(rest) = hop.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    hop.rsplit_once(':')?.0.parse().ok()
}

/// IPv4-mapped IPv6 addresses compare as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 @ IpAddr::V4(_) => v4,
    }
}

fn in_range(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

/// Keeps file descriptors in reserve for probes, the admin listener and
/// what existing sessions need (Redis, logs), by refusing public connections
/// once the process holds `limit - reserve` sockets.
pub(crate) struct FdBudget {
    open: AtomicUsize,
    ceiling: usize,
    /// Whether public connections are being refused for lack of descriptors
    /// (readiness reports it, so a load balancer sends traffic elsewhere).
    short: AtomicBool,
}

/// A socket counted against the budget; given back on drop.
pub(crate) struct FdSlot(Arc<FdBudget>);

impl FdBudget {
    /// `limit`: the process's descriptor limit; `reserve`: kept free of public connections.
    pub(crate) fn new(limit: usize, reserve: usize) -> Arc<Self> {
        Arc::new(Self {
            open: AtomicUsize::new(0),
            ceiling: limit.saturating_sub(reserve),
            short: AtomicBool::new(false),
        })
    }

    /// Counts one accepted socket; a public one is refused past the ceiling.
    pub(crate) fn take(self: &Arc<Self>, public: bool) -> Result<FdSlot, RefuseReason> {
        let n = self.open.fetch_add(1, Ordering::AcqRel) + 1;
        let slot = FdSlot(Arc::clone(self));
        if public && n > self.ceiling {
            if !self.short.swap(true, Ordering::AcqRel) {
                tracing::warn!(
                    open = n,
                    ceiling = self.ceiling,
                    "near the file descriptor limit: refusing public connections"
                );
            }
            return Err(RefuseReason::FdReserve);
        }
        Ok(slot)
    }

    /// True while public connections are refused for lack of descriptors.
    pub(crate) fn is_short(&self) -> bool {
        self.short.load(Ordering::Acquire)
    }

    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

impl Drop for FdSlot {
    fn drop(&mut self) {
        let n = self.0.open.fetch_sub(1, Ordering::AcqRel) - 1;
        // Recovered once a tenth of the reserve is free again (hysteresis).
        if n < self.0.ceiling.saturating_sub(self.0.ceiling / 10)
            && self.0.short.load(Ordering::Acquire)
        {
            self.0.short.store(false, Ordering::Release);
            tracing::info!(open = n, "file descriptors available again");
        }
    }
}

/// Counts a refusal.
pub(crate) fn refused(reason: RefuseReason) {
    metrics().refused(reason);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn caps_concurrent_connections_per_address() {
        let p = PerAddress::new(Limits {
            max_per_ip: 2,
            rate_per_ip: 0,
            burst_per_ip: 0,
        });
        let a = p.admit(ip("10.0.0.1")).expect("1");
        let _b = p.admit(ip("10.0.0.1")).expect("2");
        assert_eq!(p.admit(ip("10.0.0.1")).err(), Some(RefuseReason::PerIp));
        assert!(
            p.admit(ip("10.0.0.2")).is_ok(),
            "other addresses unaffected"
        );
        drop(a);
        assert!(
            p.admit(ip("10.0.0.1")).is_ok(),
            "a closed slot is free again"
        );
    }

    #[test]
    fn rate_limits_new_connections_per_address() {
        let p = PerAddress::new(Limits {
            max_per_ip: 0,
            rate_per_ip: 10,
            burst_per_ip: 3,
        });
        let t0 = Instant::now();
        let held: Vec<_> = (0..3)
            .map(|_| p.admit_at(ip("10.0.0.1"), t0).expect("burst"))
            .collect();
        assert_eq!(
            p.admit_at(ip("10.0.0.1"), t0).err(),
            Some(RefuseReason::PerIpRate)
        );
        let later = t0 + Duration::from_millis(100);
        let _kept = p.admit_at(ip("10.0.0.1"), later).expect("refilled at 10/s");
        drop(held);
        assert_eq!(p.open(ip("10.0.0.1")), 1);
    }

    #[test]
    fn trusted_proxy_ranges_and_forwarded_chains() {
        let t = TrustedProxies::parse(&["10.0.0.0/8".into(), "::1".into()]).expect("valid");
        assert!(t.contains(ip("10.9.8.7")));
        assert!(t.contains(ip("::ffff:10.1.1.1")), "mapped IPv4");
        assert!(!t.contains(ip("11.0.0.1")));
        // Spoofed hop on the left, real client, then an inner proxy.
        let hops = ["6.6.6.6", "203.0.113.9", "10.0.0.5"];
        assert_eq!(
            t.client_from_headers(ip("10.0.0.1"), hops.into_iter()),
            ip("203.0.113.9")
        );
        // From an untrusted peer, headers are ignored.
        assert_eq!(
            t.client_from_headers(ip("198.51.100.1"), hops.into_iter()),
            ip("198.51.100.1")
        );
        // Garbage ends the walk at the last good address.
        let bad = ["203.0.113.9", "not-an-ip"];
        assert_eq!(
            t.client_from_headers(ip("10.0.0.1"), bad.into_iter()),
            ip("10.0.0.1")
        );
        assert!(TrustedProxies::parse(&["10.0.0.0/33".into()]).is_err());
        assert!(TrustedProxies::parse(&["proxy.local".into()]).is_err());
    }

    #[test]
    fn forwarded_header_forms() {
        let mut h = axum::http::HeaderMap::new();
        h.append("x-forwarded-for", "1.1.1.1, 2.2.2.2".parse().expect("v"));
        h.append(
            "forwarded",
            "for=\"[2001:db8::1]:443\";proto=https, for=3.3.3.3"
                .parse()
                .expect("v"),
        );
        let hops = forwarded_hops(&h);
        assert_eq!(hops, ["1.1.1.1", "2.2.2.2", "[2001:db8::1]:443", "3.3.3.3"]);
        assert_eq!(parse_hop(hops[2]), Some(ip("2001:db8::1")));
        assert_eq!(parse_hop("4.4.4.4:80"), Some(ip("4.4.4.4")));
    }

    #[test]
    fn refused_attempts_still_cost_a_token() {
        let p = PerAddress::new(Limits {
            max_per_ip: 1,
            rate_per_ip: 1,
            burst_per_ip: 3,
        });
        let t0 = Instant::now();
        let held = p.admit_at(ip("10.0.0.1"), t0).expect("first");
        for _ in 0..2 {
            assert_eq!(
                p.admit_at(ip("10.0.0.1"), t0).err(),
                Some(RefuseReason::PerIp)
            );
        }
        drop(held);
        // The cap is free again, but knocking at it used up the burst.
        assert_eq!(
            p.admit_at(ip("10.0.0.1"), t0).err(),
            Some(RefuseReason::PerIpRate)
        );
    }

    #[test]
    fn descriptor_reserve_refuses_public_connections_only() {
        let b = FdBudget::new(100, 10);
        let held: Vec<_> = (0..90)
            .map(|_| b.take(true).expect("under the ceiling"))
            .collect();
        assert_eq!(b.take(true).err(), Some(RefuseReason::FdReserve));
        assert!(b.is_short());
        let admin = b.take(false).expect("admin connections use the reserve");
        drop(admin);
        drop(held);
        assert!(!b.is_short(), "recovers once descriptors are free");
        assert_eq!(b.open(), 0);
    }
}
