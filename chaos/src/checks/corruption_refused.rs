//! Every node whose store the run damaged refused to start (instead of serving from a store
//! that silently forgot acknowledged entries), and came back only under a new id.

use super::Verdict;
use crate::faults::{FaultKind, FaultRecord};

pub fn check(faults: &[FaultRecord]) -> Verdict {
    let damaged: Vec<&FaultRecord> = faults
        .iter()
        .filter(|f| f.kind == FaultKind::CorruptFollower)
        .collect();
    let mut problems = Vec::new();
    for f in &damaged {
        if f.corruption_refused != Some(true) {
            problems.push(format!(
                "node {} started on a damaged store: {}",
                f.node, f.detail
            ));
        }
        match f.rejoined_as {
            Some(id) if id != f.node => {}
            other => problems.push(format!(
                "node {} did not rejoin under a new id ({other:?})",
                f.node
            )),
        }
    }
    Verdict::new(
        "damaged-node-refused-to-start",
        format!("{} damaged stores", damaged.len()),
        problems,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn damaged(refused: bool, rejoined: Option<u64>) -> FaultRecord {
        let mut f = FaultRecord::new(
            FaultKind::CorruptFollower,
            2,
            "flipped byte 10".into(),
            0,
            0,
        );
        f.corruption_refused = Some(refused);
        f.rejoined_as = rejoined;
        f
    }

    #[test]
    fn a_node_that_started_on_damage_or_kept_its_id_fails() {
        assert!(check(&[damaged(true, Some(4))]).ok);
        assert!(check(&[]).ok);
        let v = check(&[damaged(false, Some(4))]);
        assert!(!v.ok && v.violations == 1, "{v:?}");
        let v = check(&[damaged(true, Some(2))]);
        assert!(!v.ok, "rejoining under the old id is a violation");
    }
}
