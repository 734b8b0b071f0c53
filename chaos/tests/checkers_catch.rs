//! The chaos checkers can fail, deterministically: each fixed scenario runs once against
//! `sealpost` (every checker must pass) and once against `sealpost-broken-node` told to
//! break the guarantee the scenario attacks (the acknowledged-writes checker must fail).
//! - acknowledging before commit is caught by isolating the leader through the proxy,
//!   writing to it, and killing it;
//! - skipping the fsync is caught by a power-loss crash on LazyFs (these two tests need
//!   /dev/fuse and root, as CI has; without them they fail, saying so).
//!
//! Each run is a real cluster of three node processes on loopback.

use std::path::{Path, PathBuf};
use std::process::Command;

const CHAOS: &str = env!("CARGO_BIN_EXE_sealpost-chaos");
const BROKEN: &str = env!("CARGO_BIN_EXE_sealpost-broken-node");

/// `sealpost`, built beside the chaos binary by `cargo build --workspace`.
fn sealpost() -> PathBuf {
    let p = Path::new(CHAOS).with_file_name("sealpost");
    assert!(
        p.is_file(),
        "{} is missing: build the workspace first (scripts/test does)",
        p.display()
    );
    p
}

/// One cluster at a time (under `cargo test` too, whose tests share this process; nextest
/// runs them one at a time through `.config/nextest.toml`).
static ONE_CLUSTER: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs one scenario with `bin` as the node binary, `breakage` as its switch; returns the
/// exit status's success and the JSON report.
fn run(scenario: &str, bin: &Path, breakage: Option<&str>) -> (bool, serde_json::Value) {
    let _one = ONE_CLUSTER.lock().unwrap_or_else(|p| p.into_inner());
    let work = tempfile::tempdir().expect("tmp");
    let report = work.path().join("report.json");
    let mut cmd = Command::new(CHAOS);
    cmd.args(["--scenario", scenario, "--seed", "1", "--work-dir"])
        .arg(work.path().join("run"))
        .arg("--out")
        .arg(&report)
        .arg("--sealpost-bin")
        .arg(bin)
        .env_remove("SEALPOST_BREAK");
    if let Some(b) = breakage {
        cmd.env("SEALPOST_BREAK", b);
    }
    let out = cmd.output().expect("sealpost-chaos runs");
    let text = std::fs::read_to_string(&report).unwrap_or_else(|e| {
        panic!(
            "no report from {scenario} ({e}); stderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (
        out.status.success(),
        serde_json::from_str(&text).expect("the report is JSON"),
    )
}

fn verdict<'a>(report: &'a serde_json::Value, checker: &str) -> &'a serde_json::Value {
    report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["checker"] == checker)
        .unwrap_or_else(|| panic!("no {checker} verdict in {report}"))
}

const ACKED: &str = "acknowledged-writes-on-every-replica";

#[test]
fn a_correct_isolated_leader_acknowledges_nothing_and_every_checker_passes() {
    let (ok, r) = run("isolated-leader-writes", &sealpost(), None);
    assert!(ok, "{r:#}");
    assert_eq!(r["ok"], true);
    assert_eq!(r["lost"], 0);
    assert_eq!(
        r["operations"]["sends_acknowledged"], 0,
        "a leader cut off from its quorum must not acknowledge: {r:#}"
    );
}

#[test]
fn acknowledging_before_commit_is_caught_by_isolating_and_killing_the_leader() {
    let (ok, r) = run(
        "isolated-leader-writes",
        Path::new(BROKEN),
        Some("ack-before-commit"),
    );
    assert!(!ok, "the run must fail: {r:#}");
    let acked = r["operations"]["sends_acknowledged"]
        .as_u64()
        .expect("count");
    assert!(acked > 0, "the broken leader acknowledged: {r:#}");
    let v = verdict(&r, ACKED);
    assert_eq!(v["ok"], false, "{v:#}");
    // Every acknowledged send is missing on every one of the three replicas.
    assert_eq!(v["violations"].as_u64(), Some(acked * 3), "{v:#}");
    assert_eq!(r["lost"], acked * 3);
}

#[test]
fn a_correct_cluster_keeps_every_acknowledged_write_through_power_loss() {
    let (ok, r) = run("power-loss-after-writes", &sealpost(), None);
    assert!(ok, "{r:#}");
    assert_eq!(r["lost"], 0);
    assert!(
        r["operations"]["sends_acknowledged"].as_u64() > Some(0),
        "{r:#}"
    );
    assert_eq!(r["power_losses"], 1);
}

#[test]
fn skipping_the_fsync_is_caught_by_power_loss() {
    let (ok, r) = run(
        "power-loss-after-writes",
        Path::new(BROKEN),
        Some("skip-fsync"),
    );
    assert!(!ok, "the run must fail: {r:#}");
    let acked = r["operations"]["sends_acknowledged"]
        .as_u64()
        .expect("count");
    assert!(acked > 0, "{r:#}");
    let v = verdict(&r, ACKED);
    assert_eq!(v["ok"], false, "{v:#}");
    assert!(v["violations"].as_u64() >= Some(acked), "{v:#}");
}
