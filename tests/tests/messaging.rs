//! End-to-end tests of secure messaging inside one provider: three real nodes in this
//! process, clients with organisation certificates over mutual TLS, the delivery worker on
//! the leader, and the RocksDB stores inspected afterwards.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use sealpost_core::ids::HpiO;
use sealpost_proto::v1 as pb;
use sealpost_server::messaging::Tamper;

fn is_final(r: &pb::TrackReply) -> bool {
    r.message
        .as_ref()
        .is_some_and(|m| m.recipients.iter().all(|x| !x.outcome.is_empty()))
}

fn routed(endpoint: String) -> impl Fn(&pb::TrackReply) -> bool {
    move |r| recipient_state(r, &endpoint).0 == "routed"
}

/// The seed's flow on a 3-node cluster: a sender on one node sends, the leader's worker
/// opens and routes, the receiver fetches (through another node) exactly the bytes sent
/// and acknowledges, and track shows sent, decrypted, routed, fetched, acked in order with
/// one final outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn send_route_fetch_ack_track() {
    let (_dir, c) = messaging_cluster(3, messaging_opts()).await;
    let leader = c.wait_leader(WAIT).await.expect("leader");
    let follower = a_follower(&c, leader);
    let other = c
        .node_ids()
        .into_iter()
        .find(|i| *i != leader && *i != follower)
        .expect("another follower");
    let sender = org_client(&c, follower, SENDER).await;
    let lab = org_client(&c, other, LAB).await;
    let to = endpoint(LAB, "results");
    let payload: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut req = send_request(std::slice::from_ref(&to), &payload, "e2e-1");
    req.payload_type = "ORU^R01".into();
    req.patient_ihi = sealpost_core::ids::Ihi::from_serial(77).to_string();
    let sent = send_ok(&sender, req).await;
    assert!(!sent.duplicate);
    assert!(
        sent.message_id.starts_with("prov-a:"),
        "{}",
        sent.message_id
    );

    track_until(&sender, &sent.message_id, "routed", routed(to.clone())).await;
    let inbox = lab
        .messaging()
        .inbox(pb::InboxRequest::default())
        .await
        .expect("inbox")
        .into_inner();
    assert_eq!(inbox.items.len(), 1);
    assert_eq!(inbox.items[0].message_id, sent.message_id);

    let fetched = lab
        .messaging()
        .fetch(pb::FetchRequest {
            message_id: sent.message_id.clone(),
            recipient: String::new(),
        })
        .await
        .expect("fetch")
        .into_inner();
    assert_eq!(
        fetched.payload, payload,
        "fetch returns exactly the bytes sent"
    );
    assert_eq!(fetched.payload_type, "ORU^R01");
    assert_eq!(fetched.sender_org, HpiO::from_serial(SENDER).to_string());

    // The sender cannot read the receiver's copy, nor acknowledge for it.
    let err = sender
        .messaging()
        .fetch(pb::FetchRequest {
            message_id: sent.message_id.clone(),
            recipient: String::new(),
        })
        .await
        .expect_err("not the sender's to fetch");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");

    lab.messaging()
        .ack(pb::AckRequest {
            message_id: sent.message_id.clone(),
            recipient: String::new(),
            status: "accepted".into(),
            note: "filed".into(),
        })
        .await
        .expect("ack");
    let t = track_until(&sender, &sent.message_id, "acked", is_final).await;
    assert_eq!(
        timeline(&t),
        vec!["sent", "decrypted", "routed", "fetched", "acked"]
    );
    assert_eq!(
        recipient_state(&t, &to),
        ("acked".into(), "accepted".into())
    );
    let seqs: Vec<u64> = t.timeline.iter().map(|e| e.seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert!(t.timeline[0].actor.ends_with(&format!("@node-{follower}")));
    // The node that took the send opened it for the recipient at once: its verdict
    // committed in the same log entry as the send.
    assert_eq!(t.timeline[1].actor, format!("delivery@node-{follower}"));
    assert!(
        t.timeline[..3]
            .iter()
            .all(|e| e.log_index == t.timeline[0].log_index),
        "{:?}",
        t.timeline
    );

    // The acknowledged message leaves the inbox; the outbox shows its outcome.
    let inbox = lab
        .messaging()
        .inbox(pb::InboxRequest::default())
        .await
        .expect("inbox")
        .into_inner();
    assert!(inbox.items.is_empty());
    let out = outbox(&sender).await;
    assert_eq!(out.messages.len(), 1);
    assert_eq!(out.messages[0].recipients[0].outcome, "accepted");
    converged(&c).await;
    assert_views_rebuild(&c);
}

