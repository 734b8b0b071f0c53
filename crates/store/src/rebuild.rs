//! Views rebuilt from the event store (invariant 5): every event is folded again, from
//! sequence 1, with the same `fold` and the same fact loading as the state machine, into a
//! scratch database beside the live one (`sm/rebuild-<n>/`, written without a WAL in large
//! batches, so the rebuild's memory does not grow with the store). Events are read from one
//! RocksDB snapshot and decoded on one thread, folded on another and written on a third.
//! Each side of each view (live at the same snapshot, rebuilt) is then digested (SHA-256
//! over its keys and values, in order) as its own task on two threads; a difference names
//! the view.
//!
//! With `repair`, views that differ are replaced: under the state machine's apply gate (no
//! entry is applied meanwhile), the events applied since the snapshot are folded into the
//! scratch views too, and every live view key that differs from the rebuilt one is
//! rewritten or deleted. The scratch database is removed at the end (and any left by a
//! crash, at the next start).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{DB, DBIteratorWithThreadMode, Direction, IteratorMode, WriteBatch};
use sealpost_core::codec;
use sealpost_core::event::EventRecord;
use sealpost_core::view::{Facts, event_reads, fold};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::rocks::{self, rocks_err};
use crate::sorted_writes::SortedWrites;
use crate::state_machine::{
    CF_EVENTS, CF_META, ChainState, KEY_CHAIN, SM_CFS, SmDb, StateView, ViewSource, load_facts,
    write_view_changes,
};

/// Events folded between two writes of the scratch views (and facts cached meanwhile).
pub const REBUILD_CHUNK_EVENTS: usize = 8192;
/// Chunks folded between two barriers (see the folding loop).
const REBUILD_CHUNKS_PER_BARRIER: usize = 8;
/// Decoded chunks waiting between the reading thread and the folding one.
const REBUILD_CHUNKS_QUEUED_MAX: usize = 4;
/// Threads comparing views (each view is walked by one of them).
const REBUILD_COMPARE_WORKERS: usize = 2;
/// Live keys rewritten per write batch while repairing.
const REPAIR_BATCH_KEYS_MAX: usize = 10_000;

/// The views the fold looks records up in (see `load_facts`). Only a speed hint: these
/// get memtable Bloom filters in the scratch database; a view missing here is still read
/// correctly, just more slowly.
const FOLD_READ_CFS: &[&str] = &[
    crate::state_machine::CF_ORGS,
    crate::state_machine::CF_ENDPOINTS,
    crate::state_machine::CF_MESSAGES,
    crate::state_machine::CF_IDEMPOTENCY,
    sealpost_core::view::ViewCf::Peers.name(),
];

/// Prefix of a scratch folder under `sm/`.
pub(crate) const SCRATCH_PREFIX: &str = "rebuild-";

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

/// The outcome of a rebuild.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RebuildReport {
    /// Events folded (as of the snapshot compared).
    pub events: u64,
    pub views: Vec<ViewDigest>,
    /// Live keys rewritten or deleted by a repair (0 without one, or when all were equal).
    pub repaired_keys: u64,
}

impl RebuildReport {
    pub fn all_equal(&self) -> bool {
        self.views.iter().all(ViewDigest::equal)
    }
}

/// Where a rebuild stands, for a progress bar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RebuildPhase {
    /// Events folded so far, of the total.
    Folding { done: u64, total: u64 },
    /// Views compared so far, of the total.
    Comparing { done: u64, total: u64 },
    /// Repairing the live views (applies wait meanwhile).
    Repairing,
}

/// Running digest of a view: each key and value length-prefixed, and the count.
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

/// The scratch database the views are rebuilt into; removed when dropped.
struct Scratch {
    db: Option<DB>,
    path: PathBuf,
}

impl Scratch {
    fn create(root: &Path) -> Result<Self> {
        let path = root.join(format!(
            "{SCRATCH_PREFIX}{}",
            crate::state_machine::now_nanos()
        ));
        let cfs: Vec<&str> = view_cfs().collect();
        let db = rocks::open(
            &path,
            &cfs,
            true,
            rocks::Tuning {
                scratch: true,
                point_reads_while_written: FOLD_READ_CFS,
                ..rocks::Tuning::default()
            },
        )?;
        Ok(Self { db: Some(db), path })
    }

    fn db(&self) -> &DB {
        self.db
            .as_ref()
            .expect("the scratch database is open until dropped")
    }

