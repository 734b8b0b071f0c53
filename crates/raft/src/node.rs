//! A Raft node: openraft wired to the RocksDB stores, the tonic network and the proposer,
//! plus what the services need from it: writes (from any node; followers forward to the
//! leader), linearizable read barriers, membership changes, snapshots and status.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, Raft, ServerState};
use sealpost_core::batch::{Batch, Outcome};
use sealpost_core::codec;
use sealpost_core::command::Proposal;
use sealpost_proto::v1::RaftBytes;
use sealpost_proto::v1::raft_server::RaftServer;
use sealpost_store::types::NodeId;
use sealpost_store::{LogStore, SmStatus, StateView, StoreOptions, TypeConfig};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tonic::transport::ClientTlsConfig;

use crate::config::RaftOptions;
use crate::network::{Faults, NetShared, NetworkFactory, SnapshotCounters};
use crate::proposer::{self, Committed, ProposeError, ProposerHandle, Submit};
use crate::service::RaftService;

/// Attempts a write makes when leadership moves under it.
pub const WRITE_ATTEMPTS_MAX: u32 = 5;
/// Rounds of heartbeats a linearizable read may take to confirm this node's leadership.
pub const READ_CONFIRM_ATTEMPTS_MAX: u32 = 3;
/// Pause between two such rounds, in milliseconds.
pub const READ_CONFIRM_RETRY_MS: u64 = 20;
/// How often the snapshot policy looks at the log.
pub const SNAPSHOT_POLICY_TICK_MS: u64 = 1_000;

/// Everything needed to start a node.
#[derive(Clone)]
pub struct NodeOptions {
    pub id: NodeId,
    /// The node's folder: `raft-log/` and `sm/` live in it.
    pub data_dir: PathBuf,
    /// Where peers and clients reach this node (host:port).
    pub advertise_addr: String,
    /// Peer addresses from this node's configuration (may include itself).
    pub peers: BTreeMap<NodeId, String>,
    pub cluster_name: String,
    pub raft: RaftOptions,
    /// TLS for connecting to peers (CA, and this node's certificate as client identity).
    pub client_tls: ClientTlsConfig,
    pub store: StoreOptions,
    /// BROKEN ON PURPOSE: as leader, answer a write as soon as it is handed to Raft, before
    /// any quorum holds it. Only the chaos harness's broken test node sets it, to prove that
    /// isolating the leader and killing it loses acknowledged writes and that the checkers
    /// see it; `sealpost` itself has no way to turn it on.
    pub unsafe_ack_before_commit: bool,
    /// The highest event version this node tells its peers it understands: the build's
    /// (`EVENT_VERSION_CURRENT`), or less to stand in for an older build in upgrade tests.
    pub event_version: u16,
}

/// How long asking a peer for its [`NodeInfo`](sealpost_proto::v1::NodeInfo) may take.
pub const NODE_INFO_TIMEOUT_MS: u64 = 2_000;

/// Errors of reads and administration.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeError {
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Invalid(String),
    #[error("storage: {0}")]
    Storage(String),
}

/// A membership change, executed by the leader.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipOp {
    AddLearner { id: NodeId, addr: String },
    Promote { id: NodeId },
    Remove { id: NodeId },
}

/// A leader's answer to a forwarded write.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum ForwardReply {
    /// One result per forwarded proposal, in order.
    Done(Vec<Result<Committed, ProposeError>>),
    NotLeader,
    Failed(String),
}

/// What one node knows about itself and the cluster.
#[derive(Clone, Debug)]
pub struct LocalStatus {
    pub id: NodeId,
    pub addr: String,
    pub state: ServerState,
    pub voter: bool,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub last_log_index: u64,
    pub last_applied_index: u64,
    pub snapshot_index: u64,
    pub purged_index: u64,
    pub log_entries: u64,
    pub sm: SmStatus,
    /// Members by id: address and whether it votes.
    pub members: BTreeMap<NodeId, (String, bool)>,
}

/// What a follower asks of the leader.
#[derive(Clone, Copy, Debug)]
enum LeaderCall {
    Forward,
    ReadIndex,
    Membership,
}

