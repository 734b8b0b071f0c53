//! sealpost's domain core: identifiers, the directory model, the closed event enum with its
//! hash chain, commands and the pure decision and fold functions. No I/O: it takes
//! commands and facts and returns events and view changes, so every rule can be tested
//! exhaustively without a disk or a network.
//!
//! # Layout
//! - [`ids`]: HPI-O / HPI-I / IHI with Luhn check digits; endpoint addresses.
//! - [`directory`]: organisations, endpoints, payload types, public keys; field limits.
//! - [`event`]: the versioned `Event` enum, `EventRecord`, the hash chain and its verifier.
//! - [`canonical`]: the frozen byte encoding the chain hashes.
//! - [`command`]: commands, stateless validation and the deterministic `decide`.
//! - [`view`]: `fold` from events to view changes; search index keys.
//! - [`message`]: envelope v1 (signed header, sealed copies), message ids, lifecycle states.
//! - [`messaging`]: the message lifecycle: send, delivery and deadline decisions, its fold
//!   and the messaging view key layouts.
//! - [`send_form`]: the stateless checks of a send request's fields, shared by a node's
//!   edge and the fuzz target.
//! - [`retention`]: dropping old payloads (as an event) while the chain still verifies.
//! - [`federation`]: provider ids, transport receipts, delivery notifications, peer
//!   directory changes, and the decisions and folds of the federation events.
//! - [`audit`]: exported event lines (readable fields beside the hashed canonical bytes)
//!   and their offline verification.
//! - [`merkle`]: the RFC 9162 Merkle tree over the event store: roots, inclusion and
//!   consistency proofs and their verification.
//! - [`calendar`]: UTC dates and times from epoch milliseconds.
//! - [`batch`]: the Raft entry payload and per-proposal outcomes.
//! - [`codec`]: the versioned storage codec.

pub mod audit;
pub mod batch;
pub mod calendar;
pub mod canonical;
pub mod codec;
pub mod command;
pub mod directory;
pub mod event;
pub mod federation;
pub mod ids;
pub mod merkle;
pub mod message;
pub mod messaging;
pub mod retention;
pub mod send_form;
pub mod view;

#[cfg(test)]
mod sim;

pub use batch::{Batch, BatchOutcome, Outcome};
pub use command::{Command, Proposal, Rejection, decide};
pub use event::{Event, EventRecord, Hash};
pub use ids::{EndpointId, HpiI, HpiO, Ihi};
