//! Snapshots as folders of files: building a RocksDB checkpoint of the state machine,
//! keeping the newest ones under `sm/snapshots/<id>/`, receiving a snapshot into
//! `sm/incoming/`, and copying a checkpoint into a new live database folder.
//!
//! SST files are immutable, so copies hard-link them; every other file (MANIFEST, WAL,
//! OPTIONS) is copied, because a database opened on it would otherwise change the
//! snapshot's bytes underneath it.

use std::io::Write;
use std::path::{Path, PathBuf};

use rocksdb::checkpoint::Checkpoint;
use sealpost_core::codec;

use crate::error::{Error, Result};
use crate::rocks::{self, rocks_err};
use crate::state_machine::{SM_CFS, Shared, SmDb, now_nanos};
use crate::types::{Snapshot, SnapshotFiles, SnapshotMeta};

/// Name of the metadata file inside a snapshot folder.
pub const SNAPSHOT_META_FILE: &str = "SEALPOST_SNAPSHOT_META";
/// Snapshots kept on disk; older ones are deleted after a new one is built or installed.
pub const SNAPSHOTS_KEPT_MAX: usize = 2;
/// Files one snapshot may contain (a RocksDB checkpoint holds a handful per SST level).
pub const SNAPSHOT_FILES_MAX: usize = 100_000;
/// Longest snapshot id or file name accepted from a peer, in bytes.
pub const SNAPSHOT_NAME_BYTES_MAX: usize = 128;

fn snapshots_dir(root: &Path) -> PathBuf {
    root.join("snapshots")
}

/// Checks that a snapshot id or file name from a peer is a plain file name.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= SNAPSHOT_NAME_BYTES_MAX
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "{name:?} is not a plain file name of at most {SNAPSHOT_NAME_BYTES_MAX} bytes"
        )))
    }
}

/// Writes a small file atomically: temp file, fsync, rename, fsync of the folder.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp).map_err(Error::io(&tmp))?;
        f.write_all(bytes).map_err(Error::io(&tmp))?;
        f.sync_all().map_err(Error::io(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(Error::io(path))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io(dir))
}

/// The regular files of a snapshot folder with their sizes, sorted by name.
pub fn list_files(dir: &Path) -> Result<Vec<(String, u64)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(Error::io(dir))? {
        let e = e.map_err(Error::io(dir))?;
        let md = e.metadata().map_err(Error::io(e.path()))?;
        if md.is_file() {
            out.push((e.file_name().to_string_lossy().into_owned(), md.len()));
        }
        if out.len() > SNAPSHOT_FILES_MAX {
            return Err(Error::Invalid(format!(
                "snapshot at {} has more than {SNAPSHOT_FILES_MAX} files",
                dir.display()
            )));
        }
    }
    out.sort();
    Ok(out)
}

/// Copies a checkpoint folder: SST files hard-linked (copied across devices), others copied.
pub(crate) fn copy_checkpoint(src: &Path, dst: &Path) -> Result<()> {
    if dst.exists() {
        std::fs::remove_dir_all(dst).map_err(Error::io(dst))?;
    }
    std::fs::create_dir_all(dst).map_err(Error::io(dst))?;
    for (name, _) in list_files(src)? {
        if name == SNAPSHOT_META_FILE {
            continue;
        }
        let from = src.join(&name);
        let to = dst.join(&name);
        let linked = name.ends_with(".sst") && std::fs::hard_link(&from, &to).is_ok();
        if !linked {
            std::fs::copy(&from, &to).map_err(Error::io(&from))?;
        }
    }
    sync_dir(dst)
}

/// A fresh folder for a snapshot being received.
pub(crate) fn incoming_dir(root: &Path) -> Result<PathBuf> {
    let dir = root.join("incoming").join(format!("in-{}", now_nanos()));
    std::fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
    Ok(dir)
}

pub(crate) fn read_meta(dir: &Path) -> Result<SnapshotMeta> {
    let p = dir.join(SNAPSHOT_META_FILE);
    let bytes = std::fs::read(&p).map_err(Error::io(&p))?;
    codec::decode(&bytes).map_err(|e| Error::Codec {
        what: p.display().to_string(),
        source: e,
    })
}

/// The newest complete snapshot on disk, if any.
pub(crate) fn current(root: &Path) -> Result<Option<Snapshot>> {
    let dir = snapshots_dir(root);
    if !dir.exists() {
        return Ok(None);
    }
    let mut best: Option<(SnapshotMeta, PathBuf)> = None;
    for e in std::fs::read_dir(&dir).map_err(Error::io(&dir))? {
        let path = e.map_err(Error::io(&dir))?.path();
        // Folders without metadata are incomplete builds; skip them.
        let Ok(meta) = read_meta(&path) else { continue };
        if best
            .as_ref()
            .is_none_or(|(b, _)| meta.last_log_id > b.last_log_id)
        {
            best = Some((meta, path));
        }
    }
    Ok(best.map(|(meta, dir)| Snapshot {
        meta,
        snapshot: Box::new(SnapshotFiles { dir }),
    }))
}

