//! The MLLP front door: HL7 v2 messages from clinical systems, framed by MLLP over TCP,
//! sent through the messaging pipeline, answered with HL7 acknowledgements.
//!
//! A plain MLLP listener serves loopback only and is bound to one organisation (MSH-4 may
//! not claim another); an MLLP-over-TLS listener may serve any address and requires a
//! client certificate from the provider's CA that names the organisation (the same
//! certificates as the gRPC clients'). Each frame is parsed (ER7), its recipient is found from the HL7
//! addressing (MSH-6 carries the receiving organisation's HPI-O; a referred-to `PRD` the
//! practitioner's HPI-I, or else MSH-5 the service), and it is sent with sending
//! application, facility and control id (MSH-3/4/10) as the idempotency key. The answer is
//! AA (or CA in enhanced mode) only once `Sent` is committed; AE/AR (CE/CR) name the
//! problem otherwise; a resend of the same control id is acknowledged without a second
//! message. Frames on one connection are answered in order. Nothing here logs message
//! content: only control ids, message types and errors.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::tls::ServerTls;
use futures::{SinkExt, StreamExt};
use sealpost_core::ids::{EndpointId, HpiI, HpiO};
use sealpost_core::message::MLLP_CLIENT_ID_PREFIX;
use sealpost_hl7::ack::{self, AckError, Outcome};
use sealpost_hl7::er7::{self, Message, Msh};
use sealpost_hl7::mllp::MllpCodec;
use sealpost_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio_util::codec::Framed;
use tonic::Code;

use crate::config::ConfigError;
use crate::messaging::{Caller, MessagingService};
use sealpost_crypto::tls::Subject;

/// Longest client message id an MLLP submission may produce before it is hashed, in bytes.
const MLLP_CLIENT_ID_BYTES_MAX: usize = 128;

/// One MLLP listener (`[[mllp]]` in node.toml).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MllpListenerConfig {
    /// host:port; a plain listener must be on a loopback address.
    pub listen: String,
    /// Plain listeners: the organisation (HPI-O) every message is sent as. TLS listeners
    /// leave it out: each client certificate names its organisation.
    #[serde(default)]
    pub organisation: Option<String>,
    /// MLLP over TLS, with client certificates from the provider's CA.
    #[serde(default)]
    pub tls: bool,
    /// Largest MLLP frame, in bytes.
    #[serde(default = "default_frame_bytes_max")]
    pub frame_bytes_max: usize,
    /// Connections open at once; more wait in the backlog.
    #[serde(default = "default_connections_max")]
    pub connections_max: usize,
    /// A connection idle this long is closed.
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// Empty frames in a row after which a connection is closed.
    #[serde(default = "default_empty_frames_max")]
    pub empty_frames_max: u32,
    /// Frames one connection may carry before it is closed (the client reconnects).
    #[serde(default = "default_frames_per_connection_max")]
    pub frames_per_connection_max: u64,
}

fn default_frame_bytes_max() -> usize {
    sealpost_hl7::mllp::MLLP_FRAME_BYTES_DEFAULT_MAX
}
fn default_connections_max() -> usize {
    1024
}
fn default_idle_timeout_ms() -> u64 {
    300_000
}
fn default_empty_frames_max() -> u32 {
    16
}
fn default_frames_per_connection_max() -> u64 {
    1_000_000
}

fn invalid(field: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        problem: problem.into(),
    }
}

impl MllpListenerConfig {
    /// A loopback listener for `organisation` with default limits.
    pub fn loopback(listen: &str, organisation: &HpiO) -> Self {
        Self {
            listen: listen.to_string(),
            organisation: Some(organisation.to_string()),
            tls: false,
            frame_bytes_max: default_frame_bytes_max(),
            connections_max: default_connections_max(),
            idle_timeout_ms: default_idle_timeout_ms(),
            empty_frames_max: default_empty_frames_max(),
            frames_per_connection_max: default_frames_per_connection_max(),
        }
    }

