//! Federation end to end: two providers, each a real 3-node cluster with its own CA, keys
//! and log, relaying over mutual TLS on loopback. Covers the cross-provider message flow,
//! a receiving provider that is down for a while, a leader change at the sender's provider
//! in the middle of relaying, untrusted peers, and deadlines (a lost receipt, a late
//! acknowledgement, a message that never arrived).

mod common;

use std::time::Duration;

use common::*;
use sealpost_client::Client;
use sealpost_core::ids::HpiO;
use sealpost_proto::v1 as pb;
use sealpost_server::config::{ApiLimits, MessagingOptions};
use sealpost_server::federation::RelayOptions;
use sealpost_server::local::LocalCluster;
use tempfile::TempDir;

const A: &str = "prov-a";
const B: &str = "prov-b";
/// At A: the sender (organisation 1) and a second local organisation (4).
const LOCAL_PEER_ORG: u64 = 4;

struct Federation {
    _dir: TempDir,
    a: LocalCluster,
    b: LocalCluster,
}

fn relay_opts() -> RelayOptions {
    RelayOptions {
        retry_min_ms: 50,
        retry_max_ms: 500,
        peer_timeout_ms: 3_000,
        directory_pull_ms: 100,
        ..RelayOptions::default()
    }
}

/// An organisation's serial and its services, each with the payload types it accepts.
type OrgSpec<'a> = (u64, Vec<(&'a str, Vec<&'a str>)>);

