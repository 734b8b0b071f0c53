//! The fault schedule of a chaos run, drawn from a seed so a run can be repeated: every
//! `--fault-every-ms` one fault on the [`Rig`], held for a drawn time, then healed, and the
//! time until the cluster serves writes again measured. The kinds:
//! - **kill-leader / kill-follower**: SIGKILL, restarted on its data after the hold;
//! - **pause-leader / pause-follower**: SIGSTOP past the election timeout, then SIGCONT;
//! - **partition-leader**: the leader on the minority side of a majority/minority split;
//! - **partition-random**: a random minority cut off;
//! - **one-way-leader**: the leader cannot reach anyone, everyone can reach it;
//! - **bridge**: two halves that cannot see each other, and one node that sees both;
//! - **slow-links**: every link to and from one node delayed;
//! - **power-loss**: every node SIGKILLed at once and everything not fsynced dropped
//!   (LazyFs), then all restarted;
//! - **corrupt-follower**: a follower's Raft log file gets a flipped byte or is truncated;
//!   the node must refuse to start; the harness then removes it, wipes it and adds a fresh
//!   node under a new id (learner, then voter), never the old id.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use sealpost_harness::NodeId;
use sealpost_proto::v1 as pb;
use sealpost_server::local::LocalCluster;
use serde::Serialize;

use crate::rig::Rig;

/// How long a cluster may take to agree on a leader after a fault is healed.
pub const RECOVERY_SECS_MAX: u64 = 60;
/// Shortest and longest hold of a kill (the node restarts after it).
pub const HOLD_MS_MIN: u64 = 1_000;
pub const HOLD_MS_MAX: u64 = 4_000;
/// Shortest and longest pause (SIGSTOP). openraft's followers honour the leader's lease
/// (the longest election timeout, 2 s by default) and then wait their own election timeout,
/// so a pause shorter than about 4 s need not cost the leader its term; pauses go past that.
pub const PAUSE_MS_MIN: u64 = 4_500;
pub const PAUSE_MS_MAX: u64 = 7_000;
/// Shortest and longest hold of a partition or of slow links.
pub const PARTITION_MS_MIN: u64 = 3_000;
pub const PARTITION_MS_MAX: u64 = 8_000;
/// Shortest and longest delay a slow link adds, each way.
pub const SLOW_MS_MIN: u64 = 50;
pub const SLOW_MS_MAX: u64 = 400;
/// How long a node with a corrupted store has to refuse to start.
pub const REFUSE_SECS_MAX: u64 = 20;
/// The longest hold of any fault: the schedule leaves this much before the run's end.
pub const FAULT_MS_MAX: u64 = PARTITION_MS_MAX;
/// How long adding a replacement node (catching up as a learner, then promotion) may take.
pub const REJOIN_SECS_MAX: u64 = 120;

/// SplitMix64: a small, seeded, reproducible sequence (not cryptography: it only picks
/// faults and hold times).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi.saturating_sub(lo) + 1)
    }

    /// One element of a non-empty slice.
    pub fn pick<T: Copy>(&mut self, of: &[T]) -> T {
        of[(self.next_u64() % of.len().max(1) as u64) as usize]
    }

    /// `items` in a drawn order (Fisher–Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            items.swap(i, j);
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    KillLeader,
    KillFollower,
    PauseLeader,
    PauseFollower,
    PartitionLeader,
    PartitionRandom,
    OneWayLeader,
    Bridge,
    SlowLinks,
    PowerLoss,
    CorruptFollower,
}

impl FaultKind {
    pub const ALL: [FaultKind; 11] = [
        FaultKind::KillLeader,
        FaultKind::KillFollower,
        FaultKind::PauseLeader,
        FaultKind::PauseFollower,
        FaultKind::PartitionLeader,
        FaultKind::PartitionRandom,
        FaultKind::OneWayLeader,
        FaultKind::Bridge,
        FaultKind::SlowLinks,
        FaultKind::PowerLoss,
        FaultKind::CorruptFollower,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillLeader => "kill-leader",
            FaultKind::KillFollower => "kill-follower",
            FaultKind::PauseLeader => "pause-leader",
            FaultKind::PauseFollower => "pause-follower",
            FaultKind::PartitionLeader => "partition-leader",
            FaultKind::PartitionRandom => "partition-random",
            FaultKind::OneWayLeader => "one-way-leader",
            FaultKind::Bridge => "bridge",
            FaultKind::SlowLinks => "slow-links",
            FaultKind::PowerLoss => "power-loss",
            FaultKind::CorruptFollower => "corrupt-follower",
        }
    }

    pub fn parse(s: &str) -> anyhow::Result<FaultKind> {
        FaultKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "unknown fault kind {s:?}; the kinds are: {}",
                    FaultKind::ALL.map(FaultKind::name).join(", ")
                )
            })
    }

    /// Whether the fault cuts links (counted as a partition in the report).
    pub fn is_partition(self) -> bool {
        matches!(
            self,
            FaultKind::PartitionLeader
                | FaultKind::PartitionRandom
                | FaultKind::OneWayLeader
                | FaultKind::Bridge
        )
    }
}

