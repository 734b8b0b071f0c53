//! Secure messages: the envelope v1 (signed header plus one HPKE-sealed copy of the payload
//! per recipient organisation), message ids, priorities, acknowledgement statuses, failure
//! reasons and the per-recipient lifecycle.
//!
//! The bytes the sender's signature covers and the bytes HPKE binds (info and aad) are
//! built here with the frozen [`Canon`] writer, so every crate that seals, opens or audits
//! a message agrees on them; `ENVELOPE.md` at the repository root describes the same
//! layout for implementers outside this code base. Sealing and opening themselves live in
//! the crypto crate: this module does no cryptography and no I/O.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::canonical::Canon;
use crate::directory::{FieldError, NOTE_BYTES_MAX, PayloadType, SHORT_TEXT_BYTES_MAX, check_text};
use crate::ids::{EndpointId, HpiI, HpiO, Ihi};

/// Version of the envelope layout this build writes and opens.
pub const ENVELOPE_VERSION: u8 = 1;
/// Default largest payload, in bytes (a node's configuration may lower or raise it up to
/// [`PAYLOAD_BYTES_HARD_MAX`]).
pub const PAYLOAD_BYTES_DEFAULT_MAX: u64 = 16 * 1024 * 1024;
/// No configuration may allow payloads beyond this, in bytes.
pub const PAYLOAD_BYTES_HARD_MAX: u64 = 64 * 1024 * 1024;
/// Most recipient endpoints of one message.
pub const RECIPIENTS_MAX: usize = 16;
/// Longest client message id (the idempotency key), in bytes.
pub const CLIENT_MESSAGE_ID_BYTES_MAX: usize = 128;
/// Longest message id, in bytes (provider id, ':' and a UUID).
pub const MESSAGE_ID_BYTES_MAX: usize = SHORT_TEXT_BYTES_MAX + 1 + 36;
/// Length of an Ed25519 signature, in bytes.
pub const SIGNATURE_BYTES: usize = 64;
/// Length of an X25519 HPKE encapsulated key, in bytes.
pub const ENCAPSULATED_KEY_BYTES: usize = 32;
/// HPKE's ChaCha20-Poly1305 tag, in bytes: a sealed copy is the payload plus this.
pub const AEAD_TAG_BYTES: u64 = 16;
/// Label mixed into HPKE's info so keys of other protocols can never open an envelope.
pub const HPKE_INFO_LABEL: &[u8] = b"sealpost envelope v1";
/// The client message id prefix of messages submitted over MLLP (followed by MSH-3|MSH-4|
/// MSH-10): their senders' systems can be told the outcomes.
pub const MLLP_CLIENT_ID_PREFIX: &str = "mllp:";
/// Label at the start of the signed header bytes.
pub const HEADER_LABEL: &[u8] = b"SPENV";

/// A globally unique message id: the provider id, a colon and a time-ordered UUID (v7).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MessageId(String);

impl MessageId {
    /// Builds an id from a provider id and a UUID's canonical text.
    pub fn new(provider: &str, uuid: &str) -> Result<Self, FieldError> {
        Self::parse(&format!("{provider}:{uuid}"))
    }

