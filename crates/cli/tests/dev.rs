//! `sealpost dev` as a user runs it: a real process with two providers of three nodes
//! each, driven by the `sealpost` client commands through the generated `client.toml`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_sealpost");
/// Bound on every wait.
const WAIT: Duration = Duration::from_secs(60);

/// Kills the dev process when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The MLLP port `dev` printed for a demo profile.
fn mllp_port(lines: &[String], profile: &str) -> String {
    lines
        .iter()
        .find(|l| l.contains("HL7 v2 over MLLP for") && l.contains(profile))
        .and_then(|l| l.rsplit(':').next())
        .map(|p| p.trim().to_string())
        .unwrap_or_else(|| panic!("no MLLP listener printed for {profile}: {lines:?}"))
}

fn start_dev(data: &Path) -> (Running, Vec<String>) {
    let mut child = Command::new(BIN)
        .args(["dev", "--data"])
        .arg(data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sealpost dev");
    let stdout = child.stdout.take().expect("stdout");
    let running = Running(child);
    let mut lines = Vec::new();
    let deadline = Instant::now() + WAIT;
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("line");
        let done = line.starts_with("Stop with Ctrl-C");
        lines.push(line);
        if done {
            break;
        }
        assert!(Instant::now() < deadline, "dev did not start: {lines:?}");
    }
    assert!(
        lines.iter().any(|l| l.starts_with("Stop with")),
        "dev exited early: {lines:?}"
    );
    (running, lines)
}

fn sealpost(data: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .arg("--client-config")
        .arg(data.join("client.toml"))
        .output()
        .expect("run sealpost")
}

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "command failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json output")
}

fn status(data: &Path) -> serde_json::Value {
    json(&sealpost(data, &["cluster", "status", "--json"]))
}

fn wait_for(
    data: &Path,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = status(data);
        if pred(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what}: {s}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every node answers and names the same leader, which alone says it leads. "Some node
/// leads" is not yet a settled cluster: every initial member calls `initialize`, so a first
/// election can unseat its winner once, and a CLI call sent in between fails.
fn settled(s: &serde_json::Value) -> bool {
    let nodes = s["nodes"].as_array().cloned().unwrap_or_default();
    let Some(leader) = nodes.first().and_then(|n| n["leader_id"].as_u64()) else {
        return false;
    };
    leader != 0
        && nodes
            .iter()
            .all(|n| n["reachable"] != false && n["leader_id"].as_u64() == Some(leader))
        && nodes.iter().filter(|n| n["role"] == "leader").count() == 1
        && nodes
            .iter()
            .any(|n| n["role"] == "leader" && n["id"].as_u64() == Some(leader))
}

fn node_lines(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l.trim_start().starts_with("node "))
        .cloned()
        .collect()
}

