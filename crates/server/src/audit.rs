//! The `Audit` gRPC service: the event store replayed in sequence order, each event with
//! its readable fields, the exact canonical bytes its hash covers (for exports that
//! auditors verify offline) and the context of its message (sender, patient, payload
//! type, outcome) for audit records; optionally filtered by time, message, organisation,
//! practitioner, patient and kind. A time window, a message or a patient is read through
//! the store's order and indexes, not by scanning every event. Served to operators and auditors only (a client
//! certificate that names no organisation): an organisation's client would otherwise see
//! every organisation's message metadata. Every replay is first recorded as an
//! `AuditRead` event (who asked for what), so reading the audit trail is itself audited.
//! Never payloads or keys: the canonical bytes carry digests of ciphertexts and of wrapped
//! keys only.
//!
//! Also the evidence calls: a ranged chain walk (`Verify`), checkpoints signed with the
//! provider's key, and RFC 9162 inclusion and consistency proofs over the event store's
//! Merkle tree, which auditors check against the checkpoints they keep.

use std::collections::HashMap;
use std::sync::Arc;

use sealpost_core::audit::Checkpoint;
use sealpost_core::command::{Command, Proposal};
use sealpost_core::directory::PayloadType;
use sealpost_core::event::Event;
use sealpost_core::ids::EndpointId;
use sealpost_core::ids::{EndpointLocal, HpiI, HpiO, Ihi};
use sealpost_core::message::{EnvelopeHeader, MessageId};
use sealpost_core::{EventRecord, Outcome};
use sealpost_crypto::provider_key::ProviderKey;
use sealpost_proto::v1 as pb;
use sealpost_proto::v1::audit_server::Audit;
use sealpost_raft::RaftNode;
use sealpost_store::{MessageQuery, StateView, StatusFilter};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::authz::{Action, Caller, Guard};
use crate::convert;

/// A checkpoint as it travels.
pub fn checkpoint_to_pb(cp: &Checkpoint) -> pb::SignedCheckpoint {
    pb::SignedCheckpoint {
        provider: cp.provider.clone(),
        size: cp.size,
        chain_head: cp.chain_head.to_vec(),
        root: cp.root.to_vec(),
        ts_ms: cp.ts_ms,
        public_key: cp.public_key.to_vec(),
        signature: cp.signature.clone(),
    }
}

/// Events buffered towards one replay's client.
pub const REPLAY_BUFFER_EVENTS: usize = 4096;
/// Events of one message read from its timeline view at a time, in a replay filtered by
/// message.
pub const REPLAY_MESSAGE_PAGE_EVENTS: usize = 1024;
/// Message headers a replay keeps for joining events to their message.
pub const REPLAY_HEADERS_CACHED_MAX: usize = 65_536;

/// The `sealpost.v1.Audit` service of one node.
#[derive(Clone)]
pub struct AuditService {
    node: RaftNode,
    provider: String,
    /// Signs checkpoints; none: this node serves no checkpoints.
    key: Option<Arc<ProviderKey>>,
    guard: Guard,
}

impl AuditService {
    pub fn new(
        node: RaftNode,
        provider: String,
        key: Option<Arc<ProviderKey>>,
        guard: Guard,
    ) -> Self {
        Self {
            node,
            provider,
            key,
            guard,
        }
    }

    /// Refuses (and records) callers that are neither auditors nor operators; returns the
    /// caller's actor name.
    fn operator_only<T>(&self, req: &Request<T>) -> Result<String, Status> {
        let caller = Caller::of(req, self.node.id());
        self.guard.check(&caller, Action::Audit)?;
        Ok(caller.actor)
    }

    /// Records that `actor` read events `from..=to` (`to` 0: up to the newest) before
    /// anything is served, so reading the audit trail is itself audited.
    async fn record_read(
        &self,
        actor: String,
        query: String,
        from_seq: u64,
        to_seq: u64,
    ) -> Result<(), Status> {
        let read = Proposal {
            actor,
            command: Command::RecordAuditRead {
                query,
                from_seq,
                to_seq,
            },
        };
        read.validate().map_err(convert::rejection)?;
        let committed = self
            .node
            .propose(read)
            .await
            .map_err(convert::propose_error)?;
        if let Outcome::Rejected(rej) = committed.outcome {
            return Err(convert::rejection(rej));
        }
        Ok(())
    }

    /// Waits until this node has applied everything committed before the call.
    async fn barrier(&self) -> Result<StateView, Status> {
        self.node
            .linearizable_barrier()
            .await
            .map_err(convert::node_error)?;
        Ok(self.node.view().clone())
    }
}

