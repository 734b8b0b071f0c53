//! `sealpost audit verify / checkpoint / prove / verify-proof`: the evidence an auditor
//! keeps and checks. `checkpoint` fetches the provider's signed statement of its log (size,
//! chain head, RFC 9162 Merkle root) and checks the signature before saving it; `prove`
//! fetches an inclusion proof of one event (or a consistency proof between two
//! checkpoints) and checks it against the checkpoints given, so nothing unverified is
//! printed as proven; `verify-proof` re-checks a saved proof offline, with no cluster.
//! A checkpoint names its signing key; `--key` pins the key the auditor expects.

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use sealpost_core::audit::{
    Checkpoint, CheckpointFile, ConsistencyProofFile, InclusionProofFile, parse_canonical,
};
use sealpost_core::event::Hash;
use sealpost_crypto::provider_key::{parse_public_hex, verify_checkpoint};
use sealpost_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::ClientOpts;
use crate::client_cmd::{connect_profile, status_err};

/// Largest checkpoint or proof file read, in bytes.
pub const EVIDENCE_FILE_BYTES_MAX: u64 = 1024 * 1024;

/// A saved proof: what `prove --out` writes and `verify-proof` reads.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ProofFile {
    Inclusion(InclusionProofFile),
    Consistency(ConsistencyProofFile),
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> anyhow::Result<T> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if meta.len() > EVIDENCE_FILE_BYTES_MAX {
        bail!(
            "{} is {} bytes; a {what} is at most {EVIDENCE_FILE_BYTES_MAX}",
            path.display(),
            meta.len()
        );
    }
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("{} is not a {what}", path.display()))
}

/// Reads a checkpoint file and checks its signature (and the pinned key, if any).
pub fn load_checkpoint(path: &Path, key: Option<&str>) -> anyhow::Result<Checkpoint> {
    let file: CheckpointFile = read_json(path, "checkpoint")?;
    let cp = file
        .parse()
        .map_err(|e| anyhow!("{}: {e}", path.display()))?;
    check_signature(&cp, key).with_context(|| format!("checkpoint {}", path.display()))?;
    Ok(cp)
}

fn pinned(key: Option<&str>) -> anyhow::Result<Option<[u8; 32]>> {
    key.map(|k| {
        parse_public_hex(k)
            .ok_or_else(|| anyhow!("--key {k:?} is not a hex Ed25519 public key (64 characters)"))
    })
    .transpose()
}

fn check_signature(cp: &Checkpoint, key: Option<&str>) -> anyhow::Result<()> {
    verify_checkpoint(cp, pinned(key)?.as_ref())?;
    Ok(())
}

pub fn checkpoint_from_pb(c: pb::SignedCheckpoint) -> anyhow::Result<Checkpoint> {
    let hash = |v: Vec<u8>, field: &str| -> anyhow::Result<Hash> {
        v.try_into()
            .map_err(|_| anyhow!("the node sent a checkpoint whose {field} is not 32 bytes"))
    };
    Ok(Checkpoint {
        provider: c.provider,
        size: c.size,
        chain_head: hash(c.chain_head, "chain head")?,
        root: hash(c.root, "root")?,
        ts_ms: c.ts_ms,
        public_key: hash(c.public_key, "public key")?,
        signature: c.signature,
    })
}

/// Asks the connected node for a signed checkpoint and checks its signature.
pub async fn fetch_checkpoint(
    opts: &ClientOpts,
    size: u64,
    key: Option<&str>,
) -> anyhow::Result<Checkpoint> {
    let (client, _) = connect_profile(opts).await?;
    let c = client
        .audit()
        .checkpoint(pb::CheckpointRequest { size })
        .await
        .map_err(status_err("audit checkpoint"))?
        .into_inner();
    let cp = checkpoint_from_pb(c)?;
    check_signature(&cp, key).context("the node's checkpoint")?;
    Ok(cp)
}

