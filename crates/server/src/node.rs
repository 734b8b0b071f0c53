//! Running one node: load TLS material and the provider's key-encryption key, open the
//! stores, start Raft and the delivery worker, serve every gRPC service (Raft, Directory,
//! Messaging, Admin, reflection) on one mutually authenticated TLS port, and, when
//! federation is configured, the Relay service on a second port that only the trusted peer
//! providers' certificates may reach, with one relay worker per peer; then bootstrap the
//! cluster when this node is an initial member.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sealpost_proto::v1::admin_server::AdminServer;
use sealpost_proto::v1::audit_server::AuditServer;
use sealpost_proto::v1::directory_server::DirectoryServer;
use sealpost_proto::v1::messaging_server::MessagingServer;
use sealpost_proto::v1::relay_server::RelayServer;
use sealpost_raft::{NodeOptions, RaftNode};
use sealpost_store::StoreOptions;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, Server, ServerTlsConfig};

use crate::admin::AdminService;
use crate::authz::{Action, Caller, Guard, RateLimit};
use crate::config::NodeConfig;
use crate::directory::DirectoryService;
use crate::federation::TrustBundle;
use crate::keystore::{KekRing, Keystore, check_kek};
use crate::messaging::{MessagingFaults, MessagingService};
use crate::relay::RelayService;
use crate::relay_worker::{LastErrors, RelayContext, RelayFaults};
use crate::storage_floor::StorageFloor;

/// Name of the file that records which node id owns a data folder.
pub const NODE_ID_FILE: &str = "NODE_ID";

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("TLS material: {0}")]
    Tls(#[from] sealpost_crypto::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("data folder {path}: {problem}")]
    DataDir { path: String, problem: String },
    #[error("starting raft: {0}")]
    Raft(#[from] sealpost_raft::NodeError),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("federation: {0}")]
    Federation(#[from] crate::config::ConfigError),
    /// The configured KEK does not unwrap the organisation keys in the node's store.
    #[error("the configured KEK does not fit this node's store: {0}")]
    Kek(#[from] crate::keystore::KeystoreError),
}

/// A running node. Dropping it does not stop it: call [`NodeHandle::stop`].
pub struct NodeHandle {
    pub raft: RaftNode,
    pub addr: SocketAddr,
    /// The relay port peers connect to, when federation is configured with peers.
    pub relay_addr: Option<SocketAddr>,
    /// The MLLP listeners' addresses, in configuration order.
    pub mllp_addrs: Vec<SocketAddr>,
    /// Test and chaos hooks of the messaging service and its worker.
    pub faults: std::sync::Arc<MessagingFaults>,
    /// Test and chaos hooks of the relay worker.
    pub relay_faults: std::sync::Arc<RelayFaults>,
    /// The client port's TLS: its handshake counters, and a reload on demand.
    pub tls: crate::tls::ServerTls,
    /// Authorization state: denial and rate-limit counts, and a summary on demand.
    pub guard: Guard,
    /// The storage floor new messages must clear (its refusals, and a test hook).
    pub floor: StorageFloor,
    /// The operations listener's address (`/metrics`, `/health`, `/ready`), when
    /// `http_listen` is set.
    pub http_addr: Option<SocketAddr>,
    /// The node's metrics (what `/metrics` serves).
    pub metrics: crate::metrics::Metrics,
    http: Option<crate::metrics::OpsServer>,
    workers_stop: tokio::sync::watch::Sender<bool>,
    workers: Vec<JoinHandle<()>>,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    relay_stop: Option<oneshot::Sender<()>>,
    relay_server: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
}

impl std::fmt::Debug for NodeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeHandle")
            .field("id", &self.raft.id())
            .field("addr", &self.addr)
            .finish()
    }
}

impl NodeHandle {
    /// Stops serving, shuts Raft down and waits until the stores are closed.
    pub async fn stop(mut self) {
        if let Some(http) = self.http.take() {
            http.stop().await;
        }
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(tx) = self.relay_stop.take() {
            let _ = tx.send(());
        }
        let _ = self.workers_stop.send(true);
        for w in &mut self.workers {
            if tokio::time::timeout(Duration::from_secs(5), &mut *w)
                .await
                .is_err()
            {
                w.abort();
            }
        }
        if let Some(mut relay) = self.relay_server.take()
            && tokio::time::timeout(Duration::from_secs(5), &mut relay)
                .await
                .is_err()
        {
            relay.abort();
        }
        self.raft.shutdown().await;
        match tokio::time::timeout(Duration::from_secs(10), &mut self.server).await {
            Ok(_) => {}
            Err(_) => {
                tracing::warn!(
                    node = self.raft.id(),
                    "server did not drain in 10 s; aborting it"
                );
                self.server.abort();
            }
        }
    }
}

/// Writes `dir/name` so that it survives a power cut whole or not at all: a temporary file,
/// fsynced, renamed over the name, and the folder fsynced.
fn write_durably(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, dir.join(name))?;
    std::fs::File::open(dir)?.sync_all()
}

