//! No secret or patient data in the logs: a whole scenario (send, route, fetch,
//! acknowledge; a tampered envelope failed back; MLLP input good and malformed; refusals;
//! an audit replay; denial summaries) runs with every log line of every crate captured (sealpost's at
//! TRACE, the libraries' at DEBUG), with marker strings in the payloads and the patient's
//! name; then every line, the client-visible errors and the status output are scanned for
//! those markers and for the provider's key material. Its own test binary, because the
//! log subscriber is global.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use sealpost_core::ids::HpiO;
use sealpost_proto::v1 as pb;
use sealpost_server::messaging::Tamper;
use sealpost_server::mllp::MllpListenerConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// In the patient's name (PID-5) and in the clinical text.
const SURNAME: &str = "ZQXMARKERSURNAME";
const GIVEN: &str = "ZQXMARKERGIVEN";
const CLINICAL: &str = "ZQXMARKERRESULT";

/// Everything written to the log, shared with the subscriber.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn hl7_with_markers(control_id: &str) -> String {
    sealpost_hl7::samples::ORU_R01
        .replace("8003620000001011", HpiO::from_serial(SENDER).as_str())
        .replace("8003620000001037", HpiO::from_serial(HOSPITAL).as_str())
        .replace("SAMPLE^Fictional", &format!("{SURNAME}^{GIVEN}"))
        .replace("Point of care results", CLINICAL)
        .replace("SUN20250314101500042", control_id)
}

