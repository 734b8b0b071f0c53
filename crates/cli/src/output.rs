//! Printing results as text for people or JSON for scripts (`--json`).

use sealpost_proto::v1 as pb;
use serde_json::{Value, json};

/// Where results go.
pub struct Out {
    json: bool,
}

impl Out {
    pub fn new(json: bool) -> Self {
        Self { json }
    }

    /// A one-line result: `text` for people, `value` for `--json`.
    pub fn message(&self, text: &str, value: Value) {
        if self.json {
            println!("{value}");
        } else {
            println!("{text}");
        }
    }
}

fn node_json(n: &pb::NodeStatus) -> Value {
    json!({
        "id": n.id, "addr": n.addr, "role": n.role, "voter": n.voter, "term": n.term,
        "leader_id": n.leader_id, "last_log_index": n.last_log_index,
        "last_applied_index": n.last_applied_index, "event_count": n.event_count,
        "chain_head": n.chain_head, "snapshot_index": n.snapshot_index,
        "purged_index": n.purged_index, "log_entries": n.log_entries,
        "cluster_version": n.cluster_version, "reachable": n.reachable, "error": n.error,
        "kek_id": n.kek_id, "previous_kek_ids": n.previous_kek_ids,
    })
}

pub fn cluster_status(out: &Out, endpoint: &str, r: &pb::StatusResponse) {
    let members: Vec<&pb::NodeStatus> = if r.members.is_empty() {
        r.this_node.iter().collect()
    } else {
        r.members.iter().collect()
    };
    if out.json {
        println!(
            "{}",
            json!({ "asked": endpoint, "nodes": members.iter().map(|n| node_json(n)).collect::<Vec<_>>() })
        );
        return;
    }
    println!(
        "{:>4}  {:<21}  {:<9}  {:>5}  {:>9}  {:>9}  {:>8}  {:>8}  {:<16}  kek",
        "node", "address", "role", "term", "log", "applied", "snapshot", "events", "chain head"
    );
    for n in members {
        if !n.reachable {
            println!("{:>4}  {:<21}  unreachable: {}", n.id, n.addr, n.error);
            continue;
        }
        let head = n.chain_head.get(..16).unwrap_or(&n.chain_head);
        // The current KEK's id, and how many older ones the node still holds.
        let kek = match n.previous_kek_ids.len() {
            0 => n.kek_id.clone(),
            held => format!("{} (+{held} previous)", n.kek_id),
        };
        println!(
            "{:>4}  {:<21}  {:<9}  {:>5}  {:>9}  {:>9}  {:>8}  {:>8}  {head:<16}  {kek}",
            n.id,
            n.addr,
            n.role,
            n.term,
            n.last_log_index,
            n.last_applied_index,
            n.snapshot_index,
            n.event_count
        );
    }
}

fn org_json(o: &pb::Organisation) -> Value {
    json!({
        "hpio": o.hpio, "name": o.name, "suburb": o.suburb, "state": o.state,
        "postcode": o.postcode,
        "key_id": o.keys.as_ref().map(|k| k.key_id.clone()),
        "encryption_key": o.keys.as_ref().map(|k| hex::encode(&k.encryption)),
        "signing_key": o.keys.as_ref().map(|k| hex::encode(&k.signing)),
        "registered_seq": o.registered_seq, "keys_seq": o.keys_seq,
    })
}

pub fn organisation(out: &Out, o: &pb::Organisation) {
    if out.json {
        println!("{}", org_json(o));
        return;
    }
    println!("{}  {}", o.hpio, o.name);
    println!("  location  {}, {} {}", o.suburb, o.state, o.postcode);
    if let Some(k) = &o.keys {
        println!(
            "  keys      {} (x25519 {}…, ed25519 {}…)",
            k.key_id,
            hex::encode(&k.encryption[..4.min(k.encryption.len())]),
            hex::encode(&k.signing[..4.min(k.signing.len())])
        );
    }
    println!("  registered at event {}", o.registered_seq);
}

pub fn endpoints(out: &Out, eps: &[pb::Endpoint]) {
    if out.json {
        let v: Vec<Value> = eps
            .iter()
            .map(|e| {
                json!({
                    "id": e.id, "kind": e.kind, "name": e.display_name, "specialty": e.specialty,
                    "accepts": e.payload_types, "active": e.active,
                    "published_seq": e.published_seq, "retired_seq": e.retired_seq,
                    "organisation": e.organisation.as_ref().map(org_json),
                })
            })
            .collect();
        println!("{}", Value::Array(v));
        return;
    }
    if eps.is_empty() {
        println!("no endpoints found");
        return;
    }
    for e in eps {
        let org = e
            .organisation
            .as_ref()
            .map(|o| format!("{} ({}, {})", o.name, o.suburb, o.state))
            .unwrap_or_default();
        let status = if e.active { "" } else { "  [retired]" };
        println!("{}{status}", e.id);
        println!("  {} — {} — {}", e.display_name, e.specialty, e.kind);
        println!("  at {org}");
        println!("  accepts {}", e.payload_types.join(", "));
    }
}

/// Milliseconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC), for people.
pub fn utc_ms(ms: u64) -> String {
    sealpost_core::calendar::utc_iso(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known instants, including a leap day and the epoch.
    #[test]
    fn utc_times_are_civil_dates() {
        assert_eq!(utc_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc_ms(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(utc_ms(1_795_659_809_090), "2026-11-26T02:23:29.090Z");
    }
}
