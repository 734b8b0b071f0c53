//! Federation between providers as pure data and rules: provider ids, the signed transport
//! receipt, delivery notifications, directory changes pulled from a peer, and the decisions
//! and folds of the federation events.
//!
//! A message to an organisation hosted by another provider is relayed there: the receiving
//! provider commits `Received` and answers with a [`TransportReceipt`] signed with its
//! provider key, which the sender's provider records in `Relayed`. When the receiver's
//! recipient reaches a final outcome, the receiving provider relays a [`Notification`]
//! back and the sender's provider records it as that recipient's final outcome, or, when
//! the recipient already has one (a deadline fired first), as a `LateOutcome` that changes
//! nothing. Signing and verifying live in the crypto crate; this module does no I/O.

use serde::{Deserialize, Serialize};

use crate::canonical::Canon;
use crate::command::Rejection;
use crate::directory::{
    EndpointSpec, FieldError, OrganisationSpec, PublicKeys, SHORT_TEXT_BYTES_MAX, check_text,
};
use crate::event::Event;
use crate::ids::{EndpointId, HpiO};
use crate::message::{AckStatus, Envelope, FailReason, MessageId, RecipientState};
use crate::view::{Facts, ViewCf, ViewChange};

/// Label at the start of a transport receipt's signed bytes.
pub const RECEIPT_LABEL: &[u8] = b"SPRCPT";
/// Version of the receipt layout.
pub const RECEIPT_VERSION: u8 = 1;
/// Length of an Ed25519 receipt signature, in bytes.
pub const RECEIPT_SIGNATURE_BYTES: usize = 64;
/// Most directory changes one import carries.
pub const PEER_CHANGES_MAX: usize = 256;
/// Most envelopes one relay request carries.
pub const RELAY_BATCH_MESSAGES_MAX: usize = 512;
/// Most notifications one relay request carries.
pub const NOTIFY_BATCH_MAX: usize = 256;

/// Checks a provider id: short printable text without spaces or ':' (it is the first part
/// of every message id the provider mints).
pub fn check_provider(field: &'static str, id: &str) -> Result<(), FieldError> {
    check_text(field, id, SHORT_TEXT_BYTES_MAX)?;
    if id.contains(|c: char| c.is_whitespace() || c == ':') {
        return Err(FieldError::new(
            field,
            format!("{id:?} must not contain spaces or ':'"),
        ));
    }
    Ok(())
}

/// The receiving provider's signed statement that it committed a message.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct TransportReceipt {
    pub message_id: MessageId,
    /// SHA-256 of the envelope's signed header (what the sender signed).
    pub header_digest: [u8; 32],
    /// The receiving provider.
    pub provider: String,
    /// Sequence of the `Received` event in the receiving provider's log.
    pub seq: u64,
    /// When the receiving provider committed it (its clock), ms since the Unix epoch.
    pub ts_ms: u64,
    /// The receiving provider's Ed25519 signature over [`Self::signed_bytes`].
    #[serde(with = "crate::codec::byte_string")]
    pub signature: Vec<u8>,
}

impl TransportReceipt {
    /// The bytes the receiving provider signs.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut c = Canon::new();
        c.fixed(RECEIPT_LABEL)
            .u8(RECEIPT_VERSION)
            .str(self.message_id.as_str())
            .fixed(&self.header_digest)
            .str(&self.provider)
            .u64(self.seq)
            .u64(self.ts_ms);
        c.finish()
    }

    pub fn validate(&self) -> Result<(), FieldError> {
        check_provider("receipt.provider", &self.provider)?;
        if self.signature.len() != RECEIPT_SIGNATURE_BYTES {
            return Err(FieldError::new(
                "receipt.signature",
                format!(
                    "is {} bytes, expected {RECEIPT_SIGNATURE_BYTES}",
                    self.signature.len()
                ),
            ));
        }
        Ok(())
    }

    pub(crate) fn write_canonical(&self, c: &mut Canon) {
        c.bytes(&self.signed_bytes()).bytes(&self.signature);
    }
}

/// A final outcome reported by the provider that hosts the recipient.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum RemoteOutcome {
    Acked { status: AckStatus, note: String },
    Failed { reason: FailReason },
}

impl RemoteOutcome {
    pub fn name(&self) -> String {
        match self {
            RemoteOutcome::Acked { status, .. } => format!("acked {status}"),
            RemoteOutcome::Failed { reason } => format!("failed {reason}"),
        }
    }

    /// The same outcome as a recipient's final state.
    pub fn matches(&self, state: &RecipientState) -> bool {
        match (self, state) {
            (RemoteOutcome::Acked { status, .. }, RecipientState::Acked { status: s, .. }) => {
                status == s
            }
            (RemoteOutcome::Failed { reason }, RecipientState::Failed { reason: r, .. }) => {
                reason == r
            }
            _ => false,
        }
    }

