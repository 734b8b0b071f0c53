//! End-to-end tests of the replicated event log: three (and four) real nodes in this
//! process, each with its own RocksDB folders, talking gRPC over mutual TLS on loopback
//! ports chosen by the OS.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use sealpost_core::ids::HpiO;
use sealpost_proto::v1 as pb;
use sealpost_server::local::LocalCluster;

/// Writes through every node; the leader stops; a new leader is elected and writes go on;
/// the old leader restarts from its RocksDB folder on its old port and catches up; all
/// nodes end with identical chain heads and every write is readable everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_failover_restart_and_catch_up() {
    let (_dir, mut c) = cluster(3).await;
    let ids = c.node_ids();
    let mut serial = 1;
    for id in &ids {
        let cl = client(&c, *id).await;
        for _ in 0..10 {
            register(&cl, serial).await.expect("write through any node");
            serial += 1;
        }
    }
    let old_leader = c.wait_leader(WAIT).await.expect("leader");
    let old_addr = c.addrs()[&old_leader].clone();
    c.stop_node(old_leader).await.expect("stop leader");

    let survivors: Vec<u64> = ids.iter().copied().filter(|i| *i != old_leader).collect();
    let new_leader = c.wait_leader(WAIT).await.expect("a new leader is elected");
    assert_ne!(new_leader, old_leader);
    for id in &survivors {
        let cl = client(&c, *id).await;
        for _ in 0..10 {
            register_retrying(&cl, serial)
                .await
                .expect("writes continue");
            serial += 1;
        }
    }

    c.start_node(old_leader)
        .await
        .expect("old leader restarts from disk");
    assert_eq!(
        c.addrs()[&old_leader],
        old_addr,
        "the port is kept across restarts"
    );
    let (_, events, head) = converged(&c).await;
    assert_eq!(events, SETTLE_EVENTS + serial - 1);

    // Every organisation is on the restarted node, and its chain verifies.
    let cl = client(&c, old_leader).await;
    for s in 1..serial {
        let o = cl
            .directory()
            .get_organisation(pb::GetOrganisationRequest {
                hpio: HpiO::from_serial(s).to_string(),
                consistency: pb::Consistency::Local as i32,
            })
            .await
            .expect("present after catch-up")
            .into_inner();
        assert_eq!(o.name, format!("Clinic number {s}"));
    }
    let v = cl
        .admin()
        .verify_chain(pb::VerifyChainRequest {})
        .await
        .expect("verify")
        .into_inner();
    assert!(v.ok, "{}", v.problem);
    assert_eq!(v.events, SETTLE_EVENTS + serial - 1);
    assert_eq!(v.chain_head, hex::encode(head));
    c.stop_all().await;
}

