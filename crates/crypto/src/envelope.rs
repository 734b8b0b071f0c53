//! Envelope v1 sealing, verification and opening: the sender's Ed25519 signature over the
//! header's signed bytes, and one HPKE (RFC 9180) base-mode copy of the payload per
//! recipient organisation, with suite DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 /
//! ChaCha20-Poly1305.
//!
//! The bytes signed and bound (HPKE info and aad) are built by `sealpost_core::message`;
//! this module only drives hpke and ed25519-dalek over them. Opening checks, in order: the
//! signature, the version, that a copy exists for the organisation, its key id, HPKE, and
//! the payload's size and digest; each failure maps 1:1 to a
//! [`FailReason`](sealpost_core::message::FailReason). Plaintext is returned in a
//! zeroizing buffer, and no error carries payload bytes. `ENVELOPE.md` describes the format.

use ed25519_dalek::{Signature, VerifyingKey};
use hpke::aead::{AeadTag, ChaCha20Poly1305};
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem as KemTrait, OpModeR, OpModeS, Serializable};
use sealpost_core::directory::{PayloadType, PublicKeys};
use sealpost_core::ids::{EndpointId, HpiO};
use sealpost_core::message::{
    AEAD_TAG_BYTES, ENVELOPE_VERSION, Envelope, EnvelopeHeader, FailReason, MessageId, Priority,
    SealedCopy, Sender, payload_digest,
};
use zeroize::Zeroizing;

use crate::keys::OrgKeys;
use crate::{Error, Result};

type Kem = X25519HkdfSha256;
type Kdf = HkdfSha256;
type Aead = ChaCha20Poly1305;

/// RFC 9180 KEM id of DHKEM(X25519, HKDF-SHA256).
pub const KEM_ID: u16 = 0x0020;
/// RFC 9180 KDF id of HKDF-SHA256.
pub const KDF_ID: u16 = 0x0001;
/// RFC 9180 AEAD id of ChaCha20-Poly1305.
pub const AEAD_ID: u16 = 0x0003;

const TAG_BYTES: usize = AEAD_TAG_BYTES as usize;

/// Why an envelope did not verify or open. Each maps 1:1 to a [`FailReason`]. The messages
/// never include payload bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("the sender's signature over the envelope header does not verify")]
    BadSignature,
    #[error("the copy for this organisation is sealed to a key id the recipient does not hold")]
    UnknownKey,
    #[error("the opened payload does not match the size or digest in the signed header")]
    DigestMismatch,
    #[error(
        "the sealed copy does not open with the recipient's key (altered, or bound to another \
         header, organisation or key)"
    )]
    DecryptionFailed,
    #[error(
        "the envelope is malformed (unknown version, no copy for the organisation, or bad sizes)"
    )]
    Malformed,
}

impl OpenError {
    /// The failure reason recorded for the recipient.
    pub fn reason(self) -> FailReason {
        match self {
            OpenError::BadSignature => FailReason::BadSignature,
            OpenError::UnknownKey => FailReason::UnknownKey,
            OpenError::DigestMismatch => FailReason::DigestMismatch,
            OpenError::DecryptionFailed => FailReason::DecryptionFailed,
            OpenError::Malformed => FailReason::Malformed,
        }
    }
}

