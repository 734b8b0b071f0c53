//! sealpost clusters as real node processes, for the load benchmark and the chaos harness.
//! A layout written by `LocalCluster::lay_out` is started as one `sealpost node --config`
//! process per node ([`NodeProcs`]), each logging to a file beside its folder; nodes can be
//! stopped gracefully, killed (SIGKILL), paused (SIGSTOP) and resumed, and started again on
//! the same data. [`wait_ready`] waits until every running node agrees on a leader; the
//! `/proc` readers ([`cpu_secs`], [`peak_rss_mib`], [`Watch`]) say what a process cost.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sealpost_client::{Client, Profile};
use sealpost_core::ids::HpiO;
use sealpost_proto::v1 as pb;
use sealpost_server::local::LocalCluster;

/// How long a node process may take to stop after SIGTERM before it is killed.
pub const STOP_WAIT_MS: u64 = 10_000;
/// Bytes of a failed node's log quoted in an error.
pub const LOG_TAIL_BYTES: usize = 2_000;
/// Bytes at the end of a node's log searched for the error or panic it exited with.
pub const EXIT_SEARCH_BYTES: usize = 256 * 1024;

/// What to show of the log of a node that exited: from the last line saying why (an
/// `Error: ` line, as a binary returning an error prints it, or a panic's line), at most
/// [`LOG_TAIL_BYTES`] of it; the log's end when no such line is found. The plain end of
/// the log is often nothing but the backtrace that follows the reason.
pub fn exit_excerpt(log: &[u8]) -> String {
    let from = log.len().saturating_sub(EXIT_SEARCH_BYTES);
    let window = &log[from..];
    let reason = window
        .split_inclusive(|&b| b == b'\n')
        .scan(0usize, |at, line| {
            let start = *at;
            *at += line.len();
            Some((start, line))
        })
        .filter(|(_, line)| {
            line.starts_with(b"Error: ") || line.windows(12).any(|w| w == b" panicked at")
        })
        .map(|(start, _)| start)
        .last();
    let bytes = match reason {
        Some(start) => &window[start..window.len().min(start + LOG_TAIL_BYTES)],
        None => &log[log.len().saturating_sub(LOG_TAIL_BYTES)..],
    };
    String::from_utf8_lossy(bytes).into_owned()
}

/// Pause between two polls of a cluster's status while waiting for a leader.
pub const READY_POLL_MS: u64 = 100;

/// Largest process id Linux hands out (`/proc/sys/kernel/pid_max` is at most 2^22).
pub const PID_MAX: u32 = 1 << 22;

pub type NodeId = u64;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the sealpost binary {0} does not exist (build the workspace, or name another)")]
    NoBinary(PathBuf),
    #[error("node process {name} exited ({status}); the end of {log}:\n{tail}")]
    Exited {
        name: String,
        status: String,
        log: PathBuf,
        tail: String,
    },
    #[error("node {0} is not part of this cluster")]
    UnknownNode(NodeId),
    #[error("node {0} is not running")]
    NotRunning(NodeId),
    #[error("{0}")]
    NotReady(String),
    #[error("client: {0}")]
    Client(String),
    #[error("{path}: {problem}")]
    Proc { path: String, problem: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// One node process, running or not.
struct NodeProc {
    name: String,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    paused: bool,
}

/// A provider's nodes, each its own process.
pub struct NodeProcs {
    bin: PathBuf,
    nodes: BTreeMap<NodeId, NodeProc>,
}

impl std::fmt::Debug for NodeProcs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeProcs")
            .field("nodes", &self.pids())
            .finish()
    }
}

/// Sends `signal` (a name `kill` understands: TERM, KILL, STOP, CONT) to `pid`.
fn signal(pid: u32, signal: &str) -> Result<()> {
    // 0 and anything that reads as negative would signal a process group or every process.
    if pid == 0 || pid > PID_MAX {
        return Err(Error::Proc {
            path: format!("pid {pid}"),
            problem: format!("not a process id; kill -{signal} not sent"),
        });
    }
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status()
        .map_err(io("running kill for", Path::new("kill")))?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::Proc {
            path: format!("pid {pid}"),
            problem: format!("kill -{signal} failed ({status})"),
        })
    }
}

impl NodeProcs {
    /// Starts every node of `cluster` (laid out, not running) with `bin`, each writing its
    /// log to `<provider dir>/node-<id>.log` (appended across restarts; its level from
    /// `SEALPOST_LOG`, as always).
    pub fn spawn(bin: &Path, cluster: &LocalCluster) -> Result<Self> {
        Self::spawn_logging_to(bin, cluster, &cluster.dir)
    }

