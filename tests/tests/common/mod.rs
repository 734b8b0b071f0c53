//! Shared helpers for the end-to-end tests: a local cluster with fast timings, clients
//! with a real client certificate, and convergence checks.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use sealpost_client::{Client, Profile};
use sealpost_core::ids::HpiO;
use sealpost_proto::v1 as pb;
use sealpost_raft::RaftOptions;
use sealpost_server::config::ApiLimits;
use sealpost_server::local::LocalCluster;
use tempfile::TempDir;
use tonic::Status;

/// Events a new cluster holds before a test writes anything: its leader's
/// `cluster_version_set` (`LocalCluster::create*` wait for it).
pub const SETTLE_EVENTS: u64 = 1;

/// Bound on every wait in these tests.
pub const WAIT: Duration = Duration::from_secs(30);

pub fn fast_opts() -> RaftOptions {
    RaftOptions {
        heartbeat_interval_ms: 50,
        election_timeout_min_ms: 300,
        election_timeout_max_ms: 600,
        leader_wait_ms: 3_000,
        forward_timeout_ms: 3_000,
        snapshot_keep_log_entries: 0,
        // Small messages, so a modest snapshot needs several of them.
        grpc_message_bytes_max: 256 * 1024,
        append_bytes_max: 128 * 1024,
        batch_bytes_max: 64 * 1024,
        snapshot_chunk_bytes: 32 * 1024,
        snapshot_interval_secs: 0,
        ..RaftOptions::default()
    }
}

pub async fn cluster(nodes: u64) -> (TempDir, LocalCluster) {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = LocalCluster::create(
        &dir.path().join("prov-a"),
        "prov-a",
        nodes,
        fast_opts(),
        ApiLimits::default(),
    )
    .await
    .expect("cluster starts");
    c.wait_leader(WAIT).await.expect("a leader is elected");
    (dir, c)
}

/// A client connected to one node, with the `tester` client certificate.
pub async fn client(c: &LocalCluster, node: u64) -> Client {
    let tls = c.client_identity("tester").expect("client certificate");
    let addr = c.addrs()[&node].clone();
    Client::connect(&Profile {
        endpoints: vec![addr],
        tls,
        organisation: None,
        default_endpoint: None,
        provider: Some("prov-a".into()),
    })
    .await
    .expect("client connects")
}

/// Deterministic but varied key bytes, so stored records do not compress away.
pub fn key_bytes(serial: u64, salt: u8) -> Vec<u8> {
    let mut x = serial.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(salt);
    (0..32)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x & 0xff) as u8 | 1
        })
        .collect()
}

pub fn org_request(serial: u64) -> pb::RegisterOrganisationRequest {
    pb::RegisterOrganisationRequest {
        organisation: Some(pb::Organisation {
            hpio: HpiO::from_serial(serial).to_string(),
            name: format!("Clinic number {serial}"),
            suburb: "Carlton".into(),
            state: "VIC".into(),
            postcode: "3053".into(),
            keys: Some(pb::PublicKeys {
                key_id: "k1".into(),
                encryption: key_bytes(serial, 1),
                signing: key_bytes(serial, 2),
            }),
            ..Default::default()
        }),
    }
}

pub async fn register(c: &Client, serial: u64) -> Result<pb::WriteResult, Status> {
    c.directory()
        .register_organisation(org_request(serial))
        .await
        .map(|r| r.into_inner())
}

