//! The delivery and deadline worker. It runs on every node and acts only while its node
//! leads: it opens each recipient's copy of a message still waiting for delivery with the
//! receiving organisation's key, verifies the sender's signature and the digest, and
//! proposes the verdict (`Decrypted` + `Routed`, or `Failed` with the reason); and it
//! proposes `Expire` for every deadline found due.
//!
//! Most messages never wait: the node that takes a send opens it for the recipients this
//! provider hosts and commits those verdicts with the send (see `messaging.rs`). The worker
//! delivers the rest: messages received from peer providers, re-driven recipients, and
//! sends whose verdict could not be reached there (delivery paused, a local fault, keys
//! that did not unwrap, a verdict the state machine refused).
//!
//! It keeps no queue of its own: the delivery queue and the deadline index are views of
//! the log, so a restart or a new leader simply scans them again. Otherwise it reads the
//! queue only forwards from where it left off (delivered entries leave deletion markers
//! behind, which a scan from the start would walk every time); a delivery that ended
//! without a committed verdict rewinds that position on the next tick. A verdict proposed twice
//! (say by an old and a new leader) is harmless: the state machine accepts the first and
//! refuses the rest, so nothing is routed twice.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sealpost_core::command::{Command, DeliveryVerdict, Proposal};
use sealpost_core::ids::EndpointId;
use sealpost_core::message::{FailReason, MessageId};
use sealpost_raft::RaftNode;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use crate::config::MessagingOptions;
use crate::federation::TrustBundle;
use crate::keystore::{Keystore, KeystoreError};
use crate::messaging::{MessagingFaults, load_envelope, now_ms, sender_signing_key};

/// Messages the worker reads from the delivery queue per pass.
pub const DELIVERY_SCAN_MESSAGES_MAX: usize = 1024;
/// Envelopes the worker loads and opens at the same time: about the number of cores, so
/// memory holds at most this many (possibly 16 MiB) payloads while thousands of verdicts
/// wait for their commit.
pub const OPENS_IN_FLIGHT_MAX: usize = 8;
/// Deadlines the worker reads per pass.
pub const DEADLINE_SCAN_ITEMS_MAX: usize = 1024;

type Key = (MessageId, EndpointId);

/// The actor of the delivery verdicts a node proposes.
pub fn actor(node: sealpost_store::types::NodeId) -> String {
    format!("delivery@node-{node}")
}

/// The verdict an opening reached: routed, to be acknowledged within `ack_window_ms` from
/// now, or failed with the reason.
pub(crate) fn verdict_of(opened: Result<(), FailReason>, ack_window_ms: u64) -> DeliveryVerdict {
    match opened {
        Ok(()) => DeliveryVerdict::Route {
            ack_by_ms: now_ms().saturating_add(ack_window_ms),
        },
        Err(reason) => DeliveryVerdict::Fail(reason),
    }
}

struct Worker {
    node: RaftNode,
    keystore: Keystore,
    opts: MessagingOptions,
    faults: Arc<MessagingFaults>,
    /// The peer providers: their recipients' deadlines are the relay worker's, which asks
    /// the peer first.
    peers: Arc<TrustBundle>,
    actor: String,
    in_flight: Arc<Mutex<HashSet<Key>>>,
    permits: Arc<Semaphore>,
    opens: Semaphore,
    /// The delivery queue was read up to (not including) this sent sequence.
    scanned_to: AtomicU64,
    /// The lowest sent sequence whose delivery ended without a committed verdict (a local
    /// fault, a proposal that did not commit); the next tick rescans from there.
    /// `u64::MAX` when there is none.
    retry_from: AtomicU64,
}

/// Starts the worker; it ends when `shutdown` turns true or is dropped.
pub fn spawn(
    node: RaftNode,
    keystore: Keystore,
    opts: MessagingOptions,
    faults: Arc<MessagingFaults>,
    peers: Arc<TrustBundle>,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let w = Arc::new(Worker {
        actor: actor(node.id()),
        permits: Arc::new(Semaphore::new(opts.deliveries_in_flight_max)),
        node,
        keystore,
        opts,
        faults,
        peers,
        in_flight: Arc::default(),
        opens: Semaphore::new(OPENS_IN_FLIGHT_MAX),
        scanned_to: AtomicU64::new(0),
        retry_from: AtomicU64::new(u64::MAX),
    });
    tokio::spawn(async move {
        let mut applied = w.node.view().subscribe();
        let tick = Duration::from_millis(w.opts.worker_tick_ms);
        let mut last_tick: Option<tokio::time::Instant> = None;
        let mut leading = false;
        loop {
            if *shutdown.borrow() {
                return;
            }
            if w.node.is_leader() {
                if !leading {
                    // A new leader (or a restart) reads the whole queue once.
                    w.scanned_to.store(0, Ordering::SeqCst);
                    leading = true;
                }
                // Deadlines depend on the clock, and retries wait a tick: both run once
                // per tick; new messages are read on every applied change.
                let tick_due = last_tick.is_none_or(|t| t.elapsed() >= tick);
                if tick_due {
                    last_tick = Some(tokio::time::Instant::now());
                }
                w.pass(tick_due).await;
            } else {
                leading = false;
                last_tick = None;
            }
            tokio::select! {
                r = shutdown.changed() => if r.is_err() { return },
                _ = applied.changed() => {}
                _ = tokio::time::sleep(tick) => {}
            }
        }
    })
}

