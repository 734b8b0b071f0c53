//! `sealpost audit ...`: evidence for auditors. `replay` streams events in order as
//! ATNA-shaped audit records (table, JSON Lines or CSV), filtered by time, message,
//! organisation, practitioner, patient or kind. `export` writes the event store (or a
//! range of it) as JSON Lines, each line carrying the exact canonical bytes that were
//! hashed, plus a manifest (first and last event, count, chain head); `verify-export`
//! checks such a folder offline, with no cluster: every hash, every link, every readable
//! field against its bytes, the lines against the manifest, and the provider's signed
//! checkpoint (`checkpoint.json`) against the lines' chain head and Merkle root. `search`
//! finds messages from the search index. The other evidence commands (verify, checkpoint,
//! prove, verify-proof) are in `evidence.rs`; `admin rebuild-views [--repair]` is here too,
//! with its progress bar.

use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Subcommand;
use sealpost_core::audit::{
    ExportLine, ExportManifest, ExportSummary, check_export_against, verify_export,
    verify_export_with,
};
use sealpost_core::event::Hash;
use sealpost_core::merkle::Frontier;
use sealpost_proto::v1 as pb;
use serde_json::json;

use crate::ClientOpts;
use crate::client_cmd::{connect_profile, status_err};
use crate::evidence;

/// The events file of an export folder.
pub const EVENTS_FILE: &str = "events.jsonl";
/// The manifest file of an export folder.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The checkpoint file of an export folder: the provider's signed checkpoint at the
/// export's last event.
pub const CHECKPOINT_FILE: &str = "checkpoint.json";
/// Longest line `verify-export` reads, in bytes (a `Sent` event's canonical bytes are
/// small: ciphertexts are covered by digest).
pub const EXPORT_LINE_BYTES_MAX: usize = 1024 * 1024;

/// Replay filters and output.
#[derive(clap::Args, Debug)]
pub struct ReplayArgs {
    /// First event sequence.
    #[arg(long, default_value_t = 1)]
    from: u64,
    /// Events at or after this time: YYYY-MM-DD, YYYY-MM-DDTHH:MM[:SS]Z (UTC) or ms since
    /// the Unix epoch.
    #[arg(long, alias = "since-ms", value_parser = parse_time)]
    since: Option<u64>,
    /// Events at or before this time (same forms).
    #[arg(long, alias = "until-ms", value_parser = parse_time)]
    until: Option<u64>,
    #[arg(long)]
    message: Option<String>,
    /// Events of messages this organisation (HPI-O) sent or receives, and its directory.
    #[arg(long)]
    org: Option<String>,
    /// Events of messages this practitioner (HPI-I) wrote or receives.
    #[arg(long)]
    practitioner: Option<String>,
    /// Events of messages about this patient (IHI).
    #[arg(long)]
    patient: Option<String>,
    /// One event kind: sent, received, relayed, decrypted, routed, fetched, acked, failed, ...
    #[arg(long)]
    kind: Option<String>,
    /// table, jsonl (ATNA-shaped records) or csv.
    #[arg(long, default_value = "table")]
    format: String,
}

/// A time as people type it (see `calendar::parse_utc`).
pub fn parse_time(s: &str) -> Result<u64, String> {
    sealpost_core::calendar::parse_utc(s)
}

