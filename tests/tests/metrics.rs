//! The operations listener end to end: every node of a running cluster serves `/health`,
//! `/ready` and `/metrics` over plain HTTP on loopback, and the metrics scraped before and
//! after a load of sends move as they must: events, the committed and applied indexes, WAL
//! fsyncs, batches and gRPC answers go up; the receiving organisation's inbox depth is the
//! number of messages routed to it and falls as they are acknowledged; each store's WAL,
//! memtable and table-file bytes are reported, and a snapshot's flush grows the state
//! machine's table files; a refusal shows up under its status code and in the
//! authorization counter; one leader, known by everyone. With `http_tls` the listener
//! speaks HTTPS only, with the node's certificate, to clients that hold just the CA.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use sealpost_core::ids::HpiO;
use sealpost_proto::v1 as pb;
use sealpost_server::local::LocalCluster;

const SENDS: usize = 60;

/// GETs `path` from the operations listener at `addr`: (status code, body).
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    http(addr, "GET", path, &[], None).await
}

/// The samples of one scrape: `name{labels}` → value.
fn parse(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

async fn scrape(c: &LocalCluster, node: u64) -> BTreeMap<String, f64> {
    let addr = c
        .node(node)
        .and_then(|n| n.http_addr)
        .expect("http address");
    let (code, body) = get(addr, "/metrics").await;
    assert_eq!(code, 200, "{body}");
    parse(&body)
}

fn value(m: &BTreeMap<String, f64>, key: &str) -> f64 {
    *m.get(key)
        .unwrap_or_else(|| panic!("{key} is not among the metrics: {:?}", m.keys()))
}

/// Scrapes `node` until `done` holds (bounded by [`WAIT`]); returns the last scrape.
async fn scrape_until(
    c: &LocalCluster,
    node: u64,
    what: &str,
    done: impl Fn(&BTreeMap<String, f64>) -> bool,
) -> BTreeMap<String, f64> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let m = scrape(c, node).await;
        if done(&m) {
            return m;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: {m:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_under_load_and_health_answers() {
    let (_d, c) = messaging_cluster(3, messaging_opts()).await;
    let leader = c.wait_leader(WAIT).await.expect("leader");
    let lab_org = HpiO::from_serial(LAB).to_string();
    let inbox_key = format!("sealpost_inbox_depth{{org=\"{lab_org}\"}}");

    for id in c.node_ids() {
        let addr = c.node(id).and_then(|n| n.http_addr).expect("http address");
        assert_eq!(get(addr, "/health").await.0, 200, "node {id} healthy");
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (code, body) = get(addr, "/ready").await;
            if code == 200 {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "node {id}: {body}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (code, _) = get(addr, "/nothing-here").await;
        assert_eq!(code, 404, "an unknown path is not found");
    }

    let before = scrape(&c, leader).await;
    assert_eq!(value(&before, "sealpost_raft_is_leader"), 1.0);
    assert_eq!(value(&before, "sealpost_node_id"), leader as f64);

    // The load: sends from the practice to the lab through the leader, concurrently.
    let sender = org_client(&c, leader, SENDER).await;
    let to = [endpoint(LAB, "results")];
    let mut sends = tokio::task::JoinSet::new();
    for i in 0..SENDS {
        let sender = sender.clone();
        let req = send_request(&to, format!("result {i}").as_bytes(), &format!("m-{i}"));
        sends.spawn(async move { send_ok(&sender, req).await.message_id });
    }
    let mut ids = Vec::new();
    while let Some(id) = sends.join_next().await {
        ids.push(id.expect("send task"));
    }
    assert_eq!(ids.len(), SENDS);

    // Every node sees the routed messages waiting in the lab's inbox.
    for id in c.node_ids() {
        scrape_until(&c, id, "the lab's inbox fills", |m| {
            m.get(&inbox_key).copied() == Some(SENDS as f64)
        })
        .await;
    }
    let after = scrape(&c, leader).await;
    let grew = |k: &str, by: f64| {
        let (b, a) = (before.get(k).copied().unwrap_or(0.0), value(&after, k));
        assert!(a >= b + by, "{k}: {b} before, {a} after, expected +{by}");
    };
    // Each send is at least its Sent and its Routed event.
    grew("sealpost_events_total", 2.0 * SENDS as f64);
    grew("sealpost_raft_committed_index", 1.0);
    grew("sealpost_raft_applied_index", 1.0);
    grew("sealpost_raft_log_fsync_seconds_count", 1.0);
    grew("sealpost_raft_batch_proposals_count", 1.0);
    // Every send is one proposal batched on the leader.
    grew("sealpost_raft_batch_proposals_sum", SENDS as f64);
    grew("sealpost_grpc_responses_total{code=\"Ok\"}", SENDS as f64);
    assert_eq!(value(&after, "sealpost_dead_letters"), 0.0);
    assert_eq!(value(&after, "sealpost_queue_depth_truncated"), 0.0);
    assert!(
        value(&after, "sealpost_raft_applied_index")
            <= value(&after, "sealpost_raft_last_log_index")
    );
    // One leader, and every node names it.
    for id in c.node_ids() {
        let m = scrape(&c, id).await;
        assert_eq!(
            value(&m, "sealpost_raft_leader_id"),
            leader as f64,
            "node {id}"
        );
        assert_eq!(
            value(&m, "sealpost_raft_is_leader"),
            f64::from(u8::from(id == leader)),
            "node {id}"
        );
    }
    // The leader reports how far each follower holds the log.
    for id in c.node_ids().into_iter().filter(|id| *id != leader) {
        let k = format!("sealpost_raft_follower_matched_index{{follower=\"{id}\"}}");
        scrape_until(&c, leader, "followers catch up", |m| {
            m.get(&k).copied().unwrap_or(0.0) >= value(&before, "sealpost_raft_applied_index")
        })
        .await;
    }

    // Each store's sizes: the sends are in the Raft log's WAL on every node, and in the
    // state machine's memtables (whose writes skip the WAL) until a snapshot flushes them
    // into table files.
    let store = |name: &str, store: &str| format!("sealpost_{name}{{store=\"{store}\"}}");
    for id in c.node_ids() {
        let m = scrape(&c, id).await;
        let wal = value(&m, &store("store_wal_bytes", "raft_log"));
        assert!(
            wal > (SENDS * 64) as f64,
            "node {id}: raft log WAL {wal} bytes"
        );
        let mem = value(&m, &store("store_memtable_bytes", "state_machine"));
        assert!(mem > 0.0, "node {id}: state machine memtables {mem} bytes");
        value(&m, &store("store_sst_bytes", "raft_log"));
        value(&m, &store("store_wal_bytes", "state_machine"));
        // The storage floor: the free space it compares, the floor, and no refusal.
        assert!(value(&m, "sealpost_storage_free_bytes") > 0.0, "node {id}");
        assert_eq!(
            value(&m, "sealpost_storage_free_bytes_min"),
            sealpost_server::config::ApiLimits::default().storage_free_bytes_min as f64
        );
        assert_eq!(
            value(&m, "sealpost_storage_refused_total"),
            0.0,
            "node {id}"
        );
    }
    let sst = store("store_sst_bytes", "state_machine");
    let sst_before = value(&scrape(&c, leader).await, &sst);
    c.node(leader)
        .expect("leader")
        .raft
        .snapshot()
        .await
        .expect("snapshot");
    scrape_until(&c, leader, "the snapshot's flush writes table files", |m| {
        m.get(&sst).copied().unwrap_or(0.0) > sst_before
    })
    .await;

    // The lab acknowledges a third: its inbox depth falls by as many.
    let lab = org_client(&c, leader, LAB).await;
    let acked = SENDS / 3;
    for id in ids.iter().take(acked) {
        lab.messaging()
            .ack(pb::AckRequest {
                message_id: id.clone(),
                recipient: String::new(),
                status: "accepted".into(),
                note: String::new(),
            })
            .await
            .expect("ack");
    }
    scrape_until(&c, leader, "the lab's inbox drains", |m| {
        m.get(&inbox_key).copied() == Some((SENDS - acked) as f64)
    })
    .await;

    // A refusal is counted under its code and by the authorization counter.
    let denied_before = value(&scrape(&c, leader).await, "sealpost_authz_denied_total");
    let hospital = org_client(&c, leader, HOSPITAL).await;
    let err = hospital
        .messaging()
        .fetch(pb::FetchRequest {
            message_id: ids[0].clone(),
            recipient: String::new(),
        })
        .await
        .expect_err("not the hospital's");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    let m = scrape(&c, leader).await;
    assert!(value(&m, "sealpost_authz_denied_total") > denied_before);
    assert!(
        value(
            &m,
            "sealpost_grpc_responses_total{code=\"PermissionDenied\"}"
        ) >= 1.0
    );
}

/// The operations listener holds at most `HTTP_CONNECTIONS_MAX` connections: one more is
/// not served while they stay open, and is served as soon as one closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operations_listener_caps_its_connections() {
    use sealpost_server::metrics::HTTP_CONNECTIONS_MAX;
    let (_d, c) = cluster(1).await;
    let addr = c.node(1).and_then(|n| n.http_addr).expect("http address");
    let mut idle = Vec::new();
    for _ in 0..HTTP_CONNECTIONS_MAX {
        idle.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
    }
    // Give the listener time to take every one of them.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let waiting = tokio::spawn(async move { http(addr, "GET", "/health", &[], None).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "served past the connection cap");
    drop(idle.pop());
    let (code, _) = tokio::time::timeout(WAIT, waiting)
        .await
        .expect("served once a connection closed")
        .expect("task");
    assert_eq!(code, 200);
}

/// A TLS client of the provider's CA, presenting no certificate of its own.
fn ca_only_connector(ca_pem: &std::path::Path) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca_pem).expect("the CA file") {
        roots.add(c.expect("a CA certificate")).expect("added");
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_http_tls_the_operations_listener_serves_https_only() {
    let (_d, mut c) = cluster(1).await;
    c.stop_node(1).await.expect("stop");
    c.update_config(1, |cfg| cfg.http_tls = true)
        .expect("http_tls");
    c.start_node(1).await.expect("start");
    c.wait_leader(WAIT).await.expect("a leader");
    let addr = c.node(1).expect("node 1").http_addr.expect("http_listen");

    // With the CA, and no certificate of its own, a client reads every page.
    let tls = ca_only_connector(&c.dir.join("ca.pem"));
    for (path, needle) in [
        ("/metrics", "sealpost_runtime_workers"),
        ("/health", ""),
        ("/ready", "ready"),
    ] {
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let stream = tls
            .connect(
                rustls::pki_types::ServerName::IpAddress(addr.ip().into()),
                tcp,
            )
            .await
            .expect("a handshake with the node's certificate");
        let (code, body) = http_over(stream, addr, "GET", path, &[], None).await;
        assert_eq!(code, 200, "{path}: {body}");
        assert!(body.contains(needle), "{path}: {body}");
    }

    // Plain HTTP gets no HTTP answer.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut raw = Vec::new();
        let _ = tokio::time::timeout(WAIT, (&mut s).take(4096).read_to_end(&mut raw)).await;
        assert!(
            !raw.starts_with(b"HTTP/"),
            "{:?}",
            String::from_utf8_lossy(&raw)
        );
    }

    // Console tokens name the console over HTTPS.
    let minted = client(&c, 1)
        .await
        .admin()
        .console_token(pb::ConsoleTokenRequest::default())
        .await
        .expect("a console token")
        .into_inner();
    assert_eq!(minted.console_url, format!("https://{addr}/console/"));
}
