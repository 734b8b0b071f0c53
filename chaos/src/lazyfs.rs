//! LazyFs: a FUSE pass-through file system that simulates power loss, so that the chaos
//! harness can prove the nodes' fsync discipline (a `kill -9` alone keeps the OS page cache,
//! so it never loses a write that reached the kernel). The node processes run with their data
//! folders under the mount point; every name is passed through to a backing folder, but file
//! *data* that was not made durable is held in memory, and [`LazyFs::crash`] drops it: after
//! a crash the backing folder holds exactly what was made durable, which is what a disk would
//! hold after a power cut.
//!
//! Exact semantics:
//! - **Data writes are buffered.** A write (FUSE `WRITE`) goes to an in-memory overlay of that
//!   file (keyed by the backing inode, so it follows the file through renames and hard links).
//!   Reads return the overlay merged over the backing file; `stat` reports the size the overlay
//!   gives (unsynced appends count). The backing file is not touched by a write.
//! - **Truncation is buffered too** (`ftruncate`, `truncate`, `O_TRUNC`, i.e. FUSE `SETATTR`
//!   with a size): the new size is part of the overlay and reaches the backing file with the
//!   next fsync; after a crash before that, the old length and content come back. Bytes cut
//!   off by a truncation read as zeros if the file is extended again.
//! - **fsync / fdatasync** of a file (FUSE `FSYNC`, from any descriptor of that file) writes the
//!   whole overlay of that file to the backing file (truncation first, then every buffered
//!   extent, then the final length) and calls `fsync`/`fdatasync` on the backing file; only
//!   then is the overlay dropped. A write on a descriptor opened with `O_SYNC` or `O_DSYNC` is
//!   made durable the same way before it returns. `fsyncdir` calls fsync on the backing folder.
//! - **close is not durable**: FUSE `FLUSH` and `RELEASE` persist nothing, as on a real file
//!   system; a file written, closed and never fsynced loses that data at a crash.
//! - **Metadata is durable at once**: create, mknod, mkdir, unlink, rmdir, rename, link,
//!   symlink, chmod, chown and utimes are applied to the backing folder immediately and survive
//!   a crash (the real LazyFS, which caches only file data, does the same). So a file created
//!   and written but never fsynced still exists after a crash, with its durable content (empty
//!   if it never had any), and a rename of a file whose data was not fsynced leaves the new
//!   name with the *old durable* content, which is the pattern this layer exists to catch.
//! - **unlink / rename-over** of the last name of a file drops its overlay (there is nothing
//!   left to persist it to); if the file is still open, the overlay is kept for the open
//!   descriptors' reads and writes and dropped at the last close.
//! - **Writeback under memory pressure**: when the unsynced bytes of all files exceed
//!   [`UNSYNCED_BYTES_MAX`], the file that has been dirty the longest is written to the backing
//!   file (without fsync), as an OS's writeback would, and counts as durable from then on;
//!   this repeats until the total is under the limit. There is no time-based writeback (a real
//!   kernel writes dirty pages back after about 30 s): data stays volatile until fsync, which
//!   POSIX allows and which is the harshest fair model.
//! - **crash()** drops every overlay (the report counts the bytes, `WRITE`/truncate requests
//!   and files dropped), first asking the kernel to write back any dirty pages of shared
//!   writable mmaps into the overlays (`syncfs`) and afterwards invalidating the kernel's page
//!   cache of every file it touched, so readers, old or new, see the backing data. A request
//!   still in flight when crash() starts that would change an overlay afterwards fails with EIO
//!   instead (the caller has already SIGKILLed the processes using the mount).
//! - **Page cache**: files are opened without `FOPEN_DIRECT_IO` and without
//!   `FOPEN_KEEP_CACHE`, with attribute and entry timeouts of zero and without the kernel's
//!   writeback cache, so every write(2) reaches this layer before it returns, reads may be
//!   served from the kernel page cache (kept coherent: only writes through the mount and
//!   crash() change the data, and crash() invalidates), and mmap works. Each open also drops
//!   the kernel's cached pages of the file.
//! - **Not supported**: `fallocate` (callers get EOPNOTSUPP; RocksDB's preallocation ignores
//!   it), extended attributes (ENOSYS, which the kernel remembers), ioctl (ENOTTY),
//!   `copy_file_range` and `lseek`'s SEEK_DATA/SEEK_HOLE (ENOSYS: the kernel and libc fall
//!   back). POSIX (`fcntl`) and `flock`
//!   locks are not implemented here, so the kernel keeps them locally for the mount (fuser
//!   does not offer FUSE_POSIX_LOCKS/FUSE_FLOCK_LOCKS): they work between the processes of
//!   this machine, which is all RocksDB's `LOCK` file needs.
//! - **unmount** drops what is unsynced, like crash(). If the mount is still in use, the FUSE
//!   connection is aborted (`MNT_FORCE`) and the mount detached: descriptors still open there
//!   fail with ENOTCONN from then on.
//! - **Resources**: each file or folder the kernel holds an inode for keeps one `O_PATH`
//!   descriptor of the backing object open here (that is how renames of folders above it
//!   cannot lose it), so the process's `RLIMIT_NOFILE` bounds the files in use at once.
//!   Inode numbers are the backing ones (the root is 1). [`FUSE_THREADS`] threads serve
//!   requests; a per-file lock serializes the requests of one file, not those of others.
//! - The backing folder must not be changed behind the mount's back while it is mounted.
//!   Files are created owned by the user running LazyFs (root in the harness). Mounting needs
//!   root (a plain `mount(2)` of `/dev/fuse`, no libfuse and no Debian package); without root,
//!   `fuser` falls back to `fusermount3` from Debian's `fuse3`.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Bound;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use fuser::{
    AccessFlags, BsdFileFlags, Config, CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType,
    Filesystem, FopenFlags, Generation, INodeNo, IoctlFlags, LockOwner, MountOption, Notifier,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyIoctl, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request,
    TimeOrNow, WriteFlags,
};
use rustix::fs::{AtFlags, Mode, OFlags};

/// Unsynced file data (bytes, all files together) held in memory before the file that has
/// been dirty the longest is written back to the backing folder, as an OS's writeback would.
pub const UNSYNCED_BYTES_MAX: u64 = 256 * 1024 * 1024;
/// Threads serving FUSE requests (each with its own `/dev/fuse` descriptor), so a slow fsync
/// of one node's file does not stall the other nodes.
pub const FUSE_THREADS: usize = 4;
/// How long the kernel may cache attributes and names (zero: always asks this layer).
const ATTR_TTL: Duration = Duration::ZERO;
/// Directory entries read from one backing folder for one `readdir` listing, at most.
const DIR_ENTRIES_MAX: usize = 1_000_000;
/// Files written back, at most, by one write that finds [`UNSYNCED_BYTES_MAX`] exceeded.
const WRITEBACK_FILES_PER_WRITE_MAX: usize = 1024;
/// Inodes visited by one crash() or unmount, at most (files and folders).
const INODES_MAX: usize = 10_000_000;
/// How long unmount waits for the FUSE session threads to stop once the kernel let go.
const UNMOUNT_WAIT: Duration = Duration::from_secs(10);
/// Poll interval (milliseconds) while waiting for the session threads.
const UNMOUNT_POLL: Duration = Duration::from_millis(10);
/// Retries of a backing read interrupted by a signal (EINTR), at most.
const EINTR_RETRIES_MAX: usize = 64;
/// Source name of the mount, as /proc/mounts shows it.
const FS_NAME: &str = "sealpost-lazyfs";

/// What one simulated power loss dropped.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CrashReport {
    /// Bytes of unsynced data dropped (buffered extents; a buffered truncation counts 0).
    pub dropped_bytes: u64,
    /// Buffered FUSE `WRITE` and truncate requests dropped (the kernel may split one
    /// write(2) into several requests: at page boundaries, and at 1 MiB).
    pub dropped_writes: u64,
    /// Files whose unsynced state was dropped.
    pub files_touched: u64,
}

/// A mounted LazyFs: a background `fuser` session plus the shared overlay state.
pub struct LazyFs {
    shared: Arc<Shared>,
    session: Option<fuser::BackgroundSession>,
    notifier: Notifier,
    mountpoint: PathBuf,
}

impl std::fmt::Debug for LazyFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyFs")
            .field("backing", &self.shared.backing)
            .field("mountpoint", &self.mountpoint)
            .field("unsynced_bytes", &self.unsynced_bytes())
            .finish()
    }
}

impl LazyFs {
    /// Mounts at `mountpoint` (an existing empty folder) a file system passing through to
    /// `backing` (an existing folder), holding unsynced file data in memory.
    pub fn mount(backing: &Path, mountpoint: &Path) -> anyhow::Result<LazyFs> {
        Self::mount_with_limit(backing, mountpoint, UNSYNCED_BYTES_MAX)
    }

    /// [`LazyFs::mount`] with another writeback threshold (bytes), for tests.
    fn mount_with_limit(
        backing: &Path,
        mountpoint: &Path,
        unsynced_bytes_max: u64,
    ) -> anyhow::Result<LazyFs> {
        let backing = backing
            .canonicalize()
            .with_context(|| format!("LazyFs: backing folder {}", backing.display()))?;
        let mountpoint = mountpoint
            .canonicalize()
            .with_context(|| format!("LazyFs: mount point {}", mountpoint.display()))?;
        if !backing.is_dir() {
            bail!("LazyFs: backing {} is not a folder", backing.display());
        }
        if !mountpoint.is_dir() {
            bail!(
                "LazyFs: mount point {} is not a folder",
                mountpoint.display()
            );
        }
        if backing.starts_with(&mountpoint) || mountpoint.starts_with(&backing) {
            bail!(
                "LazyFs: backing {} and mount point {} must not contain each other",
                backing.display(),
                mountpoint.display()
            );
        }
        let mut listing = std::fs::read_dir(&mountpoint)
            .with_context(|| format!("LazyFs: listing mount point {}", mountpoint.display()))?;
        if listing.next().is_some() {
            bail!("LazyFs: mount point {} is not empty", mountpoint.display());
        }
        if !Path::new("/dev/fuse").exists() {
            bail!(
                "LazyFs: /dev/fuse is missing: FUSE is unavailable on this machine (kernel \
                 module `fuse`, or a container without the device)"
            );
        }
        let root_fd = rustix::fs::open(
            &backing,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .with_context(|| format!("LazyFs: opening backing folder {}", backing.display()))?;
        let root_stat = rustix::fs::fstat(&root_fd)
            .with_context(|| format!("LazyFs: stat of backing folder {}", backing.display()))?;
        let root_dir = File::open(&backing)
            .with_context(|| format!("LazyFs: opening backing folder {}", backing.display()))?;

        let shared = Arc::new(Shared::new(
            backing.clone(),
            root_fd,
            &root_stat,
            root_dir,
            unsynced_bytes_max,
        ));
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName(FS_NAME.to_string()),
            MountOption::DefaultPermissions,
        ];
        config.n_threads = Some(FUSE_THREADS);
        config.clone_fd = true;
        let session =
            fuser::spawn_mount(Ops(shared.clone()), &mountpoint, &config).with_context(|| {
                format!(
                    "LazyFs: FUSE mount of {} at {} failed (needs /dev/fuse and root, or \
                     Debian's fuse3 for fusermount3 without root)",
                    backing.display(),
                    mountpoint.display()
                )
            })?;
        let notifier = session.notifier();
        Ok(LazyFs {
            shared,
            session: Some(session),
            notifier,
            mountpoint,
        })
    }