async fn provision(c: &LocalCluster, orgs: &[OrgSpec<'_>]) {
    let admin = client(c, 1).await;
    let mut d = admin.directory();
    for (serial, services) in orgs {
        let mut req = org_request(*serial);
        if let Some(o) = req.organisation.as_mut() {
            o.keys = None;
        }
        d.register_organisation(req).await.expect("provisioned");
        for (slug, types) in services {
            d.publish_endpoint(pb::PublishEndpointRequest {
                id: endpoint(*serial, slug),
                display_name: format!("{slug} desk"),
                specialty: "General".into(),
                payload_types: types.iter().map(|t| t.to_string()).collect(),
            })
            .await
            .expect("published");
        }
    }
}

/// Waits until `c` lists endpoint `ep` in its directory (imported from its peer).
async fn wait_endpoint(c: &LocalCluster, ep: &str) {
    let admin = client(c, 1).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let r = admin
            .directory()
            .get_endpoint(pb::GetEndpointRequest {
                id: ep.into(),
                ..Default::default()
            })
            .await;
        if r.is_ok() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{ep} never reached {}'s directory: {r:?}",
            c.provider
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Providers A (organisations 1 and 4) and B (organisation 2, the lab), each knowing the
/// other's directory.
async fn federation(at_a: MessagingOptions, at_b: MessagingOptions) -> Federation {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut clusters = LocalCluster::create_federation(
        dir.path(),
        &[(A.to_string(), at_a), (B.to_string(), at_b)],
        3,
        (messaging_raft_opts(), ApiLimits::default(), relay_opts()),
    )
    .await
    .expect("providers start");
    let b = clusters.pop().expect("b");
    let a = clusters.pop().expect("a");
    for c in [&a, &b] {
        c.wait_leader(WAIT).await.expect("a leader");
    }
    provision(
        &a,
        &[
            (SENDER, vec![("general-practice", vec!["TEXT"])]),
            (LOCAL_PEER_ORG, vec![("clinic", vec!["TEXT"])]),
        ],
    )
    .await;
    provision(
        &b,
        &[(LAB, vec![("results", vec!["TEXT"]), ("desk", vec!["TEXT"])])],
    )
    .await;
    wait_endpoint(&a, &endpoint(LAB, "results")).await;
    wait_endpoint(&a, &endpoint(LAB, "desk")).await;
    wait_endpoint(&b, &endpoint(SENDER, "general-practice")).await;
    Federation { _dir: dir, a, b }
}

fn send(to: &[String], payload: &[u8], cid: &str, within_ms: u64) -> pb::SendRequest {
    pb::SendRequest {
        deliver_within_ms: within_ms,
        ..send_request(to, payload, cid)
    }
}

async fn fetch_and_ack(lab: &Client, id: &str, recipient: &str) -> Vec<u8> {
    let got = lab
        .messaging()
        .fetch(pb::FetchRequest {
            message_id: id.into(),
            recipient: recipient.into(),
        })
        .await
        .expect("fetch at B")
        .into_inner();
    lab.messaging()
        .ack(pb::AckRequest {
            message_id: id.into(),
            recipient: recipient.into(),
            status: "accepted".into(),
            note: "filed".into(),
        })
        .await
        .expect("ack at B");
    got.payload
}

/// Sends, resending with the same client message id (so at most once) while a retry may
/// help: no leader at the provider, or a call cut off (bounded by [`WAIT`]).
async fn send_retrying(c: &Client, req: pb::SendRequest) -> pb::SendReply {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match c.messaging().send(req.clone()).await {
            Ok(r) => return r.into_inner(),
            Err(s) if sealpost_client::retry_may_help(&s) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "send never landed: {s:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(s) => panic!("send refused: {s:?}"),
        }
    }
}

fn count(r: &pb::TrackReply, event: &str) -> usize {
    r.timeline.iter().filter(|e| e.event == event).count()
}

fn finals(r: &pb::TrackReply, recipient: &str) -> usize {
    r.timeline
        .iter()
        .filter(|e| (e.event == "acked" || e.event == "failed") && e.recipient == recipient)
        .count()
}

/// An organisation at A sends to a practitioner's desk at B; B's receiver fetches and
/// acknowledges; A's track shows sent, relayed (with B's receipt) and acked, and B's log
/// shows received, decrypted, routed, fetched and acked. Neither provider can open the
/// copy sealed to the other's organisation.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_crosses_providers_and_its_acknowledgement_returns() {
    let mut f = federation(messaging_opts(), messaging_opts()).await;
    // A relays to B's first relay endpoint (node 1): make that node a follower, so the
    // receipts are built on a node that did not itself commit the message.
    if f.b.wait_leader(WAIT).await == Some(1) {
        f.b.stop_node(1).await.expect("stop B's node 1");
        f.b.wait_leader(WAIT).await.expect("a new leader at B");
        f.b.start_node(1).await.expect("start B's node 1");
    }
    assert_ne!(f.b.wait_leader(WAIT).await, Some(1));
    let gp = org_client(&f.a, 2, SENDER).await;
    let lab = org_client(&f.b, 3, LAB).await;
    let to_b = endpoint(LAB, "results");
    let to_a = endpoint(LOCAL_PEER_ORG, "clinic");
    let payload = b"ORU result for the referring GP".to_vec();
    let sent = send_ok(&gp, send(&[to_b.clone(), to_a.clone()], &payload, "x-1", 0)).await;

    let at_b = track_until(&lab, &sent.message_id, "routed at B", |r| {
        recipient_state(r, &to_b).0 == "routed"
    })
    .await;
    assert_eq!(
        at_b.message.as_ref().map(|m| m.recipients.len()),
        Some(1),
        "B tracks only the recipients it hosts"
    );
    assert_eq!(fetch_and_ack(&lab, &sent.message_id, &to_b).await, payload);

    let at_a = track_until(&gp, &sent.message_id, "acked at A", |r| {
        recipient_state(r, &to_b).0 == "acked" && recipient_state(r, &to_a).0 == "routed"
    })
    .await;
    assert_eq!(
        recipient_state(&at_a, &to_b),
        ("acked".to_string(), "accepted".to_string())
    );
    let relayed = at_a
        .timeline
        .iter()
        .find(|e| e.event == "relayed")
        .expect("a relayed event");
    assert!(
        relayed.detail.contains(B) && relayed.detail.contains("receipt"),
        "{relayed:?}"
    );
    let remote: Vec<String> = at_a
        .timeline
        .iter()
        .filter(|e| e.recipient == to_b || e.event == "relayed" || e.event == "sent")
        .map(|e| e.event.clone())
        .collect();
    assert_eq!(remote, ["sent", "relayed", "acked"]);
    let at_b = track_until(&lab, &sent.message_id, "acked at B", |r| {
        recipient_state(r, &to_b).0 == "acked"
    })
    .await;
    assert_eq!(
        timeline(&at_b),
        ["received", "decrypted", "routed", "fetched", "acked"]
    );

    // Each provider holds only its own organisations' private keys: A could never open
    // the lab's copy, nor B the clinic's, though both envelopes carry both copies.
    let lab_org = HpiO::from_serial(LAB);
    let clinic_org = HpiO::from_serial(LOCAL_PEER_ORG);
    for (c, foreign, own) in [(&f.a, &lab_org, &clinic_org), (&f.b, &clinic_org, &lab_org)] {
        let view = c.node(1).expect("node 1").raft.view();
        let key_id = |org: &HpiO| {
            view.organisation(org)
                .expect("read")
                .map(|o| o.spec.keys.key_id)
        };
        if let Some(k) = key_id(foreign) {
            assert_eq!(
                view.wrapped_keys(foreign, &k).expect("read"),
                None,
                "{} holds keys of {foreign}",
                c.provider
            );
        }
        let own_key = key_id(own).expect("own organisation");
        assert!(view.wrapped_keys(own, &own_key).expect("read").is_some());
    }
    // Every federation view is the fold of each provider's events.
    assert_views_rebuild(&f.a);
    assert_views_rebuild(&f.b);
}

