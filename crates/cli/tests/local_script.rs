//! The `cluster/local` script starts three `sealpost node` processes that elect a leader
//! and serve the CLI, and stops them again.

use std::path::PathBuf;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_sealpost");

fn local_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../cluster/local")
}

fn script(arg: &str) -> Output {
    Command::new(local_dir().join("run.sh"))
        .arg(arg)
        .env("SEALPOST_BIN", BIN)
        .output()
        .expect("run cluster/local/run.sh")
}

/// Stops the processes and removes their folder however the test ends.
struct Cleanup;

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = script("stop");
        let _ = std::fs::remove_dir_all(local_dir().join("run"));
    }
}

#[test]
fn three_processes_elect_a_leader_and_serve_the_cli() {
    let _ = std::fs::remove_dir_all(local_dir().join("run"));
    let _cleanup = Cleanup;
    let up = script("start");
    assert!(
        up.status.success(),
        "start failed: {}{}",
        String::from_utf8_lossy(&up.stdout),
        String::from_utf8_lossy(&up.stderr)
    );
    let client = local_dir().join("run/client.toml");
    let status = Command::new(BIN)
        .args(["cluster", "status", "--json", "--client-config"])
        .arg(&client)
        .output()
        .expect("status");
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).expect("json");
    let nodes = v["nodes"].as_array().cloned().unwrap_or_default();
    assert_eq!(nodes.len(), 3, "{v}");
    assert_eq!(
        nodes.iter().filter(|n| n["role"] == "leader").count(),
        1,
        "{v}"
    );

    let reg = Command::new(BIN)
        .args([
            "directory",
            "register-org",
            "--hpio",
            "8003620000099999",
            "--name",
            "Local Clinic",
            "--suburb",
            "Geelong",
            "--state",
            "VIC",
            "--postcode",
            "3220",
            "--client-config",
        ])
        .arg(&client)
        .output()
        .expect("register");
    assert!(
        reg.status.success(),
        "{}",
        String::from_utf8_lossy(&reg.stderr)
    );
    let show = Command::new(BIN)
        .args([
            "directory",
            "show",
            "8003620000099999",
            "--json",
            "--client-config",
        ])
        .arg(&client)
        .output()
        .expect("show");
    assert!(
        show.status.success(),
        "{}",
        String::from_utf8_lossy(&show.stderr)
    );
    assert!(String::from_utf8_lossy(&show.stdout).contains("Local Clinic"));

    let down = script("stop");
    assert!(down.status.success());
    assert_eq!(
        String::from_utf8_lossy(&down.stdout)
            .matches("stopped")
            .count(),
        3
    );
}
