//! The retention worker: on the leader, once per tick, it proposes `DropPayloads` for the
//! events stamped before `now - messaging.payload_retention_ms` that the log has not yet
//! dropped (at most `retention::DROP_EVENTS_MAX` per proposal, a bounded number of
//! proposals per tick). Every replica then rewrites those events' ciphertexts to their
//! digests when it applies the event; hashes, the chain, the Merkle tree, the views and the
//! audit records are unchanged. Off when the retention period is 0.

use std::time::Duration;

use sealpost_core::Outcome;
use sealpost_core::command::{Command, Proposal};
use sealpost_core::retention::{CURSOR, DROP_EVENTS_MAX};
use sealpost_raft::RaftNode;
use sealpost_store::StateView;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::messaging::now_ms;

/// Drop proposals one tick makes at most (the rest waits for the next tick).
pub const RETENTION_PROPOSALS_PER_TICK_MAX: usize = 16;

/// Starts the worker when a retention period is configured; it ends when `shutdown` turns
/// true or is dropped.
pub fn spawn(
    node: RaftNode,
    retention_ms: u64,
    tick_ms: u64,
    mut shutdown: watch::Receiver<bool>,
) -> Option<JoinHandle<()>> {
    if retention_ms == 0 {
        return None;
    }
    let actor = format!("retention@node-{}", node.id());
    Some(tokio::spawn(async move {
        let tick = Duration::from_millis(tick_ms);
        loop {
            if *shutdown.borrow() {
                return;
            }
            if node.is_leader() {
                for _ in 0..RETENTION_PROPOSALS_PER_TICK_MAX {
                    let cutoff = now_ms().saturating_sub(retention_ms);
                    let Some(through_seq) = next_range(node.view(), cutoff) else {
                        break;
                    };
                    let proposal = Proposal {
                        actor: actor.clone(),
                        command: Command::DropPayloads {
                            before_ts_ms: cutoff,
                            through_seq,
                        },
                    };
                    match node.propose(proposal).await {
                        Ok(c) if matches!(c.outcome, Outcome::Applied { .. }) => {}
                        // Another leader got there first: the next tick looks again.
                        Ok(_) => break,
                        Err(e) => {
                            tracing::debug!(error = %e, "payload drop not committed; next tick");
                            break;
                        }
                    }
                }
            }
            tokio::select! {
                r = shutdown.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(tick) => {}
            }
        }
    }))
}

/// The last event, within one drop's reach of the cursor, stamped before `cutoff`; `None`
/// when there is none. Time never goes backwards along the log, so a binary search over
/// sequence numbers finds it with a few reads.
fn next_range(view: &StateView, cutoff: u64) -> Option<u64> {
    let done = view.cursor(CURSOR, "").ok()?.unwrap_or(0);
    let newest = view.status().ok()?.event_count;
    let (mut lo, mut hi) = (done + 1, newest.min(done + DROP_EVENTS_MAX));
    let before = |seq: u64| -> Option<bool> { Some(view.event(seq).ok()??.ts_ms < cutoff) };
    if lo > hi || !before(lo)? {
        return None;
    }
    // Invariant: event `lo` is before the cut-off; find the last such up to `hi`.
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if before(mid)? {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    Some(lo)
}