/// The parts shared by the proposer, the service and the node handle.
pub(crate) struct Core {
    pub(crate) id: NodeId,
    pub(crate) raft: Raft<TypeConfig>,
    pub(crate) net: Arc<NetShared>,
    pub(crate) opts: RaftOptions,
    /// See [`NodeOptions::event_version`].
    pub(crate) event_version: u16,
    pub(crate) view: StateView,
    /// See [`NodeOptions::unsafe_ack_before_commit`].
    unsafe_ack_before_commit: bool,
    /// When this node last heard from a leader (an AppendEntries or snapshot it accepted),
    /// in milliseconds since `born`: the election watchdog reads it.
    heard_leader_ms: std::sync::atomic::AtomicU64,
    born: std::time::Instant,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Core {
    /// Notes that a leader was heard from just now.
    pub(crate) fn heard_leader(&self) {
        self.heard_leader_ms.store(
            self.born.elapsed().as_millis() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Milliseconds since a leader was last heard from (or since this node started).
    fn leader_silence_ms(&self) -> u64 {
        (self.born.elapsed().as_millis() as u64).saturating_sub(
            self.heard_leader_ms
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// The current leader, waiting up to `leader_wait_ms` for one to be known.
    pub(crate) async fn leader(&self) -> Option<NodeId> {
        let mut rx = self.raft.metrics();
        let deadline = tokio::time::Instant::now() + self.opts.leader_wait();
        loop {
            if let Some(l) = rx.borrow().current_leader {
                return Some(l);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => return None,
            }
        }
    }

    fn address_of(&self, id: NodeId) -> Option<String> {
        let m = self.raft.metrics().borrow().membership_config.clone();
        let from_membership = m.membership().get_node(&id).map(|n| n.addr.clone());
        self.net.address_of(id, from_membership.as_deref())
    }

    async fn call_leader(
        &self,
        leader: NodeId,
        call: LeaderCall,
        payload: Vec<u8>,
    ) -> Result<bytes::Bytes, String> {
        let addr = self
            .address_of(leader)
            .ok_or_else(|| format!("the address of leader {leader} is unknown"))?;
        if self.net.faults.is_isolated() {
            return Err("this node is isolated by fault injection".into());
        }
        let mut client = self.net.client(&addr).map_err(|e| e.to_string())?;
        let mut req = tonic::Request::new(RaftBytes {
            data: payload.into(),
        });
        req.set_timeout(self.opts.forward_timeout());
        let resp = match call {
            LeaderCall::Forward => client.forward(req).await,
            LeaderCall::ReadIndex => client.read_index(req).await,
            LeaderCall::Membership => client.change_membership(req).await,
        };
        resp.map(|r| r.into_inner().data)
            .map_err(|s| format!("{call:?} to leader {leader} at {addr}: {}", s.message()))
    }

    /// Appends a batch on this node, which must be the leader.
    pub(crate) async fn write_local(&self, proposals: Vec<Proposal>) -> ForwardReply {
        let batch = Batch {
            ts_ms: now_ms(),
            proposals,
        };
        if self.unsafe_ack_before_commit
            && self.raft.metrics().borrow().current_leader == Some(self.id)
        {
            // Broken on purpose: hand the batch to Raft and report every proposal applied
            // at once, whether or not a quorum ever holds it.
            let count = batch.proposals.len();
            let raft = self.raft.clone();
            tokio::spawn(async move {
                let _ = raft.client_write(batch).await;
            });
            return ForwardReply::Done(
                (0..count)
                    .map(|_| {
                        Ok(Committed {
                            outcome: Outcome::Applied {
                                first_seq: 0,
                                count: 1,
                            },
                            log_index: 0,
                        })
                    })
                    .collect(),
            );
        }
        match self.raft.client_write(batch).await {
            Ok(resp) => {
                let log_index = resp.log_id.index;
                ForwardReply::Done(
                    resp.data
                        .outcomes
                        .into_iter()
                        .map(|outcome| Ok(Committed { outcome, log_index }))
                        .collect(),
                )
            }
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                ForwardReply::NotLeader
            }
            Err(e) => ForwardReply::Failed(e.to_string()),
        }
    }

    /// A read index confirmed by a quorum; this node must be the leader. openraft gives
    /// the round of heartbeats that confirms leadership one heartbeat interval: a round
    /// that misses it on a busy machine is tried again, up to [`READ_CONFIRM_ATTEMPTS_MAX`]
    /// rounds within the forward timeout (as etcd retries its ReadIndex), so a slow moment
    /// is not an error for the client; a leader cut off from the others still fails.
    pub(crate) async fn read_index_local(&self) -> Result<u64, NodeError> {
        let deadline = tokio::time::Instant::now() + self.opts.forward_timeout();
        // Why the last round fell short; `None` once the deadline passed.
        let mut short = None;
        for attempt in 0..READ_CONFIRM_ATTEMPTS_MAX {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(READ_CONFIRM_RETRY_MS)).await;
            }
            if self.net.faults.take_read_confirmation_failure() {
                short = Some("too few members answered (injected)".to_string());
                continue;
            }
            match tokio::time::timeout_at(deadline, self.raft.get_read_log_id()).await {
                Ok(Ok((read, _applied))) => return Ok(read.map(|l| l.index).unwrap_or(0)),
                Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e)))) => {
                    short = Some(e.to_string());
                }
                Ok(Err(e)) => {
                    return Err(NodeError::Unavailable(format!(
                        "this node cannot serve a linearizable read: {e}"
                    )));
                }
                Err(_) => {
                    short = None;
                    break;
                }
            }
        }
        Err(NodeError::Unavailable(match short {
            Some(why) => format!(
                "this node cannot serve a linearizable read: {why} \
                 (after {READ_CONFIRM_ATTEMPTS_MAX} rounds); it may be partitioned from the cluster"
            ),
            None => "this node could not confirm its leadership with a quorum in time; \
                     it may be partitioned from the cluster"
                .into(),
        }))
    }

    pub(crate) async fn membership_local(&self, op: MembershipOp) -> Result<u64, NodeError> {
        let unavailable = |e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>| match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => {
                NodeError::Unavailable("leadership moved; retry".into())
            }
            RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
                NodeError::Invalid(c.to_string())
            }
            other => NodeError::Unavailable(other.to_string()),
        };
        let membership = self.raft.metrics().borrow().membership_config.clone();
        let voters: BTreeSet<NodeId> = membership.membership().voter_ids().collect();
        let resp = match op {
            MembershipOp::AddLearner { id, addr } => {
                match membership.membership().get_node(&id) {
                    // Added already at this address: a retry after a lost answer succeeds
                    // (and AddNode goes on to promote it).
                    Some(n) if n.addr == addr => {
                        return Ok(membership.log_id().map_or(0, |l| l.index));
                    }
                    Some(n) => {
                        return Err(NodeError::Invalid(format!(
                            "node {id} is already a member, at {}",
                            n.addr
                        )));
                    }
                    None => {}
                }
                self.raft
                    .add_learner(id, BasicNode::new(addr), true)
                    .await
                    .map_err(unavailable)?
            }
            MembershipOp::Promote { id } => {
                if membership.membership().get_node(&id).is_none() {
                    return Err(NodeError::Invalid(format!(
                        "node {id} is not a learner of this cluster; add it first"
                    )));
                }
                if voters.contains(&id) {
                    // Promoted already: a retry after a lost answer succeeds.
                    return Ok(membership.log_id().map_or(0, |l| l.index));
                }
                self.raft
                    .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                    .await
                    .map_err(unavailable)?
            }
            MembershipOp::Remove { id } => {
                if membership.membership().get_node(&id).is_none() {
                    return Err(NodeError::Invalid(format!("node {id} is not a member")));
                }
                let change = if voters.contains(&id) {
                    ChangeMembers::RemoveVoters(BTreeSet::from([id]))
                } else {
                    ChangeMembers::RemoveNodes(BTreeSet::from([id]))
                };
                self.raft
                    .change_membership(change, false)
                    .await
                    .map_err(unavailable)?
            }
        };
        Ok(resp.log_id.index)
    }
}

