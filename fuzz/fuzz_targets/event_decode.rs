//! Fuzz target `event_decode`: arbitrary bytes through `sealpost_core::codec::decode` as
//! each record type the replicated log and the event store hold: `EventRecord` (the hash
//! chain), `Batch` (a Raft entry's proposals) and `BatchOutcome` (the state machine's
//! answer), and through `EventRecord::decode_stored` (the direct decoding every store
//! reader uses), which must agree with the serde path on every input. Beyond "no panic" it
//! checks that whatever decodes re-encodes to exactly the input bytes (the codec has one
//! encoding per value, so a stored record can be read and written back unchanged), decodes
//! again to the same value, and that `encoded_len` agrees; for records, that the canonical
//! (hashed) bytes are a function of the value alone and that a recomputed hash is what
//! `EventRecord::chain` would have stored; for batches, that the stateless validation and
//! the read sets of every command run.

#![no_main]

use std::fmt::Debug;

use libfuzzer_sys::fuzz_target;
use sealpost_core::batch::{Batch, BatchOutcome};
use sealpost_core::codec;
use sealpost_core::event::EventRecord;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Re-encoding gives back the input, and decoding that gives back the value.
fn round_trip<T>(value: &T, input: &[u8])
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let bytes = codec::encode(value);
    assert_eq!(
        bytes, input,
        "re-encoding a decoded value changed its bytes"
    );
    assert_eq!(codec::encoded_len(value), bytes.len());
    let again: T = codec::decode(&bytes).expect("a re-encoded value decodes");
    assert_eq!(&again, value);
}

fn check_record(rec: &EventRecord) {
    let canonical = rec.canonical_bytes();
    assert!(canonical.starts_with(b"SPEV"));
    assert_eq!(rec.clone().canonical_bytes(), canonical);
    let rechained = EventRecord::chain(
        rec.seq,
        rec.ts_ms,
        rec.log_index,
        rec.actor.clone(),
        rec.prev_hash,
        rec.event.clone(),
    );
    assert_eq!(rechained.hash, rec.computed_hash());
    assert_eq!(rechained.canonical_bytes(), canonical);
    let e = &rec.event;
    let _ = (
        e.kind(),
        e.introduced_in(),
        e.organisation(),
        e.message_id(),
        e.recipient(),
    );
}

fn check_batch(batch: &Batch) {
    for p in &batch.proposals {
        let _ = p.validate();
        let _ = (p.command.reads(), p.command.kind());
    }
}

fuzz_target!(|data: &[u8]| {
    let direct = EventRecord::decode_stored(data);
    if let Ok(rec) = codec::decode::<EventRecord>(data) {
        assert_eq!(direct.as_ref(), Ok(&rec), "the direct decoding differs");
        round_trip(&rec, data);
        check_record(&rec);
    } else {
        assert!(direct.is_err(), "only the direct decoding accepted the bytes");
    }
    if let Ok(batch) = codec::decode::<Batch>(data) {
        round_trip(&batch, data);
        check_batch(&batch);
    }
    if let Ok(outcome) = codec::decode::<BatchOutcome>(data) {
        round_trip(&outcome, data);
    }
});
