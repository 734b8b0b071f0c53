//! The `sealpost` command: the embedded `dev` cluster, a single `node`, and the client
//! commands (`cluster`, `directory`, and messaging: `send`, `inbox`, `fetch`, `ack`,
//! `track`, `outbox`). Client commands read `client.toml` (from
//! `--client-config` or `SEALPOST_CLIENT_CONFIG`), act as the profile chosen with `--as`,
//! and print JSON with `--json`.

mod audit_cmd;
mod client_cmd;
mod dev;
mod evidence;
mod import;
mod message_cmd;
mod output;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

/// mimalloc instead of glibc's malloc: the hot path allocates and frees many small
/// buffers per message, and glibc's allocator showed as a tenth of the CPU in profiles.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "sealpost",
    version,
    about = "Secure clinical messaging on a Raft-replicated event log"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Options every client command takes.
#[derive(Args, Debug, Clone)]
pub struct ClientOpts {
    /// The client configuration file.
    #[arg(long, global = true, env = "SEALPOST_CLIENT_CONFIG")]
    pub client_config: Option<PathBuf>,
    /// The profile to act as.
    #[arg(long = "as", global = true, value_name = "PROFILE")]
    pub profile: Option<String>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the embedded development cluster: N providers of N nodes each, in this process.
    Dev(dev::DevArgs),
    /// Run one node of a multi-process or multi-machine cluster.
    Node {
        /// The node's configuration file (TOML).
        #[arg(long)]
        config: PathBuf,
        /// Set one configuration key (`api.send_rate_per_org_per_s=100`, `http_listen=...`),
        /// over the file and the `SEALPOST_*` environment; repeatable.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Print the effective configuration (file, then environment, then --set) and exit.
        #[arg(long)]
        dump_config: bool,
    },
    /// Restore a backup (`sealpost admin backup`) into a node of a new cluster, before the
    /// node first starts: run it for every node of the new cluster, then start them.
    Restore {
        /// The new node's configuration file; its initial_members are the new voters, and
        /// its provider and KEK must be the backed-up provider's.
        #[arg(long)]
        config: PathBuf,
        /// The backup folder.
        #[arg(long)]
        backup: PathBuf,
    },
    /// Write a provider's CA, node certificates and client certificates into a folder.
    Certs(dev::CertsArgs),
    /// Cluster membership and health.
    Cluster {
        #[command(flatten)]
        opts: ClientOpts,
        #[command(subcommand)]
        cmd: client_cmd::ClusterCmd,
    },
    /// Operator work on a node: rebuild-views, backup.
    Admin {
        #[command(flatten)]
        opts: ClientOpts,
        #[command(subcommand)]
        cmd: audit_cmd::AdminCmd,
    },
    /// Evidence for auditors: replay, verify, checkpoint, prove, export, verify-export.
    Audit {
        #[command(flatten)]
        opts: ClientOpts,
        #[command(subcommand)]
        cmd: audit_cmd::AuditCmd,
    },
    /// The provider directory.
    Directory {
        #[command(flatten)]
        opts: ClientOpts,
        #[command(subcommand)]
        cmd: client_cmd::DirectoryCmd,
    },
    /// Sign, seal and send a message to one or more endpoints.
    Send {
        #[command(flatten)]
        opts: ClientOpts,
        #[command(flatten)]
        args: message_cmd::SendArgs,
    },
    /// Messages routed to the profile's organisation and awaiting acknowledgement.
    Inbox {
        #[command(flatten)]
        opts: ClientOpts,
        #[command(flatten)]
        args: message_cmd::InboxArgs,
    },
    /// Fetch a message's decrypted payload (recorded as an access).
    Fetch {
        #[command(flatten)]
        opts: ClientOpts,
        #[command(flatten)]
        args: message_cmd::FetchArgs,
    },
    /// Acknowledge a message: accepted, rejected or error.
    Ack {
        #[command(flatten)]
        opts: ClientOpts,
        #[command(flatten)]
        args: message_cmd::AckArgs,
    },
    /// A message's timeline and its status per recipient.
    Track {
        #[command(flatten)]
        opts: ClientOpts,
        #[command(flatten)]
        args: message_cmd::TrackArgs,
    },
    /// Messages the profile's organisation sent, newest first, with their status.
    Outbox {
        #[command(flatten)]
        opts: ClientOpts,
        #[command(flatten)]
        args: message_cmd::OutboxArgs,
    },
    /// Failed recipients for operators, newest first, with the reason and last error.
    DeadLetters {
        #[command(flatten)]
        opts: ClientOpts,
        #[command(flatten)]
        args: message_cmd::DeadLettersArgs,
    },
    /// Re-drive a failed (dead-lettered) message to its recipients hosted here: a new,
    /// audited attempt linked to the failure, with a fresh deliver-by.
    Reprocess {
        #[command(flatten)]
        opts: ClientOpts,
        /// The message id.
        id: String,
        /// Only this recipient endpoint (default: every failed recipient hosted here).
        #[arg(long)]
        recipient: Option<String>,
    },
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SEALPOST_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("warn,openraft=error,sealpost=info")
    });
    // SEALPOST_LOG_FORMAT=json: one JSON object a line, with the fields of every open span
    // (the node id, the message id), for log shippers.
    if std::env::var("SEALPOST_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) {
        tracing_subscriber::fmt()
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
        return;
    }
    // Colour only on a terminal: a node's log file gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .init();
}

