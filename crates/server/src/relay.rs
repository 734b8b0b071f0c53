//! The `Relay` gRPC service, served on the node's relay port to peer providers: receive
//! sealed envelopes (commit `Received`, then answer with signed transport receipts),
//! record delivery notifications for messages this provider relayed out, answer status
//! questions about messages a peer relayed here, and export this provider's own directory
//! changes.
//!
//! A peer is identified by the CA that issued its certificate (checked against the trust
//! bundle during the TLS handshake, then matched by issuer here); it may only relay
//! messages of organisations it hosts and only learn the state of messages it relayed.

use std::sync::Arc;

use sealpost_core::Outcome;
use sealpost_core::codec;
use sealpost_core::command::{Command, Proposal, Rejection};
use sealpost_core::event::Event;
use sealpost_core::federation::{
    NOTIFY_BATCH_MAX, Notification, PEER_CHANGES_MAX, PeerChange, RELAY_BATCH_MESSAGES_MAX,
    RemoteOutcome, TransportReceipt, receive_refusal,
};
use sealpost_core::message::{Envelope, MessageId, MessageStatus, RecipientState};
use sealpost_core::view::Facts;
use sealpost_crypto::provider_key::ProviderKey;
use sealpost_proto::v1 as pb;
use sealpost_proto::v1::relay_server::Relay;
use sealpost_raft::RaftNode;
use sealpost_store::StateView;
use tonic::{Request, Response, Status};

use crate::convert;
use crate::federation::TrustBundle;
use crate::messaging::{load_envelope, now_ms};
use crate::storage_floor::StorageFloor;

/// Most message ids one status question may name.
pub const STATUS_IDS_MAX: usize = 256;

/// The `sealpost.v1.Relay` service of one node.
#[derive(Clone)]
pub struct RelayService {
    node: RaftNode,
    provider: String,
    bundle: Arc<TrustBundle>,
    key: Arc<ProviderKey>,
    payload_bytes_max: u64,
    /// Largest `Receive` proposal: the Raft batch limit less room for the rest of it.
    proposal_bytes_max: usize,
    /// Relays are refused (and retried by the peer) while this node's storage is low.
    floor: StorageFloor,
}

impl RelayService {
    pub fn new(
        node: RaftNode,
        provider: String,
        bundle: Arc<TrustBundle>,
        key: Arc<ProviderKey>,
        (payload_bytes_max, raft_batch_bytes_max): (u64, usize),
        floor: StorageFloor,
    ) -> Self {
        Self {
            node,
            provider,
            bundle,
            key,
            payload_bytes_max,
            proposal_bytes_max: raft_batch_bytes_max
                .saturating_sub(RECEIVE_OVERHEAD_BYTES)
                .max(1),
            floor,
        }
    }

    fn view(&self) -> &StateView {
        self.node.view()
    }

    /// The peer provider calling, from its certificate's issuer.
    fn peer<T>(&self, req: &Request<T>) -> Result<String, Status> {
        let der = req
            .peer_certs()
            .and_then(|c| c.first().map(|c| c.as_ref().to_vec()))
            .ok_or_else(|| Status::unauthenticated("a peer provider certificate is required"))?;
        self.bundle
            .peer_of_certificate(&der)
            .map(|p| p.provider.clone())
            .ok_or_else(|| {
                Status::permission_denied("the certificate was not issued by a trusted peer CA")
            })
    }

    fn actor(&self, peer: &str) -> String {
        format!("relay:{peer}@node-{}", self.node.id())
    }

    /// The signed receipt of a message received here (the same bytes every time).
    pub(crate) fn receipt(&self, msg: &MessageStatus) -> Result<TransportReceipt, Status> {
        let envelope = load_envelope(self.view(), msg.sent_seq)
            .map_err(|e| Status::internal(e.to_string()))?;
        let mut r = TransportReceipt {
            message_id: msg.message_id.clone(),
            header_digest: envelope.header.digest(),
            provider: self.provider.clone(),
            seq: msg.sent_seq,
            ts_ms: msg.sent_ts_ms,
            signature: Vec::new(),
        };
        self.key.sign(&mut r);
        Ok(r)
    }

    /// A message the peer relayed here, if any.
    fn relayed_by(&self, peer: &str, id: &MessageId) -> Result<Option<MessageStatus>, Status> {
        Ok(self
            .view()
            .message(id)
            .map_err(convert::store_error)?
            .filter(|m| m.origin.as_deref() == Some(peer)))
    }

