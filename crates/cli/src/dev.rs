//! `sealpost dev`: the embedded default. N providers (two by default), each an N-node
//! cluster with its own CA, receipt key and relay ports, trusting each other, all in this
//! process on loopback with real gRPC and TLS, laid out as `DIR/<provider>/node-<id>`; demo
//! organisations at every provider (each provider's directory lists its peers' too);
//! `DIR/client.toml` with a profile per demo organisation (at the provider that hosts it)
//! and an admin profile per provider; and a control socket (`DIR/control.sock`) through
//! which `sealpost cluster stop-node / start-node` act on the running nodes.
//!
//! Also `sealpost certs`, which writes a provider's CA and certificates for clusters run as
//! separate processes (`cluster/local/`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use sealpost_client::{Client, ClientConfig, Profile};
use sealpost_core::ids::{HpiI, HpiO};
use sealpost_crypto::tls::{DevCa, Role, Subject, TlsPaths, write_file};
use sealpost_proto::v1 as pb;
use sealpost_raft::RaftOptions;
use sealpost_server::config::{ApiLimits, MessagingOptions};
use sealpost_server::federation::RelayOptions;
use sealpost_server::local::LocalCluster;
use sealpost_server::mllp::MllpListenerConfig;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::Mutex;

/// The file that marks a folder as a `sealpost dev` folder and records its shape.
pub const DEV_MARKER: &str = "sealpost-dev.toml";
/// The control socket of a running dev cluster.
pub const CONTROL_SOCKET: &str = "control.sock";
/// Longest control command, in bytes.
pub const CONTROL_LINE_BYTES_MAX: usize = 256;
/// Most providers and nodes per provider `dev` runs.
pub const DEV_PROVIDERS_MAX: usize = 8;
pub const DEV_NODES_MAX: u64 = 9;
/// How long `dev` waits for each provider to elect a leader.
pub const LEADER_WAIT_MS: u64 = 20_000;
/// How long `dev` waits for each provider's directory to list every demo organisation.
pub const DIRECTORY_WAIT_MS: u64 = 30_000;

#[derive(Args, Debug)]
pub struct DevArgs {
    /// Folder holding the cluster; created if missing, resumed if it holds one.
    #[arg(long)]
    data: PathBuf,
    /// Number of providers (default 2, or what the folder holds); each trusts the others.
    #[arg(long)]
    providers: Option<usize>,
    /// Nodes per provider (default 3, or what the folder holds).
    #[arg(long)]
    nodes: Option<u64>,
    /// Exit after start-up and seeding instead of serving until interrupted.
    #[arg(long, hide = true)]
    exit_after_start: bool,
}

#[derive(Args, Debug)]
pub struct CertsArgs {
    /// Folder to write ca.pem, node-N.pem / node-N-key.pem, clients/, the provider's
    /// key-encryption key (kek) and receipt-signing key (provider-key) into. Existing files
    /// are kept.
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    provider: String,
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Host names and IP addresses the nodes are reached at.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1,localhost")]
    hosts: Vec<String>,
    /// Client certificates to issue: NAME (an operator), NAME=operator, NAME=auditor, or
    /// NAME=HPI-O for a client that acts for an organisation (it may send and receive as
    /// that organisation).
    #[arg(long, value_delimiter = ',', default_value = "admin")]
    clients: Vec<String>,
    /// Revoke these certificates (PEM files): their serials join `revoked` and `ca.crl` is
    /// rewritten; nodes whose `[tls] crl` names it refuse them within `api.tls_reload_ms`.
    #[arg(long)]
    revoke: Vec<PathBuf>,
    /// Onboarding: sign this PKCS#10 request (PEM) with the CA, for `--csr-for`, into
    /// `clients/<--csr-name>.pem`; the requester keeps its private key.
    #[arg(long, requires_all = ["csr_name", "csr_for"])]
    csr: Option<PathBuf>,
    /// The name of the certificate `--csr` makes.
    #[arg(long)]
    csr_name: Option<String>,
    /// Whom the certificate `--csr` makes is for: an HPI-O, `operator` or `auditor`.
    #[arg(long)]
    csr_for: Option<String>,
    /// A KEK rotation's first step: write a new key-encryption key to this file (which
    /// must not exist) and print its id. The provider's `kek` in `--out` is left as it is.
    #[arg(long)]
    new_kek: Option<PathBuf>,
}

