//! Shared fixtures of sealpost's fuzz targets and of the seed corpus generator
//! (`examples/gen_corpus.rs`): organisation keys made from fixed seed bytes, valid sealed
//! envelopes, event records, Raft batches and `SendRequest`s, and the input layouts of the
//! targets that read a small header before their data. Everything here is deterministic
//! except the HPKE ephemeral keys inside sealed copies (the crypto crate draws them from
//! the operating system): headers and Ed25519 signatures are the same in every process,
//! so a sealed envelope written to the corpus by one process opens in any other.

use std::sync::OnceLock;

use sealpost_core::batch::{Batch, BatchOutcome, Outcome};
use sealpost_core::codec;
use sealpost_core::command::{Command, DeliveryVerdict, Proposal, Rejection};
use sealpost_core::directory::{AuState, EndpointSpec, OrganisationSpec, PayloadType};
use sealpost_core::event::{Event, EventRecord, GENESIS_HASH};
use sealpost_core::federation::{PeerChange, RemoteOutcome, TransportReceipt};
use sealpost_core::ids::{EndpointId, HpiI, HpiO, Ihi};
use sealpost_core::message::{
    AckStatus, ENVELOPE_VERSION, Envelope, EnvelopeHeader, FailReason, MessageId, Priority, Sender,
};
use sealpost_crypto::envelope;
use sealpost_crypto::kek::{KEK_FILE_HEADER, KEK_ID_BYTES, Kek, WRAP_AAD_LABEL, WRAP_VERSION};
use sealpost_crypto::keys::OrgKeys;
use sealpost_proto::v1::SendRequest;

/// The fixed key-encryption key that wraps the fixture organisations' seed bytes.
const KEK_SECRET: [u8; 32] = [0x5e; 32];

/// Provider id in the fixtures' message ids.
pub const PROVIDER: &str = "prov-a";

/// Creation time of the fixture envelopes, ms since the Unix epoch (2025-03-13).
pub const CREATED_MS: u64 = 1_741_900_000_000;

/// The fixed KEK, loaded once through the crypto crate's own file format (the only public
/// way to build a KEK from known bytes): written to a per-process temporary file, read
/// back and removed.
fn kek() -> &'static Kek {
    static KEK: OnceLock<Kek> = OnceLock::new();
    KEK.get_or_init(|| {
        let path =
            std::env::temp_dir().join(format!("sealpost-fuzz-kek-{}.txt", std::process::id()));
        let hex: String = KEK_SECRET.iter().map(|b| format!("{b:02x}")).collect();
        std::fs::write(&path, format!("{KEK_FILE_HEADER}\n{hex}\n"))
            .expect("the temporary KEK file is writable");
        let kek = Kek::load(&path);
        let _ = std::fs::remove_file(&path);
        kek.expect("the fixed KEK loads")
    })
}

/// Organisation key pairs derived from one seed byte: the secret halves are fixed bytes,
/// wrapped here exactly as `Kek::wrap` lays them out and recovered with `Kek::unwrap`, so
/// the same seed gives the same keys in every process.
pub fn org_keys(org: &HpiO, key_id: &str, seed: u8) -> OrgKeys {
    use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
    let kek = kek();
    let id_hex = kek.id_hex();
    let mut blob = vec![WRAP_VERSION];
    for i in 0..KEK_ID_BYTES {
        let byte = id_hex
            .get(2 * i..2 * i + 2)
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .expect("a KEK id is hexadecimal");
        blob.push(byte);
    }
    let nonce = [seed; 12];
    blob.extend_from_slice(&nonce);
    let mut secrets: Vec<u8> = (0..32u8)
        .map(|i| seed ^ i.wrapping_mul(7))
        .chain((0..32u8).map(|i| seed.wrapping_add(0x80) ^ i.wrapping_mul(13)))
        .collect();
    let mut aad = WRAP_AAD_LABEL.to_vec();
    aad.extend_from_slice(org.as_str().as_bytes());
    aad.push(0);
    aad.extend_from_slice(key_id.as_bytes());
    let key = LessSafeKey::new(
        UnboundKey::new(&CHACHA20_POLY1305, &KEK_SECRET).expect("a 32-byte ChaCha20 key"),
    );
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(&aad[..]),
        &mut secrets,
    )
    .expect("sealing 64 bytes cannot fail");
    blob.extend_from_slice(&secrets);
    kek.unwrap(org, key_id, &blob)
        .expect("the fixed wrapped keys unwrap")
}

