//! The scenarios of a benchmark run, each against systems started for it alone:
//!
//! - `log`: committed directory registrations per second through the Raft log of a
//!   sealpost cluster (node processes, mutual TLS, every append fsynced before it counts);
//! - `hot-path`: sealed messages end to end on such a cluster: send → seal → commit →
//!   open → verify → routed, an operation completing when the receiver's live inbox
//!   stream reports it routed;
//! - `relay`: the same across two providers (sent at A, routed at B);
//! - `replay`: the audit replay rate from one node of the hot-path cluster afterwards;
//! - `crypto`: the ceiling: seal + sign + open + verify on every core;
//! - `etcd`, `nats`: the `log` workload (same value size, clients and connections) against
//!   a three-member etcd and a three-replica NATS JetStream on the same machine.
//!
//! Load scenarios run two phases: the maximum (closed loop) and then half of it (open
//! loop, latency from each operation's due time).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use prost::Message as _;
use sealpost_client::Client;
use sealpost_core::ids::HpiO;
use sealpost_proto::v1 as pb;
use sealpost_raft::RaftOptions;
use sealpost_server::config::ApiLimits;
use sealpost_server::federation::RelayOptions;
use sealpost_server::local::LocalCluster;

use crate::load::{self, Mode, Op, Outcome, Spec, TIMELINE_INTERVAL_MS};
use crate::peers::{PeerCluster, PeerKind};
use crate::procs::{self, NodeProcs};
use crate::report::{Latency, LoopKind, Phase, ProcessStats, ScenarioResult};

/// The API limits of the benchmark's clusters: the defaults, without the
/// per-organisation send rate (the load comes from one organisation, and the benchmark
/// measures capacity, not that policy).
fn bench_api() -> ApiLimits {
    ApiLimits {
        send_rate_per_org_per_s: 0,
        ..ApiLimits::default()
    }
}

/// How long a sent message may take to be reported routed before the operation fails.
pub const ROUTED_WAIT_SECS_MAX: u64 = 30;
/// Routed notifications kept for messages whose send has not returned yet.
pub const EARLY_ARRIVALS_MAX: usize = 1_000_000;
/// How long a cluster may take to elect a leader every node agrees on.
pub const READY_SECS_MAX: u64 = 30;
/// How long provider B's endpoint may take to reach provider A's directory.
pub const DIRECTORY_PULL_SECS_MAX: u64 = 60;
/// How long the first message of a messaging scenario may take end to end (connections,
/// a first relay to the peer) before the measured phases start.
pub const PRIME_SECS_MAX: u64 = 90;
/// Pause between phases, so one phase's backlog does not land in the next.
pub const PHASE_GAP_MS: u64 = 1_000;
/// Audit records one replay reads at most.
pub const REPLAY_RECORDS_MAX: u64 = 100_000_000;
/// Lowest open-loop rate worth measuring (operations per second).
pub const OPEN_RATE_MIN: f64 = 2.0;

/// What every scenario shares.
#[derive(Clone, Debug)]
pub struct Ctx {
    pub sealpost_bin: PathBuf,
    pub peers_dir: PathBuf,
    pub work: PathBuf,
    pub nodes: u64,
    pub clients: u64,
    pub connections: u64,
    pub payload_bytes: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub ceiling: Duration,
    /// The open-loop rate of the second phase instead of half the maximum.
    pub rate: Option<f64>,
    /// Where the nodes keep their Raft logs (`raft_log_dir`) instead of their data folders.
    pub raft_log_dir: Option<PathBuf>,
}

impl Ctx {
    /// Moves the cluster's Raft logs to `--raft-log-dir` (under the scenario's name), if
    /// given.
    fn place_logs(&self, cluster: &mut LocalCluster, scenario: &str) -> anyhow::Result<()> {
        if let Some(root) = &self.raft_log_dir {
            let dir = root.join(scenario);
            anyhow::ensure!(
                !dir.exists(),
                "{} exists already: give --raft-log-dir a folder without earlier runs",
                dir.display()
            );
            cluster.keep_raft_logs_under(&dir)?;
        }
        Ok(())
    }

    fn spec(&self, label: String, mode: Mode) -> Spec {
        Spec {
            label,
            mode,
            warmup: self.warmup,
            duration: self.duration,
        }
    }
}