impl Submit for Core {
    fn forwards(&self) -> bool {
        self.raft
            .metrics()
            .borrow()
            .current_leader
            .is_some_and(|l| l != self.id)
    }

    async fn submit(
        &self,
        proposals: Vec<Proposal>,
    ) -> Result<Vec<Result<Committed, ProposeError>>, ProposeError> {
        for attempt in 0..WRITE_ATTEMPTS_MAX {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
            }
            let Some(leader) = self.leader().await else {
                return Err(ProposeError::NoLeader(format!(
                    "no leader elected within {} ms",
                    self.opts.leader_wait_ms
                )));
            };
            let reply = if leader == self.id {
                self.write_local(proposals.clone()).await
            } else {
                match self
                    .call_leader(leader, LeaderCall::Forward, codec::encode(&proposals))
                    .await
                    .and_then(|b| codec::decode::<ForwardReply>(&b).map_err(|e| e.to_string()))
                {
                    Ok(r) => r,
                    Err(e) => return Err(ProposeError::Unknown(e)),
                }
            };
            match reply {
                ForwardReply::Done(results) => return Ok(results),
                ForwardReply::NotLeader => continue,
                ForwardReply::Failed(e) => return Err(ProposeError::Unknown(e)),
            }
        }
        Err(ProposeError::NoLeader(
            "leadership kept moving; retry".into(),
        ))
    }
}

