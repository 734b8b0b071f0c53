//! Security end to end, over real gRPC and TLS on loopback: the client port refuses a
//! client without a certificate, with an expired one, with one from another CA and with
//! a revoked one (each counted under its reason, and the revocation applied without a
//! restart); organisations are confined to their own mail, auditors and operators never
//! fetch a payload, and every refusal is PermissionDenied and ends up counted in an
//! `AccessDenied` summary in the log; a flooding organisation is held to its send rate by
//! count while the others are all admitted; a node given another KEK than the one its
//! stored organisation keys are wrapped under stops before it serves, naming both.

mod common;

use std::time::{Duration, SystemTime};

use common::*;
use sealpost_client::{Client, Profile};
use sealpost_core::event::Event;
use sealpost_core::ids::HpiO;
use sealpost_crypto::tls::{DevCa, Role, Subject, TlsPaths, write_file};
use sealpost_proto::v1 as pb;
use sealpost_server::local::LocalCluster;
use sealpost_server::tls::Refusal;
use tonic::Code;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// Asks node 1 for its status over a fresh connection presenting `identity` (none: no
/// client certificate), trusting the provider's CA.
async fn status_with(c: &LocalCluster, identity: Option<Identity>) -> Result<(), String> {
    let ca = std::fs::read_to_string(c.dir.join("ca.pem")).expect("CA");
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
    if let Some(id) = identity {
        tls = tls.identity(id);
    }
    let endpoint = Endpoint::from_shared(format!("https://{}", c.addrs()[&1]))
        .expect("endpoint")
        .tls_config(tls)
        .expect("tls")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10));
    let channel = endpoint.connect().await.map_err(|e| e.to_string())?;
    pb::admin_client::AdminClient::new(channel)
        .status(pb::StatusRequest::default())
        .await
        .map(|_| ())
        .map_err(|s| s.to_string())
}

fn identity(id: &sealpost_crypto::tls::Identity) -> Identity {
    Identity::from_pem(&id.cert_pem, &id.key_pem)
}

fn refused(c: &LocalCluster, r: Refusal) -> u64 {
    c.node(1).expect("node 1").tls.stats.refused(r)
}

