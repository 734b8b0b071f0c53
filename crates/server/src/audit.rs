//! The `Audit` gRPC service: the event store replayed in sequence order, each event with
//! its readable fields and the exact canonical bytes its hash covers, for exports that
//! auditors verify offline. Served to operators and auditors only (a client certificate
//! that names no organisation): an organisation's client would otherwise see every
//! organisation's message metadata. Never payloads or keys: the canonical bytes carry
//! digests of ciphertexts and of wrapped keys only.

use sealpost_core::EventRecord;
use sealpost_proto::v1 as pb;
use sealpost_proto::v1::audit_server::Audit;
use sealpost_raft::RaftNode;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::convert;
use crate::messaging::caller_of;

/// Events read from the store per page of a replay.
pub const REPLAY_PAGE_EVENTS: usize = 1024;
/// Events buffered towards one replay's client.
pub const REPLAY_BUFFER_EVENTS: usize = 4096;

/// The `sealpost.v1.Audit` service of one node.
#[derive(Clone)]
pub struct AuditService {
    node: RaftNode,
}

impl AuditService {
    pub fn new(node: RaftNode) -> Self {
        Self { node }
    }
}

pub fn event_to_pb(rec: &EventRecord) -> pb::AuditEvent {
    pb::AuditEvent {
        seq: rec.seq,
        ts_ms: rec.ts_ms,
        log_index: rec.log_index,
        actor: rec.actor.clone(),
        kind: rec.event.kind().into(),
        message_id: rec
            .event
            .message_id()
            .map(|m| m.to_string())
            .unwrap_or_default(),
        recipient: rec
            .event
            .recipient()
            .map(|r| r.to_string())
            .unwrap_or_default(),
        prev_hash: rec.prev_hash.to_vec(),
        hash: rec.hash.to_vec(),
        canonical: rec.canonical_bytes(),
    }
}

#[tonic::async_trait]
impl Audit for AuditService {
    type ReplayStream = ReceiverStream<Result<pb::AuditEvent, Status>>;

    async fn replay(
        &self,
        req: Request<pb::ReplayRequest>,
    ) -> Result<Response<Self::ReplayStream>, Status> {
        let caller = caller_of(&req, self.node.id());
        if let Some(org) = caller.org {
            return Err(Status::permission_denied(format!(
                "the audit trail is for operators and auditors; this certificate acts for \
                 organisation {org}"
            )));
        }
        let r = req.into_inner();
        self.node
            .linearizable_barrier()
            .await
            .map_err(convert::node_error)?;
        let view = self.node.view().clone();
        let newest = view.status().map_err(convert::store_error)?.event_count;
        let to = match r.to_seq {
            0 => newest,
            n => n.min(newest),
        };
        let (tx, rx) = mpsc::channel(REPLAY_BUFFER_EVENTS);
        tokio::spawn(async move {
            let mut next = r.from_seq.max(1);
            while next <= to {
                let page = match view.events(next, REPLAY_PAGE_EVENTS) {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = tx.send(Err(convert::store_error(e))).await;
                        return;
                    }
                };
                if page.is_empty() {
                    return;
                }
                for rec in page {
                    if rec.seq > to {
                        return;
                    }
                    next = rec.seq + 1;
                    if tx.send(Ok(event_to_pb(&rec))).await.is_err() {
                        return; // the client went away
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