/// An organisation and its key pairs.
pub struct Party {
    pub org: HpiO,
    pub keys: OrgKeys,
}

/// One valid sealed envelope, its storage encoding and the payload it carries.
pub struct Sealed {
    pub envelope: Envelope,
    pub bytes: Vec<u8>,
    pub payload: Vec<u8>,
}

/// The sender, the two recipient organisations and the valid envelopes between them.
pub struct Fixture {
    pub sender: Party,
    /// Organisation B (two service endpoints, a practitioner) and C (services).
    pub recipients: [Party; 2],
    pub sealed: Vec<Sealed>,
}

impl Fixture {
    /// The recipient organisation `org`, if it is one of the fixture's.
    pub fn recipient(&self, org: &HpiO) -> Option<&Party> {
        self.recipients.iter().find(|p| &p.org == org)
    }

    /// The sender's Ed25519 verifying key.
    pub fn sender_signing(&self) -> [u8; 32] {
        self.sender.keys.signing_public()
    }
}

/// The header (before sealing fills in digest, size and key id) and payload of fixture
/// envelope `case`.
fn header_and_payload(case: usize, b: &HpiO, c: &HpiO, sender: &HpiO) -> (EnvelopeHeader, Vec<u8>) {
    let svc = |org: &HpiO, slug: &str| EndpointId::service(org.clone(), slug).expect("slug");
    let (recipients, payload_type, priority, patient, practitioner, payload) = match case {
        0 => (
            vec![svc(b, "cardiology"), svc(b, "renal"), svc(c, "pathology")],
            PayloadType::Hl7Referral,
            Priority::Urgent,
            Some(Ihi::from_serial(5)),
            Some(HpiI::from_serial(7)),
            sealpost_hl7::samples::REF_I12.as_bytes().to_vec(),
        ),
        1 => (
            vec![EndpointId::practitioner(b.clone(), HpiI::from_serial(9))],
            PayloadType::Text,
            Priority::Routine,
            None,
            None,
            b"Please call the clinic about the results.".to_vec(),
        ),
        _ => (
            vec![svc(c, "pathology-results")],
            PayloadType::Pdf,
            Priority::Routine,
            None,
            Some(HpiI::from_serial(11)),
            Vec::new(),
        ),
    };
    let uuid = format!("01890a5d-ac96-774b-bcce-b3020990000{}", case % 10);
    let header = EnvelopeHeader {
        version: ENVELOPE_VERSION,
        message_id: MessageId::new(PROVIDER, &uuid).expect("a valid message id"),
        sender: Sender {
            org: sender.clone(),
            practitioner,
        },
        sender_key_id: String::new(),
        recipients,
        payload_type,
        priority,
        patient,
        payload_digest: [0; 32],
        payload_bytes: 0,
        created_ms: CREATED_MS + case as u64,
        deliver_by_ms: CREATED_MS + case as u64 + 86_400_000,
    };
    (header, payload)
}

/// Number of fixture envelopes.
pub const SEALED_CASES: usize = 3;

/// The fixture, built once per process. Every envelope is checked to open for each of its
/// recipient organisations before any target runs.
pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let party = |serial: u64, key_id: &str, seed: u8| {
            let org = HpiO::from_serial(serial);
            let keys = org_keys(&org, key_id, seed);
            Party { org, keys }
        };
        let sender = party(1, "a-2025", 0x11);
        let recipients = [party(2, "b-2025", 0x22), party(3, "c-2025", 0x33)];
        let keys: Vec<_> = recipients
            .iter()
            .map(|p| (p.org.clone(), p.keys.public_keys()))
            .collect();
        let sealed = (0..SEALED_CASES)
            .map(|case| {
                let (header, payload) =
                    header_and_payload(case, &recipients[0].org, &recipients[1].org, &sender.org);
                let envelope = envelope::seal(header, &sender.keys, &keys, &payload)
                    .expect("the fixture envelope seals");
                for org in envelope.header.recipient_orgs() {
                    let to = recipients
                        .iter()
                        .find(|p| p.org == org)
                        .expect("a fixture recipient");
                    let opened =
                        envelope::open(&envelope, &org, &to.keys, &sender.keys.signing_public())
                            .expect("an unmodified fixture envelope opens");
                    assert_eq!(opened.as_slice(), payload.as_slice());
                }
                let bytes = codec::encode(&envelope);
                Sealed {
                    envelope,
                    bytes,
                    payload,
                }
            })
            .collect();
        Fixture {
            sender,
            recipients,
            sealed,
        }
    })
}

