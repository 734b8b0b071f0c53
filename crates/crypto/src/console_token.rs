//! Operator console tokens: short-lived bearer tokens that let an operator's browser use a
//! node's console without a client certificate. An operator (authenticated by mutual TLS)
//! asks any node for one; any node of the same provider verifies it, because the MAC key
//! is derived from the provider's KEK, which every node holds.
//!
//! The key is HKDF-SHA256 of the KEK (ring's `hkdf`, info `sealpost-console-token-v1`), the
//! MAC HMAC-SHA256 (ring's `hmac`, compared in constant time). A token reads
//! `spc1.<expiry ms>.<subject hex>.<mac hex>`; the MAC covers `spc1.<expiry>.<subject hex>`.
//! It names who it was minted for, so what the console does is recorded under that name.

use ring::{hkdf, hmac};

use crate::kek::Kek;

/// What a token starts with (and the version the MAC covers).
pub const TOKEN_PREFIX: &str = "spc1";
/// HKDF info of the console token key.
const KEY_INFO: &[u8] = b"sealpost-console-token-v1";
/// Bytes of a subject a token may name, at most.
pub const TOKEN_SUBJECT_BYTES_MAX: usize = 256;
/// Characters of a token, at most (longer input is refused before any parsing).
pub const TOKEN_CHARS_MAX: usize = 16 + 2 * TOKEN_SUBJECT_BYTES_MAX + 64 + 32;

/// Why a token was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("the console token is malformed: {0}")]
    Malformed(&'static str),
    #[error("the console token does not verify (minted by another provider, or altered)")]
    BadMac,
    #[error("the console token expired at {expired_ms} ms (now {now_ms} ms): mint a new one")]
    Expired { expired_ms: u64, now_ms: u64 },
}

/// Mints and verifies console tokens.
pub struct ConsoleTokens {
    key: hmac::Key,
}

impl std::fmt::Debug for ConsoleTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleTokens").finish_non_exhaustive()
    }
}

impl ConsoleTokens {
    /// The token key of the provider whose KEK is `kek`.
    pub fn new(kek: &Kek) -> Self {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &[]).extract(kek.secret_bytes());
        let okm = prk
            .expand(&[KEY_INFO], hmac::HMAC_SHA256)
            .expect("HMAC-SHA256 key length is a valid HKDF-SHA256 output length");
        Self {
            key: hmac::Key::from(okm),
        }
    }

    /// A token for `subject`, valid until `expires_ms` (ms since the Unix epoch).
    pub fn mint(&self, subject: &str, expires_ms: u64) -> Result<String, TokenError> {
        if subject.is_empty() || subject.len() > TOKEN_SUBJECT_BYTES_MAX {
            return Err(TokenError::Malformed("the subject is empty or too long"));
        }
        let body = format!("{TOKEN_PREFIX}.{expires_ms}.{}", hex::encode(subject));
        let tag = hmac::sign(&self.key, body.as_bytes());
        Ok(format!("{body}.{}", hex::encode(tag.as_ref())))
    }

    /// The subject `token` was minted for, if it verifies and has not expired at `now_ms`.
    pub fn verify(&self, token: &str, now_ms: u64) -> Result<String, TokenError> {
        if token.len() > TOKEN_CHARS_MAX {
            return Err(TokenError::Malformed("too long"));
        }
        let (body, mac_hex) = token
            .rsplit_once('.')
            .ok_or(TokenError::Malformed("no MAC"))?;
        let mac = hex::decode(mac_hex).map_err(|_| TokenError::Malformed("the MAC is not hex"))?;
        hmac::verify(&self.key, body.as_bytes(), &mac).map_err(|_| TokenError::BadMac)?;
        let mut parts = body.split('.');
        if parts.next() != Some(TOKEN_PREFIX) {
            return Err(TokenError::Malformed("not a v1 console token"));
        }
        let expires_ms: u64 = parts
            .next()
            .and_then(|e| e.parse().ok())
            .ok_or(TokenError::Malformed("no expiry"))?;
        let subject = parts
            .next()
            .and_then(|s| hex::decode(s).ok())
            .and_then(|s| String::from_utf8(s).ok())
            .ok_or(TokenError::Malformed("no subject"))?;
        if parts.next().is_some() {
            return Err(TokenError::Malformed("extra fields"));
        }
        if now_ms >= expires_ms {
            return Err(TokenError::Expired {
                expired_ms: expires_ms,
                now_ms,
            });
        }
        Ok(subject)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_verifies_until_it_expires_and_names_its_subject() {
        let t = ConsoleTokens::new(&Kek::generate().expect("kek"));
        let token = t.mint("operator ops-1", 2_000).expect("mint");
        assert_eq!(t.verify(&token, 1_999), Ok("operator ops-1".into()));
        assert_eq!(
            t.verify(&token, 2_000),
            Err(TokenError::Expired {
                expired_ms: 2_000,
                now_ms: 2_000
            })
        );
    }

    #[test]
    fn another_kek_an_altered_expiry_or_garbage_is_refused() {
        let kek = Kek::generate().expect("kek");
        let t = ConsoleTokens::new(&kek);
        let token = t.mint("operator ops-1", 2_000).expect("mint");
        let other = ConsoleTokens::new(&Kek::generate().expect("kek"));
        assert_eq!(other.verify(&token, 1), Err(TokenError::BadMac));
        // The same KEK again verifies: every node of a provider derives the same key.
        let dir = tempfile::tempdir().expect("tmp");
        kek.save(&dir.path().join("kek")).expect("save");
        let again = ConsoleTokens::new(&Kek::load(&dir.path().join("kek")).expect("load"));
        assert!(again.verify(&token, 1).is_ok());
        let longer = token.replacen(".2000.", ".9999999.", 1);
        assert_eq!(t.verify(&longer, 1), Err(TokenError::BadMac));
        assert!(matches!(t.verify("x", 1), Err(TokenError::Malformed(_))));
        assert!(matches!(
            t.verify(&"a".repeat(TOKEN_CHARS_MAX + 1), 1),
            Err(TokenError::Malformed(_))
        ));
        assert!(t.mint("", 1).is_err());
    }
}
