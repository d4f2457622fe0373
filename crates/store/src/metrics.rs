//! Counters and histograms the store and server share, rendered in Prometheus text format
//! by the server. Lock-free: updated on the hot path.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// A fixed-bucket histogram of non-negative values (seconds, or counts).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    /// Sum in millionths, so it fits an atomic integer.
    sum_micro: AtomicU64,
}

pub const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];
pub const SIZE_BUCKETS: &[f64] = &[1.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 5000.0, 20000.0];

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micro: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|&b| v <= b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micro
            .fetch_add((v * 1e6) as u64, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Appends the histogram in Prometheus exposition format.
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (b, n) in self.bounds.iter().zip(&self.buckets) {
            cumulative += n.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cumulative}");
        }
        let count = self.count();
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let sum = self.sum_micro.load(Ordering::Relaxed) as f64 / 1e6;
        let braces = |s: &str| {
            if s.is_empty() {
                String::new()
            } else {
                format!("{{{s}}}")
            }
        };
        let _ = writeln!(out, "{name}_sum{} {sum}", braces(labels));
        let _ = writeln!(out, "{name}_count{} {count}", braces(labels));
    }
}

/// What one project's store counts.
#[derive(Debug)]
pub struct StoreMetrics {
    pub events_stored: AtomicU64,
    pub duplicates: AtomicU64,
    pub flushes: AtomicU64,
    pub flush_failures: AtomicU64,
    pub compactions: AtomicU64,
    pub compaction_failures: AtomicU64,
    pub wal_failures: AtomicU64,
    pub fsync_seconds: Histogram,
    pub group_commit_events: Histogram,
    /// Time to write and publish one frozen table's segment (on the flusher thread).
    pub flush_seconds: Histogram,
    /// Time of one merge (on the compactor thread).
    pub compaction_seconds: Histogram,
}

impl Default for StoreMetrics {
    fn default() -> Self {
        StoreMetrics {
            events_stored: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            flush_failures: AtomicU64::new(0),
            compactions: AtomicU64::new(0),
            compaction_failures: AtomicU64::new(0),
            wal_failures: AtomicU64::new(0),
            fsync_seconds: Histogram::new(SECONDS_BUCKETS),
            group_commit_events: Histogram::new(SIZE_BUCKETS),
            flush_seconds: Histogram::new(SECONDS_BUCKETS),
            compaction_seconds: Histogram::new(SECONDS_BUCKETS),
        }
    }
}