/// An organisation (HPI-O) or a client role, as `--clients` and `--csr-for` name them.
fn subject_of(spec: &str, who: &str) -> anyhow::Result<Subject> {
    match who.parse::<Role>() {
        Ok(Role::Node) => {
            anyhow::bail!("{spec}: node certificates come from --nodes, not client options")
        }
        Ok(role) => Ok(Subject::Role(role)),
        Err(_) => Ok(Subject::Org(HpiO::parse(who).map_err(|e| {
            anyhow::anyhow!("{spec}: neither a role (operator, auditor) nor an HPI-O: {e}")
        })?)),
    }
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
struct DevShape {
    providers: Vec<String>,
    nodes: u64,
    seeded: bool,
}

fn provider_name(i: usize) -> String {
    format!("prov-{}", (b'a' + i as u8) as char)
}

/// Checks the folder: empty or missing (new), or a dev folder of the asked shape.
fn shape_of(args: &DevArgs) -> anyhow::Result<(DevShape, bool)> {
    let marker = args.data.join(DEV_MARKER);
    if marker.exists() {
        let text = std::fs::read_to_string(&marker)?;
        let shape: DevShape =
            toml::from_str(&text).with_context(|| format!("{} is damaged", marker.display()))?;
        if let Some(p) = args.providers
            && p != shape.providers.len()
        {
            bail!(
                "{} holds a dev cluster of {} provider(s); you asked for {p}. Use another --data folder",
                args.data.display(),
                shape.providers.len()
            );
        }
        if let Some(n) = args.nodes
            && n != shape.nodes
        {
            bail!(
                "{} holds providers of {} nodes; you asked for {n}. Use another --data folder",
                args.data.display(),
                shape.nodes
            );
        }
        for p in &shape.providers {
            if !args.data.join(p).join("ca.pem").exists() {
                bail!(
                    "{} is not a complete dev folder: provider {p} is missing",
                    args.data.display()
                );
            }
        }
        return Ok((shape, false));
    }
    if args.data.exists() {
        let nonempty = std::fs::read_dir(&args.data)?.next().is_some();
        if nonempty {
            bail!(
                "{} is not empty and is not a sealpost dev folder (no {DEV_MARKER}); refusing to use it",
                args.data.display()
            );
        }
    }
    let providers = args.providers.unwrap_or(2);
    let nodes = args.nodes.unwrap_or(3);
    if providers == 0 || providers > DEV_PROVIDERS_MAX {
        bail!("--providers must be between 1 and {DEV_PROVIDERS_MAX}");
    }
    if nodes == 0 || nodes > DEV_NODES_MAX {
        bail!("--nodes must be between 1 and {DEV_NODES_MAX}");
    }
    Ok((
        DevShape {
            providers: (0..providers).map(provider_name).collect(),
            nodes,
            seeded: false,
        },
        true,
    ))
}

fn write_shape(dir: &Path, shape: &DevShape) -> anyhow::Result<()> {
    std::fs::write(dir.join(DEV_MARKER), toml::to_string_pretty(shape)?)?;
    Ok(())
}

/// A demo organisation: its profile name, identity, services and practitioners.
struct DemoOrg {
    profile: &'static str,
    /// Index of the provider that hosts it (modulo the number of providers).
    home: usize,
    serial: u64,
    name: &'static str,
    suburb: &'static str,
    state: &'static str,
    postcode: &'static str,
    services: &'static [(
        &'static str,
        &'static str,
        &'static str,
        &'static [&'static str],
    )],
    practitioners: &'static [(u64, &'static str, &'static str)],
}