/// One fault as it happened.
#[derive(Clone, Debug, Serialize)]
pub struct FaultRecord {
    pub kind: FaultKind,
    /// The node the fault hit (for power loss and partitions, the leader at the time).
    pub node: NodeId,
    /// What exactly was done: the sides of a partition, the delay, what a crash dropped,
    /// which file was damaged and how.
    pub detail: String,
    /// Milliseconds since the run's load started.
    pub at_ms: u64,
    pub hold_ms: u64,
    /// From healing until every node agreed on a leader again.
    pub recovery_ms: u64,
    /// The leader after recovery.
    pub leader_after: NodeId,
    /// Raft terms the fault cost (elections held).
    pub terms: u64,
    /// The longest time no write was acknowledged, from the fault until a second after its
    /// recovery (filled in by the run, which sees the load).
    pub writes_unavailable_ms: u64,
    /// For corrupt-follower: whether the damaged node refused to start, as it must.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub corruption_refused: Option<bool>,
    /// For corrupt-follower: the id the node rejoined under.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejoined_as: Option<NodeId>,
}

impl FaultRecord {
    /// A fault of `kind` on `node`, started `at_ms` into the run and held `hold_ms`, whose
    /// recovery is not measured yet.
    pub fn new(kind: FaultKind, node: NodeId, detail: String, at_ms: u64, hold_ms: u64) -> Self {
        Self {
            kind,
            node,
            detail,
            at_ms,
            hold_ms,
            recovery_ms: 0,
            leader_after: 0,
            terms: 0,
            writes_unavailable_ms: 0,
            corruption_refused: None,
            rejoined_as: None,
        }
    }

    /// Waits for the cluster to agree on a leader again and records how long that took
    /// since `healed`, who leads, and the terms since `term_before`.
    pub async fn recovered(
        mut self,
        rig: &mut Rig,
        healed: Instant,
        term_before: u64,
    ) -> anyhow::Result<Self> {
        let (leader_after, term_after, _) = roles(rig).await?;
        self.recovery_ms = healed.elapsed().as_millis() as u64;
        self.leader_after = leader_after;
        self.terms = term_after.saturating_sub(term_before);
        Ok(self)
    }
}

/// The status of the node at `addr`, within 5 s.
pub async fn status_of(cluster: &LocalCluster, addr: &str) -> anyhow::Result<pb::NodeStatus> {
    let c = sealpost_harness::node_client(cluster, addr).await?;
    tokio::time::timeout(
        Duration::from_secs(5),
        c.admin().status(pb::StatusRequest::default()),
    )
    .await
    .map_err(|_| anyhow::anyhow!("{addr} gave no status in 5 s"))??
    .into_inner()
    .this_node
    .ok_or_else(|| anyhow::anyhow!("{addr} gave a status without this node"))
}

/// The current leader, its term and the followers, from the running nodes' agreement.
pub async fn roles(rig: &mut Rig) -> anyhow::Result<(NodeId, u64, Vec<NodeId>)> {
    let (leader, addr) = sealpost_harness::wait_ready(
        &rig.cluster,
        &mut rig.procs,
        Duration::from_secs(RECOVERY_SECS_MAX),
    )
    .await?;
    let term = status_of(&rig.cluster, &addr).await?.term;
    let followers = rig
        .procs
        .ids()
        .into_iter()
        .filter(|i| *i != leader)
        .collect();
    Ok((leader, term, followers))
}

