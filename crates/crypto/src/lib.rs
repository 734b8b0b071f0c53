//! Key material for sealpost: the development certificate authority and TLS identities
//! (rcgen, used through tonic's rustls with the ring provider), and organisation key pairs
//! for the directory. No cryptographic primitive is implemented here; this crate only
//! drives maintained libraries.
//!
//! # Layout
//! - [`tls`]: a provider's dev CA, node and client certificates, PEM files on disk.
//! - [`keys`]: organisation Ed25519 signing and X25519 encryption key pairs.

pub mod keys;
pub mod tls;

/// Errors of key generation and loading.
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
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