const DEMO: &[DemoOrg] = &[
    DemoOrg {
        profile: "northside-gp",
        home: 0,
        serial: 101,
        name: "Northside Medical Centre",
        suburb: "Brunswick",
        state: "VIC",
        postcode: "3056",
        services: &[(
            "general-practice",
            "Northside GP reception",
            "General practice",
            &["ORU^R01", "MDM^T02", "REF^I12", "PDF", "TEXT"],
        )],
        practitioners: &[
            (2001, "Dr Amelia Chen", "General practice"),
            (2002, "Dr Tom Okafor", "General practice"),
        ],
    },
    DemoOrg {
        profile: "citylab",
        home: 0,
        serial: 102,
        name: "CityLab Pathology",
        suburb: "Melbourne",
        state: "VIC",
        postcode: "3000",
        services: &[
            (
                "requests",
                "Pathology requests",
                "Pathology",
                &["REF^I12", "FHIR"],
            ),
            (
                "results",
                "Pathology results desk",
                "Pathology",
                &["ORU^R01", "TEXT"],
            ),
        ],
        practitioners: &[],
    },
    DemoOrg {
        profile: "fitzroy-hospital",
        home: 1,
        serial: 103,
        name: "Fitzroy General Hospital",
        suburb: "Fitzroy",
        state: "VIC",
        postcode: "3065",
        services: &[
            (
                "cardiology",
                "Cardiology outpatients",
                "Cardiology",
                &["REF^I12", "CDA", "PDF", "TEXT"],
            ),
            (
                "discharge",
                "Discharge summaries",
                "Hospital medicine",
                &["MDM^T02", "CDA"],
            ),
        ],
        practitioners: &[(2003, "Dr Priya Raman", "Cardiology")],
    },
    DemoOrg {
        profile: "harbour-radiology",
        home: 1,
        serial: 104,
        name: "Harbour Radiology",
        suburb: "Sydney",
        state: "NSW",
        postcode: "2000",
        services: &[(
            "imaging",
            "Imaging bookings and reports",
            "Radiology",
            &["REF^I12", "ORU^R01", "PDF"],
        )],
        practitioners: &[],
    },
];

/// The demo organisations a provider (index `i` of `n`) hosts.
fn demo_at(i: usize, n: usize) -> impl Iterator<Item = &'static DemoOrg> {
    DEMO.iter().filter(move |o| o.home % n == i)
}

async fn seed(admin: &Profile, orgs: impl Iterator<Item = &'static DemoOrg>) -> anyhow::Result<()> {
    let client = Client::connect(admin).await?;
    let mut dir = client.directory();
    let ignore_exists = |r: Result<tonic::Response<pb::WriteResult>, tonic::Status>| match r {
        Ok(_) => Ok(()),
        Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(()),
        Err(s) => Err(anyhow::anyhow!(
            "seeding the demo directory: {}",
            s.message()
        )),
    };
    for org in orgs {
        let hpio = HpiO::from_serial(org.serial);
        // No keys in the request: the provider generates them and keeps the private halves
        // wrapped under its key-encryption key, so it can sign, seal and open for the org.
        ignore_exists(
            dir.register_organisation(pb::RegisterOrganisationRequest {
                organisation: Some(pb::Organisation {
                    hpio: hpio.to_string(),
                    name: org.name.into(),
                    suburb: org.suburb.into(),
                    state: org.state.into(),
                    postcode: org.postcode.into(),
                    keys: None,
                    ..Default::default()
                }),
            })
            .await,
        )?;
        for (slug, name, specialty, accepts) in org.services {
            ignore_exists(
                dir.publish_endpoint(pb::PublishEndpointRequest {
                    id: format!("{hpio}/{slug}"),
                    display_name: (*name).into(),
                    specialty: (*specialty).into(),
                    payload_types: accepts.iter().map(|s| s.to_string()).collect(),
                })
                .await,
            )?;
        }
        for (serial, name, specialty) in org.practitioners {
            ignore_exists(
                dir.publish_endpoint(pb::PublishEndpointRequest {
                    id: format!("{hpio}/{}", HpiI::from_serial(*serial)),
                    display_name: (*name).into(),
                    specialty: (*specialty).into(),
                    payload_types: vec![
                        "REF^I12".into(),
                        "ORU^R01".into(),
                        "MDM^T02".into(),
                        "PDF".into(),
                    ],
                })
                .await,
            )?;
        }
    }
    Ok(())
}

