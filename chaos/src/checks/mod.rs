//! The invariant checkers of a chaos run, one per file, run after the faults are healed and
//! every node has applied the same log. Each gets the [`Evidence`] (what the clients were
//! told, and every replica's events, read from each node alone) and says whether its
//! invariant holds, and if not, exactly where it breaks.

use std::collections::BTreeMap;

use sealpost_client::Client;
use sealpost_harness::NodeId;
use sealpost_proto::v1 as pb;
use serde::Serialize;

pub mod acked_present;
pub mod chain_heads;
pub mod corruption_refused;
pub mod lifecycle;
pub mod no_duplicates;
pub mod verifies;
pub mod views;

/// Problems a checker lists at most (the count is always complete).
pub const PROBLEMS_LISTED_MAX: usize = 20;

/// What the checkers look at.
pub struct Evidence {
    /// Message ids of sends acknowledged to a client.
    pub sent: Vec<String>,
    /// HPI-Os of registrations acknowledged to a client.
    pub registered: Vec<String>,
    /// Message ids whose acknowledgement by the desk was acknowledged.
    pub acked: Vec<String>,
    /// Every event of each replica, in order, read from that node.
    pub events: BTreeMap<NodeId, Vec<pb::AuditEvent>>,
    /// A client to each node alone.
    pub nodes: BTreeMap<NodeId, Client>,
}

/// One checker's verdict.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    pub checker: &'static str,
    pub ok: bool,
    /// How many things broke the invariant (lost writes, duplicates, ...).
    pub violations: u64,
    /// The first few of them.
    pub problems: Vec<String>,
    /// What was checked, in numbers.
    pub checked: String,
}

impl Verdict {
    pub fn new(checker: &'static str, checked: String, problems: Vec<String>) -> Self {
        let violations = problems.len() as u64;
        let mut listed = problems;
        listed.truncate(PROBLEMS_LISTED_MAX);
        Self {
            checker,
            ok: violations == 0,
            violations,
            problems: listed,
            checked,
        }
    }
}

/// Runs every checker.
pub async fn run_all(e: &Evidence) -> Vec<Verdict> {
    vec![
        acked_present::check(e).await,
        no_duplicates::check(e),
        lifecycle::check(e),
        chain_heads::check(e),
        verifies::check(e).await,
        views::check(e).await,
    ]
}