/// Input layout of the `envelope_open` target. Byte 0 chooses: bit 0 the mode ([`RAW`]:
/// the rest is a serialized envelope; [`EDIT`]: the rest is a list of edits applied to a
/// fixture envelope's bytes), bit 1 the organisation to open as (B or C), bits 2.. the
/// fixture envelope to edit. An edit is 4 bytes: operation, position (u16, big-endian)
/// and value; see [`apply_edits`].
pub mod envelope_input {
    /// Mode bit value: the rest of the input is a serialized envelope.
    pub const RAW: u8 = 0;
    /// Mode bit value: the rest of the input edits a fixture envelope.
    pub const EDIT: u8 = 1;
    /// Bytes of one edit.
    pub const EDIT_BYTES: usize = 4;
    /// Most edits applied from one input.
    pub const EDITS_MAX: usize = 32;

    /// Applies the edits in `edits` to `bytes`: operation 0 XORs the value into the byte at
    /// the position, 1 sets it, 2 inserts the value before it, 3 deletes it, 4 truncates
    /// there (positions wrap around the current length).
    pub fn apply_edits(bytes: &mut Vec<u8>, edits: &[u8]) {
        for e in edits.chunks_exact(EDIT_BYTES).take(EDITS_MAX) {
            let &[op, hi, lo, value] = e else { continue };
            let pos = usize::from(u16::from_be_bytes([hi, lo]));
            let len = bytes.len();
            match op % 5 {
                0 if len > 0 => bytes[pos % len] ^= value,
                1 if len > 0 => bytes[pos % len] = value,
                2 => bytes.insert(pos % (len + 1), value),
                3 if len > 0 => {
                    bytes.remove(pos % len);
                }
                4 => bytes.truncate(pos % (len + 1)),
                _ => {}
            }
        }
    }
}

/// Input layout of the `mllp_codec` target: bytes 0-1 pick the largest frame (u16,
/// big-endian: below 0x8000 that many bytes, else the default 16 MiB), byte 2 the number
/// of chunk-size bytes that follow (modulo 9), then those sizes (cycled over the stream; 0
/// hands over everything left at once), then the byte stream itself.
pub mod mllp_input {
    use sealpost_hl7::mllp::MLLP_FRAME_BYTES_DEFAULT_MAX;

    /// Bytes before the chunk sizes.
    pub const HEADER_BYTES: usize = 3;
    /// Most chunk-size bytes.
    pub const CHUNK_SIZES_MAX: usize = 8;

    /// A decoded input.
    #[derive(Debug, Clone, Copy)]
    pub struct Plan<'a> {
        pub max_frame_bytes: usize,
        pub chunk_sizes: &'a [u8],
        pub stream: &'a [u8],
    }

    /// Splits an input into its plan; `None` when it is shorter than the header.
    pub fn parse(input: &[u8]) -> Option<Plan<'_>> {
        let (&[hi, lo, n], rest) = input.split_first_chunk::<HEADER_BYTES>()?;
        let selector = u16::from_be_bytes([hi, lo]);
        let max_frame_bytes = if selector & 0x8000 == 0 {
            usize::from(selector)
        } else {
            MLLP_FRAME_BYTES_DEFAULT_MAX
        };
        let n = usize::from(n) % (CHUNK_SIZES_MAX + 1);
        let n = n.min(rest.len());
        let (chunk_sizes, stream) = rest.split_at(n);
        Some(Plan {
            max_frame_bytes,
            chunk_sizes,
            stream,
        })
    }

    /// The input for a plan (the inverse of [`parse`]).
    pub fn build(selector: u16, chunk_sizes: &[u8], stream: &[u8]) -> Vec<u8> {
        assert!(chunk_sizes.len() <= CHUNK_SIZES_MAX);
        let mut out = selector.to_be_bytes().to_vec();
        out.push(chunk_sizes.len() as u8);
        out.extend_from_slice(chunk_sizes);
        out.extend_from_slice(stream);
        out
    }

    impl Plan<'_> {
        /// The stream cut into chunks as the plan says.
        pub fn chunks(&self) -> Vec<&[u8]> {
            let mut out = Vec::new();
            let mut rest = self.stream;
            let mut sizes = self.chunk_sizes.iter().cycle();
            while !rest.is_empty() {
                let size = match sizes.next() {
                    None | Some(0) => rest.len(),
                    Some(&s) => usize::from(s).min(rest.len()),
                };
                let (chunk, tail) = rest.split_at(size);
                out.push(chunk);
                rest = tail;
            }
            out
        }
    }
}

