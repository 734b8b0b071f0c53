//! The server side of node-to-node traffic: the `Raft` gRPC service. It hands Raft
//! messages to openraft, receives snapshot streams onto disk and installs them, and on the
//! leader executes writes, read-index requests and membership changes forwarded by
//! followers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use openraft::raft::{AppendEntriesRequest, VoteRequest};
use sealpost_core::codec;
use sealpost_core::command::Proposal;
use sealpost_proto::v1::raft_server::Raft as RaftRpc;
use sealpost_proto::v1::{RaftBytes, SnapshotChunk, snapshot_chunk};
use sealpost_store::TypeConfig;
use sealpost_store::snapshot::check_name;
use sealpost_store::types::{NodeId, Snapshot, SnapshotFiles};
use tokio::io::AsyncWriteExt;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::network::{Faults, SnapshotCounters, SnapshotHeader};
use crate::node::{Core, ForwardReply, MembershipOp, NodeError};
use crate::proposer::ProposerHandle;

/// Largest snapshot a node accepts, in bytes.
pub const SNAPSHOT_BYTES_MAX: u64 = 1 << 40;

/// The `sealpost.v1.Raft` service of one node.
pub struct RaftService {
    core: Arc<Core>,
    /// This node's proposer: writes forwarded by followers join the leader's own batches.
    proposer: ProposerHandle,
    counters: Arc<SnapshotCounters>,
    faults: Faults,
}

impl RaftService {
    pub(crate) fn new(
        core: Arc<Core>,
        proposer: ProposerHandle,
        counters: Arc<SnapshotCounters>,
        faults: Faults,
    ) -> Self {
        Self {
            core,
            proposer,
            counters,
            faults,
        }
    }

    fn check_reachable(&self) -> Result<(), Status> {
        if self.faults.is_isolated() {
            return Err(Status::unavailable("node isolated by fault injection"));
        }
        Ok(())
    }

    fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Status> {
        codec::decode(bytes)
            .map_err(|e| Status::invalid_argument(format!("undecodable raft message: {e}")))
    }

