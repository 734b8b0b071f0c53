//! A sealpost node: the gRPC services (Directory, Admin, the internal Raft service and
//! reflection) over mutual TLS on one port, on top of the raft crate's node; node
//! configuration; and [`local::LocalCluster`], the in-process multi-node cluster that
//! `sealpost dev` and the end-to-end tests run.
//!
//! # Layout
//! - [`node`]: start and stop one node.
//! - [`config`]: [`config::NodeConfig`], file → environment → validation.
//! - [`directory`], [`admin`]: the client-facing services.
//! - [`convert`]: protobuf ↔ domain conversions and status codes (the gRPC edge).
//! - [`local`]: a provider's cluster of nodes in one process, laid out on disk.

pub mod admin;
pub mod config;
pub mod convert;
pub mod directory;
pub mod local;
pub mod node;

pub use config::NodeConfig;
pub use node::{NodeHandle, ServerError, start};