#[test]
fn dev_cluster_serves_the_cli_stops_and_restarts_nodes_and_resumes_from_disk() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("data");
    let (dev, lines) = start_dev(&data);
    assert_eq!(
        node_lines(&lines).len(),
        6,
        "two providers of three: {lines:?}"
    );

    let s = wait_for(&data, "one leader every node names", settled);
    assert_eq!(s["nodes"].as_array().map(Vec::len), Some(3));

    // The demo directory is there, searchable by any profile.
    let hits = json(&sealpost(
        &data,
        &[
            "directory",
            "search",
            "cardiology",
            "--json",
            "--as",
            "citylab",
        ],
    ));
    assert!(hits.as_array().is_some_and(|a| !a.is_empty()), "{hits}");
    let by_state = json(&sealpost(
        &data,
        &["directory", "search", "--state", "NSW", "--json"],
    ));
    assert!(
        by_state.as_array().is_some_and(|a| a.len() == 1),
        "{by_state}"
    );

    // Bad input is refused with a message that names the problem.
    let bad = sealpost(
        &data,
        &[
            "directory",
            "register-org",
            "--hpio",
            "8003620000000000",
            "--name",
            "X",
            "--suburb",
            "Y",
            "--state",
            "VIC",
            "--postcode",
            "3000",
        ],
    );
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("check digit"), "{err}");

    // Stop a node: the others carry on; start it again: it catches up.
    let out = sealpost(&data, &["cluster", "stop-node", "--node", "1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(
        &data,
        "node 1 unreachable and a leader among the rest",
        |s| {
            let nodes = s["nodes"].as_array().cloned().unwrap_or_default();
            nodes
                .iter()
                .any(|n| n["id"] == 1 && n["reachable"] == false)
                && nodes.iter().any(|n| n["role"] == "leader")
        },
    );
    let reg = sealpost(
        &data,
        &[
            "directory",
            "register-org",
            "--hpio",
            "8003620000099999",
            "--name",
            "Bayside Clinic",
            "--suburb",
            "Sandringham",
            "--state",
            "VIC",
            "--postcode",
            "3191",
        ],
    );
    assert!(
        reg.status.success(),
        "{}",
        String::from_utf8_lossy(&reg.stderr)
    );
    let out = sealpost(&data, &["cluster", "start-node", "--node", "1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(&data, "all three nodes converge", |s| {
        let nodes = s["nodes"].as_array().cloned().unwrap_or_default();
        nodes.len() == 3
            && nodes
                .iter()
                .all(|n| n["reachable"] == true && n["chain_head"] == nodes[0]["chain_head"])
    });

    // A crash (SIGKILL) and a restart: same ports, same data.
    drop(dev);
    let resumed = Command::new(BIN)
        .args(["dev", "--exit-after-start", "--data"])
        .arg(&data)
        .output()
        .expect("resume");
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    let again: Vec<String> = String::from_utf8_lossy(&resumed.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(
        node_lines(&again),
        node_lines(&lines),
        "ports are kept across restarts"
    );

    // A folder of another shape is refused.
    let other = Command::new(BIN)
        .args(["dev", "--exit-after-start", "--nodes", "5", "--data"])
        .arg(&data)
        .output()
        .expect("run");
    assert!(!other.status.success());
    assert!(String::from_utf8_lossy(&other.stderr).contains("holds providers of 3 nodes"));
    let foreign = tmp.path().join("foreign");
    std::fs::create_dir_all(&foreign).expect("mkdir");
    std::fs::write(foreign.join("notes.txt"), "mine").expect("write");
    let refused = Command::new(BIN)
        .args(["dev", "--exit-after-start", "--data"])
        .arg(&foreign)
        .output()
        .expect("run");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("is not a sealpost dev folder"));
}

fn ok_json(data: &Path, args: &[&str]) -> serde_json::Value {
    json(&sealpost(data, args))
}

