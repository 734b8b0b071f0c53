//! Messaging commands: `send`, `inbox`, `fetch`, `ack`, `track` and `outbox`, each through
//! the chosen profile (whose client certificate names the organisation it acts for),
//! printed as text or JSON; and `dead-letters`, the operator's list of failed recipients.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use sealpost_proto::v1 as pb;
use serde_json::{Value, json};

use crate::ClientOpts;
use crate::client_cmd::{connect_profile, status_err};
use crate::output::Out;

/// Longest file `send` reads, in bytes: above any node's payload limit, so the node states
/// its own limit when a file is too large.
pub const SEND_FILE_BYTES_MAX: u64 = 64 * 1024 * 1024 + 1;

#[derive(Args, Debug)]
pub struct SendArgs {
    /// The sending organisation's HPI-O; must be the profile's organisation (default: it).
    #[arg(long)]
    pub from: Option<String>,
    /// HPI-I of the practitioner who wrote the message.
    #[arg(long)]
    pub practitioner: Option<String>,
    /// A recipient endpoint, <HPI-O>/<service> or <HPI-O>/<HPI-I>; repeat for several.
    #[arg(long = "to", required = true)]
    pub to: Vec<String>,
    /// REF^I12, ORU^R01, MDM^T02, CDA, FHIR, PDF or TEXT.
    #[arg(long = "type")]
    pub payload_type: String,
    /// The payload file ("-" reads standard input).
    #[arg(long)]
    pub file: PathBuf,
    /// routine or urgent.
    #[arg(long, default_value = "routine")]
    pub priority: String,
    /// The patient's IHI.
    #[arg(long)]
    pub patient: Option<String>,
    /// Idempotency key: a resend with the same id returns the original message id and
    /// sends nothing. Default: a fresh id.
    #[arg(long)]
    pub client_id: Option<String>,
    /// Fail the message as undeliverable if not routed within this many seconds.
    #[arg(long)]
    pub deliver_within_secs: Option<u64>,
}

#[derive(Args, Debug)]
pub struct InboxArgs {
    /// One endpoint of the profile's organisation (default: all of them).
    #[arg(long)]
    pub endpoint: Option<String>,
    /// Stream messages as they are routed (after showing those routed after --after).
    #[arg(long)]
    pub follow: bool,
    /// With --follow: resume after this routed sequence (a cursor printed by earlier output).
    #[arg(long, default_value_t = 0)]
    pub after: u64,
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
}

#[derive(Args, Debug)]
pub struct FetchArgs {
    /// The message id.
    pub id: String,
    /// Write the payload here ("-" or absent: standard output).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The recipient endpoint, when several of the organisation's endpoints received it.
    #[arg(long)]
    pub recipient: Option<String>,
}

#[derive(Args, Debug)]
pub struct AckArgs {
    pub id: String,
    /// accepted, rejected or error.
    #[arg(long)]
    pub status: String,
    #[arg(long, default_value = "")]
    pub note: String,
    #[arg(long)]
    pub recipient: Option<String>,
}

#[derive(Args, Debug)]
pub struct TrackArgs {
    pub id: String,
}

#[derive(Args, Debug)]
pub struct OutboxArgs {
    /// The sending organisation (only for a profile without one, such as admin).
    #[arg(long)]
    pub org: Option<String>,
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Page back from this sent sequence.
    #[arg(long, default_value_t = 0)]
    pub before: u64,
}

#[derive(Args, Debug)]
pub struct DeadLettersArgs {
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Page back from this event sequence.
    #[arg(long, default_value_t = 0)]
    pub before: u64,
}

fn read_payload(path: &PathBuf) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    let mut buf = Vec::new();
    if path.as_os_str() == "-" {
        std::io::stdin()
            .take(SEND_FILE_BYTES_MAX)
            .read_to_end(&mut buf)
            .context("reading standard input")?;
    } else {
        std::fs::File::open(path)
            .with_context(|| format!("opening {}", path.display()))?
            .take(SEND_FILE_BYTES_MAX)
            .read_to_end(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
    }
    Ok(buf)
}

