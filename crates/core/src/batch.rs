//! The Raft entry payload: a batch of proposals coalesced by a node's proposer, stamped
//! with the leader's clock, and the per-proposal outcomes the state machine returns.

use serde::{Deserialize, Serialize};

use crate::command::{Proposal, Rejection};

/// Most proposals one Raft entry may carry.
pub const BATCH_PROPOSALS_MAX: usize = 1024;

/// What one Raft log entry carries.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Batch {
    /// Milliseconds since the Unix epoch on the leader that proposed the entry. The state
    /// machine never lets event time go backwards across leader changes.
    pub ts_ms: u64,
    pub proposals: Vec<Proposal>,
}

/// The result of one proposal.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Outcome {
    /// Committed: the events written, as a range of sequence numbers.
    Applied { first_seq: u64, count: u64 },
    /// Refused at apply; nothing was written.
    Rejected(Rejection),
}

/// The state machine's answer for a whole entry: one outcome per proposal, in order.
/// Entries without a batch (blank, membership) answer with no outcomes.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct BatchOutcome {
    pub outcomes: Vec<Outcome>,
}