/// Provider B is entirely down while A's senders go on: the messages wait in A's relay
/// queue; when B returns it gets every one of them exactly once, in the order they were
/// sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_provider_that_was_down_gets_everything_once_in_order() {
    let mut f = federation(messaging_opts(), messaging_opts()).await;
    for id in f.b.node_ids() {
        f.b.stop_node(id).await.expect("stop B");
    }
    let gp = org_client(&f.a, 1, SENDER).await;
    let to = [endpoint(LAB, "results"), endpoint(LAB, "desk")];
    let mut ids = Vec::new();
    for i in 0..12 {
        let r = send_ok(
            &gp,
            send(
                &[to[i % 2].clone()],
                format!("result {i}").as_bytes(),
                &format!("d-{i}"),
                0,
            ),
        )
        .await;
        ids.push(r.message_id);
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    for id in &ids {
        let r = track(&gp, id).await;
        assert_eq!(
            count(&r, "relayed"),
            0,
            "nothing can be relayed while B is down"
        );
    }
    for id in f.b.node_ids() {
        f.b.start_node(id).await.expect("start B");
    }
    f.b.wait_leader(WAIT).await.expect("B elects a leader");
    let lab = org_client(&f.b, 1, LAB).await;
    let mut received_seq = Vec::new();
    for id in &ids {
        track_until(&gp, id, "relayed", |r| count(r, "relayed") == 1).await;
        let at_b = track_until(&lab, id, "received at B", |r| count(r, "received") == 1).await;
        assert_eq!(count(&at_b, "received"), 1);
        received_seq.push(at_b.timeline[0].seq);
    }
    for pair in 0..2 {
        let seqs: Vec<u64> = received_seq.iter().skip(pair).step_by(2).copied().collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "recipient {pair}: received out of order: {seqs:?}"
        );
    }
    let inbox = lab
        .messaging()
        .inbox(pb::InboxRequest::default())
        .await
        .expect("inbox")
        .into_inner();
    assert_eq!(inbox.items.len(), ids.len(), "each message routed once");
}

