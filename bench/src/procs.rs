//! The benchmark's view of the processes under test: sealpost nodes come from
//! `sealpost-harness` (node processes, waiting for a leader, `/proc` costs); this module adds
//! the load generator (this process) to every measured window and turns the costs into the
//! report's rows.

use sealpost_harness::Watch;

pub use sealpost_harness::{NodeProcs, admin_client, node_client, org_client, wait_ready};

use crate::report::ProcessStats;

/// Starts a CPU window over `procs` (`(name, pid)`) and the load generator.
pub fn watch(procs: &[(String, u32)]) -> anyhow::Result<Watch> {
    let mut all = vec![(
        "sealpost-bench (load generator)".to_string(),
        std::process::id(),
    )];
    all.extend(procs.iter().cloned());
    Ok(Watch::start(&all)?)
}

/// What each process of `w` cost since it started, as report rows.
pub fn costs(w: &Watch) -> anyhow::Result<Vec<ProcessStats>> {
    Ok(w.finish()?
        .into_iter()
        .map(|c| ProcessStats {
            name: c.name,
            pid: c.pid,
            cpu_secs: c.cpu_secs,
            cpu_cores_avg: c.cpu_cores_avg,
            peak_rss_mib: c.peak_rss_mib,
        })
        .collect())
}