    fn write_canonical(&self, c: &mut Canon) {
        match self {
            RemoteOutcome::Acked { status, note } => c.u8(1).u8(status.code()).str(note),
            RemoteOutcome::Failed { reason } => c.u8(2).u8(reason.code()),
        };
    }

    pub fn validate(&self) -> Result<(), FieldError> {
        match self {
            RemoteOutcome::Acked { note, .. } => crate::message::check_note(note),
            RemoteOutcome::Failed { .. } => Ok(()),
        }
    }
}

/// A delivery notification: a recipient's final outcome at its provider, as that provider
/// relays it back to the sender's.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Notification {
    pub message_id: MessageId,
    pub recipient: EndpointId,
    pub outcome: RemoteOutcome,
    /// Sequence of the final event at the recipient's provider.
    pub peer_seq: u64,
}

/// One directory change exported by the provider that hosts the organisation.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum PeerChange {
    Organisation(OrganisationSpec),
    Endpoint(EndpointSpec),
    EndpointRetired(EndpointId),
    KeysRotated { org: HpiO, keys: PublicKeys },
}

impl PeerChange {
    /// The directory change an event of the exporting provider's own directory makes, if
    /// any (wrapped private keys and messages are never exported).
    pub fn from_event(event: &Event) -> Option<Self> {
        match event {
            Event::OrganisationRegistered(o) => Some(PeerChange::Organisation(o.clone())),
            Event::EndpointPublished(e) => Some(PeerChange::Endpoint(e.clone())),
            Event::EndpointRetired { id, .. } => Some(PeerChange::EndpointRetired(id.clone())),
            Event::KeysRotated { org, keys } => Some(PeerChange::KeysRotated {
                org: org.clone(),
                keys: keys.clone(),
            }),
            _ => None,
        }
    }

    pub fn org(&self) -> &HpiO {
        match self {
            PeerChange::Organisation(o) => &o.hpio,
            PeerChange::Endpoint(e) => &e.id.org,
            PeerChange::EndpointRetired(id) => &id.org,
            PeerChange::KeysRotated { org, .. } => org,
        }
    }

    pub fn validate(&self) -> Result<(), FieldError> {
        match self {
            PeerChange::Organisation(o) => o.validate(),
            PeerChange::Endpoint(e) => e.validate(),
            PeerChange::EndpointRetired(_) => Ok(()),
            PeerChange::KeysRotated { keys, .. } => keys.validate(),
        }
    }

    pub(crate) fn write_canonical(&self, c: &mut Canon) {
        // Each change is hashed as the canonical body of the event that made it at the
        // exporting provider, so an auditor can compare both logs.
        let event = match self {
            PeerChange::Organisation(o) => Event::OrganisationRegistered(o.clone()),
            PeerChange::Endpoint(e) => Event::EndpointPublished(e.clone()),
            PeerChange::EndpointRetired(id) => Event::EndpointRetired {
                id: id.clone(),
                reason: String::new(),
            },
            PeerChange::KeysRotated { org, keys } => Event::KeysRotated {
                org: org.clone(),
                keys: keys.clone(),
            },
        };
        let mut inner = Canon::new();
        event.write_canonical_body(&mut inner);
        c.bytes(&inner.finish());
    }
}

/// Cursor kinds in the `peers` view.
pub mod cursor {
    /// The peer's directory was imported through this peer sequence.
    pub const DIRECTORY: u8 = b'd';
    /// Notifications for messages from this peer were relayed through this local sequence.
    pub const NOTIFIED: u8 = b'n';
    /// A sending organisation's system was told its messages' outcomes through this local
    /// sequence (the key names the organisation's HPI-O instead of a provider).
    pub const OUTCOMES: u8 = b'o';
}

/// View key layouts of federation.
pub mod keys {
    /// `peers`: kind, provider → cursor (u64, big-endian).
    pub fn cursor(kind: u8, provider: &str) -> Vec<u8> {
        let mut k = vec![kind];
        k.extend_from_slice(provider.as_bytes());
        k
    }

    /// `relay_queue`: provider, 0, sent sequence → message id; present while a message
    /// waits to be relayed to that provider.
    pub fn relay(provider: &str, sent_seq: u64) -> Vec<u8> {
        let mut k = relay_prefix(provider);
        k.extend_from_slice(&sent_seq.to_be_bytes());
        k
    }

    pub fn relay_prefix(provider: &str) -> Vec<u8> {
        let mut k = provider.as_bytes().to_vec();
        k.push(0);
        k
    }