/// A running Raft node. Cheap to clone.
#[derive(Clone)]
pub struct RaftNode {
    core: Arc<Core>,
    proposer: ProposerHandle,
    log: LogStore,
    faults: Faults,
    counters: Arc<SnapshotCounters>,
    advertise_addr: String,
    stop: watch::Sender<bool>,
}

impl RaftNode {
    /// Opens the stores and starts Raft. Does not initialize a cluster: see
    /// [`RaftNode::initialize`].
    pub async fn start(opts: NodeOptions) -> Result<Self, NodeError> {
        let config = opts
            .raft
            .openraft_config(&opts.cluster_name)
            .map_err(|e| NodeError::Invalid(e.to_string()))?;
        let store_opts = opts.store.clone();
        let dir = opts.data_dir.clone();
        let (log, sm) =
            tokio::task::spawn_blocking(move || sealpost_store::open(&dir, &store_opts))
                .await
                .map_err(|e| NodeError::Storage(e.to_string()))?
                .map_err(|e| NodeError::Storage(e.to_string()))?;
        let view = sm.view();
        let faults = Faults::default();
        let net = Arc::new(NetShared::new(
            opts.client_tls.clone(),
            (opts.raft.grpc_message_bytes_max, opts.raft.append_bytes_max),
            opts.raft.snapshot_chunk_bytes,
            opts.peers.clone(),
            faults.clone(),
        ));
        let counters = net.counters.clone();
        let raft = Raft::new(
            opts.id,
            Arc::new(config),
            NetworkFactory {
                shared: net.clone(),
            },
            log.clone(),
            sm,
        )
        .await
        .map_err(|e| NodeError::Storage(e.to_string()))?;
        let core = Arc::new(Core {
            id: opts.id,
            raft,
            net,
            opts: opts.raft.clone(),
            event_version: opts.event_version,
            view,
            unsafe_ack_before_commit: opts.unsafe_ack_before_commit,
            heard_leader_ms: std::sync::atomic::AtomicU64::new(0),
            born: std::time::Instant::now(),
        });
        let proposer = proposer::start(&opts.raft, core.clone());
        let (stop, stop_rx) = watch::channel(false);
        tokio::spawn(snapshot_policy(core.clone(), log.clone(), stop_rx.clone()));
        tokio::spawn(election_watchdog(core.clone(), stop_rx));
        Ok(Self {
            core,
            proposer,
            log,
            faults,
            counters,
            advertise_addr: opts.advertise_addr,
            stop,
        })
    }

    pub fn id(&self) -> NodeId {
        self.core.id
    }

