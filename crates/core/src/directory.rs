//! The provider directory's domain types: organisations, their endpoints (services and
//! practitioners), the payload types an endpoint accepts, and published public keys.
//!
//! These are the records the directory views hold and the specs that commands carry. All
//! validation that needs no state lives here (lengths, shapes, key sizes), so a bad request
//! is refused at the edge before it reaches the log.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ids::{EndpointId, EndpointLocal, HpiO};

/// Longest organisation or endpoint display name, in bytes.
pub const NAME_BYTES_MAX: usize = 200;
/// Longest suburb, specialty, key id, provider id or retirement reason, in bytes.
pub const SHORT_TEXT_BYTES_MAX: usize = 64;
/// Longest free-text note (retirement reason), in bytes.
pub const NOTE_BYTES_MAX: usize = 500;
/// Most payload types one endpoint may list.
pub const PAYLOAD_TYPES_MAX: usize = 16;
/// Length of an X25519 or Ed25519 public key, in bytes.
pub const PUBLIC_KEY_BYTES: usize = 32;

/// A validation failure of a field, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct FieldError {
    pub field: &'static str,
    pub problem: String,
}

impl FieldError {
    pub fn new(field: &'static str, problem: impl Into<String>) -> Self {
        Self {
            field,
            problem: problem.into(),
        }
    }
}

/// Checks a required, bounded, printable text field.
pub fn check_text(field: &'static str, value: &str, bytes_max: usize) -> Result<(), FieldError> {
    if value.trim().is_empty() {
        return Err(FieldError::new(field, "must not be empty"));
    }
    if value.len() > bytes_max {
        return Err(FieldError::new(
            field,
            format!("is {} bytes, the limit is {bytes_max} bytes", value.len()),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(FieldError::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// Australian states and territories, for directory search by location.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub enum AuState {
    Act,
    Nsw,
    Nt,
    Qld,
    Sa,
    Tas,
    Vic,
    Wa,
}

impl AuState {
    pub const ALL: [AuState; 8] = [
        AuState::Act,
        AuState::Nsw,
        AuState::Nt,
        AuState::Qld,
        AuState::Sa,
        AuState::Tas,
        AuState::Vic,
        AuState::Wa,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AuState::Act => "ACT",
            AuState::Nsw => "NSW",
            AuState::Nt => "NT",
            AuState::Qld => "QLD",
            AuState::Sa => "SA",
            AuState::Tas => "TAS",
            AuState::Vic => "VIC",
            AuState::Wa => "WA",
        }
    }

    /// Frozen code used by the canonical event encoding; never renumber.
    pub fn code(self) -> u8 {
        match self {
            AuState::Act => 1,
            AuState::Nsw => 2,
            AuState::Nt => 3,
            AuState::Qld => 4,
            AuState::Sa => 5,
            AuState::Tas => 6,
            AuState::Vic => 7,
            AuState::Wa => 8,
        }
    }
}

impl FromStr for AuState {
    type Err = FieldError;
    fn from_str(s: &str) -> Result<Self, FieldError> {
        let up = s.trim().to_ascii_uppercase();
        AuState::ALL
            .into_iter()
            .find(|st| st.as_str() == up)
            .ok_or_else(|| {
                FieldError::new(
                    "state",
                    format!("{s:?} is not one of ACT, NSW, NT, QLD, SA, TAS, VIC, WA"),
                )
            })
    }
}

impl fmt::Display for AuState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The kinds of clinical payload an endpoint can accept.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub enum PayloadType {
    /// HL7 v2 REF^I12 referral.
    Hl7Referral,
    /// HL7 v2 ORU^R01 observation result (pathology, radiology).
    Hl7Result,
    /// HL7 v2 MDM^T02 document (reports, discharge summaries).
    Hl7Document,
    /// HL7 CDA document.
    Cda,
    /// FHIR resource or bundle.
    Fhir,
    /// PDF document.
    Pdf,
    /// Plain text.
    Text,
}

impl PayloadType {
    pub const ALL: [PayloadType; 7] = [
        PayloadType::Hl7Referral,
        PayloadType::Hl7Result,
        PayloadType::Hl7Document,
        PayloadType::Cda,
        PayloadType::Fhir,
        PayloadType::Pdf,
        PayloadType::Text,
    ];

    /// The name used on the wire and in the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            PayloadType::Hl7Referral => "REF^I12",
            PayloadType::Hl7Result => "ORU^R01",
            PayloadType::Hl7Document => "MDM^T02",
            PayloadType::Cda => "CDA",
            PayloadType::Fhir => "FHIR",
            PayloadType::Pdf => "PDF",
            PayloadType::Text => "TEXT",
        }
    }

    /// Frozen code used by the canonical event encoding; never renumber.
    pub fn code(self) -> u8 {
        match self {
            PayloadType::Hl7Referral => 1,
            PayloadType::Hl7Result => 2,
            PayloadType::Hl7Document => 3,
            PayloadType::Cda => 4,
            PayloadType::Fhir => 5,
            PayloadType::Pdf => 6,
            PayloadType::Text => 7,
        }
    }
}

impl FromStr for PayloadType {
    type Err = FieldError;
    fn from_str(s: &str) -> Result<Self, FieldError> {
        let up = s.trim().to_ascii_uppercase();
        PayloadType::ALL
            .into_iter()
            .find(|p| p.as_str() == up)
            .ok_or_else(|| {
                FieldError::new(
                    "payload_type",
                    format!("{s:?} is not one of REF^I12, ORU^R01, MDM^T02, CDA, FHIR, PDF, TEXT"),
                )
            })
    }
}

impl fmt::Display for PayloadType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An organisation's published public keys. The private halves are never in the log in
/// the clear (see the design brief's "Keys").
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct PublicKeys {
    /// Names this key pair; envelopes cite it so old messages stay openable after rotation.
    pub key_id: String,
    /// X25519 public key for HPKE sealing.
    pub encryption: [u8; PUBLIC_KEY_BYTES],
    /// Ed25519 public key for signature verification.
    pub signing: [u8; PUBLIC_KEY_BYTES],
}

impl PublicKeys {
    pub fn validate(&self) -> Result<(), FieldError> {
        check_text("key_id", &self.key_id, SHORT_TEXT_BYTES_MAX)?;
        if self.encryption == [0; PUBLIC_KEY_BYTES] || self.signing == [0; PUBLIC_KEY_BYTES] {
            return Err(FieldError::new(
                "keys",
                "a public key must not be all zeroes",
            ));
        }
        Ok(())
    }

    /// Parses a key from bytes received on the wire, naming the field when the length is
    /// wrong.
    pub fn key_from_slice(
        field: &'static str,
        bytes: &[u8],
    ) -> Result<[u8; PUBLIC_KEY_BYTES], FieldError> {
        bytes.try_into().map_err(|_| {
            FieldError::new(
                field,
                format!("must be {PUBLIC_KEY_BYTES} bytes, got {}", bytes.len()),
            )
        })
    }
}

/// What a client asks to register.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct OrganisationSpec {
    pub hpio: HpiO,
    pub name: String,
    pub suburb: String,
    pub state: AuState,
    pub postcode: String,
    pub keys: PublicKeys,
}

