//! Peer systems the benchmark compares sealpost with: a 3-member etcd cluster and a 3-node
//! NATS JetStream cluster on loopback. Each runs as real server processes started and stopped
//! by its script in `bench/peers/` (`etcd.sh`, `nats.sh`: `start DIR` / `stop DIR`); this
//! module runs those scripts with a time bound and parses what they print, and the
//! submodules [`etcd`] and [`nats`] are the clients that issue durable writes to them.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

pub mod etcd;
pub mod nats;

/// Longest a `start` may take: the scripts wait at most 20 s for health (by default) and may
/// then need up to 45 s to stop what they started.
const START_BOUND: Duration = Duration::from_secs(90);
/// Longest a `stop` may take: TERM, 10 s, KILL, 5 s, for each of 3 processes.
const STOP_BOUND: Duration = Duration::from_secs(60);

/// Which peer system.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerKind {
    Etcd,
    Nats,
}

impl PeerKind {
    /// The script in `bench/peers/` that starts and stops it.
    pub fn script_name(self) -> &'static str {
        match self {
            PeerKind::Etcd => "etcd.sh",
            PeerKind::Nats => "nats.sh",
        }
    }

    /// Short name for reports.
    pub fn label(self) -> &'static str {
        match self {
            PeerKind::Etcd => "etcd",
            PeerKind::Nats => "nats",
        }
    }

    /// The server binary its Debian package installs (the path the script runs).
    fn server_binary(self) -> &'static str {
        match self {
            PeerKind::Etcd => "/usr/bin/etcd",
            PeerKind::Nats => "/usr/sbin/nats-server",
        }
    }
}

/// A running peer cluster started by its script; stop() (and Drop, best effort) runs
/// `<script> stop DIR`.
#[derive(Debug)]
pub struct PeerCluster {
    pub kind: PeerKind,
    /// Client URLs, one per member: `http://127.0.0.1:PORT` (etcd), `nats://127.0.0.1:PORT`.
    pub endpoints: Vec<String>,
    /// `(member name, pid)` of each server process.
    pub pids: Vec<(String, u32)>,
    /// Server version as the script reported it (`"unknown"` if it printed none).
    pub version: String,
    script: PathBuf,
    dir: PathBuf,
    running: bool,
}

impl PeerCluster {
    /// Runs `<scripts_dir>/<script> start <dir>` (bounded in time), parses its output.
    pub fn start(kind: PeerKind, scripts_dir: &Path, dir: &Path) -> anyhow::Result<PeerCluster> {
        let script = scripts_dir.join(kind.script_name());
        if !script.is_file() {
            bail!(
                "{} peer script {} not found",
                kind.label(),
                script.display()
            );
        }
        std::fs::create_dir_all(dir).with_context(|| {
            format!(
                "creating the {} peer folder {}",
                kind.label(),
                dir.display()
            )
        })?;
        let out = match run_script(&script, "start", dir, START_BOUND) {
            Ok(out) => out,
            Err(e) => {
                // Timed out: members it started may run; stop them before reporting.
                let _ = run_script(&script, "stop", dir, STOP_BOUND);
                return Err(e);
            }
        };
        if !out.status.success() {
            bail!(
                "{} start {} failed ({}): {}",
                script.display(),
                dir.display(),
                out.status,
                tail(&out.stderr, 12)
            );
        }
        let mut cluster = PeerCluster {
            kind,
            endpoints: Vec::new(),
            pids: Vec::new(),
            version: String::from("unknown"),
            script,
            dir: dir.to_path_buf(),
            running: true,
        };
        // From here on the cluster runs: a parse error stops it (Drop) before returning.
        parse_start_output(&out.stdout, &mut cluster).with_context(|| {
            format!(
                "unexpected output of {} start {}",
                cluster.script.display(),
                dir.display()
            )
        })?;
        Ok(cluster)
    }

    /// Runs `<script> stop <dir>` (bounded in time). Calling it again does nothing.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if !self.running {
            return Ok(());
        }
        self.running = false;
        let out = run_script(&self.script, "stop", &self.dir, STOP_BOUND)?;
        if !out.status.success() {
            bail!(
                "{} stop {} failed ({}): {}",
                self.script.display(),
                self.dir.display(),
                out.status,
                tail(&out.stderr, 12)
            );
        }
        Ok(())
    }
}

