//! Fuzz target `send_request_decode`: arbitrary bytes as the protobuf of a gRPC
//! `sealpost.v1.SendRequest`, then the stateless checks a node's `send_as` runs on its
//! fields before sealing: `sealpost_core::send_form`'s `sender` and `check`, the very
//! functions the server calls (HPI-O, HPI-I and IHI parsing, trimmed, optional ones skipped
//! when blank; endpoint ids, the recipient list, payload type, priority, client message id
//! and the delivery window).
//!
//! Beyond "no panic" it checks: a decoded request re-encodes and decodes to the same
//! request; the checks refuse exactly what each field's own parser refuses; every accepted
//! id is exactly the text given and parses again from its own text; accepted payload types
//! and priorities parse from their names; and a request the edge accepts builds a header
//! that sealing's own validation accepts and a `Send` proposal that the state machine's
//! stateless validation accepts, and that proposal survives the storage codec unchanged.

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
use sealpost_core::send_form::{self, SendForm, SendFormError, SendLimits};
use sealpost_fuzz::{CREATED_MS, PROVIDER};
use sealpost_proto::v1::SendRequest;

/// A node's default limits (its configuration's defaults).
const LIMITS: SendLimits = SendLimits {
    payload_bytes_max: PAYLOAD_BYTES_DEFAULT_MAX,
    deliver_within_ms_default: 24 * 3600 * 1000,
    deliver_within_ms_max: 30 * 24 * 3600 * 1000,
};
/// Stands in for the UUID a node generates when no client message id is given.
const GENERATED_ID: &str = "01890a5d-ac96-774b-bcce-b30209900099";

/// Whether an optional identifier passes its parser: blank is absent, anything else
/// (trimmed) must parse.
fn optional_ok<T>(s: &str, parse: impl Fn(&str) -> Result<T, IdError>) -> bool {
    let s = s.trim();
    s.is_empty() || parse(s).is_ok()
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

    let from = send_form::sender(&req.from_org);
    assert_eq!(from.is_ok(), HpiO::parse(req.from_org.trim()).is_ok());
    if let Ok(id) = &from {
        check_hpio(req.from_org.trim(), id);
    }
    let checked = send_form::check(
        &SendForm {
            from_practitioner: &req.from_practitioner,
            patient_ihi: &req.patient_ihi,
            to: &req.to,
            payload_type: &req.payload_type,
            priority: &req.priority,
            client_message_id: &req.client_message_id,
            deliver_within_ms: req.deliver_within_ms,
            payload_bytes: req.payload.len() as u64,
        },
        &LIMITS,
    );
    // The checks refuse exactly what the fields' own parsers and limits refuse.
    let recipients: Vec<Result<EndpointId, IdError>> =
        req.to.iter().map(|t| EndpointId::parse(t)).collect();
    let fields_ok = req.payload.len() as u64 <= LIMITS.payload_bytes_max
        && optional_ok(&req.from_practitioner, HpiI::parse)
        && optional_ok(&req.patient_ihi, Ihi::parse)
        && recipients.iter().all(Result::is_ok)
        && check_recipients(&recipients.iter().flatten().cloned().collect::<Vec<_>>()).is_ok()
        && req.payload_type.parse::<PayloadType>().is_ok()
        && req.priority.parse::<Priority>().is_ok()
        && (req.client_message_id.trim().is_empty()
            || check_client_message_id(&req.client_message_id).is_ok())
        && req.deliver_within_ms <= LIMITS.deliver_within_ms_max;
    assert_eq!(checked.is_ok(), fields_ok, "{checked:?}");
    if let Err(SendFormError::PayloadTooLarge { bytes, max }) = &checked {
        assert_eq!((*bytes, *max), (req.payload.len() as u64, LIMITS.payload_bytes_max));
    }

    let (Ok(from), Ok(checked)) = (from, checked) else {
        return;
    };
    if let Some(p) = &checked.practitioner {
        assert_eq!(p.as_str(), req.from_practitioner.trim());
        assert_eq!(HpiI::parse(p.as_str()).as_ref(), Ok(p));
    }
    if let Some(p) = &checked.patient {
        assert_eq!(p.as_str(), req.patient_ihi.trim());
        assert_eq!(Ihi::parse(p.as_str()).as_ref(), Ok(p));
    }
    assert_eq!(checked.recipients.len(), req.to.len());
    for (text, ep) in req.to.iter().zip(&checked.recipients) {
        assert_eq!(&ep.to_string(), text);
        assert_eq!(EndpointId::parse(&ep.to_string()).as_ref(), Ok(ep));
        check_hpio(ep.org.as_str(), &ep.org);
    }
    let payload_type = checked.payload_type;
    assert!(payload_type.as_str().eq_ignore_ascii_case(req.payload_type.trim()));
    assert_eq!(payload_type.as_str().parse::<PayloadType>(), Ok(payload_type));
    let priority = checked.priority;
    assert_eq!(priority.as_str().parse::<Priority>(), Ok(priority));
    let cid = checked
        .client_message_id
        .unwrap_or_else(|| GENERATED_ID.to_string());
    assert!(check_client_message_id(&cid).is_ok());
    let (practitioner, patient, recipients, within) = (
        checked.practitioner,
        checked.patient,
        checked.recipients,
        checked.deliver_within_ms,
    );

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
