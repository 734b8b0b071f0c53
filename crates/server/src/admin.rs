//! The `Admin` gRPC service: cluster status (this node's, or every member's own answer),
//! membership changes, snapshots, a full hash-chain check, the dead letters (failed
//! recipients, with the reason and the last error known) for operators, and a check that
//! every view equals its rebuild from the event store, and the re-drive (`Reprocess`) of a
//! failed recipient hosted here, and a KEK rotation's re-wrap of the organisations' key sets
//! (`RewrapKeys`). Everything but status is for operators only (a client certificate that
//! names no organisation).

use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use sealpost_crypto::console_token::ConsoleTokens;
use sealpost_proto::v1 as pb;
use sealpost_proto::v1::admin_client::AdminClient;
use sealpost_proto::v1::admin_server::Admin;
use sealpost_raft::{LocalStatus, MembershipOp, RaftNode};
use tonic::{Request, Response, Status};

use sealpost_store::rebuild::{RebuildPhase, RebuildReport};
use tokio_stream::wrappers::ReceiverStream;

use crate::authz::{Action, Caller, Guard};
use crate::convert;
use crate::keystore::Keystore;
use crate::relay_worker::LastErrors;
use sealpost_core::Outcome;
use sealpost_core::command::{Command, Proposal, REWRAP_KEYS_SINCE_VERSION};
use sealpost_core::ids::EndpointId;
use sealpost_core::message::FailReason;
use sealpost_core::message::MessageId;
use sealpost_core::message::RecipientState;

/// Progress messages buffered towards a rebuild's client.
pub const REBUILD_PROGRESS_BUFFER: usize = 64;

fn report_to_pb(report: &RebuildReport) -> pb::RebuildViewsResponse {
    pb::RebuildViewsResponse {
        events: report.events,
        all_equal: report.all_equal(),
        repaired_keys: report.repaired_keys,
        views: report
            .views
            .iter()
            .map(|v| pb::ViewCheck {
                name: v.name.into(),
                live_keys: v.live_keys,
                rebuilt_keys: v.rebuilt_keys,
                live_digest: hex::encode(v.live_digest),
                rebuilt_digest: hex::encode(v.rebuilt_digest),
                equal: v.equal(),
            })
            .collect(),
    }
}

/// The `sealpost.v1.Admin` service of one node.
#[derive(Clone)]
pub struct AdminService {
    node: RaftNode,
    member_status_timeout: Duration,
    relay_errors: LastErrors,
    listing_items_max: u32,
    /// How long a reprocessed recipient has to be routed.
    reprocess_deliver_within_ms: u64,
    guard: Guard,
    /// Mints console tokens, with the console's address, when the node serves one.
    console: Option<(Arc<ConsoleTokens>, String)>,
    /// The provider this cluster serves (named in backups).
    provider: String,
    /// The node's keystore, for the re-wrap of a KEK rotation.
    keystore: Option<Keystore>,
}

/// Keystore entries a re-wrap looks through, at most (each organisation has published
/// keys besides its wrapped ones).
pub const REWRAP_KEYSTORE_KEYS_SCANNED_MAX: usize = 1_000_000;

/// Key sets one re-wrap handles, at most.
pub const REWRAP_KEY_SETS_MAX: usize = 100_000;

/// Re-wrapped key sets committed in one Raft entry, at most.
pub const REWRAP_PROPOSALS_PER_ENTRY_MAX: usize = 64;

/// Longest DNS name accepted in a node address, in bytes.
const HOST_NAME_BYTES_MAX: usize = 253;