/// A fourth node joins as a learner after the log was purged, catches up from a snapshot
/// larger than one gRPC message (streamed in several chunks and written to disk), is
/// promoted to voter; then a node is removed and writes go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn learner_joins_from_a_multi_chunk_snapshot_then_a_node_is_removed() {
    let (_dir, mut c) = cluster(3).await;
    let leader = c.wait_leader(WAIT).await.expect("leader");
    let cl = client(&c, leader).await;
    let total = 1200u64;
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..16u64 {
        let cl = cl.clone();
        tasks.spawn(async move {
            for i in 0..total / 16 {
                register(&cl, 1 + w * (total / 16) + i)
                    .await
                    .expect("write");
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("writer");
    }
    converged(&c).await;
    // Snapshot on every node, so the leader's log is purged behind the snapshot.
    for id in c.node_ids() {
        let snap = client(&c, id)
            .await
            .admin()
            .snapshot(pb::SnapshotRequest {})
            .await
            .expect("snapshot")
            .into_inner();
        assert!(snap.snapshot_index > 0);
    }
    let st = c
        .node(leader)
        .expect("leader")
        .raft
        .status()
        .expect("status");
    assert!(st.purged_index > 0, "the leader purged its log: {st:?}");
    let snapshot_bytes: u64 = std::fs::read_dir(c.dir.join(format!("node-{leader}/sm/snapshots")))
        .expect("snapshots")
        .filter_map(|e| e.ok())
        .map(|e| {
            sealpost_store::snapshot::list_files(&e.path())
                .expect("files")
                .iter()
                .map(|f| f.1)
                .sum::<u64>()
        })
        .max()
        .expect("a snapshot");
    assert!(
        snapshot_bytes > fast_opts().grpc_message_bytes_max as u64,
        "snapshot of {snapshot_bytes} bytes must exceed one gRPC message"
    );

    let (new_id, new_addr) = c.spawn_joiner().await.expect("new node starts");
    let add = |promote| pb::AddNodeRequest {
        id: new_id,
        addr: new_addr.clone(),
        promote,
    };
    // Added as a learner first; asking again with promotion (an operator's retry after a
    // lost answer) promotes it instead of failing, and asking a third time changes nothing.
    // Another address under a member's id is refused.
    cl.admin().add_node(add(false)).await.expect("add learner");
    let r = cl
        .admin()
        .add_node(add(true))
        .await
        .expect("the retry promotes")
        .into_inner();
    assert!(r.log_index > 0);
    let again = cl
        .admin()
        .add_node(add(true))
        .await
        .expect("a retry of a completed add succeeds")
        .into_inner();
    assert!(again.log_index >= r.log_index);
    let moved = cl
        .admin()
        .add_node(pb::AddNodeRequest {
            id: new_id,
            addr: "127.0.0.1:1".into(),
            promote: true,
        })
        .await
        .expect_err("another address under a member's id");
    assert_eq!(moved.code(), tonic::Code::FailedPrecondition, "{moved:?}");
    let (_, events, _) = converged(&c).await;
    assert_eq!(events, SETTLE_EVENTS + total);
    let joiner = c.node(new_id).expect("joiner");
    let counters = joiner.raft.snapshot_counters();
    assert!(counters.snapshots_installed.load(Ordering::Relaxed) >= 1);
    assert!(
        counters.chunks_received.load(Ordering::Relaxed) >= 2,
        "the snapshot came in several chunks"
    );
    let st = joiner.raft.status().expect("status");
    assert!(st.voter, "the learner was promoted");
    assert!(st.members.len() == 4);

    // Remove a follower that is not the leader, then write again.
    let victim = c
        .node_ids()
        .into_iter()
        .find(|id| *id != leader && *id != new_id)
        .expect("a follower");
    cl.admin()
        .remove_node(pb::RemoveNodeRequest { id: victim })
        .await
        .expect("remove node");
    c.discard_node(victim).await.expect("discard");
    register_retrying(&cl, total + 1)
        .await
        .expect("write after removal");
    let (_, events, _) = converged(&c).await;
    assert_eq!(events, SETTLE_EVENTS + total + 1);
    let members: BTreeSet<u64> = c
        .node(leader)
        .expect("leader")
        .raft
        .status()
        .expect("status")
        .members
        .keys()
        .copied()
        .collect();
    assert!(!members.contains(&victim));
    assert!(members.contains(&new_id));
    c.stop_all().await;
}

/// With 64 concurrent writers, the proposer coalesces commands: the log holds far fewer
/// entries than commands.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_are_batched_into_few_entries() {
    let (_dir, mut c) = cluster(3).await;
    let leader = c.wait_leader(WAIT).await.expect("leader");
    let before = c
        .node(leader)
        .expect("leader")
        .raft
        .status()
        .expect("status")
        .last_log_index;
    let writers = 64u64;
    let per_writer = 10u64;
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..writers {
        // Writers spread over all three nodes: followers forward their batches.
        let cl = client(&c, 1 + w % 3).await;
        tasks.spawn(async move {
            for i in 0..per_writer {
                register(&cl, 1 + w * per_writer + i).await.expect("write");
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("writer");
    }
    let after = c
        .node(leader)
        .expect("leader")
        .raft
        .status()
        .expect("status")
        .last_log_index;
    let entries = after - before;
    let commands = writers * per_writer;
    assert!(
        entries * 4 <= commands,
        "{commands} commands took {entries} log entries: batching is not working"
    );
    let (_, events, _) = converged(&c).await;
    assert_eq!(events, SETTLE_EVENTS + commands);
    c.stop_all().await;
}

/// A leader cut off from the others keeps believing it leads for a while, but refuses
/// linearizable reads; local reads still answer. After healing it rejoins and converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitioned_old_leader_refuses_linearizable_reads() {
    let (_dir, mut c) = cluster(3).await;
    let old = c.wait_leader(WAIT).await.expect("leader");
    let cl = client(&c, old).await;
    register(&cl, 1).await.expect("write");
    c.node(old).expect("node").raft.faults().isolate(true);

    let req = |consistency: pb::Consistency| pb::GetOrganisationRequest {
        hpio: HpiO::from_serial(1).to_string(),
        consistency: consistency as i32,
    };
    let err = cl
        .directory()
        .get_organisation(req(pb::Consistency::Linearizable))
        .await
        .expect_err("a partitioned old leader must refuse");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    let local = cl
        .directory()
        .get_organisation(req(pb::Consistency::Local))
        .await
        .expect("a local read answers from applied state");
    assert_eq!(local.into_inner().hpio, HpiO::from_serial(1).to_string());

    // The majority elects a new leader and serves linearizable reads.
    let other = c.node_ids().into_iter().find(|i| *i != old).expect("other");
    let cl2 = client(&c, other).await;
    register_retrying(&cl2, 2).await.expect("majority writes");
    cl2.directory()
        .get_organisation(req(pb::Consistency::Linearizable))
        .await
        .expect("majority serves linearizable reads");

    c.node(old).expect("node").raft.faults().isolate(false);
    let (_, events, _) = converged(&c).await;
    assert_eq!(events, SETTLE_EVENTS + 2);
    c.stop_all().await;
}

/// A leader whose rounds of leadership confirmation fall short (as when heartbeats miss
/// their deadline on a busy machine) serves a linearizable read by trying another round;
/// one whose every round falls short refuses with Unavailable and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_linearizable_read_tries_another_round_when_one_falls_short() {
    use sealpost_raft::node::READ_CONFIRM_ATTEMPTS_MAX;
    let (_dir, mut c) = cluster(3).await;
    let leader = c.wait_leader(WAIT).await.expect("leader");
    let cl = client(&c, leader).await;
    register(&cl, 1).await.expect("write");
    let faults = c.node(leader).expect("leader").raft.faults().clone();
    let read = || {
        let mut directory = cl.directory();
        async move {
            directory
                .get_organisation(pb::GetOrganisationRequest {
                    hpio: HpiO::from_serial(1).to_string(),
                    consistency: pb::Consistency::Linearizable as i32,
                })
                .await
        }
    };
    // Two rounds falling short in a row still end in an answer.
    faults.fail_read_confirmations(2);
    let got = read().await.expect("served after more rounds");
    assert_eq!(got.into_inner().hpio, HpiO::from_serial(1).to_string());
    faults.fail_read_confirmations(READ_CONFIRM_ATTEMPTS_MAX);
    let err = read().await.expect_err("every round fell short");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(
        err.message()
            .contains(&format!("after {READ_CONFIRM_ATTEMPTS_MAX} rounds")),
        "{}",
        err.message()
    );
    read().await.expect("served again once rounds succeed");
    c.stop_all().await;
}

/// Every acknowledged write survives a restart of the whole cluster from disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_cluster_restart_keeps_every_acknowledged_event() {
    let (dir, mut c) = cluster(3).await;
    let cl = client(&c, 1).await;
    let mut acked = Vec::new();
    for s in 1..=50 {
        register(&cl, s).await.expect("write");
        acked.push(s);
    }
    let (_, _, head) = converged(&c).await;
    c.stop_all().await;
    drop(c);

    let c = LocalCluster::open(&dir.path().join("prov-a"), "prov-a")
        .await
        .expect("reopen");
    c.wait_leader(WAIT).await.expect("leader after restart");
    let (_, events, head_after) = converged(&c).await;
    assert_eq!(events, SETTLE_EVENTS + acked.len() as u64);
    assert_eq!(head_after, head);
    let cl = client(&c, 2).await;
    for s in acked {
        cl.directory()
            .get_organisation(pb::GetOrganisationRequest {
                hpio: HpiO::from_serial(s).to_string(),
                consistency: pb::Consistency::Linearizable as i32,
            })
            .await
            .expect("acknowledged organisation survives");
    }
    let mut c = c;
    c.stop_all().await;
}

/// Asserts a registration is refused with `code` and a message naming each of `needles`.
async fn assert_refused(
    cl: &sealpost_client::Client,
    req: pb::RegisterOrganisationRequest,
    code: tonic::Code,
    needles: &[&str],
) {
    let e = cl
        .directory()
        .register_organisation(req)
        .await
        .expect_err("must be refused");
    assert_eq!(e.code(), code, "{}", e.message());
    for n in needles {
        assert!(
            e.message().contains(n),
            "{:?} does not name {n:?}",
            e.message()
        );
    }
}

/// Bad input over gRPC gets the right status naming the problem, and nothing is written:
/// no event and no view change on any node.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_is_refused_with_a_clear_status_and_writes_nothing() {
    let (_dir, mut c) = cluster(3).await;
    let cl = client(&c, 2).await;
    register(&cl, 1).await.expect("a good registration");
    let before = converged(&c).await;

    let mut bad_id = org_request(2);
    if let Some(o) = bad_id.organisation.as_mut() {
        o.hpio = "8003620000000000".into();
    }
    assert_refused(
        &cl,
        bad_id,
        tonic::Code::InvalidArgument,
        &["HPI-O", "check digit"],
    )
    .await;

    let mut long_name = org_request(3);
    if let Some(o) = long_name.organisation.as_mut() {
        o.name = "x".repeat(201);
    }
    assert_refused(
        &cl,
        long_name,
        tonic::Code::InvalidArgument,
        &["name", "200"],
    )
    .await;

    let mut short_key = org_request(4);
    if let Some(o) = short_key.organisation.as_mut() {
        o.keys.as_mut().expect("keys").signing.truncate(31);
    }
    assert_refused(
        &cl,
        short_key,
        tonic::Code::InvalidArgument,
        &["keys.signing"],
    )
    .await;

    let duplicate_id = HpiO::from_serial(1);
    assert_refused(
        &cl,
        org_request(1),
        tonic::Code::AlreadyExists,
        &[duplicate_id.as_str()],
    )
    .await;

    let unknown = HpiO::from_serial(999);
    let e = cl
        .directory()
        .publish_endpoint(pb::PublishEndpointRequest {
            id: format!("{unknown}/cardiology"),
            display_name: "Cardiology".into(),
            specialty: "Cardiology".into(),
            payload_types: vec!["REF^I12".into()],
        })
        .await
        .expect_err("unknown organisation");
    assert_eq!(e.code(), tonic::Code::NotFound);
    assert!(e.message().contains(unknown.as_str()), "{}", e.message());

    let e = cl
        .directory()
        .publish_endpoint(pb::PublishEndpointRequest {
            id: format!("{}/cardiology", HpiO::from_serial(1)),
            display_name: "Cardiology".into(),
            specialty: "Cardiology".into(),
            payload_types: vec!["REF^I99".into()],
        })
        .await
        .expect_err("unknown payload type");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("REF^I99"), "{}", e.message());

    let e = cl
        .directory()
        .get_organisation(pb::GetOrganisationRequest {
            hpio: unknown.to_string(),
            consistency: 0,
        })
        .await
        .expect_err("not registered");
    assert_eq!(e.code(), tonic::Code::NotFound);

    // Nothing was written: same event count and chain head everywhere, no view change.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = converged(&c).await;
    assert_eq!(after.1, before.1, "no event was written");
    assert_eq!(after.2, before.2, "the chain head did not move");
    for id in c.node_ids() {
        let view = c.node(id).expect("node").raft.view().clone();
        assert!(
            view.organisation(&HpiO::from_serial(2))
                .expect("read")
                .is_none()
        );
        assert!(
            view.organisation(&HpiO::from_serial(3))
                .expect("read")
                .is_none()
        );
        assert!(view.organisation(&unknown).expect("read").is_none());
    }
    c.stop_all().await;
}

