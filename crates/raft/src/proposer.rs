//! The per-node proposer: coalesces concurrent client proposals into one Raft entry.
//!
//! Proposals queue on a bounded channel. The proposer takes a permit for a batch in flight
//! first and only then drains the queue, so while earlier batches are being committed new
//! proposals pile up and leave together: under load a batch is as large as the load, with
//! no added wait. Each batch is capped in count and bytes; a full queue refuses at once.
//!
//! A *group* of proposals ([`ProposerHandle::propose_group`]) is never split: its proposals
//! go into one batch, so one Raft entry, in their order. A send with its delivery verdict
//! is one such group, and so is a batch a follower forwards.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use sealpost_store::timing::Timing;
use std::sync::Arc;
use std::time::Duration;

use sealpost_core::batch::Outcome;
use sealpost_core::codec;
use sealpost_core::command::Proposal;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::config::RaftOptions;

/// Where a committed proposal landed.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Committed {
    pub outcome: Outcome,
    pub log_index: u64,
}

/// Why a proposal was not committed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum ProposeError {
    /// Retryable: no leader could be reached; nothing was written.
    #[error("no leader is available: {0}")]
    NoLeader(String),
    /// The write may or may not have been committed (the connection to the leader failed
    /// after sending). Retrying a directory write is safe: a duplicate is refused.
    #[error("the outcome is unknown: {0}")]
    Unknown(String),
    #[error("this node has too many proposals queued ({0}); retry later")]
    Overloaded(usize),
    #[error("the proposal is {size} bytes, more than the batch limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("this node is shutting down")]
    ShuttingDown,
    /// Appended last: the variants' order is part of the forwarding protocol.
    #[error("a group of {count} proposals is more than the batch limit of {limit} proposals")]
    GroupTooLarge { count: usize, limit: usize },
}

/// One queued group: one or more proposals that share a batch, and where their results go.
pub(crate) struct Pending {
    pub(crate) proposals: Vec<Proposal>,
    bytes: usize,
    reply: oneshot::Sender<Vec<Result<Committed, ProposeError>>>,
}

/// What the proposer measures (the metrics listener exports it). Cheap to clone: clones
/// share the values.
#[derive(Clone, Debug)]
pub struct BatchMetrics {
    /// Proposals per batch this node committed or forwarded.
    pub proposals: Histogram,
    /// Encoded bytes per batch.
    pub bytes: Histogram,
    /// Proposals refused at once because the queue was full.
    pub overloaded: Counter,
    /// Seconds from a batch leaving the queue until it is committed (or refused): what a
    /// client's write waits beyond its time in the queue.
    pub commit_seconds: Timing,
}

impl Default for BatchMetrics {
    fn default() -> Self {
        Self {
            proposals: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            bytes: Histogram::new(exponential_buckets(256.0, 4.0, 10)),
            overloaded: Counter::default(),
            commit_seconds: Timing::new(exponential_buckets(0.000_25, 2.0, 16)),
        }
    }
}

/// Sends proposals to the proposer task. Cheap to clone.
#[derive(Clone)]
pub struct ProposerHandle {
    tx: mpsc::Sender<Pending>,
    /// The lane the node's own workers use: drained before client proposals, so that work
    /// which completes earlier writes (routing what was sent) is never starved by new ones.
    urgent_tx: mpsc::Sender<Pending>,
    batch_bytes_max: usize,
    batch_proposals_max: usize,
    queue_max: usize,
    metrics: BatchMetrics,
}

impl ProposerHandle {
    /// The proposer's batch sizes and refusals.
    pub fn metrics(&self) -> &BatchMetrics {
        &self.metrics
    }

    pub async fn propose(&self, proposal: Proposal) -> Result<Committed, ProposeError> {
        Self::single(self.enqueue(&self.tx, vec![proposal]).await)
    }

    /// Like [`Self::propose`], ahead of every queued client proposal.
    pub async fn propose_urgent(&self, proposal: Proposal) -> Result<Committed, ProposeError> {
        Self::single(self.enqueue(&self.urgent_tx, vec![proposal]).await)
    }

    /// Proposes `proposals` as one group: all in the same batch (one Raft entry), in this
    /// order. One result per proposal; an error before the batch (a full queue, a group
    /// over the limits) is every proposal's.
    pub async fn propose_group(
        &self,
        proposals: Vec<Proposal>,
    ) -> Result<Vec<Result<Committed, ProposeError>>, ProposeError> {
        self.enqueue(&self.tx, proposals).await
    }

