//! The MLLP back door: messages routed to an endpoint that has an MLLP destination (the
//! receiving clinical system) are pushed there by the leader, and the system's HL7
//! acknowledgement becomes the recipient's outcome.
//!
//! For each configured destination the worker reads the endpoint's inbox view (routed,
//! not yet answered, urgent first then oldest), records the access (`Fetched`), opens the
//! envelope with the receiving organisation's key, sends the payload framed by MLLP and
//! reads the answer. Original mode: AA → `Acked(accepted)`, AE → `Acked(error)`, AR →
//! `Acked(rejected)`. Enhanced mode: CA only says "received"; the application
//! acknowledgement that follows on the same connection decides, and without one in time
//! the message is offered again later. No answer, a refused connection or a commit-level
//! CE/CR: retried with exponential backoff until the message reaches a final outcome (the
//! acknowledgement window fails it as unacknowledged). A crash between the push and the
//! recorded acknowledgement pushes the message again: receiving systems deduplicate by
//! control id, as HL7 expects. Only HL7 payloads (REF^I12, ORU^R01, MDM^T02) are pushed;
//! other types stay in the inbox for the API. Nothing here logs message content.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use sealpost_core::Outcome;
use sealpost_core::command::{Command, Proposal, Rejection};
use sealpost_core::directory::PayloadType;
use sealpost_core::ids::EndpointId;
use sealpost_core::message::{AckStatus, MessageId, RecipientState};
use sealpost_hl7::ack::{AckCode, parse_ack};
use sealpost_hl7::er7;
use sealpost_hl7::mllp::MllpCodec;
use sealpost_raft::RaftNode;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::codec::Framed;

use crate::config::{ConfigError, MessagingOptions};
use crate::keystore::Keystore;
use crate::messaging::{load_envelope, sender_signing_key};

/// Inbox items the worker reads per pass and destination.
pub const MLLP_OUT_SCAN_ITEMS_MAX: usize = 256;

/// An endpoint whose messages go to a clinical system over MLLP (`[[mllp_destinations]]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MllpDestination {
    /// The directory endpoint, `<HPI-O>/<service or HPI-I>`, hosted by this provider.
    pub endpoint: String,
    /// host:port of the receiving system's MLLP listener.
    pub addr: String,
    /// Deadline for connecting and for each answer.
    #[serde(default = "default_answer_timeout_ms")]
    pub answer_timeout_ms: u64,
    /// First retry delay; doubles up to `retry_max_ms`.
    #[serde(default = "default_retry_min_ms")]
    pub retry_min_ms: u64,
    #[serde(default = "default_retry_max_ms")]
    pub retry_max_ms: u64,
    /// Largest frame accepted from the receiving system, in bytes.
    #[serde(default = "default_frame_bytes_max")]
    pub frame_bytes_max: usize,
}

fn default_answer_timeout_ms() -> u64 {
    10_000
}
pub(crate) fn default_retry_min_ms() -> u64 {
    500
}
pub(crate) fn default_retry_max_ms() -> u64 {
    60_000
}

/// The names of an MLLP peer's settings in one configuration table, for errors.
pub(crate) struct PeerFields {
    pub addr: &'static str,
    pub timeout: &'static str,
    pub retry_max: &'static str,
}

/// Checks an MLLP peer's address, answer timeout and retry delays.
pub(crate) fn check_peer(
    f: &PeerFields,
    addr: &str,
    answer_timeout_ms: u64,
    (retry_min_ms, retry_max_ms): (u64, u64),
) -> Result<(), ConfigError> {
    let invalid = |field: &'static str, problem: String| ConfigError::Invalid { field, problem };
    if addr.trim().is_empty() || !addr.contains(':') {
        return Err(invalid(f.addr, format!("{addr:?} is not host:port")));
    }
    if answer_timeout_ms == 0 || retry_min_ms == 0 {
        return Err(invalid(
            f.timeout,
            "the answer timeout and retry delays must be positive".into(),
        ));
    }
    if retry_max_ms < retry_min_ms {
        return Err(invalid(
            f.retry_max,
            "must not be less than retry_min_ms".into(),
        ));
    }
    Ok(())
}
fn default_frame_bytes_max() -> usize {
    1024 * 1024
}

