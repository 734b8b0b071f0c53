//! The `federation` scenario: two providers (each a 3-node cluster, all six nodes in this
//! process) with organisation 1 at provider A sending 4 KiB messages to organisation 2's
//! desk at provider B. Reports sealed messages per second routed at B, the receipt latency
//! (send acknowledged → `Relayed` with B's receipt applied at A's leader) and send → routed
//! at B, as p50 / p90 / p99.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use sealpost_client::{Client, Profile};
use sealpost_core::ids::HpiO;
use sealpost_core::message::{MessageId, RecipientState};
use sealpost_proto::v1 as pb;
use sealpost_raft::RaftOptions;
use sealpost_server::config::ApiLimits;
use sealpost_server::federation::RelayOptions;
use sealpost_server::local::LocalCluster;

use crate::messaging::Matcher;
use crate::print_latency;

/// Messages the receipt watcher follows at once; beyond that, sends are not sampled.
const WATCHED_MAX: usize = 16_384;

#[derive(clap::Args, Debug)]
pub struct FederationArgs {
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Concurrent senders at provider A (closed loop).
    #[arg(long, default_value_t = 128)]
    senders: u64,
    /// Sender connections, spread over A's nodes.
    #[arg(long, default_value_t = 6)]
    connections: u64,
    #[arg(long, default_value_t = 4096)]
    payload_bytes: usize,
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    #[arg(long, default_value_t = 2)]
    warmup_secs: u64,
    /// Offer this many messages per second (open loop, latency counted from each send's
    /// due time) instead of running closed-loop senders at the maximum.
    #[arg(long)]
    rate: Option<f64>,
}

/// Sends the open-loop mode may have outstanding at once.
const OPEN_LOOP_IN_FLIGHT_MAX: usize = 8192;

fn request(to: &str, payload: &[u8]) -> pb::SendRequest {
    pb::SendRequest {
        from_org: HpiO::from_serial(1).to_string(),
        to: vec![to.to_string()],
        payload_type: "TEXT".into(),
        payload: payload.to_vec(),
        ..Default::default()
    }
}

/// What one acknowledged send feeds to the measurements.
#[derive(Clone)]
struct Sinks {
    routed: Arc<Matcher>,
    receipts: Arc<Matcher>,
    watch: tokio::sync::mpsc::Sender<MessageId>,
}

impl Sinks {
    /// `due`: when the send was due (open loop) or started (closed loop).
    fn sent(&self, id: String, due: Instant) {
        let acked = Instant::now();
        self.routed.note(id.clone(), Some(due), None);
        if let Ok(mid) = MessageId::parse(&id)
            && self.watch.try_send(mid).is_ok()
        {
            self.receipts.note(id, Some(acked), None);
        }
    }
}

async fn admin(c: &LocalCluster) -> anyhow::Result<Client> {
    Ok(Client::connect(&Profile {
        endpoints: c.addrs().into_values().collect(),
        tls: c.client_identity("bench-admin")?,
        organisation: None,
        default_endpoint: None,
        provider: None,
    })
    .await?)
}

async fn provision(c: &LocalCluster, serial: u64, endpoint: Option<&str>) -> anyhow::Result<()> {
    let a = admin(c).await?;
    a.directory()
        .register_organisation(pb::RegisterOrganisationRequest {
            organisation: Some(pb::Organisation {
                hpio: HpiO::from_serial(serial).to_string(),
                name: format!("Bench org {serial}"),
                suburb: "Parkville".into(),
                state: "VIC".into(),
                postcode: "3052".into(),
                keys: None,
                ..Default::default()
            }),
        })
        .await?;
    if let Some(id) = endpoint {
        a.directory()
            .publish_endpoint(pb::PublishEndpointRequest {
                id: id.to_string(),
                display_name: "Results".into(),
                specialty: "Pathology".into(),
                payload_types: vec!["TEXT".into()],
            })
            .await?;
    }
    Ok(())
}

async fn org_client(c: &LocalCluster, serial: u64, addr: String) -> anyhow::Result<Client> {
    let org = HpiO::from_serial(serial);
    let tls = c.client_identity_for_org(&format!("bench-{serial}"), Some(&org))?;
    Ok(Client::connect(&Profile {
        endpoints: vec![addr],
        tls,
        organisation: Some(org.to_string()),
        default_endpoint: None,
        provider: None,
    })
    .await?)
}