/// Whether `addr` is `host:port` with an IP address (`[v6]:port` too) or a DNS name as host:
/// a node added to the cluster may be reached by name (a Kubernetes pod's DNS name).
pub fn is_host_port(addr: &str) -> bool {
    if addr.parse::<std::net::SocketAddr>().is_ok() {
        return true;
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        return false;
    };
    port.parse::<u16>().is_ok_and(|p| p > 0)
        && !host.is_empty()
        && host.len() <= HOST_NAME_BYTES_MAX
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Bytes of one backup chunk (well under the gRPC message limit).
pub const BACKUP_CHUNK_BYTES: usize = 1024 * 1024;
/// Backup chunks read ahead of the client, at most.
pub const BACKUP_CHUNKS_BUFFERED: usize = 4;

/// Streams the backup's header, then every file in chunks, each file's last chunk with its
/// SHA-256; stops when the client goes away. The backup copy is deleted at the end.
fn stream_backup(
    backup: sealpost_store::snapshot::BackupFiles,
    header: pb::BackupHeader,
    tx: tokio::sync::mpsc::Sender<Result<pb::BackupChunk, Status>>,
) {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let first = pb::BackupChunk {
        header: Some(header),
        ..Default::default()
    };
    if tx.blocking_send(Ok(first)).is_err() {
        return;
    }
    for (name, _) in &backup.files {
        let path = backup.dir.join(name);
        let mut f = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                let _ = tx.blocking_send(Err(Status::internal(format!("backup file {name}: {e}"))));
                return;
            }
        };
        let mut digest = Sha256::new();
        let mut offset = 0u64;
        loop {
            let mut buf = vec![0u8; BACKUP_CHUNK_BYTES];
            let n = match f.read(&mut buf) {
                Ok(n) => n,
                Err(e) => {
                    let _ = tx.blocking_send(Err(Status::internal(format!(
                        "reading backup file {name}: {e}"
                    ))));
                    return;
                }
            };
            buf.truncate(n);
            digest.update(&buf);
            // A short read is not the end: only an empty one is.
            let done = n == 0;
            let chunk = pb::BackupChunk {
                header: None,
                file: name.clone(),
                offset,
                data: buf,
                sha256: if done {
                    hex::encode(digest.clone().finalize())
                } else {
                    String::new()
                },
            };
            offset += n as u64;
            if tx.blocking_send(Ok(chunk)).is_err() {
                return;
            }
            if done {
                break;
            }
        }
    }
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
        kek_id: String::new(),
        previous_kek_ids: Vec::new(),
    }
}

impl AdminService {
    pub fn new(
        node: RaftNode,
        member_status_timeout: Duration,
        relay_errors: LastErrors,
        listing_items_max: u32,
        reprocess_deliver_within_ms: u64,
        guard: Guard,
    ) -> Self {
        Self {
            guard,
            node,
            member_status_timeout,
            relay_errors,
            listing_items_max,
            reprocess_deliver_within_ms,
            console: None,
            provider: String::new(),
            keystore: None,
        }
    }

    /// Lets operators re-wrap the organisations' key sets under this node's current KEK.
    pub fn with_keystore(mut self, keystore: Keystore) -> Self {
        self.keystore = Some(keystore);
        self
    }

    /// Names the provider in the backups this service streams.
    pub fn with_provider(mut self, provider: String) -> Self {
        self.provider = provider;
        self
    }

    /// Lets operators mint console tokens for the console at `url`.
    pub fn with_console(mut self, tokens: Arc<ConsoleTokens>, url: String) -> Self {
        self.console = Some((tokens, url));
        self
    }

    /// This node's status and, with `all_members`, each member's own answer (unreachable
    /// members say so).
    pub(crate) async fn statuses(&self, all_members: bool) -> Result<pb::StatusResponse, Status> {
        let local = self.node.status().map_err(convert::node_error)?;
        let mut this = status_to_pb(&local);
        if let Some(k) = &self.keystore {
            this.kek_id = k.kek().id_hex();
            this.previous_kek_ids = k.keks().previous.iter().map(|p| p.id_hex()).collect();
        }
        let mut members = Vec::new();
        if all_members {
            for (id, (addr, _voter)) in &local.members {
                if *id == local.id {
                    members.push(this.clone());
                } else {
                    members.push(self.ask_member(*id, addr).await);
                }
            }
        }
        Ok(pb::StatusResponse {
            this_node: Some(this),
            members,
        })
    }