    fn write(&self, wb: WriteBatch) -> Result<()> {
        rocks::write(self.db(), &self.path, wb, rocks::Durability::Unlogged)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        drop(self.db.take());
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Reads view records from the scratch database (facts of earlier chunks).
struct ScratchSource<'a>(&'a Scratch);

impl ViewSource for ScratchSource<'_> {
    fn raw(&self, cf: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let db = self.0.db();
        db.get_cf(rocks::cf(db, cf), key)
            .map_err(rocks_err(&self.0.path))
    }
}

/// Folds records into `writes` for the scratch views. `facts` caches every view record
/// the fold reads or writes since the last barrier (see the folding loop), as the state
/// machine's facts do across one apply.
fn fold_into(
    scratch: &Scratch,
    facts: &mut Facts,
    recs: &[EventRecord],
    writes: &mut SortedWrites,
) -> Result<()> {
    for rec in recs {
        load_facts(&ScratchSource(scratch), facts, &event_reads(&rec.event))?;
        let changes = fold(&rec.event, rec.seq, rec.ts_ms, facts);
        write_view_changes(writes, &changes);
        facts.absorb_owned(changes);
    }
    Ok(())
}

/// Bytes read ahead of a rebuild's sequential scans.
const REBUILD_READAHEAD_BYTES: usize = 4 * 1024 * 1024;

/// Read options of a long sequential scan (at a snapshot, if given): read ahead, and leave
/// the block cache to the node's other readers.
fn scan_options(snap: Option<&rocksdb::SnapshotWithThreadMode<'_, DB>>) -> rocksdb::ReadOptions {
    let mut ro = rocksdb::ReadOptions::default();
    if let Some(s) = snap {
        ro.set_snapshot(s);
    }
    ro.set_readahead_size(REBUILD_READAHEAD_BYTES);
    ro.fill_cache(false);
    ro
}

fn decode(k: &[u8], v: &[u8]) -> Result<EventRecord> {
    EventRecord::decode_stored(v).map_err(|e| Error::Codec {
        what: format!("event {}", hex::encode(k)),
        source: e,
    })
}

/// A view's key count and digest.
type KeysDigest = (u64, [u8; 32]);

/// Key count and digest of one view, walking it in key order (a raw iterator: no copy of
/// each key and value).
fn digest_view(
    mut it: rocksdb::DBRawIteratorWithThreadMode<'_, DB>,
    path: &Path,
) -> Result<KeysDigest> {
    let mut h = ViewHasher::default();
    it.seek_to_first();
    while let (Some(k), Some(v)) = (it.key(), it.value()) {
        h.add(k, v);
        it.next();
    }
    it.status().map_err(rocks_err(path))?;
    Ok(h.finish())
}

/// Walks one view in both databases side by side and calls `on_diff` with each live key to
/// rewrite (`Some(rebuilt value)`) or delete (`None`) to make the live view equal.
fn diff_view(
    live: DBIteratorWithThreadMode<'_, DB>,
    rebuilt: DBIteratorWithThreadMode<'_, DB>,
    mut on_diff: impl FnMut(Box<[u8]>, Option<Box<[u8]>>) -> Result<()>,
    live_path: &Path,
    scratch_path: &Path,
) -> Result<()> {
    let (mut live, mut rebuilt) = (live, rebuilt);
    let mut next_live = || live.next().transpose().map_err(rocks_err(live_path));
    let mut next_rebuilt = || rebuilt.next().transpose().map_err(rocks_err(scratch_path));
    let (mut l, mut r) = (next_live()?, next_rebuilt()?);
    loop {
        match (l.take(), r.take()) {
            (None, None) => return Ok(()),
            (Some((lk, lv)), Some((rk, rv))) if lk == rk => {
                if lv != rv {
                    on_diff(lk, Some(rv))?;
                }
                (l, r) = (next_live()?, next_rebuilt()?);
            }
            (Some((lk, _)), rest) if rest.as_ref().is_none_or(|(rk, _)| lk < *rk) => {
                on_diff(lk, None)?;
                (l, r) = (next_live()?, rest);
            }
            (rest, Some((rk, rv))) => {
                on_diff(rk, Some(rv))?;
                (l, r) = (rest, next_rebuilt()?);
            }
            (Some(_), None) => unreachable!("handled by the arm above"),
        }
    }
}

impl StateView {
    /// Rebuilds every view and compares it with the live one; never changes the live views.
    pub fn rebuild_views_check(&self) -> Result<RebuildReport> {
        self.rebuild_views(false, |_| {})
    }