/// The filters of a replay, parsed.
#[derive(Default, Debug, Clone)]
pub struct Filter {
    pub since_ms: u64,
    pub until_ms: u64,
    pub message_id: Option<MessageId>,
    pub org: Option<HpiO>,
    pub practitioner: Option<HpiI>,
    pub patient: Option<Ihi>,
    pub kind: Option<String>,
}

impl Filter {
    pub fn parse(r: &pb::ReplayRequest) -> Result<Self, Status> {
        let opt = |s: &str| (!s.trim().is_empty()).then(|| s.trim().to_string());
        Ok(Self {
            since_ms: r.since_ms,
            until_ms: r.until_ms,
            message_id: opt(&r.message_id)
                .map(|s| MessageId::parse(&s))
                .transpose()
                .map_err(convert::field_error)?,
            org: opt(&r.org)
                .map(|s| HpiO::parse(&s))
                .transpose()
                .map_err(|e| convert::id_error("org", e))?,
            practitioner: opt(&r.practitioner)
                .map(|s| HpiI::parse(&s))
                .transpose()
                .map_err(|e| convert::id_error("practitioner", e))?,
            patient: opt(&r.patient)
                .map(|s| Ihi::parse(&s))
                .transpose()
                .map_err(|e| convert::id_error("patient", e))?,
            kind: opt(&r.kind).map(|k| k.to_ascii_lowercase()),
        })
    }

    /// Whether an event passes every filter; `header` is its message's signed header.
    pub fn matches(&self, rec: &EventRecord, header: Option<&EnvelopeHeader>) -> bool {
        if rec.ts_ms < self.since_ms || (self.until_ms > 0 && rec.ts_ms > self.until_ms) {
            return false;
        }
        if let Some(k) = &self.kind
            && rec.event.kind() != k
        {
            return false;
        }
        if let Some(id) = &self.message_id
            && rec.event.message_id() != Some(id)
        {
            return false;
        }
        if let Some(p) = &self.patient
            && header.and_then(|h| h.patient.as_ref()) != Some(p)
        {
            return false;
        }
        if let Some(org) = &self.org {
            let involved = rec.event.organisation() == Some(org)
                || header.is_some_and(|h| {
                    &h.sender.org == org || h.recipients.iter().any(|r| &r.org == org)
                });
            if !involved {
                return false;
            }
        }
        if let Some(p) = &self.practitioner {
            let addressed =
                |local: &EndpointLocal| matches!(local, EndpointLocal::Practitioner(x) if x == p);
            let involved = header.is_some_and(|h| {
                h.sender.practitioner.as_ref() == Some(p)
                    || h.recipients.iter().any(|r| addressed(&r.local))
            }) || matches!(&rec.event, Event::EndpointPublished(e) if addressed(&e.id.local))
                || matches!(&rec.event, Event::EndpointRetired { id, .. } if addressed(&id.local));
            if !involved {
                return false;
            }
        }
        true
    }
}

/// Streams the events in `from..=to` that pass `filter`: read and decoded on worker
/// threads, handed on in order; a full channel (a slow client) holds the pipeline back, a
/// closed one (the client went away) stops it.
fn replay_scan(
    view: &StateView,
    (from, to): (u64, u64),
    filter: &Filter,
    tx: &mpsc::Sender<Result<pb::AuditEvent, Status>>,
) {
    let replayed = view.replay_ordered(
        from,
        to,
        |headers: &mut Headers, rec| {
            let header = headers.of(view, &rec);
            filter
                .matches(&rec, header.as_ref())
                .then(|| event_to_pb(&rec, header.as_ref()))
        },
        |event| tx.blocking_send(Ok(event)).is_ok(),
    );
    if let Err(e) = replayed {
        let _ = tx.blocking_send(Err(convert::store_error(e)));
    }
}

/// Sends `rec` on when it passes `filter`; false when the client has gone away.
fn send_if_matches(
    view: &StateView,
    headers: &mut Headers,
    filter: &Filter,
    tx: &mpsc::Sender<Result<pb::AuditEvent, Status>>,
    rec: &EventRecord,
) -> bool {
    let header = headers.of(view, rec);
    !filter.matches(rec, header.as_ref())
        || tx
            .blocking_send(Ok(event_to_pb(rec, header.as_ref())))
            .is_ok()
}

