//! The `messaging` scenario. Three measurements in one run:
//!
//! 1. The crypto-only ceiling: one thread per core, each sealing (HPKE + Ed25519 sign) and
//!    opening (HPKE open + verify) 4 KiB payloads in a loop; messages per second in total.
//! 2. The end-to-end maximum: many concurrent senders (closed loop) on a 3-node cluster; a
//!    message counts when the receiver's live inbox stream reports it routed.
//! 3. Latency at half that rate: an open-loop sender at 50 % of the maximum, send → routed
//!    percentiles from the same stream.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use sealpost_client::{Client, Profile};
use sealpost_core::ids::HpiO;
use sealpost_proto::v1 as pb;
use sealpost_raft::RaftOptions;
use sealpost_server::config::{ApiLimits, MessagingOptions};
use sealpost_server::local::LocalCluster;

use crate::{LATENCY_US_MAX, last_log_index, print_latency};

/// Sends the open-loop phase may have outstanding at once.
const OPEN_LOOP_IN_FLIGHT_MAX: usize = 8192;

#[derive(clap::Args, Debug)]
pub struct MessagingArgs {
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Concurrent senders in the maximum-rate phase.
    #[arg(long, default_value_t = 256)]
    senders: u64,
    /// Sender connections, spread over the nodes.
    #[arg(long, default_value_t = 12)]
    connections: u64,
    #[arg(long, default_value_t = 4096)]
    payload_bytes: usize,
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    #[arg(long, default_value_t = 2)]
    warmup_secs: u64,
    /// Seconds of the crypto-only ceiling measurement.
    #[arg(long, default_value_t = 5)]
    ceiling_secs: u64,
    /// Skip the half-rate latency phase.
    #[arg(long)]
    no_half_rate: bool,
    /// Offer this many messages per second in the open-loop phase instead of half the
    /// measured maximum (to draw latency against load).
    #[arg(long)]
    open_loop_rate: Option<f64>,
    /// Skip the closed-loop maximum phase (only with --open-loop-rate).
    #[arg(long, requires = "open_loop_rate")]
    no_max: bool,
    /// Raft entries each node's proposer may have in flight (RaftOptions default if absent).
    #[arg(long)]
    proposals_in_flight: Option<usize>,
    /// Microseconds each node's proposer waits to fill a batch (RaftOptions default if
    /// absent).
    #[arg(long)]
    batch_wait_us: Option<u64>,
    /// Print the worst send -> routed latency (ms) of every 250 ms window of the open-loop
    /// phase, to see whether slow messages come in bursts.
    #[arg(long)]
    timeline: bool,
    /// Keep the cluster's data in this (new) folder instead of a temporary one, to inspect
    /// RocksDB's logs afterwards.
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
    /// The delivery worker's tick (MessagingOptions default if absent).
    #[arg(long)]
    worker_tick_ms: Option<u64>,
}

/// When a message was sent and when it was seen routed, as far as known yet.
type SendAndRoute = (Option<Instant>, Option<Instant>);

/// Send and route times of messages, matched by message id whichever arrives first.
#[derive(Default)]
pub(crate) struct Matcher {
    pending: Mutex<HashMap<String, SendAndRoute>>,
    hist: Mutex<Option<Histogram<u64>>>,
    routed: AtomicU64,
    /// Only messages sent after this are measured.
    from: Mutex<Option<Instant>>,
    /// The worst latency (µs) per [`TIMELINE_WINDOW_MS`] window of send times, by window.
    timeline: Mutex<Vec<u64>>,
}

/// Width of one window of the latency timeline (`--timeline`).
const TIMELINE_WINDOW_MS: u64 = 250;
/// Windows the timeline keeps at most.
const TIMELINE_WINDOWS_MAX: usize = 4096;

impl Matcher {
    pub(crate) fn note(&self, id: String, sent: Option<Instant>, routed: Option<Instant>) {
        let done = {
            let mut p = self.pending.lock().expect("matcher lock");
            let e = p.entry(id.clone()).or_default();
            if sent.is_some() {
                e.0 = sent;
            }
            if routed.is_some() {
                e.1 = routed;
            }
            match *e {
                (Some(s), Some(r)) => {
                    p.remove(&id);
                    Some((s, r))
                }
                _ => None,
            }
        };
        if let Some((s, r)) = done {
            let from = *self.from.lock().expect("matcher lock");
            if from.is_some_and(|f| s >= f) {
                self.routed.fetch_add(1, Ordering::Relaxed);
                let us = r.saturating_duration_since(s).as_micros() as u64;
                if let Some(h) = self.hist.lock().expect("matcher lock").as_mut() {
                    let _ = h.record(us);
                }
                if let Some(f) = from {
                    let w = (s.saturating_duration_since(f).as_millis() as u64 / TIMELINE_WINDOW_MS)
                        as usize;
                    let mut t = self.timeline.lock().expect("matcher lock");
                    if w < TIMELINE_WINDOWS_MAX {
                        if t.len() <= w {
                            t.resize(w + 1, 0);
                        }
                        t[w] = t[w].max(us);
                    }
                }
            }
        }
    }