/// Registers, retrying while leadership is in flux (bounded). A retry that finds the
/// organisation already registered counts as success: the first attempt landed.
pub async fn register_retrying(c: &Client, serial: u64) -> Result<(), Status> {
    let mut last = None;
    for _ in 0..60 {
        match register(c, serial).await {
            Ok(_) => return Ok(()),
            Err(s) if s.code() == tonic::Code::AlreadyExists && last.is_some() => return Ok(()),
            Err(s) if sealpost_client::retry_may_help(&s) => {
                last = Some(s);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(s) => return Err(s),
        }
    }
    Err(last.unwrap_or_else(|| Status::unavailable("no attempt")))
}

/// A node of `c` other than `leader`.
pub fn a_follower(c: &LocalCluster, leader: u64) -> u64 {
    c.node_ids()
        .into_iter()
        .find(|id| *id != leader)
        .expect("a follower")
}

/// (applied index, event count, chain head) of every running node.
pub fn progress(c: &LocalCluster) -> BTreeMap<u64, (u64, u64, [u8; 32])> {
    c.running_ids()
        .into_iter()
        .filter_map(|id| {
            let s = c.node(id)?.raft.status().ok()?;
            Some((
                id,
                (s.last_applied_index, s.sm.event_count, s.sm.chain_head),
            ))
        })
        .collect()
}

/// Waits until every running node applied the same index with the same chain head.
pub async fn converged(c: &LocalCluster) -> (u64, u64, [u8; 32]) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let p = progress(c);
        let first = p.values().next().copied().expect("a running node");
        if p.len() == c.running_ids().len() && p.values().all(|v| *v == first) {
            return first;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nodes did not converge: {p:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Raft and API limits for messaging tests: payloads up to a few hundred KiB fit.
pub fn messaging_raft_opts() -> RaftOptions {
    RaftOptions {
        grpc_message_bytes_max: 8 * 1024 * 1024,
        append_bytes_max: 2 * 1024 * 1024,
        batch_bytes_max: 4 * 1024 * 1024,
        snapshot_chunk_bytes: 256 * 1024,
        ..fast_opts()
    }
}

/// Messaging options for tests: a 1 MiB payload limit and a fast worker tick.
pub fn messaging_opts() -> sealpost_server::config::MessagingOptions {
    sealpost_server::config::MessagingOptions {
        payload_bytes_max: 1024 * 1024,
        worker_tick_ms: 100,
        ..Default::default()
    }
}

/// The demo-like directory of the messaging tests: organisation 1 (a GP) sends to
/// organisation 2 (a lab with `results` and `requests`) and organisation 3 (a hospital
/// with `cardiology`). The provider generates every organisation's keys.
pub const SENDER: u64 = 1;
pub const LAB: u64 = 2;
pub const HOSPITAL: u64 = 3;

pub fn endpoint(org: u64, slug: &str) -> String {
    format!("{}/{slug}", HpiO::from_serial(org))
}

pub async fn messaging_cluster(
    nodes: u64,
    opts: sealpost_server::config::MessagingOptions,
) -> (TempDir, LocalCluster) {
    messaging_cluster_with(nodes, ApiLimits::default(), opts).await
}

/// [`messaging_cluster`] with these API limits.
pub async fn messaging_cluster_with(
    nodes: u64,
    api: ApiLimits,
    opts: sealpost_server::config::MessagingOptions,
) -> (TempDir, LocalCluster) {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = LocalCluster::create_with(
        &dir.path().join("prov-a"),
        "prov-a",
        nodes,
        messaging_raft_opts(),
        api,
        opts,
    )
    .await
    .expect("cluster starts");
    c.wait_leader(WAIT).await.expect("a leader is elected");
    let admin = client(&c, 1).await;
    let mut dir_client = admin.directory();
    for (serial, services) in [
        (SENDER, vec![("general-practice", vec!["ORU^R01", "TEXT"])]),
        (
            LAB,
            vec![
                ("results", vec!["ORU^R01", "TEXT"]),
                ("requests", vec!["REF^I12"]),
            ],
        ),
        (
            HOSPITAL,
            vec![("cardiology", vec!["REF^I12", "TEXT", "PDF"])],
        ),
    ] {
        let mut req = org_request(serial);
        if let Some(o) = req.organisation.as_mut() {
            o.keys = None; // provisioned by the provider
        }
        dir_client
            .register_organisation(req)
            .await
            .expect("organisation provisioned");
        for (slug, types) in services {
            dir_client
                .publish_endpoint(pb::PublishEndpointRequest {
                    id: endpoint(serial, slug),
                    display_name: format!("{slug} desk"),
                    specialty: "General".into(),
                    payload_types: types.into_iter().map(String::from).collect(),
                })
                .await
                .expect("endpoint published");
        }
    }
    (dir, c)
}

/// A client acting for organisation `serial`, connected to `node`.
pub async fn org_client(c: &LocalCluster, node: u64, serial: u64) -> Client {
    let org = HpiO::from_serial(serial);
    let tls = c
        .client_identity_for_org(&format!("org-{serial}"), Some(&org))
        .expect("client certificate");
    Client::connect(&Profile {
        endpoints: vec![c.addrs()[&node].clone()],
        tls,
        organisation: Some(org.to_string()),
        default_endpoint: None,
        provider: Some("prov-a".into()),
    })
    .await
    .expect("client connects")
}

pub fn send_request(to: &[String], payload: &[u8], cid: &str) -> pb::SendRequest {
    pb::SendRequest {
        from_org: HpiO::from_serial(SENDER).to_string(),
        to: to.to_vec(),
        payload_type: "TEXT".into(),
        client_message_id: cid.into(),
        payload: payload.to_vec(),
        ..Default::default()
    }
}

/// Sends and expects the node to accept.
pub async fn send_ok(c: &Client, req: pb::SendRequest) -> pb::SendReply {
    c.messaging().send(req).await.expect("send").into_inner()
}

/// Tracks a message until `done` holds for its summary (bounded by [`WAIT`]).
pub async fn track_until(
    c: &Client,
    id: &str,
    what: &str,
    done: impl Fn(&pb::TrackReply) -> bool,
) -> pb::TrackReply {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let r = c
            .messaging()
            .track(pb::TrackRequest {
                message_id: id.into(),
            })
            .await
            .map(|r| r.into_inner());
        if let Ok(r) = &r
            && done(r)
        {
            return r.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "message {id} never reached {what}: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The state of one recipient in a track reply.
pub fn recipient_state(r: &pb::TrackReply, endpoint: &str) -> (String, String) {
    r.message
        .as_ref()
        .and_then(|m| m.recipients.iter().find(|x| x.endpoint == endpoint))
        .map(|x| (x.state.clone(), x.outcome.clone()))
        .unwrap_or_default()
}

/// The timeline's event names, in order.
pub fn timeline(r: &pb::TrackReply) -> Vec<String> {
    r.timeline.iter().map(|e| e.event.clone()).collect()
}

/// The first page of the client's organisation's outbox, newest first.
pub async fn outbox(c: &Client) -> pb::OutboxReply {
    c.messaging()
        .outbox(pb::OutboxRequest::default())
        .await
        .expect("outbox")
        .into_inner()
}

/// The id of the newest message the client's organisation sent.
pub async fn newest_sent(c: &Client) -> String {
    outbox(c)
        .await
        .messages
        .first()
        .map(|m| m.message_id.clone())
        .expect("a sent message")
}

/// One track answer.
pub async fn track(c: &Client, id: &str) -> pb::TrackReply {
    c.messaging()
        .track(pb::TrackRequest {
            message_id: id.to_string(),
        })
        .await
        .expect("track")
        .into_inner()
}

/// Every running node's views equal their rebuild from its event store (invariant 5).
pub fn assert_views_rebuild(c: &LocalCluster) {
    for id in c.running_ids() {
        let report = c
            .node(id)
            .expect("running")
            .raft
            .view()
            .rebuild_views_check()
            .expect("rebuild check");
        assert!(
            report.all_equal(),
            "node {id} of {}: views differ from the fold of the event store: {:?}",
            c.provider,
            report
                .views
                .iter()
                .filter(|v| !v.equal())
                .map(|v| (v.name, v.live_keys, v.rebuilt_keys))
                .collect::<Vec<_>>()
        );
    }
}

/// Bytes of one HTTP response the tests read, at most.
pub const HTTP_RESPONSE_BYTES_MAX: u64 = 4 * 1024 * 1024;

/// One HTTP/1.1 request to a node's operations listener (plain HTTP on loopback), with
/// extra header lines and a JSON body when given: (status code, body).
pub async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, String) {
    let s = tokio::time::timeout(WAIT, tokio::net::TcpStream::connect(addr))
        .await
        .expect("connected in time")
        .expect("connect");
    http_over(s, addr, method, path, headers, body).await
}

/// [`http`] over a connection already open (a TLS stream, say).
pub async fn http_over<S>(
    mut s: S,
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fut = async {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(b) = body {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            ));
        }
        req.push_str("\r\n");
        req.push_str(body.unwrap_or(""));
        s.write_all(req.as_bytes()).await.expect("request");
        let mut raw = Vec::new();
        s.take(HTTP_RESPONSE_BYTES_MAX)
            .read_to_end(&mut raw)
            .await
            .expect("response");
        let text = String::from_utf8(raw).expect("utf-8");
        let (head, body) = text.split_once("\r\n\r\n").expect("a header block");
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("a status code");
        (code, body.to_string())
    };
    tokio::time::timeout(WAIT, fut)
        .await
        .expect("answered in time")
}

/// A cluster whose receivers have 1.5 s to acknowledge, and one message from the practice
/// to the lab's results that nobody acknowledges: a dead letter. Returns the practice's
/// client, the message id and the lab endpoint.
pub async fn with_dead_letter(cid: &str) -> (TempDir, LocalCluster, Client, String, String) {
    let (dir, c) = messaging_cluster(
        3,
        sealpost_server::config::MessagingOptions {
            ack_window_ms: 1_500,
            ..messaging_opts()
        },
    )
    .await;
    let gp = org_client(&c, 1, SENDER).await;
    let lab = endpoint(LAB, "results");
    let id = send_ok(
        &gp,
        send_request(std::slice::from_ref(&lab), b"result", cid),
    )
    .await
    .message_id;
    track_until(&gp, &id, "failed unacknowledged", |r| {
        recipient_state(r, &lab).0 == "failed"
    })
    .await;
    (dir, c, gp, id, lab)
}

/// The members node `id` knows: id → (address, voter).
pub fn members_of(c: &LocalCluster, id: u64) -> BTreeMap<u64, (String, bool)> {
    c.node(id)
        .expect("node")
        .raft
        .status()
        .expect("status")
        .members
}