/// Directory search by name words, identifier, specialty, location and payload type.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn directory_search_finds_endpoints_by_each_criterion() {
    let (_dir, mut c) = cluster(3).await;
    let cl = client(&c, 1).await;
    register(&cl, 1).await.expect("org");
    let org = HpiO::from_serial(1);
    let publish =
        |id: String, name: &str, specialty: &str, types: &[&str]| pb::PublishEndpointRequest {
            id,
            display_name: name.into(),
            specialty: specialty.into(),
            payload_types: types.iter().map(|s| s.to_string()).collect(),
        };
    let practitioner = sealpost_core::ids::HpiI::from_serial(77);
    cl.directory()
        .publish_endpoint(publish(
            format!("{org}/cardiology"),
            "Heart clinic",
            "Cardiology",
            &["REF^I12", "PDF"],
        ))
        .await
        .expect("publish");
    cl.directory()
        .publish_endpoint(publish(
            format!("{org}/{practitioner}"),
            "Dr Jane Smith",
            "Oncology",
            &["ORU^R01"],
        ))
        .await
        .expect("publish");
    let search = |text: &str, specialty: &str, state: &str, ptype: &str| pb::SearchRequest {
        text: text.into(),
        specialty: specialty.into(),
        state: state.into(),
        payload_type: ptype.into(),
        ..Default::default()
    };
    let count = |q: pb::SearchRequest| {
        let mut d = cl.directory();
        async move {
            d.search(q)
                .await
                .expect("search")
                .into_inner()
                .endpoints
                .len()
        }
    };
    let hits = cl
        .directory()
        .search(search("heart", "", "", ""))
        .await
        .expect("search")
        .into_inner();
    let ids: Vec<String> = hits.endpoints.into_iter().map(|e| e.id).collect();
    assert_eq!(ids, vec![format!("{org}/cardiology")]);
    // Each criterion on its own, then all together.
    assert_eq!(count(search("jan smi", "", "", "")).await, 1);
    assert_eq!(count(search(practitioner.as_str(), "", "", "")).await, 1);
    assert_eq!(count(search(org.as_str(), "", "", "")).await, 2);
    assert_eq!(count(search("", "oncology", "", "")).await, 1);
    assert_eq!(count(search("", "", "VIC", "")).await, 2);
    assert_eq!(count(search("", "", "NSW", "")).await, 0);
    assert_eq!(count(search("", "", "", "PDF")).await, 1);
    assert_eq!(
        count(search("clinic", "cardiology", "VIC", "REF^I12")).await,
        1
    );

    // Retired endpoints drop out of search unless asked for.
    cl.directory()
        .retire_endpoint(pb::RetireEndpointRequest {
            id: format!("{org}/cardiology"),
            reason: "service closed".into(),
        })
        .await
        .expect("retire");
    assert_eq!(count(search("heart", "", "", "")).await, 0);
    let mut q = search("heart", "", "", "");
    q.include_retired = true;
    let r = cl.directory().search(q).await.expect("search").into_inner();
    assert_eq!(r.endpoints.len(), 1);
    assert!(!r.endpoints[0].active);
    c.stop_all().await;
}