/// Seals `payload` into an envelope: fills in the header's payload digest, payload size and
/// sender key id, signs the header's signed bytes with the sender's Ed25519 key, and seals
/// one copy per distinct recipient organisation (in [`EnvelopeHeader::recipient_orgs`]
/// order) to that organisation's key in `recipients`, with HPKE info
/// [`EnvelopeHeader::hpke_info`] and aad [`EnvelopeHeader::digest`].
///
/// Refuses a header that would not make a valid envelope, and a recipient organisation
/// with no (or unusable) public keys in `recipients`. The result passes
/// [`Envelope::validate`] for any payload limit at least the payload's size.
pub fn seal(
    mut header: EnvelopeHeader,
    sender: &OrgKeys,
    recipients: &[(HpiO, PublicKeys)],
    payload: &[u8],
) -> Result<Envelope> {
    header.payload_digest = payload_digest(payload);
    header.payload_bytes = payload.len() as u64;
    header.sender_key_id = sender.key_id.clone();
    header.validate(u64::MAX)?;
    let signature = sender.sign(&header.signed_bytes()).to_vec();
    let aad = header.digest();
    let orgs = header.recipient_orgs();
    let mut sealed = Vec::with_capacity(orgs.len());
    for org in orgs {
        let keys = recipients
            .iter()
            .find(|(o, _)| o == &org)
            .map(|(_, k)| k)
            .ok_or_else(|| Error::NoRecipientKeys(org.to_string()))?;
        keys.validate().map_err(|e| Error::BadRecipientKeys {
            org: org.to_string(),
            problem: e.to_string(),
        })?;
        sealed.push(seal_copy(&header, org, keys, payload, &aad)?);
    }
    Ok(Envelope {
        header,
        signature,
        sealed,
    })
}

fn seal_copy(
    header: &EnvelopeHeader,
    org: HpiO,
    keys: &PublicKeys,
    payload: &[u8],
    aad: &[u8],
) -> Result<SealedCopy> {
    let fail = |reason: String| Error::Seal {
        org: org.to_string(),
        key_id: keys.key_id.clone(),
        reason,
    };
    let pk = <Kem as KemTrait>::PublicKey::from_bytes(&keys.encryption)
        .map_err(|e| fail(e.to_string()))?;
    let info = header.hpke_info(&org, &keys.key_id);
    // Sealed in place in a zeroizing buffer: the plaintext copy never outlives this call.
    let mut buf = Zeroizing::new(Vec::with_capacity(payload.len() + TAG_BYTES));
    buf.extend_from_slice(payload);
    let (enc, tag) = hpke::single_shot_seal_inout_detached::<Aead, Kdf, Kem>(
        &OpModeS::Base,
        &pk,
        &info,
        buf.as_mut_slice().into(),
        aad,
    )
    .map_err(|e| fail(e.to_string()))?;
    buf.extend_from_slice(&tag.to_bytes());
    let ciphertext = std::mem::take(&mut *buf);
    Ok(SealedCopy {
        key_id: keys.key_id.clone(),
        enc: enc.to_bytes().to_vec(),
        ciphertext,
        org,
    })
}

/// Checks the sender's Ed25519 signature (strict verification) over the header's signed
/// bytes. A signature that is not 64 bytes, or a sender key that is not a valid Ed25519
/// point, fails as [`OpenError::BadSignature`].
pub fn verify(env: &Envelope, sender_signing: &[u8; 32]) -> Result<(), OpenError> {
    let sig: [u8; 64] = env
        .signature
        .as_slice()
        .try_into()
        .map_err(|_| OpenError::BadSignature)?;
    let vk = VerifyingKey::from_bytes(sender_signing).map_err(|_| OpenError::BadSignature)?;
    vk.verify_strict(&env.header.signed_bytes(), &Signature::from_bytes(&sig))
        .map_err(|_| OpenError::BadSignature)
}