    /// `notify`: origin provider, 0, sequence of the final event → [`Notification`].
    /// Never deleted: the `NOTIFIED` cursor says how far the origin has been told.
    pub fn notify(provider: &str, seq: u64) -> Vec<u8> {
        let mut k = relay_prefix(provider);
        k.extend_from_slice(&seq.to_be_bytes());
        k
    }

    /// `dir_log`: sequence of a local directory event (what peers pull).
    pub fn dir_log(seq: u64) -> Vec<u8> {
        seq.to_be_bytes().to_vec()
    }

    /// `outcomes`: sending organisation, 0, sequence of the final event → (message id,
    /// recipient). Never deleted; the `OUTCOMES` cursor says how far the organisation's
    /// system has been told.
    pub fn outcome(org: &crate::ids::HpiO, seq: u64) -> Vec<u8> {
        let mut k = relay_prefix(org.as_str());
        k.extend_from_slice(&seq.to_be_bytes());
        k
    }

    /// `dead_letters`: sequence of the `Failed` event → (message id, recipient).
    pub fn dead_letter(seq: u64) -> Vec<u8> {
        seq.to_be_bytes().to_vec()
    }
}

pub(crate) fn encode_cursor(v: u64) -> Vec<u8> {
    v.to_be_bytes().to_vec()
}

/// Decodes a cursor value written by [`keys::cursor`]'s fold.
pub fn decode_cursor(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.try_into().ok()?))
}

/// Imports a peer's directory changes `(after_seq, through_seq]`. Changes about
/// organisations this provider hosts, or that another peer hosts, are dropped (and
/// counted), so a peer can never take over an organisation.
pub(crate) fn decide_import(
    provider: String,
    after_seq: u64,
    through_seq: u64,
    changes: Vec<PeerChange>,
    facts: &Facts,
) -> Result<Vec<Event>, Rejection> {
    let cursor = facts.cursor(cursor::DIRECTORY, &provider).unwrap_or(0);
    if cursor != after_seq {
        return Err(Rejection::AlreadyExists(format!(
            "the directory of {provider} is imported through {cursor}, not {after_seq}"
        )));
    }
    if through_seq < after_seq {
        return Err(Rejection::InvalidArgument(format!(
            "through_seq {through_seq} is before after_seq {after_seq}"
        )));
    }
    let mut kept = Vec::with_capacity(changes.len());
    let mut skipped = 0u32;
    let mut new_orgs: Vec<HpiO> = Vec::new();
    for ch in changes {
        let hosted_by_peer = match facts.organisation(ch.org()) {
            Some(o) => o.provider.as_deref() == Some(provider.as_str()),
            None => new_orgs.contains(ch.org()),
        };
        let ok = match &ch {
            PeerChange::Organisation(o) => {
                let fresh = facts.organisation(&o.hpio).is_none() && !new_orgs.contains(&o.hpio);
                if fresh {
                    new_orgs.push(o.hpio.clone());
                }
                fresh || hosted_by_peer
            }
            _ => hosted_by_peer,
        };
        if ok {
            kept.push(ch);
        } else {
            skipped += 1;
        }
    }
    Ok(vec![Event::PeerDirectoryImported {
        provider,
        through_seq,
        changes: kept,
        skipped,
    }])
}

/// Records a transport receipt for the recipients hosted by the receipt's provider.
pub(crate) fn decide_relayed(
    receipt: TransportReceipt,
    outcome_by_ms: u64,
    facts: &Facts,
) -> Result<Vec<Event>, Rejection> {
    let msg = facts
        .message(&receipt.message_id)
        .ok_or_else(|| Rejection::NotFound(format!("message {} is unknown", receipt.message_id)))?;
    if !msg.awaits_relay(&receipt.provider) {
        return Err(Rejection::FailedPrecondition(format!(
            "message {} has no recipient at {} waiting to be relayed",
            receipt.message_id, receipt.provider
        )));
    }
    Ok(vec![Event::Relayed {
        receipt,
        outcome_by_ms,
    }])
}

/// Why a relayed envelope cannot be received here, judged against the facts (and the
/// entry's time); `None` when it can.
pub fn receive_refusal(
    from_provider: &str,
    envelope: &Envelope,
    facts: &Facts,
    ts_ms: u64,
) -> Option<Rejection> {
    let h = &envelope.header;
    if facts.message(&h.message_id).is_some() {
        return Some(Rejection::AlreadyExists(format!(
            "message {} was already received",
            h.message_id
        )));
    }
    if ts_ms > h.deliver_by_ms {
        return Some(Rejection::FailedPrecondition(format!(
            "message {} expired at {} (deliver-by)",
            h.message_id, h.deliver_by_ms
        )));
    }
    let sender_host = facts
        .organisation(&h.sender.org)
        .map(|o| o.provider.clone());
    if sender_host != Some(Some(from_provider.to_string())) {
        return Some(Rejection::FailedPrecondition(format!(
            "sender organisation {} is not hosted by {from_provider}",
            h.sender.org
        )));
    }
    let ours = h
        .recipient_orgs()
        .iter()
        .any(|o| facts.organisation(o).is_some_and(|o| o.provider.is_none()));
    if !ours {
        return Some(Rejection::FailedPrecondition(format!(
            "message {} names no organisation hosted by this provider",
            h.message_id
        )));
    }
    None
}