    /// The rules of `Receive` checked on this node's view, for an early and specific answer.
    fn precheck(&self, peer: &str, env: &Envelope) -> Result<Option<Rejection>, Status> {
        let view = self.view();
        let mut facts = Facts::default();
        let h = &env.header;
        for org in std::iter::once(&h.sender.org).chain(h.recipient_orgs().iter()) {
            let o = view.organisation(org).map_err(convert::store_error)?;
            facts.load_organisation(org.clone(), o);
        }
        let m = view.message(&h.message_id).map_err(convert::store_error)?;
        facts.load_message(h.message_id.clone(), m);
        Ok(receive_refusal(peer, env, &facts, now_ms()))
    }

    /// The final outcome of a recipient here, as a notification to the sender's provider.
    fn outcome_of(
        &self,
        msg: &MessageStatus,
        endpoint: &sealpost_core::EndpointId,
        state: &RecipientState,
    ) -> Result<Option<Notification>, Status> {
        let (outcome, seq) = match *state {
            RecipientState::Acked { status, seq } => {
                let note = match self.view().event(seq).map_err(convert::store_error)? {
                    Some(rec) => match rec.event {
                        Event::Acked { note, .. } => note,
                        _ => String::new(),
                    },
                    None => String::new(),
                };
                (RemoteOutcome::Acked { status, note }, seq)
            }
            RecipientState::Failed { reason, seq } => (RemoteOutcome::Failed { reason }, seq),
            _ => return Ok(None),
        };
        Ok(Some(Notification {
            message_id: msg.message_id.clone(),
            recipient: endpoint.clone(),
            outcome,
            peer_seq: seq,
        }))
    }
}

/// Room a `Receive` proposal needs around its envelopes, in bytes.
pub const RECEIVE_OVERHEAD_BYTES: usize = 64 * 1024;

/// Splits envelopes, in order, into groups whose encoded size stays within `bytes_max`
/// (a single larger envelope forms a group alone; the proposer then names the limit).
fn chunks_within(envelopes: Vec<Envelope>, bytes_max: usize) -> Vec<Vec<Envelope>> {
    let mut out: Vec<Vec<Envelope>> = Vec::new();
    let mut size = 0usize;
    for e in envelopes {
        let n = codec::encoded_len(&e);
        match out.last_mut() {
            Some(last) if size + n <= bytes_max => last.push(e),
            _ => {
                size = 0;
                out.push(vec![e]);
            }
        }
        size += n;
    }
    out
}

fn deliver_error(id: String, error: String, permanent: bool) -> pb::DeliverResult {
    pb::DeliverResult {
        message_id: id,
        receipt: Vec::new(),
        error,
        permanent,
    }
}

