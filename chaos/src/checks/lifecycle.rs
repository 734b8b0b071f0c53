//! Every message's events come in lifecycle order on every replica: `sent`, then per
//! recipient `decrypted`, `routed`, `fetched`, and at most one final outcome (`acked` or
//! `failed`), never anything after it.

use std::collections::BTreeMap;

use super::{Evidence, Verdict};

/// Where an event kind stands in a recipient's lifecycle (None: not a lifecycle event).
fn stage(kind: &str) -> Option<u8> {
    match kind {
        "decrypted" => Some(1),
        "routed" => Some(2),
        "fetched" => Some(3),
        "acked" | "failed" => Some(4),
        _ => None,
    }
}

pub fn check(e: &Evidence) -> Verdict {
    let mut problems = Vec::new();
    let mut recipients = 0usize;
    for (node, events) in &e.events {
        let mut sent_at: BTreeMap<&str, u64> = BTreeMap::new();
        // (message, recipient) -> (highest stage so far, finals seen)
        let mut state: BTreeMap<(&str, &str), (u8, u32)> = BTreeMap::new();
        for ev in events {
            if ev.kind == "sent" {
                sent_at.entry(&ev.message_id).or_insert(ev.seq);
                continue;
            }
            let Some(s) = stage(&ev.kind) else { continue };
            if ev.message_id.is_empty() {
                continue;
            }
            if !sent_at.contains_key(ev.message_id.as_str()) {
                problems.push(format!(
                    "node {node}: {} of {} at event {} before its sent",
                    ev.kind, ev.message_id, ev.seq
                ));
            }
            let entry = state
                .entry((ev.message_id.as_str(), ev.recipient.as_str()))
                .or_insert((0, 0));
            if entry.1 > 0 {
                problems.push(format!(
                    "node {node}: {} of {} to {} at event {} after its final outcome",
                    ev.kind, ev.message_id, ev.recipient, ev.seq
                ));
            }
            // Fetching may repeat and may follow a fetch; no stage may go backwards.
            if s < entry.0 && !(s == 3 && entry.0 == 3) {
                problems.push(format!(
                    "node {node}: {} of {} to {} at event {} out of order",
                    ev.kind, ev.message_id, ev.recipient, ev.seq
                ));
            }
            entry.0 = entry.0.max(s);
            if s == 4 {
                entry.1 += 1;
            }
        }
        recipients = recipients.max(state.len());
    }
    Verdict::new(
        "lifecycle-order-and-one-final-outcome",
        format!("{recipients} message recipients on each replica"),
        problems,
    )
}
