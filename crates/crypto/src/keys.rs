//! Organisation key pairs: Ed25519 for signing, X25519 for HPKE sealing. The directory
//! publishes the public halves. Secret halves are zeroized on drop by the dalek types.

use ed25519_dalek::SigningKey;
use x25519_dalek::StaticSecret;

use crate::{Error, Result};

/// An organisation's key pairs.
pub struct OrgKeys {
    pub key_id: String,
    signing: SigningKey,
    encryption: StaticSecret,
}

impl std::fmt::Debug for OrgKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrgKeys")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

fn random32() -> Result<[u8; 32]> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| Error::Random(e.to_string()))?;
    Ok(b)
}

impl OrgKeys {
    pub fn generate(key_id: &str) -> Result<Self> {
        Ok(Self {
            key_id: key_id.to_string(),
            signing: SigningKey::from_bytes(&random32()?),
            encryption: StaticSecret::from(random32()?),
        })
    }

    /// Ed25519 verifying key bytes.
    pub fn signing_public(&self) -> [u8; 32] {
        self.signing.verifying_key().to_bytes()
    }

    /// X25519 public key bytes.
    pub fn encryption_public(&self) -> [u8; 32] {
        x25519_dalek::PublicKey::from(&self.encryption).to_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_keys_differ_and_are_not_zero() {
        let a = OrgKeys::generate("k1").expect("keys");
        let b = OrgKeys::generate("k1").expect("keys");
        assert_ne!(a.signing_public(), b.signing_public());
        assert_ne!(a.encryption_public(), [0; 32]);
        assert!(!format!("{a:?}").contains("signing:"));
    }
}
