//! The mixed load a chaos run drives while faults happen, and its history: sends of sealed
//! messages from organisation 1 to organisation 2's desk, directory registrations, and
//! acknowledgements of what reached the desk. Every client call has a deadline (a paused
//! node must not hang a worker) and a failed call moves the worker to the next node. The
//! history keeps what was *acknowledged* to the client, which the checkers then demand of
//! every replica; a call that failed may or may not have taken effect and is only counted.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use sealpost_client::Client;
use sealpost_core::ids::HpiO;
use sealpost_proto::v1 as pb;
use sealpost_server::local::LocalCluster;
use tonic::{Code, Status};

/// Deadline of one client call.
pub const CALL_TIMEOUT_MS: u64 = 5_000;
/// Pause of a worker after a failed call before it tries the next node.
pub const RETRY_PAUSE_MS: u64 = 100;
/// Pause between two operations of one worker (the load is steady, not a flood).
pub const OP_PAUSE_MS: u64 = 20;
/// Serials of the organisations the run registers start here (1 and 2 are the messaging
/// organisations).
pub const ORG_SERIAL_BASE: u64 = 10_000;
/// Payload bytes of a chaos message.
pub const PAYLOAD_BYTES: usize = 1_024;
/// Acknowledged operations the history keeps at most of each kind.
pub const HISTORY_OPS_MAX: usize = 10_000_000;
/// A pause between two acknowledged writes at least this long is kept as an outage.
pub const OUTAGE_MS_MIN: u64 = 500;
/// Outages the history keeps at most.
pub const OUTAGES_MAX: usize = 100_000;

/// What the clients were told.
#[derive(Debug, Default)]
pub struct History {
    /// Message ids of acknowledged sends.
    pub sent: Mutex<Vec<String>>,
    /// HPI-Os of acknowledged registrations.
    pub registered: Mutex<Vec<String>>,
    /// Message ids whose acknowledgement by the desk was acknowledged.
    pub acked: Mutex<Vec<String>>,
    pub attempted: AtomicU64,
    pub failed: AtomicU64,
    /// When the run's load started; write times are milliseconds since then.
    pub started: Mutex<Option<std::time::Instant>>,
    /// Milliseconds (since `started`) of the latest acknowledged send or registration.
    pub last_write_ms: AtomicU64,
    /// Gaps of at least [`OUTAGE_MS_MIN`] between acknowledged writes: (start ms, length ms).
    pub outages: Mutex<Vec<(u64, u64)>>,
}

impl History {
    /// Notes an acknowledged write now, keeping the gap since the previous one if it was an
    /// outage.
    fn wrote(&self) {
        let Some(start) = self.started.lock().ok().and_then(|s| *s) else {
            return;
        };
        let now = start.elapsed().as_millis() as u64;
        let before = self.last_write_ms.fetch_max(now, Ordering::Relaxed);
        if now > before
            && now - before >= OUTAGE_MS_MIN
            && let Ok(mut o) = self.outages.lock()
            && o.len() < OUTAGES_MAX
        {
            o.push((before, now - before));
        }
    }

    /// Ends the history: a gap from the last acknowledged write until now counts as an
    /// outage too (writes that stopped for good are the longest outage of all).
    pub fn close(&self) {
        let Some(start) = self.started.lock().ok().and_then(|s| *s) else {
            return;
        };
        let now = start.elapsed().as_millis() as u64;
        let before = self.last_write_ms.load(Ordering::Relaxed);
        if now > before
            && now - before >= OUTAGE_MS_MIN
            && let Ok(mut o) = self.outages.lock()
            && o.len() < OUTAGES_MAX
        {
            o.push((before, now - before));
        }
    }

    /// The longest gap between acknowledged writes that overlaps `from_ms..to_ms`.
    pub fn longest_outage(&self, from_ms: u64, to_ms: u64) -> u64 {
        self.outages.lock().map_or(0, |o| {
            o.iter()
                .filter(|(start, len)| *start < to_ms && start + len > from_ms)
                .map(|(_, len)| *len)
                .max()
                .unwrap_or(0)
        })
    }

    fn keep(list: &Mutex<Vec<String>>, item: String) {
        if let Ok(mut l) = list.lock()
            && l.len() < HISTORY_OPS_MAX
        {
            l.push(item);
        }
    }

