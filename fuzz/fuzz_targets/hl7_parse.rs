//! Fuzz target `hl7_parse`: arbitrary bytes through `sealpost_hl7::er7::parse` and every
//! reader of the parsed message (`msh`, `pid`/`ihi`, `prds`/`hpii`, `message_code`, `get`),
//! then the acknowledgement the MLLP listener would answer with (`build_ack`, read back
//! with `parse_ack`). Beyond "no panic" it checks: a parsed message written back as ER7
//! with its own separators parses to the same message; `get` never returns an empty value;
//! escaping with the standard separators leaves no separator or line break and decodes
//! back to the text; an acknowledgement we build always parses and reads back with the
//! code, the acknowledged control id, the error text and the swapped addressing it was
//! built with.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sealpost_core::ids::{HpiI, HpiO, Ihi};
use sealpost_hl7::ack::{self, AckError, AckMode, Outcome};
use sealpost_hl7::er7::{self, Encoding, Message, Msh};

const NOW: &str = "20250314093005";
const ACK_CONTROL_ID: &str = "SPFUZZ0001";

/// Paths read with `Message::get`, covering occurrences, repetitions, components and
/// subcomponents, MSH-1/MSH-2 and segments that are usually absent.
const PATHS: &[&str] = &[
    "MSH-1",
    "MSH-2",
    "MSH-2.1",
    "MSH-3.2",
    "MSH-9",
    "MSH-10",
    "PID-3",
    "PID-3(2).4.2",
    "PID-5.1",
    "OBX(3)-5",
    "PRD(2)-7(1).1",
    "PRD-7.1.2",
    "MSA-1.1",
    "ERR-3.2",
    "ZZZ-1",
];

/// What decoding a value that `Encoding::escape` produced gives back: line breaks come
/// back as `\n` (they travel as `\.br\`), everything else as it was.
fn after_round_trip(text: &str) -> String {
    text.replace("\r\n", "\n").replace('\r', "\n")
}

/// The message as ER7 again, segments ended by `\r`, with its own separators. MSH-1 is the
/// field separator itself, so MSH is written from MSH-2 on.
fn to_er7(m: &Message) -> String {
    let mut out = String::new();
    for seg in &m.segments {
        out.push_str(&seg.id);
        let skip = usize::from(seg.id == "MSH");
        for field in seg.fields.iter().skip(skip) {
            out.push(m.enc.field);
            out.push_str(&field.to_er7(&m.enc));
        }
        out.push('\r');
    }
    out
}

/// Builds the acknowledgement of `original` and checks that it reads back as built.
fn check_ack(original: &Msh, outcome: Outcome, error: Option<&AckError>) {
    let code = ack::ack_code(ack::mode_for(original), outcome);
    let text = ack::build_ack(original, code, error, NOW, ACK_CONTROL_ID);
    assert!(text.ends_with('\r') && !text.contains('\n'));
    let parsed = er7::parse_str(&text).expect("an acknowledgement we built parses");
    let (read_code, control_id, error_text) =
        ack::parse_ack(&parsed).expect("an acknowledgement we built reads back");
    assert_eq!(read_code, code);
    assert_eq!(control_id, after_round_trip(&original.control_id));
    if let Some(e) = error.filter(|e| !e.text.is_empty()) {
        assert_eq!(error_text, Some(after_round_trip(&e.text)));
    }
    if original.trigger.is_empty() {
        // No MSH-9.2 to echo: the reply's MSH is incomplete, as the original's was.
        return;
    }
    let reply = parsed.msh().expect("the acknowledgement's MSH is complete");
    assert_eq!(reply.control_id, ACK_CONTROL_ID);
    assert_eq!(reply.trigger, after_round_trip(&original.trigger));
    assert_eq!(
        reply.sending_application,
        after_round_trip(&original.receiving_application)
    );
    assert_eq!(
        reply.sending_facility_universal_id,
        after_round_trip(&original.receiving_facility_universal_id)
    );
    assert_eq!(
        reply.receiving_facility,
        after_round_trip(&original.sending_facility)
    );
    assert_eq!(
        reply.receiving_application_universal_id_type,
        after_round_trip(&original.sending_application_universal_id_type)
    );
    assert_eq!(
        reply.processing_id,
        after_round_trip(&original.processing_id)
    );
    assert_eq!(reply.version, after_round_trip(&original.version));
    // Commit acknowledgements ask not to be acknowledged (MSH-15/16 = NE); others ask nothing.
    assert_eq!(ack::mode_for(&reply) == AckMode::Enhanced, code.is_commit());
}

/// An identifier the core crate accepts is exactly the text it was given.
fn check_ids(text: &str) {
    if let Ok(id) = HpiO::parse(text) {
        assert_eq!(id.as_str(), text);
    }
    if let Ok(id) = HpiI::parse(text) {
        assert_eq!(id.as_str(), text);
    }
    if let Ok(id) = Ihi::parse(text) {
        assert_eq!(id.as_str(), text);
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let enc = Encoding::default();
        let escaped = enc.escape(text);
        assert!(!escaped.contains(['|', '^', '~', '&', '\r', '\n', '\u{b}', '\u{1c}']));
        assert_eq!(enc.unescape(&escaped), after_round_trip(text));
    }

    let m = match er7::parse(data) {
        Ok(m) => m,
        Err(e) => {
            // The listener answers an unparsable frame with a reject built on a blank MSH.
            check_ack(
                &Msh::default(),
                Outcome::Rejected,
                Some(&AckError::from_parse_error(&e)),
            );
            return;
        }
    };

    let written = to_er7(&m);
    let again = er7::parse_str(&written).expect("a parsed message written back parses");
    assert_eq!(again, m);

    for path in PATHS {
        if let Some(v) = m.get(path) {
            assert!(!v.is_empty(), "get({path}) returned an empty value");
        }
    }
    // Escaping is total with the message's own separators too (only the standard ones are
    // promised to round-trip: acknowledgements always use those).
    if let Some(v) = m.get("MSH-3") {
        let _ = m.enc.unescape(&m.enc.escape(&v));
    }

    if let Some(pid) = m.pid() {
        assert!(pid.identifiers.iter().all(|p| !p.id.is_empty()));
        if let Some(ihi) = pid.ihi() {
            assert!(pid.identifiers.iter().any(|p| p.id == ihi));
            check_ids(&ihi);
        }
    }
    let prds = m.prds();
    assert_eq!(prds.len(), m.segments_named("PRD").count());
    for prd in &prds {
        assert!(prd.provider_ids.iter().all(|p| !p.id.is_empty()));
        if let Some(hpii) = prd.hpii() {
            check_ids(hpii);
        }
        let _ = prd.provider_id_of_type("UPIN");
    }

    match m.msh() {
        Ok(msh) => {
            assert!(!msh.message_type.is_empty());
            assert!(!msh.trigger.is_empty());
            assert!(!msh.control_id.is_empty());
            assert_eq!(
                msh.message_code(),
                format!("{}^{}", msh.message_type, msh.trigger)
            );
            check_ids(msh.sending_facility_universal_id.trim());
            check_ids(msh.receiving_facility_universal_id.trim());
            let outcome = match data.len() % 3 {
                0 => Outcome::Accepted,
                1 => Outcome::Error,
                _ => Outcome::Rejected,
            };
            let error = (outcome != Outcome::Accepted)
                .then(|| AckError::data_type(msh.sending_application.clone()));
            check_ack(&msh, outcome, error.as_ref());
        }
        Err(e) => check_ack(
            &m.partial_msh(),
            Outcome::Rejected,
            Some(&AckError::from_parse_error(&e)),
        ),
    }
});
