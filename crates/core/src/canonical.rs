//! The frozen canonical encoding that the hash chain covers.
//!
//! Storage uses a codec (bincode today) that may change; the chain must not. This writer
//! produces a simple, self-evident byte layout: big-endian fixed-width integers,
//! length-prefixed byte strings and counted lists. Each event variant spells out its fields
//! in a fixed order in `event.rs`, so a new Rust field cannot silently change what was
//! hashed. An exported event carries these bytes so that a verifier checks exactly what was
//! hashed.

/// Builds a canonical byte string field by field.
#[derive(Default)]
pub struct Canon {
    buf: Vec<u8>,
}

/// Bytes a canonical record usually fits in, reserved up front so building one does not
/// grow its buffer field by field.
pub const CANON_INITIAL_BYTES: usize = 512;

impl Canon {
    pub fn new() -> Self {
        Self {
            buf: Vec::with_capacity(CANON_INITIAL_BYTES),
        }
    }

    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// A byte string: u32 length then the bytes.
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        let len = u32::try_from(v.len()).expect("canonical fields are bounded far below 4 GiB");
        self.buf.extend_from_slice(&len.to_be_bytes());
        self.buf.extend_from_slice(v);
        self
    }

    pub fn str(&mut self, v: &str) -> &mut Self {
        self.bytes(v.as_bytes())
    }

    /// Fixed-size bytes written as they are (hashes, keys).
    pub fn fixed(&mut self, v: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(v);
        self
    }

    /// An optional u64: a presence byte then the value.
    pub fn opt_u64(&mut self, v: Option<u64>) -> &mut Self {
        match v {
            None => self.u8(0),
            Some(x) => self.u8(1).u64(x),
        }
    }

    /// A count of list items; the caller writes the items.
    pub fn count(&mut self, n: usize) -> &mut Self {
        let n = u32::try_from(n).expect("canonical lists are bounded far below 4 Gi items");
        self.buf.extend_from_slice(&n.to_be_bytes());
        self
    }

    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout is frozen: this exact byte string must never change.
    #[test]
    fn layout_is_frozen() {
        let mut c = Canon::new();
        c.u8(1)
            .u16(2)
            .u64(3)
            .str("ab")
            .opt_u64(None)
            .opt_u64(Some(4))
            .count(2);
        assert_eq!(
            c.finish(),
            vec![
                1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 2, b'a', b'b', 0, 1, 0, 0, 0, 0, 0, 0, 0,
                4, 0, 0, 0, 2
            ]
        );
    }
}
