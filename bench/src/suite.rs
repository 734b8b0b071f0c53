//! A benchmark run: the chosen scenarios one after another, then the ratios the project
//! steers by (sealpost against etcd and NATS, the hot path against the crypto ceiling,
//! p99 at half load), written as JSON, a markdown summary and SVG plots. `--smoke` runs
//! every scenario briefly and fails unless each produced sane numbers (CI runs it).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use crate::peers::{self, PeerKind};
use crate::report::{self, Machine, Ratio, Run, ScenarioResult, Settings};
use crate::scenarios::{self, Ctx};

/// Every scenario, in the order a run takes them.
pub const SCENARIOS: [&str; 7] = [
    "crypto", "log", "etcd", "nats", "hot-path", "replay", "relay",
];

/// Targets the project is heading for (issue 7).
pub const TARGET_LOG_OVER_ETCD: f64 = 10.0;
pub const TARGET_LOG_OVER_NATS: f64 = 1.0;
pub const TARGET_HOT_PATH_OVER_CEILING: f64 = 0.5;
pub const TARGET_HALF_LOAD_P99_MS: f64 = 10.0;
/// Share of failed operations a smoke run tolerates in a phase.
pub const SMOKE_ERROR_SHARE_MAX: f64 = 0.01;

#[derive(clap::Args, Debug, Clone)]
pub struct SuiteArgs {
    /// A short run of every scenario (about a second each) that fails unless each one
    /// produced sane numbers; what CI runs.
    #[arg(long)]
    pub smoke: bool,
    /// Scenarios to run, comma-separated (default: all): crypto, log, etcd, nats,
    /// hot-path, replay (runs on the hot-path cluster, so it runs hot-path too), relay.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Skip the peers (etcd, NATS) even when they are installed.
    #[arg(long)]
    pub no_peers: bool,
    /// Measured seconds of each phase (default 10; 1 with --smoke).
    #[arg(long)]
    pub duration_secs: Option<f64>,
    /// Warm-up seconds before each phase (default 2; 0.5 with --smoke).
    #[arg(long)]
    pub warmup_secs: Option<f64>,
    /// Concurrent clients of the closed-loop maximum phase (default 256; 16 with --smoke).
    #[arg(long)]
    pub clients: Option<u64>,
    /// Client connections, spread over the nodes (default 12; 3 with --smoke).
    #[arg(long)]
    pub connections: Option<u64>,
    /// Payload bytes of a sealed message (hot-path, relay, crypto).
    #[arg(long, default_value_t = 4096)]
    pub payload_bytes: usize,
    /// Nodes per sealpost cluster.
    #[arg(long, default_value_t = 3)]
    pub nodes: u64,
    /// The open-loop rate of the second phase of every load scenario (operations per
    /// second) instead of half of that scenario's maximum.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Seconds of the crypto ceiling (default 5; 1 with --smoke).
    #[arg(long)]
    pub ceiling_secs: Option<f64>,
    /// Where the report goes (run.json, summary.md, latency.svg, throughput.svg). Default:
    /// bench/results/<UTC time>-<commit>/, or a folder in the work folder with --smoke.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Where clusters keep their data during the run (default: a temporary folder,
    /// removed afterwards).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Where the nodes keep their Raft logs (each node's `raft_log_dir`, under the
    /// scenario's name): a file system of its own shows what a dedicated log disk gives.
    /// Default: in each node's data folder. The folder's scenario subfolders must not exist.
    #[arg(long)]
    pub raft_log_dir: Option<PathBuf>,
    /// The sealpost binary the nodes run (default: `sealpost` beside this binary).
    #[arg(long, env = "SEALPOST_BIN")]
    pub sealpost_bin: Option<PathBuf>,
    /// The folder of the peers' start/stop scripts.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/peers"))]
    pub peers_dir: PathBuf,
}

fn secs(s: f64, what: &str) -> anyhow::Result<Duration> {
    anyhow::ensure!(
        (0.0..=86_400.0).contains(&s),
        "{what} must be between 0 and 86400 seconds, not {s}"
    );
    Ok(Duration::from_secs_f64(s))
}