#[tonic::async_trait]
impl Relay for RelayService {
    #[tracing::instrument(skip_all, fields(node = self.node.id()))]
    async fn deliver(
        &self,
        req: Request<pb::DeliverRequest>,
    ) -> Result<Response<pb::DeliverReply>, Status> {
        let peer = self.peer(&req)?;
        self.floor.admit()?;
        let items = req.into_inner().envelopes;
        if items.is_empty() || items.len() > RELAY_BATCH_MESSAGES_MAX {
            return Err(Status::invalid_argument(format!(
                "envelopes: {} in one request, expected 1 to {RELAY_BATCH_MESSAGES_MAX}",
                items.len()
            )));
        }
        let mut results: Vec<Option<pb::DeliverResult>> = vec![None; items.len()];
        let mut ids: Vec<Option<MessageId>> = vec![None; items.len()];
        let mut fresh: Vec<Envelope> = Vec::new();
        for (i, bytes) in items.iter().enumerate() {
            let env: Envelope = match codec::decode(bytes) {
                Ok(e) => e,
                Err(e) => {
                    results[i] = Some(deliver_error(
                        String::new(),
                        format!("envelope {i} does not decode: {e}"),
                        true,
                    ));
                    continue;
                }
            };
            let id = env.header.message_id.clone();
            ids[i] = Some(id.clone());
            if let Err(e) = env.validate(self.payload_bytes_max) {
                results[i] = Some(deliver_error(id.to_string(), e.to_string(), true));
                continue;
            }
            match self.precheck(&peer, &env)? {
                None => fresh.push(env),
                // Already here: answered with its receipt below.
                Some(Rejection::AlreadyExists(_)) => {}
                // Past its deliver-by: refused for good (receivers refuse expired envelopes).
                Some(r) if now_ms() > env.header.deliver_by_ms => {
                    results[i] = Some(deliver_error(id.to_string(), r.to_string(), true));
                }
                // Anything else may change (the directory catching up): try again later.
                Some(r) => {
                    results[i] = Some(deliver_error(id.to_string(), r.to_string(), false));
                }
            }
        }
        // One proposal per chunk that fits a Raft entry, proposed one after the other so
        // they are committed in the order the peer sent them.
        for chunk in chunks_within(fresh, self.proposal_bytes_max) {
            let proposal = Proposal {
                actor: self.actor(&peer),
                command: Command::Receive {
                    from_provider: peer.clone(),
                    envelopes: chunk,
                },
            };
            proposal.validate().map_err(convert::rejection)?;
            let committed = self
                .node
                .propose(proposal)
                .await
                .map_err(convert::propose_error)?;
            if let Outcome::Rejected(r) = committed.outcome {
                tracing::debug!(peer = %peer, reason = %r, "relayed batch refused at commit");
            }
            // The leader applied it; this node (perhaps a follower) reads the receipts'
            // facts from its own views, so it waits to have applied it too.
            self.node
                .wait_applied(committed.log_index)
                .await
                .map_err(convert::node_error)?;
        }
        // Whatever is now committed here gets its receipt: fresh, or the original one.
        let mut out = Vec::with_capacity(items.len());
        for (i, slot) in results.into_iter().enumerate() {
            if let Some(r) = slot {
                out.push(r);
                continue;
            }
            let Some(id) = ids[i].clone() else { continue };
            match self.relayed_by(&peer, &id)? {
                Some(m) => {
                    let receipt = self.receipt(&m)?;
                    out.push(pb::DeliverResult {
                        message_id: id.to_string(),
                        receipt: codec::encode(&receipt),
                        error: String::new(),
                        permanent: false,
                    });
                }
                None => out.push(deliver_error(
                    id.to_string(),
                    "not committed (the directory may be catching up); retry later".into(),
                    false,
                )),
            }
        }
        Ok(Response::new(pb::DeliverReply { results: out }))
    }

    #[tracing::instrument(skip_all, fields(node = self.node.id()))]
    async fn notify(
        &self,
        req: Request<pb::NotifyRequest>,
    ) -> Result<Response<pb::NotifyReply>, Status> {
        let peer = self.peer(&req)?;
        let items = req.into_inner().notifications;
        if items.len() > NOTIFY_BATCH_MAX {
            return Err(Status::invalid_argument(format!(
                "notifications: {} in one request, the limit is {NOTIFY_BATCH_MAX}",
                items.len()
            )));
        }
        let actor = self.actor(&peer);
        let proposals = items.iter().map(|bytes| {
            let peer = peer.clone();
            let actor = actor.clone();
            async move {
                let n: Notification = match codec::decode(bytes) {
                    Ok(n) => n,
                    Err(e) => return (format!("notification does not decode: {e}"), true),
                };
                // An outcome can overtake the receipt it follows (the peer routed and its
                // receiver answered before this provider recorded `Relayed`): not yet.
                let unrecorded = self
                    .view()
                    .message(&n.message_id)
                    .ok()
                    .flatten()
                    .and_then(|m| m.recipient(&n.recipient).map(|r| r.state))
                    == Some(RecipientState::Sent);
                if unrecorded {
                    return (
                        format!(
                            "the receipt of {} is not recorded here yet; retry",
                            n.message_id
                        ),
                        false,
                    );
                }
                let p = Proposal {
                    actor,
                    command: Command::Notify {
                        provider: peer,
                        notification: n,
                    },
                };
                if let Err(r) = p.validate() {
                    return (r.to_string(), true);
                }
                match self.node.propose_urgent(p).await {
                    Ok(c) => match c.outcome {
                        Outcome::Applied { .. }
                        | Outcome::Rejected(Rejection::AlreadyExists(_)) => (String::new(), false),
                        Outcome::Rejected(r) => (r.to_string(), true),
                    },
                    Err(e) => (e.to_string(), false),
                }
            }
        });
        let results = futures::future::join_all(proposals)
            .await
            .into_iter()
            .map(|(error, permanent)| pb::NotifyResult { error, permanent })
            .collect();
        Ok(Response::new(pb::NotifyReply { results }))
    }