/// Verifies and opens the copy sealed for `org` with the recipient organisation's keys.
/// Checks in order: signature ([`OpenError::BadSignature`]); envelope version and a copy
/// for `org` with well-formed sizes ([`OpenError::Malformed`]); the copy's key id is the
/// recipient's ([`OpenError::UnknownKey`]); HPKE open ([`OpenError::DecryptionFailed`]);
/// the plaintext's size and SHA-256 match the header ([`OpenError::DigestMismatch`]).
pub fn open(
    env: &Envelope,
    org: &HpiO,
    recipient: &OrgKeys,
    sender_signing: &[u8; 32],
) -> Result<Zeroizing<Vec<u8>>, OpenError> {
    verify(env, sender_signing)?;
    if env.header.version != ENVELOPE_VERSION {
        return Err(OpenError::Malformed);
    }
    let copy = env.copy_for(org).ok_or(OpenError::Malformed)?;
    if copy.key_id != recipient.key_id {
        return Err(OpenError::UnknownKey);
    }
    let enc =
        <Kem as KemTrait>::EncappedKey::from_bytes(&copy.enc).map_err(|_| OpenError::Malformed)?;
    let body_len = copy
        .ciphertext
        .len()
        .checked_sub(TAG_BYTES)
        .ok_or(OpenError::Malformed)?;
    let (body, tag) = copy.ciphertext.split_at(body_len);
    let tag = AeadTag::<Aead>::from_bytes(tag).map_err(|_| OpenError::Malformed)?;
    let sk = <Kem as KemTrait>::PrivateKey::from_bytes(recipient.encryption_secret())
        .map_err(|_| OpenError::DecryptionFailed)?;
    let info = env.header.hpke_info(org, &copy.key_id);
    let aad = env.header.digest();
    // Decrypted in place in a zeroizing buffer, also wiped when opening fails.
    let mut buf = Zeroizing::new(body.to_vec());
    hpke::single_shot_open_inout_detached::<Aead, Kdf, Kem>(
        &OpModeR::Base,
        &sk,
        &enc,
        &info,
        buf.as_mut_slice().into(),
        &aad,
        &tag,
    )
    .map_err(|_| OpenError::DecryptionFailed)?;
    if buf.len() as u64 != env.header.payload_bytes
        || payload_digest(&buf) != env.header.payload_digest
    {
        return Err(OpenError::DigestMismatch);
    }
    Ok(buf)
}