/// The provider's key-encryption keys as `cfg` gives them: the current one from the file
/// `kek` (or the hex in the environment variable `kek_env`), and the `previous_keks` files
/// a rotation still needs.
fn load_kek(cfg: &NodeConfig) -> Result<KekRing, ServerError> {
    let current = match &cfg.kek_env {
        Some(var) => {
            let hex = zeroize::Zeroizing::new(std::env::var(var).map_err(|_| {
                ServerError::DataDir {
                    path: format!("${var}"),
                    problem:
                        "kek_env names this environment variable, which is not set (or not UTF-8)"
                            .into(),
                }
            })?);
            sealpost_crypto::kek::Kek::from_hex(&hex, &format!("${var}"))?
        }
        None => sealpost_crypto::kek::Kek::load(&cfg.kek)?,
    };
    let previous = cfg
        .previous_keks
        .iter()
        .map(|p| sealpost_crypto::kek::Kek::load(p))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(KekRing { current, previous })
}

/// A listener's TLS from the node's `[tls]` files, with a worker (pushed onto `workers`)
/// that reads them again every `api.tls_reload_ms` until `shutdown`.
fn reloading_tls(
    cfg: &NodeConfig,
    alpn: &[&[u8]],
    client_certs: sealpost_crypto::tls::ClientCerts,
    shutdown: tokio::sync::watch::Receiver<bool>,
    workers: &mut Vec<JoinHandle<()>>,
) -> Result<crate::tls::ServerTls, ServerError> {
    let t = crate::tls::ServerTls::load_with(&cfg.tls, alpn, client_certs)?;
    workers.push(t.spawn_reloader(Duration::from_millis(cfg.api.tls_reload_ms), shutdown));
    Ok(t)
}

/// Restores `backup` (a checked backup folder) into the stores of the node `cfg`
/// describes, for a new cluster whose voters are `cfg.initial_members`, and marks the
/// folder as this node's. The node must never have run: its stores must not exist. The
/// configured KEK must unwrap the backed-up organisations' keys ([`check_kek`]): otherwise
/// nothing is written.
pub fn restore_node(
    cfg: &NodeConfig,
    backup: &Path,
) -> Result<sealpost_store::restore::Restored, ServerError> {
    let err = |problem: String| ServerError::DataDir {
        path: cfg.data_dir.display().to_string(),
        problem,
    };
    if cfg.initial_members.is_empty() {
        return Err(err(
            "a restore needs initial_members: the new cluster's voters".into(),
        ));
    }
    if !cfg.initial_members.iter().any(|m| m.id == cfg.id) {
        return Err(err(format!(
            "node {} is not among initial_members, so it would not vote in the restored \
             cluster",
            cfg.id
        )));
    }
    for (dir, _) in store_roots(cfg) {
        if dir.join(NODE_ID_FILE).exists() {
            return Err(ServerError::DataDir {
                path: dir.display().to_string(),
                problem: format!(
                    "it already belongs to a node ({NODE_ID_FILE} exists): restore into a \
                     new folder"
                ),
            });
        }
    }
    let members = cfg
        .initial_members
        .iter()
        .map(|m| (m.id, m.addr.clone()))
        .collect();
    let kek = load_kek(cfg)?;
    std::fs::create_dir_all(&cfg.data_dir).map_err(|e| err(e.to_string()))?;
    let restored = sealpost_store::restore::restore_node(
        backup,
        &cfg.data_dir,
        cfg.raft_log_dir.as_deref(),
        &members,
        &|view| {
            check_kek(&kek, view)
                .map(drop)
                .map_err(|e| format!("the configured KEK does not fit the backup: {e}"))
        },
    )
    .map_err(|e| err(e.to_string()))?;
    claim_roots(cfg)?;
    Ok(restored)
}

