//! Client commands: `cluster ...` and `directory ...`, each a gRPC call (or a few) through
//! the chosen profile, printed as text or JSON.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Subcommand;
use sealpost_client::{Client, ClientConfig, Profile};
use sealpost_proto::v1 as pb;

use crate::ClientOpts;
use crate::output::{self, Out};

#[derive(Subcommand, Debug)]
pub enum ClusterCmd {
    /// Nodes, roles, term, log and applied index, event count and chain head of every member.
    Status {
        /// Only this node's own view, without asking the other members.
        #[arg(long)]
        local: bool,
    },
    /// Add a node as a learner, then promote it to voter once it caught up.
    AddNode {
        #[arg(long)]
        id: u64,
        /// host:port the node serves on.
        #[arg(long)]
        addr: String,
        /// Leave it a learner.
        #[arg(long)]
        learner: bool,
    },
    /// Remove a node from the cluster.
    RemoveNode {
        #[arg(long)]
        id: u64,
    },
    /// Build a snapshot on the node this client is connected to.
    Snapshot,
    /// Mint a short-lived operator console token (operators only) and print the console's
    /// address with it: open the link, or paste the token on the console's sign-in page.
    Console {
        /// Minutes the token stays valid (the node caps it at 60).
        #[arg(long, default_value_t = 15)]
        ttl_mins: u32,
    },
    /// Walk the event store of the connected node and check its hash chain.
    Verify,
    /// Stop one node of a running `sealpost dev` cluster.
    StopNode {
        #[arg(long)]
        node: u64,
        /// Provider of the node (default: the profile's provider).
        #[arg(long)]
        provider: Option<String>,
    },
    /// Start a stopped node of a running `sealpost dev` cluster.
    StartNode {
        #[arg(long)]
        node: u64,
        #[arg(long)]
        provider: Option<String>,
    },
}

/// An organisation to register: the `register-org` flags and an import file's
/// `organisation` lines.
#[derive(clap::Args, serde::Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct OrgArgs {
    #[arg(long)]
    hpio: String,
    #[arg(long)]
    name: String,
    #[arg(long)]
    suburb: String,
    /// ACT, NSW, NT, QLD, SA, TAS, VIC or WA.
    #[arg(long)]
    state: String,
    #[arg(long)]
    postcode: String,
    /// Key id to publish.
    #[arg(long, default_value = "k1")]
    #[serde(default = "first_key_id")]
    key_id: String,
    /// X25519 public key, hex, of an organisation that holds its own private keys. With
    /// --signing-key; when both are omitted the provider generates the organisation's
    /// keys and keeps the private halves wrapped under its key-encryption key, so it
    /// can sign, seal and open messages for it.
    #[arg(long, requires = "signing_key")]
    #[serde(default)]
    encryption_key: Option<String>,
    /// Ed25519 public key, hex.
    #[arg(long, requires = "encryption_key")]
    #[serde(default)]
    signing_key: Option<String>,
}

/// An endpoint to publish: the `publish` flags and an import file's `endpoint` lines.
#[derive(clap::Args, serde::Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct EndpointArgs {
    /// <HPI-O>/<service> or <HPI-O>/<HPI-I>.
    #[arg(long)]
    id: String,
    #[arg(long)]
    name: String,
    #[arg(long)]
    specialty: String,
    /// Payload types accepted (REF^I12, ORU^R01, MDM^T02, CDA, FHIR, PDF, TEXT); repeat or
    /// separate with commas.
    #[arg(long = "accepts", value_delimiter = ',', required = true)]
    accepts: Vec<String>,
}

impl EndpointArgs {
    pub fn request(self) -> pb::PublishEndpointRequest {
        pb::PublishEndpointRequest {
            id: self.id,
            display_name: self.name,
            specialty: self.specialty,
            payload_types: self.accepts,
        }
    }
}

fn first_key_id() -> String {
    "k1".into()
}

impl OrgArgs {
    pub fn hpio(&self) -> &str {
        &self.hpio
    }

