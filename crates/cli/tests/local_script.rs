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

/// The body of a plain HTTP/1.0 GET from a node's operations listener on loopback.
fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(addr).expect("connect to the listener");
    conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("timeout");
    write!(conn, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("request");
    let mut out = String::new();
    conn.read_to_string(&mut out).expect("response");
    out
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

    // Each node runs the one runtime thread its configuration asks for (`worker_threads`):
    // the three share this machine.
    for n in 1..=3 {
        let metrics = http_get(&format!("127.0.0.1:910{n}"), "/metrics");
        assert!(
            metrics.lines().any(|l| l == "sealpost_runtime_workers 1"),
            "node {n}: {}",
            metrics
                .lines()
                .filter(|l| l.contains("runtime_workers"))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }

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
