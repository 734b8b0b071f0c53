//! The message lifecycle as pure functions: the decisions for send, delivery and deadlines,
//! the fold from message events to view changes, and the key layout of the messaging views.
//!
//! Lifecycle per recipient: `Sent` → (`Decrypted`, `Routed`) → `Fetched`* → `Acked`, or
//! `Failed` from `Sent` (cannot be opened, undeliverable) or from `Routed`
//! (unacknowledged). Exactly one final outcome (`Acked` or `Failed`) per recipient: every
//! decision here refuses a transition out of a final state, so a retried worker or a
//! deadline racing an acknowledgement writes nothing.

use crate::command::{DeliveryVerdict, Rejection};
use crate::directory::{Endpoint, PayloadType};
use crate::event::Event;
use crate::federation::{Notification, RemoteOutcome, keys as fed_keys};
use crate::ids::{EndpointId, HpiO, Ihi};
use crate::message::{
    Envelope, FailReason, MessageId, MessageStatus, RecipientState, RecipientStatus,
};
use crate::view::{Facts, ViewCf, ViewChange};

/// Deadline kinds in the deadline index.
pub mod deadline {
    /// deliver-by: not routed in time.
    pub const UNDELIVERABLE: u8 = 1;
    /// acknowledgement window: routed but not acknowledged in time.
    pub const UNACKNOWLEDGED: u8 = 2;
}

/// View key layouts. Numbers are big-endian so that byte order is numeric order.
pub mod keys {
    use super::*;

    /// `msg_index` kinds: by time, sender organisation, recipient organisation, patient.
    pub const INDEX_TIME: u8 = b't';
    pub const INDEX_SENDER: u8 = b's';
    pub const INDEX_RECIPIENT: u8 = b'r';
    pub const INDEX_PATIENT: u8 = b'p';

    /// The prefix of one index: its kind, then the organisation or IHI (none for time).
    pub fn index_prefix(kind: u8, name: &str) -> Vec<u8> {
        let mut k = vec![kind];
        k.extend_from_slice(name.as_bytes());
        k
    }

    /// `msg_index`: prefix, sent time, sent sequence → message id. Time-ordered within
    /// each prefix, so a date range is one key range.
    pub fn index(kind: u8, name: &str, ts_ms: u64, seq: u64) -> Vec<u8> {
        let mut k = index_prefix(kind, name);
        k.extend_from_slice(&ts_ms.to_be_bytes());
        k.extend_from_slice(&seq.to_be_bytes());
        k
    }

    /// Every index key of a message: by time, by sender, by each recipient organisation
    /// this provider tracks, and by patient when the header names one.
    pub fn index_keys(status: &MessageStatus, patient: Option<&Ihi>) -> Vec<Vec<u8>> {
        let (ts, seq) = (status.sent_ts_ms, status.sent_seq);
        let mut out = vec![
            index(INDEX_TIME, "", ts, seq),
            index(INDEX_SENDER, status.sender.org.as_str(), ts, seq),
        ];
        let mut orgs: Vec<&HpiO> = status.recipients.iter().map(|r| &r.endpoint.org).collect();
        orgs.sort();
        orgs.dedup();
        for org in orgs {
            out.push(index(INDEX_RECIPIENT, org.as_str(), ts, seq));
        }
        if let Some(p) = patient {
            out.push(index(INDEX_PATIENT, p.as_str(), ts, seq));
        }
        out
    }

    /// `messages`: message id → [`MessageStatus`].
    pub fn message(id: &MessageId) -> Vec<u8> {
        id.as_str().as_bytes().to_vec()
    }

    /// `idempotency`: sender organisation, 0, client message id → message id.
    pub fn idempotency(org: &HpiO, client_message_id: &str) -> Vec<u8> {
        let mut k = org.as_str().as_bytes().to_vec();
        k.push(0);
        k.extend_from_slice(client_message_id.as_bytes());
        k
    }

    /// `outbox`: sender organisation, sent sequence → message id.
    pub fn outbox(org: &HpiO, sent_seq: u64) -> Vec<u8> {
        let mut k = org.as_str().as_bytes().to_vec();
        k.extend_from_slice(&sent_seq.to_be_bytes());
        k
    }

    /// Prefix of an organisation's outbox.
    pub fn outbox_prefix(org: &HpiO) -> Vec<u8> {
        org.as_str().as_bytes().to_vec()
    }

    /// `inbox`, organisation-wide: 'o', organisation, priority rank, routed sequence.
    /// Lists urgent first, then oldest.
    pub fn inbox_org(org: &HpiO, rank: u8, routed_seq: u64) -> Vec<u8> {
        let mut k = inbox_org_prefix(org);
        k.push(rank);
        k.extend_from_slice(&routed_seq.to_be_bytes());
        k
    }

    pub fn inbox_org_prefix(org: &HpiO) -> Vec<u8> {
        let mut k = vec![b'o'];
        k.extend_from_slice(org.as_str().as_bytes());
        k
    }

    /// `inbox`, per endpoint: 'e', endpoint, 0, priority rank, routed sequence.
    pub fn inbox_endpoint(ep: &EndpointId, rank: u8, routed_seq: u64) -> Vec<u8> {
        let mut k = inbox_endpoint_prefix(ep);
        k.push(rank);
        k.extend_from_slice(&routed_seq.to_be_bytes());
        k
    }

    pub fn inbox_endpoint_prefix(ep: &EndpointId) -> Vec<u8> {
        let mut k = vec![b'e'];
        k.extend_from_slice(ep.to_string().as_bytes());
        k.push(0);
        k
    }

    /// `feed`: recipient organisation, routed sequence → (message id, recipient). Never
    /// deleted: inbox streams resume from a routed sequence as their cursor.
    pub fn feed(org: &HpiO, routed_seq: u64) -> Vec<u8> {
        let mut k = org.as_str().as_bytes().to_vec();
        k.extend_from_slice(&routed_seq.to_be_bytes());
        k
    }

