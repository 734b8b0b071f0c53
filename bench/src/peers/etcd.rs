//! etcd driver of the peer benchmark: durable puts to an etcd v3 cluster through the
//! `etcd-client` crate (its `KV/Put` over gRPC). Each put returns once etcd has answered,
//! which with etcd 3.4's defaults (read from its source at tag v3.4.23: etcdserver/raft.go,
//! wal/wal.go) it does only once the put's Raft entry is committed and applied; by then the
//! entry is written and fdatasynced in the write-ahead log of a majority of members (2 of
//! 3), the leader included (group commit: one sync covers a batch).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use etcd_client::{Client, ConnectOptions, KvClient};

/// Bound on connecting to one member.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on one put, connection wait included.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Clients to the etcd cluster: `connections` clients, client `i` connected to endpoint
/// `i % endpoints` (one HTTP/2 connection each, multiplexing the calls of every task using it).
#[derive(Clone)]
pub struct EtcdTarget {
    clients: Arc<Vec<(String, KvClient)>>,
}

impl std::fmt::Debug for EtcdTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdTarget")
            .field("connections", &self.clients.len())
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
        let mut clients = Vec::with_capacity(connections);
        for i in 0..connections {
            let url = &endpoints[i % endpoints.len()];
            let options = ConnectOptions::new()
                .with_connect_timeout(CONNECT_TIMEOUT)
                .with_timeout(WRITE_TIMEOUT);
            let client = tokio::time::timeout(
                CONNECT_TIMEOUT,
                Client::connect([url.as_str()], Some(options)),
            )
            .await
            .map_err(|_| anyhow::anyhow!("etcd: connecting to {url} timed out"))?
            .with_context(|| format!("etcd: connecting to {url}"))?;
            clients.push((url.clone(), client.kv_client()));
        }
        Ok(EtcdTarget {
            clients: Arc::new(clients),
        })
    }

    /// One durable write: put key `bench/<serial>` = value; returns once etcd acknowledged it
    /// (committed by a majority).
    pub async fn write(&self, serial: u64, value: &[u8]) -> anyhow::Result<()> {
        // Spread writes over the connections by serial (the callers' serials are distinct).
        let (url, kv) = &self.clients[(serial % self.clients.len() as u64) as usize];
        let mut kv = kv.clone();
        let put = kv.put(format!("bench/{serial}"), value.to_vec(), None);
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
        match response.header() {
            Some(h) if h.revision() > 0 => Ok(()),
            Some(h) => bail!(
                "etcd put bench/{serial} via {url}: answer with revision {} (member {:x}, term {})",
                h.revision(),
                h.member_id(),
                h.raft_term()
            ),
            None => bail!("etcd put bench/{serial} via {url}: answer without a response header"),
        }
    }
}
