//! Opening RocksDB the one way sealpost does: paranoid checks, AbsoluteConsistency WAL
//! recovery, named column families, and corruption reported as [`Error::Corrupt`].

use std::path::Path;

use rocksdb::{ColumnFamilyDescriptor, DB, DBRecoveryMode, Options};

use crate::error::{Error, Result};

/// Background threads RocksDB may use for flushes and compactions per instance.
pub const ROCKS_BACKGROUND_JOBS_MAX: i32 = 2;
/// Files RocksDB may hold open per instance.
pub const ROCKS_OPEN_FILES_MAX: i32 = 512;

pub(crate) fn db_options(create: bool) -> Options {
    let mut o = Options::default();
    o.create_if_missing(create);
    // A view column family added by a newer build is created empty on an existing store;
    // the store itself must already exist unless `create`.
    o.create_missing_column_families(true);
    o.set_paranoid_checks(true);
    o.set_wal_recovery_mode(DBRecoveryMode::AbsoluteConsistency);
    o.set_max_background_jobs(ROCKS_BACKGROUND_JOBS_MAX);
    o.set_max_open_files(ROCKS_OPEN_FILES_MAX);
    o.set_compression_type(rocksdb::DBCompressionType::Lz4);
    o.set_keep_log_file_num(4);
    o
}

/// Opens (or creates) a database with the given column families.
pub(crate) fn open(path: &Path, cfs: &[&str], create: bool) -> Result<DB> {
    if !create && !path.join("CURRENT").exists() {
        return Err(Error::Corrupt {
            path: path.to_path_buf(),
            detail: "the RocksDB CURRENT file is missing".into(),
        });
    }
    let descs = cfs
        .iter()
        .map(|n| ColumnFamilyDescriptor::new(*n, db_options(create)));
    DB::open_cf_descriptors(&db_options(create), path, descs).map_err(Error::rocks(path))
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

/// Writes the batch; `sync` makes it durable (WAL fsync) before returning.
pub(crate) fn write(db: &DB, path: &Path, batch: rocksdb::WriteBatch, sync: bool) -> Result<()> {
    let mut wo = rocksdb::WriteOptions::default();
    wo.set_sync(sync);
    db.write_opt(batch, &wo).map_err(Error::rocks(path))
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