fn phase(name: &str, spec: &Spec, o: &Outcome) -> Phase {
    let (loop_kind, clients, offered_per_sec) = match spec.mode {
        Mode::Closed { clients } => (LoopKind::Closed, Some(clients), None),
        Mode::Open { rate } => (LoopKind::Open, None, Some(rate)),
    };
    Phase {
        name: name.to_string(),
        loop_kind,
        clients,
        offered_per_sec,
        completed: o.completed,
        errors: o.errors,
        secs: o.secs,
        throughput_per_sec: o.throughput(),
        latency: Latency::from_histogram(&o.hist),
        timeline: Phase::timeline_from_counts(
            &o.interval_counts,
            &o.interval_max_us,
            TIMELINE_INTERVAL_MS as f64 / 1000.0,
        ),
        from_unix_ms: Some(o.from_unix_ms),
    }
}

/// The maximum (closed loop, with every process's CPU and memory measured over it), then
/// half of it (open loop). Returns the phases, the processes and notes (first errors).
async fn max_and_half(
    ctx: &Ctx,
    scenario: &str,
    op: Op,
    pids: &[(String, u32)],
    admin: Option<&Client>,
) -> anyhow::Result<(Vec<Phase>, Vec<ProcessStats>, Vec<String>)> {
    let serials = Arc::new(AtomicU64::new(1));
    let mut notes = Vec::new();
    let spec = ctx.spec(
        format!("{scenario} max"),
        Mode::Closed {
            clients: ctx.clients,
        },
    );
    let counted = EntryCount::start(admin, &serials).await?;
    let watch = procs::watch(pids)?;
    let max = load::drive(op.clone(), &spec, serials.clone()).await?;
    let processes = procs::costs(&watch)?;
    notes.extend(EntryCount::note(counted, admin, &serials, "max").await?);
    if let Some(e) = &max.first_error {
        notes.push(format!("max phase: {} errors, the first: {e}", max.errors));
    }
    let mut phases = vec![phase("max", &spec, &max)];
    let rate = ctx.rate.unwrap_or(max.throughput() / 2.0);
    if rate >= OPEN_RATE_MIN {
        tokio::time::sleep(Duration::from_millis(PHASE_GAP_MS)).await;
        let spec = ctx.spec(format!("{scenario} half"), Mode::Open { rate });
        let counted = EntryCount::start(admin, &serials).await?;
        let watch = procs::watch(pids)?;
        let half = load::drive(op, &spec, serials.clone()).await?;
        let used: f64 = procs::costs(&watch)?.iter().map(|p| p.cpu_cores_avg).sum();
        notes.extend(EntryCount::note(counted, admin, &serials, "half").await?);
        notes.push(format!(
            "half phase: the processes above used {used:.2} of the {} cores together",
            std::thread::available_parallelism().map_or(1, |n| n.get())
        ));
        if let Some(e) = &half.first_error {
            notes.push(format!(
                "half phase: {} errors, the first: {e}",
                half.errors
            ));
        }
        let half = phase("half", &spec, &half);
        if let Some((t, ms)) = half.slowest_interval() {
            let at = half.from_unix_ms.map_or_else(String::new, |from| {
                let end = from + (t * 1000.0) as u64;
                format!(" (at {})", sealpost_core::calendar::utc_iso(end))
            });
            notes.push(format!(
                "half phase: the longest latency, {ms:.1} ms, ended in the {TIMELINE_INTERVAL_MS} ms up to {t:.2} s into the measured window{at}"
            ));
        }
        phases.push(half);
    } else {
        notes.push(format!(
            "half phase skipped: the open-loop rate {rate:.1}/s is below {OPEN_RATE_MIN}/s"
        ));
    }
    Ok((phases, processes, notes))
}

/// Where a phase started: the leader's last log index and the next operation serial, so
/// its end can say how many operations each Raft entry carried (batching).
struct EntryCount {
    index: u64,
    serial: u64,
}

impl EntryCount {
    /// `None` without an admin client (a scenario that does not count entries).
    async fn start(admin: Option<&Client>, serials: &AtomicU64) -> anyhow::Result<Option<Self>> {
        Ok(match admin {
            Some(a) => Some(Self {
                index: leader_log_index(a).await?,
                serial: serials.load(std::sync::atomic::Ordering::Relaxed),
            }),
            None => None,
        })
    }

