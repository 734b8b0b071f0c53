//! The node's operations listener: HTTP on `http_listen` (HTTPS with the node's certificate
//! when `http_tls` is set), apart from the client port, serving `/metrics` (Prometheus
//! text), `/health` (the process serves and its stores are readable) and `/ready` (this
//! node knows a leader and has applied what it was told is committed, within a margin). Nothing here carries a payload, a key or a patient name:
//! the labels are node ids, organisation ids (HPI-Os), provider names and status codes.
//!
//! Values that already live elsewhere (Raft's term and indexes, the views' queue depths,
//! the TLS and authorization counters) are read at scrape time by [`NodeCollector`]; the
//! histograms (WAL fsync seconds, proposals and bytes per batch) are observed where the
//! work happens and registered here.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use sealpost_raft::RaftNode;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::authz::Guard;
use crate::storage_floor::StorageFloor;
use crate::tls::ServerTls;

/// Keys a queue-depth count walks per column family and scrape, at most; past it the
/// gauge stops and `sealpost_queue_depth_truncated` is 1.
pub const METRICS_SCAN_KEYS_MAX: usize = 100_000;
/// Requests the operations listener serves at once, at most; more wait.
pub const HTTP_REQUESTS_IN_FLIGHT_MAX: usize = 16;
/// Connections the operations listener holds open at once, at most; more wait in the
/// listen backlog until one closes.
pub const HTTP_CONNECTIONS_MAX: usize = 64;
/// Time one operations request may take.
pub const HTTP_REQUEST_TIMEOUT_MS: u64 = 10_000;
/// How far behind the committed index a node may have applied and still be ready.
pub const READY_APPLY_LAG_ENTRIES_MAX: u64 = 1_000;

/// gRPC answers by status code (`OK`, `NOT_FOUND`, ...): errors by kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: String,
}

/// gRPC status codes, `OK` (0) to `UNAUTHENTICATED` (16).
const GRPC_CODES: i32 = 17;
/// Where an out-of-range `grpc-status` is counted (as tonic reads it: `Unknown`).
const GRPC_CODE_UNKNOWN: usize = 2;

/// The node's metrics: the registry and the counters the gRPC layer adds to.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// gRPC responses, one counter per status code (index = code), made once: counting a
    /// response neither allocates a label nor looks one up.
    grpc_responses: Arc<[Counter]>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Registers everything one node exports.
    pub fn new(raft: &RaftNode, tls: &ServerTls, (guard, floor): (&Guard, &StorageFloor)) -> Self {
        let mut registry = Registry::with_prefix("sealpost");
        let family = Family::<CodeLabel, Counter>::default();
        registry.register(
            "grpc_responses",
            "gRPC responses by status code (errors by kind)",
            family.clone(),
        );
        let grpc_responses = (0..GRPC_CODES)
            .map(|code| {
                let label = CodeLabel {
                    code: format!("{:?}", tonic::Code::from_i32(code)),
                };
                family.get_or_create(&label).clone()
            })
            .collect();
        registry.register(
            "raft_log_fsync_seconds",
            "Seconds each fsync of the Raft log's WAL took",
            raft.log_fsync_seconds().histogram,
        );
        let batches = raft.batch_metrics().clone();
        registry.register(
            "raft_batch_proposals",
            "Proposals per batch this node committed or forwarded",
            batches.proposals,
        );
        registry.register("raft_batch_bytes", "Encoded bytes per batch", batches.bytes);
        registry.register(
            "raft_proposals_overloaded",
            "Proposals refused at once because the queue was full",
            batches.overloaded,
        );
        registry.register(
            "raft_commit_seconds",
            "Seconds from a batch leaving the proposal queue until it is committed",
            batches.commit_seconds.histogram,
        );
        registry.register_collector(Box::new(NodeCollector {
            raft: raft.clone(),
            tls: tls.clone(),
            guard: guard.clone(),
            floor: floor.clone(),
            started: Instant::now(),
        }));
        Self {
            registry: Arc::new(registry),
            grpc_responses,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    /// Counts one gRPC response by the `grpc-status` it carries in its headers (a unary
    /// error or a refusal; a streaming error sent in trailers is not seen here).
    pub fn count_grpc<B>(&self, resp: &axum::http::Response<B>) {
        let code = resp
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i32>().ok())
            .unwrap_or(0);
        let at = usize::try_from(code)
            .ok()
            .filter(|c| *c < self.grpc_responses.len())
            .unwrap_or(GRPC_CODE_UNKNOWN);
        self.grpc_responses[at].inc();
    }
}

/// Reads the values that live elsewhere at scrape time.
struct NodeCollector {
    raft: RaftNode,
    tls: ServerTls,
    guard: Guard,
    floor: StorageFloor,
    started: Instant,
}

