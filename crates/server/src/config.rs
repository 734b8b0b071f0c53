//! Node configuration in layers: a TOML file, then `SEALPOST_*` environment variables, then
//! validation that names the bad field. `sealpost node --dump-config` prints the result.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sealpost_crypto::tls::TlsPaths;
use sealpost_raft::RaftOptions;
use sealpost_store::types::NodeId;
use serde::{Deserialize, Serialize};

/// A member of the cluster: its id and the address peers and clients reach it at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    pub id: NodeId,
    pub addr: String,
}

/// Room a request, reply or Raft entry needs around one payload, in bytes.
pub const ENVELOPE_OVERHEAD_BYTES: usize = 16 * 1024;

/// Limits of the client-facing API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiLimits {
    /// Largest gRPC request or response a client may exchange with this node.
    pub grpc_message_bytes_max: usize,
    /// Client and peer connections open at once; more wait in the listen backlog.
    pub connections_max: usize,
    /// Concurrent requests served per client connection.
    pub requests_per_connection_max: usize,
    /// Concurrent HTTP/2 streams per connection.
    pub streams_per_connection_max: u32,
    /// Deadline for one request, unless the client sets a shorter one.
    pub request_timeout_ms: u64,
    /// Deadline for asking one other member for its status.
    pub member_status_timeout_ms: u64,
    /// How often the node looks for changed TLS files (CA bundle, certificate, key, CRL)
    /// and rebuilds its TLS configuration for new connections.
    pub tls_reload_ms: u64,
    /// How often the node writes its denial counts to the log as one `AccessDenied` event.
    pub denial_summary_ms: u64,
    /// Messages one organisation may send through this node per second, sustained (a token
    /// bucket); 0 turns the limit off. Excess sends get ResourceExhausted.
    pub send_rate_per_org_per_s: u32,
    /// The bucket's size: messages one organisation may send at once before the rate
    /// applies.
    pub send_burst_per_org: u32,
    /// Free bytes the file systems of this node's store folders must keep: below it, new
    /// messages (sends, relays from peers) get ResourceExhausted while messages already
    /// accepted still complete. 0 turns the floor off.
    pub storage_free_bytes_min: u64,
}

impl Default for ApiLimits {
    fn default() -> Self {
        Self {
            grpc_message_bytes_max: 32 * 1024 * 1024,
            connections_max: 4096,
            requests_per_connection_max: 1024,
            streams_per_connection_max: 1024,
            request_timeout_ms: 30_000,
            member_status_timeout_ms: 2_000,
            tls_reload_ms: 5_000,
            denial_summary_ms: 10_000,
            send_rate_per_org_per_s: 500,
            send_burst_per_org: 1_000,
            storage_free_bytes_min: 1024 * 1024 * 1024,
        }
    }
}

/// Messaging limits and deadlines.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MessagingOptions {
    /// Largest payload a sender may submit, in bytes.
    pub payload_bytes_max: u64,
    /// Deliver-by when the sender names none: this long after sending.
    pub deliver_within_ms_default: u64,
    /// Longest deliver-by a sender may ask for, from sending.
    pub deliver_within_ms_max: u64,
    /// How long a routed message may wait for its acknowledgement.
    pub ack_window_ms: u64,
    /// How often the leader looks for due deadlines and undelivered messages even when no
    /// new event arrives.
    pub worker_tick_ms: u64,
    /// Recipients the delivery worker has in flight (opened, or waiting for their verdict
    /// to commit). Under load one log entry takes many of them at once, so this bounds the
    /// routing rate; opening itself is bounded separately (`delivery::OPENS_IN_FLIGHT_MAX`).
    pub deliveries_in_flight_max: usize,
    /// Envelopes this node seals at the same time; further sends wait. About the number of
    /// cores: sealing beyond that only queues, and starves the delivery worker's opening.
    pub seals_in_flight_max: usize,
    /// Most items one inbox or outbox listing returns.
    pub listing_items_max: u32,
    /// Longest a follow stream stays open before the client resumes from its cursor.
    pub follow_stream_ms_max: u64,
    /// Payloads (ciphertexts) are dropped from the event store this long after their
    /// message was sent or received; the chain, the audit records and every status remain.
    /// 0 keeps payloads for ever. Must exceed `deliver_within_ms_max + ack_window_ms`, so
    /// no payload still owed to a recipient is dropped.
    pub payload_retention_ms: u64,
}