    /// `queue`: sent sequence → message id; present while a recipient waits for delivery.
    pub fn queue(sent_seq: u64) -> Vec<u8> {
        sent_seq.to_be_bytes().to_vec()
    }

    /// `deadlines`: due time, kind, message id, 0, recipient.
    pub fn deadline(due_ms: u64, kind: u8, id: &MessageId, recipient: &EndpointId) -> Vec<u8> {
        let mut k = due_ms.to_be_bytes().to_vec();
        k.push(kind);
        k.extend_from_slice(id.as_str().as_bytes());
        k.push(0);
        k.extend_from_slice(recipient.to_string().as_bytes());
        k
    }

    /// Parses a deadline key back into (due, kind, message id, recipient).
    pub fn parse_deadline(k: &[u8]) -> Option<(u64, u8, MessageId, EndpointId)> {
        let due = u64::from_be_bytes(k.get(..8)?.try_into().ok()?);
        let kind = *k.get(8)?;
        let rest = k.get(9..)?;
        let sep = rest.iter().position(|b| *b == 0)?;
        let id = MessageId::parse(std::str::from_utf8(&rest[..sep]).ok()?).ok()?;
        let ep = EndpointId::parse(std::str::from_utf8(&rest[sep + 1..]).ok()?).ok()?;
        Some((due, kind, id, ep))
    }

    /// `msg_events`: message id, 0, sequence: the message's timeline.
    pub fn msg_event(id: &MessageId, seq: u64) -> Vec<u8> {
        let mut k = msg_event_prefix(id);
        k.extend_from_slice(&seq.to_be_bytes());
        k
    }

    pub fn msg_event_prefix(id: &MessageId) -> Vec<u8> {
        let mut k = id.as_str().as_bytes().to_vec();
        k.push(0);
        k
    }

    /// `keystore`: organisation, 0, key id → wrapped private keys.
    pub fn keystore(org: &HpiO, key_id: &str) -> Vec<u8> {
        let mut k = org.as_str().as_bytes().to_vec();
        k.push(0);
        k.extend_from_slice(key_id.as_bytes());
        k
    }

    /// The organisation and key id of a `keystore` key holding wrapped private keys (made
    /// by [`keystore`]); `None` for a published-keys key or anything else.
    pub fn wrapped_keys_of(key: &[u8]) -> Option<(HpiO, &str)> {
        // An HPI-O is digits, so the first 0 or 1 byte is the separator.
        let at = key.iter().position(|b| *b <= 1)?;
        if key[at] != 0 {
            return None;
        }
        let org = HpiO::parse(std::str::from_utf8(&key[..at]).ok()?).ok()?;
        let key_id = std::str::from_utf8(&key[at + 1..]).ok()?;
        Some((org, key_id))
    }

    /// `keystore`: organisation, 1, key id → the public keys the organisation published
    /// under that id (every key set it ever had, so a message signed or sealed before a
    /// rotation still verifies and opens).
    pub fn published_keys(org: &HpiO, key_id: &str) -> Vec<u8> {
        let mut k = org.as_str().as_bytes().to_vec();
        k.push(1);
        k.extend_from_slice(key_id.as_bytes());
        k
    }
}

/// The state of one recipient's copy, or a rejection naming what is missing.
pub fn recipient_state<'a>(
    facts: &'a Facts,
    id: &MessageId,
    recipient: &EndpointId,
) -> Result<&'a RecipientState, Rejection> {
    let msg = facts
        .message(id)
        .ok_or_else(|| Rejection::NotFound(format!("message {id} is unknown")))?;
    msg.recipient(recipient)
        .map(|r| &r.state)
        .ok_or_else(|| Rejection::NotFound(format!("message {id} is not addressed to {recipient}")))
}