impl std::fmt::Debug for NodeCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCollector")
            .field("node", &self.raft.id())
            .finish_non_exhaustive()
    }
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    let m = e.encode_descriptor(name, help, None, g.metric_type())?;
    g.encode(m)
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    let m = e.encode_descriptor(name, help, None, c.metric_type())?;
    c.encode(m)
}

/// One metric per label value, under one descriptor.
fn family_of<'a, M: EncodeMetric>(
    e: &mut DescriptorEncoder,
    (name, help, label): (&str, &str, &str),
    values: impl Iterator<Item = (&'a str, M)>,
    kind: prometheus_client::metrics::MetricType,
) -> std::fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, kind)?;
    for (k, v) in values {
        v.encode(m.encode_family(&[(label, k)])?)?;
    }
    Ok(())
}

fn gauges_by<'a>(
    e: &mut DescriptorEncoder,
    what: (&str, &str, &str),
    values: impl Iterator<Item = (&'a str, i64)>,
) -> std::fmt::Result {
    let kind = prometheus_client::metrics::MetricType::Gauge;
    family_of(e, what, values.map(|(k, v)| (k, ConstGauge::new(v))), kind)
}

fn counters_by<'a>(
    e: &mut DescriptorEncoder,
    what: (&str, &str, &str),
    values: impl Iterator<Item = (&'a str, u64)>,
) -> std::fmt::Result {
    let kind = prometheus_client::metrics::MetricType::Counter;
    family_of(
        e,
        what,
        values.map(|(k, v)| (k, ConstCounter::new(v))),
        kind,
    )
}

