//! The `audit` scenario: a store of N events generated straight into one node's state
//! machine (not through Raft: organisations registered and their endpoints published, in
//! entries of `--batch` commands), then the replay rate (events read, decoded and turned
//! into audit records with their canonical bytes, per second, and the stored megabytes per
//! second behind them), the time to read one message's history (a message sent, routed and
//! fetched after the generated events) and the newest hundredth of the store by time, each
//! by a scan and the way the Audit service reads it now, and the time to rebuild every view
//! from the event store and compare it with the live one.

use std::time::{Duration, Instant};

use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload};
use sealpost_core::Batch;
use sealpost_core::codec;
use sealpost_core::command::{Command, DeliveryVerdict, Proposal};
use sealpost_core::directory::{AuState, EndpointSpec, OrganisationSpec, PayloadType, PublicKeys};
use sealpost_core::ids::{EndpointId, HpiO, Ihi};
use sealpost_core::message::{
    ENVELOPE_VERSION, Envelope, EnvelopeHeader, MessageId, Priority, SealedCopy, Sender,
    payload_digest,
};
use sealpost_store::StateMachine;
use sealpost_store::rebuild::RebuildPhase;
use sealpost_store::types::{Entry, LogId};

#[derive(clap::Args, Debug)]
pub struct AuditArgs {
    /// Events to generate (half organisations, half endpoints).
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Commands per log entry while generating.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Skip the view rebuild.
    #[arg(long)]
    no_rebuild: bool,
    /// Skip the replay (measure the rebuild alone).
    #[arg(long)]
    no_replay: bool,
    /// Keep the generated store in this folder and reuse it when it is already there
    /// (default: a temporary folder, removed at the end).
    #[arg(long)]
    store: Option<std::path::PathBuf>,
}

fn org(serial: u64) -> OrganisationSpec {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&serial.to_be_bytes());
    key[31] = 1;
    OrganisationSpec {
        hpio: HpiO::from_serial(serial),
        name: format!("Bench clinic {serial}"),
        suburb: "Parkville".into(),
        state: AuState::Vic,
        postcode: "3052".into(),
        keys: PublicKeys {
            key_id: "k1".into(),
            encryption: key,
            signing: key,
        },
    }
}

pub async fn run(a: AuditArgs) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = a.store.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    let reuse = dir.join("ACTIVE").exists();
    let mut sm = StateMachine::open(&dir, !reuse, false)?;
    let orgs = a.events / 2;
    println!(
        "scenario: audit, {} events generated into one state machine ({} per entry){}",
        orgs * 2,
        a.batch,
        if reuse { "; reusing the store" } else { "" }
    );
    let started = Instant::now();
    let mut index = 1u64;
    let mut commands: Vec<Command> = Vec::with_capacity(a.batch);
    for serial in (1..=orgs).filter(|_| !reuse) {
        commands.push(Command::RegisterOrganisation(org(serial)));
        commands.push(Command::PublishEndpoint(EndpointSpec {
            id: EndpointId::service(HpiO::from_serial(serial), "reception")?,
            display_name: format!("Reception {serial}"),
            specialty: "General practice".into(),
            payload_types: vec![PayloadType::Hl7Result, PayloadType::Text],
        }));
        if commands.len() >= a.batch || serial == orgs {
            apply(&mut sm, index, commands.drain(..)).await?;
            index += 1;
        }
    }
    let generated = started.elapsed();
    let view = sm.view();
    let total = view.status()?.event_count;
    println!(
        "generated {total} events in {:.1} s ({:.0} events/s through decide, fold and one write batch per entry)",
        generated.as_secs_f64(),
        total as f64 / generated.as_secs_f64()
    );

    if !reuse {
        add_message(&mut sm, index).await?;
    }
    let view = sm.view();
    if !a.no_replay {
        replay(&view)?;
        message_history(&view)?;
        time_window(&view)?;
    }
    if !a.no_rebuild {
        // CPU time is steadier than wall time on a shared machine: both are reported.
        let cpu = sealpost_harness::Watch::start(&[("rebuild".into(), std::process::id())])?;
        let started = Instant::now();
        let mut folded_at = None;
        let report = view.rebuild_views(false, |p| {
            if matches!(p, RebuildPhase::Comparing { .. }) && folded_at.is_none() {
                folded_at = Some(started.elapsed());
            }
        })?;
        let fold = folded_at.unwrap_or_default();
        println!(
            "rebuild views: {} events folded into a scratch database in {:.1} s ({:.0} events/s), {} views compared in {:.1} s; {:.1} s in all; all equal: {}",
            report.events,
            fold.as_secs_f64(),
            report.events as f64 / fold.as_secs_f64().max(1e-6),
            report.views.len(),
            (started.elapsed() - fold).as_secs_f64(),
            started.elapsed().as_secs_f64(),
            report.all_equal()
        );
        if let Some(c) = cpu.finish()?.first() {
            println!(
                "rebuild CPU: {:.1} s ({:.2} cores on average)",
                c.cpu_secs, c.cpu_cores_avg
            );
        }
        let sizes: Vec<String> = report
            .views
            .iter()
            .filter(|v| v.live_keys > 0)
            .map(|v| format!("{} {}", v.name, v.live_keys))
            .collect();
        println!("view keys: {}", sizes.join(", "));
    }
    Ok(())
}

