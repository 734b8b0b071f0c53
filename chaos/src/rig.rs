//! The system under test of a chaos run, assembled: a provider's node processes, each with
//! its own data folder and loopback port, talking to each other only through the
//! fault-injecting [`Proxy`] (every node's `peers` name the proxy's links), and, when the
//! run includes power loss, with every data folder on a [`LazyFs`] mount that drops what
//! was not fsynced at a simulated crash. Clients talk to the nodes directly. Node logs live
//! outside the mount, so a crash does not eat the evidence. Spare node ids have proxy links
//! from the start, so a node that lost its data can rejoin under a new id behind the proxy.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use sealpost_harness::{NodeId, NodeProcs};
use sealpost_raft::RaftOptions;
use sealpost_server::config::{ApiLimits, Member};
use sealpost_server::local::LocalCluster;

use crate::lazyfs::LazyFs;
use crate::proxy::Proxy;

/// Node ids a run may keep in reserve (with proxy links) for nodes that rejoin under a new
/// id; each costs a proxy listener per other id, both ways.
pub const SPARE_IDS_MAX: u64 = 32;
/// Files one folder tree may hold when it is made durable.
const SYNC_TREE_FILES_MAX: usize = 10_000;

pub struct Rig {
    pub cluster: LocalCluster,
    pub procs: NodeProcs,
    pub proxy: Proxy,
    pub lazyfs: Option<LazyFs>,
    pub log_dir: PathBuf,
    /// Ids not used yet, lowest first.
    spare_ids: Vec<NodeId>,
}

impl std::fmt::Debug for Rig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rig")
            .field("procs", &self.procs)
            .field("power_loss", &self.lazyfs.is_some())
            .finish()
    }
}

/// What node `id` is told about the others: the proxy's link to each.
fn peers_via(proxy: &Proxy, id: NodeId, all: &[NodeId]) -> Vec<Member> {
    all.iter()
        .filter(|&&to| to != id)
        .filter_map(|&to| proxy.addr(id, to).map(|addr| Member { id: to, addr }))
        .collect()
}

impl Rig {
    /// Lays out `nodes` nodes under `work`, puts the proxy between them (and, with
    /// `power_loss`, their folders on LazyFs) and starts them with `bin`.
    pub async fn build(
        work: &Path,
        (nodes, spares): (u64, u64),
        bin: &Path,
        power_loss: bool,
    ) -> anyhow::Result<Rig> {
        anyhow::ensure!(
            spares <= SPARE_IDS_MAX,
            "at most {SPARE_IDS_MAX} spare node ids, not {spares}"
        );
        let dir = work.join("cluster");
        // The proxy's listeners are bound first and held for the whole run, so the ports
        // the layout then picks for the nodes cannot be among them.
        let ids: Vec<NodeId> = (1..=nodes + spares).collect();
        let proxy = Proxy::start(&ids.iter().map(|id| (*id, None)).collect())
            .await
            .context("starting the proxy")?;
        let raft = RaftOptions::default();
        let api = ApiLimits::default();
        let messaging = LocalCluster::fitting_messaging(&raft, &api);
        let mut cluster = LocalCluster::lay_out(&dir, "chaos", nodes, raft, api, messaging)
            .await
            .context("laying out the cluster")?;
        for (id, addr) in cluster.addrs() {
            proxy.set_target(id, &addr)?;
            cluster.set_peers(id, peers_via(&proxy, id, &ids))?;
        }
        let spare_ids: Vec<NodeId> = (nodes + 1..=nodes + spares).collect();
        let lazyfs = if power_loss {
            // The layout moves to the backing folder and comes back through the mount, so
            // every path in the configurations now goes through LazyFs.
            let durable = work.join("durable");
            std::fs::rename(&dir, &durable)
                .with_context(|| format!("moving {} aside", dir.display()))?;
            std::fs::create_dir(&dir)?;
            Some(LazyFs::mount(&durable, &dir).context(
                "mounting LazyFs for power loss (needs root and /dev/fuse; leave power-loss \
                 out of --faults to run without it)",
            )?)
        } else {
            None
        };
        let log_dir = work.join("logs");
        std::fs::create_dir_all(&log_dir)?;
        let procs = NodeProcs::spawn_logging_to(bin, &cluster, &log_dir)?;
        Ok(Rig {
            cluster,
            procs,
            proxy,
            lazyfs,
            log_dir,
            spare_ids,
        })
    }

    /// Makes what the harness wrote under `sub` of the cluster folder durable (client
    /// certificates issued after the mount, a joiner's configuration), so a power loss
    /// cannot take it. Never the nodes' stores: their durability is under test.
    pub fn sync_layout(&self, sub: &Path) -> anyhow::Result<()> {
        let dir = self.cluster.dir.join(sub);
        if self.lazyfs.is_some() && dir.exists() {
            let mut files = 0;
            sync_tree(&dir, &mut files)?;
        }
        Ok(())
    }

    /// Lays out and starts a node under the next spare id, reaching the others through the
    /// proxy. It is not a member yet: the caller adds it. Returns its id and address.
    pub async fn start_joiner(&mut self) -> anyhow::Result<(NodeId, String)> {
        anyhow::ensure!(
            !self.spare_ids.is_empty(),
            "every spare node id is used (--spare-ids)"
        );
        let id = self.spare_ids.remove(0);
        let mut all: Vec<NodeId> = self.cluster.node_ids();
        all.extend(&self.spare_ids);
        all.push(id);
        let addr = self
            .cluster
            .lay_out_joiner(id, peers_via(&self.proxy, id, &all))
            .await?;
        self.proxy.set_target(id, &addr)?;
        let config = self.cluster.config_path(id);
        if let Some(node_dir) = config
            .parent()
            .and_then(|d| d.strip_prefix(&self.cluster.dir).ok())
        {
            self.sync_layout(node_dir)?;
        }
        self.procs.add(
            id,
            &format!("{}-node-{id}", self.cluster.provider),
            &self.cluster.config_path(id),
            &self.log_dir.join(format!("node-{id}.log")),
        )?;
        Ok((id, addr))
    }

    pub fn spares_left(&self) -> usize {
        self.spare_ids.len()
    }

    /// Stops everything: nodes first, then the mount.
    pub fn shut_down(mut self) -> anyhow::Result<()> {
        self.procs.stop();
        // Give the kernel a moment to release the nodes' descriptors on the mount.
        std::thread::sleep(Duration::from_millis(100));
        if let Some(fs) = self.lazyfs.take() {
            fs.unmount()?;
        }
        Ok(())
    }
}

/// fsyncs every file and folder under `dir` (bounded by [`SYNC_TREE_FILES_MAX`]).
fn sync_tree(dir: &Path, files: &mut usize) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        *files += 1;
        anyhow::ensure!(
            *files <= SYNC_TREE_FILES_MAX,
            "more than {SYNC_TREE_FILES_MAX} files under {}",
            dir.display()
        );
        let path = entry.path();
        let kind = entry.file_type()?;
        if kind.is_dir() {
            sync_tree(&path, files)?;
        } else if kind.is_file() {
            std::fs::File::open(&path)
                .and_then(|f| f.sync_all())
                .with_context(|| format!("fsyncing {}", path.display()))?;
        }
    }
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("fsyncing {}", dir.display()))
}