/// One seal (with its signature) and one open (with its verification) of `payload` for a
/// single recipient organisation: the crypto-only cost of a message, for the benchmark's
/// ceiling. Fails if the round trip does not return the payload.
pub fn crypto_round_trip(sender: &OrgKeys, recipient: &OrgKeys, payload: &[u8]) -> Result<()> {
    let from = HpiO::from_serial(1);
    let to = HpiO::from_serial(2);
    let header = EnvelopeHeader {
        version: ENVELOPE_VERSION,
        message_id: MessageId::new("ceiling", "01890a5d-ac96-774b-bcce-b302099a8057")
            .expect("a fixed, valid message id"),
        sender: Sender {
            org: from,
            practitioner: None,
        },
        sender_key_id: String::new(),
        recipients: vec![
            EndpointId::service(to.clone(), "ceiling").expect("a fixed, valid service slug"),
        ],
        payload_type: PayloadType::Text,
        priority: Priority::Routine,
        patient: None,
        payload_digest: [0; 32],
        payload_bytes: 0,
        created_ms: 1,
        deliver_by_ms: 2,
    };
    let env = seal(
        header,
        sender,
        &[(to.clone(), recipient.public_keys())],
        payload,
    )?;
    let opened = open(&env, &to, recipient, &sender.signing_public())?;
    if opened.as_slice() != payload {
        return Err(Error::Open(OpenError::DigestMismatch));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sealpost_core::ids::Ihi;
    use sha2::Digest;

    struct Party {
        org: HpiO,
        keys: OrgKeys,
    }

    fn party(serial: u64, key_id: &str) -> Party {
        Party {
            org: HpiO::from_serial(serial),
            keys: OrgKeys::generate(key_id).expect("keys"),
        }
    }

    fn header(sender: &Party, to: &[&Party]) -> EnvelopeHeader {
        let mut recipients = Vec::new();
        for p in to {
            recipients.push(EndpointId::service(p.org.clone(), "cardiology").expect("ep"));
            recipients.push(EndpointId::service(p.org.clone(), "renal").expect("ep"));
        }
        EnvelopeHeader {
            version: ENVELOPE_VERSION,
            message_id: MessageId::new("prov-a", "01890a5d-ac96-774b-bcce-b302099a8057")
                .expect("id"),
            sender: Sender {
                org: sender.org.clone(),
                practitioner: None,
            },
            sender_key_id: "placeholder".into(),
            recipients,
            payload_type: PayloadType::Hl7Referral,
            priority: Priority::Urgent,
            patient: Some(Ihi::from_serial(5)),
            payload_digest: [0; 32],
            payload_bytes: 0,
            created_ms: 1_000,
            deliver_by_ms: 2_000,
        }
    }

    fn keys_of(to: &[&Party]) -> Vec<(HpiO, PublicKeys)> {
        to.iter()
            .map(|p| (p.org.clone(), p.keys.public_keys()))
            .collect()
    }

    fn seal_to(sender: &Party, to: &[&Party], payload: &[u8]) -> Envelope {
        seal(header(sender, to), &sender.keys, &keys_of(to), payload).expect("seal")
    }

    fn open_as(env: &Envelope, p: &Party, sender: &Party) -> Result<Vec<u8>, OpenError> {
        open(env, &p.org, &p.keys, &sender.keys.signing_public()).map(|z| z.to_vec())
    }

    const PAYLOAD: &[u8] = b"MSH|^~\\&|REF^I12|referral for a patient";

    #[test]
    fn suite_ids_are_the_documented_ones() {
        assert_eq!(<Kem as KemTrait>::KEM_ID, KEM_ID);
        assert_eq!(<Kdf as hpke::kdf::Kdf>::KDF_ID, KDF_ID);
        assert_eq!(<Aead as hpke::aead::Aead>::AEAD_ID, AEAD_ID);
    }

    /// The signed bytes, info and aad are exactly as ENVELOPE.md spells them out.
    #[test]
    fn bound_bytes_match_envelope_md() {
        fn s(out: &mut Vec<u8>, v: &str) {
            out.extend_from_slice(&(v.len() as u32).to_be_bytes());
            out.extend_from_slice(v.as_bytes());
        }
        let (a, b) = (party(1, "a1"), party(2, "b1"));
        let env = seal_to(&a, &[&b], PAYLOAD);
        let h = &env.header;
        let mut want = b"SPENV".to_vec();
        want.push(1);
        s(&mut want, h.message_id.as_str());
        s(&mut want, a.org.as_str());
        want.push(0);
        s(&mut want, "a1");
        want.extend_from_slice(&2u32.to_be_bytes());
        s(&mut want, &format!("{}/cardiology", b.org));
        s(&mut want, &format!("{}/renal", b.org));
        want.extend_from_slice(&[1, 1, 1]);
        s(&mut want, Ihi::from_serial(5).as_str());
        want.extend_from_slice(&payload_digest(PAYLOAD));
        want.extend_from_slice(&(PAYLOAD.len() as u64).to_be_bytes());
        want.extend_from_slice(&1_000u64.to_be_bytes());
        want.extend_from_slice(&2_000u64.to_be_bytes());
        assert_eq!(h.signed_bytes(), want);
        let aad: [u8; 32] = sha2::Sha256::digest(&want).into();
        assert_eq!(h.digest(), aad);
        let mut info = b"sealpost envelope v1".to_vec();
        s(&mut info, h.message_id.as_str());
        s(&mut info, b.org.as_str());
        s(&mut info, "b1");
        info.extend_from_slice(&2_000u64.to_be_bytes());
        assert_eq!(h.hpke_info(&b.org, "b1"), info);
    }

    #[test]
    fn one_recipient_round_trip() {
        let (a, b) = (party(1, "a1"), party(2, "b1"));
        let env = seal_to(&a, &[&b], PAYLOAD);
        env.validate(u64::MAX).expect("valid");
        env.validate(PAYLOAD.len() as u64)
            .expect("valid at the exact size");
        assert_eq!(env.header.sender_key_id, "a1");
        assert_eq!(env.header.payload_bytes, PAYLOAD.len() as u64);
        assert_eq!(env.header.payload_digest, payload_digest(PAYLOAD));
        assert_eq!(env.sealed.len(), 1);
        assert_eq!(env.sealed[0].key_id, "b1");
        assert_eq!(env.sealed[0].enc.len(), 32);
        assert_eq!(env.sealed[0].ciphertext.len(), PAYLOAD.len() + 16);
        assert!(
            !env.sealed[0]
                .ciphertext
                .windows(8)
                .any(|w| PAYLOAD.windows(8).any(|p| p == w)),
            "ciphertext shows plaintext"
        );
        verify(&env, &a.keys.signing_public()).expect("verifies");
        assert_eq!(open_as(&env, &b, &a).expect("open"), PAYLOAD);
    }

    #[test]
    fn two_recipient_orgs_each_open_their_own_copy() {
        let (a, b, c) = (party(1, "a1"), party(2, "b1"), party(3, "c7"));
        let env = seal_to(&a, &[&b, &c], PAYLOAD);
        env.validate(u64::MAX).expect("valid");
        // One copy per organisation, even with two endpoints each, in first-seen order.
        assert_eq!(env.header.recipients.len(), 4);
        let orgs: Vec<&HpiO> = env.sealed.iter().map(|s| &s.org).collect();
        assert_eq!(orgs, vec![&b.org, &c.org]);
        assert_ne!(env.sealed[0].enc, env.sealed[1].enc);
        assert_eq!(open_as(&env, &b, &a).expect("b opens"), PAYLOAD);
        assert_eq!(open_as(&env, &c, &a).expect("c opens"), PAYLOAD);
    }

    #[test]
    fn any_flipped_ciphertext_or_enc_byte_fails_decryption() {
        let (a, b) = (party(1, "a1"), party(2, "b1"));
        let env = seal_to(&a, &[&b], PAYLOAD);
        for i in 0..env.sealed[0].ciphertext.len() {
            let mut bad = env.clone();
            bad.sealed[0].ciphertext[i] ^= 0x80;
            assert_eq!(
                open_as(&bad, &b, &a),
                Err(OpenError::DecryptionFailed),
                "{i}"
            );
        }
        for i in 0..env.sealed[0].enc.len() {
            let mut bad = env.clone();
            bad.sealed[0].enc[i] ^= 0x01;
            assert_eq!(
                open_as(&bad, &b, &a),
                Err(OpenError::DecryptionFailed),
                "{i}"
            );
        }
        // A truncated ciphertext fails too; one shorter than a tag is malformed.
        let mut short = env.clone();
        short.sealed[0].ciphertext.pop();
        assert_eq!(open_as(&short, &b, &a), Err(OpenError::DecryptionFailed));
        let mut tiny = env.clone();
        tiny.sealed[0].ciphertext.truncate(15);
        assert_eq!(open_as(&tiny, &b, &a), Err(OpenError::Malformed));
        let mut enc = env;
        enc.sealed[0].enc.pop();
        assert_eq!(open_as(&enc, &b, &a), Err(OpenError::Malformed));
    }

    #[test]
    fn flipped_signature_byte_is_a_bad_signature() {
        let (a, b) = (party(1, "a1"), party(2, "b1"));
        let env = seal_to(&a, &[&b], PAYLOAD);
        for i in 0..64 {
            let mut bad = env.clone();
            bad.signature[i] ^= 0x01;
            assert_eq!(open_as(&bad, &b, &a), Err(OpenError::BadSignature), "{i}");
            assert_eq!(
                verify(&bad, &a.keys.signing_public()),
                Err(OpenError::BadSignature)
            );
        }
        let mut short = env.clone();
        short.signature.pop();
        assert_eq!(open_as(&short, &b, &a), Err(OpenError::BadSignature));
        // Another sender's key does not verify it.
        let mallory = party(9, "m1");
        assert_eq!(
            open(&env, &b.org, &b.keys, &mallory.keys.signing_public()),
            Err(OpenError::BadSignature)
        );
    }

    #[test]
    fn altered_header_fields_are_bad_signatures() {
        let (a, b, c) = (party(1, "a1"), party(2, "b1"), party(3, "c1"));
        let env = seal_to(&a, &[&b], PAYLOAD);
        let mut variants = Vec::new();
        let mut e = env.clone();
        e.header.deliver_by_ms += 1;
        variants.push(e);
        let mut e = env.clone();
        e.header
            .recipients
            .push(EndpointId::service(c.org.clone(), "x").expect("ep"));
        variants.push(e);
        let mut e = env.clone();
        e.header.recipients.pop();
        variants.push(e);
        let mut e = env.clone();
        e.header.payload_digest[0] ^= 1;
        variants.push(e);
        let mut e = env.clone();
        e.header.priority = Priority::Routine;
        variants.push(e);
        let mut e = env.clone();
        e.header.sender_key_id = "a2".into();
        variants.push(e);
        for v in variants {
            assert_eq!(open_as(&v, &b, &a), Err(OpenError::BadSignature));
        }
    }

    #[test]
    fn re_signed_header_changes_do_not_open_hpke_binds_the_header() {
        let (a, b) = (party(1, "a1"), party(2, "b1"));
        let env = seal_to(&a, &[&b], PAYLOAD);
        // Changes to what HPKE info binds (deliver-by) and to what only the aad binds
        // (priority, patient): the sender re-signs, but the sealed copy stays bound to the
        // original header.
        let mut later = env.clone();
        later.header.deliver_by_ms = 9_000;
        let mut routine = env.clone();
        routine.header.priority = Priority::Routine;
        let mut anonymous = env.clone();
        anonymous.header.patient = None;
        for mut e in [later, routine, anonymous] {
            e.signature = a.keys.sign(&e.header.signed_bytes()).to_vec();
            verify(&e, &a.keys.signing_public()).expect("re-signed");
            assert_eq!(open_as(&e, &b, &a), Err(OpenError::DecryptionFailed));
        }
    }

    #[test]
    fn a_copy_relabelled_for_another_org_does_not_open() {
        let (a, b, c) = (party(1, "a1"), party(2, "k1"), party(3, "k1"));
        let env = seal_to(&a, &[&b, &c], PAYLOAD);
        // Swap the copies' org labels: each org now finds the other's copy under its name.
        let mut swapped = env.clone();
        swapped.sealed[0].org = c.org.clone();
        swapped.sealed[1].org = b.org.clone();
        assert_eq!(open_as(&swapped, &b, &a), Err(OpenError::DecryptionFailed));
        assert_eq!(open_as(&swapped, &c, &a), Err(OpenError::DecryptionFailed));
    }

    #[test]
    fn wrong_recipient_key_id_is_unknown_key() {
        let (a, b) = (party(1, "a1"), party(2, "b1"));
        let env = seal_to(&a, &[&b], PAYLOAD);
        let rotated = OrgKeys::generate("b2").expect("keys");
        assert_eq!(
            open(&env, &b.org, &rotated, &a.keys.signing_public()),
            Err(OpenError::UnknownKey)
        );
    }

    #[test]
    fn another_orgs_keys_do_not_open() {
        let (a, b) = (party(1, "a1"), party(2, "k1"));
        let env = seal_to(&a, &[&b], PAYLOAD);
        // An org with no copy: malformed for it.
        let c = party(3, "k1");
        assert_eq!(open_as(&env, &c, &a), Err(OpenError::Malformed));
        // Another org's keys (same key id) on b's copy: does not decrypt.
        assert_eq!(
            open(&env, &b.org, &c.keys, &a.keys.signing_public()),
            Err(OpenError::DecryptionFailed)
        );
    }

    #[test]
    fn unknown_version_is_malformed() {
        let (a, b) = (party(1, "a1"), party(2, "b1"));
        let mut env = seal_to(&a, &[&b], PAYLOAD);
        env.header.version = 2;
        env.signature = a.keys.sign(&env.header.signed_bytes()).to_vec();
        assert_eq!(open_as(&env, &b, &a), Err(OpenError::Malformed));
    }

    #[test]
    fn a_sender_sealing_something_else_than_it_described_is_a_digest_mismatch() {
        let (a, b) = (party(1, "a1"), party(2, "b1"));
        let env = seal_to(&a, &[&b], PAYLOAD);
        // A dishonest sender: the header describes other bytes (another digest, or another
        // size), the copy holds PAYLOAD. It seals with the lying header's info and aad, so
        // HPKE opens and the digest check fails.
        let lies: [fn(&mut EnvelopeHeader); 2] = [
            |h| h.payload_digest = payload_digest(b"something else"),
            |h| h.payload_bytes += 1,
        ];
        for lie_about in lies {
            let mut lie = env.header.clone();
            lie_about(&mut lie);
            let aad = lie.digest();
            let copy =
                seal_copy(&lie, b.org.clone(), &b.keys.public_keys(), PAYLOAD, &aad).expect("seal");
            let bad = Envelope {
                signature: a.keys.sign(&lie.signed_bytes()).to_vec(),
                header: lie,
                sealed: vec![copy],
            };
            assert_eq!(open_as(&bad, &b, &a), Err(OpenError::DigestMismatch));
        }
    }

    #[test]
    fn empty_and_one_mib_payloads_work() {
        let (a, b) = (party(1, "a1"), party(2, "b1"));
        let env = seal_to(&a, &[&b], b"");
        env.validate(u64::MAX).expect("valid");
        assert_eq!(env.sealed[0].ciphertext.len(), 16);
        assert_eq!(open_as(&env, &b, &a).expect("open"), b"");
        let big: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
        let env = seal_to(&a, &[&b], &big);
        env.validate(u64::MAX).expect("valid");
        assert_eq!(open_as(&env, &b, &a).expect("open"), big);
    }

    #[test]
    fn seal_refuses_missing_or_bad_recipient_keys_and_bad_headers() {
        let (a, b, c) = (party(1, "a1"), party(2, "b1"), party(3, "c1"));
        let err = seal(header(&a, &[&b, &c]), &a.keys, &keys_of(&[&b]), PAYLOAD)
            .expect_err("c has no keys");
        assert!(matches!(err, Error::NoRecipientKeys(_)));
        assert!(err.to_string().contains(c.org.as_str()), "{err}");
        let mut zero = keys_of(&[&b]);
        zero[0].1.encryption = [0; 32];
        let err = seal(header(&a, &[&b]), &a.keys, &zero, PAYLOAD).expect_err("zero key");
        assert!(matches!(err, Error::BadRecipientKeys { .. }), "{err}");
        let mut h = header(&a, &[&b]);
        h.deliver_by_ms = h.created_ms;
        let err = seal(h, &a.keys, &keys_of(&[&b]), PAYLOAD).expect_err("bad header");
        assert!(matches!(err, Error::InvalidHeader(_)), "{err}");
        let mut h = header(&a, &[&b]);
        h.recipients.clear();
        assert!(seal(h, &a.keys, &keys_of(&[&b]), PAYLOAD).is_err());
    }

    #[test]
    fn errors_map_one_to_one_to_fail_reasons() {
        let all = [
            (OpenError::BadSignature, FailReason::BadSignature),
            (OpenError::UnknownKey, FailReason::UnknownKey),
            (OpenError::DigestMismatch, FailReason::DigestMismatch),
            (OpenError::DecryptionFailed, FailReason::DecryptionFailed),
            (OpenError::Malformed, FailReason::Malformed),
        ];
        for (e, r) in all {
            assert_eq!(e.reason(), r);
            assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn crypto_round_trip_works() {
        let a = OrgKeys::generate("a1").expect("keys");
        let b = OrgKeys::generate("b1").expect("keys");
        crypto_round_trip(&a, &b, &[7u8; 4096]).expect("round trip");
        crypto_round_trip(&a, &b, b"").expect("round trip");
    }
}
