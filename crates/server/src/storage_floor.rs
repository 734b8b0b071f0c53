//! The storage floor: while the file system holding one of this node's store folders has
//! less free space than `api.storage_free_bytes_min`, the node refuses new messages (sends
//! from clients and MLLP, relays from peer providers) with ResourceExhausted. Messages
//! already accepted still complete: delivery, fetches, acknowledgements and deadlines
//! write small events and go on, so a filling disk stops intake before RocksDB runs out of
//! room and Raft stops the node. Each node checks its own folders; its replicas hold the
//! same data, so on disks of one size they reach the floor together.
//!
//! The free space is read (`statvfs`) at most once per [`STORAGE_CHECK_INTERVAL_MS`] and
//! shared by every request in between.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tonic::Status;

/// How often the free space is read again, at most, in milliseconds.
pub const STORAGE_CHECK_INTERVAL_MS: u64 = 1_000;

/// Marks a free-space reading not taken yet, or that failed.
const UNKNOWN: u64 = u64::MAX;

/// This node's storage floor. Cheap to clone: clones share the reading and the counts.
#[derive(Clone)]
pub struct StorageFloor {
    inner: Arc<Inner>,
}

struct Inner {
    folders: Vec<PathBuf>,
    floor_bytes: u64,
    started: Instant,
    /// The last reading (the least free bytes over the folders), or [`UNKNOWN`].
    free_bytes: AtomicU64,
    /// When it was taken, in milliseconds since `started`; [`UNKNOWN`] before the first.
    read_at_ms: AtomicU64,
    refused_total: AtomicU64,
    /// A reading that replaces the file system's, for tests; [`UNKNOWN`] when none.
    free_bytes_for_test: AtomicU64,
}

impl std::fmt::Debug for StorageFloor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageFloor")
            .field("folders", &self.inner.folders)
            .field("floor_bytes", &self.inner.floor_bytes)
            .finish_non_exhaustive()
    }
}

impl StorageFloor {
    /// A floor of `floor_bytes` over `folders` (0 turns it off).
    pub fn new(folders: Vec<PathBuf>, floor_bytes: u64) -> Self {
        Self {
            inner: Arc::new(Inner {
                folders,
                floor_bytes,
                started: Instant::now(),
                free_bytes: AtomicU64::new(UNKNOWN),
                read_at_ms: AtomicU64::new(UNKNOWN),
                refused_total: AtomicU64::new(0),
                free_bytes_for_test: AtomicU64::new(UNKNOWN),
            }),
        }
    }

    /// The least free space over the folders, read now; `None` when there are none.
    pub fn free_bytes_now(&self) -> Result<Option<u64>, sealpost_store::Error> {
        sealpost_store::space::least_free_bytes(self.inner.folders.iter().map(PathBuf::as_path))
    }

    /// The reading shared by requests: taken again once it is older than the interval.
    /// `None` when the free space cannot be read (the node then admits, and says why in
    /// its log: the floor guards against a full disk, it must not stop a node by itself).
    fn free_bytes(&self) -> Option<u64> {
        let i = &self.inner;
        let pretend = i.free_bytes_for_test.load(Ordering::Acquire);
        if pretend != UNKNOWN {
            return Some(pretend);
        }
        let now_ms = i.started.elapsed().as_millis() as u64;
        let at = i.read_at_ms.load(Ordering::Acquire);
        if at == UNKNOWN || now_ms.saturating_sub(at) >= STORAGE_CHECK_INTERVAL_MS {
            let free = match self.free_bytes_now() {
                Ok(free) => free.unwrap_or(UNKNOWN),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the free space of the store folders; the storage floor admits");
                    UNKNOWN
                }
            };
            i.free_bytes.store(free, Ordering::Release);
            i.read_at_ms.store(now_ms, Ordering::Release);
        }
        Some(i.free_bytes.load(Ordering::Acquire)).filter(|f| *f != UNKNOWN)
    }

    /// Admits a new message, or refuses it with ResourceExhausted naming the free space
    /// and the floor.
    pub fn admit(&self) -> Result<(), Status> {
        let floor = self.inner.floor_bytes;
        if floor == 0 {
            return Ok(());
        }
        match self.free_bytes() {
            Some(free) if free < floor => {
                self.inner.refused_total.fetch_add(1, Ordering::Relaxed);
                Err(Status::resource_exhausted(format!(
                    "this node's storage has {free} bytes free, under its floor of {floor} \
                     bytes (api.storage_free_bytes_min): new messages are refused until space \
                     is freed; messages already accepted are still delivered, fetched and \
                     acknowledged"
                )))
            }
            _ => Ok(()),
        }
    }

    /// Makes the floor see `free` bytes instead of the file system's (`None`: the file
    /// system's again): for tests of a node whose disk fills.
    #[doc(hidden)]
    pub fn set_free_bytes_for_test(&self, free: Option<u64>) {
        self.inner
            .free_bytes_for_test
            .store(free.unwrap_or(UNKNOWN), Ordering::Release);
    }

    /// Messages refused by the floor since the node started.
    pub fn refused_total(&self) -> u64 {
        self.inner.refused_total.load(Ordering::Relaxed)
    }

    /// The floor in bytes (0: off).
    pub fn floor_bytes(&self) -> u64 {
        self.inner.floor_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Off, or under the free space, it admits; above the free space it refuses, says
    /// why and counts; a folder whose space cannot be read admits.
    #[test]
    fn the_floor_refuses_only_below_it() {
        let dir = tempfile::tempdir().expect("tmp");
        let folders = vec![dir.path().to_path_buf()];
        assert!(StorageFloor::new(folders.clone(), 0).admit().is_ok());
        assert!(StorageFloor::new(folders.clone(), 1).admit().is_ok());
        let full = StorageFloor::new(folders, u64::MAX - 1);
        let e = full.admit().expect_err("refused");
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(
            e.message().contains("storage_free_bytes_min") && e.message().contains("bytes free"),
            "{}",
            e.message()
        );
        assert!(full.admit().is_err(), "the shared reading refuses too");
        assert_eq!(full.refused_total(), 2);
        let low = StorageFloor::new(vec![dir.path().to_path_buf()], 1000);
        low.set_free_bytes_for_test(Some(999));
        assert!(low.admit().is_err(), "a pretended low disk is refused");
        low.set_free_bytes_for_test(Some(1000));
        assert!(low.admit().is_ok(), "at the floor is enough");
        low.set_free_bytes_for_test(None);
        assert!(low.admit().is_ok(), "the real disk again");
        let unreadable = StorageFloor::new(vec![dir.path().join("missing")], u64::MAX - 1);
        assert!(unreadable.admit().is_ok());
        assert_eq!(unreadable.refused_total(), 0);
    }
}
