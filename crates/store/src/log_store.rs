//! The Raft log in its own RocksDB instance: entries keyed by index, plus the vote, the
//! committed log id and the last purged log id.
//!
//! An append is one `WriteBatch` written to the WAL (readable at once) and handed to the
//! log's syncer thread, which fsyncs the WAL and only then tells openraft the entries are
//! durable: nothing acknowledged can be lost, the async runtime never waits on the disk, and
//! appends that arrive while an fsync runs share the next one (group commit). The log never
//! shares an instance with the state machine, so a snapshot never carries a vote or a log.
//!
//! A crash can cut the WAL's last record short; that record was never fsynced, so never
//! acknowledged, and RocksDB drops it on open (see [`crate::rocks`]). What must never be
//! dropped is an entry this node reported durable: a marker thread writes a *durable mark*
//! (the index the WAL was fsynced through, as the syncer reports it) to its own file at most
//! every [`LOG_DURABLE_MARK_INTERVAL_MS`], the store writes it on close, and a log that opens
//! shorter than its mark refuses to start, naming both indexes.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};
use prometheus_client::metrics::histogram::exponential_buckets;
use rocksdb::{DB, IteratorMode, WriteBatch};
use sealpost_core::codec;

use crate::error::{Error, Result};
use crate::rocks::{self, Durability};
use crate::timing::Timing;
use crate::types::{Entry, LogId, StorageError, StorageIOError, TypeConfig, Vote};

const CF_ENTRIES: &str = "entries";
const CF_META: &str = "meta";
const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged";

/// Entries read from the log in one call at most; openraft asks again for more.
pub const LOG_READ_ENTRIES_MAX: u64 = 4096;
/// Bytes a write batch spends on one entry besides its value: the record's tag, column
/// family, key and two length prefixes (an upper bound, used to size a batch up front).
const WRITE_BATCH_RECORD_OVERHEAD_BYTES: usize = 32;

/// Appends written but not yet fsynced, at most; one more append waits for room.
pub const LOG_SYNCS_PENDING_MAX: usize = 4096;
/// An fsync of the raft log slower than this is reported (it delays every commit).
pub const LOG_SYNC_SLOW_MS: u64 = 20;
/// Appends whose durability one fsync reports, at most.
pub const LOG_SYNC_GROUP_MAX: usize = 1024;
/// The durable mark is rewritten at most this often while appends are fsynced.
pub const LOG_DURABLE_MARK_INTERVAL_MS: u64 = 1_000;
/// The durable mark's file, in the log's folder (RocksDB ignores files it does not name).
pub const DURABLE_MARK_FILE: &str = "SEALPOST-DURABLE-MARK";
/// Bytes of the durable mark's file, at most.
const DURABLE_MARK_BYTES_MAX: u64 = 128;
const DURABLE_MARK_PREFIX: &str = "sealpost raft log fsynced through entry ";

/// The Raft log store. Cheap to clone: clones share the database.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<DB>,
    path: PathBuf,
    /// Bytes of entries appended since this store was opened, plus those it held then;
    /// never lowered (not by a purge, nor by a truncation): the snapshot policy compares
    /// it with its value at the last snapshot.
    bytes_appended: AtomicU64,
    /// Appends waiting for the syncer's fsync; `None` once closing.
    sync_tx: Option<SyncSender<LogFlushed<TypeConfig>>>,
    syncer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Writes the durable mark off the syncer's path.
    marker: Mutex<Option<std::thread::JoinHandle<()>>>,
    sync: Arc<SyncState>,
}

/// What the writers and the syncer thread share.
struct SyncState {
    path: PathBuf,
    /// Broken on purpose (see [`crate::StoreOptions::unsafe_skip_fsync`]).
    skip_fsync: bool,
    /// Held by every write and by the syncer's fsync, so an fsync never runs while a WAL
    /// record is half written: RocksDB syncs the WAL file as far as it is written, and a
    /// large batch reaches the file in several writes, so without this a power cut right
    /// after an fsync could leave a torn final record that was reported durable.
    wal_lock: Mutex<()>,
    /// The highest entry index written to the WAL (lowered by a truncation).
    written: AtomicU64,
    mark: Mutex<Mark>,
    /// Seconds each fsync of the WAL took (the metrics listener exports it).
    fsync_seconds: Timing,
    /// The committed index openraft last saved.
    committed: AtomicU64,
    /// The newest point (epoch, entry index) the syncer fsynced through and the marker
    /// thread has not written yet.
    reported: Mutex<Option<(u64, u64)>>,
    /// Set when the store closes: the marker thread stops waiting out its interval.
    closing: Mutex<bool>,
    closing_cv: std::sync::Condvar,
}

/// Bucket bounds of the fsync histogram: 100 µs doubling to about 3.3 s.
fn fsync_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.000_1, 2.0, 16)
}

/// What the durable mark's file says.
struct Mark {
    on_disk: u64,
    /// Raised by every truncation: a mark computed before one is stale and not written.
    epoch: u64,
}

