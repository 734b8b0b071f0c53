//! Commands: what clients ask for, validated at the edge and decided at apply time.
//!
//! A command is first checked without state ([`Command::validate`]) where the request
//! arrives, so bad input never reaches the log. The authoritative decision
//! ([`decide`]) runs deterministically on every replica when the log entry is applied,
//! against the facts the command declared it reads ([`Command::reads`]); it yields events
//! or a [`Rejection`], and a rejection writes nothing.

use serde::{Deserialize, Serialize};

use crate::directory::{
    EndpointSpec, FieldError, NOTE_BYTES_MAX, OrganisationSpec, PublicKeys, SHORT_TEXT_BYTES_MAX,
    check_text,
};
use crate::event::{CLUSTER_MEMBERS_MAX, DenialCount, EVENT_VERSION_CURRENT, Event};
use crate::federation::{
    Notification, PEER_CHANGES_MAX, PeerChange, RELAY_BATCH_MESSAGES_MAX, TransportReceipt,
    check_provider, cursor,
};
use crate::ids::{EndpointId, HpiO};
use crate::message::{
    AckStatus, Envelope, FailReason, MessageId, PAYLOAD_BYTES_HARD_MAX, RecipientState,
    check_client_message_id, check_note,
};
use crate::view::Facts;

/// Longest wrapped private-key blob, in bytes.
pub const WRAPPED_KEYS_BYTES_MAX: usize = 512;

/// Longest actor name carried with a command, in bytes.
pub const ACTOR_BYTES_MAX: usize = 128;

/// What a client asks the cluster to do.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Command {
    RegisterOrganisation(OrganisationSpec),
    PublishEndpoint(EndpointSpec),
    RetireEndpoint {
        id: EndpointId,
        reason: String,
    },
    RotateKeys {
        org: HpiO,
        keys: PublicKeys,
    },
    /// Registers an organisation whose keys the provider generated, with the private halves
    /// wrapped under the provider's key-encryption key.
    ProvisionOrganisation {
        spec: OrganisationSpec,
        #[serde(with = "crate::codec::byte_string")]
        wrapped: Vec<u8>,
    },
    /// Commits a signed, sealed message.
    Send {
        envelope: Box<Envelope>,
        client_message_id: String,
    },
    /// The delivery worker's verdict for one recipient's copy.
    Deliver {
        message_id: MessageId,
        recipient: EndpointId,
        verdict: DeliveryVerdict,
    },
    /// Records that a recipient fetched the payload (before it is released).
    Fetch {
        message_id: MessageId,
        recipient: EndpointId,
    },
    /// The recipient's acknowledgement.
    Ack {
        message_id: MessageId,
        recipient: EndpointId,
        status: AckStatus,
        note: String,
    },
    /// A deadline passed for a recipient; decided against the entry's timestamp.
    Expire {
        message_id: MessageId,
        recipient: EndpointId,
    },
    /// Directory changes pulled from the peer that hosts those organisations, the peer's
    /// sequence `(after_seq, through_seq]`. Since event version 3, like the rest below.
    ImportPeerDirectory {
        provider: String,
        after_seq: u64,
        through_seq: u64,
        changes: Vec<PeerChange>,
    },
    /// The recipients' provider's verified transport receipt.
    RecordRelayed {
        receipt: TransportReceipt,
        outcome_by_ms: u64,
    },
    /// Sealed messages relayed here by the sender's provider, in the order it sent them:
    /// each acceptable one becomes a `Received` event, in this order.
    Receive {
        from_provider: String,
        envelopes: Vec<Envelope>,
    },
    /// A peer's report of a remote recipient's final outcome.
    Notify {
        provider: String,
        notification: Notification,
    },
    /// The origin provider confirmed our notifications through `through_seq`.
    NotificationsRelayed {
        provider: String,
        through_seq: u64,
    },
    /// A sending organisation's system was told its messages' outcomes through
    /// `through_seq`.
    OutcomesNotified {
        org: HpiO,
        through_seq: u64,
    },
    /// Records a read of the audit trail before it is served.
    RecordAuditRead {
        query: String,
        from_seq: u64,
        to_seq: u64,
    },
    /// An operator re-drives a failed recipient hosted here: the failure at `failed_seq`
    /// gets a new delivery attempt, to be routed by `deliver_by_ms`.
    Reprocess {
        message_id: MessageId,
        recipient: EndpointId,
        failed_seq: u64,
        deliver_by_ms: u64,
    },
    /// The retention worker drops the payloads of events up to `through_seq` stamped
    /// before `before_ts_ms`.
    DropPayloads {
        before_ts_ms: u64,
        through_seq: u64,
    },
    /// Rotates to a key pair the provider generated: the new private halves, wrapped
    /// under the provider's key-encryption key, join the old ones (which stay, so messages
    /// sealed to the old key still open), and the public halves are published.
    ProvisionKeys {
        org: HpiO,
        keys: PublicKeys,
        #[serde(with = "crate::codec::byte_string")]
        wrapped: Vec<u8>,
    },
    /// A node's summary of the calls it refused for lack of permission in a period.
    RecordDenials {
        node: u64,
        from_ms: u64,
        until_ms: u64,
        denials: Vec<DenialCount>,
    },
    /// Raise the cluster version to `version`, which every member listed in `members`
    /// (node id, highest event version it understands) supports. Proposed by the leader's
    /// upgrade worker only when every member answered; never lowers the version.
    SetClusterVersion {
        version: u16,
        members: Vec<(u64, u16)>,
    },
    /// A KEK rotation: one key set of an organisation hosted here, wrapped again under the
    /// provider's current key-encryption key; it replaces the blob wrapped under an older
    /// KEK (the key pair itself is unchanged). Since event version
    /// [`REWRAP_KEYS_SINCE_VERSION`]: proposed only once the cluster runs it.
    RewrapKeys {
        org: HpiO,
        key_id: String,
        #[serde(with = "crate::codec::byte_string")]
        wrapped: Vec<u8>,
    },
}