    /// The note for `phase`, which started at `from`.
    async fn note(
        from: Option<Self>,
        admin: Option<&Client>,
        serials: &AtomicU64,
        phase: &str,
    ) -> anyhow::Result<Option<String>> {
        let (Some(from), Some(a)) = (from, admin) else {
            return Ok(None);
        };
        let entries = leader_log_index(a).await?.saturating_sub(from.index);
        let ops = serials
            .load(std::sync::atomic::Ordering::Relaxed)
            .saturating_sub(from.serial);
        Ok(Some(format!(
            "{phase} phase with its warm-up: {ops} operations, {entries} Raft log entries on the leader ({:.1} operations per entry)",
            ops as f64 / entries.max(1) as f64
        )))
    }
}

/// The leader's last log index, to count the entries a phase wrote (batching).
async fn leader_log_index(admin: &Client) -> anyhow::Result<u64> {
    let status = admin
        .admin()
        .status(pb::StatusRequest { all_members: true })
        .await
        .context("asking the cluster's status")?
        .into_inner();
    status
        .members
        .iter()
        .chain(status.this_node.iter())
        .find(|n| n.role == "leader")
        .map(|n| n.last_log_index)
        .context("the cluster reports no leader")
}

fn sealpost_system(nodes: u64) -> String {
    format!("sealpost {} ({nodes} nodes)", env!("CARGO_PKG_VERSION"))
}

/// How many runtime threads the cluster's nodes ran with, for the report's notes.
fn runtime_note(cluster: &LocalCluster) -> String {
    let on_machine = cluster.nodes_on_machine();
    let workers = cluster
        .node_ids()
        .first()
        .and_then(|id| cluster.config(*id))
        .and_then(|c| c.worker_threads);
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    match workers {
        Some(n) => format!(
            "each node ran {n} async runtime thread(s) (worker_threads: this machine's {cores} cores divided among its {on_machine} nodes), its crypto threads apart"
        ),
        None => format!(
            "each node ran one async runtime thread per core ({cores}), its crypto threads apart"
        ),
    }
}

const SEALPOST_DURABILITY: &str = "Acknowledged once in the Raft log of a majority of \
    nodes, each of which fsynced it first (group commit: one fsync covers every append \
    waiting).";

/// Deterministic 32-byte public keys for a bench organisation.
fn key(serial: u64, salt: u64) -> Vec<u8> {
    let mut x = serial.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt;
    (0..32)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x as u8) | 1
        })
        .collect()
}

/// The `log` scenario's write: registering organisation `serial` in the directory.
fn registration(serial: u64) -> pb::RegisterOrganisationRequest {
    pb::RegisterOrganisationRequest {
        organisation: Some(pb::Organisation {
            hpio: HpiO::from_serial(serial).to_string(),
            // Fixed width: every write of a run has the size the peers' values have.
            name: format!("Bench clinic {serial:010}"),
            suburb: "Parkville".into(),
            state: "VIC".into(),
            postcode: "3052".into(),
            keys: Some(pb::PublicKeys {
                key_id: "k1".into(),
                encryption: key(serial, 1),
                signing: key(serial, 2),
            }),
            ..Default::default()
        }),
    }
}

/// Bytes of one `log` write on the wire; the peers write values of this size.
pub fn log_value_bytes() -> usize {
    registration(1_000_000).encoded_len()
}

/// Serials of bench organisations the `log` scenario registers start here (1 and 2 are
/// the messaging scenarios' organisations).
const LOG_SERIAL_BASE: u64 = 1_000;

/// `connections` clients spread over `addrs`.
async fn spread(
    cluster: &LocalCluster,
    addrs: &[String],
    connections: u64,
    org: Option<u64>,
) -> anyhow::Result<Vec<Client>> {
    let mut out = Vec::new();
    for i in 0..connections.max(1) as usize {
        let addr = addrs[i % addrs.len()].clone();
        out.push(match org {
            Some(serial) => org_client(cluster, serial, addr).await?,
            None => procs::node_client(cluster, &addr).await?,
        });
    }
    Ok(out)
}

