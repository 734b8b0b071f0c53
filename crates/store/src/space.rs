//! Free space on the file systems a node's stores live on: what the node's storage floor
//! (new sends refused below it) and its metrics read, so a filling disk stops intake before
//! RocksDB runs out of room.

use std::path::Path;

use crate::{Error, Result};

/// Bytes an unprivileged process may still write on the file system holding `path`
/// (`statvfs`: available blocks times the fragment size).
pub fn free_bytes(path: &Path) -> Result<u64> {
    let st = rustix::fs::statvfs(path).map_err(|e| Error::io(path)(e.into()))?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// The least free space over `paths` (the file system that fills first); `None` when
/// `paths` is empty.
pub fn least_free_bytes<'a>(paths: impl IntoIterator<Item = &'a Path>) -> Result<Option<u64>> {
    let mut least: Option<u64> = None;
    for path in paths {
        let free = free_bytes(path)?;
        least = Some(least.map_or(free, |l| l.min(free)));
    }
    Ok(least)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real folder reports some free space, no more than its file system's size; a
    /// missing folder is an error naming it; the least of several is the smaller reading.
    #[test]
    fn free_space_is_read_and_a_missing_folder_is_named() {
        let dir = tempfile::tempdir().expect("tmp");
        let free = free_bytes(dir.path()).expect("statvfs");
        let st = rustix::fs::statvfs(dir.path()).expect("statvfs");
        assert!(free > 0 && free <= st.f_blocks * st.f_frsize, "{free}");
        let missing = dir.path().join("missing");
        let e = free_bytes(&missing).expect_err("missing");
        assert!(e.to_string().contains("missing"), "{e}");
        // Free space moves while other processes write, so each folder is read before and
        // after: the least must lie within the smaller folder's two readings' bounds.
        let read = || {
            (
                free_bytes(dir.path()).expect("tmp"),
                free_bytes(Path::new("/")).expect("root"),
            )
        };
        let (a1, b1) = read();
        let least = least_free_bytes([dir.path(), Path::new("/")])
            .expect("both")
            .expect("some");
        let (a2, b2) = read();
        let upper = a1.max(a2).min(b1.max(b2));
        let lower = a1.min(a2).min(b1.min(b2));
        assert!(
            (lower..=upper).contains(&least),
            "{least} outside {lower}..={upper}"
        );
        assert!(least_free_bytes([dir.path(), missing.as_path()]).is_err());
        assert_eq!(least_free_bytes([]).expect("none"), None);
    }
}