/// The cluster version from which [`Command::RewrapKeys`] may be proposed: an older node
/// cannot decode that command in a log entry.
pub const REWRAP_KEYS_SINCE_VERSION: u16 = 7;

/// Most (identity, action) pairs one denial summary carries; a node folds the rest into
/// one entry.
pub const DENIAL_SUMMARY_ENTRIES_MAX: usize = 256;

/// Longest identity, subject or action text in a denial summary, in bytes.
pub const DENIAL_TEXT_BYTES_MAX: usize = 128;

fn check_wrapped(wrapped: &[u8]) -> Result<(), Rejection> {
    if wrapped.is_empty() || wrapped.len() > WRAPPED_KEYS_BYTES_MAX {
        return Err(Rejection::InvalidArgument(format!(
            "wrapped keys: {} bytes, expected 1 to {WRAPPED_KEYS_BYTES_MAX}",
            wrapped.len()
        )));
    }
    Ok(())
}

/// A rotation needs a registered organisation hosted here and a key id it is not using.
fn check_rotation(org: &HpiO, keys: &PublicKeys, facts: &Facts) -> Result<(), Rejection> {
    match facts.organisation(org) {
        Some(o) if !o.is_local() => Err(hosted_elsewhere(o)),
        None => Err(Rejection::NotFound(format!(
            "organisation {org} is not registered"
        ))),
        Some(o) if o.spec.keys.key_id == keys.key_id => Err(Rejection::AlreadyExists(format!(
            "organisation {org} already uses key id {}",
            keys.key_id
        ))),
        Some(_) => Ok(()),
    }
}

/// Longest audit query recorded with an `AuditRead`, in bytes.
pub const AUDIT_QUERY_BYTES_MAX: usize = 1024;

/// What the delivery worker found when it opened a recipient's copy.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum DeliveryVerdict {
    /// Opened and verified: route it, expecting an acknowledgement by `ack_by_ms`.
    Route { ack_by_ms: u64 },
    /// Could not be opened or verified.
    Fail(FailReason),
}

/// A command with the identity of whoever asked for it.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Proposal {
    pub actor: String,
    pub command: Command,
}

/// Why a command was refused. Each maps to one gRPC status code at the edge.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("already exists: {0}")]
    AlreadyExists(String),
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
}

impl From<FieldError> for Rejection {
    fn from(e: FieldError) -> Self {
        Rejection::InvalidArgument(e.to_string())
    }
}

/// The keys a command reads, so the store can load exactly those facts before deciding.
#[derive(Default, Debug, Clone, PartialEq, Eq)]
pub struct Reads {
    pub organisations: Vec<HpiO>,
    pub endpoints: Vec<EndpointId>,
    pub messages: Vec<MessageId>,
    /// (sender organisation, client message id) idempotency keys.
    pub client_ids: Vec<(HpiO, String)>,
    /// Federation cursors: (kind, provider).
    pub cursors: Vec<(u8, String)>,
}

