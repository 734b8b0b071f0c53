//! The `Audit` gRPC service: the event store replayed in sequence order, each event with
//! its readable fields, the exact canonical bytes its hash covers (for exports that
//! auditors verify offline) and the context of its message (sender, patient, payload
//! type, outcome) for audit records; optionally filtered by time, message, organisation,
//! practitioner, patient and kind. Served to operators and auditors only (a client
//! certificate that names no organisation): an organisation's client would otherwise see
//! every organisation's message metadata. Every replay is first recorded as an
//! `AuditRead` event (who asked for what), so reading the audit trail is itself audited.
//! Never payloads or keys: the canonical bytes carry digests of ciphertexts and of wrapped
//! keys only.

use std::collections::HashMap;

use sealpost_core::command::{Command, Proposal};
use sealpost_core::event::Event;
use sealpost_core::ids::{EndpointLocal, HpiI, HpiO, Ihi};
use sealpost_core::message::{EnvelopeHeader, MessageId};
use sealpost_core::{EventRecord, Outcome};
use sealpost_proto::v1 as pb;
use sealpost_proto::v1::audit_server::Audit;
use sealpost_raft::RaftNode;
use sealpost_store::StateView;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::convert;
use crate::messaging::caller_of;

/// Events read from the store per page of a replay.
pub const REPLAY_PAGE_EVENTS: usize = 1024;
/// Events buffered towards one replay's client.
pub const REPLAY_BUFFER_EVENTS: usize = 4096;
/// Message headers a replay keeps for joining events to their message.
pub const REPLAY_HEADERS_CACHED_MAX: usize = 65_536;

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
        let caller = caller_of(&req, self.node.id());
        if let Some(org) = caller.org {
            return Err(Status::permission_denied(format!(
                "the audit trail is for operators and auditors; this certificate acts for \
                 organisation {org}"
            )));
        }
        let r = req.into_inner();
        let filter = Filter::parse(&r)?;
        // Reading the audit trail is itself audited, before anything is served.
        let read = Proposal {
            actor: caller.actor.clone(),
            command: Command::RecordAuditRead {
                query: describe(&r),
                from_seq: r.from_seq.max(1),
                to_seq: r.to_seq,
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
            let mut headers = Headers::default();
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
                    let header = headers.of(&view, &rec);
                    if !filter.matches(&rec, header.as_ref()) {
                        continue;
                    }
                    if tx
                        .send(Ok(event_to_pb(&rec, header.as_ref())))
                        .await
                        .is_err()
                    {
                        return; // the client went away
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
