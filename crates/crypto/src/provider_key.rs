//! The provider's signing key: an Ed25519 key pair, one per provider, given to every node
//! of the provider as a file (like the key-encryption key). Transport receipts and audit
//! checkpoints are signed with it; peers verify receipts with the public half, which the
//! provider publishes in its peers' trust bundles next to its CA certificate, and auditors
//! pin it to check checkpoints.
//!
//! Also the identification of a peer provider from the certificate it presented: the
//! TLS layer has already checked that the certificate chains to one of the trusted peer
//! CAs; which peer it is follows from the certificate's issuer, which must be exactly one
//! trusted CA's subject.

use std::path::Path;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sealpost_core::audit::Checkpoint;
use sealpost_core::federation::TransportReceipt;
use x509_parser::prelude::{FromDer, X509Certificate};
use zeroize::Zeroizing;

use crate::{Error, Result};

/// First line of a provider key file.
pub const PROVIDER_KEY_FILE_HEADER: &str = "sealpost-provider-key-v1";

/// A provider's receipt-signing key. Never printed.
pub struct ProviderKey {
    key: SigningKey,
}

impl std::fmt::Debug for ProviderKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderKey")
            .field("public", &self.public_hex())
            .finish_non_exhaustive()
    }
}

/// Why a receipt does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptError {
    #[error("the receipt's public key is not a valid Ed25519 key")]
    BadKey,
    #[error("the receipt signature is not 64 bytes")]
    BadSignatureLength,
    #[error("the receipt signature does not verify against {provider}'s published key")]
    BadSignature { provider: String },
}

impl ProviderKey {
    pub fn generate() -> Result<Self> {
        let mut seed = Zeroizing::new([0u8; 32]);
        getrandom::fill(seed.as_mut()).map_err(|e| Error::Random(e.to_string()))?;
        Ok(Self {
            key: SigningKey::from_bytes(&seed),
        })
    }

    /// The public half, as 64 hex characters (what trust bundles carry).
    pub fn public_hex(&self) -> String {
        hex::encode(self.key.verifying_key().to_bytes())
    }

    pub fn public(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// Writes `sealpost-provider-key-v1\n<64 hex characters of the seed>\n`, mode 0600.
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::secret_file::save(path, PROVIDER_KEY_FILE_HEADER, &self.key.to_bytes())
    }

    /// Reads a key written by [`ProviderKey::save`].
    pub fn load(path: &Path) -> Result<Self> {
        let seed = crate::secret_file::load(path, PROVIDER_KEY_FILE_HEADER, "provider key")?;
        Ok(Self {
            key: SigningKey::from_bytes(&seed),
        })
    }

    /// Signs a receipt in place (Ed25519 is deterministic: the same receipt always gets
    /// the same signature, so a duplicate delivery returns the original receipt).
    pub fn sign(&self, receipt: &mut TransportReceipt) {
        receipt.signature = self.key.sign(&receipt.signed_bytes()).to_bytes().to_vec();
    }

    /// Signs an audit checkpoint in place, naming this key as its signer.
    pub fn sign_checkpoint(&self, checkpoint: &mut Checkpoint) {
        checkpoint.public_key = self.public();
        checkpoint.signature = self
            .key
            .sign(&checkpoint.signed_bytes())
            .to_bytes()
            .to_vec();
    }
}

/// Why a checkpoint's signature does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointSignatureError {
    #[error("the checkpoint's public key is not a valid Ed25519 key")]
    BadKey,
    #[error("the checkpoint signature is not 64 bytes")]
    BadSignatureLength,
    #[error("the checkpoint signature does not verify against the key it names")]
    BadSignature,
    #[error("the checkpoint is signed by key {found}, not the expected {expected}")]
    UnexpectedKey { expected: String, found: String },
}

/// Verifies a checkpoint's signature against the key it names and, when given, checks that
/// this key is the one the auditor expects for the provider.
pub fn verify_checkpoint(
    checkpoint: &Checkpoint,
    expected_key: Option<&[u8; 32]>,
) -> std::result::Result<(), CheckpointSignatureError> {
    if let Some(want) = expected_key
        && want != &checkpoint.public_key
    {
        return Err(CheckpointSignatureError::UnexpectedKey {
            expected: hex::encode(want),
            found: hex::encode(checkpoint.public_key),
        });
    }
    verify_ed25519(
        &checkpoint.public_key,
        &checkpoint.signed_bytes(),
        &checkpoint.signature,
    )
    .map_err(|p| match p {
        SignatureProblem::BadKey => CheckpointSignatureError::BadKey,
        SignatureProblem::BadLength => CheckpointSignatureError::BadSignatureLength,
        SignatureProblem::Mismatch => CheckpointSignatureError::BadSignature,
    })
}

/// Parses a public key given as 64 hex characters.
pub fn parse_public_hex(s: &str) -> Option<[u8; 32]> {
    let bytes = hex::decode(s.trim()).ok()?;
    let key: [u8; 32] = bytes.try_into().ok()?;
    VerifyingKey::from_bytes(&key).ok()?;
    Some(key)
}

/// Verifies a receipt against its provider's published key.
pub fn verify_receipt(
    public: &[u8; 32],
    receipt: &TransportReceipt,
) -> std::result::Result<(), ReceiptError> {
    verify_ed25519(public, &receipt.signed_bytes(), &receipt.signature).map_err(|p| match p {
        SignatureProblem::BadKey => ReceiptError::BadKey,
        SignatureProblem::BadLength => ReceiptError::BadSignatureLength,
        SignatureProblem::Mismatch => ReceiptError::BadSignature {
            provider: receipt.provider.clone(),
        },
    })
}