pub async fn run(a: FederationArgs) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let raft = RaftOptions::default();
    let api = ApiLimits::default();
    let messaging = LocalCluster::fitting_messaging(&raft, &api);
    let mut clusters = LocalCluster::create_federation(
        tmp.path(),
        &[
            ("prov-a".to_string(), messaging.clone()),
            ("prov-b".to_string(), messaging),
        ],
        a.nodes,
        (raft, api, RelayOptions::default()),
    )
    .await?;
    let b = clusters.pop().context("provider b")?;
    let pa = clusters.pop().context("provider a")?;
    for c in [&pa, &b] {
        c.wait_leader(Duration::from_secs(20))
            .await
            .context("no leader")?;
    }
    let to = format!("{}/results", HpiO::from_serial(2));
    provision(&pa, 1, None).await?;
    provision(&b, 2, Some(&to)).await?;
    let a_admin = admin(&pa).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while a_admin
        .directory()
        .get_endpoint(pb::GetEndpointRequest {
            id: to.clone(),
            ..Default::default()
        })
        .await
        .is_err()
    {
        anyhow::ensure!(
            Instant::now() < deadline,
            "B's endpoint never reached A's directory"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let a_addrs: Vec<String> = pa.addrs().into_values().collect();
    let mut senders = Vec::new();
    for i in 0..a.connections.max(1) {
        senders.push(org_client(&pa, 1, a_addrs[(i as usize) % a_addrs.len()].clone()).await?);
    }
    let b_leader = b
        .wait_leader(Duration::from_secs(5))
        .await
        .context("leader")?;
    let receiver = org_client(&b, 2, b.addrs()[&b_leader].clone()).await?;
    let routed = Arc::new(Matcher::default());
    let receipts = Arc::new(Matcher::default());
    let mut stream = receiver
        .messaging()
        .follow(pb::FollowRequest::default())
        .await?
        .into_inner();
    let r2 = routed.clone();
    let stream_task = tokio::spawn(async move {
        while let Ok(Some(item)) = stream.message().await {
            r2.note(item.message_id, None, Some(Instant::now()));
        }
    });
    // Receipts: watch A's leader apply `Relayed` for the messages sent.
    let a_leader = pa
        .wait_leader(Duration::from_secs(5))
        .await
        .context("leader")?;
    let view = pa.node(a_leader).context("A's leader")?.raft.view().clone();
    let (watch_tx, mut watch_rx) = tokio::sync::mpsc::channel::<MessageId>(WATCHED_MAX);
    let rc = receipts.clone();
    let watcher = tokio::spawn(async move {
        let mut applied = view.subscribe();
        let mut pending: HashMap<MessageId, ()> = HashMap::new();
        loop {
            tokio::select! {
                id = watch_rx.recv() => match id {
                    Some(id) => { pending.insert(id, ()); continue; }
                    None => return,
                },
                r = applied.changed() => if r.is_err() { return },
            }
            let now = Instant::now();
            pending.retain(|id, _| {
                let relayed = view.message(id).ok().flatten().is_some_and(|m| {
                    m.recipients.iter().all(|r| {
                        matches!(
                            r.state,
                            RecipientState::Relayed { .. } | RecipientState::Acked { .. }
                        )
                    })
                });
                if relayed {
                    rc.note(id.to_string(), None, Some(now));
                }
                !relayed
            });
        }
    });

    let mode = match a.rate {
        Some(r) => format!("open loop at {r:.0} msgs/s"),
        None => format!("{} closed-loop senders", a.senders),
    };
    println!(
        "scenario: federation, 2 providers x {} nodes in one process, {mode} at A, {} B payloads to B, fsync on",
        a.nodes, a.payload_bytes
    );
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let payload = Arc::new(vec![0x42u8; a.payload_bytes]);
    let sinks = Sinks {
        routed: routed.clone(),
        receipts: receipts.clone(),
        watch: watch_tx.clone(),
    };
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(rate) = a.rate.filter(|r| *r > 0.0) {
        let (stop, errors, payload, to, sinks, senders) = (
            stop.clone(),
            errors.clone(),
            payload.clone(),
            to.clone(),
            sinks.clone(),
            senders.clone(),
        );
        tasks.spawn(async move {
            let permits = Arc::new(tokio::sync::Semaphore::new(OPEN_LOOP_IN_FLIGHT_MAX));
            let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let due = ticker.tick().await.into_std();
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    break;
                };
                let mut m = senders[i % senders.len()].messaging();
                i += 1;
                let (errors, payload, to, sinks) =
                    (errors.clone(), payload.clone(), to.clone(), sinks.clone());
                tokio::spawn(async move {
                    match m.send(request(&to, &payload)).await {
                        Ok(r) => sinks.sent(r.into_inner().message_id, due),
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    drop(permit);
                });
            }
        });
    } else {
        for s in 0..a.senders {
            let client = senders[(s % a.connections.max(1)) as usize].clone();
            let (stop, errors, payload, to, sinks) = (
                stop.clone(),
                errors.clone(),
                payload.clone(),
                to.clone(),
                sinks.clone(),
            );
            tasks.spawn(async move {
                let mut m = client.messaging();
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    match m.send(request(&to, &payload)).await {
                        Ok(r) => sinks.sent(r.into_inner().message_id, t),
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
    }
    tokio::time::sleep(Duration::from_secs(a.warmup_secs)).await;
    routed.start();
    receipts.start();
    tokio::time::sleep(Duration::from_secs(a.duration_secs)).await;
    if a.rate.is_some() {
        // Stop offering, and let what was sent in the window arrive.
        stop.store(true, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let (n_routed, routed_hist) = routed.take();
    let (n_receipts, receipt_hist) = receipts.take();
    stop.store(true, Ordering::Relaxed);
    while tasks.join_next().await.is_some() {}
    drop(sinks);
    println!(
        "sealed messages A -> B: {:.0} msgs/s routed at B ({n_routed} in {} s), {n_receipts} receipts sampled",
        n_routed as f64 / a.duration_secs as f64,
        a.duration_secs
    );
    print_latency("receipt: send acknowledged -> Relayed at A", &receipt_hist);
    print_latency("send -> routed at B", &routed_hist);
    println!("send errors: {}", errors.load(Ordering::Relaxed));
    stream_task.abort();
    watcher.abort();
    let (mut pa, mut b) = (pa, b);
    pa.stop_all().await;
    b.stop_all().await;
    Ok(())
}