/// Marks every store folder of the node as its own, once its stores exist.
fn claim_roots(cfg: &NodeConfig) -> Result<(), ServerError> {
    for (dir, _) in store_roots(cfg) {
        write_durably(dir, NODE_ID_FILE, format!("{}\n", cfg.id).as_bytes()).map_err(|e| {
            ServerError::DataDir {
                path: dir.join(NODE_ID_FILE).display().to_string(),
                problem: e.to_string(),
            }
        })?;
    }
    Ok(())
}

/// The folders a node keeps its stores in: the data folder (the state machine, and the
/// Raft log unless `raft_log_dir` keeps it apart) and the log's own folder, if any. Each
/// is claimed by a [`NODE_ID_FILE`] naming the node.
fn store_roots(cfg: &NodeConfig) -> Vec<(&Path, Vec<&'static str>)> {
    use sealpost_store::{LOG_DIR_NAME, SM_DIR_NAME};
    match &cfg.raft_log_dir {
        Some(log) if log != &cfg.data_dir => vec![
            (cfg.data_dir.as_path(), vec![SM_DIR_NAME]),
            (log.as_path(), vec![LOG_DIR_NAME]),
        ],
        _ => vec![(cfg.data_dir.as_path(), vec![LOG_DIR_NAME, SM_DIR_NAME])],
    }
}

/// Checks that every store folder of the node belongs to this node id. Returns true when
/// they are all new; the caller claims them with [`NODE_ID_FILE`] once the stores exist.
/// Refuses a mix: a node whose log (or state machine) is gone lost its data.
fn claim_store_dirs(cfg: &NodeConfig) -> Result<bool, ServerError> {
    let mut fresh = Vec::new();
    for (dir, stores) in store_roots(cfg) {
        fresh.push((dir, claim_dir(dir, cfg.id, &stores)?));
    }
    if let (Some((new, _)), Some((old, _))) = (
        fresh.iter().find(|(_, f)| *f),
        fresh.iter().find(|(_, f)| !*f),
    ) {
        return Err(ServerError::DataDir {
            path: new.display().to_string(),
            problem: format!(
                "it is new but {} belongs to node {}: the node's stores are split; a node \
                 that lost its data rejoins as a new learner id, never under its old id",
                old.display(),
                cfg.id
            ),
        });
    }
    Ok(fresh.iter().all(|(_, f)| *f))
}

/// Checks that `dir` belongs to node `id` and holds `stores`, or is new (true).
fn claim_dir(dir: &Path, id: u64, stores: &[&str]) -> Result<bool, ServerError> {
    let err = |problem: String| ServerError::DataDir {
        path: dir.display().to_string(),
        problem,
    };
    std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    let marker = dir.join(NODE_ID_FILE);
    match std::fs::read_to_string(&marker) {
        Ok(s) => {
            let owner: u64 = s
                .trim()
                .parse()
                .map_err(|_| err(format!("{NODE_ID_FILE} holds {s:?}, not a node id")))?;
            if owner != id {
                return Err(err(format!(
                    "it belongs to node {owner}, not node {id}; a node that lost its data \
                     rejoins under a new id"
                )));
            }
            if let Some(missing) = stores.iter().find(|s| !dir.join(s).exists()) {
                return Err(err(format!(
                    "node {id}'s store {missing} is missing; a node that lost its data \
                     rejoins as a new learner id, never under its old id"
                )));
            }
            Ok(false)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(held) = stores.iter().find(|s| dir.join(s).exists()) {
                return Err(err(format!(
                    "it holds a store ({held}) but no {NODE_ID_FILE} file"
                )));
            }
            Ok(true)
        }
        Err(e) => Err(err(e.to_string())),
    }
}