/// Why an Ed25519 signature does not verify.
enum SignatureProblem {
    BadKey,
    BadLength,
    Mismatch,
}

/// Strict Ed25519 verification of `signature` over `message` by `public`.
fn verify_ed25519(
    public: &[u8; 32],
    message: &[u8],
    signature: &[u8],
) -> std::result::Result<(), SignatureProblem> {
    let key = VerifyingKey::from_bytes(public).map_err(|_| SignatureProblem::BadKey)?;
    let sig: [u8; 64] = signature
        .try_into()
        .map_err(|_| SignatureProblem::BadLength)?;
    key.verify_strict(message, &Signature::from_bytes(&sig))
        .map_err(|_| SignatureProblem::Mismatch)
}

/// The raw subject of a CA certificate given as PEM (the first certificate in it).
pub fn ca_subject(pem: &str) -> Option<Vec<u8>> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    let (_, cert) = X509Certificate::from_der(&p.contents).ok()?;
    Some(cert.subject().as_raw().to_vec())
}

/// The raw issuer of a DER certificate.
pub fn issuer_of(der: &[u8]) -> Option<Vec<u8>> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some(cert.issuer().as_raw().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sealpost_core::message::MessageId;

    fn receipt() -> TransportReceipt {
        TransportReceipt {
            message_id: MessageId::new("prov-a", "01890a5d-ac96-774b-bcce-b302099a8057")
                .expect("id"),
            header_digest: [3; 32],
            provider: "prov-b".into(),
            seq: 42,
            ts_ms: 1_700_000_000_000,
            signature: Vec::new(),
        }
    }

    /// A signed receipt verifies with the provider's public key, survives a save and load
    /// of the key, and any change to it or another provider's key is refused.
    #[test]
    fn receipts_verify_only_unchanged_and_with_the_right_key() {
        let dir = tempfile::tempdir().expect("tmp");
        let key = ProviderKey::generate().expect("key");
        key.save(&dir.path().join("pk")).expect("save");
        let key = ProviderKey::load(&dir.path().join("pk")).expect("load");
        let public = parse_public_hex(&key.public_hex()).expect("public");
        let mut r = receipt();
        key.sign(&mut r);
        verify_receipt(&public, &r).expect("verifies");
        let mut again = receipt();
        key.sign(&mut again);
        assert_eq!(again, r, "deterministic: a duplicate gets the same receipt");
        let mut altered = r.clone();
        altered.seq += 1;
        assert!(matches!(
            verify_receipt(&public, &altered),
            Err(ReceiptError::BadSignature { .. })
        ));
        let other = ProviderKey::generate().expect("other");
        assert!(verify_receipt(&other.public(), &r).is_err());
        assert!(format!("{key:?}").contains(&key.public_hex()));
        std::fs::write(dir.path().join("bad"), "nope\n").expect("write");
        assert!(ProviderKey::load(&dir.path().join("bad")).is_err());
    }

    /// A node certificate's issuer is its CA's subject, and differs between providers.
    #[test]
    fn a_certificate_names_its_ca() {
        let a = crate::tls::DevCa::generate("prov-a").expect("ca a");
        let b = crate::tls::DevCa::generate("prov-b").expect("ca b");
        let node = a
            .issue_node("prov-a-node-1", &["127.0.0.1".into()])
            .expect("node");
        let (_, p) = x509_parser::pem::parse_x509_pem(node.cert_pem.as_bytes()).expect("pem");
        let issuer = issuer_of(&p.contents).expect("issuer");
        assert_eq!(Some(issuer.clone()), ca_subject(a.cert_pem()));
        assert_ne!(Some(issuer), ca_subject(b.cert_pem()));
    }

    /// A signed checkpoint verifies; a change to any signed field, another signer or a
    /// key other than the pinned one is refused.
    #[test]
    fn checkpoints_verify_only_unchanged_and_with_the_pinned_key() {
        let key = ProviderKey::generate().expect("key");
        let mut cp = Checkpoint {
            provider: "prov-a".into(),
            size: 10,
            chain_head: [1; 32],
            root: [2; 32],
            ts_ms: 1_700_000_000_000,
            public_key: [0; 32],
            signature: Vec::new(),
        };
        key.sign_checkpoint(&mut cp);
        verify_checkpoint(&cp, None).expect("verifies");
        verify_checkpoint(&cp, Some(&key.public())).expect("pinned");
        let other = ProviderKey::generate().expect("key");
        assert!(matches!(
            verify_checkpoint(&cp, Some(&other.public())),
            Err(CheckpointSignatureError::UnexpectedKey { .. })
        ));
        let mut bad = cp.clone();
        bad.size += 1;
        assert_eq!(
            verify_checkpoint(&bad, None),
            Err(CheckpointSignatureError::BadSignature)
        );
        let mut bad = cp.clone();
        bad.root[5] ^= 1;
        assert_eq!(
            verify_checkpoint(&bad, None),
            Err(CheckpointSignatureError::BadSignature)
        );
        let mut bad = cp.clone();
        bad.public_key = other.public();
        assert_eq!(
            verify_checkpoint(&bad, None),
            Err(CheckpointSignatureError::BadSignature)
        );
        let mut bad = cp.clone();
        bad.signature.pop();
        assert_eq!(
            verify_checkpoint(&bad, None),
            Err(CheckpointSignatureError::BadSignatureLength)
        );
    }
}
