//! Outcome notifications to a sending clinical system over MLLP: when a message that an
//! organisation's system submitted over MLLP reaches its final outcome for a recipient,
//! the leader sends that system an HL7 application acknowledgement on its own MLLP
//! endpoint (`[[mllp_notify]]`): MSA-2 is the control id it used, MSA-1 is AA for an
//! accepted acknowledgement, AR for a rejection, AE for an error or a failure (ERR names
//! the reason).
//!
//! Progress is a cursor in the log (`OutcomesNotified`) over the `outcomes` view, so a
//! restart or a new leader resumes where the last one stopped; a crash between sending and
//! recording may repeat an acknowledgement, which HL7 systems match by control id.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use sealpost_core::Outcome;
use sealpost_core::command::{Command, Proposal};
use sealpost_core::directory::PayloadType;
use sealpost_core::federation::cursor;
use sealpost_core::ids::HpiO;
use sealpost_core::message::{AckStatus, MessageStatus, RecipientState};
use sealpost_hl7::ack::{AckCode, AckError, build_ack};
use sealpost_hl7::er7::Msh;
use sealpost_hl7::mllp::MllpCodec;
use sealpost_raft::RaftNode;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::codec::Framed;

use crate::config::{ConfigError, MessagingOptions};

/// Outcomes read per pass and organisation.
pub const OUTCOMES_SCAN_MAX: usize = 256;
/// Largest frame accepted back from the sending system, in bytes.
pub const NOTIFY_ANSWER_BYTES_MAX: usize = 64 * 1024;

/// Where an organisation's sending system takes outcome acknowledgements
/// (`[[mllp_notify]]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MllpNotifyTarget {
    /// The sending organisation (HPI-O) hosted by this provider.
    pub organisation: String,
    /// host:port of its system's MLLP listener.
    pub addr: String,
    /// Deadline for connecting and for the system's answer to each acknowledgement.
    #[serde(default = "default_answer_timeout_ms")]
    pub answer_timeout_ms: u64,
    /// First retry delay after the system could not be reached; doubles up to the maximum.
    #[serde(default = "crate::mllp_out::default_retry_min_ms")]
    pub retry_min_ms: u64,
    #[serde(default = "crate::mllp_out::default_retry_max_ms")]
    pub retry_max_ms: u64,
}

fn default_answer_timeout_ms() -> u64 {
    5_000
}