impl Worker {
    /// One pass over the delivery queue (from where the last one stopped) and, on a tick,
    /// the retries and the due deadlines; work is handed to tasks bounded by the in-flight
    /// permits, so a pass never blocks on crypto or commits.
    async fn pass(self: &Arc<Self>, tick: bool) {
        if tick {
            let from = self.retry_from.swap(u64::MAX, Ordering::SeqCst);
            if from != u64::MAX {
                self.scanned_to.fetch_min(from, Ordering::SeqCst);
            }
        }
        if !self.faults.delivery_paused() {
            self.deliver_pass().await;
        }
        if tick {
            self.deadline_pass().await;
        }
    }

    /// Unless `key` is already in flight, waits for a permit and spawns a task that builds
    /// a command with `make` and proposes it (if `make` gives one), then releases the key.
    /// When nothing was committed and `retry_seq` names the queue position, the next tick
    /// rescans the queue from there. False when the worker is shutting down (no permits
    /// left to wait for).
    async fn spawn_claimed<F, Fut>(
        self: &Arc<Self>,
        key: Key,
        retry_seq: Option<u64>,
        make: F,
    ) -> bool
    where
        F: FnOnce(Arc<Self>, Key) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Option<Command>> + Send + 'static,
    {
        if !self.claim(&key) {
            return true;
        }
        let Ok(permit) = self.permits.clone().acquire_owned().await else {
            self.release(&key);
            return false;
        };
        let w = self.clone();
        tokio::spawn(async move {
            let committed = match make(w.clone(), key.clone()).await {
                Some(command) => w.propose(command).await,
                None => false,
            };
            w.release(&key);
            if let (false, Some(seq)) = (committed, retry_seq) {
                w.retry_from.fetch_min(seq, Ordering::SeqCst);
            }
            drop(permit);
        });
        true
    }

    fn claim(&self, key: &Key) -> bool {
        self.in_flight
            .lock()
            .expect("the in-flight lock is never held across a panic")
            .insert(key.clone())
    }

    fn release(&self, key: &Key) {
        self.in_flight
            .lock()
            .expect("the in-flight lock is never held across a panic")
            .remove(key);
    }