    async fn status(
        &self,
        req: Request<pb::PeerStatusRequest>,
    ) -> Result<Response<pb::PeerStatusReply>, Status> {
        let peer = self.peer(&req)?;
        let ids = req.into_inner().message_ids;
        if ids.len() > STATUS_IDS_MAX {
            return Err(Status::invalid_argument(format!(
                "message_ids: {} in one request, the limit is {STATUS_IDS_MAX}",
                ids.len()
            )));
        }
        self.node
            .linearizable_barrier()
            .await
            .map_err(convert::node_error)?;
        let mut messages = Vec::with_capacity(ids.len());
        for raw in ids {
            let id = MessageId::parse(raw.trim()).map_err(convert::field_error)?;
            let Some(m) = self.relayed_by(&peer, &id)? else {
                messages.push(pb::PeerMessage {
                    message_id: id.to_string(),
                    known: false,
                    ..Default::default()
                });
                continue;
            };
            let mut recipients = Vec::with_capacity(m.recipients.len());
            for r in &m.recipients {
                let outcome = self
                    .outcome_of(&m, &r.endpoint, &r.state)?
                    .map(|n| codec::encode(&n))
                    .unwrap_or_default();
                recipients.push(pb::PeerRecipient {
                    endpoint: r.endpoint.to_string(),
                    state: r.state.name().into(),
                    outcome,
                });
            }
            messages.push(pb::PeerMessage {
                message_id: id.to_string(),
                known: true,
                receipt: codec::encode(&self.receipt(&m)?),
                recipients,
            });
        }
        Ok(Response::new(pb::PeerStatusReply { messages }))
    }

    async fn directory_changes(
        &self,
        req: Request<pb::DirectoryChangesRequest>,
    ) -> Result<Response<pb::DirectoryChangesReply>, Status> {
        self.peer(&req)?;
        let r = req.into_inner();
        let limit = match r.limit as usize {
            0 => PEER_CHANGES_MAX,
            n => n.min(PEER_CHANGES_MAX),
        };
        self.node
            .linearizable_barrier()
            .await
            .map_err(convert::node_error)?;
        let recs = self
            .view()
            .directory_log(r.after_seq, limit)
            .map_err(convert::store_error)?;
        let through_seq = recs.last().map(|r| r.seq).unwrap_or(r.after_seq);
        let changes: Vec<PeerChange> = recs
            .iter()
            .filter_map(|r| PeerChange::from_event(&r.event))
            .collect();
        Ok(Response::new(pb::DirectoryChangesReply {
            changes: codec::encode(&changes),
            through_seq,
            more: recs.len() == limit,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sealpost_core::ids::HpiO;
    use sealpost_core::message::{
        ENVELOPE_VERSION, EnvelopeHeader, Priority, SealedCopy, Sender, payload_digest,
    };

    fn envelope(n: u32, bytes: usize) -> Envelope {
        Envelope {
            header: EnvelopeHeader {
                version: ENVELOPE_VERSION,
                message_id: MessageId::new("prov-a", &format!("01890a5d-ac96-774b-bcce-{n:012x}"))
                    .expect("id"),
                sender: Sender {
                    org: HpiO::from_serial(1),
                    practitioner: None,
                },
                sender_key_id: "k1".into(),
                recipients: vec![
                    sealpost_core::EndpointId::service(HpiO::from_serial(2), "desk")
                        .expect("endpoint"),
                ],
                payload_type: sealpost_core::directory::PayloadType::Text,
                priority: Priority::Routine,
                patient: None,
                payload_digest: payload_digest(b""),
                payload_bytes: bytes as u64,
                created_ms: 1,
                deliver_by_ms: 2,
            },
            signature: vec![0; 64],
            sealed: vec![SealedCopy {
                org: HpiO::from_serial(2),
                key_id: "k1".into(),
                enc: vec![0; 32],
                ciphertext: vec![0; bytes + 16],
            }],
        }
    }

    /// Chunks keep the order, stay within the limit, and a lone oversized envelope still
    /// gets a chunk of its own.
    #[test]
    fn receive_chunks_keep_order_and_size() {
        let envs: Vec<Envelope> = (0..10).map(|i| envelope(i, 1000)).collect();
        let one = codec::encoded_len(&envs[0]);
        let chunks = chunks_within(envs.clone(), one * 3);
        assert_eq!(
            chunks.iter().map(Vec::len).collect::<Vec<_>>(),
            [3, 3, 3, 1]
        );
        let flat: Vec<Envelope> = chunks.into_iter().flatten().collect();
        assert_eq!(flat, envs);
        let big = chunks_within(vec![envelope(1, 5000), envelope(2, 10)], 100);
        assert_eq!(big.iter().map(Vec::len).collect::<Vec<_>>(), [1, 1]);
    }
}