/// B's nodes under their storage floor refuse A's relays (ResourceExhausted), so the
/// message waits in A's relay queue; once B has room it is relayed and routed exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_under_its_storage_floor_gets_the_message_once_it_has_room() {
    let f = federation(messaging_opts(), messaging_opts()).await;
    let set_free_at_b = |free: Option<u64>| {
        for id in f.b.node_ids() {
            f.b.node(id)
                .expect("running")
                .floor
                .set_free_bytes_for_test(free);
        }
    };
    set_free_at_b(Some(0));
    let gp = org_client(&f.a, 1, SENDER).await;
    let to = endpoint(LAB, "results");
    let sent = send_ok(
        &gp,
        send(std::slice::from_ref(&to), b"while B is full", "full-1", 0),
    )
    .await;
    // Refused at B until the floor lifts: wait until A's relay worker has tried.
    let refused = || {
        f.b.node_ids()
            .into_iter()
            .map(|id| f.b.node(id).expect("running").floor.refused_total())
            .sum::<u64>()
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while refused() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "B was never asked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(count(&track(&gp, &sent.message_id).await, "relayed"), 0);
    set_free_at_b(None);
    track_until(&gp, &sent.message_id, "relayed", |r| {
        count(r, "relayed") == 1
    })
    .await;
    let lab = org_client(&f.b, 1, LAB).await;
    let at_b = track_until(&lab, &sent.message_id, "routed at B", |r| {
        count(r, "routed") == 1
    })
    .await;
    assert_eq!(count(&at_b, "received"), 1);
}

/// A's leader stops while messages are being relayed: the new leader resumes from the
/// relay queue; B answers repeats with the original receipts, so nothing is lost and
/// nothing arrives twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_change_while_relaying_loses_and_duplicates_nothing() {
    let mut f = federation(messaging_opts(), messaging_opts()).await;
    let leader = f.a.wait_leader(WAIT).await.expect("leader");
    let other =
        f.a.node_ids()
            .into_iter()
            .find(|id| *id != leader)
            .expect("a follower");
    let gp = org_client(&f.a, other, SENDER).await;
    let to = endpoint(LAB, "results");
    let mut ids = Vec::new();
    for i in 0..24 {
        let r = send_retrying(
            &gp,
            send(std::slice::from_ref(&to), b"report", &format!("l-{i}"), 0),
        )
        .await;
        ids.push(r.message_id);
        if i == 12 {
            f.a.stop_node(leader).await.expect("stop A's leader");
        }
    }
    f.a.wait_leader(WAIT).await.expect("a new leader at A");
    let lab = org_client(&f.b, 1, LAB).await;
    for id in &ids {
        let at_a = track_until(&gp, id, "relayed", |r| count(r, "relayed") == 1).await;
        assert_eq!(count(&at_a, "relayed"), 1);
        let at_b = track_until(&lab, id, "routed at B", |r| count(r, "routed") == 1).await;
        assert_eq!(count(&at_b, "received"), 1);
    }
    let inbox = lab
        .messaging()
        .inbox(pb::InboxRequest::default())
        .await
        .expect("inbox")
        .into_inner();
    assert_eq!(inbox.items.len(), ids.len());
}