    /// A TLS listener: each client certificate names the organisation it sends as.
    pub fn tls(listen: &str) -> Self {
        Self {
            organisation: None,
            tls: true,
            ..Self::loopback(listen, &HpiO::from_serial(1))
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let addr: SocketAddr = self.listen.parse().map_err(|_| {
            invalid(
                "mllp.listen",
                format!("{:?} is not host:port with an IP host", self.listen),
            )
        })?;
        match (&self.organisation, self.tls) {
            (Some(org), false) => {
                if !addr.ip().is_loopback() {
                    return Err(invalid(
                        "mllp.listen",
                        format!(
                            "{addr} is not a loopback address: plain MLLP carries no \
                             authentication, so it is served on loopback only (use tls = true)"
                        ),
                    ));
                }
                HpiO::parse(org).map_err(|e| invalid("mllp.organisation", e.to_string()))?;
            }
            (None, false) => {
                return Err(invalid(
                    "mllp.organisation",
                    "a plain listener is bound to one organisation: name it",
                ));
            }
            (Some(_), true) => {
                return Err(invalid(
                    "mllp.organisation",
                    "a TLS listener takes the organisation from each client certificate; \
                     leave it out",
                ));
            }
            (None, true) => {}
        }
        for (field, v) in [
            ("mllp.frame_bytes_max", self.frame_bytes_max as u64),
            ("mllp.connections_max", self.connections_max as u64),
            ("mllp.idle_timeout_ms", self.idle_timeout_ms),
            ("mllp.empty_frames_max", u64::from(self.empty_frames_max)),
            (
                "mllp.frames_per_connection_max",
                self.frames_per_connection_max,
            ),
        ] {
            if v == 0 {
                return Err(invalid(field, "must be positive"));
            }
        }
        Ok(())
    }
}

/// A running MLLP listener.
pub struct MllpListener {
    pub addr: SocketAddr,
    pub task: JoinHandle<()>,
}

/// Starts a listener on an already bound socket (or binds `cfg.listen`). `tls` is the
/// node's reloading TLS configuration, needed by a TLS listener.
pub async fn start(
    cfg: MllpListenerConfig,
    listener: Option<TcpListener>,
    messaging: MessagingService,
    node: u64,
    tls: Option<ServerTls>,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<MllpListener> {
    let io_err = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
    let acceptor = match (cfg.tls, tls) {
        (true, Some(t)) => Some(t),
        (true, None) => return Err(io_err("an MLLP TLS listener needs TLS material".into())),
        (false, _) => None,
    };
    let org = match &cfg.organisation {
        Some(o) => Some(HpiO::parse(o).map_err(|e| io_err(e.to_string()))?),
        None => None,
    };
    let listener = match listener {
        Some(l) => l,
        None => TcpListener::bind(&cfg.listen).await?,
    };
    let addr = listener.local_addr()?;
    let ctx = Arc::new(Ctx {
        messaging,
        org,
        acceptor,
        node,
        cfg,
    });
    let task = tokio::spawn(accept_loop(listener, ctx, shutdown));
    tracing::info!(%addr, "MLLP listener serving");
    Ok(MllpListener { addr, task })
}

struct Ctx {
    messaging: MessagingService,
    /// The organisation of a plain listener.
    org: Option<HpiO>,
    /// A TLS listener's handshakes.
    acceptor: Option<ServerTls>,
    node: u64,
    cfg: MllpListenerConfig,
}

async fn accept_loop(listener: TcpListener, ctx: Arc<Ctx>, mut shutdown: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(ctx.cfg.connections_max));
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = shutdown.changed() => return,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(error = %e, "MLLP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let ctx = ctx.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            match (&ctx.acceptor, &ctx.org) {
                (Some(acceptor), _) => {
                    let tls = match acceptor.accept(stream).await {
                        Ok(s) => s,
                        Err(refusal) => {
                            tracing::warn!(%peer, reason = refusal.as_str(), "MLLP TLS handshake refused");
                            return;
                        }
                    };
                    let org = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|c| sealpost_crypto::tls::client_org(c.as_ref()));
                    match org {
                        Some(org) => serve(tls, peer, &ctx, &org, shutdown).await,
                        None => tracing::warn!(
                            %peer,
                            "MLLP TLS client certificate names no organisation; closing"
                        ),
                    }
                }
                (None, Some(org)) => serve(stream, peer, &ctx, &org.clone(), shutdown).await,
                (None, None) => {}
            }
            drop(permit);
        });
    }
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    peer: SocketAddr,
    ctx: &Ctx,
    org: &HpiO,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut framed = Framed::new(stream, MllpCodec::new(ctx.cfg.frame_bytes_max));
    let idle = Duration::from_millis(ctx.cfg.idle_timeout_ms);
    let mut empties = 0u32;
    for _ in 0..ctx.cfg.frames_per_connection_max {
        let next = tokio::select! {
            n = tokio::time::timeout(idle, framed.next()) => n,
            _ = shutdown.changed() => return,
        };
        let frame = match next {
            Err(_) => {
                tracing::info!(%peer, "MLLP connection idle; closing it");
                return;
            }
            Ok(None) => return,
            Ok(Some(Err(e))) => {
                tracing::warn!(%peer, error = %e, "closing MLLP connection");
                return;
            }
            Ok(Some(Ok(frame))) => frame,
        };
        if frame.iter().all(|b| b.is_ascii_whitespace()) {
            empties += 1;
            if empties > ctx.cfg.empty_frames_max {
                tracing::warn!(%peer, empties, "closing MLLP connection: too many empty frames");
                return;
            }
            continue;
        }
        empties = 0;
        let answer = handle(ctx, org, &frame).await;
        if let Err(e) = framed.send(answer.as_bytes()).await {
            tracing::warn!(%peer, error = %e, "cannot answer on MLLP connection; closing it");
            return;
        }
    }
    tracing::info!(%peer, "MLLP connection reached its frame limit; closing it");
}