pub async fn send(opts: &ClientOpts, a: SendArgs) -> anyhow::Result<()> {
    let out = Out::new(opts.json);
    let (client, profile) = connect_profile(opts).await?;
    let from = match (a.from, &profile.organisation) {
        (Some(f), Some(mine)) if &f != mine => {
            bail!(
                "--from {f} is not this profile's organisation ({mine}); pick its profile with --as"
            )
        }
        (Some(f), _) => f,
        (None, Some(mine)) => mine.clone(),
        (None, None) => {
            bail!("this profile acts for no organisation: pass --as <organisation profile>")
        }
    };
    let payload = read_payload(&a.file)?;
    let r = client
        .messaging()
        .send(pb::SendRequest {
            from_org: from,
            from_practitioner: a.practitioner.unwrap_or_default(),
            to: a.to,
            payload_type: a.payload_type,
            priority: a.priority,
            patient_ihi: a.patient.unwrap_or_default(),
            client_message_id: a.client_id.unwrap_or_default(),
            payload,
            deliver_within_ms: a.deliver_within_secs.unwrap_or(0).saturating_mul(1000),
        })
        .await
        .map_err(status_err("send"))?
        .into_inner();
    let text = if r.duplicate {
        format!("{} (already sent: event {})", r.message_id, r.seq)
    } else {
        format!("{} (sent: event {})", r.message_id, r.seq)
    };
    out.message(
        &text,
        json!({ "message_id": r.message_id, "seq": r.seq, "duplicate": r.duplicate }),
    );
    Ok(())
}

fn item_json(i: &pb::InboxItem) -> Value {
    json!({
        "message_id": i.message_id, "recipient": i.recipient, "sender_org": i.sender_org,
        "sender_practitioner": i.sender_practitioner, "payload_type": i.payload_type,
        "priority": i.priority, "sent_ts_ms": i.sent_ts_ms, "routed_seq": i.routed_seq,
        "payload_bytes": i.payload_bytes, "state": i.state, "fetches": i.fetches,
    })
}

fn item_line(i: &pb::InboxItem) -> String {
    format!(
        "{:<8} {:<46} {:<8} from {} to {} ({} bytes, {}, cursor {})",
        i.priority,
        i.message_id,
        i.payload_type,
        i.sender_org,
        i.recipient,
        i.payload_bytes,
        i.state,
        i.routed_seq
    )
}

pub async fn inbox(opts: &ClientOpts, a: InboxArgs) -> anyhow::Result<()> {
    let out = Out::new(opts.json);
    let (client, profile) = connect_profile(opts).await?;
    let endpoint = a.endpoint.unwrap_or_default();
    if profile.organisation.is_none() {
        bail!("this profile acts for no organisation: pass --as <organisation profile>");
    }
    if a.follow {
        let mut stream = client
            .messaging()
            .follow(pb::FollowRequest {
                endpoint,
                after_seq: a.after,
            })
            .await
            .map_err(status_err("inbox --follow"))?
            .into_inner();
        while let Some(item) = stream
            .message()
            .await
            .map_err(status_err("inbox --follow"))?
        {
            out.message(&item_line(&item), item_json(&item));
        }
        return Ok(());
    }
    let r = client
        .messaging()
        .inbox(pb::InboxRequest {
            endpoint,
            limit: a.limit,
        })
        .await
        .map_err(status_err("inbox"))?
        .into_inner();
    if opts.json {
        println!(
            "{}",
            json!({ "items": r.items.iter().map(item_json).collect::<Vec<_>>() })
        );
    } else if r.items.is_empty() {
        println!("the inbox is empty");
    } else {
        for i in &r.items {
            println!("{}", item_line(i));
        }
    }
    Ok(())
}