/// A cluster whose disks fill past the storage floor refuses new sends with
/// ResourceExhausted naming the floor, and writes nothing for them; a message it accepted
/// before is still answered on resend, fetched and acknowledged to one final outcome. With
/// room again, the refused send goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_the_storage_floor_new_sends_are_refused_and_accepted_ones_complete() {
    let (_dir, c) = messaging_cluster(3, messaging_opts()).await;
    let leader = c.wait_leader(WAIT).await.expect("leader");
    let follower = a_follower(&c, leader);
    let sender = org_client(&c, follower, SENDER).await;
    let lab = org_client(&c, leader, LAB).await;
    let to = endpoint(LAB, "results");
    let before = send_request(std::slice::from_ref(&to), b"before", "floor-1");
    let accepted = send_ok(&sender, before.clone()).await;
    track_until(&sender, &accepted.message_id, "routed", routed(to.clone())).await;

    let set_free = |free: Option<u64>| {
        for id in c.node_ids() {
            c.node(id)
                .expect("running")
                .floor
                .set_free_bytes_for_test(free);
        }
    };
    set_free(Some(1024));
    let after = send_request(std::slice::from_ref(&to), b"after", "floor-2");
    let err = sender
        .messaging()
        .send(after.clone())
        .await
        .expect_err("refused under the floor");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err}");
    assert!(
        err.message().contains("1024 bytes free")
            && err.message().contains("api.storage_free_bytes_min"),
        "{}",
        err.message()
    );
    assert_eq!(c.node(follower).expect("follower").floor.refused_total(), 1);
    // A resend of what was accepted writes nothing, so it is answered.
    let again = send_ok(&sender, before).await;
    assert!(again.duplicate);
    assert_eq!(again.message_id, accepted.message_id);
    // The accepted message is fetched and acknowledged.
    let fetched = lab
        .messaging()
        .fetch(pb::FetchRequest {
            message_id: accepted.message_id.clone(),
            recipient: String::new(),
        })
        .await
        .expect("fetch under the floor")
        .into_inner();
    assert_eq!(fetched.payload, b"before");
    lab.messaging()
        .ack(pb::AckRequest {
            message_id: accepted.message_id.clone(),
            recipient: String::new(),
            status: "accepted".into(),
            note: String::new(),
        })
        .await
        .expect("ack under the floor");
    track_until(&sender, &accepted.message_id, "acked", is_final).await;
    assert_eq!(
        outbox(&sender).await.messages.len(),
        1,
        "the refused send wrote nothing"
    );

    set_free(None);
    let sent = send_ok(&sender, after).await;
    assert!(!sent.duplicate);
    track_until(&sender, &sent.message_id, "routed", routed(to)).await;
    assert_eq!(outbox(&sender).await.messages.len(), 2);
}

/// Every file byte and every RocksDB key and value of every node, as one list of
/// (where, bytes) to search.
fn stored_blobs(node_dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![node_dir.to_path_buf()];
    let mut dbs = Vec::new();
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                if p.join("CURRENT").exists() {
                    dbs.push(p.clone());
                }
                stack.push(p);
            } else {
                out.push((
                    p.display().to_string(),
                    std::fs::read(&p).expect("read file"),
                ));
            }
        }
    }
    assert!(
        dbs.len() >= 3,
        "raft log, state machine and a snapshot: {dbs:?}"
    );
    for db in dbs {
        let n = sealpost_store::scan_all(&db, |cf, k, v| {
            let mut kv = k.to_vec();
            kv.extend_from_slice(v);
            out.push((format!("{} cf {cf}", db.display()), kv));
        })
        .expect("scan");
        assert!(n > 0, "{} holds records", db.display());
    }
    out
}

fn holds(blobs: &[(String, Vec<u8>)], marker: &[u8]) -> Vec<String> {
    blobs
        .iter()
        .filter(|(_, b)| b.windows(marker.len()).any(|w| w == marker))
        .map(|(w, _)| w.clone())
        .collect()
}