    async fn receive_snapshot(
        &self,
        mut stream: Streaming<SnapshotChunk>,
    ) -> Result<Vec<u8>, Status> {
        let first = stream
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))??;
        let Some(snapshot_chunk::Part::Header(h)) = first.part else {
            return Err(Status::invalid_argument(
                "a snapshot stream must start with its header",
            ));
        };
        let (vote, meta, files): SnapshotHeader = Self::decode(&h)?;
        check_name(&meta.snapshot_id).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let mut expected: BTreeMap<String, u64> = BTreeMap::new();
        let mut total = 0u64;
        for (name, len) in files {
            check_name(&name).map_err(|e| Status::invalid_argument(e.to_string()))?;
            total = total.saturating_add(len);
            expected.insert(name, len);
        }
        if total > SNAPSHOT_BYTES_MAX {
            return Err(Status::resource_exhausted(format!(
                "snapshot of {total} bytes exceeds the limit of {SNAPSHOT_BYTES_MAX} bytes"
            )));
        }
        let dir = self
            .core
            .view
            .incoming_snapshot_dir()
            .map_err(|e| Status::internal(e.to_string()))?;
        let mut written: BTreeMap<String, u64> = BTreeMap::new();
        let mut open: Option<(String, tokio::fs::File)> = None;
        while let Some(msg) = stream.next().await {
            let msg = msg?;
            // A long snapshot is the leader talking: the election watchdog must not fire.
            self.core.heard_leader();
            let Some(snapshot_chunk::Part::File(chunk)) = msg.part else {
                return Err(Status::invalid_argument("a second snapshot header"));
            };
            let Some(&len) = expected.get(&chunk.name) else {
                return Err(Status::invalid_argument(format!(
                    "unexpected snapshot file {:?}",
                    chunk.name
                )));
            };
            let at = written.entry(chunk.name.clone()).or_insert(0);
            if chunk.offset != *at || *at + chunk.data.len() as u64 > len {
                return Err(Status::invalid_argument(format!(
                    "snapshot file {:?}: chunk at {} does not follow {} bytes of {len}",
                    chunk.name, chunk.offset, at
                )));
            }
            if open.as_ref().is_none_or(|(n, _)| n != &chunk.name) {
                if let Some((_, f)) = open.take() {
                    f.sync_all()
                        .await
                        .map_err(|e| Status::internal(e.to_string()))?;
                }
                let f = tokio::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.join(&chunk.name))
                    .await
                    .map_err(|e| Status::internal(e.to_string()))?;
                open = Some((chunk.name.clone(), f));
            }
            if let Some((_, f)) = open.as_mut() {
                f.write_all(&chunk.data)
                    .await
                    .map_err(|e| Status::internal(e.to_string()))?;
            }
            *at += chunk.data.len() as u64;
            self.counters
                .chunks_received
                .fetch_add(1, Ordering::Relaxed);
        }
        if let Some((_, f)) = open.take() {
            f.sync_all()
                .await
                .map_err(|e| Status::internal(e.to_string()))?;
        }
        for (name, len) in &expected {
            let got = written.get(name).copied().unwrap_or(0);
            if got != *len {
                if *len == 0 {
                    tokio::fs::File::create(dir.join(name))
                        .await
                        .map_err(|e| Status::internal(e.to_string()))?;
                    continue;
                }
                return Err(Status::data_loss(format!(
                    "snapshot file {name:?} arrived with {got} of {len} bytes"
                )));
            }
        }
        let snapshot = Snapshot {
            meta,
            snapshot: Box::new(SnapshotFiles { dir }),
        };
        let res = self.core.raft.install_full_snapshot(vote, snapshot).await;
        if res.is_ok() {
            self.counters
                .snapshots_installed
                .fetch_add(1, Ordering::Relaxed);
        }
        Ok(codec::encode(&res))
    }
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(&self, req: Request<RaftBytes>) -> Result<Response<RaftBytes>, Status> {
        self.check_reachable()?;
        let rpc: AppendEntriesRequest<TypeConfig> = Self::decode(&req.into_inner().data)?;
        // Noted on arrival, as openraft notes it (a slow fsync must not look like silence).
        self.core.heard_leader();
        let res = self.core.raft.append_entries(rpc).await;
        Ok(Response::new(RaftBytes {
            data: codec::encode(&res).into(),
        }))
    }

    async fn vote(&self, req: Request<RaftBytes>) -> Result<Response<RaftBytes>, Status> {
        self.check_reachable()?;
        let rpc: VoteRequest<NodeId> = Self::decode(&req.into_inner().data)?;
        let res = self.core.raft.vote(rpc).await;
        Ok(Response::new(RaftBytes {
            data: codec::encode(&res).into(),
        }))
    }

    async fn install_snapshot(
        &self,
        req: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftBytes>, Status> {
        self.check_reachable()?;
        let data = self.receive_snapshot(req.into_inner()).await?;
        self.core.heard_leader();
        Ok(Response::new(RaftBytes { data: data.into() }))
    }

    async fn forward(&self, req: Request<RaftBytes>) -> Result<Response<RaftBytes>, Status> {
        self.check_reachable()?;
        let proposals: Vec<Proposal> = Self::decode(&req.into_inner().data)?;
        if proposals.len() > self.core.opts.batch_proposals_max {
            return Err(Status::resource_exhausted(format!(
                "a forwarded batch holds at most {} proposals",
                self.core.opts.batch_proposals_max
            )));
        }
        let reply = if self.core.raft.metrics().borrow().current_leader == Some(self.core.id) {
            // Through the proposer, so batches forwarded by every follower coalesce with
            // the leader's own into as few entries as possible. A forwarded batch stays
            // whole, as one group: the groups in it (a send with its delivery verdict)
            // stay whole too.
            let n = proposals.len();
            ForwardReply::Done(match self.proposer.propose_group(proposals).await {
                Ok(results) => results,
                Err(e) => vec![Err(e); n],
            })
        } else {
            ForwardReply::NotLeader
        };
        Ok(Response::new(RaftBytes {
            data: codec::encode(&reply).into(),
        }))
    }

    async fn read_index(&self, _req: Request<RaftBytes>) -> Result<Response<RaftBytes>, Status> {
        self.check_reachable()?;
        let res: Result<u64, NodeError> = self.core.read_index_local().await;
        Ok(Response::new(RaftBytes {
            data: codec::encode(&res).into(),
        }))
    }

    async fn info(
        &self,
        _req: Request<sealpost_proto::v1::NodeInfoRequest>,
    ) -> Result<Response<sealpost_proto::v1::NodeInfo>, Status> {
        Ok(Response::new(sealpost_proto::v1::NodeInfo {
            id: self.core.id,
            event_version: u32::from(self.core.event_version),
        }))
    }

    async fn change_membership(
        &self,
        req: Request<RaftBytes>,
    ) -> Result<Response<RaftBytes>, Status> {
        self.check_reachable()?;
        let op: MembershipOp = Self::decode(&req.into_inner().data)?;
        let res = self.core.membership_local(op).await;
        Ok(Response::new(RaftBytes {
            data: codec::encode(&res).into(),
        }))
    }
}