/// Copies a folder tree file by file (the image a crash leaves when the files are copied
/// while their databases are open and idle).
fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read dir") {
        let e = e.expect("entry");
        let target = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).expect("copy");
        }
    }
}

/// State-machine writes skip the WAL, so a crash loses whatever the node had applied since
/// its last flush. The crashed node comes back from that image, re-applies its own log
/// (and catches up on what it missed while down) and ends with the same events and chain
/// head as the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crashed_node_reapplies_its_log_and_converges() {
    let (dir, mut c) = cluster(3).await;
    let cl = client(&c, 1).await;
    for s in 1..=20 {
        register_retrying(&cl, s).await.expect("write");
    }
    converged(&c).await;
    // A snapshot is a checkpoint, which flushes node 3's state machine to disk.
    c.node(3)
        .expect("node 3")
        .raft
        .snapshot()
        .await
        .expect("snapshot");
    for s in 21..=30 {
        register_retrying(&cl, s).await.expect("write");
    }
    converged(&c).await;

    let node_dir = c.config(3).expect("node 3 config").data_dir.clone();
    let image = dir.path().join("node-3-crash-image");
    // A file-by-file copy of a running store is not one instant, as a crash is: RocksDB
    // may flush or compact meanwhile. The copy is checked on a second copy (opening it
    // writes to it) and taken again until it is a consistent image; the image itself is
    // never opened before node 3 starts on it.
    let mut kept = None;
    for _ in 0..5 {
        let _ = std::fs::remove_dir_all(&image);
        copy_tree(&node_dir, &image);
        let probe = dir.path().join("node-3-crash-probe");
        let _ = std::fs::remove_dir_all(&probe);
        copy_tree(&image, &probe);
        let opened = sealpost_store::StateMachine::open(&probe.join("sm"), false, false)
            .and_then(|sm| sm.view().status());
        if let Ok(status) = opened {
            kept = Some(status.event_count);
            break;
        }
    }
    c.stop_node(3).await.expect("stop node 3");
    let kept = kept.expect("a consistent crash image within five copies");
    // The image really lost the unflushed tail: recovery below has work to do.
    assert!(
        (20..30).contains(&kept),
        "the image should hold the 20 flushed events, not the 10 after them; it has {kept}"
    );
    // (Something may still write into a stopped node's folder for a moment after `stop`
    // returns, seen in CI as a removal failing on a new file: wait until the folder stops
    // changing, and retry the removal, both bounded.)
    let listing = |d: &std::path::Path| -> Vec<(std::path::PathBuf, u64)> {
        let mut out = Vec::new();
        let mut stack = vec![d.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                match e.metadata() {
                    Ok(m) if m.is_dir() => stack.push(e.path()),
                    Ok(m) => out.push((e.path(), m.len())),
                    Err(_) => {}
                }
            }
        }
        out.sort();
        out
    };
    let mut last = listing(&node_dir);
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = listing(&node_dir);
        if now == last {
            break;
        }
        last = now;
    }
    let mut removed = std::fs::remove_dir_all(&node_dir);
    for _ in 0..10 {
        if removed.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        removed = std::fs::remove_dir_all(&node_dir);
    }
    removed.expect("remove node 3's files");
    std::fs::rename(&image, &node_dir).expect("put the crash image in place");

    for s in 31..=35 {
        register_retrying(&cl, s)
            .await
            .expect("write while node 3 is down");
    }
    c.start_node(3)
        .await
        .expect("node 3 restarts from the crash image");
    let (_, events, _) = converged(&c).await;
    assert_eq!(events, SETTLE_EVENTS + 35);
    c.stop_all().await;
}