/// A chain of event records with one of each kind of event, as the event store holds them.
pub fn sample_records() -> Vec<EventRecord> {
    let f = fixture();
    let [b, c] = &f.recipients;
    let ep = |org: &HpiO, slug: &str| EndpointId::service(org.clone(), slug).expect("slug");
    let sent = &f.sealed[1].envelope;
    let id = sent.header.message_id.clone();
    let to = sent.header.recipients[0].clone();
    let receipt = TransportReceipt {
        message_id: f.sealed[2].envelope.header.message_id.clone(),
        header_digest: f.sealed[2].envelope.header.digest(),
        provider: "prov-b".into(),
        seq: 42,
        ts_ms: CREATED_MS + 1_000,
        signature: vec![7; 64],
    };
    let events = vec![
        Event::OrganisationRegistered(OrganisationSpec {
            hpio: f.sender.org.clone(),
            name: "Sunrise Medical Centre".into(),
            suburb: "Carlton".into(),
            state: AuState::Vic,
            postcode: "3053".into(),
            keys: f.sender.keys.public_keys(),
        }),
        Event::EndpointPublished(EndpointSpec {
            id: ep(&b.org, "cardiology"),
            display_name: "Cardiology".into(),
            specialty: "cardiology".into(),
            payload_types: vec![PayloadType::Hl7Referral, PayloadType::Text],
        }),
        Event::KeysRotated {
            org: c.org.clone(),
            keys: c.keys.public_keys(),
        },
        Event::KeysProvisioned {
            org: b.org.clone(),
            key_id: "b-2025".into(),
            wrapped: vec![1; 101],
        },
        Event::Sent {
            envelope: Box::new(sent.clone()),
            client_message_id: "cid-0001".into(),
        },
        Event::Decrypted {
            message_id: id.clone(),
            recipient: to.clone(),
        },
        Event::Routed {
            message_id: id.clone(),
            recipient: to.clone(),
            ack_by_ms: CREATED_MS + 3_600_000,
        },
        Event::Fetched {
            message_id: id.clone(),
            recipient: to.clone(),
        },
        Event::Acked {
            message_id: id.clone(),
            recipient: to.clone(),
            status: AckStatus::Accepted,
            note: "seen, thanks".into(),
        },
        Event::Failed {
            message_id: id.clone(),
            recipient: ep(&c.org, "pathology"),
            reason: FailReason::DecryptionFailed,
        },
        Event::PeerDirectoryImported {
            provider: "prov-b".into(),
            through_seq: 17,
            changes: vec![
                PeerChange::EndpointRetired(ep(&c.org, "renal")),
                PeerChange::KeysRotated {
                    org: c.org.clone(),
                    keys: c.keys.public_keys(),
                },
            ],
            skipped: 1,
        },
        Event::Relayed {
            receipt,
            outcome_by_ms: CREATED_MS + 7_200_000,
        },
        Event::Received {
            envelope: Box::new(f.sealed[2].envelope.clone()),
            from_provider: "prov-b".into(),
        },
        Event::NotificationsRelayed {
            provider: "prov-b".into(),
            through_seq: 9,
        },
        Event::LateOutcome {
            message_id: id.clone(),
            recipient: to.clone(),
            provider: "prov-b".into(),
            outcome: RemoteOutcome::Acked {
                status: AckStatus::Error,
                note: "wrong patient".into(),
            },
            peer_seq: 33,
        },
        Event::OutcomesNotified {
            org: f.sender.org.clone(),
            through_seq: 12,
        },
        Event::AuditRead {
            query: "org=8003620000000010".into(),
            from_seq: 1,
            to_seq: 16,
        },
        Event::Reprocessed {
            message_id: id,
            recipient: to,
            failed_seq: 10,
            deliver_by_ms: CREATED_MS + 90_000_000,
        },
        Event::PayloadsDropped {
            before_ts_ms: CREATED_MS,
            from_seq: 1,
            through_seq: 18,
        },
        Event::EndpointRetired {
            id: ep(&b.org, "renal"),
            reason: "service closed".into(),
        },
    ];
    let mut prev = GENESIS_HASH;
    events
        .into_iter()
        .enumerate()
        .map(|(i, event)| {
            let seq = i as u64 + 1;
            let rec = EventRecord::chain(
                seq,
                CREATED_MS + seq,
                seq + 3,
                "client:fuzz-fixture".into(),
                prev,
                event,
            );
            prev = rec.hash;
            rec
        })
        .collect()
}