    /// [`Self::spawn`], with the nodes' logs in `log_dir` (e.g. outside a file system that
    /// loses unsynced data at a simulated crash).
    pub fn spawn_logging_to(bin: &Path, cluster: &LocalCluster, log_dir: &Path) -> Result<Self> {
        if !bin.is_file() {
            return Err(Error::NoBinary(bin.to_path_buf()));
        }
        let mut out = Self {
            bin: bin.to_path_buf(),
            nodes: BTreeMap::new(),
        };
        for id in cluster.node_ids() {
            out.nodes.insert(
                id,
                NodeProc {
                    name: format!("{}-node-{id}", cluster.provider),
                    config: cluster.config_path(id),
                    log: log_dir.join(format!("node-{id}.log")),
                    child: None,
                    paused: false,
                },
            );
            out.start(id)?;
        }
        Ok(out)
    }

    /// Adds node `id` (its configuration at `config`, laid out already) and starts it.
    pub fn add(&mut self, id: NodeId, name: &str, config: &Path, log: &Path) -> Result<()> {
        self.nodes.insert(
            id,
            NodeProc {
                name: name.to_string(),
                config: config.to_path_buf(),
                log: log.to_path_buf(),
                child: None,
                paused: false,
            },
        );
        self.start(id)
    }

    /// Stops node `id` if it runs and forgets it.
    pub fn remove(&mut self, id: NodeId) -> Result<()> {
        if self.is_running(id) {
            self.kill(id)?;
        }
        self.nodes
            .remove(&id)
            .map(|_| ())
            .ok_or(Error::UnknownNode(id))
    }

    /// The end of node `id`'s log, for a report.
    pub fn log_tail(&self, id: NodeId) -> Result<String> {
        let n = self.nodes.get(&id).ok_or(Error::UnknownNode(id))?;
        let log = std::fs::read(&n.log).map_err(io("reading", &n.log))?;
        let tail = &log[log.len().saturating_sub(LOG_TAIL_BYTES)..];
        Ok(String::from_utf8_lossy(tail).into_owned())
    }

    /// Starts node `id` (again) on its data.
    pub fn start(&mut self, id: NodeId) -> Result<()> {
        let bin = self.bin.clone();
        let n = self.nodes.get_mut(&id).ok_or(Error::UnknownNode(id))?;
        if let Some(c) = &mut n.child
            && matches!(c.try_wait(), Ok(None))
        {
            return Ok(());
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log)
            .map_err(io("opening", &n.log))?;
        let err = file.try_clone().map_err(io("opening", &n.log))?;
        let child = Command::new(&bin)
            .arg("node")
            .arg("--config")
            .arg(&n.config)
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .spawn()
            .map_err(io("starting a node with", &bin))?;
        n.child = Some(child);
        n.paused = false;
        Ok(())
    }