    pub fn parse(s: &str) -> Result<Self, FieldError> {
        let (provider, uuid) = s
            .rsplit_once(':')
            .ok_or_else(|| FieldError::new("message_id", "must be <provider>:<uuid>"))?;
        check_text("message_id", provider, SHORT_TEXT_BYTES_MAX)?;
        let uuid_ok = uuid.len() == 36
            && uuid.bytes().enumerate().all(|(i, b)| match i {
                8 | 13 | 18 | 23 => b == b'-',
                _ => b.is_ascii_hexdigit() && !b.is_ascii_uppercase(),
            });
        if !uuid_ok {
            return Err(FieldError::new(
                "message_id",
                "the part after the last ':' must be a lowercase hyphenated UUID",
            ));
        }
        if provider.contains(char::is_whitespace) {
            return Err(FieldError::new(
                "message_id",
                "the provider part must not contain spaces",
            ));
        }
        Ok(Self(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for MessageId {
    type Error = FieldError;
    fn try_from(s: String) -> Result<Self, FieldError> {
        Self::parse(&s)
    }
}

impl From<MessageId> for String {
    fn from(v: MessageId) -> String {
        v.0
    }
}

impl FromStr for MessageId {
    type Err = FieldError;
    fn from_str(s: &str) -> Result<Self, FieldError> {
        Self::parse(s)
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({})", self.0)
    }
}

/// How soon the receiver should look at a message. Urgent messages list first.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub enum Priority {
    Urgent,
    Routine,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Urgent => "urgent",
            Priority::Routine => "routine",
        }
    }

    /// Frozen code in the canonical encoding; also the inbox sort rank (lower first).
    pub fn code(self) -> u8 {
        match self {
            Priority::Urgent => 1,
            Priority::Routine => 2,
        }
    }
}

impl FromStr for Priority {
    type Err = FieldError;
    fn from_str(s: &str) -> Result<Self, FieldError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "urgent" => Ok(Priority::Urgent),
            "routine" | "" => Ok(Priority::Routine),
            other => Err(FieldError::new(
                "priority",
                format!("{other:?} is not one of urgent, routine"),
            )),
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The receiver's answer to a message (HL7's AA / AR / AE).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub enum AckStatus {
    Accepted,
    Rejected,
    Error,
}

impl AckStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AckStatus::Accepted => "accepted",
            AckStatus::Rejected => "rejected",
            AckStatus::Error => "error",
        }
    }

    /// Frozen code in the canonical encoding.
    pub fn code(self) -> u8 {
        match self {
            AckStatus::Accepted => 1,
            AckStatus::Rejected => 2,
            AckStatus::Error => 3,
        }
    }
}

impl FromStr for AckStatus {
    type Err = FieldError;
    fn from_str(s: &str) -> Result<Self, FieldError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "accepted" => Ok(AckStatus::Accepted),
            "rejected" => Ok(AckStatus::Rejected),
            "error" => Ok(AckStatus::Error),
            other => Err(FieldError::new(
                "status",
                format!("{other:?} is not one of accepted, rejected, error"),
            )),
        }
    }
}

impl fmt::Display for AckStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a message could not be delivered to a recipient. A final outcome.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub enum FailReason {
    /// The sender's signature over the header does not verify.
    BadSignature,
    /// The envelope names a key the receiving (or sending) organisation does not have.
    UnknownKey,
    /// The opened payload does not match the digest in the signed header.
    DigestMismatch,
    /// The recipient endpoint does not accept the payload type (or is retired).
    PayloadTypeNotAccepted,
    /// The sealed copy does not open (altered ciphertext, wrong key or binding).
    DecryptionFailed,
    /// The envelope is malformed (no copy for the recipient, bad sizes).
    Malformed,
    /// Not routed by its deliver-by time.
    Undeliverable,
    /// Routed but not acknowledged within the acknowledgement window.
    Unacknowledged,
}

impl FailReason {
    pub const ALL: [FailReason; 8] = [
        FailReason::BadSignature,
        FailReason::UnknownKey,
        FailReason::DigestMismatch,
        FailReason::PayloadTypeNotAccepted,
        FailReason::DecryptionFailed,
        FailReason::Malformed,
        FailReason::Undeliverable,
        FailReason::Unacknowledged,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailReason::BadSignature => "bad_signature",
            FailReason::UnknownKey => "unknown_key",
            FailReason::DigestMismatch => "digest_mismatch",
            FailReason::PayloadTypeNotAccepted => "payload_type_not_accepted",
            FailReason::DecryptionFailed => "decryption_failed",
            FailReason::Malformed => "malformed",
            FailReason::Undeliverable => "undeliverable",
            FailReason::Unacknowledged => "unacknowledged",
        }
    }

    /// Frozen code in the canonical encoding.
    pub fn code(self) -> u8 {
        match self {
            FailReason::BadSignature => 1,
            FailReason::UnknownKey => 2,
            FailReason::DigestMismatch => 3,
            FailReason::PayloadTypeNotAccepted => 4,
            FailReason::DecryptionFailed => 5,
            FailReason::Malformed => 6,
            FailReason::Undeliverable => 7,
            FailReason::Unacknowledged => 8,
        }
    }
}

