//! Audit evidence without I/O: an exported event line (readable fields beside the exact
//! canonical bytes that were hashed) and the offline verification of an export.
//!
//! A verifier needs no cluster and no trust in the exporter's readable fields: it
//! recomputes each line's hash from the canonical bytes, follows the chain (each record's
//! previous hash is inside its canonical bytes), checks that sequence numbers are dense,
//! and parses the frozen canonical layout back to compare every readable field with what
//! was hashed. A changed byte, a dropped, reordered or inserted line, or a readable field
//! that disagrees with its bytes is reported with the line it was found on.

use serde::{Deserialize, Serialize};

use crate::event::{
    CANONICAL_RECORD_VERSION, EventRecord, GENESIS_HASH, HASH_BYTES, Hash, hash_canonical,
};

/// The event kind each frozen canonical tag stands for.
pub fn kind_for_tag(tag: u16) -> Option<&'static str> {
    Some(match tag {
        1 => "organisation_registered",
        2 => "endpoint_published",
        3 => "endpoint_retired",
        4 => "keys_rotated",
        5 => "keys_provisioned",
        6 => "sent",
        7 => "decrypted",
        8 => "routed",
        9 => "fetched",
        10 => "acked",
        11 => "failed",
        12 => "peer_directory_imported",
        13 => "relayed",
        14 => "received",
        15 => "notifications_relayed",
        16 => "late_outcome",
        17 => "outcomes_notified",
        18 => "audit_read",
        _ => return None,
    })
}

/// One exported event: what an auditor reads, and the bytes that were hashed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportLine {
    pub seq: u64,
    pub ts_ms: u64,
    pub log_index: u64,
    pub actor: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
    /// Hex of the previous record's hash.
    pub prev_hash: String,
    /// Hex of this record's hash (SHA-256 of the canonical bytes).
    pub hash: String,
    /// Hex of the exact canonical bytes the hash covers.
    pub canonical: String,
}

impl ExportLine {
    pub fn from_record(rec: &EventRecord) -> Self {
        Self {
            seq: rec.seq,
            ts_ms: rec.ts_ms,
            log_index: rec.log_index,
            actor: rec.actor.clone(),
            kind: rec.event.kind().to_string(),
            message_id: rec.event.message_id().map(|m| m.to_string()),
            recipient: rec.event.recipient().map(|r| r.to_string()),
            prev_hash: hex::encode(rec.prev_hash),
            hash: hex::encode(rec.hash),
            canonical: hex::encode(rec.canonical_bytes()),
        }
    }
}

/// Why an export does not verify; `line` counts from 1.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    #[error("line {line}: {problem}")]
    Line { line: usize, problem: String },
    #[error("the export holds no events")]
    Empty,
    #[error("the lines hold {found}, but the manifest says {expected}")]
    Manifest { expected: String, found: String },
}

/// What a verified export covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportSummary {
    pub first_seq: u64,
    pub last_seq: u64,
    pub count: u64,
    /// The chain head after the last event.
    pub head: Hash,
    /// True when the export starts at the first event (linked from the genesis hash);
    /// otherwise it links from `prev_hash` of its first line, which the auditor compares
    /// with a checkpoint.
    pub from_genesis: bool,
}

/// The fields of a canonical record that its readable line repeats.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CanonicalFields {
    pub seq: u64,
    pub ts_ms: u64,
    pub log_index: u64,
    pub actor: String,
    pub prev_hash: Hash,
    pub kind: &'static str,
    pub message_id: Option<String>,
    pub recipient: Option<String>,
}

/// Reads the frozen canonical layout (see `canonical.rs`).
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.bytes.len());
        let end = end.ok_or_else(|| format!("canonical bytes end early at byte {}", self.at))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, String> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, String> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    fn str(&mut self) -> Result<String, String> {
        String::from_utf8(self.bytes()?.to_vec())
            .map_err(|_| format!("a text field before byte {} is not UTF-8", self.at))
    }

    /// An endpoint id as `write_endpoint_id` wrote it.
    fn endpoint(&mut self) -> Result<String, String> {
        let org = self.str()?;
        let _kind = self.u8()?;
        let local = self.str()?;
        Ok(format!("{org}/{local}"))
    }
}