impl OrganisationSpec {
    /// A valid organisation for unit tests: "Clinic N" in Carlton, keys "k1".
    #[cfg(test)]
    pub(crate) fn sample(serial: u64) -> Self {
        Self {
            hpio: HpiO::from_serial(serial),
            name: format!("Clinic {serial}"),
            suburb: "Carlton".into(),
            state: AuState::Vic,
            postcode: "3053".into(),
            keys: PublicKeys {
                key_id: "k1".into(),
                encryption: [1; 32],
                signing: [2; 32],
            },
        }
    }

    pub fn validate(&self) -> Result<(), FieldError> {
        check_text("name", &self.name, NAME_BYTES_MAX)?;
        check_text("suburb", &self.suburb, SHORT_TEXT_BYTES_MAX)?;
        if self.postcode.len() != 4 || !self.postcode.bytes().all(|b| b.is_ascii_digit()) {
            return Err(FieldError::new(
                "postcode",
                format!("must be 4 digits, got {:?}", self.postcode),
            ));
        }
        self.keys.validate()
    }
}

/// What a client asks to publish: a service or practitioner inbox of an organisation.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct EndpointSpec {
    pub id: EndpointId,
    pub display_name: String,
    pub specialty: String,
    pub payload_types: Vec<PayloadType>,
}

impl EndpointSpec {
    pub fn validate(&self) -> Result<(), FieldError> {
        check_text("display_name", &self.display_name, NAME_BYTES_MAX)?;
        check_text("specialty", &self.specialty, SHORT_TEXT_BYTES_MAX)?;
        if self.payload_types.is_empty() {
            return Err(FieldError::new(
                "payload_types",
                "must list at least one payload type",
            ));
        }
        if self.payload_types.len() > PAYLOAD_TYPES_MAX {
            return Err(FieldError::new(
                "payload_types",
                format!(
                    "lists {}, the limit is {PAYLOAD_TYPES_MAX}",
                    self.payload_types.len()
                ),
            ));
        }
        let mut sorted = self.payload_types.clone();
        sorted.sort();
        sorted.dedup();
        if sorted.len() != self.payload_types.len() {
            return Err(FieldError::new("payload_types", "lists a type twice"));
        }
        Ok(())
    }

    pub fn kind(&self) -> EndpointKind {
        match self.id.local {
            EndpointLocal::Service(_) => EndpointKind::Service,
            EndpointLocal::Practitioner(_) => EndpointKind::Practitioner,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum EndpointKind {
    Service,
    Practitioner,
}

/// The directory view of an organisation.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Organisation {
    pub spec: OrganisationSpec,
    /// Event sequence number of the registration.
    pub registered_seq: u64,
    /// Event sequence number of the latest key rotation, if any.
    pub keys_seq: u64,
    /// The peer provider that hosts this organisation (its entry was imported from that
    /// provider's directory); `None` when this provider hosts it.
    pub provider: Option<String>,
}

impl Organisation {
    /// Hosted by this provider (its keys are in this provider's keystore).
    pub fn is_local(&self) -> bool {
        self.provider.is_none()
    }
}

/// The directory view of an endpoint.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Endpoint {
    pub spec: EndpointSpec,
    /// Event sequence number of the publication.
    pub published_seq: u64,
    /// Event sequence number of the retirement, when retired.
    pub retired_seq: Option<u64>,
}

impl Endpoint {
    pub fn is_active(&self) -> bool {
        self.retired_seq.is_none()
    }
}