impl fmt::Display for FailReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who sent a message: an organisation and, optionally, the practitioner who wrote it.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Sender {
    pub org: HpiO,
    pub practitioner: Option<HpiI>,
}

/// The signed, cleartext part of an envelope: everything routing, deadlines and audit need,
/// and nothing of the payload but its digest, size and type.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct EnvelopeHeader {
    pub version: u8,
    pub message_id: MessageId,
    pub sender: Sender,
    /// The key id of the sender's signing key.
    pub sender_key_id: String,
    pub recipients: Vec<EndpointId>,
    pub payload_type: PayloadType,
    pub priority: Priority,
    /// The patient the message is about, when given.
    pub patient: Option<Ihi>,
    /// SHA-256 of the plaintext payload.
    pub payload_digest: [u8; 32],
    pub payload_bytes: u64,
    pub created_ms: u64,
    /// Not routed by then: failed as undeliverable; receivers refuse it after this.
    pub deliver_by_ms: u64,
}

/// One recipient organisation's copy of the payload, sealed with HPKE to its key.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct SealedCopy {
    pub org: HpiO,
    /// The key id of the recipient organisation's encryption key.
    pub key_id: String,
    /// HPKE encapsulated key.
    #[serde(with = "crate::codec::byte_string")]
    pub enc: Vec<u8>,
    /// Stored and sent as one byte string (not a sequence of numbers), so large payloads
    /// encode and decode at memory speed.
    #[serde(with = "crate::codec::byte_string")]
    pub ciphertext: Vec<u8>,
}

/// Starts the stand-in for a ciphertext dropped after the retention period:
/// `label (8 bytes) || ciphertext length (u64, big-endian) || SHA-256 of the ciphertext`,
/// exactly what the hash chain covers of a copy, so the chain still verifies.
pub const DROPPED_LABEL: &[u8; 8] = b"SPDROP01";
/// Length of a dropped copy's stand-in.
pub const DROPPED_BYTES: usize = 8 + 8 + 32;

impl SealedCopy {
    /// The length and digest of the ciphertext that was dropped, when it was.
    pub fn dropped(&self) -> Option<(u64, [u8; 32])> {
        let c = &self.ciphertext;
        if c.len() != DROPPED_BYTES || !c.starts_with(DROPPED_LABEL) {
            return None;
        }
        let mut len = [0u8; 8];
        len.copy_from_slice(&c[8..16]);
        let mut digest = [0u8; 32];
        digest.copy_from_slice(&c[16..]);
        Some((u64::from_be_bytes(len), digest))
    }

    /// The ciphertext's length and SHA-256 digest, as the hash chain covers them, whether
    /// the ciphertext is still here or was dropped.
    pub fn ciphertext_digest(&self) -> (u64, [u8; 32]) {
        self.dropped().unwrap_or_else(|| {
            (
                self.ciphertext.len() as u64,
                Sha256::digest(&self.ciphertext).into(),
            )
        })
    }

    /// Replaces the ciphertext with its stand-in (once; a dropped copy stays as it is).
    pub fn drop_ciphertext(&mut self) {
        if self.dropped().is_some() {
            return;
        }
        let (len, digest) = self.ciphertext_digest();
        let mut c = Vec::with_capacity(DROPPED_BYTES);
        c.extend_from_slice(DROPPED_LABEL);
        c.extend_from_slice(&len.to_be_bytes());
        c.extend_from_slice(&digest);
        self.ciphertext = c;
    }
}

/// Envelope v1: header, the sender's Ed25519 signature over it, and the sealed copies.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Envelope {
    pub header: EnvelopeHeader,
    #[serde(with = "crate::codec::byte_string")]
    pub signature: Vec<u8>,
    pub sealed: Vec<SealedCopy>,
}