impl Default for MessagingOptions {
    fn default() -> Self {
        Self {
            payload_bytes_max: sealpost_core::message::PAYLOAD_BYTES_DEFAULT_MAX,
            deliver_within_ms_default: 24 * 3600 * 1000,
            deliver_within_ms_max: 30 * 24 * 3600 * 1000,
            ack_window_ms: 7 * 24 * 3600 * 1000,
            worker_tick_ms: 1000,
            deliveries_in_flight_max: 4096,
            seals_in_flight_max: 4,
            listing_items_max: 1000,
            follow_stream_ms_max: 3600 * 1000,
            payload_retention_ms: 0,
        }
    }
}

impl MessagingOptions {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.payload_bytes_max == 0
            || self.payload_bytes_max > sealpost_core::message::PAYLOAD_BYTES_HARD_MAX
        {
            return Err(invalid(
                "messaging.payload_bytes_max",
                format!(
                    "must be 1 to {} bytes",
                    sealpost_core::message::PAYLOAD_BYTES_HARD_MAX
                ),
            ));
        }
        for (field, v) in [
            (
                "messaging.deliver_within_ms_default",
                self.deliver_within_ms_default,
            ),
            (
                "messaging.deliver_within_ms_max",
                self.deliver_within_ms_max,
            ),
            ("messaging.ack_window_ms", self.ack_window_ms),
            ("messaging.worker_tick_ms", self.worker_tick_ms),
            ("messaging.follow_stream_ms_max", self.follow_stream_ms_max),
        ] {
            if v == 0 {
                return Err(invalid(field, "must be positive"));
            }
        }
        if self.deliver_within_ms_default > self.deliver_within_ms_max {
            return Err(invalid(
                "messaging.deliver_within_ms_default",
                "must not exceed messaging.deliver_within_ms_max",
            ));
        }
        let owed_ms = self
            .deliver_within_ms_max
            .saturating_add(self.ack_window_ms);
        if self.payload_retention_ms != 0 && self.payload_retention_ms <= owed_ms {
            return Err(invalid(
                "messaging.payload_retention_ms",
                format!(
                    "must be 0 (keep for ever) or more than deliver_within_ms_max + \
                     ack_window_ms ({owed_ms} ms), so no payload still owed to a recipient is \
                     dropped"
                ),
            ));
        }
        if self.deliveries_in_flight_max == 0
            || self.seals_in_flight_max == 0
            || self.listing_items_max == 0
        {
            return Err(invalid(
                "messaging.deliveries_in_flight_max",
                "limits must be positive",
            ));
        }
        Ok(())
    }
}

/// Most runtime threads a node may be configured with (`worker_threads`).
pub const WORKER_THREADS_MAX: usize = 1024;

