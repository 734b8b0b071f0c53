//! Backups end to end: an operator takes an online backup from a running cluster while
//! sends go on; a damaged or incomplete backup folder is refused by name; the backup is
//! restored into a new cluster (new nodes, new ports, new CA, the same provider and KEK),
//! which elects a leader among its own nodes, holds every backed-up event with the same
//! chain head, serves the old messages and takes new ones; a restore into a folder that
//! already holds stores, for another provider's configuration, or with a KEK other than
//! the backed-up provider's, is refused.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::*;
use sealpost_client::backup::{BACKUP_MANIFEST_FILE, verify_backup};
use sealpost_server::NodeConfig;
use sealpost_server::config::ApiLimits;
use sealpost_server::local::{LocalCluster, PROVIDER_KEY_FILE};

/// Sends the load task makes while the backup is taken, at most.
const LOAD_SENDS_MAX: usize = 400;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_online_backup_restores_into_a_new_cluster_with_every_event() {
    let (dir_a, mut a) = messaging_cluster(3, messaging_opts()).await;
    let gp = org_client(&a, 1, SENDER).await;
    let lab = endpoint(LAB, "results");
    let mut before = Vec::new();
    for i in 0..10 {
        let req = send_request(std::slice::from_ref(&lab), b"result", &format!("b-{i}"));
        before.push(send_ok(&gp, req).await.message_id);
    }

    // The backup is taken while another client keeps sending.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (stop, gp, lab) = (stop.clone(), gp.clone(), lab.clone());
        tokio::spawn(async move {
            let mut sent = 0;
            while !stop.load(Ordering::Relaxed) && sent < LOAD_SENDS_MAX {
                let req = send_request(std::slice::from_ref(&lab), b"x", &format!("l-{sent}"));
                send_ok(&gp, req).await;
                sent += 1;
            }
            sent
        })
    };
    let out = dir_a.path().join("backup");
    let manifest = client(&a, 2)
        .await
        .backup_to(&out)
        .await
        .expect("an online backup");
    stop.store(true, Ordering::Relaxed);
    let during = load.await.expect("load task");
    assert!(during > 0, "sends went on during the backup");
    assert_eq!(manifest.provider, "prov-a");
    assert_eq!(manifest.node, 2);
    assert!(manifest.event_count >= 20, "{manifest:?}");
    assert_eq!(verify_backup(&out).expect("the backup checks"), manifest);

    // A changed byte or a missing file is refused, naming it.
    let damaged = dir_a.path().join("damaged");
    std::fs::create_dir_all(&damaged).expect("mkdir");
    for e in std::fs::read_dir(&out).expect("ls") {
        let p = e.expect("entry").path();
        std::fs::copy(&p, damaged.join(p.file_name().expect("name"))).expect("copy");
    }
    let (victim, _) = manifest
        .files
        .iter()
        .max_by_key(|(_, (bytes, _))| *bytes)
        .expect("files");
    let mut bytes = std::fs::read(damaged.join(victim)).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(damaged.join(victim), &bytes).expect("write");
    let err = verify_backup(&damaged).expect_err("a changed byte");
    assert!(err.to_string().contains(victim.as_str()), "{err}");
    std::fs::remove_file(damaged.join(victim)).expect("rm");
    let err = verify_backup(&damaged).expect_err("a missing file");
    assert!(err.to_string().contains("missing"), "{err}");
    std::fs::remove_file(damaged.join(BACKUP_MANIFEST_FILE)).expect("rm");
    assert!(verify_backup(&damaged).is_err(), "no manifest, no backup");

    // The old cluster goes away; a new one is laid out with the provider's KEK and key.
    a.stop_all().await;
    let dir_b = tempfile::tempdir().expect("tmp");
    let b_root = dir_b.path().join("prov-a");
    let mut laid = LocalCluster::lay_out(
        &b_root,
        "prov-a",
        3,
        messaging_raft_opts(),
        ApiLimits::default(),
        messaging_opts(),
    )
    .await
    .expect("a new layout");
    // The new cluster keeps its Raft logs apart (raft_log_dir): the restore seeds them there.
    let b_logs = dir_b.path().join("logs");
    laid.keep_raft_logs_under(&b_logs).expect("logs apart");
    // With the new layout's own KEK, not the backed-up provider's, the restore is refused
    // before it writes anything, naming both KEK ids.
    let cfg1 = NodeConfig::load(&laid.config_path(1)).expect("config");
    let kek_id = |p: &std::path::Path| sealpost_crypto::kek::Kek::load(p).expect("a KEK").id_hex();
    let err = sealpost_server::node::restore_node(&cfg1, &out)
        .expect_err("another KEK")
        .to_string();
    assert!(
        err.contains("the configured KEK does not fit the backup"),
        "{err}"
    );
    assert!(
        err.contains(&format!("wrapped by KEK {}", kek_id(&a.dir.join("kek")))),
        "{err}"
    );
    assert!(
        err.contains(&format!("the loaded KEK is {}", kek_id(&cfg1.kek))),
        "{err}"
    );
    assert!(
        !cfg1.data_dir.join("sm").exists()
            && !b_logs
                .join("prov-a")
                .join("node-1")
                .join("raft-log")
                .exists(),
        "the refused restore left no stores"
    );
    for f in ["kek", PROVIDER_KEY_FILE] {
        std::fs::copy(a.dir.join(f), b_root.join(f)).expect("the provider's secrets");
    }
    for id in 1..=3 {
        let cfg = NodeConfig::load(&laid.config_path(id)).expect("config");
        let r = sealpost_server::node::restore_node(&cfg, &out).expect("restore");
        assert_eq!(r.event_count, manifest.event_count);
        assert_eq!(hex::encode(r.chain_head), manifest.chain_head);
        let log = b_logs.join("prov-a").join(format!("node-{id}"));
        assert!(
            log.join("raft-log").join("CURRENT").exists(),
            "node {id}'s log"
        );
        assert!(!cfg.data_dir.join("raft-log").exists());
        // Twice is refused: the folder now holds stores.
        let again = sealpost_server::node::restore_node(&cfg, &out).expect_err("twice");
        assert!(
            again.to_string().contains("restore into a new folder"),
            "{again}"
        );
    }
    drop(laid);
    let b = LocalCluster::open(&b_root, "prov-a")
        .await
        .expect("the restored cluster starts");
    b.wait_leader(WAIT)
        .await
        .expect("a leader among the new nodes");

    // Every node holds every backed-up event, with the same chain.
    for id in b.node_ids() {
        let view = b.node(id).expect("node").raft.view().clone();
        let last = view
            .event(manifest.event_count)
            .expect("read")
            .expect("the backup's last event");
        assert_eq!(hex::encode(last.hash), manifest.chain_head, "node {id}");
    }
    let members = members_of(&b, 1);
    assert_eq!(
        members.keys().copied().collect::<Vec<_>>(),
        vec![1, 2, 3],
        "the new cluster's own members"
    );
    let addrs = b.addrs();
    for (id, (addr, voter)) in &members {
        assert!(*voter);
        assert_eq!(&addrs[id], addr, "node {id} at its new address");
    }

    // The old messages are there, and new ones go through (the keys still unwrap).
    let gp_b = org_client(&b, 3, SENDER).await;
    for id in &before {
        let r = track(&gp_b, id).await;
        assert_eq!(recipient_state(&r, &lab).0, "routed", "{id}");
    }
    let new = send_ok(
        &gp_b,
        send_request(std::slice::from_ref(&lab), b"after", "after-restore"),
    )
    .await
    .message_id;
    track_until(&gp_b, &new, "routed after the restore", |r| {
        recipient_state(r, &lab).0 == "routed"
    })
    .await;
    converged(&b).await;

    // A configuration of another provider is refused by the CLI's check; here, the
    // store refuses a folder with stores, and a node outside initial_members.
    let mut outsider = NodeConfig::load(&b.config_path(1)).expect("config");
    outsider.id = 9;
    outsider.data_dir = dir_b.path().join("node-9");
    let err = sealpost_server::node::restore_node(&outsider, &out).expect_err("not a voter");
    assert!(
        err.to_string().contains("not among initial_members"),
        "{err}"
    );
}