impl Collector for NodeCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let e = &mut e;
        gauge(
            e,
            "uptime_seconds",
            "Seconds since this node started",
            self.started.elapsed().as_secs() as i64,
        )?;
        gauge(e, "node_id", "This node's id", self.raft.id() as i64)?;
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            gauge(
                e,
                "runtime_workers",
                "Threads of the async runtime this node runs on (worker_threads)",
                i64::try_from(rt.metrics().num_workers()).unwrap_or(i64::MAX),
            )?;
        }
        // A status that cannot be read (a store error) leaves the Raft gauges out; /health
        // reports the error itself.
        if let Ok(st) = self.raft.status() {
            gauge(e, "raft_term", "Current Raft term", st.term as i64)?;
            gauge(
                e,
                "raft_leader_id",
                "The leader this node knows (0: none)",
                st.leader.unwrap_or(0) as i64,
            )?;
            gauge(
                e,
                "raft_is_leader",
                "1 when this node is the leader",
                i64::from(st.leader == Some(st.id)),
            )?;
            gauge(
                e,
                "raft_is_voter",
                "1 when this node votes",
                i64::from(st.voter),
            )?;
            gauge(
                e,
                "raft_members",
                "Members of the cluster (voters and learners)",
                st.members.len() as i64,
            )?;
            gauge(
                e,
                "raft_last_log_index",
                "Index of the last entry in this node's log",
                st.last_log_index as i64,
            )?;
            gauge(
                e,
                "raft_committed_index",
                "The committed index this node last saved",
                self.raft.committed_index() as i64,
            )?;
            gauge(
                e,
                "raft_applied_index",
                "Index of the last entry applied to the state machine",
                st.last_applied_index as i64,
            )?;
            gauge(
                e,
                "raft_snapshot_index",
                "Last index of the newest snapshot",
                st.snapshot_index as i64,
            )?;
            gauge(
                e,
                "raft_log_entries",
                "Entries held in the Raft log (after purges)",
                st.log_entries as i64,
            )?;
            counter(
                e,
                "events",
                "Events in the event store (rate() of it is events per second)",
                st.sm.event_count,
            )?;
            gauge(
                e,
                "cluster_version",
                "The committed cluster version",
                i64::from(st.sm.cluster_version),
            )?;
        }
        // Each store's sizes, or none of its gauges when they cannot be read.
        let stores = [
            ("raft_log", self.raft.log_disk_usage()),
            ("state_machine", self.raft.view().disk_usage()),
        ];
        let sizes: Vec<(&str, sealpost_store::DiskUsage)> = stores
            .into_iter()
            .filter_map(|(name, u)| u.ok().map(|u| (name, u)))
            .collect();
        type Field = fn(&sealpost_store::DiskUsage) -> u64;
        let families: [(&str, &str, Field); 3] = [
            (
                "store_sst_bytes",
                "Bytes of table (SST) files of a store's database, by store",
                |u| u.sst_bytes,
            ),
            (
                "store_wal_bytes",
                "Bytes of write-ahead log files of a store's database, by store",
                |u| u.wal_bytes,
            ),
            (
                "store_memtable_bytes",
                "Bytes of memtables (memory) of a store's database, by store",
                |u| u.memtable_bytes,
            ),
        ];
        for (name, help, field) in families {
            gauges_by(
                e,
                (name, help, "store"),
                sizes
                    .iter()
                    .map(|(store, u)| (*store, i64::try_from(field(u)).unwrap_or(i64::MAX))),
            )?;
        }
        // The free space the storage floor compares (read now), or no gauge if unreadable.
        if let Ok(Some(free)) = self.floor.free_bytes_now() {
            gauge(
                e,
                "storage_free_bytes",
                "Free bytes on the fullest file system of this node's store folders",
                i64::try_from(free).unwrap_or(i64::MAX),
            )?;
        }
        gauge(
            e,
            "storage_free_bytes_min",
            "The storage floor: below it new messages are refused (0: off)",
            i64::try_from(self.floor.floor_bytes()).unwrap_or(i64::MAX),
        )?;
        counter(
            e,
            "storage_refused",
            "New messages refused because the storage was under its floor",
            self.floor.refused_total(),
        )?;
        let replication = self.raft.raft().metrics().borrow().replication.clone();
        if let Some(r) = replication {
            let lag: Vec<(String, i64)> = r
                .iter()
                .filter(|(id, _)| **id != self.raft.id())
                .map(|(id, matched)| (id.to_string(), matched.map_or(0, |l| l.index) as i64))
                .collect();
            gauges_by(
                e,
                (
                    "raft_follower_matched_index",
                    "On the leader: the last index each follower holds",
                    "follower",
                ),
                lag.iter().map(|(k, v)| (k.as_str(), *v)),
            )?;
        }
        if let Ok(q) = self.raft.view().queue_depths(METRICS_SCAN_KEYS_MAX) {
            gauges_by(
                e,
                (
                    "inbox_depth",
                    "Messages routed to an organisation and not yet finally answered",
                    "org",
                ),
                q.inbox_by_org.iter().map(|(k, v)| (k.as_str(), *v as i64)),
            )?;
            gauges_by(
                e,
                (
                    "relay_queue_depth",
                    "Messages waiting to be relayed, per destination provider",
                    "provider",
                ),
                q.relay_by_provider
                    .iter()
                    .map(|(k, v)| (k.as_str(), *v as i64)),
            )?;
            gauge(
                e,
                "dead_letters",
                "Recipients whose message failed (dead letters)",
                q.dead_letters as i64,
            )?;
            gauge(
                e,
                "queue_depth_truncated",
                "1 when a queue count stopped at its scan limit",
                i64::from(q.truncated),
            )?;
        }
        let s = &self.tls.stats;
        counter(
            e,
            "tls_handshakes_accepted",
            "TLS handshakes accepted on the client port",
            s.accepted.load(Ordering::Relaxed),
        )?;
        counters_by(
            e,
            (
                "tls_handshakes_refused",
                "TLS handshakes refused on the client port, by reason",
                "reason",
            ),
            [
                crate::tls::Refusal::NoCertificate,
                crate::tls::Refusal::Expired,
                crate::tls::Refusal::UnknownCa,
                crate::tls::Refusal::Revoked,
                crate::tls::Refusal::TimedOut,
                crate::tls::Refusal::Other,
            ]
            .into_iter()
            .map(|r| (r.as_str(), s.refused(r))),
        )?;
        counter(
            e,
            "authz_denied",
            "Calls refused by the authorization policy",
            self.guard.denied_total(),
        )?;
        counter(
            e,
            "send_rate_limited",
            "Sends refused by an organisation's rate limit",
            self.guard.rate_limited_total(),
        )?;
        Ok(())
    }
}

/// Whether the node is ready for traffic, and if not, why.
fn readiness(raft: &RaftNode) -> Result<(), String> {
    let st = raft.status().map_err(|e| format!("status: {e}"))?;
    let Some(leader) = st.leader else {
        return Err("no leader known".into());
    };
    let committed = raft.committed_index();
    if st.last_applied_index + READY_APPLY_LAG_ENTRIES_MAX < committed {
        return Err(format!(
            "applied {} of {committed} committed entries (leader {leader})",
            st.last_applied_index
        ));
    }
    Ok(())
}

#[derive(Clone)]
struct Ops {
    raft: RaftNode,
    metrics: Metrics,
}

async fn metrics_page(State(ops): State<Ops>) -> impl IntoResponse {
    match ops.metrics.encode() {
        Ok(text) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "encoding the metrics failed\n",
        )
            .into_response(),
    }
}

