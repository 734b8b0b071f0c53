//! Federation settings of a node: its relay port, the provider's receipt-signing key, and
//! the trust bundle that names the peer providers (their ids, CA certificates, receipt
//! keys and relay addresses), loaded and checked at start.
//!
//! The trust bundle is a TOML file shared by every node of the provider:
//!
//! ```toml
//! [[peers]]
//! provider = "prov-b"
//! ca = "peers/prov-b-ca.pem"          # relative to the bundle file
//! receipt_key = "<64 hex characters>" # the peer's Ed25519 receipt key
//! relay_endpoints = ["10.0.0.7:7443", "10.0.0.8:7443"]
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// Most peers one trust bundle may name.
pub const PEERS_MAX: usize = 64;
/// Most relay endpoints one peer may list.
pub const PEER_ENDPOINTS_MAX: usize = 16;

/// A node's federation settings (`[federation]` in node.toml).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederationConfig {
    /// Address the relay service binds (host:port); peers connect here with their
    /// provider's certificates.
    pub relay_listen: String,
    /// The provider's receipt-signing key (the same file on every node of the provider).
    pub provider_key: PathBuf,
    /// The peer providers this one trusts.
    pub trust_bundle: PathBuf,
    #[serde(default)]
    pub relay: RelayOptions,
}

/// Relay limits and timings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayOptions {
    /// Most envelopes in one relay request (at most `federation::RELAY_BATCH_MESSAGES_MAX`).
    pub batch_messages_max: usize,
    /// Most envelope bytes in one relay request (one envelope may exceed it alone).
    pub batch_bytes_max: usize,
    /// First retry delay after a failed relay to a peer; doubles up to the maximum, with
    /// jitter.
    pub retry_min_ms: u64,
    pub retry_max_ms: u64,
    /// Deadline of one call to a peer.
    pub peer_timeout_ms: u64,
    /// How often the leader pulls each peer's directory changes.
    pub directory_pull_ms: u64,
    /// How long after deliver-by a relayed recipient's final outcome may take to come
    /// back before the sender's provider fails it as unacknowledged (added to the
    /// messaging acknowledgement window).
    pub outcome_grace_ms: u64,
    /// Deadlines of remote recipients checked with their provider per worker tick.
    pub status_checks_per_tick_max: usize,
    /// Connections a peer may hold open to this node's relay port at once.
    pub connections_max: usize,
}

impl Default for RelayOptions {
    fn default() -> Self {
        Self {
            batch_messages_max: 256,
            batch_bytes_max: 8 * 1024 * 1024,
            retry_min_ms: 200,
            retry_max_ms: 30_000,
            peer_timeout_ms: 10_000,
            directory_pull_ms: 2_000,
            outcome_grace_ms: 0,
            status_checks_per_tick_max: 64,
            connections_max: 256,
        }
    }
}

fn invalid(field: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        problem: problem.into(),
    }
}

impl FederationConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.relay_listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "federation.relay_listen",
                format!("{:?} is not host:port with an IP host", self.relay_listen),
            ));
        }
        let r = &self.relay;
        if r.batch_messages_max == 0
            || r.batch_messages_max > sealpost_core::federation::RELAY_BATCH_MESSAGES_MAX
        {
            return Err(invalid(
                "federation.relay.batch_messages_max",
                format!(
                    "must be 1 to {}",
                    sealpost_core::federation::RELAY_BATCH_MESSAGES_MAX
                ),
            ));
        }
        for (field, v) in [
            ("federation.relay.batch_bytes_max", r.batch_bytes_max as u64),
            ("federation.relay.retry_min_ms", r.retry_min_ms),
            ("federation.relay.peer_timeout_ms", r.peer_timeout_ms),
            ("federation.relay.directory_pull_ms", r.directory_pull_ms),
            (
                "federation.relay.status_checks_per_tick_max",
                r.status_checks_per_tick_max as u64,
            ),
            ("federation.relay.connections_max", r.connections_max as u64),
        ] {
            if v == 0 {
                return Err(invalid(field, "must be positive"));
            }
        }
        if r.retry_max_ms < r.retry_min_ms {
            return Err(invalid(
                "federation.relay.retry_max_ms",
                "must not be less than retry_min_ms",
            ));
        }
        Ok(())
    }
}