/// Message search criteria and output.
#[derive(clap::Args, Debug)]
pub struct SearchArgs {
    /// Messages sent (or received from a peer) at or after this time: YYYY-MM-DD,
    /// YYYY-MM-DDTHH:MM[:SS]Z (UTC) or ms since the Unix epoch.
    #[arg(long, value_parser = parse_time)]
    since: Option<u64>,
    /// ... at or before this time (same forms).
    #[arg(long, value_parser = parse_time)]
    until: Option<u64>,
    /// Sender organisation (HPI-O).
    #[arg(long)]
    sender: Option<String>,
    /// Recipient organisation (HPI-O) or one endpoint (<HPI-O>/<service or HPI-I>).
    #[arg(long)]
    recipient: Option<String>,
    /// Patient (IHI).
    #[arg(long)]
    patient: Option<String>,
    /// Payload type: REF^I12, ORU^R01, MDM^T02, CDA, FHIR, PDF or TEXT.
    #[arg(long = "type")]
    payload_type: Option<String>,
    /// sent, routed, acked, failed, relayed, reprocessing, open or complete.
    #[arg(long)]
    status: Option<String>,
    #[arg(long, default_value_t = 100)]
    limit: u32,
    /// Go on from a previous search (its `next` cursor).
    #[arg(long)]
    cursor: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum AuditCmd {
    /// Stream events in order as audit records, optionally filtered.
    Replay(ReplayArgs),
    /// Find messages by date range, sender, recipient, patient, payload type and status
    /// (newest first).
    Search(SearchArgs),
    /// Write the event store as JSON Lines with the hashed bytes, and a manifest.
    Export {
        /// A new (or empty) folder.
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Last event to export (default: the newest).
        #[arg(long)]
        to: Option<u64>,
    },
    /// Check an export folder offline (and its checkpoint, when it has one).
    VerifyExport {
        dir: PathBuf,
        /// The provider's public key (hex) the checkpoint must be signed with.
        #[arg(long)]
        key: Option<String>,
    },
    /// Recompute the hash chain over a range of the connected node's event store (the
    /// whole store also recomputes the Merkle root).
    Verify {
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Last event (default: the newest).
        #[arg(long)]
        to: Option<u64>,
    },
    /// Fetch a checkpoint signed by the provider's key (JSON; keep it).
    Checkpoint {
        /// Events covered (default: all, at a linearizable read).
        #[arg(long)]
        size: Option<u64>,
        /// Save it to this file instead of printing it.
        #[arg(long)]
        out: Option<PathBuf>,
        /// The provider's public key (hex) the checkpoint must be signed with.
        #[arg(long)]
        key: Option<String>,
    },
    /// Prove that event SEQ is in a checkpoint's log (inclusion), or with --older that an
    /// older checkpoint's log is a prefix of this one's (consistency). Checked before shown.
    Prove {
        seq: Option<u64>,
        /// The checkpoint to prove against (a file from `audit checkpoint`).
        #[arg(long)]
        checkpoint: PathBuf,
        /// An older checkpoint: prove consistency from it to --checkpoint.
        #[arg(long)]
        older: Option<PathBuf>,
        /// Save the proof to this file (for `verify-proof`).
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long)]
        key: Option<String>,
    },
    /// Check a saved proof offline against its checkpoint(s).
    VerifyProof {
        proof: PathBuf,
        #[arg(long)]
        checkpoint: PathBuf,
        /// The older checkpoint, for a consistency proof.
        #[arg(long)]
        older: Option<PathBuf>,
        #[arg(long)]
        key: Option<String>,
    },
}

pub async fn audit(opts: &ClientOpts, cmd: AuditCmd) -> anyhow::Result<()> {
    match cmd {
        AuditCmd::Export { out, from, to } => export(opts, &out, from, to.unwrap_or(0)).await,
        AuditCmd::VerifyExport { dir, key } => verify(opts, &dir, key.as_deref()),
        AuditCmd::Replay(a) => replay(opts, a).await,
        AuditCmd::Search(a) => search(opts, a).await,
        AuditCmd::Verify { from, to } => evidence::verify_chain(opts, from, to).await,
        AuditCmd::Checkpoint { size, out, key } => evidence::checkpoint(opts, size, out, key).await,
        AuditCmd::Prove {
            seq,
            checkpoint,
            older,
            out,
            key,
        } => {
            let args = evidence::ProveArgs {
                seq,
                checkpoint,
                older,
                out,
                key,
            };
            evidence::prove(opts, args).await
        }
        AuditCmd::VerifyProof {
            proof,
            checkpoint,
            older,
            key,
        } => evidence::verify_proof(opts, &proof, &checkpoint, older.as_deref(), key.as_deref()),
    }
}