    /// Rebuilds every view from the event store into a scratch database, compares each with
    /// the live one at the same snapshot, and with `repair` replaces what differs (see the
    /// module notes). `progress` is called as the work advances.
    pub fn rebuild_views(
        &self,
        repair: bool,
        mut progress: impl FnMut(RebuildPhase),
    ) -> Result<RebuildReport> {
        let live = self.shared_live();
        let snap = live.db.snapshot();
        let chain: ChainState = match snap
            .get_cf(rocks::cf(&live.db, CF_META), KEY_CHAIN)
            .map_err(rocks_err(&live.path))?
        {
            Some(v) => codec::decode(&v).map_err(|e| Error::Codec {
                what: "meta/chain".into(),
                source: e,
            })?,
            None => ChainState::default(),
        };
        let total = chain.next_seq - 1;
        let scratch = Scratch::create(&self.root())?;

        // Fold: one thread reads and decodes chunks of events, this one folds them.
        let mut events = 0u64;
        std::thread::scope(|s| -> Result<()> {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Vec<EventRecord>>>(
                REBUILD_CHUNKS_QUEUED_MAX,
            );
            let cf_events = rocks::cf(&live.db, CF_EVENTS);
            let snap = &snap;
            let live_db = &live.db;
            let path = live.path.clone();
            let reader_path = path.clone();
            let reader = move || {
                let mut chunk = Vec::with_capacity(REBUILD_CHUNK_EVENTS);
                let ro = scan_options(Some(snap));
                for item in live_db.iterator_cf_opt(cf_events, ro, IteratorMode::Start) {
                    let rec = item
                        .map_err(rocks_err(&path))
                        .and_then(|(k, v)| decode(&k, &v));
                    match rec {
                        Ok(r) => chunk.push(r),
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    }
                    if chunk.len() == REBUILD_CHUNK_EVENTS {
                        let full =
                            std::mem::replace(&mut chunk, Vec::with_capacity(REBUILD_CHUNK_EVENTS));
                        if tx.send(Ok(full)).is_err() {
                            return; // the folder stopped
                        }
                    }
                }
                if !chunk.is_empty() {
                    let _ = tx.send(Ok(chunk));
                }
            };
            std::thread::Builder::new()
                .name("rebuild-read".into())
                .spawn_scoped(s, reader)
                .map_err(Error::io(&reader_path))?;
            // A third thread writes each chunk's batch while the next one is folded. A
            // record the fold reads comes from `facts` when a batch not yet written could
            // hold it (every record written since the last barrier is in `facts`), and
            // from the scratch database otherwise; at each barrier every batch has been
            // written and `facts` starts afresh, which bounds its memory.
            // (The writer also sorts each chunk's writes, off the folding thread.)
            // Each acknowledgement brings the written buffers back for the next chunk.
            let (wb_tx, wb_rx) = std::sync::mpsc::sync_channel::<SortedWrites>(1);
            let (ack_tx, ack_rx) = std::sync::mpsc::channel::<Result<SortedWrites>>();
            let writer_scratch = &scratch;
            std::thread::Builder::new()
                .name("rebuild-write".into())
                .spawn_scoped(s, move || {
                    for mut writes in wb_rx {
                        let r = writer_scratch.write(writes.batch(writer_scratch.db()));
                        writes.clear();
                        let failed = r.is_err();
                        if ack_tx.send(r.map(|()| writes)).is_err() || failed {
                            return;
                        }
                    }
                })
                .map_err(Error::io(&scratch.path))?;
            let writer_gone = || Error::Stopped("the rebuild's writer".into());
            let mut facts = Facts::default();
            let (mut outstanding, mut since_barrier) = (0usize, 0usize);
            // Buffers written and given back, ready for the next chunk (at most three
            // exist: one being written, one queued for the writer, one being filled).
            let mut spare: Vec<SortedWrites> = Vec::new();
            for chunk in rx {
                let chunk = chunk?;
                if since_barrier == REBUILD_CHUNKS_PER_BARRIER {
                    while outstanding > 0 {
                        spare.push(ack_rx.recv().map_err(|_| writer_gone())??);
                        outstanding -= 1;
                    }
                    facts.clear();
                    since_barrier = 0;
                }
                let mut writes = spare.pop().unwrap_or_else(SortedWrites::new);
                fold_into(&scratch, &mut facts, &chunk, &mut writes)?;
                wb_tx.send(writes).map_err(|_| writer_gone())?;
                outstanding += 1;
                since_barrier += 1;
                while let Ok(r) = ack_rx.try_recv() {
                    spare.push(r?);
                    outstanding -= 1;
                }
                events += chunk.len() as u64;
                progress(RebuildPhase::Folding {
                    done: events,
                    total,
                });
            }
            drop(wb_tx);
            while outstanding > 0 {
                ack_rx.recv().map_err(|_| writer_gone())??;
                outstanding -= 1;
            }
            Ok(())
        })?;

        // Digest every view on both sides at the snapshot: each side of each view is one
        // task, the tasks shared out among `REBUILD_COMPARE_WORKERS` threads, largest view
        // first (by RocksDB's estimates of its keys on either side), so the two sides of
        // the largest view are walked at once and the smallest fill in at the end. The
        // scratch views are read as they stand, memtables included (flushing them first
        // only wrote files to read them back). Digesting the live side during the fold
        // was tried: it slows the fold by more than it saves.
        let db = scratch.db();
        let names: Vec<&'static str> = view_cfs().collect();
        let estimate = |db: &DB, name: &str| {
            db.property_int_value_cf(rocks::cf(db, name), "rocksdb.estimate-num-keys")
                .ok()
                .flatten()
                .unwrap_or(0)
        };
        let mut order: Vec<(u64, usize)> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (estimate(&live.db, n).max(estimate(db, n)), i))
            .collect();
        order.sort_unstable_by(|a, b| b.cmp(a));
        let order: Vec<usize> = order.into_iter().map(|(_, i)| i).collect();
        let tasks = names.len() * 2;
        progress(RebuildPhase::Comparing {
            done: 0,
            total: tasks as u64,
        });
        let next = std::sync::atomic::AtomicUsize::new(0);
        let (done_tx, done_rx) = std::sync::mpsc::channel::<Result<(usize, bool, KeysDigest)>>();
        let mut sides: Vec<[Option<KeysDigest>; 2]> = vec![[None, None]; names.len()];
        std::thread::scope(|s| -> Result<()> {
            for _ in 0..REBUILD_COMPARE_WORKERS {
                let (names, order, next, done_tx, snap, live, scratch) = (
                    &names,
                    &order,
                    &next,
                    done_tx.clone(),
                    &snap,
                    &live,
                    &scratch,
                );
                s.spawn(move || {
                    loop {
                        let t = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let rebuilt = t % 2 == 1;
                        let Some(&i) = order.get(t / 2) else { return };
                        let name = names[i];
                        let digest = if rebuilt {
                            let db = scratch.db();
                            let it =
                                db.raw_iterator_cf_opt(rocks::cf(db, name), scan_options(None));
                            digest_view(it, &scratch.path)
                        } else {
                            let it = live.db.raw_iterator_cf_opt(
                                rocks::cf(&live.db, name),
                                scan_options(Some(snap)),
                            );
                            digest_view(it, &live.path)
                        };
                        let failed = digest.is_err();
                        if done_tx.send(digest.map(|d| (i, rebuilt, d))).is_err() || failed {
                            return;
                        }
                    }
                });
            }
            drop(done_tx);
            for (walked, r) in done_rx.into_iter().enumerate() {
                let (i, rebuilt, d) = r?;
                sides[i][usize::from(rebuilt)] = Some(d);
                progress(RebuildPhase::Comparing {
                    done: walked as u64 + 1,
                    total: tasks as u64,
                });
            }
            Ok(())
        })?;
        let views: Vec<ViewDigest> = names
            .iter()
            .zip(sides)
            .filter_map(|(name, [l, r])| {
                let ((live_keys, live_digest), (rebuilt_keys, rebuilt_digest)) = (l?, r?);
                Some(ViewDigest {
                    name,
                    live_keys,
                    live_digest,
                    rebuilt_keys,
                    rebuilt_digest,
                })
            })
            .collect();
        if views.len() != names.len() {
            return Err(Error::Stopped("a view comparison".into()));
        }
        drop(snap);
        let mut report = RebuildReport {
            events,
            views,
            repaired_keys: 0,
        };
        if repair && !report.all_equal() {
            progress(RebuildPhase::Repairing);
            report.repaired_keys = self.repair(&live, &scratch, total)?;
        }
        Ok(report)
    }

    /// Under the apply gate: folds the events applied since the compared snapshot into the
    /// scratch views, then rewrites every differing live view key.
    fn repair(&self, live: &Arc<SmDb>, scratch: &Scratch, folded: u64) -> Result<u64> {
        let _gate = self.apply_gate();
        if !Arc::ptr_eq(live, &self.shared_live()) {
            return Err(Error::Invalid(
                "a snapshot replaced this node's state machine during the rebuild; run it again"
                    .into(),
            ));
        }
        let newest = live.chain()?.next_seq - 1;
        let mut seq = folded + 1;
        while seq <= newest {
            let start = seq.to_be_bytes();
            let mut chunk = Vec::with_capacity(REBUILD_CHUNK_EVENTS);
            for item in live.db.iterator_cf(
                rocks::cf(&live.db, CF_EVENTS),
                IteratorMode::From(&start, Direction::Forward),
            ) {
                let (k, v) = item.map_err(rocks_err(&live.path))?;
                chunk.push(decode(&k, &v)?);
                if chunk.len() == REBUILD_CHUNK_EVENTS {
                    break;
                }
            }
            let Some(last) = chunk.last().map(|r| r.seq) else {
                break;
            };
            let mut writes = SortedWrites::new();
            fold_into(scratch, &mut Facts::default(), &chunk, &mut writes)?;
            scratch.write(writes.batch(scratch.db()))?;
            seq = last + 1;
        }
        let mut repaired = 0u64;
        for name in view_cfs() {
            let live_cf = rocks::cf(&live.db, name);
            let mut wb = WriteBatch::default();
            let mut staged = 0usize;
            let flush = |wb: &mut WriteBatch, staged: &mut usize| -> Result<()> {
                let full = std::mem::take(wb);
                rocks::write(&live.db, &live.path, full, rocks::Durability::Synced)?;
                *staged = 0;
                Ok(())
            };
            let on_diff = |k: Box<[u8]>, v: Option<Box<[u8]>>| -> Result<()> {
                match v {
                    Some(v) => wb.put_cf(live_cf, &k, &v),
                    None => wb.delete_cf(live_cf, &k),
                }
                staged += 1;
                repaired += 1;
                if staged >= REPAIR_BATCH_KEYS_MAX {
                    flush(&mut wb, &mut staged)?;
                }
                Ok(())
            };
            let l = live.db.iterator_cf(live_cf, IteratorMode::Start);
            let r = scratch
                .db()
                .iterator_cf(rocks::cf(scratch.db(), name), IteratorMode::Start);
            diff_view(l, r, on_diff, &live.path, &scratch.path)?;
            flush(&mut wb, &mut staged)?;
        }
        Ok(repaired)
    }
}