pub async fn fetch(opts: &ClientOpts, a: FetchArgs) -> anyhow::Result<()> {
    let (client, _) = connect_profile(opts).await?;
    let r = client
        .messaging()
        .fetch(pb::FetchRequest {
            message_id: a.id,
            recipient: a.recipient.unwrap_or_default(),
        })
        .await
        .map_err(status_err("fetch"))?
        .into_inner();
    match &a.out {
        Some(p) if p.as_os_str() != "-" => {
            std::fs::write(p, &r.payload).with_context(|| format!("writing {}", p.display()))?;
            Out::new(opts.json).message(
                &format!(
                    "{} bytes of {} from {} written to {}",
                    r.payload.len(),
                    r.payload_type,
                    r.sender_org,
                    p.display()
                ),
                json!({
                    "message_id": r.message_id, "recipient": r.recipient, "sender_org": r.sender_org,
                    "payload_type": r.payload_type, "bytes": r.payload.len(),
                    "payload_sha256": hex::encode(&r.payload_sha256), "out": p.display().to_string(),
                    "fetched_seq": r.fetched_seq,
                }),
            );
        }
        _ => {
            use std::io::Write;
            std::io::stdout()
                .write_all(&r.payload)
                .context("writing the payload to standard output")?;
        }
    }
    Ok(())
}

pub async fn ack(opts: &ClientOpts, a: AckArgs) -> anyhow::Result<()> {
    let (client, _) = connect_profile(opts).await?;
    let id = a.id.clone();
    let r = client
        .messaging()
        .ack(pb::AckRequest {
            message_id: a.id,
            recipient: a.recipient.unwrap_or_default(),
            status: a.status.clone(),
            note: a.note,
        })
        .await
        .map_err(status_err("ack"))?
        .into_inner();
    Out::new(opts.json).message(
        &format!("{id} acknowledged as {} (event {})", a.status, r.seq),
        json!({ "message_id": id, "status": a.status, "seq": r.seq }),
    );
    Ok(())
}

fn summary_json(m: &pb::MessageSummary) -> Value {
    json!({
        "message_id": m.message_id, "sender_org": m.sender_org, "payload_type": m.payload_type,
        "priority": m.priority, "sent_seq": m.sent_seq, "sent_ts_ms": m.sent_ts_ms,
        "deliver_by_ms": m.deliver_by_ms, "client_message_id": m.client_message_id,
        "payload_bytes": m.payload_bytes,
        "recipients": m.recipients.iter().map(|r| json!({
            "endpoint": r.endpoint, "state": r.state, "outcome": r.outcome, "fetches": r.fetches,
        })).collect::<Vec<_>>(),
    })
}

