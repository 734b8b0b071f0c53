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