fn write_json(path: &Path, value: &impl Serialize) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

pub async fn checkpoint(
    opts: &ClientOpts,
    size: Option<u64>,
    out: Option<PathBuf>,
    key: Option<String>,
) -> anyhow::Result<()> {
    let cp = fetch_checkpoint(opts, size.unwrap_or(0), key.as_deref()).await?;
    let file = cp.to_file();
    match &out {
        Some(path) => {
            write_json(path, &file)?;
            if opts.json {
                println!("{}", json!({ "out": path, "checkpoint": file }));
            } else {
                println!(
                    "checkpoint of {} events of {} (root {}, chain head {}) signed by key {}; \
                     saved to {}",
                    cp.size,
                    cp.provider,
                    file.root,
                    file.chain_head,
                    file.public_key,
                    path.display()
                );
            }
        }
        None => println!("{}", serde_json::to_string_pretty(&file)?),
    }
    Ok(())
}

/// What `prove` was asked for.
pub struct ProveArgs {
    pub seq: Option<u64>,
    pub checkpoint: PathBuf,
    pub older: Option<PathBuf>,
    pub out: Option<PathBuf>,
    pub key: Option<String>,
}

pub async fn prove(opts: &ClientOpts, a: ProveArgs) -> anyhow::Result<()> {
    let cp = load_checkpoint(&a.checkpoint, a.key.as_deref())?;
    let (client, _) = connect_profile(opts).await?;
    let proof = match (a.seq, &a.older) {
        (Some(seq), None) => {
            let r = client
                .audit()
                .prove_inclusion(pb::InclusionRequest { seq, size: cp.size })
                .await
                .map_err(status_err("audit prove"))?
                .into_inner();
            ProofFile::Inclusion(InclusionProofFile {
                seq: r.seq,
                size: r.size,
                canonical: hex::encode(&r.canonical),
                path: r.path.iter().map(hex::encode).collect(),
            })
        }
        (None, Some(older)) => {
            let old = load_checkpoint(older, a.key.as_deref())?;
            let r = client
                .audit()
                .prove_consistency(pb::ConsistencyRequest {
                    first: old.size,
                    second: cp.size,
                })
                .await
                .map_err(status_err("audit prove"))?
                .into_inner();
            ProofFile::Consistency(ConsistencyProofFile {
                first: r.first,
                second: r.second,
                path: r.path.iter().map(hex::encode).collect(),
            })
        }
        (Some(_), Some(_)) => bail!(
            "give either an event (inclusion proof) or --older CHECKPOINT (consistency \
             proof), not both"
        ),
        (None, None) => bail!(
            "give an event sequence number (inclusion proof) or --older CHECKPOINT \
             (consistency proof)"
        ),
    };
    // Checked here before it is shown or saved: a proof from a node is not trusted.
    let verdict = check(&proof, &cp, a.older.as_deref(), a.key.as_deref())
        .context("the proof the node sent does not verify")?;
    if let Some(path) = &a.out {
        write_json(path, &proof)?;
    }
    report(opts, &verdict, a.out.as_deref());
    Ok(())
}

/// Re-checks a saved proof offline.
pub fn verify_proof(
    opts: &ClientOpts,
    proof: &Path,
    checkpoint: &Path,
    older: Option<&Path>,
    key: Option<&str>,
) -> anyhow::Result<()> {
    let file: ProofFile = read_json(proof, "proof")?;
    let cp = load_checkpoint(checkpoint, key)?;
    let verdict = check(&file, &cp, older, key)?;
    report(opts, &verdict, None);
    Ok(())
}

/// What a checked proof established, for the report.
struct Verdict {
    text: String,
    value: serde_json::Value,
}