/// Draws a hold time for `kind`.
fn hold_for(kind: FaultKind, rng: &mut Rng) -> u64 {
    match kind {
        FaultKind::KillLeader | FaultKind::KillFollower | FaultKind::PowerLoss => {
            rng.between(HOLD_MS_MIN, HOLD_MS_MAX)
        }
        FaultKind::PauseLeader | FaultKind::PauseFollower => {
            rng.between(PAUSE_MS_MIN, PAUSE_MS_MAX)
        }
        FaultKind::PartitionLeader
        | FaultKind::PartitionRandom
        | FaultKind::OneWayLeader
        | FaultKind::Bridge
        | FaultKind::SlowLinks => rng.between(PARTITION_MS_MIN, PARTITION_MS_MAX),
        FaultKind::CorruptFollower => 0,
    }
}

/// The order faults come in: the chosen kinds dealt like cards from a deck shuffled by the
/// seed, and reshuffled when empty, so every kind comes up once in every round.
#[derive(Debug)]
pub struct Deck {
    kinds: Vec<FaultKind>,
    left: Vec<FaultKind>,
}

impl Deck {
    pub fn new(kinds: &[FaultKind]) -> Self {
        Self {
            kinds: kinds.to_vec(),
            left: Vec::new(),
        }
    }

    pub fn deal(&mut self, rng: &mut Rng) -> FaultKind {
        if self.left.is_empty() {
            self.left = self.kinds.clone();
            rng.shuffle(&mut self.left);
        }
        self.left.pop().unwrap_or(FaultKind::KillLeader)
    }
}

/// Injects one fault of the next kind from `deck`, holds it, heals it and waits for
/// recovery.
pub async fn inject(
    rig: &mut Rig,
    deck: &mut Deck,
    rng: &mut Rng,
    started: Instant,
) -> anyhow::Result<FaultRecord> {
    let mut kind = deck.deal(rng);
    if kind == FaultKind::CorruptFollower && rig.spares_left() == 0 {
        // Every spare id is used: a node cannot rejoin again, so the draw falls back.
        kind = FaultKind::KillFollower;
    }
    let hold_ms = hold_for(kind, rng);
    let (leader, term_before, followers) = roles(rig).await?;
    let nodes = rig.procs.ids();
    let mut node = match kind {
        FaultKind::KillFollower | FaultKind::PauseFollower | FaultKind::CorruptFollower
            if !followers.is_empty() =>
        {
            rng.pick(&followers)
        }
        _ => leader,
    };
    let at_ms = started.elapsed().as_millis() as u64;
    let mut detail = String::new();
    let mut corruption_refused = None;
    let mut rejoined_as = None;
    match kind {
        FaultKind::KillLeader | FaultKind::KillFollower => {
            rig.procs.kill(node)?;
            tokio::time::sleep(Duration::from_millis(hold_ms)).await;
        }
        FaultKind::PauseLeader | FaultKind::PauseFollower => {
            rig.procs.pause(node)?;
            tokio::time::sleep(Duration::from_millis(hold_ms)).await;
        }
        FaultKind::PartitionLeader | FaultKind::PartitionRandom => {
            let mut others: Vec<NodeId> = nodes.iter().copied().filter(|n| *n != leader).collect();
            // Drawn for both kinds (only partition-leader uses it) so that recorded seeds
            // keep reproducing their schedules.
            rng.shuffle(&mut others);
            let minority_size = nodes.len() / 2;
            let mut minority: Vec<NodeId> = if kind == FaultKind::PartitionLeader {
                std::iter::once(leader)
                    .chain(others.iter().copied().take(minority_size.saturating_sub(1)))
                    .collect()
            } else {
                let mut all = nodes.clone();
                rng.shuffle(&mut all);
                all.into_iter().take(minority_size).collect()
            };
            minority.sort_unstable();
            let majority: Vec<NodeId> = nodes
                .iter()
                .copied()
                .filter(|n| !minority.contains(n))
                .collect();
            node = minority.first().copied().unwrap_or(leader);
            detail = format!("{minority:?} | {majority:?}");
            rig.proxy.partition(&[minority, majority]);
            tokio::time::sleep(Duration::from_millis(hold_ms)).await;
            rig.proxy.heal();
        }
        FaultKind::OneWayLeader => {
            detail = format!("{leader} reaches no one; everyone reaches {leader}");
            rig.proxy.cut_outbound(leader);
            tokio::time::sleep(Duration::from_millis(hold_ms)).await;
            rig.proxy.heal();
        }
        FaultKind::Bridge => {
            let mut all = nodes.clone();
            rng.shuffle(&mut all);
            let bridge = all.remove(0);
            let half = all.len() / 2;
            let (left, right) = all.split_at(half);
            node = bridge;
            detail = format!("{left:?} | {right:?}, bridged by {bridge}");
            rig.proxy.partition(&[left.to_vec(), right.to_vec()]);
            tokio::time::sleep(Duration::from_millis(hold_ms)).await;
            rig.proxy.heal();
        }
        FaultKind::SlowLinks => {
            node = rng.pick(&nodes);
            let delay = rng.between(SLOW_MS_MIN, SLOW_MS_MAX);
            detail = format!("links of {node} delayed {delay} ms each way");
            rig.proxy.slow(node, delay);
            tokio::time::sleep(Duration::from_millis(hold_ms)).await;
            rig.proxy.heal();
        }
        FaultKind::PowerLoss => {
            let fs = rig
                .lazyfs
                .as_ref()
                .context("power loss needs the LazyFs mount (the run was built without it)")?;
            for id in &nodes {
                if rig.procs.is_running(*id) {
                    rig.procs.kill(*id)?;
                }
            }
            let dropped = fs.crash()?;
            detail = format!(
                "all nodes crashed; {} unsynced bytes in {} writes to {} files dropped",
                dropped.dropped_bytes, dropped.dropped_writes, dropped.files_touched
            );
            tokio::time::sleep(Duration::from_millis(hold_ms)).await;
            for id in &nodes {
                rig.procs.start(*id)?;
            }
        }
        FaultKind::CorruptFollower => {
            let (refused, what, new_id) = corrupt_and_replace(rig, node, rng).await?;
            detail = what;
            corruption_refused = Some(refused);
            rejoined_as = Some(new_id);
        }
    }
    let healed = Instant::now();
    match kind {
        FaultKind::KillLeader | FaultKind::KillFollower => rig.procs.start(node)?,
        FaultKind::PauseLeader | FaultKind::PauseFollower => rig.procs.resume(node)?,
        _ => {}
    }
    let mut record = FaultRecord::new(kind, node, detail, at_ms, hold_ms);
    record.corruption_refused = corruption_refused;
    record.rejoined_as = rejoined_as;
    record.recovered(rig, healed, term_before).await
}