    /// Whether this node currently leads (as its own Raft metrics say): the workers that
    /// act only on the leader check this before every pass.
    pub fn is_leader(&self) -> bool {
        self.raft().metrics().borrow().current_leader == Some(self.id())
    }

    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.core.raft
    }

    pub fn view(&self) -> &StateView {
        &self.core.view
    }

    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// The proposer's batch sizes and refusals.
    pub fn batch_metrics(&self) -> &crate::proposer::BatchMetrics {
        self.proposer.metrics()
    }

    /// Seconds each fsync of the Raft log's WAL took.
    pub fn log_fsync_seconds(&self) -> sealpost_store::timing::Timing {
        self.log.fsync_seconds()
    }

    /// What this node's Raft log database holds on disk and in memory.
    pub fn log_disk_usage(&self) -> Result<sealpost_store::DiskUsage, sealpost_store::Error> {
        self.log.disk_usage()
    }

    /// The committed index this node's log last saved.
    pub fn committed_index(&self) -> u64 {
        self.log.committed_index()
    }

    pub fn snapshot_counters(&self) -> &SnapshotCounters {
        &self.counters
    }

    /// Replaces the TLS configuration this node connects to its peers with (a rotated
    /// node certificate or CA bundle); peers are reconnected with it.
    pub fn set_client_tls(&self, tls: ClientTlsConfig) {
        self.core.net.set_client_tls(tls);
    }

    /// [`RaftNode::set_client_tls`] as a function that holds only the network, not the
    /// node: for callbacks that may outlive the node's shutdown without keeping its stores
    /// open.
    pub fn client_tls_setter(&self) -> impl Fn(ClientTlsConfig) + Send + Sync + 'static {
        let net = self.core.net.clone();
        move |tls| net.set_client_tls(tls)
    }

    /// How many times the peer TLS configuration was replaced.
    pub fn client_tls_generation(&self) -> u64 {
        self.core.net.tls_generation()
    }

    /// The gRPC service peers call.
    pub fn service(&self) -> RaftServer<RaftService> {
        RaftServer::new(RaftService::new(
            self.core.clone(),
            self.proposer.clone(),
            self.counters.clone(),
            self.faults.clone(),
        ))
        .max_decoding_message_size(self.core.opts.grpc_message_bytes_max)
        .max_encoding_message_size(self.core.opts.grpc_message_bytes_max)
    }

    /// Initializes a new cluster with these voters. Harmless on a node that already has
    /// state: every initial member may call it.
    pub async fn initialize(&self, members: BTreeMap<NodeId, String>) -> Result<(), NodeError> {
        if self
            .core
            .raft
            .is_initialized()
            .await
            .map_err(|e| NodeError::Unavailable(e.to_string()))?
        {
            return Ok(());
        }
        let nodes: BTreeMap<NodeId, BasicNode> = members
            .into_iter()
            .map(|(id, addr)| (id, BasicNode::new(addr)))
            .collect();
        match self.core.raft.initialize(nodes).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(NodeError::Unavailable(e.to_string())),
        }
    }

    /// Commits one proposal, through the leader, batched with concurrent ones.
    pub async fn propose(&self, proposal: Proposal) -> Result<Committed, ProposeError> {
        self.proposer.propose(proposal).await
    }

    /// Commits `proposals` together, in one Raft entry and in this order: one result per
    /// proposal (see [`crate::proposer::ProposerHandle::propose_group`]).
    pub async fn propose_group(
        &self,
        proposals: Vec<Proposal>,
    ) -> Result<Vec<Result<Committed, ProposeError>>, ProposeError> {
        self.proposer.propose_group(proposals).await
    }

    /// Proposes ahead of queued client proposals: for the node's own workers, whose
    /// proposals complete earlier writes. Forwarded like any proposal when not leader.
    pub async fn propose_urgent(&self, proposal: Proposal) -> Result<Committed, ProposeError> {
        self.proposer.propose_urgent(proposal).await
    }

    /// Waits until this node has applied everything committed before the call: a read
    /// index from the leader, confirmed by a quorum. A partitioned old leader fails here.
    pub async fn linearizable_barrier(&self) -> Result<(), NodeError> {
        let core = &self.core;
        let leader = core
            .leader()
            .await
            .ok_or_else(|| NodeError::Unavailable("no leader is known".into()))?;
        let index = if leader == core.id {
            core.read_index_local().await?
        } else {
            let bytes = core
                .call_leader(leader, LeaderCall::ReadIndex, Vec::new())
                .await
                .map_err(NodeError::Unavailable)?;
            codec::decode::<Result<u64, NodeError>>(&bytes)
                .map_err(|e| NodeError::Unavailable(e.to_string()))??
        };
        core.raft
            .wait(Some(core.opts.forward_timeout()))
            .applied_index_at_least(Some(index), "linearizable read")
            .await
            .map_err(|e| {
                NodeError::Unavailable(format!("this node did not catch up in time: {e}"))
            })?;
        Ok(())
    }

    /// Waits until this node has applied the log entry at `index`: after a proposal that
    /// the leader committed (and applied) on this follower's behalf, before reading what
    /// it wrote from this node's views.
    pub async fn wait_applied(&self, index: u64) -> Result<(), NodeError> {
        self.core
            .raft
            .wait(Some(self.core.opts.forward_timeout()))
            .applied_index_at_least(Some(index), "applied locally")
            .await
            .map_err(|e| {
                NodeError::Unavailable(format!("this node did not catch up in time: {e}"))
            })?;
        Ok(())
    }

    /// Runs a membership change on the leader (forwarded when this node is not it).
    pub async fn change_membership(&self, op: MembershipOp) -> Result<u64, NodeError> {
        let core = &self.core;
        let leader = core
            .leader()
            .await
            .ok_or_else(|| NodeError::Unavailable("no leader is known".into()))?;
        if leader == core.id {
            return core.membership_local(op).await;
        }
        let bytes = core
            .call_leader(leader, LeaderCall::Membership, codec::encode(&op))
            .await
            .map_err(NodeError::Unavailable)?;
        codec::decode::<Result<u64, NodeError>>(&bytes)
            .map_err(|e| NodeError::Unavailable(e.to_string()))?
    }

    /// Builds a snapshot now and waits for it. Returns its last included index.
    pub async fn snapshot(&self) -> Result<u64, NodeError> {
        let raft = &self.core.raft;
        let applied = raft
            .metrics()
            .borrow()
            .last_applied
            .map(|l| l.index)
            .unwrap_or(0);
        raft.trigger()
            .snapshot()
            .await
            .map_err(|e| NodeError::Unavailable(e.to_string()))?;
        let mut rx = raft.metrics();
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(self.core.opts.snapshot_timeout_ms);
        loop {
            let snap = rx.borrow().snapshot.map(|l| l.index).unwrap_or(0);
            if snap >= applied && snap > 0 {
                return Ok(snap);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => {
                    return Err(NodeError::Unavailable(
                        "snapshot did not finish in time".into(),
                    ));
                }
            }
        }
    }

    pub fn status(&self) -> Result<LocalStatus, NodeError> {
        let m = self.core.raft.metrics().borrow().clone();
        let sm = self
            .core
            .view
            .status()
            .map_err(|e| NodeError::Storage(e.to_string()))?;
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, n)| (*id, (n.addr.clone(), voters.contains(id))))
            .collect();
        Ok(LocalStatus {
            id: self.core.id,
            addr: self.advertise_addr.clone(),
            state: m.state,
            voter: voters.contains(&self.core.id),
            term: m.current_term,
            leader: m.current_leader,
            last_log_index: m.last_log_index.unwrap_or(0),
            last_applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            snapshot_index: m.snapshot.map(|l| l.index).unwrap_or(0),
            purged_index: m.purged.map(|l| l.index).unwrap_or(0),
            log_entries: self.log.entry_count().unwrap_or(0),
            sm,
            members,
        })
    }

    /// Stops Raft and the node's background tasks.
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.core.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
    }
}