/// Starts a node. `listener` is an already bound socket (tests and `dev` bind port 0
/// first); otherwise the node binds `cfg.listen`.
pub async fn start(
    cfg: NodeConfig,
    listener: Option<TcpListener>,
) -> Result<NodeHandle, ServerError> {
    start_with_relay(cfg, listener, None).await
}

async fn bind(addr: &str) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind {
            addr: addr.to_string(),
            source,
        })
}

/// [`start`] with an already bound relay socket as well (for `federation.relay_listen`).
pub async fn start_with_relay(
    cfg: NodeConfig,
    listener: Option<TcpListener>,
    relay_listener: Option<TcpListener>,
) -> Result<NodeHandle, ServerError> {
    start_with_listeners(
        cfg,
        Listeners {
            api: listener,
            relay: relay_listener,
            http: None,
        },
    )
    .await
}

/// Sockets bound before a node starts (tests and `dev` bind port 0 first, so no other
/// process takes the port in between): the client port, the relay port and the operations
/// listener. A socket not given is bound from the configuration.
#[derive(Debug, Default)]
pub struct Listeners {
    pub api: Option<TcpListener>,
    pub relay: Option<TcpListener>,
    pub http: Option<TcpListener>,
}

/// [`start`] with any of the node's sockets already bound.
pub async fn start_with_listeners(
    cfg: NodeConfig,
    listeners: Listeners,
) -> Result<NodeHandle, ServerError> {
    start_inner(cfg, listeners, UnsafeBreakage::default()).await
}

/// Guarantees a node can be told to break, so that a test can prove the chaos checkers
/// catch the breakage. Nothing in `sealpost` sets them: only a separately built test
/// binary calls [`start_broken`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnsafeBreakage {
    /// Answer writes before they are committed (see
    /// [`sealpost_raft::NodeOptions::unsafe_ack_before_commit`]).
    pub ack_before_commit: bool,
    /// Never fsync the Raft log (see [`StoreOptions::unsafe_skip_fsync`]).
    pub skip_fsync: bool,
}

/// Starts a node that breaks the guarantees named in `breakage`. For the chaos harness's
/// broken test node only: a node started this way loses acknowledged writes.
pub async fn start_broken(
    cfg: NodeConfig,
    breakage: UnsafeBreakage,
) -> Result<NodeHandle, ServerError> {
    tracing::warn!(
        ?breakage,
        "this node is BROKEN ON PURPOSE and will lose acknowledged writes"
    );
    start_inner(cfg, Listeners::default(), breakage).await
}

/// The TLS configuration a node connects to its peers with: the provider's CA bundle and
/// the node's own certificate as its client identity.
fn client_tls_of(tls: &sealpost_crypto::tls::TlsMaterial) -> ClientTlsConfig {
    ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&tls.ca_pem))
        .identity(Identity::from_pem(
            &tls.identity.cert_pem,
            &tls.identity.key_pem,
        ))
}