    /// `(name, pid)` of every running node.
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.nodes
            .values()
            .filter_map(|n| n.child.as_ref().map(|c| (n.name.clone(), c.id())))
            .collect()
    }

    /// Every node id, running or not.
    pub fn ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    /// Whether node `id` has a process (running or paused).
    pub fn is_running(&mut self, id: NodeId) -> bool {
        self.nodes
            .get_mut(&id)
            .and_then(|n| n.child.as_mut())
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// An error naming the first node that exited on its own, with the end of its log.
    pub fn check_running(&mut self) -> Result<()> {
        for n in self.nodes.values_mut() {
            let Some(c) = &mut n.child else { continue };
            if let Some(status) = c.try_wait().map_err(io("waiting for", &n.config))? {
                let log = std::fs::read(&n.log).unwrap_or_default();
                return Err(Error::Exited {
                    name: n.name.clone(),
                    status: status.to_string(),
                    log: n.log.clone(),
                    tail: exit_excerpt(&log),
                });
            }
        }
        Ok(())
    }

    /// SIGKILL node `id` (a crash: nothing is flushed) and reaps it.
    pub fn kill(&mut self, id: NodeId) -> Result<()> {
        let n = self.nodes.get_mut(&id).ok_or(Error::UnknownNode(id))?;
        let mut c = n.child.take().ok_or(Error::NotRunning(id))?;
        c.kill().map_err(io("killing", &n.config))?;
        c.wait().map_err(io("waiting for", &n.config))?;
        n.paused = false;
        Ok(())
    }

    /// SIGSTOP node `id`: it stops answering, without closing a connection.
    pub fn pause(&mut self, id: NodeId) -> Result<()> {
        self.set_paused(id, true)
    }

    /// SIGCONT node `id`.
    pub fn resume(&mut self, id: NodeId) -> Result<()> {
        self.set_paused(id, false)
    }

    fn set_paused(&mut self, id: NodeId, paused: bool) -> Result<()> {
        let n = self.nodes.get_mut(&id).ok_or(Error::UnknownNode(id))?;
        let pid = n.child.as_ref().ok_or(Error::NotRunning(id))?.id();
        signal(pid, if paused { "STOP" } else { "CONT" })?;
        n.paused = paused;
        Ok(())
    }

    /// Stops node `id`: SIGTERM (after SIGCONT if paused), a bounded wait, then SIGKILL.
    pub fn stop_node(&mut self, id: NodeId) -> Result<()> {
        let n = self.nodes.get_mut(&id).ok_or(Error::UnknownNode(id))?;
        let Some(mut c) = n.child.take() else {
            return Ok(());
        };
        if n.paused {
            let _ = signal(c.id(), "CONT");
            n.paused = false;
        }
        let _ = signal(c.id(), "TERM");
        let deadline = Instant::now() + Duration::from_millis(STOP_WAIT_MS);
        while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        if matches!(c.try_wait(), Ok(None)) {
            let _ = c.kill();
        }
        let _ = c.wait();
        Ok(())
    }

    /// Stops every node.
    pub fn stop(&mut self) {
        for id in self.ids() {
            let _ = self.stop_node(id);
        }
    }
}

impl Drop for NodeProcs {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An operator client (directory writes, status, audit) to every node of `cluster`.
pub async fn admin_client(cluster: &LocalCluster) -> Result<Client> {
    connect(
        cluster,
        ADMIN_CLIENT,
        None,
        cluster.addrs().into_values().collect(),
    )
    .await
}

/// An operator client to one node address.
pub async fn node_client(cluster: &LocalCluster, addr: &str) -> Result<Client> {
    connect(cluster, ADMIN_CLIENT, None, vec![addr.to_string()]).await
}

/// A client of organisation `org` (its certificate names it, so it may send and receive as
/// that organisation) to one node address; `name` names the certificate, issued on first use.
pub async fn org_client(
    cluster: &LocalCluster,
    name: &str,
    org: &HpiO,
    addr: &str,
) -> Result<Client> {
    connect(cluster, name, Some(org), vec![addr.to_string()]).await
}

/// The client certificate of the operator clients.
const ADMIN_CLIENT: &str = "harness-operator";

async fn connect(
    cluster: &LocalCluster,
    name: &str,
    org: Option<&HpiO>,
    endpoints: Vec<String>,
) -> Result<Client> {
    let tls = cluster
        .client_identity_for_org(name, org)
        .map_err(|e| Error::Client(e.to_string()))?;
    Client::connect(&Profile {
        endpoints,
        tls,
        organisation: org.map(ToString::to_string),
        default_endpoint: None,
        provider: None,
    })
    .await
    .map_err(|e| Error::Client(e.to_string()))
}

/// Waits until every running node of `procs` answers and all agree on one leader among
/// them; returns the leader's id and address.
pub async fn wait_ready(
    cluster: &LocalCluster,
    procs: &mut NodeProcs,
    timeout: Duration,
) -> Result<(NodeId, String)> {
    let deadline = Instant::now() + timeout;
    let addrs = cluster.addrs();
    let mut last = String::from("no answer yet");
    // Bounded by the deadline.
    while Instant::now() < deadline {
        procs.check_running()?;
        let running: Vec<NodeId> = procs
            .ids()
            .into_iter()
            .filter(|id| procs.is_running(*id) && !procs.nodes[id].paused)
            .collect();
        let mut leaders = Vec::new();
        for id in &running {
            let Some(addr) = addrs.get(id) else { continue };
            let Ok(c) = node_client(cluster, addr).await else {
                last = format!("{addr} does not accept connections yet");
                break;
            };
            let status = tokio::time::timeout(
                Duration::from_millis(2_000),
                c.admin().status(pb::StatusRequest::default()),
            )
            .await;
            match status {
                Ok(Ok(r)) => leaders.push(r.into_inner().this_node.map_or(0, |n| n.leader_id)),
                Ok(Err(e)) => {
                    last = format!("{addr}: {}", e.message());
                    break;
                }
                Err(_) => {
                    last = format!("{addr}: no status answer in 2 s");
                    break;
                }
            }
        }
        if !running.is_empty()
            && leaders.len() == running.len()
            && leaders[0] != 0
            && running.contains(&leaders[0])
            && leaders.iter().all(|l| *l == leaders[0])
            && let Some(a) = addrs.get(&leaders[0])
        {
            return Ok((leaders[0], a.clone()));
        }
        tokio::time::sleep(Duration::from_millis(READY_POLL_MS)).await;
    }
    Err(Error::NotReady(format!(
        "the cluster of {} had no leader all running nodes agree on within {} s ({last})",
        cluster.provider,
        timeout.as_secs()
    )))
}

/// Clock ticks per second of `/proc/PID/stat` times (`getconf CLK_TCK`; 100 on Linux).
pub fn clock_ticks() -> f64 {
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
pub fn cpu_secs(pid: u32, ticks: f64) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).map_err(io("reading", Path::new(&path)))?;
    // The command name (field 2) may hold spaces: the fields after it start past ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| Error::Proc {
            path: path.clone(),
            problem: "no command field".into(),
        })?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after ')'.
    let field = |i: usize| -> Result<f64> {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .ok_or_else(|| Error::Proc {
                path: path.clone(),
                problem: format!("field {} is not a number", i + 3),
            })
    };
    Ok((field(11)? + field(12)?) / ticks)
}

