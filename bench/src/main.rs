//! sealpost's load benchmark. With no subcommand it runs the scenarios (`log`,
//! `hot-path`, `relay`, `replay`, `crypto`) and the peers (`etcd`, `nats`) one after
//! another against systems started for each, all on this machine: sealpost nodes as their
//! own processes (real gRPC + mutual TLS on loopback, fsync on), the load from this
//! process, closed loop for the maximum and open loop at half of it. It writes JSON, a
//! markdown summary and SVG plots (see BENCHMARKS.md). `--smoke` is the short run CI
//! makes. `report` renders a recorded run.json again. `audit` measures replay and view rebuild on a large generated store. Build it
//! optimised (`cargo build --profile perf --workspace`) for numbers worth recording.

use clap::{Parser, Subcommand};

/// mimalloc instead of glibc's malloc: the hot path allocates and frees many small
/// buffers per message, and glibc's allocator showed as a tenth of the CPU in profiles.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod audit;
mod load;
mod peers;
mod procs;
mod report;
mod scenarios;
mod suite;

#[derive(Parser, Debug)]
#[command(
    name = "sealpost-bench",
    about = "Load benchmark of sealpost against etcd and NATS JetStream on one machine",
    args_conflicts_with_subcommands = true
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    suite: suite::SuiteArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Replay rate and view rebuild time on a store generated straight into one node.
    Audit(audit::AuditArgs),
    /// Writes the summary and plots of a recorded run (its run.json) again, into the
    /// run's folder or OUT.
    Report {
        /// A run.json a benchmark run wrote.
        json: std::path::PathBuf,
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
}

/// Highest latency the histograms record, in microseconds.
pub(crate) const LATENCY_US_MAX: u64 = 60_000_000;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Warnings go to stderr; RUST_LOG overrides.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        match args.command {
            Some(Command::Audit(a)) => audit::run(a).await,
            Some(Command::Report { json, out }) => {
                let run = report::read_json(&json)?;
                let dir = match out {
                    Some(o) => o,
                    None => json
                        .parent()
                        .map(std::path::Path::to_path_buf)
                        .unwrap_or_default(),
                };
                for f in report::write_all(&run, &dir)? {
                    eprintln!("wrote {}", f.display());
                }
                Ok(())
            }
            None => suite::run(args.suite).await,
        }
    })
}