async fn org_client(cluster: &LocalCluster, serial: u64, addr: String) -> anyhow::Result<Client> {
    let org = HpiO::from_serial(serial);
    Ok(procs::org_client(cluster, &format!("bench-{serial}"), &org, &addr).await?)
}

/// A provider's cluster laid out under the run's work folder and started as processes.
async fn start_provider(ctx: &Ctx, cluster: &LocalCluster) -> anyhow::Result<(NodeProcs, String)> {
    let mut procs = NodeProcs::spawn(&ctx.sealpost_bin, cluster)?;
    let (_, leader) =
        procs::wait_ready(cluster, &mut procs, Duration::from_secs(READY_SECS_MAX)).await?;
    Ok((procs, leader))
}

pub async fn log(ctx: &Ctx) -> anyhow::Result<ScenarioResult> {
    let raft = RaftOptions::default();
    let api = bench_api();
    let messaging = LocalCluster::fitting_messaging(&raft, &api);
    let mut cluster = LocalCluster::lay_out(
        &ctx.work.join("log"),
        "bench-log",
        ctx.nodes,
        raft,
        api,
        messaging,
    )
    .await?;
    ctx.place_logs(&mut cluster, "log")?;
    let (mut procs, _leader) = start_provider(ctx, &cluster).await?;
    let addrs: Vec<String> = cluster.addrs().into_values().collect();
    let clients = spread(&cluster, &addrs, ctx.connections, None).await?;
    let op: Op = Arc::new(move |serial| {
        let mut dir = clients[(serial as usize) % clients.len()].directory();
        Box::pin(async move {
            dir.register_organisation(registration(LOG_SERIAL_BASE + serial))
                .await
                .context("registering an organisation")?;
            Ok(())
        })
    });
    let admin = procs::admin_client(&cluster).await?;
    let (phases, processes, notes) =
        max_and_half(ctx, "log", op, &procs.pids(), Some(&admin)).await?;
    procs.check_running()?;
    procs.stop();
    Ok(ScenarioResult {
        scenario: "log".into(),
        system: sealpost_system(ctx.nodes),
        unit: "events/s".into(),
        durability: SEALPOST_DURABILITY.into(),
        phases,
        processes,
        notes: [
            vec![
                format!(
                    "one event per write: a directory registration of {} bytes",
                    log_value_bytes()
                ),
                runtime_note(&cluster),
            ],
            notes,
        ]
        .concat(),
    })
}

/// Routed notifications from a receiver's live inbox stream, matched with the sends
/// waiting for them whichever comes first.
#[derive(Default)]
struct Arrivals {
    slots: Mutex<HashMap<String, Slot>>,
}

enum Slot {
    Waiting(tokio::sync::oneshot::Sender<()>),
    Arrived,
}

impl Arrivals {
    fn arrived(&self, id: String) {
        let Ok(mut slots) = self.slots.lock() else {
            return;
        };
        match slots.remove(&id) {
            Some(Slot::Waiting(tx)) => {
                let _ = tx.send(());
            }
            Some(Slot::Arrived) | None => {
                if slots.len() < EARLY_ARRIVALS_MAX {
                    slots.insert(id, Slot::Arrived);
                }
            }
        }
    }

    /// Waits until message `id` is reported routed, at most `limit`.
    async fn wait(&self, id: String, limit: Duration) -> anyhow::Result<()> {
        let rx = {
            let mut slots = self
                .slots
                .lock()
                .map_err(|_| anyhow::anyhow!("the arrivals lock is poisoned"))?;
            if let Some(Slot::Arrived) = slots.get(&id) {
                slots.remove(&id);
                return Ok(());
            }
            let (tx, rx) = tokio::sync::oneshot::channel();
            slots.insert(id.clone(), Slot::Waiting(tx));
            rx
        };
        match tokio::time::timeout(limit, rx).await {
            Ok(Ok(())) => Ok(()),
            _ => {
                if let Ok(mut s) = self.slots.lock() {
                    s.remove(&id);
                }
                anyhow::bail!(
                    "message {id} was not reported routed within {ROUTED_WAIT_SECS_MAX} s"
                )
            }
        }
    }
}