/// No stored value contains the plaintext. A payload carries a marker; after delivery,
/// fetch (which proves the marker went in) and a snapshot (so SST files exist), every
/// key and value of every column family of every node's RocksDB instances is scanned
/// through the RocksDB API, and every raw file (WAL, SST, snapshot, manifest) byte by byte.
/// The control: a directory entry carrying another marker is found by the same scan.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_plaintext_at_rest() {
    let (dir, mut c) = messaging_cluster(3, messaging_opts()).await;
    let marker = format!("PLAINTEXT-MARKER-{}", std::process::id());
    let control = format!("CONTROL-MARKER-{}", std::process::id());
    let sender = org_client(&c, 1, SENDER).await;
    let lab = org_client(&c, 2, LAB).await;
    let to = endpoint(LAB, "results");
    let mut ids = Vec::new();
    for i in 0..20 {
        let payload = format!("MSH|^~\\&|GP|{marker}|{i}|patient Jane Citizen\r").into_bytes();
        let r = send_ok(
            &sender,
            send_request(std::slice::from_ref(&to), &payload, &format!("p{i}")),
        )
        .await;
        ids.push((r.message_id, payload));
    }
    for (id, payload) in &ids {
        track_until(&sender, id, "routed", routed(to.clone())).await;
        let f = lab
            .messaging()
            .fetch(pb::FetchRequest {
                message_id: id.clone(),
                recipient: String::new(),
            })
            .await
            .expect("fetch")
            .into_inner();
        assert_eq!(&f.payload, payload);
    }
    // The control: plaintext directory data stored the same way.
    let admin = client(&c, 1).await;
    let mut req = org_request(99);
    if let Some(o) = req.organisation.as_mut() {
        o.name = format!("Clinic {control}");
    }
    admin
        .directory()
        .register_organisation(req)
        .await
        .expect("control organisation");
    converged(&c).await;
    for id in c.node_ids() {
        c.node(id)
            .expect("running")
            .raft
            .snapshot()
            .await
            .expect("snapshot flushes SST files");
    }
    c.stop_all().await;

    for id in c.node_ids() {
        let blobs = stored_blobs(&dir.path().join("prov-a").join(format!("node-{id}")));
        assert!(
            !holds(&blobs, control.as_bytes()).is_empty(),
            "node {id}: the scan must find the control marker"
        );
        let sst_hits = holds(&blobs, control.as_bytes())
            .into_iter()
            .filter(|w| w.contains(" cf "))
            .count();
        assert!(sst_hits > 0, "node {id}: the RocksDB scan sees the control");
        let leaks = holds(&blobs, marker.as_bytes());
        assert!(
            leaks.is_empty(),
            "node {id}: plaintext found in {} places, among them {:?}",
            leaks.len(),
            &leaks[..leaks.len().min(5)]
        );
        let names = holds(&blobs, b"Jane Citizen");
        assert!(
            names.is_empty(),
            "node {id}: a patient name found in {names:?}"
        );
    }
}

/// A flipped byte in the ciphertext or the signature, injected after sealing, ends in
/// `Failed` with the reason, never `Routed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tampered_envelopes_fail() {
    let (_dir, c) = messaging_cluster(3, messaging_opts()).await;
    let sender = org_client(&c, 2, SENDER).await;
    let to = endpoint(LAB, "results");
    for (tamper, reason) in [
        (Tamper::Ciphertext, "decryption_failed"),
        (Tamper::Signature, "bad_signature"),
    ] {
        c.node(2)
            .expect("node 2")
            .faults
            .tamper_next_envelope(tamper);
        let r = send_ok(
            &sender,
            send_request(
                std::slice::from_ref(&to),
                b"tampered",
                &format!("{tamper:?}"),
            ),
        )
        .await;
        let t = track_until(&sender, &r.message_id, "a final outcome", is_final).await;
        assert_eq!(recipient_state(&t, &to), ("failed".into(), reason.into()));
        assert_eq!(timeline(&t), vec!["sent", "failed"], "never routed");
    }
    let lab = org_client(&c, 3, LAB).await;
    let inbox = lab
        .messaging()
        .inbox(pb::InboxRequest::default())
        .await
        .expect("inbox")
        .into_inner();
    assert!(inbox.items.is_empty());
}

