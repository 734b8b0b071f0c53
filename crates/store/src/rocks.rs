//! Opening RocksDB the one way sealpost does: paranoid checks, WAL recovery that drops only
//! a torn final record, named column families, and corruption reported as
//! [`Error::Corrupt`]; and writing to it with the durability each store needs (see
//! [`Durability`]).
//!
//! WAL recovery is `TolerateCorruptedTailRecords`: a process killed in the middle of writing
//! a record (RocksDB writes a large one in several system calls) leaves it incomplete at the
//! end of the WAL; it was never fsynced, so never acknowledged, and it is dropped. Any other
//! damage (a checksum mismatch anywhere, a bad record length before the end) refuses to
//! open. A WAL that lost its end to damage looks like a torn one to RocksDB; the Raft log
//! guards that case itself with its durable mark (see [`crate::log_store`]).

use std::path::Path;

use rocksdb::{ColumnFamilyDescriptor, DB, DBRecoveryMode, Options};

use crate::error::{Error, Result};

/// Background threads RocksDB may use for flushes and compactions per instance.
pub const ROCKS_BACKGROUND_JOBS_MAX: i32 = 2;
/// Bytes of a flushed or compacted file written before RocksDB asks the OS to write them out.
pub const SST_BYTES_PER_SYNC: u64 = 1024 * 1024;
/// Files RocksDB may hold open per instance.
pub const ROCKS_OPEN_FILES_MAX: i32 = 512;

/// RocksDB's process-wide environment with its flush and compaction threads at a lower CPU
/// priority than the threads that serve requests: background work still gets every idle
/// cycle, but a flush of a full memtable no longer takes a core away from commits and
/// deliveries for its whole duration.
fn background_env() -> Option<&'static rocksdb::Env> {
    static ENV: std::sync::OnceLock<Option<rocksdb::Env>> = std::sync::OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = rocksdb::Env::new().ok()?;
        env.lower_thread_pool_cpu_priority();
        env.lower_high_priority_thread_pool_cpu_priority();
        Some(env)
    })
    .as_ref()
}

pub(crate) fn db_options(create: bool) -> Options {
    let mut o = Options::default();
    if let Some(env) = background_env() {
        o.set_env(env);
    }
    o.create_if_missing(create);
    // A view column family added by a newer build is created empty on an existing store;
    // the store itself must already exist unless `create`.
    o.create_missing_column_families(true);
    o.set_paranoid_checks(true);
    o.set_wal_recovery_mode(DBRecoveryMode::TolerateCorruptedTailRecords);
    o.set_max_background_jobs(ROCKS_BACKGROUND_JOBS_MAX);
    o.set_max_open_files(ROCKS_OPEN_FILES_MAX);
    o.set_compression_type(rocksdb::DBCompressionType::Lz4);
    o.set_keep_log_file_num(4);
    // Write flushed and compacted files out a little at a time, so a WAL fsync never waits
    // behind a whole memtable's dirty pages (ext4 orders them before it). Benchmarks saw
    // commits stall for up to a quarter of a second while a 64 MiB memtable was flushed.
    o.set_bytes_per_sync(SST_BYTES_PER_SYNC);
    o
}

/// Whether files under `dir` can be written with `O_DIRECT`: one aligned block is written
/// and removed again. Some file systems refuse it (FUSE ones may, and tmpfs did before
/// Linux 6.6); RocksDB then keeps buffered writes.
fn direct_writes_work(dir: &Path) -> bool {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    const BLOCK_BYTES: usize = 4096;
    let probe = dir.join(".sealpost-direct-write-probe");
    // O_DIRECT wants the buffer aligned: one block at an aligned offset of two.
    let buf = vec![0u8; 2 * BLOCK_BYTES];
    let offset = buf.as_ptr().align_offset(BLOCK_BYTES);
    let Some(block) = buf.get(offset..offset + BLOCK_BYTES) else {
        return false;
    };
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(&probe)
        .and_then(|mut f| f.write_all(block))
        .is_ok();
    let _ = std::fs::remove_file(&probe);
    written
}

/// How one database is opened beyond the common options.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Tuning<'a> {
    /// Column families holding mostly ciphertext: compressing them costs CPU and saves
    /// nothing, so they are stored uncompressed.
    pub uncompressed: &'a [&'a str],
    /// Flush every column family together, so the files on disk always hold one
    /// consistent point of the database: required when writes skip the WAL.
    pub atomic_flush: bool,
    /// A scratch database written once and read once (a view rebuild): no compaction, no
    /// compression, large memtables, Bloom filters for the point reads of the fold.
    pub scratch: bool,
    /// Column families looked up by key while they are being written (a rebuild's fold
    /// reads organisations and endpoints it wrote a moment ago): a Bloom filter over each
    /// memtable answers most lookups of absent keys without searching the skip lists (and
    /// in a scratch database only these column families' tables carry Bloom filters).
    pub point_reads_while_written: &'a [&'a str],
    /// Column families given [`LARGE_WRITE_BUFFER_BYTES`] memtables: where most of the
    /// bytes go. With `atomic_flush`, the one that fills first flushes every family, so its
    /// size sets how often each small view gets another level-0 file to compact.
    pub large_memtables: &'a [&'a str],
}