impl Command {
    /// Stateless validation: sizes and shapes. Runs at the edge and again at apply.
    pub fn validate(&self) -> Result<(), Rejection> {
        match self {
            Command::RegisterOrganisation(o) => o.validate()?,
            Command::PublishEndpoint(e) => e.validate()?,
            Command::RetireEndpoint { reason, .. } => check_text("reason", reason, NOTE_BYTES_MAX)?,
            Command::RotateKeys { keys, .. } => keys.validate()?,
            Command::ProvisionKeys { keys, wrapped, .. } => {
                keys.validate()?;
                check_wrapped(wrapped)?;
            }
            Command::RewrapKeys {
                key_id, wrapped, ..
            } => {
                check_text("key_id", key_id, SHORT_TEXT_BYTES_MAX)?;
                check_wrapped(wrapped)?;
            }
            Command::ProvisionOrganisation { spec, wrapped } => {
                spec.validate()?;
                check_wrapped(wrapped)?;
            }
            Command::Send {
                envelope,
                client_message_id,
            } => {
                check_client_message_id(client_message_id)?;
                envelope.validate(PAYLOAD_BYTES_HARD_MAX)?;
            }
            Command::Ack { note, .. } => check_note(note)?,
            Command::Deliver { .. }
            | Command::Fetch { .. }
            | Command::Expire { .. }
            | Command::Reprocess { .. } => {}
            Command::ImportPeerDirectory {
                provider, changes, ..
            } => {
                check_provider("provider", provider)?;
                if changes.len() > PEER_CHANGES_MAX {
                    return Err(Rejection::InvalidArgument(format!(
                        "changes: {} in one import, the limit is {PEER_CHANGES_MAX}",
                        changes.len()
                    )));
                }
                for ch in changes {
                    ch.validate()?;
                }
            }
            Command::RecordRelayed { receipt, .. } => receipt.validate()?,
            Command::Receive {
                from_provider,
                envelopes,
            } => {
                check_provider("from_provider", from_provider)?;
                if envelopes.is_empty() || envelopes.len() > RELAY_BATCH_MESSAGES_MAX {
                    return Err(Rejection::InvalidArgument(format!(
                        "envelopes: {} in one relay, expected 1 to {RELAY_BATCH_MESSAGES_MAX}",
                        envelopes.len()
                    )));
                }
                for e in envelopes {
                    e.validate(PAYLOAD_BYTES_HARD_MAX)?;
                }
            }
            Command::Notify {
                provider,
                notification,
            } => {
                check_provider("provider", provider)?;
                notification.outcome.validate()?;
            }
            Command::NotificationsRelayed { provider, .. } => check_provider("provider", provider)?,
            Command::OutcomesNotified { .. } => {}
            Command::RecordAuditRead { query, .. } => {
                check_text("query", query, AUDIT_QUERY_BYTES_MAX)?;
            }
            Command::DropPayloads { .. } => {}
            Command::SetClusterVersion { version, members } => {
                if members.is_empty() || members.len() > CLUSTER_MEMBERS_MAX {
                    return Err(Rejection::InvalidArgument(format!(
                        "members: {} entries, expected 1 to {CLUSTER_MEMBERS_MAX}",
                        members.len()
                    )));
                }
                if let Some((node, supported)) = members.iter().find(|(_, s)| s < version) {
                    return Err(Rejection::InvalidArgument(format!(
                        "version {version}: member {node} understands only up to {supported}"
                    )));
                }
            }
            Command::RecordDenials {
                from_ms,
                until_ms,
                denials,
                ..
            } => {
                if denials.is_empty() || denials.len() > DENIAL_SUMMARY_ENTRIES_MAX {
                    return Err(Rejection::InvalidArgument(format!(
                        "denials: {} entries, expected 1 to {DENIAL_SUMMARY_ENTRIES_MAX}",
                        denials.len()
                    )));
                }
                if from_ms > until_ms {
                    return Err(Rejection::InvalidArgument(format!(
                        "denials: the period ends ({until_ms}) before it starts ({from_ms})"
                    )));
                }
                for d in denials {
                    check_text("identity", &d.identity, DENIAL_TEXT_BYTES_MAX)?;
                    check_text("subject", &d.subject, DENIAL_TEXT_BYTES_MAX)?;
                    check_text("action", &d.action, DENIAL_TEXT_BYTES_MAX)?;
                    if d.count == 0 {
                        return Err(Rejection::InvalidArgument(
                            "denials: a count of zero".into(),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    pub fn reads(&self) -> Reads {
        match self {
            Command::RegisterOrganisation(o) | Command::ProvisionOrganisation { spec: o, .. } => {
                Reads {
                    organisations: vec![o.hpio.clone()],
                    ..Reads::default()
                }
            }
            Command::PublishEndpoint(e) => Reads {
                organisations: vec![e.id.org.clone()],
                endpoints: vec![e.id.clone()],
                ..Reads::default()
            },
            Command::RetireEndpoint { id, .. } => Reads {
                organisations: vec![id.org.clone()],
                endpoints: vec![id.clone()],
                ..Reads::default()
            },
            Command::RotateKeys { org, .. }
            | Command::ProvisionKeys { org, .. }
            | Command::RewrapKeys { org, .. } => Reads {
                organisations: vec![org.clone()],
                ..Reads::default()
            },
            Command::Send {
                envelope,
                client_message_id,
            } => {
                let h = &envelope.header;
                Reads {
                    organisations: vec![h.sender.org.clone()],
                    endpoints: h.recipients.clone(),
                    messages: vec![h.message_id.clone()],
                    client_ids: vec![(h.sender.org.clone(), client_message_id.clone())],
                    ..Reads::default()
                }
            }
            Command::Deliver { message_id, .. }
            | Command::Fetch { message_id, .. }
            | Command::Ack { message_id, .. }
            | Command::Expire { message_id, .. }
            | Command::Reprocess { message_id, .. }
            | Command::RecordRelayed {
                receipt: TransportReceipt { message_id, .. },
                ..
            }
            | Command::Notify {
                notification: Notification { message_id, .. },
                ..
            } => Reads {
                messages: vec![message_id.clone()],
                ..Reads::default()
            },
            Command::ImportPeerDirectory {
                provider, changes, ..
            } => {
                let mut r = crate::view::peer_change_reads(changes);
                r.cursors.push((cursor::DIRECTORY, provider.clone()));
                r
            }
            Command::Receive { envelopes, .. } => {
                let mut r = Reads::default();
                for e in envelopes {
                    let h = &e.header;
                    r.organisations.push(h.sender.org.clone());
                    r.organisations.extend(h.recipient_orgs());
                    r.messages.push(h.message_id.clone());
                }
                r
            }
            Command::NotificationsRelayed { provider, .. } => Reads {
                cursors: vec![(cursor::NOTIFIED, provider.clone())],
                ..Reads::default()
            },
            Command::OutcomesNotified { org, .. } => Reads {
                cursors: vec![(cursor::OUTCOMES, org.to_string())],
                ..Reads::default()
            },
            Command::RecordAuditRead { .. }
            | Command::RecordDenials { .. }
            | Command::SetClusterVersion { .. } => Reads::default(),
            Command::DropPayloads { .. } => Reads {
                cursors: vec![(crate::retention::CURSOR, String::new())],
                ..Reads::default()
            },
        }
    }

    /// A short name for logs and metrics; never includes field values.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::RegisterOrganisation(_) => "register_organisation",
            Command::PublishEndpoint(_) => "publish_endpoint",
            Command::RetireEndpoint { .. } => "retire_endpoint",
            Command::RotateKeys { .. } => "rotate_keys",
            Command::ProvisionOrganisation { .. } => "provision_organisation",
            Command::Send { .. } => "send",
            Command::Deliver { .. } => "deliver",
            Command::Fetch { .. } => "fetch",
            Command::Ack { .. } => "ack",
            Command::Expire { .. } => "expire",
            Command::Reprocess { .. } => "reprocess",
            Command::ImportPeerDirectory { .. } => "import_peer_directory",
            Command::RecordRelayed { .. } => "record_relayed",
            Command::Receive { .. } => "receive",
            Command::Notify { .. } => "notify",
            Command::NotificationsRelayed { .. } => "notifications_relayed",
            Command::OutcomesNotified { .. } => "outcomes_notified",
            Command::RecordAuditRead { .. } => "record_audit_read",
            Command::DropPayloads { .. } => "drop_payloads",
            Command::RecordDenials { .. } => "record_denials",
            Command::SetClusterVersion { .. } => "set_cluster_version",
            Command::ProvisionKeys { .. } => "provision_keys",
            Command::RewrapKeys { .. } => "rewrap_keys",
        }
    }
}

impl Proposal {
    pub fn validate(&self) -> Result<(), Rejection> {
        check_text("actor", &self.actor, ACTOR_BYTES_MAX)?;
        self.command.validate()
    }
}

/// The refusal of a directory change to an organisation a peer provider hosts: only that
/// provider changes it (its changes arrive here through the peer directory import).
fn hosted_elsewhere(org: &crate::directory::Organisation) -> Rejection {
    Rejection::FailedPrecondition(format!(
        "organisation {} is hosted by {}; change it there",
        org.spec.hpio,
        org.provider.as_deref().unwrap_or("another provider")
    ))
}

/// Decides a command against the current facts. Pure and deterministic: every replica
/// reaches the same answer for the same log entry. It takes the command by value so the
/// events move its data (a sealed envelope is never copied at apply). The caller has run
/// [`Proposal::validate`] (the state machine does, once per proposal).
/// `ts_ms` is the timestamp of the log entry, the same on every replica.
pub fn decide(
    cmd: Command,
    facts: &Facts,
    cluster_version: u16,
    ts_ms: u64,
) -> Result<Vec<Event>, Rejection> {
    // The version the gate below checks against: the cluster's, or for a raise the new one
    // (its proposer checked that every member understands it).
    let mut ceiling = cluster_version;
    let events = match cmd {
        Command::SetClusterVersion { version, members } => {
            if version <= cluster_version {
                return Err(Rejection::FailedPrecondition(format!(
                    "the cluster version is already {cluster_version}; it never goes down"
                )));
            }
            if version > EVENT_VERSION_CURRENT {
                return Err(Rejection::FailedPrecondition(format!(
                    "cluster version {version} is newer than this build understands \
                     ({EVENT_VERSION_CURRENT})"
                )));
            }
            ceiling = version;
            vec![Event::ClusterVersionSet { version, members }]
        }
        Command::RegisterOrganisation(o) => {
            if facts.organisation(&o.hpio).is_some() {
                return Err(Rejection::AlreadyExists(format!(
                    "organisation {} is already registered",
                    o.hpio
                )));
            }
            vec![Event::OrganisationRegistered(o)]
        }
        Command::ProvisionOrganisation { spec, wrapped } => {
            if facts.organisation(&spec.hpio).is_some() {
                return Err(Rejection::AlreadyExists(format!(
                    "organisation {} is already registered",
                    spec.hpio
                )));
            }
            let keys = Event::KeysProvisioned {
                org: spec.hpio.clone(),
                key_id: spec.keys.key_id.clone(),
                wrapped,
            };
            vec![Event::OrganisationRegistered(spec), keys]
        }
        Command::Send {
            envelope,
            client_message_id,
        } => crate::messaging::decide_send(envelope, client_message_id, facts)?,
        Command::Deliver {
            message_id,
            recipient,
            verdict,
        } => crate::messaging::decide_deliver(&message_id, &recipient, verdict, facts, ts_ms)?,
        Command::Fetch {
            message_id,
            recipient,
        } => {
            let state = crate::messaging::recipient_state(facts, &message_id, &recipient)?;
            if !state.was_routed() {
                return Err(Rejection::FailedPrecondition(format!(
                    "message {message_id} has not been routed to {recipient} (it is {})",
                    state.name()
                )));
            }
            vec![Event::Fetched {
                message_id,
                recipient,
            }]
        }
        Command::Ack {
            message_id,
            recipient,
            status,
            note,
        } => {
            let state = crate::messaging::recipient_state(facts, &message_id, &recipient)?;
            match state {
                RecipientState::Routed { .. } => vec![Event::Acked {
                    message_id,
                    recipient,
                    status,
                    note,
                }],
                other => {
                    return Err(Rejection::FailedPrecondition(format!(
                        "message {message_id} for {recipient} is {}, only a routed message can be acknowledged",
                        other.name()
                    )));
                }
            }
        }
        Command::Expire {
            message_id,
            recipient,
        } => crate::messaging::decide_expire(&message_id, &recipient, facts, ts_ms)?,
        Command::Reprocess {
            message_id,
            recipient,
            failed_seq,
            deliver_by_ms,
        } => crate::messaging::decide_reprocess(
            message_id,
            recipient,
            failed_seq,
            deliver_by_ms,
            facts,
            ts_ms,
        )?,
        Command::ImportPeerDirectory {
            provider,
            after_seq,
            through_seq,
            changes,
        } => crate::federation::decide_import(provider, after_seq, through_seq, changes, facts)?,
        Command::RecordRelayed {
            receipt,
            outcome_by_ms,
        } => crate::federation::decide_relayed(receipt, outcome_by_ms, facts)?,
        Command::Receive {
            from_provider,
            envelopes,
        } => crate::federation::decide_receive(from_provider, envelopes, facts, ts_ms)?,
        Command::Notify {
            provider,
            notification,
        } => crate::federation::decide_notify(provider, notification, facts)?,
        Command::NotificationsRelayed {
            provider,
            through_seq,
        } => crate::federation::decide_notified(provider, through_seq, facts)?,
        Command::OutcomesNotified { org, through_seq } => {
            crate::federation::decide_outcomes_notified(org, through_seq, facts)?
        }
        Command::DropPayloads {
            before_ts_ms,
            through_seq,
        } => crate::retention::decide_drop(before_ts_ms, through_seq, facts, ts_ms)?,
        Command::RecordAuditRead {
            query,
            from_seq,
            to_seq,
        } => vec![Event::AuditRead {
            query,
            from_seq,
            to_seq,
        }],
        Command::RecordDenials {
            node,
            from_ms,
            until_ms,
            denials,
        } => vec![Event::AccessDenied {
            node,
            from_ms,
            until_ms,
            denials,
        }],
        Command::PublishEndpoint(e) => {
            let Some(org) = facts.organisation(&e.id.org) else {
                return Err(Rejection::NotFound(format!(
                    "organisation {} is not registered",
                    e.id.org
                )));
            };
            if !org.is_local() {
                return Err(hosted_elsewhere(org));
            }
            if facts.endpoint(&e.id).is_some_and(|ep| ep.is_active()) {
                return Err(Rejection::AlreadyExists(format!(
                    "endpoint {} is already published",
                    e.id
                )));
            }
            vec![Event::EndpointPublished(e)]
        }
        Command::RetireEndpoint { id, reason } => match facts.endpoint(&id) {
            None => {
                return Err(Rejection::NotFound(format!(
                    "endpoint {id} is not published"
                )));
            }
            Some(ep) if !ep.is_active() => {
                return Err(Rejection::FailedPrecondition(format!(
                    "endpoint {id} is already retired"
                )));
            }
            Some(_) => match facts.organisation(&id.org) {
                Some(o) if !o.is_local() => return Err(hosted_elsewhere(o)),
                _ => vec![Event::EndpointRetired { id, reason }],
            },
        },
        Command::RotateKeys { org, keys } => {
            check_rotation(&org, &keys, facts)?;
            vec![Event::KeysRotated { org, keys }]
        }
        Command::ProvisionKeys { org, keys, wrapped } => {
            check_rotation(&org, &keys, facts)?;
            vec![
                Event::KeysProvisioned {
                    org: org.clone(),
                    key_id: keys.key_id.clone(),
                    wrapped,
                },
                Event::KeysRotated { org, keys },
            ]
        }
        Command::RewrapKeys {
            org,
            key_id,
            wrapped,
        } => {
            if cluster_version < REWRAP_KEYS_SINCE_VERSION {
                return Err(Rejection::FailedPrecondition(format!(
                    "rewrap_keys needs cluster version {REWRAP_KEYS_SINCE_VERSION}, the \
                     cluster runs {cluster_version}"
                )));
            }
            match facts.organisation(&org) {
                None => {
                    return Err(Rejection::NotFound(format!(
                        "organisation {org} is not registered"
                    )));
                }
                Some(o) if !o.is_local() => return Err(hosted_elsewhere(o)),
                Some(_) => vec![Event::KeysProvisioned {
                    org,
                    key_id,
                    wrapped,
                }],
            }
        }
    };
    // The cluster version gate: a variant newer than what every voter understands must not
    // enter the log, or an old follower would stop applying.
    let supported = ceiling.min(EVENT_VERSION_CURRENT);
    if let Some(e) = events.iter().find(|e| e.introduced_in() > supported) {
        return Err(Rejection::FailedPrecondition(format!(
            "{} needs cluster version {}, the cluster runs {cluster_version}",
            e.kind(),
            e.introduced_in()
        )));
    }
    Ok(events)
}

#[cfg(test)]
mod cluster_version_tests {
    use super::*;

    fn denials() -> Command {
        Command::RecordDenials {
            node: 1,
            from_ms: 0,
            until_ms: 1,
            denials: vec![DenialCount {
                identity: "cert:00".into(),
                subject: "nobody".into(),
                action: "fetch".into(),
                count: 1,
            }],
        }
    }

    fn raise(version: u16, members: Vec<(u64, u16)>) -> Command {
        Command::SetClusterVersion { version, members }
    }

    /// A variant newer than the cluster version never becomes an event; the version rises
    /// only to what every member reported and this build understands, and never falls.
    #[test]
    fn the_cluster_version_gates_new_events_and_only_rises() {
        let facts = Facts::default();
        // Denial summaries are version 5: refused by a cluster at 4, taken at 5.
        assert!(matches!(
            decide(denials(), &facts, 4, 0),
            Err(Rejection::FailedPrecondition(_))
        ));
        assert!(decide(denials(), &facts, 5, 0).is_ok());
        // The raise itself is a version-6 event, allowed because it is the raise.
        let ev = decide(raise(6, vec![(1, 6), (2, 6)]), &facts, 5, 0).expect("raise");
        assert!(matches!(
            ev[..],
            [Event::ClusterVersionSet { version: 6, .. }]
        ));
        assert!(
            decide(raise(5, vec![(1, 6)]), &facts, 5, 0).is_err(),
            "not a raise"
        );
        assert!(
            decide(raise(6, vec![(1, 6)]), &facts, 6, 0).is_err(),
            "already there"
        );
        assert!(
            decide(
                raise(EVENT_VERSION_CURRENT + 1, vec![(1, 99)]),
                &facts,
                5,
                0
            )
            .is_err(),
            "beyond what this build understands"
        );
        assert!(
            raise(6, vec![(1, 6), (2, 5)]).validate().is_err(),
            "a member lags"
        );
        assert!(raise(6, vec![]).validate().is_err(), "no members");
    }

    /// A re-wrap replaces the key set's wrapped blob (a `KeysProvisioned` for the same key
    /// id) of an organisation hosted here, once the cluster runs version 7; below it, for an
    /// unknown organisation or for one a peer hosts, it is refused.
    #[test]
    fn a_rewrap_records_the_new_blob_only_for_a_hosted_organisation_from_version_7() {
        use crate::directory::{Organisation, OrganisationSpec};
        let org = |serial: u64, provider: Option<&str>| Organisation {
            spec: OrganisationSpec::sample(serial),
            registered_seq: 1,
            keys_seq: 1,
            provider: provider.map(str::to_string),
        };
        let mut facts = Facts::default();
        facts.load_organisation(HpiO::from_serial(1), Some(org(1, None)));
        facts.load_organisation(HpiO::from_serial(2), Some(org(2, Some("prov-b"))));
        let rewrap = |serial: u64| Command::RewrapKeys {
            org: HpiO::from_serial(serial),
            key_id: "k1".into(),
            wrapped: vec![7; 93],
        };
        rewrap(1).validate().expect("a valid re-wrap");
        let events = decide(rewrap(1), &facts, REWRAP_KEYS_SINCE_VERSION, 0).expect("taken");
        assert_eq!(
            events,
            vec![Event::KeysProvisioned {
                org: HpiO::from_serial(1),
                key_id: "k1".into(),
                wrapped: vec![7; 93],
            }]
        );
        for (cmd, version, why) in [
            (rewrap(1), REWRAP_KEYS_SINCE_VERSION - 1, "an older cluster"),
            (rewrap(2), REWRAP_KEYS_SINCE_VERSION, "hosted by a peer"),
            (rewrap(3), REWRAP_KEYS_SINCE_VERSION, "not registered"),
        ] {
            assert!(decide(cmd, &facts, version, 0).is_err(), "{why}");
        }
        let empty = Command::RewrapKeys {
            org: HpiO::from_serial(1),
            key_id: "k1".into(),
            wrapped: Vec::new(),
        };
        assert!(empty.validate().is_err(), "no blob");
        assert_eq!(rewrap(1).kind(), "rewrap_keys");
        const { assert!(REWRAP_KEYS_SINCE_VERSION <= EVENT_VERSION_CURRENT) };
    }
}
