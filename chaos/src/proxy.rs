//! The fault-injecting TCP proxy between every pair of nodes. For each ordered pair
//! (from, to) there is one loopback listener that forwards to `to`'s real address, and node
//! `from` is configured (its `peers`) to reach `to` through it; clients still connect to
//! the nodes directly. Every link has a state the fault schedule sets at any time:
//! - **up**: bytes pass as they come;
//! - **down**: new connections are closed at once and every open one is cut, so `from`
//!   cannot reach `to` (a Raft RPC is a request and its answer on a connection `from`
//!   opened, so a link that is down in one direction only is a one-way partition: `to` still
//!   reaches `from` over the other link);
//! - **slow**: every chunk, either way, is delivered `delay_ms` after it was read (a delay
//!   line, so latency grows without throughput collapsing).
//!
//! Everything listens and connects on 127.0.0.1 only.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;

pub type NodeId = u64;

/// Connections one link carries at once; more are closed on arrival.
pub const CONNECTIONS_PER_LINK_MAX: usize = 64;
/// How long connecting to the real node may take.
pub const CONNECT_TIMEOUT_MS: u64 = 2_000;
/// Bytes read at once from one side of a connection.
pub const CHUNK_BYTES: usize = 64 * 1024;
/// Chunks a slow link holds in its delay line per direction of a connection.
pub const DELAY_LINE_CHUNKS_MAX: usize = 1_024;
/// The longest delay a slow link may add.
pub const DELAY_MS_MAX: u64 = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LinkState {
    Up,
    Down,
    Slow { delay_ms: u64 },
}

struct Link {
    listen: SocketAddr,
    state: watch::Sender<LinkState>,
}

/// The proxies of one cluster. Dropping it closes every listener and connection.
pub struct Proxy {
    links: BTreeMap<(NodeId, NodeId), Link>,
    /// The real address of each node, as links to it read it when a connection arrives.
    targets: BTreeMap<NodeId, watch::Sender<Option<SocketAddr>>>,
    tasks: JoinSet<()>,
}

/// Parses `addr`, refusing anything off loopback.
fn loopback(addr: &str) -> anyhow::Result<SocketAddr> {
    let a: SocketAddr = addr
        .parse()
        .map_err(|e| anyhow::anyhow!("node address {addr:?}: {e}"))?;
    anyhow::ensure!(
        a.ip().is_loopback(),
        "the proxy only forwards to loopback addresses, not {a}"
    );
    Ok(a)
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("links", &self.links.len())
            .finish()
    }
}

impl Proxy {
    /// One link per ordered pair of the node ids in `targets`, each forwarding to the real
    /// address of its destination. An id without an address yet (a spare, for a node that
    /// joins later) gets its links now and its address from [`Self::set_target`]; until
    /// then its links close every connection.
    pub async fn start(targets: &BTreeMap<NodeId, Option<String>>) -> anyhow::Result<Proxy> {
        let mut out = Proxy {
            links: BTreeMap::new(),
            targets: BTreeMap::new(),
            tasks: JoinSet::new(),
        };
        for (&id, addr) in targets {
            let target = match addr {
                Some(a) => Some(loopback(a)?),
                None => None,
            };
            out.targets.insert(id, watch::channel(target).0);
        }
        for &from in targets.keys() {
            for (&to, target) in &out.targets {
                if from == to {
                    continue;
                }
                let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
                let listen = listener.local_addr()?;
                let (state, rx) = watch::channel(LinkState::Up);
                out.tasks
                    .spawn(accept_loop(listener, target.subscribe(), rx));
                out.links.insert((from, to), Link { listen, state });
            }
        }
        Ok(out)
    }

    /// Gives node `id` (a spare until now, or a node that moved) its real address.
    pub fn set_target(&self, id: NodeId, addr: &str) -> anyhow::Result<()> {
        let t = self
            .targets
            .get(&id)
            .ok_or_else(|| anyhow::anyhow!("the proxy has no links for node {id}"))?;
        t.send_replace(Some(loopback(addr)?));
        Ok(())
    }

    /// The address node `from` uses to reach node `to`.
    pub fn addr(&self, from: NodeId, to: NodeId) -> Option<String> {
        self.links.get(&(from, to)).map(|l| l.listen.to_string())
    }

    pub fn set(&self, from: NodeId, to: NodeId, state: LinkState) {
        if let Some(l) = self.links.get(&(from, to)) {
            l.state.send_replace(state);
        }
    }

    #[cfg(test)]
    pub fn state(&self, from: NodeId, to: NodeId) -> Option<LinkState> {
        self.links.get(&(from, to)).map(|l| *l.state.borrow())
    }

