//! sealpost's storage: two RocksDB instances per node. The Raft log (entries, vote,
//! committed, last purged) and the state machine (the permanent, hash-chained event store
//! and the directory views, written together in one batch per apply). Snapshots are
//! checkpoints of the state machine only, moved between nodes as files.
//!
//! # Layout
//! - [`log_store`]: openraft's `RaftLogStorage`; appends are WAL-synced before they are
//!   reported durable.
//! - [`state_machine`]: openraft's `RaftStateMachine`; apply, views, snapshot install, and
//!   [`StateView`] for reads.
//! - `merkle`: the event store's RFC 9162 Merkle tree (subtree hashes and frontier),
//!   written with the events; roots and proofs for checkpoints.
//! - [`replay`]: the event store replayed in order, decoded on worker threads.
//! - [`snapshot`]: checkpoint folders, building, keeping and copying them, and the copy an
//!   online backup streams; [`restore`]: a backup restored into a new cluster's node.
//! - [`search`]: directory search over the index column family; [`message_search`]:
//!   audit search over messages (the `msg_index` view).
//! - [`types`]: the openraft type configuration.
//! - [`timing`]: a duration histogram whose count and sum the node can read.
//! - [`rocks`]: how RocksDB is opened (paranoid checks, a torn final WAL record dropped),
//!   and what each database holds on disk and in memory ([`DiskUsage`]).
//! - [`space`]: free space on the file systems the stores live on.

pub mod error;
pub mod log_store;
mod merkle;
pub mod message_search;
pub mod rebuild;
pub mod replay;
pub mod restore;
mod rocks;
pub mod search;
pub mod snapshot;
mod sorted_writes;
pub mod space;
pub mod state_machine;
pub mod timing;
pub mod types;

use std::path::{Path, PathBuf};

pub use error::{Error, Result};
pub use log_store::LogStore;
pub use message_search::{MessageQuery, MessageSearch, StatusFilter};
pub use rocks::{DiskUsage, scan_all};
pub use search::{SearchHit, SearchQuery};
pub use state_machine::{ChainCheck, QueueDepths, SmStatus, StateMachine, StateView, TreeHead};
pub use types::{NodeId, SnapshotFiles, TypeConfig};

/// Options for a node's storage.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Create the stores if missing (a new node). A restarting node passes false, so a
    /// missing folder is an error rather than a silent fresh start under an old id.
    pub create: bool,
    /// Fsync each state-machine apply batch. Off by default: the log is always fsynced
    /// before anything is acknowledged, the state machine is derived from it, and after a
    /// crash openraft re-applies the log from the state machine's own durable last-applied
    /// id (the log is purged only behind a snapshot, whose checkpoint is on disk).
    pub sync_state_machine: bool,
    /// BROKEN ON PURPOSE: never fsync the Raft log, so appends are reported durable while
    /// only the OS holds them. Only the chaos harness's broken test node sets it, to prove a
    /// power-loss crash catches the loss; `sealpost` itself has no way to turn it on.
    pub unsafe_skip_fsync: bool,
    /// The folder that holds the Raft log (as [`LOG_DIR_NAME`]) when it is not the node's
    /// data folder: a file system of its own, so the log's fsyncs do not queue behind the
    /// state machine's flushes in a shared file system journal.
    pub log_root: Option<PathBuf>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            create: true,
            sync_state_machine: false,
            unsafe_skip_fsync: false,
            log_root: None,
        }
    }
}

/// The Raft log's folder name, under the data folder or under [`StoreOptions::log_root`].
pub const LOG_DIR_NAME: &str = "raft-log";
/// The state machine's folder name, under the data folder.
pub const SM_DIR_NAME: &str = "sm";

/// Opens both stores of a node: the state machine in `dir/sm`, the Raft log in
/// `dir/raft-log` or, with [`StoreOptions::log_root`], in `log_root/raft-log`.
pub fn open(dir: &Path, opts: &StoreOptions) -> Result<(LogStore, StateMachine)> {
    let log_dir = opts.log_root.as_deref().unwrap_or(dir).join(LOG_DIR_NAME);
    let log = LogStore::open_with(&log_dir, opts.create, opts.unsafe_skip_fsync)?;
    let sm = StateMachine::open(&dir.join(SM_DIR_NAME), opts.create, opts.sync_state_machine)?;
    Ok((log, sm))
}