fn selected(a: &SuiteArgs) -> anyhow::Result<Vec<&'static str>> {
    for s in &a.only {
        anyhow::ensure!(
            SCENARIOS.contains(&s.as_str()),
            "unknown scenario {s:?}; the scenarios are {}",
            SCENARIOS.join(", ")
        );
    }
    Ok(SCENARIOS
        .iter()
        .copied()
        .filter(|s| {
            let asked = |name: &str| a.only.is_empty() || a.only.iter().any(|o| o == name);
            // The replay reads the hot-path cluster's log, so it brings the hot path along.
            asked(s) || (*s == "hot-path" && asked("replay"))
        })
        .filter(|s| !(a.no_peers && matches!(*s, "etcd" | "nats")))
        .collect())
}

/// The git commit of the source tree this binary was run from ("+dirty" when it has
/// uncommitted changes), or "unknown".
fn git_commit() -> String {
    let dir = env!("CARGO_MANIFEST_DIR");
    let out = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(dir)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match out(&["rev-parse", "HEAD"]) {
        Some(h) if !h.is_empty() => {
            let dirty = out(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            if dirty { format!("{h}+dirty") } else { h }
        }
        _ => "unknown".into(),
    }
}

fn machine() -> Machine {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let mem_kib = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    Machine {
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        memory_gib: mem_kib / 1024.0 / 1024.0,
        cpu_model: read("/proc/cpuinfo")
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string())
            .unwrap_or_else(|| "unknown".into()),
        kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
    }
}

/// UTC time as RFC 3339 and as a folder-name stamp.
fn now_utc() -> (String, String) {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let iso = sealpost_core::calendar::utc_iso(ms);
    let stamp = iso
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(13)
        .collect::<String>();
    (iso, stamp)
}

fn phase_of<'a>(
    results: &'a [ScenarioResult],
    scenario: &str,
    phase: &str,
) -> Option<&'a report::Phase> {
    results
        .iter()
        .find(|r| r.scenario == scenario)?
        .phases
        .iter()
        .find(|p| p.name == phase)
}

fn at_least(name: &str, value: f64, target: f64, explanation: String) -> Ratio {
    Ratio {
        name: name.into(),
        value,
        target: Some(target),
        met: Some(value >= target),
        explanation,
    }
}

/// The ratios and targets, from whichever scenarios ran.
pub fn ratios(results: &[ScenarioResult]) -> Vec<Ratio> {
    let max = |s: &str| phase_of(results, s, "max").map(|p| p.throughput_per_sec);
    let mut out = Vec::new();
    if let Some(log) = max("log") {
        for (peer, target) in [
            ("etcd", TARGET_LOG_OVER_ETCD),
            ("nats", TARGET_LOG_OVER_NATS),
        ] {
            if let Some(p) = max(peer).filter(|p| *p > 0.0) {
                out.push(at_least(
                    &format!("log / {peer}: committed writes per second"),
                    log / p,
                    target,
                    format!("sealpost {log:.0} events/s against {peer} {p:.0} writes/s, same clients, connections and value size, same machine, same run"),
                ));
            }
        }
    }
    if let (Some(hot), Some(ceiling)) = (
        max("hot-path"),
        phase_of(results, "crypto", "run").map(|p| p.throughput_per_sec),
    ) && ceiling > 0.0
    {
        out.push(at_least(
            "hot-path / crypto ceiling",
            hot / ceiling,
            TARGET_HOT_PATH_OVER_CEILING,
            format!("{hot:.0} sealed messages/s routed end to end against {ceiling:.0}/s of seal + sign + open + verify alone on every core"),
        ));
    }
    for s in ["hot-path", "log", "relay"] {
        if let Some(p99) = phase_of(results, s, "half")
            .and_then(|p| p.latency.as_ref())
            .map(|l| l.p99_ms)
        {
            let target = (s == "hot-path").then_some(TARGET_HALF_LOAD_P99_MS);
            out.push(Ratio {
                name: format!("{s}: p99 ms at half load"),
                value: p99,
                target,
                met: target.map(|t| p99 < t),
                explanation: match s {
                    "hot-path" => {
                        "send → routed, open loop at half the maximum, from each send's due time"
                            .into()
                    }
                    "log" => "directory write committed, open loop at half the maximum".into(),
                    _ => "sent at A → routed at B, open loop at half the maximum".into(),
                },
            });
        }
    }
    out
}