/// The file of a node's Raft log to damage: the largest SST or WAL file.
fn victim_file(node_dir: &Path) -> anyhow::Result<PathBuf> {
    let log = node_dir.join("raft-log");
    let mut best: Option<(u64, PathBuf)> = None;
    for e in std::fs::read_dir(&log).with_context(|| format!("listing {}", log.display()))? {
        let e = e?;
        let p = e.path();
        let ext = p.extension().and_then(|x| x.to_str()).unwrap_or("");
        if ext != "sst" && ext != "log" {
            continue;
        }
        let len = e.metadata()?.len();
        if len > 0 && best.as_ref().is_none_or(|(l, _)| len > *l) {
            best = Some((len, p));
        }
    }
    best.map(|(_, p)| p)
        .with_context(|| format!("{} holds no SST or WAL file with data", log.display()))
}

/// Damages `path` durably: flips one byte in its middle half, or truncates it to a drawn
/// length in its middle half. Returns what was done.
fn damage(path: &Path, rng: &mut Rng) -> anyhow::Result<String> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let len = f.metadata()?.len();
    anyhow::ensure!(len >= 4, "{} is too short to damage", path.display());
    let at = rng.between(len / 4, len * 3 / 4);
    let what = if rng.next_u64().is_multiple_of(2) {
        let mut b = [0u8; 1];
        f.seek(SeekFrom::Start(at))?;
        f.read_exact(&mut b)?;
        let flipped = b[0] ^ (1 << rng.between(0, 7));
        f.seek(SeekFrom::Start(at))?;
        f.write_all(&[flipped])?;
        format!("flipped byte {at} of {} ({len} bytes)", path.display())
    } else {
        f.set_len(at)?;
        format!("truncated {} from {len} to {at} bytes", path.display())
    };
    f.sync_all()?;
    Ok(what)
}