/// Whether a follower should call an election itself: it votes, the cluster has other
/// voters, and no leader has been heard from for `silence_ms`, at least `threshold_ms`.
fn should_elect(
    state: ServerState,
    id: NodeId,
    voters: &BTreeSet<NodeId>,
    silence_ms: u64,
    threshold_ms: u64,
) -> bool {
    state == ServerState::Follower
        && voters.contains(&id)
        && voters.len() > 1
        && silence_ms >= threshold_ms
}

/// How long a follower waits without a word from a leader before the watchdog calls an
/// election: twice the longest election timeout (openraft's lease plus its own longest
/// timeout) plus a random part of half of it, so the followers do not all call at once.
fn leader_silence_threshold_ms(opts: &RaftOptions, random: u64) -> u64 {
    let max = opts.election_timeout_max_ms;
    2 * max + random % (max / 2).max(1)
}

/// The election watchdog. openraft 0.9 makes a follower that once lost a campaign to a
/// longer log wait a further `smaller_log_timeout` (twice the longest election timeout)
/// before every later campaign, until the next one starts; a leader that is paused, or that
/// keeps a longer log while it cannot reach its followers, then goes unreplaced for 7 s or
/// more (CHAOS.md). A follower that has heard no leader for
/// [`leader_silence_threshold_ms`] calls the election itself; the vote rules keep that safe.
async fn election_watchdog(core: Arc<Core>, mut stop: watch::Receiver<bool>) {
    let tick = Duration::from_millis(core.opts.heartbeat_interval_ms.max(1));
    // Not cryptography: only spreads the followers' thresholds apart.
    let mut random = core.id.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
    let mut threshold = leader_silence_threshold_ms(&core.opts, random);
    // Ends when the node stops.
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(tick) => {}
        }
        let (state, voters) = {
            let m = core.raft.metrics();
            let m = m.borrow();
            let voters: BTreeSet<NodeId> = m.membership_config.membership().voter_ids().collect();
            (m.state, voters)
        };
        if state != ServerState::Follower {
            // A leader, candidate or learner is not waiting for a leader.
            core.heard_leader();
            continue;
        }
        let silence = core.leader_silence_ms();
        if !should_elect(state, core.id, &voters, silence, threshold) {
            continue;
        }
        tracing::info!(
            node = core.id,
            silence_ms = silence,
            "no word from a leader for too long; calling an election"
        );
        if core.raft.trigger().elect().await.is_err() {
            return;
        }
        core.heard_leader();
        random = random.rotate_left(17).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        threshold = leader_silence_threshold_ms(&core.opts, random);
    }
}

