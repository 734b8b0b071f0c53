//! NATS driver of the peer benchmark: JetStream publishes to a replicated file-storage stream
//! through async-nats, each awaited until its PubAck, which the stream leader sends once the
//! message is committed by a quorum of the stream's Raft group (2 of 3) and stored. It uses
//! only JetStream calls nats-server 2.9 knows (stream delete/create/info, publish), with
//! async-nats' newer-server features off.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_nats::jetstream::{self, stream};

/// What a PubAck promises with nats-server 2.9.10's defaults (read from its source at tag
/// v2.9.10: server/stream.go, server/jetstream_cluster.go, server/filestore.go), for reports.
pub const DURABILITY: &str = "Acknowledged (PubAck) once the R3 stream's Raft group has committed \
the message on a quorum (2 of 3 nodes) and the leader has stored it. nats-server 2.9 hands each \
message to the OS with write(2) but does not fsync per message: stream files are fsynced every \
2 min and the stream's Raft log every 5 min, so a process crash loses nothing acknowledged, \
while an OS crash or power loss of a majority can lose the last minutes of acknowledged writes \
(2.9 has no setting for per-message sync).";

/// The stream the benchmark writes to.
const STREAM: &str = "BENCH";
/// Subjects 0..SUBJECTS of `bench.<n>`.
const SUBJECTS: u64 = 64;
/// Bound on connecting one client.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on one JetStream API request, and on waiting for one PubAck.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on (re)creating the stream, retries included: a fresh cluster may briefly answer
/// "insufficient resources" or have no meta leader yet.
const CREATE_BOUND: Duration = Duration::from_secs(20);
/// PubAcks a client may await at once (async-nats blocks a publish beyond that).
const MAX_ACK_INFLIGHT: usize = 10_000;

#[derive(Clone)]
pub struct NatsTarget {
    /// `(endpoint, JetStream context)`; client `i` is connected to endpoint `i % endpoints`.
    clients: Arc<Vec<(String, jetstream::Context)>>,
}

impl std::fmt::Debug for NatsTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsTarget")
            .field("connections", &self.clients.len())
            .finish()
    }
}

impl NatsTarget {
    /// Connects `connections` clients spread over the endpoints and (re)creates a JetStream
    /// stream `BENCH` on subjects `bench.>`, file storage, 3 replicas.
    pub async fn connect(endpoints: &[String], connections: usize) -> anyhow::Result<Self> {
        if endpoints.is_empty() {
            bail!("nats: no endpoint to connect to");
        }
        if connections == 0 {
            bail!("nats: connections must be at least 1");
        }
        let mut clients = Vec::with_capacity(connections);
        for i in 0..connections {
            let url = &endpoints[i % endpoints.len()];
            let connect = async_nats::ConnectOptions::new()
                .name(format!("sealpost-bench-{i}"))
                .connection_timeout(CONNECT_TIMEOUT)
                .request_timeout(Some(REQUEST_TIMEOUT))
                .connect(url.as_str());
            let client = tokio::time::timeout(CONNECT_TIMEOUT + Duration::from_secs(1), connect)
                .await
                .map_err(|_| anyhow::anyhow!("nats: connecting to {url} timed out"))?
                .with_context(|| format!("nats: connecting to {url}"))?;
            let context = jetstream::ContextBuilder::new()
                .timeout(REQUEST_TIMEOUT)
                .max_ack_inflight(MAX_ACK_INFLIGHT)
                .build(client);
            clients.push((url.clone(), context));
        }
        let (url, js) = &clients[0];
        recreate_stream(js)
            .await
            .with_context(|| format!("nats: (re)creating stream {STREAM} via {url}"))?;
        Ok(NatsTarget {
            clients: Arc::new(clients),
        })
    }

    /// One publish to `bench.<serial % 64>` that returns once JetStream's PubAck arrived
    /// (stored by the R3 stream's quorum).
    pub async fn write(&self, serial: u64, value: &[u8]) -> anyhow::Result<()> {
        let (url, js) = &self.clients[(serial % self.clients.len() as u64) as usize];
        let subject = format!("bench.{}", serial % SUBJECTS);
        let publish = async {
            let ack = js
                .publish(subject.clone(), value.to_vec().into())
                .await
                .context("sending")?
                .await
                .context("waiting for the PubAck")?;
            anyhow::Ok(ack)
        };
        // async-nats bounds both steps by the context timeout; this is a backstop.
        let ack = tokio::time::timeout(REQUEST_TIMEOUT + Duration::from_secs(1), publish)
            .await
            .map_err(|_| {
                anyhow::anyhow!("nats publish #{serial} to {subject} via {url}: no PubAck in time")
            })?
            .with_context(|| format!("nats publish #{serial} to {subject} via {url}"))?;
        if ack.stream != STREAM {
            bail!(
                "nats publish #{serial} to {subject} via {url}: acknowledged by stream {:?}, not {STREAM}",
                ack.stream
            );
        }
        Ok(())
    }
}

fn stream_config() -> stream::Config {
    stream::Config {
        name: STREAM.to_string(),
        subjects: vec!["bench.>".to_string()],
        storage: stream::StorageType::File,
        num_replicas: 3,
        ..Default::default()
    }
}

/// Deletes stream BENCH if it exists and creates it anew, retrying transient refusals of a
/// young cluster until CREATE_BOUND; then checks it has 3 replicas and a leader.
async fn recreate_stream(js: &jetstream::Context) -> anyhow::Result<()> {
    let deadline = Instant::now() + CREATE_BOUND;
    let mut last_error = String::new();
    for attempt in 1..=100u32 {
        if Instant::now() >= deadline {
            break;
        }
        match try_recreate(js).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                last_error = format!("attempt {attempt}: {e:#}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
    bail!(
        "gave up after {} s; last error: {last_error}",
        CREATE_BOUND.as_secs()
    )
}

async fn try_recreate(js: &jetstream::Context) -> anyhow::Result<()> {
    match js.delete_stream(STREAM).await {
        Ok(_) => {}
        // 10059 = JSStreamNotFoundErr: nothing to delete.
        Err(e) if is_stream_not_found(&e) => {}
        Err(e) => return Err(anyhow::Error::new(e).context("deleting the old stream")),
    }
    let mut created = js
        .create_stream(stream_config())
        .await
        .context("creating the stream")?;
    let config = &created.cached_info().config;
    if config.num_replicas != 3 || config.storage != stream::StorageType::File {
        bail!(
            "the server created the stream with {} replicas and {:?} storage",
            config.num_replicas,
            config.storage
        );
    }
    // Wait (bounded) until the stream's Raft group has a leader and both followers current.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info = created.info().await.context("reading stream info")?;
        let ready = info.cluster.as_ref().is_some_and(|c| {
            c.leader.is_some() && c.replicas.iter().filter(|p| p.current).count() == 2
        });
        if ready {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "stream has no leader with 2 current followers after 10 s: {:?}",
                info.cluster
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn is_stream_not_found(e: &jetstream::context::DeleteStreamError) -> bool {
    match e.kind() {
        jetstream::context::DeleteStreamErrorKind::JetStream(err) => {
            err.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
        }
        _ => false,
    }
}