fn relative(base: &Path, p: &Path) -> PathBuf {
    p.strip_prefix(base)
        .map(Path::to_path_buf)
        .unwrap_or_else(|_| p.to_path_buf())
}

/// Profiles for every provider: `admin` for the first provider's operator,
/// `<provider>-admin` for the others', and one per demo organisation at the provider that
/// hosts it.
fn client_config(
    data: &Path,
    clusters: &BTreeMap<String, LocalCluster>,
) -> anyhow::Result<ClientConfig> {
    let mut profiles = BTreeMap::new();
    for (i, (name, cluster)) in clusters.iter().enumerate() {
        let endpoints: Vec<String> = cluster.addrs().into_values().collect();
        let mk = |who: &str,
                  role: Role,
                  org: Option<String>,
                  default_endpoint: Option<String>|
         -> anyhow::Result<Profile> {
            let hpio = org
                .as_deref()
                .map(HpiO::parse)
                .transpose()
                .map_err(|e| anyhow::anyhow!("demo organisation id: {e}"))?;
            let subject = match hpio {
                Some(o) => Subject::Org(o),
                None => Subject::Role(role),
            };
            let t = cluster.client_identity_as(who, subject)?;
            Ok(Profile {
                endpoints: endpoints.clone(),
                tls: TlsPaths {
                    ca: relative(data, &t.ca),
                    cert: relative(data, &t.cert),
                    key: relative(data, &t.key),
                    crl: None,
                },
                organisation: org,
                default_endpoint,
                provider: Some(name.clone()),
            })
        };
        let admin_name = if i == 0 {
            "admin".to_string()
        } else {
            format!("{name}-admin")
        };
        profiles.insert(admin_name, mk("admin", Role::Operator, None, None)?);
        let auditor_name = if i == 0 {
            "auditor".to_string()
        } else {
            format!("{name}-auditor")
        };
        profiles.insert(auditor_name, mk("auditor", Role::Auditor, None, None)?);
        for org in demo_at(i, clusters.len()) {
            let hpio = HpiO::from_serial(org.serial);
            let default_ep = org.services.first().map(|s| format!("{hpio}/{}", s.0));
            profiles.insert(
                org.profile.to_string(),
                mk(
                    org.profile,
                    Role::Operator,
                    Some(hpio.to_string()),
                    default_ep,
                )?,
            );
        }
    }
    Ok(ClientConfig {
        default_profile: Some("admin".into()),
        profiles,
    })
}