/// A recipient must be published, active and accept the payload type. The node that
/// takes a send checks this on its view first (for an early answer); the decision at apply
/// is authoritative.
pub fn check_recipient(
    id: &EndpointId,
    endpoint: Option<&Endpoint>,
    payload_type: PayloadType,
) -> Result<(), Rejection> {
    let ep = endpoint
        .filter(|e| e.is_active())
        .ok_or_else(|| Rejection::NotFound(format!("recipient {id} is not in the directory")))?;
    if !ep.spec.payload_types.contains(&payload_type) {
        return Err(Rejection::FailedPrecondition(format!(
            "recipient {id} does not accept {payload_type} (it accepts {})",
            ep.spec
                .payload_types
                .iter()
                .map(|p| p.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(())
}

pub(crate) fn decide_send(
    envelope: Box<Envelope>,
    client_message_id: String,
    facts: &Facts,
) -> Result<Vec<Event>, Rejection> {
    let h = &envelope.header;
    if let Some(existing) = facts.client_id(&h.sender.org, &client_message_id) {
        return Err(Rejection::AlreadyExists(format!(
            "client message id {client_message_id:?} of {} is message {existing}",
            h.sender.org
        )));
    }
    if facts.message(&h.message_id).is_some() {
        return Err(Rejection::AlreadyExists(format!(
            "message {} already exists",
            h.message_id
        )));
    }
    let sender = facts.organisation(&h.sender.org).ok_or_else(|| {
        Rejection::NotFound(format!(
            "sender organisation {} is not registered",
            h.sender.org
        ))
    })?;
    if sender.spec.keys.key_id != h.sender_key_id {
        return Err(Rejection::FailedPrecondition(format!(
            "the envelope is signed with key {} but {} uses key {}",
            h.sender_key_id, h.sender.org, sender.spec.keys.key_id
        )));
    }
    for r in &h.recipients {
        check_recipient(r, facts.endpoint(r), h.payload_type)?;
    }
    Ok(vec![Event::Sent {
        envelope,
        client_message_id,
    }])
}

pub(crate) fn decide_deliver(
    id: &MessageId,
    recipient: &EndpointId,
    verdict: DeliveryVerdict,
    facts: &Facts,
    ts_ms: u64,
) -> Result<Vec<Event>, Rejection> {
    let state = recipient_state(facts, id, recipient)?;
    if !state.awaits_delivery() {
        return Err(Rejection::FailedPrecondition(format!(
            "message {id} for {recipient} is already {}",
            state.name()
        )));
    }
    if let Some(p) = facts
        .message(id)
        .and_then(|m| m.recipient(recipient))
        .and_then(|r| r.provider.as_ref())
    {
        return Err(Rejection::FailedPrecondition(format!(
            "recipient {recipient} is hosted by {p}, which delivers it"
        )));
    }
    let deliver_by = facts
        .message(id)
        .and_then(|m| undeliverable_by(m, state))
        .unwrap_or(0);
    let failed = |reason| Event::Failed {
        message_id: id.clone(),
        recipient: recipient.clone(),
        reason,
    };
    Ok(match verdict {
        // Receivers refuse an expired envelope, judged by the entry's time on every replica.
        DeliveryVerdict::Route { .. } if ts_ms > deliver_by => {
            vec![failed(FailReason::Undeliverable)]
        }
        DeliveryVerdict::Route { ack_by_ms } => vec![
            Event::Decrypted {
                message_id: id.clone(),
                recipient: recipient.clone(),
            },
            Event::Routed {
                message_id: id.clone(),
                recipient: recipient.clone(),
                ack_by_ms,
            },
        ],
        DeliveryVerdict::Fail(reason) => vec![failed(reason)],
    })
}

pub(crate) fn decide_expire(
    id: &MessageId,
    recipient: &EndpointId,
    facts: &Facts,
    ts_ms: u64,
) -> Result<Vec<Event>, Rejection> {
    let state = *recipient_state(facts, id, recipient)?;
    let deliver_by = facts
        .message(id)
        .and_then(|m| undeliverable_by(m, &state))
        .unwrap_or(u64::MAX);
    let reason = match state {
        RecipientState::Sent | RecipientState::Reprocessing { .. } if ts_ms > deliver_by => {
            FailReason::Undeliverable
        }
        RecipientState::Routed { ack_by_ms, .. } if ts_ms > ack_by_ms => FailReason::Unacknowledged,
        RecipientState::Relayed { outcome_by_ms, .. } if ts_ms > outcome_by_ms => {
            FailReason::Unacknowledged
        }
        RecipientState::Sent
        | RecipientState::Reprocessing { .. }
        | RecipientState::Routed { .. }
        | RecipientState::Relayed { .. } => {
            return Err(Rejection::FailedPrecondition(format!(
                "no deadline of message {id} for {recipient} has passed"
            )));
        }
        other => {
            return Err(Rejection::FailedPrecondition(format!(
                "message {id} for {recipient} is already {}",
                other.name()
            )));
        }
    };
    Ok(vec![Event::Failed {
        message_id: id.clone(),
        recipient: recipient.clone(),
        reason,
    }])
}

/// When a recipient waiting for delivery must be routed by: the envelope's deliver-by for
/// a first attempt, the operator's for a re-driven one; `None` when it is not waiting.
pub fn undeliverable_by(msg: &MessageStatus, state: &RecipientState) -> Option<u64> {
    match state {
        RecipientState::Sent => Some(msg.deliver_by_ms),
        RecipientState::Reprocessing { deliver_by_ms, .. } => Some(*deliver_by_ms),
        _ => None,
    }
}

/// An operator's re-drive of a failed recipient. Only a recipient hosted here, only the
/// failure named (so a retried request cannot re-drive a later failure), and a new
/// deliver-by in the future.
pub(crate) fn decide_reprocess(
    id: MessageId,
    recipient: EndpointId,
    failed_seq: u64,
    deliver_by_ms: u64,
    facts: &Facts,
    ts_ms: u64,
) -> Result<Vec<Event>, Rejection> {
    let msg = facts
        .message(&id)
        .ok_or_else(|| Rejection::NotFound(format!("message {id} is unknown")))?;
    let r = msg.recipient(&recipient).ok_or_else(|| {
        Rejection::NotFound(format!("message {id} is not addressed to {recipient}"))
    })?;
    if let Some(p) = &r.provider {
        return Err(Rejection::FailedPrecondition(format!(
            "recipient {recipient} is hosted by provider {p}: its delivery is re-driven \
             there, or the message is sent again"
        )));
    }
    match r.state {
        RecipientState::Failed { seq, .. } if seq == failed_seq => {}
        RecipientState::Failed { seq, .. } => {
            return Err(Rejection::FailedPrecondition(format!(
                "message {id} for {recipient} last failed at event {seq}, not {failed_seq}"
            )));
        }
        other => {
            return Err(Rejection::FailedPrecondition(format!(
                "message {id} for {recipient} is {}; only a failed recipient can be reprocessed",
                other.name()
            )));
        }
    }
    if deliver_by_ms <= ts_ms {
        return Err(Rejection::InvalidArgument(format!(
            "the new deliver-by ({deliver_by_ms} ms) is not in the future"
        )));
    }
    Ok(vec![Event::Reprocessed {
        message_id: id,
        recipient,
        failed_seq,
        deliver_by_ms,
    }])
}

/// View changes of a message event. `ts_ms` is the event's timestamp.
pub(crate) fn fold_message(event: &Event, seq: u64, ts_ms: u64, facts: &Facts) -> Vec<ViewChange> {
    let mut out = Vec::new();
    if let Some(id) = event.message_id() {
        out.push(ViewChange::Put(
            ViewCf::MsgEvents,
            keys::msg_event(id, seq),
            Vec::new(),
        ));
    }
    match event {
        Event::Sent {
            envelope,
            client_message_id,
        } => {
            let h = &envelope.header;
            let status = new_status(envelope, seq, ts_ms, client_message_id, None, facts);
            out.push(ViewChange::PutIdempotency(
                h.sender.org.clone(),
                client_message_id.clone(),
                h.message_id.clone(),
            ));
            out.push(ViewChange::Put(
                ViewCf::Outbox,
                keys::outbox(&h.sender.org, seq),
                h.message_id.as_str().as_bytes().to_vec(),
            ));
            enqueue(&status, h.deliver_by_ms, &mut out);
            index(&status, h.patient.as_ref(), &mut out);
            out.push(ViewChange::PutMessage(status));
        }
        Event::Received {
            envelope,
            from_provider,
        } => {
            let status = new_status(envelope, seq, ts_ms, "", Some(from_provider), facts);
            enqueue(&status, envelope.header.deliver_by_ms, &mut out);
            index(&status, envelope.header.patient.as_ref(), &mut out);
            out.push(ViewChange::PutMessage(status));
        }
        Event::Relayed {
            receipt,
            outcome_by_ms,
        } => {
            if let Some(mut msg) = facts.message(&receipt.message_id).cloned() {
                for r in msg.recipients.iter_mut().filter(|r| {
                    r.provider.as_deref() == Some(receipt.provider.as_str())
                        && r.state == RecipientState::Sent
                }) {
                    r.state = RecipientState::Relayed {
                        relayed_seq: seq,
                        outcome_by_ms: *outcome_by_ms,
                    };
                    out.push(ViewChange::Delete(
                        ViewCf::Deadlines,
                        keys::deadline(
                            msg.deliver_by_ms,
                            deadline::UNDELIVERABLE,
                            &receipt.message_id,
                            &r.endpoint,
                        ),
                    ));
                    out.push(ViewChange::Put(
                        ViewCf::Deadlines,
                        keys::deadline(
                            *outcome_by_ms,
                            deadline::UNACKNOWLEDGED,
                            &receipt.message_id,
                            &r.endpoint,
                        ),
                        Vec::new(),
                    ));
                }
                out.push(ViewChange::Delete(
                    ViewCf::RelayQueue,
                    fed_keys::relay(&receipt.provider, msg.sent_seq),
                ));
                out.push(ViewChange::PutMessage(msg));
            }
        }
        Event::LateOutcome { .. } => {}
        Event::Decrypted { .. } => {}
        Event::Routed {
            message_id,
            recipient,
            ack_by_ms,
        } => {
            if let Some(mut msg) = facts.message(message_id).cloned() {
                let rank = msg.priority.code();
                let prev = msg.recipient(recipient).map(|r| r.state);
                let deliver_by = prev
                    .and_then(|p| undeliverable_by(&msg, &p))
                    .unwrap_or(msg.deliver_by_ms);
                if let Some(p) = prev {
                    leave_redrive_queue(&p, &mut out);
                }
                let entry = crate::codec::encode(&(message_id.clone(), recipient.clone()));
                out.push(ViewChange::Put(
                    ViewCf::Inbox,
                    keys::inbox_org(&recipient.org, rank, seq),
                    entry.clone(),
                ));
                out.push(ViewChange::Put(
                    ViewCf::Inbox,
                    keys::inbox_endpoint(recipient, rank, seq),
                    entry.clone(),
                ));
                out.push(ViewChange::Put(
                    ViewCf::Feed,
                    keys::feed(&recipient.org, seq),
                    entry,
                ));
                out.push(ViewChange::Delete(
                    ViewCf::Deadlines,
                    keys::deadline(deliver_by, deadline::UNDELIVERABLE, message_id, recipient),
                ));
                out.push(ViewChange::Put(
                    ViewCf::Deadlines,
                    keys::deadline(*ack_by_ms, deadline::UNACKNOWLEDGED, message_id, recipient),
                    Vec::new(),
                ));
                if let Some(r) = msg.recipient_mut(recipient) {
                    r.state = RecipientState::Routed {
                        routed_seq: seq,
                        ack_by_ms: *ack_by_ms,
                    };
                }
                dequeue_if_delivered(&msg, &mut out);
                out.push(ViewChange::PutMessage(msg));
            }
        }
        Event::Fetched {
            message_id,
            recipient,
        } => {
            if let Some(mut msg) = facts.message(message_id).cloned() {
                if let Some(r) = msg.recipient_mut(recipient) {
                    r.fetches = r.fetches.saturating_add(1);
                }
                out.push(ViewChange::PutMessage(msg));
            }
        }
        Event::Acked {
            message_id,
            recipient,
            status,
            note,
        } => {
            if let Some(mut msg) = facts.message(message_id).cloned() {
                if let Some(prev) = msg.recipient(recipient).map(|r| r.state) {
                    leave_inbox(&msg, message_id, recipient, &prev, &mut out);
                    owe_notification(
                        &msg,
                        recipient,
                        RemoteOutcome::Acked {
                            status: *status,
                            note: note.clone(),
                        },
                        seq,
                        &mut out,
                    );
                    set_state(
                        &mut msg,
                        recipient,
                        RecipientState::Acked {
                            status: *status,
                            seq,
                        },
                    );
                }
                out.push(ViewChange::PutMessage(msg));
            }
        }
        Event::Failed {
            message_id,
            recipient,
            reason,
        } => {
            if let Some(mut msg) = facts.message(message_id).cloned() {
                if let Some(prev) = msg.recipient(recipient).map(|r| r.state) {
                    if let Some(by) = undeliverable_by(&msg, &prev) {
                        out.push(ViewChange::Delete(
                            ViewCf::Deadlines,
                            keys::deadline(by, deadline::UNDELIVERABLE, message_id, recipient),
                        ));
                    }
                    leave_redrive_queue(&prev, &mut out);
                    leave_inbox(&msg, message_id, recipient, &prev, &mut out);
                    owe_notification(
                        &msg,
                        recipient,
                        RemoteOutcome::Failed { reason: *reason },
                        seq,
                        &mut out,
                    );
                    out.push(ViewChange::Put(
                        ViewCf::DeadLetters,
                        fed_keys::dead_letter(seq),
                        crate::codec::encode(&(message_id.clone(), recipient.clone())),
                    ));
                    set_state(
                        &mut msg,
                        recipient,
                        RecipientState::Failed {
                            reason: *reason,
                            seq,
                        },
                    );
                }
                dequeue_if_delivered(&msg, &mut out);
                if let Some(p) = msg.recipient(recipient).and_then(|r| r.provider.clone())
                    && !msg.awaits_relay(&p)
                {
                    out.push(ViewChange::Delete(
                        ViewCf::RelayQueue,
                        fed_keys::relay(&p, msg.sent_seq),
                    ));
                }
                out.push(ViewChange::PutMessage(msg));
            }
        }
        Event::Reprocessed {
            message_id,
            recipient,
            failed_seq,
            deliver_by_ms,
        } => {
            if let Some(mut msg) = facts.message(message_id).cloned() {
                // No longer a dead letter (the failure stays in the history); back in the
                // delivery queue, with the new deadline.
                out.push(ViewChange::Delete(
                    ViewCf::DeadLetters,
                    fed_keys::dead_letter(*failed_seq),
                ));
                set_state(
                    &mut msg,
                    recipient,
                    RecipientState::Reprocessing {
                        seq,
                        failed_seq: *failed_seq,
                        deliver_by_ms: *deliver_by_ms,
                    },
                );
                // Queued under this event's sequence, ahead of the delivery worker's scan.
                out.push(ViewChange::Put(
                    ViewCf::Queue,
                    keys::queue(seq),
                    msg.message_id.as_str().as_bytes().to_vec(),
                ));
                out.push(ViewChange::Put(
                    ViewCf::Deadlines,
                    keys::deadline(
                        *deliver_by_ms,
                        deadline::UNDELIVERABLE,
                        message_id,
                        recipient,
                    ),
                    Vec::new(),
                ));
                out.push(ViewChange::PutMessage(msg));
            }
        }
        _ => {}
    }
    out
}

/// The status view of a message sent (`origin` None) or received from a peer: every
/// recipient at the sender's provider, only the recipients hosted here at a receiver's.
fn new_status(
    envelope: &Envelope,
    seq: u64,
    ts_ms: u64,
    client_message_id: &str,
    origin: Option<&String>,
    facts: &Facts,
) -> MessageStatus {
    let h = &envelope.header;
    let host = |org: &HpiO| facts.organisation(org).and_then(|o| o.provider.clone());
    MessageStatus {
        message_id: h.message_id.clone(),
        sent_seq: seq,
        sent_ts_ms: ts_ms,
        sender: h.sender.clone(),
        client_message_id: client_message_id.to_string(),
        payload_type: h.payload_type,
        priority: h.priority,
        payload_bytes: h.payload_bytes,
        deliver_by_ms: h.deliver_by_ms,
        recipients: h
            .recipients
            .iter()
            .map(|r| RecipientStatus {
                endpoint: r.clone(),
                state: RecipientState::Sent,
                fetches: 0,
                provider: host(&r.org),
            })
            .filter(|r| origin.is_none() || r.is_local())
            .collect(),
        origin: origin.cloned(),
    }
}

/// Lists a new message in the audit search index.
fn index(status: &MessageStatus, patient: Option<&Ihi>, out: &mut Vec<ViewChange>) {
    let id = status.message_id.as_str().as_bytes();
    for k in keys::index_keys(status, patient) {
        out.push(ViewChange::Put(ViewCf::MsgIndex, k, id.to_vec()));
    }
}

/// Queues a new message: for the delivery worker (recipients hosted here), for the relay
/// worker (once per peer provider hosting recipients), and a deliver-by deadline for
/// every recipient.
fn enqueue(status: &MessageStatus, deliver_by_ms: u64, out: &mut Vec<ViewChange>) {
    let id_bytes = status.message_id.as_str().as_bytes().to_vec();
    if status.awaits_delivery() {
        out.push(ViewChange::Put(
            ViewCf::Queue,
            keys::queue(status.sent_seq),
            id_bytes.clone(),
        ));
    }
    for p in status.peer_providers() {
        out.push(ViewChange::Put(
            ViewCf::RelayQueue,
            fed_keys::relay(&p, status.sent_seq),
            id_bytes.clone(),
        ));
    }
    for r in &status.recipients {
        out.push(ViewChange::Put(
            ViewCf::Deadlines,
            keys::deadline(
                deliver_by_ms,
                deadline::UNDELIVERABLE,
                &status.message_id,
                &r.endpoint,
            ),
            Vec::new(),
        ));
    }
}

/// A message relayed here from a peer owes that peer each recipient's final outcome; one
/// submitted here over MLLP lists it among its sender's outcomes, which the sending
/// clinical system may be told (messages sent any other way have no one to tell, so they
/// cost no write here).
fn owe_notification(
    msg: &MessageStatus,
    recipient: &EndpointId,
    outcome: RemoteOutcome,
    seq: u64,
    out: &mut Vec<ViewChange>,
) {
    if msg.origin.is_none()
        && msg
            .client_message_id
            .starts_with(crate::message::MLLP_CLIENT_ID_PREFIX)
    {
        out.push(ViewChange::Put(
            ViewCf::Outcomes,
            fed_keys::outcome(&msg.sender.org, seq),
            crate::codec::encode(&(msg.message_id.clone(), recipient.clone())),
        ));
    }
    if let Some(origin) = &msg.origin {
        let n = Notification {
            message_id: msg.message_id.clone(),
            recipient: recipient.clone(),
            outcome,
            peer_seq: seq,
        };
        out.push(ViewChange::Put(
            ViewCf::Notify,
            fed_keys::notify(origin, seq),
            crate::codec::encode(&n),
        ));
    }
}

fn set_state(msg: &mut MessageStatus, recipient: &EndpointId, state: RecipientState) {
    if let Some(r) = msg.recipient_mut(recipient) {
        r.state = state;
    }
}

/// Removes a routed recipient's inbox entries and acknowledgement deadline.
fn leave_inbox(
    msg: &MessageStatus,
    id: &MessageId,
    recipient: &EndpointId,
    state: &RecipientState,
    out: &mut Vec<ViewChange>,
) {
    if let RecipientState::Routed {
        routed_seq,
        ack_by_ms,
    } = *state
    {
        let rank = msg.priority.code();
        out.push(ViewChange::Delete(
            ViewCf::Inbox,
            keys::inbox_org(&recipient.org, rank, routed_seq),
        ));
        out.push(ViewChange::Delete(
            ViewCf::Inbox,
            keys::inbox_endpoint(recipient, rank, routed_seq),
        ));
        out.push(ViewChange::Delete(
            ViewCf::Deadlines,
            keys::deadline(ack_by_ms, deadline::UNACKNOWLEDGED, id, recipient),
        ));
    }
    if let RecipientState::Relayed { outcome_by_ms, .. } = *state {
        out.push(ViewChange::Delete(
            ViewCf::Deadlines,
            keys::deadline(outcome_by_ms, deadline::UNACKNOWLEDGED, id, recipient),
        ));
    }
}

/// Drops the message from the delivery queue once no recipient hosted here waits for
/// delivery.
/// A re-driven recipient leaves the queue entry its `Reprocessed` event made.
fn leave_redrive_queue(prev: &RecipientState, out: &mut Vec<ViewChange>) {
    if let RecipientState::Reprocessing { seq, .. } = prev {
        out.push(ViewChange::Delete(ViewCf::Queue, keys::queue(*seq)));
    }
}

fn dequeue_if_delivered(msg: &MessageStatus, out: &mut Vec<ViewChange>) {
    if !msg.awaits_delivery() {
        out.push(ViewChange::Delete(ViewCf::Queue, keys::queue(msg.sent_seq)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Command;
    use crate::directory::{Endpoint, EndpointSpec, Organisation, OrganisationSpec, PayloadType};
    use crate::message::{
        AckStatus, ENVELOPE_VERSION, EnvelopeHeader, Priority, SealedCopy, Sender, payload_digest,
    };
    use crate::sim::Sim;

    const DELIVER_BY: u64 = 10_000;

    fn org(serial: u64) -> Organisation {
        Organisation {
            spec: OrganisationSpec::sample(serial),
            registered_seq: 1,
            keys_seq: 1,
            provider: None,
        }
    }

    fn ep(serial: u64, slug: &str) -> EndpointId {
        EndpointId::service(HpiO::from_serial(serial), slug).expect("endpoint")
    }

    /// Facts with a sender (1) and a receiver (2) with two services accepting TEXT.
    fn world() -> Facts {
        let mut f = Facts::default();
        for s in [1, 2] {
            f.load_organisation(HpiO::from_serial(s), Some(org(s)));
        }
        for slug in ["a", "b"] {
            let id = ep(2, slug);
            f.load_endpoint(
                id.clone(),
                Some(Endpoint {
                    spec: EndpointSpec {
                        id,
                        display_name: "Desk".into(),
                        specialty: "Pathology".into(),
                        payload_types: vec![PayloadType::Text],
                    },
                    published_seq: 2,
                    retired_seq: None,
                }),
            );
        }
        f
    }

    fn envelope(uuid_tail: u32, to: Vec<EndpointId>, payload_type: PayloadType) -> Envelope {
        let header = EnvelopeHeader {
            version: ENVELOPE_VERSION,
            message_id: MessageId::new(
                "prov-a",
                &format!("01890a5d-ac96-774b-bcce-{uuid_tail:012x}"),
            )
            .expect("id"),
            sender: Sender {
                org: HpiO::from_serial(1),
                practitioner: None,
            },
            sender_key_id: "k1".into(),
            recipients: to,
            payload_type,
            priority: Priority::Routine,
            patient: None,
            payload_digest: payload_digest(b"hello"),
            payload_bytes: 5,
            created_ms: 1,
            deliver_by_ms: DELIVER_BY,
        };
        let sealed = header
            .recipient_orgs()
            .into_iter()
            .map(|org| SealedCopy {
                org,
                key_id: "k1".into(),
                enc: vec![0; 32],
                ciphertext: vec![0; 21],
            })
            .collect();
        Envelope {
            header,
            signature: vec![0; 64],
            sealed,
        }
    }

    fn sim() -> Sim {
        Sim::new(world(), 10)
    }

    fn send(s: &mut Sim, tail: u32, to: Vec<EndpointId>) -> MessageId {
        let env = envelope(tail, to, PayloadType::Text);
        let id = env.header.message_id.clone();
        s.run(
            Command::Send {
                envelope: Box::new(env),
                client_message_id: format!("c{tail}"),
            },
            100,
        )
        .expect("send");
        id
    }

    fn route(id: &MessageId, r: &EndpointId, ack_by_ms: u64) -> Command {
        Command::Deliver {
            message_id: id.clone(),
            recipient: r.clone(),
            verdict: DeliveryVerdict::Route { ack_by_ms },
        }
    }

    /// The happy path ends in exactly one final outcome, and nothing moves after it.
    #[test]
    fn routed_then_acked_is_final() {
        let mut s = sim();
        let r = ep(2, "a");
        let id = send(&mut s, 1, vec![r.clone()]);
        let ev = s.run(route(&id, &r, 50_000), 200).expect("route");
        assert_eq!(ev.len(), 2, "decrypted and routed together");
        assert!(matches!(s.state(&id, &r), RecipientState::Routed { .. }));
        s.run(route(&id, &r, 50_000), 201)
            .expect_err("a second delivery is refused");
        let ack = Command::Ack {
            message_id: id.clone(),
            recipient: r.clone(),
            status: AckStatus::Accepted,
            note: String::new(),
        };
        s.run(ack.clone(), 300).expect("ack");
        s.run(ack, 301).expect_err("a second ack is refused");
        let expire = Command::Expire {
            message_id: id.clone(),
            recipient: r.clone(),
        };
        s.run(expire, 60_000)
            .expect_err("no deadline after a final outcome");
        assert_eq!(s.finals(&r), 1);
    }

    /// Deadlines: nothing before they pass; exactly one failure after.
    #[test]
    fn deadlines_fail_once() {
        let mut s = sim();
        let a = ep(2, "a");
        let b = ep(2, "b");
        let id = send(&mut s, 2, vec![a.clone(), b.clone()]);
        let expire = |r: &EndpointId| Command::Expire {
            message_id: id.clone(),
            recipient: r.clone(),
        };
        s.run(expire(&a), DELIVER_BY)
            .expect_err("not due until after deliver-by");
        // a: routed in time, then never acknowledged. b: never routed.
        s.run(route(&id, &a, 20_000), 500).expect("route a");
        let ev = s.run(expire(&b), DELIVER_BY + 1).expect("b undeliverable");
        assert!(matches!(
            ev[0],
            Event::Failed {
                reason: FailReason::Undeliverable,
                ..
            }
        ));
        s.run(route(&id, &b, 30_000), DELIVER_BY + 2)
            .expect_err("a failed recipient is never routed");
        s.run(expire(&a), 20_000).expect_err("window still open");
        let ev = s.run(expire(&a), 20_001).expect("a unacknowledged");
        assert!(matches!(
            ev[0],
            Event::Failed {
                reason: FailReason::Unacknowledged,
                ..
            }
        ));
        s.run(
            Command::Ack {
                message_id: id.clone(),
                recipient: a.clone(),
                status: AckStatus::Accepted,
                note: String::new(),
            },
            20_002,
        )
        .expect_err("too late to acknowledge");
        assert_eq!(s.finals(&a), 1);
        assert_eq!(s.finals(&b), 1);
        assert!(s.facts.message(&id).expect("status").is_complete());
    }

    /// A failed recipient re-driven by an operator: only the failure named, only once, with
    /// a deliver-by in the future; it leaves the dead letters, goes back on the queue with
    /// its own deadline, and is routed once and acknowledged: one final outcome per
    /// attempt, both attempts in the history. A late re-drive fails undeliverable again.
    #[test]
    fn a_failed_recipient_is_reprocessed_once() {
        let mut s = sim();
        let r = ep(2, "a");
        let id = send(&mut s, 4, vec![r.clone()]);
        let fail = Command::Deliver {
            message_id: id.clone(),
            recipient: r.clone(),
            verdict: DeliveryVerdict::Fail(FailReason::PayloadTypeNotAccepted),
        };
        s.run(fail, 200).expect("fails");
        let RecipientState::Failed {
            seq: failed_seq, ..
        } = s.state(&id, &r)
        else {
            panic!("failed");
        };
        assert!(
            s.put(ViewCf::DeadLetters, &fed_keys::dead_letter(failed_seq))
                .is_some()
        );
        let reprocess = |failed_seq, deliver_by_ms| Command::Reprocess {
            message_id: id.clone(),
            recipient: r.clone(),
            failed_seq,
            deliver_by_ms,
        };
        s.run(reprocess(failed_seq + 1, 90_000), 300)
            .expect_err("another failure is not re-driven");
        s.run(reprocess(failed_seq, 300), 300)
            .expect_err("the new deliver-by must be in the future");
        s.run(reprocess(failed_seq, 90_000), 300)
            .expect("re-driven");
        assert!(matches!(
            s.state(&id, &r),
            RecipientState::Reprocessing { failed_seq: f, deliver_by_ms: 90_000, .. } if f == failed_seq
        ));
        assert!(s.deleted(ViewCf::DeadLetters, &fed_keys::dead_letter(failed_seq)));
        let RecipientState::Reprocessing {
            seq: redrive_seq, ..
        } = s.state(&id, &r)
        else {
            panic!("reprocessing");
        };
        assert!(s.put(ViewCf::Queue, &keys::queue(redrive_seq)).is_some());
        assert!(
            s.put(
                ViewCf::Deadlines,
                &keys::deadline(90_000, deadline::UNDELIVERABLE, &id, &r)
            )
            .is_some()
        );
        s.run(reprocess(failed_seq, 90_000), 301)
            .expect_err("a second re-drive of the same failure is refused");
        // Routed past the envelope's own deliver-by but within the operator's.
        s.run(route(&id, &r, 95_000), DELIVER_BY + 10)
            .expect("routed");
        assert!(s.deleted(
            ViewCf::Deadlines,
            &keys::deadline(90_000, deadline::UNDELIVERABLE, &id, &r)
        ));
        assert!(s.deleted(ViewCf::Queue, &keys::queue(redrive_seq)));
        s.run(route(&id, &r, 95_000), DELIVER_BY + 11)
            .expect_err("routed once");
        s.run(
            Command::Ack {
                message_id: id.clone(),
                recipient: r.clone(),
                status: AckStatus::Accepted,
                note: String::new(),
            },
            DELIVER_BY + 20,
        )
        .expect("acked");
        assert_eq!(s.finals(&r), 2, "one final outcome per attempt");
        let kinds: Vec<&str> = s.events.iter().map(|e| e.kind()).collect();
        assert_eq!(
            kinds,
            [
                "sent",
                "failed",
                "reprocessed",
                "decrypted",
                "routed",
                "acked"
            ]
        );

        // A re-drive whose own deadline passes fails undeliverable, and is a dead letter again.
        let id2 = send(&mut s, 5, vec![r.clone()]);
        let fail = Command::Deliver {
            message_id: id2.clone(),
            recipient: r.clone(),
            verdict: DeliveryVerdict::Fail(FailReason::UnknownKey),
        };
        s.run(fail, 200).expect("fails");
        let RecipientState::Failed { seq: f2, .. } = s.state(&id2, &r) else {
            panic!("failed");
        };
        s.run(
            Command::Reprocess {
                message_id: id2.clone(),
                recipient: r.clone(),
                failed_seq: f2,
                deliver_by_ms: 1_000,
            },
            500,
        )
        .expect("re-driven");
        let expire = Command::Expire {
            message_id: id2.clone(),
            recipient: r.clone(),
        };
        s.run(expire.clone(), 1_000).expect_err("not due yet");
        let ev = s.run(expire, 1_001).expect("undeliverable");
        assert!(matches!(
            ev[0],
            Event::Failed {
                reason: FailReason::Undeliverable,
                ..
            }
        ));
        let RecipientState::Failed { seq: f3, .. } = s.state(&id2, &r) else {
            panic!("failed again");
        };
        assert!(
            s.put(ViewCf::DeadLetters, &fed_keys::dead_letter(f3))
                .is_some()
        );
    }

    /// A delivery verdict that arrives after deliver-by fails the recipient instead.
    #[test]
    fn late_routing_is_undeliverable() {
        let mut s = sim();
        let r = ep(2, "a");
        let id = send(&mut s, 3, vec![r.clone()]);
        let ev = s
            .run(route(&id, &r, 50_000), DELIVER_BY + 1)
            .expect("decided");
        assert!(matches!(
            ev.as_slice(),
            [Event::Failed {
                reason: FailReason::Undeliverable,
                ..
            }]
        ));
    }

    /// Sends are refused for unknown recipients, unaccepted types and reused client ids.
    #[test]
    fn bad_sends_are_refused() {
        let mut s = sim();
        let cmd = |env: Envelope, cid: &str| Command::Send {
            envelope: Box::new(env),
            client_message_id: cid.into(),
        };
        let unknown = ep(2, "nobody");
        let err = s
            .run(
                cmd(envelope(4, vec![unknown.clone()], PayloadType::Text), "x"),
                1,
            )
            .expect_err("unknown");
        assert!(matches!(&err, Rejection::NotFound(m) if m.contains(&unknown.to_string())));
        let err = s
            .run(cmd(envelope(5, vec![ep(2, "a")], PayloadType::Pdf), "y"), 1)
            .expect_err("type");
        assert!(matches!(&err, Rejection::FailedPrecondition(m) if m.contains("PDF")));
        s.run(
            cmd(envelope(6, vec![ep(2, "a")], PayloadType::Text), "z"),
            1,
        )
        .expect("first");
        let err = s
            .run(
                cmd(envelope(7, vec![ep(2, "a")], PayloadType::Text), "z"),
                1,
            )
            .expect_err("reused client id");
        assert!(matches!(err, Rejection::AlreadyExists(_)));
    }

    /// Routing writes both inbox entries and swaps the deadline; the ack removes them.
    #[test]
    fn inbox_entries_follow_the_lifecycle() {
        let mut s = sim();
        let r = ep(2, "a");
        let id = send(&mut s, 8, vec![r.clone()]);
        let sent_seq = s.seq;
        s.run(route(&id, &r, 50_000), 200).expect("route");
        let routed_seq = s.seq;
        let msg = s.facts.message(&id).expect("status").clone();
        let routed = crate::view::fold(&s.events[2].clone(), routed_seq, 200, &{
            let mut f = world();
            let mut m = msg.clone();
            m.recipients[0].state = RecipientState::Sent;
            f.load_message(id.clone(), Some(m));
            f
        });
        let rank = Priority::Routine.code();
        let has_put = |cf: ViewCf, key: &[u8]| {
            routed
                .iter()
                .any(|c| matches!(c, ViewChange::Put(c2, k, _) if *c2 == cf && k == key))
        };
        let has_delete = |cf: ViewCf, key: &[u8]| {
            routed
                .iter()
                .any(|c| matches!(c, ViewChange::Delete(c2, k) if *c2 == cf && k == key))
        };
        assert!(has_put(
            ViewCf::Inbox,
            &keys::inbox_org(&r.org, rank, routed_seq)
        ));
        assert!(has_put(
            ViewCf::Inbox,
            &keys::inbox_endpoint(&r, rank, routed_seq)
        ));
        assert!(has_put(ViewCf::Feed, &keys::feed(&r.org, routed_seq)));
        assert!(has_delete(
            ViewCf::Deadlines,
            &keys::deadline(DELIVER_BY, deadline::UNDELIVERABLE, &id, &r)
        ));
        assert!(has_delete(ViewCf::Queue, &keys::queue(sent_seq)));
        let acked = Event::Acked {
            message_id: id.clone(),
            recipient: r.clone(),
            status: AckStatus::Rejected,
            note: "wrong patient".into(),
        };
        let changes = crate::view::fold(&acked, routed_seq + 1, 300, &s.facts);
        for key in [
            keys::inbox_org(&r.org, rank, routed_seq),
            keys::inbox_endpoint(&r, rank, routed_seq),
        ] {
            assert!(
                changes
                    .iter()
                    .any(|c| matches!(c, ViewChange::Delete(ViewCf::Inbox, k) if *k == key))
            );
        }
    }

    /// Deadline keys parse back to what was written.
    #[test]
    fn deadline_keys_round_trip() {
        let id = MessageId::new("p", "01890a5d-ac96-774b-bcce-b302099a8057").expect("id");
        let r = ep(2, "a");
        let k = keys::deadline(42, deadline::UNACKNOWLEDGED, &id, &r);
        assert_eq!(
            keys::parse_deadline(&k),
            Some((42, deadline::UNACKNOWLEDGED, id, r))
        );
    }

    #[test]
    fn a_wrapped_keys_key_reads_back_and_a_published_one_does_not() {
        let org = HpiO::from_serial(4);
        assert_eq!(
            keys::wrapped_keys_of(&keys::keystore(&org, "k2")),
            Some((org.clone(), "k2"))
        );
        assert_eq!(
            keys::wrapped_keys_of(&keys::published_keys(&org, "k2")),
            None
        );
        assert_eq!(keys::wrapped_keys_of(b"not a key"), None);
    }
}