/// When to snapshot: after `bytes_max` bytes of log were appended since the last snapshot
/// (or, at first, since the oldest entry the log held when opened), or after `interval`
/// with new entries applied. Pure, so its decisions are unit-tested.
///
/// The size is counted from the last snapshot, not from the last purge: openraft purges only
/// `snapshot_keep_log_entries` entries behind a snapshot, so under a high rate of large
/// entries the log behind the newest snapshot can stay over the limit for a long time, and
/// a policy that looked at it snapshotted on every tick (each one a checkpoint that flushes
/// every memtable).
#[derive(Debug)]
struct SnapshotPacer {
    bytes_max: u64,
    interval: Option<Duration>,
    /// Appended bytes at the last snapshot: 0 at first, so a log opened holding more than
    /// the limit is snapshotted soon.
    bytes_at_snapshot: u64,
    /// The snapshot index seen at the previous tick.
    seen_snapshot: Option<u64>,
    last: tokio::time::Instant,
}

impl SnapshotPacer {
    fn new(opts: &RaftOptions, now: tokio::time::Instant) -> Self {
        Self {
            bytes_max: opts.snapshot_log_bytes_max,
            interval: (opts.snapshot_interval_secs > 0)
                .then(|| Duration::from_secs(opts.snapshot_interval_secs)),
            bytes_at_snapshot: 0,
            seen_snapshot: None,
            last: now,
        }
    }

    /// Whether to ask for a snapshot now, given the last applied index, the current
    /// snapshot's index and the log's appended bytes ([`LogStore::bytes_appended`]).
    fn tick(&mut self, applied: u64, snap: u64, appended: u64, now: tokio::time::Instant) -> bool {
        // A snapshot this policy did not ask for (one installed from the leader, say) also
        // starts the count again.
        if self.seen_snapshot.is_some_and(|s| s != snap) {
            self.bytes_at_snapshot = appended;
        }
        self.seen_snapshot = Some(snap);
        if applied <= snap {
            return false;
        }
        let by_size = appended.saturating_sub(self.bytes_at_snapshot) >= self.bytes_max;
        let by_time = self
            .interval
            .is_some_and(|i| now.duration_since(self.last) >= i);
        if by_size || by_time {
            self.last = now;
            self.bytes_at_snapshot = appended;
            return true;
        }
        false
    }
}

/// Asks openraft for a snapshot whenever the [`SnapshotPacer`] says so.
async fn snapshot_policy(core: Arc<Core>, log: LogStore, mut stop: watch::Receiver<bool>) {
    let mut pacer = SnapshotPacer::new(&core.opts, tokio::time::Instant::now());
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(Duration::from_millis(SNAPSHOT_POLICY_TICK_MS)) => {}
        }
        let (applied, snap) = {
            let m = core.raft.metrics();
            let m = m.borrow();
            (
                m.last_applied.map(|l| l.index).unwrap_or(0),
                m.snapshot.map(|l| l.index).unwrap_or(0),
            )
        };
        if pacer.tick(
            applied,
            snap,
            log.bytes_appended(),
            tokio::time::Instant::now(),
        ) && core.raft.trigger().snapshot().await.is_err()
        {
            return;
        }
    }
}

impl RaftNode {
    /// A TLS channel to another node, with this node's identity (for admin fan-out).
    pub fn peer_channel(&self, addr: &str) -> Result<tonic::transport::Channel, String> {
        self.core.net.channel(addr).map_err(|e| e.to_string())
    }

    /// The highest event version this node understands (see [`NodeOptions::event_version`]).
    pub fn event_version(&self) -> u16 {
        self.core.event_version
    }

    /// Asks the node at `addr` who it is and which event version it understands.
    pub async fn node_info(&self, addr: &str) -> Result<(NodeId, u16), String> {
        let channel = self.peer_channel(addr)?;
        let mut req = tonic::Request::new(sealpost_proto::v1::NodeInfoRequest {});
        req.set_timeout(std::time::Duration::from_millis(NODE_INFO_TIMEOUT_MS));
        let info = sealpost_proto::v1::raft_client::RaftClient::new(channel)
            .info(req)
            .await
            .map_err(|s| s.message().to_string())?
            .into_inner();
        let version = u16::try_from(info.event_version)
            .map_err(|_| format!("event version {} is out of range", info.event_version))?;
        Ok((info.id, version))
    }
}

#[cfg(test)]
mod watchdog_tests {
    use super::*;