/// A delivery that fails locally (a read error, a key that does not unwrap) proposes
/// nothing: the worker tries again on a later tick and the message is routed exactly once,
/// never failed for a fault of the provider's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_local_delivery_fault_is_retried_and_routes_once() {
    let (_dir, c) = messaging_cluster(3, messaging_opts()).await;
    let sender = org_client(&c, 2, SENDER).await;
    let to = endpoint(LAB, "results");
    let faults_per_node = 3;
    for id in 1..=3 {
        c.node(id)
            .expect("node")
            .faults
            .fail_next_deliveries(faults_per_node);
    }
    let r = send_ok(
        &sender,
        send_request(std::slice::from_ref(&to), b"retry me", "retry-1"),
    )
    .await;
    let t = track_until(&sender, &r.message_id, "routed", |t| {
        recipient_state(t, &to).0 == "routed"
    })
    .await;
    assert_eq!(timeline(&t), vec!["sent", "decrypted", "routed"]);
    let leader = c.wait_leader(WAIT).await.expect("leader");
    assert_eq!(
        c.node(leader)
            .expect("leader node")
            .faults
            .local_faults_left(),
        0,
        "the leader's worker met every injected fault before it routed"
    );
}

/// The next item of a follow stream, waiting at most [`WAIT`].
async fn next_item(stream: &mut tonic::Streaming<pb::InboxItem>) -> pb::InboxItem {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("the stream delivers without polling")
        .expect("the stream reports no error")
        .expect("the stream stays open")
}

/// The inbox lists urgent before routine (then oldest first); the follow stream delivers
/// new messages as they are routed, with no request in between, and resumes from a cursor.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn urgent_first_and_a_live_stream() {
    let (_dir, c) = messaging_cluster(3, messaging_opts()).await;
    let sender = org_client(&c, 1, SENDER).await;
    let lab = org_client(&c, 3, LAB).await;
    let to = endpoint(LAB, "results");
    let mut stream = lab
        .messaging()
        .follow(pb::FollowRequest {
            endpoint: to.clone(),
            after_seq: 0,
        })
        .await
        .expect("follow")
        .into_inner();
    let mut sent = Vec::new();
    for (i, priority) in ["routine", "routine", "urgent", "routine", "urgent"]
        .into_iter()
        .enumerate()
    {
        let mut req = send_request(std::slice::from_ref(&to), b"result", &format!("u{i}"));
        req.priority = priority.into();
        let r = send_ok(&sender, req).await;
        sent.push((r.message_id, priority));
    }
    let mut streamed = Vec::new();
    while streamed.len() < sent.len() {
        streamed.push(next_item(&mut stream).await);
    }
    let streamed_ids: BTreeSet<&str> = streamed.iter().map(|i| i.message_id.as_str()).collect();
    assert_eq!(streamed_ids.len(), sent.len());
    let inbox = lab
        .messaging()
        .inbox(pb::InboxRequest {
            endpoint: to.clone(),
            limit: 0,
        })
        .await
        .expect("inbox")
        .into_inner();
    let priorities: Vec<&str> = inbox.items.iter().map(|i| i.priority.as_str()).collect();
    assert_eq!(
        priorities,
        vec!["urgent", "urgent", "routine", "routine", "routine"]
    );
    let routine: Vec<u64> = inbox
        .items
        .iter()
        .filter(|i| i.priority == "routine")
        .map(|i| i.routed_seq)
        .collect();
    assert!(routine.windows(2).all(|w| w[0] < w[1]), "oldest first");
    // Resuming after the third item yields exactly the rest.
    let mut cursors: Vec<u64> = streamed.iter().map(|i| i.routed_seq).collect();
    cursors.sort();
    let mut resumed = lab
        .messaging()
        .follow(pb::FollowRequest {
            endpoint: String::new(),
            after_seq: cursors[2],
        })
        .await
        .expect("follow")
        .into_inner();
    for want in &cursors[3..] {
        assert_eq!(next_item(&mut resumed).await.routed_seq, *want);
    }
}