    async fn deliver_pass(self: &Arc<Self>) {
        let view = self.node.view();
        // Every queue entry is keyed by the sequence of the event that queued it, so an
        // entry below the applied tip read now that the scan does not find was queued
        // and left again: the next pass can start at that tip. Most messages get here
        // routed already (their verdict committed with their send), and their entries
        // leave deletion markers that every scan from an older position would walk.
        let tip = view.applied_next_seq();
        let from = self.scanned_to.load(Ordering::SeqCst);
        let queue = match view.delivery_queue(from, DELIVERY_SCAN_MESSAGES_MAX) {
            Ok(q) => q,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the delivery queue");
                return;
            }
        };
        match queue.last() {
            Some((last, _)) if queue.len() >= DELIVERY_SCAN_MESSAGES_MAX => {
                self.scanned_to.fetch_max(last + 1, Ordering::SeqCst);
            }
            last => {
                let past = last.map_or(0, |(seq, _)| seq + 1);
                self.scanned_to.fetch_max(tip.max(past), Ordering::SeqCst);
            }
        }
        for (seq, id) in queue {
            let msg = match view.message(&id) {
                Ok(Some(m)) => m,
                Ok(None) => continue,
                Err(e) => {
                    tracing::error!(error = %e, message_id = %id, "cannot read message status; will retry");
                    self.retry_from.fetch_min(seq, Ordering::SeqCst);
                    continue;
                }
            };
            for r in msg
                .recipients
                .iter()
                .filter(|r| r.is_local() && r.state.awaits_delivery())
            {
                let sent_seq = msg.sent_seq;
                let claimed = self
                    .spawn_claimed(
                        (id.clone(), r.endpoint.clone()),
                        Some(sent_seq),
                        move |w, key| async move {
                            let verdict = w.verdict(sent_seq, &key.1).await?;
                            Some(Command::Deliver {
                                message_id: key.0,
                                recipient: key.1,
                                verdict,
                            })
                        },
                    )
                    .await;
                if !claimed {
                    return;
                }
            }
        }
    }

    /// Opens and verifies one recipient's copy. Never returns plaintext: only the verdict.
    /// `None` when this node could not judge (a storage read failed, its KEK does not
    /// unwrap the key, a task died): nothing is proposed and a later pass tries again, so a
    /// local fault never fails a message that was accepted.
    async fn verdict(&self, sent_seq: u64, recipient: &EndpointId) -> Option<DeliveryVerdict> {
        let _open = self
            .opens
            .acquire()
            .await
            .expect("the opens semaphore is never closed");
        let fail = |reason| Some(DeliveryVerdict::Fail(reason));
        let local = |what: &str, e: &dyn std::fmt::Display| {
            tracing::error!(error = %e, sent_seq, "{what}; delivery will be retried");
            None
        };
        if self.faults.take_local_fault() {
            return local("injected local fault", &"test hook");
        }
        let view = self.node.view();
        let envelope = match load_envelope(view, sent_seq) {
            Ok(e) => e,
            Err(e) => return local("cannot load the envelope", &e),
        };
        if envelope.payload_dropped() {
            // Dropped after the retention period (only a re-drive can get here).
            return fail(FailReason::Undeliverable);
        }
        let endpoint = match view.endpoint(recipient) {
            Ok(ep) => ep,
            Err(e) => return local("cannot read the recipient endpoint", &e),
        };
        let accepts = endpoint
            .filter(|e| e.is_active())
            .is_some_and(|e| e.spec.payload_types.contains(&envelope.header.payload_type));
        if !accepts {
            return fail(FailReason::PayloadTypeNotAccepted);
        }
        let Some(copy) = envelope.copy_for(&recipient.org) else {
            return fail(FailReason::Malformed);
        };
        let keys = match self.keystore.keys(&recipient.org, &copy.key_id) {
            Ok(k) => k,
            Err(KeystoreError::Unknown { .. }) => return fail(FailReason::UnknownKey),
            Err(e) => return local("recipient keys unavailable", &e),
        };
        let signing = match sender_signing_key(view, &envelope) {
            Ok(Some(k)) => k,
            Ok(None) => return fail(FailReason::UnknownKey),
            Err(e) => return local("cannot read the sender's key", &e),
        };
        let org = recipient.org.clone();
        let opened = crate::crypto_pool::run(crate::crypto_pool::Lane::Finish, move || {
            // The plaintext is dropped (and zeroized) here: delivery only verifies.
            sealpost_crypto::envelope::open(&envelope, &org, &keys, &signing).map(|_| ())
        })
        .await;
        match opened {
            Ok(r) => Some(verdict_of(
                r.map_err(|e| e.reason()),
                self.opts.ack_window_ms,
            )),
            Err(e) => local("the opening task failed", &e),
        }
    }

    async fn deadline_pass(self: &Arc<Self>) {
        let due = match self
            .node
            .view()
            .due_deadlines(now_ms(), DEADLINE_SCAN_ITEMS_MAX)
        {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the deadline index");
                return;
            }
        };
        let view = self.node.view();
        for d in due {
            let remote = match view.message(&d.message_id) {
                Ok(m) => m
                    .and_then(|m| m.recipient(&d.recipient).and_then(|r| r.provider.clone()))
                    .is_some_and(|p| self.peers.peer(&p).is_some()),
                Err(e) => {
                    tracing::error!(error = %e, "cannot read a message with a due deadline");
                    continue;
                }
            };
            if remote {
                continue;
            }
            let claimed = self
                // Deadlines are read from the start on every tick: no rewind needed.
                .spawn_claimed((d.message_id, d.recipient), None, |_, key| async move {
                    Some(Command::Expire {
                        message_id: key.0,
                        recipient: key.1,
                    })
                })
                .await;
            if !claimed {
                return;
            }
        }
    }

    /// Proposes a worker command; true when it committed (applied, or refused because
    /// another leader or an acknowledgement got there first).
    async fn propose(&self, command: Command) -> bool {
        let kind = command.kind();
        let proposal = Proposal {
            actor: self.actor.clone(),
            command,
        };
        match self.node.propose_urgent(proposal).await {
            Ok(c) => {
                if let sealpost_core::Outcome::Rejected(r) = c.outcome {
                    // Another leader (or an acknowledgement) got there first.
                    tracing::debug!(kind, reason = %r, "worker proposal refused");
                }
                true
            }
            Err(e) => {
                tracing::debug!(kind, error = %e, "worker proposal not committed; will retry");
                false
            }
        }
    }
}