/// One node's configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub id: NodeId,
    /// The provider this cluster serves; also the Raft cluster name.
    pub provider: String,
    pub data_dir: PathBuf,
    /// A folder of its own for this node's Raft log (which goes in `raft-log` under it),
    /// best on a file system of its own, like etcd's `--wal-dir`: the log's fsync, which
    /// every write waits for, then no longer queues behind the state machine's flushes
    /// and compactions in a shared file system journal. Default: the log stays in
    /// `data_dir`. Set it when the node is first started (or restored); moving a log later
    /// means moving its folder too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raft_log_dir: Option<PathBuf>,
    /// Threads of the node's async runtime (gRPC, Raft, the workers); the crypto threads
    /// are apart. Default: one per core. Nodes that share a machine (a local cluster, the
    /// benchmark) do better with the cores divided among them: an idle runtime thread is
    /// woken to look for work whenever another has more than it can run, and across
    /// processes on a busy machine those wake-ups cost more CPU than the work they find
    /// (BENCHMARKS.md, session 30). Read by `sealpost node` when it starts; a node started
    /// inside another program runs on that program's runtime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_threads: Option<usize>,
    /// Address to bind (host:port).
    pub listen: String,
    /// Address peers and clients use to reach this node; defaults to `listen`.
    #[serde(default)]
    pub advertise: Option<String>,
    /// Address of the plain-HTTP operations listener (`/metrics`, `/health`, `/ready`);
    /// none when absent. Bind it to a monitoring network or loopback, not the internet.
    #[serde(default)]
    pub http_listen: Option<String>,
    /// Serve the operations listener over HTTPS with the node's certificate (`[tls]`,
    /// re-read when the files change); clients need the CA, not a certificate of their own.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub http_tls: bool,
    /// For rolling-upgrade tests only: report to peers that this node understands events
    /// only up to this version (at most the build's), as an older build would.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise_event_version: Option<u16>,
    /// The voters of a new cluster. Every initial member lists the same set; a node that
    /// joins later (added as a learner) leaves it empty.
    #[serde(default)]
    pub initial_members: Vec<Member>,
    /// Addresses of other nodes known to this one (they win over addresses in membership).
    #[serde(default)]
    pub peers: Vec<Member>,
    pub tls: TlsPaths,
    /// The provider's key-encryption key (the same file on every node of the provider).
    pub kek: PathBuf,
    /// Instead of the `kek` file: the name of an environment variable holding the KEK as
    /// 64 hex characters (for secret stores that inject variables). The configuration
    /// names the variable, never the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kek_env: Option<String>,
    /// During a KEK rotation: the provider's previous KEK files, which still unwrap the key
    /// sets wrapped under them until `sealpost admin rewrap-keys` has wrapped every one
    /// under the current KEK (`kek`). At most [`crate::keystore::PREVIOUS_KEKS_MAX`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous_keks: Vec<PathBuf>,
    /// The provider's Ed25519 signing key (the same file on every node): it signs audit
    /// checkpoints and, with federation, transport receipts. Without it (and without
    /// `federation.provider_key`) the node serves no checkpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_key: Option<PathBuf>,
    #[serde(default)]
    pub raft: RaftOptions,
    #[serde(default)]
    pub api: ApiLimits,
    #[serde(default)]
    pub messaging: MessagingOptions,
    /// Relay to and from peer providers; none: this provider stands alone.
    #[serde(default)]
    pub federation: Option<crate::federation::FederationConfig>,
    /// HL7 v2 over MLLP listeners for clinical systems (`[[mllp]]`).
    #[serde(default)]
    pub mllp: Vec<crate::mllp::MllpListenerConfig>,
    /// Endpoints whose messages are pushed to a clinical system over MLLP.
    #[serde(default)]
    pub mllp_destinations: Vec<crate::mllp_out::MllpDestination>,
    /// Sending systems told their messages' outcomes over MLLP.
    #[serde(default)]
    pub mllp_notify: Vec<crate::mllp_notify::MllpNotifyTarget>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid node configuration: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("environment variable {name}: {problem}")]
    Env { name: String, problem: String },
    #[error("--set {setting}: {problem}")]
    Flag { setting: String, problem: String },
    #[error("node configuration field {field}: {problem}")]
    Invalid {
        field: &'static str,
        problem: String,
    },
}

/// Top-level keys of a node configuration that `SEALPOST_*` variables may set (sections
/// through `__`: `SEALPOST_API__SEND_RATE_PER_ORG_PER_S`). Other `SEALPOST_*` variables
/// (`SEALPOST_LOG`, `SEALPOST_CLIENT_CONFIG`, ...) belong to other parts and are ignored.
pub const ENV_KEYS: &[&str] = &[
    "id",
    "provider",
    "data_dir",
    "raft_log_dir",
    "worker_threads",
    "listen",
    "advertise",
    "http_listen",
    "http_tls",
    "initial_members",
    "peers",
    "kek",
    "kek_env",
    "previous_keks",
    "provider_key",
    "raft",
    "api",
    "messaging",
    "tls",
];

/// The configuration key a `SEALPOST_*` variable sets, if any: `SEALPOST_NODE_ID` is `id`;
/// otherwise the rest of the name in lower case, `__` between a section and its field.
pub fn env_key(name: &str) -> Option<String> {
    let rest = name.strip_prefix("SEALPOST_")?;
    let key = match rest {
        "NODE_ID" => "id".to_string(),
        _ => rest.to_ascii_lowercase().replace("__", "."),
    };
    let top = key.split('.').next().unwrap_or("");
    ENV_KEYS.contains(&top).then_some(key)
}