/// A node can keep its Raft log in a folder of its own (`raft_log_dir`): the log is written
/// there and nowhere in the data folder, survives a restart of the whole cluster, and a
/// node whose log folder is gone is refused under its old id rather than started empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_raft_log_kept_in_its_own_folder_survives_restarts_and_its_loss_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, logs) = (dir.path().join("prov-a"), dir.path().join("logs"));
    let api = sealpost_server::config::ApiLimits::default();
    let messaging = LocalCluster::fitting_messaging(&fast_opts(), &api);
    let mut laid = LocalCluster::lay_out(&data, "prov-a", 3, fast_opts(), api, messaging)
        .await
        .expect("lay out");
    laid.keep_raft_logs_under(&logs).expect("logs apart");
    drop(laid);

    let mut c = LocalCluster::open(&data, "prov-a").await.expect("start");
    c.wait_leader(WAIT).await.expect("a leader is elected");
    let (_, before, _) = converged(&c).await;
    let cl = client(&c, 1).await;
    for s in 1..=20 {
        register(&cl, s).await.expect("write");
    }
    let (_, events, head) = converged(&c).await;
    assert_eq!(events, before + 20);
    for id in 1..=3 {
        let own = logs.join("prov-a").join(format!("node-{id}"));
        assert!(
            own.join("raft-log").join("CURRENT").exists(),
            "node {id}'s log"
        );
        assert!(own.join(sealpost_server::node::NODE_ID_FILE).exists());
        let nd = data.join(format!("node-{id}"));
        assert!(
            !nd.join("raft-log").exists(),
            "node {id} wrote a log in its data folder"
        );
        assert!(nd.join("sm").exists());
    }
    c.stop_all().await;
    drop(c);

    let mut c = LocalCluster::open(&data, "prov-a").await.expect("restart");
    c.wait_leader(WAIT).await.expect("leader after restart");
    let (_, events_after, head_after) = converged(&c).await;
    assert_eq!((events_after, head_after), (events, head));

    c.stop_node(3).await.expect("stop node 3");
    std::fs::remove_dir_all(logs.join("prov-a").join("node-3")).expect("lose node 3's log");
    let e = c
        .start_node(3)
        .await
        .expect_err("a node without its log is refused");
    let msg = e.to_string();
    assert!(
        msg.contains("lost its data") && msg.contains("node-3"),
        "unclear refusal: {msg}"
    );
    c.stop_all().await;
}