fn prune(root: &Path) -> Result<()> {
    let dir = snapshots_dir(root);
    let mut all: Vec<(SnapshotMeta, PathBuf)> = Vec::new();
    for e in std::fs::read_dir(&dir).map_err(Error::io(&dir))? {
        let path = e.map_err(Error::io(&dir))?.path();
        match read_meta(&path) {
            Ok(m) => all.push((m, path)),
            Err(_) => {
                // An incomplete build left by a crash.
                let _ = std::fs::remove_dir_all(&path);
            }
        }
    }
    all.sort_by_key(|(meta, _)| std::cmp::Reverse(meta.last_log_id));
    for (_, path) in all.into_iter().skip(SNAPSHOTS_KEPT_MAX) {
        let _ = std::fs::remove_dir_all(&path);
    }
    Ok(())
}

/// Builds a snapshot: a checkpoint of the live database, its metadata read back from the
/// checkpoint itself so the two always agree.
pub(crate) fn build(shared: &Shared) -> Result<Snapshot> {
    let root = shared.root();
    let dir = snapshots_dir(root);
    std::fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
    let tmp = dir.join(format!("building-{}", now_nanos()));
    {
        let live = shared.live();
        let cp = Checkpoint::new(&live.db).map_err(rocks_err(&live.path))?;
        cp.create_checkpoint(&tmp).map_err(rocks_err(&tmp))?;
    }
    let (last_log_id, last_membership) = {
        let ro = rocks::open_read_only(&tmp, SM_CFS)?;
        let db = SmDb::new(ro, tmp.clone());
        db.applied()?
    };
    let snapshot_id = match &last_log_id {
        Some(l) => format!(
            "{}-{}-{}-{}",
            l.leader_id.term,
            l.leader_id.node_id,
            l.index,
            now_nanos()
        ),
        None => format!("0-0-0-{}", now_nanos()),
    };
    let meta = SnapshotMeta {
        last_log_id,
        last_membership,
        snapshot_id: snapshot_id.clone(),
    };
    write_atomic(&tmp.join(SNAPSHOT_META_FILE), &codec::encode(&meta))?;
    let final_dir = dir.join(&snapshot_id);
    std::fs::rename(&tmp, &final_dir).map_err(Error::io(&final_dir))?;
    sync_dir(&dir)?;
    prune(root)?;
    tracing::info!(snapshot = %snapshot_id, last_log_id = ?meta.last_log_id, "built snapshot");
    Ok(Snapshot {
        meta,
        snapshot: Box::new(SnapshotFiles { dir: final_dir }),
    })
}

/// Makes a received or handed-over snapshot this node's current snapshot (so it can serve
/// it to others) and returns its folder.
pub(crate) fn keep(root: &Path, meta: &SnapshotMeta, files: &SnapshotFiles) -> Result<PathBuf> {
    check_name(&meta.snapshot_id)?;
    let dir = snapshots_dir(root);
    std::fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
    let target = dir.join(&meta.snapshot_id);
    if files.dir == target {
        return Ok(target);
    }
    if files.dir.starts_with(root.join("incoming")) {
        if target.exists() {
            std::fs::remove_dir_all(&target).map_err(Error::io(&target))?;
        }
        std::fs::rename(&files.dir, &target).map_err(Error::io(&target))?;
    } else {
        copy_checkpoint(&files.dir, &target)?;
    }
    write_atomic(&target.join(SNAPSHOT_META_FILE), &codec::encode(meta))?;
    sync_dir(&dir)?;
    prune(root)?;
    Ok(target)
}

/// Deletes state-machine folders a crash or an earlier install left behind.
pub(crate) fn collect_garbage(root: &Path, active: &str) {
    let Ok(rd) = std::fs::read_dir(root) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("db-") && name != active {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    let _ = std::fs::remove_dir_all(root.join("incoming"));
    // Backups a crash interrupted while they were streamed.
    let _ = std::fs::remove_dir_all(backups_dir(root));
    if snapshots_dir(root).exists() {
        let _ = prune(root);
    }
}

/// A copy of the newest snapshot taken for an online backup (hard links: nearly free), so
/// pruning snapshots while it is streamed does not touch it. Deleted when dropped.
#[derive(Debug)]
pub struct BackupFiles {
    /// The folder to stream: the checkpoint's files and its metadata file.
    pub dir: PathBuf,
    pub meta: SnapshotMeta,
    /// File names and sizes, in name order.
    pub files: Vec<(String, u64)>,
    /// Events in the backed-up event store, and its chain head.
    pub event_count: u64,
    pub chain_head: sealpost_core::Hash,
}

impl Drop for BackupFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Folder of the backups being streamed from the state machine at `root`.
pub(crate) fn backups_dir(root: &Path) -> PathBuf {
    root.join("backups")
}

/// Takes the newest snapshot at `root` for a backup (see [`BackupFiles`]).
pub(crate) fn take_backup(root: &Path) -> Result<BackupFiles> {
    let Some(snap) = current(root)? else {
        return Err(Error::Invalid(
            "this node holds no snapshot to back up yet".into(),
        ));
    };
    let dir = backups_dir(root).join(format!("backup-{}", now_nanos()));
    copy_checkpoint(&snap.snapshot.dir, &dir)?;
    write_atomic(&dir.join(SNAPSHOT_META_FILE), &codec::encode(&snap.meta))?;
    let chain = {
        let ro = rocks::open_read_only(&dir, SM_CFS)?;
        let db = SmDb::new(ro, dir.clone());
        db.chain()?
    };
    Ok(BackupFiles {
        files: list_files(&dir)?,
        dir,
        meta: snap.meta,
        event_count: chain.next_seq.saturating_sub(1),
        chain_head: chain.head,
    })
}
