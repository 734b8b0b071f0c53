//! Rolling upgrades: new event variants wait for a committed cluster version that every
//! member understands. With one node reporting an older build's version, the cluster
//! version stays where it is and no newer event enters the log; once that node is
//! upgraded (restarted reporting the build's version) the leader raises it, recording
//! every member's answer; after that, a node of the old build cannot join.

mod common;

use std::time::Duration;

use common::*;
use sealpost_core::event::{CLUSTER_VERSION_INITIAL, EVENT_VERSION_CURRENT, Event};
use sealpost_proto::v1 as pb;
use sealpost_server::config::ApiLimits;
use sealpost_server::local::LocalCluster;
use sealpost_server::upgrade::UPGRADE_CHECK_MS;

fn versions(c: &LocalCluster) -> Vec<u16> {
    c.running_ids()
        .into_iter()
        .map(|id| {
            c.node(id)
                .expect("node")
                .raft
                .status()
                .expect("status")
                .sm
                .cluster_version
        })
        .collect()
}

/// Every event of node `id`'s store, in order.
fn events(c: &LocalCluster, id: u64) -> Vec<Event> {
    let view = c.node(id).expect("node").raft.view().clone();
    let count = view.status().expect("status").event_count;
    (1..=count)
        .map(|seq| view.event(seq).expect("read").expect("dense").event)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cluster_version_waits_for_every_member_and_an_old_node_cannot_join() {
    const { assert!(EVENT_VERSION_CURRENT > CLUSTER_VERSION_INITIAL) };
    let old = CLUSTER_VERSION_INITIAL;
    let dir = tempfile::tempdir().expect("tmp");
    let root = dir.path().join("prov-a");
    let mut laid = LocalCluster::lay_out(
        &root,
        "prov-a",
        3,
        messaging_raft_opts(),
        ApiLimits::default(),
        messaging_opts(),
    )
    .await
    .expect("layout");
    laid.update_config(3, |cfg| cfg.advertise_event_version = Some(old))
        .expect("node 3 runs the old build");
    drop(laid);
    let mut c = LocalCluster::open(&root, "prov-a").await.expect("start");
    c.wait_leader(WAIT).await.expect("leader");
    register(&client(&c, 1).await, 1)
        .await
        .expect("a write at the old version");

    // Several checks of the upgrade worker pass: nothing moves while node 3 is old.
    tokio::time::sleep(Duration::from_millis(3 * UPGRADE_CHECK_MS + 500)).await;
    assert_eq!(versions(&c), vec![old; 3]);
    for id in c.node_ids() {
        let newer: Vec<_> = events(&c, id)
            .into_iter()
            .filter(|e| e.introduced_in() > old)
            .collect();
        assert!(newer.is_empty(), "node {id} holds newer events: {newer:?}");
    }

    // Node 3 is upgraded: restarted on the new build. The version rises everywhere.
    c.stop_node(3).await.expect("stop");
    c.update_config(3, |cfg| cfg.advertise_event_version = None)
        .expect("the new build");
    c.start_node(3).await.expect("start");
    let deadline = tokio::time::Instant::now() + WAIT;
    while versions(&c) != vec![EVENT_VERSION_CURRENT; 3] {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the version did not rise: {:?}",
            versions(&c)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let raised: Vec<_> = events(&c, 3)
        .into_iter()
        .filter_map(|e| match e {
            Event::ClusterVersionSet { version, members } => Some((version, members)),
            _ => None,
        })
        .collect();
    assert_eq!(
        raised,
        vec![(
            EVENT_VERSION_CURRENT,
            vec![
                (1, EVENT_VERSION_CURRENT),
                (2, EVENT_VERSION_CURRENT),
                (3, EVENT_VERSION_CURRENT)
            ]
        )],
        "raised once, with every member's answer"
    );

    // A node of the old build is refused as a member now.
    let peers = c
        .addrs()
        .into_iter()
        .map(|(id, addr)| sealpost_server::config::Member { id, addr })
        .collect();
    let addr = c.lay_out_joiner(4, peers).await.expect("joiner");
    c.update_config(4, |cfg| cfg.advertise_event_version = Some(old))
        .expect("old build");
    c.start_node(4).await.expect("start the joiner");
    let err = client(&c, 1)
        .await
        .admin()
        .add_node(pb::AddNodeRequest {
            id: 4,
            addr,
            promote: true,
        })
        .await
        .expect_err("an old node must not join");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
    assert!(err.message().contains("upgrade it first"), "{err}");
    let members = members_of(&c, 1);
    assert!(!members.contains_key(&4), "{members:?}");
}
