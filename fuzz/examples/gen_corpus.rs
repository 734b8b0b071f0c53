//! Writes the seed corpora of the fuzz targets into `fuzz/corpus/<target>/` (run by
//! `scripts/fuzz corpus`): the HL7 sample messages and their acknowledgements, the same
//! framed for MLLP with chunking plans and some garbage, the fixture's sealed envelopes,
//! chained event records, Raft batches and `SendRequest`s. Files are named by content
//! (FNV-1a hash), so re-running it only adds what is new; the envelope seeds change on
//! every run (HPKE draws fresh ephemeral keys), so it replaces those.

use std::path::{Path, PathBuf};

use prost::Message;
use sealpost_core::codec;
use sealpost_fuzz::envelope_input::{EDIT, RAW};
use sealpost_fuzz::{fixture, mllp_input, sample_batches, sample_outcomes, sample_records};
use sealpost_hl7::ack::{AckCode, AckError, build_ack};
use sealpost_hl7::mllp::{MLLP_END, MLLP_START};
use sealpost_hl7::samples;

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn write_all(dir: &Path, name_prefix: &str, inputs: &[Vec<u8>]) {
    std::fs::create_dir_all(dir).expect("corpus directory");
    for input in inputs {
        let path = dir.join(format!("{name_prefix}{:016x}", fnv1a(input)));
        std::fs::write(&path, input).expect("corpus file");
    }
    println!("{}: {} seeds", dir.display(), inputs.len());
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = vec![MLLP_START];
    out.extend_from_slice(payload);
    out.extend_from_slice(&MLLP_END);
    out
}

fn main() {
    let root: PathBuf = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus"));

    // hl7_parse: the samples, the named malformed inputs and acknowledgements.
    let mut hl7: Vec<Vec<u8>> = [samples::REF_I12, samples::ORU_R01, samples::MDM_T02]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
    hl7.extend(samples::malformed().into_iter().map(|(_, bytes)| bytes));
    let msh = sealpost_hl7::er7::parse_str(samples::REF_I12)
        .and_then(|m| m.msh())
        .expect("the sample parses");
    hl7.push(build_ack(&msh, AckCode::CA, None, "20250314093005", "ACK1").into_bytes());
    let err = AckError::required_field_missing("PID-3 has no IHI");
    hl7.push(build_ack(&msh, AckCode::AE, Some(&err), "20250314093005", "ACK2").into_bytes());
    hl7.push(b"MSH#*@!$%#A*B#F#R#S#T#U#ADT*A01#C9#P#2.7\rPID#1##X!S!Y*Z\r".to_vec());
    write_all(&root.join("hl7_parse"), "", &hl7);

    // mllp_codec: frames with different limits and chunkings, back to back, with garbage,
    // a bad end, a start inside a frame and a truncated frame.
    let ref_frame = frame(samples::REF_I12.as_bytes());
    let oru_frame = frame(samples::ORU_R01.as_bytes());
    let mut two = ref_frame.clone();
    two.extend_from_slice(&oru_frame);
    let mut garbage = b"\r\nnoise before the frame".to_vec();
    garbage.extend_from_slice(&frame(b"MSH|^~\\&|A|B|C|D|1||ADT^A08|C1|P|2.4\r"));
    let mllp = vec![
        mllp_input::build(0x8000, &[], &ref_frame),
        mllp_input::build(0x8000, &[1], &oru_frame),
        mllp_input::build(4096, &[7, 0], &two),
        mllp_input::build(64, &[3, 5, 250], &two),
        mllp_input::build(0x8000, &[2], &garbage),
        mllp_input::build(
            0x8000,
            &[],
            &[MLLP_START, b'a', 0x1C, b'x', MLLP_START, 0x1C, 0x0D],
        ),
        mllp_input::build(
            0x8000,
            &[4],
            &[MLLP_START, b'a', MLLP_START, b'b', 0x1C, 0x0D],
        ),
        mllp_input::build(0x8000, &[], &ref_frame[..ref_frame.len() - 1]),
        mllp_input::build(0, &[1], &frame(b"")),
    ];
    write_all(&root.join("mllp_codec"), "", &mllp);

    // envelope_open: each sealed envelope raw (as either recipient organisation), and an
    // edit-mode seed per envelope that changes nothing and one that flips a ciphertext bit.
    let f = fixture();
    let env_dir = root.join("envelope_open");
    if env_dir.exists() {
        std::fs::remove_dir_all(&env_dir).expect("old envelope seeds removed");
    }
    let mut envelopes = Vec::new();
    for (case, sealed) in f.sealed.iter().enumerate() {
        for org in 0..2u8 {
            let mut raw = vec![RAW | (org << 1)];
            raw.extend_from_slice(&sealed.bytes);
            envelopes.push(raw);
        }
        // Opened as the first organisation the envelope has a copy for.
        let first = &sealed.envelope.sealed[0].org;
        let org = u8::from(&f.recipients[1].org == first);
        let control = EDIT | (org << 1) | ((case as u8) << 2);
        envelopes.push(vec![control, 0, 0, 0, 0]);
        let last = u16::try_from(sealed.bytes.len() - 1).expect("small envelope");
        let [hi, lo] = last.to_be_bytes();
        envelopes.push(vec![control, 0, hi, lo, 0x01]);
    }
    write_all(&env_dir, "", &envelopes);

    // event_decode: every kind of event record, batches and outcomes.
    let mut events: Vec<Vec<u8>> = sample_records().iter().map(codec::encode).collect();
    events.extend(sample_batches().iter().map(codec::encode));
    events.extend(sample_outcomes().iter().map(codec::encode));
    write_all(&root.join("event_decode"), "", &events);

    // send_request_decode: accepted and refused requests.
    let requests: Vec<Vec<u8>> = sealpost_fuzz::sample_send_requests()
        .iter()
        .map(Message::encode_to_vec)
        .collect();
    write_all(&root.join("send_request_decode"), "", &requests);
}