/// Stops `node`, damages its Raft log, checks it refuses to start, then removes it from the
/// cluster, wipes its folder and adds a fresh node under a new id. Returns whether it
/// refused, what was damaged, and the new id.
async fn corrupt_and_replace(
    rig: &mut Rig,
    node: NodeId,
    rng: &mut Rng,
) -> anyhow::Result<(bool, String, NodeId)> {
    let node_dir = rig
        .cluster
        .config_path(node)
        .parent()
        .map(Path::to_path_buf)
        .context("a node's configuration lies in its folder")?;
    // A clean stop, so the damage is the only thing wrong with the store.
    rig.procs.stop_node(node)?;
    let victim = victim_file(&node_dir)?;
    let mut what = damage(&victim, rng)?;
    rig.procs.start(node)?;
    let deadline = Instant::now() + Duration::from_secs(REFUSE_SECS_MAX);
    // Bounded by the deadline.
    while rig.procs.is_running(node) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refused = !rig.procs.is_running(node);
    let tail = rig.procs.log_tail(node).unwrap_or_default();
    let last = tail
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    if refused {
        what.push_str(&format!("; refused to start: {}", last.trim()));
    } else {
        what.push_str("; STARTED ANYWAY on a damaged store");
    }
    rig.procs.remove(node)?;

    // Recovery: out of the membership, folder wiped, a new node under a new id.
    until_membership(
        rig,
        "removing the damaged node",
        |m| !m.contains_key(&node),
        |c| async move {
            c.admin()
                .remove_node(pb::RemoveNodeRequest { id: node })
                .await
                .map(|_| ())
        },
    )
    .await?;
    rig.cluster.discard_node(node).await?;
    std::fs::remove_dir_all(&node_dir).with_context(|| format!("wiping {}", node_dir.display()))?;
    let (new_id, addr) = rig.start_joiner().await?;
    until_membership(
        rig,
        "adding the replacement node",
        |m| m.get(&new_id) == Some(&true),
        |c| {
            let addr = addr.clone();
            async move {
                c.admin()
                    .add_node(pb::AddNodeRequest {
                        id: new_id,
                        addr,
                        promote: true,
                    })
                    .await
                    .map(|_| ())
            }
        },
    )
    .await?;
    what.push_str(&format!("; removed, wiped, rejoined as node {new_id}"));
    Ok((refused, what, new_id))
}

/// The address of the leader some running node names, if any does.
async fn leader_addr(rig: &mut Rig) -> Option<String> {
    let addrs = rig.cluster.addrs();
    for id in rig.procs.ids() {
        if !rig.procs.is_running(id) {
            continue;
        }
        let Some(addr) = addrs.get(&id) else { continue };
        if let Ok(s) = status_of(&rig.cluster, addr).await
            && s.leader_id != 0
            && let Some(leader) = addrs.get(&s.leader_id)
        {
            return Some(leader.clone());
        }
    }
    None
}

/// The members (id → voter) as the leader at `addr` and each member see it.
async fn membership(
    rig: &Rig,
    addr: &str,
) -> anyhow::Result<std::collections::BTreeMap<NodeId, bool>> {
    let c = sealpost_harness::node_client(&rig.cluster, addr).await?;
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        c.admin().status(pb::StatusRequest { all_members: true }),
    )
    .await
    .map_err(|_| anyhow::anyhow!("{addr} gave no status in 10 s"))??
    .into_inner();
    Ok(r.members.iter().map(|m| (m.id, m.voter)).collect())
}