/// Memtable size of the column families in [`Tuning::large_memtables`], in bytes.
pub const LARGE_WRITE_BUFFER_BYTES: usize = 256 * 1024 * 1024;

/// Share of a memtable's size given to its Bloom filter, where one is kept.
const MEMTABLE_BLOOM_RATIO: f64 = 0.05;

/// Memtable size of a scratch database, in bytes.
pub const SCRATCH_WRITE_BUFFER_BYTES: usize = 64 * 1024 * 1024;

/// Block size of a scratch database's tables, in bytes (read once, front to back).
const SCRATCH_BLOCK_BYTES: usize = 32 * 1024;

/// `point_reads`: the column family is looked up by key while it is written (Bloom filters
/// in its tables); the others are only walked in key order at the end.
fn scratch_options(o: &mut Options, point_reads: bool) {
    o.set_disable_auto_compactions(true);
    o.set_compression_type(rocksdb::DBCompressionType::None);
    o.set_write_buffer_size(SCRATCH_WRITE_BUFFER_BYTES);
    o.set_max_write_buffer_number(4);
    // With compaction off, L0 only grows: never slow or stop writes for it.
    o.set_level_zero_slowdown_writes_trigger(1 << 20);
    o.set_level_zero_stop_writes_trigger(1 << 20);
    let mut t = rocksdb::BlockBasedOptions::default();
    if point_reads {
        t.set_bloom_filter(10.0, false);
    }
    // Written and read back within one rebuild, and removed after it: no block checksums.
    t.set_checksum_type(rocksdb::ChecksumType::NoChecksum);
    t.set_block_size(SCRATCH_BLOCK_BYTES);
    o.set_block_based_table_factory(&t);
}

/// Opens (or creates) a database with the given column families.
pub(crate) fn open(path: &Path, cfs: &[&str], create: bool, tuning: Tuning<'_>) -> Result<DB> {
    if !create && !path.join("CURRENT").exists() {
        return Err(Error::Corrupt {
            path: path.to_path_buf(),
            detail: "the RocksDB CURRENT file is missing".into(),
        });
    }
    let descs = cfs.iter().map(|n| {
        let mut o = db_options(create);
        if tuning.uncompressed.contains(n) {
            o.set_compression_type(rocksdb::DBCompressionType::None);
        }
        if tuning.large_memtables.contains(n) {
            o.set_write_buffer_size(LARGE_WRITE_BUFFER_BYTES);
        }
        if tuning.scratch {
            scratch_options(&mut o, tuning.point_reads_while_written.contains(n));
        }
        if tuning.point_reads_while_written.contains(n) {
            o.set_memtable_prefix_bloom_ratio(MEMTABLE_BLOOM_RATIO);
            o.set_memtable_whole_key_filtering(true);
        }
        ColumnFamilyDescriptor::new(*n, o)
    });
    let mut o = db_options(create);
    o.set_atomic_flush(tuning.atomic_flush);
    if tuning.scratch {
        scratch_options(&mut o, false);
    } else {
        if create {
            std::fs::create_dir_all(path).map_err(Error::io(path))?;
        }
        // Flushes and compactions write around the page cache. A live database writes
        // every envelope twice per node (the Raft log and the event store), and copying
        // those files into the page cache took a sixth of the benchmark's CPU; nothing
        // reads them back soon (recent reads hit the memtables). A scratch database is
        // read back at once, so it keeps the page cache.
        o.set_use_direct_io_for_flush_and_compaction(direct_writes_work(path));
    }
    DB::open_cf_descriptors(&o, path, descs).map_err(Error::rocks(path))
}

/// Opens a database read-only (used to inspect a snapshot before installing it).
pub(crate) fn open_read_only(path: &Path, cfs: &[&str]) -> Result<DB> {
    DB::open_cf_for_read_only(&db_options(false), path, cfs.iter().copied(), false)
        .map_err(Error::rocks(path))
}

pub(crate) fn cf<'a>(db: &'a DB, name: &str) -> &'a rocksdb::ColumnFamily {
    db.cf_handle(name)
        .expect("column families are created when the database is opened")
}

/// What a write must survive before it returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Durability {
    /// WAL written and fsynced: survives power loss.
    Synced,
    /// WAL written, not fsynced: survives a process crash (the OS holds it); a later
    /// fsync of the WAL makes it and everything before it durable.
    Logged,
    /// No WAL: durable only once RocksDB flushes the memtables (atomically, see
    /// [`Tuning::atomic_flush`]). For data that can be derived again after a crash.
    Unlogged,
}

/// Writes the batch with the given durability.
pub(crate) fn write(
    db: &DB,
    path: &Path,
    batch: rocksdb::WriteBatch,
    durability: Durability,
) -> Result<()> {
    let mut wo = rocksdb::WriteOptions::default();
    wo.set_sync(durability == Durability::Synced);
    wo.disable_wal(durability == Durability::Unlogged);
    db.write_opt(batch, &wo).map_err(Error::rocks(path))
}

