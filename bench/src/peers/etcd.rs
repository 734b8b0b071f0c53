//! etcd driver of the peer benchmark: durable puts to an etcd v3 cluster over its gRPC API
//! (`etcdserverpb.KV/Put`). It speaks the protocol itself on the workspace's tonic and prost:
//! the messages of that one call are declared below by their field numbers, so no
//! etcd client crate, generated code or protoc is needed. Each put returns once etcd has
//! answered, which with etcd 3.4's defaults (read from its source at tag v3.4.23:
//! etcdserver/raft.go, wal/wal.go) it does only once the put's Raft entry is committed and
//! applied; by then the entry is written and fdatasynced in the write-ahead log of a majority
//! of members (2 of 3), the leader included (group commit: one sync covers a batch).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};

/// Full gRPC method name of etcd's put.
const PUT_PATH: &str = "/etcdserverpb.KV/Put";
/// Bound on connecting to one member.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on one put, connection wait included.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// `etcdserverpb.PutRequest` (etcd `api/etcdserverpb/rpc.proto`), the fields we set: the other
/// fields (lease 3, prev_kv 4, ignore_value 5, ignore_lease 6) keep their defaults and are not
/// sent.
#[derive(Clone, PartialEq, prost::Message)]
struct PutRequest {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

/// `etcdserverpb.PutResponse`: only its header (prev_kv, field 2, is asked for by nobody).
#[derive(Clone, PartialEq, prost::Message)]
struct PutResponse {
    #[prost(message, optional, tag = "1")]
    header: Option<ResponseHeader>,
}

/// `etcdserverpb.ResponseHeader`.
#[derive(Clone, PartialEq, prost::Message)]
struct ResponseHeader {
    #[prost(uint64, tag = "1")]
    cluster_id: u64,
    #[prost(uint64, tag = "2")]
    member_id: u64,
    #[prost(int64, tag = "3")]
    revision: i64,
    #[prost(uint64, tag = "4")]
    raft_term: u64,
}

/// Clients to the etcd cluster, `connections` gRPC connections spread over the endpoints.
#[derive(Clone)]
pub struct EtcdTarget {
    /// `(endpoint, channel)`; channel `i` goes to endpoint `i % endpoints`. Each channel is one
    /// HTTP/2 connection multiplexing the calls of every task that uses it.
    channels: Arc<Vec<(String, Channel)>>,
}

impl std::fmt::Debug for EtcdTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdTarget")
            .field("connections", &self.channels.len())
            .finish()
    }
}

impl EtcdTarget {
    pub async fn connect(endpoints: &[String], connections: usize) -> anyhow::Result<Self> {
        if endpoints.is_empty() {
            bail!("etcd: no endpoint to connect to");
        }
        if connections == 0 {
            bail!("etcd: connections must be at least 1");
        }
        let mut channels = Vec::with_capacity(connections);
        for i in 0..connections {
            let url = &endpoints[i % endpoints.len()];
            let endpoint = Endpoint::from_shared(url.clone())
                .with_context(|| format!("etcd: bad endpoint URL {url:?}"))?
                .connect_timeout(CONNECT_TIMEOUT)
                .timeout(WRITE_TIMEOUT)
                .tcp_nodelay(true);
            let channel = tokio::time::timeout(CONNECT_TIMEOUT, endpoint.connect())
                .await
                .map_err(|_| anyhow::anyhow!("etcd: connecting to {url} timed out"))?
                .with_context(|| format!("etcd: connecting to {url}"))?;
            channels.push((url.clone(), channel));
        }
        Ok(EtcdTarget {
            channels: Arc::new(channels),
        })
    }

    /// One durable write: put key `bench/<serial>` = value; returns once etcd acknowledged it
    /// (committed by a majority).
    pub async fn write(&self, serial: u64, value: &[u8]) -> anyhow::Result<()> {
        // Spread writes over the connections by serial (the callers' serials are distinct).
        let (url, channel) = &self.channels[(serial % self.channels.len() as u64) as usize];
        let request = PutRequest {
            key: format!("bench/{serial}").into_bytes(),
            value: value.to_vec(),
        };
        let put = async {
            let mut grpc = tonic::client::Grpc::new(channel.clone());
            grpc.ready()
                .await
                .map_err(|e| anyhow::anyhow!("connection not ready: {e}"))?;
            let response = grpc
                .unary(
                    tonic::Request::new(request),
                    PathAndQuery::from_static(PUT_PATH),
                    tonic_prost::ProstCodec::<PutRequest, PutResponse>::default(),
                )
                .await
                .map_err(|status| anyhow::anyhow!("{:?}: {}", status.code(), status.message()))?;
            anyhow::Ok(response.into_inner())
        };
        let response = tokio::time::timeout(WRITE_TIMEOUT, put)
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "etcd put bench/{serial} via {url}: no answer in {} s",
                    WRITE_TIMEOUT.as_secs()
                )
            })?
            .with_context(|| format!("etcd put bench/{serial} via {url}"))?;
        // A committed put carries the store revision it created (always > 0).
        match response.header {
            Some(h) if h.revision > 0 => Ok(()),
            Some(h) => bail!(
                "etcd put bench/{serial} via {url}: answer with revision {} (member {:x}, term {})",
                h.revision,
                h.member_id,
                h.raft_term
            ),
            None => bail!("etcd put bench/{serial} via {url}: answer without a response header"),
        }
    }
}
