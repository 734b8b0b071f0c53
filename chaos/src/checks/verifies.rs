//! Every replica's audit chain verifies: the hash chain from the genesis and the Merkle root
//! over all events (`Audit.Verify` on each node).

use std::time::Duration;

use sealpost_proto::v1 as pb;

use super::{Evidence, Verdict};

/// Deadline of one node's verification.
const VERIFY_TIMEOUT_MS: u64 = 120_000;

pub async fn check(e: &Evidence) -> Verdict {
    let mut problems = Vec::new();
    let mut events = 0;
    for (node, client) in &e.nodes {
        let r = tokio::time::timeout(
            Duration::from_millis(VERIFY_TIMEOUT_MS),
            client.audit().verify(pb::AuditVerifyRequest::default()),
        )
        .await;
        match r {
            Ok(Ok(r)) => {
                let r = r.into_inner();
                events = r.count;
                if !r.ok {
                    problems.push(format!("node {node}: {}", r.problem));
                }
            }
            Ok(Err(s)) => problems.push(format!("node {node}: verify failed: {}", s.message())),
            Err(_) => problems.push(format!("node {node}: no verdict in {VERIFY_TIMEOUT_MS} ms")),
        }
    }
    Verdict::new(
        "audit-chain-verifies",
        format!("{} replicas, {events} events each", e.nodes.len()),
        problems,
    )
}