/// The README's messaging walk-through through the CLI: the GP (at provider A) sends an
/// urgent referral to the hospital's cardiology clinic (at provider B), the hospital sees
/// it in its inbox, fetches exactly the file sent, acknowledges it, and both tracks show
/// every step in order, each from its own provider's log.
#[test]
fn dev_walkthrough_sends_receives_acknowledges_and_tracks() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("data");
    let (_dev, lines) = start_dev(&data);
    wait_for(&data, "one leader every node names", settled);
    let referral = tmp.path().join("referral.hl7");
    let body = b"MSH|^~\\&|GP|NORTHSIDE|CARD|FITZROY|20261126||REF^I12|1|P|2.5\r";
    std::fs::write(&referral, body).expect("write referral");
    let to = "8003620000001037/cardiology";
    let file = referral.to_str().expect("utf-8 path");
    let send_args = [
        "send",
        "--as",
        "northside-gp",
        "--to",
        to,
        "--type",
        "REF^I12",
        "--file",
        file,
        "--priority",
        "urgent",
        "--patient",
        "8003600000000015",
        "--client-id",
        "referral-1",
        "--json",
    ];
    let sent = ok_json(&data, &send_args);
    let id = sent["message_id"].as_str().expect("message id").to_string();
    assert!(id.starts_with("prov-a:"), "{sent}");
    // The same client id again: the same message, nothing new sent.
    let again = ok_json(&data, &send_args);
    assert_eq!(again["message_id"], sent["message_id"]);
    assert_eq!(again["duplicate"], true);

    // Sending as another organisation than the profile's is refused before anything is sent.
    let wrong = sealpost(
        &data,
        &[
            "send",
            "--as",
            "citylab",
            "--from",
            "8003620000001011",
            "--to",
            to,
            "--type",
            "REF^I12",
            "--file",
            file,
        ],
    );
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("not this profile's organisation"));

    let deadline = Instant::now() + WAIT;
    let item = loop {
        let inbox = ok_json(&data, &["inbox", "--as", "fitzroy-hospital", "--json"]);
        if let Some(i) = inbox["items"].as_array().and_then(|a| a.first()).cloned() {
            break i;
        }
        assert!(Instant::now() < deadline, "never routed: {inbox}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(item["message_id"], id.as_str());
    assert_eq!(item["priority"], "urgent");

    let out_file = tmp.path().join("received.hl7");
    let out = out_file.to_str().expect("utf-8 path");
    ok_json(
        &data,
        &[
            "fetch",
            "--as",
            "fitzroy-hospital",
            &id,
            "--out",
            out,
            "--json",
        ],
    );
    assert_eq!(std::fs::read(&out_file).expect("received"), body);
    ok_json(
        &data,
        &[
            "ack",
            "--as",
            "fitzroy-hospital",
            &id,
            "--status",
            "accepted",
            "--note",
            "booked",
            "--json",
        ],
    );
    let events = |t: &serde_json::Value| -> Vec<String> {
        t["timeline"]
            .as_array()
            .expect("timeline")
            .iter()
            .filter_map(|e| e["event"].as_str().map(str::to_string))
            .collect()
    };
    // The hospital is at the other provider: its log has the receiving side...
    let at_b = ok_json(&data, &["track", "--as", "fitzroy-hospital", &id, "--json"]);
    assert_eq!(
        events(&at_b),
        ["received", "decrypted", "routed", "fetched", "acked"]
    );
    // ...and the GP's track shows the relay with the hospital provider's receipt, then
    // the acknowledgement once it has travelled back.
    let deadline = Instant::now() + WAIT;
    let t = loop {
        let t = ok_json(&data, &["track", "--as", "northside-gp", &id, "--json"]);
        if t["message"]["recipients"][0]["state"] == "acked" {
            break t;
        }
        assert!(Instant::now() < deadline, "the ack never came back: {t}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(events(&t), ["sent", "relayed", "acked"]);
    assert_eq!(t["message"]["recipients"][0]["outcome"], "accepted");
    assert!(
        t["timeline"][1]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("prov-b")),
        "{t}"
    );
    let outbox = ok_json(&data, &["outbox", "--as", "northside-gp", "--json"]);
    assert_eq!(outbox["messages"].as_array().map(Vec::len), Some(1));
    // The text form names the steps too.
    let text = sealpost(&data, &["track", "--as", "northside-gp", &id]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("acked") && text.contains("[accepted]"),
        "{text}"
    );

    // The GP's practice system speaks HL7 v2 over MLLP: python-hl7's mllp_send submits a
    // referral (the sample, addressed to the hospital's cardiology service) to the GP's
    // listener and gets AA; the hospital's inbox has it.
    let hl7: String = sealpost_hl7::samples::REF_I12
        .split('\r')
        .filter(|seg| !seg.starts_with("PRD|RT"))
        .map(|seg| format!("{seg}\r"))
        .collect::<String>()
        .replace("|||AL|NE|AUS", "|||||AUS");
    let hl7_file = tmp.path().join("referral-mllp.hl7");
    std::fs::write(&hl7_file, hl7).expect("write");
    let python = std::env::var("SEALPOST_PYTHON").unwrap_or_else(|_| "python3".into());
    let port = mllp_port(&lines, "northside-gp");
    let out = Command::new(python)
        .args(["-m", "hl7.client", "--file"])
        .arg(&hl7_file)
        .args(["--loose", "--port", &port, "127.0.0.1"])
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("MSA|AA|"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + WAIT;
    loop {
        let inbox = ok_json(&data, &["inbox", "--as", "fitzroy-hospital", "--json"]);
        if inbox["items"].as_array().is_some_and(|a| !a.is_empty()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the MLLP referral never arrived: {inbox}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// An auditor exports the event store and verifies it offline; any change to the export is
/// caught with the line it is on; an organisation's profile may not read the audit trail.
#[test]
fn audit_export_verifies_offline_and_catches_tampering() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("data");
    let (_dev, _) = start_dev(&data);
    wait_for(&data, "one leader every node names", settled);
    let out = tmp.path().join("export");
    let exported = ok_json(
        &data,
        &[
            "audit",
            "export",
            "--out",
            out.to_str().expect("utf-8"),
            "--json",
        ],
    );
    let count = exported["manifest"]["count"].as_u64().expect("count");
    assert!(count >= 10, "the demo directory alone is more: {exported}");
    let verified = ok_json(
        &data,
        &[
            "audit",
            "verify-export",
            out.to_str().expect("utf-8"),
            "--json",
        ],
    );
    assert_eq!(verified["count"], count);
    assert_eq!(verified["from_genesis"], true);

    let events = out.join("events.jsonl");
    let good = std::fs::read_to_string(&events).expect("events");
    let lines: Vec<&str> = good.lines().collect();
    let check = |text: String, expect: &str| {
        std::fs::write(&events, text).expect("write");
        let r = sealpost(
            &data,
            &["audit", "verify-export", out.to_str().expect("utf-8")],
        );
        let err = String::from_utf8_lossy(&r.stderr).to_string();
        assert!(!r.status.success(), "{expect}: tampering passed");
        assert!(err.contains(expect), "{expect}: {err}");
    };
    // A changed hex digit deep inside the third event's canonical bytes.
    let third: serde_json::Value = serde_json::from_str(lines[2]).expect("json");
    let canonical = third["canonical"].as_str().expect("canonical");
    let pos = canonical.len() / 2;
    let flipped_digit = if &canonical[pos..=pos] == "0" {
        "1"
    } else {
        "0"
    };
    let tampered = lines[2].replacen(
        canonical,
        &format!(
            "{}{}{}",
            &canonical[..pos],
            flipped_digit,
            &canonical[pos + 1..]
        ),
        1,
    );
    let mut v: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    v[2] = tampered;
    check(v.join("\n") + "\n", "line 3");
    // A readable field that disagrees with the hashed bytes.
    let mut v: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    let actor = third["actor"].as_str().expect("actor");
    v[2] = lines[2].replacen(
        &format!("\"actor\":\"{actor}\""),
        "\"actor\":\"someone else\"",
        1,
    );
    check(v.join("\n") + "\n", "actor");
    // A deleted line, and the last line dropped (caught by the manifest).
    let mut v: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    v.remove(1);
    check(v.join("\n") + "\n", "missing");
    let v: Vec<String> = lines[..lines.len() - 1]
        .iter()
        .map(|l| l.to_string())
        .collect();
    check(v.join("\n") + "\n", "manifest");

    // Replay as ATNA-shaped records: prov-a registered its two demo organisations.
    let replayed = sealpost(
        &data,
        &[
            "audit",
            "replay",
            "--kind",
            "organisation_registered",
            "--format",
            "jsonl",
        ],
    );
    assert!(
        replayed.status.success(),
        "{}",
        String::from_utf8_lossy(&replayed.stderr)
    );
    let records: Vec<serde_json::Value> = String::from_utf8_lossy(&replayed.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON record"))
        .collect();
    assert_eq!(records.len(), 2, "{records:?}");
    assert!(records.iter().all(|r| r["action"] == "C"
        && r["event_id"]["code"] == "organisation_registered"
        && r["outcome"] == 0
        && r["audit_source"]["provider"] == "prov-a"));

    // The audit trail is not for an organisation's profile.
    let denied = sealpost(
        &data,
        &[
            "audit",
            "export",
            "--as",
            "northside-gp",
            "--out",
            tmp.path().join("other").to_str().expect("utf-8"),
        ],
    );
    assert!(!denied.status.success());
    assert!(String::from_utf8_lossy(&denied.stderr).contains("operators and auditors"));
}

/// Fails with a message that contains `expect`.
fn fails_with(data: &Path, args: &[&str], expect: &str) {
    let r = sealpost(data, args);
    let err = String::from_utf8_lossy(&r.stderr).to_string();
    assert!(!r.status.success(), "{args:?} passed; expected {expect:?}");
    assert!(
        err.contains(expect),
        "{args:?}: expected {expect:?} in {err}"
    );
}

/// An auditor keeps signed checkpoints; inclusion and consistency proofs from the node
/// verify against them (and again offline); a forged proof, a forged or wrongly signed
/// checkpoint, or swapped checkpoints fail; the node's chain walk recomputes the Merkle
/// root; an export carries a checkpoint that holds its lines.
#[test]
fn audit_checkpoints_and_proofs_verify_and_forgeries_fail() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("data");
    let (_dev, _) = start_dev(&data);
    wait_for(&data, "one leader every node names", settled);
    let p = |name: &str| tmp.path().join(name).to_str().expect("utf-8").to_string();
    let (c1, c2) = (p("c1.json"), p("c2.json"));
    let first = ok_json(&data, &["audit", "checkpoint", "--out", &c1, "--json"]);
    let size1 = first["checkpoint"]["size"].as_u64().expect("size");
    let key = first["checkpoint"]["public_key"]
        .as_str()
        .expect("key")
        .to_string();
    // Reading the trail is recorded, so the log grows between the two checkpoints.
    ok_json(&data, &["audit", "verify", "--json"]);
    let replay = sealpost(&data, &["audit", "replay", "--format", "csv"]);
    assert!(replay.status.success());
    let second = ok_json(
        &data,
        &["audit", "checkpoint", "--out", &c2, "--key", &key, "--json"],
    );
    let size2 = second["checkpoint"]["size"].as_u64().expect("size");
    assert!(size2 > size1, "{first} {second}");

    // Inclusion: every event of the older checkpoint is in the newer one.
    let proof = p("inclusion.json");
    for seq in [1, size1 / 2 + 1, size1, size2] {
        let r = ok_json(
            &data,
            &[
                "audit",
                "prove",
                &seq.to_string(),
                "--checkpoint",
                &c2,
                "--out",
                &proof,
                "--json",
            ],
        );
        assert_eq!(
            (r["ok"].as_bool(), r["seq"].as_u64()),
            (Some(true), Some(seq)),
            "{r}"
        );
        ok_json(
            &data,
            &[
                "audit",
                "verify-proof",
                &proof,
                "--checkpoint",
                &c2,
                "--json",
            ],
        );
    }
    // The last proof was of event size2; against the older checkpoint it cannot hold.
    fails_with(
        &data,
        &["audit", "verify-proof", &proof, "--checkpoint", &c1],
        "events",
    );
    fails_with(
        &data,
        &[
            "audit",
            "prove",
            &(size2 + 50).to_string(),
            "--checkpoint",
            &c2,
        ],
        "seq",
    );
    // A forged path hash.
    let good = std::fs::read_to_string(&proof).expect("proof");
    let mut v: serde_json::Value = serde_json::from_str(&good).expect("json");
    let h = v["path"][0].as_str().expect("hash").to_string();
    let forged = format!("{}{}", if h.starts_with('0') { "1" } else { "0" }, &h[1..]);
    v["path"][0] = serde_json::Value::String(forged);
    std::fs::write(&proof, v.to_string()).expect("write");
    fails_with(
        &data,
        &["audit", "verify-proof", &proof, "--checkpoint", &c2],
        "root",
    );

    // Consistency: the older log is a prefix of the newer; swapped, it is refused.
    let cons = p("consistency.json");
    let r = ok_json(
        &data,
        &[
            "audit",
            "prove",
            "--checkpoint",
            &c2,
            "--older",
            &c1,
            "--out",
            &cons,
            "--json",
        ],
    );
    assert_eq!(
        (r["first"].as_u64(), r["second"].as_u64()),
        (Some(size1), Some(size2))
    );
    ok_json(
        &data,
        &[
            "audit",
            "verify-proof",
            &cons,
            "--checkpoint",
            &c2,
            "--older",
            &c1,
            "--json",
        ],
    );
    fails_with(
        &data,
        &[
            "audit",
            "verify-proof",
            &cons,
            "--checkpoint",
            &c1,
            "--older",
            &c2,
        ],
        "consistency",
    );
    // A checkpoint whose root was changed no longer carries a valid signature.
    let mut cp: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&c1).expect("c1")).expect("json");
    let root = cp["root"].as_str().expect("root").to_string();
    cp["root"] = serde_json::Value::String(format!(
        "{}{}",
        if root.starts_with('a') { "b" } else { "a" },
        &root[1..]
    ));
    let forged_cp = p("forged.json");
    std::fs::write(&forged_cp, cp.to_string()).expect("write");
    fails_with(
        &data,
        &[
            "audit",
            "verify-proof",
            &cons,
            "--checkpoint",
            &c2,
            "--older",
            &forged_cp,
        ],
        "signature",
    );
    // A key the auditor did not pin is refused.
    let other_key = "11".repeat(32);
    fails_with(
        &data,
        &[
            "audit",
            "prove",
            "1",
            "--checkpoint",
            &c2,
            "--key",
            &other_key,
        ],
        "key",
    );

    // Every view equals its rebuild from the event store.
    let rebuilt = ok_json(&data, &["admin", "rebuild-views", "--json"]);
    assert_eq!(rebuilt["all_equal"], true, "{rebuilt}");
    assert_eq!(rebuilt["repaired_keys"], 0);

    // The node's whole-store walk recomputes the root of the stored tree.
    let walked = ok_json(&data, &["audit", "verify", "--json"]);
    assert_eq!(walked["ok"], true);
    assert_eq!(walked["root"].as_str().map(str::len), Some(64), "{walked}");
    let part = ok_json(
        &data,
        &["audit", "verify", "--from", "2", "--to", "4", "--json"],
    );
    assert_eq!(part["count"], 3);

    // An export carries the checkpoint of its last event, checked offline.
    let out = p("export");
    ok_json(&data, &["audit", "export", "--out", &out, "--json"]);
    let verified = ok_json(
        &data,
        &["audit", "verify-export", &out, "--key", &key, "--json"],
    );
    assert_eq!(verified["checkpoint_key"].as_str(), Some(key.as_str()));
    assert!(verified["root"].is_string(), "{verified}");
    fails_with(
        &data,
        &["audit", "verify-export", &out, "--key", &other_key],
        "key",
    );
}

/// `sealpost certs` onboards an organisation from its CSR (the CA decides whom the
/// certificate names) and revokes certificates into the CRL the node configurations name.
#[test]
fn certs_sign_a_csr_and_revoke_into_the_crl() {
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("tls");
    let org = sealpost_core::ids::HpiO::from_serial(5);
    let key = rcgen::KeyPair::generate().expect("key");
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .expect("params")
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem");
    std::fs::create_dir_all(tmp.path()).expect("dir");
    let csr_path = tmp.path().join("clinic.csr");
    std::fs::write(&csr_path, csr).expect("write");
    let run = |args: &[&str]| {
        Command::new(BIN)
            .args([
                "certs",
                "--out",
                out.to_str().expect("utf-8"),
                "--provider",
                "p",
            ])
            .args(args)
            .output()
            .expect("run sealpost")
    };
    let signed = run(&[
        "--nodes",
        "1",
        "--clients",
        "ops=operator,aud=auditor",
        "--csr",
        csr_path.to_str().expect("utf-8"),
        "--csr-name",
        "clinic",
        "--csr-for",
        org.as_str(),
    ]);
    assert!(
        signed.status.success(),
        "{}",
        String::from_utf8_lossy(&signed.stderr)
    );
    let cert = std::fs::read_to_string(out.join("clients/clinic.pem")).expect("signed");
    let der = |pem: &str| {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        CertificateDer::from_pem_slice(pem.as_bytes())
            .expect("pem")
            .to_vec()
    };
    assert_eq!(
        sealpost_crypto::tls::principal(&der(&cert)),
        Some(sealpost_crypto::tls::Subject::Org(org))
    );
    let aud = std::fs::read_to_string(out.join("clients/aud.pem")).expect("auditor");
    assert_eq!(
        sealpost_crypto::tls::principal(&der(&aud)),
        Some(sealpost_crypto::tls::Subject::Role(
            sealpost_crypto::tls::Role::Auditor
        ))
    );
    let empty_crl = std::fs::read_to_string(out.join("ca.crl")).expect("an empty CRL");
    let revoked = run(&[
        "--revoke",
        out.join("clients/clinic.pem").to_str().expect("utf-8"),
    ]);
    assert!(
        revoked.status.success(),
        "{}",
        String::from_utf8_lossy(&revoked.stderr)
    );
    let serial = hex::encode(sealpost_crypto::tls::serial_of(&cert).expect("serial"));
    let listed = std::fs::read_to_string(out.join("revoked")).expect("list");
    assert_eq!(listed.lines().collect::<Vec<_>>(), vec![serial.as_str()]);
    let crl = std::fs::read_to_string(out.join("ca.crl")).expect("crl");
    assert!(crl.contains("BEGIN X509 CRL") && crl != empty_crl);
    // Bad input names the problem.
    let junk = tmp.path().join("junk.csr");
    std::fs::write(&junk, "not a request").expect("write");
    let refused = run(&[
        "--csr",
        junk.to_str().expect("utf-8"),
        "--csr-name",
        "x",
        "--csr-for",
        "superuser",
    ]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("neither a role"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    // A new KEK for a rotation: a file of its own, its id printed; never over a file.
    let new_kek = tmp.path().join("kek-2");
    let made = run(&["--new-kek", new_kek.to_str().expect("utf-8")]);
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let kek = sealpost_crypto::kek::Kek::load(&new_kek).expect("a KEK file");
    let old = sealpost_crypto::kek::Kek::load(&out.join("kek")).expect("the provider's KEK");
    assert_ne!(kek.id_hex(), old.id_hex());
    assert!(
        String::from_utf8_lossy(&made.stdout).contains(&format!("new KEK {}", kek.id_hex())),
        "{}",
        String::from_utf8_lossy(&made.stdout)
    );
    let twice = run(&["--new-kek", new_kek.to_str().expect("utf-8")]);
    assert!(!twice.status.success());
    assert!(
        String::from_utf8_lossy(&twice.stderr).contains("already exists"),
        "{}",
        String::from_utf8_lossy(&twice.stderr)
    );
    assert_eq!(
        sealpost_crypto::kek::Kek::load(&new_kek)
            .expect("still the KEK")
            .id_hex(),
        kek.id_hex(),
        "the file was not replaced"
    );
}

/// `directory import` loads organisations and endpoints from JSON Lines: existing entries
/// are skipped, bad lines are named by number and the rest is written; only operators
/// write the directory.
#[test]
fn directory_import_loads_skips_and_reports_and_only_operators_write() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("data");
    let (_dev, _lines) = start_dev(&data);
    wait_for(&data, "one leader every node names", settled);
    let new_org = sealpost_core::ids::HpiO::from_serial(4242);
    let file = tmp.path().join("directory.jsonl");
    std::fs::write(
        &file,
        format!(
            concat!(
                r#"{{"kind":"organisation","hpio":"{org}","name":"Bayside Clinic","suburb":"Sandringham","state":"VIC","postcode":"3191"}}"#,
                "\n",
                r#"{{"kind":"endpoint","id":"{org}/general-practice","name":"Bayside GP","specialty":"General practice","accepts":["ORU^R01"]}}"#,
                "\n",
                r#"{{"kind":"organisation","hpio":"8003620000001011","name":"Northside","suburb":"Carlton","state":"VIC","postcode":"3053"}}"#,
                "\n\n",
                r#"{{"kind":"practitioner"}}"#,
                "\n",
                r#"{{"kind":"endpoint","id":"8003620000099999/x","name":"X","specialty":"X","accepts":["TEXT"]}}"#,
                "\n",
            ),
            org = new_org
        ),
    )
    .expect("write");
    let path = file.to_str().expect("utf-8");
    let denied = sealpost(
        &data,
        &[
            "directory",
            "import",
            "--file",
            path,
            "--as",
            "northside-gp",
        ],
    );
    assert!(!denied.status.success());
    let out = sealpost(&data, &["directory", "import", "--file", path, "--json"]);
    assert!(!out.status.success(), "two lines fail");
    let report: serde_json::Value = serde_json::from_str(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .expect("a report"),
    )
    .expect("json");
    assert_eq!(report["organisations"], 1, "{report}");
    assert_eq!(report["endpoints"], 1, "{report}");
    assert_eq!(report["skipped"], 1, "{report}");
    assert_eq!(report["failed"], 2, "{report}");
    let failures = report["failures"].to_string();
    assert!(
        failures.contains("line 5") && failures.contains("line 6"),
        "{failures}"
    );
    let shown = ok_json(
        &data,
        &[
            "directory",
            "show",
            &format!("{new_org}/general-practice"),
            "--json",
        ],
    );
    assert!(shown.to_string().contains("Bayside GP"), "{shown}");
    // Again: everything is already there.
    let again = sealpost(&data, &["directory", "import", "--file", path, "--json"]);
    let report: serde_json::Value = serde_json::from_str(
        String::from_utf8_lossy(&again.stdout)
            .lines()
            .next()
            .expect("a report"),
    )
    .expect("json");
    assert_eq!(report["skipped"], 3, "{report}");
}
