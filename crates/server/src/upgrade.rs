//! The leader's upgrade worker: raises the committed cluster version once every member
//! understands a newer one, so a rolling upgrade never feeds an old node an event it
//! cannot apply.
//!
//! Every [`UPGRADE_CHECK_MS`] the leader asks each member (voters and learners, over the
//! node-to-node Raft service) for the highest event version it understands. When every
//! member answered and the lowest answer is above the committed cluster version, it
//! proposes `SetClusterVersion` with that lowest version and every answer as evidence;
//! the event `cluster_version_set` records it in the log. A member that does not answer
//! holds the version where it is. Until the version rises, `decide` refuses any command
//! whose events are newer than it; a node too old for the cluster's version is refused
//! when it is added (`Admin.AddNode`).

use std::time::Duration;

use sealpost_core::command::{Command, Proposal};
use sealpost_raft::RaftNode;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How often the leader compares the members' versions with the cluster's.
pub const UPGRADE_CHECK_MS: u64 = 1_000;

/// The actor the raise is recorded under.
fn actor(node: u64) -> String {
    format!("upgrade-worker@node-{node}")
}

/// What to propose, if anything: the lowest version every member reported, when it is above
/// `current` (and `None` when any member did not answer).
pub fn next_version(current: u16, answers: &[(u64, Option<u16>)]) -> Option<u16> {
    let mut lowest = u16::MAX;
    for (_, v) in answers {
        lowest = lowest.min((*v)?);
    }
    (!answers.is_empty() && lowest > current).then_some(lowest)
}

async fn check_once(raft: &RaftNode) {
    if !raft.is_leader() {
        return;
    }
    let Ok(status) = raft.status() else { return };
    let current = status.sm.cluster_version;
    if raft.event_version() <= current {
        return;
    }
    let mut answers = Vec::with_capacity(status.members.len());
    for (id, (addr, _voter)) in &status.members {
        let v = if *id == raft.id() {
            Some(raft.event_version())
        } else {
            match raft.node_info(addr).await {
                Ok((got, v)) if got == *id => Some(v),
                Ok((got, _)) => {
                    tracing::warn!(member = id, answered_as = got, %addr, "a member's address answers as another node");
                    None
                }
                Err(e) => {
                    tracing::debug!(member = id, %addr, error = %e, "member did not report its version");
                    None
                }
            }
        };
        answers.push((*id, v));
    }
    let Some(version) = next_version(current, &answers) else {
        return;
    };
    let members = answers
        .iter()
        .filter_map(|(id, v)| v.map(|v| (*id, v)))
        .collect();
    match raft
        .propose_urgent(Proposal {
            actor: actor(raft.id()),
            command: Command::SetClusterVersion { version, members },
        })
        .await
    {
        Ok(c) => {
            tracing::info!(from = current, to = version, outcome = ?c.outcome, "cluster version raise proposed")
        }
        Err(e) => tracing::warn!(error = %e, "proposing the cluster version raise failed"),
    }
}

/// Starts the worker; it ends when `stop` turns true or is dropped.
pub fn spawn(raft: RaftNode, stop: watch::Receiver<bool>) -> JoinHandle<()> {
    crate::spawn_every(Duration::from_millis(UPGRADE_CHECK_MS), stop, move || {
        let raft = raft.clone();
        async move { check_once(&raft).await }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_rises_to_the_lowest_answer_and_only_when_everyone_answered() {
        assert_eq!(
            next_version(5, &[(1, Some(6)), (2, Some(6)), (3, Some(6))]),
            Some(6)
        );
        assert_eq!(next_version(5, &[(1, Some(7)), (2, Some(6))]), Some(6));
        assert_eq!(
            next_version(5, &[(1, Some(6)), (2, Some(5))]),
            None,
            "one lags"
        );
        assert_eq!(
            next_version(5, &[(1, Some(6)), (2, None)]),
            None,
            "one is silent"
        );
        assert_eq!(next_version(6, &[(1, Some(6))]), None, "nothing newer");
        assert_eq!(next_version(5, &[]), None);
    }
}
