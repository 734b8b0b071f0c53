//! Fuzz target `send_request_decode`: arbitrary bytes as the protobuf of a gRPC
//! `sealpost.v1.SendRequest`, then the stateless checks the server's `send_as` runs on its
//! fields before sealing, which all live in the core crate: HPI-O, HPI-I and IHI parsing
//! (trimmed, optional ones skipped when blank), endpoint ids, the recipient list, payload
//! type, priority and client message id. The server crate itself is not a dependency (it
//! needs RocksDB), so its order of checks is mirrored here.
//!
//! Beyond "no panic" it checks: a decoded request re-encodes and decodes to the same
//! request; every accepted id is exactly the text given and parses again from its own
//! text; accepted payload types and priorities parse from their names; and a request the
//! edge accepts builds a header that sealing's own validation accepts and a `Send`
//! proposal that the state machine's stateless validation accepts, and that proposal
//! survives the storage codec unchanged.

#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use sealpost_core::codec;
use sealpost_core::command::{Command, Proposal};
use sealpost_core::directory::PayloadType;
use sealpost_core::ids::{EndpointId, HpiI, HpiO, IdError, Ihi};
use sealpost_core::message::{
    AEAD_TAG_BYTES, ENCAPSULATED_KEY_BYTES, ENVELOPE_VERSION, Envelope, EnvelopeHeader, MessageId,
    PAYLOAD_BYTES_DEFAULT_MAX, Priority, SIGNATURE_BYTES, SealedCopy, Sender,
    check_client_message_id, check_recipients, payload_digest,
};
use sealpost_fuzz::{CREATED_MS, PROVIDER};
use sealpost_proto::v1::SendRequest;

/// The server's defaults for `deliver_within_ms` (0 in a request) and its upper limit.
const DELIVER_WITHIN_MS_DEFAULT: u64 = 24 * 3600 * 1000;
const DELIVER_WITHIN_MS_MAX: u64 = 30 * 24 * 3600 * 1000;
/// Stands in for the UUID the server generates when no client message id is given.
const GENERATED_ID: &str = "01890a5d-ac96-774b-bcce-b30209900099";

/// An optional identifier: blank is absent, anything else must parse.
fn optional<T>(s: &str, parse: impl Fn(&str) -> Result<T, IdError>) -> Result<Option<T>, IdError> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    parse(s).map(Some)
}

fn check_hpio(text: &str, id: &HpiO) {
    assert_eq!(id.as_str(), text);
    assert_eq!(HpiO::parse(id.as_str()).as_ref(), Ok(id));
}

fuzz_target!(|data: &[u8]| {
    let Ok(req) = SendRequest::decode(data) else {
        return;
    };
    let again =
        SendRequest::decode(req.encode_to_vec().as_slice()).expect("a re-encoded request decodes");
    assert_eq!(again, req);

    // Every check runs, so each is exercised whatever the others say; the server stops at
    // the first refusal, in this order.
    let from = HpiO::parse(req.from_org.trim());
    if let Ok(id) = &from {
        check_hpio(req.from_org.trim(), id);
    }
    let practitioner = optional(&req.from_practitioner, HpiI::parse);
    if let Ok(Some(p)) = &practitioner {
        assert_eq!(p.as_str(), req.from_practitioner.trim());
        assert_eq!(HpiI::parse(p.as_str()).as_ref(), Ok(p));
    }
    let patient = optional(&req.patient_ihi, Ihi::parse);
    if let Ok(Some(p)) = &patient {
        assert_eq!(p.as_str(), req.patient_ihi.trim());
        assert_eq!(Ihi::parse(p.as_str()).as_ref(), Ok(p));
    }
    let recipients: Vec<Result<EndpointId, IdError>> =
        req.to.iter().map(|t| EndpointId::parse(t)).collect();
    for (text, parsed) in req.to.iter().zip(&recipients) {
        if let Ok(ep) = parsed {
            assert_eq!(&ep.to_string(), text);
            assert_eq!(EndpointId::parse(&ep.to_string()).as_ref(), Ok(ep));
            check_hpio(ep.org.as_str(), &ep.org);
        }
    }
    let payload_type = req.payload_type.parse::<PayloadType>();
    if let Ok(pt) = payload_type {
        assert!(pt.as_str().eq_ignore_ascii_case(req.payload_type.trim()));
        assert_eq!(pt.as_str().parse::<PayloadType>(), Ok(pt));
    }
    let priority = req.priority.parse::<Priority>();
    if let Ok(p) = priority {
        assert_eq!(p.as_str().parse::<Priority>(), Ok(p));
    }
    let cid = if req.client_message_id.trim().is_empty() {
        GENERATED_ID.to_string()
    } else {
        req.client_message_id.clone()
    };
    let cid_ok = check_client_message_id(&cid).is_ok();
    let within = match req.deliver_within_ms {
        0 => Some(DELIVER_WITHIN_MS_DEFAULT),
        v if v > DELIVER_WITHIN_MS_MAX => None,
        v => Some(v),
    };

    let (Ok(from), Ok(practitioner), Ok(patient), Ok(payload_type), Ok(priority), Some(within)) =
        (from, practitioner, patient, payload_type, priority, within)
    else {
        return;
    };
    let Ok(recipients) = recipients.into_iter().collect::<Result<Vec<_>, _>>() else {
        return;
    };
    let recipients_ok = check_recipients(&recipients).is_ok();
    if !recipients_ok || !cid_ok || req.payload.len() as u64 > PAYLOAD_BYTES_DEFAULT_MAX {
        return;
    }

    // Accepted at the edge: what sealing and the state machine check must agree.
    let header = EnvelopeHeader {
        version: ENVELOPE_VERSION,
        message_id: MessageId::new(PROVIDER, GENERATED_ID).expect("a valid message id"),
        sender: Sender {
            org: from,
            practitioner,
        },
        sender_key_id: "k1".into(),
        recipients,
        payload_type,
        priority,
        patient,
        payload_digest: payload_digest(&req.payload),
        payload_bytes: req.payload.len() as u64,
        created_ms: CREATED_MS,
        deliver_by_ms: CREATED_MS.saturating_add(within),
    };
    header
        .validate(u64::MAX)
        .expect("sealing refused a header the edge accepted");
    let sealed = header
        .recipient_orgs()
        .into_iter()
        .map(|org| SealedCopy {
            org,
            key_id: "k1".into(),
            enc: vec![0x42; ENCAPSULATED_KEY_BYTES],
            ciphertext: vec![0x24; req.payload.len() + AEAD_TAG_BYTES as usize],
        })
        .collect();
    let proposal = Proposal {
        actor: "client:fuzz".into(),
        command: Command::Send {
            envelope: Box::new(Envelope {
                header,
                signature: vec![0x55; SIGNATURE_BYTES],
                sealed,
            }),
            client_message_id: cid,
        },
    };
    proposal
        .validate()
        .expect("the state machine refused a send the edge accepted");
    let _ = proposal.command.reads();
    let bytes = codec::encode(&proposal);
    assert_eq!(codec::decode::<Proposal>(&bytes).as_ref(), Ok(&proposal));
});