    /// The registration request (keys hex-decoded; none: the provider generates them).
    pub fn request(self) -> anyhow::Result<pb::RegisterOrganisationRequest> {
        let keys = public_keys(self.key_id, self.encryption_key, self.signing_key)?;
        Ok(pb::RegisterOrganisationRequest {
            organisation: Some(pb::Organisation {
                hpio: self.hpio,
                name: self.name,
                suburb: self.suburb,
                state: self.state,
                postcode: self.postcode,
                keys,
                ..Default::default()
            }),
        })
    }
}

#[derive(Subcommand, Debug)]
pub enum DirectoryCmd {
    /// Register an organisation with its public keys.
    RegisterOrg(OrgArgs),
    /// Publish a service or practitioner endpoint of an organisation.
    Publish(EndpointArgs),
    /// Retire an endpoint: it stops accepting messages.
    Retire {
        #[arg(long)]
        id: String,
        #[arg(long)]
        reason: String,
    },
    /// Rotate an organisation's keys. Without keys the provider generates a new pair for an
    /// organisation whose keys it holds (messages sealed or signed with the old pair still
    /// open and verify); an organisation holding its own keys gives the new public halves.
    RotateKeys {
        #[arg(long)]
        hpio: String,
        /// Key id of the new public keys (with --encryption-key and --signing-key).
        #[arg(long, default_value = "k2")]
        key_id: String,
        /// X25519 public key, hex, of an organisation that holds its own private keys.
        #[arg(long, requires = "signing_key")]
        encryption_key: Option<String>,
        /// Ed25519 public key, hex.
        #[arg(long, requires = "encryption_key")]
        signing_key: Option<String>,
    },
    /// Load organisations and endpoints from a JSON Lines file, one a line:
    /// `{"kind":"organisation","hpio":..,"name":..,"suburb":..,"state":..,"postcode":..}`
    /// (optional `key_id`, `encryption_key`, `signing_key`) or
    /// `{"kind":"endpoint","id":..,"name":..,"specialty":..,"accepts":[..]}`. Existing
    /// entries are skipped; bad lines are reported and the rest goes on.
    Import {
        #[arg(long)]
        file: std::path::PathBuf,
    },
    /// Show an organisation (HPI-O) or an endpoint (<HPI-O>/<local>).
    Show {
        id: String,
        /// Serve from the connected node's applied state, without a read index.
        #[arg(long)]
        local: bool,
    },
    /// Search by name words or identifier, specialty, location and payload type.
    Search {
        /// Name words, an HPI-O or an HPI-I.
        text: Option<String>,
        #[arg(long)]
        specialty: Option<String>,
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        suburb: Option<String>,
        #[arg(long)]
        accepts: Option<String>,
        #[arg(long)]
        include_retired: bool,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long)]
        local: bool,
    },
}

/// The configuration file, its profile name and the profile.
pub fn load_profile(opts: &ClientOpts) -> anyhow::Result<(PathBuf, String, Profile)> {
    let path = opts
        .client_config
        .clone()
        .ok_or(sealpost_client::config::ConfigError::NotGiven)?;
    let cfg = ClientConfig::load(&path)?;
    let (name, profile) = cfg.profile(opts.profile.as_deref(), &path)?;
    Ok((path, name, profile))
}

pub(crate) async fn connect_profile(opts: &ClientOpts) -> anyhow::Result<(Client, Profile)> {
    connect(opts).await
}

async fn connect(opts: &ClientOpts) -> anyhow::Result<(Client, Profile)> {
    let (_, _, profile) = load_profile(opts)?;
    let client = Client::connect(&profile).await?;
    Ok((client, profile))
}

pub(crate) fn status_err(what: &str) -> impl FnOnce(tonic::Status) -> anyhow::Error + '_ {
    move |s| anyhow::anyhow!("{what}: {} ({:?})", s.message(), s.code())
}