impl EnvelopeHeader {
    /// The bytes the sender signs: a label, the version and every header field in a frozen
    /// order (see ENVELOPE.md).
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut c = Canon::new();
        c.fixed(HEADER_LABEL)
            .u8(self.version)
            .str(self.message_id.as_str())
            .str(self.sender.org.as_str());
        match &self.sender.practitioner {
            None => c.u8(0),
            Some(p) => c.u8(1).str(p.as_str()),
        };
        c.str(&self.sender_key_id).count(self.recipients.len());
        for r in &self.recipients {
            c.str(&r.to_string());
        }
        c.u8(self.payload_type.code()).u8(self.priority.code());
        match &self.patient {
            None => c.u8(0),
            Some(p) => c.u8(1).str(p.as_str()),
        };
        c.fixed(&self.payload_digest)
            .u64(self.payload_bytes)
            .u64(self.created_ms)
            .u64(self.deliver_by_ms);
        c.finish()
    }

    /// SHA-256 of [`Self::signed_bytes`]: HPKE's aad, binding each sealed copy to the whole
    /// signed header.
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.signed_bytes()).into()
    }

    /// HPKE's info for the copy sealed to `org`'s key `key_id`: binds the ciphertext to the
    /// message id, the recipient organisation and key, and the deliver-by time.
    pub fn hpke_info(&self, org: &HpiO, key_id: &str) -> Vec<u8> {
        let mut c = Canon::new();
        c.fixed(HPKE_INFO_LABEL)
            .str(self.message_id.as_str())
            .str(org.as_str())
            .str(key_id)
            .u64(self.deliver_by_ms);
        c.finish()
    }

    /// The distinct recipient organisations, in first-seen order.
    pub fn recipient_orgs(&self) -> Vec<HpiO> {
        let mut out: Vec<HpiO> = Vec::new();
        for r in &self.recipients {
            if !out.contains(&r.org) {
                out.push(r.org.clone());
            }
        }
        out
    }

    /// Stateless checks of shapes and sizes.
    pub fn validate(&self, payload_bytes_max: u64) -> Result<(), FieldError> {
        if self.version != ENVELOPE_VERSION {
            return Err(FieldError::new(
                "envelope.version",
                format!(
                    "is {}, this node reads version {ENVELOPE_VERSION}",
                    self.version
                ),
            ));
        }
        check_text("sender_key_id", &self.sender_key_id, SHORT_TEXT_BYTES_MAX)?;
        check_recipients(&self.recipients)?;
        if self.payload_bytes > payload_bytes_max {
            return Err(FieldError::new(
                "payload",
                format!(
                    "is {} bytes, the limit is {payload_bytes_max} bytes",
                    self.payload_bytes
                ),
            ));
        }
        if self.deliver_by_ms <= self.created_ms {
            return Err(FieldError::new(
                "deliver_by",
                "must be later than the creation time",
            ));
        }
        Ok(())
    }
}

/// Checks a recipient list: not empty, bounded, no repeats.
pub fn check_recipients(recipients: &[EndpointId]) -> Result<(), FieldError> {
    if recipients.is_empty() {
        return Err(FieldError::new("to", "needs at least one recipient"));
    }
    if recipients.len() > RECIPIENTS_MAX {
        return Err(FieldError::new(
            "to",
            format!(
                "names {} recipients, the limit is {RECIPIENTS_MAX}",
                recipients.len()
            ),
        ));
    }
    for (i, r) in recipients.iter().enumerate() {
        if recipients[..i].contains(r) {
            return Err(FieldError::new("to", format!("names {r} twice")));
        }
    }
    Ok(())
}

/// Checks a client message id: printable, bounded.
pub fn check_client_message_id(id: &str) -> Result<(), FieldError> {
    check_text("client_message_id", id, CLIENT_MESSAGE_ID_BYTES_MAX)
}

/// Checks an acknowledgement note (may be empty).
pub fn check_note(note: &str) -> Result<(), FieldError> {
    if note.is_empty() {
        return Ok(());
    }
    check_text("note", note, NOTE_BYTES_MAX)
}

