//! Nothing happens twice: on every replica, each message is sent once and reaches each
//! recipient's inbox (`routed`) at most once; no two acknowledged sends got the same id.

use std::collections::BTreeMap;

use super::{Evidence, Verdict};

pub fn check(e: &Evidence) -> Verdict {
    let mut problems = Vec::new();
    let mut ids: BTreeMap<&str, u32> = BTreeMap::new();
    for id in &e.sent {
        *ids.entry(id.as_str()).or_default() += 1;
    }
    for (id, n) in &ids {
        if *n > 1 {
            problems.push(format!("{n} acknowledged sends were given message id {id}"));
        }
    }
    let mut routed_total = 0usize;
    for (node, events) in &e.events {
        let mut sent: BTreeMap<&str, u32> = BTreeMap::new();
        let mut routed: BTreeMap<(&str, &str), u32> = BTreeMap::new();
        for ev in events {
            match ev.kind.as_str() {
                "sent" => *sent.entry(&ev.message_id).or_default() += 1,
                "routed" => {
                    *routed
                        .entry((ev.message_id.as_str(), ev.recipient.as_str()))
                        .or_default() += 1
                }
                _ => {}
            }
        }
        routed_total = routed_total.max(routed.len());
        for (id, n) in sent.iter().filter(|(_, n)| **n > 1) {
            problems.push(format!("node {node}: message {id} was sent {n} times"));
        }
        for ((id, to), n) in routed.iter().filter(|(_, n)| **n > 1) {
            problems.push(format!(
                "node {node}: message {id} was routed to {to} {n} times"
            ));
        }
    }
    Verdict::new(
        "no-duplicate-delivery",
        format!(
            "{} acknowledged sends, {routed_total} routed deliveries",
            e.sent.len()
        ),
        problems,
    )
}