/// Calls `change` on the leader until the membership satisfies `done` (bounded by
/// [`REJOIN_SECS_MAX`]): a leadership change can cut a call off, and an answer can be lost
/// after the change took effect, so success is read from the membership, not the answer.
async fn until_membership<D, C, Fut>(
    rig: &mut Rig,
    what: &str,
    done: D,
    change: C,
) -> anyhow::Result<()>
where
    D: Fn(&std::collections::BTreeMap<NodeId, bool>) -> bool,
    C: Fn(sealpost_client::Client) -> Fut,
    Fut: std::future::Future<Output = Result<(), tonic::Status>>,
{
    let deadline = Instant::now() + Duration::from_secs(REJOIN_SECS_MAX);
    let mut last = String::from("not tried");
    // Bounded by the deadline.
    while Instant::now() < deadline {
        // Not `wait_ready`: a joiner that is not a member yet knows no leader.
        let Some(leader) = leader_addr(rig).await else {
            last = "no leader known".into();
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        match membership(rig, &leader).await {
            Ok(m) if done(&m) => return Ok(()),
            Ok(m) => last = format!("membership {m:?}"),
            Err(e) => last = e.to_string(),
        }
        let c = sealpost_harness::node_client(&rig.cluster, &leader).await?;
        match tokio::time::timeout(Duration::from_secs(REJOIN_SECS_MAX), change(c)).await {
            Ok(Err(s)) => last = format!("{:?}: {}", s.code(), s.message()),
            Err(_) => last = "no answer".into(),
            Ok(Ok(())) => {}
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    anyhow::bail!("{what} did not take effect in {REJOIN_SECS_MAX} s: {last}")
}

/// Waits (bounded) until every node has applied the same log: the same last applied index,
/// event count and chain head, as each node itself reports.
pub async fn wait_converged(
    cluster: &LocalCluster,
    timeout: Duration,
) -> anyhow::Result<Vec<pb::NodeStatus>> {
    let deadline = Instant::now() + timeout;
    let mut last = Vec::new();
    // Bounded by the deadline.
    while Instant::now() < deadline {
        let mut statuses = Vec::new();
        for addr in cluster.addrs().values() {
            if let Ok(n) = status_of(cluster, addr).await {
                statuses.push(n);
            }
        }
        let all = statuses.len() == cluster.addrs().len();
        if all
            && statuses.iter().all(|s| {
                s.last_applied_index == statuses[0].last_applied_index
                    && s.event_count == statuses[0].event_count
                    && s.chain_head == statuses[0].chain_head
                    && s.last_applied_index == s.last_log_index
            })
        {
            return Ok(statuses);
        }
        last = statuses;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    anyhow::bail!(
        "the nodes did not converge within {} s: {:?}",
        timeout.as_secs(),
        last.iter()
            .map(|s| (
                s.id,
                s.last_applied_index,
                s.event_count,
                s.chain_head.clone()
            ))
            .collect::<Vec<_>>()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_is_reproducible_from_its_seed() {
        let draw = |seed| {
            let mut r = Rng::new(seed);
            (0..20).map(|_| r.between(1, 6)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
        assert!(draw(7).iter().all(|x| (1..=6).contains(x)));
        // Every kind comes up once in every round of the deck.
        let mut r = Rng::new(42);
        let mut deck = Deck::new(&FaultKind::ALL);
        for _ in 0..3 {
            let round: std::collections::BTreeSet<FaultKind> = (0..FaultKind::ALL.len())
                .map(|_| deck.deal(&mut r))
                .collect();
            assert_eq!(round.len(), FaultKind::ALL.len());
        }
        let mut one = Deck::new(&[FaultKind::Bridge]);
        assert_eq!(one.deal(&mut r), FaultKind::Bridge);
        assert_eq!(one.deal(&mut r), FaultKind::Bridge);
        let mut v: Vec<u32> = (0..10).collect();
        Rng::new(3).shuffle(&mut v);
        let mut sorted = v.clone();
        sorted.sort_unstable();
        assert_eq!(
            sorted,
            (0..10).collect::<Vec<_>>(),
            "a shuffle keeps every item"
        );
    }

    #[test]
    fn kinds_parse_by_name_and_unknown_ones_are_named() {
        for k in FaultKind::ALL {
            assert_eq!(FaultKind::parse(k.name()).expect("known"), k);
            assert_eq!(
                serde_json::to_value(k).expect("json"),
                serde_json::Value::from(k.name())
            );
        }
        let e = FaultKind::parse("kill-everyone").expect_err("unknown");
        assert!(e.to_string().contains("kill-everyone"), "{e}");
    }

    #[test]
    fn damage_changes_the_file_durably() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("000009.log");
        let original: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, &original).expect("write");
        assert!(victim_file(dir.path()).is_err(), "no raft-log folder");
        let mut rng = Rng::new(1);
        for _ in 0..8 {
            std::fs::write(&p, &original).expect("write");
            let what = damage(&p, &mut rng).expect("damage");
            let now = std::fs::read(&p).expect("read");
            if what.starts_with("flipped") {
                assert_eq!(now.len(), original.len());
                let diffs = now.iter().zip(&original).filter(|(a, b)| a != b).count();
                assert_eq!(diffs, 1, "{what}");
            } else {
                assert!(now.len() < original.len() && now.len() >= 1024, "{what}");
                assert_eq!(now[..], original[..now.len()]);
            }
        }
        let log = dir.path().join("raft-log");
        std::fs::create_dir(&log).expect("mkdir");
        std::fs::write(log.join("000001.sst"), vec![1u8; 10]).expect("sst");
        std::fs::write(log.join("000002.log"), vec![1u8; 20]).expect("wal");
        std::fs::write(log.join("MANIFEST-000003"), vec![1u8; 99]).expect("manifest");
        assert_eq!(
            victim_file(dir.path()).expect("a victim"),
            log.join("000002.log"),
            "the largest SST or WAL, never the manifest"
        );
    }
}