async fn search(opts: &ClientOpts, a: SearchArgs) -> anyhow::Result<()> {
    let (client, _) = connect_profile(opts).await?;
    let r = client
        .audit()
        .search(pb::MessageSearchRequest {
            since_ms: a.since.unwrap_or(0),
            until_ms: a.until.unwrap_or(0),
            sender_org: a.sender.unwrap_or_default(),
            recipient: a.recipient.unwrap_or_default(),
            patient: a.patient.unwrap_or_default(),
            payload_type: a.payload_type.unwrap_or_default(),
            status: a.status.unwrap_or_default(),
            limit: a.limit,
            cursor: a.cursor.unwrap_or_default(),
        })
        .await
        .map_err(status_err("audit search"))?
        .into_inner();
    if opts.json {
        let messages: Vec<serde_json::Value> = r
            .messages
            .iter()
            .map(|m| {
                json!({ "message_id": m.message_id, "sent_seq": m.sent_seq,
                    "sent_ts_ms": m.sent_ts_ms, "sender_org": m.sender_org,
                    "payload_type": m.payload_type, "priority": m.priority,
                    "recipients": m.recipients.iter().map(|x| json!({
                        "endpoint": x.endpoint, "state": x.state, "outcome": x.outcome })).collect::<Vec<_>>() })
            })
            .collect();
        println!(
            "{}",
            json!({ "messages": messages, "next": (!r.next_cursor.is_empty()).then_some(&r.next_cursor) })
        );
        return Ok(());
    }
    if r.messages.is_empty() {
        println!("no messages match");
    }
    for m in &r.messages {
        println!(
            "{} {} {} from {}",
            crate::output::utc_ms(m.sent_ts_ms),
            m.message_id,
            m.payload_type,
            m.sender_org
        );
        for x in &m.recipients {
            let outcome = if x.outcome.is_empty() {
                String::new()
            } else {
                format!(" ({})", x.outcome)
            };
            println!("    {} {}{outcome}", x.endpoint, x.state);
        }
    }
    if !r.next_cursor.is_empty() {
        println!("more: --cursor {}", r.next_cursor);
    }
    Ok(())
}

/// ATNA's event action code for an event kind: Create, Read, Update or Execute.
fn action(kind: &str) -> &'static str {
    match kind {
        "sent"
        | "received"
        | "organisation_registered"
        | "endpoint_published"
        | "keys_rotated"
        | "keys_provisioned" => "C",
        "fetched" => "R",
        "notifications_relayed"
        | "outcomes_notified"
        | "peer_directory_imported"
        | "reprocessed" => "E",
        "payloads_dropped" => "D",
        _ => "U",
    }
}

/// ATNA's outcome indicator: 0 success, 4 minor failure (rejected or error
/// acknowledgement), 8 serious failure (the message failed).
fn outcome_code(e: &pb::AuditEvent) -> u8 {
    match (e.kind.as_str(), e.outcome.as_str()) {
        ("failed", _) => 8,
        ("acked", "rejected" | "error") => 4,
        _ => 0,
    }
}

/// One event as an ATNA-shaped audit record (IHE ATNA / DICOM audit message fields).
fn atna(e: &pb::AuditEvent, provider: &str) -> serde_json::Value {
    let node = e.actor.rsplit_once("@node-").map(|(_, n)| n).unwrap_or("");
    let mut objects = Vec::new();
    if !e.message_id.is_empty() {
        objects.push(json!({ "type": "message", "id": e.message_id }));
    }
    if !e.patient_ihi.is_empty() {
        objects.push(json!({ "type": "patient", "id": e.patient_ihi, "id_type": "IHI" }));
    }
    if !e.payload_type.is_empty() {
        objects.push(json!({ "type": "document", "id": e.payload_type }));
    }
    let mut participants = vec![json!({ "user_id": e.actor, "role": "actor" })];
    if !e.sender_org.is_empty() {
        participants.push(json!({ "user_id": e.sender_org, "role": "source",
            "practitioner": e.sender_practitioner }));
    }
    if !e.recipient.is_empty() {
        participants.push(json!({ "user_id": e.recipient, "role": "destination" }));
    }
    json!({
        "seq": e.seq,
        "event_id": { "code": e.kind, "system": "sealpost" },
        "action": action(&e.kind),
        "time": crate::output::utc_ms(e.ts_ms),
        "outcome": outcome_code(e),
        "outcome_detail": e.outcome,
        "active_participants": participants,
        "audit_source": { "provider": provider, "node": node },
        "participant_objects": objects,
        "hash": hex::encode(&e.hash),
    })
}