    pub fn snapshot(list: &Mutex<Vec<String>>) -> Vec<String> {
        list.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

/// The load's clients, one of each identity per node, in node order. Replaced whole when the
/// cluster's nodes change (a damaged node replaced under a new id and address), so the load
/// follows the cluster instead of calling a node that is gone.
#[derive(Default)]
pub struct Pool {
    /// Operator clients (registrations).
    admin: std::sync::RwLock<Vec<Client>>,
    /// Clients of organisation 1 (sends).
    senders: std::sync::RwLock<Vec<Client>>,
    /// Clients of organisation 2 (the desk's inbox and acknowledgements).
    receivers: std::sync::RwLock<Vec<Client>>,
}

/// Which of the pool's identities.
#[derive(Clone, Copy, Debug)]
pub enum Role {
    Admin,
    Sender,
    Receiver,
}

impl Pool {
    /// Clients of every identity for every node of `cluster` now.
    pub async fn connect(cluster: &LocalCluster) -> anyhow::Result<Pool> {
        let pool = Pool::default();
        pool.refresh(cluster).await?;
        Ok(pool)
    }

    /// Replaces every client with one for the nodes `cluster` has now.
    pub async fn refresh(&self, cluster: &LocalCluster) -> anyhow::Result<()> {
        let admin = clients_per_node(cluster, None).await?;
        let senders = clients_per_node(cluster, Some(1)).await?;
        let receivers = clients_per_node(cluster, Some(2)).await?;
        for (slot, v) in [
            (&self.admin, admin),
            (&self.senders, senders),
            (&self.receivers, receivers),
        ] {
            if let Ok(mut w) = slot.write() {
                *w = v;
            }
        }
        Ok(())
    }

    fn slot(&self, role: Role) -> &std::sync::RwLock<Vec<Client>> {
        match role {
            Role::Admin => &self.admin,
            Role::Sender => &self.senders,
            Role::Receiver => &self.receivers,
        }
    }

    /// The client of `role` for node number `i` (modulo the node count).
    pub fn get(&self, role: Role, i: usize) -> Option<Client> {
        let v = self.slot(role).read().ok()?;
        v.get(i % v.len().max(1)).cloned()
    }

    pub fn len(&self) -> usize {
        self.senders.read().map_or(0, |v| v.len())
    }
}

/// Clients of one identity, one per node, in node order.
pub async fn clients_per_node(
    cluster: &LocalCluster,
    org: Option<u64>,
) -> anyhow::Result<Vec<Client>> {
    let mut out = Vec::new();
    for addr in cluster.addrs().into_values() {
        let client = match org {
            Some(s) => {
                let org = HpiO::from_serial(s);
                sealpost_harness::org_client(cluster, &format!("chaos-org-{s}"), &org, &addr).await
            }
            None => sealpost_harness::node_client(cluster, &addr).await,
        };
        out.push(client.with_context(|| format!("connecting to {addr}"))?);
    }
    Ok(out)
}

/// One call with [`CALL_TIMEOUT_MS`]; no answer in time is `DeadlineExceeded`.
async fn timed<T>(
    f: impl std::future::Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, Status> {
    match tokio::time::timeout(Duration::from_millis(CALL_TIMEOUT_MS), f).await {
        Ok(r) => r.map(tonic::Response::into_inner),
        Err(_) => Err(Status::deadline_exceeded(format!(
            "no answer in {CALL_TIMEOUT_MS} ms"
        ))),
    }
}

/// Done already (an earlier attempt whose answer a fault cut off took effect): not a failure.
fn done_already(r: Result<impl Sized, Status>) -> Result<(), Status> {
    match r {
        Err(s) if s.code() != Code::AlreadyExists => Err(s),
        _ => Ok(()),
    }
}

/// The desk every message goes to.
pub fn desk() -> String {
    format!("{}/results", HpiO::from_serial(2))
}

/// Registers the two messaging organisations and the desk (retrying across nodes), then
/// reads them back from every node at a linearizable read index. A broken node under test
/// may acknowledge a registration it then loses (an election at start-up drops it), and a
/// scenario that began without its organisations would test nothing: a missing one is
/// registered again.
pub async fn provision(admin: &[Client]) -> anyhow::Result<()> {
    let mut last = String::new();
    // Bounded: a few rounds over the nodes.
    for attempt in 0..admin.len() * 10 {
        let c = &admin[attempt % admin.len()];
        let r: Result<(), Status> = async {
            for serial in [1u64, 2] {
                done_already(
                    timed(
                        c.directory()
                            .register_organisation(pb::RegisterOrganisationRequest {
                                organisation: Some(pb::Organisation {
                                    hpio: HpiO::from_serial(serial).to_string(),
                                    name: format!("Chaos org {serial}"),
                                    suburb: "Parkville".into(),
                                    state: "VIC".into(),
                                    postcode: "3052".into(),
                                    ..Default::default()
                                }),
                            }),
                    )
                    .await,
                )?;
            }
            done_already(
                timed(c.directory().publish_endpoint(pb::PublishEndpointRequest {
                    id: desk(),
                    display_name: "Results".into(),
                    specialty: "Pathology".into(),
                    payload_types: vec!["TEXT".into()],
                }))
                .await,
            )?;
            for node in admin {
                for serial in [1u64, 2] {
                    timed(
                        node.directory()
                            .get_organisation(pb::GetOrganisationRequest {
                                hpio: HpiO::from_serial(serial).to_string(),
                                ..Default::default()
                            }),
                    )
                    .await?;
                }
                timed(node.directory().get_endpoint(pb::GetEndpointRequest {
                    id: desk(),
                    ..Default::default()
                }))
                .await?;
            }
            Ok(())
        }
        .await;
        match r {
            Ok(()) => return Ok(()),
            Err(s) => last = format!("{:?}: {}", s.code(), s.message()),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    anyhow::bail!("provisioning the chaos organisations failed: {last}")
}

/// One worker: sends and registrations in turn, moving to the next node after a failure.
pub async fn worker(
    index: usize,
    pool: Arc<Pool>,
    history: Arc<History>,
    serials: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) {
    let mut node = index % pool.len().max(1);
    let payload = vec![0x33u8; PAYLOAD_BYTES];
    let mut turn = 0u64;
    // Bounded by `stop`, which the run sets at its end.
    while !stop.load(Ordering::Relaxed) {
        turn += 1;
        history.attempted.fetch_add(1, Ordering::Relaxed);
        let serial = serials.fetch_add(1, Ordering::Relaxed);
        let result = if turn.is_multiple_of(3) {
            let hpio = HpiO::from_serial(ORG_SERIAL_BASE + serial).to_string();
            let Some(admin) = pool.get(Role::Admin, node) else {
                break;
            };
            timed(
                admin
                    .directory()
                    .register_organisation(pb::RegisterOrganisationRequest {
                        organisation: Some(pb::Organisation {
                            hpio: hpio.clone(),
                            name: format!("Chaos clinic {serial}"),
                            suburb: "Carlton".into(),
                            state: "VIC".into(),
                            postcode: "3053".into(),
                            ..Default::default()
                        }),
                    }),
            )
            .await
            .map(|_| {
                history.wrote();
                History::keep(&history.registered, hpio)
            })
        } else {
            let Some(sender) = pool.get(Role::Sender, node) else {
                break;
            };
            timed(sender.messaging().send(pb::SendRequest {
                from_org: HpiO::from_serial(1).to_string(),
                to: vec![desk()],
                payload_type: "TEXT".into(),
                client_message_id: format!("chaos-{serial}"),
                payload: payload.clone(),
                ..Default::default()
            }))
            .await
            .map(|r| {
                history.wrote();
                History::keep(&history.sent, r.message_id)
            })
        };
        if result.is_err() {
            history.failed.fetch_add(1, Ordering::Relaxed);
            node = (node + 1) % pool.len().max(1);
            tokio::time::sleep(Duration::from_millis(RETRY_PAUSE_MS)).await;
        } else {
            tokio::time::sleep(Duration::from_millis(OP_PAUSE_MS)).await;
        }
    }
}

/// The desk's side: lists what reached it and acknowledges each message once.
pub async fn acker(pool: Arc<Pool>, history: Arc<History>, stop: Arc<AtomicBool>) {
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut node = 0usize;
    // Bounded by `stop`.
    while !stop.load(Ordering::Relaxed) {
        let Some(c) = pool.get(Role::Receiver, node) else {
            break;
        };
        let inbox = timed(c.messaging().inbox(pb::InboxRequest {
            endpoint: desk(),
            limit: 0,
        }))
        .await;
        match inbox {
            Ok(r) => {
                for item in r.items {
                    if done.contains(&item.message_id) || stop.load(Ordering::Relaxed) {
                        continue;
                    }
                    history.attempted.fetch_add(1, Ordering::Relaxed);
                    let ack = timed(c.messaging().ack(pb::AckRequest {
                        message_id: item.message_id.clone(),
                        recipient: item.recipient.clone(),
                        status: "accepted".into(),
                        note: String::new(),
                    }))
                    .await;
                    match ack {
                        Ok(_) => {
                            done.insert(item.message_id.clone());
                            History::keep(&history.acked, item.message_id);
                        }
                        Err(s) => {
                            // Acknowledged already (an earlier answer lost to a fault), so
                            // the recipient has its final outcome: not a failure.
                            if s.code() == Code::FailedPrecondition {
                                done.insert(item.message_id);
                            } else {
                                history.failed.fetch_add(1, Ordering::Relaxed);
                                node += 1;
                                break;
                            }
                        }
                    }
                }
            }
            Err(_) => node += 1,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outages_are_the_long_gaps_between_acknowledged_writes() {
        let h = History::default();
        // Before the load starts nothing is timed.
        h.wrote();
        assert_eq!(h.last_write_ms.load(Ordering::Relaxed), 0);
        *h.started.lock().expect("lock") = Some(std::time::Instant::now());
        h.wrote();
        std::thread::sleep(Duration::from_millis(OUTAGE_MS_MIN + 100));
        h.wrote();
        h.wrote();
        let o = h.outages.lock().expect("lock").clone();
        assert_eq!(o.len(), 1, "{o:?}");
        assert!(o[0].1 >= OUTAGE_MS_MIN, "{o:?}");
        // Found by overlap with a window, not found outside it.
        assert_eq!(h.longest_outage(0, 10_000), o[0].1);
        assert_eq!(h.longest_outage(o[0].0 + o[0].1 + 1, 20_000), 0);
        // Writes that stopped for good end in an outage too, once the history is closed.
        let last = h.last_write_ms.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(OUTAGE_MS_MIN + 100));
        assert_eq!(h.longest_outage(last + 1, 60_000), 0, "not before closing");
        h.close();
        assert!(h.longest_outage(last + 1, 60_000) >= OUTAGE_MS_MIN);
    }
}