pub async fn cluster(opts: &ClientOpts, cmd: ClusterCmd) -> anyhow::Result<()> {
    let out = Out::new(opts.json);
    if let ClusterCmd::StopNode { node, provider } | ClusterCmd::StartNode { node, provider } = &cmd
    {
        let verb = if matches!(cmd, ClusterCmd::StopNode { .. }) {
            "stop-node"
        } else {
            "start-node"
        };
        let (path, _, profile) = load_profile(opts)?;
        let provider = provider
            .clone()
            .or(profile.provider.clone())
            .context("name the node's provider with --provider")?;
        let dir = path
            .parent()
            .context("the client configuration has no folder")?;
        let answer = crate::dev::control(dir, &format!("{verb} {provider} {node}")).await?;
        out.message(&answer, serde_json::json!({ "result": answer }));
        return Ok(());
    }
    let (client, _) = connect(opts).await?;
    let mut admin = client.admin();
    match cmd {
        ClusterCmd::Status { local } => {
            let r = admin
                .status(pb::StatusRequest {
                    all_members: !local,
                })
                .await
                .map_err(status_err("cluster status"))?
                .into_inner();
            output::cluster_status(&out, &client.endpoint, &r);
        }
        ClusterCmd::AddNode { id, addr, learner } => {
            let r = admin
                .add_node(pb::AddNodeRequest {
                    id,
                    addr: addr.clone(),
                    promote: !learner,
                })
                .await
                .map_err(status_err("add node"))?
                .into_inner();
            let role = if learner { "learner" } else { "voter" };
            out.message(
                &format!("node {id} at {addr} added as a {role} (log index {})", r.log_index),
                serde_json::json!({ "id": id, "addr": addr, "role": role, "log_index": r.log_index }),
            );
        }
        ClusterCmd::RemoveNode { id } => {
            let r = admin
                .remove_node(pb::RemoveNodeRequest { id })
                .await
                .map_err(status_err("remove node"))?
                .into_inner();
            out.message(
                &format!("node {id} removed (log index {})", r.log_index),
                serde_json::json!({ "id": id, "log_index": r.log_index }),
            );
        }
        ClusterCmd::Snapshot => {
            let r = admin
                .snapshot(pb::SnapshotRequest {})
                .await
                .map_err(status_err("snapshot"))?
                .into_inner();
            out.message(
                &format!(
                    "snapshot built on {} up to log index {}",
                    client.endpoint, r.snapshot_index
                ),
                serde_json::json!({ "node": client.endpoint, "snapshot_index": r.snapshot_index }),
            );
        }
        ClusterCmd::Console { ttl_mins } => {
            let r = admin
                .console_token(pb::ConsoleTokenRequest {
                    ttl_secs: ttl_mins.saturating_mul(60),
                })
                .await
                .map_err(status_err("console token"))?
                .into_inner();
            let link = format!("{}#token={}", r.console_url, r.token);
            out.message(
                &format!(
                    "console: {link}\n(the token is valid until {} ms since the epoch; keep \
                     the link private)",
                    r.expires_ms
                ),
                serde_json::json!({
                    "console_url": r.console_url,
                    "token": r.token,
                    "expires_ms": r.expires_ms,
                    "link": link,
                }),
            );
        }
        ClusterCmd::Verify => {
            let r = admin
                .verify_chain(pb::VerifyChainRequest {})
                .await
                .map_err(status_err("verify"))?
                .into_inner();
            out.message(
                &if r.ok {
                    format!("chain intact: {} events, head {}", r.events, r.chain_head)
                } else {
                    format!("CHAIN BROKEN: {}", r.problem)
                },
                serde_json::json!({ "ok": r.ok, "events": r.events, "chain_head": r.chain_head, "problem": r.problem }),
            );
            if !r.ok {
                bail!("the hash chain does not verify");
            }
        }
        ClusterCmd::StopNode { .. } | ClusterCmd::StartNode { .. } => {}
    }
    Ok(())
}

/// Public keys given on the command line, or none (the provider generates them).
pub(crate) fn public_keys(
    key_id: String,
    encryption_key: Option<String>,
    signing_key: Option<String>,
) -> anyhow::Result<Option<pb::PublicKeys>> {
    Ok(match (encryption_key, signing_key) {
        (Some(e), Some(s)) => Some(pb::PublicKeys {
            key_id,
            encryption: key_bytes("--encryption-key", &e)?,
            signing: key_bytes("--signing-key", &s)?,
        }),
        _ => None,
    })
}

fn key_bytes(field: &str, hex_str: &str) -> anyhow::Result<Vec<u8>> {
    hex::decode(hex_str.trim()).with_context(|| format!("{field} is not hex"))
}