fn check(
    proof: &ProofFile,
    cp: &Checkpoint,
    older: Option<&Path>,
    key: Option<&str>,
) -> anyhow::Result<Verdict> {
    match proof {
        ProofFile::Inclusion(p) => {
            let record = p.verify(cp).map_err(|e| anyhow!("inclusion proof: {e}"))?;
            let canonical = hex::decode(&p.canonical)?;
            let f = parse_canonical(&canonical).map_err(|e| anyhow!("inclusion proof: {e}"))?;
            let what = match (&f.message_id, &f.recipient) {
                (Some(m), Some(r)) => format!("{} of message {m} for {r}", f.kind),
                (Some(m), None) => format!("{} of message {m}", f.kind),
                _ => f.kind.to_string(),
            };
            Ok(Verdict {
                text: format!(
                    "event {} ({what}, by {}, at {}; hash {}) is included in {}'s \
                     checkpoint of {} events (root {})",
                    p.seq,
                    f.actor,
                    crate::output::utc_ms(f.ts_ms),
                    hex::encode(record),
                    cp.provider,
                    cp.size,
                    hex::encode(cp.root)
                ),
                value: json!({ "ok": true, "kind": "inclusion", "seq": p.seq,
                    "event_kind": f.kind, "hash": hex::encode(record), "size": cp.size,
                    "root": hex::encode(cp.root) }),
            })
        }
        ProofFile::Consistency(p) => {
            let older = older.ok_or_else(|| {
                anyhow!("a consistency proof is checked against two checkpoints: give --older")
            })?;
            let old = load_checkpoint(older, key)?;
            if old.provider != cp.provider || old.public_key != cp.public_key {
                bail!(
                    "the checkpoints are from different providers or keys ({} and {})",
                    old.provider,
                    cp.provider
                );
            }
            p.verify(&old, cp)
                .map_err(|e| anyhow!("consistency proof: {e}"))?;
            Ok(Verdict {
                text: format!(
                    "{}'s log of {} events (root {}) is a prefix of its log of {} events \
                     (root {}): nothing was altered or removed in between",
                    cp.provider,
                    old.size,
                    hex::encode(old.root),
                    cp.size,
                    hex::encode(cp.root)
                ),
                value: json!({ "ok": true, "kind": "consistency", "first": old.size,
                    "second": cp.size, "first_root": hex::encode(old.root),
                    "second_root": hex::encode(cp.root) }),
            })
        }
    }
}

fn report(opts: &ClientOpts, v: &Verdict, out: Option<&Path>) {
    if opts.json {
        let mut value = v.value.clone();
        if let Some(p) = out {
            value["out"] = json!(p);
        }
        println!("{value}");
    } else {
        println!("verified: {}", v.text);
        if let Some(p) = out {
            println!("proof saved to {}", p.display());
        }
    }
}

/// `audit verify`: the connected node recomputes its hash chain over a range.
pub async fn verify_chain(opts: &ClientOpts, from: u64, to: Option<u64>) -> anyhow::Result<()> {
    let (client, _) = connect_profile(opts).await?;
    let r = client
        .audit()
        .verify(pb::AuditVerifyRequest {
            from_seq: from,
            to_seq: to.unwrap_or(0),
        })
        .await
        .map_err(status_err("audit verify"))?
        .into_inner();
    if opts.json {
        println!(
            "{}",
            json!({ "ok": r.ok, "problem": r.problem, "from_seq": r.from_seq,
                    "to_seq": r.to_seq, "count": r.count, "head": hex::encode(&r.head),
                    "root": hex::encode(&r.root) })
        );
    } else if r.ok {
        let root = if r.root.is_empty() {
            String::new()
        } else {
            format!(
                "; Merkle root {} matches the stored tree",
                hex::encode(&r.root)
            )
        };
        println!(
            "chain verifies: events {}..={} ({}), head {}{root}",
            r.from_seq,
            r.to_seq,
            r.count,
            hex::encode(&r.head)
        );
    }
    if !r.ok {
        bail!("the chain does not verify: {}", r.problem);
    }
    Ok(())
}
