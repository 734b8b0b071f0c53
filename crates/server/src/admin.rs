//! The `Admin` gRPC service: cluster status (this node's, or every member's own answer),
//! membership changes, snapshots and a full hash-chain check.

use std::time::Duration;

use openraft::ServerState;
use sealpost_proto::v1 as pb;
use sealpost_proto::v1::admin_client::AdminClient;
use sealpost_proto::v1::admin_server::Admin;
use sealpost_raft::{LocalStatus, MembershipOp, RaftNode};
use tonic::{Request, Response, Status};

use crate::convert;

/// The `sealpost.v1.Admin` service of one node.
#[derive(Clone)]
pub struct AdminService {
    node: RaftNode,
    member_status_timeout: Duration,
}

pub fn role_name(s: ServerState, voter: bool) -> &'static str {
    match s {
        ServerState::Leader => "leader",
        ServerState::Candidate => "candidate",
        ServerState::Shutdown => "shutdown",
        ServerState::Follower | ServerState::Learner if !voter => "learner",
        ServerState::Follower | ServerState::Learner => "follower",
    }
}

pub fn status_to_pb(s: &LocalStatus) -> pb::NodeStatus {
    pb::NodeStatus {
        id: s.id,
        addr: s.addr.clone(),
        role: role_name(s.state, s.voter).into(),
        voter: s.voter,
        term: s.term,
        last_log_index: s.last_log_index,
        last_applied_index: s.last_applied_index,
        event_count: s.sm.event_count,
        chain_head: hex::encode(s.sm.chain_head),
        leader_id: s.leader.unwrap_or(0),
        snapshot_index: s.snapshot_index,
        purged_index: s.purged_index,
        cluster_version: u32::from(s.sm.cluster_version),
        log_entries: s.log_entries,
        reachable: true,
        error: String::new(),
    }
}

impl AdminService {
    pub fn new(node: RaftNode, member_status_timeout: Duration) -> Self {
        Self {
            node,
            member_status_timeout,
        }
    }

    async fn ask_member(&self, id: u64, addr: &str) -> pb::NodeStatus {
        let unreachable = |error: String| pb::NodeStatus {
            id,
            addr: addr.to_string(),
            reachable: false,
            error,
            ..Default::default()
        };
        let channel = match self.node.peer_channel(addr) {
            Ok(c) => c,
            Err(e) => return unreachable(e),
        };
        let mut req = Request::new(pb::StatusRequest { all_members: false });
        req.set_timeout(self.member_status_timeout);
        match AdminClient::new(channel).status(req).await {
            Ok(r) => r
                .into_inner()
                .this_node
                .unwrap_or_else(|| unreachable("empty answer".into())),
            Err(s) => unreachable(s.message().to_string()),
        }
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(
        &self,
        req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let local = self.node.status().map_err(convert::node_error)?;
        let this = status_to_pb(&local);
        let mut members = Vec::new();
        if req.into_inner().all_members {
            for (id, (addr, _voter)) in &local.members {
                if *id == local.id {
                    members.push(this.clone());
                } else {
                    members.push(self.ask_member(*id, addr).await);
                }
            }
        }
        Ok(Response::new(pb::StatusResponse {
            this_node: Some(this),
            members,
        }))
    }

    async fn add_node(
        &self,
        req: Request<pb::AddNodeRequest>,
    ) -> Result<Response<pb::AddNodeResponse>, Status> {
        let r = req.into_inner();
        if r.id == 0 {
            return Err(Status::invalid_argument("id: must be a positive integer"));
        }
        if r.addr.parse::<std::net::SocketAddr>().is_err() {
            return Err(Status::invalid_argument(format!(
                "addr: {:?} is not host:port",
                r.addr
            )));
        }
        let mut index = self
            .node
            .change_membership(MembershipOp::AddLearner {
                id: r.id,
                addr: r.addr,
            })
            .await
            .map_err(convert::node_error)?;
        if r.promote {
            index = self
                .node
                .change_membership(MembershipOp::Promote { id: r.id })
                .await
                .map_err(convert::node_error)?;
        }
        Ok(Response::new(pb::AddNodeResponse { log_index: index }))
    }

    async fn remove_node(
        &self,
        req: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::RemoveNodeResponse>, Status> {
        let id = req.into_inner().id;
        let index = self
            .node
            .change_membership(MembershipOp::Remove { id })
            .await
            .map_err(convert::node_error)?;
        Ok(Response::new(pb::RemoveNodeResponse { log_index: index }))
    }

    async fn snapshot(
        &self,
        _req: Request<pb::SnapshotRequest>,
    ) -> Result<Response<pb::SnapshotResponse>, Status> {
        let index = self.node.snapshot().await.map_err(convert::node_error)?;
        Ok(Response::new(pb::SnapshotResponse {
            snapshot_index: index,
            snapshot_id: String::new(),
        }))
    }

    async fn verify_chain(
        &self,
        _req: Request<pb::VerifyChainRequest>,
    ) -> Result<Response<pb::VerifyChainResponse>, Status> {
        let view = self.node.view().clone();
        let res =
            tokio::task::spawn_blocking(move || view.verify_chain().map(|r| (r, view.status())))
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(convert::store_error)?;
        let (verdict, status) = res;
        let head = status
            .map(|s| hex::encode(s.chain_head))
            .unwrap_or_default();
        Ok(Response::new(match verdict {
            Ok(events) => pb::VerifyChainResponse {
                ok: true,
                events,
                chain_head: head,
                problem: String::new(),
            },
            Err(e) => pb::VerifyChainResponse {
                ok: false,
                events: 0,
                chain_head: head,
                problem: e.to_string(),
            },
        }))
    }
}