impl Envelope {
    /// Stateless checks: header shapes, one copy per recipient organisation and nothing
    /// else, sizes that match the header.
    pub fn validate(&self, payload_bytes_max: u64) -> Result<(), FieldError> {
        self.header.validate(payload_bytes_max)?;
        if self.signature.len() != SIGNATURE_BYTES {
            return Err(FieldError::new(
                "envelope.signature",
                format!(
                    "is {} bytes, expected {SIGNATURE_BYTES}",
                    self.signature.len()
                ),
            ));
        }
        let orgs = self.header.recipient_orgs();
        if self.sealed.len() != orgs.len() {
            return Err(FieldError::new(
                "envelope.sealed",
                format!(
                    "holds {} copies for {} recipient organisations",
                    self.sealed.len(),
                    orgs.len()
                ),
            ));
        }
        for (copy, org) in self.sealed.iter().zip(&orgs) {
            if &copy.org != org {
                return Err(FieldError::new(
                    "envelope.sealed",
                    format!("a copy is for {}, expected {org}", copy.org),
                ));
            }
            check_text("envelope.sealed.key_id", &copy.key_id, SHORT_TEXT_BYTES_MAX)?;
            if copy.enc.len() != ENCAPSULATED_KEY_BYTES {
                return Err(FieldError::new(
                    "envelope.sealed.enc",
                    format!(
                        "is {} bytes, expected {ENCAPSULATED_KEY_BYTES}",
                        copy.enc.len()
                    ),
                ));
            }
            if copy.ciphertext.len() as u64 != self.header.payload_bytes + AEAD_TAG_BYTES {
                return Err(FieldError::new(
                    "envelope.sealed.ciphertext",
                    "does not match the payload size in the header",
                ));
            }
            if copy.dropped().is_some() {
                return Err(FieldError::new(
                    "envelope.sealed.ciphertext",
                    "has the shape reserved for a payload dropped after retention",
                ));
            }
        }
        Ok(())
    }

    /// True once the payload was dropped after the retention period.
    pub fn payload_dropped(&self) -> bool {
        self.sealed.iter().any(|c| c.dropped().is_some())
    }

    /// The copy sealed for an organisation.
    pub fn copy_for(&self, org: &HpiO) -> Option<&SealedCopy> {
        self.sealed.iter().find(|c| &c.org == org)
    }

    /// Bytes this envelope occupies beyond its ciphertexts, roughly: for size limits.
    pub fn approx_bytes(&self) -> u64 {
        self.sealed
            .iter()
            .map(|c| c.ciphertext.len() as u64 + 128)
            .sum::<u64>()
            + 1024
    }
}

/// SHA-256 of a payload, as the header carries it.
pub fn payload_digest(payload: &[u8]) -> [u8; 32] {
    Sha256::digest(payload).into()
}

/// Where one recipient's copy of a message stands.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum RecipientState {
    /// Committed; waiting for the delivery worker.
    Sent,
    /// Opened, verified and in the recipient's inbox; waiting for an acknowledgement.
    Routed { routed_seq: u64, ack_by_ms: u64 },
    /// Final: the receiver acknowledged.
    Acked { status: AckStatus, seq: u64 },
    /// Final: the message failed for this recipient.
    Failed { reason: FailReason, seq: u64 },
    /// A recipient hosted by a peer provider: that provider committed the message (its
    /// receipt is in the `Relayed` event at `relayed_seq`); its final outcome is expected
    /// back by `outcome_by_ms`.
    Relayed {
        relayed_seq: u64,
        outcome_by_ms: u64,
    },
    /// Failed, then re-driven by an operator (`Reprocessed` at `seq`, linked to the
    /// `Failed` event at `failed_seq`): waiting for the delivery worker again, to be routed
    /// by `deliver_by_ms`. Only recipients hosted here.
    Reprocessing {
        seq: u64,
        failed_seq: u64,
        deliver_by_ms: u64,
    },
}

