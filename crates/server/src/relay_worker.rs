//! The relay worker: on the leader, one task per peer provider that
//! - pulls the peer's directory changes since the imported cursor (`ImportPeerDirectory`);
//! - relays messages waiting in the peer's relay queue, oldest first, in batches, one batch
//!   at a time, so the peer commits them in the order they were sent; each verified
//!   receipt is recorded (`RecordRelayed`); failures back off exponentially with jitter;
//! - relays the final outcomes owed to the peer for messages it relayed here (`Notify`
//!   there, then `NotificationsRelayed` here);
//! - settles the due deadlines of the peer's recipients by asking the peer first: a
//!   message it holds is recorded as relayed (its receipt was lost) or gets the outcome it
//!   reports; only a message it never received fails as undeliverable, and a relayed one
//!   that got no outcome in its window fails as unacknowledged.
//!
//! Like the delivery worker it keeps no queue of its own: the relay queue, the owed
//! notifications and the deadlines are views of the log, so a restart or a new leader
//! resumes from them, and the peer answers a repeated delivery with its original receipt.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use sealpost_core::Outcome;
use sealpost_core::codec;
use sealpost_core::command::{Command, Proposal, Rejection};
use sealpost_core::federation::{
    NOTIFY_BATCH_MAX, Notification, PEER_CHANGES_MAX, PeerChange, TransportReceipt, cursor,
};
use sealpost_core::message::{MessageId, MessageStatus, RecipientState};
use sealpost_crypto::provider_key::verify_receipt;
use sealpost_proto::v1 as pb;
use sealpost_proto::v1::relay_client::RelayClient;
use sealpost_raft::RaftNode;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::config::MessagingOptions;
use crate::federation::{Peer, RelayOptions, TrustBundle};
use crate::messaging::{load_envelope, now_ms};

/// Messages read from a relay queue per pass.
pub const RELAY_SCAN_MESSAGES_MAX: usize = 1024;
/// Deadlines read per pass when looking for a peer's due recipients.
pub const REMOTE_DEADLINE_SCAN_MAX: usize = 1024;
/// How long the test hook keeps a message whose receipt it dropped from being offered
/// again.
pub const DROPPED_RECEIPT_HOLD_SECS: u64 = 3600;
/// Connect timeout towards a peer.
pub const PEER_CONNECT_TIMEOUT_MS: u64 = 3_000;

/// The last error each peer's relay task met on this node (cleared by a success), for the
/// dead-letter listing.
pub type LastErrors = Arc<std::sync::Mutex<std::collections::BTreeMap<String, String>>>;

/// Fault hooks for tests and chaos runs; all off unless set.
#[derive(Default, Debug)]
pub struct RelayFaults {
    /// Receipts to throw away as if the peer's answer had been lost on the way back.
    drop_receipts: AtomicU32,
    /// Stop relaying new messages (directory pulls, notifications and deadlines go on).
    pause_relay: AtomicBool,
}

impl RelayFaults {
    /// Loses the next `n` receipts this node's relay worker receives.
    pub fn drop_next_receipts(&self, n: u32) {
        self.drop_receipts.store(n, Ordering::SeqCst);
    }

    pub fn set_relay_paused(&self, paused: bool) {
        self.pause_relay.store(paused, Ordering::SeqCst);
    }