/// Raft entry payloads with a few kinds of command, as the log holds them.
pub fn sample_batches() -> Vec<Batch> {
    let f = fixture();
    let [b, _] = &f.recipients;
    let sent = &f.sealed[1].envelope;
    let id = sent.header.message_id.clone();
    let to = sent.header.recipients[0].clone();
    let proposal = |command| Proposal {
        actor: "client:fuzz-fixture".into(),
        command,
    };
    vec![
        Batch {
            ts_ms: CREATED_MS,
            proposals: vec![
                proposal(Command::Send {
                    envelope: Box::new(sent.clone()),
                    client_message_id: "cid-0001".into(),
                }),
                proposal(Command::Deliver {
                    message_id: id.clone(),
                    recipient: to.clone(),
                    verdict: DeliveryVerdict::Route {
                        ack_by_ms: CREATED_MS + 3_600_000,
                    },
                }),
                proposal(Command::Ack {
                    message_id: id.clone(),
                    recipient: to.clone(),
                    status: AckStatus::Rejected,
                    note: "not our patient".into(),
                }),
            ],
        },
        Batch {
            ts_ms: CREATED_MS + 5,
            proposals: vec![
                proposal(Command::RegisterOrganisation(OrganisationSpec {
                    hpio: b.org.clone(),
                    name: "Harbour Hospital".into(),
                    suburb: "Sydney".into(),
                    state: AuState::Nsw,
                    postcode: "2000".into(),
                    keys: b.keys.public_keys(),
                })),
                proposal(Command::Expire {
                    message_id: id,
                    recipient: to,
                }),
                proposal(Command::DropPayloads {
                    before_ts_ms: CREATED_MS,
                    through_seq: 100,
                }),
            ],
        },
        Batch {
            ts_ms: CREATED_MS + 9,
            proposals: vec![proposal(Command::Receive {
                from_provider: "prov-b".into(),
                envelopes: vec![f.sealed[2].envelope.clone()],
            })],
        },
    ]
}

/// The state machine's answers to a few entries.
pub fn sample_outcomes() -> Vec<BatchOutcome> {
    vec![
        BatchOutcome::default(),
        BatchOutcome {
            outcomes: vec![
                Outcome::Applied {
                    first_seq: 5,
                    count: 1,
                },
                Outcome::Rejected(Rejection::NotFound("message prov-a:x".into())),
            ],
        },
    ]
}

/// `SendRequest`s as clients send them: valid ones of each shape and a few refused ones.
pub fn sample_send_requests() -> Vec<SendRequest> {
    let a = HpiO::from_serial(1).to_string();
    let b = HpiO::from_serial(2);
    let c = HpiO::from_serial(3);
    let ep = |org: &HpiO, local: &str| format!("{org}/{local}");
    let valid = SendRequest {
        from_org: a.clone(),
        from_practitioner: HpiI::from_serial(7).to_string(),
        to: vec![ep(&b, "cardiology")],
        payload_type: "REF^I12".into(),
        priority: "urgent".into(),
        patient_ihi: Ihi::from_serial(5).to_string(),
        client_message_id: "ref-0001".into(),
        payload: b"MSH|^~\\&|ExamplePMS|Sunrise|cardiology|Harbour|20250314||REF^I12|C1|P|2.4\r"
            .to_vec(),
        deliver_within_ms: 0,
    };
    vec![
        valid.clone(),
        SendRequest {
            from_practitioner: String::new(),
            to: vec![ep(&b, &HpiI::from_serial(9).to_string())],
            payload_type: "text".into(),
            priority: String::new(),
            patient_ihi: String::new(),
            client_message_id: String::new(),
            payload: b"Please call the clinic.".to_vec(),
            deliver_within_ms: 3_600_000,
            ..valid.clone()
        },
        SendRequest {
            to: vec![
                ep(&b, "cardiology"),
                ep(&b, "renal"),
                ep(&c, "pathology-results"),
            ],
            payload_type: " cda ".into(),
            priority: "Routine".into(),
            ..valid.clone()
        },
        SendRequest {
            from_org: "8003620000000011".into(),
            ..valid.clone()
        },
        SendRequest {
            to: vec![ep(&b, "cardiology"), ep(&b, "cardiology")],
            ..valid.clone()
        },
        SendRequest {
            payload_type: "ADT^A08".into(),
            priority: "stat".into(),
            ..valid
        },
        SendRequest::default(),
    ]
}