/// One entry of a trust bundle file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerSpec {
    pub provider: String,
    pub ca: PathBuf,
    pub receipt_key: String,
    pub relay_endpoints: Vec<String>,
}

/// A trust bundle file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustBundleFile {
    #[serde(default)]
    pub peers: Vec<PeerSpec>,
}

impl TrustBundleFile {
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a trust bundle always serializes")
    }
}

/// A trusted peer provider, loaded.
#[derive(Clone, Debug)]
pub struct Peer {
    pub provider: String,
    pub ca_pem: String,
    /// The CA certificate's raw subject: a peer's certificate names it as its issuer.
    pub ca_subject: Vec<u8>,
    pub receipt_key: [u8; 32],
    pub relay_endpoints: Vec<String>,
}

/// The peers of a provider, loaded from its trust bundle.
#[derive(Clone, Debug, Default)]
pub struct TrustBundle {
    pub peers: Vec<Peer>,
}

fn bundle_err(path: &Path, problem: impl Into<String>) -> ConfigError {
    ConfigError::Parse {
        path: path.to_path_buf(),
        message: problem.into(),
    }
}

impl TrustBundle {
    /// Reads and checks a trust bundle; `own` is this provider's id, which may not be a
    /// peer of itself.
    pub fn load(path: &Path, own: &str) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let file: TrustBundleFile =
            toml::from_str(&text).map_err(|e| bundle_err(path, e.to_string()))?;
        if file.peers.len() > PEERS_MAX {
            return Err(bundle_err(
                path,
                format!("names {} peers, the limit is {PEERS_MAX}", file.peers.len()),
            ));
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let mut peers: Vec<Peer> = Vec::with_capacity(file.peers.len());
        for spec in file.peers {
            let p = &spec.provider;
            sealpost_core::federation::check_provider("provider", p)
                .map_err(|e| bundle_err(path, format!("peer {p:?}: {e}")))?;
            if p == own {
                return Err(bundle_err(path, format!("peer {p} is this provider")));
            }
            if peers.iter().any(|q| &q.provider == p) {
                return Err(bundle_err(path, format!("peer {p} is listed twice")));
            }
            if spec.relay_endpoints.is_empty() || spec.relay_endpoints.len() > PEER_ENDPOINTS_MAX {
                return Err(bundle_err(
                    path,
                    format!("peer {p}: relay_endpoints must list 1 to {PEER_ENDPOINTS_MAX}"),
                ));
            }
            let ca_path = if spec.ca.is_relative() {
                base.join(&spec.ca)
            } else {
                spec.ca.clone()
            };
            let ca_pem = std::fs::read_to_string(&ca_path).map_err(|source| ConfigError::Read {
                path: ca_path.clone(),
                source,
            })?;
            let ca_subject =
                sealpost_crypto::provider_key::ca_subject(&ca_pem).ok_or_else(|| {
                    bundle_err(
                        path,
                        format!("peer {p}: {} is not a PEM certificate", ca_path.display()),
                    )
                })?;
            if peers.iter().any(|q| q.ca_subject == ca_subject) {
                return Err(bundle_err(
                    path,
                    format!("peer {p}: its CA has the same subject as another peer's"),
                ));
            }
            let receipt_key = sealpost_crypto::provider_key::parse_public_hex(&spec.receipt_key)
                .ok_or_else(|| {
                    bundle_err(
                        path,
                        format!(
                            "peer {p}: receipt_key must be 64 hex characters of an Ed25519 key"
                        ),
                    )
                })?;
            peers.push(Peer {
                provider: p.clone(),
                ca_pem,
                ca_subject,
                receipt_key,
                relay_endpoints: spec.relay_endpoints,
            });
        }
        Ok(Self { peers })
    }

    pub fn peer(&self, provider: &str) -> Option<&Peer> {
        self.peers.iter().find(|p| p.provider == provider)
    }