impl RecipientState {
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            RecipientState::Acked { .. } | RecipientState::Failed { .. }
        )
    }

    pub fn was_routed(&self) -> bool {
        matches!(
            self,
            RecipientState::Routed { .. } | RecipientState::Acked { .. }
        )
    }

    pub fn name(&self) -> &'static str {
        match self {
            RecipientState::Sent => "sent",
            RecipientState::Routed { .. } => "routed",
            RecipientState::Acked { .. } => "acked",
            RecipientState::Failed { .. } => "failed",
            RecipientState::Relayed { .. } => "relayed",
            RecipientState::Reprocessing { .. } => "reprocessing",
        }
    }

    /// Waiting for the delivery worker: committed, or re-driven after a failure.
    pub fn awaits_delivery(&self) -> bool {
        matches!(
            self,
            RecipientState::Sent | RecipientState::Reprocessing { .. }
        )
    }
}

/// One recipient of a message and where its copy stands.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct RecipientStatus {
    pub endpoint: EndpointId,
    pub state: RecipientState,
    /// How many times the recipient fetched the payload.
    pub fetches: u32,
    /// The peer provider that hosts the recipient's organisation; `None` when this
    /// provider does (and delivers it itself).
    pub provider: Option<String>,
}

impl RecipientStatus {
    pub fn is_local(&self) -> bool {
        self.provider.is_none()
    }
}

/// The message status view: what the header says plus each recipient's state. The
/// envelope itself stays in the event store; `sent_seq` points at it.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct MessageStatus {
    pub message_id: MessageId,
    pub sent_seq: u64,
    pub sent_ts_ms: u64,
    pub sender: Sender,
    pub client_message_id: String,
    pub payload_type: PayloadType,
    pub priority: Priority,
    pub payload_bytes: u64,
    pub deliver_by_ms: u64,
    /// The recipients this provider tracks: every recipient at the sender's provider; only
    /// those hosted here at a receiving provider.
    pub recipients: Vec<RecipientStatus>,
    /// The peer provider that relayed the message here; `None` when it was sent here.
    pub origin: Option<String>,
}

impl MessageStatus {
    pub fn recipient(&self, endpoint: &EndpointId) -> Option<&RecipientStatus> {
        self.recipients.iter().find(|r| &r.endpoint == endpoint)
    }

    pub fn recipient_mut(&mut self, endpoint: &EndpointId) -> Option<&mut RecipientStatus> {
        self.recipients.iter_mut().find(|r| &r.endpoint == endpoint)
    }

    /// Every recipient has its final outcome.
    pub fn is_complete(&self) -> bool {
        self.recipients.iter().all(|r| r.state.is_final())
    }

    /// Some recipient hosted here still waits for the delivery worker.
    pub fn awaits_delivery(&self) -> bool {
        self.recipients
            .iter()
            .any(|r| r.is_local() && r.state.awaits_delivery())
    }

    /// Some recipient hosted by `provider` still waits to be relayed there.
    pub fn awaits_relay(&self, provider: &str) -> bool {
        self.recipients
            .iter()
            .any(|r| r.provider.as_deref() == Some(provider) && r.state == RecipientState::Sent)
    }