/// Peak resident set size of a process so far, in MiB.
pub fn peak_rss_mib(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).map_err(io("reading", Path::new(&path)))?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .ok_or_else(|| Error::Proc {
            path: path.clone(),
            problem: "no VmHWM line".into(),
        })?;
    Ok(kib / 1024.0)
}

/// What one process cost over a [`Watch`] window.
#[derive(Clone, Debug)]
pub struct ProcessCost {
    pub name: String,
    pub pid: u32,
    pub cpu_secs: f64,
    pub cpu_cores_avg: f64,
    pub peak_rss_mib: f64,
}

/// CPU use of a set of processes over a window.
#[derive(Debug)]
pub struct Watch {
    ticks: f64,
    start: Instant,
    procs: Vec<(String, u32, f64)>,
}

impl Watch {
    /// Starts the window for `procs` (`(name, pid)`).
    pub fn start(procs: &[(String, u32)]) -> Result<Self> {
        let ticks = clock_ticks();
        let procs = procs
            .iter()
            .map(|(n, p)| Ok((n.clone(), *p, cpu_secs(*p, ticks)?)))
            .collect::<Result<_>>()?;
        Ok(Self {
            ticks,
            start: Instant::now(),
            procs,
        })
    }

    /// CPU seconds and average cores of each process since [`Self::start`], and its peak
    /// RSS.
    pub fn finish(&self) -> Result<Vec<ProcessCost>> {
        let wall = self.start.elapsed().as_secs_f64().max(1e-3);
        self.procs
            .iter()
            .map(|(name, pid, before)| {
                let used = cpu_secs(*pid, self.ticks)? - before;
                Ok(ProcessCost {
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
    fn an_exit_excerpt_starts_at_the_reason_not_in_the_backtrace() {
        let backtrace = "      7: some::frame\n                 at src/x.rs:1:1\n".repeat(200);
        let log = format!(
            "INFO started\nError: the raft log is corrupt\n\nStack backtrace:\n{backtrace}"
        );
        let e = exit_excerpt(log.as_bytes());
        assert!(e.starts_with("Error: the raft log is corrupt"), "{e}");
        assert!(e.len() <= LOG_TAIL_BYTES);
        let panic = format!("INFO x\nthread 'main' panicked at src/a.rs:3:5:\nboom\n{backtrace}");
        assert!(exit_excerpt(panic.as_bytes()).starts_with("thread 'main' panicked at src/a.rs"));
        // Without a reason, the end of the log as before.
        let plain = "x".repeat(3 * LOG_TAIL_BYTES);
        assert_eq!(exit_excerpt(plain.as_bytes()), "x".repeat(LOG_TAIL_BYTES));
        assert_eq!(exit_excerpt(b""), "");
    }

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

    #[test]
    fn a_pid_that_would_signal_a_group_is_refused() {
        // (Sent to kill, 0 would reach this process group and u32::MAX every process.)
        for pid in [0, u32::MAX, PID_MAX + 1] {
            let e = signal(pid, "CONT").expect_err("refused").to_string();
            assert!(e.contains("not a process id"), "{e}");
        }
    }
}