/// A resend that reaches a follower whose views do not hold the original yet (its
/// applies held) answers with the original once the follower has applied it, never with
/// AlreadyExists: the case of a client retrying at a node that restarted and is catching up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resend_to_a_lagging_follower_answers_with_the_original() {
    let (_dir, c) = messaging_cluster(3, messaging_opts()).await;
    let leader = c.wait_leader(WAIT).await.expect("leader");
    let follower = a_follower(&c, leader);
    let to = endpoint(LAB, "results");
    let at_leader = org_client(&c, leader, SENDER).await;
    let at_follower = org_client(&c, follower, SENDER).await;
    // A thread of its own holds the follower's applies until told to let go.
    let view = c.node(follower).expect("follower").raft.view().clone();
    let (held_tx, held_rx) = std::sync::mpsc::channel::<()>();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let _held = view.hold_applies_for_test();
        let _ = held_tx.send(());
        let _ = release_rx.recv_timeout(WAIT);
    });
    held_rx
        .recv_timeout(WAIT)
        .expect("the follower's applies are held");
    let first = send_ok(
        &at_leader,
        send_request(std::slice::from_ref(&to), b"once", "lagging-id"),
    )
    .await;
    let resend = tokio::spawn({
        let at_follower = at_follower.clone();
        let req = send_request(std::slice::from_ref(&to), b"once", "lagging-id");
        async move { at_follower.messaging().send(req).await }
    });
    // The follower cannot answer from its views while they lag: it waits.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !resend.is_finished(),
        "answered before the follower applied the original"
    );
    release_tx.send(()).expect("the holder waits");
    holder.join().expect("the holder thread");
    let again = tokio::time::timeout(WAIT, resend)
        .await
        .expect("the resend is answered once the follower applies")
        .expect("resend task")
        .expect("the resend answers with the original, not AlreadyExists")
        .into_inner();
    assert!(again.duplicate);
    assert_eq!(again.message_id, first.message_id);
    assert_eq!(again.seq, first.seq);
}

/// A resend with the same client message id returns the original answer and writes
/// nothing; and with the leader stopped in the middle of a burst of sends (clients retry
/// with their client message id), every acknowledged send is routed exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idempotent_resend_and_leader_stop_mid_burst() {
    let (_dir, mut c) = messaging_cluster(3, messaging_opts()).await;
    let to = endpoint(LAB, "results");
    let sender = org_client(&c, 1, SENDER).await;
    let first = send_ok(
        &sender,
        send_request(std::slice::from_ref(&to), b"once", "same-id"),
    )
    .await;
    let (_, events_before, _) = converged(&c).await;
    let again = sender
        .messaging()
        .send(send_request(std::slice::from_ref(&to), b"once", "same-id"))
        .await
        .expect("resend")
        .into_inner();
    assert!(again.duplicate);
    assert_eq!(again.message_id, first.message_id);
    assert_eq!(again.seq, first.seq);
    let (_, events_after, _) = converged(&c).await;
    // Delivery of the first message may add its own events; a resend adds no Sent.
    let t = track_until(&sender, &first.message_id, "routed", routed(to.clone())).await;
    assert_eq!(
        timeline(&t).iter().filter(|e| *e == "sent").count(),
        1,
        "{events_before} -> {events_after}"
    );

    // The burst: four senders, one per client connection, spread over the followers and
    // the leader; each retries a send until it is acknowledged.
    let leader = c.wait_leader(WAIT).await.expect("leader");
    let mut clients = Vec::new();
    for id in c.node_ids() {
        if id != leader {
            clients.push(Arc::new(org_client(&c, id, SENDER).await));
        }
    }
    let per_sender = 60;
    let acked_count = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (w, cl) in clients.iter().cycle().take(4).enumerate() {
        let cl = cl.clone();
        let to = to.clone();
        let acked_count = acked_count.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..per_sender {
                let cid = format!("burst-{w}-{i}");
                let req = send_request(std::slice::from_ref(&to), cid.as_bytes(), &cid);
                let mut attempts = 0;
                loop {
                    attempts += 1;
                    match cl.messaging().send(req.clone()).await {
                        Ok(r) => {
                            acked.push((cid.clone(), r.into_inner().message_id));
                            acked_count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            break;
                        }
                        Err(s) if attempts < 100 => {
                            assert!(sealpost_client::retry_may_help(&s), "{s}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Err(s) => panic!("send {cid} never acknowledged: {s}"),
                    }
                }
            }
            acked
        }));
    }
    // Stop the leader once a quarter of the burst is acknowledged: mid-burst for sure.
    let deadline = tokio::time::Instant::now() + WAIT;
    while acked_count.load(std::sync::atomic::Ordering::SeqCst) < per_sender as u64 {
        assert!(tokio::time::Instant::now() < deadline, "the burst stalled");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    c.stop_node(leader)
        .await
        .expect("stop the leader mid-burst");
    let at_stop = acked_count.load(std::sync::atomic::Ordering::SeqCst);
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.expect("sender task"));
    }
    assert_eq!(acked.len(), 4 * per_sender);
    assert!(
        at_stop < acked.len() as u64,
        "the leader stopped before the burst ended ({at_stop} of {})",
        acked.len()
    );
    let by_cid: BTreeMap<&str, &str> = acked
        .iter()
        .map(|(c, m)| (c.as_str(), m.as_str()))
        .collect();
    assert_eq!(by_cid.len(), acked.len(), "one message id per client id");
    c.start_node(leader).await.expect("old leader restarts");
    c.wait_leader(WAIT).await.expect("leader");
    let viewer = org_client(&c, leader, SENDER).await;
    for (_, id) in &acked {
        let t = track_until(&viewer, id, "routed", routed(to.clone())).await;
        let names = timeline(&t);
        assert_eq!(
            names.iter().filter(|e| *e == "routed").count(),
            1,
            "{names:?}"
        );
        assert_eq!(
            names.iter().filter(|e| *e == "sent").count(),
            1,
            "{names:?}"
        );
    }
    // Nothing else was sent: the outbox holds exactly the acknowledged messages.
    let out = viewer
        .messaging()
        .outbox(pb::OutboxRequest {
            limit: 1000,
            ..Default::default()
        })
        .await
        .expect("outbox")
        .into_inner();
    assert_eq!(out.messages.len(), acked.len() + 1);
    converged(&c).await;
}