/// The message whose history the scenario reads (the last thing in the store).
fn traced_message() -> anyhow::Result<MessageId> {
    Ok(MessageId::new(
        "bench-audit",
        "01890a5d-ac96-774b-bcce-000000000001",
    )?)
}

/// The patient the traced message is about (no other message names them).
fn traced_patient() -> Ihi {
    Ihi::from_serial(77)
}

/// Sends one message from organisation 1 to organisation 2's reception, routes it and
/// records a fetch, in the entry at `index` (shapes only: deciding does not open envelopes).
async fn add_message(sm: &mut StateMachine, index: u64) -> anyhow::Result<()> {
    let to = EndpointId::service(HpiO::from_serial(2), "reception")?;
    let id = traced_message()?;
    let created_ms = 1_800_000_000_000 + index;
    let send = Command::Send {
        envelope: Box::new(Envelope {
            header: EnvelopeHeader {
                version: ENVELOPE_VERSION,
                message_id: id.clone(),
                sender: Sender {
                    org: HpiO::from_serial(1),
                    practitioner: None,
                },
                sender_key_id: "k1".into(),
                recipients: vec![to.clone()],
                payload_type: PayloadType::Text,
                priority: Priority::Routine,
                patient: Some(traced_patient()),
                payload_digest: payload_digest(b"bench"),
                payload_bytes: 4096,
                created_ms,
                deliver_by_ms: created_ms + 86_400_000,
            },
            signature: vec![0; 64],
            sealed: vec![SealedCopy {
                org: to.org.clone(),
                key_id: "k1".into(),
                enc: vec![0; 32],
                ciphertext: vec![0; 4096 + 16],
            }],
        }),
        client_message_id: "bench-audit-1".into(),
    };
    let deliver = Command::Deliver {
        message_id: id.clone(),
        recipient: to.clone(),
        verdict: DeliveryVerdict::Route {
            ack_by_ms: created_ms + 86_400_000,
        },
    };
    let fetch = Command::Fetch {
        message_id: id,
        recipient: to,
    };
    apply(sm, index, [send, deliver, fetch]).await
}

/// Applies `commands` as the entry at `index` (its time: 1_800_000_000_000 ms + `index`).
async fn apply(
    sm: &mut StateMachine,
    index: u64,
    commands: impl IntoIterator<Item = Command>,
) -> anyhow::Result<()> {
    let entry = Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Batch {
            ts_ms: 1_800_000_000_000 + index,
            proposals: commands
                .into_iter()
                .map(|command| Proposal {
                    actor: "bench".into(),
                    command,
                })
                .collect(),
        }),
    };
    sm.apply(vec![entry])
        .await
        .map_err(|e| anyhow::anyhow!("apply: {e}"))?;
    Ok(())
}