impl Drop for PeerCluster {
    fn drop(&mut self) {
        if self.running
            && let Err(e) = self.stop()
        {
            eprintln!(
                "warning: stopping the {} peer cluster: {e:#}",
                self.kind.label()
            );
        }
    }
}

/// Whether the peer's server binary is installed (so a run can skip it with a note).
pub fn installed(kind: PeerKind) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(kind.server_binary())
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Fills endpoints, pids and version from the `start` output: lines `version V`,
/// `endpoint URL` and `pid NAME PID`; other lines are ignored.
fn parse_start_output(stdout: &str, cluster: &mut PeerCluster) -> anyhow::Result<()> {
    for line in stdout.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("version") => {
                if let Some(v) = words.next() {
                    cluster.version = v.to_string();
                }
            }
            Some("endpoint") => {
                let url = words
                    .next()
                    .with_context(|| format!("endpoint line without a URL: {line:?}"))?;
                cluster.endpoints.push(url.to_string());
            }
            Some("pid") => {
                let (Some(name), Some(pid)) = (words.next(), words.next()) else {
                    bail!("pid line is not `pid NAME PID`: {line:?}");
                };
                let pid: u32 = pid
                    .parse()
                    .with_context(|| format!("pid line with a bad pid: {line:?}"))?;
                cluster.pids.push((name.to_string(), pid));
            }
            _ => {}
        }
    }
    if cluster.endpoints.is_empty() {
        bail!("no `endpoint` line in: {stdout:?}");
    }
    if cluster.pids.is_empty() {
        bail!("no `pid` line in: {stdout:?}");
    }
    Ok(())
}

struct ScriptOutput {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs `bash SCRIPT ACTION DIR`, collecting its output, and kills it if it outlives `bound`.
fn run_script(
    script: &Path,
    action: &str,
    dir: &Path,
    bound: Duration,
) -> anyhow::Result<ScriptOutput> {
    let mut child = Command::new("bash")
        .arg(script)
        .arg(action)
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running bash {} {action}", script.display()))?;
    let stdout = reader(child.stdout.take());
    let stderr = reader(child.stderr.take());
    let status = wait_bounded(&mut child, bound);
    let (stdout, stderr) = (joined(stdout), joined(stderr));
    match status {
        Ok(status) => Ok(ScriptOutput {
            status,
            stdout,
            stderr,
        }),
        Err(e) => Err(e.context(format!(
            "{} {action} {}; its stderr: {}",
            script.display(),
            dir.display(),
            tail(&stderr, 12)
        ))),
    }
}

/// Waits for the child at most `bound`, then kills it.
fn wait_bounded(child: &mut Child, bound: Duration) -> anyhow::Result<ExitStatus> {
    let deadline = Instant::now() + bound;
    loop {
        if let Some(status) = child.try_wait().context("waiting for the peer script")? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            // Kill only the script itself; servers it already started are left to `stop`.
            let _ = child.kill();
            let _ = child.wait();
            bail!("timed out after {} s", bound.as_secs());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Reads a pipe to its end on a thread; the receiver gets the text.
fn reader<R: Read + Send + 'static>(pipe: Option<R>) -> Option<Receiver<String>> {
    pipe.map(|mut p| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            // A read error leaves what was read so far.
            let _ = p.read_to_end(&mut buf);
            let _ = tx.send(String::from_utf8_lossy(&buf).into_owned());
        });
        rx
    })
}

/// The text a reader collected; waits at most 5 s for the pipe to close (a server process that
/// kept the script's pipe open would otherwise hold us forever).
fn joined(rx: Option<Receiver<String>>) -> String {
    rx.and_then(|rx| rx.recv_timeout(Duration::from_secs(5)).ok())
        .unwrap_or_default()
}

/// The last `n` lines of `text`, on one line.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(n);
    let s = lines[start..].join(" | ");
    if s.is_empty() {
        String::from("(nothing)")
    } else {
        s
    }
}