impl MllpDestination {
    pub fn new(endpoint: &EndpointId, addr: &str) -> Self {
        Self {
            endpoint: endpoint.to_string(),
            addr: addr.to_string(),
            answer_timeout_ms: default_answer_timeout_ms(),
            retry_min_ms: default_retry_min_ms(),
            retry_max_ms: default_retry_max_ms(),
            frame_bytes_max: default_frame_bytes_max(),
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid =
            |field: &'static str, problem: String| ConfigError::Invalid { field, problem };
        EndpointId::parse(&self.endpoint)
            .map_err(|e| invalid("mllp_destinations.endpoint", e.to_string()))?;
        check_peer(
            &PeerFields {
                addr: "mllp_destinations.addr",
                timeout: "mllp_destinations.answer_timeout_ms",
                retry_max: "mllp_destinations.retry_max_ms",
            },
            &self.addr,
            self.answer_timeout_ms,
            (self.retry_min_ms, self.retry_max_ms),
        )?;
        if self.frame_bytes_max == 0 {
            return Err(invalid(
                "mllp_destinations.frame_bytes_max",
                "must be positive".into(),
            ));
        }
        Ok(())
    }
}

/// Starts one task per destination; they end when `shutdown` turns true.
pub fn spawn(
    node: RaftNode,
    keystore: Keystore,
    messaging: MessagingOptions,
    destinations: Vec<MllpDestination>,
    shutdown: watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    destinations
        .into_iter()
        .filter_map(|d| {
            let endpoint = EndpointId::parse(&d.endpoint).ok()?;
            let w = Pusher {
                actor: format!("mllp-out@node-{}", node.id()),
                node: node.clone(),
                keystore: keystore.clone(),
                tick: Duration::from_millis(messaging.worker_tick_ms),
                endpoint,
                dest: d,
                retry: HashMap::new(),
            };
            Some(tokio::spawn(w.run(shutdown.clone())))
        })
        .collect()
}

/// What happened to one push.
enum Pushed {
    /// The system answered: the acknowledgement status and its text.
    Answered(AckStatus, String),
    /// Not delivered (connection, timeout, commit-level refusal): try again later.
    Retry(String),
}

struct Pusher {
    actor: String,
    node: RaftNode,
    keystore: Keystore,
    tick: Duration,
    endpoint: EndpointId,
    dest: MllpDestination,
    /// Per message: when it may be pushed again and the delay after that.
    retry: HashMap<MessageId, (Instant, u64)>,
}

impl Pusher {
    async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut applied = self.node.view().subscribe();
        loop {
            if *shutdown.borrow() {
                return;
            }
            if self.node.is_leader() {
                self.pass().await;
            }
            tokio::select! {
                r = shutdown.changed() => if r.is_err() { return },
                _ = applied.changed() => {}
                _ = tokio::time::sleep(self.tick) => {}
            }
        }
    }