/// Commits messages relayed from a peer provider, in order; those that cannot be received
/// (already here, expired, from the wrong provider, for nobody hosted here) are left out.
/// Refused only when none can be received.
pub(crate) fn decide_receive(
    from_provider: String,
    envelopes: Vec<Envelope>,
    facts: &Facts,
    ts_ms: u64,
) -> Result<Vec<Event>, Rejection> {
    let mut out: Vec<Event> = Vec::with_capacity(envelopes.len());
    let mut first_refusal = None;
    for envelope in envelopes {
        let repeated = out
            .iter()
            .any(|e| e.message_id() == Some(&envelope.header.message_id));
        match receive_refusal(&from_provider, &envelope, facts, ts_ms) {
            None if !repeated => out.push(Event::Received {
                envelope: Box::new(envelope),
                from_provider: from_provider.clone(),
            }),
            None => {}
            Some(r) => {
                first_refusal.get_or_insert(r);
            }
        }
    }
    match (out.is_empty(), first_refusal) {
        (true, Some(r)) => Err(r),
        _ => Ok(out),
    }
}

/// Records a peer's report of a remote recipient's final outcome: the final outcome when
/// the recipient has none yet, a `LateOutcome` (no state change) when it differs from the
/// one recorded, nothing when it repeats it.
pub(crate) fn decide_notify(
    provider: String,
    n: Notification,
    facts: &Facts,
) -> Result<Vec<Event>, Rejection> {
    let msg = facts
        .message(&n.message_id)
        .ok_or_else(|| Rejection::NotFound(format!("message {} is unknown", n.message_id)))?;
    let r = msg.recipient(&n.recipient).ok_or_else(|| {
        Rejection::NotFound(format!(
            "message {} is not addressed to {}",
            n.message_id, n.recipient
        ))
    })?;
    if r.provider.as_deref() != Some(provider.as_str()) {
        return Err(Rejection::FailedPrecondition(format!(
            "recipient {} is not hosted by {provider}",
            n.recipient
        )));
    }
    if r.state == RecipientState::Sent {
        // The peer can only know the outcome of a message it received, so its receipt is
        // on its way (or was lost and the deadline path will fetch it): the outcome must
        // follow `Relayed` in this log.
        return Err(Rejection::FailedPrecondition(format!(
            "message {} for {} has no recorded receipt yet",
            n.message_id, n.recipient
        )));
    }
    if r.state.is_final() {
        if n.outcome.matches(&r.state) {
            return Err(Rejection::AlreadyExists(format!(
                "message {} for {} is already {}",
                n.message_id,
                n.recipient,
                n.outcome.name()
            )));
        }
        return Ok(vec![Event::LateOutcome {
            message_id: n.message_id,
            recipient: n.recipient,
            provider,
            outcome: n.outcome,
            peer_seq: n.peer_seq,
        }]);
    }
    Ok(vec![match n.outcome {
        RemoteOutcome::Acked { status, note } => Event::Acked {
            message_id: n.message_id,
            recipient: n.recipient,
            status,
            note,
        },
        RemoteOutcome::Failed { reason } => Event::Failed {
            message_id: n.message_id,
            recipient: n.recipient,
            reason,
        },
    }])
}

/// Advances the cursor of notifications relayed to a peer.
pub(crate) fn decide_notified(
    provider: String,
    through_seq: u64,
    facts: &Facts,
) -> Result<Vec<Event>, Rejection> {
    let cursor = facts.cursor(cursor::NOTIFIED, &provider).unwrap_or(0);
    if through_seq <= cursor {
        return Err(Rejection::AlreadyExists(format!(
            "notifications to {provider} are relayed through {cursor}"
        )));
    }
    Ok(vec![Event::NotificationsRelayed {
        provider,
        through_seq,
    }])
}

