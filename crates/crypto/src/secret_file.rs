//! The one file format for 32-byte secrets given to every node of a provider (the
//! key-encryption key, the receipt-signing key): a header line naming the kind, then the
//! secret as 64 hex characters; written readable by the owner only (mode 0600), read back
//! with every deviation named. The secret lives only in `Zeroizing` buffers.

use std::path::Path;

use zeroize::Zeroizing;

use crate::{Error, Result};

/// Writes `header\n<64 hex characters>\n`, mode 0600.
pub(crate) fn save(path: &Path, header: &str, secret: &[u8; 32]) -> Result<()> {
    let mut text = Zeroizing::new(String::with_capacity(header.len() + 66));
    text.push_str(header);
    text.push('\n');
    text.push_str(&Zeroizing::new(hex::encode(secret)));
    text.push('\n');
    crate::tls::write_file(path, &text, true)
}

/// Reads a file written by [`save`] with this `header`; `what` names the kind of file in
/// errors ("KEK", "provider key").
pub(crate) fn load(path: &Path, header: &str, what: &str) -> Result<Zeroizing<[u8; 32]>> {
    let bad = |problem: &str| Error::BadFile {
        path: path.to_path_buf(),
        problem: problem.to_string(),
    };
    let raw = Zeroizing::new(std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?);
    let text = std::str::from_utf8(&raw)
        .map_err(|_| bad(&format!("a {what} file is text, this is not UTF-8")))?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    if lines.next() != Some(header) {
        return Err(bad(&format!(
            "the first line is not {header:?}: not a sealpost {what} file"
        )));
    }
    let key = parse_key_line(lines.next().unwrap_or("").trim(), path)?;
    if lines.any(|l| !l.trim().is_empty()) {
        return Err(bad("unexpected text after the key line"));
    }
    Ok(key)
}

/// A 32-byte secret written as 64 hex characters; `path` names its source in errors.
pub(crate) fn parse_key_line(key_line: &str, path: &Path) -> Result<Zeroizing<[u8; 32]>> {
    let bad = |problem: &str| Error::BadFile {
        path: path.to_path_buf(),
        problem: problem.to_string(),
    };
    if key_line.len() != 64 {
        return Err(bad(&format!(
            "the key holds {} characters, expected 64 hex characters (32 bytes)",
            key_line.len()
        )));
    }
    let mut key = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(key_line, key.as_mut()).map_err(|_| bad("the key is not hexadecimal"))?;
    if *key == [0u8; 32] {
        return Err(bad("the key is all zeroes"));
    }
    Ok(key)
}
