//! A KEK rotation end to end, as OPERATIONS.md gives it: every node is restarted in turn
//! with a new KEK as `kek` and the old one under `previous_keks` (a node given the new KEK
//! alone refuses to start, since its stored keys name the old one; `cluster status` shows
//! each node's KEKs); `sealpost admin
//! rewrap-keys` counts the key sets by KEK on a dry run, then wraps each again under the new
//! KEK, committed as `keys_provisioned` events, and a second run finds nothing left; every
//! node then runs without the old KEK, and messages sealed before the rotation (to the key
//! sets of before and after a key rotation) still open, while new ones go through.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use sealpost_core::event::Event;
use sealpost_core::ids::HpiO;
use sealpost_crypto::kek::Kek;
use sealpost_proto::v1 as pb;
use sealpost_server::local::LocalCluster;

async fn rewrap(c: &LocalCluster, node: u64, dry_run: bool) -> pb::RewrapKeysReply {
    client(c, node)
        .await
        .admin()
        .rewrap_keys(pb::RewrapKeysRequest { dry_run })
        .await
        .expect("the re-wrap")
        .into_inner()
}

/// Restarts every node in turn with `kek` current and `previous` held.
async fn restart_with(c: &mut LocalCluster, kek: &Path, previous: &[PathBuf]) {
    for id in c.node_ids() {
        if c.node(id).is_some() {
            c.stop_node(id).await.expect("stop");
        }
        c.update_config(id, |cfg| {
            cfg.kek = kek.to_path_buf();
            cfg.previous_keks = previous.to_vec();
        })
        .expect("configure");
        c.start_node(id).await.expect("start with the KEKs");
        c.wait_leader(WAIT).await.expect("a leader");
    }
}

/// Each member's KEK and previous KEKs, as `cluster status` reports them.
async fn keks_reported(c: &LocalCluster) -> Vec<(String, Vec<String>)> {
    let r = client(c, 1)
        .await
        .admin()
        .status(pb::StatusRequest { all_members: true })
        .await
        .expect("status")
        .into_inner();
    r.members
        .into_iter()
        .map(|n| (n.kek_id, n.previous_kek_ids))
        .collect()
}

fn keys_provisioned(c: &LocalCluster) -> usize {
    let view = c.node(1).expect("node 1").raft.view().clone();
    view.events(1, 100_000)
        .expect("events")
        .iter()
        .filter(|r| matches!(r.event, Event::KeysProvisioned { .. }))
        .count()
}

async fn fetch(c: &LocalCluster, serial: u64, id: &str) -> Vec<u8> {
    org_client(c, 2, serial)
        .await
        .messaging()
        .fetch(pb::FetchRequest {
            message_id: id.to_string(),
            recipient: String::new(),
        })
        .await
        .expect("fetch")
        .into_inner()
        .payload
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kek_rotation_rewraps_every_key_set_and_old_messages_open_without_the_old_kek() {
    let (dir, mut c) = messaging_cluster(3, messaging_opts()).await;
    let gp = org_client(&c, 1, SENDER).await;
    let lab = endpoint(LAB, "results");
    let route = |id: String| {
        let (gp, lab) = (gp.clone(), lab.clone());
        async move {
            track_until(&gp, &id, "routed", |r| {
                recipient_state(r, &lab).0 == "routed"
            })
            .await;
            id
        }
    };
    // Sealed to the lab's first key set, then to the one a provider rotation made.
    let first = route(
        send_ok(
            &gp,
            send_request(std::slice::from_ref(&lab), b"before both", "kek-1"),
        )
        .await
        .message_id,
    )
    .await;
    client(&c, 1)
        .await
        .directory()
        .rotate_keys(pb::RotateKeysRequest {
            hpio: HpiO::from_serial(LAB).to_string(),
            keys: None,
        })
        .await
        .expect("the provider rotates the lab's keys");
    let second = route(
        send_ok(
            &gp,
            send_request(
                std::slice::from_ref(&lab),
                b"after the key rotation",
                "kek-2",
            ),
        )
        .await
        .message_id,
    )
    .await;

    let old = c.config(1).expect("node 1").kek.clone();
    let old_id = Kek::load(&old).expect("the provider's KEK").id_hex();
    let new = dir.path().join("kek-2");
    let new_kek = Kek::generate().expect("a KEK");
    new_kek.save(&new).expect("save it");
    let new_id = new_kek.id_hex();

    // The new KEK alone does not open the stored keys: the node refuses to start.
    c.stop_node(3).await.expect("stop node 3");
    c.update_config(3, |cfg| cfg.kek = new.clone())
        .expect("configure");
    let err = c
        .start_node(3)
        .await
        .expect_err("the old KEK is missing")
        .to_string();
    assert!(err.contains(&format!("wrapped by KEK {old_id}")), "{err}");

    // Every node gets the new KEK and keeps the old one; node 3 starts again with both.
    restart_with(&mut c, &new, std::slice::from_ref(&old)).await;
    assert_eq!(
        keks_reported(&c).await,
        vec![(new_id.clone(), vec![old_id.clone()]); 3],
        "cluster status shows each node's KEKs"
    );

    // A dry run counts the key sets (three organisations, the lab twice) and changes nothing.
    let events_before = keys_provisioned(&c);
    let dry = rewrap(&c, 2, true).await;
    assert_eq!(dry.current_kek_id, new_id);
    assert_eq!(dry.key_sets, 4, "{dry:?}");
    assert_eq!(
        dry.before,
        vec![pb::KekKeySets {
            kek_id: old_id.clone(),
            key_sets: 4
        }]
    );
    assert_eq!(dry.rewrapped, 0);
    assert_eq!(keys_provisioned(&c), events_before);

    // The re-wrap commits one keys_provisioned event per key set; a second finds none.
    let done = rewrap(&c, 2, false).await;
    assert_eq!((done.key_sets, done.rewrapped), (4, 4), "{done:?}");
    assert_eq!(done.before, dry.before);
    converged(&c).await;
    assert_eq!(keys_provisioned(&c), events_before + 4);
    let again = rewrap(&c, 3, false).await;
    assert_eq!(again.rewrapped, 0);
    assert_eq!(
        again.before,
        vec![pb::KekKeySets {
            kek_id: new_id.clone(),
            key_sets: 4
        }]
    );

    // Without the old KEK anywhere: every node starts, the old messages open, and a new
    // message goes through.
    restart_with(&mut c, &new, &[]).await;
    assert_eq!(keks_reported(&c).await, vec![(new_id.clone(), vec![]); 3]);
    assert_eq!(fetch(&c, LAB, &first).await, b"before both");
    assert_eq!(fetch(&c, LAB, &second).await, b"after the key rotation");
    let gp = org_client(&c, 3, SENDER).await;
    let third = send_ok(
        &gp,
        send_request(
            std::slice::from_ref(&lab),
            b"after the KEK rotation",
            "kek-3",
        ),
    )
    .await
    .message_id;
    track_until(&gp, &third, "routed", |r| {
        recipient_state(r, &lab).0 == "routed"
    })
    .await;
    assert_eq!(fetch(&c, LAB, &third).await, b"after the KEK rotation");
    assert_views_rebuild(&c);
}