/// Each deadline yields exactly one `Failed`: a message not routed by its deliver-by is
/// undeliverable; a routed message not acknowledged in the window is unacknowledged. A
/// message to two recipients gets two independent outcomes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deadlines_and_independent_recipients() {
    let opts = sealpost_server::config::MessagingOptions {
        ack_window_ms: 1_500,
        ..messaging_opts()
    };
    let (_dir, c) = messaging_cluster(3, opts).await;
    let sender = org_client(&c, 1, SENDER).await;
    let lab = org_client(&c, 2, LAB).await;
    let lab_ep = endpoint(LAB, "results");
    let hosp_ep = endpoint(HOSPITAL, "cardiology");

    // Two recipients: the lab acknowledges, the hospital never does.
    let r = send_ok(
        &sender,
        send_request(&[lab_ep.clone(), hosp_ep.clone()], b"two", "two"),
    )
    .await;
    track_until(
        &sender,
        &r.message_id,
        "routed to the lab",
        routed(lab_ep.clone()),
    )
    .await;
    lab.messaging()
        .ack(pb::AckRequest {
            message_id: r.message_id.clone(),
            status: "rejected".into(),
            note: "not our patient".into(),
            ..Default::default()
        })
        .await
        .expect("ack");
    let t = track_until(&sender, &r.message_id, "both final", is_final).await;
    assert_eq!(
        recipient_state(&t, &lab_ep),
        ("acked".into(), "rejected".into())
    );
    assert_eq!(
        recipient_state(&t, &hosp_ep),
        ("failed".into(), "unacknowledged".into())
    );
    let finals = |t: &pb::TrackReply, ep: &str| {
        t.timeline
            .iter()
            .filter(|e| e.recipient == ep && (e.event == "acked" || e.event == "failed"))
            .count()
    };
    assert_eq!(finals(&t, &lab_ep), 1);
    assert_eq!(finals(&t, &hosp_ep), 1);

    // Undeliverable: delivery paused everywhere, deliver-by in one second.
    for id in c.node_ids() {
        c.node(id)
            .expect("running")
            .faults
            .set_delivery_paused(true);
    }
    let mut req = send_request(std::slice::from_ref(&lab_ep), b"late", "late");
    req.deliver_within_ms = 1_000;
    let late = send_ok(&sender, req).await;
    let t = track_until(&sender, &late.message_id, "undeliverable", is_final).await;
    assert_eq!(
        recipient_state(&t, &lab_ep),
        ("failed".into(), "undeliverable".into())
    );
    for id in c.node_ids() {
        c.node(id)
            .expect("running")
            .faults
            .set_delivery_paused(false);
    }
    // Give the worker a few passes: it must not route or fail the message again.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let t = track_until(&sender, &late.message_id, "final", is_final).await;
    assert_eq!(timeline(&t), vec!["sent", "failed"]);
    // And an acknowledgement after the window is refused.
    let err = org_client(&c, 3, HOSPITAL)
        .await
        .messaging()
        .ack(pb::AckRequest {
            message_id: r.message_id.clone(),
            status: "accepted".into(),
            ..Default::default()
        })
        .await
        .expect_err("too late");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
}