    fn single(
        results: Result<Vec<Result<Committed, ProposeError>>, ProposeError>,
    ) -> Result<Committed, ProposeError> {
        results?.into_iter().next().unwrap_or_else(|| {
            Err(ProposeError::Unknown(
                "the batch answered no result for the proposal".into(),
            ))
        })
    }

    async fn enqueue(
        &self,
        tx: &mpsc::Sender<Pending>,
        proposals: Vec<Proposal>,
    ) -> Result<Vec<Result<Committed, ProposeError>>, ProposeError> {
        if proposals.is_empty() {
            return Ok(Vec::new());
        }
        if proposals.len() > self.batch_proposals_max {
            return Err(ProposeError::GroupTooLarge {
                count: proposals.len(),
                limit: self.batch_proposals_max,
            });
        }
        let bytes = proposals.iter().map(codec::encoded_len).sum();
        if bytes > self.batch_bytes_max {
            return Err(ProposeError::TooLarge {
                size: bytes,
                limit: self.batch_bytes_max,
            });
        }
        let (reply, rx) = oneshot::channel();
        tx.try_send(Pending {
            proposals,
            bytes,
            reply,
        })
        .map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                self.metrics.overloaded.inc();
                ProposeError::Overloaded(self.queue_max)
            }
            mpsc::error::TrySendError::Closed(_) => ProposeError::ShuttingDown,
        })?;
        rx.await.map_err(|_| ProposeError::ShuttingDown)
    }
}

/// What the proposer calls to commit one batch: returns one result per proposal.
pub(crate) trait Submit: Send + Sync + 'static {
    /// True when this node's batches are forwarded to another node (the leader), which
    /// batches them again: then more may be in flight without adding log entries.
    fn forwards(&self) -> bool {
        false
    }

    fn submit(
        &self,
        proposals: Vec<Proposal>,
    ) -> impl std::future::Future<
        Output = Result<Vec<Result<Committed, ProposeError>>, ProposeError>,
    > + Send;
}

/// Starts the proposer task; it ends when every handle is dropped.
pub(crate) fn start<S: Submit>(opts: &RaftOptions, submit: Arc<S>) -> ProposerHandle {
    let (tx, rx) = mpsc::channel(opts.proposal_queue_max);
    let (urgent_tx, urgent_rx) = mpsc::channel(opts.proposal_queue_max);
    let metrics = BatchMetrics::default();
    let handle = ProposerHandle {
        tx,
        urgent_tx,
        batch_bytes_max: opts.batch_bytes_max,
        batch_proposals_max: opts.batch_proposals_max,
        queue_max: opts.proposal_queue_max,
        metrics: metrics.clone(),
    };
    tokio::spawn(run(opts.clone(), (urgent_rx, rx), submit, metrics));
    handle
}

async fn run<S: Submit>(
    opts: RaftOptions,
    (mut urgent_rx, mut rx): (mpsc::Receiver<Pending>, mpsc::Receiver<Pending>),
    submit: Arc<S>,
    metrics: BatchMetrics,
) {
    let in_flight = Arc::new(Semaphore::new(opts.proposals_in_flight_max));
    let forwarding = Arc::new(Semaphore::new(opts.forwards_in_flight_max));
    let wait = Duration::from_micros(opts.batch_wait_us);
    // A proposal that did not fit the previous batch starts the next one.
    let mut next: Option<Pending> = None;
    loop {
        // On the leader each batch is a log entry: few in flight, so they grow with load.
        // A follower only forwards; the leader's proposer batches what it forwards again.
        let slots = if submit.forwards() {
            &forwarding
        } else {
            &in_flight
        };
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let first = match next.take() {
            Some(p) => p,
            None => {
                let p = tokio::select! {
                    biased;
                    p = urgent_rx.recv() => p,
                    p = rx.recv() => p,
                };
                match p {
                    Some(p) => p,
                    None => return,
                }
            }
        };
        let (mut bytes, mut count) = (first.bytes, first.proposals.len());
        let mut batch = vec![first];
        // A group is whole in one batch: it fits, or it starts the next one.
        let fits = |count: usize, bytes: usize, p: &Pending| {
            count + p.proposals.len() <= opts.batch_proposals_max
                && bytes + p.bytes <= opts.batch_bytes_max
        };
        while let Ok(p) = urgent_rx.try_recv().or_else(|_| rx.try_recv()) {
            if !fits(count, bytes, &p) {
                next = Some(p);
                break;
            }
            bytes += p.bytes;
            count += p.proposals.len();
            batch.push(p);
        }
        if next.is_none() && !wait.is_zero() {
            let deadline = tokio::time::Instant::now() + wait;
            while let Ok(Some(p)) = tokio::time::timeout_at(deadline, rx.recv()).await {
                if !fits(count, bytes, &p) {
                    next = Some(p);
                    break;
                }
                bytes += p.bytes;
                count += p.proposals.len();
                batch.push(p);
            }
        }
        metrics.proposals.observe(count as f64);
        metrics.bytes.observe(bytes as f64);
        let submit = submit.clone();
        let commit_seconds = metrics.commit_seconds.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            commit(&*submit, batch).await;
            commit_seconds.observe(started.elapsed());
            drop(permit);
        });
    }
}

