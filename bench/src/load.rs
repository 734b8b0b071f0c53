//! The load generator every scenario shares: one operation (a directory write, a sealed
//! message that completes when it is routed, an etcd put, a JetStream publish) driven
//! either closed loop (N clients, each starting its next operation when the last one
//! finished) or open loop (a fixed arrival rate; latency counts from when each operation
//! was *due*, so a stall of the generator or the system under test shows in the tail
//! instead of being hidden by fewer sends: no coordinated omission). A warm-up runs first
//! and is not measured. Latencies go into an hdrhistogram (microseconds); completions are
//! also counted per [`TIMELINE_INTERVAL_MS`] for the throughput-over-time plot, with the
//! longest latency among them, which says when in a phase its tail happened.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};

use crate::LATENCY_US_MAX;

/// One operation under test, given a serial number unique within the run.
pub type OpFuture = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;
pub type Op = Arc<dyn Fn(u64) -> OpFuture + Send + Sync>;

/// Width of one interval of the throughput timeline.
pub const TIMELINE_INTERVAL_MS: u64 = 250;
/// Intervals the timeline keeps at most (an hour at 250 ms).
pub const TIMELINE_INTERVALS_MAX: usize = 14_400;
/// Open-loop operations outstanding at once; beyond this the scheduler waits, and the
/// latency from the due time shows it.
pub const OPEN_LOOP_IN_FLIGHT_MAX: usize = 16_384;
/// How long open-loop operations still outstanding after the measured window may take
/// before they count as errors.
pub const DRAIN_SECS_MAX: u64 = 30;
/// Pause of a closed-loop client after a failed operation, so a failing system is not
/// hammered in a tight loop.
pub const ERROR_BACKOFF_MS: u64 = 20;

/// How operations arrive.
#[derive(Clone, Copy, Debug)]
pub enum Mode {
    /// `clients` concurrent clients, each waiting for its operation before the next.
    Closed { clients: u64 },
    /// A fixed rate of operations per second, whatever the system does.
    Open { rate: f64 },
}

/// One measured phase.
#[derive(Clone, Debug)]
pub struct Spec {
    pub label: String,
    pub mode: Mode,
    pub warmup: Duration,
    pub duration: Duration,
}

/// What a phase measured.
#[derive(Debug)]
pub struct Outcome {
    /// Operations started (closed) or due (open) in the measured window that completed.
    pub completed: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub secs: f64,
    /// Latency of the completed operations, microseconds.
    pub hist: Histogram<u64>,
    /// Completions per [`TIMELINE_INTERVAL_MS`] of the measured window, by completion time.
    pub interval_counts: Vec<u64>,
    /// The longest latency (microseconds) among the completions of each interval of
    /// `interval_counts`; 0 where none completed.
    pub interval_max_us: Vec<u64>,
    /// When the measured window began, milliseconds since the Unix epoch: to match an
    /// interval of the timeline against the nodes' logs.
    pub from_unix_ms: u64,
}

impl Outcome {
    pub fn throughput(&self) -> f64 {
        if self.secs > 0.0 {
            self.completed as f64 / self.secs
        } else {
            0.0
        }
    }
}

/// Shared bookkeeping of a phase.
struct Recorder {
    from: Instant,
    end: Instant,
    completed: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
    hist: Mutex<Histogram<u64>>,
    intervals: Vec<AtomicU64>,
    interval_max_us: Vec<AtomicU64>,
    from_unix_ms: u64,
}

impl Recorder {
    fn new(from: Instant, duration: Duration) -> Self {
        let n = ((duration.as_millis() as u64).div_ceil(TIMELINE_INTERVAL_MS) as usize)
            .clamp(1, TIMELINE_INTERVALS_MAX);
        Self {
            from,
            end: from + duration,
            completed: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            first_error: Mutex::new(None),
            hist: Mutex::new(new_histogram()),
            intervals: (0..n).map(|_| AtomicU64::new(0)).collect(),
            interval_max_us: (0..n).map(|_| AtomicU64::new(0)).collect(),
            from_unix_ms: unix_ms_at(from),
        }
    }

    fn measured(&self, t: Instant) -> bool {
        t >= self.from && t < self.end
    }