/// Files one database folder is expected to hold at most; [`disk_usage`] stops counting
/// WAL files beyond this many directory entries.
pub const DISK_USAGE_DIR_ENTRIES_MAX: usize = 100_000;

/// What one RocksDB database holds, in bytes: on disk (table files, write-ahead log) and in
/// memory (memtables).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskUsage {
    /// Table (SST) files of every column family, including files a compaction replaced
    /// that are still held open (`rocksdb.total-sst-files-size`).
    pub sst_bytes: u64,
    /// Write-ahead log files (`*.log`) in the database folder.
    pub wal_bytes: u64,
    /// Memtables of every column family, active and waiting to be flushed
    /// (`rocksdb.size-all-mem-tables`).
    pub memtable_bytes: u64,
}

/// The sizes of the database `db` at `path`, whose column families are `cfs`.
pub(crate) fn disk_usage(db: &DB, path: &Path, cfs: &[&str]) -> Result<DiskUsage> {
    let mut u = DiskUsage::default();
    for name in cfs {
        let Some(cf) = db.cf_handle(name) else {
            continue;
        };
        let prop = |p: &rocksdb::properties::PropName| {
            db.property_int_value_cf(cf, p)
                .map(Option::unwrap_or_default)
                .map_err(Error::rocks(path))
        };
        u.sst_bytes += prop(rocksdb::properties::TOTAL_SST_FILES_SIZE)?;
        u.memtable_bytes += prop(rocksdb::properties::SIZE_ALL_MEM_TABLES)?;
    }
    let entries = std::fs::read_dir(path).map_err(Error::io(path))?;
    for entry in entries.take(DISK_USAGE_DIR_ENTRIES_MAX) {
        // A file removed between the listing and its metadata (an old WAL) is skipped.
        let Ok(entry) = entry else { continue };
        if entry.path().extension().is_some_and(|x| x == "log")
            && let Ok(meta) = entry.metadata()
            && meta.is_file()
        {
            u.wal_bytes += meta.len();
        }
    }
    Ok(u)
}

/// Error mapper for RocksDB calls on the database at `path`.
pub(crate) fn rocks_err(path: &Path) -> impl FnOnce(rocksdb::Error) -> Error {
    Error::rocks(path)
}

/// Walks every key and value of every column family of the database at `path`, opened
/// read-only through RocksDB (so compressed SST blocks are seen decompressed). For audits
/// and tests that must prove what is, and is not, stored.
pub fn scan_all(path: &Path, mut visit: impl FnMut(&str, &[u8], &[u8])) -> Result<u64> {
    let names = DB::list_cf(&db_options(false), path).map_err(Error::rocks(path))?;
    let db = open_read_only(path, &names.iter().map(String::as_str).collect::<Vec<_>>())?;
    let mut n = 0;
    for name in &names {
        let cf = cf(&db, name);
        for item in db.iterator_cf(cf, rocksdb::IteratorMode::Start) {
            let (k, v) = item.map_err(Error::rocks(path))?;
            visit(name, &k, &v);
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The probe writes where the folder is (this machine's disk takes O_DIRECT), refuses
    /// where it cannot write, and leaves no file behind.
    #[test]
    fn the_direct_write_probe_writes_one_block_and_cleans_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(direct_writes_work(dir.path()), "{}", dir.path().display());
        assert!(!direct_writes_work(&dir.path().join("missing")));
        assert_eq!(std::fs::read_dir(dir.path()).expect("read_dir").count(), 0);
    }

    /// Logged writes show as WAL and memtable bytes and no table files; a flush moves them
    /// into table files of the family written, and a family the database lacks is skipped.
    #[test]
    fn disk_usage_follows_writes_into_the_wal_memtables_and_table_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        let db = open(&path, &["a", "b"], true, Tuning::default()).expect("open");
        let empty = disk_usage(&db, &path, &["a", "b", "missing"]).expect("usage");
        assert_eq!(empty.sst_bytes, 0, "{empty:?}");
        let mut batch = rocksdb::WriteBatch::default();
        // Pseudo-random values (xorshift), which compression cannot shrink much.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for i in 0..200u32 {
            let v: Vec<u8> = (0..1000)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x >> 56) as u8
                })
                .collect();
            batch.put_cf(cf(&db, "a"), i.to_be_bytes(), v);
        }
        write(&db, &path, batch, Durability::Logged).expect("write");
        let written = disk_usage(&db, &path, &["a", "b", "missing"]).expect("usage");
        assert!(written.wal_bytes >= 200_000, "{written:?}");
        assert!(written.memtable_bytes >= 200_000, "{written:?}");
        assert_eq!(written.sst_bytes, 0, "{written:?}");
        db.flush_cf(cf(&db, "a")).expect("flush");
        let flushed = disk_usage(&db, &path, &["a", "b"]).expect("usage");
        assert!(flushed.sst_bytes >= 100_000, "{flushed:?}");
        assert!(
            flushed.memtable_bytes < written.memtable_bytes,
            "{flushed:?}"
        );
        let only_b = disk_usage(&db, &path, &["b"]).expect("usage");
        assert_eq!(only_b.sst_bytes, 0, "{only_b:?}");
    }
}
