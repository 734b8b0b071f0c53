//! `sealpost-chaos`: starts a real cluster of `sealpost node` processes (3 or 5, each with
//! its own data folder and loopback ports, talking to each other through a fault-injecting
//! proxy, on LazyFs when the run includes power loss: `rig.rs`), drives a mixed load through
//! the client (sends, desk acknowledgements, directory writes), injects a seeded schedule of
//! faults while it runs (`faults.rs`), heals everything, waits until every node has applied
//! the same log, and then runs the invariant checkers (`checks/`). `--scenario` runs one of
//! two fixed scenarios instead, with which the test suite proves the checkers catch a node
//! broken on purpose (`sealpost-broken-node`). It writes a JSON report and prints a
//! summary: faults by kind, operations attempted / acknowledged / failed, lost and
//! duplicated writes, time to recover after each fault, and the seed that reproduces the
//! run. It exits non-zero unless every checker passed. See CHAOS.md.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use sealpost_proto::v1 as pb;
use serde::Serialize;

mod checks;
mod faults;
mod lazyfs;
mod load;
mod proxy;
mod rig;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long the nodes may take to apply the same log once every fault is healed.
const CONVERGE_SECS_MAX: u64 = 120;
/// How long the load keeps running after the last fault is healed, so the cluster is seen
/// serving again before the checks.
const SETTLE_MS: u64 = 3_000;
/// How long after a fault's recovery an outage still counts against that fault.
const UNAVAILABLE_TAIL_MS: u64 = 1_000;
/// Audit records read from one replica at most.
const REPLAY_RECORDS_MAX: usize = 50_000_000;
/// Writes a fixed scenario sends.
const SCENARIO_WRITES: u64 = 10;
/// Times a fixed scenario cuts off the leader before the leader it cut off still leads.
const ISOLATION_ATTEMPTS_MAX: u32 = 5;
/// Deadline of one write in a fixed scenario (an isolated leader never answers a correct
/// node's write).
const SCENARIO_CALL_TIMEOUT_MS: u64 = 1_500;

