//! HL7 v2 over MLLP end to end: a clinical system submits over a loopback MLLP listener
//! bound to its organisation; the acknowledgement is AA only once the message is committed,
//! the message reaches the addressed inbox exactly as framed, a resend of the same control
//! id writes nothing, malformed input is refused without harm to anything else, and
//! hundreds of connections are answered at once.

mod common;

use std::time::Duration;

use common::*;
use sealpost_core::ids::HpiO;
use sealpost_hl7::ack::{AckCode, parse_ack};
use sealpost_hl7::{er7, samples};
use sealpost_proto::v1 as pb;
use sealpost_server::local::LocalCluster;
use sealpost_server::mllp::MllpListenerConfig;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The samples address 8003620000001011 (a GP) → 8003620000001037 (a hospital); the test
/// directory's organisations are `SENDER` and `HOSPITAL`.
fn addressed(sample: &str) -> String {
    sample
        .replace("8003620000001011", HpiO::from_serial(SENDER).as_str())
        .replace("8003620000001037", HpiO::from_serial(HOSPITAL).as_str())
}

/// The referred-to practitioner's HPI-I in the REF^I12 sample.
fn referred_to() -> String {
    er7::parse_str(samples::REF_I12)
        .expect("sample parses")
        .prds()
        .into_iter()
        .find(|p| p.role == "RT")
        .and_then(|p| p.provider_ids.into_iter().next())
        .map(|p| p.id)
        .expect("a referred-to practitioner")
}

/// Publishes the sample referral's referred-to practitioner at the hospital.
async fn publish_referred_to(c: &LocalCluster) {
    client(c, 1)
        .await
        .directory()
        .publish_endpoint(pb::PublishEndpointRequest {
            id: format!("{}/{}", HpiO::from_serial(HOSPITAL), referred_to()),
            display_name: "Dr Referred".into(),
            specialty: "Cardiology".into(),
            payload_types: vec!["REF^I12".into()],
        })
        .await
        .expect("practitioner published");
}

/// A 3-node provider whose node 1 serves MLLP on loopback for the sender organisation, and
/// whose hospital publishes the sample's referred-to practitioner; every node has applied
/// everything when it returns.
async fn provider() -> (TempDir, LocalCluster, String) {
    let (dir, mut c) = messaging_cluster(3, messaging_opts()).await;
    publish_referred_to(&c).await;
    c.set_mllp(
        1,
        vec![MllpListenerConfig::loopback(
            "127.0.0.1:0",
            &HpiO::from_serial(SENDER),
        )],
    )
    .await
    .expect("MLLP listener");
    c.wait_leader(WAIT).await.expect("leader");
    // Node 1 restarted to take the listener and re-applies its log: let it catch up, so
    // its sends find the directory in its own views instead of each taking a read index.
    converged(&c).await;
    let addr = c.node(1).expect("node 1").mllp_addrs[0].to_string();
    (dir, c, addr)
}

fn frame(msg: &[u8]) -> Vec<u8> {
    let mut f = vec![0x0b];
    f.extend_from_slice(msg);
    f.extend_from_slice(&[0x1c, 0x0d]);
    f
}

/// Reads one MLLP frame; `None` when the connection closed first.
async fn read_frame(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(end) = buf.windows(2).position(|w| w == [0x1c, 0x0d]) {
            let start = buf.iter().position(|b| *b == 0x0b)?;
            return Some(buf[start + 1..end].to_vec());
        }
        let n = tokio::time::timeout_at(deadline, s.read(&mut byte))
            .await
            .expect("an answer in time")
            .ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&byte[..n]);
    }
}

/// Sends one message and returns the acknowledgement code, control id and text.
async fn exchange(s: &mut TcpStream, msg: &[u8]) -> Option<(AckCode, String, Option<String>)> {
    s.write_all(&frame(msg)).await.ok()?;
    let answer = read_frame(s).await?;
    let parsed = er7::parse(&answer).expect("the acknowledgement is HL7");
    parse_ack(&parsed)
}

