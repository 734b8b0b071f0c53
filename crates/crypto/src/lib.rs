//! Key material and envelope cryptography for sealpost: the development certificate
//! authority and TLS identities (rcgen, used through tonic's rustls with the ring
//! provider), organisation key pairs for the directory, the provider's key-encryption key
//! that wraps them at rest, and sealing and opening of envelope v1 (HPKE, RFC 9180, plus
//! Ed25519 signatures). No cryptographic primitive is implemented here; this crate only
//! drives maintained libraries (hpke, ed25519-dalek, x25519-dalek, ring, rcgen).
//!
//! # Layout
//! - [`tls`]: a provider's dev CA, node and client certificates (optionally naming an
//!   organisation in a URI SAN), PEM files on disk.
//! - [`keys`]: organisation Ed25519 signing and X25519 encryption key pairs.
//! - [`kek`]: the provider's key-encryption key; wraps organisation keys with
//!   ChaCha20-Poly1305 bound to the organisation and key id.
//! - [`envelope`]: envelope v1 seal, verify and open; the crypto-only benchmark ceiling.
//! - [`provider_key`]: the provider's Ed25519 receipt-signing key, receipt verification,
//!   and naming a peer provider by the CA that issued its certificate.
//! - [`console_token`]: short-lived operator console tokens, HMAC-SHA256 under a key
//!   derived (HKDF) from the KEK.
//!
//! `ENVELOPE.md` at the repository root describes the envelope and wrap formats for
//! implementers outside this code base.

pub mod console_token;
pub mod envelope;
pub mod kek;
pub mod keys;
pub mod provider_key;
mod secret_file;
pub mod tls;

pub use envelope::OpenError;

/// Errors of key generation, loading, wrapping and sealing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("certificate generation failed: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("random number generator failed: {0}")]
    Random(String),
    #[error("{path} does not hold what was expected: {problem}")]
    BadFile {
        path: std::path::PathBuf,
        problem: String,
    },
    /// The wrapped keys name a KEK other than the one loaded.
    #[error(
        "the keys of {org} (key id {key_id}) were wrapped by KEK {wrapped_by}, but the loaded \
         KEK is {loaded}: load the KEK they were wrapped with"
    )]
    WrongKek {
        org: String,
        key_id: String,
        wrapped_by: String,
        loaded: String,
    },
    /// The wrapped keys name the loaded KEK but do not authenticate.
    #[error(
        "the wrapped keys of {org} (key id {key_id}) do not authenticate under KEK {kek}: \
         they are damaged, or were wrapped for another organisation or key id"
    )]
    WrappedKeysDamaged {
        org: String,
        key_id: String,
        kek: String,
    },
    /// The wrapped keys are not in the wrap format this build reads.
    #[error("the wrapped keys of {org} (key id {key_id}) are not in the v1 wrap format: {problem}")]
    WrappedKeysFormat {
        org: String,
        key_id: String,
        problem: String,
    },
    /// Wrapping failed inside the AEAD (not expected to happen).
    #[error("wrapping the keys of {org} (key id {key_id}) failed")]
    Wrap { org: String, key_id: String },
    /// The header handed to [`envelope::seal`] would not make a valid envelope.
    #[error("cannot seal: the header is invalid: {0}")]
    InvalidHeader(#[from] sealpost_core::directory::FieldError),
    /// No public keys were given for a recipient organisation of the header.
    #[error("cannot seal: no public keys given for recipient organisation {0}")]
    NoRecipientKeys(String),
    /// The public keys given for a recipient organisation are unusable.
    #[error("cannot seal to {org}: its public keys are unusable: {problem}")]
    BadRecipientKeys { org: String, problem: String },
    /// HPKE refused to seal (not expected to happen with valid keys).
    #[error("HPKE sealing to {org} (key id {key_id}) failed: {reason}")]
    Seal {
        org: String,
        key_id: String,
        reason: String,
    },
    /// An envelope did not open or verify.
    #[error("envelope did not open: {0}")]
    Open(#[from] OpenError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