/// The acknowledgement for one frame.
async fn handle(ctx: &Ctx, org: &HpiO, frame: &[u8]) -> String {
    let msg = match er7::parse(frame) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, "MLLP frame is not an HL7 message; rejected");
            let msh = blank_msh();
            return answer(
                &msh,
                Outcome::Rejected,
                Some(&AckError::from_parse_error(&e)),
            );
        }
    };
    let msh = match msg.msh() {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, "HL7 message without a usable MSH; rejected");
            return answer(
                &msg.partial_msh(),
                Outcome::Rejected,
                Some(&AckError::from_parse_error(&e)),
            );
        }
    };
    match submit(ctx, org, frame, &msg, &msh).await {
        Ok(reply) => {
            tracing::info!(
                control_id = %msh.control_id,
                message_id = %reply.message_id,
                duplicate = reply.duplicate,
                "MLLP message accepted"
            );
            answer(&msh, Outcome::Accepted, None)
        }
        Err((outcome, err)) => {
            tracing::warn!(control_id = %msh.control_id, error = %err.text, "MLLP message not accepted");
            answer(&msh, outcome, Some(&err))
        }
    }
}

fn answer(msh: &Msh, outcome: Outcome, err: Option<&AckError>) -> String {
    let code = ack::ack_code(ack::mode_for(msh), outcome);
    let now = hl7_now();
    let id = format!("SP{}", uuid::Uuid::now_v7().simple());
    ack::build_ack(msh, code, err, &now, &id)
}

/// Validates, addresses and sends one message; the acknowledgement outcome otherwise.
async fn submit(
    ctx: &Ctx,
    org: &HpiO,
    frame: &[u8],
    msg: &Message,
    msh: &Msh,
) -> Result<pb::SendReply, (Outcome, AckError)> {
    let reject = |code: u16, text: String| (Outcome::Rejected, AckError { code, text });
    // The listener is bound to one organisation: MSH-4 may name it, never another.
    let claimed = first_nonempty(&msh.sending_facility_universal_id, &msh.sending_facility);
    if let Some(c) = claimed
        && HpiO::parse(c).is_ok()
        && c != org.as_str()
    {
        return Err(reject(
            207,
            format!("MSH-4 names organisation {c}, but this connection sends only as {org}"),
        ));
    }
    let payload_type = match msh.message_code().as_str() {
        "REF^I12" => "REF^I12",
        "ORU^R01" => "ORU^R01",
        "MDM^T02" => "MDM^T02",
        other => {
            return Err(reject(
                200,
                format!("message type {other} is not supported (REF^I12, ORU^R01, MDM^T02)"),
            ));
        }
    };
    let to = recipient(msg, msh).map_err(|text| reject(103, text))?;
    let patient = msg.pid().and_then(|p| p.ihi()).unwrap_or_default();
    let mut cid = format!(
        "{MLLP_CLIENT_ID_PREFIX}{}|{}|{}",
        msh.sending_application, msh.sending_facility, msh.control_id
    );
    if cid.len() > MLLP_CLIENT_ID_BYTES_MAX || cid.chars().any(char::is_control) {
        cid = format!(
            "{MLLP_CLIENT_ID_PREFIX}{}",
            hex::encode(sealpost_core::message::payload_digest(cid.as_bytes()))
        );
    }
    let caller = Caller {
        actor: format!("mllp:{org}@node-{}", ctx.node),
        subject: Some(Subject::Org(org.clone())),
        identity: format!("mllp:{org}"),
    };
    let request = pb::SendRequest {
        from_org: org.to_string(),
        to: vec![to.to_string()],
        payload_type: payload_type.into(),
        client_message_id: cid,
        // The message exactly as the sending system framed it.
        payload: frame.to_vec(),
        patient_ihi: patient,
        ..Default::default()
    };
    ctx.messaging.send_as(&caller, request).await.map_err(|s| {
        let outcome = match s.code() {
            // Worth retrying: the provider could not commit it now.
            Code::Unavailable
            | Code::Internal
            | Code::ResourceExhausted
            | Code::DeadlineExceeded
            | Code::Unknown
            | Code::Aborted => Outcome::Error,
            _ => Outcome::Rejected,
        };
        let code = match s.code() {
            Code::NotFound => 204,
            Code::InvalidArgument => 102,
            Code::FailedPrecondition | Code::PermissionDenied => 207,
            _ => 207,
        };
        (
            outcome,
            AckError {
                code,
                text: s.message().to_string(),
            },
        )
    })
}