#[derive(Parser, Debug)]
#[command(
    name = "sealpost-chaos",
    about = "Faults under load against a real multi-process sealpost cluster, then invariant checkers"
)]
struct Args {
    /// Seconds of load with faults.
    #[arg(long, default_value_t = 60)]
    duration_secs: u64,
    /// Seed of the fault schedule (default: from the clock; printed, so a run can be
    /// repeated).
    #[arg(long)]
    seed: Option<u64>,
    /// Nodes in the cluster (3 or 5).
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Node ids held in reserve for nodes replaced after a damaged store (each
    /// corrupt-follower fault uses one; once all are used, that fault becomes a kill).
    #[arg(long, default_value_t = 4)]
    spare_ids: u64,
    /// Milliseconds between the end of one fault's recovery and the next fault.
    #[arg(long, default_value_t = 2_000)]
    fault_every_ms: u64,
    /// Concurrent load workers.
    #[arg(long, default_value_t = 8)]
    workers: usize,
    /// Where the JSON report goes (default: chaos-report.json in the work folder).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Where the cluster keeps its data (default: a temporary folder, kept when a check
    /// fails).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// The sealpost binary the nodes run (default: `sealpost` beside this binary).
    #[arg(long, env = "SEALPOST_BIN")]
    sealpost_bin: Option<PathBuf>,
    /// Fault kinds the schedule draws from, comma-separated (default: every kind). Kinds:
    /// kill-leader, kill-follower, pause-leader, pause-follower, partition-leader,
    /// partition-random, one-way-leader, bridge, slow-links, power-loss (needs root and
    /// /dev/fuse), corrupt-follower.
    #[arg(long, default_value = "")]
    faults: String,
    /// What to run: the seeded schedule under mixed load, or one of the fixed scenarios the
    /// test suite uses to prove the checkers catch a broken node.
    #[arg(long, value_enum, default_value_t = Scenario::Schedule)]
    scenario: Scenario,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Scenario {
    /// Faults drawn from the seed under mixed load for --duration-secs.
    Schedule,
    /// Isolate the leader through the proxy, send it writes, kill it, bring it back.
    IsolatedLeaderWrites,
    /// Acknowledged writes, then power loss of every node on LazyFs, then restart.
    PowerLossAfterWrites,
}

#[derive(Debug, Serialize)]
struct Operations {
    attempted: u64,
    failed: u64,
    sends_acknowledged: usize,
    registrations_acknowledged: usize,
    desk_acks_acknowledged: usize,
}

/// What the faults of one kind cost.
#[derive(Debug, Serialize, PartialEq, Eq)]
struct KindStats {
    count: u64,
    with_new_term: u64,
    recovery_ms_p50: u64,
    recovery_ms_max: u64,
    writes_unavailable_ms_p50: u64,
    writes_unavailable_ms_max: u64,
}

fn per_kind(records: &[faults::FaultRecord]) -> BTreeMap<String, KindStats> {
    let mut out = BTreeMap::new();
    for kind in faults::FaultKind::ALL {
        let of: Vec<&faults::FaultRecord> = records.iter().filter(|r| r.kind == kind).collect();
        if of.is_empty() {
            continue;
        }
        let sorted = |f: fn(&faults::FaultRecord) -> u64| {
            let mut v: Vec<u64> = of.iter().map(|r| f(r)).collect();
            v.sort_unstable();
            v
        };
        let rec = sorted(|r| r.recovery_ms);
        let out_ms = sorted(|r| r.writes_unavailable_ms);
        out.insert(
            kind.name().to_string(),
            KindStats {
                count: of.len() as u64,
                with_new_term: of.iter().filter(|r| r.terms > 0).count() as u64,
                recovery_ms_p50: percentile(&rec, 0.5),
                recovery_ms_max: rec.last().copied().unwrap_or(0),
                writes_unavailable_ms_p50: percentile(&out_ms, 0.5),
                writes_unavailable_ms_max: out_ms.last().copied().unwrap_or(0),
            },
        );
    }
    out
}

#[derive(Debug, Serialize)]
struct Report {
    format_version: u32,
    scenario: String,
    seed: u64,
    git_commit: String,
    command_line: String,
    nodes: u64,
    duration_secs: u64,
    fault_kinds: Vec<String>,
    faults: Vec<faults::FaultRecord>,
    faults_by_kind: BTreeMap<String, u64>,
    /// Per kind: how many, how many cost a new term, and recovery and write
    /// unavailability (p50 / max).
    per_kind: BTreeMap<String, KindStats>,
    /// Faults that cut links (majority/minority, one-way, bridge).
    partitions: u64,
    leader_kills: u64,
    power_losses: u64,
    recovery_ms_p50: u64,
    recovery_ms_p99: u64,
    recovery_ms_max: u64,
    writes_unavailable_ms_p50: u64,
    writes_unavailable_ms_p99: u64,
    writes_unavailable_ms_max: u64,
    operations: Operations,
    lost: u64,
    duplicates: u64,
    checks: Vec<checks::Verdict>,
    ok: bool,
}

fn git_commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Events 1..=`size` of one replica, read from that node alone. (Reading them is itself
/// audited: every replay appends an `audit_read` event, so the replicas are compared up to
/// the size they agreed on before the first replay.)
async fn replay(
    client: &sealpost_client::Client,
    size: u64,
) -> anyhow::Result<Vec<pb::AuditEvent>> {
    let mut stream = client
        .audit()
        .replay(pb::ReplayRequest {
            from_seq: 1,
            to_seq: size,
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    // Bounded by the store's size and REPLAY_RECORDS_MAX.
    while let Some(mut ev) = stream.message().await? {
        ev.canonical = Vec::new();
        out.push(ev);
        anyhow::ensure!(
            out.len() <= REPLAY_RECORDS_MAX,
            "a replica holds more than {REPLAY_RECORDS_MAX} events"
        );
    }
    Ok(out)
}

fn summary(r: &Report) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "chaos run ({}): seed {}, {} nodes, {} s of load, commit {}\n",
        r.scenario,
        r.seed,
        r.nodes,
        r.duration_secs,
        r.git_commit.get(..10).unwrap_or(&r.git_commit)
    ));
    s.push_str(&format!(
        "faults: {} ({})\n",
        r.faults.len(),
        r.faults_by_kind
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    s.push_str(&format!(
        "leader kills: {}, partitions: {}, power losses: {}\n",
        r.leader_kills, r.partitions, r.power_losses
    ));
    for (k, st) in &r.per_kind {
        s.push_str(&format!(
            "  {k:<17} {:>4} faults, {:>4} with a new term; recovery p50 {} ms, max {} ms; writes unavailable p50 {} ms, max {} ms\n",
            st.count,
            st.with_new_term,
            st.recovery_ms_p50,
            st.recovery_ms_max,
            st.writes_unavailable_ms_p50,
            st.writes_unavailable_ms_max
        ));
    }
    s.push_str(&format!(
        "recovery after a fault: p50 {} ms, p99 {} ms, max {} ms\n",
        r.recovery_ms_p50, r.recovery_ms_p99, r.recovery_ms_max
    ));
    s.push_str(&format!(
        "writes unavailable per fault (longest gap between acknowledged writes): p50 {} ms, p99 {} ms, max {} ms\n",
        r.writes_unavailable_ms_p50, r.writes_unavailable_ms_p99, r.writes_unavailable_ms_max
    ));
    let o = &r.operations;
    s.push_str(&format!(
        "operations: {} attempted, {} failed (outcome unknown to the client), acknowledged: {} sends, {} registrations, {} desk acknowledgements\n",
        o.attempted, o.failed, o.sends_acknowledged, o.registrations_acknowledged, o.desk_acks_acknowledged
    ));
    s.push_str(&format!("lost: {}, duplicates: {}\n", r.lost, r.duplicates));
    for c in &r.checks {
        s.push_str(&format!(
            "  [{}] {}: {}{}\n",
            if c.ok { "ok" } else { "FAILED" },
            c.checker,
            c.checked,
            if c.ok {
                String::new()
            } else {
                format!(" -- {} violations: {}", c.violations, c.problems.join("; "))
            }
        ));
    }
    s.push_str(if r.ok {
        "every checker passed\n"
    } else {
        "SOME CHECKERS FAILED\n"
    });
    s
}

/// The fault kinds of `--faults` (all when empty).
fn fault_kinds(spec: &str) -> anyhow::Result<Vec<faults::FaultKind>> {
    let kinds: Vec<faults::FaultKind> = spec
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(faults::FaultKind::parse)
        .collect::<anyhow::Result<_>>()?;
    Ok(if kinds.is_empty() {
        faults::FaultKind::ALL.to_vec()
    } else {
        kinds
    })
}

/// Sends `count` messages through the node at `addr` alone, each with a short deadline,
/// and keeps the acknowledged ones in `history`; returns why the first that failed failed
/// (the scenario's record names it).
async fn sends_to(
    rig: &rig::Rig,
    addr: &str,
    count: u64,
    history: &load::History,
) -> anyhow::Result<Option<String>> {
    let mut first_failure = None;
    let c = sealpost_harness::org_client(
        &rig.cluster,
        "chaos-org-1",
        &sealpost_core::ids::HpiO::from_serial(1),
        addr,
    )
    .await?;
    for i in 0..count {
        history.attempted.fetch_add(1, Ordering::Relaxed);
        let r = tokio::time::timeout(
            Duration::from_millis(SCENARIO_CALL_TIMEOUT_MS),
            c.messaging().send(pb::SendRequest {
                from_org: sealpost_core::ids::HpiO::from_serial(1).to_string(),
                to: vec![load::desk()],
                payload_type: "TEXT".into(),
                client_message_id: format!("scenario-{i}"),
                payload: vec![0x5a; 256],
                ..Default::default()
            }),
        )
        .await;
        match r {
            Ok(Ok(reply)) => {
                if let Ok(mut l) = history.sent.lock() {
                    l.push(reply.into_inner().message_id);
                }
            }
            Ok(Err(status)) => {
                history.failed.fetch_add(1, Ordering::Relaxed);
                first_failure
                    .get_or_insert_with(|| format!("{:?}: {}", status.code(), status.message()));
            }
            Err(_) => {
                history.failed.fetch_add(1, Ordering::Relaxed);
                first_failure
                    .get_or_insert_with(|| format!("no answer in {SCENARIO_CALL_TIMEOUT_MS} ms"));
            }
        }
    }
    Ok(first_failure)
}

/// `isolated-leader-writes`: the leader is cut off from every peer through the proxy, sent
/// writes directly, and killed; the others elect a new leader; the old one comes back. A
/// node that acknowledges before commit loses those writes, and the checkers must say so.
async fn isolated_leader_writes(
    rig: &mut rig::Rig,
    history: &load::History,
) -> anyhow::Result<Vec<faults::FaultRecord>> {
    let started = Instant::now();
    let mut cut = None;
    for _ in 0..ISOLATION_ATTEMPTS_MAX {
        let (leader, term_before, followers) = faults::roles(rig).await?;
        let addr = rig.cluster.addrs()[&leader].clone();
        rig.proxy.partition(&[vec![leader], followers.clone()]);
        // Leadership can move between reading the roles and the cut (a busy machine
        // misses a heartbeat); writes sent to a node that no longer leads test nothing.
        let s = faults::status_of(&rig.cluster, &addr).await?;
        if s.role == "leader" && s.term == term_before {
            cut = Some((leader, term_before, followers, addr));
            break;
        }
        rig.proxy.heal();
    }
    let Some((leader, term_before, followers, addr)) = cut else {
        anyhow::bail!(
            "no leader stayed the leader through its isolation in {ISOLATION_ATTEMPTS_MAX} attempts"
        );
    };
    let failure = sends_to(rig, &addr, SCENARIO_WRITES, history).await?;
    rig.procs.kill(leader)?;
    // The majority elects a leader of its own while the old one is down.
    sealpost_harness::wait_ready(
        &rig.cluster,
        &mut rig.procs,
        Duration::from_secs(faults::RECOVERY_SECS_MAX),
    )
    .await?;
    rig.proxy.heal();
    let healed = Instant::now();
    rig.procs.start(leader)?;
    let record = faults::FaultRecord::new(
        faults::FaultKind::PartitionLeader,
        leader,
        format!(
            "leader {leader} isolated from {followers:?}, sent {SCENARIO_WRITES} writes{}, killed, restarted",
            failure.map_or_else(String::new, |f| format!(" (the first that failed: {f})"))
        ),
        0,
        healed.duration_since(started).as_millis() as u64,
    );
    Ok(vec![record.recovered(rig, healed, term_before).await?])
}

/// `power-loss-after-writes`: writes are acknowledged, then every node loses power (and
/// whatever it had not fsynced), then all restart. A node that skips the fsync loses them.
async fn power_loss_after_writes(
    rig: &mut rig::Rig,
    history: &load::History,
) -> anyhow::Result<Vec<faults::FaultRecord>> {
    let started = Instant::now();
    let (leader, term_before, _) = faults::roles(rig).await?;
    let addr = rig.cluster.addrs()[&leader].clone();
    let failure = sends_to(rig, &addr, SCENARIO_WRITES, history).await?;
    let fs = rig
        .lazyfs
        .as_ref()
        .context("power loss needs the LazyFs mount")?;
    for id in rig.procs.ids() {
        rig.procs.kill(id)?;
    }
    let dropped = fs.crash()?;
    let healed = Instant::now();
    for id in rig.procs.ids() {
        rig.procs.start(id)?;
    }
    let record = faults::FaultRecord::new(
        faults::FaultKind::PowerLoss,
        leader,
        format!(
            "{SCENARIO_WRITES} writes{}, then all nodes crashed; {} unsynced bytes in {} writes to {} files dropped",
            failure.map_or_else(String::new, |f| format!(" (the first that failed: {f})")),
            dropped.dropped_bytes,
            dropped.dropped_writes,
            dropped.files_touched
        ),
        healed.duration_since(started).as_millis() as u64,
        0,
    );
    Ok(vec![record.recovered(rig, healed, term_before).await?])
}

/// The seeded schedule: mixed load from every worker while faults are injected, then a
/// settling period under load.
async fn schedule(
    rig: &mut rig::Rig,
    a: &Args,
    kinds: &[faults::FaultKind],
    seed: u64,
    history: &Arc<load::History>,
) -> anyhow::Result<(Vec<faults::FaultRecord>, Option<checks::Verdict>)> {
    let pool = Arc::new(load::Pool::connect(&rig.cluster).await?);
    rig.sync_layout(std::path::Path::new("clients"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let serials = Arc::new(AtomicU64::new(1));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..a.workers {
        tasks.spawn(load::worker(
            i,
            pool.clone(),
            history.clone(),
            serials.clone(),
            stop.clone(),
        ));
    }
    tasks.spawn(load::acker(pool.clone(), history.clone(), stop.clone()));

    let started = Instant::now();
    if let Ok(mut s) = history.started.lock() {
        *s = Some(started);
    }
    let end = started + Duration::from_secs(a.duration_secs);
    let mut rng = faults::Rng::new(seed);
    let mut deck = faults::Deck::new(kinds);
    let mut records = Vec::new();
    let mut healed_ms = 0;
    // Bounded by the run's end (each fault by its hold and the recovery limits).
    while Instant::now() + Duration::from_millis(faults::FAULT_MS_MAX) < end {
        tokio::time::sleep(Duration::from_millis(a.fault_every_ms)).await;
        let r = faults::inject(rig, &mut deck, &mut rng, started).await?;
        eprintln!(
            "  {:>7} ms {:<17} node {} for {} ms; recovered in {} ms (leader {}, {} new terms) {}",
            r.at_ms,
            r.kind.name(),
            r.node,
            r.hold_ms,
            r.recovery_ms,
            r.leader_after,
            r.terms,
            r.detail
        );
        healed_ms = started.elapsed().as_millis() as u64;
        if r.rejoined_as.is_some() {
            // A node was replaced under a new id and address: the load follows.
            pool.refresh(&rig.cluster).await?;
            rig.sync_layout(std::path::Path::new("clients"))?;
        }
        records.push(r);
    }
    tokio::time::sleep(Duration::from_millis(SETTLE_MS)).await;
    history.close();
    stop.store(true, Ordering::Relaxed);
    while tasks.join_next().await.is_some() {}
    // A run whose load stopped being served proves nothing about the faults after that.
    let last_write_ms = history.last_write_ms.load(Ordering::Relaxed);
    let served = checks::Verdict::new(
        "load-served-after-the-last-fault",
        format!(
            "last acknowledged write at {last_write_ms} ms, last fault healed at {healed_ms} ms"
        ),
        if last_write_ms > healed_ms {
            Vec::new()
        } else {
            vec![format!(
                "no write was acknowledged after the last fault healed ({healed_ms} ms); the last at {last_write_ms} ms"
            )]
        },
    );
    for r in &mut records {
        let to = r.at_ms + r.hold_ms + r.recovery_ms + UNAVAILABLE_TAIL_MS;
        r.writes_unavailable_ms = history.longest_outage(r.at_ms, to);
    }
    Ok((records, Some(served)))
}

async fn run(a: Args) -> anyhow::Result<bool> {
    anyhow::ensure!(
        a.nodes == 3 || a.nodes == 5,
        "--nodes must be 3 or 5, not {}",
        a.nodes
    );
    anyhow::ensure!(
        (1..=86_400).contains(&a.duration_secs),
        "--duration-secs must be 1 to 86400"
    );
    anyhow::ensure!(
        a.workers >= 1 && a.workers <= 256,
        "--workers must be 1 to 256"
    );
    let kinds = fault_kinds(&a.faults)?;
    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let tmp = tempfile::Builder::new()
        .prefix("sealpost-chaos-")
        .tempdir()?;
    let work = a
        .work_dir
        .clone()
        .unwrap_or_else(|| tmp.path().to_path_buf());
    let bin = match &a.sealpost_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?.with_file_name("sealpost"),
    };
    let power_loss = match a.scenario {
        Scenario::Schedule => kinds.contains(&faults::FaultKind::PowerLoss),
        Scenario::IsolatedLeaderWrites => false,
        Scenario::PowerLossAfterWrites => true,
    };
    eprintln!(
        "sealpost-chaos: {:?}, seed {seed}, {} nodes, {} s, data in {}",
        a.scenario,
        a.nodes,
        a.duration_secs,
        work.display()
    );
    let mut rig = rig::Rig::build(&work, (a.nodes, a.spare_ids), &bin, power_loss).await?;
    sealpost_harness::wait_ready(
        &rig.cluster,
        &mut rig.procs,
        Duration::from_secs(faults::RECOVERY_SECS_MAX),
    )
    .await?;
    let admin = load::clients_per_node(&rig.cluster, None).await?;
    load::provision(&admin).await?;
    rig.sync_layout(std::path::Path::new("clients"))?;
    let history = Arc::new(load::History::default());
    let (records, served) = match a.scenario {
        Scenario::Schedule => schedule(&mut rig, &a, &kinds, seed, &history).await?,
        Scenario::IsolatedLeaderWrites => (isolated_leader_writes(&mut rig, &history).await?, None),
        Scenario::PowerLossAfterWrites => {
            (power_loss_after_writes(&mut rig, &history).await?, None)
        }
    };
    rig.procs.check_running()?;

    let converged =
        faults::wait_converged(&rig.cluster, Duration::from_secs(CONVERGE_SECS_MAX)).await?;
    let size = converged.first().map_or(0, |s| s.event_count);
    let mut events = BTreeMap::new();
    let mut nodes = BTreeMap::new();
    for (id, addr) in rig.cluster.addrs() {
        let c = sealpost_harness::node_client(&rig.cluster, &addr).await?;
        events.insert(
            id,
            replay(&c, size)
                .await
                .with_context(|| format!("replaying node {id}"))?,
        );
        nodes.insert(id, c);
    }
    let evidence = checks::Evidence {
        sent: load::History::snapshot(&history.sent),
        registered: load::History::snapshot(&history.registered),
        acked: load::History::snapshot(&history.acked),
        events,
        nodes,
    };
    let mut verdicts = checks::run_all(&evidence).await;
    verdicts.push(checks::corruption_refused::check(&records));
    verdicts.extend(served);
    drop(evidence.nodes);
    rig.shut_down()?;

    let mut recoveries: Vec<u64> = records.iter().map(|r| r.recovery_ms).collect();
    recoveries.sort_unstable();
    let mut outages: Vec<u64> = records.iter().map(|r| r.writes_unavailable_ms).collect();
    outages.sort_unstable();
    let mut by_kind = BTreeMap::new();
    for r in &records {
        *by_kind.entry(r.kind.name().to_string()).or_insert(0u64) += 1;
    }
    let count = |name: &str| {
        verdicts
            .iter()
            .filter(|v| v.checker == name)
            .map(|v| v.violations)
            .sum::<u64>()
    };
    let ok = verdicts.iter().all(|v| v.ok);
    let report = Report {
        format_version: 2,
        scenario: format!("{:?}", a.scenario),
        seed,
        git_commit: git_commit(),
        command_line: std::env::args().collect::<Vec<_>>().join(" "),
        nodes: a.nodes,
        duration_secs: a.duration_secs,
        fault_kinds: kinds.iter().map(|k| k.name().to_string()).collect(),
        faults_by_kind: by_kind,
        per_kind: per_kind(&records),
        partitions: records.iter().filter(|r| r.kind.is_partition()).count() as u64,
        leader_kills: records
            .iter()
            .filter(|r| r.kind == faults::FaultKind::KillLeader)
            .count() as u64,
        power_losses: records
            .iter()
            .filter(|r| r.kind == faults::FaultKind::PowerLoss)
            .count() as u64,
        recovery_ms_p50: percentile(&recoveries, 0.5),
        recovery_ms_p99: percentile(&recoveries, 0.99),
        recovery_ms_max: recoveries.last().copied().unwrap_or(0),
        writes_unavailable_ms_p50: percentile(&outages, 0.5),
        writes_unavailable_ms_p99: percentile(&outages, 0.99),
        writes_unavailable_ms_max: outages.last().copied().unwrap_or(0),
        faults: records,
        operations: Operations {
            attempted: history.attempted.load(Ordering::Relaxed),
            failed: history.failed.load(Ordering::Relaxed),
            sends_acknowledged: evidence.sent.len(),
            registrations_acknowledged: evidence.registered.len(),
            desk_acks_acknowledged: evidence.acked.len(),
        },
        lost: count("acknowledged-writes-on-every-replica"),
        duplicates: count("no-duplicate-delivery"),
        checks: verdicts,
        ok,
    };
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| work.join("chaos-report.json"));
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", out.display()))?;
    print!("{}", summary(&report));
    eprintln!("report: {}", out.display());
    if !ok && a.work_dir.is_none() {
        let kept = tmp.keep();
        eprintln!(
            "the run's data and node logs are kept in {}",
            kept.display()
        );
    }
    Ok(ok)
}

fn main() -> anyhow::Result<std::process::ExitCode> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // fuser reports each request a crash abandoned (its process was killed)
                // as an error; at a simulated power loss that is expected.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,fuser::reply=off")),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let ok = rt.block_on(run(args))?;
    Ok(if ok {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_are_summed_up_per_kind() {
        let mut a = faults::FaultRecord::new(faults::FaultKind::KillLeader, 1, String::new(), 0, 0);
        a.terms = 1;
        a.recovery_ms = 100;
        a.writes_unavailable_ms = 3_000;
        let mut b = faults::FaultRecord::new(faults::FaultKind::KillLeader, 2, String::new(), 0, 0);
        b.recovery_ms = 300;
        let c = faults::FaultRecord::new(faults::FaultKind::Bridge, 3, String::new(), 0, 0);
        let s = per_kind(&[a, b, c]);
        assert_eq!(s.len(), 2);
        let k = &s["kill-leader"];
        assert_eq!((k.count, k.with_new_term), (2, 1));
        assert_eq!((k.recovery_ms_p50, k.recovery_ms_max), (300, 300));
        assert_eq!(k.writes_unavailable_ms_max, 3_000);
        assert_eq!(s["bridge"].count, 1);
    }

    #[test]
    fn percentiles_of_recovery_times() {
        let v = [10, 20, 30, 40, 1000];
        assert_eq!(percentile(&v, 0.5), 30);
        assert_eq!(percentile(&v, 0.99), 1000);
        assert_eq!(percentile(&[], 0.5), 0);
    }
}