type Clusters = Arc<Mutex<BTreeMap<String, LocalCluster>>>;

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let (mut shape, new) = shape_of(&args)?;
    std::fs::create_dir_all(&args.data)?;
    let data = args.data.canonicalize()?;
    if new {
        write_shape(&data, &shape)?;
    }
    let mut clusters = BTreeMap::new();
    let fresh = !data.join(&shape.providers[0]).join("ca.pem").exists();
    if fresh && shape.providers.len() > 1 {
        let (raft, api) = (RaftOptions::default(), ApiLimits::default());
        let messaging = LocalCluster::fitting_messaging(&raft, &api);
        let specs: Vec<(String, MessagingOptions)> = shape
            .providers
            .iter()
            .map(|p| (p.clone(), messaging.clone()))
            .collect();
        let created = LocalCluster::create_federation(
            &data,
            &specs,
            shape.nodes,
            (raft, api, RelayOptions::default()),
        )
        .await?;
        for c in created {
            clusters.insert(c.provider.clone(), c);
        }
    } else {
        for p in &shape.providers {
            let dir = data.join(p);
            let cluster = if dir.join("ca.pem").exists() {
                LocalCluster::open(&dir, p).await?
            } else {
                LocalCluster::create(
                    &dir,
                    p,
                    shape.nodes,
                    RaftOptions::default(),
                    ApiLimits::default(),
                )
                .await?
            };
            clusters.insert(p.clone(), cluster);
        }
    }
    for (p, c) in &clusters {
        c.wait_leader(Duration::from_millis(LEADER_WAIT_MS))
            .await
            .with_context(|| format!("provider {p} elected no leader in {LEADER_WAIT_MS} ms"))?;
    }
    let cfg = client_config(&data, &clusters)?;
    let client_toml = data.join("client.toml");
    write_file(&client_toml, &cfg.to_toml(), false)?;
    let loaded = ClientConfig::load(&client_toml)?;
    let admin_of = |i: usize| -> anyhow::Result<Profile> {
        let name = if i == 0 {
            "admin".to_string()
        } else {
            format!("{}-admin", shape.providers[i])
        };
        Ok(loaded.profile(Some(&name), &client_toml)?.1)
    };
    if !shape.seeded {
        let n = shape.providers.len();
        for i in 0..n {
            seed(&admin_of(i)?, demo_at(i, n)).await?;
            // An HL7 v2 / MLLP listener on node 1 for each organisation the provider hosts
            // (loopback, bound to it); the port is kept in node 1's node.toml.
            let mut listeners = Vec::new();
            for org in demo_at(i, n) {
                let port = tokio::net::TcpListener::bind(("127.0.0.1", 0))
                    .await?
                    .local_addr()?
                    .port();
                listeners.push(MllpListenerConfig::loopback(
                    &format!("127.0.0.1:{port}"),
                    &HpiO::from_serial(org.serial),
                ));
            }
            if let Some(c) = clusters.get_mut(&shape.providers[i]) {
                c.set_mllp(1, listeners).await?;
                c.wait_leader(Duration::from_millis(LEADER_WAIT_MS))
                    .await
                    .with_context(|| format!("provider {} lost its leader", shape.providers[i]))?;
            }
        }
        shape.seeded = true;
        write_shape(&data, &shape)?;
    }
    // Every provider lists every demo organisation, its own and its peers' (pulled from
    // them), before the summary says the cluster is ready.
    for i in 0..shape.providers.len() {
        wait_directory(&admin_of(i)?, &shape.providers[i]).await?;
    }
    print_summary(&data, &client_toml, &clusters);
    if args.exit_after_start {
        for c in clusters.values_mut() {
            c.stop_all().await;
        }
        return Ok(());
    }
    let clusters: Clusters = Arc::new(Mutex::new(clusters));
    let sock = data.join(CONTROL_SOCKET);
    let _ = std::fs::remove_file(&sock);
    let listener = tokio::net::UnixListener::bind(&sock)
        .with_context(|| format!("binding the control socket {}", sock.display()))?;
    let control = tokio::spawn(serve_control(listener, clusters.clone()));
    wait_for_signal().await;
    control.abort();
    let _ = std::fs::remove_file(&sock);
    eprintln!("stopping...");
    let mut clusters = clusters.lock().await;
    for c in clusters.values_mut() {
        c.stop_all().await;
    }
    Ok(())
}