/// What a smoke run insists on: every scenario ran, and its numbers are sane.
pub fn smoke_problems(wanted: &[&str], results: &[ScenarioResult]) -> Vec<String> {
    let mut problems = Vec::new();
    for s in wanted {
        let Some(r) = results.iter().find(|r| r.scenario == *s) else {
            problems.push(format!("scenario {s} produced no result"));
            continue;
        };
        if r.phases.is_empty() {
            problems.push(format!("{s}: no phase ran"));
        }
        for p in &r.phases {
            let at = format!("{s} / {}", p.name);
            if p.completed == 0 || !p.throughput_per_sec.is_finite() || p.throughput_per_sec <= 0.0
            {
                problems.push(format!("{at}: nothing completed ({} errors)", p.errors));
            }
            if p.errors as f64 > SMOKE_ERROR_SHARE_MAX * p.completed.max(1) as f64 {
                problems.push(format!(
                    "{at}: {} errors for {} completed",
                    p.errors, p.completed
                ));
            }
            let load = matches!(
                p.loop_kind,
                report::LoopKind::Closed | report::LoopKind::Open
            );
            match (&p.latency, load) {
                (Some(l), _) => {
                    let ordered = 0.0 < l.p50_ms && l.p50_ms <= l.p99_ms && l.p99_ms <= l.max_ms;
                    if !ordered || !l.max_ms.is_finite() {
                        problems.push(format!(
                            "{at}: latencies out of order (p50 {} p99 {} max {})",
                            l.p50_ms, l.p99_ms, l.max_ms
                        ));
                    }
                    if l.count != p.completed {
                        problems.push(format!(
                            "{at}: {} latencies for {} completed",
                            l.count, p.completed
                        ));
                    }
                }
                (None, true) => problems.push(format!("{at}: no latencies recorded")),
                (None, false) => {}
            }
        }
        if r.processes.is_empty() {
            problems.push(format!("{s}: no process was measured"));
        }
        for pr in &r.processes {
            let sane = pr.peak_rss_mib > 0.0 && pr.cpu_secs >= 0.0;
            if !sane {
                problems.push(format!(
                    "{s}: process {} has CPU {} s, peak RSS {} MiB",
                    pr.name, pr.cpu_secs, pr.peak_rss_mib
                ));
            }
        }
    }
    if let (Some(hot), Some(replay)) = (
        results.iter().find(|r| r.scenario == "hot-path"),
        phase_of(results, "replay", "run"),
    ) {
        // Every routed message is at least its Sent, Decrypted and Routed events.
        let routed: u64 = hot.phases.iter().map(|p| p.completed).sum();
        if replay.completed < 3 * routed {
            problems.push(format!(
                "replay read {} records, fewer than the {routed} routed messages' {} events",
                replay.completed,
                3 * routed
            ));
        }
    }
    problems
}