/// Streams the events numbered `seqs` (in order) that pass `filter`, one point read each;
/// stops when the client goes away.
fn replay_seqs(
    view: &StateView,
    seqs: &[u64],
    filter: &Filter,
    tx: &mpsc::Sender<Result<pb::AuditEvent, Status>>,
) {
    let mut headers = Headers::default();
    for &seq in seqs {
        let rec = match view.event(seq) {
            Ok(Some(rec)) => rec,
            Ok(None) => {
                let _ = tx.blocking_send(Err(Status::internal(format!(
                    "event {seq} is named by a message's timeline but is not stored"
                ))));
                return;
            }
            Err(e) => {
                let _ = tx.blocking_send(Err(convert::store_error(e)));
                return;
            }
        };
        if !send_if_matches(view, &mut headers, filter, tx, &rec) {
            return;
        }
    }
}

/// Streams the events of message `id` in `from..=to` that pass `filter`, read from the
/// message's timeline view a page at a time; stops when the client goes away.
fn replay_message(
    view: &StateView,
    id: &MessageId,
    range: (u64, u64),
    filter: &Filter,
    tx: &mpsc::Sender<Result<pb::AuditEvent, Status>>,
) {
    let mut headers = Headers::default();
    let read = view.for_each_message_event(id, range, REPLAY_MESSAGE_PAGE_EVENTS, |rec| {
        send_if_matches(view, &mut headers, filter, tx, &rec)
    });
    if let Err(e) = read {
        let _ = tx.blocking_send(Err(convert::store_error(e)));
    }
}

/// The signed headers of the messages a replay has met, by message id (bounded).
#[derive(Default)]
struct Headers {
    map: HashMap<MessageId, Option<EnvelopeHeader>>,
}

impl Headers {
    fn of(&mut self, view: &StateView, rec: &EventRecord) -> Option<EnvelopeHeader> {
        if let Event::Sent { envelope, .. } | Event::Received { envelope, .. } = &rec.event {
            return Some(envelope.header.clone());
        }
        let id = rec.event.message_id()?;
        if let Some(h) = self.map.get(id) {
            return h.clone();
        }
        let h = view
            .message(id)
            .ok()
            .flatten()
            .and_then(|m| crate::messaging::load_envelope(view, m.sent_seq).ok())
            .map(|e| e.header);
        if self.map.len() >= REPLAY_HEADERS_CACHED_MAX {
            self.map.clear();
        }
        self.map.insert(id.clone(), h.clone());
        h
    }
}

/// A search request, parsed; every field is checked and named when it is wrong.
fn search_query(r: &pb::MessageSearchRequest) -> Result<MessageQuery, Status> {
    let bad = |field: &str, e: String| Status::invalid_argument(format!("{field}: {e}"));
    let opt = |s: &str| (!s.trim().is_empty()).then(|| s.trim().to_string());
    let mut q = MessageQuery {
        since_ms: r.since_ms,
        until_ms: r.until_ms,
        limit: r.limit as usize,
        ..MessageQuery::default()
    };
    if let Some(s) = opt(&r.sender_org) {
        q.sender = Some(HpiO::parse(&s).map_err(|e| bad("sender_org", e.to_string()))?);
    }
    if let Some(s) = opt(&r.recipient) {
        if s.contains('/') {
            q.recipient = Some(
                s.parse::<EndpointId>()
                    .map_err(|e| bad("recipient", e.to_string()))?,
            );
        } else {
            q.recipient_org = Some(HpiO::parse(&s).map_err(|e| bad("recipient", e.to_string()))?);
        }
    }
    if let Some(s) = opt(&r.patient) {
        q.patient = Some(Ihi::parse(&s).map_err(|e| bad("patient", e.to_string()))?);
    }
    if let Some(s) = opt(&r.payload_type) {
        q.payload_type = Some(
            s.parse::<PayloadType>()
                .map_err(|e| bad("payload_type", e.to_string()))?,
        );
    }
    if let Some(s) = opt(&r.status) {
        q.status = Some(StatusFilter::parse(&s).ok_or_else(|| {
            bad(
                "status",
                format!(
                    "{s:?} is not sent, routed, acked, failed, relayed, reprocessing, open or \
                     complete"
                ),
            )
        })?);
    }
    if let Some(c) = opt(&r.cursor) {
        let parsed = c
            .split_once(':')
            .and_then(|(t, s)| Some((t.parse().ok()?, s.parse().ok()?)));
        q.before = Some(parsed.ok_or_else(|| {
            bad(
                "cursor",
                format!("{c:?} is not a cursor from a previous search"),
            )
        })?);
    }
    if q.until_ms != 0 && q.since_ms > q.until_ms {
        return Err(bad("since_ms", "is after until_ms".into()));
    }
    Ok(q)
}