/// Reads the durable mark of the log at `path`: 0 when there is none yet.
fn read_mark(path: &Path) -> Result<u64> {
    let file = path.join(DURABLE_MARK_FILE);
    let len = match std::fs::metadata(&file) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::io(&file)(e)),
    };
    let bad = |detail: String| Error::Corrupt {
        path: file.clone(),
        detail,
    };
    if len > DURABLE_MARK_BYTES_MAX {
        return Err(bad(format!(
            "the durable mark is {len} bytes, more than {DURABLE_MARK_BYTES_MAX}"
        )));
    }
    let text = std::fs::read_to_string(&file).map_err(Error::io(&file))?;
    text.strip_prefix(DURABLE_MARK_PREFIX)
        .and_then(|rest| rest.strip_suffix('\n'))
        .and_then(|n| n.parse::<u64>().ok())
        .ok_or_else(|| bad(format!("the durable mark does not parse: {text:?}")))
}

/// Replaces the durable mark of the log at `path` with `index`: a new file fsynced, renamed
/// over the old one, and the folder fsynced.
fn write_mark(path: &Path, index: u64) -> Result<()> {
    use std::io::Write;
    let file = path.join(DURABLE_MARK_FILE);
    let tmp = path.join(format!("{DURABLE_MARK_FILE}.tmp"));
    let mut f = std::fs::File::create(&tmp).map_err(Error::io(&tmp))?;
    f.write_all(format!("{DURABLE_MARK_PREFIX}{index}\n").as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(Error::io(&tmp))?;
    std::fs::rename(&tmp, &file).map_err(Error::io(&file))?;
    std::fs::File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(Error::io(path))
}

impl SyncState {
    /// The state of a log at `path` whose durable mark says `on_disk`.
    fn new(path: &Path, skip_fsync: bool, on_disk: u64) -> Self {
        Self {
            path: path.to_path_buf(),
            skip_fsync,
            wal_lock: Mutex::new(()),
            written: AtomicU64::new(0),
            mark: Mutex::new(Mark { on_disk, epoch: 0 }),
            fsync_seconds: Timing::new(fsync_buckets()),
            committed: AtomicU64::new(0),
            reported: Mutex::new(None),
            closing: Mutex::new(false),
            closing_cv: std::sync::Condvar::new(),
        }
    }

    /// Records that the WAL is fsynced through `index`, if no truncation happened since
    /// `epoch`.
    fn advance_mark(&self, index: u64, epoch: u64) {
        if self.skip_fsync {
            return;
        }
        let mut mark = self
            .mark
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if mark.epoch != epoch || index <= mark.on_disk {
            return;
        }
        match write_mark(&self.path, index) {
            Ok(()) => mark.on_disk = index,
            // The entries are durable either way; only the check at the next start is
            // weaker until a later write succeeds.
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "writing the raft log's durable mark failed")
            }
        }
    }

    /// The epoch and the highest entry written, read together.
    fn mark_point(&self) -> (u64, u64) {
        let mark = self
            .mark
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (mark.epoch, self.written.load(Ordering::Acquire))
    }

    /// Waits until `deadline` or until the store closes; true when it closes.
    fn wait_closing(&self, deadline: Instant) -> bool {
        let mut closing = self
            .closing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Bounded by the deadline: every pass waits until it or returns.
        loop {
            if *closing {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            closing = match self.closing_cv.wait_timeout(closing, deadline - now) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
    }

    /// Tells the marker thread the store is closing.
    fn close(&self) {
        *self
            .closing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = true;
        self.closing_cv.notify_all();
    }

    /// Fsyncs the WAL, never while a write is half done.
    fn fsync(&self, db: &DB) -> std::result::Result<(), rocksdb::Error> {
        let _wal = self
            .wal_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        db.flush_wal(true)
    }
}

impl Inner {
    /// Writes `batch`, never while the syncer is fsyncing the WAL.
    fn write(&self, batch: WriteBatch, durability: Durability) -> Result<()> {
        let _wal = self
            .sync
            .wal_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        rocks::write(&self.db, &self.path, batch, durability)
    }

    /// The durability of writes that must survive power loss.
    fn synced(&self) -> Durability {
        if self.sync.skip_fsync {
            Durability::Logged
        } else {
            Durability::Synced
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel ends the syncer after it reports what is pending; joining it
        // means the database is closed when the last clone of the store is gone.
        self.sync_tx = None;
        let handle = self.syncer.lock().map(|mut h| h.take()).unwrap_or_default();
        if let Some(h) = handle {
            let _ = h.join();
        }
        // The syncer's end closed the marker's channel, and closing ends its wait: it
        // ends too.
        self.sync.close();
        let marker = self.marker.lock().map(|mut h| h.take()).unwrap_or_default();
        if let Some(h) = marker {
            let _ = h.join();
        }
        // Everything written is fsynced now, so the mark can say so: a log found shorter at
        // the next start lost entries after a clean stop.
        if !self.sync.skip_fsync {
            let (epoch, written) = self.sync.mark_point();
            match self.sync.fsync(&self.db) {
                Ok(()) => self.sync.advance_mark(written, epoch),
                Err(e) => {
                    tracing::error!(path = %self.path.display(), error = %e, "raft log fsync at close failed")
                }
            }
        }
    }
}

/// The syncer thread: waits for an append, takes every other one already waiting (up to
/// [`LOG_SYNC_GROUP_MAX`]), fsyncs the WAL once, and reports them all durable (or failed).
fn run_syncer(
    db: Arc<DB>,
    state: Arc<SyncState>,
    rx: Receiver<LogFlushed<TypeConfig>>,
    mark_tx: SyncSender<()>,
) {
    let path = &state.path;
    let mut group = Vec::with_capacity(LOG_SYNC_GROUP_MAX);
    while let Ok(first) = rx.recv() {
        group.push(first);
        while group.len() < LOG_SYNC_GROUP_MAX {
            match rx.try_recv() {
                Ok(next) => group.push(next),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        let started = std::time::Instant::now();
        // Every entry written so far is covered by the fsync below.
        let (epoch, written) = state.mark_point();
        let synced = if state.skip_fsync {
            Ok(())
        } else {
            state.fsync(&db)
        };
        let took = started.elapsed();
        if !state.skip_fsync {
            state.fsync_seconds.observe(took);
        }
        if took > std::time::Duration::from_millis(LOG_SYNC_SLOW_MS) {
            tracing::warn!(path = %path.display(), ms = took.as_millis() as u64, appends = group.len(), "slow raft log fsync");
        }
        if let Err(e) = &synced {
            tracing::error!(path = %path.display(), error = %e, "raft log fsync failed");
        }
        for callback in group.drain(..) {
            callback.log_io_completed(
                synced
                    .as_ref()
                    .map(|_| ())
                    .map_err(|e| std::io::Error::other(e.to_string())),
            );
        }
        if synced.is_ok() {
            // The marker thread writes it (never this thread: its fsyncs would delay the
            // next group). The newest point replaces an older one not written yet; the
            // wake-up is dropped when one is already pending.
            *state
                .reported
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((epoch, written));
            let _ = mark_tx.try_send(());
        }
    }
}

/// The marker thread: writes the durable mark for the newest point the syncer reported, at
/// most once per [`LOG_DURABLE_MARK_INTERVAL_MS`]; ends when the syncer does or the store
/// closes. While it waits out the interval it takes no wake-up, so the fsyncs in between
/// (one per commit) do not wake it: at most one is pending when the wait ends.
fn run_marker(state: Arc<SyncState>, rx: Receiver<()>) {
    let gap = Duration::from_millis(LOG_DURABLE_MARK_INTERVAL_MS);
    let mut last_write: Option<Instant> = None;
    while rx.recv().is_ok() {
        if let Some(deadline) = last_write.map(|t| t + gap)
            && state.wait_closing(deadline)
        {
            // Closing: the store writes the final mark itself.
            return;
        }
        let point = state
            .reported
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some((epoch, index)) = point {
            state.advance_mark(index, epoch);
            last_write = Some(Instant::now());
        }
    }
}

fn key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn index_of(key: &[u8]) -> Result<u64> {
    let bytes: [u8; 8] = key
        .try_into()
        .map_err(|_| Error::Invalid(format!("log key of {} bytes", key.len())))?;
    Ok(u64::from_be_bytes(bytes))
}

fn io_err(e: Error) -> StorageError {
    StorageIOError::read_logs(&e).into()
}

impl LogStore {
    /// Opens the log at `path`, creating it when `create`. Every stored entry is decoded and
    /// checked for density once, so a damaged log refuses to start here rather than fail
    /// later in the middle of replication.
    pub fn open(path: &Path, create: bool) -> Result<Self> {
        Self::open_with(path, create, false)
    }

    /// [`Self::open`], with the fsync skipped when `skip_fsync` (broken on purpose: see
    /// [`crate::StoreOptions::unsafe_skip_fsync`]).
    pub fn open_with(path: &Path, create: bool, skip_fsync: bool) -> Result<Self> {
        let db = Arc::new(rocks::open(
            path,
            &[CF_ENTRIES, CF_META],
            create,
            rocks::Tuning {
                uncompressed: &[CF_ENTRIES],
                // The metadata (vote, committed index, purge point) is written seldom and
                // would never fill its memtable: flushed on its own terms it would pin every
                // WAL file since its first write, up to RocksDB's default total of four
                // times all memtables (1 GiB), replayed at every start. Flushed with the
                // entries, the WAL behind each flush is deleted.
                atomic_flush: true,
                ..rocks::Tuning::default()
            },
        )?);
        let (sync_tx, rx) = std::sync::mpsc::sync_channel(LOG_SYNCS_PENDING_MAX);
        let on_disk = read_mark(path)?;
        let sync = Arc::new(SyncState::new(path, skip_fsync, on_disk));
        let (mark_tx, mark_rx) = std::sync::mpsc::sync_channel(1);
        let marker = std::thread::Builder::new()
            .name("raft-log-mark".into())
            .spawn({
                let sync = sync.clone();
                move || run_marker(sync, mark_rx)
            })
            .map_err(Error::io(path))?;
        let syncer = std::thread::Builder::new()
            .name("raft-log-sync".into())
            .spawn({
                let (db, sync) = (db.clone(), sync.clone());
                move || run_syncer(db, sync, rx, mark_tx)
            })
            .map_err(Error::io(path))?;
        let store = Self {
            inner: Arc::new(Inner {
                db,
                path: path.to_path_buf(),
                bytes_appended: AtomicU64::new(0),
                sync_tx: Some(sync_tx),
                syncer: Mutex::new(Some(syncer)),
                marker: Mutex::new(Some(marker)),
                sync,
            }),
        };
        let last = store.check()?;
        if last < on_disk {
            return Err(store.corrupt(format!(
                "the log ends at entry {last} but was fsynced through entry {on_disk} \
                 (see {DURABLE_MARK_FILE}): entries this node reported durable are missing"
            )));
        }
        store.inner.sync.written.store(last, Ordering::Release);
        Ok(store)
    }

    fn corrupt(&self, detail: String) -> Error {
        Error::Corrupt {
            path: self.inner.path.clone(),
            detail,
        }
    }

    /// Checks every entry and the metadata; returns the index the log reaches (its last
    /// entry, or the last purged one), 0 when empty.
    fn check(&self) -> Result<u64> {
        let db = &self.inner.db;
        let cf = rocks::cf(db, CF_ENTRIES);
        let mut prev: Option<u64> = None;
        let mut bytes = 0u64;
        for item in db.iterator_cf(cf, IteratorMode::Start) {
            let (k, v) = item.map_err(rocks::rocks_err(&self.inner.path))?;
            let index = index_of(&k).map_err(|e| self.corrupt(e.to_string()))?;
            let entry: Entry = codec::decode(&v)
                .map_err(|e| self.corrupt(format!("log entry {index} does not decode: {e}")))?;
            if entry.log_id.index != index {
                return Err(self.corrupt(format!(
                    "log entry stored at {index} claims index {}",
                    entry.log_id.index
                )));
            }
            if let Some(p) = prev
                && index != p + 1
            {
                return Err(self.corrupt(format!("log has a hole between {p} and {index}")));
            }
            prev = Some(index);
            bytes += v.len() as u64;
        }
        self.inner.bytes_appended.store(bytes, Ordering::Relaxed);
        self.read_meta::<Vote>(KEY_VOTE)?;
        self.read_meta::<Option<LogId>>(KEY_COMMITTED)?;
        let purged = self
            .read_meta::<LogId>(KEY_LAST_PURGED)?
            .map_or(0, |l| l.index);
        Ok(prev.unwrap_or(0).max(purged))
    }

    fn read_meta<T: serde::de::DeserializeOwned>(&self, k: &[u8]) -> Result<Option<T>> {
        let db = &self.inner.db;
        match db
            .get_cf(rocks::cf(db, CF_META), k)
            .map_err(rocks::rocks_err(&self.inner.path))?
        {
            None => Ok(None),
            Some(v) => codec::decode(&v).map(Some).map_err(|e| {
                self.corrupt(format!(
                    "log metadata {} does not decode: {e}",
                    String::from_utf8_lossy(k)
                ))
            }),
        }
    }

    fn write_meta<T: serde::Serialize>(&self, k: &[u8], v: &T) -> Result<()> {
        let mut b = WriteBatch::default();
        b.put_cf(rocks::cf(&self.inner.db, CF_META), k, codec::encode(v));
        self.inner.write(b, self.inner.synced())
    }

    /// Seeds an empty log for a restored node (see [`crate::restore`]): everything through
    /// `last` purged and committed, `vote` saved, and `entry` (at `last.index + 1`) appended;
    /// all in one synced write.
    pub(crate) fn seed(&self, last: LogId, vote: Vote, entry: Entry) -> Result<()> {
        if self.last_entry()?.is_some() || self.read_meta::<LogId>(KEY_LAST_PURGED)?.is_some() {
            return Err(Error::Invalid("only an empty log can be seeded".into()));
        }
        let db = &self.inner.db;
        let index = entry.log_id.index;
        let mut b = WriteBatch::default();
        let meta = rocks::cf(db, CF_META);
        b.put_cf(meta, KEY_LAST_PURGED, codec::encode(&last));
        b.put_cf(meta, KEY_COMMITTED, codec::encode(&Some(last)));
        b.put_cf(meta, KEY_VOTE, codec::encode(&vote));
        b.put_cf(rocks::cf(db, CF_ENTRIES), key(index), codec::encode(&entry));
        self.inner.write(b, Durability::Synced)?;
        self.inner.sync.written.fetch_max(index, Ordering::AcqRel);
        Ok(())
    }

    /// Seconds each fsync of the WAL took (shared: observations continue in the clone).
    pub fn fsync_seconds(&self) -> Timing {
        self.inner.sync.fsync_seconds.clone()
    }

    /// The committed index openraft last saved (0 before the first save since opening).
    pub fn committed_index(&self) -> u64 {
        self.inner.sync.committed.load(Ordering::Relaxed)
    }

    /// Bytes of log entries appended since this store was opened, plus the bytes it held
    /// then; only ever grows (see [`Inner::bytes_appended`]).
    pub fn bytes_appended(&self) -> u64 {
        self.inner.bytes_appended.load(Ordering::Relaxed)
    }

    /// What the log's database holds on disk and in memory.
    pub fn disk_usage(&self) -> Result<rocks::DiskUsage> {
        rocks::disk_usage(&self.inner.db, &self.inner.path, &[CF_ENTRIES, CF_META])
    }

    /// Number of entries currently held (after purges).
    pub fn entry_count(&self) -> Result<u64> {
        let first = self.first_index()?;
        let last = self.last_entry()?.map(|e| e.log_id.index);
        Ok(match (first, last) {
            (Some(f), Some(l)) => l - f + 1,
            _ => 0,
        })
    }

    fn first_index(&self) -> Result<Option<u64>> {
        let db = &self.inner.db;
        match db
            .iterator_cf(rocks::cf(db, CF_ENTRIES), IteratorMode::Start)
            .next()
        {
            None => Ok(None),
            Some(item) => {
                let (k, _) = item.map_err(rocks::rocks_err(&self.inner.path))?;
                index_of(&k).map(Some)
            }
        }
    }

    fn last_entry(&self) -> Result<Option<Entry>> {
        let db = &self.inner.db;
        match db
            .iterator_cf(rocks::cf(db, CF_ENTRIES), IteratorMode::End)
            .next()
        {
            None => Ok(None),
            Some(item) => {
                let (_, v) = item.map_err(rocks::rocks_err(&self.inner.path))?;
                codec::decode(&v).map(Some).map_err(|e| Error::Codec {
                    what: "last log entry".into(),
                    source: e,
                })
            }
        }
    }

    fn entries(&self, start: u64, end_exclusive: u64) -> Result<Vec<Entry>> {
        let db = &self.inner.db;
        let cf = rocks::cf(db, CF_ENTRIES);
        let end = end_exclusive.min(start.saturating_add(LOG_READ_ENTRIES_MAX));
        let mut out = Vec::new();
        // A raw iterator lends each value in place; the plain one copies every key and
        // value into a box first, which for a full entry was one more copy of each
        // envelope on every read (openraft reads each entry back once per follower and
        // once to apply it).
        let mut it = db.raw_iterator_cf(cf);
        it.seek(key(start));
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            let index = index_of(k)?;
            if index >= end {
                break;
            }
            let entry: Entry = codec::decode(v).map_err(|e| Error::Codec {
                what: format!("log entry {index}"),
                source: e,
            })?;
            out.push(entry);
            it.next();
        }
        it.status().map_err(rocks::rocks_err(&self.inner.path))?;
        Ok(out)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => x + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(x) => x + 1,
            Bound::Excluded(x) => *x,
            Bound::Unbounded => u64::MAX,
        };
        self.entries(start, end).map_err(io_err)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged: Option<LogId> = self.read_meta(KEY_LAST_PURGED).map_err(io_err)?;
        let last = self
            .last_entry()
            .map_err(io_err)?
            .map(|e| e.log_id)
            .or(last_purged);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.write_meta(KEY_VOTE, vote)
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.read_meta(KEY_VOTE)
            .map_err(|e| StorageIOError::read_vote(&e).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Written without sync: a lost committed marker only means re-applying from the
        // state machine's own last applied id, which is always safe.
        let mut b = WriteBatch::default();
        b.put_cf(
            rocks::cf(&self.inner.db, CF_META),
            KEY_COMMITTED,
            codec::encode(&committed),
        );
        self.inner
            .write(b, Durability::Logged)
            .map_err(|e| StorageError::from(StorageIOError::write_logs(&e)))?;
        if let Some(c) = committed {
            self.inner.sync.committed.store(c.index, Ordering::Relaxed);
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self
            .read_meta::<Option<LogId>>(KEY_COMMITTED)
            .map_err(io_err)?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let cf = rocks::cf(&self.inner.db, CF_ENTRIES);
        let mut bytes = 0u64;
        let mut last = 0;
        let encoded: Vec<(u64, Vec<u8>)> = entries
            .into_iter()
            .map(|entry| {
                let v = codec::encode(&entry);
                bytes += v.len() as u64;
                last = last.max(entry.log_id.index);
                (entry.log_id.index, v)
            })
            .collect();
        // Sized up front: a batch grown put by put copies everything it holds each time
        // its buffer doubles.
        let mut batch = WriteBatch::with_capacity_bytes(
            usize::try_from(bytes)
                .unwrap_or(usize::MAX)
                .saturating_add(encoded.len() * WRITE_BATCH_RECORD_OVERHEAD_BYTES),
        );
        for (index, v) in &encoded {
            batch.put_cf(cf, key(*index), v);
        }
        // One batch, written now (so readable when this returns) and fsynced by the syncer
        // (with whatever else is waiting) before openraft hears it is durable.
        if let Err(e) = self.inner.write(batch, Durability::Logged) {
            callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
            return Err(StorageIOError::write_logs(&e).into());
        }
        self.inner
            .bytes_appended
            .fetch_add(bytes, Ordering::Relaxed);
        self.inner.sync.written.fetch_max(last, Ordering::AcqRel);
        let queued = match &self.inner.sync_tx {
            Some(tx) => tx.send(callback).map_err(|e| e.0),
            None => Err(callback),
        };
        if let Err(callback) = queued {
            let e = std::io::Error::other("the raft log syncer has stopped");
            let err = StorageIOError::write_logs(&e).into();
            callback.log_io_completed(Err(e));
            return Err(err);
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let werr = |e: &Error| StorageError::from(StorageIOError::write_logs(e));
        // The mark comes down first (durably) so it never claims an entry removed here;
        // the epoch makes a mark the syncer computed before this one stale.
        let sync = &self.inner.sync;
        let mut mark = sync
            .mark
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        mark.epoch += 1;
        let keep = log_id.index.saturating_sub(1);
        if mark.on_disk > keep && !sync.skip_fsync {
            write_mark(&sync.path, keep).map_err(|e| werr(&e))?;
            mark.on_disk = keep;
        }
        sync.written.fetch_min(keep, Ordering::AcqRel);
        let mut b = WriteBatch::default();
        b.delete_range_cf(
            rocks::cf(&self.inner.db, CF_ENTRIES),
            key(log_id.index),
            key(u64::MAX),
        );
        self.inner
            .write(b, self.inner.synced())
            .map_err(|e| werr(&e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut b = WriteBatch::default();
        b.put_cf(
            rocks::cf(&self.inner.db, CF_META),
            KEY_LAST_PURGED,
            codec::encode(&log_id),
        );
        b.delete_range_cf(
            rocks::cf(&self.inner.db, CF_ENTRIES),
            key(0),
            key(log_id.index + 1),
        );
        self.inner
            .write(b, self.inner.synced())
            .map_err(|e| StorageError::from(StorageIOError::write_logs(&e)))?;
        // The range deletion hides the purged entries; dropping the table files that hold
        // nothing else saves a compaction reading them all back only to discard them (after
        // each snapshot that was hundreds of megabytes per node under load, and it held up
        // commits). Only space is at stake here, so a failure is logged, not returned.
        let db = &self.inner.db;
        if let Err(e) =
            db.delete_file_in_range_cf(rocks::cf(db, CF_ENTRIES), key(0), key(log_id.index))
        {
            tracing::warn!(path = %self.inner.path.display(), error = %e, "dropping the raft log's purged table files failed");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;

    /// Writes raw values into a new log's entries, bypassing every check.
    fn raw_log(path: &Path, values: Vec<(u64, Vec<u8>)>) {
        let log = LogStore::open(path, true).expect("open");
        let mut b = WriteBatch::default();
        for (index, v) in values {
            b.put_cf(rocks::cf(&log.inner.db, CF_ENTRIES), key(index), v);
        }
        rocks::write(&log.inner.db, path, b, Durability::Synced).expect("write");
    }

    fn blank(index: u64) -> (u64, Vec<u8>) {
        let e = Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Blank,
        };
        (index, codec::encode(&e))
    }

    /// A log holding an entry that does not decode refuses to open and names the entry.
    #[test]
    fn a_corrupted_log_record_refuses_to_start() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("raft-log");
        raw_log(
            &path,
            vec![blank(1), blank(2), blank(3), (4, b"\x01garbage".to_vec())],
        );
        let err = LogStore::open(&path, false).err().expect("must refuse");
        assert!(err.is_corrupt(), "{err}");
        assert!(err.to_string().contains("log entry 4"), "{err}");
    }

    /// Writes blank entries `range` to the WAL as an append does (without its callback).
    fn put_blanks(log: &LogStore, range: std::ops::RangeInclusive<u64>) {
        let mut b = WriteBatch::default();
        let last = *range.end();
        for index in range {
            let (k, v) = blank(index);
            b.put_cf(rocks::cf(&log.inner.db, CF_ENTRIES), key(k), v);
        }
        log.inner.write(b, Durability::Logged).expect("write");
        log.inner.sync.written.fetch_max(last, Ordering::AcqRel);
    }

    /// Table files of the entries column family.
    fn entry_files(log: &LogStore) -> u64 {
        let db = &log.inner.db;
        (0..7)
            .map(|level| {
                db.property_int_value_cf(
                    rocks::cf(db, CF_ENTRIES),
                    &format!("rocksdb.num-files-at-level{level}"),
                )
                .expect("property")
                .unwrap_or(0)
            })
            .sum()
    }

    /// A purge drops the table files that hold only purged entries (no compaction has to
    /// read them back), keeps the ones that still hold live entries, and the log reads on.
    #[tokio::test]
    async fn a_purge_drops_the_table_files_it_empties() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("raft-log");
        let mut log = LogStore::open(&path, true).expect("open");
        let db = log.inner.db.clone();
        // Three table files below level 0 (which a purge never drops from: its files may
        // overlap), as compactions leave them: entries 1-10, 11-20, 21-30.
        for first in [1u64, 11, 21] {
            put_blanks(&log, first..=first + 9);
            let cf = rocks::cf(&db, CF_ENTRIES);
            db.flush_cf(cf).expect("flush");
            db.compact_range_cf(cf, Some(key(first)), Some(key(first + 9)));
        }
        assert_eq!(entry_files(&log), 3);
        let at = |index| LogId::new(CommittedLeaderId::new(1, 1), index);
        // 15 empties only the first file.
        log.purge(at(15)).await.expect("purge");
        assert_eq!(entry_files(&log), 2);
        // 20 empties the second one too, to its last key.
        log.purge(at(20)).await.expect("purge");
        assert_eq!(entry_files(&log), 1);
        let rest = log.try_get_log_entries(0..100).await.expect("read");
        let indexes: Vec<u64> = rest.iter().map(|e| e.log_id.index).collect();
        assert_eq!(indexes, (21..=30).collect::<Vec<_>>());
        let state = log.get_log_state().await.expect("state");
        assert_eq!(state.last_purged_log_id, Some(at(20)));
        assert_eq!(state.last_log_id.map(|l| l.index), Some(30));
    }

    /// When the entries' memtable fills and flushes, the metadata (written once here, as a
    /// vote is) flushes with it, so the WAL files behind the flush are deleted: the WAL
    /// holds about what the memtables hold, not everything since the metadata was written.
    #[test]
    fn a_flush_of_the_entries_frees_the_wal_behind_it() {
        const VALUE_BYTES: usize = 1 << 20;
        const VALUES: u64 = 96;
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("raft-log");
        let log = LogStore::open(&path, true).expect("open");
        let vote = Vote::new(1, 1);
        log.inner
            .write(
                {
                    let mut b = WriteBatch::default();
                    b.put_cf(
                        rocks::cf(&log.inner.db, CF_META),
                        KEY_VOTE,
                        codec::encode(&vote),
                    );
                    b
                },
                Durability::Synced,
            )
            .expect("vote");
        // 96 MiB of entries in 1 MiB values: more than one 64 MiB memtable.
        for index in 1..=VALUES {
            let mut b = WriteBatch::default();
            let value = vec![index as u8; VALUE_BYTES];
            b.put_cf(rocks::cf(&log.inner.db, CF_ENTRIES), key(index), value);
            log.inner.write(b, Durability::Logged).expect("write");
        }
        // The flush, and the removal of the WAL files it makes obsolete, run in the
        // background: wait for both (bounded).
        let written = VALUES * VALUE_BYTES as u64;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let used = log.disk_usage().expect("usage");
            if used.sst_bytes > written / 2 && used.wal_bytes < written / 2 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "30 s after writing {written} bytes the WAL still holds {} of them: {used:?}",
                used.wal_bytes
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    fn last_index(log: &LogStore) -> Option<u64> {
        log.last_entry().expect("last").map(|e| e.log_id.index)
    }

    /// The newest WAL file of the log at `path`.
    fn newest_wal(path: &Path) -> PathBuf {
        let mut wals: Vec<PathBuf> = std::fs::read_dir(path)
            .expect("list")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        wals.sort();
        wals.pop().expect("a WAL file")
    }

    fn append_bytes(file: &Path, bytes: &[u8]) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(file)
            .expect("open");
        f.write_all(bytes).expect("write");
        f.sync_all().expect("sync");
    }

    /// A record cut short at the end of the WAL (a process killed while writing it, before
    /// any fsync covered it) is dropped, and the log opens with everything before it.
    #[test]
    fn a_torn_final_wal_record_is_dropped() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("raft-log");
        {
            let log = LogStore::open(&path, true).expect("open");
            put_blanks(&log, 1..=10);
        }
        // A full-record header claiming 500 bytes, followed by only 20 of them.
        let mut torn = vec![0x5a, 0x5a, 0x5a, 0x5a, 0xf4, 0x01, 1];
        torn.extend_from_slice(&[0xab; 20]);
        append_bytes(&newest_wal(&path), &torn);
        let log = LogStore::open(&path, false).expect("a torn tail must not stop the node");
        assert_eq!(last_index(&log), Some(10));
    }

    /// A flipped byte inside the WAL is damage, not a torn tail: the log refuses to open.
    #[test]
    fn a_flipped_wal_byte_refuses_to_start() {
        use std::io::{Read, Seek, SeekFrom, Write};
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("raft-log");
        {
            let log = LogStore::open(&path, true).expect("open");
            for i in 0..20 {
                put_blanks(&log, i * 10 + 1..=i * 10 + 10);
            }
        }
        let wal = newest_wal(&path);
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&wal)
            .expect("open");
        let at = f.metadata().expect("len").len() / 2;
        let mut b = [0u8; 1];
        f.seek(SeekFrom::Start(at)).expect("seek");
        f.read_exact(&mut b).expect("read");
        f.seek(SeekFrom::Start(at)).expect("seek");
        f.write_all(&[b[0] ^ 0x10]).expect("write");
        f.sync_all().expect("sync");
        drop(f);
        let err = LogStore::open(&path, false).err().expect("must refuse");
        assert!(err.is_corrupt(), "{err}");
    }

    /// A clean close marks the log durable through its last entry; a log that opens shorter
    /// than its mark lost entries it reported durable, and refuses to start.
    #[test]
    fn a_log_shorter_than_its_durable_mark_refuses_to_start() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("raft-log");
        {
            let log = LogStore::open(&path, true).expect("open");
            put_blanks(&log, 1..=50);
        }
        assert_eq!(read_mark(&path).expect("mark"), 50);
        // Damage that drops entries 41..=50 without leaving a trace RocksDB can see.
        {
            let db = rocks::open(
                &path,
                &[CF_ENTRIES, CF_META],
                false,
                rocks::Tuning::default(),
            )
            .expect("raw open");
            let mut b = WriteBatch::default();
            b.delete_range_cf(rocks::cf(&db, CF_ENTRIES), key(41), key(u64::MAX));
            rocks::write(&db, &path, b, Durability::Synced).expect("delete");
        }
        let err = LogStore::open(&path, false).err().expect("must refuse");
        assert!(err.is_corrupt(), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("ends at entry 40") && msg.contains("fsynced through entry 50"),
            "{msg}"
        );
    }

    /// The marker writes the first point at once and then at most once per interval, the
    /// newest point reported meanwhile (never an older one), and it stops waiting as soon
    /// as the store closes.
    #[test]
    fn the_marker_writes_the_newest_point_once_per_interval_and_stops_on_close() {
        let dir = tempfile::tempdir().expect("tmp");
        let state = Arc::new(SyncState::new(dir.path(), false, 0));
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let marker = std::thread::spawn({
            let state = state.clone();
            move || run_marker(state, rx)
        });
        let report = |index: u64| {
            *state.reported.lock().expect("lock") = Some((0, index));
            let _ = tx.try_send(());
        };
        let wait_for_mark = |index: u64| {
            let deadline = Instant::now() + Duration::from_secs(10);
            while read_mark(dir.path()).expect("mark") != index {
                assert!(Instant::now() < deadline, "mark {index} never written");
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        report(5);
        wait_for_mark(5);
        let written_first = Instant::now();
        for i in 6..=40 {
            report(i);
        }
        wait_for_mark(40);
        assert!(
            written_first.elapsed() >= Duration::from_millis(LOG_DURABLE_MARK_INTERVAL_MS / 2),
            "the newest point waited out the interval"
        );
        // Reported while the marker waits out its interval: closing ends the wait at once,
        // without writing (the store writes the final mark itself).
        report(41);
        std::thread::sleep(Duration::from_millis(20));
        let closed = Instant::now();
        state.close();
        drop(tx);
        marker.join().expect("marker");
        assert!(closed.elapsed() < Duration::from_millis(LOG_DURABLE_MARK_INTERVAL_MS / 2));
        assert_eq!(read_mark(dir.path()).expect("mark"), 40);
    }

    /// Raft's own truncation of conflicting entries lowers the mark first, so the shorter
    /// log still opens; appends after it raise the mark again.
    #[test]
    fn a_raft_truncation_lowers_the_durable_mark() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("raft-log");
        {
            let log = LogStore::open(&path, true).expect("open");
            put_blanks(&log, 1..=50);
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        {
            let mut log = LogStore::open(&path, false).expect("reopen");
            let at = LogId::new(CommittedLeaderId::new(1, 1), 41);
            rt.block_on(log.truncate(at)).expect("truncate");
            assert_eq!(read_mark(&path).expect("mark"), 40);
            assert_eq!(last_index(&log), Some(40));
        }
        {
            let log = LogStore::open(&path, false).expect("a truncated log opens");
            assert_eq!(last_index(&log), Some(40));
            put_blanks(&log, 41..=45);
        }
        assert_eq!(read_mark(&path).expect("mark"), 45);
        let log = LogStore::open(&path, false).expect("reopen");
        assert_eq!(last_index(&log), Some(45));
    }

    /// A log with a hole refuses to open.
    #[test]
    fn a_log_with_a_hole_refuses_to_start() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("raft-log");
        raw_log(&path, vec![blank(1), blank(2), blank(4)]);
        let err = LogStore::open(&path, false).err().expect("must refuse");
        assert!(err.to_string().contains("hole between 2 and 4"), "{err}");
    }
}
