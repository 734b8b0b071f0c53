//! A sealpost node: the gRPC services (Directory, Messaging, Admin, the internal Raft
//! service and reflection) over mutual TLS on one port, the Relay service for peer
//! providers on another, the delivery and relay workers, on top of the raft crate's node; node
//! configuration; and [`local::LocalCluster`], the in-process multi-node cluster that
//! `sealpost dev` and the end-to-end tests run.
//!
//! # Layout
//! - [`node`]: start and stop one node.
//! - [`config`]: [`config::NodeConfig`], file → environment → validation.
//! - [`directory`], [`messaging`], [`admin`]: the client-facing services; [`audit`]: the
//!   event store replayed for auditors.
//! - [`delivery`]: the leader's delivery and deadline worker; [`retention`]: the leader's
//!   payload-retention worker.
//! - [`federation`]: relay port, provider key and trust bundle settings.
//! - [`relay`]: the `Relay` service peers call; [`relay_worker`]: the leader's relay,
//!   notification, peer-directory and remote-deadline worker (one task per peer).
//! - [`mllp`]: the HL7 v2 / MLLP front door for clinical systems; [`mllp_out`]: the back
//!   door, pushing routed messages to a receiving system and recording its answer;
//!   [`mllp_notify`]: outcome acknowledgements to the sending system.
//! - [`keystore`]: organisations' private keys, unwrapped with the provider's KEK.
//! - [`listener`]: the TCP listener with its connection cap, and TLS handshakes off the
//!   accept loop; [`tls`]: the reloading TLS configuration and handshake counters;
//!   [`authz`]: who may call what, denials counted and summarised into the log, and the
//!   per-organisation send rate; [`storage_floor`]: new messages refused while the
//!   store folders' file systems are nearly full.
//! - [`convert`]: protobuf ↔ domain conversions and status codes (the gRPC edge).
//! - [`crypto_pool`]: the crypto threads sealing and opening run on.
//! - [`local`]: a provider's cluster of nodes in one process, laid out on disk.
//! - [`metrics`]: the operations listener (`/metrics`, `/health`, `/ready`); [`console`]:
//!   the operator console on it; [`upgrade`]: the leader's cluster-version worker.

pub mod admin;
pub mod audit;
pub mod authz;
pub mod config;
pub mod console;
pub mod convert;
pub mod crypto_pool;
pub mod delivery;
pub mod directory;
pub mod federation;
pub mod keystore;
pub mod listener;
pub mod local;
pub mod messaging;
pub mod metrics;
pub mod mllp;
pub mod mllp_notify;
pub mod mllp_out;
pub mod node;
pub mod relay;
pub mod relay_worker;
pub mod retention;
pub mod storage_floor;
pub mod tls;
pub mod upgrade;

pub use config::NodeConfig;

/// Runs `job` every `every` (the first run one period after the start; a run that overlaps
/// the next tick delays it) until `shutdown` turns true.
pub(crate) fn spawn_every<F, Fut>(
    every: std::time::Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    mut job: F,
) -> tokio::task::JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => job().await,
                _ = shutdown.changed() => return,
            }
            if *shutdown.borrow() {
                return;
            }
        }
    })
}
pub use node::{NodeHandle, ServerError, start};
