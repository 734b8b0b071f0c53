//! View writes held back and handed to RocksDB sorted by column family and key, the last
//! write of each key only: what the state machine's apply and the view rebuild both use
//! for the view column families (events, their Merkle tree and the Raft metadata are
//! written directly).

use rocksdb::{DB, WriteBatch};

use crate::rebuild::view_cfs;
use crate::rocks;
use crate::state_machine::ViewSink;

/// Column family names a [`SortedWrites`] remembers by address (the fold uses fewer).
const SORTED_WRITES_SEEN_NAMES_MAX: usize = 32;

/// Bytes a write batch adds to each write's key and value: a tag, a column family id and
/// two lengths.
const WRITE_BATCH_OVERHEAD_BYTES: usize = 16;

/// Writes to the view column families, held until a batch of them is complete and then
/// handed to RocksDB sorted by column family and key. The memtable's skip list inserts a
/// run of ascending keys starting from where the previous insert ended, which costs far
/// less than the same keys in the fold's order (scattered over the whole key range: that
/// search was a fifth of a 10M-event rebuild). Writes are kept apart by column family as
/// they come, so only keys of one family are compared, and a family written in key order
/// already is sorted in one pass. Of several writes to one key only the last reaches
/// RocksDB: one apply puts a message's status once per event, and puts and deletes its
/// delivery-queue entry and delivery deadline when it is routed in the entry that sent it.
/// The buffers can be cleared and reused, so their memory is kept batch after batch.
pub(crate) struct SortedWrites {
    /// The view column families, in [`view_cfs`] order.
    names: Vec<&'static str>,
    /// Column family names met so far, by address and length, with their position.
    seen: Vec<((usize, usize), usize)>,
    /// The writes to each column family (indexed as `names`), in the fold's order until
    /// sorted.
    ops: Vec<Vec<SortedOp>>,
    /// Keys and values of `ops`, back to back.
    bytes: Vec<u8>,
}

struct SortedOp {
    key: std::ops::Range<usize>,
    /// `None` deletes the key.
    value: Option<std::ops::Range<usize>>,
}

impl SortedWrites {
    pub(crate) fn new() -> Self {
        let names: Vec<&'static str> = view_cfs().collect();
        Self {
            ops: names.iter().map(|_| Vec::new()).collect(),
            names,
            seen: Vec::new(),
            bytes: Vec::new(),
        }
    }

    /// Forgets the writes and keeps the buffers' memory.
    pub(crate) fn clear(&mut self) {
        self.ops.iter_mut().for_each(Vec::clear);
        self.bytes.clear();
    }

    /// The position of `cf` in `names`. The fold names column families by a handful of
    /// constants, so the address of the name finds it in `seen` without comparing text.
    fn cf_index(&mut self, cf: &str) -> usize {
        let addr = (cf.as_ptr() as usize, cf.len());
        if let Some(&(_, i)) = self.seen.iter().find(|(a, _)| *a == addr) {
            return i;
        }
        let Some(i) = self.names.iter().position(|n| *n == cf) else {
            // The fold writes view column families only; this names the one it did not.
            unreachable!("the fold wrote to {cf}, which is not a view");
        };
        if self.seen.len() < SORTED_WRITES_SEEN_NAMES_MAX {
            self.seen.push((addr, i));
        }
        i
    }

    fn push(&mut self, cf: &str, key: &[u8], value: Option<&[u8]>) {
        let cf = self.cf_index(cf);
        let mut stash = |b: &[u8]| {
            let start = self.bytes.len();
            self.bytes.extend_from_slice(b);
            start..self.bytes.len()
        };
        let key = stash(key);
        let value = value.map(stash);
        self.ops[cf].push(SortedOp { key, value });
    }

    /// Bytes the held writes take in a write batch, at most.
    pub(crate) fn batch_bytes(&self) -> usize {
        let count: usize = self.ops.iter().map(Vec::len).sum();
        self.bytes.len() + count * WRITE_BATCH_OVERHEAD_BYTES
    }

    /// The held writes as one batch of their own.
    pub(crate) fn batch(&mut self, db: &DB) -> WriteBatch {
        let mut wb = WriteBatch::with_capacity_bytes(self.batch_bytes());
        self.write_into(db, &mut wb);
        wb
    }

    /// Adds the held writes to `wb`, by column family and key, the last write of each key
    /// only (a stable sort keeps the writes to one key in their order), and forgets them.
    pub(crate) fn write_into(&mut self, db: &DB, wb: &mut WriteBatch) {
        let bytes = &self.bytes;
        for (name, ops) in self.names.iter().zip(&mut self.ops) {
            if ops.is_empty() {
                continue;
            }
            ops.sort_by(|a, b| bytes[a.key.clone()].cmp(&bytes[b.key.clone()]));
            let cf = rocks::cf(db, name);
            let mut ops = ops.iter().peekable();
            while let Some(op) = ops.next() {
                let key = &bytes[op.key.clone()];
                if ops
                    .peek()
                    .is_some_and(|next| &bytes[next.key.clone()] == key)
                {
                    continue; // a later write to this key replaces this one
                }
                match &op.value {
                    Some(v) => wb.put_cf(cf, key, &bytes[v.clone()]),
                    None => wb.delete_cf(cf, key),
                }
            }
        }
        self.clear();
    }
}

impl ViewSink for SortedWrites {
    fn put(&mut self, cf: &str, key: &[u8], value: &[u8]) {
        self.push(cf, key, Some(value));
    }

    fn delete(&mut self, cf: &str, key: &[u8]) {
        self.push(cf, key, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state_machine::SM_CFS;

    /// Writes reach the views sorted, one per key, yet every key ends as the last write to
    /// it left it (put after delete, delete after put, two puts).
    #[test]
    fn sorted_writes_keep_only_the_last_write_of_each_key() {
        let tmp = tempfile::tempdir().expect("tmp");
        let db = rocks::open(tmp.path(), SM_CFS, true, rocks::Tuning::default()).expect("open");
        db.put_cf(rocks::cf(&db, "orgs"), b"k-b", b"before")
            .expect("put");
        let mut w = SortedWrites::new();
        w.put("orgs", b"k-b", b"first");
        w.put("dir_index", b"z", b"");
        w.put("orgs", b"k-a", b"1");
        w.delete("orgs", b"k-b");
        w.put("orgs", b"k-a", b"2");
        w.put("orgs", b"k-c", b"3");
        w.delete("orgs", b"k-c");
        w.put("orgs", b"k-c", b"4");
        w.delete("dir_index", b"z");
        let wb = w.batch(&db);
        assert_eq!(wb.len(), 4, "one write per key");
        db.write(wb).expect("write");
        let get = |cf: &str, k: &[u8]| db.get_cf(rocks::cf(&db, cf), k).expect("get");
        assert_eq!(get("orgs", b"k-a").as_deref(), Some(&b"2"[..]));
        assert_eq!(get("orgs", b"k-b"), None);
        assert_eq!(get("orgs", b"k-c").as_deref(), Some(&b"4"[..]));
        assert_eq!(get("dir_index", b"z"), None);
        assert_eq!(w.batch_bytes(), 0, "the writes are forgotten once written");
    }
}