    fn take_drop(&self) -> bool {
        self.drop_receipts
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

/// What the relay worker needs from the node.
pub struct RelayContext {
    pub node: RaftNode,
    pub provider: String,
    pub bundle: Arc<TrustBundle>,
    pub opts: RelayOptions,
    pub messaging: MessagingOptions,
    /// This node's certificate and key, presented to peers.
    pub identity: Identity,
    pub grpc_message_bytes_max: usize,
    pub faults: Arc<RelayFaults>,
    pub last_errors: LastErrors,
}

/// Starts one task per peer; they end when `shutdown` turns true or is dropped.
pub fn spawn(ctx: RelayContext, shutdown: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
    let ctx = Arc::new(ctx);
    ctx.bundle
        .peers
        .iter()
        .map(|peer| {
            let w = PeerWorker::new(ctx.clone(), peer.clone());
            tokio::spawn(w.run(shutdown.clone()))
        })
        .collect()
}

/// Proposes a worker command on the node's urgent lane.
async fn propose(
    node: &RaftNode,
    actor: String,
    command: Command,
) -> Result<Outcome, sealpost_raft::ProposeError> {
    let p = Proposal { actor, command };
    if let Err(r) = p.validate() {
        return Ok(Outcome::Rejected(r));
    }
    node.propose_urgent(p).await.map(|c| c.outcome)
}

/// Exponential backoff with jitter.
struct Backoff {
    min_ms: u64,
    max_ms: u64,
    next_ms: u64,
    until: Option<Instant>,
}

impl Backoff {
    fn new(opts: &RelayOptions) -> Self {
        Self {
            min_ms: opts.retry_min_ms,
            max_ms: opts.retry_max_ms,
            next_ms: opts.retry_min_ms,
            until: None,
        }
    }

    fn ready(&self) -> bool {
        self.until.is_none_or(|t| Instant::now() >= t)
    }

    fn fail(&mut self) {
        // Jitter in [½, 1] of the delay, from the clock's low bits: peers that failed
        // together do not retry together.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::from(d.subsec_nanos()))
            .unwrap_or(0);
        let half = self.next_ms / 2;
        let delay = half + nanos % (half + 1);
        self.until = Some(Instant::now() + Duration::from_millis(delay));
        self.next_ms = (self.next_ms * 2).min(self.max_ms);
    }

    fn succeed(&mut self) {
        self.next_ms = self.min_ms;
        self.until = None;
    }

    fn wait(&self) -> Option<Duration> {
        self.until
            .map(|t| t.saturating_duration_since(Instant::now()))
    }
}

struct PeerWorker {
    ctx: Arc<RelayContext>,
    peer: Peer,
    actor: String,
    endpoint_index: usize,
    channels: Vec<Channel>,
    relay_backoff: Backoff,
    notify_backoff: Backoff,
    directory_backoff: Backoff,
    next_pull: Instant,
    /// Messages the peer refused for now, and when to offer them again.
    refused: HashMap<MessageId, Instant>,
    /// Messages whose receipt is being recorded: the next batch goes out meanwhile (the
    /// peer has committed this one), without offering them again.
    recording: Arc<std::sync::Mutex<HashSet<MessageId>>>,
    last_error: Option<String>,
}

impl PeerWorker {
    fn new(ctx: Arc<RelayContext>, peer: Peer) -> Self {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&peer.ca_pem))
            .identity(ctx.identity.clone());
        let channels = peer
            .relay_endpoints
            .iter()
            .filter_map(|addr| {
                let ep = Endpoint::from_shared(format!("https://{addr}"))
                    .and_then(|e| e.tls_config(tls.clone()));
                match ep {
                    Ok(e) => Some(
                        e.connect_timeout(Duration::from_millis(PEER_CONNECT_TIMEOUT_MS))
                            .timeout(Duration::from_millis(ctx.opts.peer_timeout_ms))
                            .connect_lazy(),
                    ),
                    Err(err) => {
                        tracing::error!(peer = %peer.provider, %addr, error = %err, "unusable relay endpoint");
                        None
                    }
                }
            })
            .collect();
        Self {
            actor: format!("relay-worker@node-{}", ctx.node.id()),
            relay_backoff: Backoff::new(&ctx.opts),
            notify_backoff: Backoff::new(&ctx.opts),
            directory_backoff: Backoff::new(&ctx.opts),
            next_pull: Instant::now(),
            refused: HashMap::new(),
            recording: Arc::default(),
            last_error: None,
            endpoint_index: 0,
            channels,
            ctx,
            peer,
        }
    }

    fn client(&self) -> Option<RelayClient<Channel>> {
        let ch = self
            .channels
            .get(self.endpoint_index % self.channels.len().max(1))?;
        let limit = self.ctx.grpc_message_bytes_max;
        Some(
            RelayClient::new(ch.clone())
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
        )
    }

