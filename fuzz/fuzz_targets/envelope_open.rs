//! Fuzz target `envelope_open`: envelope v1 as a recipient's provider receives it, decoded
//! from its storage encoding (`sealpost_core::codec`, what relays send and the log
//! stores), validated, then verified and opened with `sealpost_crypto::envelope::open`
//! under fixed organisation keys (`sealpost_fuzz::fixture`). Byte 0 of the input picks
//! the mode and the recipient organisation (layout in `sealpost_fuzz::envelope_input`):
//! either the rest is the serialized envelope, or it is a list of byte edits applied to
//! one of the fixture's valid sealed envelopes, so most inputs reach the signature check
//! and HPKE instead of dying in the decoder.
//!
//! Beyond "no panic" it checks that nothing the sender did not sign and seal opens: an
//! envelope that opens has exactly the header and signature of a fixture envelope and
//! yields exactly its payload, and in edit mode the recipient's own sealed copy (key id,
//! encapsulated key, ciphertext) is exactly the original's. Only the copies sealed to
//! other organisations are not covered (a recipient cannot check them), so edits there
//! may still open. An unedited fixture envelope always opens.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sealpost_core::codec;
use sealpost_core::message::{Envelope, PAYLOAD_BYTES_DEFAULT_MAX};
use sealpost_crypto::envelope;
use sealpost_fuzz::envelope_input::{self, EDIT, RAW};
use sealpost_fuzz::{Fixture, Party, Sealed, fixture};

/// Decodes, validates and opens `bytes` as `recipient`; true when it opened. `source` is
/// the fixture envelope the bytes were edited from.
fn open_as(f: &Fixture, bytes: &[u8], recipient: &Party, source: Option<&Sealed>) -> bool {
    // Undecodable bytes are refused before any cryptography, as the relay does.
    let Ok(env) = codec::decode::<Envelope>(bytes) else {
        return false;
    };
    // The relay refuses envelopes that fail validation; the opener must still be safe on
    // any envelope, so it runs either way.
    let _ = env.validate(PAYLOAD_BYTES_DEFAULT_MAX);
    let _ = (env.payload_dropped(), env.approx_bytes());
    match envelope::open(&env, &recipient.org, &recipient.keys, &f.sender_signing()) {
        Err(e) => {
            let _ = e.reason();
            false
        }
        Ok(payload) => {
            let signed = f
                .sealed
                .iter()
                .find(|s| s.envelope.header == env.header)
                .expect("an envelope opened with a header the sender never signed");
            assert_eq!(env.signature, signed.envelope.signature);
            assert_eq!(payload.as_slice(), signed.payload.as_slice());
            if let Some(src) = source {
                assert_eq!(env.header, src.envelope.header);
                assert_eq!(
                    env.copy_for(&recipient.org),
                    src.envelope.copy_for(&recipient.org),
                    "an edited copy for the recipient opened"
                );
            }
            true
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let f = fixture();
    let recipient = &f.recipients[usize::from((control >> 1) & 1)];
    match control & 1 {
        RAW => {
            open_as(f, rest, recipient, None);
        }
        EDIT => {
            let src = &f.sealed[usize::from(control >> 2) % f.sealed.len()];
            let mut bytes = src.bytes.clone();
            envelope_input::apply_edits(&mut bytes, rest);
            let opened = open_as(f, &bytes, recipient, Some(src));
            if bytes == src.bytes && src.envelope.copy_for(&recipient.org).is_some() {
                assert!(opened, "an unmodified fixture envelope did not open");
            }
        }
        _ => unreachable!("the mode is one bit"),
    }
});