pub async fn run(a: SuiteArgs) -> anyhow::Result<()> {
    let wanted = selected(&a)?;
    let smoke = a.smoke;
    let pick =
        |v: Option<f64>, full: f64, quick: f64| v.unwrap_or(if smoke { quick } else { full });
    let tmp = tempfile::Builder::new()
        .prefix("sealpost-bench-")
        .tempdir()?;
    let work = match &a.work_dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            d.clone()
        }
        None => tmp.path().to_path_buf(),
    };
    let sealpost_bin = match &a.sealpost_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?.with_file_name("sealpost"),
    };
    let ctx = Ctx {
        sealpost_bin,
        peers_dir: a.peers_dir.clone(),
        work: work.clone(),
        nodes: a.nodes,
        clients: a.clients.unwrap_or(if smoke { 16 } else { 256 }),
        connections: a.connections.unwrap_or(if smoke { 3 } else { 12 }),
        payload_bytes: a.payload_bytes,
        warmup: secs(pick(a.warmup_secs, 2.0, 0.5), "--warmup-secs")?,
        duration: secs(pick(a.duration_secs, 10.0, 1.0), "--duration-secs")?,
        ceiling: secs(pick(a.ceiling_secs, 5.0, 1.0), "--ceiling-secs")?,
        rate: a.rate,
        raft_log_dir: a.raft_log_dir.clone(),
    };
    anyhow::ensure!(
        ctx.duration > Duration::ZERO,
        "--duration-secs must be above 0"
    );
    anyhow::ensure!(
        (1..=7).contains(&ctx.nodes),
        "--nodes must be 1 to 7, not {}",
        ctx.nodes
    );
    for kind in [PeerKind::Etcd, PeerKind::Nats] {
        anyhow::ensure!(
            !wanted.contains(&kind.label()) || peers::installed(kind),
            "{} is not installed: run `{} install` (as root), or pass --no-peers",
            kind.label(),
            a.peers_dir.join(kind.script_name()).display()
        );
    }
    let (started_utc, stamp) = now_utc();
    let commit = git_commit();
    let mut results = Vec::new();
    let mut notes = Vec::new();
    if let Some(d) = &ctx.raft_log_dir {
        notes.push(format!(
            "the nodes kept their Raft logs under {} (raft_log_dir), not in their data folders",
            d.display()
        ));
    }
    for s in &wanted {
        if *s == "replay" {
            // Runs with the hot path, on its cluster.
            continue;
        }
        eprintln!("scenario {s} ...");
        let r = match *s {
            "crypto" => vec![scenarios::crypto(&ctx).await],
            "log" => vec![scenarios::log(&ctx).await],
            "etcd" => vec![scenarios::peer(&ctx, PeerKind::Etcd).await],
            "nats" => vec![scenarios::peer(&ctx, PeerKind::Nats).await],
            "hot-path" => match scenarios::hot_path(&ctx, wanted.contains(&"replay")).await {
                Ok(v) => v.into_iter().map(Ok).collect(),
                Err(e) => vec![Err(e)],
            },
            "relay" => vec![scenarios::relay(&ctx).await],
            other => anyhow::bail!("scenario {other} has no runner"),
        };
        for r in r {
            match r {
                Ok(r) => {
                    if let Some(p) = r.phases.first() {
                        eprintln!(
                            "  {} {}: {:.0} {}",
                            r.scenario, p.name, p.throughput_per_sec, r.unit
                        );
                    }
                    results.push(r)
                }
                Err(e) => {
                    eprintln!("  {s} failed: {e:#}");
                    notes.push(format!("scenario {s} failed: {e:#}"));
                }
            }
        }
    }
    let run = Run {
        format_version: report::FORMAT_VERSION,
        started_utc,
        git_commit: commit.clone(),
        command_line: std::env::args().collect::<Vec<_>>().join(" "),
        smoke,
        settings: Settings {
            duration_secs: ctx.duration.as_secs_f64(),
            warmup_secs: ctx.warmup.as_secs_f64(),
            payload_bytes: ctx.payload_bytes,
            clients: ctx.clients,
            connections: ctx.connections,
            nodes: ctx.nodes,
        },
        machine: machine(),
        ratios: ratios(&results),
        results,
        notes,
    };
    let out = match &a.out {
        Some(o) => o.clone(),
        // Outside the work folder (removed at the end), overwritten by the next smoke run.
        None if smoke => std::env::temp_dir().join("sealpost-bench-smoke"),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("results")
            .join(format!("{stamp}-{}", commit.get(..7).unwrap_or("unknown"))),
    };
    let files = report::write_all(&run, &out)?;
    println!("{}", report::markdown(&run));
    for f in &files {
        eprintln!("wrote {}", f.display());
    }
    let mut problems: Vec<String> = run
        .notes
        .iter()
        .filter(|n| n.starts_with("scenario "))
        .cloned()
        .collect();
    if smoke {
        problems.extend(smoke_problems(&wanted, &run.results));
    }
    if !problems.is_empty() {
        if a.work_dir.is_none() && smoke {
            // Keep the nodes' logs of a failed smoke run for whoever reads the failure.
            let kept = tmp.keep();
            eprintln!("the run's folder (node logs) is kept at {}", kept.display());
        }
        anyhow::bail!(
            "the benchmark run has problems:\n  {}",
            problems.join("\n  ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Latency, LoopKind, Phase, ProcessStats};

    fn phase(name: &str, kind: LoopKind, rate: f64, p99: Option<f64>) -> Phase {
        Phase {
            name: name.into(),
            loop_kind: kind,
            clients: None,
            offered_per_sec: None,
            completed: (rate * 10.0) as u64,
            errors: 0,
            secs: 10.0,
            throughput_per_sec: rate,
            latency: p99.map(|p| Latency {
                p50_ms: p / 2.0,
                p90_ms: p / 1.5,
                p99_ms: p,
                p999_ms: p,
                max_ms: p * 2.0,
                mean_ms: p / 2.0,
                count: (rate * 10.0) as u64,
                curve: Vec::new(),
            }),
            timeline: Vec::new(),
            from_unix_ms: None,
        }
    }

    fn result(scenario: &str, phases: Vec<Phase>) -> ScenarioResult {
        ScenarioResult {
            scenario: scenario.into(),
            system: "s".into(),
            unit: "u".into(),
            durability: "d".into(),
            phases,
            processes: vec![ProcessStats {
                name: "p".into(),
                pid: 1,
                cpu_secs: 1.0,
                cpu_cores_avg: 0.1,
                peak_rss_mib: 10.0,
            }],
            notes: Vec::new(),
        }
    }

    fn sample() -> Vec<ScenarioResult> {
        vec![
            result("crypto", vec![phase("run", LoopKind::Single, 6000.0, None)]),
            result(
                "log",
                vec![
                    phase("max", LoopKind::Closed, 20_000.0, Some(30.0)),
                    phase("half", LoopKind::Open, 10_000.0, Some(8.0)),
                ],
            ),
            result(
                "etcd",
                vec![phase("max", LoopKind::Closed, 4_000.0, Some(50.0))],
            ),
            result(
                "nats",
                vec![phase("max", LoopKind::Closed, 40_000.0, Some(5.0))],
            ),
            result(
                "hot-path",
                vec![
                    phase("max", LoopKind::Closed, 2_400.0, Some(100.0)),
                    phase("half", LoopKind::Open, 1_200.0, Some(40.0)),
                ],
            ),
            result(
                "replay",
                vec![phase("run", LoopKind::Single, 400_000.0, None)],
            ),
        ]
    }

    #[test]
    fn ratios_compare_within_the_run_and_judge_targets() {
        let r = ratios(&sample());
        let get = |n: &str| r.iter().find(|x| x.name.starts_with(n)).expect(n);
        let etcd = get("log / etcd");
        assert!((etcd.value - 5.0).abs() < 1e-9);
        assert_eq!(etcd.met, Some(false));
        let nats = get("log / nats");
        assert!((nats.value - 0.5).abs() < 1e-9);
        let hot = get("hot-path / crypto");
        assert!((hot.value - 0.4).abs() < 1e-9);
        assert_eq!(hot.met, Some(false));
        let p99 = get("hot-path: p99");
        assert_eq!((p99.value, p99.met), (40.0, Some(false)));
        // The log's p99 is reported without a target.
        assert_eq!(get("log: p99").met, None);
    }

    #[test]
    fn smoke_accepts_sane_numbers_and_names_what_is_wrong() {
        let wanted = ["crypto", "log", "etcd", "nats", "hot-path", "replay"];
        let good = sample();
        assert_eq!(smoke_problems(&wanted, &good), Vec::<String>::new());

        let mut missing = good.clone();
        missing.retain(|r| r.scenario != "nats");
        assert!(
            smoke_problems(&wanted, &missing)
                .iter()
                .any(|p| p.contains("nats produced no result"))
        );

        let mut idle = good.clone();
        idle[1].phases[0].completed = 0;
        idle[1].phases[0].throughput_per_sec = 0.0;
        assert!(
            smoke_problems(&wanted, &idle)
                .iter()
                .any(|p| p.starts_with("log / max: nothing completed"))
        );

        let mut no_latency = good.clone();
        no_latency[4].phases[1].latency = None;
        assert!(
            smoke_problems(&wanted, &no_latency)
                .iter()
                .any(|p| p.contains("hot-path / half: no latencies"))
        );

        let mut short_replay = good;
        short_replay[5].phases[0].completed = 10;
        assert!(
            smoke_problems(&wanted, &short_replay)
                .iter()
                .any(|p| p.starts_with("replay read 10 records"))
        );
    }

    #[test]
    fn the_replay_brings_the_hot_path_it_reads() {
        let mut a = args(&["replay"]);
        assert_eq!(selected(&a).expect("known"), vec!["hot-path", "replay"]);
        a.only = vec!["etcd".into(), "log".into()];
        a.no_peers = true;
        assert_eq!(selected(&a).expect("known"), vec!["log"]);
    }

    fn args(only: &[&str]) -> SuiteArgs {
        SuiteArgs {
            smoke: false,
            only: only.iter().map(|s| s.to_string()).collect(),
            no_peers: false,
            duration_secs: None,
            warmup_secs: None,
            clients: None,
            connections: None,
            payload_bytes: 4096,
            nodes: 3,
            rate: None,
            ceiling_secs: None,
            out: None,
            work_dir: None,
            raft_log_dir: None,
            sealpost_bin: None,
            peers_dir: PathBuf::from("."),
        }
    }

    #[test]
    fn unknown_scenarios_are_named() {
        let e = selected(&args(&["lgo"]))
            .expect_err("unknown scenario")
            .to_string();
        assert!(e.contains("\"lgo\"") && e.contains("hot-path"), "{e}");
    }
}