fn recipients_text(m: &pb::MessageSummary) -> String {
    m.recipients
        .iter()
        .map(|r| {
            if r.outcome.is_empty() {
                format!("{}: {}", r.endpoint, r.state)
            } else {
                format!("{}: {} ({})", r.endpoint, r.state, r.outcome)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

pub async fn track(opts: &ClientOpts, a: TrackArgs) -> anyhow::Result<()> {
    let (client, _) = connect_profile(opts).await?;
    let r = client
        .messaging()
        .track(pb::TrackRequest { message_id: a.id })
        .await
        .map_err(status_err("track"))?
        .into_inner();
    let m = r.message.unwrap_or_default();
    if opts.json {
        let timeline: Vec<Value> = r
            .timeline
            .iter()
            .map(|e| {
                json!({
                    "seq": e.seq, "ts_ms": e.ts_ms, "event": e.event, "recipient": e.recipient,
                    "actor": e.actor, "log_index": e.log_index, "outcome": e.outcome,
                    "detail": e.detail,
                })
            })
            .collect();
        println!(
            "{}",
            json!({ "message": summary_json(&m), "timeline": timeline })
        );
        return Ok(());
    }
    println!(
        "{} {} {} from {} ({} bytes)",
        m.message_id, m.priority, m.payload_type, m.sender_org, m.payload_bytes
    );
    println!("recipients: {}", recipients_text(&m));
    for e in &r.timeline {
        let mut line = format!(
            "  #{:<8} {} {:<10}",
            e.seq,
            crate::output::utc_ms(e.ts_ms),
            e.event
        );
        if !e.recipient.is_empty() {
            line.push_str(&format!(" {}", e.recipient));
        }
        if !e.outcome.is_empty() {
            line.push_str(&format!(" [{}]", e.outcome));
        }
        line.push_str(&format!("  by {}", e.actor));
        println!("{line}");
        if !e.detail.is_empty() {
            println!("             {}", e.detail);
        }
    }
    Ok(())
}

pub async fn dead_letters(opts: &ClientOpts, a: DeadLettersArgs) -> anyhow::Result<()> {
    let (client, _) = connect_profile(opts).await?;
    let r = client
        .admin()
        .dead_letters(pb::DeadLettersRequest {
            before_seq: a.before,
            limit: a.limit,
        })
        .await
        .map_err(status_err("dead-letters"))?
        .into_inner();
    if opts.json {
        let items: Vec<Value> = r
            .items
            .iter()
            .map(|d| {
                json!({
                    "seq": d.seq, "ts_ms": d.ts_ms, "message_id": d.message_id,
                    "recipient": d.recipient, "reason": d.reason, "sender_org": d.sender_org,
                    "provider": d.provider, "origin": d.origin, "last_error": d.last_error,
                })
            })
            .collect();
        println!("{}", json!({ "dead_letters": items }));
        return Ok(());
    }
    if r.items.is_empty() {
        println!("no dead letters");
    }
    for d in &r.items {
        let at = if d.provider.is_empty() {
            String::new()
        } else {
            format!(" at {}", d.provider)
        };
        println!(
            "#{:<8} {} {} to {}{at} from {}: {}",
            d.seq,
            crate::output::utc_ms(d.ts_ms),
            d.message_id,
            d.recipient,
            d.sender_org,
            d.reason
        );
        println!("           {}", d.last_error);
    }
    Ok(())
}

pub async fn reprocess(
    opts: &ClientOpts,
    id: &str,
    recipient: Option<String>,
) -> anyhow::Result<()> {
    let (client, _) = connect_profile(opts).await?;
    let r = client
        .admin()
        .reprocess(pb::ReprocessRequest {
            message_id: id.to_string(),
            recipient: recipient.unwrap_or_default(),
        })
        .await
        .map_err(status_err("reprocess"))?
        .into_inner();
    if opts.json {
        let attempts: Vec<Value> = r
            .attempts
            .iter()
            .map(|a| {
                json!({ "recipient": a.recipient, "failed_seq": a.failed_seq, "seq": a.seq,
                        "deliver_by_ms": a.deliver_by_ms })
            })
            .collect();
        println!(
            "{}",
            json!({ "message_id": r.message_id, "attempts": attempts })
        );
        return Ok(());
    }
    for a in &r.attempts {
        println!(
            "{} to {}: re-driven as event #{} (the failure was #{}); to be routed by {}",
            r.message_id,
            a.recipient,
            a.seq,
            a.failed_seq,
            crate::output::utc_ms(a.deliver_by_ms)
        );
    }
    Ok(())
}

pub async fn outbox(opts: &ClientOpts, a: OutboxArgs) -> anyhow::Result<()> {
    let (client, _) = connect_profile(opts).await?;
    let r = client
        .messaging()
        .outbox(pb::OutboxRequest {
            org: a.org.unwrap_or_default(),
            before_seq: a.before,
            limit: a.limit,
        })
        .await
        .map_err(status_err("outbox"))?
        .into_inner();
    if opts.json {
        println!(
            "{}",
            json!({ "messages": r.messages.iter().map(summary_json).collect::<Vec<_>>() })
        );
    } else if r.messages.is_empty() {
        println!("nothing sent yet");
    } else {
        for m in &r.messages {
            println!(
                "#{:<8} {:<46} {:<8} {:<8} {}",
                m.sent_seq,
                m.message_id,
                m.priority,
                m.payload_type,
                recipients_text(m)
            );
        }
    }
    Ok(())
}