/// Waits (bounded) until a provider's directory shows every demo organisation.
async fn wait_directory(admin: &Profile, provider: &str) -> anyhow::Result<()> {
    let client = Client::connect(admin).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(DIRECTORY_WAIT_MS);
    loop {
        let mut missing = None;
        for org in DEMO {
            let hpio = HpiO::from_serial(org.serial).to_string();
            let found = client
                .directory()
                .get_organisation(pb::GetOrganisationRequest {
                    hpio: hpio.clone(),
                    ..Default::default()
                })
                .await
                .is_ok();
            if !found {
                missing = Some(hpio);
                break;
            }
        }
        let Some(hpio) = missing else { return Ok(()) };
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "provider {provider}'s directory still lacks demo organisation {hpio} after {DIRECTORY_WAIT_MS} ms"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn print_summary(data: &Path, client_toml: &Path, clusters: &BTreeMap<String, LocalCluster>) {
    println!("sealpost dev is running from {}", data.display());
    for (p, c) in clusters {
        println!("  provider {p} (CA {}):", c.dir.join("ca.pem").display());
        let relays = c.relay_addrs();
        for (i, (id, addr)) in c.addrs().into_iter().enumerate() {
            let relay = relays
                .get(i)
                .map(|r| format!("  relay {r}"))
                .unwrap_or_default();
            let ops = c
                .node(id)
                .and_then(|n| n.http_addr)
                .map(|h| format!("  metrics http://{h}/metrics"))
                .unwrap_or_default();
            println!(
                "    node {id}  https://{addr}{relay}{ops}  data {}",
                c.dir.join(format!("node-{id}")).display()
            );
        }
    }
    for c in clusters.values() {
        for m in c.config(1).map(|cfg| cfg.mllp.clone()).unwrap_or_default() {
            let org = m.organisation.clone().unwrap_or_default();
            let profile = DEMO
                .iter()
                .find(|o| HpiO::from_serial(o.serial).as_str() == org)
                .map_or("?", |o| o.profile);
            println!("  HL7 v2 over MLLP for {profile} ({org}): {}", m.listen);
        }
    }
    println!("  client profiles: {}", client_toml.display());
    println!();
    println!("Try, in another terminal:");
    println!("  export SEALPOST_CLIENT_CONFIG={}", client_toml.display());
    println!("  sealpost cluster status");
    println!("  sealpost directory search cardiology");
    println!("  sealpost cluster stop-node --node 1");
    println!(
        "  echo 'hello' | sealpost send --as northside-gp --to {}/cardiology --type TEXT --file -",
        HpiO::from_serial(103)
    );
    println!("  sealpost inbox --as fitzroy-hospital");
    println!("  sealpost track --as northside-gp <message id>");
    println!("  sealpost dead-letters");
    println!(
        "  sealpost audit replay --as auditor     # auditors replay; they never fetch payloads"
    );
    println!("Stop with Ctrl-C; run the same command again to resume from disk.");
}

pub async fn wait_for_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn serve_control(listener: tokio::net::UnixListener, clusters: Clusters) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let clusters = clusters.clone();
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut line = String::new();
            let mut reader = BufReader::new(r.take(CONTROL_LINE_BYTES_MAX as u64));
            if reader.read_line(&mut line).await.is_err() {
                return;
            }
            let answer = match handle_control(line.trim(), &clusters).await {
                Ok(s) => format!("ok {s}\n"),
                Err(e) => format!("error {e:#}\n"),
            };
            let _ = w.write_all(answer.as_bytes()).await;
        });
    }
}

async fn handle_control(line: &str, clusters: &Clusters) -> anyhow::Result<String> {
    let parts: Vec<&str> = line.split_whitespace().collect();
    let [verb, provider, node] = parts.as_slice() else {
        bail!("expected: stop-node|start-node PROVIDER NODE");
    };
    let id: u64 = node
        .parse()
        .with_context(|| format!("{node:?} is not a node id"))?;
    let mut clusters = clusters.lock().await;
    let c = clusters
        .get_mut(*provider)
        .with_context(|| format!("no provider {provider} in this dev cluster"))?;
    match *verb {
        "stop-node" => {
            if c.node(id).is_none() {
                bail!("node {id} of {provider} is not running");
            }
            c.stop_node(id).await?;
            Ok(format!("node {id} of {provider} stopped"))
        }
        "start-node" => {
            if c.node(id).is_some() {
                bail!("node {id} of {provider} is already running");
            }
            c.start_node(id).await?;
            Ok(format!("node {id} of {provider} started"))
        }
        other => bail!("unknown control command {other:?}"),
    }
}

/// Sends one command to a running dev cluster's control socket.
pub async fn control(dir: &Path, command: &str) -> anyhow::Result<String> {
    let sock = dir.join(CONTROL_SOCKET);
    let stream = tokio::net::UnixStream::connect(&sock)
        .await
        .with_context(|| {
            format!(
                "no running `sealpost dev` at {} (no control socket)",
                dir.display()
            )
        })?;
    let (r, mut w) = stream.into_split();
    w.write_all(format!("{command}\n").as_bytes()).await?;
    let mut line = String::new();
    let mut reader = BufReader::new(r.take(4096));
    let read = reader.read_line(&mut line);
    tokio::time::timeout(Duration::from_secs(120), read)
        .await
        .context("the dev cluster did not answer in 120 s")??;
    match line.trim().split_once(' ') {
        Some(("ok", msg)) => Ok(msg.to_string()),
        Some(("error", msg)) => bail!("{msg}"),
        _ => bail!("unexpected answer from the dev cluster: {line:?}"),
    }
}