/// The message id inside signed envelope header bytes (`SPENV`, version, message id).
fn header_message_id(header: &[u8]) -> Result<String, String> {
    let mut r = Reader {
        bytes: header,
        at: 0,
    };
    if r.take(5)? != crate::message::HEADER_LABEL {
        return Err("the signed header does not start with SPENV".into());
    }
    r.u8()?;
    r.str()
}

/// Parses a record's canonical bytes back into the fields its readable line repeats.
pub fn parse_canonical(bytes: &[u8]) -> Result<CanonicalFields, String> {
    let mut r = Reader { bytes, at: 0 };
    if r.take(4)? != b"SPEV" {
        return Err("canonical bytes do not start with SPEV".into());
    }
    let version = r.u8()?;
    if version != CANONICAL_RECORD_VERSION {
        return Err(format!(
            "canonical record version {version} is not {CANONICAL_RECORD_VERSION}"
        ));
    }
    let seq = r.u64()?;
    let ts_ms = r.u64()?;
    let log_index = r.u64()?;
    let actor = r.str()?;
    let mut prev_hash = [0u8; HASH_BYTES];
    prev_hash.copy_from_slice(r.take(HASH_BYTES)?);
    let tag = r.u16()?;
    let kind = kind_for_tag(tag).ok_or_else(|| format!("unknown event tag {tag}"))?;
    let (message_id, recipient) = match tag {
        // Sent: the signed header comes first.
        6 => (Some(header_message_id(r.bytes()?)?), None),
        // Received: the relaying provider, then the signed header.
        14 => {
            r.str()?;
            (Some(header_message_id(r.bytes()?)?), None)
        }
        // Relayed: the receipt's signed bytes (label, version, message id, ...).
        13 => {
            let receipt = r.bytes()?;
            let mut rr = Reader {
                bytes: receipt,
                at: 0,
            };
            if rr.take(crate::federation::RECEIPT_LABEL.len())? != crate::federation::RECEIPT_LABEL
            {
                return Err("a receipt does not start with SPRCPT".into());
            }
            rr.u8()?;
            (Some(rr.str()?), None)
        }
        // Message id then recipient.
        7..=11 | 16 => {
            let id = r.str()?;
            (Some(id), Some(r.endpoint()?))
        }
        _ => (None, None),
    };
    Ok(CanonicalFields {
        seq,
        ts_ms,
        log_index,
        actor,
        prev_hash,
        kind,
        message_id,
        recipient,
    })
}

fn hash_of_hex(line: usize, field: &str, s: &str) -> Result<Hash, AuditError> {
    let bad = |problem: String| AuditError::Line { line, problem };
    let v = hex::decode(s).map_err(|_| bad(format!("{field} is not hex")))?;
    v.try_into()
        .map_err(|_| bad(format!("{field} is not {HASH_BYTES} bytes")))
}

/// What an export says it holds, written beside its lines (and, with a checkpoint, signed):
/// a verifier holds the lines to it, so a dropped first or last line is caught too.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportManifest {
    pub first_seq: u64,
    pub last_seq: u64,
    pub count: u64,
    /// Hex of the chain head after the last event.
    pub head: String,
}

impl ExportManifest {
    pub fn of(summary: &ExportSummary) -> Self {
        Self {
            first_seq: summary.first_seq,
            last_seq: summary.last_seq,
            count: summary.count,
            head: hex::encode(summary.head),
        }
    }
}

/// Verifies an export against its manifest: the lines verify and hold exactly what the
/// manifest says.
pub fn verify_export_with(
    lines: impl IntoIterator<Item = (usize, Result<ExportLine, String>)>,
    manifest: &ExportManifest,
) -> Result<ExportSummary, AuditError> {
    let s = verify_export(lines)?;
    let found = ExportManifest::of(&s);
    if &found != manifest {
        return Err(AuditError::Manifest {
            expected: format!(
                "events {}..={} ({}), head {}",
                manifest.first_seq, manifest.last_seq, manifest.count, manifest.head
            ),
            found: format!(
                "events {}..={} ({}), head {}",
                found.first_seq, found.last_seq, found.count, found.head
            ),
        });
    }
    Ok(s)
}

