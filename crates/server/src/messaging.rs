//! The `Messaging` gRPC service: send (validate, sign and seal on this node, open it at
//! once for the recipients this provider hosts, then commit `Sent` with those delivery
//! verdicts in one log entry), inbox, follow (a live stream resumable from a cursor), fetch
//! (records `Fetched`, then opens the envelope with the recipient's key), acknowledge,
//! track and outbox.
//!
//! The caller's organisation comes from its client certificate; a client may send only as
//! its organisation and read only its organisation's inboxes. Reads take a linearizable
//! read index first, so a client sees its own writes on whichever node it asks. Every
//! refusal happens before anything is proposed: nothing is written for bad input.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, Ordering};
use std::time::Duration;

use sealpost_core::Outcome;
use sealpost_core::command::{Command, DeliveryVerdict, Proposal, Rejection};
use sealpost_core::directory::{PayloadType, PublicKeys};
use sealpost_core::event::Event;
use sealpost_core::ids::{EndpointId, HpiO};
use sealpost_core::message::{
    AckStatus, ENVELOPE_VERSION, Envelope, EnvelopeHeader, FailReason, MessageId, MessageStatus,
    RecipientState, Sender, check_note,
};
use sealpost_core::messaging::check_recipient;
use sealpost_core::send_form::{self, SendForm, SendLimits};
use sealpost_proto::v1 as pb;
use sealpost_proto::v1::messaging_server::Messaging;
use sealpost_raft::{ProposeError, RaftNode};
use sealpost_store::StateView;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::config::MessagingOptions;
use crate::convert::{self, field_error, id_error, send_form_error};
use crate::keystore::{Keystore, KeystoreError};

/// Most events a track answer lists.
pub const TRACK_EVENTS_MAX: usize = 1024;
/// Items a follow stream reads from the feed at a time.
pub const FOLLOW_BATCH_ITEMS_MAX: usize = 256;
/// Items buffered towards one follow stream's client.
pub const FOLLOW_BUFFER_ITEMS_MAX: usize = 64;
/// How long a follow stream waits for new events before it looks again anyway.
pub const FOLLOW_IDLE_MS: u64 = 5_000;

/// Which part of a sealed envelope the test hook damages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tamper {
    Ciphertext,
    Signature,
}

/// Fault hooks for tests and chaos runs; all off unless set.
#[derive(Default, Debug)]
pub struct MessagingFaults {
    /// Damage the next envelope this node seals, after signing and sealing, before it is
    /// proposed (0 off, 1 ciphertext, 2 signature).
    tamper_next: AtomicU8,
    /// Stop this node from routing: its delivery worker, and the verdicts its sends carry
    /// (deadline handling goes on).
    pause_delivery: AtomicBool,
    /// Deliveries that fail on this node as a local fault would (a storage read error, a
    /// key that does not unwrap): nothing is proposed and the worker must try again.
    local_faults: AtomicU32,
}

impl MessagingFaults {
    pub fn tamper_next_envelope(&self, t: Tamper) {
        let v = match t {
            Tamper::Ciphertext => 1,
            Tamper::Signature => 2,
        };
        self.tamper_next.store(v, Ordering::SeqCst);
    }

    fn take_tamper(&self) -> Option<Tamper> {
        match self.tamper_next.swap(0, Ordering::SeqCst) {
            1 => Some(Tamper::Ciphertext),
            2 => Some(Tamper::Signature),
            _ => None,
        }
    }

    pub fn set_delivery_paused(&self, paused: bool) {
        self.pause_delivery.store(paused, Ordering::SeqCst);
    }

    pub fn delivery_paused(&self) -> bool {
        self.pause_delivery.load(Ordering::SeqCst)
    }

    /// Makes the next `n` delivery attempts on this node fail locally.
    pub fn fail_next_deliveries(&self, n: u32) {
        self.local_faults.store(n, Ordering::SeqCst);
    }

    /// Local delivery faults still to inject.
    pub fn local_faults_left(&self) -> u32 {
        self.local_faults.load(Ordering::SeqCst)
    }