/// The directory endpoint an HL7 message is addressed to: the receiving organisation's
/// HPI-O from MSH-6 (universal id, or namespace id), then the referred-to practitioner's
/// HPI-I from a `PRD|RT` segment, or else the service named by MSH-5.
fn recipient(msg: &Message, msh: &Msh) -> Result<EndpointId, String> {
    let org_text = first_nonempty(
        &msh.receiving_facility_universal_id,
        &msh.receiving_facility,
    )
    .ok_or_else(|| {
        "MSH-6 (receiving facility) must carry the receiving organisation's HPI-O".to_string()
    })?;
    let org = HpiO::parse(org_text)
        .or_else(|_| HpiO::parse(&msh.receiving_facility))
        .map_err(|e| format!("MSH-6 does not carry an HPI-O: {e}"))?;
    let practitioner = msg
        .prds()
        .into_iter()
        .filter(|p| p.role.eq_ignore_ascii_case("RT"))
        .flat_map(|p| p.provider_ids)
        .find(|id| {
            matches!(id.id_type.to_ascii_uppercase().as_str(), "HPII" | "NPII")
                || id.id.starts_with("800361")
        });
    if let Some(p) = practitioner {
        let hpii = HpiI::parse(&p.id).map_err(|e| format!("PRD-7 referred-to provider: {e}"))?;
        return Ok(EndpointId::practitioner(org, hpii));
    }
    let app = first_nonempty(&msh.receiving_application, "")
        .ok_or_else(|| "no recipient: name a referred-to practitioner (PRD|RT with an HPI-I) or the receiving service in MSH-5".to_string())?;
    EndpointId::service(org, &app.to_ascii_lowercase())
        .map_err(|e| format!("MSH-5 does not name a service of the receiving organisation: {e}"))
}

fn first_nonempty<'a>(a: &'a str, b: &'a str) -> Option<&'a str> {
    [a, b].into_iter().map(str::trim).find(|s| !s.is_empty())
}

/// An MSH with nothing known (the frame had no usable MSH).
fn blank_msh() -> Msh {
    Msh::default()
}

/// Now as an HL7 timestamp (UTC), YYYYMMDDHHMMSS.
pub(crate) fn hl7_now() -> String {
    let p = sealpost_core::calendar::utc_parts(crate::messaging::now_ms());
    format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}",
        p.year, p.month, p.day, p.hour, p.minute, p.second
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hl7_timestamps_are_fourteen_digits() {
        let now = hl7_now();
        assert_eq!(now.len(), 14);
        assert!(
            now.starts_with("20") && now.bytes().all(|b| b.is_ascii_digit()),
            "{now}"
        );
    }

    #[test]
    fn plain_listeners_are_loopback_only_and_bound_to_an_organisation() {
        let org = HpiO::from_serial(101);
        MllpListenerConfig::loopback("127.0.0.1:2575", &org)
            .validate()
            .expect("valid");
        let mut c = MllpListenerConfig::loopback("0.0.0.0:2575", &org);
        assert!(
            c.validate()
                .expect_err("public")
                .to_string()
                .contains("loopback")
        );
        MllpListenerConfig::tls("0.0.0.0:2575")
            .validate()
            .expect("TLS may serve any address");
        let mut t = MllpListenerConfig::tls("0.0.0.0:2575");
        t.organisation = Some(org.to_string());
        assert!(
            t.validate()
                .expect_err("org")
                .to_string()
                .contains("certificate")
        );
        c.listen = "127.0.0.1:2575".into();
        c.organisation = Some("123".into());
        assert!(
            c.validate()
                .expect_err("org")
                .to_string()
                .contains("mllp.organisation")
        );
    }
}