/// Sets `key` (a dotted path) in `table` to `raw` read as a TOML value (a number, a
/// boolean, a quoted string, an array); anything else is taken as a plain string.
fn set_key(table: &mut toml::Table, key: &str, raw: &str) -> Result<(), String> {
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(format!("{key:?} is not a key path"));
    }
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let (last, sections) = parts
        .split_last()
        .ok_or_else(|| "an empty key".to_string())?;
    let mut at = table;
    for s in sections {
        let entry = at
            .entry((*s).to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        at = entry
            .as_table_mut()
            .ok_or_else(|| format!("{s} is not a section, so {key} cannot be set"))?;
    }
    at.insert((*last).to_string(), value);
    Ok(())
}

fn invalid(field: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        problem: problem.into(),
    }
}

impl NodeConfig {
    /// Reads the file, applies the `SEALPOST_*` environment, validates.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_layered(path, std::env::vars(), &[])
    }

    /// The file, then the environment (`env`: every variable; see [`env_key`] for the ones
    /// that count), then `sets` (`key.path=value`, the `--set` flags): each layer wins over
    /// the one before. Then relative paths are taken from the file's folder and the result
    /// is validated. Every error names the variable, flag or field at fault.
    pub fn load_layered(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
        sets: &[String],
    ) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let parse_err = |message: String| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        };
        let mut table: toml::Table =
            toml::from_str(&text).map_err(|e: toml::de::Error| parse_err(e.to_string()))?;
        let mut overridden = false;
        let mut env: Vec<(String, String)> = env.into_iter().collect();
        env.sort();
        for (name, raw) in env {
            let Some(key) = env_key(&name) else { continue };
            set_key(&mut table, &key, &raw)
                .map_err(|problem| ConfigError::Env { name, problem })?;
            overridden = true;
        }
        for setting in sets {
            let flag_err = |problem: String| ConfigError::Flag {
                setting: setting.clone(),
                problem,
            };
            let (key, raw) = setting
                .split_once('=')
                .ok_or_else(|| flag_err("expected key.path=value".into()))?;
            set_key(&mut table, key.trim(), raw.trim()).map_err(flag_err)?;
            overridden = true;
        }
        // With overrides, the merged document is parsed again, so an error still quotes
        // the offending key and value (its line numbers are then the merged document's).
        let mut cfg: NodeConfig = if overridden {
            let merged = toml::to_string(&table).map_err(|e| parse_err(e.to_string()))?;
            toml::from_str(&merged).map_err(|e: toml::de::Error| {
                parse_err(format!("after the environment and flags: {e}"))
            })?
        } else {
            toml::from_str(&text).map_err(|e: toml::de::Error| parse_err(e.to_string()))?
        };
        // Relative paths are relative to the configuration file.
        let base = path.parent().unwrap_or(Path::new("."));
        let mut paths = vec![
            &mut cfg.data_dir,
            &mut cfg.tls.ca,
            &mut cfg.tls.cert,
            &mut cfg.tls.key,
            &mut cfg.kek,
        ];
        if let Some(c) = cfg.tls.crl.as_mut() {
            paths.push(c);
        }
        if let Some(d) = cfg.raft_log_dir.as_mut() {
            paths.push(d);
        }
        if let Some(k) = cfg.provider_key.as_mut() {
            paths.push(k);
        }
        if let Some(f) = cfg.federation.as_mut() {
            paths.push(&mut f.provider_key);
            paths.push(&mut f.trust_bundle);
        }
        paths.extend(cfg.previous_keks.iter_mut());
        for p in paths {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.id == 0 {
            return Err(invalid("id", "must be a positive integer"));
        }
        if let Some(n) = self.worker_threads
            && !(1..=WORKER_THREADS_MAX).contains(&n)
        {
            return Err(invalid(
                "worker_threads",
                format!("{n} is not between 1 and {WORKER_THREADS_MAX}"),
            ));
        }
        let previous_max = crate::keystore::PREVIOUS_KEKS_MAX;
        if self.previous_keks.len() > previous_max {
            return Err(invalid(
                "previous_keks",
                format!(
                    "lists {} files, the limit is {previous_max}",
                    self.previous_keks.len()
                ),
            ));
        }
        if let Some(v) = self.advertise_event_version {
            let current = sealpost_core::event::EVENT_VERSION_CURRENT;
            if v == 0 || v > current {
                return Err(invalid(
                    "advertise_event_version",
                    format!("{v} is not between 1 and this build's event version {current}"),
                ));
            }
        }
        if let (Some(top), Some(f)) = (&self.provider_key, &self.federation)
            && top != &f.provider_key
        {
            return Err(invalid(
                "provider_key",
                format!(
                    "{} differs from federation.provider_key {}; a provider has one signing key",
                    top.display(),
                    f.provider_key.display()
                ),
            ));
        }
        sealpost_core::directory::check_text("provider", &self.provider, 64)
            .map_err(|e| invalid("provider", e.problem))?;
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "listen",
                format!("{:?} is not host:port with an IP host", self.listen),
            ));
        }
        let mut ids = std::collections::BTreeSet::new();
        for m in &self.initial_members {
            if !ids.insert(m.id) {
                return Err(invalid(
                    "initial_members",
                    format!("node {} is listed twice", m.id),
                ));
            }
        }
        if !self.initial_members.is_empty() && !ids.contains(&self.id) {
            return Err(invalid(
                "initial_members",
                format!("does not include this node ({})", self.id),
            ));
        }
        self.raft
            .validate()
            .map_err(|e| invalid("raft", e.to_string()))?;
        if self.api.grpc_message_bytes_max == 0 {
            return Err(invalid("api.grpc_message_bytes_max", "must be positive"));
        }
        if self.api.connections_max == 0 {
            return Err(invalid("api.connections_max", "must be positive"));
        }
        for (field, v) in [
            ("api.tls_reload_ms", self.api.tls_reload_ms),
            ("api.denial_summary_ms", self.api.denial_summary_ms),
            ("api.request_timeout_ms", self.api.request_timeout_ms),
        ] {
            if v == 0 {
                return Err(invalid(field, "must be positive"));
            }
        }
        if self.api.send_rate_per_org_per_s > 0 && self.api.send_burst_per_org == 0 {
            return Err(invalid(
                "api.send_burst_per_org",
                "must be positive when api.send_rate_per_org_per_s is set (0 would refuse every send)",
            ));
        }
        self.messaging.validate()?;
        if let Some(f) = &self.federation {
            f.validate()?;
        }
        for m in &self.mllp {
            m.validate()?;
        }
        for d in &self.mllp_destinations {
            d.validate()?;
        }
        for t in &self.mllp_notify {
            t.validate()?;
        }
        // A payload travels whole in a send request and a fetch reply, and sealed in a
        // Raft entry: each limit must leave room for it.
        let payload = self.messaging.payload_bytes_max as usize;
        if payload + ENVELOPE_OVERHEAD_BYTES > self.api.grpc_message_bytes_max {
            return Err(invalid(
                "messaging.payload_bytes_max",
                format!(
                    "{payload} bytes does not fit api.grpc_message_bytes_max ({} bytes) with \
                     {ENVELOPE_OVERHEAD_BYTES} bytes of overhead",
                    self.api.grpc_message_bytes_max
                ),
            ));
        }
        if payload + ENVELOPE_OVERHEAD_BYTES > self.raft.batch_bytes_max {
            return Err(invalid(
                "messaging.payload_bytes_max",
                format!(
                    "{payload} bytes does not fit raft.batch_bytes_max ({} bytes) once sealed",
                    self.raft.batch_bytes_max
                ),
            ));
        }
        Ok(())
    }

    pub fn advertise_addr(&self) -> String {
        self.advertise
            .clone()
            .unwrap_or_else(|| self.listen.clone())
    }

    /// Peer addresses this node knows from its own configuration.
    pub fn peer_map(&self) -> BTreeMap<NodeId, String> {
        self.initial_members
            .iter()
            .chain(&self.peers)
            .map(|m| (m.id, m.addr.clone()))
            .collect()
    }

    /// The provider signing key's file: `provider_key`, else `federation.provider_key`.
    pub fn provider_key_path(&self) -> Option<&Path> {
        self.provider_key
            .as_deref()
            .or(self.federation.as_ref().map(|f| f.provider_key.as_path()))
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a node configuration always serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> NodeConfig {
        NodeConfig {
            id: 1,
            provider: "prov-a".into(),
            data_dir: "/tmp/x".into(),
            raft_log_dir: None,
            worker_threads: None,
            listen: "127.0.0.1:7001".into(),
            advertise: None,
            http_listen: None,
            http_tls: false,
            advertise_event_version: None,
            initial_members: vec![Member {
                id: 1,
                addr: "127.0.0.1:7001".into(),
            }],
            peers: vec![],
            tls: TlsPaths {
                ca: "ca.pem".into(),
                cert: "node.pem".into(),
                key: "node-key.pem".into(),
                crl: None,
            },
            kek: "kek".into(),
            kek_env: None,
            previous_keks: Vec::new(),
            provider_key: None,
            raft: RaftOptions::default(),
            api: ApiLimits::default(),
            messaging: MessagingOptions::default(),
            federation: None,
            mllp: Vec::new(),
            mllp_destinations: Vec::new(),
            mllp_notify: Vec::new(),
        }
    }

    #[test]
    fn round_trips() {
        let c = sample();
        let back: NodeConfig = toml::from_str(&c.to_toml()).expect("parse");
        assert_eq!(back, c);
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect()
    }

    fn sample_file() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("node.toml");
        std::fs::write(&path, sample().to_toml()).expect("write");
        (dir, path)
    }

    /// The file, then the environment, then `--set`: each wins over the one before, and
    /// variables of other parts are left alone.
    #[test]
    fn the_environment_overrides_the_file_and_flags_override_both() {
        let (_dir, path) = sample_file();
        let vars = env(&[
            ("SEALPOST_NODE_ID", "7"),
            (
                "SEALPOST_INITIAL_MEMBERS",
                "[{ id = 7, addr = \"127.0.0.1:9\" }]",
            ),
            ("SEALPOST_LISTEN", "127.0.0.1:9"),
            ("SEALPOST_HTTP_LISTEN", "127.0.0.1:9464"),
            ("SEALPOST_API__SEND_RATE_PER_ORG_PER_S", "20"),
            ("SEALPOST_API__SEND_BURST_PER_ORG", "40"),
            ("SEALPOST_LOG", "debug"),
            ("SEALPOST_CLIENT_CONFIG", "/nowhere"),
            ("SEALPOST_BIN", "/nowhere"),
        ]);
        let sets = ["api.send_rate_per_org_per_s=30".to_string()];
        let c = NodeConfig::load_layered(&path, vars, &sets).expect("load");
        assert_eq!(c.id, 7);
        assert_eq!(c.listen, "127.0.0.1:9");
        assert_eq!(c.http_listen.as_deref(), Some("127.0.0.1:9464"));
        assert_eq!(c.api.send_rate_per_org_per_s, 30, "the flag wins");
        assert_eq!(
            c.api.send_burst_per_org, 40,
            "the environment wins over the file"
        );
        assert_eq!(c.provider, sample().provider, "the file holds the rest");
    }

    /// `raft_log_dir` comes from the environment like `data_dir`, a relative one is taken
    /// from the configuration file's folder, and the file round-trips with it.
    #[test]
    fn the_raft_log_dir_is_read_from_the_environment_relative_to_the_file() {
        let (dir, path) = sample_file();
        let vars = env(&[("SEALPOST_RAFT_LOG_DIR", "wal")]);
        let c = NodeConfig::load_layered(&path, vars, &[]).expect("load");
        assert_eq!(c.raft_log_dir, Some(dir.path().join("wal")));
        let back: NodeConfig = toml::from_str(&c.to_toml()).expect("parse");
        assert_eq!(back.raft_log_dir, c.raft_log_dir);
        let unset = NodeConfig::load_layered(&path, env(&[]), &[]).expect("load");
        assert_eq!(unset.raft_log_dir, None);
        assert!(!unset.to_toml().contains("raft_log_dir"));
    }

    #[test]
    fn worker_threads_are_set_by_flag_or_environment_and_bounded() {
        let (_dir, path) = sample_file();
        let unset = NodeConfig::load_layered(&path, env(&[]), &[]).expect("load");
        assert_eq!(unset.worker_threads, None);
        assert!(!unset.to_toml().contains("worker_threads"));
        let c = NodeConfig::load_layered(&path, env(&[("SEALPOST_WORKER_THREADS", "3")]), &[])
            .expect("load");
        assert_eq!(c.worker_threads, Some(3));
        let back: NodeConfig = toml::from_str(&c.to_toml()).expect("parse");
        assert_eq!(back.worker_threads, Some(3));
        let c = NodeConfig::load_layered(&path, env(&[]), &["worker_threads=1".to_string()])
            .expect("load");
        assert_eq!(c.worker_threads, Some(1));
        for bad in ["0", "1025"] {
            let e = NodeConfig::load_layered(&path, env(&[]), &[format!("worker_threads={bad}")])
                .expect_err("out of range")
                .to_string();
            assert!(e.contains("worker_threads") && e.contains(bad), "{e}");
        }
    }

    /// `http_tls` is off unless set (and then absent from the file), settable by the
    /// environment, and round-trips.
    #[test]
    fn http_tls_is_off_by_default_and_set_by_the_environment() {
        let (_dir, path) = sample_file();
        let unset = NodeConfig::load_layered(&path, env(&[]), &[]).expect("load");
        assert!(!unset.http_tls);
        assert!(!unset.to_toml().contains("http_tls"));
        let c = NodeConfig::load_layered(&path, env(&[("SEALPOST_HTTP_TLS", "true")]), &[])
            .expect("load");
        assert!(c.http_tls);
        let back: NodeConfig = toml::from_str(&c.to_toml()).expect("parse");
        assert!(back.http_tls);
    }

    /// A KEK rotation's previous KEKs: relative to the file, settable by flag, round-trip,
    /// absent from the file when none, and bounded.
    #[test]
    fn previous_keks_are_relative_to_the_file_and_bounded() {
        let (dir, path) = sample_file();
        let unset = NodeConfig::load_layered(&path, env(&[]), &[]).expect("load");
        assert!(unset.previous_keks.is_empty());
        assert!(!unset.to_toml().contains("previous_keks"));
        let c = NodeConfig::load_layered(
            &path,
            env(&[]),
            &["previous_keks=[\"old-kek\", \"/abs/kek\"]".to_string()],
        )
        .expect("load");
        assert_eq!(
            c.previous_keks,
            vec![dir.path().join("old-kek"), PathBuf::from("/abs/kek")]
        );
        let back: NodeConfig = toml::from_str(&c.to_toml()).expect("parse");
        assert_eq!(back.previous_keks, c.previous_keks);
        let five = format!(
            "previous_keks=[{}]",
            ["\"k\""; crate::keystore::PREVIOUS_KEKS_MAX + 1].join(", ")
        );
        let e = NodeConfig::load_layered(&path, env(&[]), &[five])
            .expect_err("too many")
            .to_string();
        assert!(
            e.contains("previous_keks") && e.contains("limit is 4"),
            "{e}"
        );
    }

    /// A bad value or an unknown key is refused naming the variable, flag and field.
    #[test]
    fn bad_overrides_name_what_is_wrong() {
        let (_dir, path) = sample_file();
        let load = |vars: &[(&str, &str)], sets: &[&str]| {
            let sets: Vec<String> = sets.iter().map(|s| (*s).to_string()).collect();
            NodeConfig::load_layered(&path, env(vars), &sets)
                .expect_err("must be refused")
                .to_string()
        };
        let e = load(&[("SEALPOST_NODE_ID", "x")], &[]);
        assert!(e.contains("id"), "{e}");
        let e = load(&[("SEALPOST_API__SEND_RATE", "1")], &[]);
        assert!(e.contains("send_rate"), "{e}");
        let e = load(&[], &["api.send_burst_per_org"]);
        assert!(e.contains("--set api.send_burst_per_org"), "{e}");
        let e = load(&[], &["provider.x=1"]);
        assert!(e.contains("provider is not a section"), "{e}");
        let e = load(&[], &["api.send_burst_per_org=many"]);
        assert!(e.contains("send_burst_per_org"), "{e}");
    }

    #[test]
    fn validation_names_the_field() {
        let mut c = sample();
        c.id = 0;
        assert!(
            c.validate()
                .expect_err("must be invalid")
                .to_string()
                .contains("field id")
        );
        let mut c = sample();
        c.initial_members[0].id = 2;
        assert!(
            c.validate()
                .expect_err("must be invalid")
                .to_string()
                .contains("initial_members")
        );
        let mut c = sample();
        c.messaging.payload_bytes_max = 40 * 1024 * 1024;
        let err = c.validate().expect_err("must be invalid").to_string();
        assert!(err.contains("messaging.payload_bytes_max"), "{err}");
        assert!(err.contains("grpc_message_bytes_max"), "{err}");
        let mut c = sample();
        c.api.connections_max = 0;
        let err = c.validate().expect_err("must be invalid").to_string();
        assert!(err.contains("api.connections_max"), "{err}");
        let mut c = sample();
        c.listen = "nowhere".into();
        assert!(
            c.validate()
                .expect_err("must be invalid")
                .to_string()
                .contains("listen")
        );
    }
}
