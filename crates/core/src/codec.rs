//! The storage codec: every stored record is one version byte followed by its bincode
//! encoding. bincode is not self-describing, so the version byte is what lets a later
//! build read (or refuse, clearly) what an earlier one wrote. Callers use only `encode`
//! and `decode` (and `byte_string` on their byte fields), so the codec can be swapped
//! without touching them.

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

/// Encodes a record with the current version byte, into a buffer of exactly its size.
///
/// The size comes from a first pass that only counts bytes. Growing the buffer instead
/// copied a large record (a Raft entry carrying a hundred envelopes) several times over as
/// it doubled, and each doubling beyond a few hundred kilobytes touched fresh pages the
/// kernel had to zero first: at 16 KiB payloads that regrowth was a tenth of the copying
/// in the benchmark's profile (BENCHMARKS.md, session 29).
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(encoded_len(value));
    out.push(RECORD_VERSION_CURRENT);
    bincode::serde::encode_into_std_write(value, &mut out, config())
        .expect("encoding into a Vec cannot fail for sealpost's own types");
    out
}

/// The length [`encode`] would produce, computed without allocating the bytes.
pub fn encoded_len<T: Serialize>(value: &T) -> usize {
    let mut size = bincode::enc::write::SizeWriter::default();
    bincode::serde::encode_into_writer(value, &mut size, config())
        .expect("sizing sealpost's own types cannot fail");
    1 + size.bytes_written
}

/// Decodes a record, checking its version byte and that nothing trails it.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let body = body(bytes)?;
    let (value, used) = bincode::serde::decode_from_slice(body, config())
        .map_err(|e| CodecError::Malformed(e.to_string()))?;
    if used != body.len() {
        return Err(CodecError::Trailing(body.len() - used));
    }
    Ok(value)
}

/// The body of a stored record after its version byte, which must be the current one.
pub(crate) fn body(bytes: &[u8]) -> Result<&[u8], CodecError> {
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if version != RECORD_VERSION_CURRENT {
        return Err(CodecError::UnknownVersion { found: version });
    }
    Ok(body)
}

/// Reads the leading fields of a record body by hand, in the layout [`config`] gives them
/// (integers fixed-width big-endian, a string as its u64 length and its bytes, a byte
/// array as its bytes), and the rest through serde. bincode's serde path decodes a byte
/// array one element at a time; a record type whose arrays sit in fixed places can read
/// them here in one copy (see `EventRecord::decode_stored`). Its tests hold it to the
/// serde path's bytes.
pub(crate) struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    pub(crate) fn new(body: &'a [u8]) -> Self {
        Self { rest: body }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], CodecError> {
        if self.rest.len() < n {
            return Err(CodecError::Malformed(format!(
                "the record ends inside its {what}"
            )));
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }

    pub(crate) fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], CodecError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    pub(crate) fn u64(&mut self, what: &str) -> Result<u64, CodecError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    pub(crate) fn string(&mut self, what: &str) -> Result<String, CodecError> {
        // A length beyond the address space is beyond the record's end too.
        let len = usize::try_from(self.u64(what)?).unwrap_or(usize::MAX);
        let bytes = self.take(len, what)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| CodecError::Malformed(format!("its {what} is not UTF-8")))
    }

    /// The next value, through serde.
    pub(crate) fn value<T: DeserializeOwned>(&mut self) -> Result<T, CodecError> {
        let (value, used) = bincode::serde::decode_from_slice(self.rest, config())
            .map_err(|e| CodecError::Malformed(e.to_string()))?;
        self.rest = &self.rest[used..];
        Ok(value)
    }

    /// Ends the reading: nothing may trail the record.
    pub(crate) fn finish(self) -> Result<(), CodecError> {
        match self.rest.len() {
            0 => Ok(()),
            n => Err(CodecError::Trailing(n)),
        }
    }
}

/// Serde glue for a `Vec<u8>` field (`#[serde(with = "codec::byte_string")]`): written as
/// one byte string, exactly as `serde_bytes` writes it, so stored records and messages on
/// the wire are unchanged; read by borrowing the bytes from the record and copying them
/// once. bincode's owned byte-buffer path (which `serde_bytes` takes) zero-fills a new
/// buffer before copying into it, a second pass over every envelope decoded.
pub mod byte_string {
    use serde::de::{Deserializer, Error, SeqAccess, Visitor};
    use serde::ser::Serializer;

    /// Elements a sequence-shaped byte string (from a self-describing format such as JSON)
    /// may reserve room for up front; longer ones still decode, growing as they go.
    const SEQ_RESERVE_BYTES_MAX: usize = 64 * 1024;

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_bytes(ByteString)
    }

    struct ByteString;

    impl<'de> Visitor<'de> for ByteString {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a byte string")
        }

        fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }

        fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }

        fn visit_str<E: Error>(self, v: &str) -> Result<Vec<u8>, E> {
            Ok(v.as_bytes().to_vec())
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut out =
                Vec::with_capacity(seq.size_hint().unwrap_or(0).min(SEQ_RESERVE_BYTES_MAX));
            while let Some(b) = seq.next_element::<u8>()? {
                out.push(b);
            }
            Ok(out)
        }
    }
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

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Ours {
        #[serde(with = "super::byte_string")]
        b: Vec<u8>,
        n: u16,
    }

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Theirs {
        #[serde(with = "serde_bytes")]
        b: Vec<u8>,
        n: u16,
    }

    /// The byte-string glue writes what `serde_bytes` wrote, so records stored by earlier
    /// builds read back unchanged, and the other way round.
    #[test]
    fn byte_strings_keep_serde_bytes_layout() {
        for len in [0usize, 1, 300, 70_000] {
            let b: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let ours = Ours { b: b.clone(), n: 9 };
            let theirs = Theirs { b, n: 9 };
            let bytes = encode(&ours);
            assert_eq!(bytes, encode(&theirs), "{len} bytes");
            assert_eq!(decode::<Ours>(&encode(&theirs)).as_ref(), Ok(&ours));
            assert_eq!(decode::<Theirs>(&bytes), Ok(theirs));
            let json = serde_json::to_string(&ours).expect("json");
            assert_eq!(
                serde_json::from_str::<Ours>(&json).expect("json back"),
                ours
            );
        }
        // A length running past the record's end is an error, not a huge allocation.
        let mut cut = encode(&Ours {
            b: vec![1; 10],
            n: 1,
        });
        cut.truncate(cut.len() - 5);
        assert!(matches!(
            decode::<Ours>(&cut),
            Err(CodecError::Malformed(_))
        ));
    }
}