async fn replay(opts: &ClientOpts, a: ReplayArgs) -> anyhow::Result<()> {
    let format = a.format.to_ascii_lowercase();
    if !matches!(format.as_str(), "table" | "jsonl" | "csv") {
        bail!("--format must be table, jsonl or csv, not {:?}", a.format);
    }
    let (client, profile) = connect_profile(opts).await?;
    let provider = profile.provider.clone().unwrap_or_default();
    let mut stream = client
        .audit()
        .replay(pb::ReplayRequest {
            from_seq: a.from,
            since_ms: a.since.unwrap_or(0),
            until_ms: a.until.unwrap_or(0),
            message_id: a.message.unwrap_or_default(),
            org: a.org.unwrap_or_default(),
            practitioner: a.practitioner.unwrap_or_default(),
            patient: a.patient.unwrap_or_default(),
            kind: a.kind.unwrap_or_default(),
            ..Default::default()
        })
        .await
        .map_err(status_err("audit replay"))?
        .into_inner();
    let out = std::io::stdout();
    let mut out = BufWriter::new(out.lock());
    if format == "csv" {
        writeln!(
            out,
            "seq,time,kind,action,outcome,message_id,recipient,sender_org,patient_ihi,payload_type,actor"
        )?;
    }
    let csv = |s: &str| {
        if s.contains([',', '"', '\n']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_string()
        }
    };
    while let Some(e) = stream.message().await.map_err(status_err("audit replay"))? {
        match format.as_str() {
            "jsonl" => writeln!(out, "{}", atna(&e, &provider))?,
            "csv" => writeln!(
                out,
                "{},{},{},{},{},{},{},{},{},{},{}",
                e.seq,
                crate::output::utc_ms(e.ts_ms),
                e.kind,
                action(&e.kind),
                csv(&e.outcome),
                csv(&e.message_id),
                csv(&e.recipient),
                csv(&e.sender_org),
                csv(&e.patient_ihi),
                csv(&e.payload_type),
                csv(&e.actor)
            )?,
            _ => writeln!(
                out,
                "#{:<8} {} {:<24} {:<46} {:<36} {:<14} {}",
                e.seq,
                crate::output::utc_ms(e.ts_ms),
                e.kind,
                e.message_id,
                e.recipient,
                e.outcome,
                e.actor
            )?,
        }
    }
    out.flush()?;
    Ok(())
}