    /// Records one operation that started (or was due) at `start` and ended now.
    fn record(
        &self,
        start: Instant,
        result: anyhow::Result<()>,
        local: Option<&mut Histogram<u64>>,
    ) {
        let done = Instant::now();
        if !self.measured(start) {
            return;
        }
        match result {
            Ok(()) => {
                self.completed.fetch_add(1, Ordering::Relaxed);
                let us = done.saturating_duration_since(start).as_micros() as u64;
                match local {
                    Some(h) => {
                        let _ = h.record(us.clamp(1, LATENCY_US_MAX));
                    }
                    None => {
                        if let Ok(mut h) = self.hist.lock() {
                            let _ = h.record(us.clamp(1, LATENCY_US_MAX));
                        }
                    }
                }
                if self.measured(done) {
                    let i = (done.saturating_duration_since(self.from).as_millis() as u64
                        / TIMELINE_INTERVAL_MS) as usize;
                    if let Some(c) = self.intervals.get(i) {
                        c.fetch_add(1, Ordering::Relaxed);
                    }
                    if let Some(m) = self.interval_max_us.get(i) {
                        m.fetch_max(us, Ordering::Relaxed);
                    }
                }
            }
            Err(e) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut f) = self.first_error.lock()
                    && f.is_none()
                {
                    *f = Some(format!("{e:#}"));
                }
            }
        }
    }

    /// What was recorded (operations that finish later, after a drain timed out, are not
    /// counted: they already count as errors).
    fn finish(&self, secs: f64) -> Outcome {
        Outcome {
            completed: self.completed.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            first_error: self.first_error.lock().map_or(None, |mut f| f.take()),
            secs,
            hist: self.hist.lock().map_or_else(
                |_| new_histogram(),
                |mut h| std::mem::replace(&mut *h, new_histogram()),
            ),
            interval_counts: self
                .intervals
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
            interval_max_us: self
                .interval_max_us
                .iter()
                .map(|m| m.load(Ordering::Relaxed))
                .collect(),
            from_unix_ms: self.from_unix_ms,
        }
    }
}

/// `at` (now or later) as milliseconds since the Unix epoch.
fn unix_ms_at(at: Instant) -> u64 {
    let ahead = at.saturating_duration_since(Instant::now());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (now + ahead).as_millis() as u64
}

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("histogram bounds are valid")
}