/// `sealpost certs`: a provider's CA, node and client certificates for a multi-process
/// cluster. Existing files are kept.
pub fn certs(args: CertsArgs) -> anyhow::Result<()> {
    let out = &args.out;
    std::fs::create_dir_all(out)?;
    if let Some(path) = &args.new_kek {
        if path.exists() {
            anyhow::bail!(
                "{} already exists: a new KEK goes into a new file",
                path.display()
            );
        }
        let kek = sealpost_crypto::kek::Kek::generate()?;
        kek.save(path)?;
        println!("new KEK {} in {}", kek.id_hex(), path.display());
    }
    let ca_cert = out.join("ca.pem");
    let ca_key = out.join("ca-key.pem");
    let ca = if ca_cert.exists() {
        DevCa::load(&args.provider, &ca_cert, &ca_key)?
    } else {
        let ca = DevCa::generate(&args.provider)?;
        ca.save(&ca_cert, &ca_key)?;
        ca
    };
    for n in 1..=args.nodes {
        let cert = out.join(format!("node-{n}.pem"));
        if !cert.exists() {
            let id = ca.issue_node(&format!("{}-node-{n}", args.provider), &args.hosts)?;
            write_file(&cert, &id.cert_pem, false)?;
            write_file(&out.join(format!("node-{n}-key.pem")), &id.key_pem, true)?;
        }
    }
    let kek = out.join("kek");
    if !kek.exists() {
        sealpost_crypto::kek::Kek::generate()?.save(&kek)?;
    }
    // The receipt-signing key for federation; peers put its public half in their trust
    // bundles (`receipt_key`).
    let provider_key = out.join(sealpost_server::local::PROVIDER_KEY_FILE);
    if !provider_key.exists() {
        sealpost_crypto::provider_key::ProviderKey::generate()?.save(&provider_key)?;
    }
    let receipt_key = sealpost_crypto::provider_key::ProviderKey::load(&provider_key)?.public_hex();
    for spec in &args.clients {
        let (c, subject) = match spec.split_once('=') {
            Some((name, who)) => (name, subject_of(&format!("--clients {spec}"), who)?),
            None => (spec.as_str(), Subject::Role(Role::Operator)),
        };
        let cert = out.join("clients").join(format!("{c}.pem"));
        if !cert.exists() {
            let id = match &subject {
                Subject::Org(org) => ca.issue_for_org(c, org)?,
                Subject::Role(role) => ca.issue_role(c, *role)?,
            };
            write_file(&cert, &id.cert_pem, false)?;
            write_file(
                &out.join("clients").join(format!("{c}-key.pem")),
                &id.key_pem,
                true,
            )?;
        }
    }
    let crl = ca.ensure_crl(out)?;
    if let (Some(csr), Some(name), Some(who)) = (&args.csr, &args.csr_name, &args.csr_for) {
        let subject = subject_of(&format!("--csr-for {who}"), who)?;
        let request = std::fs::read_to_string(csr)
            .map_err(|e| anyhow::anyhow!("--csr {}: {e}", csr.display()))?;
        let cert = ca.sign_csr(name, subject.clone(), &request).map_err(|e| {
            anyhow::anyhow!("--csr {}: not a usable PKCS#10 request: {e}", csr.display())
        })?;
        let path = out.join("clients").join(format!("{name}.pem"));
        write_file(&path, &cert, false)?;
        println!("signed {} for {subject}: {}", csr.display(), path.display());
    }
    for cert in &args.revoke {
        let pem = std::fs::read_to_string(cert)
            .map_err(|e| anyhow::anyhow!("--revoke {}: {e}", cert.display()))?;
        ca.revoke_in(out, &pem)
            .map_err(|e| anyhow::anyhow!("--revoke {}: {e}", cert.display()))?;
        println!("revoked {} (CRL {})", cert.display(), crl.display());
    }
    println!("certificates for {} in {}", args.provider, out.display());
    println!("receipt_key for peers' trust bundles: {receipt_key}");
    Ok(())
}