/// B's relay port refuses a certificate from a CA outside its trust bundle (another
/// provider's, and even B's own client CA), during the handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_outside_the_trust_bundle_is_refused() {
    let f = federation(messaging_opts(), messaging_opts()).await;
    let stranger_dir = tempfile::tempdir().expect("tmp");
    let stranger = LocalCluster::create(
        &stranger_dir.path().join("prov-x"),
        "prov-x",
        1,
        fast_opts(),
        ApiLimits::default(),
    )
    .await
    .expect("stranger");
    let relay =
        f.b.node(1)
            .and_then(|n| n.relay_addr)
            .expect("B serves relay")
            .to_string();
    let b_ca = std::fs::read_to_string(f.b.dir.join("ca.pem")).expect("B's CA");
    let try_with = |tls: sealpost_crypto::tls::TlsPaths| {
        let mut c = relay_client(&relay, &b_ca, &tls);
        async move {
            c.directory_changes(pb::DirectoryChangesRequest::default())
                .await
        }
    };
    let refused = try_with(stranger.client_identity("intruder").expect("cert")).await;
    assert!(refused.is_err(), "a stranger's certificate was accepted");
    let own = try_with(f.b.client_identity("b-admin").expect("cert")).await;
    assert!(own.is_err(), "B's own client CA is not a peer");
    // A's node certificate is accepted (and sees only B's own directory).
    let a_node = sealpost_crypto::tls::TlsPaths {
        ca: f.a.dir.join("ca.pem"),
        cert: f.a.dir.join("node-1/tls/node.pem"),
        key: f.a.dir.join("node-1/tls/node-key.pem"),
        crl: None,
    };
    let ok = try_with(a_node.clone())
        .await
        .expect("a trusted peer is served");
    let changes: Vec<sealpost_core::federation::PeerChange> =
        sealpost_core::codec::decode(&ok.into_inner().changes).expect("changes");
    assert!(
        changes.iter().all(|c| c.org() == &HpiO::from_serial(LAB)),
        "B exports only its own organisations: {changes:?}"
    );

    // A duplicate delivery (A's node presenting an envelope B already committed) is
    // answered with the original receipt, byte for byte, and writes nothing.
    let gp = org_client(&f.a, 1, SENDER).await;
    let to = endpoint(LAB, "results");
    let sent = send_ok(&gp, send(std::slice::from_ref(&to), b"once", "dup-1", 0)).await;
    track_until(&gp, &sent.message_id, "relayed", |r| {
        count(r, "relayed") == 1
    })
    .await;
    let a_view = f.a.node(1).expect("A's node 1").raft.view();
    let envelope = sealpost_server::messaging::load_envelope(a_view, sent.seq).expect("envelope");
    let recorded = a_view
        .message_events(
            &sealpost_core::message::MessageId::parse(&sent.message_id).expect("id"),
            16,
        )
        .expect("timeline")
        .into_iter()
        .find_map(|r| match r.event {
            sealpost_core::Event::Relayed { receipt, .. } => Some(receipt),
            _ => None,
        })
        .expect("A recorded the receipt");
    let b_events = |c: &LocalCluster| {
        c.node(1)
            .expect("B's node 1")
            .raft
            .status()
            .expect("status")
            .sm
            .event_count
    };
    let before = b_events(&f.b);
    let again = relay_client(&relay, &b_ca, &a_node)
        .deliver(pb::DeliverRequest {
            envelopes: vec![sealpost_core::codec::encode(&envelope)],
        })
        .await
        .expect("deliver again")
        .into_inner();
    let receipt: sealpost_core::federation::TransportReceipt =
        sealpost_core::codec::decode(&again.results[0].receipt).expect("a receipt");
    assert_eq!(receipt, recorded);
    assert_eq!(b_events(&f.b), before, "a duplicate writes nothing");
}

/// A relay client presenting `tls` to the relay port at `addr`, trusting `server_ca`.
fn relay_client(
    addr: &str,
    server_ca: &str,
    tls: &sealpost_crypto::tls::TlsPaths,
) -> pb::relay_client::RelayClient<tonic::transport::Channel> {
    let cert = std::fs::read_to_string(&tls.cert).expect("cert");
    let key = std::fs::read_to_string(&tls.key).expect("key");
    let ch = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
        .expect("uri")
        .tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(server_ca))
                .identity(tonic::transport::Identity::from_pem(cert, key)),
        )
        .expect("tls")
        .connect_timeout(Duration::from_secs(5))
        .connect_lazy();
    pb::relay_client::RelayClient::new(ch)
}

/// A receipt lost on its way back does not end in `Failed(undeliverable)`: at the
/// deadline A asks B, which holds the message, and records it as relayed; B's receiver's
/// acknowledgement is then its one final outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_receipt_is_recovered_by_asking_the_peer() {
    let f = federation(messaging_opts(), messaging_opts()).await;
    for id in f.a.node_ids() {
        if let Some(n) = f.a.node(id) {
            n.relay_faults.drop_next_receipts(1);
        }
    }
    let gp = org_client(&f.a, 1, SENDER).await;
    let lab = org_client(&f.b, 1, LAB).await;
    let to = endpoint(LAB, "results");
    let sent = send_ok(
        &gp,
        send(std::slice::from_ref(&to), b"lost receipt", "r-1", 1_500),
    )
    .await;
    track_until(&lab, &sent.message_id, "routed at B", |r| {
        recipient_state(r, &to).0 == "routed"
    })
    .await;
    let at_a = track_until(&gp, &sent.message_id, "relayed after asking B", |r| {
        count(r, "relayed") == 1
    })
    .await;
    assert_eq!(count(&at_a, "failed"), 0, "{:?}", timeline(&at_a));
    fetch_and_ack(&lab, &sent.message_id, &to).await;
    let at_a = track_until(&gp, &sent.message_id, "acked at A", |r| {
        recipient_state(r, &to).0 == "acked"
    })
    .await;
    assert_eq!(finals(&at_a, &to), 1, "{:?}", timeline(&at_a));
}