async fn export(opts: &ClientOpts, out: &Path, from: u64, to: u64) -> anyhow::Result<()> {
    if out.exists() && std::fs::read_dir(out)?.next().is_some() {
        bail!("{} is not empty; export into a new folder", out.display());
    }
    std::fs::create_dir_all(out)?;
    let (client, _) = connect_profile(opts).await?;
    let mut stream = client
        .audit()
        .replay(pb::ReplayRequest {
            from_seq: from,
            to_seq: to,
            ..Default::default()
        })
        .await
        .map_err(status_err("audit replay"))?
        .into_inner();
    let path = out.join(EVENTS_FILE);
    let mut w = BufWriter::new(std::fs::File::create(&path)?);
    let mut lines = Vec::new();
    let mut n = 0usize;
    let mut first_seq: Option<u64> = None;
    let mut tree = Frontier::default();
    while let Some(e) = stream.message().await.map_err(status_err("audit replay"))? {
        let line = ExportLine {
            seq: e.seq,
            ts_ms: e.ts_ms,
            log_index: e.log_index,
            actor: e.actor,
            kind: e.kind,
            message_id: (!e.message_id.is_empty()).then_some(e.message_id),
            recipient: (!e.recipient.is_empty()).then_some(e.recipient),
            prev_hash: hex::encode(&e.prev_hash),
            hash: hex::encode(&e.hash),
            canonical: hex::encode(&e.canonical),
        };
        serde_json::to_writer(&mut w, &line)?;
        w.write_all(b"\n")?;
        n += 1;
        first_seq.get_or_insert(line.seq);
        if let Ok(h) = <Hash>::try_from(e.hash.as_slice()) {
            tree.push(&h, |_, _, _| {});
        }
        // Verified as it is written: an export that does not verify is never handed out.
        lines.push((n, Ok(line)));
        if lines.len() >= VERIFY_WINDOW_LINES {
            verify_so_far(&mut lines)?;
        }
    }
    w.flush()?;
    let last = verify_so_far(&mut lines)?;
    // The windows overlap by one line; the whole export spans from the first event
    // written to the last window's end.
    let from_genesis = first_seq == Some(1);
    let summary = ExportSummary {
        first_seq: first_seq.unwrap_or(last.first_seq),
        count: n as u64,
        from_genesis,
        root: from_genesis.then(|| tree.root()),
        ..last
    };
    let manifest = ExportManifest::of(&summary);
    std::fs::write(
        out.join(MANIFEST_FILE),
        serde_json::to_string_pretty(&manifest)?,
    )?;
    // The provider's signed checkpoint at the last exported event, held to the lines.
    let signed = match evidence::fetch_checkpoint(opts, summary.last_seq, None).await {
        Ok(cp) => {
            check_export_against(&summary, &cp)
                .context("the node's checkpoint does not match the exported events")?;
            std::fs::write(
                out.join(CHECKPOINT_FILE),
                serde_json::to_string_pretty(&cp.to_file())?,
            )?;
            true
        }
        Err(e) => {
            eprintln!("no checkpoint written: {e:#}");
            false
        }
    };
    if opts.json {
        println!(
            "{}",
            json!({ "dir": out, "manifest": manifest, "checkpoint": signed })
        );
    } else {
        println!(
            "exported events {}..={} ({}) to {}; chain head {}{}",
            manifest.first_seq,
            manifest.last_seq,
            manifest.count,
            out.display(),
            manifest.head,
            if signed {
                "; with the provider's signed checkpoint"
            } else {
                ""
            }
        );
    }
    Ok(())
}

/// Lines kept in memory while exporting before they are verified and dropped.
const VERIFY_WINDOW_LINES: usize = 100_000;

/// Verifies the buffered lines (the whole export when called once at the end).
fn verify_so_far(
    lines: &mut Vec<(usize, Result<ExportLine, String>)>,
) -> anyhow::Result<ExportSummary> {
    // Keep the last line: the next window must link to it.
    let tail = lines.last().cloned();
    let s = verify_export(lines.drain(..)).context("the exported events do not verify")?;
    if let Some(t) = tail {
        lines.push(t);
    }
    Ok(s)
}