/// A progress bar over the phase's warm-up and measured window (hidden when stderr is not
/// a terminal), ticking with the completions so far.
fn bar(spec: &Spec, rec: &Arc<Recorder>) -> (ProgressBar, tokio::task::JoinHandle<()>) {
    let total_ms = (spec.warmup + spec.duration).as_millis() as u64;
    let pb = ProgressBar::new(total_ms.max(1));
    pb.set_style(
        ProgressStyle::with_template("{prefix:>14} [{bar:24}] {elapsed:>3} {wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_prefix(spec.label.clone());
    let start = Instant::now();
    let (pb2, rec) = (pb.clone(), rec.clone());
    let ticker = tokio::spawn(async move {
        // Bounded: the phase aborts this task when it ends.
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let el = start.elapsed();
            pb2.set_position((el.as_millis() as u64).min(total_ms));
            let done = rec.completed.load(Ordering::Relaxed);
            let errs = rec.errors.load(Ordering::Relaxed);
            if Instant::now() < rec.from {
                pb2.set_message("warming up".to_string());
            } else {
                let secs = rec.from.elapsed().as_secs_f64().max(0.001);
                pb2.set_message(format!("{:.0}/s, {errs} errors", done as f64 / secs));
            }
        }
    });
    (pb, ticker)
}

/// Runs one phase of `op` as `spec` says and returns what it measured. `serials` numbers
/// the operations (shared between phases so a run never repeats a serial).
pub async fn drive(op: Op, spec: &Spec, serials: Arc<AtomicU64>) -> anyhow::Result<Outcome> {
    let start = Instant::now();
    let rec = Arc::new(Recorder::new(start + spec.warmup, spec.duration));
    let (pb, ticker) = bar(spec, &rec);
    match spec.mode {
        Mode::Closed { clients } => {
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..clients.max(1) {
                let (op, rec, serials) = (op.clone(), rec.clone(), serials.clone());
                tasks.spawn(async move {
                    let mut local = new_histogram();
                    // Bounded by the phase's end.
                    while Instant::now() < rec.end {
                        let serial = serials.fetch_add(1, Ordering::Relaxed);
                        let t = Instant::now();
                        let r = op(serial).await;
                        let failed = r.is_err();
                        rec.record(t, r, Some(&mut local));
                        if failed {
                            tokio::time::sleep(Duration::from_millis(ERROR_BACKOFF_MS)).await;
                        }
                    }
                    local
                });
            }
            while let Some(r) = tasks.join_next().await {
                let local = r?;
                if let Ok(mut h) = rec.hist.lock() {
                    h.add(local)?;
                }
            }
        }
        Mode::Open { rate } => {
            anyhow::ensure!(
                rate.is_finite() && rate > 0.0,
                "an open-loop rate must be a positive number of operations per second, not {rate}"
            );
            let permits = Arc::new(tokio::sync::Semaphore::new(OPEN_LOOP_IN_FLIGHT_MAX));
            let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            // Bounded by the phase's end.
            loop {
                let due = ticker.tick().await.into_std();
                if due >= rec.end {
                    break;
                }
                let permit = permits.clone().acquire_owned().await?;
                let (op, rec) = (op.clone(), rec.clone());
                let serial = serials.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let r = op(serial).await;
                    rec.record(due, r, None);
                    drop(permit);
                });
            }
            // Wait for what is still outstanding; what does not finish in time failed.
            let all = OPEN_LOOP_IN_FLIGHT_MAX as u32;
            match tokio::time::timeout(
                Duration::from_secs(DRAIN_SECS_MAX),
                permits.acquire_many(all),
            )
            .await
            {
                Ok(p) => drop(p?),
                Err(_) => {
                    let left = OPEN_LOOP_IN_FLIGHT_MAX - permits.available_permits();
                    rec.errors.fetch_add(left as u64, Ordering::Relaxed);
                    if let Ok(mut f) = rec.first_error.lock() {
                        f.get_or_insert_with(|| {
                            format!("{left} operations still outstanding {DRAIN_SECS_MAX} s after the phase")
                        });
                    }
                }
            }
        }
    }
    ticker.abort();
    pb.finish_and_clear();
    Ok(rec.finish(spec.duration.as_secs_f64()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sleeper(ms: u64) -> Op {
        Arc::new(move |_| {
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(())
            })
        })
    }

    #[tokio::test]
    async fn closed_loop_counts_only_the_measured_window() {
        let spec = Spec {
            label: "t".into(),
            mode: Mode::Closed { clients: 4 },
            warmup: Duration::from_millis(200),
            duration: Duration::from_millis(500),
        };
        let unix_ms = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("the clock is past 1970")
                .as_millis() as u64
        };
        let before = unix_ms();
        let out = drive(sleeper(10), &spec, Arc::new(AtomicU64::new(0)))
            .await
            .expect("phase");
        // The measured window began after the warm-up, and before the phase ended.
        assert!(
            (before + 190..unix_ms() - 490).contains(&out.from_unix_ms),
            "window from {} ms, phase started at {before} ms",
            out.from_unix_ms
        );
        // 4 clients x 500 ms / ~10 ms each: about 200, certainly not the warm-up's too.
        assert!(
            out.completed > 40 && out.completed < 260,
            "{}",
            out.completed
        );
        assert_eq!(out.errors, 0);
        assert_eq!(out.hist.len(), out.completed);
        assert!(out.hist.value_at_quantile(0.5) >= 10_000);
        assert_eq!(out.interval_counts.len(), 2);
        assert_eq!(out.interval_max_us.len(), 2);
        for (count, max) in out.interval_counts.iter().zip(&out.interval_max_us) {
            assert!(*count > 0, "{:?}", out.interval_counts);
            assert!(
                (10_000..=out.hist.max()).contains(max),
                "{max} us against {} us at most",
                out.hist.max()
            );
        }
    }

    #[tokio::test]
    async fn open_loop_latency_counts_from_the_due_time() {
        // One operation at a time can finish (a mutex), each taking 20 ms, offered at
        // 100/s: the queue grows, and latency measured from the due time must show it.
        let gate = Arc::new(tokio::sync::Mutex::new(()));
        let op: Op = Arc::new(move |_| {
            let gate = gate.clone();
            Box::pin(async move {
                let _g = gate.lock().await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok(())
            })
        });
        let spec = Spec {
            label: "t".into(),
            mode: Mode::Open { rate: 100.0 },
            warmup: Duration::ZERO,
            duration: Duration::from_millis(500),
        };
        let out = drive(op, &spec, Arc::new(AtomicU64::new(0)))
            .await
            .expect("phase");
        assert!(out.completed >= 45, "{}", out.completed);
        // The last of ~50 due in 0.5 s finishes after ~1 s of queued work.
        assert!(out.hist.max() > 300_000, "max {} us", out.hist.max());
        // The timeline says when: the queue, so the longest latency, grows interval by
        // interval (by completion time, within the measured window).
        let maxes = &out.interval_max_us;
        assert_eq!(maxes.len(), 2);
        assert!(maxes[0] > 0 && maxes[1] > maxes[0], "{maxes:?}");
    }

    #[tokio::test]
    async fn failures_are_counted_with_the_first_reason() {
        let op: Op = Arc::new(|serial| {
            Box::pin(async move {
                anyhow::ensure!(serial % 2 == 0, "odd serial {serial}");
                Ok(())
            })
        });
        let spec = Spec {
            label: "t".into(),
            mode: Mode::Open { rate: 200.0 },
            warmup: Duration::ZERO,
            duration: Duration::from_millis(300),
        };
        let out = drive(op, &spec, Arc::new(AtomicU64::new(0)))
            .await
            .expect("phase");
        assert!(out.errors > 0 && out.completed > 0);
        assert!(
            out.first_error
                .as_deref()
                .is_some_and(|e| e.contains("odd serial"))
        );
    }
}