    /// Simulated power loss: every write not yet made durable by fsync/fdatasync (of that file) is dropped.
    /// The caller has already SIGKILLed every process using the mount.
    pub fn crash(&self) -> anyhow::Result<CrashReport> {
        // Dirty pages of shared writable mmaps live in the kernel until written back: bring
        // them into the overlays first, so that they are dropped with the rest.
        let root = File::open(&self.mountpoint)
            .with_context(|| format!("LazyFs crash: opening {}", self.mountpoint.display()))?;
        rustix::fs::syncfs(&root)
            .with_context(|| format!("LazyFs crash: syncfs of {}", self.mountpoint.display()))?;
        drop(root);
        let (report, touched) = self.shared.drop_all_overlays();
        // Outside every lock: the kernel may need our threads while it invalidates.
        for ino in touched {
            // ENOENT: the kernel holds no cache of that inode, nothing to invalidate.
            if let Err(e) = self.notifier.inval_inode(INodeNo(ino), 0, 0)
                && e.raw_os_error() != Some(rustix::io::Errno::NOENT.raw_os_error())
            {
                return Err(e).with_context(|| {
                    format!(
                        "LazyFs crash: invalidating the kernel cache of inode {ino} under {}",
                        self.mountpoint.display()
                    )
                });
            }
        }
        self.shared.evict_idle_inodes();
        Ok(report)
    }

    /// Unsynced bytes held right now (for reports/tests).
    pub fn unsynced_bytes(&self) -> u64 {
        self.shared.unsynced.load(Ordering::SeqCst)
    }

    /// Unmounts (flushing nothing: whatever is unsynced is dropped as by crash) and stops the session.
    pub fn unmount(mut self) -> anyhow::Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> anyhow::Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        self.shared.drop_all_overlays();
        let mp = &self.mountpoint;
        // Dropping the session's mount handle makes fuser try a plain unmount (and only warn,
        // through `log`, if the mount is busy); the session threads keep running until the
        // kernel lets go of the connection.
        let guard = {
            let session = session;
            session.guard
        };
        match rustix::mount::unmount(mp, rustix::mount::UnmountFlags::empty()) {
            // Not a mount point any more: fuser unmounted it just above.
            Ok(()) | Err(rustix::io::Errno::INVAL) => {}
            // Still in use (a process kept a descriptor or its working folder there): abort
            // the FUSE connection (MNT_FORCE does that for FUSE) and detach the mount.
            Err(rustix::io::Errno::BUSY) => {
                let _aborted_even_if_still_busy =
                    rustix::mount::unmount(mp, rustix::mount::UnmountFlags::FORCE);
                match rustix::mount::unmount(mp, rustix::mount::UnmountFlags::DETACH) {
                    Ok(()) | Err(rustix::io::Errno::INVAL) => {}
                    Err(e) => {
                        return Err(e).with_context(|| {
                            format!("LazyFs: lazy unmount of busy {}", mp.display())
                        });
                    }
                }
            }
            Err(e) => {
                return Err(e).with_context(|| format!("LazyFs: unmount of {}", mp.display()));
            }
        }
        if mounted_at(mp)? {
            bail!(
                "LazyFs: {} is still mounted after the unmount",
                mp.display()
            );
        }
        let deadline = Instant::now() + UNMOUNT_WAIT;
        while !guard.is_finished() {
            if Instant::now() > deadline {
                bail!(
                    "LazyFs: the FUSE session of {} did not stop within {} s of the unmount",
                    mp.display(),
                    UNMOUNT_WAIT.as_secs()
                );
            }
            std::thread::sleep(UNMOUNT_POLL);
        }
        match guard.join() {
            Ok(res) => res.with_context(|| format!("LazyFs: FUSE session of {}", mp.display())),
            Err(_) => bail!(
                "LazyFs: the FUSE session thread of {} panicked",
                mp.display()
            ),
        }
    }
}

/// Whether /proc/self/mounts lists a mount at `path` (escaped as the kernel does).
fn mounted_at(path: &Path) -> anyhow::Result<bool> {
    let mounts = std::fs::read_to_string("/proc/self/mounts")
        .context("LazyFs: reading /proc/self/mounts")?;
    let mut wanted = String::new();
    for c in path.to_string_lossy().chars() {
        match c {
            ' ' => wanted.push_str("\\040"),
            '\t' => wanted.push_str("\\011"),
            '\n' => wanted.push_str("\\012"),
            '\\' => wanted.push_str("\\134"),
            c => wanted.push(c),
        }
    }
    Ok(mounts
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(wanted.as_str())))
}

impl Drop for LazyFs {
    fn drop(&mut self) {
        // Best effort: never leave a mount behind. `unmount` reports errors.
        let _ = self.shutdown();
    }
}

/// Locks a mutex, going on with the data if a thread panicked while holding it (each
/// critical section leaves the state consistent before anything can panic).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn errno(e: &io::Error) -> Errno {
    Errno::from_i32(
        e.raw_os_error()
            .unwrap_or(rustix::io::Errno::IO.raw_os_error()),
    )
}

/// Answers a request that creates or finds a name: its attributes, or the error's errno.
fn reply_entry(reply: ReplyEntry, res: io::Result<FileAttr>) {
    match res {
        Ok(attr) => reply.entry(&ATTR_TTL, &attr, Generation(0)),
        Err(e) => reply.error(errno(&e)),
    }
}

