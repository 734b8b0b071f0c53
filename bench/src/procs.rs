//! Processes under test: sealpost nodes started as their own processes (`sealpost node
//! --config`, from a layout [`LocalCluster::lay_out`] wrote), waiting until such a
//! cluster has a leader every node knows, and what a process cost: CPU seconds over a
//! window (`/proc/PID/stat`) and peak resident memory (`VmHWM` in `/proc/PID/status`).
//! The peers' processes (etcd, NATS) are measured the same way.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use sealpost_client::{Client, Profile};
use sealpost_proto::v1 as pb;
use sealpost_server::local::LocalCluster;

use crate::report::ProcessStats;

/// How long a node process may take to stop after SIGTERM before it is killed.
pub const STOP_WAIT_MS: u64 = 10_000;
/// Bytes of a failed node's log quoted in the error.
pub const LOG_TAIL_BYTES: usize = 2_000;

/// One running node process.
struct NodeProc {
    name: String,
    child: Child,
    log: PathBuf,
}

/// A provider's nodes, each its own process.
pub struct NodeProcs {
    nodes: Vec<NodeProc>,
}

impl NodeProcs {
    /// Starts every node of `cluster` (laid out, not running) with `bin`, each writing its
    /// log to `<provider dir>/node-<id>.log` (its level from `SEALPOST_LOG`, as always).
    pub fn spawn(bin: &Path, cluster: &LocalCluster) -> anyhow::Result<Self> {
        anyhow::ensure!(
            bin.is_file(),
            "the sealpost binary {} does not exist (build the workspace, or pass --sealpost-bin)",
            bin.display()
        );
        let mut out = Self { nodes: Vec::new() };
        for id in cluster.node_ids() {
            let config = cluster.config_path(id);
            let log = cluster.dir.join(format!("node-{id}.log"));
            let file = std::fs::File::create(&log)
                .with_context(|| format!("creating {}", log.display()))?;
            let child = Command::new(bin)
                .arg("node")
                .arg("--config")
                .arg(&config)
                .env(
                    "RUST_LOG",
                    std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
                )
                .stdin(Stdio::null())
                .stdout(file.try_clone()?)
                .stderr(file)
                .spawn()
                .with_context(|| {
                    format!(
                        "starting {} node --config {}",
                        bin.display(),
                        config.display()
                    )
                })?;
            out.nodes.push(NodeProc {
                name: format!("{}-node-{id}", cluster.provider),
                child,
                log,
            });
        }
        Ok(out)
    }

    /// `(name, pid)` of every node.
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.nodes
            .iter()
            .map(|n| (n.name.clone(), n.child.id()))
            .collect()
    }

    /// An error naming the first node that exited, with the end of its log.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        for n in &mut self.nodes {
            if let Some(status) = n.child.try_wait()? {
                let log = std::fs::read(&n.log).unwrap_or_default();
                let tail = &log[log.len().saturating_sub(LOG_TAIL_BYTES)..];
                anyhow::bail!(
                    "node process {} exited ({status}); the end of {}:\n{}",
                    n.name,
                    n.log.display(),
                    String::from_utf8_lossy(tail)
                );
            }
        }
        Ok(())
    }

    /// Stops every node: SIGTERM, a bounded wait, then SIGKILL.
    pub fn stop(&mut self) {
        for n in &self.nodes {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(n.child.id().to_string())
                .stderr(Stdio::null())
                .status();
        }
        let deadline = Instant::now() + Duration::from_millis(STOP_WAIT_MS);
        for n in &mut self.nodes {
            while Instant::now() < deadline && matches!(n.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            if matches!(n.child.try_wait(), Ok(None)) {
                let _ = n.child.kill();
            }
            let _ = n.child.wait();
        }
        self.nodes.clear();
    }
}