    /// Every link up.
    pub fn heal(&self) {
        for l in self.links.values() {
            l.state.send_replace(LinkState::Up);
        }
    }

    /// Cuts every link between nodes of different groups, both ways (nodes in no group keep
    /// their links).
    pub fn partition(&self, groups: &[Vec<NodeId>]) {
        let group_of = |n: NodeId| groups.iter().position(|g| g.contains(&n));
        for &(from, to) in self.links.keys() {
            if let (Some(a), Some(b)) = (group_of(from), group_of(to))
                && a != b
            {
                self.set(from, to, LinkState::Down);
            }
        }
    }

    /// Cuts every link from `node` to the others; theirs to it stay up.
    pub fn cut_outbound(&self, node: NodeId) {
        for &(from, to) in self.links.keys() {
            if from == node {
                self.set(from, to, LinkState::Down);
            }
        }
    }

    /// Delays every link to and from `node` by `delay_ms` (at most [`DELAY_MS_MAX`]).
    pub fn slow(&self, node: NodeId, delay_ms: u64) {
        let delay_ms = delay_ms.min(DELAY_MS_MAX);
        for &(from, to) in self.links.keys() {
            if from == node || to == node {
                self.set(from, to, LinkState::Slow { delay_ms });
            }
        }
    }
}

/// Accepts connections for one link while the proxy lives.
async fn accept_loop(
    listener: TcpListener,
    target: watch::Receiver<Option<SocketAddr>>,
    state: watch::Receiver<LinkState>,
) {
    let permits = Arc::new(Semaphore::new(CONNECTIONS_PER_LINK_MAX));
    let mut conns = JoinSet::new();
    // Ends when the proxy is dropped (this task is aborted).
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            // Out of descriptors or similar: back off and keep serving.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        // Reap finished connections so the set stays as small as the open ones.
        while conns.try_join_next().is_some() {}
        let to = *target.borrow();
        let Some(to) = to.filter(|_| *state.borrow() != LinkState::Down) else {
            drop(inbound);
            continue;
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            drop(inbound);
            continue;
        };
        let state = state.clone();
        conns.spawn(async move {
            let _permit = permit;
            serve(inbound, to, state).await;
        });
    }
}

/// Carries one connection until either side closes it or the link goes down.
async fn serve(inbound: TcpStream, target: SocketAddr, mut state: watch::Receiver<LinkState>) {
    let connect = tokio::time::timeout(
        Duration::from_millis(CONNECT_TIMEOUT_MS),
        TcpStream::connect(target),
    );
    let Ok(Ok(outbound)) = connect.await else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (ir, iw) = inbound.into_split();
    let (or, ow) = outbound.into_split();
    let (up, down) = (state.clone(), state.clone());
    let pumps = async { tokio::join!(pump(ir, ow, up), pump(or, iw, down)) };
    tokio::select! {
        _ = pumps => {}
        _ = state.wait_for(|s| *s == LinkState::Down) => {}
    }
    // Dropping both halves of both sockets closes the connection.
}