/// Follows organisation 2's inbox stream on `addr`, feeding [`Arrivals`].
async fn follow(
    cluster: &LocalCluster,
    addr: &str,
) -> anyhow::Result<(Arc<Arrivals>, tokio::task::JoinHandle<()>)> {
    let receiver = org_client(cluster, 2, addr.to_string()).await?;
    let mut stream = receiver
        .messaging()
        .follow(pb::FollowRequest::default())
        .await?
        .into_inner();
    let arrivals = Arc::new(Arrivals::default());
    let a2 = arrivals.clone();
    let task = tokio::spawn(async move {
        // Ends with the stream (aborted when the scenario ends).
        while let Ok(Some(item)) = stream.message().await {
            a2.arrived(item.message_id);
        }
    });
    Ok((arrivals, task))
}

/// Registers organisation `serial` and, when given, publishes its results desk.
async fn provision(admin: &Client, serial: u64, endpoint: Option<&str>) -> anyhow::Result<()> {
    admin
        .directory()
        .register_organisation(pb::RegisterOrganisationRequest {
            organisation: Some(pb::Organisation {
                hpio: HpiO::from_serial(serial).to_string(),
                name: format!("Bench org {serial}"),
                suburb: "Parkville".into(),
                state: "VIC".into(),
                postcode: "3052".into(),
                keys: None,
                ..Default::default()
            }),
        })
        .await
        .with_context(|| format!("registering bench organisation {serial}"))?;
    if let Some(id) = endpoint {
        admin
            .directory()
            .publish_endpoint(pb::PublishEndpointRequest {
                id: id.to_string(),
                display_name: "Results".into(),
                specialty: "Pathology".into(),
                payload_types: vec!["TEXT".into()],
            })
            .await
            .with_context(|| format!("publishing {id}"))?;
    }
    Ok(())
}

/// The results desk of organisation 2, every message's recipient.
fn desk() -> String {
    format!("{}/results", HpiO::from_serial(2))
}

/// A send that completes when the message is reported routed.
fn send_op(senders: Vec<Client>, arrivals: Arc<Arrivals>, payload_bytes: usize) -> Op {
    let payload = Arc::new(vec![0x42u8; payload_bytes]);
    let to = desk();
    Arc::new(move |serial| {
        let mut m = senders[(serial as usize) % senders.len()].messaging();
        let (arrivals, payload, to) = (arrivals.clone(), payload.clone(), to.clone());
        Box::pin(async move {
            let r = m
                .send(pb::SendRequest {
                    from_org: HpiO::from_serial(1).to_string(),
                    to: vec![to],
                    payload_type: "TEXT".into(),
                    payload: payload.to_vec(),
                    ..Default::default()
                })
                .await
                .context("sending")?;
            arrivals
                .wait(
                    r.into_inner().message_id,
                    Duration::from_secs(ROUTED_WAIT_SECS_MAX),
                )
                .await
        })
    })
}

/// Sends messages one at a time until one completes end to end, so the phases measure a
/// running path rather than its first connections. Returns how long that took.
async fn prime(op: &Op) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut attempt = 0u64;
    let mut last = String::new();
    // Bounded by PRIME_SECS_MAX (each attempt by ROUTED_WAIT_SECS_MAX).
    while start.elapsed() < Duration::from_secs(PRIME_SECS_MAX) {
        // Serials from the top down: the phases number theirs from 1 upwards.
        match op(u64::MAX - attempt).await {
            Ok(()) => return Ok(start.elapsed()),
            Err(e) => last = format!("{e:#}"),
        }
        attempt += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    anyhow::bail!("no message completed end to end within {PRIME_SECS_MAX} s ({last})")
}

