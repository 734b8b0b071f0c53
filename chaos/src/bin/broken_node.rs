//! `sealpost-broken-node`: a sealpost node that can be told, at run time, to break the
//! guarantees the chaos checkers exist to defend, so the test suite can prove the checkers
//! catch each breakage. It is built only as this separate test binary (no cargo feature:
//! `sealpost` never contains a way to turn the breakage on). It takes the same arguments
//! as `sealpost node` (`node --config FILE`), so the chaos harness runs it in place of
//! `sealpost`; `SEALPOST_BREAK` names what to break, comma-separated:
//! - `ack-before-commit`: the leader answers writes before a quorum holds them;
//! - `skip-fsync`: the Raft log is never fsynced.
//!
//! Without `SEALPOST_BREAK` it is an ordinary node.

use std::path::PathBuf;

use anyhow::Context;
use sealpost_server::node::UnsafeBreakage;

/// The environment variable that names what to break.
const BREAK_ENV: &str = "SEALPOST_BREAK";

fn breakage(spec: &str) -> anyhow::Result<UnsafeBreakage> {
    let mut b = UnsafeBreakage::default();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part {
            "ack-before-commit" => b.ack_before_commit = true,
            "skip-fsync" => b.skip_fsync = true,
            other => anyhow::bail!(
                "{BREAK_ENV}: unknown breakage {other:?} (known: ack-before-commit, skip-fsync)"
            ),
        }
    }
    Ok(b)
}

fn config_arg(args: &[String]) -> anyhow::Result<PathBuf> {
    match args {
        [_, node, flag, path] if node == "node" && flag == "--config" => Ok(PathBuf::from(path)),
        _ => anyhow::bail!("usage: sealpost-broken-node node --config FILE"),
    }
}

async fn run() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let path = config_arg(&args)?;
    let broken = breakage(&std::env::var(BREAK_ENV).unwrap_or_default())?;
    let cfg = sealpost_server::NodeConfig::load(&path)
        .with_context(|| format!("loading {}", path.display()))?;
    let handle = sealpost_server::node::start_broken(cfg, broken).await?;
    eprintln!(
        "broken node {} serving on {} ({broken:?})",
        handle.raft.id(),
        handle.addr
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    handle.stop().await;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_switch_names_what_breaks_and_refuses_the_unknown() {
        assert_eq!(breakage("").expect("none"), UnsafeBreakage::default());
        let both = breakage("ack-before-commit, skip-fsync").expect("both");
        assert!(both.ack_before_commit && both.skip_fsync);
        let e = breakage("skip-sync").expect_err("a typo is refused");
        assert!(e.to_string().contains("skip-sync"), "{e}");
        let a: Vec<String> = ["x", "node", "--config", "n.toml"].map(String::from).into();
        assert_eq!(config_arg(&a).expect("args"), PathBuf::from("n.toml"));
        assert!(config_arg(&a[..2]).is_err());
    }
}
