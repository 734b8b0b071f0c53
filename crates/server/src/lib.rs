//! A sealpost node: the gRPC services (Directory, Messaging, Admin, the internal Raft
//! service and reflection) over mutual TLS on one port, the Relay service for peer
//! providers on another, the delivery and relay workers, on top of the raft crate's node; node
//! configuration; and [`local::LocalCluster`], the in-process multi-node cluster that
//! `sealpost dev` and the end-to-end tests run.
//!
//! # Layout
//! - [`node`]: start and stop one node.
//! - [`config`]: [`config::NodeConfig`], file → environment → validation.
//! - [`directory`], [`messaging`], [`admin`]: the client-facing services; [`audit`]: the
//!   event store replayed for auditors.
//! - [`delivery`]: the leader's delivery and deadline worker; [`retention`]: the leader's
//!   payload-retention worker.
//! - [`federation`]: relay port, provider key and trust bundle settings.
//! - [`relay`]: the `Relay` service peers call; [`relay_worker`]: the leader's relay,
//!   notification, peer-directory and remote-deadline worker (one task per peer).
//! - [`mllp`]: the HL7 v2 / MLLP front door for clinical systems; [`mllp_out`]: the back
//!   door, pushing routed messages to a receiving system and recording its answer;
//!   [`mllp_notify`]: outcome acknowledgements to the sending system.
//! - [`keystore`]: organisations' private keys, unwrapped with the provider's KEK.
//! - [`listener`]: the TCP listener with its connection cap.
//! - [`convert`]: protobuf ↔ domain conversions and status codes (the gRPC edge).
//! - [`crypto_pool`]: the crypto threads sealing and opening run on.
//! - [`local`]: a provider's cluster of nodes in one process, laid out on disk.

pub mod admin;
pub mod audit;
pub mod config;
pub mod convert;
pub mod crypto_pool;
pub mod delivery;
pub mod directory;
pub mod federation;
pub mod keystore;
pub mod listener;
pub mod local;
pub mod messaging;
pub mod mllp;
pub mod mllp_notify;
pub mod mllp_out;
pub mod node;
pub mod relay;
pub mod relay_worker;
pub mod retention;

pub use config::NodeConfig;
pub use node::{NodeHandle, ServerError, start};