async fn connect(addr: &str) -> TcpStream {
    TcpStream::connect(addr).await.expect("connect")
}

async fn hospital_inbox(c: &LocalCluster) -> Vec<pb::InboxItem> {
    org_client(c, 2, HOSPITAL)
        .await
        .messaging()
        .inbox(pb::InboxRequest::default())
        .await
        .expect("inbox")
        .into_inner()
        .items
}

async fn event_count(c: &LocalCluster) -> u64 {
    converged(c).await.1
}

/// The REF^I12 sample asks for enhanced-mode acknowledgements (MSH-15 AL, MSH-16 NE); the
/// same message in original mode (MSH-15/16 empty), with another control id.
fn original_mode(msg: &str) -> String {
    msg.replace("|||AL|NE|AUS", "|||||AUS")
        .replace("SUN20250314093000001", "SUN20250314093000002")
}

/// A REF^I12 over MLLP: CA (enhanced mode, as the message asks) or AA (original mode) once
/// committed, routed to the referred-to practitioner, the payload exactly as framed; the
/// same control id again is acknowledged and sends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_referral_over_mllp_is_acknowledged_and_routed_once() {
    let (_dir, c, addr) = provider().await;
    let msg = addressed(samples::REF_I12);
    let mut s = connect(&addr).await;
    let (code, control, _) = exchange(&mut s, msg.as_bytes()).await.expect("an ACK");
    assert_eq!(code, AckCode::CA, "enhanced mode: a commit acknowledgement");
    let original = er7::parse_str(&msg).expect("parses").msh().expect("msh");
    assert_eq!(control, original.control_id);

    let deadline = tokio::time::Instant::now() + WAIT;
    let items = loop {
        let items = hospital_inbox(&c).await;
        if !items.is_empty() {
            break items;
        }
        assert!(tokio::time::Instant::now() < deadline, "never routed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].payload_type, "REF^I12");
    assert!(
        items[0].recipient.ends_with(&referred_to()),
        "{:?}",
        items[0]
    );
    let fetched = org_client(&c, 1, HOSPITAL)
        .await
        .messaging()
        .fetch(pb::FetchRequest {
            message_id: items[0].message_id.clone(),
            recipient: String::new(),
        })
        .await
        .expect("fetch")
        .into_inner();
    assert_eq!(fetched.payload, msg.as_bytes());
    assert!(
        !fetched.patient_ihi.is_empty(),
        "the IHI travels in the header"
    );

    let before = event_count(&c).await;
    let (again, _, _) = exchange(&mut s, msg.as_bytes()).await.expect("an ACK");
    assert_eq!(again, AckCode::CA, "a duplicate is acknowledged");
    assert_eq!(event_count(&c).await, before, "a duplicate writes nothing");
    assert_eq!(hospital_inbox(&c).await.len(), 1);

    let (code, _, _) = exchange(&mut s, original_mode(&msg).as_bytes())
        .await
        .expect("an ACK");
    assert_eq!(
        code,
        AckCode::AA,
        "original mode: an application acknowledgement"
    );
}

/// Input that cannot be accepted gets AR (or AE) naming the problem, or a closed
/// connection; nothing is written and another connection carries on meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_mllp_input_is_refused_and_harms_nothing() {
    let (_dir, c, addr) = provider().await;
    let mut bystander = connect(&addr).await;
    let before = event_count(&c).await;

    // Parsed but not acceptable: each gets AR with a reason.
    let unsupported = addressed(samples::ORU_R01).replace("ORU^R01", "ADT^A01");
    let other_org = addressed(samples::REF_I12).replace(
        HpiO::from_serial(SENDER).as_str(),
        HpiO::from_serial(LAB).as_str(),
    );
    let nobody = addressed(samples::REF_I12)
        .replace(HpiO::from_serial(HOSPITAL).as_str(), "8003629999999999");
    let mut s = connect(&addr).await;
    for (name, msg, expected) in [
        ("unsupported type", unsupported, "not supported"),
        ("another organisation in MSH-4", other_org, "sends only as"),
        ("unknown recipient", nobody, "HPI-O"),
    ] {
        let (code, _, text) = exchange(&mut s, msg.as_bytes())
            .await
            .unwrap_or_else(|| panic!("{name}: no answer"));
        assert!(
            matches!(code, AckCode::AR | AckCode::CR),
            "{name}: {code:?}"
        );
        let text = text.unwrap_or_default();
        assert!(text.contains(expected), "{name}: {text}");
    }
    for (name, bytes) in samples::malformed() {
        let mut s = connect(&addr).await;
        // A closed connection (no answer) is acceptable for input that is not HL7 at all.
        if let Some((code, _, _)) = exchange(&mut s, &bytes).await {
            assert!(
                matches!(code, AckCode::AR | AckCode::AE | AckCode::CR | AckCode::CE),
                "{name}: {code:?}"
            );
        }
    }
    // Framing abuse: an oversized frame, garbage without a start byte, a truncated frame,
    // a flood of empty frames: the connection is closed.
    let mut big = vec![0x0b];
    big.extend(std::iter::repeat_n(b'A', 2 * 1024 * 1024));
    let mut garbage = Vec::new();
    garbage.extend((0..20_000u32).map(|i| (i % 251) as u8 | 0x80));
    let mut empties = Vec::new();
    for _ in 0..64 {
        empties.extend_from_slice(&[0x0b, 0x1c, 0x0d]);
    }
    for (name, bytes) in [("garbage", garbage), ("empty frames", empties)] {
        let mut s = connect(&addr).await;
        let _ = s.write_all(&bytes).await;
        assert!(
            read_frame(&mut s).await.is_none(),
            "{name}: connection stays open"
        );
    }
    {
        let mut s = connect(&addr).await;
        let _ = s.write_all(&big[..64 * 1024]).await;
        drop(s); // truncated: the server sees EOF mid-frame
    }
    assert_eq!(event_count(&c).await, before, "nothing was written");

    let (code, _, _) = exchange(&mut bystander, addressed(samples::REF_I12).as_bytes())
        .await
        .expect("the other connection still works");
    assert_eq!(code, AckCode::CA);
}

