//! `sealpost audit ...`: evidence for auditors. `export` writes the event store (or a
//! range of it) as JSON Lines, each line carrying the exact canonical bytes that were
//! hashed, plus a manifest (first and last event, count, chain head); `verify-export`
//! checks such a folder offline, with no cluster: every hash, every link, every readable
//! field against its bytes, and the lines against the manifest.

use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Subcommand;
use sealpost_core::audit::{
    ExportLine, ExportManifest, ExportSummary, verify_export, verify_export_with,
};
use sealpost_proto::v1 as pb;
use serde_json::json;

use crate::ClientOpts;
use crate::client_cmd::{connect_profile, status_err};

/// The events file of an export folder.
pub const EVENTS_FILE: &str = "events.jsonl";
/// The manifest file of an export folder.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Longest line `verify-export` reads, in bytes (a `Sent` event's canonical bytes are
/// small: ciphertexts are covered by digest).
pub const EXPORT_LINE_BYTES_MAX: usize = 1024 * 1024;

#[derive(Subcommand, Debug)]
pub enum AuditCmd {
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
    /// Check an export folder offline.
    VerifyExport { dir: PathBuf },
}

pub async fn audit(opts: &ClientOpts, cmd: AuditCmd) -> anyhow::Result<()> {
    match cmd {
        AuditCmd::Export { out, from, to } => export(opts, &out, from, to.unwrap_or(0)).await,
        AuditCmd::VerifyExport { dir } => verify(opts, &dir),
    }
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
        })
        .await
        .map_err(status_err("audit replay"))?
        .into_inner();
    let path = out.join(EVENTS_FILE);
    let mut w = BufWriter::new(std::fs::File::create(&path)?);
    let mut lines = Vec::new();
    let mut n = 0usize;
    let mut first_seq: Option<u64> = None;
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
    let manifest = ExportManifest::of(&ExportSummary {
        first_seq: first_seq.unwrap_or(last.first_seq),
        count: n as u64,
        ..last
    });
    std::fs::write(
        out.join(MANIFEST_FILE),
        serde_json::to_string_pretty(&manifest)?,
    )?;
    if opts.json {
        println!("{}", json!({ "dir": out, "manifest": manifest }));
    } else {
        println!(
            "exported events {}..={} ({}) to {}; chain head {}",
            manifest.first_seq,
            manifest.last_seq,
            manifest.count,
            out.display(),
            manifest.head
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

fn verify(opts: &ClientOpts, dir: &Path) -> anyhow::Result<()> {
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
    if opts.json {
        println!(
            "{}",
            json!({ "ok": true, "first_seq": s.first_seq, "last_seq": s.last_seq,
                    "count": s.count, "head": hex::encode(s.head), "from_genesis": s.from_genesis })
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
    }
    Ok(())
}
