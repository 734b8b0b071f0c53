//! Every replica holds the same log: the same number of events and, event by event, the
//! same hashes, so the same chain head.

use super::{Evidence, Verdict};

pub fn check(e: &Evidence) -> Verdict {
    let mut problems = Vec::new();
    let mut reference: Option<(u64, &Vec<sealpost_proto::v1::AuditEvent>)> = None;
    for (node, events) in &e.events {
        match reference {
            None => reference = Some((*node, events)),
            Some((first, theirs)) => {
                if theirs.len() != events.len() {
                    problems.push(format!(
                        "node {node} holds {} events, node {first} {}",
                        events.len(),
                        theirs.len()
                    ));
                }
                if let Some((a, b)) = theirs
                    .iter()
                    .zip(events.iter())
                    .find(|(a, b)| a.hash != b.hash || a.seq != b.seq)
                {
                    problems.push(format!(
                        "nodes {first} and {node} differ from event {} (hashes {} and {})",
                        a.seq,
                        hex(&a.hash),
                        hex(&b.hash)
                    ));
                }
            }
        }
    }
    let head = reference
        .and_then(|(_, ev)| ev.last())
        .map(|ev| hex(&ev.hash))
        .unwrap_or_default();
    Verdict::new(
        "identical-chain-on-every-replica",
        format!("{} replicas, chain head {head}", e.events.len()),
        problems,
    )
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