/// Bad input gets a clear error naming the problem, and nothing is written: no event on
/// any node.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_sends_write_nothing() {
    let (_dir, c) = messaging_cluster(3, messaging_opts()).await;
    let sender = org_client(&c, 2, SENDER).await;
    let (_, before, head) = converged(&c).await;
    let ok_to = endpoint(LAB, "results");
    let unknown = endpoint(LAB, "nobody");
    let cases: Vec<(pb::SendRequest, tonic::Code, String)> = vec![
        (
            send_request(std::slice::from_ref(&unknown), b"x", "b1"),
            tonic::Code::NotFound,
            unknown.clone(),
        ),
        (
            {
                let mut r = send_request(std::slice::from_ref(&ok_to), b"x", "b2");
                r.payload_type = "PDF".into();
                r
            },
            tonic::Code::FailedPrecondition,
            "does not accept PDF".into(),
        ),
        (
            send_request(
                std::slice::from_ref(&ok_to),
                &vec![0u8; 1024 * 1024 + 1],
                "b3",
            ),
            tonic::Code::ResourceExhausted,
            "the limit is 1048576 bytes".into(),
        ),
        (
            {
                let mut r = send_request(std::slice::from_ref(&ok_to), b"x", "b4");
                r.patient_ihi = "8003601234567890".into();
                r
            },
            tonic::Code::InvalidArgument,
            "patient_ihi".into(),
        ),
        (
            {
                let mut r = send_request(std::slice::from_ref(&ok_to), b"x", "b5");
                r.from_org = HpiO::from_serial(LAB).to_string();
                r
            },
            tonic::Code::PermissionDenied,
            "not your organisation".into(),
        ),
    ];
    for (req, code, says) in cases {
        let err = sender.messaging().send(req).await.expect_err("refused");
        assert_eq!(err.code(), code, "{err}");
        assert!(err.message().contains(&says), "{err} should say {says}");
    }
    let (_, after, head_after) = converged(&c).await;
    assert_eq!((before, head), (after, head_after), "nothing was written");
}

/// Large messages reach a follower that was down while they were sent: catching up needs
/// many large entries, more than one gRPC message may carry, so the leader sends them in
/// smaller groups instead of retrying a message the follower refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn large_messages_replicate_to_a_lagging_follower() {
    let (_dir, mut c) = messaging_cluster(3, messaging_opts()).await;
    let leader = c.wait_leader(WAIT).await.expect("leader");
    let lagging = c
        .node_ids()
        .into_iter()
        .find(|i| *i != leader)
        .expect("a follower");
    c.stop_node(lagging).await.expect("stop a follower");
    let sender = org_client(&c, leader, SENDER).await;
    let to = endpoint(LAB, "results");
    let mut ids = Vec::new();
    for i in 0..12u8 {
        // Incompressible, ~900 KiB: twelve of them are more than the 8 MiB message limit.
        let payload: Vec<u8> = (0..900 * 1024u32)
            .map(|j| (j.wrapping_mul(2_654_435_761) >> 13) as u8 ^ i)
            .collect();
        let r = send_ok(
            &sender,
            send_request(std::slice::from_ref(&to), &payload, &format!("big-{i}")),
        )
        .await;
        ids.push(r.message_id);
    }
    c.start_node(lagging).await.expect("the follower restarts");
    converged(&c).await;
    let lab = org_client(&c, lagging, LAB).await;
    for id in &ids {
        track_until(&lab, id, "routed", routed(to.clone())).await;
    }
}
