//! `client.toml`: named profiles, each with the endpoints of one provider's nodes, the CA
//! that verifies them, a client certificate and key, and optionally the organisation the
//! profile acts for.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sealpost_crypto::tls::TlsPaths;
use serde::{Deserialize, Serialize};

/// Environment variable naming the client configuration file.
pub const CLIENT_CONFIG_ENV: &str = "SEALPOST_CLIENT_CONFIG";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// host:port of each node to try, in order.
    pub endpoints: Vec<String>,
    #[serde(flatten)]
    pub tls: TlsPaths,
    /// HPI-O of the organisation this profile acts for, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organisation: Option<String>,
    /// Endpoint address (`<HPI-O>/<local>`) used when a command needs one and none is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_endpoint: Option<String>,
    /// The provider this profile talks to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// Profile used when `--as` is not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_profile: Option<String>,
    #[serde(default)]
    pub profiles: BTreeMap<String, Profile>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no client configuration: pass --client-config FILE or set {CLIENT_CONFIG_ENV}")]
    NotGiven,
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid client configuration: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("profile {name:?} is not in {path} (it has: {known})")]
    UnknownProfile {
        name: String,
        path: PathBuf,
        known: String,
    },
    #[error("{path} has {count} profiles and no default_profile: pick one with --as")]
    Ambiguous { path: PathBuf, count: usize },
    #[error("profile {0:?} lists no endpoints")]
    NoEndpoints(String),
}

impl ClientConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut cfg: ClientConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        // Relative paths are relative to the file, so a dev folder can move.
        let base = path.parent().unwrap_or(Path::new("."));
        for p in cfg.profiles.values_mut() {
            for f in [&mut p.tls.ca, &mut p.tls.cert, &mut p.tls.key] {
                if f.is_relative() {
                    *f = base.join(&*f);
                }
            }
        }
        Ok(cfg)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a client configuration always serializes")
    }

    /// The named profile, or the default one.
    pub fn profile(
        &self,
        name: Option<&str>,
        path: &Path,
    ) -> Result<(String, Profile), ConfigError> {
        let name = match name.or(self.default_profile.as_deref()) {
            Some(n) => n.to_string(),
            None if self.profiles.len() == 1 => {
                self.profiles.keys().next().cloned().unwrap_or_default()
            }
            None => {
                return Err(ConfigError::Ambiguous {
                    path: path.to_path_buf(),
                    count: self.profiles.len(),
                });
            }
        };
        let p = self
            .profiles
            .get(&name)
            .cloned()
            .ok_or_else(|| ConfigError::UnknownProfile {
                name: name.clone(),
                path: path.to_path_buf(),
                known: self.profiles.keys().cloned().collect::<Vec<_>>().join(", "),
            })?;
        if p.endpoints.is_empty() {
            return Err(ConfigError::NoEndpoints(name));
        }
        Ok((name, p))
    }
}
