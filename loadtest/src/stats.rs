//! Delivery accounting: latency histograms and per-channel sequence checks.
//!
//! Latencies go into HDR histograms in microseconds. Connections never lock
//! per message: each keeps a small [`LatencyBatch`] and hands it to one of a
//! few shards of the shared [`LatencySink`] when it fills up or ages. Loss,
//! duplicates and reordering are detected per channel and connection by
//! [`SeqTracker`] from consecutive positions (Herald offsets or publisher
//! sequence numbers).

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Highest latency kept exactly (60 s); larger values saturate.
pub const MAX_LATENCY_US: u64 = 60_000_000;

/// Microseconds since the UNIX epoch.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// A latency histogram in microseconds.
#[derive(Clone)]
pub struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

impl Latency {
    pub fn new() -> Self {
        // 3 significant digits over 1 µs..60 s is ~128 KiB per histogram.
        Self(Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds"))
    }

    pub fn record(&mut self, us: u64) {
        self.0.saturating_record(us.max(1));
    }

    pub fn record_duration(&mut self, d: Duration) {
        self.record(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &Self) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.0.add(&other.0);
    }

    /// `(value, count)` of every recorded bucket, to ship a histogram as JSON.
    pub fn pairs(&self) -> Vec<(u64, u64)> {
        self.0
            .iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
            .collect()
    }

    /// Rebuilds a histogram from [`Latency::pairs`].
    pub fn from_pairs(pairs: &[(u64, u64)]) -> Self {
        let mut h = Self::new();
        for &(v, n) in pairs {
            let _ = h.0.record_n(v.clamp(1, MAX_LATENCY_US), n);
        }
        h
    }

    pub fn count(&self) -> u64 {
        self.0.len()
    }

    pub fn reset(&mut self) {
        self.0.reset();
    }

    /// Value at `q` (0..=1), 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.0.is_empty() {
            0
        } else {
            self.0.value_at_quantile(q)
        }
    }

    pub fn summary(&self) -> LatencySummary {
        let empty = self.0.is_empty();
        LatencySummary {
            count: self.count(),
            min_us: if empty { 0 } else { self.0.min() },
            mean_us: if empty { 0.0 } else { self.0.mean() },
            p50_us: self.quantile(0.5),
            p90_us: self.quantile(0.9),
            p99_us: self.quantile(0.99),
            p999_us: self.quantile(0.999),
            max_us: if empty { 0 } else { self.0.max() },
        }
    }

    /// `(quantile, µs)` points of the distribution, denser towards the tail.
    pub fn curve(&self) -> Vec<(f64, u64)> {
        if self.0.is_empty() {
            return Vec::new();
        }
        let mut pts: Vec<(f64, u64)> = self
            .0
            .iter_quantiles(4)
            .map(|v| (v.quantile_iterated_to(), v.value_iterated_to()))
            .collect();
        pts.dedup_by(|a, b| a.0 == b.0);
        pts
    }
}

/// Percentiles of one latency distribution.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LatencySummary {
    pub count: u64,
    pub min_us: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

/// The shared destination of every connection's latency batches.
pub struct LatencySink {
    shards: Vec<Mutex<Latency>>,
}

impl LatencySink {
    pub fn new(shards: usize) -> Self {
        Self {
            shards: (0..shards.max(1))
                .map(|_| Mutex::new(Latency::new()))
                .collect(),
        }
    }

    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    fn add(&self, shard: usize, samples: &[u32]) {
        let mut h = lock(&self.shards[shard % self.shards.len()]);
        for &s in samples {
            h.record(u64::from(s));
        }
    }

    /// Everything recorded so far, merged.
    pub fn snapshot(&self) -> Latency {
        let mut all = Latency::new();
        for s in &self.shards {
            all.merge(&lock(s));
        }
        all
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding a histogram leaves it usable.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Samples per batch: 256 bytes per connection.
pub const BATCH: usize = 64;
/// A batch older than this is flushed on the next sample.
const BATCH_AGE: Duration = Duration::from_millis(250);

/// One connection's pending latency samples.
pub struct LatencyBatch {
    buf: Vec<u32>,
    shard: usize,
    since: Instant,
}

impl LatencyBatch {
    pub fn new(shard: usize) -> Self {
        Self {
            buf: Vec::new(),
            shard,
            since: Instant::now(),
        }
    }

    /// Records one sample; flushes into `sink` when full or old.
    pub fn push(&mut self, us: u64, sink: &LatencySink) {
        if self.buf.capacity() == 0 {
            // Allocated once, on the first delivery.
            self.buf.reserve_exact(BATCH);
            self.since = Instant::now();
        }
        self.buf.push(u32::try_from(us).unwrap_or(u32::MAX));
        if self.buf.len() >= BATCH || self.since.elapsed() >= BATCH_AGE {
            self.flush(sink);
        }
    }

    pub fn flush(&mut self, sink: &LatencySink) {
        if !self.buf.is_empty() {
            sink.add(self.shard, &self.buf);
            self.buf.clear();
        }
        self.since = Instant::now();
    }
}

/// What one position did to a [`SeqTracker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    InOrder,
    /// Ahead of the expected position; the skipped ones count as lost until they arrive.
    Gap(u64),
    /// Behind, not seen before: fills an earlier gap.
    OutOfOrder,
    Duplicate,
}

/// Consecutive-position checker for one channel on one connection.
///
/// Remembers the last 64 positions, so a late arrival within that window is
/// told apart from a duplicate; older ones count as out of order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeqTracker {
    /// The next position expected in order.
    next: u64,
    /// Bit i set: position `next - 1 - i` was received.
    window: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
}