fn proc_path(fd: &impl AsRawFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// Buffered, unsynced state of one regular file.
struct Overlay {
    /// Leading bytes of the backing file still valid (a truncation lowers it).
    base_len: u64,
    /// Logical size of the file.
    size: u64,
    /// Buffered data: non-overlapping, non-adjacent extents by offset, all below `size`.
    extents: BTreeMap<u64, Vec<u8>>,
    /// Sum of the extents' lengths.
    bytes: u64,
    /// Buffered WRITE and truncate requests.
    writes: u64,
    /// Order in which files became dirty (key of `Shared::dirty`).
    dirty_seq: u64,
    /// Modification time of the last buffered change, until an explicit utimes.
    mtime: Option<SystemTime>,
    /// Writable descriptor of the backing file, used to write the overlay back.
    flush_fd: Arc<File>,
}

impl Overlay {
    /// Buffers `data` at `off`; returns the bytes added to the overlay.
    fn insert(&mut self, off: u64, data: &[u8]) -> u64 {
        if data.is_empty() {
            return 0;
        }
        let end = off + data.len() as u64;
        let start = match self.extents.range(..=off).next_back() {
            Some((&s, v)) if s + v.len() as u64 >= off => s,
            _ => {
                self.extents.insert(off, Vec::new());
                off
            }
        };
        let absorbed: Vec<u64> = self
            .extents
            .range((Bound::Excluded(start), Bound::Included(end)))
            .map(|(&k, _)| k)
            .collect();
        let mut removed = 0u64;
        let mut tail: Vec<u8> = Vec::new();
        for k in absorbed {
            if let Some(v) = self.extents.remove(&k) {
                removed += v.len() as u64;
                let v_end = k + v.len() as u64;
                if v_end > end {
                    tail = v[(end - k) as usize..].to_vec();
                }
            }
        }
        let Some(ext) = self.extents.get_mut(&start) else {
            return 0; // inserted or found just above
        };
        let old_len = ext.len() as u64;
        let rel = (off - start) as usize;
        let need = rel + data.len();
        if ext.len() < need {
            ext.resize(need, 0);
        }
        ext[rel..need].copy_from_slice(data);
        ext.extend_from_slice(&tail);
        let new_len = ext.len() as u64;
        self.size = self.size.max(end);
        let added = new_len - old_len;
        self.bytes = self.bytes + added - removed;
        added.saturating_sub(removed)
    }

    /// Buffers a change of size; returns the bytes removed from the overlay.
    fn truncate(&mut self, new_size: u64) -> u64 {
        let mut removed = 0u64;
        if new_size < self.size {
            let cut: Vec<u64> = self.extents.range(new_size..).map(|(&k, _)| k).collect();
            for k in cut {
                if let Some(v) = self.extents.remove(&k) {
                    removed += v.len() as u64;
                }
            }
            if let Some((&s, v)) = self.extents.range_mut(..new_size).next_back()
                && s + v.len() as u64 > new_size
            {
                let keep = (new_size - s) as usize;
                removed += (v.len() - keep) as u64;
                v.truncate(keep);
            }
            self.base_len = self.base_len.min(new_size);
        }
        self.size = new_size;
        self.bytes -= removed;
        removed
    }

    /// Reads `[off, off + len)` of the logical file: backing bytes below `base_len`, zeros
    /// elsewhere, buffered extents over both.
    fn read(&self, backing: &File, off: u64, len: usize) -> io::Result<Vec<u8>> {
        if off >= self.size {
            return Ok(Vec::new());
        }
        let n = (len as u64).min(self.size - off) as usize;
        let mut buf = vec![0u8; n];
        if off < self.base_len {
            let bn = (n as u64).min(self.base_len - off) as usize;
            read_full_at(backing, &mut buf[..bn], off)?;
        }
        let end = off + n as u64;
        let first = match self.extents.range(..=off).next_back() {
            Some((&s, _)) => s,
            None => off,
        };
        for (&s, v) in self.extents.range(first..end) {
            let e = s + v.len() as u64;
            if e <= off {
                continue;
            }
            let from = s.max(off);
            let to = e.min(end);
            buf[(from - off) as usize..(to - off) as usize]
                .copy_from_slice(&v[(from - s) as usize..(to - s) as usize]);
        }
        Ok(buf)
    }

    /// Writes the overlay to the backing file (no sync).
    fn write_back(&self) -> io::Result<()> {
        let fd = &self.flush_fd;
        if fd.metadata()?.len() > self.base_len {
            fd.set_len(self.base_len)?;
        }
        for (&off, data) in &self.extents {
            fd.write_all_at(data, off)?;
        }
        if fd.metadata()?.len() != self.size {
            fd.set_len(self.size)?;
        }
        Ok(())
    }
}

/// Reads as much of `buf` as the file has at `off` (the rest stays zero).
fn read_full_at(file: &File, buf: &mut [u8], off: u64) -> io::Result<usize> {
    let mut done = 0usize;
    let mut interrupted = 0usize;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], off + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted && interrupted < EINTR_RETRIES_MAX => {
                interrupted += 1;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

#[derive(Default)]
struct FileState {
    overlay: Option<Overlay>,
    /// Open FUSE file handles of this inode.
    open_handles: u64,
    /// Its last name was removed while it was open: drop the overlay at the last close.
    unlinked: bool,
}

struct Inode {
    ino: u64,
    /// `O_PATH` descriptor of the backing object: names and renames cannot lose it.
    fd: OwnedFd,
    kind: FileType,
    data: Mutex<FileState>,
}

struct Entry {
    inode: Arc<Inode>,
    /// Kernel references (lookups not yet forgotten).
    nlookup: u64,
}

#[derive(Default)]
struct InodeTable {
    by_ino: HashMap<u64, Entry>,
    /// Backing (device, inode) to our inode number.
    by_key: HashMap<(u64, u64), u64>,
    /// Numbers for backing inodes whose own number is taken (1, or another device's).
    next_spare: u64,
}

struct OpenFile {
    ino: u64,
    file: Arc<File>,
    writable: bool,
    /// Opened with O_SYNC or O_DSYNC.
    sync: bool,
}

struct OpenDir {
    file: File,
    /// Listing taken at `readdir` offset 0: (inode number, kind, name).
    entries: Vec<(u64, FileType, OsString)>,
}

enum Handle {
    File(Arc<OpenFile>),
    Dir(Arc<Mutex<OpenDir>>),
}

struct Shared {
    backing: PathBuf,
    root_dir: File,
    inodes: Mutex<InodeTable>,
    handles: Mutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
    /// Sum of every overlay's `bytes`.
    unsynced: AtomicU64,
    unsynced_max: u64,
    /// Dirty files, oldest first: dirty sequence to inode number.
    dirty: Mutex<BTreeMap<u64, u64>>,
    next_dirty_seq: AtomicU64,
    /// Bumped by every crash, so that a request that started before it changes nothing after.
    epoch: AtomicU64,
}

fn kind_of(mode: u32) -> FileType {
    match rustix::fs::FileType::from_raw_mode(mode) {
        rustix::fs::FileType::Directory => FileType::Directory,
        rustix::fs::FileType::Symlink => FileType::Symlink,
        rustix::fs::FileType::Fifo => FileType::NamedPipe,
        rustix::fs::FileType::CharacterDevice => FileType::CharDevice,
        rustix::fs::FileType::BlockDevice => FileType::BlockDevice,
        rustix::fs::FileType::Socket => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

fn kind_of_std(t: std::fs::FileType) -> FileType {
    if t.is_dir() {
        FileType::Directory
    } else if t.is_symlink() {
        FileType::Symlink
    } else if t.is_fifo() {
        FileType::NamedPipe
    } else if t.is_char_device() {
        FileType::CharDevice
    } else if t.is_block_device() {
        FileType::BlockDevice
    } else if t.is_socket() {
        FileType::Socket
    } else {
        FileType::RegularFile
    }
}

fn time_of(secs: i64, nsecs: i64) -> SystemTime {
    let nsecs = nsecs.clamp(0, 999_999_999) as u32;
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsecs)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::from_nanos(nsecs as u64)
    }
}

fn timespec_of(t: Option<TimeOrNow>) -> rustix::fs::Timespec {
    match t {
        None => rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
        Some(TimeOrNow::Now) => rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_NOW,
        },
        Some(TimeOrNow::SpecificTime(t)) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => rustix::fs::Timespec {
                tv_sec: d.as_secs() as i64,
                tv_nsec: d.subsec_nanos().into(),
            },
            Err(before) => {
                let d = before.duration();
                let mut secs = -(d.as_secs() as i64);
                let mut nsecs = i64::from(d.subsec_nanos());
                if nsecs > 0 {
                    secs -= 1;
                    nsecs = 1_000_000_000 - nsecs;
                }
                rustix::fs::Timespec {
                    tv_sec: secs,
                    tv_nsec: nsecs as _,
                }
            }
        },
    }
}

impl Shared {
    fn new(
        backing: PathBuf,
        root_fd: OwnedFd,
        root_stat: &rustix::fs::Stat,
        root_dir: File,
        unsynced_max: u64,
    ) -> Shared {
        let mut table = InodeTable {
            next_spare: 1 << 62,
            ..InodeTable::default()
        };
        let root = Arc::new(Inode {
            ino: INodeNo::ROOT.0,
            fd: root_fd,
            kind: FileType::Directory,
            data: Mutex::new(FileState::default()),
        });
        table
            .by_key
            .insert((root_stat.st_dev, root_stat.st_ino), root.ino);
        // The root is never forgotten: one reference that no FORGET takes away.
        table.by_ino.insert(
            root.ino,
            Entry {
                inode: root,
                nlookup: 1,
            },
        );
        Shared {
            backing,
            root_dir,
            inodes: Mutex::new(table),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            unsynced: AtomicU64::new(0),
            unsynced_max,
            dirty: Mutex::new(BTreeMap::new()),
            next_dirty_seq: AtomicU64::new(1),
            epoch: AtomicU64::new(0),
        }
    }

    fn inode(&self, ino: INodeNo) -> io::Result<Arc<Inode>> {
        lock(&self.inodes)
            .by_ino
            .get(&ino.0)
            .map(|e| e.inode.clone())
            .ok_or_else(|| io::Error::from_raw_os_error(rustix::io::Errno::STALE.raw_os_error()))
    }

    fn open_file(&self, fh: FileHandle) -> io::Result<Arc<OpenFile>> {
        match lock(&self.handles).get(&fh.0) {
            Some(Handle::File(f)) => Ok(f.clone()),
            _ => Err(io::Error::from_raw_os_error(
                rustix::io::Errno::BADF.raw_os_error(),
            )),
        }
    }

    fn open_dir(&self, fh: FileHandle) -> io::Result<Arc<Mutex<OpenDir>>> {
        match lock(&self.handles).get(&fh.0) {
            Some(Handle::Dir(d)) => Ok(d.clone()),
            _ => Err(io::Error::from_raw_os_error(
                rustix::io::Errno::BADF.raw_os_error(),
            )),
        }
    }

    /// The inode number shown for a backing object: ours if known, else its own.
    fn shown_ino(&self, dev: u64, ino: u64) -> u64 {
        lock(&self.inodes)
            .by_key
            .get(&(dev, ino))
            .copied()
            .unwrap_or(ino)
    }

    /// Registers (or finds) the inode of a backing object and takes one kernel reference.
    fn remember(&self, fd: OwnedFd, st: &rustix::fs::Stat) -> Arc<Inode> {
        let key = (st.st_dev, st.st_ino);
        let mut table = lock(&self.inodes);
        if let Some(&ino) = table.by_key.get(&key)
            && let Some(entry) = table.by_ino.get_mut(&ino)
        {
            entry.nlookup += 1;
            return entry.inode.clone();
        }
        let own = st.st_ino;
        let ino = if own > 1 && !table.by_ino.contains_key(&own) {
            own
        } else {
            // Spare numbers only grow, so at most every entry is skipped once.
            let mut n = table.next_spare;
            for _ in 0..=table.by_ino.len() {
                if !table.by_ino.contains_key(&n) {
                    break;
                }
                n += 1;
            }
            table.next_spare = n + 1;
            n
        };
        let inode = Arc::new(Inode {
            ino,
            fd,
            kind: kind_of(st.st_mode),
            data: Mutex::new(FileState::default()),
        });
        table.by_key.insert(key, ino);
        table.by_ino.insert(
            ino,
            Entry {
                inode: inode.clone(),
                nlookup: 1,
            },
        );
        inode
    }

    /// Drops inodes the kernel forgot that no longer hold anything.
    fn evict_if_idle(table: &mut InodeTable, ino: u64) {
        let Some(entry) = table.by_ino.get(&ino) else {
            return;
        };
        if entry.nlookup > 0 || ino == INodeNo::ROOT.0 {
            return;
        }
        {
            let st = lock(&entry.inode.data);
            if st.overlay.is_some() || st.open_handles > 0 {
                return;
            }
        }
        if let Some(entry) = table.by_ino.remove(&ino)
            && let Ok(st) = rustix::fs::fstat(&entry.inode.fd)
        {
            let key = (st.st_dev, st.st_ino);
            if table.by_key.get(&key) == Some(&ino) {
                table.by_key.remove(&key);
            }
        }
    }

    fn evict_idle_inodes(&self) {
        let mut table = lock(&self.inodes);
        let idle: Vec<u64> = table
            .by_ino
            .iter()
            .filter(|(_, e)| e.nlookup == 0)
            .map(|(&ino, _)| ino)
            .take(INODES_MAX)
            .collect();
        for ino in idle {
            Self::evict_if_idle(&mut table, ino);
        }
    }

    fn attr(&self, inode: &Inode) -> io::Result<FileAttr> {
        let st = rustix::fs::fstat(&inode.fd)?;
        let data = lock(&inode.data);
        Ok(self.attr_of(inode.ino, &st, data.overlay.as_ref()))
    }

