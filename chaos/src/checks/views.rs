//! Every replica's views equal the fold of its event store: `Admin.RebuildViews` without
//! repair on each node folds every view again and compares digests.

use std::time::Duration;

use sealpost_proto::v1 as pb;

use super::{Evidence, Verdict};

/// Deadline of one node's rebuild.
const REBUILD_TIMEOUT_MS: u64 = 300_000;

pub async fn check(e: &Evidence) -> Verdict {
    let mut problems = Vec::new();
    let mut views = 0;
    for (node, client) in &e.nodes {
        let run = async {
            let mut stream = client
                .admin()
                .rebuild_views(pb::RebuildViewsRequest { repair: false })
                .await?
                .into_inner();
            let mut report = None;
            // Bounded by the rebuild's progress messages (and the deadline).
            while let Some(p) = stream.message().await? {
                if p.report.is_some() {
                    report = p.report;
                }
            }
            Ok::<_, tonic::Status>(report)
        };
        match tokio::time::timeout(Duration::from_millis(REBUILD_TIMEOUT_MS), run).await {
            Ok(Ok(Some(r))) => {
                views = r.views.len();
                for v in r.views.iter().filter(|v| v.live_digest != v.rebuilt_digest) {
                    problems.push(format!(
                        "node {node}: view {} differs from the fold ({} live keys, {} rebuilt)",
                        v.name, v.live_keys, v.rebuilt_keys
                    ));
                }
                if !r.all_equal && problems.is_empty() {
                    problems.push(format!("node {node}: views reported unequal"));
                }
            }
            Ok(Ok(None)) => problems.push(format!("node {node}: the rebuild sent no report")),
            Ok(Err(s)) => problems.push(format!("node {node}: rebuild failed: {}", s.message())),
            Err(_) => problems.push(format!("node {node}: no report in {REBUILD_TIMEOUT_MS} ms")),
        }
    }
    Verdict::new(
        "views-equal-the-fold",
        format!("{} replicas, {views} views each", e.nodes.len()),
        problems,
    )
}
