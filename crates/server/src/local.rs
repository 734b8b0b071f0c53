//! A provider's cluster of nodes in one process, laid out on disk as
//! `DIR/<provider>/node-<id>/` (each with `node.toml`, `tls/`, `raft-log/` and `sm/`), with
//! the provider's CA in `DIR/<provider>/ca.pem` and client certificates in
//! `DIR/<provider>/clients/` and its key-encryption key in `DIR/<provider>/kek`.
//!
//! Ports are chosen by the OS at first start and saved in each node's `node.toml`, so a
//! restart serves on the same addresses. [`LocalCluster::create_federation`] lays out
//! several providers that trust each other: each gets a receipt-signing key
//! (`provider-key`), a relay port per node and a `trust-bundle.toml` naming the others. `sealpost dev` and the end-to-end tests use this;
//! every node is a real node on loopback with real gRPC and TLS. [`LocalCluster::lay_out`]
//! and [`LocalCluster::lay_out_federation`] write the same layout without starting it, for
//! node processes (`sealpost node --config`; the benchmark runs its clusters that way).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sealpost_crypto::tls::{DevCa, Role, Subject, TlsPaths, write_file};
use sealpost_raft::RaftOptions;
use sealpost_store::types::NodeId;
use tokio::net::TcpListener;

use crate::config::{ApiLimits, Member, MessagingOptions, NodeConfig, WORKER_THREADS_MAX};
use crate::federation::{FederationConfig, PeerSpec, RelayOptions};
use crate::node::{Listeners, NodeHandle, ServerError, start, start_with_listeners};
use sealpost_crypto::provider_key::ProviderKey;

/// The provider's receipt-signing key, in `DIR/<provider>/`.
pub const PROVIDER_KEY_FILE: &str = "provider-key";
/// The provider's trust bundle (its peers), in `DIR/<provider>/`.
pub const TRUST_BUNDLE_FILE: &str = "trust-bundle.toml";

/// A provider laid out on disk with its ports bound, not yet started.
struct Prepared {
    cluster: LocalCluster,
    /// Per node: client port, relay port (federated), operations listener.
    listeners: BTreeMap<NodeId, (TcpListener, Option<TcpListener>, TcpListener)>,
}

impl Prepared {
    /// How peers see this provider: its CA, receipt key and relay ports.
    fn peer_spec(&self) -> Result<PeerSpec, LocalError> {
        let key = ProviderKey::load(&self.cluster.dir.join(PROVIDER_KEY_FILE))?;
        Ok(PeerSpec {
            provider: self.cluster.provider.clone(),
            ca: self.cluster.dir.join("ca.pem"),
            receipt_key: key.public_hex(),
            relay_endpoints: self.cluster.relay_addrs(),
        })
    }

    async fn start(self) -> Result<LocalCluster, LocalError> {
        let mut cluster = self.cluster;
        for (id, (api, relay, http)) in self.listeners {
            let cfg = cluster.configs[&id].clone();
            let handle = start_with_listeners(
                cfg,
                Listeners {
                    api: Some(api),
                    relay,
                    http: Some(http),
                },
            )
            .await?;
            cluster.running.insert(id, handle);
        }
        Ok(cluster)
    }
}

/// Loopback host every local node listens on.
pub const LOCAL_HOST: &str = "127.0.0.1";