/// The hot path and then, on the same cluster, the replay (when `replay` is set).
pub async fn hot_path(ctx: &Ctx, replay: bool) -> anyhow::Result<Vec<ScenarioResult>> {
    let raft = RaftOptions::default();
    let api = bench_api();
    let messaging = LocalCluster::fitting_messaging(&raft, &api);
    let mut cluster = LocalCluster::lay_out(
        &ctx.work.join("hot-path"),
        "bench-hot",
        ctx.nodes,
        raft,
        api,
        messaging,
    )
    .await?;
    ctx.place_logs(&mut cluster, "hot-path")?;
    let (mut procs, leader) = start_provider(ctx, &cluster).await?;
    let admin = procs::admin_client(&cluster).await?;
    provision(&admin, 1, None).await?;
    provision(&admin, 2, Some(&desk())).await?;
    let addrs: Vec<String> = cluster.addrs().into_values().collect();
    let senders = spread(&cluster, &addrs, ctx.connections, Some(1)).await?;
    // The receiver follows the leader's stream: "routed" is measured where it happens,
    // not after a follower's apply lag.
    let (arrivals, stream) = follow(&cluster, &leader).await?;
    let op = send_op(senders, arrivals, ctx.payload_bytes);
    let primed = prime(&op).await?;
    let (phases, processes, mut notes) =
        max_and_half(ctx, "hot-path", op, &procs.pids(), Some(&admin)).await?;
    notes.push(format!(
        "the first message took {} ms end to end (before the phases)",
        primed.as_millis()
    ));
    stream.abort();
    procs.check_running()?;
    let mut out = vec![ScenarioResult {
        scenario: "hot-path".into(),
        system: sealpost_system(ctx.nodes),
        unit: "messages/s".into(),
        durability: SEALPOST_DURABILITY.into(),
        phases,
        processes,
        notes: [
            vec![
                format!(
                    "{} B payloads, one recipient organisation; a message counts when the receiver's inbox stream (on the leader) reports it routed",
                    ctx.payload_bytes
                ),
                runtime_note(&cluster),
            ],
            notes,
        ]
        .concat(),
    }];
    if replay {
        out.push(replay_from(&cluster, &addrs[0], &procs.pids()).await?);
    }
    procs.stop();
    Ok(out)
}