/// A search request as the text an `AuditRead` event records (bounded).
fn describe_search(r: &pb::MessageSearchRequest) -> String {
    let mut q = format!("search since={} until={}", r.since_ms, r.until_ms);
    for (k, v) in [
        ("sender", &r.sender_org),
        ("recipient", &r.recipient),
        ("patient", &r.patient),
        ("type", &r.payload_type),
        ("status", &r.status),
        ("cursor", &r.cursor),
    ] {
        if !v.is_empty() {
            q.push_str(&format!(" {k}={}", v.chars().take(64).collect::<String>()));
        }
    }
    q
}

/// A replay request as the text an `AuditRead` event records (bounded).
fn describe(r: &pb::ReplayRequest) -> String {
    let mut q = format!("replay from={} to={}", r.from_seq.max(1), r.to_seq);
    for (name, v) in [
        ("message", &r.message_id),
        ("org", &r.org),
        ("practitioner", &r.practitioner),
        ("patient", &r.patient),
        ("kind", &r.kind),
    ] {
        if !v.trim().is_empty() {
            q.push_str(&format!(" {name}={}", v.trim()));
        }
    }
    if r.since_ms > 0 {
        q.push_str(&format!(" since_ms={}", r.since_ms));
    }
    if r.until_ms > 0 {
        q.push_str(&format!(" until_ms={}", r.until_ms));
    }
    q.chars()
        .filter(|c| !c.is_control())
        .take(sealpost_core::command::AUDIT_QUERY_BYTES_MAX / 4)
        .collect()
}

pub fn event_to_pb(rec: &EventRecord, header: Option<&EnvelopeHeader>) -> pb::AuditEvent {
    let outcome = match &rec.event {
        Event::Acked { status, .. } => status.as_str().to_string(),
        Event::Failed { reason, .. } => reason.as_str().to_string(),
        Event::LateOutcome { outcome, .. } => outcome.name(),
        _ => String::new(),
    };
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
        sender_org: header.map(|h| h.sender.org.to_string()).unwrap_or_default(),
        sender_practitioner: header
            .and_then(|h| h.sender.practitioner.as_ref())
            .map(|p| p.to_string())
            .unwrap_or_default(),
        patient_ihi: header
            .and_then(|h| h.patient.as_ref())
            .map(|p| p.to_string())
            .unwrap_or_default(),
        payload_type: header
            .map(|h| h.payload_type.as_str().to_string())
            .unwrap_or_default(),
        outcome,
    }
}

#[tonic::async_trait]
impl Audit for AuditService {
    type ReplayStream = ReceiverStream<Result<pb::AuditEvent, Status>>;