/// Sends one MLLP frame and reads whatever comes back within a few seconds.
async fn mllp_exchange(addr: &str, body: &[u8]) -> Vec<u8> {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut frame = vec![0x0b];
    frame.extend_from_slice(body);
    frame.extend_from_slice(&[0x1c, 0x0d]);
    s.write_all(&frame).await.expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + WAIT;
    while !got.ends_with(&[0x1c, 0x0d]) {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_payload_patient_name_or_key_reaches_a_log_line() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            "debug,sealpost_server=trace,sealpost_raft=trace,sealpost_store=trace,\
             sealpost_core=trace,sealpost_crypto=trace,sealpost_hl7=trace,h2=info,hyper=info",
        ))
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    let (_dir, mut c) = messaging_cluster(3, messaging_opts()).await;
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
    let mut seen_by_clients = Vec::new();

    // A result over gRPC: sent, routed, fetched, acknowledged.
    let sender = org_client(&c, 1, SENDER).await;
    let lab = endpoint(LAB, "results");
    let mut req = send_request(
        std::slice::from_ref(&lab),
        hl7_with_markers("CTRL1").as_bytes(),
        "marker-1",
    );
    req.payload_type = "ORU^R01".into();
    let sent = send_ok(&sender, req).await;
    let lab_client = org_client(&c, 2, LAB).await;
    track_until(&lab_client, &sent.message_id, "routed", |r| {
        recipient_state(r, &lab).0 == "routed"
    })
    .await;
    let fetched = lab_client
        .messaging()
        .fetch(pb::FetchRequest {
            message_id: sent.message_id.clone(),
            recipient: lab.clone(),
        })
        .await
        .expect("fetch")
        .into_inner();
    assert!(String::from_utf8_lossy(&fetched.payload).contains(SURNAME));
    lab_client
        .messaging()
        .ack(pb::AckRequest {
            message_id: sent.message_id.clone(),
            recipient: lab.clone(),
            status: "accepted".into(),
            note: String::new(),
        })
        .await
        .expect("ack");

    // A tampered envelope: opened, refused, failed back to the sender.
    c.node(1)
        .expect("node 1")
        .faults
        .tamper_next_envelope(Tamper::Ciphertext);
    let mut req = send_request(
        std::slice::from_ref(&lab),
        hl7_with_markers("CTRL2").as_bytes(),
        "marker-2",
    );
    req.payload_type = "ORU^R01".into();
    let tampered = send_ok(&sender, req).await;
    track_until(&sender, &tampered.message_id, "failed", |r| {
        recipient_state(r, &lab).0 == "failed"
    })
    .await;

    // Refusals whose errors the clients see.
    let hospital = org_client(&c, 3, HOSPITAL).await;
    for r in [
        hospital
            .messaging()
            .fetch(pb::FetchRequest {
                message_id: sent.message_id.clone(),
                recipient: lab.clone(),
            })
            .await
            .map(|_| ()),
        sender
            .messaging()
            .send(pb::SendRequest {
                payload_type: "NO-SUCH-TYPE".into(),
                ..send_request(std::slice::from_ref(&lab), CLINICAL.as_bytes(), "marker-3")
            })
            .await
            .map(|_| ()),
    ] {
        seen_by_clients.push(r.expect_err("refused").message().to_string());
    }

    // MLLP: a message addressed to the hospital, and malformed input carrying markers.
    let addr = c.node(1).expect("node 1").mllp_addrs[0].to_string();
    let answers = [
        mllp_exchange(&addr, hl7_with_markers("CTRL4").as_bytes()).await,
        mllp_exchange(
            &addr,
            format!("PID|1||{SURNAME}^{GIVEN}\rOBX|1|TX|||{CLINICAL}\r").as_bytes(),
        )
        .await,
        mllp_exchange(
            &addr,
            format!("MSH|^~\\&|X|Y|Z|W|2025||ORU^R01|C5|P|2.4\rPID|1||{SURNAME}\u{0}{CLINICAL}")
                .as_bytes(),
        )
        .await,
    ];
    // (The acknowledgements go back to the system that sent those bytes; they are not
    // scanned, but each connection must have been answered or closed.)
    assert_eq!(answers.len(), 3);

    // An operator's replay, and the operator's status of every member.
    let operator = client(&c, 1).await;
    let mut replay = operator
        .audit()
        .replay(pb::ReplayRequest::default())
        .await
        .expect("replay")
        .into_inner();
    let mut replayed = 0;
    while let Ok(Some(Ok(_))) = tokio::time::timeout(WAIT, replay.message())
        .await
        .map(|m| m.transpose())
    {
        replayed += 1;
    }
    assert!(replayed > 10, "the replay streamed {replayed} events");
    let status = operator
        .admin()
        .status(pb::StatusRequest { all_members: true })
        .await
        .expect("status")
        .into_inner();
    seen_by_clients.push(format!("{status:?}"));
    for n in 1..=3 {
        let node = c.node(n).expect("node");
        let _ = node.guard.flush(&node.raft).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    converged(&c).await;

    // The provider's secrets as they sit on disk: the KEK and the node and CA keys.
    let mut secrets: Vec<(String, String)> = Vec::new();
    let kek = std::fs::read(c.dir.join("kek")).expect("kek");
    secrets.push((
        "the KEK file".into(),
        String::from_utf8_lossy(&kek).trim().to_string(),
    ));
    secrets.push(("the KEK bytes (hex)".into(), hex::encode(&kek)));
    for key in ["ca-key.pem", "node-1/tls/node-key.pem"] {
        let pem = std::fs::read_to_string(c.dir.join(key)).expect("key");
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        // Past the PKCS#8 header (the same in every key of a type): the secret itself.
        let secret = body
            .get(48..88)
            .expect("a PKCS#8 key is longer than 88 characters");
        secrets.push((key.to_string(), secret.to_string()));
    }
    let log = String::from_utf8_lossy(
        &captured
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    )
    .to_string();
    let lines = log.lines().count();
    // The capture works: the scenario's own events are in it.
    assert!(lines > 200, "only {lines} log lines were captured");
    assert!(
        log.contains(&sent.message_id),
        "the log never names the sent message"
    );
    let markers = [SURNAME, GIVEN, CLINICAL];
    let mut leaks = Vec::new();
    for (i, line) in log.lines().enumerate() {
        for m in markers {
            if line.contains(m) {
                leaks.push(format!("log line {i} has {m}: {line}"));
            }
        }
        for (what, s) in &secrets {
            if !s.is_empty() && line.contains(s.as_str()) {
                leaks.push(format!("log line {i} has {what}"));
            }
        }
        if line.contains("PRIVATE KEY") {
            leaks.push(format!("log line {i} has a PEM private key"));
        }
    }
    for text in &seen_by_clients {
        for m in markers {
            if text.contains(m) {
                leaks.push(format!("a client saw {m}: {text}"));
            }
        }
    }
    assert!(
        leaks.is_empty(),
        "{} leaks:\n{}",
        leaks.len(),
        leaks.join("\n")
    );
}