/// Copies one direction through a delay line: the reader stamps each chunk with the time it
/// is due (now, plus the link's delay when slow) and the writer delivers it then.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    state: watch::Receiver<LinkState>,
) {
    let (tx, mut rx) = mpsc::channel::<(tokio::time::Instant, Vec<u8>)>(DELAY_LINE_CHUNKS_MAX);
    let reader = async move {
        let mut buf = vec![0u8; CHUNK_BYTES];
        // Bounded by the connection: ends at EOF or an error.
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let delay = match *state.borrow() {
                LinkState::Slow { delay_ms } => Duration::from_millis(delay_ms),
                _ => Duration::ZERO,
            };
            let due = tokio::time::Instant::now() + delay;
            if tx.send((due, buf[..n].to_vec())).await.is_err() {
                break;
            }
        }
    };
    let writer = async move {
        // Bounded by the reader: ends when it has closed the line and the line is empty.
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on loopback; returns its address.
    async fn echo() -> SocketAddr {
        let l = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.into_split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn round_trip(addr: &str, msg: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(msg).await?;
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got).await?;
        Ok(got)
    }

    fn two_nodes(a: SocketAddr, b: SocketAddr) -> BTreeMap<NodeId, Option<String>> {
        BTreeMap::from([(1, Some(a.to_string())), (2, Some(b.to_string()))])
    }

    #[tokio::test]
    async fn an_up_link_forwards_both_ways() {
        let (a, b) = (echo().await, echo().await);
        let p = Proxy::start(&two_nodes(a, b)).await.expect("proxy");
        let via = p.addr(1, 2).expect("link 1->2");
        assert_eq!(round_trip(&via, b"hello").await.expect("echo"), b"hello");
        assert!(p.addr(1, 1).is_none(), "no link from a node to itself");
    }

    #[tokio::test]
    async fn a_down_link_refuses_new_connections_and_cuts_open_ones() {
        let (a, b) = (echo().await, echo().await);
        let p = Proxy::start(&two_nodes(a, b)).await.expect("proxy");
        let via = p.addr(1, 2).expect("link");
        let mut open = TcpStream::connect(&via).await.expect("connect");
        open.write_all(b"x").await.expect("write");
        let mut one = [0u8; 1];
        open.read_exact(&mut one).await.expect("echoed while up");

        p.set(1, 2, LinkState::Down);
        // The open connection ends (EOF or reset) within a bounded time.
        let mut buf = [0u8; 16];
        let cut = tokio::time::timeout(Duration::from_secs(5), open.read(&mut buf))
            .await
            .expect("the open connection is cut");
        assert!(
            matches!(cut, Ok(0) | Err(_)),
            "no data after the cut: {cut:?}"
        );
        // New connections are closed at once.
        let r = tokio::time::timeout(Duration::from_secs(5), round_trip(&via, b"hi"))
            .await
            .expect("bounded");
        assert!(r.is_err(), "a down link carries nothing");
        // The other direction is another link and still up: a one-way cut.
        let back = p.addr(2, 1).expect("link 2->1");
        assert_eq!(round_trip(&back, b"up").await.expect("echo"), b"up");

        p.heal();
        assert_eq!(round_trip(&via, b"again").await.expect("healed"), b"again");
    }

    #[tokio::test]
    async fn a_spare_gets_its_address_later() {
        let a = echo().await;
        let spare = echo().await;
        let p = Proxy::start(&BTreeMap::from([(1, Some(a.to_string())), (9, None)]))
            .await
            .expect("proxy");
        let via = p.addr(1, 9).expect("link to the spare");
        let r = tokio::time::timeout(Duration::from_secs(5), round_trip(&via, b"x"))
            .await
            .expect("bounded");
        assert!(r.is_err(), "no address, no connection");
        p.set_target(9, &spare.to_string()).expect("loopback");
        assert_eq!(round_trip(&via, b"now").await.expect("echo"), b"now");
        assert!(p.set_target(9, "192.168.1.1:1").is_err(), "only loopback");
        assert!(p.set_target(5, &spare.to_string()).is_err(), "unknown id");
    }

    #[tokio::test]
    async fn a_slow_link_delays_delivery() {
        let (a, b) = (echo().await, echo().await);
        let p = Proxy::start(&two_nodes(a, b)).await.expect("proxy");
        p.slow(2, 150);
        assert_eq!(p.state(1, 2), Some(LinkState::Slow { delay_ms: 150 }));
        let via = p.addr(1, 2).expect("link");
        let t = std::time::Instant::now();
        assert_eq!(round_trip(&via, b"slow").await.expect("echo"), b"slow");
        // Delayed on the way there and on the way back.
        assert!(
            t.elapsed() >= Duration::from_millis(300),
            "{:?}",
            t.elapsed()
        );
    }

    #[tokio::test]
    async fn partitions_cut_only_links_between_groups() {
        let addrs: BTreeMap<NodeId, Option<String>> = BTreeMap::from([
            (1, Some("127.0.0.1:1".to_string())),
            (2, Some("127.0.0.1:2".to_string())),
            (3, Some("127.0.0.1:3".to_string())),
        ]);
        let p = Proxy::start(&addrs).await.expect("proxy");
        p.partition(&[vec![1], vec![2, 3]]);
        assert_eq!(p.state(1, 2), Some(LinkState::Down));
        assert_eq!(p.state(3, 1), Some(LinkState::Down));
        assert_eq!(p.state(2, 3), Some(LinkState::Up));
        p.heal();
        p.cut_outbound(2);
        assert_eq!(p.state(2, 1), Some(LinkState::Down));
        assert_eq!(p.state(2, 3), Some(LinkState::Down));
        assert_eq!(p.state(1, 2), Some(LinkState::Up));
        p.heal();
        // A bridge: 1 and 3 cannot see each other, 2 (in no group) sees both.
        p.partition(&[vec![1], vec![3]]);
        assert_eq!(p.state(1, 3), Some(LinkState::Down));
        assert_eq!(p.state(3, 1), Some(LinkState::Down));
        assert_eq!(p.state(1, 2), Some(LinkState::Up));
        assert_eq!(p.state(2, 3), Some(LinkState::Up));
        assert!(
            Proxy::start(&BTreeMap::from([
                (1, Some("127.0.0.1:1".to_string())),
                (2, Some("10.0.0.1:1".to_string()))
            ]))
            .await
            .is_err(),
            "only loopback targets"
        );
    }
}