/// Streams every audit record of the node at `addr` once and counts them.
async fn replay_from(
    cluster: &LocalCluster,
    addr: &str,
    pids: &[(String, u32)],
) -> anyhow::Result<ScenarioResult> {
    let c = procs::node_client(cluster, addr).await?;
    let watch = procs::watch(pids)?;
    let start = Instant::now();
    let mut stream = c
        .audit()
        .replay(pb::ReplayRequest::default())
        .await
        .context("starting the audit replay")?
        .into_inner();
    let mut records = 0u64;
    let mut last_seq = 0u64;
    // Bounded by the store's size and REPLAY_RECORDS_MAX.
    while let Some(ev) = stream.message().await.context("reading the audit replay")? {
        anyhow::ensure!(
            ev.seq > last_seq,
            "the replay went from sequence {last_seq} to {}",
            ev.seq
        );
        last_seq = ev.seq;
        records += 1;
        if records >= REPLAY_RECORDS_MAX {
            break;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let processes = procs::costs(&watch)?;
    Ok(ScenarioResult {
        scenario: "replay".into(),
        system: "sealpost (one node, Audit.Replay over gRPC + TLS)".into(),
        unit: "records/s".into(),
        durability: "A read: every event in the node's log at the time of the request.".into(),
        phases: vec![Phase {
            name: "run".into(),
            loop_kind: LoopKind::Single,
            clients: Some(1),
            offered_per_sec: None,
            completed: records,
            errors: 0,
            secs,
            throughput_per_sec: records as f64 / secs.max(1e-9),
            latency: None,
            timeline: Vec::new(),
            from_unix_ms: None,
        }],
        processes,
        notes: vec![format!(
            "the whole log of the hot-path cluster ({records} events, ATNA-shaped records with their canonical bytes) read once from node 1"
        )],
    })
}

pub async fn relay(ctx: &Ctx) -> anyhow::Result<ScenarioResult> {
    let raft = RaftOptions::default();
    let api = bench_api();
    let messaging = LocalCluster::fitting_messaging(&raft, &api);
    let mut providers = LocalCluster::lay_out_federation(
        &ctx.work.join("relay"),
        &[
            ("prov-a".to_string(), messaging.clone()),
            ("prov-b".to_string(), messaging),
        ],
        ctx.nodes,
        (raft, api, RelayOptions::default()),
    )
    .await?;
    let b = providers.pop().context("provider b")?;
    let a = providers.pop().context("provider a")?;
    let (mut a_procs, _) = start_provider(ctx, &a).await?;
    let (mut b_procs, b_leader) = start_provider(ctx, &b).await?;
    provision(&procs::admin_client(&a).await?, 1, None).await?;
    provision(&procs::admin_client(&b).await?, 2, Some(&desk())).await?;
    let a_admin = procs::admin_client(&a).await?;
    let deadline = Instant::now() + Duration::from_secs(DIRECTORY_PULL_SECS_MAX);
    // Bounded by the deadline.
    while a_admin
        .directory()
        .get_endpoint(pb::GetEndpointRequest {
            id: desk(),
            ..Default::default()
        })
        .await
        .is_err()
    {
        anyhow::ensure!(
            Instant::now() < deadline,
            "B's endpoint did not reach A's directory within {DIRECTORY_PULL_SECS_MAX} s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let a_addrs: Vec<String> = a.addrs().into_values().collect();
    let senders = spread(&a, &a_addrs, ctx.connections, Some(1)).await?;
    let (arrivals, stream) = follow(&b, &b_leader).await?;
    let op = send_op(senders, arrivals, ctx.payload_bytes);
    let primed = prime(&op).await?;
    let pids = [a_procs.pids(), b_procs.pids()].concat();
    let (phases, processes, mut notes) = max_and_half(ctx, "relay", op, &pids, None).await?;
    notes.push(format!(
        "the first message took {} ms from A to B's receiver (before the phases)",
        primed.as_millis()
    ));
    stream.abort();
    a_procs.check_running()?;
    b_procs.check_running()?;
    a_procs.stop();
    b_procs.stop();
    Ok(ScenarioResult {
        scenario: "relay".into(),
        system: format!("sealpost, 2 providers x {} nodes", ctx.nodes),
        unit: "messages/s".into(),
        durability: "Acknowledged once committed at provider A (as hot-path); routed once B committed it, and B's signed receipt is recorded at A.".into(),
        phases,
        processes,
        notes: [
            vec![
                format!(
                    "{} B payloads sent at provider A; a message counts when B's receiver stream reports it routed",
                    ctx.payload_bytes
                ),
                runtime_note(&a),
            ],
            notes,
        ]
        .concat(),
    })
}

/// Seal + sign + open + verify of `payload_bytes` in a loop on every core.
pub fn ceiling(payload_bytes: usize, dur: Duration) -> anyhow::Result<(u64, usize)> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let sender = Arc::new(sealpost_crypto::keys::OrgKeys::generate("k1")?);
    let recipient = Arc::new(sealpost_crypto::keys::OrgKeys::generate("k1")?);
    let payload = Arc::new(vec![0x5au8; payload_bytes]);
    let end = Instant::now() + dur;
    let threads: Vec<_> = (0..cores)
        .map(|_| {
            let (s, r, p) = (sender.clone(), recipient.clone(), payload.clone());
            std::thread::spawn(move || -> anyhow::Result<u64> {
                let mut n = 0u64;
                // Bounded by the end time.
                while Instant::now() < end {
                    sealpost_crypto::envelope::crypto_round_trip(&s, &r, &p)?;
                    n += 1;
                }
                Ok(n)
            })
        })
        .collect();
    let mut total = 0;
    for t in threads {
        total += t
            .join()
            .map_err(|_| anyhow::anyhow!("a ceiling thread panicked"))??;
    }
    Ok((total, cores))
}

pub async fn crypto(ctx: &Ctx) -> anyhow::Result<ScenarioResult> {
    let watch = procs::watch(&[])?;
    let (bytes, dur) = (ctx.payload_bytes, ctx.ceiling);
    let (total, cores) = tokio::task::spawn_blocking(move || ceiling(bytes, dur)).await??;
    let processes = procs::costs(&watch)?;
    let secs = dur.as_secs_f64();
    Ok(ScenarioResult {
        scenario: "crypto".into(),
        system: format!("sealpost-crypto, {cores} threads"),
        unit: "messages/s".into(),
        durability: "None: computation only (the ceiling).".into(),
        phases: vec![Phase {
            name: "run".into(),
            loop_kind: LoopKind::Single,
            clients: Some(cores as u64),
            offered_per_sec: None,
            completed: total,
            errors: 0,
            secs,
            throughput_per_sec: total as f64 / secs.max(1e-9),
            latency: None,
            timeline: Vec::new(),
            from_unix_ms: None,
        }],
        processes,
        notes: vec![format!(
            "HPKE seal for one recipient organisation + Ed25519 sign + HPKE open + verify of {bytes} B, one thread per core"
        )],
    })
}

/// The `log` workload against a peer system.
pub async fn peer(ctx: &Ctx, kind: PeerKind) -> anyhow::Result<ScenarioResult> {
    let dir = ctx.work.join(kind.label());
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut cluster = PeerCluster::start(kind, &ctx.peers_dir, &dir)?;
    let value = Arc::new(vec![0x42u8; log_value_bytes()]);
    let connections = ctx.connections.max(1) as usize;
    let (op, system, durability): (Op, String, &str) = match kind {
        PeerKind::Etcd => {
            let t =
                crate::peers::etcd::EtcdTarget::connect(&cluster.endpoints, connections).await?;
            let op: Op = Arc::new(move |serial| {
                let (t, value) = (t.clone(), value.clone());
                Box::pin(async move { t.write(serial, &value).await })
            });
            (
                op,
                format!(
                    "etcd {} ({} members)",
                    cluster.version,
                    cluster.endpoints.len()
                ),
                "Acknowledged once a majority of members has the write in its WAL, each fsynced before answering.",
            )
        }
        PeerKind::Nats => {
            let t =
                crate::peers::nats::NatsTarget::connect(&cluster.endpoints, connections).await?;
            let op: Op = Arc::new(move |serial| {
                let (t, value) = (t.clone(), value.clone());
                Box::pin(async move { t.write(serial, &value).await })
            });
            (
                op,
                format!(
                    "nats-server {} (JetStream, file storage, R3)",
                    cluster.version
                ),
                crate::peers::nats::DURABILITY,
            )
        }
    };
    let result = max_and_half(ctx, kind.label(), op, &cluster.pids, None).await;
    cluster.stop()?;
    let (phases, processes, notes) = result?;
    Ok(ScenarioResult {
        scenario: kind.label().into(),
        system,
        unit: "writes/s".into(),
        durability: durability.into(),
        phases,
        processes,
        notes: [
            vec![format!(
                "the log workload: values of {} bytes, the same clients and connections",
                log_value_bytes()
            )],
            notes,
        ]
        .concat(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_routed_notice_meets_its_send_whichever_comes_first() {
        let a = Arrivals::default();
        // The stream reports the message before the send returned its id.
        a.arrived("m1".into());
        let limit = Duration::from_secs(5);
        a.wait("m1".into(), limit).await.expect("already arrived");
        // The send waits, then the notice comes.
        let a = Arc::new(a);
        let waiter = tokio::spawn({
            let a = a.clone();
            async move { a.wait("m2".into(), limit).await }
        });
        // Bounded: the waiter registers within a few yields.
        for _ in 0..1000 {
            if a.slots.lock().expect("lock").contains_key("m2") {
                break;
            }
            tokio::task::yield_now().await;
        }
        a.arrived("m2".into());
        waiter.await.expect("join").expect("routed");
        assert!(
            a.slots.lock().expect("lock").is_empty(),
            "nothing is left behind"
        );
    }

    #[tokio::test]
    async fn a_message_never_routed_fails_after_the_wait_limit() {
        let a = Arrivals::default();
        let e = a
            .wait("lost".into(), Duration::from_millis(50))
            .await
            .expect_err("never routed")
            .to_string();
        assert!(
            e.contains("lost") && e.contains("not reported routed"),
            "{e}"
        );
        assert!(a.slots.lock().expect("lock").is_empty());
    }

    #[test]
    fn the_log_write_is_a_real_registration_of_a_stable_size() {
        let r = registration(LOG_SERIAL_BASE + 7);
        let org = r.organisation.expect("organisation");
        assert_eq!(org.hpio, HpiO::from_serial(LOG_SERIAL_BASE + 7).to_string());
        assert_eq!(org.keys.expect("keys").encryption.len(), 32);
        // The peers write values of log_value_bytes(); every serial a run writes must give
        // a registration of that same size, or the comparison is not like for like.
        for serial in [1, 999, 123_456, 99_999_999] {
            assert_eq!(
                registration(LOG_SERIAL_BASE + serial).encoded_len(),
                log_value_bytes(),
                "serial {serial}"
            );
        }
        assert!(
            (100..400).contains(&log_value_bytes()),
            "{}",
            log_value_bytes()
        );
    }
}