    /// True (and one fewer left) when this delivery attempt is to fail locally.
    pub(crate) fn take_local_fault(&self) -> bool {
        self.local_faults
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

pub use crate::authz::Caller;
use crate::authz::{Action, Guard};
use crate::storage_floor::StorageFloor;

/// The `sealpost.v1.Messaging` service of one node.
#[derive(Clone)]
pub struct MessagingService {
    node: RaftNode,
    provider: String,
    keystore: Keystore,
    opts: MessagingOptions,
    faults: Arc<MessagingFaults>,
    /// Seals running at once on this node (`MessagingOptions::seals_in_flight_max`).
    seals: Arc<tokio::sync::Semaphore>,
    /// The actor of the delivery verdicts this node reaches as it sends (the delivery
    /// worker's).
    delivery_actor: String,
    guard: Guard,
    /// New sends are refused while this node's storage is low.
    floor: StorageFloor,
}

fn keystore_status(e: KeystoreError) -> Status {
    match e {
        KeystoreError::Unknown { .. } => Status::failed_precondition(e.to_string()),
        other => Status::internal(other.to_string()),
    }
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn opt<T>(
    field: &str,
    s: &str,
    parse: impl Fn(&str) -> Result<T, sealpost_core::ids::IdError>,
) -> Result<Option<T>, Status> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    parse(s).map(Some).map_err(|e| id_error(field, e))
}

fn message_id(s: &str) -> Result<MessageId, Status> {
    MessageId::parse(s.trim()).map_err(field_error)
}

pub(crate) fn summary_to_pb(m: &MessageStatus) -> pb::MessageSummary {
    pb::MessageSummary {
        message_id: m.message_id.to_string(),
        sender_org: m.sender.org.to_string(),
        payload_type: m.payload_type.as_str().into(),
        priority: m.priority.as_str().into(),
        sent_seq: m.sent_seq,
        sent_ts_ms: m.sent_ts_ms,
        deliver_by_ms: m.deliver_by_ms,
        client_message_id: m.client_message_id.clone(),
        payload_bytes: m.payload_bytes,
        recipients: m
            .recipients
            .iter()
            .map(|r| pb::RecipientStatus {
                endpoint: r.endpoint.to_string(),
                state: r.state.name().into(),
                outcome: match r.state {
                    RecipientState::Acked { status, .. } => status.as_str().into(),
                    RecipientState::Failed { reason, .. } => reason.as_str().into(),
                    _ => String::new(),
                },
                fetches: r.fetches,
            })
            .collect(),
    }
}

fn item_to_pb(m: &MessageStatus, recipient: &EndpointId, routed_seq: u64) -> pb::InboxItem {
    let r = m.recipient(recipient);
    pb::InboxItem {
        message_id: m.message_id.to_string(),
        recipient: recipient.to_string(),
        sender_org: m.sender.org.to_string(),
        sender_practitioner: m
            .sender
            .practitioner
            .as_ref()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        payload_type: m.payload_type.as_str().into(),
        priority: m.priority.as_str().into(),
        sent_ts_ms: m.sent_ts_ms,
        routed_seq,
        payload_bytes: m.payload_bytes,
        state: r.map(|r| r.state.name()).unwrap_or("unknown").into(),
        fetches: r.map(|r| r.fetches).unwrap_or(0),
    }
}

fn timeline_to_pb(rec: &sealpost_core::EventRecord) -> pb::TimelineEvent {
    let outcome = match &rec.event {
        Event::Acked { status, .. } => status.as_str().to_string(),
        Event::Failed { reason, .. } => reason.as_str().to_string(),
        Event::LateOutcome { outcome, .. } => outcome.name(),
        _ => String::new(),
    };
    let detail = match &rec.event {
        Event::Relayed { receipt, .. } => format!(
            "{} received it as its event {} at {} ms (signed receipt)",
            receipt.provider, receipt.seq, receipt.ts_ms
        ),
        Event::Received { from_provider, .. } => format!("relayed from {from_provider}"),
        Event::LateOutcome { provider, .. } => {
            format!("reported by {provider} after the final outcome; not applied")
        }
        _ => String::new(),
    };
    pb::TimelineEvent {
        seq: rec.seq,
        ts_ms: rec.ts_ms,
        event: rec.event.kind().into(),
        recipient: rec
            .event
            .recipient()
            .map(|r| r.to_string())
            .unwrap_or_default(),
        actor: rec.actor.clone(),
        log_index: rec.log_index,
        outcome,
        detail,
    }
}

impl MessagingService {
    pub fn new(
        node: RaftNode,
        provider: String,
        keystore: Keystore,
        opts: MessagingOptions,
        faults: Arc<MessagingFaults>,
        (guard, floor): (Guard, StorageFloor),
    ) -> Self {
        Self {
            floor,
            seals: Arc::new(tokio::sync::Semaphore::new(opts.seals_in_flight_max)),
            delivery_actor: crate::delivery::actor(node.id()),
            node,
            provider,
            keystore,
            opts,
            faults,
            guard,
        }
    }

    /// The organisation of a caller allowed `action`, which only organisations may do.
    fn org_for(&self, caller: &Caller, action: Action) -> Result<HpiO, Status> {
        self.guard.check(caller, action)?;
        caller.org().cloned().ok_or_else(|| {
            self.guard
                .deny(caller, action, "not an organisation".into())
        })
    }

    /// An endpoint named in a request, which must belong to the caller's organisation.
    fn own_endpoint(
        &self,
        caller: &Caller,
        org: &HpiO,
        named: &str,
    ) -> Result<Option<EndpointId>, Status> {
        if named.trim().is_empty() {
            return Ok(None);
        }
        let ep = convert::endpoint_id("endpoint", named)?;
        if &ep.org != org {
            return Err(self.guard.deny(
                caller,
                Action::ReadMail,
                format!("endpoint {ep} does not belong to your organisation {org}"),
            ));
        }
        Ok(Some(ep))
    }

    /// A listing's size: the request's, bounded by the configured maximum (0: the maximum).
    fn listing_limit(&self, asked: u32) -> usize {
        let n = match asked {
            0 => self.opts.listing_items_max,
            n => n.min(self.opts.listing_items_max),
        };
        n as usize
    }

    fn view(&self) -> &StateView {
        self.node.view()
    }

    async fn barrier(&self) -> Result<(), Status> {
        self.node
            .linearizable_barrier()
            .await
            .map_err(convert::node_error)
    }

    async fn propose(&self, actor: String, command: Command) -> Result<(u64, u64), Rejected> {
        let committed = self.propose_committed(actor, command).await?;
        match committed.outcome {
            Outcome::Applied { first_seq, count } => Ok((first_seq, count)),
            Outcome::Rejected(r) => Err(Rejected::Rule(r)),
        }
    }

    /// Proposes and answers with what the state machine made of it and the log index of
    /// the entry that carried it (a refusal included).
    async fn propose_committed(
        &self,
        actor: String,
        command: Command,
    ) -> Result<sealpost_raft::Committed, Rejected> {
        let proposal = Proposal { actor, command };
        proposal.validate().map_err(Rejected::Rule)?;
        let committed = self
            .node
            .propose(proposal)
            .await
            .map_err(|e| Rejected::Status(propose_status(e)))?;
        Ok(committed)
    }

    /// Proposes a group (see [`RaftNode::propose_group`]) and answers with what the state
    /// machine made of its first proposal, as [`Self::propose_committed`] does.
    async fn propose_group(
        &self,
        group: Vec<Proposal>,
    ) -> Result<sealpost_raft::Committed, Status> {
        for p in &group {
            p.validate().map_err(|r| Status::from(Rejected::Rule(r)))?;
        }
        let first = self
            .node
            .propose_group(group)
            .await
            .and_then(|results| {
                results.into_iter().next().unwrap_or_else(|| {
                    Err(ProposeError::Unknown("the group answered no result".into()))
                })
            })
            .map_err(propose_status)?;
        Ok(first)
    }

    fn message(&self, id: &MessageId) -> Result<MessageStatus, Status> {
        self.view()
            .message(id)
            .map_err(convert::store_error)?
            .ok_or_else(|| Status::not_found(format!("message {id} is unknown")))
    }

    /// The recipient a fetch or ack is about: the named one (which must belong to the
    /// caller), or the caller organisation's only recipient of the message.
    fn resolve_recipient(
        &self,
        caller: &Caller,
        action: Action,
        msg: &MessageStatus,
        org: &HpiO,
        named: &str,
    ) -> Result<EndpointId, Status> {
        if !named.trim().is_empty() {
            let ep = convert::endpoint_id("recipient", named)?;
            if &ep.org != org {
                return Err(self.guard.deny(
                    caller,
                    action,
                    format!("recipient {ep} does not belong to your organisation {org}"),
                ));
            }
            if msg.recipient(&ep).is_none() {
                return Err(Status::not_found(format!(
                    "message {} is not addressed to {ep}",
                    msg.message_id
                )));
            }
            return Ok(ep);
        }
        let mine: Vec<&EndpointId> = msg
            .recipients
            .iter()
            .map(|r| &r.endpoint)
            .filter(|e| &e.org == org)
            .collect();
        match mine.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(self.guard.deny(
                caller,
                action,
                format!(
                    "message {} is not addressed to your organisation {org}",
                    msg.message_id
                ),
            )),
            many => Err(Status::invalid_argument(format!(
                "recipient: message {} has several recipients in {org}; name one of {}",
                msg.message_id,
                many.iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    fn duplicate_reply(&self, org: &HpiO, cid: &str) -> Result<Option<pb::SendReply>, Status> {
        let Some(id) = self
            .view()
            .message_for_client_id(org, cid)
            .map_err(convert::store_error)?
        else {
            return Ok(None);
        };
        let msg = self.message(&id)?;
        Ok(Some(pb::SendReply {
            message_id: id.to_string(),
            seq: msg.sent_seq,
            duplicate: true,
        }))
    }

    /// The sender's directory entry, each recipient organisation's public keys and which
    /// of them this provider hosts, or the refusal that names the problem.
    fn resolve_parties(
        &self,
        from: &HpiO,
        recipients: &[EndpointId],
        payload_type: PayloadType,
    ) -> Result<Parties, Status> {
        let view = self.view();
        let sender_org = view
            .organisation(from)
            .map_err(convert::store_error)?
            .ok_or_else(|| {
                Status::not_found(format!("sender organisation {from} is not registered"))
            })?;
        let mut recipient_keys = Vec::new();
        let mut hosted = Vec::new();
        for ep in recipients {
            let e = view.endpoint(ep).map_err(convert::store_error)?;
            check_recipient(ep, e.as_ref(), payload_type).map_err(convert::rejection)?;
            if !recipient_keys.iter().any(|(o, _)| o == &ep.org) {
                let org = view
                    .organisation(&ep.org)
                    .map_err(convert::store_error)?
                    .ok_or_else(|| {
                        Status::not_found(format!("organisation {} is not registered", ep.org))
                    })?;
                if org.provider.is_none() {
                    hosted.push(ep.org.clone());
                }
                recipient_keys.push((ep.org.clone(), org.spec.keys.clone()));
            }
        }
        Ok(Parties {
            sender_org,
            recipient_keys,
            hosted,
        })
    }

    /// Checks the request, then signs and seals. Everything that can refuse the request
    /// happens here, before anything is proposed.
    async fn build_envelope(
        &self,
        caller: &Caller,
        r: pb::SendRequest,
    ) -> Result<Result<SealedSend, pb::SendReply>, Status> {
        let from = send_form::sender(&r.from_org).map_err(send_form_error)?;
        let mine = self.org_for(caller, Action::Send)?;
        if mine != from {
            return Err(self.guard.deny(
                caller,
                Action::Send,
                format!("from_org {from} is not your organisation ({mine})"),
            ));
        }
        self.guard.admit_send(caller, &mine)?;
        let checked = send_form::check(
            &SendForm {
                from_practitioner: &r.from_practitioner,
                patient_ihi: &r.patient_ihi,
                to: &r.to,
                payload_type: &r.payload_type,
                priority: &r.priority,
                client_message_id: &r.client_message_id,
                deliver_within_ms: r.deliver_within_ms,
                payload_bytes: r.payload.len() as u64,
            },
            &SendLimits {
                payload_bytes_max: self.opts.payload_bytes_max,
                deliver_within_ms_default: self.opts.deliver_within_ms_default,
                deliver_within_ms_max: self.opts.deliver_within_ms_max,
            },
        )
        .map_err(send_form_error)?;
        let cid = checked
            .client_message_id
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let (recipients, payload_type) = (checked.recipients, checked.payload_type);

        // Fast path: the node's applied state. A miss or a refusal there is checked again
        // at a linearizable read index, so a directory change or an earlier send made
        // through another node is seen; the state machine checks everything once more when
        // it applies the send, so a stale view can never let a bad send through.
        if let Some(dup) = self.duplicate_reply(&from, &cid)? {
            return Ok(Err(dup));
        }
        // After the resend check: a resend is answered however full the disk, since it
        // writes nothing.
        self.floor.admit()?;
        let Parties {
            sender_org,
            recipient_keys,
            hosted,
        } = match self.resolve_parties(&from, &recipients, payload_type) {
            Ok(p) => p,
            Err(_) => {
                self.barrier().await?;
                if let Some(dup) = self.duplicate_reply(&from, &cid)? {
                    return Ok(Err(dup));
                }
                self.resolve_parties(&from, &recipients, payload_type)?
            }
        };
        let sender_keys = self
            .keystore
            .keys(&from, &sender_org.spec.keys.key_id)
            .map_err(keystore_status)?;
        let created = now_ms();
        let header = EnvelopeHeader {
            version: ENVELOPE_VERSION,
            message_id: MessageId::new(&self.provider, &uuid::Uuid::now_v7().to_string())
                .map_err(field_error)?,
            sender: Sender {
                org: from,
                practitioner: checked.practitioner,
            },
            sender_key_id: sender_org.spec.keys.key_id.clone(),
            recipients,
            payload_type,
            priority: checked.priority,
            patient: checked.patient,
            payload_digest: [0; 32],
            payload_bytes: 0,
            created_ms: created,
            deliver_by_ms: created.saturating_add(checked.deliver_within_ms),
        };
        let openers = self.openers(&hosted, &recipient_keys);
        let signing = sender_org.spec.keys.signing;
        let tamper = self.faults.take_tamper();
        // Sealing is CPU work: keep it off the async workers, and bounded, so a flood of
        // sends waits here instead of crowding out the delivery worker's opening (which
        // would let the delivery backlog grow without limit).
        let permit = self
            .seals
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Status::unavailable("this node is shutting down"))?;
        let payload = r.payload;
        let (envelope, opened) =
            crate::crypto_pool::run(crate::crypto_pool::Lane::Start, move || {
                let mut envelope = sealpost_crypto::envelope::seal(
                    header,
                    &sender_keys,
                    &recipient_keys,
                    &payload,
                )?;
                drop(payload);
                tamper_with(&mut envelope, tamper);
                // Opened at once for the recipients hosted here, as the delivery worker would
                // open it (the plaintext is dropped, zeroized, at once: only the verdict stays).
                let opened: Vec<(HpiO, Result<(), FailReason>)> = openers
                    .iter()
                    .map(|(org, keys)| {
                        let r = sealpost_crypto::envelope::open(&envelope, org, keys, &signing)
                            .map(|_| ())
                            .map_err(|e| e.reason());
                        (org.clone(), r)
                    })
                    .collect();
                drop(permit);
                Ok::<_, sealpost_crypto::Error>((envelope, opened))
            })
            .await
            .map_err(|e| Status::internal(format!("sealing task failed: {e}")))?
            .map_err(|e| Status::internal(format!("sealing failed: {e}")))?;
        let verdicts = envelope
            .header
            .recipients
            .iter()
            .filter_map(|ep| {
                let (_, r) = opened.iter().find(|(o, _)| o == &ep.org)?;
                let verdict = crate::delivery::verdict_of(*r, self.opts.ack_window_ms);
                Some((ep.clone(), verdict))
            })
            .collect();
        Ok(Ok(SealedSend {
            envelope,
            cid,
            verdicts,
        }))
    }

    /// The keys to open a new message with on this node, for each recipient organisation
    /// hosted here (under the key id the message is sealed to), as the delivery worker
    /// would open it: none while delivery is paused or a local fault is injected, and none
    /// for an organisation whose keys this node cannot unwrap. What is left out here, the
    /// delivery worker opens once the send is committed.
    fn openers(
        &self,
        hosted: &[HpiO],
        recipient_keys: &[(HpiO, PublicKeys)],
    ) -> Vec<(HpiO, Arc<sealpost_crypto::keys::OrgKeys>)> {
        if hosted.is_empty() || self.faults.delivery_paused() || self.faults.take_local_fault() {
            return Vec::new();
        }
        hosted
            .iter()
            .filter_map(|org| {
                let (_, published) = recipient_keys.iter().find(|(o, _)| o == org)?;
                let keys = self.keystore.keys(org, &published.key_id).ok()?;
                Some((org.clone(), keys))
            })
            .collect()
    }
}

/// Damages a sealed envelope as the test hook asks (nothing when `None`).
fn tamper_with(envelope: &mut Envelope, tamper: Option<Tamper>) {
    match tamper {
        Some(Tamper::Ciphertext) => {
            if let Some(b) = envelope
                .sealed
                .first_mut()
                .and_then(|c| c.ciphertext.first_mut())
            {
                *b ^= 0x01;
            }
        }
        Some(Tamper::Signature) => {
            if let Some(b) = envelope.signature.first_mut() {
                *b ^= 0x01;
            }
        }
        None => {}
    }
}

/// What [`MessagingService::resolve_parties`] found.
struct Parties {
    sender_org: sealpost_core::directory::Organisation,
    recipient_keys: Vec<(HpiO, PublicKeys)>,
    /// The recipient organisations this provider hosts.
    hosted: Vec<HpiO>,
}

/// A send ready to propose: the sealed envelope, its client message id, and the delivery
/// verdicts this node reached for the recipients hosted here.
struct SealedSend {
    envelope: Envelope,
    cid: String,
    verdicts: Vec<(EndpointId, DeliveryVerdict)>,
}

/// The answer to a proposal that could not be committed.
fn propose_status(e: ProposeError) -> Status {
    match e {
        // The proposer sizes every proposal once; say what it means for a send.
        ProposeError::TooLarge { size, limit } => Status::resource_exhausted(format!(
            "the sealed message is {size} bytes, more than a log entry may carry \
             ({limit} bytes); send it to fewer organisations at once"
        )),
        e => convert::propose_error(e),
    }
}

/// A refused proposal: a rule of the state machine, or the node could not commit.
enum Rejected {
    Rule(Rejection),
    Status(Status),
}

impl From<Rejected> for Status {
    fn from(r: Rejected) -> Status {
        match r {
            Rejected::Rule(r) => convert::rejection(r),
            Rejected::Status(s) => s,
        }
    }
}

#[tonic::async_trait]
impl Messaging for MessagingService {
    #[tracing::instrument(skip_all, fields(node = self.node.id(), message_id = tracing::field::Empty))]
    async fn send(&self, req: Request<pb::SendRequest>) -> Result<Response<pb::SendReply>, Status> {
        let caller = Caller::of(&req, self.node.id());
        self.send_as(&caller, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn inbox(
        &self,
        req: Request<pb::InboxRequest>,
    ) -> Result<Response<pb::InboxReply>, Status> {
        let caller = Caller::of(&req, self.node.id());
        let org = self.org_for(&caller, Action::ReadMail)?;
        let r = req.into_inner();
        let endpoint = self.own_endpoint(&caller, &org, &r.endpoint)?;
        let limit = self.listing_limit(r.limit);
        self.barrier().await?;
        let view = self.view();
        let entries = view
            .inbox(&org, endpoint.as_ref(), limit)
            .map_err(convert::store_error)?;
        let mut items = Vec::with_capacity(entries.len());
        for e in entries {
            let m = self.message(&e.message_id)?;
            items.push(item_to_pb(&m, &e.recipient, e.routed_seq));
        }
        Ok(Response::new(pb::InboxReply { items }))
    }

    type FollowStream = ReceiverStream<Result<pb::InboxItem, Status>>;

    async fn follow(
        &self,
        req: Request<pb::FollowRequest>,
    ) -> Result<Response<Self::FollowStream>, Status> {
        let caller = Caller::of(&req, self.node.id());
        let org = self.org_for(&caller, Action::ReadMail)?;
        let r = req.into_inner();
        let endpoint = self.own_endpoint(&caller, &org, &r.endpoint)?;
        self.barrier().await?;
        let (tx, rx) = mpsc::channel(FOLLOW_BUFFER_ITEMS_MAX);
        let view = self.view().clone();
        let lifetime = Duration::from_millis(self.opts.follow_stream_ms_max);
        tokio::spawn(async move {
            let end = tokio::time::Instant::now() + lifetime;
            let mut changes = view.subscribe();
            let mut cursor = r.after_seq;
            while tokio::time::Instant::now() < end {
                changes.borrow_and_update();
                let batch = match view.feed(&org, cursor, FOLLOW_BATCH_ITEMS_MAX) {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = tx.send(Err(convert::store_error(e))).await;
                        return;
                    }
                };
                let full = batch.len() == FOLLOW_BATCH_ITEMS_MAX;
                for e in batch {
                    cursor = e.routed_seq;
                    if endpoint.as_ref().is_some_and(|ep| ep != &e.recipient) {
                        continue;
                    }
                    let item = match view.message(&e.message_id) {
                        Ok(Some(m)) => Ok(item_to_pb(&m, &e.recipient, e.routed_seq)),
                        Ok(None) => continue,
                        Err(err) => Err(convert::store_error(err)),
                    };
                    if tx.send(item).await.is_err() {
                        return; // the client went away
                    }
                }
                if full {
                    continue;
                }
                let wait = Duration::from_millis(FOLLOW_IDLE_MS);
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = tokio::time::timeout(wait, changes.changed()) => {}
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    #[tracing::instrument(skip_all, fields(node = self.node.id(), message_id = %req.get_ref().message_id))]
    async fn fetch(
        &self,
        req: Request<pb::FetchRequest>,
    ) -> Result<Response<pb::FetchReply>, Status> {
        let caller = Caller::of(&req, self.node.id());
        let org = self.org_for(&caller, Action::Fetch)?;
        let r = req.into_inner();
        let id = message_id(&r.message_id)?;
        self.barrier().await?;
        let msg = self.message(&id)?;
        let recipient = self.resolve_recipient(&caller, Action::Fetch, &msg, &org, &r.recipient)?;
        let state = msg
            .recipient(&recipient)
            .map(|s| s.state)
            .unwrap_or(RecipientState::Sent);
        if !state.was_routed() {
            return Err(Status::failed_precondition(format!(
                "message {id} has not been routed to {recipient} (it is {})",
                state.name()
            )));
        }
        let envelope = self.envelope(msg.sent_seq)?;
        if envelope.payload_dropped() {
            return Err(Status::failed_precondition(format!(
                "the payload of message {id} was dropped after the retention period; its \
                 status and audit trail remain"
            )));
        }
        let copy = envelope.copy_for(&recipient.org).ok_or_else(|| {
            Status::internal(format!("message {id} holds no copy for {}", recipient.org))
        })?;
        let keys = self
            .keystore
            .keys(&recipient.org, &copy.key_id)
            .map_err(keystore_status)?;
        let signing = self.sender_signing_key(&envelope)?;
        // The access is recorded before the plaintext leaves the node.
        let (fetched_seq, _) = self
            .propose(
                caller.actor,
                Command::Fetch {
                    message_id: id.clone(),
                    recipient: recipient.clone(),
                },
            )
            .await?;
        let org2 = recipient.org.clone();
        let env2 = envelope.clone();
        let payload = crate::crypto_pool::run(crate::crypto_pool::Lane::Finish, move || {
            sealpost_crypto::envelope::open(&env2, &org2, &keys, &signing)
        })
        .await
        .map_err(|e| Status::internal(format!("opening task failed: {e}")))?
        .map_err(|e| Status::data_loss(format!("message {id} no longer opens: {e}")))?;
        let h = &envelope.header;
        Ok(Response::new(pb::FetchReply {
            message_id: id.to_string(),
            recipient: recipient.to_string(),
            sender_org: h.sender.org.to_string(),
            sender_practitioner: h
                .sender
                .practitioner
                .as_ref()
                .map(|p| p.to_string())
                .unwrap_or_default(),
            payload_type: h.payload_type.as_str().into(),
            patient_ihi: h
                .patient
                .as_ref()
                .map(|p| p.to_string())
                .unwrap_or_default(),
            payload: payload.to_vec(),
            payload_sha256: h.payload_digest.to_vec(),
            fetched_seq,
        }))
    }

    #[tracing::instrument(skip_all, fields(node = self.node.id(), message_id = %req.get_ref().message_id))]
    async fn ack(&self, req: Request<pb::AckRequest>) -> Result<Response<pb::AckReply>, Status> {
        let caller = Caller::of(&req, self.node.id());
        let org = self.org_for(&caller, Action::Ack)?;
        let r = req.into_inner();
        let id = message_id(&r.message_id)?;
        let status: AckStatus = r.status.parse().map_err(field_error)?;
        check_note(&r.note).map_err(field_error)?;
        self.barrier().await?;
        let msg = self.message(&id)?;
        let recipient = self.resolve_recipient(&caller, Action::Ack, &msg, &org, &r.recipient)?;
        let (seq, _) = self
            .propose(
                caller.actor,
                Command::Ack {
                    message_id: id,
                    recipient,
                    status,
                    note: r.note,
                },
            )
            .await?;
        Ok(Response::new(pb::AckReply { seq }))
    }

    #[tracing::instrument(skip_all, fields(node = self.node.id(), message_id = %req.get_ref().message_id))]
    async fn track(
        &self,
        req: Request<pb::TrackRequest>,
    ) -> Result<Response<pb::TrackReply>, Status> {
        let caller = Caller::of(&req, self.node.id());
        Ok(Response::new(
            self.track_as(&caller, &req.get_ref().message_id).await?,
        ))
    }

    async fn outbox(
        &self,
        req: Request<pb::OutboxRequest>,
    ) -> Result<Response<pb::OutboxReply>, Status> {
        let caller = Caller::of(&req, self.node.id());
        self.guard.check(&caller, Action::Outbox)?;
        let r = req.into_inner();
        let named = opt("org", &r.org, HpiO::parse)?;
        let org = match (caller.org(), named) {
            (Some(mine), Some(n)) if mine != &n => {
                return Err(self.guard.deny(
                    &caller,
                    Action::Outbox,
                    format!("org {n} is not your organisation ({mine})"),
                ));
            }
            (Some(mine), _) => mine.clone(),
            (None, Some(n)) => n,
            (None, None) => {
                return Err(Status::invalid_argument(
                    "org: required for a client certificate that names no organisation",
                ));
            }
        };
        let limit = self.listing_limit(r.limit);
        self.barrier().await?;
        let msgs = self
            .view()
            .outbox(&org, r.before_seq, limit)
            .map_err(convert::store_error)?;
        Ok(Response::new(pb::OutboxReply {
            messages: msgs.iter().map(summary_to_pb).collect(),
        }))
    }
}

impl MessagingService {
    /// A message's summary and timeline for `caller` (an organisation sees only messages
    /// it sent or receives).
    pub(crate) async fn track_as(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<pb::TrackReply, Status> {
        self.guard.check(caller, Action::Track)?;
        let id = message_id(id)?;
        self.barrier().await?;
        let msg = self.message(&id)?;
        if let Some(org) = caller.org() {
            let involved =
                &msg.sender.org == org || msg.recipients.iter().any(|r| &r.endpoint.org == org);
            if !involved {
                return Err(self.guard.deny(
                    caller,
                    Action::Track,
                    format!("your organisation {org} neither sent nor receives message {id}"),
                ));
            }
        }
        let timeline = self
            .view()
            .message_events(&id, TRACK_EVENTS_MAX)
            .map_err(convert::store_error)?;
        Ok(pb::TrackReply {
            message: Some(summary_to_pb(&msg)),
            timeline: timeline.iter().map(timeline_to_pb).collect(),
        })
    }

    /// Sends for `caller`: validate, sign and seal on this node, open it for the recipients
    /// hosted here, commit `Sent` with those verdicts, answer once committed; a resend with
    /// the same client message id answers with the original.
    /// The gRPC `Send` and the MLLP front door both come here.
    pub async fn send_as(
        &self,
        caller: &Caller,
        r: pb::SendRequest,
    ) -> Result<pb::SendReply, Status> {
        let SealedSend {
            envelope,
            cid,
            verdicts,
        } = match self.build_envelope(caller, r).await? {
            Ok(v) => v,
            Err(dup) => return Ok(dup),
        };
        let id = envelope.header.message_id.clone();
        tracing::Span::current().record("message_id", tracing::field::display(&id));
        let org = envelope.header.sender.org.clone();
        let send = Proposal {
            actor: caller.actor.clone(),
            command: Command::Send {
                envelope: Box::new(envelope),
                client_message_id: cid.clone(),
            },
        };
        // The verdicts reached here go into the same Raft entry, right behind the send:
        // `Sent`, `Decrypted` and `Routed` commit together. A verdict the state machine
        // refuses (the send itself refused, say) writes nothing, and whatever was not
        // decided here the delivery worker decides after the commit.
        let mut group = Vec::with_capacity(1 + verdicts.len());
        group.push(send);
        group.extend(verdicts.into_iter().map(|(recipient, verdict)| Proposal {
            actor: self.delivery_actor.clone(),
            command: Command::Deliver {
                message_id: id.clone(),
                recipient,
                verdict,
            },
        }));
        let committed = self.propose_group(group).await?;
        match committed.outcome {
            Outcome::Applied { first_seq: seq, .. } => {
                tracing::debug!(message_id = %id, seq, "sent");
                Ok(pb::SendReply {
                    message_id: id.to_string(),
                    seq,
                    duplicate: false,
                })
            }
            // The client id is taken: a resend whose first attempt was committed (its
            // answer lost), or a concurrent resend that won the race. Answer with the
            // original, read from this node's views once they hold it: this node may be a
            // follower still catching up (just restarted, say), and the original is in an
            // entry before the one that refused this send.
            Outcome::Rejected(Rejection::AlreadyExists(m)) => {
                self.node
                    .wait_applied(committed.log_index)
                    .await
                    .map_err(convert::node_error)?;
                match self.duplicate_reply(&org, &cid)? {
                    Some(dup) => Ok(dup),
                    None => Err(Status::already_exists(m)),
                }
            }
            Outcome::Rejected(r) => Err(Rejected::Rule(r).into()),
        }
    }

    fn envelope(&self, sent_seq: u64) -> Result<Envelope, Status> {
        load_envelope(self.view(), sent_seq).map_err(|e| Status::internal(e.to_string()))
    }

    fn sender_signing_key(&self, envelope: &Envelope) -> Result<[u8; 32], Status> {
        sender_signing_key(self.view(), envelope)
            .map_err(convert::store_error)?
            .ok_or_else(|| {
                Status::failed_precondition(format!(
                    "the sender's key {} is no longer published",
                    envelope.header.sender_key_id
                ))
            })
    }
}

/// Why a stored envelope could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("reading the event store: {0}")]
    Store(#[from] sealpost_store::Error),
    #[error("event {0} is missing or is not a Sent or Received event")]
    NotSent(u64),
}

/// The envelope of the `Sent` event at `sent_seq`.
pub fn load_envelope(view: &StateView, sent_seq: u64) -> Result<Envelope, LoadError> {
    match view.event(sent_seq)?.map(|r| r.event) {
        Some(Event::Sent { envelope, .. } | Event::Received { envelope, .. }) => Ok(*envelope),
        _ => Err(LoadError::NotSent(sent_seq)),
    }
}

/// The signing key the sender published under the envelope's key id, current or rotated
/// out since (a message signed before a rotation still verifies).
pub fn sender_signing_key(
    view: &StateView,
    envelope: &Envelope,
) -> Result<Option<[u8; 32]>, sealpost_store::Error> {
    let org = &envelope.header.sender.org;
    let key_id = &envelope.header.sender_key_id;
    if let Some(o) = view.organisation(org)?
        && &o.spec.keys.key_id == key_id
    {
        return Ok(Some(o.spec.keys.signing));
    }
    Ok(view.published_keys(org, key_id)?.map(|k| k.signing))
}