    /// Starts a measurement window: counts and latencies of messages sent from now.
    pub(crate) fn start(&self) {
        *self.hist.lock().expect("matcher lock") =
            Some(Histogram::new_with_max(LATENCY_US_MAX, 3).expect("histogram bounds are valid"));
        self.routed.store(0, Ordering::Relaxed);
        self.timeline.lock().expect("matcher lock").clear();
        *self.from.lock().expect("matcher lock") = Some(Instant::now());
    }

    /// The worst latency per window since `start`, as one line of milliseconds.
    fn timeline(&self) -> String {
        let t = self.timeline.lock().expect("matcher lock");
        t.iter()
            .map(|us| format!("{}", us / 1000))
            .collect::<Vec<_>>()
            .join(" ")
    }

    pub(crate) fn take(&self) -> (u64, Histogram<u64>) {
        let h = self
            .hist
            .lock()
            .expect("matcher lock")
            .take()
            .unwrap_or_else(|| Histogram::new(3).expect("histogram bounds are valid"));
        (self.routed.load(Ordering::Relaxed), h)
    }
}

fn ceiling(payload_bytes: usize, secs: u64) -> anyhow::Result<(f64, usize)> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let sender = Arc::new(sealpost_crypto::keys::OrgKeys::generate("k1")?);
    let recipient = Arc::new(sealpost_crypto::keys::OrgKeys::generate("k1")?);
    let payload = Arc::new(vec![0x5au8; payload_bytes]);
    let end = Instant::now() + Duration::from_secs(secs);
    let threads: Vec<_> = (0..cores)
        .map(|_| {
            let (s, r, p) = (sender.clone(), recipient.clone(), payload.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while Instant::now() < end {
                    sealpost_crypto::envelope::crypto_round_trip(&s, &r, &p)
                        .expect("the crypto round trip works");
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut total = 0;
    for t in threads {
        total += t
            .join()
            .map_err(|_| anyhow::anyhow!("a ceiling thread panicked"))?;
    }
    Ok((total as f64 / secs as f64, cores))
}

fn request(to: &str, payload: &[u8]) -> pb::SendRequest {
    pb::SendRequest {
        from_org: HpiO::from_serial(1).to_string(),
        to: vec![to.to_string()],
        payload_type: "TEXT".into(),
        payload: payload.to_vec(),
        ..Default::default()
    }
}

pub async fn run(a: MessagingArgs) -> anyhow::Result<()> {
    println!(
        "crypto-only ceiling: measuring for {} s ...",
        a.ceiling_secs
    );
    let (ceiling_rate, cores) = tokio::task::spawn_blocking({
        let (bytes, secs) = (a.payload_bytes, a.ceiling_secs);
        move || ceiling(bytes, secs)
    })
    .await??;

    let tmp = tempfile::tempdir()?;
    let dir_path = a
        .data_dir
        .clone()
        .unwrap_or_else(|| tmp.path().to_path_buf());
    let defaults = MessagingOptions::default();
    let mut cluster = LocalCluster::create_with(
        &dir_path.join("bench"),
        "bench",
        a.nodes,
        RaftOptions {
            proposals_in_flight_max: a
                .proposals_in_flight
                .unwrap_or(RaftOptions::default().proposals_in_flight_max),
            batch_wait_us: a
                .batch_wait_us
                .unwrap_or(RaftOptions::default().batch_wait_us),
            ..RaftOptions::default()
        },
        ApiLimits::default(),
        MessagingOptions {
            worker_tick_ms: a.worker_tick_ms.unwrap_or(defaults.worker_tick_ms),
            ..defaults
        },
    )
    .await?;
    cluster
        .wait_leader(Duration::from_secs(20))
        .await
        .context("no leader")?;
    let addrs: Vec<String> = cluster.addrs().into_values().collect();
    let admin = Client::connect(&Profile {
        endpoints: addrs.clone(),
        tls: cluster.client_identity("bench-admin")?,
        organisation: None,
        default_endpoint: None,
        provider: None,
    })
    .await?;
    let to = format!("{}/results", HpiO::from_serial(2));
    for serial in [1u64, 2] {
        admin
            .directory()
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
    }
    admin
        .directory()
        .publish_endpoint(pb::PublishEndpointRequest {
            id: to.clone(),
            display_name: "Results".into(),
            specialty: "Pathology".into(),
            payload_types: vec!["TEXT".into()],
        })
        .await?;
    let org_client = |serial: u64, addr: String| {
        let org = HpiO::from_serial(serial);
        let tls = cluster.client_identity_for_org(&format!("bench-{serial}"), Some(&org));
        async move {
            Client::connect(&Profile {
                endpoints: vec![addr],
                tls: tls?,
                organisation: Some(org.to_string()),
                default_endpoint: None,
                provider: None,
            })
            .await
            .map_err(anyhow::Error::from)
        }
    };
    let mut senders = Vec::new();
    for i in 0..a.connections.max(1) {
        senders.push(org_client(1, addrs[(i as usize) % addrs.len()].clone()).await?);
    }
    // The receiver follows the leader's stream: "routed" is measured where it happens, not
    // after a follower's apply lag.
    let leader_addr = {
        let leader = cluster
            .wait_leader(Duration::from_secs(5))
            .await
            .context("leader")?;
        cluster.addrs()[&leader].clone()
    };
    let receiver = org_client(2, leader_addr).await?;
    let matcher = Arc::new(Matcher::default());
    let mut stream = receiver
        .messaging()
        .follow(pb::FollowRequest::default())
        .await?
        .into_inner();
    let m2 = matcher.clone();
    let stream_task = tokio::spawn(async move {
        while let Ok(Some(item)) = stream.message().await {
            m2.note(item.message_id, None, Some(Instant::now()));
        }
    });
    let payload = Arc::new(vec![0x42u8; a.payload_bytes]);
    let leader = cluster
        .wait_leader(Duration::from_secs(5))
        .await
        .context("leader")?;
    let log_before = last_log_index(&cluster, leader)?;

    // Phase 2: the maximum, closed loop.
    let errors = Arc::new(AtomicU64::new(0));
    println!(
        "scenario: sealed messages, {} nodes in one process, {} senders, {} connections, {} B payloads, fsync on",
        a.nodes, a.senders, a.connections, a.payload_bytes
    );
    println!(
        "crypto-only ceiling: {ceiling_rate:.0} msgs/s ({cores} cores x seal+sign+open+verify)"
    );
    let mut max_rate = 0.0;
    if !a.no_max {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = tokio::task::JoinSet::new();
        for s in 0..a.senders {
            let client = senders[(s % a.connections.max(1)) as usize].clone();
            let (stop, errors, matcher, payload, to) = (
                stop.clone(),
                errors.clone(),
                matcher.clone(),
                payload.clone(),
                to.clone(),
            );
            tasks.spawn(async move {
                let mut m = client.messaging();
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    match m.send(request(&to, &payload)).await {
                        Ok(r) => matcher.note(r.into_inner().message_id, Some(t), None),
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
        tokio::time::sleep(Duration::from_secs(a.warmup_secs)).await;
        matcher.start();
        tokio::time::sleep(Duration::from_secs(a.duration_secs)).await;
        let (routed, hist) = matcher.take();
        stop.store(true, Ordering::Relaxed);
        while tasks.join_next().await.is_some() {}
        max_rate = routed as f64 / a.duration_secs as f64;
        let log_after = last_log_index(&cluster, leader)?;

        println!("end-to-end maximum: {max_rate:.0} msgs/s routed");
        println!(
            "ratio end-to-end / ceiling: {:.2}",
            max_rate / ceiling_rate.max(1.0)
        );
        print_latency("at maximum: send -> routed", &hist);
        println!(
            "log entries during the run: {} (send, deliver and route share entries)",
            log_after - log_before
        );
        println!("send errors: {}", errors.load(Ordering::Relaxed));
    }

    // Phase 3: half the maximum, open loop.
    let open_rate = a.open_loop_rate.unwrap_or(max_rate / 2.0);
    if !a.no_half_rate && open_rate >= 2.0 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rate = open_rate;
        let interval = Duration::from_secs_f64(1.0 / rate);
        let permits = Arc::new(tokio::sync::Semaphore::new(OPEN_LOOP_IN_FLIGHT_MAX));
        let entries_before = last_log_index(&cluster, leader)?;
        let timeline_start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros());
        matcher.start();
        let end = Instant::now() + Duration::from_secs(a.duration_secs);
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut i = 0usize;
        let mut sent = 0u64;
        while Instant::now() < end {
            // Latency counts from when the send was due, not when it went out: a stalled
            // generator or server cannot hide its stall (no coordinated omission).
            let due = ticker.tick().await.into_std();
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break;
            };
            let mut m = senders[i % senders.len()].messaging();
            i += 1;
            sent += 1;
            let (matcher, payload, to, errors) =
                (matcher.clone(), payload.clone(), to.clone(), errors.clone());
            tokio::spawn(async move {
                match m.send(request(&to, &payload)).await {
                    Ok(r) => matcher.note(r.into_inner().message_id, Some(due), None),
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                drop(permit);
            });
        }
        // Let the last messages route.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (routed, hist) = matcher.take();
        let entries = last_log_index(&cluster, leader)? - entries_before;
        let label = if a.open_loop_rate.is_some() {
            "open loop"
        } else {
            "half rate"
        };
        println!(
            "{label}: {rate:.0} msgs/s offered, {sent} sent, {routed} routed, {entries} log entries"
        );
        print_latency(&format!("at {label}: send (due) -> routed"), &hist);
        if a.timeline {
            println!(
                "worst latency per {TIMELINE_WINDOW_MS} ms window (ms) from {} µs since the epoch: {}",
                timeline_start,
                matcher.timeline()
            );
        }
    }
    stream_task.abort();
    cluster.stop_all().await;
    Ok(())
}
