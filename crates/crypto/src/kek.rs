//! The provider's key-encryption key (KEK): a 32-byte secret that wraps organisation key
//! pairs so their secret halves are never stored or replicated in the clear.
//!
//! Wrapping is ring's ChaCha20-Poly1305 with a random 96-bit nonce. The associated data
//! binds a wrapped blob to its organisation and key id, so a blob moved to another
//! organisation or key id does not unwrap. Each blob names the KEK that wrapped it (the
//! first 8 bytes of SHA-256 of the key), so loading the wrong KEK gives a clear error
//! rather than a generic authentication failure. The format is in `ENVELOPE.md`.

use std::path::Path;

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use sealpost_core::ids::HpiO;
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

use crate::keys::OrgKeys;
use crate::{Error, Result};

/// First line of a KEK file.
pub const KEK_FILE_HEADER: &str = "sealpost-kek-v1";
/// Version byte at the start of a wrapped key blob.
pub const WRAP_VERSION: u8 = 1;
/// Label at the start of the wrap's associated data.
pub const WRAP_AAD_LABEL: &[u8] = b"sealpost-kek-wrap-v1";
/// Length of a KEK id, in bytes.
pub const KEK_ID_BYTES: usize = 8;
/// Length of the wrapped plaintext: Ed25519 secret then X25519 secret.
const SECRETS_BYTES: usize = 64;
/// Length of the AEAD tag.
const TAG_BYTES: usize = 16;
/// Bytes before the ciphertext: version, KEK id, nonce.
const PREFIX_BYTES: usize = 1 + KEK_ID_BYTES + NONCE_LEN;
/// Length of a wrapped key blob.
pub const WRAPPED_BYTES: usize = PREFIX_BYTES + SECRETS_BYTES + TAG_BYTES;

/// The provider's key-encryption key.
pub struct Kek {
    key: Zeroizing<[u8; 32]>,
    id: [u8; KEK_ID_BYTES],
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Only the id: never the key.
        f.debug_struct("Kek").field("id", &self.id_hex()).finish()
    }
}

/// The id (16 hex characters) of the KEK a wrapped key blob names, when the blob is in the
/// wrap format this build reads.
pub fn wrapped_by(wrapped: &[u8]) -> Option<String> {
    if wrapped.len() != WRAPPED_BYTES || wrapped.first() != Some(&WRAP_VERSION) {
        return None;
    }
    wrapped.get(1..1 + KEK_ID_BYTES).map(hex::encode)
}

fn wrap_aad(org: &HpiO, key_id: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(WRAP_AAD_LABEL.len() + org.as_str().len() + 1 + key_id.len());
    aad.extend_from_slice(WRAP_AAD_LABEL);
    aad.extend_from_slice(org.as_str().as_bytes());
    aad.push(0);
    aad.extend_from_slice(key_id.as_bytes());
    aad
}

impl Kek {
    fn from_key(key: Zeroizing<[u8; 32]>) -> Self {
        let digest = Sha256::digest(key.as_ref());
        let mut id = [0u8; KEK_ID_BYTES];
        id.copy_from_slice(&digest[..KEK_ID_BYTES]);
        Self { key, id }
    }

    /// A fresh KEK from the operating system's random number generator.
    pub fn generate() -> Result<Kek> {
        let mut key = Zeroizing::new([0u8; 32]);
        getrandom::fill(key.as_mut()).map_err(|e| Error::Random(e.to_string()))?;
        Ok(Self::from_key(key))
    }

    /// The key itself, for deriving other keys from it inside this crate only.
    pub(crate) fn secret_bytes(&self) -> &[u8] {
        self.key.as_ref()
    }

    /// The KEK's id: the first 8 bytes of SHA-256 of the key, as 16 hex characters.
    pub fn id_hex(&self) -> String {
        hex::encode(self.id)
    }

