//! Nothing acknowledged is lost: every send, registration and desk acknowledgement a client
//! was told succeeded is in the final log of every replica.

use std::collections::BTreeSet;
use std::time::Duration;

use sealpost_proto::v1 as pb;

use super::{Evidence, Verdict};

/// Deadline of one directory lookup.
const LOOKUP_TIMEOUT_MS: u64 = 5_000;

pub async fn check(e: &Evidence) -> Verdict {
    let mut problems = Vec::new();
    for (node, events) in &e.events {
        let of = |kind: &str| -> BTreeSet<&str> {
            events
                .iter()
                .filter(|ev| ev.kind == kind)
                .map(|ev| ev.message_id.as_str())
                .collect()
        };
        let sent = of("sent");
        let acked = of("acked");
        for id in &e.sent {
            if !sent.contains(id.as_str()) {
                problems.push(format!(
                    "node {node}: acknowledged send {id} has no sent event"
                ));
            }
        }
        for id in &e.acked {
            if !acked.contains(id.as_str()) {
                problems.push(format!(
                    "node {node}: acknowledged acknowledgement of {id} has no acked event"
                ));
            }
        }
    }
    for (node, client) in &e.nodes {
        for hpio in &e.registered {
            let r = tokio::time::timeout(
                Duration::from_millis(LOOKUP_TIMEOUT_MS),
                client
                    .directory()
                    .get_organisation(pb::GetOrganisationRequest {
                        hpio: hpio.clone(),
                        // What this replica has applied, not what the leader knows.
                        consistency: pb::Consistency::Local as i32,
                    }),
            )
            .await;
            if !matches!(r, Ok(Ok(_))) {
                problems.push(format!(
                    "node {node}: acknowledged registration of {hpio} is missing"
                ));
            }
        }
    }
    Verdict::new(
        "acknowledged-writes-on-every-replica",
        format!(
            "{} sends, {} registrations, {} desk acknowledgements on {} replicas",
            e.sent.len(),
            e.registered.len(),
            e.acked.len(),
            e.events.len()
        ),
        problems,
    )
}