    fn attr_of(&self, ino: u64, st: &rustix::fs::Stat, overlay: Option<&Overlay>) -> FileAttr {
        let mut size = st.st_size as u64;
        let mut blocks = st.st_blocks as u64;
        let mut mtime = time_of(st.st_mtime, st.st_mtime_nsec as i64);
        if let Some(ov) = overlay {
            size = ov.size;
            blocks = blocks.max(ov.size.div_ceil(512));
            if let Some(t) = ov.mtime {
                mtime = t;
            }
        }
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks,
            atime: time_of(st.st_atime, st.st_atime_nsec as i64),
            mtime,
            ctime: time_of(st.st_ctime, st.st_ctime_nsec as i64),
            crtime: UNIX_EPOCH,
            kind: kind_of(st.st_mode),
            perm: (st.st_mode & 0o7777) as u16,
            nlink: st.st_nlink as u32,
            uid: st.st_uid,
            gid: st.st_gid,
            rdev: st.st_rdev as u32,
            blksize: st.st_blksize as u32,
            flags: 0,
        }
    }

    /// Looks `name` up in `parent` (no symlink followed) and takes a kernel reference.
    fn lookup_child(&self, parent: &Inode, name: &OsStr) -> io::Result<FileAttr> {
        if name == OsStr::new("..") || name == OsStr::new(".") {
            // The kernel resolves these itself; never let one climb out of the backing folder.
            return Err(io::Error::from_raw_os_error(
                rustix::io::Errno::NOENT.raw_os_error(),
            ));
        }
        let fd = rustix::fs::openat(
            &parent.fd,
            name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let st = rustix::fs::fstat(&fd)?;
        let inode = self.remember(fd, &st);
        let data = lock(&inode.data);
        Ok(self.attr_of(inode.ino, &st, data.overlay.as_ref()))
    }

    /// Makes sure `st` has an overlay; `hint` is a writable descriptor of the file to use for
    /// writing it back.
    fn overlay_mut<'a>(
        &self,
        st: &'a mut FileState,
        inode: &Inode,
        hint: Option<&Arc<File>>,
    ) -> io::Result<&'a mut Overlay> {
        if st.overlay.is_none() {
            if inode.kind != FileType::RegularFile {
                return Err(io::Error::from_raw_os_error(
                    rustix::io::Errno::INVAL.raw_os_error(),
                ));
            }
            let flush_fd = match hint {
                Some(f) => f.clone(),
                None => Arc::new(OpenOptions::new().write(true).open(proc_path(&inode.fd))?),
            };
            let base_len = flush_fd.metadata()?.len();
            let seq = self.next_dirty_seq.fetch_add(1, Ordering::SeqCst);
            lock(&self.dirty).insert(seq, inode.ino);
            st.overlay = Some(Overlay {
                base_len,
                size: base_len,
                extents: BTreeMap::new(),
                bytes: 0,
                writes: 0,
                dirty_seq: seq,
                mtime: None,
                flush_fd,
            });
        }
        st.overlay
            .as_mut()
            .ok_or_else(|| io::Error::from_raw_os_error(rustix::io::Errno::IO.raw_os_error()))
    }

    /// Takes the overlay away (dropped or written back) and updates the totals.
    fn take_overlay(&self, st: &mut FileState) -> Option<Overlay> {
        let ov = st.overlay.take()?;
        self.unsynced.fetch_sub(ov.bytes, Ordering::SeqCst);
        lock(&self.dirty).remove(&ov.dirty_seq);
        Some(ov)
    }

    /// Writes the overlay (if any) back and syncs the backing file.
    fn sync_locked(
        &self,
        st: &mut FileState,
        fallback: Option<&File>,
        datasync: bool,
    ) -> io::Result<()> {
        let sync = |f: &File| {
            if datasync {
                f.sync_data()
            } else {
                f.sync_all()
            }
        };
        if let Some(ov) = st.overlay.as_ref() {
            ov.write_back()?;
            sync(&ov.flush_fd)?;
            self.take_overlay(st);
        } else if let Some(f) = fallback {
            sync(f)?;
        }
        Ok(())
    }

    /// Writes the oldest dirty files back until the unsynced total is under the limit.
    fn enforce_limit(&self) {
        for _ in 0..WRITEBACK_FILES_PER_WRITE_MAX {
            if self.unsynced.load(Ordering::SeqCst) <= self.unsynced_max {
                return;
            }
            let oldest = lock(&self.dirty).iter().next().map(|(&s, &i)| (s, i));
            let Some((seq, ino)) = oldest else {
                return;
            };
            let Ok(inode) = self.inode(INodeNo(ino)) else {
                lock(&self.dirty).remove(&seq);
                continue;
            };
            let mut st = lock(&inode.data);
            match st.overlay.as_ref() {
                Some(ov) if ov.dirty_seq == seq => {
                    if ov.write_back().is_err() {
                        // Keep the data; the next fsync of that file reports the error.
                        return;
                    }
                    self.take_overlay(&mut st);
                }
                _ => {
                    lock(&self.dirty).remove(&seq);
                }
            }
        }
    }

    /// Drops every overlay; returns what was dropped and the inodes it touched.
    fn drop_all_overlays(&self) -> (CrashReport, Vec<u64>) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        let inodes: Vec<Arc<Inode>> = lock(&self.inodes)
            .by_ino
            .values()
            .take(INODES_MAX)
            .map(|e| e.inode.clone())
            .collect();
        let mut report = CrashReport::default();
        let mut touched = Vec::new();
        for inode in inodes {
            let mut st = lock(&inode.data);
            if let Some(ov) = self.take_overlay(&mut st) {
                report.dropped_bytes += ov.bytes;
                report.dropped_writes += ov.writes;
                report.files_touched += 1;
                touched.push(inode.ino);
            }
        }
        (report, touched)
    }

    /// After the last name of a backing object went away: its overlay has nowhere to go.
    fn forget_data_of(&self, dev: u64, ino: u64) {
        let found = {
            let table = lock(&self.inodes);
            table
                .by_key
                .get(&(dev, ino))
                .and_then(|i| table.by_ino.get(i))
                .map(|e| e.inode.clone())
        };
        if let Some(inode) = found {
            let mut st = lock(&inode.data);
            if st.open_handles == 0 {
                self.take_overlay(&mut st);
            } else {
                st.unlinked = true;
            }
        }
    }

    fn new_fh(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::SeqCst)
    }

    fn open_backing(&self, inode: &Inode, flags: i32) -> io::Result<OpenFile> {
        let acc = flags & rustix::fs::OFlags::ACCMODE.bits() as i32;
        let writable = acc != OFlags::RDONLY.bits() as i32;
        let path = proc_path(&inode.fd);
        let file = if writable {
            match OpenOptions::new().read(true).write(true).open(&path) {
                Ok(f) => f,
                // Write-only permission (not root): reads will fail on this handle.
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                    OpenOptions::new().write(true).open(&path)?
                }
                Err(e) => return Err(e),
            }
        } else {
            File::open(&path)?
        };
        let sync_bits = (OFlags::SYNC | OFlags::DSYNC).bits() as i32;
        Ok(OpenFile {
            ino: inode.ino,
            file: Arc::new(file),
            writable,
            sync: flags & sync_bits != 0,
        })
    }

    fn register_open(&self, inode: &Inode, of: OpenFile) -> u64 {
        lock(&inode.data).open_handles += 1;
        let fh = self.new_fh();
        lock(&self.handles).insert(fh, Handle::File(Arc::new(of)));
        fh
    }

    fn do_write(
        &self,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        flags: OpenFlags,
    ) -> io::Result<u32> {
        let epoch = self.epoch.load(Ordering::SeqCst);
        let of = self.open_file(fh)?;
        let inode = self.inode(ino)?;
        {
            let mut st = lock(&inode.data);
            if self.epoch.load(Ordering::SeqCst) != epoch {
                return Err(io::Error::from_raw_os_error(
                    rustix::io::Errno::IO.raw_os_error(),
                ));
            }
            let hint = of.writable.then_some(&of.file);
            let ov = self.overlay_mut(&mut st, &inode, hint)?;
            let added = ov.insert(offset, data);
            ov.writes += 1;
            ov.mtime = Some(SystemTime::now());
            self.unsynced.fetch_add(added, Ordering::SeqCst);
            let sync_bits = (OFlags::SYNC | OFlags::DSYNC).bits() as i32;
            if of.sync || flags.0 & sync_bits != 0 {
                let full = flags.0 & OFlags::SYNC.bits() as i32 == OFlags::SYNC.bits() as i32;
                self.sync_locked(&mut st, Some(&of.file), !full)?;
            }
        }
        self.enforce_limit();
        u32::try_from(data.len())
            .map_err(|_| io::Error::from_raw_os_error(rustix::io::Errno::FBIG.raw_os_error()))
    }

    fn do_read(&self, ino: INodeNo, fh: FileHandle, offset: u64, size: u32) -> io::Result<Vec<u8>> {
        let of = self.open_file(fh)?;
        let inode = self.inode(ino)?;
        let st = lock(&inode.data);
        if let Some(ov) = st.overlay.as_ref() {
            return ov.read(&of.file, offset, size as usize);
        }
        drop(st);
        let mut buf = vec![0u8; size as usize];
        let n = read_full_at(&of.file, &mut buf, offset)?;
        buf.truncate(n);
        Ok(buf)
    }

    #[allow(clippy::too_many_arguments)]
    fn do_setattr(
        &self,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        fh: Option<FileHandle>,
    ) -> io::Result<FileAttr> {
        let epoch = self.epoch.load(Ordering::SeqCst);
        let inode = self.inode(ino)?;
        if let Some(mode) = mode {
            if inode.kind == FileType::Symlink {
                return Err(io::Error::from_raw_os_error(
                    rustix::io::Errno::OPNOTSUPP.raw_os_error(),
                ));
            }
            rustix::fs::chmod(proc_path(&inode.fd), Mode::from_raw_mode(mode & 0o7777))?;
        }
        if uid.is_some() || gid.is_some() {
            rustix::fs::chownat(
                &inode.fd,
                "",
                uid.map(rustix::fs::Uid::from_raw),
                gid.map(rustix::fs::Gid::from_raw),
                AtFlags::EMPTY_PATH,
            )?;
        }
        if let Some(size) = size {
            if inode.kind == FileType::Directory {
                return Err(io::Error::from_raw_os_error(
                    rustix::io::Errno::ISDIR.raw_os_error(),
                ));
            }
            let hint = match fh {
                Some(fh) => self
                    .open_file(fh)
                    .ok()
                    .filter(|of| of.writable)
                    .map(|of| of.file.clone()),
                None => None,
            };
            let mut st = lock(&inode.data);
            if self.epoch.load(Ordering::SeqCst) != epoch {
                return Err(io::Error::from_raw_os_error(
                    rustix::io::Errno::IO.raw_os_error(),
                ));
            }
            let unchanged = match st.overlay.as_ref() {
                Some(ov) => ov.size == size,
                None => rustix::fs::fstat(&inode.fd)?.st_size as u64 == size,
            };
            // A truncate to the current size (RocksDB's close does one) changes nothing.
            if unchanged {
                drop(st);
                return self.attr(&inode);
            }
            let ov = self.overlay_mut(&mut st, &inode, hint.as_ref())?;
            let removed = ov.truncate(size);
            ov.writes += 1;
            ov.mtime = Some(SystemTime::now());
            self.unsynced.fetch_sub(removed, Ordering::SeqCst);
        }
        if atime.is_some() || mtime.is_some() {
            if inode.kind == FileType::Symlink {
                return Err(io::Error::from_raw_os_error(
                    rustix::io::Errno::OPNOTSUPP.raw_os_error(),
                ));
            }
            let times = rustix::fs::Timestamps {
                last_access: timespec_of(atime),
                last_modification: timespec_of(mtime),
            };
            rustix::fs::utimensat(
                rustix::fs::CWD,
                proc_path(&inode.fd),
                &times,
                AtFlags::empty(),
            )?;
            if mtime.is_some()
                && let Some(ov) = lock(&inode.data).overlay.as_mut()
            {
                ov.mtime = None;
            }
        }
        self.attr(&inode)
    }

    fn do_create(
        &self,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        flags: i32,
    ) -> io::Result<(FileAttr, u64)> {
        let p = self.inode(parent)?;
        let acc = OFlags::from_bits_retain((flags & OFlags::ACCMODE.bits() as i32) as u32);
        let base = OFlags::CLOEXEC | OFlags::NOFOLLOW;
        let exclusive = flags & OFlags::EXCL.bits() as i32 != 0;
        let created = rustix::fs::openat(
            &p.fd,
            name,
            base | OFlags::RDONLY | OFlags::CREATE | OFlags::EXCL,
            Mode::from_raw_mode(mode & 0o7777),
        );
        let existed = match created {
            Ok(fd) => {
                // Our own umask applied on top of the caller's: set the mode asked for.
                rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode & 0o7777))?;
                false
            }
            Err(rustix::io::Errno::EXIST) if !exclusive => true,
            Err(e) => return Err(e.into()),
        };
        let fd = rustix::fs::openat(&p.fd, name, OFlags::PATH | base, Mode::empty())?;
        let st = rustix::fs::fstat(&fd)?;
        if kind_of(st.st_mode as u32) != FileType::RegularFile {
            return Err(io::Error::from_raw_os_error(
                rustix::io::Errno::ISDIR.raw_os_error(),
            ));
        }
        let inode = self.remember(fd, &st);
        let opened = (|| {
            let of = self.open_backing(
                &inode,
                acc.bits() as i32 | (flags & (OFlags::SYNC | OFlags::DSYNC).bits() as i32),
            )?;
            if existed && flags & OFlags::TRUNC.bits() as i32 != 0 {
                let mut data = lock(&inode.data);
                let hint = of.writable.then_some(&of.file);
                let ov = self.overlay_mut(&mut data, &inode, hint)?;
                let removed = ov.truncate(0);
                ov.writes += 1;
                self.unsynced.fetch_sub(removed, Ordering::SeqCst);
            }
            let st = rustix::fs::fstat(&inode.fd)?;
            Ok::<_, io::Error>((of, st))
        })();
        match opened {
            Ok((of, st)) => {
                let fh = self.register_open(&inode, of);
                let data = lock(&inode.data);
                Ok((self.attr_of(inode.ino, &st, data.overlay.as_ref()), fh))
            }
            Err(e) => {
                // The kernel takes no reference from a failed create.
                let mut table = lock(&self.inodes);
                if let Some(entry) = table.by_ino.get_mut(&inode.ino) {
                    entry.nlookup = entry.nlookup.saturating_sub(1);
                }
                Self::evict_if_idle(&mut table, inode.ino);
                Err(e)
            }
        }
    }

    fn do_unlink(&self, parent: INodeNo, name: &OsStr, dir: bool) -> io::Result<()> {
        let p = self.inode(parent)?;
        let st = rustix::fs::statat(&p.fd, name, AtFlags::SYMLINK_NOFOLLOW)?;
        let flags = if dir {
            AtFlags::REMOVEDIR
        } else {
            AtFlags::empty()
        };
        rustix::fs::unlinkat(&p.fd, name, flags)?;
        if !dir && st.st_nlink <= 1 {
            self.forget_data_of(st.st_dev as u64, st.st_ino as u64);
        }
        Ok(())
    }

    fn do_rename(
        &self,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
    ) -> io::Result<()> {
        let p = self.inode(parent)?;
        let np = self.inode(newparent)?;
        let src = rustix::fs::statat(&p.fd, name, AtFlags::SYMLINK_NOFOLLOW)?;
        let replaced = if flags.is_empty() {
            rustix::fs::statat(&np.fd, newname, AtFlags::SYMLINK_NOFOLLOW).ok()
        } else {
            None
        };
        rustix::fs::renameat_with(
            &p.fd,
            name,
            &np.fd,
            newname,
            rustix::fs::RenameFlags::from_bits_retain(flags.bits()),
        )?;
        if let Some(r) = replaced
            && (r.st_dev, r.st_ino) != (src.st_dev, src.st_ino)
            && r.st_nlink <= 1
            && kind_of(r.st_mode) == FileType::RegularFile
        {
            self.forget_data_of(r.st_dev, r.st_ino);
        }
        Ok(())
    }

    fn do_opendir(&self, ino: INodeNo) -> io::Result<u64> {
        let inode = self.inode(ino)?;
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(OFlags::DIRECTORY.bits() as i32)
            .open(proc_path(&inode.fd))?;
        let fh = self.new_fh();
        lock(&self.handles).insert(
            fh,
            Handle::Dir(Arc::new(Mutex::new(OpenDir {
                file,
                entries: Vec::new(),
            }))),
        );
        Ok(fh)
    }

    fn list_dir(&self, inode: &Inode) -> io::Result<Vec<(u64, FileType, OsString)>> {
        let mut entries = Vec::new();
        let dot = rustix::fs::fstat(&inode.fd)?;
        let dotdot = if inode.ino == INodeNo::ROOT.0 {
            INodeNo::ROOT.0
        } else {
            let st = rustix::fs::statat(&inode.fd, "..", AtFlags::SYMLINK_NOFOLLOW)?;
            self.shown_ino(st.st_dev as u64, st.st_ino as u64)
        };
        entries.push((inode.ino, FileType::Directory, OsString::from(".")));
        entries.push((dotdot, FileType::Directory, OsString::from("..")));
        for entry in std::fs::read_dir(proc_path(&inode.fd))? {
            if entries.len() >= DIR_ENTRIES_MAX {
                return Err(io::Error::from_raw_os_error(
                    rustix::io::Errno::NOMEM.raw_os_error(),
                ));
            }
            let entry = entry?;
            let kind = kind_of_std(entry.file_type()?);
            let backing_ino = std::os::unix::fs::DirEntryExt::ino(&entry);
            let shown = self.shown_ino(dot.st_dev as u64, backing_ino);
            entries.push((shown, kind, entry.file_name()));
        }
        Ok(entries)
    }
}