fn verify(opts: &ClientOpts, dir: &Path, key: Option<&str>) -> anyhow::Result<()> {
    let manifest: ExportManifest = serde_json::from_slice(
        &std::fs::read(dir.join(MANIFEST_FILE))
            .with_context(|| format!("reading {}", dir.join(MANIFEST_FILE).display()))?,
    )
    .with_context(|| format!("{} is not an export manifest", MANIFEST_FILE))?;
    let file = std::fs::File::open(dir.join(EVENTS_FILE))
        .with_context(|| format!("reading {}", dir.join(EVENTS_FILE).display()))?;
    let reader = std::io::BufReader::new(file);
    let lines = reader.lines().enumerate().map(|(i, l)| {
        let parsed = match l {
            Ok(text) if text.len() > EXPORT_LINE_BYTES_MAX => Err(format!(
                "{} bytes, the limit is {EXPORT_LINE_BYTES_MAX}",
                text.len()
            )),
            Ok(text) => serde_json::from_str::<ExportLine>(&text)
                .map_err(|e| format!("not an export line: {e}")),
            Err(e) => Err(format!("unreadable: {e}")),
        };
        (i + 1, parsed)
    });
    let s = verify_export_with(lines, &manifest)?;
    let cp_path = dir.join(CHECKPOINT_FILE);
    let checkpoint = if cp_path.exists() {
        let cp = evidence::load_checkpoint(&cp_path, key)?;
        check_export_against(&s, &cp)?;
        Some(cp)
    } else if key.is_some() {
        bail!("--key was given but the export has no {CHECKPOINT_FILE}: nothing is signed");
    } else {
        None
    };
    if opts.json {
        println!(
            "{}",
            json!({ "ok": true, "first_seq": s.first_seq, "last_seq": s.last_seq,
                    "count": s.count, "head": hex::encode(s.head), "from_genesis": s.from_genesis,
                    "root": s.root.map(hex::encode),
                    "checkpoint_key": checkpoint.as_ref().map(|c| hex::encode(c.public_key)) })
        );
    } else {
        println!(
            "export verifies: events {}..={} ({}), chain head {}{}",
            s.first_seq,
            s.last_seq,
            s.count,
            hex::encode(s.head),
            if s.from_genesis {
                ", linked from the genesis"
            } else {
                ""
            }
        );
        match (&checkpoint, s.root) {
            (Some(cp), Some(root)) => println!(
                "checkpoint: signed by {} with key {}; its Merkle root {} is the root of these events",
                cp.provider,
                hex::encode(cp.public_key),
                hex::encode(root)
            ),
            (Some(cp), None) => println!(
                "checkpoint: signed by {} with key {}; its chain head matches (the Merkle root \
                 needs an export from event 1)",
                cp.provider,
                hex::encode(cp.public_key)
            ),
            (None, _) => println!("no checkpoint in the export: nothing signed was checked"),
        }
    }
    Ok(())
}

