//! Restoring a backup into the stores of a node of a *new* cluster, offline, before the
//! node first starts (what etcd calls a snapshot restore).
//!
//! Every node of the new cluster is restored from the same backup folder (a state machine
//! checkpoint and its snapshot metadata, as `Admin.Backup` streams it). Each gets:
//! - the state machine: the checkpoint as its live database and as its current snapshot,
//!   so it can also serve the snapshot to learners added later;
//! - a Raft log that starts after the backup: everything up to the backup's last log id
//!   purged and committed, then one entry at the next index (same term and leader as that
//!   id, so it is byte-for-byte the same on every restored node) holding the new cluster's
//!   membership. The old cluster's membership, inside the checkpoint, is thereby replaced:
//!   the nodes elect a leader among themselves, and that leader commits the entry.
//!
//! The new cluster must use the same provider name and key-encryption key as the old one:
//! the event store holds message ids named after the provider and organisation keys
//! wrapped under the KEK.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use openraft::{BasicNode, EntryPayload, Membership};

use crate::error::{Error, Result};
use crate::log_store::LogStore;
use crate::snapshot::{self, SNAPSHOT_META_FILE};
use crate::state_machine::{StateMachine, StateView};
use crate::types::{Entry, LogId, NodeId, Vote};

/// What a restore put in place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restored {
    /// The backup's last log id (its snapshot's).
    pub last_log_id: LogId,
    /// Events in the restored event store, and its chain head.
    pub event_count: u64,
    pub chain_head: sealpost_core::Hash,
}

/// Restores `backup` into `node_dir` (which must hold no stores yet) for a cluster of
/// `members` (node id → address), every one a voter. The Raft log goes under `log_root`
/// when the node keeps it apart (see [`crate::StoreOptions::log_root`]).
///
/// `check` looks at the restored state machine before the Raft log is written (the node
/// checks that its KEK unwraps the organisations' keys): when it refuses, with the
/// problem, the restored state machine is removed again and nothing is left in `node_dir`.
pub fn restore_node(
    backup: &Path,
    node_dir: &Path,
    log_root: Option<&Path>,
    members: &BTreeMap<NodeId, String>,
    check: &dyn Fn(&StateView) -> std::result::Result<(), String>,
) -> Result<Restored> {
    if members.is_empty() {
        return Err(Error::Invalid(
            "a restored cluster needs at least one member".into(),
        ));
    }
    let meta = snapshot::read_meta(backup).map_err(|e| {
        Error::Invalid(format!(
            "{} is not a sealpost backup (no readable {SNAPSHOT_META_FILE}): {e}",
            backup.display()
        ))
    })?;
    let last = meta.last_log_id.ok_or_else(|| {
        Error::Invalid("the backup holds a state machine that applied nothing".into())
    })?;
    let (log_dir, sm_dir) = (
        log_root.unwrap_or(node_dir).join(crate::LOG_DIR_NAME),
        node_dir.join(crate::SM_DIR_NAME),
    );
    for d in [&log_dir, &sm_dir] {
        if d.exists() {
            return Err(Error::Invalid(format!(
                "{} already exists: restore only into a node folder without stores",
                d.display()
            )));
        }
    }

    // The state machine: current snapshot, and the live database copied from it.
    std::fs::create_dir_all(&sm_dir).map_err(Error::io(&sm_dir))?;
    let files = crate::types::SnapshotFiles {
        dir: backup.to_path_buf(),
    };
    let kept = snapshot::keep(&sm_dir, &meta, &files)?;
    snapshot::copy_checkpoint(&kept, &sm_dir.join("db-1"))?;
    snapshot::write_atomic(&sm_dir.join("ACTIVE"), b"db-1")?;
    let status = {
        let sm = StateMachine::open(&sm_dir, false, true)?;
        let status = sm.view().status()?;
        if status.last_applied != Some(last) {
            return Err(Error::Corrupt {
                path: backup.to_path_buf(),
                detail: format!(
                    "the backup's metadata says log id {last:?} but its state machine applied \
                     {:?}",
                    status.last_applied
                ),
            });
        }
        if let Err(problem) = check(&sm.view()) {
            drop(sm);
            std::fs::remove_dir_all(&sm_dir).map_err(Error::io(&sm_dir))?;
            return Err(Error::Invalid(problem));
        }
        status
    };

    // The Raft log: purged through the backup, then the new membership.
    let voters: BTreeSet<NodeId> = members.keys().copied().collect();
    let nodes: BTreeMap<NodeId, BasicNode> = members
        .iter()
        .map(|(id, addr)| (*id, BasicNode::new(addr)))
        .collect();
    let entry = Entry {
        log_id: LogId::new(last.leader_id, last.index + 1),
        payload: EntryPayload::Membership(Membership::new(vec![voters], nodes)),
    };
    let vote = Vote::new(last.leader_id.term, last.leader_id.node_id);
    LogStore::open(&log_dir, true)?.seed(last, vote, entry)?;
    Ok(Restored {
        last_log_id: last,
        event_count: status.event_count,
        chain_head: status.chain_head,
    })
}
