//! Online backups on the client side: `Admin.Backup` streamed into a folder, each file
//! checked against the size and SHA-256 the node sent, and a manifest (`BACKUP.toml`)
//! written last, so a folder with a manifest is a complete backup; and the check a restore
//! runs first (every file present, of its size and digest, and nothing else).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use sealpost_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The manifest's file name; written last.
pub const BACKUP_MANIFEST_FILE: &str = "BACKUP.toml";
/// Files one backup may hold, at most.
pub const BACKUP_FILES_MAX: usize = 100_000;
/// Longest file name a backup may hold, in bytes.
const BACKUP_NAME_BYTES_MAX: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the backup stream failed: {0}")]
    Stream(#[from] tonic::Status),
    #[error("the backup is not valid: {0}")]
    Invalid(String),
}

type Result<T> = std::result::Result<T, BackupError>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What a backup holds, as its manifest records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupManifest {
    pub provider: String,
    pub snapshot_id: String,
    pub last_log_index: u64,
    pub last_log_term: u64,
    pub event_count: u64,
    /// Hex SHA-256 chain head of the event store.
    pub chain_head: String,
    pub taken_ms: u64,
    /// The node that took it.
    pub node: u64,
    /// File name → (bytes, hex SHA-256).
    pub files: BTreeMap<String, (u64, String)>,
}

fn plain_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= BACKUP_NAME_BYTES_MAX
        && name != BACKUP_MANIFEST_FILE
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && name != "."
        && name != "..";
    if ok {
        Ok(())
    } else {
        Err(BackupError::Invalid(format!(
            "{name:?} is not a plain file name of at most {BACKUP_NAME_BYTES_MAX} bytes"
        )))
    }
}

/// Writes the stream of an `Admin.Backup` call into `out` (created; it must not exist or
/// be empty) and returns the manifest it wrote.
pub async fn write_backup(
    mut stream: tonic::Streaming<pb::BackupChunk>,
    out: &Path,
) -> Result<BackupManifest> {
    if out.exists() && std::fs::read_dir(out).map_err(io(out))?.next().is_some() {
        return Err(BackupError::Invalid(format!(
            "{} is not empty: back up into a new folder",
            out.display()
        )));
    }
    std::fs::create_dir_all(out).map_err(io(out))?;
    let header = match stream.message().await? {
        Some(pb::BackupChunk {
            header: Some(h), ..
        }) => h,
        _ => {
            return Err(BackupError::Invalid(
                "the stream did not start with a header".into(),
            ));
        }
    };
    if header.files.len() > BACKUP_FILES_MAX {
        return Err(BackupError::Invalid(format!(
            "{} files, more than {BACKUP_FILES_MAX}",
            header.files.len()
        )));
    }
    let expected: BTreeMap<String, u64> = header
        .files
        .iter()
        .map(|f| plain_name(&f.name).map(|()| (f.name.clone(), f.bytes)))
        .collect::<Result<_>>()?;
    let mut done: BTreeMap<String, (u64, String)> = BTreeMap::new();
    // The file being written: name, handle, bytes so far, running digest.
    let mut current: Option<(String, std::fs::File, u64, Sha256)> = None;
    while let Some(chunk) = stream.message().await? {
        let name = chunk.file.clone();
        let Some(&size) = expected.get(&name) else {
            return Err(BackupError::Invalid(format!(
                "the stream sent an unlisted file {name:?}"
            )));
        };
        if current.as_ref().is_none_or(|(n, ..)| n != &name) {
            if current.is_some() || done.contains_key(&name) {
                return Err(BackupError::Invalid(format!(
                    "file {name:?} began before the previous one ended, or twice"
                )));
            }
            let path = out.join(&name);
            let f = std::fs::File::create(&path).map_err(io(&path))?;
            current = Some((name.clone(), f, 0, Sha256::new()));
        }
        let Some((_, f, written, digest)) = current.as_mut() else {
            continue;
        };
        if chunk.offset != *written {
            return Err(BackupError::Invalid(format!(
                "file {name:?}: a chunk at offset {} after {} bytes",
                chunk.offset, written
            )));
        }
        if *written + chunk.data.len() as u64 > size {
            return Err(BackupError::Invalid(format!(
                "file {name:?} is longer than the {size} bytes announced"
            )));
        }
        let path = out.join(&name);
        f.write_all(&chunk.data).map_err(io(&path))?;
        digest.update(&chunk.data);
        *written += chunk.data.len() as u64;
        if !chunk.sha256.is_empty() {
            let Some((name, f, written, digest)) = current.take() else {
                continue;
            };
            let got = hex::encode(digest.finalize());
            if got != chunk.sha256 || written != size {
                return Err(BackupError::Invalid(format!(
                    "file {name:?}: {written} of {size} bytes, SHA-256 {got} where the node sent {}",
                    chunk.sha256
                )));
            }
            f.sync_all().map_err(io(&path))?;
            done.insert(name, (written, got));
        }
    }
    if current.is_some() || done.len() != expected.len() {
        return Err(BackupError::Invalid(format!(
            "the stream ended after {} of {} files",
            done.len(),
            expected.len()
        )));
    }
    let manifest = BackupManifest {
        provider: header.provider,
        snapshot_id: header.snapshot_id,
        last_log_index: header.last_log_index,
        last_log_term: header.last_log_term,
        event_count: header.event_count,
        chain_head: header.chain_head,
        taken_ms: header.taken_ms,
        node: header.node,
        files: done,
    };
    let text = toml::to_string(&manifest)
        .map_err(|e| BackupError::Invalid(format!("the manifest does not encode: {e}")))?;
    let path = out.join(BACKUP_MANIFEST_FILE);
    let mut f = std::fs::File::create(&path).map_err(io(&path))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io(&path))?;
    std::fs::File::open(out)
        .and_then(|d| d.sync_all())
        .map_err(io(out))?;
    Ok(manifest)
}

/// Reads the manifest of the backup in `dir` and checks every file against it: present,
/// of its size and SHA-256, and no file the manifest does not list.
pub fn verify_backup(dir: &Path) -> Result<BackupManifest> {
    let path = dir.join(BACKUP_MANIFEST_FILE);
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    let manifest: BackupManifest = toml::from_str(&text)
        .map_err(|e| BackupError::Invalid(format!("{} does not parse: {e}", path.display())))?;
    let mut seen = 0usize;
    for e in std::fs::read_dir(dir).map_err(io(dir))? {
        let name = e
            .map_err(io(dir))?
            .file_name()
            .to_string_lossy()
            .into_owned();
        if name == BACKUP_MANIFEST_FILE {
            continue;
        }
        let Some((size, sha)) = manifest.files.get(&name) else {
            return Err(BackupError::Invalid(format!(
                "{name:?} is in the folder but not in the manifest"
            )));
        };
        let p = dir.join(&name);
        let bytes = std::fs::read(&p).map_err(io(&p))?;
        let got = hex::encode(Sha256::digest(&bytes));
        if bytes.len() as u64 != *size || &got != sha {
            return Err(BackupError::Invalid(format!(
                "{name}: {} bytes with SHA-256 {got}, the manifest says {size} bytes with {sha}",
                bytes.len()
            )));
        }
        seen += 1;
    }
    if seen != manifest.files.len() {
        return Err(BackupError::Invalid(format!(
            "{} of the {} files the manifest lists are missing",
            manifest.files.len() - seen,
            manifest.files.len()
        )));
    }
    Ok(manifest)
}