    /// Refuses (and records) callers that are not operators.
    fn operator_only<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        let caller = Caller::of(req, self.node.id());
        self.guard.check(&caller, Action::Administer)?;
        Ok(caller)
    }

    /// What is known about why a recipient failed: the reason spelled out, and for a
    /// recipient at a peer the last relay error this node met with that peer.
    fn last_error(&self, reason: FailReason, provider: Option<&str>) -> String {
        let why = match reason {
            FailReason::BadSignature => "the sender's signature does not verify",
            FailReason::UnknownKey => "the envelope names a key that is not published",
            FailReason::DigestMismatch => "the opened payload does not match its digest",
            FailReason::PayloadTypeNotAccepted => {
                "the recipient does not accept the payload type (or is retired)"
            }
            FailReason::DecryptionFailed => "the sealed copy does not open",
            FailReason::Malformed => "the envelope is malformed",
            FailReason::Undeliverable => "not delivered by its deliver-by time",
            FailReason::Unacknowledged => "not acknowledged within its window",
        };
        let relay = provider.and_then(|p| {
            self.relay_errors
                .lock()
                .ok()
                .and_then(|m| m.get(p).cloned())
                .map(|e| format!("; last relay error with {p}: {e}"))
        });
        format!("{why}{}", relay.unwrap_or_default())
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
        self.guard
            .check(&Caller::of(&req, self.node.id()), Action::Status)?;
        let all = req.into_inner().all_members;
        Ok(Response::new(self.statuses(all).await?))
    }

    async fn add_node(
        &self,
        req: Request<pb::AddNodeRequest>,
    ) -> Result<Response<pb::AddNodeResponse>, Status> {
        self.operator_only(&req)?;
        let r = req.into_inner();
        if r.id == 0 {
            return Err(Status::invalid_argument("id: must be a positive integer"));
        }
        if !is_host_port(&r.addr) {
            return Err(Status::invalid_argument(format!(
                "addr: {:?} is not host:port (an IP address or a DNS name, and a port)",
                r.addr
            )));
        }
        // A node joins only if it understands every event the cluster may write: a learner
        // applies the log as a voter does. (A member already is one: a repeated add, or a
        // conflicting address, is the membership change's to answer.)
        let status = self.node.status().map_err(convert::node_error)?;
        if !status.members.contains_key(&r.id) {
            let (id, version) = self.node.node_info(&r.addr).await.map_err(|e| {
                Status::unavailable(format!(
                    "cannot ask the node at {} for its version (is it running?): {e}",
                    r.addr
                ))
            })?;
            if id != r.id {
                return Err(Status::invalid_argument(format!(
                    "the node at {} is node {id}, not node {}",
                    r.addr, r.id
                )));
            }
            let cluster_version = status.sm.cluster_version;
            if version < cluster_version {
                return Err(Status::failed_precondition(format!(
                    "node {id} understands events up to version {version}, but the cluster \
                     runs version {cluster_version}: upgrade it first"
                )));
            }
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
        self.operator_only(&req)?;
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
        req: Request<pb::SnapshotRequest>,
    ) -> Result<Response<pb::SnapshotResponse>, Status> {
        self.operator_only(&req)?;
        let index = self.node.snapshot().await.map_err(convert::node_error)?;
        Ok(Response::new(pb::SnapshotResponse {
            snapshot_index: index,
            snapshot_id: String::new(),
        }))
    }

    async fn verify_chain(
        &self,
        req: Request<pb::VerifyChainRequest>,
    ) -> Result<Response<pb::VerifyChainResponse>, Status> {
        self.operator_only(&req)?;
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

    type RebuildViewsStream = ReceiverStream<Result<pb::RebuildViewsProgress, Status>>;

    async fn rebuild_views(
        &self,
        req: Request<pb::RebuildViewsRequest>,
    ) -> Result<Response<Self::RebuildViewsStream>, Status> {
        self.operator_only(&req)?;
        let repair = req.into_inner().repair;
        let view = self.node.view().clone();
        let (tx, rx) = tokio::sync::mpsc::channel(REBUILD_PROGRESS_BUFFER);
        tokio::task::spawn_blocking(move || {
            let progress_tx = tx.clone();
            let result = view.rebuild_views(repair, |p| {
                let (phase, done, total) = match p {
                    RebuildPhase::Folding { done, total } => ("folding", done, total),
                    RebuildPhase::Comparing { done, total } => ("comparing", done, total),
                    RebuildPhase::Repairing => ("repairing", 0, 0),
                };
                // Progress is best effort: a full buffer drops a step, never the report.
                let _ = progress_tx.try_send(Ok(pb::RebuildViewsProgress {
                    phase: phase.into(),
                    done,
                    total,
                    report: None,
                }));
            });
            let last = match result {
                Ok(report) => Ok(pb::RebuildViewsProgress {
                    phase: "done".into(),
                    done: report.events,
                    total: report.events,
                    report: Some(report_to_pb(&report)),
                }),
                Err(sealpost_store::Error::Invalid(m)) => Err(Status::failed_precondition(m)),
                Err(e) => Err(convert::store_error(e)),
            };
            let _ = tx.blocking_send(last);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn dead_letters(
        &self,
        req: Request<pb::DeadLettersRequest>,
    ) -> Result<Response<pb::DeadLettersReply>, Status> {
        self.operator_only(&req)?;
        Ok(Response::new(
            self.dead_letter_list(req.into_inner()).await?,
        ))
    }

    async fn reprocess(
        &self,
        req: Request<pb::ReprocessRequest>,
    ) -> Result<Response<pb::ReprocessReply>, Status> {
        let caller = self.operator_only(&req)?;
        Ok(Response::new(
            self.reprocess_as(&caller, req.into_inner()).await?,
        ))
    }

    type BackupStream = ReceiverStream<Result<pb::BackupChunk, Status>>;

    async fn backup(
        &self,
        req: Request<pb::BackupRequest>,
    ) -> Result<Response<Self::BackupStream>, Status> {
        let caller = self.operator_only(&req)?;
        // A snapshot now, so the backup holds everything this node has applied.
        self.node.snapshot().await.map_err(convert::node_error)?;
        let view = self.node.view().clone();
        let backup = tokio::task::spawn_blocking(move || view.take_backup())
            .await
            .map_err(|e| Status::internal(format!("the backup stopped: {e}")))?
            .map_err(convert::store_error)?;
        let last = backup.meta.last_log_id.unwrap_or_default();
        let header = pb::BackupHeader {
            provider: self.provider.clone(),
            snapshot_id: backup.meta.snapshot_id.clone(),
            last_log_index: last.index,
            last_log_term: last.leader_id.term,
            event_count: backup.event_count,
            chain_head: hex::encode(backup.chain_head),
            files: backup
                .files
                .iter()
                .map(|(name, bytes)| pb::BackupFile {
                    name: name.clone(),
                    bytes: *bytes,
                })
                .collect(),
            taken_ms: crate::messaging::now_ms(),
            node: self.node.id(),
        };
        tracing::info!(actor = %caller.actor, snapshot = %header.snapshot_id, events = header.event_count, "streaming a backup");
        let (tx, rx) = tokio::sync::mpsc::channel(BACKUP_CHUNKS_BUFFERED);
        tokio::task::spawn_blocking(move || stream_backup(backup, header, tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn rewrap_keys(
        &self,
        req: Request<pb::RewrapKeysRequest>,
    ) -> Result<Response<pb::RewrapKeysReply>, Status> {
        let caller = self.operator_only(&req)?;
        Ok(Response::new(
            self.rewrap_keys_as(&caller, req.get_ref().dry_run).await?,
        ))
    }

    async fn console_token(
        &self,
        req: Request<pb::ConsoleTokenRequest>,
    ) -> Result<Response<pb::ConsoleTokenReply>, Status> {
        let caller = self.operator_only(&req)?;
        let Some((tokens, url)) = &self.console else {
            return Err(Status::failed_precondition(
                "this node serves no console: set http_listen in its configuration",
            ));
        };
        let ttl_secs = match req.get_ref().ttl_secs {
            0 => crate::console::CONSOLE_TOKEN_TTL_SECS_DEFAULT,
            n => u64::from(n).min(crate::console::CONSOLE_TOKEN_TTL_SECS_MAX),
        };
        let expires_ms = crate::messaging::now_ms().saturating_add(ttl_secs * 1000);
        let token = tokens
            .mint(&caller.identity, expires_ms)
            .map_err(|e| Status::internal(e.to_string()))?;
        tracing::info!(identity = %caller.identity, expires_ms, "console token minted");
        Ok(Response::new(pb::ConsoleTokenReply {
            token,
            expires_ms,
            console_url: url.clone(),
        }))
    }
}

impl AdminService {
    /// Failed recipients, newest first (see `Admin.DeadLetters`).
    pub(crate) async fn dead_letter_list(
        &self,
        r: pb::DeadLettersRequest,
    ) -> Result<pb::DeadLettersReply, Status> {
        let limit = match r.limit {
            0 => self.listing_items_max,
            n => n.min(self.listing_items_max),
        } as usize;
        self.node
            .linearizable_barrier()
            .await
            .map_err(convert::node_error)?;
        let view = self.node.view();
        let rows = view
            .dead_letters(r.before_seq, limit)
            .map_err(convert::store_error)?;
        let mut items = Vec::with_capacity(rows.len());
        for (seq, id, recipient) in rows {
            let Some(m) = view.message(&id).map_err(convert::store_error)? else {
                continue;
            };
            let Some(rs) = m.recipient(&recipient) else {
                continue;
            };
            let reason = match rs.state {
                RecipientState::Failed { reason, .. } => reason,
                _ => continue,
            };
            let ts_ms = view
                .event(seq)
                .map_err(convert::store_error)?
                .map(|e| e.ts_ms)
                .unwrap_or(0);
            items.push(pb::DeadLetter {
                seq,
                ts_ms,
                message_id: id.to_string(),
                recipient: recipient.to_string(),
                reason: reason.as_str().into(),
                sender_org: m.sender.org.to_string(),
                provider: rs.provider.clone().unwrap_or_default(),
                origin: m.origin.clone().unwrap_or_default(),
                last_error: self.last_error(reason, rs.provider.as_deref()),
            });
        }
        Ok(pb::DeadLettersReply { items })
    }

    /// Re-drives a failed message for `caller` (an operator), recorded under its actor.
    pub(crate) async fn reprocess_as(
        &self,
        caller: &Caller,
        r: pb::ReprocessRequest,
    ) -> Result<pb::ReprocessReply, Status> {
        let id = MessageId::parse(&r.message_id)
            .map_err(|e| Status::invalid_argument(format!("message_id: {e}")))?;
        let only = match r.recipient.as_str() {
            "" => None,
            s => Some(
                s.parse::<EndpointId>()
                    .map_err(|e| Status::invalid_argument(format!("recipient: {e}")))?,
            ),
        };
        self.node
            .linearizable_barrier()
            .await
            .map_err(convert::node_error)?;
        let msg = self
            .node
            .view()
            .message(&id)
            .map_err(convert::store_error)?
            .ok_or_else(|| Status::not_found(format!("message {id} is unknown")))?;
        let dropped = crate::messaging::load_envelope(self.node.view(), msg.sent_seq)
            .map(|e| e.payload_dropped())
            .map_err(|e| Status::internal(e.to_string()))?;
        if dropped {
            return Err(Status::failed_precondition(format!(
                "the payload of message {id} was dropped after the retention period; it \
                 cannot be re-driven, only sent again"
            )));
        }
        let mut failed: Vec<(EndpointId, u64)> = msg
            .recipients
            .iter()
            .filter(|rs| only.as_ref().is_none_or(|o| o == &rs.endpoint))
            .filter_map(|rs| match rs.state {
                RecipientState::Failed { seq, .. } if rs.is_local() => {
                    Some((rs.endpoint.clone(), seq))
                }
                _ => None,
            })
            .collect();
        if failed.is_empty() {
            // Nothing to re-drive: the decision names why (not addressed, not failed, or
            // hosted by a peer), for the recipient asked about or the first one.
            let Some(recipient) =
                only.or_else(|| msg.recipients.first().map(|rs| rs.endpoint.clone()))
            else {
                return Err(Status::failed_precondition(format!(
                    "message {id} has no recipients here"
                )));
            };
            let seq = match msg.recipient(&recipient).map(|rs| rs.state) {
                Some(RecipientState::Failed { seq, .. }) => seq,
                _ => 0,
            };
            failed.push((recipient, seq));
        }
        let deliver_by_ms =
            crate::messaging::now_ms().saturating_add(self.reprocess_deliver_within_ms);
        let mut attempts = Vec::with_capacity(failed.len());
        for (recipient, failed_seq) in failed {
            let committed = self
                .node
                .propose(Proposal {
                    actor: caller.actor.clone(),
                    command: Command::Reprocess {
                        message_id: id.clone(),
                        recipient: recipient.clone(),
                        failed_seq,
                        deliver_by_ms,
                    },
                })
                .await
                .map_err(convert::propose_error)?;
            match committed.outcome {
                Outcome::Rejected(rej) => return Err(convert::rejection(rej)),
                Outcome::Applied { first_seq, .. } => attempts.push(pb::ReprocessAttempt {
                    recipient: recipient.to_string(),
                    failed_seq,
                    seq: first_seq,
                    deliver_by_ms,
                }),
            }
        }
        Ok(pb::ReprocessReply {
            message_id: id.to_string(),
            attempts,
        })
    }

    /// A KEK rotation's re-wrap (see `Admin.RewrapKeys`): every provider-held key set not
    /// wrapped under this node's current KEK is unwrapped with the KEK it names and wrapped
    /// again under the current one. Every stale set must unwrap before anything is proposed,
    /// so a node missing a previous KEK refuses, naming it, and writes nothing.
    pub(crate) async fn rewrap_keys_as(
        &self,
        caller: &Caller,
        dry_run: bool,
    ) -> Result<pb::RewrapKeysReply, Status> {
        let Some(keystore) = &self.keystore else {
            return Err(Status::failed_precondition(
                "this node holds no keystore to re-wrap",
            ));
        };
        // Every key set committed before the call.
        self.node
            .linearizable_barrier()
            .await
            .map_err(convert::node_error)?;
        let view = self.node.view().clone();
        let (sets, more) = tokio::task::spawn_blocking(move || {
            view.wrapped_key_sets(REWRAP_KEYSTORE_KEYS_SCANNED_MAX, REWRAP_KEY_SETS_MAX)
        })
        .await
        .map_err(|e| Status::internal(format!("reading the keystore stopped: {e}")))?
        .map_err(convert::store_error)?;
        if more {
            return Err(Status::resource_exhausted(format!(
                "the keystore holds more than {REWRAP_KEY_SETS_MAX} key sets (or \
                 {REWRAP_KEYSTORE_KEYS_SCANNED_MAX} entries), the most one re-wrap handles"
            )));
        }
        let current = keystore.kek().id_hex();
        let key_sets = sets.len() as u64;
        let mut before = std::collections::BTreeMap::<String, u64>::new();
        let mut stale = Vec::new();
        for set in sets {
            let named = sealpost_crypto::kek::wrapped_by(&set.2)
                .unwrap_or_else(|| "unreadable".to_string());
            if named != current {
                stale.push(set);
            }
            *before.entry(named).or_default() += 1;
        }
        let mut rewrapped = 0;
        if !dry_run && !stale.is_empty() {
            let version = self
                .node
                .status()
                .map_err(convert::node_error)?
                .sm
                .cluster_version;
            if version < REWRAP_KEYS_SINCE_VERSION {
                return Err(Status::failed_precondition(format!(
                    "a re-wrap needs cluster version {REWRAP_KEYS_SINCE_VERSION}, the cluster \
                     runs {version}: upgrade every node first"
                )));
            }
            let mut proposals = Vec::with_capacity(stale.len());
            for (org, key_id, wrapped) in stale {
                let keys = keystore
                    .keks()
                    .unwrap(&org, &key_id, &wrapped)
                    .map_err(|e| {
                        Status::failed_precondition(format!(
                            "nothing was re-wrapped: {e}; give this node that KEK under \
                             previous_keks"
                        ))
                    })?;
                let wrapped = keystore
                    .kek()
                    .wrap(&org, &keys)
                    .map_err(|e| Status::internal(format!("wrapping keys failed: {e}")))?;
                drop(keys);
                proposals.push(Proposal {
                    actor: caller.actor.clone(),
                    command: Command::RewrapKeys {
                        org,
                        key_id,
                        wrapped,
                    },
                });
            }
            let total = proposals.len();
            // A refusal part way names how many were committed before it (each committed
            // one stands; running the re-wrap again does the rest).
            let partial = |rewrapped: u64, e: Status| {
                Status::new(
                    e.code(),
                    format!(
                        "{} ({rewrapped} of {total} key sets were re-wrapped before this)",
                        e.message()
                    ),
                )
            };
            let mut left = proposals.into_iter();
            // Bounded: one round per REWRAP_PROPOSALS_PER_ENTRY_MAX key sets.
            loop {
                let group: Vec<Proposal> =
                    left.by_ref().take(REWRAP_PROPOSALS_PER_ENTRY_MAX).collect();
                if group.is_empty() {
                    break;
                }
                let results = self
                    .node
                    .propose_group(group)
                    .await
                    .map_err(|e| partial(rewrapped, convert::propose_error(e)))?;
                for r in results {
                    match r
                        .map_err(|e| partial(rewrapped, convert::propose_error(e)))?
                        .outcome
                    {
                        Outcome::Applied { .. } => rewrapped += 1,
                        Outcome::Rejected(rej) => {
                            return Err(partial(rewrapped, convert::rejection(rej)));
                        }
                    }
                }
            }
            tracing::info!(
                identity = %caller.identity,
                rewrapped,
                total,
                kek = %current,
                "key sets re-wrapped under the current KEK"
            );
        }
        Ok(pb::RewrapKeysReply {
            current_kek_id: current,
            key_sets,
            before: before
                .into_iter()
                .map(|(kek_id, key_sets)| pb::KekKeySets { kek_id, key_sets })
                .collect(),
            rewrapped,
        })
    }
}

#[cfg(test)]
mod host_port_tests {
    use super::is_host_port;

    #[test]
    fn ip_and_dns_hosts_with_a_port_are_addresses() {
        for ok in [
            "127.0.0.1:7100",
            "[::1]:7100",
            "sealpost-3.sealpost.sealpost.svc:7100",
            "node-4:1",
        ] {
            assert!(is_host_port(ok), "{ok}");
        }
        for bad in [
            "sealpost-3",
            ":7100",
            "host:0",
            "host:99999",
            "bad_host:7100",
            "-x.y:1",
            "a..b:1",
            "http://x:1",
        ] {
            assert!(!is_host_port(bad), "{bad}");
        }
    }
}