    /// Writes the KEK as `sealpost-kek-v1\n<64 hex characters>\n`, readable by the owner
    /// only (mode 0600).
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::secret_file::save(path, KEK_FILE_HEADER, &self.key)
    }

    /// Reads a KEK written by [`Kek::save`].
    pub fn load(path: &Path) -> Result<Kek> {
        Ok(Self::from_key(crate::secret_file::load(
            path,
            KEK_FILE_HEADER,
            "KEK",
        )?))
    }

    /// A KEK given as 64 hex characters (an environment variable's value); `source`
    /// names where it came from in errors.
    pub fn from_hex(hex: &str, source: &str) -> Result<Kek> {
        Ok(Self::from_key(crate::secret_file::parse_key_line(
            hex.trim(),
            std::path::Path::new(source),
        )?))
    }

    fn aead_key(&self) -> LessSafeKey {
        LessSafeKey::new(
            UnboundKey::new(&CHACHA20_POLY1305, self.key.as_ref())
                .expect("a KEK is 32 bytes, the ChaCha20-Poly1305 key length"),
        )
    }

    /// Wraps an organisation's secret keys: `1 || KEK id (8) || nonce (12) ||
    /// ChaCha20-Poly1305(Ed25519 secret (32) || X25519 secret (32)) || tag (16)`, with
    /// associated data `"sealpost-kek-wrap-v1" || org || 0x00 || key id`.
    pub fn wrap(&self, org: &HpiO, keys: &OrgKeys) -> Result<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|e| Error::Random(e.to_string()))?;
        let mut out = Vec::with_capacity(WRAPPED_BYTES);
        out.push(WRAP_VERSION);
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(keys.signing_secret());
        out.extend_from_slice(keys.encryption_secret());
        let aad = wrap_aad(org, &keys.key_id);
        let sealed = self.aead_key().seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&aad[..]),
            &mut out[PREFIX_BYTES..],
        );
        match sealed {
            Ok(tag) => {
                out.extend_from_slice(tag.as_ref());
                Ok(out)
            }
            Err(_) => {
                // The buffer may still hold secret bytes.
                out.zeroize();
                Err(Error::Wrap {
                    org: org.to_string(),
                    key_id: keys.key_id.clone(),
                })
            }
        }
    }

    /// Unwraps keys wrapped by [`Kek::wrap`] for the same organisation and key id.
    pub fn unwrap(&self, org: &HpiO, key_id: &str, wrapped: &[u8]) -> Result<OrgKeys> {
        let format = |problem: String| Error::WrappedKeysFormat {
            org: org.to_string(),
            key_id: key_id.to_string(),
            problem,
        };
        match wrapped.first() {
            None => return Err(format("the blob is empty".into())),
            Some(&WRAP_VERSION) => {}
            Some(v) => {
                return Err(format(format!(
                    "version {v}, this build reads version {WRAP_VERSION}"
                )));
            }
        }
        if wrapped.len() != WRAPPED_BYTES {
            return Err(format(format!(
                "{} bytes, expected {WRAPPED_BYTES}",
                wrapped.len()
            )));
        }
        let id = &wrapped[1..1 + KEK_ID_BYTES];
        if id != self.id {
            return Err(Error::WrongKek {
                org: org.to_string(),
                key_id: key_id.to_string(),
                wrapped_by: hex::encode(id),
                loaded: self.id_hex(),
            });
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&wrapped[1 + KEK_ID_BYTES..PREFIX_BYTES]);
        let mut buf = Zeroizing::new(wrapped[PREFIX_BYTES..].to_vec());
        let aad = wrap_aad(org, key_id);
        let plain = self
            .aead_key()
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&aad[..]),
                buf.as_mut_slice(),
            )
            .map_err(|_| Error::WrappedKeysDamaged {
                org: org.to_string(),
                key_id: key_id.to_string(),
                kek: self.id_hex(),
            })?;
        let mut signing = Zeroizing::new([0u8; 32]);
        let mut encryption = Zeroizing::new([0u8; 32]);
        signing.copy_from_slice(&plain[..32]);
        encryption.copy_from_slice(&plain[32..SECRETS_BYTES]);
        Ok(OrgKeys::from_secret_bytes(key_id, *signing, *encryption))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn org(n: u64) -> HpiO {
        HpiO::from_serial(n)
    }

    #[test]
    fn a_kek_from_the_environment_is_the_one_in_the_file() {
        let dir = tempfile::tempdir().expect("tmp");
        let kek = Kek::generate().expect("kek");
        kek.save(&dir.path().join("kek")).expect("save");
        let text = std::fs::read_to_string(dir.path().join("kek")).expect("read");
        let hex_line = text.lines().nth(1).expect("key line");
        let from_env = Kek::from_hex(&format!(" {hex_line}\n"), "$SEALPOST_KEK").expect("hex");
        assert_eq!(from_env.id_hex(), kek.id_hex());
        let keys = OrgKeys::generate("k1").expect("keys");
        let w = kek.wrap(&org(1), &keys).expect("wrap");
        from_env
            .unwrap(&org(1), "k1", &w)
            .expect("the same key unwraps");
        for bad in ["", "abc", &"0".repeat(64), &"zz".repeat(32)] {
            let e = Kek::from_hex(bad, "$SEALPOST_KEK").expect_err("refused");
            assert!(e.to_string().contains("$SEALPOST_KEK"), "{e}");
        }
    }

    #[test]
    fn wrap_round_trips_and_has_the_documented_layout() {
        let kek = Kek::generate().expect("kek");
        let keys = OrgKeys::generate("2026-01").expect("keys");
        let w = kek.wrap(&org(1), &keys).expect("wrap");
        assert_eq!(w.len(), WRAPPED_BYTES);
        assert_eq!(w.len(), 101);
        assert_eq!(w[0], 1);
        assert_eq!(hex::encode(&w[1..9]), kek.id_hex());
        // The secrets are not in the blob in the clear.
        assert!(!w.windows(32).any(|x| x == keys.signing_secret()));
        assert!(!w.windows(32).any(|x| x == keys.encryption_secret()));
        let back = kek.unwrap(&org(1), "2026-01", &w).expect("unwrap");
        assert_eq!(back.key_id, "2026-01");
        assert_eq!(back.public_keys(), keys.public_keys());
        // Two wraps of the same keys differ (fresh nonce).
        assert_ne!(kek.wrap(&org(1), &keys).expect("wrap"), w);
    }

    #[test]
    fn wrap_is_bound_to_org_and_key_id() {
        let kek = Kek::generate().expect("kek");
        let keys = OrgKeys::generate("k1").expect("keys");
        let w = kek.wrap(&org(1), &keys).expect("wrap");
        for (o, k) in [(org(2), "k1"), (org(1), "k2"), (org(1), "k1\0")] {
            let err = kek.unwrap(&o, k, &w).expect_err("must not unwrap");
            assert!(matches!(err, Error::WrappedKeysDamaged { .. }), "{err}");
            assert!(err.to_string().contains("do not authenticate"), "{err}");
        }
    }

    #[test]
    fn a_wrapped_blob_names_its_kek() {
        let (a, b) = (Kek::generate().expect("kek"), Kek::generate().expect("kek"));
        let org = HpiO::from_serial(7);
        let keys = OrgKeys::generate("k1").expect("keys");
        let wrapped = a.wrap(&org, &keys).expect("wrap");
        assert_eq!(wrapped_by(&wrapped), Some(a.id_hex()));
        assert_ne!(wrapped_by(&wrapped), Some(b.id_hex()));
        assert_eq!(wrapped_by(&wrapped[1..]), None, "too short");
        let mut other_version = wrapped.clone();
        other_version[0] = WRAP_VERSION + 1;
        assert_eq!(wrapped_by(&other_version), None);
    }

    #[test]
    fn another_kek_is_named_in_the_error() {
        let kek = Kek::generate().expect("kek");
        let other = Kek::generate().expect("kek");
        assert_ne!(kek.id_hex(), other.id_hex());
        let keys = OrgKeys::generate("k1").expect("keys");
        let w = kek.wrap(&org(1), &keys).expect("wrap");
        let err = other.unwrap(&org(1), "k1", &w).expect_err("wrong kek");
        let msg = err.to_string();
        assert!(matches!(err, Error::WrongKek { .. }));
        assert!(msg.contains(&kek.id_hex()), "{msg}");
        assert!(msg.contains(&other.id_hex()), "{msg}");
    }

    #[test]
    fn any_flipped_byte_is_refused() {
        let kek = Kek::generate().expect("kek");
        let keys = OrgKeys::generate("k1").expect("keys");
        let w = kek.wrap(&org(1), &keys).expect("wrap");
        for i in 0..w.len() {
            let mut bad = w.clone();
            bad[i] ^= 0x01;
            let err = kek.unwrap(&org(1), "k1", &bad).expect_err("flipped");
            match i {
                0 => assert!(matches!(err, Error::WrappedKeysFormat { .. }), "{err}"),
                1..=8 => assert!(matches!(err, Error::WrongKek { .. }), "{err}"),
                _ => assert!(matches!(err, Error::WrappedKeysDamaged { .. }), "{err}"),
            }
        }
    }

    #[test]
    fn wrong_lengths_and_versions_are_refused() {
        let kek = Kek::generate().expect("kek");
        let keys = OrgKeys::generate("k1").expect("keys");
        let w = kek.wrap(&org(1), &keys).expect("wrap");
        for bad in [
            &[][..],
            &w[..w.len() - 1],
            &[w.clone(), vec![0]].concat()[..],
        ] {
            let err = kek.unwrap(&org(1), "k1", bad).expect_err("length");
            assert!(matches!(err, Error::WrappedKeysFormat { .. }), "{err}");
        }
        let mut v2 = w.clone();
        v2[0] = 2;
        let err = kek.unwrap(&org(1), "k1", &v2).expect_err("version");
        assert!(err.to_string().contains("version 2"), "{err}");
    }

    #[test]
    fn save_and_load_round_trip_with_mode_0600() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secrets").join("kek");
        let kek = Kek::generate().expect("kek");
        kek.save(&path).expect("save");
        let mode = std::fs::metadata(&path)
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
            .expect("meta");
        assert_eq!(mode, 0o600);
        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<&str> = text.split('\n').collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0], "sealpost-kek-v1");
        assert_eq!(lines[1].len(), 64);
        assert_eq!(lines[2], "");
        let back = Kek::load(&path).expect("load");
        assert_eq!(back.id_hex(), kek.id_hex());
        let keys = OrgKeys::generate("k1").expect("keys");
        let w = kek.wrap(&org(1), &keys).expect("wrap");
        back.unwrap(&org(1), "k1", &w).expect("loaded KEK unwraps");
        // Saving over an existing file keeps it private.
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .expect("chmod");
        back.save(&path).expect("save again");
        let mode = std::fs::metadata(&path)
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
            .expect("meta");
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        let dir = tempfile::tempdir().expect("tempdir");
        let good_hex = "ab".repeat(32);
        let cases = [
            (
                "sealpost-kek-v2\n".to_string() + &good_hex + "\n",
                "first line",
            ),
            (
                "sealpost-kek-v1\n".to_string() + &good_hex[..62] + "\n",
                "62 characters",
            ),
            (
                "sealpost-kek-v1\n".to_string() + &"zz".repeat(32) + "\n",
                "not hexadecimal",
            ),
            (
                "sealpost-kek-v1\n".to_string() + &good_hex + "\nmore\n",
                "after the key",
            ),
            (
                "sealpost-kek-v1\n".to_string() + &"00".repeat(32) + "\n",
                "all zeroes",
            ),
            ("sealpost-kek-v1\n".to_string(), "0 characters"),
        ];
        for (i, (text, expect)) in cases.iter().enumerate() {
            let path = dir.path().join(format!("kek{i}"));
            std::fs::write(&path, text).expect("write");
            let err = Kek::load(&path).expect_err("bad file");
            assert!(matches!(err, Error::BadFile { .. }), "{err}");
            let msg = err.to_string();
            assert!(msg.contains(expect), "{msg} lacks {expect:?}");
            assert!(!msg.contains(&good_hex), "{msg} shows key material");
        }
        // CRLF line ends are tolerated.
        let path = dir.path().join("crlf");
        std::fs::write(&path, format!("sealpost-kek-v1\r\n{good_hex}\r\n")).expect("write");
        Kek::load(&path).expect("crlf");
        let err = Kek::load(&dir.path().join("missing")).expect_err("missing");
        assert!(matches!(err, Error::Io { .. }));
    }

    #[test]
    fn debug_shows_only_the_id() {
        let kek = Kek::generate().expect("kek");
        let shown = format!("{kek:?}");
        assert!(shown.contains(&kek.id_hex()));
        assert!(!shown.contains(&hex::encode(kek.key.as_ref())));
        assert_eq!(kek.id_hex().len(), 16);
    }
}