impl Drop for NodeProcs {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An operator client (directory writes, status, audit) to every node of `cluster`.
pub async fn admin_client(cluster: &LocalCluster) -> anyhow::Result<Client> {
    Ok(Client::connect(&Profile {
        endpoints: cluster.addrs().into_values().collect(),
        tls: cluster.client_identity("bench-admin")?,
        organisation: None,
        default_endpoint: None,
        provider: None,
    })
    .await?)
}

/// A client to one node address.
pub async fn node_client(cluster: &LocalCluster, addr: &str) -> anyhow::Result<Client> {
    Ok(Client::connect(&Profile {
        endpoints: vec![addr.to_string()],
        tls: cluster.client_identity("bench-admin")?,
        organisation: None,
        default_endpoint: None,
        provider: None,
    })
    .await?)
}

/// Waits until every node answers and all agree on one leader; returns its address.
pub async fn wait_ready(
    cluster: &LocalCluster,
    procs: &mut NodeProcs,
    timeout: Duration,
) -> anyhow::Result<String> {
    let deadline = Instant::now() + timeout;
    let addrs = cluster.addrs();
    let mut last = String::from("no answer yet");
    // Bounded by the deadline.
    while Instant::now() < deadline {
        procs.check_running()?;
        let mut leaders = Vec::new();
        for addr in addrs.values() {
            let Ok(c) = node_client(cluster, addr).await else {
                last = format!("{addr} does not accept connections yet");
                break;
            };
            match c.admin().status(pb::StatusRequest::default()).await {
                Ok(r) => leaders.push(r.into_inner().this_node.map_or(0, |n| n.leader_id)),
                Err(e) => {
                    last = format!("{addr}: {}", e.message());
                    break;
                }
            }
        }
        if leaders.len() == addrs.len()
            && leaders[0] != 0
            && leaders.iter().all(|l| *l == leaders[0])
            && let Some(a) = addrs.get(&leaders[0])
        {
            return Ok(a.clone());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!(
        "the cluster of {} had no leader all nodes agree on within {} s ({last})",
        cluster.provider,
        timeout.as_secs()
    )
}

/// Clock ticks per second of `/proc/PID/stat` times (`getconf CLK_TCK`; 100 on Linux).
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// User + system CPU seconds a process has used so far.
pub fn cpu_secs(pid: u32, ticks: f64) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name (field 2) may hold spaces: the fields after it start past ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .with_context(|| format!("{path} has no command field"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after ')'.
    let field = |i: usize| -> anyhow::Result<f64> {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .with_context(|| format!("{path}: field {} is not a number", i + 3))
    };
    Ok((field(11)? + field(12)?) / ticks)
}

/// Peak resident set size of a process so far, in MiB.
pub fn peak_rss_mib(pid: u32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .with_context(|| format!("{path} has no VmHWM line"))?;
    Ok(kib / 1024.0)
}

/// CPU use of a set of processes over a window.
pub struct Watch {
    ticks: f64,
    start: Instant,
    procs: Vec<(String, u32, f64)>,
}

impl Watch {
    /// Starts the window for `procs` (`(name, pid)`); the load generator (this process)
    /// is always included.
    pub fn start(procs: &[(String, u32)]) -> anyhow::Result<Self> {
        let ticks = clock_ticks();
        let mut all = vec![(
            "sealpost-bench (load generator)".to_string(),
            std::process::id(),
        )];
        all.extend(procs.iter().cloned());
        let procs = all
            .into_iter()
            .map(|(n, p)| Ok((n, p, cpu_secs(p, ticks)?)))
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            ticks,
            start: Instant::now(),
            procs,
        })
    }

    /// CPU seconds and average cores of each process since [`Self::start`], and its peak
    /// RSS.
    pub fn finish(&self) -> anyhow::Result<Vec<ProcessStats>> {
        let wall = self.start.elapsed().as_secs_f64().max(1e-3);
        self.procs
            .iter()
            .map(|(name, pid, before)| {
                let used = cpu_secs(*pid, self.ticks)? - before;
                Ok(ProcessStats {
                    name: name.clone(),
                    pid: *pid,
                    cpu_secs: used,
                    cpu_cores_avg: used / wall,
                    peak_rss_mib: peak_rss_mib(*pid)?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let ticks = clock_ticks();
        let before = cpu_secs(std::process::id(), ticks).expect("stat");
        // Burn a little CPU so the counter must move.
        let t = Instant::now();
        let mut x = 0u64;
        while t.elapsed() < Duration::from_millis(150) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let after = cpu_secs(std::process::id(), ticks).expect("stat");
        assert!(after > before, "{before} -> {after}");
        let rss = peak_rss_mib(std::process::id()).expect("status");
        assert!(rss > 1.0 && rss < 65_536.0, "{rss}");
    }

    #[test]
    fn a_missing_process_is_an_error() {
        // PIDs are at most 2^22 on Linux.
        assert!(cpu_secs(u32::MAX, 100.0).is_err());
        assert!(peak_rss_mib(u32::MAX).is_err());
    }
}