    /// A call failed: the next one tries the peer's next endpoint.
    fn call_failed(&mut self, what: &str, status: &tonic::Status) {
        self.endpoint_index = self.endpoint_index.wrapping_add(1);
        let msg = format!("{what}: {} ({:?})", status.message(), status.code());
        if self.last_error.as_deref() != Some(msg.as_str()) {
            tracing::warn!(peer = %self.peer.provider, error = %msg, "relay call failed; backing off");
        }
        self.set_last_error(Some(msg));
    }

    fn set_last_error(&mut self, e: Option<String>) {
        if let Ok(mut m) = self.ctx.last_errors.lock() {
            match &e {
                Some(e) => m.insert(self.peer.provider.clone(), e.clone()),
                None => m.remove(&self.peer.provider),
            };
        }
        self.last_error = e;
    }

    async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut applied = self.ctx.node.view().subscribe();
        let tick = Duration::from_millis(self.ctx.messaging.worker_tick_ms);
        let mut last_tick: Option<Instant> = None;
        loop {
            if *shutdown.borrow() {
                return;
            }
            let mut wait = tick;
            if self.ctx.node.is_leader() {
                if Instant::now() >= self.next_pull && self.directory_backoff.ready() {
                    self.pull_directory().await;
                    self.next_pull =
                        Instant::now() + Duration::from_millis(self.ctx.opts.directory_pull_ms);
                }
                let more = self.relay_pass().await;
                self.notify_pass().await;
                if last_tick.is_none_or(|t| t.elapsed() >= tick) {
                    last_tick = Some(Instant::now());
                    self.deadline_pass().await;
                }
                if more {
                    continue;
                }
                for b in [&self.relay_backoff, &self.notify_backoff] {
                    if let Some(w) = b.wait() {
                        wait = wait.min(w.max(Duration::from_millis(10)));
                    }
                }
            }
            tokio::select! {
                r = shutdown.changed() => if r.is_err() { return },
                _ = applied.changed() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn propose(&self, command: Command) -> Result<Outcome, sealpost_raft::ProposeError> {
        propose(&self.ctx.node, self.actor.clone(), command).await
    }

    async fn pull_directory(&mut self) {
        let Some(mut client) = self.client() else {
            return;
        };
        let provider = self.peer.provider.clone();
        for _ in 0..PULL_ROUNDS_MAX {
            let after = match self.ctx.node.view().cursor(cursor::DIRECTORY, &provider) {
                Ok(c) => c.unwrap_or(0),
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the directory cursor");
                    return;
                }
            };
            let reply = match client
                .directory_changes(pb::DirectoryChangesRequest {
                    after_seq: after,
                    limit: PEER_CHANGES_MAX as u32,
                })
                .await
            {
                Ok(r) => r.into_inner(),
                Err(s) => {
                    self.call_failed("directory changes", &s);
                    self.directory_backoff.fail();
                    return;
                }
            };
            self.directory_backoff.succeed();
            let changes: Vec<PeerChange> = match codec::decode(&reply.changes) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(peer = %provider, error = %e, "undecodable directory changes");
                    self.directory_backoff.fail();
                    return;
                }
            };
            if reply.through_seq <= after {
                return;
            }
            let out = self
                .propose(Command::ImportPeerDirectory {
                    provider: provider.clone(),
                    after_seq: after,
                    through_seq: reply.through_seq,
                    changes,
                })
                .await;
            match out {
                Ok(Outcome::Applied { .. }) => {}
                // Another leader imported the same range first.
                Ok(Outcome::Rejected(Rejection::AlreadyExists(_))) => {}
                Ok(Outcome::Rejected(r)) => {
                    tracing::error!(peer = %provider, reason = %r, "peer directory import refused");
                    return;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "directory import not committed; will retry");
                    return;
                }
            }
            if !reply.more {
                return;
            }
        }
    }

    /// Relays one batch from the head of the peer's queue. True when more are waiting.
    async fn relay_pass(&mut self) -> bool {
        if self.ctx.faults.pause_relay.load(Ordering::SeqCst) || !self.relay_backoff.ready() {
            return false;
        }
        let view = self.ctx.node.view().clone();
        // Read before the queue: a receipt recorded in between is then out of both.
        let recording = self.recording.lock().map(|r| r.clone()).unwrap_or_default();
        let queue = match view.relay_queue(&self.peer.provider, RELAY_SCAN_MESSAGES_MAX) {
            Ok(q) => q,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the relay queue");
                return false;
            }
        };
        let now = Instant::now();
        self.refused.retain(|_, until| *until > now);
        // Each message with its header digest (what the receipt must name) and its bytes.
        let mut batch: Vec<(MessageStatus, [u8; 32], Vec<u8>)> = Vec::new();
        let mut bytes = 0usize;
        let mut skipped = 0usize;
        for (seq, id) in queue {
            if self.refused.contains_key(&id) || recording.contains(&id) {
                skipped += 1;
                continue;
            }
            let msg = match view.message(&id) {
                Ok(Some(m)) if m.awaits_relay(&self.peer.provider) => m,
                Ok(_) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read a queued message");
                    return false;
                }
            };
            let (digest, env) = match load_envelope(&view, seq) {
                Ok(e) => (e.header.digest(), codec::encode(&e)),
                Err(e) => {
                    tracing::error!(error = %e, "cannot load a queued envelope");
                    return false;
                }
            };
            if !batch.is_empty()
                && (batch.len() >= self.ctx.opts.batch_messages_max
                    || bytes + env.len() > self.ctx.opts.batch_bytes_max)
            {
                break;
            }
            bytes += env.len();
            batch.push((msg, digest, env));
        }
        if batch.is_empty() {
            return false;
        }
        let Some(mut client) = self.client() else {
            return false;
        };
        let sent = batch.len();
        let request = pb::DeliverRequest {
            envelopes: batch.iter().map(|(_, _, e)| e.clone()).collect(),
        };
        let reply = match client.deliver(request).await {
            Ok(r) => r.into_inner(),
            Err(s) => {
                self.call_failed("deliver", &s);
                self.relay_backoff.fail();
                return false;
            }
        };
        self.relay_backoff.succeed();
        self.set_last_error(None);
        let mut records = Vec::new();
        let results: HashMap<&str, &pb::DeliverResult> = reply
            .results
            .iter()
            .map(|r| (r.message_id.as_str(), r))
            .collect();
        for (msg, digest, _) in &batch {
            let id = msg.message_id.to_string();
            let Some(result) = results.get(id.as_str()) else {
                self.refuse(&msg.message_id, "the peer did not answer for it");
                continue;
            };
            if !result.error.is_empty() {
                self.refuse(&msg.message_id, &result.error);
                continue;
            }
            if self.ctx.faults.take_drop() {
                // As if the answer was lost and the peer stayed out of reach for this
                // message: only the deadline path (asking the peer) can settle it now.
                tracing::info!(message_id = %id, "test hook: receipt dropped");
                self.refused.insert(
                    msg.message_id.clone(),
                    Instant::now() + Duration::from_secs(DROPPED_RECEIPT_HOLD_SECS),
                );
                continue;
            }
            match self.check_receipt(msg, Some(*digest), &result.receipt) {
                Ok(receipt) => records.push(Command::RecordRelayed {
                    receipt,
                    outcome_by_ms: self.outcome_by(msg),
                }),
                Err(e) => self.refuse(&msg.message_id, &e),
            }
        }
        // Recorded in the background: the peer committed this batch, so the next one may
        // go out now without changing the order in which the peer receives them.
        let ids: Vec<MessageId> = records
            .iter()
            .filter_map(|c| match c {
                Command::RecordRelayed { receipt, .. } => Some(receipt.message_id.clone()),
                _ => None,
            })
            .collect();
        if let Ok(mut r) = self.recording.lock() {
            r.extend(ids.iter().cloned());
        }
        let (node, actor, recording) = (
            self.ctx.node.clone(),
            self.actor.clone(),
            self.recording.clone(),
        );
        tokio::spawn(async move {
            let proposals = records
                .into_iter()
                .map(|c| propose(&node, actor.clone(), c));
            for r in futures::future::join_all(proposals).await {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "relay not recorded; will retry");
                }
            }
            if let Ok(mut r) = recording.lock() {
                for id in &ids {
                    r.remove(id);
                }
            }
        });
        sent + skipped < RELAY_SCAN_MESSAGES_MAX && sent == self.ctx.opts.batch_messages_max
    }

    fn refuse(&mut self, id: &MessageId, why: &str) {
        tracing::warn!(peer = %self.peer.provider, message_id = %id, error = %why, "peer did not take the message; will offer it again");
        let wait = Duration::from_millis(self.ctx.opts.retry_max_ms.min(5_000));
        self.refused.insert(id.clone(), Instant::now() + wait);
        self.set_last_error(Some(format!("{id}: {why}")));
    }

    /// Decodes and verifies a receipt: the peer's key, this message, this envelope (its
    /// header digest, given or read from the store).
    fn check_receipt(
        &self,
        msg: &MessageStatus,
        digest: Option<[u8; 32]>,
        bytes: &[u8],
    ) -> Result<TransportReceipt, String> {
        let receipt: TransportReceipt =
            codec::decode(bytes).map_err(|e| format!("undecodable receipt: {e}"))?;
        receipt.validate().map_err(|e| e.to_string())?;
        verify_receipt(&self.peer.receipt_key, &receipt).map_err(|e| e.to_string())?;
        if receipt.provider != self.peer.provider || receipt.message_id != msg.message_id {
            return Err(format!(
                "the receipt is for {} at {}, not {} at {}",
                receipt.message_id, receipt.provider, msg.message_id, self.peer.provider
            ));
        }
        let digest = match digest {
            Some(d) => d,
            None => load_envelope(self.ctx.node.view(), msg.sent_seq)
                .map_err(|e| e.to_string())?
                .header
                .digest(),
        };
        if receipt.header_digest != digest {
            return Err("the receipt names another envelope (digest mismatch)".into());
        }
        Ok(receipt)
    }

    /// When a relayed recipient's final outcome is due back from the peer.
    fn outcome_by(&self, msg: &MessageStatus) -> u64 {
        msg.deliver_by_ms
            .saturating_add(self.ctx.messaging.ack_window_ms)
            .saturating_add(self.ctx.opts.outcome_grace_ms)
    }

    async fn notify_pass(&mut self) {
        if !self.notify_backoff.ready() {
            return;
        }
        let view = self.ctx.node.view().clone();
        let provider = self.peer.provider.clone();
        let after = match view.cursor(cursor::NOTIFIED, &provider) {
            Ok(c) => c.unwrap_or(0),
            Err(e) => {
                tracing::error!(error = %e, "cannot read the notification cursor");
                return;
            }
        };
        let owed = match view.notifications(&provider, after, NOTIFY_BATCH_MAX) {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(error = %e, "cannot read owed notifications");
                return;
            }
        };
        let Some(through_seq) = owed.last().map(|n| n.peer_seq) else {
            return;
        };
        let Some(mut client) = self.client() else {
            return;
        };
        let request = pb::NotifyRequest {
            notifications: owed.iter().map(codec::encode).collect(),
        };
        let reply = match client.notify(request).await {
            Ok(r) => r.into_inner(),
            Err(s) => {
                self.call_failed("notify", &s);
                self.notify_backoff.fail();
                return;
            }
        };
        // Recorded there, or refused for good (then retrying cannot help): advance.
        let unsettled = reply
            .results
            .iter()
            .find(|r| !r.error.is_empty() && !r.permanent);
        if reply.results.len() != owed.len() || unsettled.is_some() {
            let why = unsettled.map(|r| r.error.clone()).unwrap_or_default();
            tracing::warn!(peer = %provider, error = %why, "notifications not all recorded; will retry");
            self.notify_backoff.fail();
            return;
        }
        for (n, r) in owed.iter().zip(&reply.results) {
            if r.permanent {
                tracing::warn!(peer = %provider, message_id = %n.message_id, error = %r.error, "peer refused a notification");
            }
        }
        self.notify_backoff.succeed();
        if let Err(e) = self
            .propose(Command::NotificationsRelayed {
                provider,
                through_seq,
            })
            .await
        {
            tracing::debug!(error = %e, "notification cursor not committed; will retry");
        }
    }

    /// Settles due deadlines of the peer's recipients after asking the peer.
    async fn deadline_pass(&mut self) {
        let view = self.ctx.node.view().clone();
        let due = match view.due_deadlines(now_ms(), REMOTE_DEADLINE_SCAN_MAX) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the deadline index");
                return;
            }
        };
        let mut ids: Vec<MessageId> = Vec::new();
        let mut seen = HashSet::new();
        for d in due {
            if ids.len() >= self.ctx.opts.status_checks_per_tick_max {
                break;
            }
            let Ok(Some(m)) = view.message(&d.message_id) else {
                continue;
            };
            let ours = m
                .recipient(&d.recipient)
                .is_some_and(|r| r.provider.as_deref() == Some(self.peer.provider.as_str()));
            if ours && seen.insert(d.message_id.clone()) {
                ids.push(d.message_id);
            }
        }
        if ids.is_empty() {
            return;
        }
        let Some(mut client) = self.client() else {
            return;
        };
        let reply = match client
            .status(pb::PeerStatusRequest {
                message_ids: ids.iter().map(|i| i.to_string()).collect(),
            })
            .await
        {
            Ok(r) => r.into_inner(),
            Err(s) => {
                // Without the peer's answer nothing is failed: a message it may hold is
                // never declared undeliverable.
                self.call_failed("status", &s);
                return;
            }
        };
        for pm in reply.messages {
            let Ok(id) = MessageId::parse(&pm.message_id) else {
                continue;
            };
            let Ok(Some(msg)) = view.message(&id) else {
                continue;
            };
            self.settle(&msg, pm).await;
        }
    }

    async fn settle(&self, msg: &MessageStatus, pm: pb::PeerMessage) {
        let provider = &self.peer.provider;
        let now = now_ms();
        let mut commands = Vec::new();
        if pm.known {
            let waiting = msg.awaits_relay(provider);
            if waiting {
                match self.check_receipt(msg, None, &pm.receipt) {
                    Ok(receipt) => {
                        tracing::info!(message_id = %msg.message_id, "peer holds a message whose receipt was lost; recording it as relayed");
                        commands.push(Command::RecordRelayed {
                            receipt,
                            outcome_by_ms: self.outcome_by(msg),
                        });
                    }
                    Err(e) => {
                        tracing::warn!(message_id = %msg.message_id, error = %e, "peer status carries a bad receipt");
                        return;
                    }
                }
            }
            for pr in &pm.recipients {
                if pr.outcome.is_empty() {
                    continue;
                }
                if let Ok(n) = codec::decode::<Notification>(&pr.outcome) {
                    commands.push(Command::Notify {
                        provider: provider.clone(),
                        notification: n,
                    });
                }
            }
        }
        // Recipients whose deadline passed and whose outcome the peer did not report.
        for r in msg
            .recipients
            .iter()
            .filter(|r| r.provider.as_deref() == Some(provider.as_str()) && !r.state.is_final())
        {
            let reported = pm
                .recipients
                .iter()
                .any(|pr| pr.endpoint == r.endpoint.to_string() && !pr.outcome.is_empty());
            let due = match r.state {
                // Never received there: undeliverable once deliver-by has passed.
                RecipientState::Sent => !pm.known && now > msg.deliver_by_ms,
                RecipientState::Relayed { outcome_by_ms, .. } => now > outcome_by_ms,
                _ => false,
            };
            if due && !reported {
                commands.push(Command::Expire {
                    message_id: msg.message_id.clone(),
                    recipient: r.endpoint.clone(),
                });
            }
        }
        for c in commands {
            match self.propose(c).await {
                Ok(Outcome::Rejected(r)) => {
                    tracing::debug!(reason = %r, "settling a remote deadline: refused")
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "settling a remote deadline: not committed"),
            }
        }
    }
}

/// Directory pull rounds per pass (each up to `PEER_CHANGES_MAX` changes).
pub const PULL_ROUNDS_MAX: usize = 16;