/// Final counts of one tracker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqCounts {
    pub received: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
}

impl SeqCounts {
    pub fn add(&mut self, o: &Self) {
        self.received += o.received;
        self.lost += o.lost;
        self.duplicated += o.duplicated;
        self.out_of_order += o.out_of_order;
    }

    pub fn clean(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.out_of_order == 0
    }
}

impl SeqTracker {
    /// Expects `first` as the first position.
    pub fn starting_at(first: u64) -> Self {
        Self {
            next: first,
            // Positions before `first` count as already seen.
            window: u64::MAX,
            ..Self::default()
        }
    }

    /// The next position expected in order.
    pub fn next(&self) -> u64 {
        self.next
    }

    pub fn observe(&mut self, pos: u64) -> Seen {
        if pos >= self.next {
            let gap = pos - self.next;
            let shift = gap + 1;
            self.window = if shift >= 64 {
                1
            } else {
                (self.window << shift) | 1
            };
            self.next = pos + 1;
            self.received += 1;
            if gap == 0 {
                Seen::InOrder
            } else {
                self.lost += gap;
                Seen::Gap(gap)
            }
        } else {
            let back = self.next - 1 - pos;
            if back < 64 && self.window & (1 << back) != 0 {
                self.duplicated += 1;
                return Seen::Duplicate;
            }
            if back < 64 {
                self.window |= 1 << back;
            }
            self.received += 1;
            self.out_of_order += 1;
            self.lost = self.lost.saturating_sub(1);
            Seen::OutOfOrder
        }
    }

    /// Closes the books: `end` is one past the last position published, so
    /// everything in `next..end` never arrived.
    pub fn finish(&self, end: u64) -> SeqCounts {
        SeqCounts {
            received: self.received,
            lost: self.lost + end.saturating_sub(self.next),
            duplicated: self.duplicated,
            out_of_order: self.out_of_order,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_percentiles_and_merge() {
        let mut a = Latency::new();
        for v in 1..=1000 {
            a.record(v);
        }
        let mut b = Latency::new();
        for v in 1001..=2000 {
            b.record(v);
        }
        a.merge(&b);
        let s = a.summary();
        assert_eq!(s.count, 2000);
        assert_eq!(s.min_us, 1);
        // 3 significant digits: within 0.1%.
        assert!((999..=1001).contains(&s.p50_us), "{s:?}");
        assert!((1797..=1802).contains(&s.p90_us), "{s:?}");
        assert!((1977..=1982).contains(&s.p99_us), "{s:?}");
        assert!((1995..=2001).contains(&s.max_us), "{s:?}");
        let curve = a.curve();
        assert!(
            curve
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1)
        );
        assert_eq!(Latency::new().summary(), LatencySummary::default());
        let back = Latency::from_pairs(&a.pairs());
        assert_eq!(back.summary(), a.summary());
    }

    #[test]
    fn extreme_latencies_saturate() {
        let mut a = Latency::new();
        a.record(0);
        a.record(u64::MAX);
        assert_eq!(a.count(), 2);
        assert!(a.summary().max_us >= MAX_LATENCY_US);
    }

    #[test]
    fn batches_reach_the_sink() {
        let sink = LatencySink::new(3);
        let mut batches: Vec<LatencyBatch> = (0..5).map(LatencyBatch::new).collect();
        for i in 0..1000u64 {
            batches[(i % 5) as usize].push(i + 1, &sink);
        }
        for b in &mut batches {
            b.flush(&sink);
        }
        let all = sink.snapshot();
        assert_eq!(all.count(), 1000);
        assert!((999..=1001).contains(&all.summary().max_us));
    }

    #[test]
    fn in_order_stream_is_clean() {
        let mut t = SeqTracker::starting_at(11);
        for p in 11..=20 {
            assert_eq!(t.observe(p), Seen::InOrder);
        }
        let c = t.finish(21);
        assert_eq!(
            c,
            SeqCounts {
                received: 10,
                ..SeqCounts::default()
            }
        );
        assert!(c.clean());
    }

    #[test]
    fn gaps_tails_duplicates_and_reordering() {
        let mut t = SeqTracker::starting_at(0);
        assert_eq!(t.observe(0), Seen::InOrder);
        assert_eq!(t.observe(3), Seen::Gap(2)); // 1, 2 missing
        assert_eq!(t.observe(3), Seen::Duplicate);
        assert_eq!(t.observe(1), Seen::OutOfOrder); // fills one hole
        assert_eq!(t.observe(1), Seen::Duplicate);
        assert_eq!(t.observe(0), Seen::Duplicate);
        assert_eq!(t.observe(4), Seen::InOrder);
        let c = t.finish(7); // 5, 6 never came
        assert_eq!(c.received, 4);
        assert_eq!(c.lost, 1 + 2);
        assert_eq!(c.duplicated, 3);
        assert_eq!(c.out_of_order, 1);
    }

    #[test]
    fn positions_before_the_start_are_duplicates() {
        let mut t = SeqTracker::starting_at(5);
        assert_eq!(t.observe(4), Seen::Duplicate);
        assert_eq!(t.finish(5).received, 0);
    }

    #[test]
    fn long_gaps_and_very_late_arrivals() {
        let mut t = SeqTracker::starting_at(0);
        assert_eq!(t.observe(100), Seen::Gap(100));
        assert_eq!(t.observe(99), Seen::OutOfOrder);
        assert_eq!(t.observe(99), Seen::Duplicate);
        assert_eq!(t.observe(0), Seen::OutOfOrder); // beyond the window
        let c = t.finish(101);
        assert_eq!((c.received, c.lost, c.out_of_order), (3, 98, 2));
    }
}
