//! Organisation key pairs: Ed25519 for signing envelope headers, X25519 for HPKE sealing.
//! The directory publishes the public halves ([`OrgKeys::public_keys`]); the secret halves
//! stay on the provider's nodes, wrapped under the provider's key-encryption key
//! ([`crate::kek`]). Secret halves are zeroized on drop by the dalek types, and every
//! intermediate copy of their bytes made here is zeroized too.

use ed25519_dalek::{Signer, SigningKey};
use sealpost_core::directory::PublicKeys;
use x25519_dalek::StaticSecret;
use zeroize::{Zeroize, Zeroizing};

use crate::{Error, Result};

/// An organisation's key pairs, named by a key id.
pub struct OrgKeys {
    pub key_id: String,
    signing: SigningKey,
    encryption: StaticSecret,
}

impl std::fmt::Debug for OrgKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secret halves.
        f.debug_struct("OrgKeys")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

fn random32() -> Result<Zeroizing<[u8; 32]>> {
    let mut b = Zeroizing::new([0u8; 32]);
    getrandom::fill(b.as_mut()).map_err(|e| Error::Random(e.to_string()))?;
    Ok(b)
}

impl OrgKeys {
    /// Fresh key pairs from the operating system's random number generator.
    pub fn generate(key_id: &str) -> Result<Self> {
        let signing = random32()?;
        let encryption = random32()?;
        Ok(Self {
            key_id: key_id.to_string(),
            signing: SigningKey::from_bytes(&signing),
            encryption: StaticSecret::from(*encryption),
        })
    }

    /// Rebuilds key pairs from their secret halves (as [`crate::kek::Kek::unwrap`] recovers
    /// them). The argument copies are zeroized before returning.
    pub(crate) fn from_secret_bytes(
        key_id: &str,
        mut signing: [u8; 32],
        mut encryption: [u8; 32],
    ) -> Self {
        let keys = Self {
            key_id: key_id.to_string(),
            signing: SigningKey::from_bytes(&signing),
            encryption: StaticSecret::from(encryption),
        };
        signing.zeroize();
        encryption.zeroize();
        keys
    }

    /// The Ed25519 secret key, for wrapping under the KEK. Borrowed, not copied.
    pub(crate) fn signing_secret(&self) -> &[u8; 32] {
        self.signing.as_bytes()
    }

    /// The X25519 secret key, for wrapping under the KEK and for HPKE opening. Borrowed, not
    /// copied.
    pub(crate) fn encryption_secret(&self) -> &[u8; 32] {
        self.encryption.as_bytes()
    }

    /// Ed25519 verifying key bytes.
    pub fn signing_public(&self) -> [u8; 32] {
        self.signing.verifying_key().to_bytes()
    }

    /// X25519 public key bytes.
    pub fn encryption_public(&self) -> [u8; 32] {
        x25519_dalek::PublicKey::from(&self.encryption).to_bytes()
    }

    /// What the directory publishes for these keys: the key id and both public halves.
    pub fn public_keys(&self) -> PublicKeys {
        PublicKeys {
            key_id: self.key_id.clone(),
            encryption: self.encryption_public(),
            signing: self.signing_public(),
        }
    }

    /// An Ed25519 signature of `msg`.
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.signing.sign(msg).to_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signature, VerifyingKey};

    #[test]
    fn fresh_keys_differ_and_are_not_zero() {
        let a = OrgKeys::generate("k1").expect("keys");
        let b = OrgKeys::generate("k1").expect("keys");
        assert_ne!(a.signing_public(), b.signing_public());
        assert_ne!(a.encryption_public(), b.encryption_public());
        assert_ne!(a.encryption_public(), [0; 32]);
        let shown = format!("{a:?}");
        assert!(!shown.contains("signing:"));
        assert!(!shown.contains(&hex::encode(a.signing_secret())));
    }

    #[test]
    fn public_keys_match_the_halves_and_validate() {
        let k = OrgKeys::generate("2026-01").expect("keys");
        let p = k.public_keys();
        assert_eq!(p.key_id, "2026-01");
        assert_eq!(p.signing, k.signing_public());
        assert_eq!(p.encryption, k.encryption_public());
        assert_ne!(p.signing, p.encryption);
        p.validate().expect("publishable");
    }

    #[test]
    fn signatures_verify_only_for_the_signed_message() {
        let k = OrgKeys::generate("k1").expect("keys");
        let sig = Signature::from_bytes(&k.sign(b"header"));
        let vk = VerifyingKey::from_bytes(&k.signing_public()).expect("vk");
        vk.verify_strict(b"header", &sig).expect("verifies");
        assert!(vk.verify_strict(b"headex", &sig).is_err());
        let other = OrgKeys::generate("k1").expect("keys");
        let vk2 = VerifyingKey::from_bytes(&other.signing_public()).expect("vk");
        assert!(vk2.verify_strict(b"header", &sig).is_err());
    }

    #[test]
    fn secret_bytes_rebuild_the_same_keys() {
        let k = OrgKeys::generate("k9").expect("keys");
        let back = OrgKeys::from_secret_bytes("k9", *k.signing_secret(), *k.encryption_secret());
        assert_eq!(back.public_keys(), k.public_keys());
    }
}