/// Removes scratch folders a crash left behind under `sm/`.
pub(crate) fn remove_stale_scratch(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(SCRATCH_PREFIX) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state_machine::tests::with_events;

    /// Views written by apply equal the rebuilt ones; a view changed behind the state
    /// machine's back is named, and a repair makes it equal again (and leaves no scratch
    /// folder behind).
    #[test]
    fn rebuilt_views_equal_live_ones_a_difference_is_named_and_repaired() {
        let tmp = tempfile::tempdir().expect("tmp");
        let sm = with_events(tmp.path(), 20);
        let view = sm.view();
        let mut phases = Vec::new();
        let report = view
            .rebuild_views(false, |p| phases.push(p))
            .expect("check");
        assert_eq!(report.events, 20);
        assert!(report.all_equal(), "{report:?}");
        assert!(phases.contains(&RebuildPhase::Folding {
            done: 20,
            total: 20
        }));
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
        live.db
            .put_cf(rocks::cf(&live.db, "dir_index"), b"zz-stray", b"")
            .expect("put");
        let report = view.rebuild_views_check().expect("check");
        let differing: Vec<&str> = report
            .views
            .iter()
            .filter(|v| !v.equal())
            .map(|v| v.name)
            .collect();
        assert_eq!(differing, ["orgs", "dir_index"]);
        assert_eq!(report.repaired_keys, 0, "a check changes nothing");
        let repaired = view.rebuild_views(true, |_| {}).expect("repair");
        assert_eq!(repaired.repaired_keys, 2);
        assert!(view.rebuild_views_check().expect("check").all_equal());
        let leftovers: Vec<_> = std::fs::read_dir(view.root())
            .expect("sm folder")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(SCRATCH_PREFIX))
            .collect();
        assert!(leftovers.is_empty());
    }
}
