//! The openraft type configuration. It lives in the store because openraft's storage
//! traits are generic over it; the raft crate re-exports it.

use std::path::PathBuf;

use sealpost_core::{Batch, BatchOutcome};

openraft::declare_raft_types!(
    /// sealpost's Raft types: an entry carries a [`Batch`] of proposals; a snapshot is a
    /// folder of RocksDB checkpoint files.
    pub TypeConfig:
        D = Batch,
        R = BatchOutcome,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = SnapshotFiles,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type NodeId = u64;
pub type LogId = openraft::LogId<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type StorageIOError = openraft::StorageIOError<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, openraft::BasicNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, openraft::BasicNode>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type Vote = openraft::Vote<NodeId>;

/// A snapshot as files on disk: a RocksDB checkpoint of the state machine in `dir`.
/// Sent to followers file by file and installed by moving the folder into place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFiles {
    pub dir: PathBuf,
}