/// No outcome within A's window fails the recipient as unacknowledged, once; B's
/// receiver's acknowledgement arriving later is recorded as a late outcome and changes
/// nothing. A message that never reached B (B unreachable, then holding nothing) fails as
/// undeliverable, once, and is never relayed afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deadlines_give_exactly_one_final_outcome() {
    let short = MessagingOptions {
        ack_window_ms: 1_000,
        ..messaging_opts()
    };
    let mut f = federation(short, messaging_opts()).await;
    let gp = org_client(&f.a, 1, SENDER).await;
    let lab = org_client(&f.b, 1, LAB).await;
    let to = endpoint(LAB, "results");

    let late = send_ok(
        &gp,
        send(std::slice::from_ref(&to), b"late ack", "t-1", 1_000),
    )
    .await;
    let at_a = track_until(&gp, &late.message_id, "unacknowledged at A", |r| {
        recipient_state(r, &to) == ("failed".into(), "unacknowledged".into())
    })
    .await;
    assert_eq!(finals(&at_a, &to), 1);
    fetch_and_ack(&lab, &late.message_id, &to).await;
    let at_a = track_until(&gp, &late.message_id, "late outcome at A", |r| {
        count(r, "late_outcome") == 1
    })
    .await;
    assert_eq!(
        recipient_state(&at_a, &to),
        ("failed".into(), "unacknowledged".into())
    );
    assert_eq!(finals(&at_a, &to), 1, "{:?}", timeline(&at_a));

    // Never delivered: B's relay port is down until after deliver-by.
    for id in f.a.node_ids() {
        if let Some(n) = f.a.node(id) {
            n.relay_faults.set_relay_paused(true);
        }
    }
    let lost = send_ok(
        &gp,
        send(std::slice::from_ref(&to), b"never there", "t-2", 800),
    )
    .await;
    for id in f.b.node_ids() {
        f.b.stop_node(id).await.expect("stop B");
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let r = track(&gp, &lost.message_id).await;
    assert_eq!(
        finals(&r, &to),
        0,
        "not failed while B cannot be asked: {:?}",
        timeline(&r)
    );
    for id in f.b.node_ids() {
        f.b.start_node(id).await.expect("start B");
    }
    let at_a = track_until(&gp, &lost.message_id, "undeliverable at A", |r| {
        recipient_state(r, &to) == ("failed".into(), "undeliverable".into())
    })
    .await;
    assert_eq!(finals(&at_a, &to), 1);
    for id in f.a.node_ids() {
        if let Some(n) = f.a.node(id) {
            n.relay_faults.set_relay_paused(false);
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let at_b = lab
        .messaging()
        .track(pb::TrackRequest {
            message_id: lost.message_id.clone(),
        })
        .await;
    assert_eq!(
        at_b.map_err(|s| s.code()).err(),
        Some(tonic::Code::NotFound),
        "a failed message is never relayed afterwards"
    );

    // Operators see both failures, newest first, with the reason spelled out.
    let dead = client(&f.a, 1)
        .await
        .admin()
        .dead_letters(pb::DeadLettersRequest::default())
        .await
        .expect("dead letters")
        .into_inner()
        .items;
    let listed: Vec<(&str, &str, &str)> = dead
        .iter()
        .map(|d| {
            (
                d.message_id.as_str(),
                d.reason.as_str(),
                d.provider.as_str(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            (lost.message_id.as_str(), "undeliverable", B),
            (late.message_id.as_str(), "unacknowledged", B),
        ]
    );
    assert!(dead[0].last_error.contains("deliver-by"), "{:?}", dead[0]);
    assert_views_rebuild(&f.a);
    assert_views_rebuild(&f.b);
}
