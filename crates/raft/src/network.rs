//! The client side of node-to-node traffic: openraft's `RaftNetwork` over tonic with mutual
//! TLS, and the channel pool the node also uses to forward writes and read-index requests
//! to the leader.
//!
//! Raft messages travel as opaque bytes in the storage codec. Snapshots stream file by file
//! in chunks of `snapshot_chunk_bytes`, so a snapshot of any size fits under the gRPC
//! message limit.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use openraft::BasicNode;
use openraft::error::{
    Fatal, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed, StreamingError,
    Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use sealpost_core::codec;
use sealpost_proto::v1::raft_client::RaftClient;
use sealpost_proto::v1::{FileChunk, RaftBytes, SnapshotChunk, snapshot_chunk};
use sealpost_store::TypeConfig;
use sealpost_store::snapshot::list_files;
use sealpost_store::types::{NodeId, Snapshot, Vote};
use tokio::io::AsyncReadExt;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

/// Depth of the queue between the file reader and the snapshot stream, in chunks.
pub const SNAPSHOT_STREAM_QUEUE_CHUNKS: usize = 4;
/// How long connecting to a peer may take.
pub const PEER_CONNECT_TIMEOUT_MS: u64 = 2_000;
/// Pause before openraft retries an unreachable peer.
pub const PEER_RETRY_BACKOFF_MS: u64 = 200;

/// The header of a snapshot stream: the leader's vote, the snapshot's metadata and the
/// files that follow, with their sizes.
pub type SnapshotHeader = (
    Vote,
    sealpost_store::types::SnapshotMeta,
    Vec<(String, u64)>,
);

/// Fault injection for chaos and partition tests: an isolated node neither sends nor
/// accepts Raft traffic, as if its network cable were pulled; and leadership
/// confirmations of linearizable reads that fail as if their round of heartbeats had
/// missed its deadline.
#[derive(Clone, Default)]
pub struct Faults {
    isolated: Arc<AtomicBool>,
    read_confirmations_failing: Arc<AtomicU32>,
}

impl Faults {
    pub fn isolate(&self, on: bool) {
        self.isolated.store(on, Ordering::SeqCst);
    }

    pub fn is_isolated(&self) -> bool {
        self.isolated.load(Ordering::SeqCst)
    }

    /// The next `n` leadership confirmations on this node fail with too few answers.
    pub fn fail_read_confirmations(&self, n: u32) {
        self.read_confirmations_failing.store(n, Ordering::SeqCst);
    }

    /// Takes one failure set by [`Self::fail_read_confirmations`], if any is left.
    pub(crate) fn take_read_confirmation_failure(&self) -> bool {
        self.read_confirmations_failing
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

/// Counters of snapshot traffic, for status and tests.
#[derive(Default)]
pub struct SnapshotCounters {
    pub chunks_sent: AtomicU64,
    pub chunks_received: AtomicU64,
    pub snapshots_installed: AtomicU64,
}

/// What the network needs to reach peers: TLS, limits, addresses, faults.
pub struct NetShared {
    /// The TLS configuration (CA bundle, this node's client identity) and its generation,
    /// which grows each time it is replaced, so peer clients made earlier reconnect.
    tls: RwLock<(u64, ClientTlsConfig)>,
    pub(crate) message_bytes_max: usize,
    /// Bytes of entries one AppendEntries carries when there are several.
    pub(crate) append_bytes_max: usize,
    pub(crate) snapshot_chunk_bytes: usize,
    /// Peer addresses from this node's own configuration; they win over membership.
    peers: RwLock<BTreeMap<NodeId, String>>,
    channels: Mutex<HashMap<String, Channel>>,
    pub(crate) faults: Faults,
    pub(crate) counters: Arc<SnapshotCounters>,
}

impl NetShared {
    pub fn new(
        tls: ClientTlsConfig,
        (message_bytes_max, append_bytes_max): (usize, usize),
        snapshot_chunk_bytes: usize,
        peers: BTreeMap<NodeId, String>,
        faults: Faults,
    ) -> Self {
        Self {
            tls: RwLock::new((0, tls)),
            message_bytes_max,
            append_bytes_max,
            snapshot_chunk_bytes,
            peers: RwLock::new(peers),
            channels: Mutex::new(HashMap::new()),
            faults,
            counters: Arc::default(),
        }
    }

    /// The address to use for `id`: this node's configuration first, then membership.
    pub fn address_of(&self, id: NodeId, membership_addr: Option<&str>) -> Option<String> {
        self.peers
            .read()
            .ok()
            .and_then(|p| p.get(&id).cloned())
            .or_else(|| membership_addr.map(str::to_string))
    }

    /// Replaces the TLS configuration (a rotated node certificate or CA bundle): cached
    /// channels are dropped and every peer client reconnects with it on its next call.
    pub fn set_client_tls(&self, tls: ClientTlsConfig) {
        let mut g = self
            .tls
            .write()
            .expect("the TLS lock is never held across a panic");
        g.0 += 1;
        g.1 = tls;
        self.channels
            .lock()
            .expect("the channel cache lock is never held across a panic")
            .clear();
    }

    /// The TLS configuration's generation.
    pub fn tls_generation(&self) -> u64 {
        self.tls
            .read()
            .expect("the TLS lock is never held across a panic")
            .0
    }

    /// A (lazily connecting, cached) channel to `addr`.
    pub fn channel(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let mut cache = self
            .channels
            .lock()
            .expect("the channel cache lock is never held across a panic");
        if let Some(c) = cache.get(addr) {
            return Ok(c.clone());
        }
        let tls = self
            .tls
            .read()
            .expect("the TLS lock is never held across a panic")
            .1
            .clone();
        let ch = Endpoint::from_shared(format!("https://{addr}"))?
            .tls_config(tls)?
            .connect_timeout(Duration::from_millis(PEER_CONNECT_TIMEOUT_MS))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .connect_lazy();
        cache.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }

    pub fn client(&self, addr: &str) -> Result<RaftClient<Channel>, tonic::transport::Error> {
        Ok(RaftClient::new(self.channel(addr)?)
            .max_decoding_message_size(self.message_bytes_max)
            .max_encoding_message_size(self.message_bytes_max))
    }
}

/// openraft's network factory.
#[derive(Clone)]
pub struct NetworkFactory {
    pub(crate) shared: Arc<NetShared>,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        let addr = self
            .shared
            .address_of(target, Some(&node.addr))
            .unwrap_or_else(|| node.addr.clone());
        let generation = self.shared.tls_generation();
        PeerClient {
            target,
            client: std::sync::Mutex::new((
                generation,
                self.shared.client(&addr).map_err(|e| e.to_string()),
            )),
            addr,
            shared: self.shared.clone(),
        }
    }
}

/// A connection to one peer.
pub struct PeerClient {
    target: NodeId,
    addr: String,
    /// The client, and the TLS generation it was made with.
    client: std::sync::Mutex<(u64, Result<RaftClient<Channel>, String>)>,
    shared: Arc<NetShared>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Msg(String);

fn unreachable<E: std::error::Error>(
    why: impl std::fmt::Display,
) -> RPCError<NodeId, BasicNode, E> {
    RPCError::Unreachable(Unreachable::new(&Msg(why.to_string())))
}

fn status_error<E: std::error::Error>(s: &tonic::Status) -> RPCError<NodeId, BasicNode, E> {
    match s.code() {
        tonic::Code::Unavailable | tonic::Code::Unknown => unreachable(s),
        _ => RPCError::Network(NetworkError::new(&Msg(s.to_string()))),
    }
}

// openraft's RPC error type is large; these helpers only pass it through.
#[allow(clippy::result_large_err)]
impl PeerClient {
    fn client<E: std::error::Error>(
        &self,
    ) -> Result<RaftClient<Channel>, RPCError<NodeId, BasicNode, E>> {
        if self.shared.faults.is_isolated() {
            return Err(unreachable("this node is isolated by fault injection"));
        }
        let generation = self.shared.tls_generation();
        let mut c = self
            .client
            .lock()
            .expect("the peer client lock is never held across a panic");
        if c.0 != generation {
            // The node's TLS configuration changed: reconnect with the new one.
            *c = (
                generation,
                self.shared.client(&self.addr).map_err(|e| e.to_string()),
            );
        }
        c.1.clone().map_err(unreachable)
    }

    fn decode<T: serde::de::DeserializeOwned, E: std::error::Error>(
        bytes: &[u8],
    ) -> Result<T, RPCError<NodeId, BasicNode, E>> {
        codec::decode(bytes).map_err(|e| RPCError::Network(NetworkError::new(&e)))
    }

    async fn send_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        option: &RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let mut client = self.client::<Fatal<NodeId>>().map_err(to_streaming)?;
        let dir: PathBuf = snapshot.snapshot.dir.clone();
        let files = list_files(&dir).map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        let header: SnapshotHeader = (vote, snapshot.meta.clone(), files.clone());
        let (tx, rx) = tokio::sync::mpsc::channel::<SnapshotChunk>(SNAPSHOT_STREAM_QUEUE_CHUNKS);
        let chunk_bytes = self.shared.snapshot_chunk_bytes;
        let counters = self.shared.counters.clone();
        // The reader runs beside the RPC; if the RPC ends early the channel closes and the
        // reader stops at its next send.
        let reader = tokio::spawn(async move {
            let head = SnapshotChunk {
                part: Some(snapshot_chunk::Part::Header(codec::encode(&header))),
            };
            if tx.send(head).await.is_err() {
                return Ok(());
            }
            for (name, len) in files {
                let path = dir.join(&name);
                let mut f = tokio::fs::File::open(&path).await?;
                let mut offset = 0u64;
                while offset < len {
                    let want = chunk_bytes.min((len - offset) as usize);
                    let mut buf = vec![0u8; want];
                    f.read_exact(&mut buf).await?;
                    let msg = SnapshotChunk {
                        part: Some(snapshot_chunk::Part::File(FileChunk {
                            name: name.clone(),
                            offset,
                            data: buf,
                        })),
                    };
                    offset += want as u64;
                    if tx.send(msg).await.is_err() {
                        return Ok(());
                    }
                    counters.chunks_sent.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok::<(), std::io::Error>(())
        });
        let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        req.set_timeout(option.hard_ttl());
        let resp = client.install_snapshot(req).await;
        let read_result = reader.await;
        let resp = resp.map_err(|s| to_streaming(status_error::<Fatal<NodeId>>(&s)))?;
        match read_result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(StreamingError::Network(NetworkError::new(&e))),
            Err(e) => return Err(StreamingError::Network(NetworkError::new(&e))),
        }
        let answer: Result<SnapshotResponse<NodeId>, Fatal<NodeId>> =
            codec::decode(&resp.into_inner().data)
                .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        answer.map_err(|f| StreamingError::RemoteError(RemoteError::new(self.target, f)))
    }
}

/// Room an append request needs beyond its entries, in bytes.
const APPEND_OVERHEAD_BYTES: usize = 4096;

/// How many leading entries fit in one message of `bytes_max` (at least one: a single
/// entry is bounded by the proposer's batch limit, which is at most half the message limit).
fn entries_that_fit(entries: &[sealpost_store::types::Entry], bytes_max: usize) -> u64 {
    let mut total = APPEND_OVERHEAD_BYTES;
    let mut n = 0u64;
    for e in entries {
        total += codec::encoded_len(e);
        if total > bytes_max {
            break;
        }
        n += 1;
    }
    n.max(1)
}

fn to_streaming(
    e: RPCError<NodeId, BasicNode, Fatal<NodeId>>,
) -> StreamingError<TypeConfig, Fatal<NodeId>> {
    match e {
        RPCError::Unreachable(u) => StreamingError::Unreachable(u),
        RPCError::Timeout(t) => StreamingError::Timeout(t),
        RPCError::Network(n) => StreamingError::Network(n),
        RPCError::RemoteError(r) => StreamingError::RemoteError(r),
        RPCError::PayloadTooLarge(p) => StreamingError::Network(NetworkError::new(&p)),
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let mut client = self.client()?;
        let data = codec::encode(&rpc);
        let budget = self
            .shared
            .append_bytes_max
            .min(self.shared.message_bytes_max);
        if data.len() + APPEND_OVERHEAD_BYTES > budget && rpc.entries.len() > 1 {
            // Several large entries would exceed the gRPC message limit, or take longer than
            // the one heartbeat interval openraft allows an append, again on every retry:
            // ask openraft to send fewer at a time.
            let fit = entries_that_fit(&rpc.entries, budget);
            return Err(openraft::error::PayloadTooLarge::new_entries_hint(fit).into());
        }
        let mut req = tonic::Request::new(RaftBytes { data: data.into() });
        req.set_timeout(option.hard_ttl());
        let resp = client
            .append_entries(req)
            .await
            .map_err(|s| status_error(&s))?;
        let r: Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>> =
            Self::decode(&resp.into_inner().data)?;
        r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let mut client = self.client()?;
        let mut req = tonic::Request::new(RaftBytes {
            data: codec::encode(&rpc).into(),
        });
        req.set_timeout(option.hard_ttl());
        let resp = client.vote(req).await.map_err(|s| status_error(&s))?;
        let r: Result<VoteResponse<NodeId>, RaftError<NodeId>> =
            Self::decode(&resp.into_inner().data)?;
        r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        tokio::select! {
            r = self.send_snapshot(vote, snapshot, &option) => r,
            closed = cancel => Err(StreamingError::Closed(closed)),
        }
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(Duration::from_millis(
            PEER_RETRY_BACKOFF_MS,
        )))
    }
}