/// Two hundred clinical systems connected at once, each submitting its own message: every
/// one gets its AA and every message is committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_connections_are_answered_at_once() {
    let (_dir, c, addr) = provider().await;
    let msg = original_mode(&addressed(samples::REF_I12));
    let original = er7::parse_str(&msg).expect("parses").msh().expect("msh");
    let mut conns = Vec::new();
    for _ in 0..200 {
        conns.push(connect(&addr).await);
    }
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, mut s)| {
            let m = msg.replace(
                &format!("|{}|", original.control_id),
                &format!("|CONN{i:04}|"),
            );
            tokio::spawn(async move { exchange(&mut s, m.as_bytes()).await })
        })
        .collect();
    for t in tasks {
        let (code, _, text) = t.await.expect("task").expect("an ACK");
        assert_eq!(code, AckCode::AA, "{text:?}");
    }
    let outbox = org_client(&c, 1, SENDER)
        .await
        .messaging()
        .outbox(pb::OutboxRequest {
            limit: 1000,
            ..Default::default()
        })
        .await
        .expect("outbox")
        .into_inner();
    assert_eq!(outbox.messages.len(), 200);
}

/// A real third-party client: python-hl7's `mllp_send` (PyPI `hl7`, installed by
/// `scripts/test`; run as `$SEALPOST_PYTHON -m hl7.client`) submits a referral and gets
/// AA; the message reaches the inbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn python_hl7_mllp_send_gets_an_aa() {
    let (dir, c, addr) = provider().await;
    let file = dir.path().join("referral.hl7");
    std::fs::write(&file, original_mode(&addressed(samples::REF_I12))).expect("write");
    let (host, port) = addr.rsplit_once(':').expect("host:port");
    let python = std::env::var("SEALPOST_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = tokio::process::Command::new(python)
        .args(["-m", "hl7.client", "--file"])
        .arg(&file)
        .arg("--loose")
        .args(["--port", port, host])
        .output()
        .await
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "mllp_send failed (pip install hl7==0.4.5; scripts/test installs it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("MSA|AA|"), "{stdout}");
    let deadline = tokio::time::Instant::now() + WAIT;
    while hospital_inbox(&c).await.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "never routed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Registers organisations (keys generated by the provider) with their endpoints.
async fn provision(c: &LocalCluster, serial: u64, endpoints: &[(String, &str)]) {
    let admin = client(c, 1).await;
    let mut req = org_request(serial);
    if let Some(o) = req.organisation.as_mut() {
        o.keys = None;
    }
    admin
        .directory()
        .register_organisation(req)
        .await
        .expect("provisioned");
    for (id, accepts) in endpoints {
        admin
            .directory()
            .publish_endpoint(pb::PublishEndpointRequest {
                id: id.clone(),
                display_name: "Desk".into(),
                specialty: "General".into(),
                payload_types: vec![accepts.to_string()],
            })
            .await
            .expect("published");
    }
}

async fn wait_endpoint(c: &LocalCluster, id: &str) {
    let admin = client(c, 1).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while admin
        .directory()
        .get_endpoint(pb::GetEndpointRequest {
            id: id.to_string(),
            ..Default::default()
        })
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{id} never imported"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A receiving clinical system: answers every frame with `code` and reports what it got.
async fn receiving_system(
    code: sealpost_hl7::ack::AckCode,
) -> (String, tokio::sync::mpsc::Receiver<Vec<u8>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    serve_system(listener, vec![code])
}

/// Serves a receiving system on `listener`: each frame is answered with one
/// acknowledgement per code, in order.
fn serve_system(
    listener: tokio::net::TcpListener,
    codes: Vec<sealpost_hl7::ack::AckCode>,
) -> (String, tokio::sync::mpsc::Receiver<Vec<u8>>) {
    let addr = listener.local_addr().expect("addr").to_string();
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let (tx, codes) = (tx.clone(), codes.clone());
            tokio::spawn(async move {
                while let Some(msg) = read_frame(&mut s).await {
                    let msh = er7::parse(&msg).expect("HL7").msh().expect("msh");
                    let _ = tx.send(msg).await;
                    for code in &codes {
                        let err = sealpost_hl7::ack::AckError::new(207, "bed not available");
                        let err = (*code != AckCode::AA && *code != AckCode::CA).then_some(&err);
                        let ack = sealpost_hl7::ack::build_ack(
                            &msh,
                            *code,
                            err,
                            "20261126000000",
                            "RCV1",
                        );
                        if s.write_all(&frame(ack.as_bytes())).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, rx)
}

/// The round trip: python-hl7's `mllp_send` → provider A's MLLP listener → relay →
/// provider B → the receiving system over MLLP, which acknowledges → `Acked` at B →
/// carried back to A.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_hl7_round_trip_across_providers() {
    use sealpost_server::config::ApiLimits;
    use sealpost_server::federation::RelayOptions;
    use sealpost_server::mllp_out::MllpDestination;

    let dir = tempfile::tempdir().expect("tmp");
    let mut providers = LocalCluster::create_federation(
        dir.path(),
        &[
            ("prov-a".to_string(), messaging_opts()),
            ("prov-b".to_string(), messaging_opts()),
        ],
        3,
        (
            messaging_raft_opts(),
            ApiLimits::default(),
            RelayOptions {
                retry_min_ms: 50,
                retry_max_ms: 500,
                directory_pull_ms: 100,
                ..RelayOptions::default()
            },
        ),
    )
    .await
    .expect("providers");
    let mut b = providers.pop().expect("b");
    let mut a = providers.pop().expect("a");
    for c in [&a, &b] {
        c.wait_leader(WAIT).await.expect("leader");
    }
    let practitioner = format!("{}/{}", HpiO::from_serial(HOSPITAL), referred_to());
    provision(
        &a,
        SENDER,
        &[(endpoint(SENDER, "general-practice"), "TEXT")],
    )
    .await;
    provision(&b, HOSPITAL, &[(practitioner.clone(), "REF^I12")]).await;
    wait_endpoint(&a, &practitioner).await;
    wait_endpoint(&b, &endpoint(SENDER, "general-practice")).await;

    let (system, mut received) = receiving_system(AckCode::AA).await;
    let mut dest = MllpDestination::new(
        &sealpost_core::EndpointId::parse(&practitioner).expect("endpoint"),
        &system,
    );
    dest.retry_min_ms = 50;
    dest.retry_max_ms = 500;
    b.set_mllp_destinations(vec![dest])
        .await
        .expect("destination");
    a.set_mllp(
        1,
        vec![MllpListenerConfig::loopback(
            "127.0.0.1:0",
            &HpiO::from_serial(SENDER),
        )],
    )
    .await
    .expect("listener");
    for c in [&a, &b] {
        c.wait_leader(WAIT).await.expect("leader");
    }

    let msg = original_mode(&addressed(samples::REF_I12));
    let file = dir.path().join("referral.hl7");
    std::fs::write(&file, &msg).expect("write");
    let addr = a.node(1).expect("node 1").mllp_addrs[0].to_string();
    let (host, port) = addr.rsplit_once(':').expect("host:port");
    let python = std::env::var("SEALPOST_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = tokio::process::Command::new(python)
        .args(["-m", "hl7.client", "--file"])
        .arg(&file)
        .args(["--loose", "--port", port, host])
        .output()
        .await
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("MSA|AA|"),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let got = tokio::time::timeout(WAIT, received.recv())
        .await
        .expect("the receiving system got it in time")
        .expect("a message");
    assert_eq!(
        er7::parse(&got)
            .expect("HL7")
            .msh()
            .expect("msh")
            .control_id,
        "SUN20250314093000002"
    );
    let gp = org_client(&a, 2, SENDER).await;
    let id = newest_sent(&gp).await;
    let at_a = track_until(&gp, &id, "acked at A", |r| {
        recipient_state(r, &practitioner).0 == "acked"
    })
    .await;
    assert_eq!(recipient_state(&at_a, &practitioner).1, "accepted");
    let hospital = org_client(&b, 1, HOSPITAL).await;
    let at_b = track_until(&hospital, &id, "acked at B", |r| {
        recipient_state(r, &practitioner).0 == "acked"
    })
    .await;
    assert_eq!(
        timeline(&at_b),
        ["received", "decrypted", "routed", "fetched", "acked"]
    );
    converged(&a).await;
    converged(&b).await;
    assert_views_rebuild(&a);
    assert_views_rebuild(&b);
    a.stop_all().await;
    b.stop_all().await;
}

/// A receiving system that is down at first is retried until it answers; its enhanced-mode
/// answer (CA, then the application's AE) becomes `Acked(error)` with its text, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_receiving_system_is_retried_and_its_answer_recorded() {
    use sealpost_server::mllp_out::MllpDestination;

    let (_dir, mut c, addr) = provider().await;
    let practitioner = format!("{}/{}", HpiO::from_serial(HOSPITAL), referred_to());
    // A port with nothing listening yet.
    let reserved = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let system_addr = reserved.local_addr().expect("addr");
    drop(reserved);
    let mut dest = MllpDestination::new(
        &sealpost_core::EndpointId::parse(&practitioner).expect("endpoint"),
        &system_addr.to_string(),
    );
    dest.retry_min_ms = 50;
    dest.retry_max_ms = 200;
    dest.answer_timeout_ms = 2_000;
    c.set_mllp_destinations(vec![dest])
        .await
        .expect("destination");
    c.wait_leader(WAIT).await.expect("leader");
    let addr = c
        .node(1)
        .map(|n| n.mllp_addrs[0].to_string())
        .unwrap_or(addr);
    let mut s = connect(&addr).await;
    let (code, _, _) = exchange(
        &mut s,
        original_mode(&addressed(samples::REF_I12)).as_bytes(),
    )
    .await
    .expect("an ACK");
    assert_eq!(code, AckCode::AA);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let gp = org_client(&c, 1, SENDER).await;
    let id = newest_sent(&gp).await;
    let r = track(&gp, &id).await;
    assert_eq!(
        recipient_state(&r, &practitioner).0,
        "routed",
        "still waiting"
    );

    let listener = tokio::net::TcpListener::bind(system_addr)
        .await
        .expect("the system comes up");
    let (_, mut received) = serve_system(listener, vec![AckCode::CA, AckCode::AE]);
    tokio::time::timeout(WAIT, received.recv())
        .await
        .expect("delivered once the system is up")
        .expect("a message");
    let r = track_until(&gp, &id, "acked", |r| {
        recipient_state(r, &practitioner).0 == "acked"
    })
    .await;
    assert_eq!(recipient_state(&r, &practitioner).1, "error");
    assert_eq!(
        r.timeline
            .iter()
            .filter(|e| e.event == "acked" || e.event == "failed")
            .count(),
        1
    );
    assert_eq!(
        r.timeline.iter().filter(|e| e.event == "fetched").count(),
        1,
        "attempts on an unreachable system record no access: {:?}",
        timeline(&r)
    );
}

/// A TLS client for an MLLP-over-TLS listener, presenting `tls`'s certificate.
async fn tls_connect(
    addr: &str,
    tls: &sealpost_crypto::tls::TlsPaths,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let m = tls.load().expect("tls material");
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(m.ca_pem.as_bytes()) {
        roots.add(c.expect("ca")).expect("root");
    }
    let certs: Vec<_> = CertificateDer::pem_slice_iter(m.identity.cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("cert");
    let key = PrivateKeyDer::from_pem_slice(m.identity.key_pem.as_bytes()).expect("key");
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .expect("client auth");
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("127.0.0.1").expect("name").to_owned();
    connector.connect(name, tcp).await
}

/// MLLP over TLS: a client certificate naming the sending organisation submits and gets
/// AA; a certificate from another CA is refused in the handshake, and one that names no
/// organisation is closed without an answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mllp_over_tls_takes_the_organisation_from_the_certificate() {
    let (_dir, mut c) = messaging_cluster(3, messaging_opts()).await;
    publish_referred_to(&c).await;
    c.set_mllp(1, vec![MllpListenerConfig::tls("127.0.0.1:0")])
        .await
        .expect("TLS listener");
    c.wait_leader(WAIT).await.expect("leader");
    let addr = c.node(1).expect("node 1").mllp_addrs[0].to_string();
    let msg = original_mode(&addressed(samples::REF_I12));

    let gp = c
        .client_identity_for_org("gp-system", Some(&HpiO::from_serial(SENDER)))
        .expect("cert");
    let mut s = tls_connect(&addr, &gp).await.expect("handshake");
    s.write_all(&frame(msg.as_bytes())).await.expect("write");
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    while !got.windows(2).any(|w| w == [0x1c, 0x0d]) {
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .expect("in time")
            .expect("read");
        assert!(n > 0, "closed without an answer");
        got.extend_from_slice(&buf[..n]);
    }
    let start = got.iter().position(|b| *b == 0x0b).expect("start") + 1;
    let end = got.len() - 2;
    let ack = parse_ack(&er7::parse(&got[start..end]).expect("HL7")).expect("an ACK");
    assert_eq!(ack.0, AckCode::AA, "{ack:?}");

    // No organisation in the certificate: closed, nothing sent.
    let anonymous = c.client_identity("no-org-system").expect("cert");
    let mut s = tls_connect(&addr, &anonymous).await.expect("handshake");
    let _ = s.write_all(&frame(msg.as_bytes())).await;
    let n = tokio::time::timeout(WAIT, s.read(&mut buf))
        .await
        .expect("in time")
        .unwrap_or(0);
    assert_eq!(n, 0, "a certificate without an organisation gets no answer");

    // A certificate from another provider's CA: the handshake fails.
    let other_dir = tempfile::tempdir().expect("tmp");
    let other = LocalCluster::create(
        &other_dir.path().join("prov-x"),
        "prov-x",
        1,
        fast_opts(),
        sealpost_server::config::ApiLimits::default(),
    )
    .await
    .expect("another provider");
    let stranger = other
        .client_identity_for_org("stranger", Some(&HpiO::from_serial(SENDER)))
        .expect("cert");
    let refused = match tls_connect(&addr, &stranger).await {
        Err(_) => true,
        // TLS 1.3: the client may finish before the server refuses; the next read fails.
        Ok(mut s) => {
            let _ = s.write_all(&frame(msg.as_bytes())).await;
            matches!(
                tokio::time::timeout(WAIT, s.read(&mut buf)).await,
                Ok(Ok(0)) | Ok(Err(_))
            )
        }
    };
    assert!(refused, "a stranger's certificate was served");
}

/// The sending system is told the outcome: after the hospital acknowledges, the GP's
/// system gets an HL7 application acknowledgement on its own MLLP endpoint naming the
/// control id it used.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sending_system_is_told_the_outcome_over_mllp() {
    use sealpost_server::mllp_notify::MllpNotifyTarget;

    let (_dir, mut c, _) = provider().await;
    let (gp_system, mut told) = receiving_system(AckCode::AA).await;
    let mut target = MllpNotifyTarget::new(&HpiO::from_serial(SENDER), &gp_system);
    target.retry_min_ms = 50;
    c.set_mllp_notify(vec![target])
        .await
        .expect("notify target");
    c.wait_leader(WAIT).await.expect("leader");
    let addr = c.node(1).expect("node 1").mllp_addrs[0].to_string();
    let msg = original_mode(&addressed(samples::REF_I12));
    let mut s = connect(&addr).await;
    let (code, control, _) = exchange(&mut s, msg.as_bytes()).await.expect("an ACK");
    assert_eq!(code, AckCode::AA);

    let deadline = tokio::time::Instant::now() + WAIT;
    let item = loop {
        if let Some(i) = hospital_inbox(&c).await.into_iter().next() {
            break i;
        }
        assert!(tokio::time::Instant::now() < deadline, "never routed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    org_client(&c, 1, HOSPITAL)
        .await
        .messaging()
        .ack(pb::AckRequest {
            message_id: item.message_id.clone(),
            recipient: item.recipient.clone(),
            status: "rejected".into(),
            note: "wrong clinic".into(),
        })
        .await
        .expect("ack");
    let frame = tokio::time::timeout(WAIT, told.recv())
        .await
        .expect("the sending system is told in time")
        .expect("a frame");
    let (code, acked_control, _) =
        parse_ack(&er7::parse(&frame).expect("HL7")).expect("an acknowledgement");
    assert_eq!(code, AckCode::AR, "the hospital rejected it");
    assert_eq!(acked_control, control);
    // Told once: nothing more arrives.
    assert!(
        tokio::time::timeout(Duration::from_millis(800), told.recv())
            .await
            .is_err(),
        "the outcome was told twice"
    );
}
