//! A rolling restart under load: while a client keeps sending (reconnecting and retrying
//! with the same client message id when its node goes away), every node of the cluster is
//! stopped and started again, one at a time, each waiting for the restarted node to catch
//! up. No send fails beyond retries, every acknowledged send is on every node exactly once
//! (one message per client message id, and the sender's outbox holds exactly the
//! acknowledged ones), and the nodes converge on one chain.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use sealpost_client::{Client, Profile};
use sealpost_core::ids::HpiO;

/// Sends the load makes at most (it stops earlier, when the restarts are done).
const LOAD_SENDS_MAX: usize = 3_000;
/// Attempts one send may take (with a pause between), across reconnects.
const SEND_ATTEMPTS_MAX: u32 = 200;
const RETRY_PAUSE_MS: u64 = 50;

/// What the load saw: client message id → message id of each acknowledged send, retries
/// taken, and any send that failed for a reason a retry cannot cure.
#[derive(Default)]
struct LoadReport {
    acked: BTreeMap<String, String>,
    retries: u64,
    failures: Vec<String>,
}

async fn run_load(profile: Profile, lab: String, stop: Arc<AtomicBool>) -> LoadReport {
    let mut report = LoadReport::default();
    let mut client: Option<Client> = None;
    for i in 0..LOAD_SENDS_MAX {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let cid = format!("roll-{i}");
        let mut attempts = 0;
        loop {
            attempts += 1;
            if attempts > SEND_ATTEMPTS_MAX {
                report
                    .failures
                    .push(format!("{cid}: gave up after {SEND_ATTEMPTS_MAX} attempts"));
                break;
            }
            let c = match &client {
                Some(c) => c.clone(),
                None => match Client::connect(&profile).await {
                    Ok(c) => {
                        client = Some(c.clone());
                        c
                    }
                    Err(_) => {
                        report.retries += 1;
                        tokio::time::sleep(Duration::from_millis(RETRY_PAUSE_MS)).await;
                        continue;
                    }
                },
            };
            let req = send_request(std::slice::from_ref(&lab), b"rolling", &cid);
            match c.messaging().send(req).await {
                Ok(r) => {
                    report.acked.insert(cid, r.into_inner().message_id);
                    break;
                }
                Err(s) if sealpost_client::retry_may_help(&s) => {
                    // The node may be gone: connect again (to whichever node answers).
                    client = None;
                    report.retries += 1;
                    tokio::time::sleep(Duration::from_millis(RETRY_PAUSE_MS)).await;
                }
                Err(s) => {
                    report
                        .failures
                        .push(format!("{cid}: {:?} {}", s.code(), s.message()));
                    break;
                }
            }
        }
    }
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_under_load_loses_nothing_and_clients_only_retry() {
    let (_d, mut c) = messaging_cluster(3, messaging_opts()).await;
    let org = HpiO::from_serial(SENDER);
    let lab = endpoint(LAB, "results");
    let profile = Profile {
        endpoints: c.addrs().values().cloned().collect(),
        tls: c
            .client_identity_for_org("org-roll", Some(&org))
            .expect("client certificate"),
        organisation: Some(org.to_string()),
        default_endpoint: None,
        provider: Some("prov-a".into()),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(run_load(profile, lab.clone(), stop.clone()));

    for id in c.node_ids() {
        // Let the load run on the full cluster for a moment, then restart this node.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let target = progress(&c).values().map(|p| p.0).max().unwrap_or(0);
        c.stop_node(id).await.expect("stop");
        tokio::time::sleep(Duration::from_millis(300)).await;
        c.start_node(id).await.expect("start");
        // The restarted node catches up before the next one goes.
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let applied = progress(&c).get(&id).map(|p| p.0).unwrap_or(0);
            if applied >= target {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "node {id} did not catch up to {target} (at {applied})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        c.wait_leader(WAIT)
            .await
            .expect("a leader after restarting a node");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let report = load.await.expect("load task");

    assert!(
        report.failures.is_empty(),
        "sends failed beyond retries: {:?}",
        report.failures
    );
    assert!(
        report.acked.len() >= 10,
        "the load made progress: {}",
        report.acked.len()
    );
    eprintln!(
        "rolling restart: {} sends acknowledged, {} retries",
        report.acked.len(),
        report.retries
    );
    converged(&c).await;
    for id in c.node_ids() {
        let view = c.node(id).expect("node").raft.view().clone();
        for (cid, mid) in &report.acked {
            let found = view
                .message_for_client_id(&org, cid)
                .expect("read")
                .map(|m| m.to_string());
            assert_eq!(found.as_deref(), Some(mid.as_str()), "node {id}: {cid}");
        }
        // Exactly the acknowledged sends: a retry never made a second message.
        let outbox = view.outbox(&org, 0, LOAD_SENDS_MAX * 2).expect("outbox");
        assert_eq!(outbox.len(), report.acked.len(), "node {id}");
    }
}
