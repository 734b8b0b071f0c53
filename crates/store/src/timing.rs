//! [`Timing`]: a Prometheus histogram of durations that also keeps its count and sum where
//! the node itself can read them (the console's charts sample them once a second;
//! `prometheus-client` exposes them only to its encoder).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::metrics::histogram::Histogram;

/// Durations observed into a histogram, with their count and total kept beside it.
/// Cheap to clone: clones share everything.
#[derive(Clone, Debug)]
pub struct Timing {
    /// What `/metrics` exports (in seconds).
    pub histogram: Histogram,
    count: Arc<AtomicU64>,
    total_ns: Arc<AtomicU64>,
}

impl Timing {
    /// A timing with the histogram's bucket bounds, in seconds.
    pub fn new(buckets_secs: impl IntoIterator<Item = f64>) -> Self {
        Self {
            histogram: Histogram::new(buckets_secs),
            count: Arc::default(),
            total_ns: Arc::default(),
        }
    }

    pub fn observe(&self, took: Duration) {
        self.histogram.observe(took.as_secs_f64());
        self.count.fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.total_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Seconds of every observation so far, summed.
    pub fn total_seconds(&self) -> f64 {
        self.total_ns.load(Ordering::Relaxed) as f64 / 1e9
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_and_total_follow_observations_in_every_clone() {
        let t = Timing::new([0.001, 0.01]);
        let c = t.clone();
        t.observe(Duration::from_millis(2));
        c.observe(Duration::from_millis(3));
        assert_eq!(t.count(), 2);
        assert!((c.total_seconds() - 0.005).abs() < 1e-9);
    }
}