    /// The peer whose CA issued this certificate (DER).
    pub fn peer_of_certificate(&self, der: &[u8]) -> Option<&Peer> {
        let issuer = sealpost_crypto::provider_key::issuer_of(der)?;
        self.peers.iter().find(|p| p.ca_subject == issuer)
    }

    /// Every peer CA, as one PEM bundle (the relay port's client roots).
    pub fn roots_pem(&self) -> String {
        self.peers.iter().map(|p| p.ca_pem.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sealpost_crypto::provider_key::ProviderKey;
    use sealpost_crypto::tls::DevCa;

    fn write_peer(dir: &Path, name: &str) -> PeerSpec {
        let ca = DevCa::generate(name).expect("ca");
        let ca_path = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&ca_path, ca.cert_pem()).expect("write ca");
        PeerSpec {
            provider: name.into(),
            ca: PathBuf::from(format!("{name}-ca.pem")),
            receipt_key: ProviderKey::generate().expect("key").public_hex(),
            relay_endpoints: vec!["127.0.0.1:7443".into()],
        }
    }

    fn load(dir: &Path, peers: Vec<PeerSpec>) -> Result<TrustBundle, ConfigError> {
        let path = dir.join("bundle.toml");
        std::fs::write(&path, TrustBundleFile { peers }.to_toml()).expect("write bundle");
        TrustBundle::load(&path, "prov-a")
    }

    /// A good bundle loads (CA paths relative to the bundle file); each mistake is refused
    /// with a message naming the peer and the problem.
    #[test]
    fn trust_bundles_are_checked() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path();
        let b = write_peer(dir, "prov-b");
        let c = write_peer(dir, "prov-c");
        let bundle = load(dir, vec![b.clone(), c.clone()]).expect("loads");
        assert_eq!(bundle.peers.len(), 2);
        assert!(bundle.peer("prov-c").is_some());
        assert!(bundle.roots_pem().matches("BEGIN CERTIFICATE").count() == 2);

        let cases: Vec<(Vec<PeerSpec>, &str)> = vec![
            (vec![b.clone(), b.clone()], "listed twice"),
            (
                vec![PeerSpec {
                    provider: "prov-a".into(),
                    ..b.clone()
                }],
                "is this provider",
            ),
            (
                vec![PeerSpec {
                    receipt_key: "zz".into(),
                    ..b.clone()
                }],
                "receipt_key",
            ),
            (
                vec![PeerSpec {
                    relay_endpoints: vec![],
                    ..b.clone()
                }],
                "relay_endpoints",
            ),
            (
                vec![
                    b.clone(),
                    PeerSpec {
                        provider: "prov-d".into(),
                        ..b.clone()
                    },
                ],
                "same subject",
            ),
            (
                vec![PeerSpec {
                    provider: "prov b".into(),
                    ..c.clone()
                }],
                "spaces",
            ),
        ];
        for (peers, expected) in cases {
            let err = load(dir, peers).expect_err(expected).to_string();
            assert!(err.contains(expected), "{expected}: {err}");
        }
        let missing = load(
            dir,
            vec![PeerSpec {
                ca: "nowhere.pem".into(),
                ..b
            }],
        )
        .expect_err("missing CA");
        assert!(missing.to_string().contains("nowhere.pem"), "{missing}");
    }

    #[test]
    fn federation_settings_name_the_bad_field() {
        let good = FederationConfig {
            relay_listen: "127.0.0.1:7443".into(),
            provider_key: "provider-key".into(),
            trust_bundle: "bundle.toml".into(),
            relay: RelayOptions::default(),
        };
        good.validate().expect("valid");
        let mut bad = good.clone();
        bad.relay_listen = "somewhere".into();
        assert!(
            bad.validate()
                .expect_err("listen")
                .to_string()
                .contains("relay_listen")
        );
        let mut bad = good.clone();
        bad.relay.batch_messages_max = 1000;
        assert!(
            bad.validate()
                .expect_err("batch")
                .to_string()
                .contains("batch_messages_max")
        );
        let mut bad = good;
        bad.relay.retry_max_ms = 1;
        assert!(
            bad.validate()
                .expect_err("retry")
                .to_string()
                .contains("retry_max_ms")
        );
    }
}