async fn commit<S: Submit>(submit: &S, batch: Vec<Pending>) {
    let n: usize = batch.iter().map(|p| p.proposals.len()).sum();
    let mut proposals = Vec::with_capacity(n);
    let mut replies = Vec::with_capacity(batch.len());
    for p in batch {
        replies.push((p.proposals.len(), p.reply));
        proposals.extend(p.proposals);
    }
    match submit.submit(proposals).await {
        Ok(results) if results.len() == n => {
            let mut results = results.into_iter();
            for (len, reply) in replies {
                let _ = reply.send(results.by_ref().take(len).collect());
            }
        }
        Ok(results) => {
            let e = ProposeError::Unknown(format!(
                "the leader answered {} results for {n} proposals",
                results.len()
            ));
            tracing::error!(error = %e, "batch result mismatch");
            for (len, reply) in replies {
                let _ = reply.send(vec![Err(e.clone()); len]);
            }
        }
        Err(e) => {
            for (len, reply) in replies {
                let _ = reply.send(vec![Err(e.clone()); len]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use sealpost_core::Outcome;
    use sealpost_core::command::Command;
    use sealpost_core::ids::EndpointId;

    use super::*;

    /// Records each submitted batch's actors and holds every commit until released.
    #[derive(Default)]
    struct Recorder {
        batches: Mutex<Vec<Vec<String>>>,
        gate: tokio::sync::Notify,
        /// Pretend to be a follower that forwards its batches.
        follower: bool,
    }

    impl Submit for Recorder {
        fn forwards(&self) -> bool {
            self.follower
        }

        async fn submit(
            &self,
            proposals: Vec<Proposal>,
        ) -> Result<Vec<Result<Committed, ProposeError>>, ProposeError> {
            self.batches
                .lock()
                .expect("lock")
                .push(proposals.iter().map(|p| p.actor.clone()).collect());
            self.gate.notified().await;
            Ok(proposals
                .iter()
                .map(|_| {
                    Ok(Committed {
                        outcome: Outcome::Applied {
                            first_seq: 1,
                            count: 1,
                        },
                        log_index: 1,
                    })
                })
                .collect())
        }
    }

    fn proposal(actor: &str) -> Proposal {
        Proposal {
            actor: actor.into(),
            command: Command::RetireEndpoint {
                id: EndpointId::parse("8003620000001011/x").expect("endpoint"),
                reason: "r".into(),
            },
        }
    }

    /// Proposes `n` client proposals, each from a task of its own, in order.
    async fn propose_many(
        handle: &ProposerHandle,
        n: usize,
    ) -> Vec<tokio::task::JoinHandle<Result<Committed, ProposeError>>> {
        let mut waits = Vec::new();
        for i in 0..n {
            let h = handle.clone();
            waits.push(tokio::spawn(async move {
                h.propose(proposal(&format!("client-{i}"))).await
            }));
            tokio::task::yield_now().await;
        }
        waits
    }

    /// Waits (at most five seconds) until the first batch is submitted and held.
    async fn first_batch_submitted(rec: &Recorder) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while rec.batches.lock().expect("lock").is_empty() {
            assert!(tokio::time::Instant::now() < deadline, "no batch submitted");
            tokio::task::yield_now().await;
        }
    }

    /// Lets what was queued settle, then releases up to ten held commits in turn.
    async fn release_held_batches(rec: &Recorder) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        for _ in 0..10 {
            rec.gate.notify_one();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A follower forwards up to `forwards_in_flight_max` batches at once (the leader
    /// batches them again); a leader keeps to `proposals_in_flight_max` log entries.
    #[tokio::test]
    async fn a_follower_forwards_more_batches_at_once_than_a_leader_proposes() {
        for (follower, expected) in [(false, 1), (true, 3)] {
            let opts = RaftOptions {
                proposals_in_flight_max: 1,
                forwards_in_flight_max: 3,
                batch_proposals_max: 1,
                ..RaftOptions::default()
            };
            let rec = Arc::new(Recorder {
                follower,
                ..Recorder::default()
            });
            let handle = start(&opts, rec.clone());
            let waits = propose_many(&handle, 5).await;
            // Every commit is held: what was submitted is what the slots allowed.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while rec.batches.lock().expect("lock").len() < expected {
                assert!(tokio::time::Instant::now() < deadline, "too few batches");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert_eq!(
                rec.batches.lock().expect("lock").len(),
                expected,
                "follower: {follower}"
            );
            for _ in 0..20 {
                rec.gate.notify_one();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            for w in waits {
                w.await.expect("task").expect("committed");
            }
        }
    }

    /// A group goes into one batch whole, in its order, even where the proposals queued
    /// before it leave too little room in the batch being built: it starts the next one.
    #[tokio::test]
    async fn a_group_is_never_split_across_batches() {
        let opts = RaftOptions {
            proposals_in_flight_max: 1,
            batch_proposals_max: 3,
            ..RaftOptions::default()
        };
        let rec = Arc::new(Recorder::default());
        let handle = start(&opts, rec.clone());
        // Hold the pipeline with a first batch, then queue two singles and a group of two.
        let mut waits = propose_many(&handle, 1).await;
        first_batch_submitted(&rec).await;
        for i in 1..3 {
            let h = handle.clone();
            waits.push(tokio::spawn(async move {
                h.propose(proposal(&format!("client-{i}"))).await
            }));
            tokio::task::yield_now().await;
        }
        let h = handle.clone();
        let group = tokio::spawn(async move {
            h.propose_group(vec![proposal("send"), proposal("verdict")])
                .await
        });
        release_held_batches(&rec).await;
        for w in waits {
            w.await.expect("task").expect("committed");
        }
        let results = group.await.expect("task").expect("queued");
        assert_eq!(results.len(), 2);
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        let batches = rec.batches.lock().expect("lock").clone();
        assert_eq!(
            batches,
            vec![
                vec!["client-0".to_string()],
                vec!["client-1".to_string(), "client-2".to_string()],
                vec!["send".to_string(), "verdict".to_string()],
            ]
        );
    }

    /// A group larger than a batch is refused before anything is queued.
    #[tokio::test]
    async fn a_group_larger_than_a_batch_is_refused() {
        let opts = RaftOptions {
            batch_proposals_max: 2,
            ..RaftOptions::default()
        };
        let rec = Arc::new(Recorder::default());
        let handle = start(&opts, rec.clone());
        let e = handle
            .propose_group(vec![proposal("a"), proposal("b"), proposal("c")])
            .await
            .expect_err("too many for one batch");
        assert_eq!(e, ProposeError::GroupTooLarge { count: 3, limit: 2 });
        assert!(rec.batches.lock().expect("lock").is_empty());
    }

    /// With the pipeline full of client batches, a worker's urgent proposal goes into the
    /// next batch ahead of every client proposal queued before it.
    #[tokio::test]
    async fn urgent_proposals_jump_the_queue() {
        let opts = RaftOptions {
            proposals_in_flight_max: 1,
            batch_proposals_max: 2,
            ..RaftOptions::default()
        };
        let rec = Arc::new(Recorder::default());
        let handle = start(&opts, rec.clone());
        let mut waits = propose_many(&handle, 5).await;
        // The first batch is in flight; the rest of the clients wait in the queue.
        first_batch_submitted(&rec).await;
        let h = handle.clone();
        waits.push(tokio::spawn(async move {
            h.propose_urgent(proposal("worker")).await
        }));
        release_held_batches(&rec).await;
        for w in waits {
            w.await.expect("task").expect("committed");
        }
        let batches = rec.batches.lock().expect("lock").clone();
        assert!(batches.len() >= 2, "{batches:?}");
        assert_eq!(batches[1][0], "worker", "{batches:?}");
    }
}