fn consistency(local: bool) -> i32 {
    if local {
        pb::Consistency::Local as i32
    } else {
        pb::Consistency::Linearizable as i32
    }
}

pub async fn directory(opts: &ClientOpts, cmd: DirectoryCmd) -> anyhow::Result<()> {
    let out = Out::new(opts.json);
    let (client, _) = connect(opts).await?;
    let mut dir = client.directory();
    let written = |out: &Out, what: String, r: pb::WriteResult| {
        out.message(
            &format!("{what} (event {}, log index {})", r.first_seq, r.log_index),
            serde_json::json!({ "result": what, "first_seq": r.first_seq, "event_count": r.event_count, "log_index": r.log_index }),
        );
    };
    match cmd {
        DirectoryCmd::RegisterOrg(org) => {
            let hpio = org.hpio().to_string();
            let r = dir
                .register_organisation(org.request()?)
                .await
                .map_err(status_err("register organisation"))?
                .into_inner();
            written(&out, format!("organisation {hpio} registered"), r);
        }
        DirectoryCmd::Publish(ep) => {
            let request = ep.request();
            let id = request.id.clone();
            let r = dir
                .publish_endpoint(request)
                .await
                .map_err(status_err("publish endpoint"))?
                .into_inner();
            written(&out, format!("endpoint {id} published"), r);
        }
        DirectoryCmd::Retire { id, reason } => {
            let r = dir
                .retire_endpoint(pb::RetireEndpointRequest {
                    id: id.clone(),
                    reason,
                })
                .await
                .map_err(status_err("retire endpoint"))?
                .into_inner();
            written(&out, format!("endpoint {id} retired"), r);
        }
        DirectoryCmd::RotateKeys {
            hpio,
            key_id,
            encryption_key,
            signing_key,
        } => {
            let keys = public_keys(key_id, encryption_key, signing_key)?;
            let r = dir
                .rotate_keys(pb::RotateKeysRequest {
                    hpio: hpio.clone(),
                    keys,
                })
                .await
                .map_err(status_err("rotate keys"))?
                .into_inner();
            written(&out, format!("keys of {hpio} rotated"), r);
        }
        DirectoryCmd::Import { file } => {
            let text = crate::import::read_file(&file)?;
            let report = crate::import::import(&mut dir, &text).await;
            out.message(
                &format!(
                    "imported {} organisations and {} endpoints; {} already there; {} failed{}",
                    report.organisations,
                    report.endpoints,
                    report.skipped,
                    report.failed,
                    report
                        .failures
                        .iter()
                        .map(|f| format!("\n  {f}"))
                        .collect::<String>()
                ),
                serde_json::to_value(&report)?,
            );
            if report.failed > 0 {
                anyhow::bail!("{} of the file's entries were not imported", report.failed);
            }
        }
        DirectoryCmd::Show { id, local } => {
            if id.contains('/') {
                let e = dir
                    .get_endpoint(pb::GetEndpointRequest {
                        id,
                        consistency: consistency(local),
                    })
                    .await
                    .map_err(status_err("show endpoint"))?
                    .into_inner();
                output::endpoints(&out, &[e]);
            } else {
                let o = dir
                    .get_organisation(pb::GetOrganisationRequest {
                        hpio: id,
                        consistency: consistency(local),
                    })
                    .await
                    .map_err(status_err("show organisation"))?
                    .into_inner();
                output::organisation(&out, &o);
            }
        }
        DirectoryCmd::Search {
            text,
            specialty,
            state,
            suburb,
            accepts,
            include_retired,
            limit,
            local,
        } => {
            let r = dir
                .search(pb::SearchRequest {
                    text: text.unwrap_or_default(),
                    specialty: specialty.unwrap_or_default(),
                    state: state.unwrap_or_default(),
                    suburb: suburb.unwrap_or_default(),
                    payload_type: accepts.unwrap_or_default(),
                    include_retired,
                    limit,
                    consistency: consistency(local),
                })
                .await
                .map_err(status_err("search"))?
                .into_inner();
            output::endpoints(&out, &r.endpoints);
        }
    }
    Ok(())
}