/// The `fuser` file system: every request on the shared state.
struct Ops(Arc<Shared>);

impl Filesystem for Ops {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let s = &self.0;
        match s.inode(parent).and_then(|p| s.lookup_child(&p, name)) {
            Ok(attr) => reply.entry(&ATTR_TTL, &attr, Generation(0)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let mut table = lock(&self.0.inodes);
        if let Some(entry) = table.by_ino.get_mut(&ino.0) {
            entry.nlookup = entry.nlookup.saturating_sub(nlookup);
        }
        Shared::evict_if_idle(&mut table, ino.0);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.0.inode(ino).and_then(|i| self.0.attr(&i)) {
            Ok(attr) => reply.attr(&ATTR_TTL, &attr),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        match self
            .0
            .do_setattr(ino, mode, uid, gid, size, atime, mtime, fh)
        {
            Ok(attr) => reply.attr(&ATTR_TTL, &attr),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let res = self
            .0
            .inode(ino)
            .and_then(|i| rustix::fs::readlinkat(&i.fd, "", Vec::new()).map_err(io::Error::from));
        match res {
            Ok(target) => reply.data(target.as_bytes()),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let s = &self.0;
        let res = s.inode(parent).and_then(|p| {
            rustix::fs::mknodat(
                &p.fd,
                name,
                rustix::fs::FileType::from_raw_mode(mode),
                Mode::from_raw_mode(mode & 0o7777),
                rdev.into(),
            )?;
            rustix::fs::chmodat(
                &p.fd,
                name,
                Mode::from_raw_mode(mode & 0o7777),
                AtFlags::empty(),
            )?;
            s.lookup_child(&p, name)
        });
        reply_entry(reply, res);
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let s = &self.0;
        let res = s.inode(parent).and_then(|p| {
            rustix::fs::mkdirat(&p.fd, name, Mode::from_raw_mode(mode & 0o7777))?;
            rustix::fs::chmodat(
                &p.fd,
                name,
                Mode::from_raw_mode(mode & 0o7777),
                AtFlags::empty(),
            )?;
            s.lookup_child(&p, name)
        });
        reply_entry(reply, res);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.0.do_unlink(parent, name, false) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.0.do_unlink(parent, name, true) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let s = &self.0;
        let res = s.inode(parent).and_then(|p| {
            rustix::fs::symlinkat(target, &p.fd, link_name)?;
            s.lookup_child(&p, link_name)
        });
        reply_entry(reply, res);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        match self.0.do_rename(parent, name, newparent, newname, flags) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let s = &self.0;
        let res = s.inode(ino).and_then(|i| {
            let np = s.inode(newparent)?;
            rustix::fs::linkat(
                rustix::fs::CWD,
                proc_path(&i.fd),
                &np.fd,
                newname,
                AtFlags::SYMLINK_FOLLOW,
            )?;
            s.lookup_child(&np, newname)
        });
        reply_entry(reply, res);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let s = &self.0;
        let res = s.inode(ino).and_then(|i| {
            if i.kind == FileType::Directory {
                return Err(io::Error::from_raw_os_error(
                    rustix::io::Errno::ISDIR.raw_os_error(),
                ));
            }
            let of = s.open_backing(&i, flags.0)?;
            Ok(s.register_open(&i, of))
        });
        match res {
            // Neither DIRECT_IO nor KEEP_CACHE: page cache on, and dropped at every open.
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.0.do_read(ino, fh, offset, size) {
            Ok(buf) => reply.data(&buf),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.0.do_write(ino, fh, offset, data, flags) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2) makes nothing durable.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let s = &self.0;
        let removed = lock(&s.handles).remove(&fh.0);
        if let Some(Handle::File(of)) = removed
            && let Ok(inode) = s.inode(INodeNo(of.ino))
        {
            let mut st = lock(&inode.data);
            st.open_handles = st.open_handles.saturating_sub(1);
            if st.open_handles == 0 && st.unlinked {
                s.take_overlay(&mut st);
                st.unlinked = false;
            }
        }
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let s = &self.0;
        let res = s.open_file(fh).and_then(|of| {
            let inode = s.inode(ino)?;
            let mut st = lock(&inode.data);
            s.sync_locked(&mut st, Some(&of.file), datasync)
        });
        match res {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.0.do_opendir(ino) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let s = &self.0;
        let res = s.open_dir(fh).and_then(|d| {
            let mut d = lock(&d);
            if offset == 0 {
                let inode = s.inode(ino)?;
                d.entries = s.list_dir(&inode)?;
            }
            let start = usize::try_from(offset).unwrap_or(usize::MAX);
            for (i, (e_ino, kind, name)) in d.entries.iter().enumerate().skip(start) {
                if reply.add(INodeNo(*e_ino), (i + 1) as u64, *kind, name) {
                    break;
                }
            }
            Ok(())
        });
        match res {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        lock(&self.0.handles).remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let res = self.0.open_dir(fh).and_then(|d| {
            let d = lock(&d);
            if datasync {
                d.file.sync_data()
            } else {
                d.file.sync_all()
            }
        });
        match res {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match rustix::fs::fstatvfs(&self.0.root_dir) {
            Ok(v) => reply.statfs(
                v.f_blocks,
                v.f_bfree,
                v.f_bavail,
                v.f_files,
                v.f_ffree,
                v.f_bsize as u32,
                v.f_namemax as u32,
                v.f_frsize as u32,
            ),
            Err(e) => reply.error(errno(&io::Error::from(e))),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        match self.0.do_create(parent, name, mode, flags) {
            Ok((attr, fh)) => reply.created(
                &ATTR_TTL,
                &attr,
                Generation(0),
                FileHandle(fh),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        // ENOSYS: the kernel stops asking and answers EOPNOTSUPP itself from then on.
        reply.error(Errno::ENOSYS);
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::ENOSYS);
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        // RocksDB asks FS_IOC_GETVERSION for file ids and does without.
        reply.error(Errno::ENOTTY);
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: i64,
        _whence: i32,
        reply: ReplyLseek,
    ) {
        // The kernel then seeks by itself (SEEK_DATA/SEEK_HOLE see one data extent).
        reply.error(Errno::ENOSYS);
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        _fh_in: FileHandle,
        _offset_in: u64,
        _ino_out: INodeNo,
        _fh_out: FileHandle,
        _offset_out: u64,
        _len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        // Callers fall back to read + write, which go through the overlay.
        reply.error(Errno::ENOSYS);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // With `default_permissions` the kernel checks; ENOSYS tells it not to ask again.
        reply.error(Errno::ENOSYS);
    }
}

#[cfg(test)]
mod tests {
    //! These tests mount real FUSE file systems: they need /dev/fuse and root (CI runs as
    //! root on a machine with /dev/fuse). Without FUSE they fail, saying so; they never skip.

    use super::*;
    use std::io::Write;

    /// A backing folder, a mount point and the LazyFs between them; unmounted before the
    /// folders are removed.
    struct Fixture {
        fs: Option<LazyFs>,
        mnt: tempfile::TempDir,
        backing: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> anyhow::Result<Fixture> {
            Self::with_limit(UNSYNCED_BYTES_MAX)
        }

        fn with_limit(unsynced_bytes_max: u64) -> anyhow::Result<Fixture> {
            let backing = tempfile::Builder::new()
                .prefix("lazyfs-backing-")
                .tempdir()
                .context("creating the backing tempdir")?;
            let mnt = tempfile::Builder::new()
                .prefix("lazyfs-mnt-")
                .tempdir()
                .context("creating the mount point tempdir")?;
            let fs = LazyFs::mount_with_limit(backing.path(), mnt.path(), unsynced_bytes_max)
                .context(
                    "these tests need FUSE (/dev/fuse, run as root): mounting LazyFs failed",
                )?;
            Ok(Fixture {
                fs: Some(fs),
                mnt,
                backing,
            })
        }

        fn fs(&self) -> anyhow::Result<&LazyFs> {
            self.fs.as_ref().context("LazyFs already unmounted")
        }

        /// A path through the mount.
        fn m(&self, name: &str) -> PathBuf {
            self.mnt.path().join(name)
        }

        /// The same path in the backing folder.
        fn b(&self, name: &str) -> PathBuf {
            self.backing.path().join(name)
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            if let Some(fs) = self.fs.take()
                && let Err(e) = fs.unmount()
            {
                eprintln!("unmounting the test LazyFs: {e:#}");
            }
        }
    }

    fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
        std::fs::read(path).with_context(|| format!("reading {}", path.display()))
    }

    fn create(path: &Path) -> anyhow::Result<File> {
        OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(path)
            .with_context(|| format!("creating {}", path.display()))
    }

    /// Polls `cond` for up to 5 s (things the kernel does asynchronously, like RELEASE).
    fn wait_until(what: &str, cond: impl Fn() -> anyhow::Result<bool>) -> anyhow::Result<()> {
        for _ in 0..500 {
            if cond()? {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        bail!("timed out after 5 s waiting until {what}")
    }

    #[test]
    fn only_fsynced_data_survives_a_crash() -> anyhow::Result<()> {
        let fx = Fixture::new()?;
        let path = fx.m("data.bin");
        let mut f = create(&path)?;
        let synced = vec![b'A'; 10_000];
        f.write_all(&synced)?;
        f.sync_data()?;
        f.write_all(&[b'B'; 5_000])?;
        f.write_all_at(&[b'C'; 100], 100)?;

        let mut expected = synced.clone();
        expected.extend_from_slice(&[b'B'; 5_000]);
        expected[100..200].copy_from_slice(&[b'C'; 100]);
        assert_eq!(read(&path)?, expected, "the mount shows unsynced writes");
        assert_eq!(
            std::fs::metadata(&path)?.len(),
            15_000,
            "size counts unsynced appends"
        );
        assert_eq!(
            read(&fx.b("data.bin"))?,
            synced,
            "the backing file has only the fsynced data"
        );
        assert_eq!(fx.fs()?.unsynced_bytes(), 5_100);

        // `f` stays open across the crash: the kernel's page cache must not serve dropped data.
        let report = fx.fs()?.crash()?;
        assert_eq!(report.dropped_bytes, 5_100);
        // Counted in FUSE WRITE requests: the kernel may split a write(2) at page boundaries.
        assert!(report.dropped_writes >= 2, "{report:?}");
        assert_eq!(report.files_touched, 1);
        assert_eq!(fx.fs()?.unsynced_bytes(), 0);
        assert_eq!(read(&fx.b("data.bin"))?, synced);
        assert_eq!(read(&path)?, synced, "a new open sees the durable data");
        let mut buf = vec![0u8; 15_000];
        let n = read_full_at(&f, &mut buf, 0)?;
        assert_eq!(
            &buf[..n],
            &synced[..],
            "an old descriptor sees the durable data"
        );
        assert_eq!(std::fs::metadata(&path)?.len(), 10_000);

        // A second crash with nothing unsynced drops nothing.
        let report = fx.fs()?.crash()?;
        assert_eq!((report.dropped_bytes, report.files_touched), (0, 0));
        Ok(())
    }

    /// A small deterministic generator (xorshift64*), so failures replay.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// The overlay alone against a plain byte vector: random writes and truncations over a
    /// backing file, every read and the extent invariants checked.
    #[test]
    fn overlay_matches_a_byte_vector_model() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("base");
        let base: Vec<u8> = (0..3000u32).map(|i| (i % 253) as u8).collect();
        std::fs::write(&path, &base)?;
        let backing = File::open(&path)?;
        let flush_fd = Arc::new(OpenOptions::new().write(true).open(&path)?);
        let mut ov = Overlay {
            base_len: base.len() as u64,
            size: base.len() as u64,
            extents: BTreeMap::new(),
            bytes: 0,
            writes: 0,
            dirty_seq: 0,
            mtime: None,
            flush_fd,
        };
        let mut model = base.clone();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for step in 0..5000u32 {
            if rng.below(10) == 0 {
                let size = rng.below(6000) as usize;
                ov.truncate(size as u64);
                model.resize(size, 0);
            } else {
                let off = rng.below(6000) as usize;
                let len = 1 + rng.below(700) as usize;
                let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                ov.insert(off as u64, &data);
                if model.len() < off + len {
                    model.resize(off + len, 0);
                }
                model[off..off + len].copy_from_slice(&data);
            }
            assert_eq!(ov.size, model.len() as u64, "size at step {step}");
            let sum: u64 = ov.extents.values().map(|v| v.len() as u64).sum();
            assert_eq!(ov.bytes, sum, "byte count at step {step}");
            let mut prev_end: Option<u64> = None;
            for (&k, v) in &ov.extents {
                assert!(!v.is_empty(), "empty extent at step {step}");
                if let Some(e) = prev_end {
                    assert!(k > e, "overlapping or adjacent extents at step {step}");
                }
                prev_end = Some(k + v.len() as u64);
            }
            assert!(
                prev_end.is_none_or(|e| e <= ov.size),
                "extent past the end at {step}"
            );
            let off = rng.below(6500);
            let len = rng.below(2000) as usize;
            let got = ov.read(&backing, off, len)?;
            let from = (off as usize).min(model.len());
            let to = (off as usize + len).min(model.len());
            assert_eq!(got, &model[from..to], "read {off}+{len} at step {step}");
        }
        ov.write_back()?;
        assert_eq!(std::fs::read(&path)?, model, "written back");
        Ok(())
    }

    /// Random pwrite / truncate / fsync / crash through the mount against two models: what
    /// the mount shows and what is durable.
    #[test]
    fn random_operations_through_the_mount_match_the_models() -> anyhow::Result<()> {
        let fx = Fixture::new()?;
        let path = fx.m("random");
        let mut f = create(&path)?;
        let mut shown: Vec<u8> = Vec::new();
        let mut durable: Vec<u8> = Vec::new();
        let mut rng = Rng(0x0123_4567_89ab_cdef);
        for step in 0..600u32 {
            match rng.below(20) {
                0 => {
                    f.sync_all()?;
                    durable = shown.clone();
                }
                1 => {
                    drop(f);
                    fx.fs()?.crash()?;
                    shown = durable.clone();
                    f = OpenOptions::new().read(true).write(true).open(&path)?;
                }
                2 | 3 => {
                    let size = rng.below(40_000) as usize;
                    f.set_len(size as u64)?;
                    shown.resize(size, 0);
                }
                _ => {
                    let off = rng.below(40_000) as usize;
                    let len = 1 + rng.below(9000) as usize;
                    let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                    f.write_all_at(&data, off as u64)?;
                    if shown.len() < off + len {
                        shown.resize(off + len, 0);
                    }
                    shown[off..off + len].copy_from_slice(&data);
                }
            }
            if step % 25 == 0 {
                assert!(read(&path)? == shown, "the mount differs at step {step}");
                assert_eq!(std::fs::metadata(&path)?.len(), shown.len() as u64);
            }
        }
        drop(f);
        fx.fs()?.crash()?;
        assert!(
            read(&fx.b("random"))? == durable,
            "the backing file holds the durable model"
        );
        assert!(read(&path)? == durable, "the mount shows the durable model");
        Ok(())
    }

    /// Same size before and after the crash, so only crash()'s invalidation (not a size
    /// change) can keep the kernel's page cache from serving the dropped bytes.
    #[test]
    fn crash_invalidates_the_kernel_page_cache() -> anyhow::Result<()> {
        let fx = Fixture::new()?;
        let path = fx.m("cached");
        let f = create(&path)?;
        f.write_all_at(&[b'A'; 8192], 0)?;
        f.sync_all()?;
        f.write_all_at(&[b'C'; 100], 4000)?;
        let mut buf = vec![0u8; 8192];
        read_full_at(&f, &mut buf, 0)?;
        assert_eq!(&buf[4000..4100], &[b'C'; 100]);
        fx.fs()?.crash()?;
        read_full_at(&f, &mut buf, 0)?;
        assert_eq!(
            buf,
            vec![b'A'; 8192],
            "an old descriptor sees the durable data"
        );
        assert_eq!(
            read(&path)?,
            vec![b'A'; 8192],
            "a new open sees the durable data"
        );
        // A truncate to the current size is no change at all.
        f.set_len(8192)?;
        assert_eq!(fx.fs()?.crash()?.files_touched, 0);
        Ok(())
    }

    #[test]
    fn written_never_fsynced_file_exists_empty_after_crash() -> anyhow::Result<()> {
        let fx = Fixture::new()?;
        {
            let mut f = create(&fx.m("fresh"))?;
            f.write_all(&[7u8; 4096])?;
        } // closed: flush and release make nothing durable
        assert_eq!(
            std::fs::metadata(fx.b("fresh"))?.len(),
            0,
            "create is durable, data is not"
        );
        assert_eq!(read(&fx.m("fresh"))?, vec![7u8; 4096]);
        let report = fx.fs()?.crash()?;
        assert_eq!(report.dropped_bytes, 4096);
        assert_eq!(report.files_touched, 1);
        assert_eq!(read(&fx.b("fresh"))?, Vec::<u8>::new());
        assert_eq!(read(&fx.m("fresh"))?, Vec::<u8>::new());
        Ok(())
    }

    #[test]
    fn rename_keeps_synced_content_and_moves_the_overlay() -> anyhow::Result<()> {
        let fx = Fixture::new()?;
        let mut f = create(&fx.m("a"))?;
        f.write_all(b"v1")?;
        f.sync_all()?;
        f.write_all(b" and unsynced")?;
        std::fs::rename(fx.m("a"), fx.m("b"))?;
        assert!(
            !fx.m("a").exists() && !fx.b("a").exists(),
            "rename is applied at once"
        );
        assert_eq!(
            read(&fx.m("b"))?,
            b"v1 and unsynced",
            "the overlay moved with the file"
        );
        assert_eq!(read(&fx.b("b"))?, b"v1");

        // A folder renamed under a dirty file: the file keeps its overlay and can be synced.
        std::fs::create_dir(fx.m("d"))?;
        let mut g = create(&fx.m("d/f"))?;
        g.write_all(b"inside")?;
        std::fs::rename(fx.m("d"), fx.m("e"))?;
        assert_eq!(read(&fx.m("e/f"))?, b"inside");
        g.sync_data()?;
        assert_eq!(read(&fx.b("e/f"))?, b"inside");

        let report = fx.fs()?.crash()?;
        assert_eq!(report.dropped_bytes, b" and unsynced".len() as u64);
        assert_eq!(read(&fx.m("b"))?, b"v1");
        assert_eq!(read(&fx.b("b"))?, b"v1");
        assert_eq!(read(&fx.m("e/f"))?, b"inside");

        // Hard links share the overlay; fsync through either name makes it durable.
        let mut h = create(&fx.m("x"))?;
        h.write_all(b"linked")?;
        std::fs::hard_link(fx.m("x"), fx.m("y"))?;
        assert_eq!(read(&fx.m("y"))?, b"linked");
        File::open(fx.m("y"))?.sync_all()?;
        assert_eq!(fx.fs()?.unsynced_bytes(), 0);
        fx.fs()?.crash()?;
        assert_eq!(read(&fx.b("x"))?, b"linked");
        Ok(())
    }

    #[test]
    fn truncate_is_buffered_until_fsync() -> anyhow::Result<()> {
        let fx = Fixture::new()?;
        let pattern: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
        let f = create(&fx.m("t"))?;
        f.write_all_at(&pattern, 0)?;
        f.sync_all()?;
        f.set_len(100)?;
        f.write_all_at(b"Z", 200)?;
        let mut expected = pattern[..100].to_vec();
        expected.resize(200, 0);
        expected.push(b'Z');
        assert_eq!(
            read(&fx.m("t"))?,
            expected,
            "cut bytes read as zeros when extended again"
        );
        assert_eq!(read(&fx.b("t"))?, pattern);
        let report = fx.fs()?.crash()?;
        assert_eq!(report.dropped_writes, 2, "the truncate and the write");
        assert_eq!(
            read(&fx.m("t"))?,
            pattern,
            "the old length and content come back"
        );

        f.set_len(100)?;
        f.sync_all()?;
        assert_eq!(read(&fx.b("t"))?, &pattern[..100]);
        fx.fs()?.crash()?;
        assert_eq!(read(&fx.m("t"))?, &pattern[..100]);

        // Extending by truncate is buffered too, and fsync makes the new length durable.
        f.set_len(5000)?;
        assert_eq!(std::fs::metadata(fx.b("t"))?.len(), 100);
        f.sync_data()?;
        let mut extended = pattern[..100].to_vec();
        extended.resize(5000, 0);
        assert_eq!(read(&fx.b("t"))?, extended);
        f.set_len(100)?;
        f.sync_data()?;

        // O_TRUNC of an existing file is buffered the same way.
        drop(create(&fx.m("t"))?);
        assert_eq!(std::fs::metadata(fx.m("t"))?.len(), 0);
        assert_eq!(std::fs::metadata(fx.b("t"))?.len(), 100);
        fx.fs()?.crash()?;
        assert_eq!(read(&fx.m("t"))?, &pattern[..100]);
        Ok(())
    }

    #[test]
    fn unlink_drops_the_overlay() -> anyhow::Result<()> {
        let fx = Fixture::new()?;
        create(&fx.m("gone"))?.write_all(&[1u8; 1000])?;
        assert_eq!(fx.fs()?.unsynced_bytes(), 1000);
        std::fs::remove_file(fx.m("gone"))?;
        wait_until("unlink drops the overlay", || {
            Ok(fx.fs()?.unsynced_bytes() == 0)
        })?;

        // Unlinked while open: still readable through the descriptor until the last close.
        let mut f = create(&fx.m("open"))?;
        f.write_all(&[2u8; 500])?;
        std::fs::remove_file(fx.m("open"))?;
        let mut buf = vec![0u8; 500];
        assert_eq!(read_full_at(&f, &mut buf, 0)?, 500);
        assert_eq!(buf, vec![2u8; 500]);
        assert_eq!(fx.fs()?.unsynced_bytes(), 500);
        drop(f);
        // The kernel sends RELEASE after close(2) returns.
        wait_until("the last close drops the overlay", || {
            Ok(fx.fs()?.unsynced_bytes() == 0)
        })?;

        // Renamed over: the replaced file's overlay goes too.
        create(&fx.m("old"))?.write_all(&[3u8; 300])?;
        create(&fx.m("new"))?.sync_all()?;
        std::fs::rename(fx.m("new"), fx.m("old"))?;
        assert_eq!(fx.fs()?.unsynced_bytes(), 0);
        let report = fx.fs()?.crash()?;
        assert_eq!((report.dropped_bytes, report.files_touched), (0, 0));
        Ok(())
    }

    #[test]
    fn o_dsync_writes_are_durable_at_once() -> anyhow::Result<()> {
        let fx = Fixture::new()?;
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .custom_flags(OFlags::DSYNC.bits() as i32)
            .open(fx.m("dsync"))?;
        f.write_all(b"durable")?;
        assert_eq!(fx.fs()?.unsynced_bytes(), 0);
        assert_eq!(read(&fx.b("dsync"))?, b"durable");
        Ok(())
    }

    #[test]
    fn writeback_over_the_limit_persists_the_oldest_dirty_file() -> anyhow::Result<()> {
        let fx = Fixture::with_limit(1024 * 1024)?;
        create(&fx.m("first"))?.write_all(&vec![b'f'; 768 * 1024])?;
        assert_eq!(std::fs::metadata(fx.b("first"))?.len(), 0);
        create(&fx.m("second"))?.write_all(&vec![b's'; 512 * 1024])?;
        assert_eq!(
            read(&fx.b("first"))?,
            vec![b'f'; 768 * 1024],
            "the oldest dirty file was written back"
        );
        assert_eq!(fx.fs()?.unsynced_bytes(), 512 * 1024);
        let report = fx.fs()?.crash()?;
        assert_eq!(report.dropped_bytes, 512 * 1024);
        assert_eq!(read(&fx.m("first"))?.len(), 768 * 1024);
        assert_eq!(read(&fx.m("second"))?.len(), 0);
        Ok(())
    }

    /// RocksDB's pattern: a WAL appended in 4 KiB records with fdatasync every 64, CURRENT
    /// replaced by write + fsync + rename + fsync of the folder, a LOCK file, listings.
    #[test]
    fn rocksdb_like_pattern_keeps_exactly_what_was_synced() -> anyhow::Result<()> {
        let fx = Fixture::new()?;
        std::fs::create_dir(fx.m("db"))?;
        let record = |i: u32| -> Vec<u8> {
            let mut r = vec![(i % 256) as u8; 4096];
            r[..4].copy_from_slice(&i.to_le_bytes());
            r
        };
        let mut wal = OpenOptions::new()
            .create(true)
            .append(true)
            .open(fx.m("db/000003.log"))?;
        let mut synced_records = 0u32;
        for i in 0..1000u32 {
            wal.write_all(&record(i))?;
            if (i + 1) % 64 == 0 {
                wal.sync_data()?;
                synced_records = i + 1;
            }
        }
        assert_eq!(synced_records, 960);

        let dir = File::open(fx.m("db"))?;
        let mut tmp = create(&fx.m("db/000001.dbtmp"))?;
        tmp.write_all(b"MANIFEST-000001\n")?;
        tmp.sync_all()?;
        std::fs::rename(fx.m("db/000001.dbtmp"), fx.m("db/CURRENT"))?;
        dir.sync_all()?;
        // The bug this layer exists to catch: a replacement renamed in without fsync.
        create(&fx.m("db/000009.dbtmp"))?.write_all(b"MANIFEST-000009\n")?;
        std::fs::rename(fx.m("db/000009.dbtmp"), fx.m("db/CURRENT"))?;
        assert_eq!(read(&fx.m("db/CURRENT"))?, b"MANIFEST-000009\n");

        // Preallocation is refused, every time, as EOPNOTSUPP (RocksDB ignores the failure).
        for _ in 0..2 {
            assert_eq!(
                rustix::fs::fallocate(&wal, rustix::fs::FallocateFlags::KEEP_SIZE, 0, 1 << 20),
                Err(rustix::io::Errno::OPNOTSUPP)
            );
        }

        // LOCK: flock is kept by the kernel for the mount (open file descriptions conflict).
        let lock1 = create(&fx.m("db/LOCK"))?;
        let lock2 = OpenOptions::new().write(true).open(fx.m("db/LOCK"))?;
        rustix::fs::flock(&lock1, rustix::fs::FlockOperation::NonBlockingLockExclusive)?;
        assert!(
            rustix::fs::flock(&lock2, rustix::fs::FlockOperation::NonBlockingLockExclusive)
                .is_err(),
            "a second exclusive flock must conflict"
        );

        let mut names: Vec<String> = std::fs::read_dir(fx.m("db"))?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()?;
        names.sort();
        assert_eq!(names, ["000003.log", "CURRENT", "LOCK"]);
        drop((lock1, lock2, wal, dir));

        let report = fx.fs()?.crash()?;
        assert_eq!(report.dropped_bytes, 40 * 4096 + 16);
        let wal_bytes = read(&fx.b("db/000003.log"))?;
        assert_eq!(wal_bytes.len(), 960 * 4096);
        let expected: Vec<u8> = (0..960).flat_map(record).collect();
        assert!(
            wal_bytes == expected,
            "the WAL holds exactly the synced records"
        );
        assert_eq!(read(&fx.m("db/000003.log"))?.len(), 960 * 4096);
        assert_eq!(
            read(&fx.m("db/CURRENT"))?,
            Vec::<u8>::new(),
            "CURRENT renamed in without fsync is empty after the crash"
        );
        assert!(!fx.m("db/000001.dbtmp").exists());
        Ok(())
    }

    const LOCK_PROBE_ENV: &str = "SEALPOST_LAZYFS_LOCK_PROBE";

    /// Helper of `fcntl_locks_conflict_between_processes`, run by it in a child process;
    /// alone (without the variable) it does nothing.
    #[test]
    fn lock_probe_child() -> anyhow::Result<()> {
        let Ok(path) = std::env::var(LOCK_PROBE_ENV) else {
            return Ok(());
        };
        let f = OpenOptions::new().write(true).open(&path)?;
        match rustix::fs::fcntl_lock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::ACCESS) => Ok(()),
            other => {
                bail!("fcntl lock of {path} held by the parent: expected EAGAIN, got {other:?}")
            }
        }
    }

    #[test]
    fn fcntl_locks_conflict_between_processes() -> anyhow::Result<()> {
        let fx = Fixture::new()?;
        let f = create(&fx.m("LOCK"))?;
        rustix::fs::fcntl_lock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive)?;
        let name = module_path!()
            .split_once("::")
            .map(|(_, rest)| format!("{rest}::lock_probe_child"))
            .context("module path")?;
        let exe = std::env::current_exe()?;
        let out = std::process::Command::new(&exe)
            .args([name.as_str(), "--exact", "--nocapture", "--test-threads=1"])
            .env(LOCK_PROBE_ENV, fx.m("LOCK"))
            .output()
            .with_context(|| format!("running {}", exe.display()))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "the child's lock attempt: {}\n{}\n{}",
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// mmap reads (RocksDB's `allow_mmap_reads`) through python3, as this crate forbids
    /// unsafe code.
    #[test]
    fn mmap_reads_see_the_overlay_and_the_crash() -> anyhow::Result<()> {
        let fx = Fixture::new()?;
        let mut f = create(&fx.m("m"))?;
        f.write_all(b"hello ")?;
        f.sync_data()?;
        f.write_all(b"mmap")?;
        let mmap_read = |path: &Path| -> anyhow::Result<String> {
            let out = std::process::Command::new("python3")
                .args([
                    "-c",
                    "import mmap,sys\nf=open(sys.argv[1],'rb')\nm=mmap.mmap(f.fileno(),0,prot=mmap.PROT_READ)\nsys.stdout.write(m[:].decode())",
                ])
                .arg(path)
                .output()
                .context("running python3 (on every machine of this kind) for an mmap read")?;
            if !out.status.success() {
                bail!(
                    "python3 mmap read: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        };
        assert_eq!(mmap_read(&fx.m("m"))?, "hello mmap");
        fx.fs()?.crash()?;
        assert_eq!(mmap_read(&fx.m("m"))?, "hello ");
        Ok(())
    }

    #[test]
    fn concurrent_writers_threads_and_processes() -> anyhow::Result<()> {
        let fx = Fixture::new()?;
        let mut children = Vec::new();
        for p in 0..3 {
            let of = format!("of={}", fx.m(&format!("proc{p}")).display());
            children.push(
                std::process::Command::new("dd")
                    .args([
                        "if=/dev/zero",
                        of.as_str(),
                        "bs=4096",
                        "count=256",
                        "conv=fdatasync",
                    ])
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .context("spawning dd")?,
            );
        }
        let threads: Vec<_> = (0..4u8)
            .map(|t| {
                let path = fx.m(&format!("thread{t}"));
                std::thread::spawn(move || -> anyhow::Result<()> {
                    let mut f = create(&path)?;
                    for i in 0..200u32 {
                        f.write_all(&[t; 4096])?;
                        if (i + 1) % 16 == 0 {
                            f.sync_data()?;
                        }
                        if i % 50 == 0 {
                            let len = std::fs::metadata(&path)?.len();
                            anyhow::ensure!(len == u64::from(i + 1) * 4096, "size {len} at {i}");
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        for t in threads {
            t.join()
                .map_err(|_| anyhow::anyhow!("writer thread panicked"))??;
        }
        for mut c in children {
            anyhow::ensure!(c.wait()?.success(), "dd failed");
        }
        fx.fs()?.crash()?;
        for t in 0..4u8 {
            let data = read(&fx.b(&format!("thread{t}")))?;
            assert_eq!(
                data.len(),
                192 * 4096,
                "thread {t}: synced through record 192"
            );
            assert!(data.iter().all(|&b| b == t));
        }
        for p in 0..3 {
            assert_eq!(
                std::fs::metadata(fx.b(&format!("proc{p}")))?.len(),
                1024 * 1024
            );
        }
        Ok(())
    }

    #[test]
    fn unmount_leaves_nothing_mounted_even_when_busy() -> anyhow::Result<()> {
        let mut fx = Fixture::new()?;
        let mut f = create(&fx.m("busy"))?;
        f.write_all(b"kept")?;
        f.sync_data()?;
        f.write_all(b" lost")?;
        let mountpoint = fx.mnt.path().canonicalize()?;
        assert!(mounted_at(&mountpoint)?);
        let fs = fx.fs.take().context("mounted")?;
        // `f` is still open: the plain unmount is refused, the forced one must go through.
        fs.unmount()?;
        assert!(
            !mounted_at(&mountpoint)?,
            "{} is still in /proc/mounts",
            mountpoint.display()
        );
        assert!(
            f.write_all(b"more").is_err(),
            "the aborted mount refuses I/O"
        );
        drop(f);
        assert_eq!(read(&fx.b("busy"))?, b"kept", "unmount flushes nothing");

        // And a plain unmount of an idle mount.
        let fx2 = Fixture::new()?;
        let mountpoint = fx2.mnt.path().canonicalize()?;
        drop(fx2);
        assert!(!mounted_at(&mountpoint)?);
        Ok(())
    }

    #[test]
    fn mount_refuses_a_non_empty_mount_point() -> anyhow::Result<()> {
        let backing = tempfile::tempdir()?;
        let mnt = tempfile::tempdir()?;
        std::fs::write(mnt.path().join("x"), b"x")?;
        let err = LazyFs::mount(backing.path(), mnt.path())
            .err()
            .context("must fail")?;
        assert!(format!("{err:#}").contains("not empty"), "{err:#}");
        Ok(())
    }

    /// 4 KiB appends with an fdatasync every 64 writes, directly on the backing folder and
    /// through the mount; prints both (run with --nocapture to see them).
    #[test]
    fn throughput_of_wal_appends() -> anyhow::Result<()> {
        const BYTES: u64 = 32 * 1024 * 1024;
        fn run(path: &Path) -> anyhow::Result<f64> {
            let mut f = create(path)?;
            let block = [0x5au8; 4096];
            let start = Instant::now();
            for i in 0..BYTES / 4096 {
                f.write_all(&block)?;
                if (i + 1) % 64 == 0 {
                    f.sync_data()?;
                }
            }
            f.sync_data()?;
            Ok(BYTES as f64 / 1e6 / start.elapsed().as_secs_f64())
        }
        let fx = Fixture::new()?;
        let direct = run(&fx.b("direct.log"))?;
        let mounted = run(&fx.m("mounted.log"))?;
        println!(
            "4 KiB appends, fdatasync every 64: direct {direct:.1} MB/s, through LazyFs {mounted:.1} MB/s"
        );
        assert!(
            mounted > 2.0,
            "LazyFs is too slow for 3 nodes: {mounted:.1} MB/s"
        );
        Ok(())
    }
}