impl MllpNotifyTarget {
    pub fn new(org: &HpiO, addr: &str) -> Self {
        Self {
            organisation: org.to_string(),
            addr: addr.to_string(),
            answer_timeout_ms: default_answer_timeout_ms(),
            retry_min_ms: crate::mllp_out::default_retry_min_ms(),
            retry_max_ms: crate::mllp_out::default_retry_max_ms(),
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid =
            |field: &'static str, problem: String| ConfigError::Invalid { field, problem };
        HpiO::parse(&self.organisation)
            .map_err(|e| invalid("mllp_notify.organisation", e.to_string()))?;
        crate::mllp_out::check_peer(
            &crate::mllp_out::PeerFields {
                addr: "mllp_notify.addr",
                timeout: "mllp_notify.answer_timeout_ms",
                retry_max: "mllp_notify.retry_max_ms",
            },
            &self.addr,
            self.answer_timeout_ms,
            (self.retry_min_ms, self.retry_max_ms),
        )?;
        Ok(())
    }
}

/// Starts one task per target; they end when `shutdown` turns true.
pub fn spawn(
    node: RaftNode,
    messaging: &MessagingOptions,
    targets: Vec<MllpNotifyTarget>,
    shutdown: watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    let tick = Duration::from_millis(messaging.worker_tick_ms);
    targets
        .into_iter()
        .filter_map(|t| {
            let org = HpiO::parse(&t.organisation).ok()?;
            let n = Notifier {
                actor: format!("mllp-notify@node-{}", node.id()),
                node: node.clone(),
                org,
                backoff_ms: t.retry_min_ms,
                target: t,
                tick,
            };
            Some(tokio::spawn(n.run(shutdown.clone())))
        })
        .collect()
}

struct Notifier {
    actor: String,
    node: RaftNode,
    org: HpiO,
    target: MllpNotifyTarget,
    tick: Duration,
    backoff_ms: u64,
}

/// The original submission's MSH-3, MSH-4 and MSH-10, from the client message id the MLLP
/// front door gave it (`mllp:<app>|<facility>|<control id>`); `None` for messages sent
/// any other way (or whose id was too long and was hashed).
fn submitted_over_mllp(msg: &MessageStatus) -> Option<(String, String, String)> {
    let rest = msg
        .client_message_id
        .strip_prefix(sealpost_core::message::MLLP_CLIENT_ID_PREFIX)?;
    let mut parts = rest.splitn(3, '|');
    let (app, facility, control) = (parts.next()?, parts.next()?, parts.next()?);
    (!control.is_empty()).then(|| (app.to_string(), facility.to_string(), control.to_string()))
}

/// The acknowledgement code and error for a final state.
fn ack_for(state: &RecipientState) -> Option<(AckCode, Option<AckError>)> {
    match state {
        RecipientState::Acked { status, .. } => Some(match status {
            AckStatus::Accepted => (AckCode::AA, None),
            AckStatus::Rejected => (
                AckCode::AR,
                Some(AckError::new(207, "rejected by the receiver")),
            ),
            AckStatus::Error => (
                AckCode::AE,
                Some(AckError::new(207, "the receiver reported an error")),
            ),
        }),
        RecipientState::Failed { reason, .. } => Some((
            AckCode::AE,
            Some(AckError::new(207, format!("not delivered: {reason}"))),
        )),
        _ => None,
    }
}

impl Notifier {
    async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut applied = self.node.view().subscribe();
        loop {
            if *shutdown.borrow() {
                return;
            }
            let mut wait = self.tick;
            if self.node.is_leader() && !self.pass().await {
                wait = Duration::from_millis(self.backoff_ms);
                self.backoff_ms = (self.backoff_ms * 2).min(self.target.retry_max_ms);
            }
            tokio::select! {
                r = shutdown.changed() => if r.is_err() { return },
                _ = applied.changed(), if wait == self.tick => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Tells the system what it has not been told yet. False when it could not be reached.
    async fn pass(&mut self) -> bool {
        let view = self.node.view().clone();
        let after = match view.cursor(cursor::OUTCOMES, self.org.as_str()) {
            Ok(c) => c.unwrap_or(0),
            Err(e) => {
                tracing::error!(error = %e, "cannot read the outcome cursor");
                return true;
            }
        };
        let items = match view.outcomes(&self.org, after, OUTCOMES_SCAN_MAX) {
            Ok(i) => i,
            Err(e) => {
                tracing::error!(error = %e, "cannot read outcomes");
                return true;
            }
        };
        if items.is_empty() {
            return true;
        }
        let timeout = Duration::from_millis(self.target.answer_timeout_ms);
        let mut conn: Option<Framed<TcpStream, MllpCodec>> = None;
        let mut told_through = None;
        let mut reachable = true;
        for (seq, id, recipient) in items {
            let msg = match view.message(&id) {
                Ok(Some(m)) => m,
                // A message whose status is gone has nothing to tell.
                Ok(None) => {
                    told_through = Some(seq);
                    continue;
                }
                // A read error must not skip the outcome: stop here, and try again.
                Err(e) => {
                    tracing::error!(error = %e, message_id = %id, "cannot read a message to notify");
                    break;
                }
            };
            let (Some((app, facility, control)), Some((code, err))) = (
                submitted_over_mllp(&msg),
                msg.recipient(&recipient).and_then(|r| ack_for(&r.state)),
            ) else {
                // Not submitted over MLLP: nothing to tell.
                told_through = Some(seq);
                continue;
            };
            if conn.is_none() {
                match tokio::time::timeout(timeout, TcpStream::connect(&self.target.addr)).await {
                    Ok(Ok(s)) => {
                        conn = Some(Framed::new(s, MllpCodec::new(NOTIFY_ANSWER_BYTES_MAX)))
                    }
                    _ => {
                        tracing::warn!(org = %self.org, addr = %self.target.addr, "cannot reach the sending system for outcomes; will retry");
                        reachable = false;
                        break;
                    }
                }
            }
            let Some(framed) = conn.as_mut() else { break };
            let (kind, trigger) = match msg.payload_type {
                PayloadType::Hl7Referral => ("REF", "I12"),
                PayloadType::Hl7Result => ("ORU", "R01"),
                PayloadType::Hl7Document => ("MDM", "T02"),
                _ => ("ACK", ""),
            };
            let original = Msh {
                sending_application: app,
                sending_facility: facility,
                receiving_facility: recipient.org.to_string(),
                receiving_application: "SEALPOST".into(),
                message_type: kind.into(),
                trigger: trigger.into(),
                control_id: control,
                processing_id: "P".into(),
                version: "2.4".into(),
                ..Msh::default()
            };
            let ack = build_ack(
                &original,
                code,
                err.as_ref(),
                &crate::mllp::hl7_now(),
                &format!("SPN{seq}"),
            );
            if framed.send(ack.as_bytes()).await.is_err() {
                reachable = false;
                break;
            }
            // The system may answer with its own acknowledgement; it is not required.
            let _ = tokio::time::timeout(timeout, framed.next()).await;
            tracing::info!(org = %self.org, message_id = %id, code = code.as_str(), "outcome told to the sending system");
            told_through = Some(seq);
        }
        if let Some(through_seq) = told_through {
            let p = Proposal {
                actor: self.actor.clone(),
                command: Command::OutcomesNotified {
                    org: self.org.clone(),
                    through_seq,
                },
            };
            match self.node.propose_urgent(p).await {
                Ok(c) if matches!(c.outcome, Outcome::Applied { .. }) => {}
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "outcome cursor not committed; will retry"),
            }
        }
        if reachable {
            self.backoff_ms = self.target.retry_min_ms;
        }
        reachable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_mllp_submissions_are_told_and_outcomes_map_to_codes() {
        let status = |cid: &str| MessageStatus {
            message_id: sealpost_core::message::MessageId::new(
                "p",
                "01890a5d-ac96-774b-bcce-b302099a8057",
            )
            .expect("id"),
            sent_seq: 1,
            sent_ts_ms: 1,
            sender: sealpost_core::message::Sender {
                org: HpiO::from_serial(1),
                practitioner: None,
            },
            client_message_id: cid.into(),
            payload_type: PayloadType::Hl7Referral,
            priority: sealpost_core::message::Priority::Routine,
            payload_bytes: 1,
            deliver_by_ms: 2,
            recipients: vec![],
            origin: None,
        };
        assert_eq!(
            submitted_over_mllp(&status("mllp:PMS|Clinic|C1")),
            Some(("PMS".into(), "Clinic".into(), "C1".into()))
        );
        assert_eq!(submitted_over_mllp(&status("c-1")), None);
        assert_eq!(submitted_over_mllp(&status("mllp:abcdef")), None);
        let acked = |status| RecipientState::Acked { status, seq: 1 };
        assert_eq!(
            ack_for(&acked(AckStatus::Accepted)).map(|a| a.0),
            Some(AckCode::AA)
        );
        assert_eq!(
            ack_for(&acked(AckStatus::Rejected)).map(|a| a.0),
            Some(AckCode::AR)
        );
        assert_eq!(
            ack_for(&RecipientState::Failed {
                reason: sealpost_core::message::FailReason::Undeliverable,
                seq: 1
            })
            .map(|a| a.0),
            Some(AckCode::AE)
        );
        assert!(ack_for(&RecipientState::Sent).is_none());
    }
}
