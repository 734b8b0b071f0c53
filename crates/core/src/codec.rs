//! The storage codec: every stored record is one version byte followed by its bincode
//! encoding. bincode is not self-describing, so the version byte is what lets a later
//! build read (or refuse, clearly) what an earlier one wrote. Callers use only these two
//! functions, so the codec can be swapped without touching them.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Version byte written in front of every record this build stores.
pub const RECORD_VERSION_CURRENT: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("empty record")]
    Empty,
    #[error(
        "record version {found} is newer than this build understands ({RECORD_VERSION_CURRENT})"
    )]
    UnknownVersion { found: u8 },
    #[error("record does not decode: {0}")]
    Malformed(String),
    #[error("record has {0} trailing bytes")]
    Trailing(usize),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard()
        .with_big_endian()
        .with_fixed_int_encoding()
        .with_limit::<{ 256 * 1024 * 1024 }>()
}

/// Encodes a record with the current version byte.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(ENCODE_START_BYTES);
    out.push(RECORD_VERSION_CURRENT);
    bincode::serde::encode_into_std_write(value, &mut out, config())
        .expect("encoding into a Vec cannot fail for sealpost's own types");
    out
}

/// Room an encoding starts with, in bytes: most records (directory entries, message
/// status) fit, so encoding one does not grow the buffer step by step from one byte (that
/// regrowth was a tenth of a view rebuild's folding thread). Larger records grow as before.
const ENCODE_START_BYTES: usize = 256;

/// The length [`encode`] would produce, computed without allocating the bytes.
pub fn encoded_len<T: Serialize>(value: &T) -> usize {
    let mut size = bincode::enc::write::SizeWriter::default();
    bincode::serde::encode_into_writer(value, &mut size, config())
        .expect("sizing sealpost's own types cannot fail");
    1 + size.bytes_written
}

/// Decodes a record, checking its version byte and that nothing trails it.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if version != RECORD_VERSION_CURRENT {
        return Err(CodecError::UnknownVersion { found: version });
    }
    let (value, used) = bincode::serde::decode_from_slice(body, config())
        .map_err(|e| CodecError::Malformed(e.to_string()))?;
    if used != body.len() {
        return Err(CodecError::Trailing(body.len() - used));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let v = (7u64, "x".to_string(), vec![1u8, 2]);
        let bytes = encode(&v);
        assert_eq!(bytes[0], RECORD_VERSION_CURRENT);
        assert_eq!(encoded_len(&v), bytes.len());
        assert_eq!(decode::<(u64, String, Vec<u8>)>(&bytes), Ok(v));
        assert_eq!(decode::<u64>(&[]), Err(CodecError::Empty));
        assert_eq!(
            decode::<u64>(&[9, 0]),
            Err(CodecError::UnknownVersion { found: 9 })
        );
        let mut long = encode(&1u64);
        long.push(0);
        assert_eq!(decode::<u64>(&long), Err(CodecError::Trailing(1)));
        assert!(matches!(
            decode::<u64>(&[1, 0]),
            Err(CodecError::Malformed(_))
        ));
    }
}