/// `sealpost admin ...`: operator checks of one node's state.
#[derive(Subcommand, Debug)]
pub enum AdminCmd {
    /// Rebuild every view from the event store (into a scratch database on the node) and
    /// compare each with the live one; fails when any differs, unless --repair replaced it.
    RebuildViews {
        /// Replace the live views that differ (applies wait while they are rewritten).
        #[arg(long)]
        repair: bool,
    },
    /// Take an online backup from the connected node into a new folder: the node builds a
    /// snapshot now and streams it; each file is checked against its SHA-256 and the
    /// manifest (BACKUP.toml) is written last. Restore it with `sealpost restore`.
    Backup {
        #[arg(long)]
        out: PathBuf,
    },
    /// A KEK rotation's last step: wrap every organisation key set the provider holds under
    /// the connected node's current KEK (`kek`), unwrapping each with the previous KEK it
    /// names (`previous_keks`). Run it once every node has both; then drop the old KEK.
    RewrapKeys {
        /// Count the key sets by the KEK they are wrapped under; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

pub async fn admin(opts: &ClientOpts, cmd: AdminCmd) -> anyhow::Result<()> {
    match cmd {
        AdminCmd::RebuildViews { repair } => rebuild_views(opts, repair).await,
        AdminCmd::RewrapKeys { dry_run } => {
            let (client, _) = connect_profile(opts).await?;
            let r = client
                .admin()
                .rewrap_keys(pb::RewrapKeysRequest { dry_run })
                .await
                .map_err(status_err("rewrap keys"))?
                .into_inner();
            let by_kek = r
                .before
                .iter()
                .map(|k| format!("{} under {}", k.key_sets, k.kek_id))
                .collect::<Vec<_>>()
                .join(", ");
            let text = if dry_run {
                format!(
                    "{} key sets ({}); the current KEK is {}; dry run: nothing re-wrapped",
                    r.key_sets,
                    if by_kek.is_empty() { "none" } else { &by_kek },
                    r.current_kek_id
                )
            } else {
                format!(
                    "{} key sets ({} before); re-wrapped {} under the current KEK {}",
                    r.key_sets,
                    if by_kek.is_empty() { "none" } else { &by_kek },
                    r.rewrapped,
                    r.current_kek_id
                )
            };
            crate::output::Out::new(opts.json).message(
                &text,
                serde_json::json!({
                    "current_kek_id": r.current_kek_id,
                    "key_sets": r.key_sets,
                    "before": r.before.iter().map(|k| serde_json::json!({
                        "kek_id": k.kek_id,
                        "key_sets": k.key_sets,
                    })).collect::<Vec<_>>(),
                    "rewrapped": r.rewrapped,
                    "dry_run": dry_run,
                }),
            );
            Ok(())
        }
        AdminCmd::Backup { out } => {
            let (client, _) = connect_profile(opts).await?;
            let out_fmt = crate::output::Out::new(opts.json);
            let m = client
                .backup_to(&out)
                .await
                .with_context(|| format!("backing up into {}", out.display()))?;
            let bytes: u64 = m.files.values().map(|(b, _)| b).sum();
            out_fmt.message(
                &format!(
                    "backup of {} from node {} in {}: {} events (chain head {}), through log \
                     index {}, {} files, {bytes} bytes",
                    m.provider,
                    m.node,
                    out.display(),
                    m.event_count,
                    m.chain_head,
                    m.last_log_index,
                    m.files.len()
                ),
                serde_json::json!({
                    "provider": m.provider,
                    "node": m.node,
                    "out": out,
                    "event_count": m.event_count,
                    "chain_head": m.chain_head,
                    "last_log_index": m.last_log_index,
                    "files": m.files.len(),
                    "bytes": bytes,
                }),
            );
            Ok(())
        }
    }
}

async fn rebuild_views(opts: &ClientOpts, repair: bool) -> anyhow::Result<()> {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    let (client, _) = connect_profile(opts).await?;
    let mut stream = client
        .admin()
        .rebuild_views(pb::RebuildViewsRequest { repair })
        .await
        .map_err(status_err("rebuild views"))?
        .into_inner();
    // A bar on the terminal (stderr), never in JSON output or a pipe.
    let bar = if opts.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
    };
    bar.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} ({per_sec}, {eta})")
            .map_err(|e| anyhow::anyhow!("progress template: {e}"))?
            .progress_chars("=> "),
    );
    let mut report = None;
    while let Some(p) = stream
        .message()
        .await
        .map_err(status_err("rebuild views"))?
    {
        match p.phase.as_str() {
            "done" => report = p.report,
            "repairing" => {
                bar.set_message("repairing");
                bar.tick();
            }
            phase => {
                bar.set_message(phase.to_string());
                bar.set_length(p.total);
                bar.set_position(p.done);
            }
        }
    }
    bar.finish_and_clear();
    let r = report.ok_or_else(|| anyhow::anyhow!("the node ended the rebuild without a report"))?;
    if opts.json {
        let views: Vec<serde_json::Value> = r
            .views
            .iter()
            .map(|v| {
                json!({ "name": v.name, "equal": v.equal, "live_keys": v.live_keys,
                        "rebuilt_keys": v.rebuilt_keys, "live_digest": v.live_digest,
                        "rebuilt_digest": v.rebuilt_digest })
            })
            .collect();
        println!(
            "{}",
            json!({ "events": r.events, "all_equal": r.all_equal,
                    "repaired_keys": r.repaired_keys, "views": views })
        );
    } else {
        println!("rebuilt every view from {} events:", r.events);
        for v in &r.views {
            println!(
                "  {:<14} {:>9} keys  {}",
                v.name,
                v.live_keys,
                if v.equal {
                    "equal".to_string()
                } else {
                    format!("DIFFERS: rebuilt {} keys", v.rebuilt_keys)
                }
            );
        }
        if r.repaired_keys > 0 {
            println!(
                "repaired: {} live keys rewritten or deleted",
                r.repaired_keys
            );
        }
    }
    if !(r.all_equal || repair && r.repaired_keys > 0) {
        bail!("some views differ from the fold of the event store");
    }
    Ok(())
}