async fn start_inner(
    cfg: NodeConfig,
    listeners: Listeners,
    breakage: UnsafeBreakage,
) -> Result<NodeHandle, ServerError> {
    let Listeners {
        api: listener,
        relay: relay_listener,
        http: http_bound,
    } = listeners;
    let tls = cfg.tls.load()?;
    let kek = load_kek(&cfg)?;
    let provider_key = match cfg.provider_key_path() {
        Some(p) => Some(Arc::new(sealpost_crypto::provider_key::ProviderKey::load(
            p,
        )?)),
        None => None,
    };
    let federation = match (&cfg.federation, &provider_key) {
        (Some(f), Some(key)) => Some((
            f.clone(),
            key.clone(),
            Arc::new(TrustBundle::load(&f.trust_bundle, &cfg.provider)?),
        )),
        _ => None,
    };
    let listener = match listener {
        Some(l) => l,
        None => bind(&cfg.listen).await?,
    };
    let addr = listener.local_addr().map_err(|source| ServerError::Bind {
        addr: cfg.listen.clone(),
        source,
    })?;
    let fresh = claim_store_dirs(&cfg)?;
    let identity = Identity::from_pem(&tls.identity.cert_pem, &tls.identity.key_pem);
    let client_tls = client_tls_of(&tls);
    let raft = RaftNode::start(NodeOptions {
        id: cfg.id,
        data_dir: cfg.data_dir.clone(),
        advertise_addr: cfg.advertise_addr(),
        peers: cfg.peer_map(),
        cluster_name: cfg.provider.clone(),
        raft: cfg.raft.clone(),
        client_tls,
        store: StoreOptions {
            create: fresh,
            unsafe_skip_fsync: breakage.skip_fsync,
            log_root: cfg.raft_log_dir.clone(),
            ..StoreOptions::default()
        },
        unsafe_ack_before_commit: breakage.ack_before_commit,
        event_version: cfg
            .advertise_event_version
            .unwrap_or(sealpost_core::event::EVENT_VERSION_CURRENT),
    })
    .await?;
    if fresh {
        claim_roots(&cfg)?;
    }
    // Before serving: a node given the wrong KEK stops here, naming both KEK ids.
    match check_kek(&kek, raft.view()) {
        Ok(Some(org)) => {
            tracing::debug!(%org, kek = %kek.current.id_hex(), "the KEK unwraps the stored keys")
        }
        Ok(None) => {}
        Err(e) => {
            raft.shutdown().await;
            return Err(e.into());
        }
    }

    let limit = cfg.api.grpc_message_bytes_max;
    let floor = StorageFloor::new(
        store_roots(&cfg)
            .into_iter()
            .map(|(dir, _)| dir.to_path_buf())
            .collect(),
        cfg.api.storage_free_bytes_min,
    );
    let guard = Guard::new(
        cfg.id,
        RateLimit {
            sends_per_s: cfg.api.send_rate_per_org_per_s,
            burst: cfg.api.send_burst_per_org,
        },
    );
    // The client port's TLS (gRPC over HTTP/2) and the MLLP listeners' (no ALPN), both
    // read again when the files change.
    let grpc_tls = crate::tls::ServerTls::load(&cfg.tls, &[b"h2"])?;
    // The same files give this node's identity towards its peers: reconnect with them.
    {
        // (Only the network: the listener's tasks may outlive the node's stores.)
        let (paths, set_client_tls) = (cfg.tls.clone(), raft.client_tls_setter());
        grpc_tls.on_change(move || match paths.load() {
            Ok(m) => set_client_tls(client_tls_of(&m)),
            Err(e) => tracing::warn!(error = %e, "the rotated TLS files do not load as a client identity; peers keep the old one"),
        });
    }
    // Console tokens are keyed from the KEK, so every node of the provider verifies them.
    let console_tokens = Arc::new(sealpost_crypto::console_token::ConsoleTokens::new(
        &kek.current,
    ));
    let keystore = Keystore::new(kek, raft.view().clone());
    let faults = std::sync::Arc::new(MessagingFaults::default());
    let directory = DirectoryServer::new(DirectoryService::new(
        raft.clone(),
        keystore.clone(),
        guard.clone(),
    ))
    .max_decoding_message_size(limit)
    .max_encoding_message_size(limit);
    let messaging_service = MessagingService::new(
        raft.clone(),
        cfg.provider.clone(),
        keystore.clone(),
        cfg.messaging.clone(),
        faults.clone(),
        (guard.clone(), floor.clone()),
    );
    let messaging = MessagingServer::new(messaging_service.clone())
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    let (workers_stop, workers_rx) = tokio::sync::watch::channel(false);
    let workers_rx_mllp = workers_rx.clone();
    let bundle = federation
        .as_ref()
        .map(|(_, _, b)| b.clone())
        .unwrap_or_default();
    let mut workers = vec![
        grpc_tls.spawn_reloader(
            Duration::from_millis(cfg.api.tls_reload_ms),
            workers_rx.clone(),
        ),
        guard.spawn_summariser(
            raft.clone(),
            Duration::from_millis(cfg.api.denial_summary_ms),
            workers_rx.clone(),
        ),
    ];
    workers.extend(crate::mllp_out::spawn(
        raft.clone(),
        keystore.clone(),
        cfg.messaging.clone(),
        cfg.mllp_destinations.clone(),
        workers_rx.clone(),
    ));
    workers.extend(crate::mllp_notify::spawn(
        raft.clone(),
        &cfg.messaging,
        cfg.mllp_notify.clone(),
        workers_rx.clone(),
    ));
    workers.extend(crate::retention::spawn(
        raft.clone(),
        cfg.messaging.payload_retention_ms,
        cfg.messaging.worker_tick_ms,
        workers_rx.clone(),
    ));
    workers.push(crate::delivery::spawn(
        raft.clone(),
        keystore.clone(),
        cfg.messaging.clone(),
        faults.clone(),
        bundle.clone(),
        workers_rx.clone(),
    ));
    let relay_faults = Arc::new(RelayFaults::default());
    let last_errors = LastErrors::default();
    let mut relay_addr = None;
    let mut relay_stop = None;
    let mut relay_server = None;
    if let Some((fed, key, bundle)) = &federation
        && !bundle.peers.is_empty()
    {
        let relay_listener = match relay_listener {
            Some(l) => l,
            None => bind(&fed.relay_listen).await?,
        };
        relay_addr = Some(
            relay_listener
                .local_addr()
                .map_err(|source| ServerError::Bind {
                    addr: fed.relay_listen.clone(),
                    source,
                })?,
        );
        let service = RelayServer::new(RelayService::new(
            raft.clone(),
            cfg.provider.clone(),
            bundle.clone(),
            key.clone(),
            (cfg.messaging.payload_bytes_max, cfg.raft.batch_bytes_max),
            floor.clone(),
        ))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
        let relay_tls = ServerTlsConfig::new()
            .identity(identity.clone())
            .client_ca_root(Certificate::from_pem(bundle.roots_pem()));
        let router = Server::builder()
            .tls_config(relay_tls)?
            .concurrency_limit_per_connection(cfg.api.requests_per_connection_max)
            .timeout(Duration::from_millis(cfg.api.request_timeout_ms))
            .add_service(service);
        let (tx, rx) = oneshot::channel::<()>();
        let incoming = crate::listener::incoming(relay_listener, fed.relay.connections_max);
        relay_server = Some(tokio::spawn(router.serve_with_incoming_shutdown(
            incoming,
            async move {
                let _ = rx.await;
            },
        )));
        relay_stop = Some(tx);
        workers.extend(crate::relay_worker::spawn(
            RelayContext {
                node: raft.clone(),
                provider: cfg.provider.clone(),
                bundle: bundle.clone(),
                opts: fed.relay.clone(),
                messaging: cfg.messaging.clone(),
                identity: identity.clone(),
                grpc_message_bytes_max: limit,
                faults: relay_faults.clone(),
                last_errors: last_errors.clone(),
            },
            workers_rx.clone(),
        ));
    }
    let mut mllp_addrs = Vec::with_capacity(cfg.mllp.len());
    let mllp_tls = if cfg.mllp.iter().any(|m| m.tls) {
        Some(reloading_tls(
            &cfg,
            &[],
            sealpost_crypto::tls::ClientCerts::Required,
            workers_rx_mllp.clone(),
            &mut workers,
        )?)
    } else {
        None
    };
    for m in &cfg.mllp {
        let l = crate::mllp::start(
            m.clone(),
            None,
            messaging_service.clone(),
            cfg.id,
            mllp_tls.clone(),
            workers_rx_mllp.clone(),
        )
        .await
        .map_err(|source| ServerError::Bind {
            addr: m.listen.clone(),
            source,
        })?;
        mllp_addrs.push(l.addr);
        workers.push(l.task);
    }
    // The operations listener is bound now, so the console's address is known to the
    // Admin service that mints its tokens; it serves once everything is built.
    let http_listener = match (http_bound, &cfg.http_listen) {
        (Some(l), _) => Some(l),
        (None, Some(a)) => Some(bind(a).await?),
        (None, None) => None,
    };
    let http_addr = http_listener.as_ref().and_then(|l| l.local_addr().ok());
    // With `http_tls`, the node's certificate; a client certificate is optional there.
    let http_tls = if cfg.http_tls && http_listener.is_some() {
        Some(reloading_tls(
            &cfg,
            &[b"http/1.1"],
            sealpost_crypto::tls::ClientCerts::Optional,
            workers_rx.clone(),
            &mut workers,
        )?)
    } else {
        None
    };
    let http_scheme = if http_tls.is_some() { "https" } else { "http" };
    let mut admin_service = AdminService::new(
        raft.clone(),
        Duration::from_millis(cfg.api.member_status_timeout_ms),
        last_errors.clone(),
        cfg.messaging.listing_items_max,
        cfg.messaging.deliver_within_ms_default,
        guard.clone(),
    )
    .with_provider(cfg.provider.clone())
    .with_keystore(keystore);
    if let Some(a) = http_addr {
        admin_service = admin_service.with_console(
            console_tokens.clone(),
            format!("{http_scheme}://{a}/console/"),
        );
    }
    let audit_service = crate::audit::AuditService::new(
        raft.clone(),
        cfg.provider.clone(),
        provider_key.clone(),
        guard.clone(),
    );
    workers.push(crate::upgrade::spawn(raft.clone(), workers_rx.clone()));
    let history = crate::console::History::default();
    workers.push(crate::console::spawn_sampler(
        raft.clone(),
        history.clone(),
        workers_rx.clone(),
    ));
    let console = crate::console::Console {
        tokens: console_tokens,
        raft: raft.clone(),
        admin: admin_service.clone(),
        messaging: messaging_service.clone(),
        audit: audit_service.clone(),
        relay_errors: last_errors.clone(),
        history,
    };
    let admin = AdminServer::new(admin_service)
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(sealpost_proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServerError::DataDir {
            path: "reflection".into(),
            problem: e.to_string(),
        })?;
    // Only nodes of this provider speak Raft to it.
    let raft_guard = guard.clone();
    let node_id = cfg.id;
    let raft_service = tonic::service::interceptor::InterceptedService::new(
        raft.service(),
        move |req: tonic::Request<()>| {
            raft_guard.check(&Caller::of(&req, node_id), Action::Raft)?;
            Ok(req)
        },
    );
    let metrics = crate::metrics::Metrics::new(&raft, &grpc_tls, (&guard, &floor));
    let counting = metrics.clone();
    // TLS is terminated by `listener::tls_incoming`, not tonic, so the configuration can
    // change (rotation, revocation) while the node runs.
    let router = Server::builder()
        .concurrency_limit_per_connection(cfg.api.requests_per_connection_max)
        .max_concurrent_streams(cfg.api.streams_per_connection_max)
        .timeout(Duration::from_millis(cfg.api.request_timeout_ms))
        .layer(tower::util::MapResponseLayer::new(
            move |resp: axum::http::Response<tonic::body::Body>| {
                counting.count_grpc(&resp);
                resp
            },
        ))
        .add_service(raft_service)
        .add_service(directory)
        .add_service(messaging)
        .add_service(admin)
        .add_service(
            AuditServer::new(audit_service)
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
        )
        .add_service(reflection);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let incoming =
        crate::listener::tls_incoming(listener, cfg.api.connections_max, grpc_tls.clone());
    let server = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async move {
        let _ = stop_rx.await;
    }));
    if !cfg.initial_members.is_empty() {
        let members = cfg
            .initial_members
            .iter()
            .map(|m| (m.id, m.addr.clone()))
            .collect();
        raft.initialize(members).await?;
    }
    let http = match http_listener {
        Some(l) => Some(
            crate::metrics::OpsServer::start(
                l,
                raft.clone(),
                metrics.clone(),
                crate::console::router(console),
                http_tls,
            )
            .map_err(|source| ServerError::Bind {
                addr: cfg.http_listen.clone().unwrap_or_default(),
                source,
            })?,
        ),
        None => None,
    };
    tracing::info!(node = cfg.id, %addr, relay = ?relay_addr, http = ?http_addr, provider = %cfg.provider, "node serving");
    Ok(NodeHandle {
        raft,
        addr,
        relay_addr,
        mllp_addrs,
        faults,
        relay_faults,
        tls: grpc_tls,
        guard,
        floor,
        http_addr,
        metrics,
        http,
        workers_stop,
        workers,
        stop: Some(stop_tx),
        server,
        relay_stop,
        relay_server,
    })
}