/// Refusals of `r` counted on node 1, once they reach `at_least` (or the wait ends). A
/// fresh cluster starts at zero, so one or more is this test's refusal (a client may try
/// the handshake twice).
async fn wait_refused(c: &LocalCluster, r: Refusal, at_least: u64) -> u64 {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let n = refused(c, r);
        if n >= at_least || tokio::time::Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_certificate_is_refused() {
    let (_d, c) = cluster(1).await;
    let operator = c.ca().issue_role("ops", Role::Operator).expect("cert");
    status_with(&c, Some(identity(&operator)))
        .await
        .expect("a good certificate is served");
    let err = status_with(&c, None)
        .await
        .expect_err("served without a certificate");
    assert!(
        wait_refused(&c, Refusal::NoCertificate, 1).await >= 1,
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_is_refused() {
    let (_d, c) = cluster(1).await;
    let day = Duration::from_secs(86_400);
    let now = SystemTime::now();
    let expired = c
        .ca()
        .issue_valid_between(
            "old",
            Subject::Role(Role::Operator),
            now - 30 * day,
            now - day,
        )
        .expect("cert");
    let err = status_with(&c, Some(identity(&expired)))
        .await
        .expect_err("served an expired certificate");
    assert!(
        wait_refused(&c, Refusal::Expired, 1).await >= 1,
        "{err}: {:?}",
        c.node(1).expect("node").tls.stats
    );
    // The same CA's current certificate for the same role is fine.
    let fresh = c
        .ca()
        .issue_valid_between("new", Subject::Role(Role::Operator), now - day, now + day)
        .expect("cert");
    status_with(&c, Some(identity(&fresh)))
        .await
        .expect("a current certificate is served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_is_refused() {
    let (_d, c) = cluster(1).await;
    let other = DevCa::generate("prov-x").expect("CA");
    let foreign = other.issue_role("ops", Role::Operator).expect("cert");
    let err = status_with(&c, Some(identity(&foreign)))
        .await
        .expect_err("served another CA's certificate");
    assert!(wait_refused(&c, Refusal::UnknownCa, 1).await >= 1, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_certificate_is_refused_without_a_restart() {
    let (_d, c) = cluster(1).await;
    let paths = c.client_identity("soon-revoked").expect("cert");
    let load = |p: &TlsPaths| {
        let m = p.load().expect("load");
        Identity::from_pem(m.identity.cert_pem, m.identity.key_pem)
    };
    status_with(&c, Some(load(&paths)))
        .await
        .expect("served before revocation");
    let bystander = c.client_identity("bystander").expect("cert");
    c.revoke(&paths.cert).expect("revoked");
    // The node's own poll (api.tls_reload_ms) picks up the new CRL: no restart, no call.
    let deadline = tokio::time::Instant::now() + WAIT;
    let err = loop {
        match status_with(&c, Some(load(&paths))).await {
            Err(e) => break e,
            Ok(()) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the revoked certificate is still served"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert!(wait_refused(&c, Refusal::Revoked, 1).await >= 1, "{err}");
    status_with(&c, Some(load(&bystander)))
        .await
        .expect("a certificate that was not revoked is still served");
    assert!(
        c.node(1)
            .expect("node")
            .tls
            .stats
            .reloads
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_node_certificate_is_presented_without_a_restart() {
    let (_d, c) = cluster(1).await;
    let node_dir = c.dir.join("node-1").join("tls");
    let rotated = c
        .ca()
        .issue_node(
            "prov-a-node-1-rotated",
            &["127.0.0.1".into(), "localhost".into()],
        )
        .expect("cert");
    // Key first, then certificate: until both are in place the pair does not load and the
    // old configuration stays in force.
    write_file(&node_dir.join("node-key.pem"), &rotated.key_pem, true).expect("key");
    write_file(&node_dir.join("node.pem"), &rotated.cert_pem, false).expect("cert");
    let tls = &c.node(1).expect("node").tls;
    tls.reload_if_changed();
    let presented = presented_certificate(&c).await;
    let rotated_der = pem_der(&rotated.cert_pem);
    assert_eq!(
        presented, rotated_der,
        "the node presents its new certificate"
    );
    let operator = c.ca().issue_role("ops", Role::Operator).expect("cert");
    status_with(&c, Some(identity(&operator)))
        .await
        .expect("clients are served under the rotated certificate");
}

fn pem_der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .expect("pem")
        .to_vec()
}

/// The certificate node 1 presents to a new connection.
async fn presented_certificate(c: &LocalCluster) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let ca = std::fs::read_to_string(c.dir.join("ca.pem")).expect("CA");
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(cert.expect("pem")).expect("root");
    }
    let me = c.ca().issue_role("probe", Role::Operator).expect("cert");
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_client_auth_cert(
        vec![CertificateDer::from_pem_slice(me.cert_pem.as_bytes()).expect("cert")],
        PrivateKeyDer::from_pem_slice(me.key_pem.as_bytes()).expect("key"),
    )
    .expect("client config");
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(&c.addrs()[&1])
        .await
        .expect("connect");
    let name = ServerName::try_from("127.0.0.1").expect("name");
    let stream = tokio::time::timeout(WAIT, connector.connect(name, tcp))
        .await
        .expect("handshake in time")
        .expect("handshake");
    stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .expect("a server certificate")
        .to_vec()
}

/// A client of node `node` presenting a certificate for `subject`.
async fn client_as(c: &LocalCluster, node: u64, name: &str, subject: Subject) -> Client {
    let org = match &subject {
        Subject::Org(o) => Some(o.to_string()),
        Subject::Role(_) => None,
    };
    let tls = c.client_identity_as(name, subject).expect("cert");
    Client::connect(&Profile {
        endpoints: vec![c.addrs()[&node].clone()],
        tls,
        organisation: org,
        default_endpoint: None,
        provider: Some("prov-a".into()),
    })
    .await
    .expect("client connects")
}

fn denied<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>, what: &str) {
    match r {
        Err(s) => assert_eq!(s.code(), Code::PermissionDenied, "{what}: {s}"),
        Ok(v) => panic!("{what} was allowed: {v:?}"),
    }
}

/// Every `AccessDenied` count in node 1's event store, by (subject, action).
fn denial_counts(c: &LocalCluster) -> std::collections::BTreeMap<(String, String), u64> {
    let view = c.node(1).expect("node").raft.view().clone();
    let mut counts = std::collections::BTreeMap::new();
    let mut from = 1;
    for _ in 0..1_000 {
        let batch = view.events(from, 512).expect("events");
        let Some(last) = batch.last() else { break };
        from = last.seq + 1;
        for record in &batch {
            if let Event::AccessDenied { denials, .. } = &record.event {
                for d in denials {
                    *counts
                        .entry((d.subject.clone(), d.action.clone()))
                        .or_default() += d.count;
                }
            }
        }
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn organisations_read_only_their_own_mail_and_no_role_reads_a_payload() {
    let (_d, c) = messaging_cluster(3, messaging_opts()).await;
    let sender = org_client(&c, 1, SENDER).await;
    let lab = endpoint(LAB, "results");
    let sent = send_ok(
        &sender,
        send_request(std::slice::from_ref(&lab), b"MARKER potassium 4.1", "sec-1"),
    )
    .await;
    let id = sent.message_id.clone();
    let lab_client = org_client(&c, 2, LAB).await;
    track_until(&lab_client, &id, "routed", |r| {
        recipient_state(r, &lab).0 == "routed"
    })
    .await;

    // The hospital neither sent nor receives it: no track, fetch, ack, inbox, outbox.
    let hospital = org_client(&c, 2, HOSPITAL).await;
    let mut m = hospital.messaging();
    denied(
        m.track(pb::TrackRequest {
            message_id: id.clone(),
        })
        .await,
        "track another organisation's message",
    );
    denied(
        m.fetch(pb::FetchRequest {
            message_id: id.clone(),
            ..Default::default()
        })
        .await,
        "fetch another organisation's message",
    );
    denied(
        m.fetch(pb::FetchRequest {
            message_id: id.clone(),
            recipient: lab.clone(),
        })
        .await,
        "fetch naming another organisation's endpoint",
    );
    denied(
        m.ack(pb::AckRequest {
            message_id: id.clone(),
            status: "accepted".into(),
            ..Default::default()
        })
        .await,
        "ack another organisation's message",
    );
    denied(
        m.inbox(pb::InboxRequest {
            endpoint: lab.clone(),
            ..Default::default()
        })
        .await,
        "another organisation's inbox",
    );
    denied(
        m.outbox(pb::OutboxRequest {
            org: HpiO::from_serial(SENDER).to_string(),
            ..Default::default()
        })
        .await,
        "another organisation's outbox",
    );
    let mut as_sender = send_request(std::slice::from_ref(&lab), b"forged", "sec-forged");
    as_sender.from_org = HpiO::from_serial(SENDER).to_string();
    denied(m.send(as_sender).await, "send as another organisation");

    // The auditor replays and tracks, but neither fetches nor sends nor writes.
    let auditor = client_as(&c, 3, "auditor-1", Subject::Role(Role::Auditor)).await;
    let mut replay = auditor
        .audit()
        .replay(pb::ReplayRequest {
            message_id: id.clone(),
            ..Default::default()
        })
        .await
        .expect("the auditor replays")
        .into_inner();
    let first = tokio::time::timeout(WAIT, replay.message())
        .await
        .expect("in time")
        .expect("stream")
        .expect("an event");
    assert_eq!(first.kind, "sent");
    drop(replay);
    auditor
        .messaging()
        .track(pb::TrackRequest {
            message_id: id.clone(),
        })
        .await
        .expect("the auditor tracks");
    denied(
        auditor
            .messaging()
            .fetch(pb::FetchRequest {
                message_id: id.clone(),
                recipient: lab.clone(),
            })
            .await,
        "an auditor fetching a payload",
    );
    denied(
        auditor
            .directory()
            .register_organisation(org_request(77))
            .await,
        "an auditor writing the directory",
    );
    denied(
        auditor
            .admin()
            .snapshot(pb::SnapshotRequest::default())
            .await,
        "an auditor administering",
    );

    // The operator administers but never fetches; organisations never write the directory.
    let operator = client(&c, 1).await;
    denied(
        operator
            .messaging()
            .fetch(pb::FetchRequest {
                message_id: id.clone(),
                recipient: lab.clone(),
            })
            .await,
        "an operator fetching a payload",
    );
    denied(
        hospital
            .directory()
            .register_organisation(org_request(78))
            .await,
        "an organisation writing the directory",
    );

    // The addressed organisation does fetch it.
    let got = lab_client
        .messaging()
        .fetch(pb::FetchRequest {
            message_id: id.clone(),
            recipient: lab.clone(),
        })
        .await
        .expect("the recipient fetches")
        .into_inner();
    assert_eq!(got.payload, b"MARKER potassium 4.1");

    // Every refusal is in the log, summarised per identity and action.
    // (A node's periodic summary may already have written part of its counts.)
    for n in 1..=3 {
        let node = c.node(n).expect("node");
        node.guard.flush(&node.raft).await.expect("summary written");
    }
    converged(&c).await;
    let counts = denial_counts(&c);
    let hospital_subject = format!("organisation {}", HpiO::from_serial(HOSPITAL));
    for action in [
        "track",
        "fetch",
        "ack",
        "read-mail",
        "outbox",
        "send",
        "directory-write",
    ] {
        let expected = if action == "fetch" { 2 } else { 1 };
        assert_eq!(
            counts.get(&(hospital_subject.clone(), action.to_string())),
            Some(&expected),
            "{action}: {counts:?}"
        );
    }
    for (subject, action) in [
        ("auditor", "fetch"),
        ("auditor", "directory-write"),
        ("auditor", "administer"),
        ("operator", "fetch"),
    ] {
        assert_eq!(
            counts.get(&(subject.to_string(), action.to_string())),
            Some(&1),
            "{subject} {action}: {counts:?}"
        );
    }
    let total: u64 = counts.values().sum();
    let refused_on_nodes: u64 = (1..=3)
        .map(|n| c.node(n).expect("node").guard.denied_total())
        .sum();
    assert_eq!(total, refused_on_nodes, "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flooding_organisation_is_refused_by_count_and_the_others_are_all_admitted() {
    // One token a second after a burst of 20: the flood's admitted count is bounded by
    // the burst plus the seconds the test takes, whatever the machine's speed.
    let api = sealpost_server::config::ApiLimits {
        send_rate_per_org_per_s: 1,
        send_burst_per_org: 20,
        // The node's own summariser writes the counts (no flush by hand here).
        denial_summary_ms: 300,
        ..Default::default()
    };
    // The directory's own writes are the operator's, which the rate does not touch.
    let (_d, c) = messaging_cluster_with(1, api, messaging_opts()).await;
    let to = [endpoint(LAB, "results")];
    let started = std::time::Instant::now();
    let flooder = org_client(&c, 1, SENDER).await;
    let flood = 200;
    let mut admitted = 0u64;
    let mut exhausted = 0u64;
    for i in 0..flood {
        let mut req = send_request(&to, b"flood", &format!("flood-{i}"));
        req.payload_type = "TEXT".into();
        match flooder.messaging().send(req).await {
            Ok(_) => admitted += 1,
            Err(s) if s.code() == Code::ResourceExhausted => exhausted += 1,
            Err(s) => panic!("unexpected refusal: {s}"),
        }
    }
    // Meanwhile another organisation sends within its own burst: every send admitted.
    let other = org_client(&c, 1, HOSPITAL).await;
    for i in 0..20 {
        let mut req = send_request(&to, b"routine", &format!("routine-{i}"));
        req.payload_type = "TEXT".into();
        req.from_org = HpiO::from_serial(HOSPITAL).to_string();
        other
            .messaging()
            .send(req)
            .await
            .expect("another organisation is admitted");
    }
    let secs = started.elapsed().as_secs() + 1;
    assert_eq!(admitted + exhausted, flood);
    assert!(
        admitted >= 20 && admitted <= 20 + secs,
        "admitted {admitted} of the flood in about {secs} s"
    );
    let node = c.node(1).expect("node");
    assert_eq!(node.guard.rate_limited_total(), exhausted);
    let subject = format!("organisation {}", HpiO::from_serial(SENDER));
    let key = (subject, "send-over-rate".to_string());
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let counts = denial_counts(&c);
        if counts.get(&key) == Some(&exhausted) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the summaries never counted the {exhausted} refusals: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The sealed copy's key id and the signer's key id of message `id`, from node 1's store.
fn key_ids_of(c: &LocalCluster, id: &str) -> (String, String) {
    let view = c.node(1).expect("node").raft.view().clone();
    let mut from = 1;
    for _ in 0..1_000 {
        let batch = view.events(from, 512).expect("events");
        let Some(last) = batch.last() else { break };
        from = last.seq + 1;
        for record in batch {
            if let Event::Sent { envelope, .. } = record.event
                && envelope.header.message_id.to_string() == id
            {
                return (
                    envelope.sealed[0].key_id.clone(),
                    envelope.header.sender_key_id.clone(),
                );
            }
        }
    }
    panic!("message {id} is not in the store");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotated_keys_seal_new_messages_and_old_ones_still_open_and_verify() {
    let (_d, c) = messaging_cluster(3, messaging_opts()).await;
    let sender = org_client(&c, 1, SENDER).await;
    let lab = endpoint(LAB, "results");
    // Sent before the rotation, delivered after it: sealed to the lab's old key and signed
    // with the sender's old key.
    for n in 1..=3 {
        c.node(n).expect("node").faults.set_delivery_paused(true);
    }
    let before = send_ok(
        &sender,
        send_request(std::slice::from_ref(&lab), b"before rotation", "rot-1"),
    )
    .await;
    let operator = client(&c, 1).await;
    for serial in [LAB, SENDER] {
        operator
            .directory()
            .rotate_keys(pb::RotateKeysRequest {
                hpio: HpiO::from_serial(serial).to_string(),
                keys: None,
            })
            .await
            .expect("the provider rotates the keys it holds");
    }
    let org = operator
        .directory()
        .get_organisation(pb::GetOrganisationRequest {
            hpio: HpiO::from_serial(LAB).to_string(),
            ..Default::default()
        })
        .await
        .expect("organisation")
        .into_inner();
    assert_eq!(org.keys.map(|k| k.key_id).as_deref(), Some("k2"));
    for n in 1..=3 {
        c.node(n).expect("node").faults.set_delivery_paused(false);
    }
    let after = send_ok(
        &sender,
        send_request(std::slice::from_ref(&lab), b"after rotation", "rot-2"),
    )
    .await;
    // Node 1 reads its own store: let it apply everything first.
    converged(&c).await;
    assert_eq!(
        key_ids_of(&c, &before.message_id),
        ("k1".into(), "k1".into())
    );
    assert_eq!(
        key_ids_of(&c, &after.message_id),
        ("k2".into(), "k2".into())
    );
    let lab_client = org_client(&c, 2, LAB).await;
    for (sent, payload) in [
        (&before, &b"before rotation"[..]),
        (&after, b"after rotation"),
    ] {
        track_until(&lab_client, &sent.message_id, "routed", |r| {
            recipient_state(r, &lab).0 == "routed"
        })
        .await;
        let got = lab_client
            .messaging()
            .fetch(pb::FetchRequest {
                message_id: sent.message_id.clone(),
                recipient: lab.clone(),
            })
            .await
            .expect("opens and verifies")
            .into_inner();
        assert_eq!(got.payload, payload);
    }
    // A second rotation takes the next unused id; the organisation's own keys are its own.
    operator
        .directory()
        .rotate_keys(pb::RotateKeysRequest {
            hpio: HpiO::from_serial(LAB).to_string(),
            keys: None,
        })
        .await
        .expect("rotated again");
    operator
        .directory()
        .register_organisation(org_request(9))
        .await
        .expect("an organisation holding its own keys");
    let own = operator
        .directory()
        .rotate_keys(pb::RotateKeysRequest {
            hpio: HpiO::from_serial(9).to_string(),
            keys: None,
        })
        .await
        .expect_err("the provider holds none of its keys");
    assert_eq!(own.code(), Code::FailedPrecondition, "{own}");
    assert_views_rebuild(&c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_with_a_rotated_certificate_reconnects_with_it_and_its_old_one_can_be_revoked() {
    let (_d, c) = cluster(3).await;
    let leader = c.wait_leader(WAIT).await.expect("leader");
    let followers: Vec<u64> = (1..=3).filter(|n| *n != leader).collect();
    let tls_dir = c.dir.join(format!("node-{leader}")).join("tls");
    let old_cert = c.dir.join("old-leader.pem");
    std::fs::copy(tls_dir.join("node.pem"), &old_cert).expect("keep the old certificate");
    let accepted = |n: u64| {
        c.node(n)
            .expect("node")
            .tls
            .stats
            .accepted
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let before: Vec<u64> = followers.iter().map(|n| accepted(*n)).collect();

    let rotated = c
        .ca()
        .issue_node(
            &format!("prov-a-node-{leader}-rotated"),
            &["127.0.0.1".into(), "localhost".into()],
        )
        .expect("cert");
    write_file(&tls_dir.join("node-key.pem"), &rotated.key_pem, true).expect("key");
    write_file(&tls_dir.join("node.pem"), &rotated.cert_pem, false).expect("cert");
    let node = c.node(leader).expect("leader");
    assert!(node.tls.reload_if_changed(), "the rotated files load");
    assert_eq!(node.raft.client_tls_generation(), 1, "peers reconnect");
    // The old certificate is revoked and every follower reads the new CRL.
    c.revoke(&old_cert).expect("revoked");
    for n in &followers {
        assert!(c.node(*n).expect("node").tls.reload_if_changed());
    }
    // A write needs a follower: the leader reaches them under its new certificate.
    let admin = client(&c, leader).await;
    register(&admin, 31).await.expect("committed");
    for (n, was) in followers.iter().zip(before) {
        assert!(
            accepted(*n) > was,
            "node {n} took no new connection from the leader"
        );
        assert_eq!(
            c.node(*n)
                .expect("node")
                .tls
                .stats
                .refused(Refusal::Revoked),
            0
        );
    }
    converged(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_given_another_kek_stops_before_serving_and_names_both_kek_ids() {
    let (dir, mut c) = messaging_cluster(3, messaging_opts()).await;
    let right = c.config(3).expect("node 3").kek.clone();
    let right_id = sealpost_crypto::kek::Kek::load(&right)
        .expect("the provider's KEK")
        .id_hex();
    // Node 3 has applied the provider-held organisations before it stops.
    converged(&c).await;
    c.stop_node(3).await.expect("stop node 3");

    let other = dir.path().join("another-kek");
    let other_kek = sealpost_crypto::kek::Kek::generate().expect("a KEK");
    other_kek.save(&other).expect("save it");
    c.update_config(3, |cfg| cfg.kek = other.clone())
        .expect("node 3 configured with another KEK");
    let err = c
        .start_node(3)
        .await
        .expect_err("a node with another KEK does not start")
        .to_string();
    assert!(
        err.contains("the configured KEK does not fit this node's store"),
        "{err}"
    );
    assert!(err.contains(&format!("wrapped by KEK {right_id}")), "{err}");
    assert!(
        err.contains(&format!("the loaded KEK is {}", other_kek.id_hex())),
        "{err}"
    );
    assert!(c.node(3).is_none(), "node 3 is not running");

    // Given its provider's KEK again, it starts and serves.
    c.update_config(3, |cfg| cfg.kek = right.clone())
        .expect("node 3 configured with its KEK");
    c.start_node(3).await.expect("node 3 starts with its KEK");
    converged(&c).await;
}
