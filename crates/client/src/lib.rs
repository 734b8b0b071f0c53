//! The Rust client for sealpost, used by the CLI, the benchmark and the tests: named
//! profiles from `client.toml`, and mutually authenticated TLS channels to a provider's
//! nodes, trying each endpoint in turn until one answers.
//!
//! # Layout
//! - [`config`]: `client.toml` and its profiles.
//! - [`Client`]: a connection with the generated gRPC clients.
//! - [`backup`]: an online backup streamed into a folder, and its check before a restore.

pub mod backup;
pub mod config;

use std::time::Duration;

use sealpost_proto::v1::admin_client::AdminClient;
use sealpost_proto::v1::audit_client::AuditClient;
use sealpost_proto::v1::directory_client::DirectoryClient;
use sealpost_proto::v1::messaging_client::MessagingClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

pub use config::{ClientConfig, Profile};

/// How long connecting to one endpoint may take before the next is tried.
pub const CONNECT_TIMEOUT_MS: u64 = 2_000;
/// Largest message the client sends or accepts.
pub const CLIENT_MESSAGE_BYTES_MAX: usize = 32 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("TLS material: {0}")]
    Tls(#[from] sealpost_crypto::Error),
    #[error("endpoint {endpoint}: {source}")]
    Endpoint {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("no endpoint of the profile answered: {0}")]
    Unreachable(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A connection to one node of a provider.
#[derive(Clone, Debug)]
pub struct Client {
    channel: Channel,
    /// The endpoint this client is connected to.
    pub endpoint: String,
}

impl Client {
    /// Connects to the first endpoint of the profile that accepts a TLS connection.
    pub async fn connect(profile: &Profile) -> Result<Self> {
        let tls = profile.tls.load()?;
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&tls.ca_pem))
            .identity(Identity::from_pem(
                &tls.identity.cert_pem,
                &tls.identity.key_pem,
            ));
        let mut problems = Vec::new();
        for ep in &profile.endpoints {
            let endpoint = Endpoint::from_shared(format!("https://{ep}"))
                .and_then(|e| e.tls_config(tls.clone()))
                .map_err(|source| Error::Endpoint {
                    endpoint: ep.clone(),
                    source,
                })?
                .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
                .tcp_nodelay(true);
            match endpoint.connect().await {
                Ok(channel) => {
                    return Ok(Self {
                        channel,
                        endpoint: ep.clone(),
                    });
                }
                Err(e) => problems.push(format!("{ep}: {e}")),
            }
        }
        Err(Error::Unreachable(problems.join("; ")))
    }

    pub fn directory(&self) -> DirectoryClient<Channel> {
        DirectoryClient::new(self.channel.clone())
            .max_decoding_message_size(CLIENT_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(CLIENT_MESSAGE_BYTES_MAX)
    }

    pub fn messaging(&self) -> MessagingClient<Channel> {
        MessagingClient::new(self.channel.clone())
            .max_decoding_message_size(CLIENT_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(CLIENT_MESSAGE_BYTES_MAX)
    }

    pub fn admin(&self) -> AdminClient<Channel> {
        AdminClient::new(self.channel.clone())
            .max_decoding_message_size(CLIENT_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(CLIENT_MESSAGE_BYTES_MAX)
    }

    /// Takes an online backup from the connected node into `out` (see [`backup`]).
    pub async fn backup_to(
        &self,
        out: &std::path::Path,
    ) -> std::result::Result<backup::BackupManifest, backup::BackupError> {
        let stream = self
            .admin()
            .backup(sealpost_proto::v1::BackupRequest {})
            .await?
            .into_inner();
        backup::write_backup(stream, out).await
    }

    pub fn audit(&self) -> AuditClient<Channel> {
        AuditClient::new(self.channel.clone())
            .max_decoding_message_size(CLIENT_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(CLIENT_MESSAGE_BYTES_MAX)
    }
}

/// Start of the message tonic gives a call whose HTTP/2 stream or connection failed under
/// it (tonic's `Status::from_hyper_error` and `from_h2_error`).
const TRANSPORT_FAILURE_PREFIX: &str = "h2 protocol error";

/// Whether a failed call may succeed if made again (to the same node or, after
/// [`Client::connect`], to another): the node went away, no leader was known, the deadline
/// passed, or the connection broke while the call was in flight. The outcome of such a
/// call is unknown, so a send is retried with the same client message id, which the
/// provider turns into the first send's answer rather than a second message.
///
/// A reset connection reaches the caller as `Internal` (the gRPC mapping of an HTTP/2
/// `INTERNAL_ERROR` or `NO_ERROR` reset), so `Internal` counts only when the transport
/// raised it; an `Internal` answered by a node is a fault a retry does not cure.
/// `ResourceExhausted` (a rate limit, a full disk) is not counted either: it asks the
/// caller to back off, not to retry at once.
pub fn retry_may_help(status: &tonic::Status) -> bool {
    use tonic::Code;
    match status.code() {
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Unknown
        | Code::Cancelled
        | Code::Aborted => true,
        Code::Internal => status.message().starts_with(TRANSPORT_FAILURE_PREFIX),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sealpost_proto::v1::SendRequest;
    use tonic::Code;

    /// Accepts one HTTP/2 connection on loopback and resets every stream on it with
    /// `reason`, as a node does to its calls when it goes away mid-call.
    async fn resetting_server(reason: h2::Reason) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(async move {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            let Ok(mut conn) = h2::server::handshake(socket).await else {
                return;
            };
            while let Some(Ok((_req, mut respond))) = conn.accept().await {
                respond.send_reset(reason);
            }
        });
        addr
    }

    async fn call_reset_with(reason: h2::Reason) -> tonic::Status {
        let addr = resetting_server(reason).await;
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect over loopback");
        MessagingClient::new(channel)
            .send(SendRequest::default())
            .await
            .expect_err("the stream was reset")
    }

    #[tokio::test]
    async fn a_stream_reset_under_a_call_may_be_retried() {
        for reason in [h2::Reason::INTERNAL_ERROR, h2::Reason::NO_ERROR] {
            let status = call_reset_with(reason).await;
            assert_eq!(status.code(), Code::Internal, "{reason:?}: {status}");
            assert!(retry_may_help(&status), "{reason:?}: {status}");
        }
        let refused = call_reset_with(h2::Reason::REFUSED_STREAM).await;
        assert!(retry_may_help(&refused), "{refused}");
    }

    #[test]
    fn an_answer_from_a_node_is_retried_only_when_it_says_so() {
        for code in [Code::Unavailable, Code::DeadlineExceeded, Code::Aborted] {
            assert!(retry_may_help(&tonic::Status::new(code, "no leader")));
        }
        for code in [
            Code::Internal,
            Code::InvalidArgument,
            Code::PermissionDenied,
            Code::NotFound,
            Code::FailedPrecondition,
            Code::ResourceExhausted,
        ] {
            let status = tonic::Status::new(code, "sealing failed");
            assert!(!retry_may_help(&status), "{status}");
        }
    }
}
