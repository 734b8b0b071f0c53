//! The process's crypto threads: sealing, signing, opening and verifying run here, off the
//! async workers, on one thread per core fed by a bounded queue with two lanes.
//!
//! Tokio's blocking pool would also keep crypto off the async workers, but it keeps dozens
//! of idle threads and wakes one for every task: on two cores, with a seal or an open per
//! message, those wake-ups and context switches cost more than a tenth of the CPU. These
//! threads stay busy while there is work and sleep only when the queue is empty.
//!
//! Opening (delivery, fetch) takes the [`Lane::Finish`] lane, served before
//! [`Lane::Start`] (sealing new sends): finishing messages already accepted comes before
//! accepting more, or under overload the delivery backlog would grow without limit while
//! sends kept being sealed. A full queue (callers are bounded per node, so only many nodes
//! in one process get there) falls back to tokio's blocking pool rather than wait.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, OnceLock};

/// Crypto jobs waiting for a thread, at most; one more goes to tokio's blocking pool.
pub const CRYPTO_QUEUE_JOBS_MAX: usize = 1024;
/// Crypto threads at most, whatever the number of cores.
pub const CRYPTO_THREADS_MAX: usize = 64;

/// Which queue a job waits in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    /// Work that completes an accepted message (opening for delivery or fetch): first.
    Finish,
    /// Work that accepts a new message (sealing a send).
    Start,
}

type Job = Box<dyn FnOnce() + Send + 'static>;

/// The job could not run to completion.
#[derive(Debug, thiserror::Error)]
#[error("the crypto task did not complete: {0}")]
pub struct TaskFailed(String);

#[derive(Default)]
struct Queues {
    finish: VecDeque<Job>,
    start: VecDeque<Job>,
    /// Threads waiting for a job: a push wakes one only when some wait.
    idle: usize,
}

impl Queues {
    /// The next job: every waiting [`Lane::Finish`] job before any [`Lane::Start`] one.
    fn next_job(&mut self) -> Option<Job> {
        self.finish.pop_front().or_else(|| self.start.pop_front())
    }
}

struct Pool {
    queues: Mutex<Queues>,
    ready: Condvar,
}

/// The pool, its threads started on first use; `None` if not one thread could start.
fn pool() -> Option<&'static Pool> {
    static POOL: OnceLock<Pool> = OnceLock::new();
    static STARTED: OnceLock<bool> = OnceLock::new();
    let pool = POOL.get_or_init(|| Pool {
        queues: Mutex::new(Queues::default()),
        ready: Condvar::new(),
    });
    let started = *STARTED.get_or_init(|| {
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(CRYPTO_THREADS_MAX);
        let mut started = 0;
        for i in 0..threads {
            let spawned = std::thread::Builder::new()
                .name(format!("crypto-{i}"))
                .spawn(move || run_jobs(pool));
            match spawned {
                Ok(_) => started += 1,
                Err(e) => tracing::warn!(error = %e, "cannot start a crypto thread"),
            }
        }
        started > 0
    });
    started.then_some(pool)
}

fn run_jobs(pool: &Pool) {
    loop {
        let job = {
            let Ok(mut q) = pool.queues.lock() else {
                return;
            };
            loop {
                if let Some(job) = q.next_job() {
                    break job;
                }
                q.idle += 1;
                q = match pool.ready.wait(q) {
                    Ok(q) => q,
                    Err(_) => return,
                };
                q.idle -= 1;
            }
        };
        // A panicking job drops its reply (its caller gets `TaskFailed`); the thread lives
        // on. The lock is never held while a job runs.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
    }
}

/// Runs `f` on a crypto thread, in `lane`, and waits for its result.
pub async fn run<T, F>(lane: Lane, f: F) -> Result<T, TaskFailed>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = tx.send(f());
    });
    let Some(pool) = pool() else {
        return blocking(job, rx).await;
    };
    let rejected = match pool.queues.lock() {
        Ok(mut q) if q.finish.len() + q.start.len() < CRYPTO_QUEUE_JOBS_MAX => {
            match lane {
                Lane::Finish => q.finish.push_back(job),
                Lane::Start => q.start.push_back(job),
            }
            if q.idle > 0 {
                pool.ready.notify_one();
            }
            None
        }
        _ => Some(job),
    };
    match rejected {
        None => rx
            .await
            .map_err(|_| TaskFailed("the crypto thread dropped the job".into())),
        Some(job) => blocking(job, rx).await,
    }
}

async fn blocking<T>(job: Job, rx: tokio::sync::oneshot::Receiver<T>) -> Result<T, TaskFailed> {
    tokio::task::spawn_blocking(job)
        .await
        .map_err(|e| TaskFailed(e.to_string()))?;
    rx.await
        .map_err(|_| TaskFailed("the blocking task dropped the job".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_and_return_their_results() {
        let results = futures::future::join_all((0..100u64).map(|i| {
            let lane = if i % 2 == 0 {
                Lane::Finish
            } else {
                Lane::Start
            };
            run(lane, move || i * i)
        }))
        .await;
        for (i, r) in results.into_iter().enumerate() {
            assert_eq!(r.expect("ran"), (i * i) as u64);
        }
    }

    #[test]
    fn finishing_work_is_taken_before_new_work() {
        let order = std::sync::Arc::new(Mutex::new(Vec::new()));
        let mut q = Queues::default();
        for (lane, name) in [
            (Lane::Start, "seal-1"),
            (Lane::Finish, "open-1"),
            (Lane::Start, "seal-2"),
            (Lane::Finish, "open-2"),
        ] {
            let order = order.clone();
            let job: Job = Box::new(move || order.lock().expect("lock").push(name));
            match lane {
                Lane::Finish => q.finish.push_back(job),
                Lane::Start => q.start.push_back(job),
            }
        }
        while let Some(job) = q.next_job() {
            job();
        }
        assert_eq!(
            *order.lock().expect("lock"),
            vec!["open-1", "open-2", "seal-1", "seal-2"]
        );
    }

    #[tokio::test]
    async fn a_panicking_job_reports_failure_and_the_pool_keeps_working() {
        let failed = run(Lane::Start, || -> u8 { panic!("boom") }).await;
        assert!(failed.is_err());
        for _ in 0..CRYPTO_THREADS_MAX + 1 {
            let _ = run(Lane::Finish, || -> u8 { panic!("boom") }).await;
        }
        assert_eq!(run(Lane::Start, || 7u8).await.expect("ran"), 7);
    }
}