    async fn replay(
        &self,
        req: Request<pb::ReplayRequest>,
    ) -> Result<Response<Self::ReplayStream>, Status> {
        let actor = self.operator_only(&req)?;
        let r = req.into_inner();
        let filter = Filter::parse(&r)?;
        self.record_read(actor, describe(&r), r.from_seq.max(1), r.to_seq)
            .await?;
        let view = self.barrier().await?;
        let newest = view.status().map_err(convert::store_error)?.event_count;
        let to = match r.to_seq {
            0 => newest,
            n => n.min(newest),
        };
        let (tx, rx) = mpsc::channel(REPLAY_BUFFER_EVENTS);
        let from = r.from_seq.max(1);
        tokio::task::spawn_blocking(move || {
            // A time window reads its own part of the store (events are in time order); a
            // message's or a patient's history is read through the indexes.
            match view.narrow_to_window((from, to), filter.since_ms, filter.until_ms) {
                Err(e) => {
                    let _ = tx.blocking_send(Err(convert::store_error(e)));
                }
                Ok((from, to)) if from > to => {}
                Ok((from, to)) => match (&filter.message_id, &filter.patient) {
                    (Some(id), _) => replay_message(&view, id, (from, to), &filter, &tx),
                    // A patient's history: their messages from the patient index, then
                    // those messages' events (a scan when there are very many).
                    (None, Some(patient)) => match view.patient_event_seqs(patient, (from, to)) {
                        Ok(Some(seqs)) => replay_seqs(&view, &seqs, &filter, &tx),
                        Ok(None) => replay_scan(&view, (from, to), &filter, &tx),
                        Err(e) => {
                            let _ = tx.blocking_send(Err(convert::store_error(e)));
                        }
                    },
                    (None, None) => replay_scan(&view, (from, to), &filter, &tx),
                },
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn verify(
        &self,
        req: Request<pb::AuditVerifyRequest>,
    ) -> Result<Response<pb::AuditVerifyReply>, Status> {
        self.operator_only(&req)?;
        let r = req.into_inner();
        let view = self.barrier().await?;
        let (from, to) = (r.from_seq, r.to_seq);
        let verdict = tokio::task::spawn_blocking(move || view.verify_chain_range(from, to))
            .await
            .map_err(|e| Status::internal(format!("the chain walk stopped: {e}")))?
            .map_err(convert::store_error)?;
        Ok(Response::new(match verdict {
            Ok(c) => pb::AuditVerifyReply {
                ok: true,
                problem: String::new(),
                from_seq: c.from,
                to_seq: c.to,
                count: c.count,
                head: c.head.to_vec(),
                root: c.root.map(|r| r.to_vec()).unwrap_or_default(),
            },
            Err(e) => pb::AuditVerifyReply {
                ok: false,
                problem: e.to_string(),
                from_seq: r.from_seq.max(1),
                to_seq: r.to_seq,
                ..Default::default()
            },
        }))
    }

    async fn checkpoint(
        &self,
        req: Request<pb::CheckpointRequest>,
    ) -> Result<Response<pb::SignedCheckpoint>, Status> {
        self.operator_only(&req)?;
        let key = self.key.clone().ok_or_else(|| {
            Status::failed_precondition(
                "this node has no provider signing key (node setting provider_key), so it \
                 cannot sign checkpoints",
            )
        })?;
        let size = req.into_inner().size;
        let view = self.barrier().await?;
        let head = view
            .tree_head((size > 0).then_some(size))
            .map_err(convert::store_error)?;
        let mut cp = Checkpoint {
            provider: self.provider.clone(),
            size: head.size,
            chain_head: head.chain_head,
            root: head.root,
            ts_ms: crate::messaging::now_ms(),
            public_key: [0; 32],
            signature: Vec::new(),
        };
        key.sign_checkpoint(&mut cp);
        Ok(Response::new(checkpoint_to_pb(&cp)))
    }

    async fn prove_inclusion(
        &self,
        req: Request<pb::InclusionRequest>,
    ) -> Result<Response<pb::InclusionReply>, Status> {
        let actor = self.operator_only(&req)?;
        let r = req.into_inner();
        if r.seq == 0 || r.size < r.seq {
            return Err(Status::invalid_argument(format!(
                "an inclusion proof needs 1 <= seq <= size; got seq {} and size {}",
                r.seq, r.size
            )));
        }
        self.record_read(
            actor,
            format!("inclusion proof of event {} in {}", r.seq, r.size),
            r.seq,
            r.seq,
        )
        .await?;
        let view = self.barrier().await?;
        let (rec, path) = view
            .inclusion_proof(r.seq, r.size)
            .map_err(convert::store_error)?;
        Ok(Response::new(pb::InclusionReply {
            seq: r.seq,
            size: r.size,
            canonical: rec.canonical_bytes(),
            path: path.iter().map(|h| h.to_vec()).collect(),
        }))
    }

    async fn prove_consistency(
        &self,
        req: Request<pb::ConsistencyRequest>,
    ) -> Result<Response<pb::ConsistencyReply>, Status> {
        self.operator_only(&req)?;
        let r = req.into_inner();
        if r.first > r.second {
            return Err(Status::invalid_argument(format!(
                "the older size {} is larger than the newer size {}",
                r.first, r.second
            )));
        }
        let view = self.barrier().await?;
        let path = view
            .consistency_proof(r.first, r.second)
            .map_err(convert::store_error)?;
        Ok(Response::new(pb::ConsistencyReply {
            first: r.first,
            second: r.second,
            path: path.iter().map(|h| h.to_vec()).collect(),
        }))
    }

    async fn search(
        &self,
        req: Request<pb::MessageSearchRequest>,
    ) -> Result<Response<pb::MessageSearchReply>, Status> {
        let actor = self.operator_only(&req)?;
        Ok(Response::new(
            self.search_as(actor, req.into_inner()).await?,
        ))
    }
}

impl AuditService {
    /// Searches messages for `actor` (an auditor or operator), the read recorded first.
    pub(crate) async fn search_as(
        &self,
        actor: String,
        r: pb::MessageSearchRequest,
    ) -> Result<pb::MessageSearchReply, Status> {
        let q = search_query(&r)?;
        self.record_read(actor, describe_search(&r), 1, 0).await?;
        let view = self.barrier().await?;
        let found = tokio::task::spawn_blocking(move || view.search_messages(&q))
            .await
            .map_err(|e| Status::internal(format!("the search stopped: {e}")))?
            .map_err(convert::store_error)?;
        Ok(pb::MessageSearchReply {
            messages: found
                .messages
                .iter()
                .map(crate::messaging::summary_to_pb)
                .collect(),
            next_cursor: found
                .next
                .map(|(ts, seq)| format!("{ts}:{seq}"))
                .unwrap_or_default(),
        })
    }
}