/// One message's history two ways: the scan a replay filtered by message did before (every
/// event read and decoded, the message's kept), and the message's timeline view.
fn message_history(view: &sealpost_store::StateView) -> anyhow::Result<()> {
    let id = traced_message()?;
    let started = Instant::now();
    let mut scanned = Vec::new();
    view.replay_ordered(
        1,
        0,
        |_: &mut (), rec| (rec.event.message_id() == Some(&id)).then_some(rec.seq),
        |seq| {
            scanned.push(seq);
            true
        },
    )?;
    let scan = started.elapsed();
    let started = Instant::now();
    let mut indexed = Vec::new();
    view.for_each_message_event(&id, (1, u64::MAX), 1024, |rec| {
        indexed.push(rec.seq);
        true
    })?;
    let timeline = started.elapsed();
    anyhow::ensure!(
        scanned == indexed,
        "the timeline gave events {indexed:?}, the scan {scanned:?}"
    );
    let started = Instant::now();
    let about = view.patient_event_seqs(&traced_patient(), (1, u64::MAX))?;
    let patient = started.elapsed();
    anyhow::ensure!(
        about.as_ref() == Some(&indexed),
        "the patient index gave events {about:?}, the message's timeline {indexed:?}"
    );
    println!(
        "one message's history ({} events, the newest in the store): {:.3} s by a scan of every event, {:.3} ms through its timeline view; its patient's events: {:.3} ms through the patient index and the timeline",
        indexed.len(),
        scan.as_secs_f64(),
        timeline.as_secs_f64() * 1e3,
        patient.as_secs_f64() * 1e3
    );
    Ok(())
}

/// The newest hundredth of the store by time two ways: a replay filtered by time from the
/// first event, and the range the binary search on timestamps narrows it to.
fn time_window(view: &sealpost_store::StateView) -> anyhow::Result<()> {
    let newest = view.status()?.event_count;
    let since_ms = view
        .event(newest - newest / 100)?
        .ok_or_else(|| anyhow::anyhow!("the store has no event {}", newest - newest / 100))?
        .ts_ms;
    let read = |from: u64, to: u64| -> anyhow::Result<Vec<u64>> {
        let mut seqs = Vec::new();
        view.replay_ordered(
            from,
            to,
            |_: &mut (), rec| (rec.ts_ms >= since_ms).then_some(rec.seq),
            |seq| {
                seqs.push(seq);
                true
            },
        )?;
        Ok(seqs)
    };
    let started = Instant::now();
    let scanned = read(1, newest)?;
    let scan = started.elapsed();
    let started = Instant::now();
    let (from, to) = view.narrow_to_window((1, newest), since_ms, 0)?;
    let narrowed = read(from, to)?;
    let window = started.elapsed();
    anyhow::ensure!(
        scanned == narrowed,
        "the narrowed range gave {} events, the scan {}",
        narrowed.len(),
        scanned.len()
    );
    println!(
        "the newest hundredth by time ({} events): {:.3} s by a scan from the first event, {:.3} s from where the search on timestamps starts it",
        narrowed.len(),
        scan.as_secs_f64(),
        window.as_secs_f64()
    );
    Ok(())
}

/// The Audit service's replay path: pages read from one snapshot, decoded and turned into
/// audit records (with their canonical bytes) on the decoding workers, handed on in order.
fn replay(view: &sealpost_store::StateView) -> anyhow::Result<()> {
    let started = Instant::now();
    let (mut n, mut bytes, mut canonical) = (0u64, 0u64, 0u64);
    let mut last_seq = 0u64;
    view.replay_ordered(
        1,
        0,
        |_: &mut (), rec| {
            Some((
                rec.seq,
                codec::encoded_len(&rec) as u64,
                rec.canonical_bytes().len() as u64,
            ))
        },
        |(seq, stored, canon)| {
            assert_eq!(seq, last_seq + 1, "in order");
            last_seq = seq;
            n += 1;
            bytes += stored;
            canonical += canon;
            true
        },
    )?;
    let replay = started.elapsed().max(Duration::from_micros(1));
    println!(
        "replay: {n} events in {:.2} s: {:.0} audit records/s, {:.1} MB/s stored bytes read and decoded, {:.1} MB/s canonical bytes produced",
        replay.as_secs_f64(),
        n as f64 / replay.as_secs_f64(),
        bytes as f64 / 1e6 / replay.as_secs_f64(),
        canonical as f64 / 1e6 / replay.as_secs_f64()
    );
    Ok(())
}