/// Verifies an export line by line, in order. `lines` yields each line's number (from 1)
/// and its parsed content (or why it did not parse).
pub fn verify_export(
    lines: impl IntoIterator<Item = (usize, Result<ExportLine, String>)>,
) -> Result<ExportSummary, AuditError> {
    let mut summary: Option<ExportSummary> = None;
    for (n, line) in lines {
        let bad = |problem: String| AuditError::Line { line: n, problem };
        let line = line.map_err(bad)?;
        let canonical =
            hex::decode(&line.canonical).map_err(|_| bad("canonical is not hex".into()))?;
        let hash = hash_of_hex(n, "hash", &line.hash)?;
        if hash_canonical(&canonical) != hash {
            return Err(bad(format!(
                "event {}: its canonical bytes do not hash to its hash (altered)",
                line.seq
            )));
        }
        let f = parse_canonical(&canonical).map_err(|p| bad(format!("event {}: {p}", line.seq)))?;
        let readable_prev = hash_of_hex(n, "prev_hash", &line.prev_hash)?;
        let disagree = [
            ("seq", line.seq != f.seq),
            ("ts_ms", line.ts_ms != f.ts_ms),
            ("log_index", line.log_index != f.log_index),
            ("actor", line.actor != f.actor),
            ("prev_hash", readable_prev != f.prev_hash),
            ("kind", line.kind != f.kind),
            ("message_id", line.message_id != f.message_id),
            ("recipient", line.recipient != f.recipient),
        ];
        if let Some((field, _)) = disagree.iter().find(|(_, d)| *d) {
            return Err(bad(format!(
                "event {}: the readable {field} disagrees with the hashed bytes",
                f.seq
            )));
        }
        match summary.as_mut() {
            None => {
                if f.seq == 1 && f.prev_hash != GENESIS_HASH {
                    return Err(bad("event 1 does not link to the genesis hash".into()));
                }
                summary = Some(ExportSummary {
                    first_seq: f.seq,
                    last_seq: f.seq,
                    count: 1,
                    head: hash,
                    from_genesis: f.seq == 1,
                });
            }
            Some(s) => {
                if f.seq != s.last_seq + 1 {
                    return Err(bad(format!(
                        "expected event {}, found event {} (a line is missing, moved or added)",
                        s.last_seq + 1,
                        f.seq
                    )));
                }
                if f.prev_hash != s.head {
                    return Err(bad(format!(
                        "event {} does not link to event {} (previous hash mismatch)",
                        f.seq, s.last_seq
                    )));
                }
                s.last_seq = f.seq;
                s.count += 1;
                s.head = hash;
            }
        }
    }
    summary.ok_or(AuditError::Empty)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::OrganisationSpec;
    use crate::event::Event;
    use crate::ids::{EndpointId, HpiO};
    use crate::message::{AckStatus, MessageId};

    fn chain() -> Vec<EventRecord> {
        let id = MessageId::new("prov-a", "01890a5d-ac96-774b-bcce-b302099a8057").expect("id");
        let r = EndpointId::service(HpiO::from_serial(2), "desk").expect("ep");
        let events = vec![
            Event::OrganisationRegistered(OrganisationSpec::sample(1)),
            Event::Decrypted {
                message_id: id.clone(),
                recipient: r.clone(),
            },
            Event::Routed {
                message_id: id.clone(),
                recipient: r.clone(),
                ack_by_ms: 99,
            },
            Event::Acked {
                message_id: id,
                recipient: r,
                status: AckStatus::Accepted,
                note: "thanks".into(),
            },
        ];
        let mut prev = GENESIS_HASH;
        events
            .into_iter()
            .enumerate()
            .map(|(i, e)| {
                let seq = i as u64 + 1;
                let rec = EventRecord::chain(seq, 1000 + seq, seq, format!("actor-{seq}"), prev, e);
                prev = rec.hash;
                rec
            })
            .collect()
    }

    fn lines(recs: &[EventRecord]) -> Vec<String> {
        recs.iter()
            .map(|r| serde_json_line(&ExportLine::from_record(r)))
            .collect()
    }

    /// A minimal JSON rendering for tests, so core needs no JSON crate: the verifier is fed
    /// parsed lines, and tampering happens on the rendered text through `parse_line`.
    fn serde_json_line(l: &ExportLine) -> String {
        format!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            l.seq,
            l.ts_ms,
            l.log_index,
            l.actor,
            l.kind,
            l.message_id.clone().unwrap_or_default(),
            l.recipient.clone().unwrap_or_default(),
            l.prev_hash,
            l.hash,
            l.canonical
        )
    }

    fn parse_line(s: &str) -> Result<ExportLine, String> {
        let f: Vec<&str> = s.split('\t').collect();
        if f.len() != 10 {
            return Err("wrong field count".into());
        }
        let num = |v: &str| v.parse::<u64>().map_err(|_| "not a number".to_string());
        let opt = |v: &str| (!v.is_empty()).then(|| v.to_string());
        Ok(ExportLine {
            seq: num(f[0])?,
            ts_ms: num(f[1])?,
            log_index: num(f[2])?,
            actor: f[3].into(),
            kind: f[4].into(),
            message_id: opt(f[5]),
            recipient: opt(f[6]),
            prev_hash: f[7].into(),
            hash: f[8].into(),
            canonical: f[9].into(),
        })
    }

    fn verify_alone(text: &[String]) -> Result<ExportSummary, AuditError> {
        verify_export(text.iter().enumerate().map(|(i, l)| (i + 1, parse_line(l))))
    }

    /// Verifies against the manifest of the untampered export.
    fn verify(text: &[String]) -> Result<ExportSummary, AuditError> {
        let manifest = ExportManifest::of(&verify_alone(&lines(&chain())).expect("good"));
        verify_export_with(
            text.iter().enumerate().map(|(i, l)| (i + 1, parse_line(l))),
            &manifest,
        )
    }

    #[test]
    fn an_intact_export_verifies_and_names_its_head() {
        let recs = chain();
        let s = verify(&lines(&recs)).expect("verifies");
        assert_eq!((s.first_seq, s.last_seq, s.count), (1, 4, 4));
        assert_eq!(s.head, recs[3].hash);
        assert!(s.from_genesis);
        let f = parse_canonical(&recs[3].canonical_bytes()).expect("parses");
        assert_eq!(f.kind, "acked");
        assert_eq!(
            f.recipient.as_deref(),
            Some(recs[3].event.recipient().expect("r").to_string().as_str())
        );
    }

    /// Every single changed character of every line is detected, and so is every dropped,
    /// swapped or repeated line.
    #[test]
    fn any_tampering_is_detected() {
        let good = lines(&chain());
        let mut checked = 0;
        for (li, line) in good.iter().enumerate() {
            for (ci, ch) in line.char_indices() {
                if ch == '\t' {
                    continue;
                }
                let replacement = match ch {
                    '0' => '1',
                    'a' => 'b',
                    '9' => '8',
                    c if c.is_ascii_digit() => '0',
                    c if c.is_ascii_hexdigit() => 'a',
                    _ => 'z',
                };
                if replacement == ch {
                    continue;
                }
                let mut bad = good.clone();
                let mut s = line.clone();
                s.replace_range(ci..ci + ch.len_utf8(), &replacement.to_string());
                bad[li] = s;
                assert!(
                    verify(&bad).is_err(),
                    "line {li} char {ci} changed undetected"
                );
                checked += 1;
            }
        }
        assert!(checked > 1000, "{checked} positions");
        for i in 0..good.len() {
            let mut dropped = good.clone();
            dropped.remove(i);
            assert!(verify(&dropped).is_err(), "dropping line {i}");
            // Alone, a dropped first or last line leaves a shorter export that still
            // verifies: the manifest is what catches it.
            if i == 0 || i + 1 == good.len() {
                assert!(verify_alone(&dropped).is_ok());
            }
            let mut repeated = good.clone();
            repeated.insert(i, good[i].clone());
            assert!(verify(&repeated).is_err(), "repeating line {i}");
        }
        for i in 0..good.len() - 1 {
            let mut swapped = good.clone();
            swapped.swap(i, i + 1);
            assert!(
                verify(&swapped).is_err(),
                "swapping lines {i} and {}",
                i + 1
            );
        }
        assert_eq!(verify(&[]), Err(AuditError::Empty));
    }
}
