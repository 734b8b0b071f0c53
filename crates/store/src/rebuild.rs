//! Views rebuilt from the event store, to check that they equal the fold of the events
//! (invariant 5): every event is folded again, from sequence 1, into views held in memory,
//! using the same `fold` and the same fact loading as the state machine; each view is then
//! digested (SHA-256 over its keys and values, in order) beside the live one, both read at
//! the same RocksDB snapshot. A difference names the view.

use std::collections::BTreeMap;

use rocksdb::IteratorMode;
use sealpost_core::codec;
use sealpost_core::event::EventRecord;
use sealpost_core::view::{Facts, event_reads, fold};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::rocks::{self, rocks_err};
use crate::state_machine::{
    CF_EVENTS, CF_META, SM_CFS, StateView, ViewSink, ViewSource, load_facts, write_view_changes,
};

/// Most events an in-memory rebuild folds: beyond this the rebuilt views would not fit a
/// node's memory comfortably (about 1.5 GB per million events), so the check refuses
/// rather than endanger the node.
pub const REBUILD_IN_MEMORY_EVENTS_MAX: u64 = 2_000_000;

/// One view, live and rebuilt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ViewDigest {
    pub name: &'static str,
    pub live_keys: u64,
    pub live_digest: [u8; 32],
    pub rebuilt_keys: u64,
    pub rebuilt_digest: [u8; 32],
}

impl ViewDigest {
    pub fn equal(&self) -> bool {
        self.live_keys == self.rebuilt_keys && self.live_digest == self.rebuilt_digest
    }
}

/// The outcome of a rebuild check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RebuildReport {
    /// Events folded.
    pub events: u64,
    pub views: Vec<ViewDigest>,
}

impl RebuildReport {
    pub fn all_equal(&self) -> bool {
        self.views.iter().all(ViewDigest::equal)
    }
}

/// Views held in memory while they are rebuilt.
#[derive(Default)]
struct MemViews {
    cfs: BTreeMap<String, BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl ViewSource for MemViews {
    fn raw(&self, cf: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.cfs.get(cf).and_then(|m| m.get(key)).cloned())
    }
}

impl ViewSink for MemViews {
    fn put(&mut self, cf: &str, key: &[u8], value: &[u8]) {
        self.cfs
            .entry(cf.to_string())
            .or_default()
            .insert(key.to_vec(), value.to_vec());
    }

    fn delete(&mut self, cf: &str, key: &[u8]) {
        if let Some(m) = self.cfs.get_mut(cf) {
            m.remove(key);
        }
    }
}

/// Running digest of a view: count, then each key and value length-prefixed.
#[derive(Default)]
struct ViewHasher {
    h: Sha256,
    keys: u64,
}

impl ViewHasher {
    fn add(&mut self, k: &[u8], v: &[u8]) {
        self.h.update((k.len() as u64).to_be_bytes());
        self.h.update(k);
        self.h.update((v.len() as u64).to_be_bytes());
        self.h.update(v);
        self.keys += 1;
    }

    fn finish(self) -> (u64, [u8; 32]) {
        (self.keys, self.h.finalize().into())
    }
}

/// The view column families: everything but the event store (events and their Merkle
/// tree) and the Raft metadata.
pub fn view_cfs() -> impl Iterator<Item = &'static str> {
    SM_CFS
        .iter()
        .copied()
        .filter(|c| *c != CF_EVENTS && *c != CF_META && *c != crate::merkle::CF_MERKLE)
}

impl StateView {
    /// Rebuilds every view from the event store in memory and compares it with the live
    /// one, both as of one snapshot of the database.
    pub fn rebuild_views_check(&self) -> Result<RebuildReport> {
        let live = self.shared_live();
        let count = live.chain()?.next_seq.saturating_sub(1);
        if count > REBUILD_IN_MEMORY_EVENTS_MAX {
            return Err(Error::Invalid(format!(
                "the event store holds {count} events; an in-memory view rebuild folds at \
                 most {REBUILD_IN_MEMORY_EVENTS_MAX}"
            )));
        }
        let snap = live.db.snapshot();
        let mut mem = MemViews::default();
        let mut events = 0u64;
        let cf_events = rocks::cf(&live.db, CF_EVENTS);
        for item in snap.iterator_cf(cf_events, IteratorMode::Start) {
            let (k, v) = item.map_err(rocks_err(&live.path))?;
            let rec: EventRecord = codec::decode(&v).map_err(|e| Error::Codec {
                what: format!("event {}", hex::encode(&k)),
                source: e,
            })?;
            let mut facts = Facts::default();
            load_facts(&mem, &mut facts, &event_reads(&rec.event))?;
            let changes = fold(&rec.event, rec.seq, rec.ts_ms, &facts);
            write_view_changes(&mut mem, &changes);
            events += 1;
        }
        let mut views = Vec::new();
        for name in view_cfs() {
            let mut live_h = ViewHasher::default();
            for item in snap.iterator_cf(rocks::cf(&live.db, name), IteratorMode::Start) {
                let (k, v) = item.map_err(rocks_err(&live.path))?;
                live_h.add(&k, &v);
            }
            let mut rebuilt_h = ViewHasher::default();
            if let Some(m) = mem.cfs.get(name) {
                for (k, v) in m {
                    rebuilt_h.add(k, v);
                }
            }
            let (live_keys, live_digest) = live_h.finish();
            let (rebuilt_keys, rebuilt_digest) = rebuilt_h.finish();
            views.push(ViewDigest {
                name,
                live_keys,
                live_digest,
                rebuilt_keys,
                rebuilt_digest,
            });
        }
        Ok(RebuildReport { events, views })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state_machine::tests::with_events;

    /// Views written by apply equal the rebuilt ones; a view changed behind the state
    /// machine's back is named.
    #[test]
    fn rebuilt_views_equal_live_ones_and_a_difference_is_named() {
        let tmp = tempfile::tempdir().expect("tmp");
        let sm = with_events(tmp.path(), 20);
        let view = sm.view();
        let report = view.rebuild_views_check().expect("check");
        assert_eq!(report.events, 20);
        assert!(report.all_equal(), "{report:?}");
        assert!(
            report
                .views
                .iter()
                .any(|v| v.name == "orgs" && v.live_keys == 20)
        );
        let live = view.shared_live();
        live.db
            .delete_cf(rocks::cf(&live.db, "orgs"), b"8003620000000013")
            .expect("delete");
        let report = view.rebuild_views_check().expect("check");
        let differing: Vec<&str> = report
            .views
            .iter()
            .filter(|v| !v.equal())
            .map(|v| v.name)
            .collect();
        assert_eq!(differing, ["orgs"]);
    }
}