    #[test]
    fn only_a_voting_follower_that_heard_no_leader_for_long_calls_an_election() {
        let voters = BTreeSet::from([1, 2, 3]);
        assert!(should_elect(
            ServerState::Follower,
            2,
            &voters,
            5_000,
            4_500
        ));
        assert!(
            !should_elect(ServerState::Follower, 2, &voters, 4_000, 4_500),
            "not yet"
        );
        assert!(!should_elect(ServerState::Leader, 2, &voters, 9_000, 4_500));
        assert!(!should_elect(
            ServerState::Candidate,
            2,
            &voters,
            9_000,
            4_500
        ));
        assert!(!should_elect(
            ServerState::Learner,
            4,
            &voters,
            9_000,
            4_500
        ));
        assert!(
            !should_elect(ServerState::Follower, 4, &voters, 9_000, 4_500),
            "not a voter"
        );
        assert!(
            !should_elect(ServerState::Follower, 1, &BTreeSet::from([1]), 9_000, 4_500),
            "a lone voter leads by itself"
        );
    }

    #[test]
    fn the_threshold_waits_out_openraft_and_spreads_the_followers() {
        let opts = RaftOptions::default();
        let max = opts.election_timeout_max_ms;
        let all: BTreeSet<u64> = (0..1_000u64)
            .map(|r| leader_silence_threshold_ms(&opts, r.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
            .collect();
        // Never before openraft's own unflagged campaign (lease plus the longest timeout).
        assert!(
            all.iter().all(|t| *t >= 2 * max && *t < 2 * max + max / 2),
            "{all:?}"
        );
        assert!(all.len() > 100, "the followers' thresholds differ");
    }
}

#[cfg(test)]
mod snapshot_pacer_tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    fn pacer(bytes_max: u64, interval_secs: u64) -> (SnapshotPacer, tokio::time::Instant) {
        let opts = RaftOptions {
            snapshot_log_bytes_max: bytes_max,
            snapshot_interval_secs: interval_secs,
            ..RaftOptions::default()
        };
        let t0 = tokio::time::Instant::now();
        (SnapshotPacer::new(&opts, t0), t0)
    }

    #[test]
    fn a_log_that_stays_large_behind_its_snapshot_is_snapshotted_once_per_limit() {
        // 400 KiB entries, purged only 1,000 entries behind a snapshot: the log behind the
        // newest snapshot holds about 400 MiB however often it is snapshotted.
        let (mut p, t0) = pacer(256 * MIB, 0);
        let entry = 400 * 1024;
        let mut snapshots = Vec::new();
        let mut snap = 0u64;
        for index in 1..=3_000u64 {
            let appended = index * entry;
            if p.tick(index, snap, appended, t0 + Duration::from_secs(index)) {
                snapshots.push(index);
                snap = index;
            }
        }
        // One snapshot per 256 MiB appended (655.36 entries), never one per tick: the count
        // starts again when the new snapshot is seen, a tick after it was asked for.
        assert_eq!(snapshots, vec![656, 1313, 1970, 2627], "{snapshots:?}");
    }

    #[test]
    fn a_log_opened_over_the_limit_is_snapshotted_at_the_first_tick_with_news() {
        let (mut p, t0) = pacer(256 * MIB, 0);
        assert!(
            !p.tick(10, 10, 300 * MIB, t0),
            "nothing applied since the snapshot"
        );
        assert!(p.tick(11, 10, 300 * MIB, t0));
        assert!(!p.tick(12, 10, 300 * MIB, t0), "asked already");
    }

    #[test]
    fn an_installed_snapshot_starts_the_count_again() {
        let (mut p, t0) = pacer(100, 0);
        assert!(!p.tick(5, 0, 60, t0));
        // A snapshot at 5 arrives from the leader; 60 more bytes are not 100 since it.
        assert!(!p.tick(9, 5, 60, t0));
        assert!(!p.tick(9, 5, 120, t0));
        assert!(p.tick(9, 5, 160, t0));
    }

    #[test]
    fn time_alone_triggers_only_with_something_applied() {
        let (mut p, t0) = pacer(u64::MAX, 60);
        assert!(!p.tick(3, 0, 0, t0 + Duration::from_secs(59)));
        assert!(p.tick(3, 0, 0, t0 + Duration::from_secs(60)));
        assert!(
            !p.tick(3, 3, 0, t0 + Duration::from_secs(200)),
            "nothing new applied"
        );
        assert!(p.tick(4, 3, 0, t0 + Duration::from_secs(200)));
        let (mut never, t0) = pacer(u64::MAX, 0);
        assert!(!never.tick(9, 0, 0, t0 + Duration::from_secs(1_000_000)));
    }
}
