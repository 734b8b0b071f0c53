//! openraft wiring for sealpost: the Raft network over tonic with mutual TLS, the
//! per-node proposer that coalesces concurrent writes into one entry, forwarding from
//! followers to the leader, linearizable read barriers, membership changes and the
//! size-or-time snapshot policy.
//!
//! # Layout
//! - [`node`]: [`RaftNode`], the handle the services use.
//! - [`proposer`]: batching of proposals into Raft entries.
//! - [`network`]: openraft's network (client side), snapshot streaming, fault injection.
//! - [`service`]: the `sealpost.v1.Raft` gRPC service (server side).
//! - [`config`]: the [`RaftOptions`] of a node.

pub mod config;
pub mod network;
pub mod node;
pub mod proposer;
pub mod service;

pub use config::RaftOptions;
pub use node::{LocalStatus, MembershipOp, NodeError, NodeOptions, RaftNode};
pub use proposer::{Committed, ProposeError};
pub use sealpost_store::TypeConfig;
