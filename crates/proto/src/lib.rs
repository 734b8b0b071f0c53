//! Protobuf definitions and generated gRPC code for package `sealpost.v1`. The only crate
//! that knows protobuf: services convert to domain types at the gRPC edge.

#![allow(clippy::all, missing_docs, unreachable_pub)]

pub mod v1 {
    tonic::include_proto!("sealpost.v1");
}

/// Encoded file descriptor set, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("sealpost_descriptor");