    /// The distinct peer providers hosting recipients, in first-seen order.
    pub fn peer_providers(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for p in self.recipients.iter().filter_map(|r| r.provider.as_ref()) {
            if !out.contains(p) {
                out.push(p.clone());
            }
        }
        out
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn header() -> EnvelopeHeader {
        let org = HpiO::from_serial(1);
        EnvelopeHeader {
            version: ENVELOPE_VERSION,
            message_id: MessageId::new("prov-a", "01890a5d-ac96-774b-bcce-b302099a8057")
                .expect("id"),
            sender: Sender {
                org: org.clone(),
                practitioner: None,
            },
            sender_key_id: "k1".into(),
            recipients: vec![
                EndpointId::service(HpiO::from_serial(2), "cardiology").expect("ep"),
                EndpointId::service(HpiO::from_serial(2), "renal").expect("ep"),
                EndpointId::service(HpiO::from_serial(3), "pathology").expect("ep"),
            ],
            payload_type: PayloadType::Hl7Referral,
            priority: Priority::Urgent,
            patient: Some(Ihi::from_serial(5)),
            payload_digest: payload_digest(b"x"),
            payload_bytes: 1,
            created_ms: 10,
            deliver_by_ms: 20,
        }
    }

    /// Message ids are provider:uuid and nothing else.
    #[test]
    fn message_ids_are_checked() {
        assert!(MessageId::parse("prov-a:01890a5d-ac96-774b-bcce-b302099a8057").is_ok());
        for bad in [
            "",
            "prov-a",
            "prov-a:xyz",
            ":01890a5d-ac96-774b-bcce-b302099a8057",
            "prov-a:01890A5D-AC96-774B-BCCE-B302099A8057",
        ] {
            assert!(MessageId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    /// Every header field is covered by the signed bytes: changing any one changes them.
    #[test]
    fn every_header_field_is_signed() {
        let base = header();
        let sig = base.signed_bytes();
        let mut variants: Vec<EnvelopeHeader> = Vec::new();
        let mut h = base.clone();
        h.message_id =
            MessageId::new("prov-a", "01890a5d-ac96-774b-bcce-b302099a8058").expect("id");
        variants.push(h);
        let mut h = base.clone();
        h.sender.org = HpiO::from_serial(9);
        variants.push(h);
        let mut h = base.clone();
        h.sender.practitioner = Some(HpiI::from_serial(4));
        variants.push(h);
        let mut h = base.clone();
        h.sender_key_id = "k2".into();
        variants.push(h);
        let mut h = base.clone();
        h.recipients.pop();
        variants.push(h);
        let mut h = base.clone();
        h.payload_type = PayloadType::Text;
        variants.push(h);
        let mut h = base.clone();
        h.priority = Priority::Routine;
        variants.push(h);
        let mut h = base.clone();
        h.patient = None;
        variants.push(h);
        let mut h = base.clone();
        h.payload_digest[0] ^= 1;
        variants.push(h);
        let mut h = base.clone();
        h.payload_bytes = 2;
        variants.push(h);
        let mut h = base.clone();
        h.created_ms = 11;
        variants.push(h);
        let mut h = base.clone();
        h.deliver_by_ms = 21;
        variants.push(h);
        for v in variants {
            assert_ne!(v.signed_bytes(), sig, "{v:?}");
        }
    }

    /// HPKE info differs per recipient organisation, key and deadline.
    #[test]
    fn hpke_info_binds_recipient_and_deadline() {
        let h = header();
        let a = h.hpke_info(&HpiO::from_serial(2), "k1");
        assert_ne!(a, h.hpke_info(&HpiO::from_serial(3), "k1"));
        assert_ne!(a, h.hpke_info(&HpiO::from_serial(2), "k2"));
        let mut later = h.clone();
        later.deliver_by_ms += 1;
        assert_ne!(a, later.hpke_info(&HpiO::from_serial(2), "k1"));
        assert_eq!(
            h.recipient_orgs(),
            vec![HpiO::from_serial(2), HpiO::from_serial(3)]
        );
    }

    /// Header validation names the problem.
    #[test]
    fn header_validation_names_the_field() {
        let mut h = header();
        assert!(h.validate(16).is_ok());
        h.payload_bytes = 17;
        assert!(
            h.validate(16)
                .expect_err("must be refused")
                .to_string()
                .contains("limit is 16")
        );
        let mut h = header();
        h.recipients.push(h.recipients[0].clone());
        assert!(
            h.validate(16)
                .expect_err("must be refused")
                .to_string()
                .contains("twice")
        );
        let mut h = header();
        h.recipients.clear();
        assert!(
            h.validate(16)
                .expect_err("must be refused")
                .to_string()
                .contains("at least one")
        );
        let mut h = header();
        h.deliver_by_ms = h.created_ms;
        assert!(h.validate(16).expect_err("must be refused").field == "deliver_by");
    }

    /// Frozen codes never change.
    #[test]
    fn codes_are_frozen() {
        let codes: Vec<u8> = FailReason::ALL.iter().map(|r| r.code()).collect();
        assert_eq!(codes, vec![1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(Priority::Urgent.code(), 1);
        assert_eq!(Priority::Routine.code(), 2);
        assert_eq!(AckStatus::Error.code(), 3);
    }
}
