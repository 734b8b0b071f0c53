//! The fault schedule of a chaos run, drawn from a seed so a run can be repeated: every
//! `--fault-every-ms` one fault on the cluster of node processes, held for a drawn time,
//! then healed, and the time until the cluster serves writes again measured. Faults so
//! far: SIGKILL of the leader or of a follower (restarted on its data after the hold), and
//! SIGSTOP of the leader or of a follower past the election timeout (then SIGCONT).
//! Partitions through a proxy, power loss on a FUSE layer and data corruption are still to
//! come (CHAOS.md).

use std::time::{Duration, Instant};

use sealpost_harness::{NodeId, NodeProcs};
use sealpost_proto::v1 as pb;
use sealpost_server::local::LocalCluster;
use serde::Serialize;

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
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    KillLeader,
    KillFollower,
    PauseLeader,
    PauseFollower,
}

impl FaultKind {
    pub const ALL: [FaultKind; 4] = [
        FaultKind::KillLeader,
        FaultKind::KillFollower,
        FaultKind::PauseLeader,
        FaultKind::PauseFollower,
    ];
}

/// One fault as it happened.
#[derive(Clone, Debug, Serialize)]
pub struct FaultRecord {
    pub kind: FaultKind,
    pub node: NodeId,
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
}

/// The current leader, its term and the followers, from the running nodes' agreement.
async fn roles(
    cluster: &LocalCluster,
    procs: &mut NodeProcs,
) -> anyhow::Result<(NodeId, u64, Vec<NodeId>)> {
    let (leader, addr) =
        sealpost_harness::wait_ready(cluster, procs, Duration::from_secs(RECOVERY_SECS_MAX))
            .await?;
    let c = sealpost_harness::node_client(cluster, &addr).await?;
    let term = tokio::time::timeout(
        Duration::from_secs(5),
        c.admin().status(pb::StatusRequest::default()),
    )
    .await
    .map_err(|_| anyhow::anyhow!("the leader {leader} gave no status in 5 s"))??
    .into_inner()
    .this_node
    .map_or(0, |n| n.term);
    let followers = procs.ids().into_iter().filter(|i| *i != leader).collect();
    Ok((leader, term, followers))
}

/// Injects one drawn fault, holds it, heals it and waits for recovery.
pub async fn inject(
    cluster: &LocalCluster,
    procs: &mut NodeProcs,
    rng: &mut Rng,
    started: Instant,
) -> anyhow::Result<FaultRecord> {
    let kind = FaultKind::ALL[(rng.next_u64() % FaultKind::ALL.len() as u64) as usize];
    let hold_ms = match kind {
        FaultKind::KillLeader | FaultKind::KillFollower => rng.between(HOLD_MS_MIN, HOLD_MS_MAX),
        FaultKind::PauseLeader | FaultKind::PauseFollower => {
            rng.between(PAUSE_MS_MIN, PAUSE_MS_MAX)
        }
    };
    let (leader, term_before, followers) = roles(cluster, procs).await?;
    let node = match kind {
        FaultKind::KillLeader | FaultKind::PauseLeader => leader,
        _ if followers.is_empty() => leader,
        _ => followers[(rng.next_u64() % followers.len() as u64) as usize],
    };
    let at_ms = started.elapsed().as_millis() as u64;
    match kind {
        FaultKind::KillLeader | FaultKind::KillFollower => procs.kill(node)?,
        FaultKind::PauseLeader | FaultKind::PauseFollower => procs.pause(node)?,
    }
    tokio::time::sleep(Duration::from_millis(hold_ms)).await;
    let healed = Instant::now();
    match kind {
        FaultKind::KillLeader | FaultKind::KillFollower => procs.start(node)?,
        FaultKind::PauseLeader | FaultKind::PauseFollower => procs.resume(node)?,
    }
    let (leader_after, term_after, _) = roles(cluster, procs).await?;
    Ok(FaultRecord {
        kind,
        node,
        at_ms,
        hold_ms,
        recovery_ms: healed.elapsed().as_millis() as u64,
        leader_after,
        terms: term_after.saturating_sub(term_before),
        writes_unavailable_ms: 0,
    })
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
            let Ok(c) = sealpost_harness::node_client(cluster, addr).await else {
                break;
            };
            if let Ok(Ok(r)) = tokio::time::timeout(
                Duration::from_secs(2),
                c.admin().status(pb::StatusRequest::default()),
            )
            .await
                && let Some(n) = r.into_inner().this_node
            {
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
        // Every kind comes up in a modest schedule.
        let mut r = Rng::new(42);
        let kinds: std::collections::BTreeSet<usize> =
            (0..64).map(|_| (r.next_u64() % 4) as usize).collect();
        assert_eq!(kinds.len(), 4);
    }
}
