//! The event store's Merkle tree on disk: the `merkle` column family holds the hash of
//! every perfect subtree of two or more leaves, keyed by (level, index), written in the
//! same batch as the events it covers; `meta/merkle` holds the frontier (the right edge).
//! Leaf hashes are not stored: they come from the event records' own hashes.
//!
//! With these, the root at any size and RFC 9162 inclusion and consistency proofs take
//! O(log n) reads (see `sealpost_core::merkle`). Like the event store, the tree is never
//! pruned and is not a view: `rebuild-views` leaves it alone, and `audit verify` recomputes
//! the root from the events and compares it with the frontier.

use rocksdb::{IteratorMode, WriteBatch};
use sealpost_core::codec;
use sealpost_core::event::{EventRecord, Hash};
use sealpost_core::merkle::{self, Frontier, Nodes};

use crate::error::{Error, Result};
use crate::rocks::{self, rocks_err};
use crate::state_machine::{CF_EVENTS, CF_META, SmDb};

pub(crate) const CF_MERKLE: &str = "merkle";
pub(crate) const KEY_MERKLE: &[u8] = b"merkle";

/// Events folded into one write batch while an older store's tree is built at start-up.
const BACKFILL_BATCH_EVENTS_MAX: usize = 4096;

/// `level (1 byte) || index (8 bytes, big-endian)`.
pub(crate) fn node_key(level: u32, index: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = level as u8;
    k[1..].copy_from_slice(&index.to_be_bytes());
    k
}

/// Appends one event's leaf to the frontier and stages every subtree it completes.
pub(crate) fn append(db: &SmDb, wb: &mut WriteBatch, frontier: &mut Frontier, record_hash: &Hash) {
    let cf = rocks::cf(&db.db, CF_MERKLE);
    frontier.push(record_hash, |level, index, h| {
        if level > 0 {
            wb.put_cf(cf, node_key(level, index), h);
        }
    });
}

impl SmDb {
    /// The stored frontier, or `None` for a store written before the tree existed.
    pub(crate) fn frontier(&self) -> Result<Option<Frontier>> {
        self.get(CF_META, KEY_MERKLE)
    }

    /// Builds the tree of a store written before it existed, from its events, so that an
    /// upgraded node can make checkpoints of its whole history. Returns the leaves added.
    pub(crate) fn backfill_merkle(&self) -> Result<u64> {
        if self.frontier()?.is_some() {
            return Ok(0);
        }
        let mut frontier = Frontier::default();
        let mut wb = WriteBatch::default();
        let mut staged = 0;
        let cf = rocks::cf(&self.db, CF_EVENTS);
        for item in self.db.iterator_cf(cf, IteratorMode::Start) {
            let (_, bytes) = item.map_err(rocks_err(&self.path))?;
            let rec = EventRecord::decode_stored(&bytes).map_err(|e| Error::Corrupt {
                path: self.path.clone(),
                detail: format!("an event does not decode while building the Merkle tree: {e}"),
            })?;
            if rec.seq != frontier.size + 1 {
                return Err(Error::Corrupt {
                    path: self.path.clone(),
                    detail: format!(
                        "event {} follows event {} in the event store",
                        rec.seq, frontier.size
                    ),
                });
            }
            append(self, &mut wb, &mut frontier, &rec.hash);
            staged += 1;
            if staged == BACKFILL_BATCH_EVENTS_MAX {
                rocks::write(&self.db, &self.path, wb, rocks::Durability::Synced)?;
                wb = WriteBatch::default();
                staged = 0;
            }
        }
        wb.put_cf(
            rocks::cf(&self.db, CF_META),
            KEY_MERKLE,
            codec::encode(&frontier),
        );
        rocks::write(&self.db, &self.path, wb, rocks::Durability::Synced)?;
        Ok(frontier.size)
    }
}

/// Reads perfect subtrees of one database (the live one, at the moment of each read; the
/// tree only grows, so every node below the frontier is final).
pub(crate) struct StoredNodes<'a>(pub(crate) &'a SmDb);

impl Nodes for StoredNodes<'_> {
    type Error = Error;
    fn perfect(&self, level: u32, index: u64) -> Result<Hash> {
        let db = self.0;
        if level == 0 {
            // Callers check sizes against the store first: a hole here is damage.
            let rec = db
                .event(index + 1)?
                .ok_or_else(|| db.corrupt(format!("event {} is missing", index + 1)))?;
            return Ok(merkle::leaf_hash(&rec.hash));
        }
        let raw = db
            .db
            .get_cf(rocks::cf(&db.db, CF_MERKLE), node_key(level, index))
            .map_err(rocks_err(&db.path))?
            .ok_or_else(|| {
                db.corrupt(format!(
                    "the Merkle tree has no node at level {level}, index {index}"
                ))
            })?;
        raw.as_slice().try_into().map_err(|_| Error::Corrupt {
            path: db.path.clone(),
            detail: format!("Merkle node {level}/{index} is not 32 bytes"),
        })
    }
}
