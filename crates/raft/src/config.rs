//! Raft options for a node: timing, batching, snapshot policy and message limits, with
//! defaults suited to a 3- or 5-node cluster on a LAN and a `validate()` that names the
//! bad field.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Raft settings. Every limit carries its unit in its name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaftOptions {
    /// How often the leader sends heartbeats. openraft 0.9 also uses it as the deadline of
    /// every AppendEntries, which a follower answers only after its fsync: too short, and a
    /// busy follower's answers time out and are sent again, which makes it busier.
    pub heartbeat_interval_ms: u64,
    /// A follower that hears nothing for a random time in this range (after the leader's
    /// lease, which is the maximum) calls an election. openraft 0.9 adds twice the maximum
    /// after a campaign lost to a longer log; the node's election watchdog calls one itself
    /// after twice the maximum plus up to half of it without a word from a leader.
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Proposals one Raft entry may carry.
    pub batch_proposals_max: usize,
    /// Encoded bytes of proposals one Raft entry may carry.
    pub batch_bytes_max: usize,
    /// How long the proposer waits for more proposals before sealing a batch that is not
    /// full. 0: take what is queued, never wait (batches still form while earlier ones
    /// are in flight).
    pub batch_wait_us: u64,
    /// Batches the leader may have in flight (proposed, not yet committed) at once. One:
    /// what arrives while a batch commits leaves together in the next, and fewer, larger
    /// entries cost less per message (BENCHMARKS.md).
    pub proposals_in_flight_max: usize,
    /// Batches a follower may have forwarded to the leader and not yet had answered. The
    /// leader batches forwarded proposals again, so these add no log entries.
    pub forwards_in_flight_max: usize,
    /// Proposals a node queues before refusing new ones.
    pub proposal_queue_max: usize,
    /// How long a write waits for a leader to be known.
    pub leader_wait_ms: u64,
    /// Deadline of a forwarded write or read index request.
    pub forward_timeout_ms: u64,
    /// Snapshot when this many bytes of log were appended since the last snapshot.
    pub snapshot_log_bytes_max: u64,
    /// Snapshot at least this often when anything was applied since the last one (0: never
    /// by time).
    pub snapshot_interval_secs: u64,
    /// Entries kept in the log behind a snapshot, so slow followers can catch up without one.
    pub snapshot_keep_log_entries: u64,
    /// Size of one file chunk in a snapshot stream.
    pub snapshot_chunk_bytes: usize,
    /// Largest gRPC message a node sends or accepts (Raft entries and snapshot chunks).
    pub grpc_message_bytes_max: usize,
    /// Entries sent in one AppendEntries request at most.
    pub append_entries_max: u64,
    /// Bytes of entries one AppendEntries carries when there are several; a larger single
    /// entry is sent alone. openraft 0.9 gives each AppendEntries one heartbeat interval,
    /// so this (and `batch_bytes_max`) must cross the network well within it.
    pub append_bytes_max: usize,
    /// Deadline for receiving and installing a whole snapshot.
    pub snapshot_timeout_ms: u64,
}

impl Default for RaftOptions {
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: 250,
            election_timeout_min_ms: 1000,
            election_timeout_max_ms: 2000,
            batch_proposals_max: 1024,
            batch_bytes_max: 32 * 1024 * 1024,
            batch_wait_us: 0,
            proposals_in_flight_max: 1,
            forwards_in_flight_max: 16,
            proposal_queue_max: 16_384,
            leader_wait_ms: 5_000,
            forward_timeout_ms: 10_000,
            snapshot_log_bytes_max: 256 * 1024 * 1024,
            snapshot_interval_secs: 3600,
            snapshot_keep_log_entries: 1000,
            snapshot_chunk_bytes: 1024 * 1024,
            grpc_message_bytes_max: 64 * 1024 * 1024,
            append_entries_max: 256,
            append_bytes_max: 4 * 1024 * 1024,
            snapshot_timeout_ms: 600_000,
        }
    }
}

/// A setting that cannot work, named.
#[derive(Debug, thiserror::Error)]
#[error("raft option {field}: {problem}")]
pub struct OptionsError {
    pub field: &'static str,
    pub problem: String,
}

impl RaftOptions {
    pub fn validate(&self) -> Result<(), OptionsError> {
        let bad = |field, problem: &str| {
            Err(OptionsError {
                field,
                problem: problem.to_string(),
            })
        };
        if self.heartbeat_interval_ms == 0 {
            return bad("heartbeat_interval_ms", "must be positive");
        }
        if self.election_timeout_min_ms <= self.heartbeat_interval_ms {
            return bad(
                "election_timeout_min_ms",
                "must exceed heartbeat_interval_ms",
            );
        }
        if self.election_timeout_max_ms <= self.election_timeout_min_ms {
            return bad(
                "election_timeout_max_ms",
                "must exceed election_timeout_min_ms",
            );
        }
        if self.batch_proposals_max == 0
            || self.batch_proposals_max > sealpost_core::batch::BATCH_PROPOSALS_MAX
        {
            return bad("batch_proposals_max", "must be between 1 and 1024");
        }
        if self.batch_bytes_max == 0 || self.batch_bytes_max * 2 > self.grpc_message_bytes_max {
            return bad(
                "batch_bytes_max",
                "must be positive and at most half of grpc_message_bytes_max",
            );
        }
        if self.forwards_in_flight_max == 0 {
            return bad("forwards_in_flight_max", "must be positive");
        }
        if self.proposals_in_flight_max == 0 || self.proposal_queue_max == 0 {
            return bad(
                "proposals_in_flight_max",
                "queues must hold at least one proposal",
            );
        }
        if self.snapshot_chunk_bytes == 0
            || self.snapshot_chunk_bytes + 4096 > self.grpc_message_bytes_max
        {
            return bad(
                "snapshot_chunk_bytes",
                "must be positive and fit in grpc_message_bytes_max",
            );
        }
        if self.append_bytes_max == 0 || self.append_bytes_max > self.grpc_message_bytes_max {
            return bad(
                "append_bytes_max",
                "must be positive and at most grpc_message_bytes_max",
            );
        }
        if self.append_entries_max == 0 {
            return bad("append_entries_max", "must be positive");
        }
        Ok(())
    }

    /// The openraft configuration these options imply. Snapshots are triggered by the
    /// node's own size-or-time policy, never by openraft's entry count.
    pub fn openraft_config(&self, cluster_name: &str) -> Result<openraft::Config, OptionsError> {
        self.validate()?;
        let c = openraft::Config {
            cluster_name: cluster_name.to_string(),
            heartbeat_interval: self.heartbeat_interval_ms,
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            install_snapshot_timeout: self.snapshot_timeout_ms,
            max_payload_entries: self.append_entries_max,
            snapshot_policy: openraft::SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: self.snapshot_keep_log_entries,
            replication_lag_threshold: self.snapshot_keep_log_entries,
            ..Default::default()
        };
        c.validate().map_err(|e| OptionsError {
            field: "openraft",
            problem: e.to_string(),
        })
    }

    pub fn forward_timeout(&self) -> Duration {
        Duration::from_millis(self.forward_timeout_ms)
    }

    pub fn leader_wait(&self) -> Duration {
        Duration::from_millis(self.leader_wait_ms)
    }
}