/// A loopback address with a port free right now (the operations listener binds it when
/// its node starts, and again after every restart).
fn free_loopback_addr(dir: &Path) -> Result<String, LocalError> {
    let l = std::net::TcpListener::bind((LOCAL_HOST, 0)).map_err(io(dir))?;
    Ok(l.local_addr().map_err(io(dir))?.to_string())
}
/// How long a new cluster may take to elect a leader and raise its cluster version.
pub const NEW_CLUSTER_SETTLE_SECS: u64 = 60;
/// Attempts to reopen a node's stores while its previous instance is still closing.
pub const RESTART_ATTEMPTS_MAX: u32 = 100;
/// Pause between those attempts.
pub const RESTART_RETRY_MS: u64 = 100;

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error(transparent)]
    Crypto(#[from] sealpost_crypto::Error),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Layout(String),
    #[error("node {0} is not part of this local cluster")]
    UnknownNode(NodeId),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LocalError + '_ {
    move |source| LocalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A provider's nodes, running in this process.
pub struct LocalCluster {
    pub provider: String,
    /// `DIR/<provider>`.
    pub dir: PathBuf,
    ca: DevCa,
    configs: BTreeMap<NodeId, NodeConfig>,
    running: BTreeMap<NodeId, NodeHandle>,
    /// Nodes sharing this machine, every provider's when laid out as a federation: each
    /// node's `worker_threads` is the machine's cores divided among them.
    on_machine: usize,
}

impl std::fmt::Debug for LocalCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCluster")
            .field("provider", &self.provider)
            .field("running", &self.running.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// The nodes on this machine when one provider's `nodes` are laid out alone.
fn alone(nodes: u64) -> usize {
    usize::try_from(nodes).unwrap_or(usize::MAX)
}

/// Runtime threads for each of `nodes` nodes sharing this machine: its cores divided among
/// them, at least one each (see [`NodeConfig::worker_threads`]).
pub fn shared_machine_workers(nodes: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    (cores / nodes.max(1)).clamp(1, WORKER_THREADS_MAX)
}

fn node_dir(dir: &Path, id: NodeId) -> PathBuf {
    dir.join(format!("node-{id}"))
}

impl LocalCluster {
    /// Creates a provider's layout under `dir` (which must not hold one yet) and starts
    /// `nodes` nodes as the initial voters.
    pub async fn create(
        dir: &Path,
        provider: &str,
        nodes: u64,
        raft: RaftOptions,
        api: ApiLimits,
    ) -> Result<Self, LocalError> {
        let messaging = Self::fitting_messaging(&raft, &api);
        Self::create_with(dir, provider, nodes, raft, api, messaging).await
    }

    /// Default messaging options with the largest payload these limits can carry, up to
    /// the default.
    pub fn fitting_messaging(raft: &RaftOptions, api: &ApiLimits) -> MessagingOptions {
        let fit = raft
            .batch_bytes_max
            .min(api.grpc_message_bytes_max)
            .saturating_sub(crate::config::ENVELOPE_OVERHEAD_BYTES)
            .max(1) as u64;
        let mut messaging = MessagingOptions::default();
        messaging.payload_bytes_max = messaging.payload_bytes_max.min(fit);
        messaging
    }

    /// [`Self::create`] with messaging options (deadlines, limits) for every node.
    pub async fn create_with(
        dir: &Path,
        provider: &str,
        nodes: u64,
        raft: RaftOptions,
        api: ApiLimits,
        messaging: MessagingOptions,
    ) -> Result<Self, LocalError> {
        let cluster = Self::prepare_alone(dir, provider, nodes, (raft, api, messaging))
            .await?
            .start()
            .await?;
        cluster.settle().await?;
        Ok(cluster)
    }

    /// Waits until a new cluster has elected a leader and raised its cluster version to
    /// this build's, so it starts from the same point every time (see [`Self::wait_version`]).
    async fn settle(&self) -> Result<(), LocalError> {
        let wait = Duration::from_secs(NEW_CLUSTER_SETTLE_SECS);
        if self.wait_leader(wait).await.is_none() || !self.wait_version(wait).await {
            return Err(LocalError::Layout(format!(
                "the new cluster of {} did not elect a leader and settle its version in \
                 {NEW_CLUSTER_SETTLE_SECS} s",
                self.provider
            )));
        }
        Ok(())
    }

    /// Creates several providers under `root` (`root/<provider>`, each with its own
    /// messaging options), each trusting all the others (a trust bundle naming their CAs,
    /// receipt keys and relay ports), and starts them all.
    pub async fn create_federation(
        root: &Path,
        providers: &[(String, MessagingOptions)],
        nodes: u64,
        options: (RaftOptions, ApiLimits, RelayOptions),
    ) -> Result<Vec<Self>, LocalError> {
        let prepared = Self::prepare_federation(root, providers, nodes, options).await?;
        let mut out = Vec::with_capacity(prepared.len());
        for p in prepared {
            out.push(p.start().await?);
        }
        for c in &out {
            c.settle().await?;
        }
        Ok(out)
    }

    /// Lays out a provider like [`Self::create_with`] but starts nothing: the ports are
    /// chosen and saved in each `node.toml` ([`Self::config_path`]) for node processes to
    /// serve on (`sealpost node --config`), as the benchmark does.
    pub async fn lay_out(
        dir: &Path,
        provider: &str,
        nodes: u64,
        raft: RaftOptions,
        api: ApiLimits,
        messaging: MessagingOptions,
    ) -> Result<Self, LocalError> {
        Ok(
            Self::prepare_alone(dir, provider, nodes, (raft, api, messaging))
                .await?
                .cluster,
        )
    }

    /// Lays out federated providers like [`Self::create_federation`] and starts nothing.
    pub async fn lay_out_federation(
        root: &Path,
        providers: &[(String, MessagingOptions)],
        nodes: u64,
        options: (RaftOptions, ApiLimits, RelayOptions),
    ) -> Result<Vec<Self>, LocalError> {
        Ok(Self::prepare_federation(root, providers, nodes, options)
            .await?
            .into_iter()
            .map(|p| p.cluster)
            .collect())
    }

    /// The `node.toml` of node `id`.
    pub fn config_path(&self, id: NodeId) -> PathBuf {
        node_dir(&self.dir, id).join("node.toml")
    }

    async fn prepare_federation(
        root: &Path,
        providers: &[(String, MessagingOptions)],
        nodes: u64,
        (raft, api, relay): (RaftOptions, ApiLimits, RelayOptions),
    ) -> Result<Vec<Prepared>, LocalError> {
        // Every provider's nodes share this machine: its cores are divided among all of them.
        let on_machine = alone(nodes).saturating_mul(providers.len());
        let mut prepared = Vec::with_capacity(providers.len());
        for (p, messaging) in providers {
            prepared.push(
                Self::prepare(
                    &root.join(p),
                    p,
                    (nodes, on_machine),
                    (raft.clone(), api.clone(), messaging.clone()),
                    Some(relay.clone()),
                )
                .await?,
            );
        }
        for me in &prepared {
            let mut bundle = crate::federation::TrustBundleFile::default();
            for other in prepared
                .iter()
                .filter(|o| o.cluster.provider != me.cluster.provider)
            {
                bundle.peers.push(other.peer_spec()?);
            }
            let path = me.cluster.dir.join(TRUST_BUNDLE_FILE);
            write_file(&path, &bundle.to_toml(), false)?;
        }
        Ok(prepared)
    }

    /// Lays out a provider (CA, KEK, provider key and relay ports when `relay` is given,
    /// node folders and configurations on freshly bound loopback ports) without starting
    /// it.
    /// [`Self::prepare`] for one provider, alone on this machine and not federated.
    async fn prepare_alone(
        dir: &Path,
        provider: &str,
        nodes: u64,
        options: (RaftOptions, ApiLimits, MessagingOptions),
    ) -> Result<Prepared, LocalError> {
        Self::prepare(dir, provider, (nodes, alone(nodes)), options, None).await
    }

    /// `on_machine`: the nodes sharing this machine, these and any other provider's laid
    /// out beside them.
    async fn prepare(
        dir: &Path,
        provider: &str,
        (nodes, on_machine): (u64, usize),
        (raft, api, messaging): (RaftOptions, ApiLimits, MessagingOptions),
        relay: Option<RelayOptions>,
    ) -> Result<Prepared, LocalError> {
        let federated = relay.is_some();
        if dir.join("ca.pem").exists() {
            return Err(LocalError::Layout(format!(
                "{} already holds a provider; open it instead",
                dir.display()
            )));
        }
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let ca = DevCa::generate(provider)?;
        ca.save(&dir.join("ca.pem"), &dir.join("ca-key.pem"))?;
        sealpost_crypto::kek::Kek::generate()?.save(&dir.join("kek"))?;
        // Signs audit checkpoints, and transport receipts when federated.
        ProviderKey::generate()?.save(&dir.join(PROVIDER_KEY_FILE))?;
        let bind = || async {
            TcpListener::bind((LOCAL_HOST, 0))
                .await
                .map_err(|source| LocalError::Io {
                    path: PathBuf::from(LOCAL_HOST),
                    source,
                })
        };
        let mut listeners = BTreeMap::new();
        for id in 1..=nodes {
            let relay = if federated { Some(bind().await?) } else { None };
            listeners.insert(id, (bind().await?, relay, bind().await?));
        }
        let members: Vec<Member> = listeners
            .iter()
            .map(|(id, (l, _, _))| {
                l.local_addr().map(|a| Member {
                    id: *id,
                    addr: a.to_string(),
                })
            })
            .collect::<Result<_, _>>()
            .map_err(io(dir))?;
        let mut cluster = Self {
            provider: provider.to_string(),
            dir: dir.to_path_buf(),
            ca,
            configs: BTreeMap::new(),
            running: BTreeMap::new(),
            on_machine,
        };
        let relay_opts = relay;
        for m in &members {
            let relay = match &listeners[&m.id].1 {
                Some(l) => Some(l.local_addr().map_err(io(dir))?.to_string()),
                None => None,
            };
            let http = listeners[&m.id]
                .2
                .local_addr()
                .map_err(io(dir))?
                .to_string();
            let cfg = cluster.write_node(
                m.id,
                (&m.addr, &http),
                members.clone(),
                vec![],
                (&raft, &api, &messaging),
                relay.as_deref().zip(relay_opts.as_ref()),
            )?;
            cluster.configs.insert(m.id, cfg);
        }
        Ok(Prepared { cluster, listeners })
    }

    /// The relay addresses of this provider's nodes (federated providers only).
    pub fn relay_addrs(&self) -> Vec<String> {
        self.configs
            .values()
            .filter_map(|c| c.federation.as_ref().map(|f| f.relay_listen.clone()))
            .collect()
    }

    /// Opens an existing layout and starts every node on its saved port.
    pub async fn open(dir: &Path, provider: &str) -> Result<Self, LocalError> {
        let ca = DevCa::load(provider, &dir.join("ca.pem"), &dir.join("ca-key.pem"))?;
        let mut configs = BTreeMap::new();
        for e in std::fs::read_dir(dir).map_err(io(dir))? {
            let path = e.map_err(io(dir))?.path();
            let toml = path.join("node.toml");
            if toml.exists() {
                let mut cfg = NodeConfig::load(&toml)?;
                // A folder laid out before the operations listener existed gets one, saved.
                if cfg.http_listen.is_none() {
                    cfg.http_listen = Some(free_loopback_addr(dir)?);
                    write_file(&toml, &cfg.to_toml(), false)?;
                }
                if path != node_dir(dir, cfg.id) {
                    return Err(LocalError::Layout(format!(
                        "{} holds the configuration of node {}",
                        path.display(),
                        cfg.id
                    )));
                }
                configs.insert(cfg.id, cfg);
            }
        }
        if configs.is_empty() {
            return Err(LocalError::Layout(format!(
                "{} holds no node folders",
                dir.display()
            )));
        }
        let on_machine = configs.len();
        let mut cluster = Self {
            provider: provider.to_string(),
            dir: dir.to_path_buf(),
            ca,
            configs,
            running: BTreeMap::new(),
            on_machine,
        };
        let ids: Vec<NodeId> = cluster.configs.keys().copied().collect();
        for id in ids {
            cluster.start_node(id).await?;
        }
        Ok(cluster)
    }

    fn write_node(
        &self,
        id: NodeId,
        (addr, http): (&str, &str),
        initial_members: Vec<Member>,
        peers: Vec<Member>,
        (raft, api, messaging): (&RaftOptions, &ApiLimits, &MessagingOptions),
        relay: Option<(&str, &RelayOptions)>,
    ) -> Result<NodeConfig, LocalError> {
        let nd = node_dir(&self.dir, id);
        let tls_dir = nd.join("tls");
        let ident = self.ca.issue_node(
            &format!("{}-node-{id}", self.provider),
            &[LOCAL_HOST.into(), "localhost".into()],
        )?;
        write_file(&tls_dir.join("node.pem"), &ident.cert_pem, false)?;
        write_file(&tls_dir.join("node-key.pem"), &ident.key_pem, true)?;
        let cfg = NodeConfig {
            id,
            provider: self.provider.clone(),
            data_dir: nd.clone(),
            raft_log_dir: None,
            // Every node of a local cluster runs on this machine.
            worker_threads: Some(shared_machine_workers(
                self.on_machine
                    .max(initial_members.len())
                    .max(peers.len() + 1),
            )),
            listen: addr.to_string(),
            advertise: None,
            // Kept across restarts like the node's own port, so scrapers keep finding it.
            http_listen: Some(http.to_string()),
            http_tls: false,
            advertise_event_version: None,
            initial_members,
            peers,
            tls: TlsPaths {
                ca: self.dir.join("ca.pem"),
                cert: tls_dir.join("node.pem"),
                key: tls_dir.join("node-key.pem"),
                crl: Some(self.ensure_crl()?),
            },
            kek: self.dir.join("kek"),
            kek_env: None,
            previous_keks: Vec::new(),
            // (A folder made before every provider had a signing key has none.)
            provider_key: Some(self.dir.join(PROVIDER_KEY_FILE)).filter(|p| p.exists()),
            raft: raft.clone(),
            api: api.clone(),
            messaging: messaging.clone(),
            federation: relay.map(|(listen, opts)| FederationConfig {
                relay_listen: listen.to_string(),
                provider_key: self.dir.join(PROVIDER_KEY_FILE),
                trust_bundle: self.dir.join(TRUST_BUNDLE_FILE),
                relay: opts.clone(),
            }),
            mllp: Vec::new(),
            mllp_destinations: Vec::new(),
            mllp_notify: Vec::new(),
        };
        cfg.validate()?;
        write_file(&nd.join("node.toml"), &cfg.to_toml(), false)?;
        Ok(cfg)
    }

    pub fn node(&self, id: NodeId) -> Option<&NodeHandle> {
        self.running.get(&id)
    }

    pub fn running_ids(&self) -> Vec<NodeId> {
        self.running.keys().copied().collect()
    }

    /// Nodes sharing this machine (every provider's, for a federation laid out together).
    pub fn nodes_on_machine(&self) -> usize {
        self.on_machine
    }

    pub fn node_ids(&self) -> Vec<NodeId> {
        self.configs.keys().copied().collect()
    }

    pub fn config(&self, id: NodeId) -> Option<&NodeConfig> {
        self.configs.get(&id)
    }

    /// Every node's address, running or not.
    pub fn addrs(&self) -> BTreeMap<NodeId, String> {
        self.configs
            .iter()
            .map(|(id, c)| (*id, c.advertise_addr()))
            .collect()
    }

    /// Keeps each node's Raft log under `root/<provider>/node-<id>` instead of its data
    /// folder (`raft_log_dir`, saved in each `node.toml`). Only before any node has run:
    /// a log cannot move away from a node that already wrote one.
    pub fn keep_raft_logs_under(&mut self, root: &Path) -> Result<(), LocalError> {
        for (id, cfg) in &mut self.configs {
            if cfg.data_dir.join(crate::node::NODE_ID_FILE).exists() {
                return Err(LocalError::Layout(format!(
                    "node {id} has already run; its Raft log stays where it is"
                )));
            }
            cfg.raft_log_dir = Some(node_dir(&root.join(&self.provider), *id));
            cfg.validate()?;
            write_file(&cfg.data_dir.join("node.toml"), &cfg.to_toml(), false)?;
        }
        Ok(())
    }

    /// Gives a node these MLLP listeners (saved in its `node.toml`) and restarts it.
    pub async fn set_mllp(
        &mut self,
        id: NodeId,
        listeners: Vec<crate::mllp::MllpListenerConfig>,
    ) -> Result<(), LocalError> {
        let cfg = self
            .configs
            .get_mut(&id)
            .ok_or(LocalError::UnknownNode(id))?;
        cfg.mllp = listeners;
        cfg.validate()?;
        write_file(&cfg.data_dir.join("node.toml"), &cfg.to_toml(), false)?;
        if self.running.contains_key(&id) {
            self.stop_node(id).await?;
            self.start_node(id).await?;
        }
        Ok(())
    }

    /// Gives every node these MLLP destinations (saved in each `node.toml`) and restarts
    /// the running ones.
    pub async fn set_mllp_destinations(
        &mut self,
        destinations: Vec<crate::mllp_out::MllpDestination>,
    ) -> Result<(), LocalError> {
        self.reconfigure_all(|cfg| cfg.mllp_destinations = destinations.clone())
            .await
    }

    /// Gives every node these MLLP outcome-notification targets and restarts the running
    /// ones.
    pub async fn set_mllp_notify(
        &mut self,
        targets: Vec<crate::mllp_notify::MllpNotifyTarget>,
    ) -> Result<(), LocalError> {
        self.reconfigure_all(|cfg| cfg.mllp_notify = targets.clone())
            .await
    }

    /// Changes every node's configuration (saved in its `node.toml`), restarting the
    /// running ones one by one.
    async fn reconfigure_all(
        &mut self,
        change: impl Fn(&mut NodeConfig),
    ) -> Result<(), LocalError> {
        for id in self.node_ids() {
            let cfg = self
                .configs
                .get_mut(&id)
                .ok_or(LocalError::UnknownNode(id))?;
            change(cfg);
            cfg.validate()?;
            write_file(&cfg.data_dir.join("node.toml"), &cfg.to_toml(), false)?;
            if self.running.contains_key(&id) {
                self.stop_node(id).await?;
                self.start_node(id).await?;
            }
        }
        Ok(())
    }

    /// Stops one node; its folder and port stay for a restart.
    pub async fn stop_node(&mut self, id: NodeId) -> Result<(), LocalError> {
        let h = self
            .running
            .remove(&id)
            .ok_or(LocalError::UnknownNode(id))?;
        h.stop().await;
        Ok(())
    }

    /// Starts a stopped node from its folder, on its saved port.
    pub async fn start_node(&mut self, id: NodeId) -> Result<(), LocalError> {
        if self.running.contains_key(&id) {
            return Ok(());
        }
        let cfg = self
            .configs
            .get(&id)
            .ok_or(LocalError::UnknownNode(id))?
            .clone();
        let mut attempt = 0;
        loop {
            // The previous instance may still be closing its stores.
            match start(cfg.clone(), None).await {
                Ok(h) => {
                    self.running.insert(id, h);
                    return Ok(());
                }
                Err(ServerError::Raft(e))
                    if attempt < RESTART_ATTEMPTS_MAX && e.to_string().contains("lock") =>
                {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(RESTART_RETRY_MS)).await;
                }
                Err(ServerError::Bind { .. }) if attempt < RESTART_ATTEMPTS_MAX => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(RESTART_RETRY_MS)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The settings a new node copies: those of the first node.
    fn template(&self) -> Result<NodeConfig, LocalError> {
        self.configs
            .values()
            .next()
            .cloned()
            .ok_or_else(|| LocalError::Layout("no node to copy settings from".into()))
    }

    /// Creates and starts a new node that is not yet a member (it joins when the cluster
    /// adds it). Returns its id and address.
    pub async fn spawn_joiner(&mut self) -> Result<(NodeId, String), LocalError> {
        let id = self.configs.keys().max().copied().unwrap_or(0) + 1;
        let template = self.template()?;
        let l = TcpListener::bind((LOCAL_HOST, 0))
            .await
            .map_err(io(&self.dir))?;
        let addr = l.local_addr().map_err(io(&self.dir))?.to_string();
        let peers: Vec<Member> = self
            .addrs()
            .into_iter()
            .map(|(id, addr)| Member { id, addr })
            .collect();
        let relay = match &template.federation {
            Some(_) => Some(
                TcpListener::bind((LOCAL_HOST, 0))
                    .await
                    .map_err(io(&self.dir))?,
            ),
            None => None,
        };
        let relay_addr = match &relay {
            Some(r) => Some(r.local_addr().map_err(io(&self.dir))?.to_string()),
            None => None,
        };
        let http = TcpListener::bind((LOCAL_HOST, 0))
            .await
            .map_err(io(&self.dir))?;
        let http_addr = http.local_addr().map_err(io(&self.dir))?.to_string();
        let cfg = self.write_node(
            id,
            (&addr, &http_addr),
            vec![],
            peers,
            (&template.raft, &template.api, &template.messaging),
            relay_addr
                .as_deref()
                .zip(template.federation.as_ref().map(|f| &f.relay)),
        )?;
        self.configs.insert(id, cfg.clone());
        let h = start_with_listeners(
            cfg,
            Listeners {
                api: Some(l),
                relay,
                http: Some(http),
            },
        )
        .await?;
        self.running.insert(id, h);
        Ok((id, addr))
    }

    /// Writes the configuration of a new node `id` that is not yet a member (it joins when
    /// the cluster adds it as a learner), on a fresh loopback port, without starting it; it
    /// reaches the others at `peers`. Returns its address. An id this layout already holds
    /// is refused: a node that lost its data rejoins under a new id.
    pub async fn lay_out_joiner(
        &mut self,
        id: NodeId,
        peers: Vec<Member>,
    ) -> Result<String, LocalError> {
        if self.configs.contains_key(&id) || node_dir(&self.dir, id).exists() {
            return Err(LocalError::Layout(format!(
                "node {id} exists already; a joining node needs a new id"
            )));
        }
        let template = self.template()?;
        if template.federation.is_some() {
            return Err(LocalError::Layout(
                "laying out a joiner of a federated provider is not supported".into(),
            ));
        }
        let addr = {
            let l = TcpListener::bind((LOCAL_HOST, 0))
                .await
                .map_err(io(&self.dir))?;
            l.local_addr().map_err(io(&self.dir))?.to_string()
        };
        let http = free_loopback_addr(&self.dir)?;
        let cfg = self.write_node(
            id,
            (&addr, &http),
            vec![],
            peers,
            (&template.raft, &template.api, &template.messaging),
            None,
        )?;
        self.configs.insert(id, cfg);
        Ok(addr)
    }

    /// Rewrites node `id`'s configuration with these peer addresses (they win over the
    /// addresses in membership, e.g. to route node-to-node traffic through a proxy). Takes
    /// effect when the node next starts.
    pub fn set_peers(&mut self, id: NodeId, peers: Vec<Member>) -> Result<(), LocalError> {
        self.update_config(id, |cfg| cfg.peers = peers)
    }

    /// Changes node `id`'s configuration with `change`, validates and saves it. Takes effect
    /// when the node next starts.
    pub fn update_config(
        &mut self,
        id: NodeId,
        change: impl FnOnce(&mut NodeConfig),
    ) -> Result<(), LocalError> {
        let path = self.config_path(id);
        let cfg = self
            .configs
            .get_mut(&id)
            .ok_or_else(|| LocalError::Layout(format!("no node {id} in this layout")))?;
        change(cfg);
        cfg.validate()?;
        write_file(&path, &cfg.to_toml(), false)?;
        Ok(())
    }

    /// Forgets a node that was removed from the cluster: stops it if running.
    pub async fn discard_node(&mut self, id: NodeId) -> Result<(), LocalError> {
        if let Some(h) = self.running.remove(&id) {
            h.stop().await;
        }
        self.configs.remove(&id);
        Ok(())
    }

    /// An operator's client certificate for `name`, issued on first use and kept in
    /// `clients/`.
    pub fn client_identity(&self, name: &str) -> Result<TlsPaths, LocalError> {
        self.client_identity_as(name, Subject::Role(Role::Operator))
    }

    /// A client certificate for `name` that names organisation `org` (so the messaging
    /// service lets it send and receive as that organisation), or with no `org` an
    /// operator's, issued on first use.
    pub fn client_identity_for_org(
        &self,
        name: &str,
        org: Option<&sealpost_core::ids::HpiO>,
    ) -> Result<TlsPaths, LocalError> {
        match org {
            Some(org) => self.client_identity_as(name, Subject::Org(org.clone())),
            None => self.client_identity(name),
        }
    }

    /// A client certificate for `name` naming `subject` (an organisation or a role),
    /// issued on first use.
    pub fn client_identity_as(&self, name: &str, subject: Subject) -> Result<TlsPaths, LocalError> {
        let dir = self.dir.join("clients");
        let paths = TlsPaths {
            ca: self.dir.join("ca.pem"),
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}-key.pem")),
            crl: None,
        };
        if !paths.cert.exists() {
            let id = match subject {
                Subject::Org(org) => self.ca.issue_for_org(name, &org)?,
                Subject::Role(role) => self.ca.issue_role(name, role)?,
            };
            write_file(&paths.cert, &id.cert_pem, false)?;
            write_file(&paths.key, &id.key_pem, true)?;
        }
        Ok(paths)
    }

    /// The provider's CA, which issues and revokes its certificates.
    pub fn ca(&self) -> &DevCa {
        &self.ca
    }

    /// The CRL the nodes check client certificates against (`DIR/<provider>/ca.crl`),
    /// written empty when missing.
    pub fn ensure_crl(&self) -> Result<std::path::PathBuf, LocalError> {
        Ok(self.ca.ensure_crl(&self.dir)?)
    }

    /// Revokes the certificate in `cert` (PEM) with the provider's CA
    /// (`DevCa::revoke_in`): nodes refuse it from their next TLS reload
    /// (`api.tls_reload_ms`) on.
    pub fn revoke(&self, cert: &std::path::Path) -> Result<(), LocalError> {
        let pem = std::fs::read_to_string(cert).map_err(io(cert))?;
        Ok(self.ca.revoke_in(&self.dir, &pem)?)
    }

    /// Waits until the running nodes agree on a leader that is one of them.
    pub async fn wait_leader(&self, timeout: Duration) -> Option<NodeId> {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            let leaders: Vec<Option<NodeId>> = self
                .running
                .values()
                .map(|h| h.raft.raft().metrics().borrow().current_leader)
                .collect();
            if let Some(Some(l)) = leaders.first()
                && self.running.contains_key(l)
                && leaders.iter().all(|x| x == &Some(*l))
            {
                return Some(*l);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// Stops every running node.
    /// Waits (at most `timeout`) until every running node has committed the cluster version
    /// this build understands: a new cluster starts at `CLUSTER_VERSION_INITIAL` and its
    /// leader raises it within a check or two (`crate::upgrade`). Tests that count events
    /// wait for it, so the raise's event is not counted among theirs.
    pub async fn wait_version(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        let want = sealpost_core::event::EVENT_VERSION_CURRENT;
        loop {
            let all = self
                .running
                .values()
                .all(|h| h.raft.status().is_ok_and(|s| s.sm.cluster_version >= want));
            if all {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn stop_all(&mut self) {
        let ids: Vec<NodeId> = self.running.keys().copied().collect();
        for id in ids {
            if let Some(h) = self.running.remove(&id) {
                h.stop().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_on_one_machine_share_its_cores_with_at_least_one_thread_each() {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        assert_eq!(shared_machine_workers(1), cores);
        assert_eq!(shared_machine_workers(0), cores);
        assert_eq!(shared_machine_workers(cores * 2), 1);
        assert_eq!(shared_machine_workers(2), (cores / 2).max(1));
    }

    /// Each node's saved configuration asks for its share of the machine: a provider's
    /// three nodes share it, and two federated providers' six do.
    #[tokio::test]
    async fn laid_out_nodes_get_their_share_of_the_cores_in_their_saved_configuration() {
        let dir = tempfile::tempdir().expect("temp dir");
        let raft = RaftOptions::default();
        let api = ApiLimits::default();
        let one = LocalCluster::lay_out(
            &dir.path().join("one"),
            "prov-one",
            3,
            raft.clone(),
            api.clone(),
            MessagingOptions::default(),
        )
        .await
        .expect("lay out");
        let fed = LocalCluster::lay_out_federation(
            &dir.path().join("fed"),
            &[
                ("prov-a".to_string(), MessagingOptions::default()),
                ("prov-b".to_string(), MessagingOptions::default()),
            ],
            3,
            (raft, api, RelayOptions::default()),
        )
        .await
        .expect("lay out a federation");
        for (cluster, on_machine) in std::iter::once((&one, 3)).chain(fed.iter().map(|c| (c, 6))) {
            assert_eq!(
                cluster.nodes_on_machine(),
                on_machine,
                "{}",
                cluster.provider
            );
            for id in cluster.node_ids() {
                let saved = NodeConfig::load(&cluster.config_path(id)).expect("saved config");
                assert_eq!(
                    saved.worker_threads,
                    Some(shared_machine_workers(on_machine)),
                    "{} node {id}",
                    cluster.provider
                );
            }
        }
    }
}
