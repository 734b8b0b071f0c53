//! sealpost's load generator, against a cluster in this process (real gRPC + mutual TLS on
//! loopback, fsync on); latency percentiles from hdrhistogram. Build it optimised
//! (`cargo build --profile perf --workspace`, or `--release`).
//!
//! - `directory`: committed directory events per second with many concurrent writers.
//! - `messaging`: end-to-end sealed messages per second (send → routed, measured by a live
//!   inbox stream), the crypto-only ceiling (seal + sign + open + verify on every core) in
//!   the same run, their ratio, and send → routed latency at half the maximum rate.
//! - `federation`: two providers; sealed messages per second from A's senders to B's
//!   recipients, receipt latency and send → routed at B.
//! - `audit`: replay rate and view rebuild time on a store generated straight into one
//!   node's state machine.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use sealpost_client::{Client, Profile};
use sealpost_core::ids::HpiO;
use sealpost_proto::v1 as pb;
use sealpost_raft::RaftOptions;
use sealpost_server::config::ApiLimits;
use sealpost_server::local::LocalCluster;

/// mimalloc instead of glibc's malloc: the hot path allocates and frees many small
/// buffers per message, and glibc's allocator showed as a tenth of the CPU in profiles.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod audit;
mod federation;
mod messaging;

#[derive(Parser, Debug)]
#[command(
    name = "sealpost-bench",
    about = "Load scenarios against a local sealpost cluster"
)]
struct Args {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// Committed directory registrations per second.
    Directory {
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        /// Concurrent writers (each waits for its write to commit before the next).
        #[arg(long, default_value_t = 256)]
        writers: u64,
        /// Client connections, spread over the nodes.
        #[arg(long, default_value_t = 12)]
        connections: u64,
        #[arg(long, default_value_t = 10)]
        duration_secs: u64,
        /// Warm-up before measuring.
        #[arg(long, default_value_t = 2)]
        warmup_secs: u64,
    },
    /// End-to-end sealed messages per second against the crypto-only ceiling.
    Messaging(messaging::MessagingArgs),
    /// Sealed messages per second from one provider to another, and receipt latency.
    Federation(federation::FederationArgs),
    /// Replay rate and view rebuild time on a store generated straight into one node.
    Audit(audit::AuditArgs),
}

/// Highest latency the histogram records, in microseconds.
pub(crate) const LATENCY_US_MAX: u64 = 60_000_000;

fn key(serial: u64, salt: u64) -> Vec<u8> {
    let mut x = serial.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt;
    (0..32)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x as u8) | 1
        })
        .collect()
}

fn request(serial: u64) -> pb::RegisterOrganisationRequest {
    pb::RegisterOrganisationRequest {
        organisation: Some(pb::Organisation {
            hpio: HpiO::from_serial(serial).to_string(),
            name: format!("Bench clinic {serial}"),
            suburb: "Parkville".into(),
            state: "VIC".into(),
            postcode: "3052".into(),
            keys: Some(pb::PublicKeys {
                key_id: "k1".into(),
                encryption: key(serial, 1),
                signing: key(serial, 2),
            }),
            ..Default::default()
        }),
    }
}

async fn directory(
    nodes: u64,
    writers: u64,
    connections: u64,
    duration: Duration,
    warmup: Duration,
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut cluster = LocalCluster::create(
        &dir.path().join("bench"),
        "bench",
        nodes,
        RaftOptions::default(),
        ApiLimits::default(),
    )
    .await?;
    cluster
        .wait_leader(Duration::from_secs(20))
        .await
        .context("no leader")?;
    let tls = cluster.client_identity("bench")?;
    let addrs = cluster.addrs();
    let mut clients = Vec::new();
    for i in 0..connections.max(1) {
        let addr = addrs
            .values()
            .nth((i % nodes) as usize)
            .context("node address")?
            .clone();
        clients.push(
            Client::connect(&Profile {
                endpoints: vec![addr],
                tls: tls.clone(),
                organisation: None,
                default_endpoint: None,
                provider: None,
            })
            .await?,
        );
    }
    let leader = cluster
        .wait_leader(Duration::from_secs(5))
        .await
        .context("leader")?;
    let log_before = last_log_index(&cluster, leader)?;
    let next = Arc::new(AtomicU64::new(1));
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..writers {
        let client = clients[(w % connections.max(1)) as usize].clone();
        let next = next.clone();
        tasks.spawn(async move {
            let mut hist = Histogram::<u64>::new_with_max(LATENCY_US_MAX, 3)
                .expect("histogram bounds are valid");
            let mut done = 0u64;
            let mut errors = 0u64;
            let mut dir = client.directory();
            while Instant::now() < end {
                let serial = next.fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                let ok = dir.register_organisation(request(serial)).await.is_ok();
                if t >= measure_from {
                    if ok {
                        done += 1;
                        let _ = hist.record(t.elapsed().as_micros() as u64);
                    } else {
                        errors += 1;
                    }
                }
            }
            (hist, done, errors)
        });
    }
    let mut hist = Histogram::<u64>::new_with_max(LATENCY_US_MAX, 3)?;
    let (mut done, mut errors) = (0u64, 0u64);
    while let Some(r) = tasks.join_next().await {
        let (h, d, e) = r?;
        hist.add(h)?;
        done += d;
        errors += e;
    }
    let log_after = last_log_index(&cluster, leader)?;
    let total_writes = next.load(Ordering::Relaxed) - 1;
    let secs = duration.as_secs_f64();
    println!(
        "scenario: directory registrations, {nodes} nodes, {writers} writers, {connections} connections, fsync on"
    );
    println!("committed events/s: {:.0}", done as f64 / secs);
    print_latency("latency", &hist);
    println!(
        "batching: {total_writes} writes in {} log entries ({:.1} per entry)",
        log_after - log_before,
        total_writes as f64 / (log_after - log_before).max(1) as f64
    );
    println!("errors during measurement: {errors}");
    cluster.stop_all().await;
    Ok(())
}

/// Prints `label ms: p50 … p90 … p99 … max …` from a histogram in microseconds.
pub(crate) fn print_latency(label: &str, h: &Histogram<u64>) {
    println!(
        "{label} ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
        h.value_at_quantile(0.50) as f64 / 1000.0,
        h.value_at_quantile(0.90) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0
    );
}

/// The last log index of a node (the leader), to count entries written during a run.
pub(crate) fn last_log_index(cluster: &LocalCluster, node: u64) -> anyhow::Result<u64> {
    Ok(cluster
        .node(node)
        .context("the node is running")?
        .raft
        .status()?
        .last_log_index)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Warnings from the nodes (slow fsyncs, say) go to stderr; RUST_LOG overrides.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        match args.scenario {
            Scenario::Directory {
                nodes,
                writers,
                connections,
                duration_secs,
                warmup_secs,
            } => {
                directory(
                    nodes,
                    writers,
                    connections,
                    Duration::from_secs(duration_secs),
                    Duration::from_secs(warmup_secs),
                )
                .await
            }
            Scenario::Messaging(a) => messaging::run(a).await,
            Scenario::Federation(a) => federation::run(a).await,
            Scenario::Audit(a) => audit::run(a).await,
        }
    })
}