async fn health(State(ops): State<Ops>) -> impl IntoResponse {
    match ops.raft.status() {
        Ok(_) => (StatusCode::OK, "ok\n".to_string()),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("unhealthy: {e}\n")),
    }
}

async fn ready(State(ops): State<Ops>) -> impl IntoResponse {
    match readiness(&ops.raft) {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

/// The operations listener's socket, accepting a connection only while fewer than
/// [`HTTP_CONNECTIONS_MAX`] are open.
struct CappedListener {
    inner: TcpListener,
    slots: Arc<tokio::sync::Semaphore>,
}

/// An accepted connection holding its slot until it closes.
struct CappedIo {
    io: tokio::net::TcpStream,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl axum::serve::Listener for CappedListener {
    type Io = CappedIo;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the connection semaphore is never closed");
        let (io, addr) = axum::serve::Listener::accept(&mut self.inner).await;
        (CappedIo { io, _slot: slot }, addr)
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

impl tokio::io::AsyncRead for CappedIo {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for CappedIo {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// The operations listener with TLS: a task accepts connections (while fewer than
/// [`HTTP_CONNECTIONS_MAX`] are open) and runs each handshake in a task of its own, bounded
/// by the TLS layer's handshake time limit, so a slow client holds up no other; completed
/// connections wait here for the HTTP server.
struct TlsListener {
    done: tokio::sync::mpsc::Receiver<(
        tokio_rustls::server::TlsStream<CappedIo>,
        std::net::SocketAddr,
    )>,
    addr: std::net::SocketAddr,
    acceptor: JoinHandle<()>,
}

impl TlsListener {
    fn start(inner: TcpListener, tls: crate::tls::ServerTls) -> std::io::Result<Self> {
        let addr = inner.local_addr()?;
        let (tx, done) = tokio::sync::mpsc::channel(HTTP_CONNECTIONS_MAX);
        let slots = Arc::new(tokio::sync::Semaphore::new(HTTP_CONNECTIONS_MAX));
        let acceptor = tokio::spawn(async move {
            // Ends when the HTTP server drops the listener (the receiver) and the task is
            // aborted, or the socket fails.
            loop {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let (io, peer) = match inner.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::debug!(error = %e, "the operations listener's accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let (tls, tx) = (tls.clone(), tx.clone());
                tokio::spawn(async move {
                    if let Ok(stream) = tls.accept(CappedIo { io, _slot: slot }).await {
                        let _ = tx.send((stream, peer)).await;
                    }
                });
            }
        });
        Ok(Self {
            done,
            addr,
            acceptor,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<CappedIo>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.done.recv().await {
            Some(c) => c,
            // The acceptor holds a sender until it stops, and it stops only when this
            // listener is dropped: never reached while serving.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}

/// Serves `app` on `listener` in a task until `stopped` completes.
fn serve_on<L>(
    listener: L,
    app: Router,
    stopped: impl std::future::Future<Output = ()> + Send + 'static,
) -> JoinHandle<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(stopped)
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the operations listener failed");
        }
    })
}

/// The running operations listener.
pub struct OpsServer {
    pub addr: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl OpsServer {
    /// Serves `/metrics`, `/health`, `/ready` and the routes of `more` (the console) on
    /// `listener` until [`Self::stop`]: over TLS when `tls` is given.
    pub fn start(
        listener: TcpListener,
        raft: RaftNode,
        metrics: Metrics,
        more: Router,
        tls: Option<crate::tls::ServerTls>,
    ) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let app = Router::new()
            .route("/metrics", get(metrics_page))
            .route("/health", get(health))
            .route("/ready", get(ready))
            .with_state(Ops { raft, metrics })
            .merge(more)
            .layer(
                tower::ServiceBuilder::new()
                    .layer(axum::error_handling::HandleErrorLayer::new(|_| async {
                        (StatusCode::SERVICE_UNAVAILABLE, "timed out\n")
                    }))
                    .concurrency_limit(HTTP_REQUESTS_IN_FLIGHT_MAX)
                    .timeout(Duration::from_millis(HTTP_REQUEST_TIMEOUT_MS)),
            );
        let (tx, rx) = oneshot::channel::<()>();
        let stopped = async move {
            let _ = rx.await;
        };
        let task = match tls {
            None => serve_on(
                CappedListener {
                    inner: listener,
                    slots: Arc::new(tokio::sync::Semaphore::new(HTTP_CONNECTIONS_MAX)),
                },
                app,
                stopped,
            ),
            Some(tls) => serve_on(TlsListener::start(listener, tls)?, app, stopped),
        };
        Ok(Self {
            addr,
            stop: Some(tx),
            task,
        })
    }

    /// Stops serving and waits (bounded) for the listener to close.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if tokio::time::timeout(Duration::from_secs(5), &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
    }
}