    async fn pass(&mut self) {
        let view = self.node.view().clone();
        let items = match view.inbox(
            &self.endpoint.org,
            Some(&self.endpoint),
            MLLP_OUT_SCAN_ITEMS_MAX,
        ) {
            Ok(i) => i,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the inbox for MLLP delivery");
                return;
            }
        };
        let now = Instant::now();
        self.retry
            .retain(|id, _| items.iter().any(|i| &i.message_id == id));
        for item in items {
            if self
                .retry
                .get(&item.message_id)
                .is_some_and(|(at, _)| *at > now)
            {
                continue;
            }
            let Ok(Some(msg)) = view.message(&item.message_id) else {
                continue;
            };
            let routed = msg
                .recipient(&self.endpoint)
                .is_some_and(|r| matches!(r.state, RecipientState::Routed { .. }));
            let hl7 = matches!(
                msg.payload_type,
                PayloadType::Hl7Referral | PayloadType::Hl7Result | PayloadType::Hl7Document
            );
            if !routed || !hl7 {
                continue;
            }
            match self.push(&item.message_id, msg.sent_seq).await {
                Pushed::Answered(status, note) => {
                    self.retry.remove(&item.message_id);
                    tracing::info!(message_id = %item.message_id, %status, "clinical system answered over MLLP");
                    self.propose(Command::Ack {
                        message_id: item.message_id.clone(),
                        recipient: self.endpoint.clone(),
                        status,
                        note,
                    })
                    .await;
                }
                Pushed::Retry(why) => {
                    let delay = self
                        .retry
                        .get(&item.message_id)
                        .map(|(_, d)| (*d * 2).min(self.dest.retry_max_ms))
                        .unwrap_or(self.dest.retry_min_ms);
                    tracing::warn!(message_id = %item.message_id, error = %why, retry_ms = delay, "MLLP delivery failed; will retry");
                    self.retry.insert(
                        item.message_id.clone(),
                        (Instant::now() + Duration::from_millis(delay), delay),
                    );
                    // The destination is down or refusing: do not hammer it with the rest.
                    return;
                }
            }
        }
    }

    async fn propose(&self, command: Command) -> bool {
        let p = Proposal {
            actor: self.actor.clone(),
            command,
        };
        match self.node.propose_urgent(p).await {
            Ok(c) => match c.outcome {
                Outcome::Applied { .. } => true,
                Outcome::Rejected(Rejection::AlreadyExists(_)) => true,
                Outcome::Rejected(r) => {
                    tracing::debug!(reason = %r, "MLLP outcome refused (already final?)");
                    true
                }
            },
            Err(e) => {
                tracing::debug!(error = %e, "MLLP outcome not committed; will retry");
                false
            }
        }
    }

    /// Records the access, opens the envelope and pushes the payload; the answer.
    async fn push(&self, id: &MessageId, sent_seq: u64) -> Pushed {
        let view = self.node.view();
        let envelope = match load_envelope(view, sent_seq) {
            Ok(e) => e,
            Err(e) => return Pushed::Retry(format!("cannot load the envelope: {e}")),
        };
        if envelope.payload_dropped() {
            // Past the retention period nothing is left to push; the receiving system is
            // told the message errored, which ends the retries.
            return Pushed::Answered(
                AckStatus::Error,
                "the payload was dropped after the retention period".into(),
            );
        }
        let Some(copy) = envelope.copy_for(&self.endpoint.org) else {
            return Pushed::Retry("the envelope holds no copy for this organisation".into());
        };
        let keys = match self.keystore.keys(&self.endpoint.org, &copy.key_id) {
            Ok(k) => k,
            Err(e) => return Pushed::Retry(format!("keys unavailable: {e}")),
        };
        let signing = match sender_signing_key(view, &envelope) {
            Ok(Some(k)) => k,
            Ok(None) => return Pushed::Retry("the sender's key is no longer published".into()),
            Err(e) => return Pushed::Retry(format!("cannot read the sender's key: {e}")),
        };
        // Connect first: an unreachable system costs no access event per attempt.
        let framed = match self.connect().await {
            Ok(f) => f,
            Err(why) => return Pushed::Retry(why),
        };
        // The access is recorded before the plaintext leaves the node.
        if !self
            .propose(Command::Fetch {
                message_id: id.clone(),
                recipient: self.endpoint.clone(),
            })
            .await
        {
            return Pushed::Retry("the access could not be recorded".into());
        }
        let org = self.endpoint.org.clone();
        let opened = crate::crypto_pool::run(crate::crypto_pool::Lane::Finish, move || {
            sealpost_crypto::envelope::open(&envelope, &org, &keys, &signing)
        })
        .await;
        let payload = match opened {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => return Pushed::Retry(format!("the envelope does not open: {e}")),
            Err(e) => return Pushed::Retry(format!("the opening task failed: {e}")),
        };
        self.exchange(framed, &payload).await
    }

    async fn connect(&self) -> Result<Framed<TcpStream, MllpCodec>, String> {
        let timeout = Duration::from_millis(self.dest.answer_timeout_ms);
        match tokio::time::timeout(timeout, TcpStream::connect(&self.dest.addr)).await {
            Ok(Ok(s)) => Ok(Framed::new(s, MllpCodec::new(self.dest.frame_bytes_max))),
            Ok(Err(e)) => Err(format!("cannot connect to {}: {e}", self.dest.addr)),
            Err(_) => Err(format!("connecting to {} timed out", self.dest.addr)),
        }
    }

    async fn exchange(&self, mut framed: Framed<TcpStream, MllpCodec>, payload: &[u8]) -> Pushed {
        let timeout = Duration::from_millis(self.dest.answer_timeout_ms);
        if let Err(e) = framed.send(payload).await {
            return Pushed::Retry(format!("sending failed: {e}"));
        }
        // At most two answers: a commit acknowledgement, then the application's.
        for _ in 0..2 {
            let frame = match tokio::time::timeout(timeout, framed.next()).await {
                Ok(Some(Ok(f))) => f,
                Ok(Some(Err(e))) => return Pushed::Retry(format!("bad answer: {e}")),
                Ok(None) => {
                    return Pushed::Retry(
                        "the system closed the connection without an answer".into(),
                    );
                }
                Err(_) => return Pushed::Retry("no answer in time".into()),
            };
            let Some((code, _, text)) = er7::parse(&frame).ok().as_ref().and_then(parse_ack) else {
                return Pushed::Retry("the answer is not an HL7 acknowledgement".into());
            };
            let note = text.unwrap_or_default();
            let note = truncate_note(&note);
            match code {
                AckCode::AA => return Pushed::Answered(AckStatus::Accepted, note),
                AckCode::AE => return Pushed::Answered(AckStatus::Error, note),
                AckCode::AR => return Pushed::Answered(AckStatus::Rejected, note),
                // Received: the application acknowledgement decides.
                AckCode::CA => continue,
                AckCode::CE | AckCode::CR => {
                    return Pushed::Retry(format!(
                        "the system did not take it ({}): {note}",
                        code.as_str()
                    ));
                }
            }
        }
        Pushed::Retry("no application acknowledgement after the commit acknowledgement".into())
    }
}

/// An acknowledgement text as an `Ack` note: printable and within the note limit.
fn truncate_note(text: &str) -> String {
    let clean: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let mut out = String::new();
    for c in clean.trim().chars() {
        if out.len() + c.len_utf8() > sealpost_core::directory::NOTE_BYTES_MAX {
            break;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_are_printable_and_bounded() {
        assert_eq!(truncate_note(" a\rb "), "a b");
        let long = "x".repeat(2000);
        assert_eq!(
            truncate_note(&long).len(),
            sealpost_core::directory::NOTE_BYTES_MAX
        );
    }

    #[test]
    fn destinations_are_checked() {
        let ep = EndpointId::parse("8003620000000021/results").expect("ep");
        MllpDestination::new(&ep, "127.0.0.1:2576")
            .validate()
            .expect("valid");
        let mut d = MllpDestination::new(&ep, "nowhere");
        assert!(d.validate().expect_err("addr").to_string().contains("addr"));
        d.addr = "127.0.0.1:1".into();
        d.retry_max_ms = 1;
        assert!(
            d.validate()
                .expect_err("retry")
                .to_string()
                .contains("retry_max_ms")
        );
    }
}