/// View changes of an imported peer directory batch.
pub(crate) fn fold_import(
    provider: &str,
    through_seq: u64,
    changes: &[PeerChange],
    seq: u64,
    facts: &Facts,
) -> Vec<ViewChange> {
    let mut out = Vec::new();
    // Folding change by change against facts updated in between, like a batch of events.
    let mut facts = facts.clone();
    for ch in changes {
        let changes = match ch {
            PeerChange::Organisation(spec) => {
                let org = match facts.organisation(&spec.hpio) {
                    Some(o) => {
                        let mut o = o.clone();
                        o.spec = spec.clone();
                        o.keys_seq = seq;
                        o
                    }
                    None => crate::directory::Organisation {
                        spec: spec.clone(),
                        registered_seq: seq,
                        keys_seq: seq,
                        provider: Some(provider.to_string()),
                    },
                };
                vec![ViewChange::PutOrganisation(org)]
            }
            PeerChange::Endpoint(spec) => crate::view::fold_endpoint_published(spec, seq, &facts),
            PeerChange::EndpointRetired(id) => crate::view::fold_endpoint_retired(id, seq, &facts),
            PeerChange::KeysRotated { org, keys } => {
                crate::view::fold_keys_rotated(org, keys, seq, &facts)
            }
        };
        facts.absorb(&changes);
        out.extend(changes);
    }
    out.push(ViewChange::Put(
        ViewCf::Peers,
        keys::cursor(cursor::DIRECTORY, provider),
        encode_cursor(through_seq),
    ));
    out
}

/// Advances the cursor of outcomes told to a sending organisation's system.
pub(crate) fn decide_outcomes_notified(
    org: HpiO,
    through_seq: u64,
    facts: &Facts,
) -> Result<Vec<Event>, Rejection> {
    let cursor = facts.cursor(cursor::OUTCOMES, org.as_str()).unwrap_or(0);
    if through_seq <= cursor {
        return Err(Rejection::AlreadyExists(format!(
            "outcomes of {org} are notified through {cursor}"
        )));
    }
    Ok(vec![Event::OutcomesNotified { org, through_seq }])
}

pub(crate) fn fold_outcomes_notified(org: &HpiO, through_seq: u64) -> Vec<ViewChange> {
    vec![ViewChange::Put(
        ViewCf::Peers,
        keys::cursor(cursor::OUTCOMES, org.as_str()),
        encode_cursor(through_seq),
    )]
}

pub(crate) fn fold_notified(provider: &str, through_seq: u64) -> Vec<ViewChange> {
    vec![ViewChange::Put(
        ViewCf::Peers,
        keys::cursor(cursor::NOTIFIED, provider),
        encode_cursor(through_seq),
    )]
}