/// An error and its causes on one line, each cause once: library errors often repeat their
/// source in their own message, which `{:#}` would print twice.
fn describe(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if out.contains(&s) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&s);
    }
    out
}

/// The configuration `sealpost node` runs with, loaded before the runtime starts: its
/// `worker_threads` sizes the runtime. `None` for every other command.
fn node_config(cli: &Cli) -> anyhow::Result<Option<sealpost_server::NodeConfig>> {
    match &cli.command {
        Command::Node { config, set, .. } => {
            sealpost_server::NodeConfig::load_layered(config, std::env::vars(), set)
                .with_context(|| format!("loading {}", config.display()))
                .map(Some)
        }
        _ => Ok(None),
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let node_cfg = match node_config(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {}", describe(&e));
            return std::process::ExitCode::FAILURE;
        }
    };
    let workers = node_cfg.as_ref().and_then(|c| c.worker_threads);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        builder.worker_threads(n);
    }
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli, node_cfg)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", describe(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs the command; `node_cfg` is [`node_config`]'s answer for it.
async fn run(cli: Cli, node_cfg: Option<sealpost_server::NodeConfig>) -> anyhow::Result<()> {
    match cli.command {
        Command::Dev(args) => {
            init_tracing();
            dev::run(args).await
        }
        Command::Node { dump_config, .. } => {
            let cfg = node_cfg.context("the node configuration was not loaded")?;
            if dump_config {
                print!("{}", cfg.to_toml());
                return Ok(());
            }
            init_tracing();
            let handle = sealpost_server::start(cfg, None).await?;
            eprintln!("node {} serving on {}", handle.raft.id(), handle.addr);
            dev::wait_for_signal().await;
            handle.stop().await;
            Ok(())
        }
        Command::Restore { config, backup } => {
            let cfg = sealpost_server::NodeConfig::load(&config)
                .with_context(|| format!("loading {}", config.display()))?;
            let manifest = sealpost_client::backup::verify_backup(&backup)
                .with_context(|| format!("checking the backup in {}", backup.display()))?;
            if manifest.provider != cfg.provider {
                anyhow::bail!(
                    "the backup is of provider {:?}, but {} configures provider {:?}",
                    manifest.provider,
                    config.display(),
                    cfg.provider
                );
            }
            let r = sealpost_server::node::restore_node(&cfg, &backup)?;
            println!(
                "restored node {} in {}: {} events (chain head {}), through log index {}; start \
                 it with `sealpost node --config {}`",
                cfg.id,
                cfg.data_dir.display(),
                r.event_count,
                hex::encode(r.chain_head),
                r.last_log_id.index,
                config.display()
            );
            Ok(())
        }
        Command::Certs(args) => dev::certs(args),
        Command::Cluster { opts, cmd } => client_cmd::cluster(&opts, cmd).await,
        Command::Directory { opts, cmd } => client_cmd::directory(&opts, cmd).await,
        Command::Audit { opts, cmd } => audit_cmd::audit(&opts, cmd).await,
        Command::Admin { opts, cmd } => audit_cmd::admin(&opts, cmd).await,
        Command::Send { opts, args } => message_cmd::send(&opts, args).await,
        Command::Inbox { opts, args } => message_cmd::inbox(&opts, args).await,
        Command::Fetch { opts, args } => message_cmd::fetch(&opts, args).await,
        Command::Ack { opts, args } => message_cmd::ack(&opts, args).await,
        Command::Track { opts, args } => message_cmd::track(&opts, args).await,
        Command::Outbox { opts, args } => message_cmd::outbox(&opts, args).await,
        Command::DeadLetters { opts, args } => message_cmd::dead_letters(&opts, args).await,
        Command::Reprocess {
            opts,
            id,
            recipient,
        } => message_cmd::reprocess(&opts, &id, recipient).await,
    }
}

#[cfg(test)]
mod describe_tests {
    use super::describe;

    #[derive(Debug)]
    struct Inner;
    impl std::fmt::Display for Inner {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("storage: the store is corrupt")
        }
    }
    impl std::error::Error for Inner {}

    /// Says its source in its own message, as `#[error("...: {0}")]` with `#[from]` does.
    #[derive(Debug)]
    struct Outer(Inner);
    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "starting raft: {}", self.0)
        }
    }
    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn each_cause_is_said_once() {
        let e = anyhow::Error::new(Outer(Inner)).context("starting node 3");
        assert_eq!(
            format!("{e:#}").matches("corrupt").count(),
            2,
            "the duplicate"
        );
        assert_eq!(
            describe(&e),
            "starting node 3: starting raft: storage: the store is corrupt"
        );
    }
}