/// Canonical body of the federation events (tags 12 and up), called from `event.rs`.
pub(crate) fn write_event_canonical(event: &Event, c: &mut Canon) {
    match event {
        Event::PeerDirectoryImported {
            provider,
            through_seq,
            changes,
            skipped,
        } => {
            c.u16(12)
                .str(provider)
                .u64(*through_seq)
                .u64(u64::from(*skipped))
                .count(changes.len());
            for ch in changes {
                ch.write_canonical(c);
            }
        }
        Event::Relayed {
            receipt,
            outcome_by_ms,
        } => {
            c.u16(13);
            receipt.write_canonical(c);
            c.u64(*outcome_by_ms);
        }
        Event::Received {
            envelope,
            from_provider,
        } => {
            c.u16(14).str(from_provider);
            crate::event::write_envelope_canonical(c, envelope);
        }
        Event::NotificationsRelayed {
            provider,
            through_seq,
        } => {
            c.u16(15).str(provider).u64(*through_seq);
        }
        Event::LateOutcome {
            message_id,
            recipient,
            provider,
            outcome,
            peer_seq,
        } => {
            c.u16(16).str(message_id.as_str());
            crate::event::write_endpoint_id(c, recipient);
            c.str(provider);
            outcome.write_canonical(c);
            c.u64(*peer_seq);
        }
        // The other variants are written in event.rs.
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Command, DeliveryVerdict};
    use crate::directory::{Endpoint, Organisation, PayloadType};
    use crate::message::{ENVELOPE_VERSION, EnvelopeHeader, Priority, SealedCopy, Sender};
    use crate::sim::Sim;

    const DELIVER_BY: u64 = 10_000;
    const A: &str = "prov-a";
    const B: &str = "prov-b";

    fn org(serial: u64, provider: Option<&str>) -> Organisation {
        Organisation {
            spec: OrganisationSpec::sample(serial),
            registered_seq: 1,
            keys_seq: 1,
            provider: provider.map(str::to_string),
        }
    }

    fn ep(serial: u64) -> EndpointId {
        EndpointId::service(HpiO::from_serial(serial), "desk").expect("endpoint")
    }

    /// Organisation 1 is hosted by A, organisation 2 (with endpoint 2/desk) by B; each
    /// provider knows the other's organisation from its directory.
    fn provider(me: &str) -> Sim {
        let mut facts = Facts::default();
        fn host<'a>(me: &str, p: &'a str) -> Option<&'a str> {
            (p != me).then_some(p)
        }
        facts.load_organisation(HpiO::from_serial(1), Some(org(1, host(me, A))));
        facts.load_organisation(HpiO::from_serial(2), Some(org(2, host(me, B))));
        facts.load_endpoint(
            ep(2),
            Some(Endpoint {
                spec: EndpointSpec {
                    id: ep(2),
                    display_name: "Desk".into(),
                    specialty: "Pathology".into(),
                    payload_types: vec![PayloadType::Text],
                },
                published_seq: 2,
                retired_seq: None,
            }),
        );
        Sim::new(facts, 10)
    }

    fn envelope() -> Envelope {
        let header = EnvelopeHeader {
            version: ENVELOPE_VERSION,
            message_id: MessageId::new(A, "01890a5d-ac96-774b-bcce-b302099a8057").expect("id"),
            sender: Sender {
                org: HpiO::from_serial(1),
                practitioner: None,
            },
            sender_key_id: OrganisationSpec::sample(1).keys.key_id,
            recipients: vec![ep(2)],
            payload_type: PayloadType::Text,
            priority: Priority::Routine,
            patient: None,
            payload_digest: crate::message::payload_digest(b"hello"),
            payload_bytes: 5,
            created_ms: 1,
            deliver_by_ms: DELIVER_BY,
        };
        Envelope {
            header,
            signature: vec![0; 64],
            sealed: vec![SealedCopy {
                org: HpiO::from_serial(2),
                key_id: "k1".into(),
                enc: vec![0; 32],
                ciphertext: vec![0; 21],
            }],
        }
    }

    fn receipt(env: &Envelope, seq: u64) -> TransportReceipt {
        TransportReceipt {
            message_id: env.header.message_id.clone(),
            header_digest: env.header.digest(),
            provider: B.into(),
            seq,
            ts_ms: 150,
            signature: vec![1; 64],
        }
    }

    fn notify(id: &MessageId, outcome: RemoteOutcome, peer_seq: u64) -> Command {
        Command::Notify {
            provider: B.into(),
            notification: Notification {
                message_id: id.clone(),
                recipient: ep(2),
                outcome,
                peer_seq,
            },
        }
    }

    /// The whole cross-provider lifecycle: A queues the message for B (not for its own
    /// delivery worker), B receives it once and owes A the outcome, A records the receipt
    /// and then exactly one final outcome however often B repeats it.
    #[test]
    fn a_relayed_message_returns_exactly_one_outcome() {
        let (mut a, mut b) = (provider(A), provider(B));
        let env = envelope();
        let id = env.header.message_id.clone();
        a.run(
            Command::Send {
                envelope: Box::new(env.clone()),
                client_message_id: "mllp:PMS|Clinic|C1".into(),
            },
            100,
        )
        .expect("send at A");
        let sent_seq = a.seq;
        assert!(
            a.put(ViewCf::RelayQueue, &keys::relay(B, sent_seq))
                .is_some()
        );
        assert!(
            a.put(ViewCf::Queue, &crate::messaging::keys::queue(sent_seq))
                .is_none(),
            "A's delivery worker never handles B's recipient"
        );
        let deliver = |verdict| Command::Deliver {
            message_id: id.clone(),
            recipient: ep(2),
            verdict,
        };
        a.run(deliver(DeliveryVerdict::Route { ack_by_ms: 1 }), 101)
            .expect_err("A cannot route a recipient B hosts");

        let receive = Command::Receive {
            from_provider: A.into(),
            envelopes: vec![env.clone(), env.clone()],
        };
        let ev = b.run(receive.clone(), 120).expect("B receives");
        assert_eq!(ev.len(), 1, "a repeat in the same relay is received once");
        let received_seq = b.seq;
        let at_b = b.facts.message(&id).expect("status at B").clone();
        assert_eq!(at_b.origin.as_deref(), Some(A));
        assert!(at_b.recipients.iter().all(|r| r.is_local()));
        assert!(
            b.put(ViewCf::Queue, &crate::messaging::keys::queue(received_seq))
                .is_some()
        );
        assert!(matches!(
            b.run(receive, 121),
            Err(Rejection::AlreadyExists(_))
        ));

        let early = notify(
            &id,
            RemoteOutcome::Acked {
                status: AckStatus::Accepted,
                note: String::new(),
            },
            99,
        );
        a.run(early, 125)
            .expect_err("an outcome never precedes the receipt in A's log");
        let relayed = Command::RecordRelayed {
            receipt: receipt(&env, received_seq),
            outcome_by_ms: 50_000,
        };
        a.run(relayed.clone(), 130).expect("A records the receipt");
        assert!(matches!(
            a.state(&id, &ep(2)),
            RecipientState::Relayed { .. }
        ));
        assert!(a.deleted(ViewCf::RelayQueue, &keys::relay(B, sent_seq)));
        a.run(relayed, 131)
            .expect_err("a second receipt changes nothing");

        b.run(deliver(DeliveryVerdict::Route { ack_by_ms: 40_000 }), 140)
            .expect("B routes");
        b.run(
            Command::Ack {
                message_id: id.clone(),
                recipient: ep(2),
                status: AckStatus::Accepted,
                note: "thanks".into(),
            },
            150,
        )
        .expect("B's receiver acknowledges");
        let owed: Notification = crate::codec::decode(
            b.put(ViewCf::Notify, &keys::notify(A, b.seq))
                .expect("B owes A the outcome"),
        )
        .expect("notification");
        assert_eq!(owed.peer_seq, b.seq);

        let outcome = owed.outcome.clone();
        a.run(notify(&id, outcome.clone(), owed.peer_seq), 160)
            .expect("A records the outcome");
        assert!(matches!(
            a.state(&id, &ep(2)),
            RecipientState::Acked {
                status: AckStatus::Accepted,
                ..
            }
        ));
        assert!(matches!(
            a.run(notify(&id, outcome, owed.peer_seq), 161),
            Err(Rejection::AlreadyExists(_))
        ));
        assert_eq!(a.finals(&ep(2)), 1);
        assert_eq!(b.finals(&ep(2)), 1);

        // Submitted over MLLP, so the sender's own system can be told: the outcome is listed
        // for organisation 1, and telling it advances a cursor exactly once.
        let final_seq = a.seq;
        let sender = HpiO::from_serial(1);
        assert!(
            a.put(ViewCf::Outcomes, &keys::outcome(&sender, final_seq))
                .is_some()
        );
        let told = Command::OutcomesNotified {
            org: sender.clone(),
            through_seq: final_seq,
        };
        a.run(told.clone(), 170).expect("told");
        assert_eq!(
            a.facts.cursor(cursor::OUTCOMES, sender.as_str()),
            Some(final_seq)
        );
        assert!(matches!(a.run(told, 171), Err(Rejection::AlreadyExists(_))));
    }

    /// A relayed recipient whose provider never answers fails as unacknowledged once; an
    /// acknowledgement that arrives after that is recorded, and changes nothing.
    #[test]
    fn a_late_acknowledgement_is_recorded_but_never_final() {
        let mut a = provider(A);
        let env = envelope();
        let id = env.header.message_id.clone();
        a.run(
            Command::Send {
                envelope: Box::new(env.clone()),
                client_message_id: "c1".into(),
            },
            100,
        )
        .expect("send");
        a.run(
            Command::RecordRelayed {
                receipt: receipt(&env, 7),
                outcome_by_ms: 20_000,
            },
            200,
        )
        .expect("relayed");
        let expire = Command::Expire {
            message_id: id.clone(),
            recipient: ep(2),
        };
        a.run(expire.clone(), 20_000)
            .expect_err("the outcome window is still open");
        a.run(expire.clone(), 20_001).expect("unacknowledged");
        a.run(expire, 20_002).expect_err("already final");
        let late = a
            .run(
                notify(
                    &id,
                    RemoteOutcome::Acked {
                        status: AckStatus::Accepted,
                        note: String::new(),
                    },
                    9,
                ),
                20_003,
            )
            .expect("recorded");
        assert!(matches!(late.as_slice(), [Event::LateOutcome { .. }]));
        assert!(matches!(
            a.state(&id, &ep(2)),
            RecipientState::Failed {
                reason: FailReason::Unacknowledged,
                ..
            }
        ));
        assert_eq!(a.finals(&ep(2)), 1);
        // The failure is listed for operators.
        assert!(
            a.changes
                .iter()
                .any(|c| matches!(c, ViewChange::Put(ViewCf::DeadLetters, ..)))
        );
        // Not submitted over MLLP: no sending system to tell, so no outcome is listed.
        assert!(
            !a.changes
                .iter()
                .any(|c| matches!(c, ViewChange::Put(ViewCf::Outcomes, ..)))
        );
    }

    /// A receiving provider refuses what it must not commit: an expired envelope, a sender
    /// its peer does not host, a message for nobody it hosts.
    #[test]
    fn receive_refuses_expired_foreign_and_stray_messages() {
        let mut b = provider(B);
        let env = envelope();
        let receive = |from: &str, env: &Envelope| Command::Receive {
            from_provider: from.into(),
            envelopes: vec![env.clone()],
        };
        let err = b
            .run(receive(A, &env), DELIVER_BY + 1)
            .expect_err("expired");
        assert!(err.to_string().contains("expired"), "{err}");
        let err = b.run(receive("prov-c", &env), 10).expect_err("wrong peer");
        assert!(err.to_string().contains("not hosted by prov-c"), "{err}");
        let mut a = provider(A);
        let err = a.run(receive(B, &env), 10).expect_err("not ours");
        assert!(err.to_string().contains("hosted by"), "{err}");
        assert!(b.events.is_empty() && a.events.is_empty());
    }

    /// Imports advance a cursor exactly once and can never take over an organisation that
    /// this provider or another peer hosts.
    #[test]
    fn imports_follow_the_cursor_and_keep_to_the_peer() {
        let mut a = provider(A);
        let new_org = OrganisationSpec::sample(3);
        let new_ep = EndpointSpec {
            id: EndpointId::service(new_org.hpio.clone(), "ward").expect("ep"),
            display_name: "Ward".into(),
            specialty: "Renal".into(),
            payload_types: vec![PayloadType::Text],
        };
        let import = |after, through, changes| Command::ImportPeerDirectory {
            provider: B.into(),
            after_seq: after,
            through_seq: through,
            changes,
        };
        let ev = a
            .run(
                import(
                    0,
                    5,
                    vec![
                        PeerChange::Organisation(new_org.clone()),
                        PeerChange::Endpoint(new_ep.clone()),
                        // A hosts organisation 1: B cannot re-register it.
                        PeerChange::Organisation(OrganisationSpec::sample(1)),
                    ],
                ),
                10,
            )
            .expect("import");
        assert!(matches!(
            ev.as_slice(),
            [Event::PeerDirectoryImported { skipped: 1, changes, .. }] if changes.len() == 2
        ));
        let imported = a.facts.organisation(&new_org.hpio).expect("imported");
        assert_eq!(imported.provider.as_deref(), Some(B));
        assert!(a.facts.endpoint(&new_ep.id).is_some());
        assert!(
            a.changes
                .iter()
                .any(|c| matches!(c, ViewChange::PutIndex(k) if k.ends_with(b"/ward")))
        );
        assert_eq!(a.facts.cursor(cursor::DIRECTORY, B), Some(5));
        assert!(matches!(
            a.run(import(0, 5, vec![]), 11),
            Err(Rejection::AlreadyExists(_))
        ));
        // Another peer cannot take over B's organisation.
        let ev = a
            .run(
                Command::ImportPeerDirectory {
                    provider: "prov-c".into(),
                    after_seq: 0,
                    through_seq: 1,
                    changes: vec![PeerChange::Organisation(new_org)],
                },
                12,
            )
            .expect("import from C");
        assert!(matches!(
            ev.as_slice(),
            [Event::PeerDirectoryImported { skipped: 1, .. }]
        ));
    }

    /// This provider's own clients cannot change an organisation a peer hosts.
    #[test]
    fn a_peers_organisation_is_changed_only_by_the_peer() {
        let mut a = provider(A);
        let peer_org = HpiO::from_serial(2);
        let new_ep = EndpointSpec {
            id: EndpointId::service(peer_org.clone(), "other").expect("ep"),
            display_name: "Other".into(),
            specialty: "Renal".into(),
            payload_types: vec![PayloadType::Text],
        };
        let mut keys = OrganisationSpec::sample(2).keys;
        keys.key_id = "k-new".into();
        for cmd in [
            Command::PublishEndpoint(new_ep),
            Command::RetireEndpoint {
                id: ep(2),
                reason: "gone".into(),
            },
            Command::RotateKeys {
                org: peer_org.clone(),
                keys,
            },
        ] {
            let err = a.run(cmd, 10).expect_err("hosted by B");
            assert!(err.to_string().contains("hosted by prov-b"), "{err}");
        }
        assert!(a.events.is_empty());
    }

    /// The receipt's signed bytes cover every field but the signature.
    #[test]
    fn receipt_signed_bytes_cover_every_field() {
        let env = envelope();
        let base = receipt(&env, 7);
        let mut variants = Vec::new();
        let mut r = base.clone();
        r.header_digest[0] ^= 1;
        variants.push(r);
        let mut r = base.clone();
        r.provider = "prov-c".into();
        variants.push(r);
        let mut r = base.clone();
        r.seq += 1;
        variants.push(r);
        let mut r = base.clone();
        r.ts_ms += 1;
        variants.push(r);
        let mut r = base.clone();
        r.message_id = MessageId::new(A, "01890a5d-ac96-774b-bcce-b302099a8058").expect("other id");
        variants.push(r);
        for v in variants {
            assert_ne!(v.signed_bytes(), base.signed_bytes(), "{v:?}");
        }
        assert!(check_provider("p", "prov:b").is_err());
        assert!(check_provider("p", "prov b").is_err());
        assert!(check_provider("p", "prov-b").is_ok());
    }
}
