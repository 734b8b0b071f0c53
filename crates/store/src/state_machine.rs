//! The state machine in its own RocksDB instance: the permanent event store (sequence →
//! hash-chained record, never purged) and the directory, messaging and federation views,
//! written together in one batch per apply.
//!
//! On disk, `sm/ACTIVE` names the live database folder (`sm/db-N`); snapshots are RocksDB
//! checkpoints under `sm/snapshots/`, and a received snapshot replaces the live folder by
//! writing a new `ACTIVE` atomically. [`StateView`] is the read side used by the gRPC
//! services; it always reads the live database.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use rocksdb::{DB, Direction, IteratorMode, WriteBatch};
use sealpost_core::batch::{Batch, BatchOutcome, Outcome};
use sealpost_core::codec;
use sealpost_core::command::{Command, Reads, decide};
use sealpost_core::directory::{Endpoint, Organisation, PublicKeys};
use sealpost_core::event::{ChainError, ChainVerifier, Event, EventRecord, GENESIS_HASH, Hash};
use sealpost_core::federation::{self, Notification, keys as fed_keys};
use sealpost_core::ids::{EndpointId, HpiO};
use sealpost_core::merkle::Frontier;
use sealpost_core::message::{MessageId, MessageStatus};
use sealpost_core::messaging::keys;
use sealpost_core::view::{Facts, ViewCf, ViewChange, event_reads, fold};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::rocks::{self, rocks_err};
use crate::search::{SearchHit, SearchQuery};
use crate::snapshot;
use crate::sorted_writes::SortedWrites;
use crate::types::{
    Entry, LogId, Snapshot, SnapshotFiles, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership, TypeConfig,
};

pub(crate) const CF_EVENTS: &str = "events";
pub(crate) const CF_ORGS: &str = "orgs";
pub(crate) const CF_ENDPOINTS: &str = "endpoints";
pub(crate) const CF_INDEX: &str = "dir_index";
pub(crate) const CF_META: &str = "meta";
pub(crate) const CF_MESSAGES: &str = "messages";
pub(crate) const CF_IDEMPOTENCY: &str = "idempotency";
pub(crate) const SM_CFS: &[&str] = &[
    CF_EVENTS,
    CF_ORGS,
    CF_ENDPOINTS,
    CF_INDEX,
    CF_META,
    CF_MESSAGES,
    CF_IDEMPOTENCY,
    "outbox",
    "inbox",
    "feed",
    "queue",
    "deadlines",
    "msg_events",
    "keystore",
    "peers",
    "relay_queue",
    "notify",
    "dir_log",
    "dead_letters",
    "outcomes",
    "msg_index",
    crate::merkle::CF_MERKLE,
];

pub(crate) const KEY_LAST_APPLIED: &[u8] = b"last_applied";
pub(crate) const KEY_MEMBERSHIP: &[u8] = b"membership";
pub(crate) const KEY_CHAIN: &[u8] = b"chain";
pub(crate) const KEY_CLUSTER_VERSION: &[u8] = b"cluster_version";

/// Longest time a replaced database folder waits for its last reader before it is left
/// for the next start-up to delete.
pub const RETIRED_DB_WAIT_MS_MAX: u64 = 60_000;

/// Where the chain stands after the last applied event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainState {
    pub next_seq: u64,
    pub head: Hash,
    pub last_ts_ms: u64,
}

impl Default for ChainState {
    fn default() -> Self {
        Self {
            next_seq: 1,
            head: GENESIS_HASH,
            last_ts_ms: 0,
        }
    }
}

/// What a chain walk checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainCheck {
    pub from: u64,
    pub to: u64,
    pub count: u64,
    /// The hash of event `to`.
    pub head: Hash,
    /// The Merkle root recomputed from the events, when the walk covered the whole store.
    pub root: Option<Hash>,
}

/// The chain head and Merkle root of a prefix of the event store: what a checkpoint signs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TreeHead {
    pub size: u64,
    pub chain_head: Hash,
    pub root: Hash,
}

/// A provider-held key set in the keystore: organisation, key id and the wrapped blob.
pub type WrappedKeySet = (HpiO, String, Vec<u8>);

/// A snapshot of the state machine's progress, for cluster status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmStatus {
    pub last_applied: Option<LogId>,
    pub event_count: u64,
    pub chain_head: Hash,
    pub cluster_version: u16,
}

/// The live database and the folder it lives in.
pub(crate) struct SmDb {
    pub(crate) db: DB,
    pub(crate) path: PathBuf,
    /// Where the last apply left the store, kept so the next apply need not read it back
    /// (four point reads per apply, a quarter of a lightly loaded node's apply). Only the
    /// apply, under the apply gate, takes and puts it; empty until the first apply and
    /// after a failed one, when it is read from the database again.
    tip: std::sync::Mutex<Option<Tip>>,
}

impl SmDb {
    /// A database opened at `path`, with no apply tip read yet.
    pub(crate) fn new(db: DB, path: PathBuf) -> Self {
        Self {
            db,
            path,
            tip: std::sync::Mutex::new(None),
        }
    }

    /// The tip the last apply left, or the one on disk.
    fn take_tip(&self) -> Result<Tip> {
        let cached = self
            .tip
            .lock()
            .expect("the apply tip lock is never held across a panic")
            .take();
        match cached {
            Some(t) => Ok(t),
            None => {
                let (last_applied, membership) = self.applied()?;
                Ok(Tip {
                    chain: self.chain()?,
                    tree: self.frontier()?.unwrap_or_default(),
                    cluster_version: self.cluster_version()?,
                    last_applied,
                    membership,
                    batch_bytes: 0,
                    views: SortedWrites::new(),
                })
            }
        }
    }

    fn put_tip(&self, tip: Tip) {
        *self
            .tip
            .lock()
            .expect("the apply tip lock is never held across a panic") = Some(tip);
    }

    pub(crate) fn get<T: serde::de::DeserializeOwned>(
        &self,
        cf: &str,
        key: &[u8],
    ) -> Result<Option<T>> {
        match self
            .db
            .get_cf(rocks::cf(&self.db, cf), key)
            .map_err(rocks_err(&self.path))?
        {
            None => Ok(None),
            Some(v) => codec::decode(&v).map(Some).map_err(|e| Error::Codec {
                what: format!("{cf}/{}", String::from_utf8_lossy(key)),
                source: e,
            }),
        }
    }

    pub(crate) fn chain(&self) -> Result<ChainState> {
        Ok(self.get(CF_META, KEY_CHAIN)?.unwrap_or_default())
    }

    pub(crate) fn applied(&self) -> Result<(Option<LogId>, StoredMembership)> {
        let last: Option<LogId> = self
            .get::<Option<LogId>>(CF_META, KEY_LAST_APPLIED)?
            .flatten();
        let membership: StoredMembership = self.get(CF_META, KEY_MEMBERSHIP)?.unwrap_or_default();
        Ok((last, membership))
    }

    fn cluster_version(&self) -> Result<u16> {
        Ok(self
            .get(CF_META, KEY_CLUSTER_VERSION)?
            .unwrap_or(sealpost_core::event::CLUSTER_VERSION_INITIAL))
    }

    pub(crate) fn event(&self, seq: u64) -> Result<Option<EventRecord>> {
        self.get(CF_EVENTS, &seq.to_be_bytes())
    }

    /// A federation cursor (raw big-endian u64, not the codec).
    pub(crate) fn cursor(&self, kind: u8, provider: &str) -> Result<Option<u64>> {
        let raw = self
            .db
            .get_cf(
                rocks::cf(&self.db, ViewCf::Peers.name()),
                fed_keys::cursor(kind, provider),
            )
            .map_err(rocks_err(&self.path))?;
        match raw {
            None => Ok(None),
            Some(v) => federation::decode_cursor(&v)
                .map(Some)
                .ok_or_else(|| Error::Corrupt {
                    path: self.path.clone(),
                    detail: format!("the {provider} cursor is not a sequence number"),
                }),
        }
    }

    /// Checks that the newest event matches the recorded chain head, so a store whose
    /// tail was damaged or lost refuses to start.
    fn check_tail(&self) -> Result<()> {
        let chain = self.chain().map_err(|e| self.corrupt(e.to_string()))?;
        if chain.next_seq == 1 {
            return Ok(());
        }
        let seq = chain.next_seq - 1;
        let rec = self
            .event(seq)
            .map_err(|e| self.corrupt(e.to_string()))?
            .ok_or_else(|| self.corrupt(format!("event {seq} (the chain head) is missing")))?;
        if rec.seq != seq || rec.hash != chain.head || rec.computed_hash() != rec.hash {
            return Err(self.corrupt(format!(
                "event {seq} does not match the recorded chain head"
            )));
        }
        Ok(())
    }

    /// Checks that the Merkle frontier covers exactly the stored events.
    fn check_merkle(&self) -> Result<()> {
        let events = self.chain()?.next_seq - 1;
        let size = self.frontier()?.map_or(0, |f| f.size);
        if size != events {
            return Err(self.corrupt(format!(
                "the Merkle tree covers {size} events but the store holds {events}"
            )));
        }
        Ok(())
    }

    pub(crate) fn corrupt(&self, detail: String) -> Error {
        Error::Corrupt {
            path: self.path.clone(),
            detail,
        }
    }

    fn open(path: &Path, create: bool) -> Result<Self> {
        let db = rocks::open(
            path,
            SM_CFS,
            create,
            rocks::Tuning {
                uncompressed: &[CF_EVENTS],
                atomic_flush: true,
                // The envelopes fill the events memtable first, and every flush gives each
                // view a small level-0 file: a larger memtable means fewer of them to compact.
                large_memtables: &[CF_EVENTS],
                ..rocks::Tuning::default()
            },
        )?;
        let sm = Self::new(db, path.to_path_buf());
        sm.check_tail()?;
        sm.backfill_merkle()?;
        sm.check_merkle()?;
        sm.backfill_msg_index()?;
        Ok(sm)
    }
}

pub(crate) struct Shared {
    root: PathBuf,
    live: RwLock<Arc<SmDb>>,
    /// Number of the newest `db-N` folder, for naming the next one.
    generation: AtomicU64,
    /// Fsync every apply batch (off by default; see `StoreOptions::sync_state_machine`).
    sync_writes: bool,
    /// The next event sequence after each apply, for workers and streams that wait for
    /// new events instead of polling.
    applied_tx: tokio::sync::watch::Sender<u64>,
    /// Held by every apply; a view repair holds it to stop applies meanwhile.
    apply_gate: std::sync::Mutex<()>,
}

impl Shared {
    pub(crate) fn live(&self) -> Arc<SmDb> {
        self.live
            .read()
            .expect("the live-database lock is never held across a panic")
            .clone()
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }
}

/// The openraft state machine.
pub struct StateMachine {
    shared: Arc<Shared>,
}

/// Read access to the live views and event store, for the services. Cheap to clone.
#[derive(Clone)]
pub struct StateView {
    shared: Arc<Shared>,
}

fn active_file(root: &Path) -> PathBuf {
    root.join("ACTIVE")
}

fn read_active(root: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(active_file(root)) {
        Ok(s) => Ok(Some(s.trim().to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(active_file(root))(e)),
    }
}

fn generation_of(name: &str) -> Option<u64> {
    name.strip_prefix("db-")?.parse().ok()
}

impl StateMachine {
    /// Opens the state machine under `root` (a node's `sm` folder), creating it when
    /// `create`. `sync_writes` fsyncs each apply batch.
    pub fn open(root: &Path, create: bool, sync_writes: bool) -> Result<Self> {
        std::fs::create_dir_all(root).map_err(Error::io(root))?;
        let active = match read_active(root)? {
            Some(name) => name,
            None if create => {
                let name = "db-1".to_string();
                snapshot::write_atomic(&active_file(root), name.as_bytes())?;
                name
            }
            None => {
                return Err(Error::Corrupt {
                    path: root.to_path_buf(),
                    detail: "sm/ACTIVE is missing".into(),
                });
            }
        };
        let generation = generation_of(&active).ok_or_else(|| Error::Corrupt {
            path: root.to_path_buf(),
            detail: format!("sm/ACTIVE names {active:?}, not a db-N folder"),
        })?;
        let live_path = root.join(&active);
        let db = SmDb::open(&live_path, create && generation == 1)?;
        let next_seq = db.chain()?.next_seq;
        snapshot::collect_garbage(root, &active);
        crate::rebuild::remove_stale_scratch(root);
        Ok(Self {
            shared: Arc::new(Shared {
                root: root.to_path_buf(),
                live: RwLock::new(Arc::new(db)),
                generation: AtomicU64::new(generation),
                sync_writes,
                applied_tx: tokio::sync::watch::Sender::new(next_seq),
                apply_gate: std::sync::Mutex::new(()),
            }),
        })
    }

    pub fn view(&self) -> StateView {
        StateView {
            shared: self.shared.clone(),
        }
    }

    /// Applies entries in one write batch, as the trait method does on a blocking thread.
    #[cfg(test)]
    fn apply_entries(&self, entries: Vec<Entry>) -> Result<Vec<BatchOutcome>> {
        apply_entries(&self.shared, entries)
    }
}

/// The end of the store as an apply advances it: the chain, the Merkle frontier, the
/// cluster version and the last applied entry with the membership beside it.
struct Tip {
    chain: ChainState,
    tree: Frontier,
    cluster_version: u16,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    /// Bytes of the last apply's write batch (not stored: a hint for sizing the next).
    batch_bytes: usize,
    /// The apply's view writes (not stored: empty between applies, kept for its buffers).
    views: SortedWrites,
}

/// Applies entries to the live database in one write batch and wakes the view watchers.
fn apply_entries(shared: &Shared, entries: Vec<Entry>) -> Result<Vec<BatchOutcome>> {
    let _gate = shared
        .apply_gate
        .lock()
        .expect("the apply gate is never held across a panic");
    let live = shared.live();
    // Taken out of the cache: if anything below fails, the next apply reads it from disk.
    let mut tip = live.take_tip()?;
    let mut facts = Facts::default();
    // Sized like the last apply's batch, so it is not regrown (and copied) write by write.
    let mut wb = WriteBatch::with_capacity_bytes(tip.batch_bytes);
    let mut results = Vec::with_capacity(entries.len());
    for entry in entries {
        if let EntryPayload::Normal(b) = &entry.payload
            && b.proposals
                .iter()
                .any(|p| matches!(p.command, Command::DropPayloads { .. }))
            && !wb.is_empty()
        {
            // A payload drop rewrites events already in the store, so everything applied
            // before it is written first: every replica then reads the same events.
            write_applied(shared, &live, std::mem::take(&mut wb), &mut tip)?;
        }
        tip.last_applied = Some(entry.log_id);
        match entry.payload {
            EntryPayload::Blank => results.push(BatchOutcome::default()),
            EntryPayload::Membership(m) => {
                tip.membership = StoredMembership::new(Some(entry.log_id), m);
                results.push(BatchOutcome::default());
            }
            EntryPayload::Normal(batch) => {
                let out = apply_batch(
                    &live,
                    &mut wb,
                    &mut facts,
                    &mut tip,
                    entry.log_id.index,
                    batch,
                )?;
                results.push(out);
            }
        }
    }
    write_applied(shared, &live, wb, &mut tip)?;
    live.put_tip(tip);
    Ok(results)
}

/// Writes applied entries with the view writes held in `tip` and the progress that goes
/// with them, and wakes the watchers.
fn write_applied(shared: &Shared, live: &SmDb, mut wb: WriteBatch, tip: &mut Tip) -> Result<()> {
    tip.views.write_into(&live.db, &mut wb);
    let meta = rocks::cf(&live.db, CF_META);
    wb.put_cf(meta, KEY_LAST_APPLIED, codec::encode(&tip.last_applied));
    wb.put_cf(meta, KEY_MEMBERSHIP, codec::encode(&tip.membership));
    wb.put_cf(meta, KEY_CHAIN, codec::encode(&tip.chain));
    wb.put_cf(meta, crate::merkle::KEY_MERKLE, codec::encode(&tip.tree));
    // Unless asked to sync, the state machine skips the WAL: it is derived from the Raft log,
    // which openraft re-applies from the last applied id that reached disk (memtables are
    // flushed atomically, so that id always matches the data beside it).
    let durability = if shared.sync_writes {
        rocks::Durability::Synced
    } else {
        rocks::Durability::Unlogged
    };
    tip.batch_bytes = wb.size_in_bytes();
    rocks::write(&live.db, &live.path, wb, durability)?;
    shared.applied_tx.send_replace(tip.chain.next_seq);
    Ok(())
}

/// Drops the ciphertexts of the `Sent` and `Received` events `from..=through` stamped
/// before `before_ts_ms`, rewriting each record in place: its hash, and the chain, are
/// unchanged (see `SealedCopy::drop_ciphertext`). Returns how many were rewritten.
fn drop_payloads(
    live: &SmDb,
    wb: &mut WriteBatch,
    from: u64,
    through: u64,
    before_ts_ms: u64,
) -> Result<u64> {
    let cf = rocks::cf(&live.db, CF_EVENTS);
    let start = from.to_be_bytes();
    let mut dropped = 0;
    for item in live
        .db
        .iterator_cf(cf, IteratorMode::From(&start, Direction::Forward))
    {
        let (k, bytes) = item.map_err(rocks_err(&live.path))?;
        let seq = k
            .as_ref()
            .try_into()
            .map(u64::from_be_bytes)
            .unwrap_or(u64::MAX);
        if seq > through {
            break;
        }
        let mut rec = EventRecord::decode_stored(&bytes).map_err(|e| Error::Codec {
            what: format!("event {seq}"),
            source: e,
        })?;
        if rec.ts_ms >= before_ts_ms {
            break; // time never goes backwards along the log
        }
        let (Event::Sent { envelope, .. } | Event::Received { envelope, .. }) = &mut rec.event
        else {
            continue;
        };
        if envelope.payload_dropped() {
            continue;
        }
        for copy in &mut envelope.sealed {
            copy.drop_ciphertext();
        }
        debug_assert_eq!(rec.computed_hash(), rec.hash);
        wb.put_cf(cf, k, codec::encode(&rec));
        dropped += 1;
    }
    Ok(dropped)
}

/// Where view records are read from while deciding and folding: the live database, or
/// the views being rebuilt in memory.
pub(crate) trait ViewSource {
    /// The raw value of `key` in column family `cf`.
    fn raw(&self, cf: &str, key: &[u8]) -> Result<Option<Vec<u8>>>;

    fn get<T: serde::de::DeserializeOwned>(&self, cf: &str, key: &[u8]) -> Result<Option<T>> {
        match self.raw(cf, key)? {
            None => Ok(None),
            Some(v) => codec::decode(&v).map(Some).map_err(|e| Error::Codec {
                what: format!("{cf}/{}", String::from_utf8_lossy(key)),
                source: e,
            }),
        }
    }
}

impl ViewSource for SmDb {
    fn raw(&self, cf: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.db
            .get_cf(rocks::cf(&self.db, cf), key)
            .map_err(rocks_err(&self.path))
    }
}

/// Where view changes are written: a write batch for the live database, or the views
/// being rebuilt in memory.
pub(crate) trait ViewSink {
    fn put(&mut self, cf: &str, key: &[u8], value: &[u8]);
    fn delete(&mut self, cf: &str, key: &[u8]);
}

/// Loads into `facts` whatever `reads` names that it does not hold yet.
pub(crate) fn load_facts(src: &impl ViewSource, facts: &mut Facts, reads: &Reads) -> Result<()> {
    for o in &reads.organisations {
        if !facts.knows_organisation(o) {
            let v: Option<Organisation> = src.get(CF_ORGS, o.as_str().as_bytes())?;
            facts.load_organisation(o.clone(), v);
        }
    }
    for e in &reads.endpoints {
        if !facts.knows_endpoint(e) {
            let v: Option<Endpoint> = src.get(CF_ENDPOINTS, e.text().as_bytes())?;
            facts.load_endpoint(e.clone(), v);
        }
    }
    for m in &reads.messages {
        if !facts.knows_message(m) {
            let v: Option<MessageStatus> = src.get(CF_MESSAGES, &keys::message(m))?;
            facts.load_message(m.clone(), v);
        }
    }
    for (org, cid) in &reads.client_ids {
        if !facts.knows_client_id(org, cid) {
            let v: Option<MessageId> = src.get(CF_IDEMPOTENCY, &keys::idempotency(org, cid))?;
            facts.load_client_id(org.clone(), cid.clone(), v);
        }
    }
    for (kind, provider) in &reads.cursors {
        if !facts.knows_cursor(*kind, provider) {
            let raw = src.raw(ViewCf::Peers.name(), &fed_keys::cursor(*kind, provider))?;
            let v = raw.as_deref().and_then(federation::decode_cursor);
            facts.load_cursor(*kind, provider.clone(), v);
        }
    }
    Ok(())
}

pub(crate) fn write_view_changes(sink: &mut impl ViewSink, changes: &[ViewChange]) {
    for c in changes {
        match c {
            ViewChange::PutOrganisation(o) => {
                sink.put(CF_ORGS, o.spec.hpio.as_str().as_bytes(), &codec::encode(o));
                // Every key set an organisation publishes stays readable by its id.
                sink.put(
                    ViewCf::Keystore.name(),
                    &keys::published_keys(&o.spec.hpio, &o.spec.keys.key_id),
                    &codec::encode(&o.spec.keys),
                );
            }
            ViewChange::PutEndpoint(e) => {
                sink.put(CF_ENDPOINTS, e.spec.id.text().as_bytes(), &codec::encode(e))
            }
            ViewChange::PutIndex(k) => sink.put(CF_INDEX, k, &[]),
            ViewChange::PutMessage(m) => sink.put(
                CF_MESSAGES,
                &keys::message(&m.message_id),
                &codec::encode(m),
            ),
            ViewChange::PutIdempotency(org, cid, id) => sink.put(
                CF_IDEMPOTENCY,
                &keys::idempotency(org, cid),
                &codec::encode(id),
            ),
            ViewChange::Put(cf, k, v) => sink.put(cf.name(), k, v),
            ViewChange::Delete(cf, k) => sink.delete(cf.name(), k),
        }
    }
}

fn apply_batch(
    live: &SmDb,
    wb: &mut WriteBatch,
    facts: &mut Facts,
    tip: &mut Tip,
    log_index: u64,
    batch: Batch,
) -> Result<BatchOutcome> {
    let Tip {
        chain,
        tree,
        cluster_version,
        views,
        ..
    } = tip;
    // Events of this entry are in the write batch, not yet in the store.
    let entry_first_seq = chain.next_seq;
    // Event time never goes backwards, whatever the clocks of successive leaders say.
    let ts_ms = batch.ts_ms.max(chain.last_ts_ms);
    let mut outcomes = Vec::with_capacity(batch.proposals.len());
    for p in batch.proposals {
        if let Err(r) = p.validate() {
            outcomes.push(Outcome::Rejected(r));
            continue;
        }
        load_facts(live, facts, &p.command.reads())?;
        match decide(p.command, facts, *cluster_version, ts_ms) {
            Err(r) => outcomes.push(Outcome::Rejected(r)),
            Ok(events) => {
                let first_seq = chain.next_seq;
                let count = events.len() as u64;
                for event in events {
                    load_facts(live, facts, &event_reads(&event))?;
                    let changes = fold(&event, chain.next_seq, ts_ms, facts);
                    let rec = EventRecord::chain(
                        chain.next_seq,
                        ts_ms,
                        log_index,
                        p.actor.clone(),
                        chain.head,
                        event,
                    );
                    wb.put_cf(
                        rocks::cf(&live.db, CF_EVENTS),
                        rec.seq.to_be_bytes(),
                        codec::encode(&rec),
                    );
                    write_view_changes(views, &changes);
                    facts.absorb_owned(changes);
                    crate::merkle::append(live, wb, tree, &rec.hash);
                    if let Event::PayloadsDropped {
                        before_ts_ms,
                        from_seq,
                        through_seq,
                    } = &rec.event
                    {
                        let through = (*through_seq).min(entry_first_seq - 1);
                        let n = drop_payloads(live, wb, *from_seq, through, *before_ts_ms)?;
                        tracing::info!(
                            from_seq,
                            through,
                            dropped = n,
                            "payloads dropped after retention"
                        );
                    }
                    if let Event::ClusterVersionSet { version, .. } = &rec.event {
                        wb.put_cf(
                            rocks::cf(&live.db, CF_META),
                            KEY_CLUSTER_VERSION,
                            codec::encode(version),
                        );
                        *cluster_version = *version;
                        tracing::info!(version, "cluster version raised");
                    }
                    chain.head = rec.hash;
                    chain.next_seq += 1;
                }
                chain.last_ts_ms = ts_ms;
                outcomes.push(Outcome::Applied { first_seq, count });
            }
        }
    }
    Ok(BatchOutcome { outcomes })
}

fn sm_err(e: Error) -> StorageError {
    StorageIOError::write_state_machine(&e).into()
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        self.shared
            .live()
            .applied()
            .map_err(|e| StorageIOError::read_state_machine(&e).into())
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<BatchOutcome>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // RocksDB reads and the batch write run on a blocking thread: the async runtime
        // keeps serving clients and replication meanwhile.
        let shared = self.shared.clone();
        let entries: Vec<Entry> = entries.into_iter().collect();
        tokio::task::spawn_blocking(move || apply_entries(&shared, entries))
            .await
            .map_err(|e| {
                StorageError::from(StorageIOError::write_state_machine(&std::io::Error::other(
                    format!("the apply task failed: {e}"),
                )))
            })?
            .map_err(sm_err)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            shared: self.shared.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotFiles>, StorageError> {
        let dir = snapshot::incoming_dir(&self.shared.root)
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        Ok(Box::new(SnapshotFiles { dir }))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<SnapshotFiles>,
    ) -> Result<(), StorageError> {
        let shared = self.shared.clone();
        let meta = meta.clone();
        let sig = meta.signature();
        tokio::task::spawn_blocking(move || install(&shared, &meta, &snapshot))
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(sig.clone()), &e))?
            .map_err(|e| StorageIOError::write_snapshot(Some(sig), &e).into())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        snapshot::current(&self.shared.root)
            .map_err(|e| StorageIOError::read_snapshot(None, &e).into())
    }
}

/// Replaces the live database with the snapshot's files.
fn install(shared: &Shared, meta: &SnapshotMeta, files: &SnapshotFiles) -> Result<()> {
    let kept = snapshot::keep(&shared.root, meta, files)?;
    let generation = shared.generation.fetch_add(1, Ordering::SeqCst) + 1;
    let name = format!("db-{generation}");
    let new_path = shared.root.join(&name);
    snapshot::copy_checkpoint(&kept, &new_path)?;
    let db = SmDb::open(&new_path, false)?;
    let (applied, _) = db.applied()?;
    if applied != meta.last_log_id {
        return Err(Error::Corrupt {
            path: new_path,
            detail: format!(
                "snapshot claims last log id {:?} but its state machine applied {applied:?}",
                meta.last_log_id
            ),
        });
    }
    let next_seq = db.chain()?.next_seq;
    snapshot::write_atomic(&active_file(&shared.root), name.as_bytes())?;
    let old = {
        let mut live = shared
            .live
            .write()
            .expect("the live-database lock is never held across a panic");
        std::mem::replace(&mut *live, Arc::new(db))
    };
    retire(old);
    shared.applied_tx.send_replace(next_seq);
    tracing::info!(snapshot = %meta.snapshot_id, last_log_id = ?meta.last_log_id, "installed snapshot");
    Ok(())
}

/// Closes and deletes a replaced database once its last reader lets go; if readers hold on
/// too long, the folder is left for the next start-up's garbage collection.
fn retire(old: Arc<SmDb>) {
    std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + Duration::from_millis(RETIRED_DB_WAIT_MS_MAX);
        let mut old = old;
        loop {
            match Arc::try_unwrap(old) {
                Ok(db) => {
                    let path = db.path.clone();
                    drop(db);
                    if let Err(e) = std::fs::remove_dir_all(&path) {
                        tracing::warn!(path = %path.display(), error = %e, "could not delete replaced state machine");
                    }
                    return;
                }
                Err(still_shared) => {
                    if std::time::Instant::now() > deadline {
                        return;
                    }
                    old = still_shared;
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    });
}

/// Builds snapshots as RocksDB checkpoints of the live database.
pub struct SnapshotBuilder {
    shared: Arc<Shared>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || snapshot::build(&shared))
            .await
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?
            .map_err(|e| StorageIOError::write_snapshot(None, &e).into())
    }
}

pub(crate) fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

impl StateView {
    pub fn organisation(&self, id: &HpiO) -> Result<Option<Organisation>> {
        self.shared.live().get(CF_ORGS, id.as_str().as_bytes())
    }

    pub fn endpoint(&self, id: &EndpointId) -> Result<Option<Endpoint>> {
        self.shared.live().get(CF_ENDPOINTS, id.text().as_bytes())
    }

    pub fn search(&self, q: &SearchQuery) -> Result<Vec<SearchHit>> {
        crate::search::search(&self.shared.live(), q)
    }

    pub fn status(&self) -> Result<SmStatus> {
        let live = self.shared.live();
        let chain = live.chain()?;
        let (last_applied, _) = live.applied()?;
        Ok(SmStatus {
            last_applied,
            event_count: chain.next_seq - 1,
            chain_head: chain.head,
            cluster_version: live.cluster_version()?,
        })
    }

    pub fn last_applied(&self) -> Result<Option<LogId>> {
        Ok(self.shared.live().applied()?.0)
    }

    /// Events from `from_seq` on, at most `limit` of them.
    pub fn events(&self, from_seq: u64, limit: usize) -> Result<Vec<EventRecord>> {
        let live = self.shared.live();
        let cf = rocks::cf(&live.db, CF_EVENTS);
        let start = from_seq.max(1).to_be_bytes();
        let mut out = Vec::new();
        for item in live
            .db
            .iterator_cf(cf, IteratorMode::From(&start, Direction::Forward))
            .take(limit)
        {
            let (k, v) = item.map_err(rocks_err(&live.path))?;
            out.push(codec::decode(&v).map_err(|e| Error::Codec {
                what: format!("event {}", hex::encode(&k)),
                source: e,
            })?);
        }
        Ok(out)
    }

    /// Walks the whole event store and checks every link of the hash chain, the recorded
    /// head and the Merkle tree's root. Returns the number of events verified.
    pub fn verify_chain(&self) -> Result<Result<u64, ChainError>> {
        Ok(self.verify_chain_range(1, 0)?.map(|c| c.count))
    }

    /// Walks events `from..=to` (`to` 0: the newest) of one consistent snapshot of the
    /// store and checks every link of the hash chain. A walk of the whole store also checks
    /// the recorded head and recomputes the Merkle root from the events.
    pub fn verify_chain_range(&self, from: u64, to: u64) -> Result<Result<ChainCheck, ChainError>> {
        let live = self.shared.live();
        let snap = live.db.snapshot();
        let read = |cf: &str, key: &[u8]| -> Result<Option<Vec<u8>>> {
            snap.get_cf(rocks::cf(&live.db, cf), key)
                .map_err(rocks_err(&live.path))
        };
        let decode_err = |what: &str| {
            let what = what.to_string();
            move |source| Error::Codec { what, source }
        };
        let chain: ChainState = match read(CF_META, KEY_CHAIN)? {
            Some(v) => codec::decode(&v).map_err(decode_err("meta/chain"))?,
            None => ChainState::default(),
        };
        let newest = chain.next_seq - 1;
        let from = from.max(1);
        let to = if to == 0 { newest } else { to };
        if to > newest || from > to {
            return Err(Error::Invalid(format!(
                "cannot verify events {from}..={to}: the store holds events 1..={newest}"
            )));
        }
        let prev = if from == 1 {
            GENESIS_HASH
        } else {
            let raw = read(CF_EVENTS, &(from - 1).to_be_bytes())?;
            match raw.map(|v| EventRecord::decode_stored(&v)) {
                Some(Ok(rec)) => rec.hash,
                Some(Err(e)) => {
                    return Ok(Err(ChainError::Undecodable {
                        seq: from - 1,
                        reason: e.to_string(),
                    }));
                }
                None => return Ok(Err(ChainError::Missing { seq: from - 1 })),
            }
        };
        let whole = from == 1 && to == newest;
        let mut v = ChainVerifier::resume(from, prev);
        let mut tree = Frontier::default();
        let cf = rocks::cf(&live.db, CF_EVENTS);
        let start = from.to_be_bytes();
        let mode = IteratorMode::From(&start, Direction::Forward);
        for item in snap.iterator_cf(cf, mode) {
            let (k, bytes) = item.map_err(rocks_err(&live.path))?;
            let seq = k
                .as_ref()
                .try_into()
                .map(u64::from_be_bytes)
                .unwrap_or(u64::MAX);
            if seq > to {
                break;
            }
            let rec = match EventRecord::decode_stored(&bytes) {
                Ok(r) => r,
                Err(e) => {
                    return Ok(Err(ChainError::Undecodable {
                        seq,
                        reason: e.to_string(),
                    }));
                }
            };
            if rec.seq != seq {
                return Ok(Err(ChainError::Altered { seq }));
            }
            if let Err(e) = v.push(&rec) {
                return Ok(Err(e));
            }
            if whole {
                tree.push(&rec.hash, |_, _, _| {});
            }
        }
        if v.next_seq() != to + 1 {
            return Ok(Err(ChainError::Missing { seq: v.next_seq() }));
        }
        let head = v.head();
        let mut root = None;
        if whole {
            if let Err(e) = v.finish(&chain.head) {
                return Ok(Err(e));
            }
            let recorded: Frontier = match read(CF_META, crate::merkle::KEY_MERKLE)? {
                Some(v) => codec::decode(&v).map_err(decode_err("meta/merkle"))?,
                None => Frontier::default(),
            };
            if recorded != tree {
                return Ok(Err(ChainError::TreeMismatch {
                    recorded: hex::encode(recorded.root()),
                    computed: hex::encode(tree.root()),
                }));
            }
            root = Some(tree.root());
        }
        Ok(Ok(ChainCheck {
            from,
            to,
            count: to + 1 - from,
            head,
            root,
        }))
    }

    /// The chain head and Merkle root of the first `size` events (`None`: all of them), for
    /// a checkpoint.
    pub fn tree_head(&self, size: Option<u64>) -> Result<TreeHead> {
        let live = self.shared.live();
        let chain = live.chain()?;
        let newest = chain.next_seq - 1;
        let size = size.unwrap_or(newest);
        if size > newest {
            return Err(Error::Invalid(format!(
                "a checkpoint of {size} events was asked for; the store holds {newest}"
            )));
        }
        let chain_head = match size {
            0 => GENESIS_HASH,
            s if s == newest => chain.head,
            s => {
                live.event(s)?
                    .ok_or_else(|| live.corrupt(format!("event {s} is missing")))?
                    .hash
            }
        };
        let root = sealpost_core::merkle::root(&crate::merkle::StoredNodes(&live), size)?;
        Ok(TreeHead {
            size,
            chain_head,
            root,
        })
    }

    /// Event `seq` and the RFC 9162 inclusion proof of it in the tree of `size` events.
    pub fn inclusion_proof(&self, seq: u64, size: u64) -> Result<(EventRecord, Vec<Hash>)> {
        let live = self.shared.live();
        let newest = live.chain()?.next_seq - 1;
        if seq == 0 || seq > size || size > newest {
            return Err(Error::Invalid(format!(
                "no proof of event {seq} in a tree of {size} events: the store holds events \
                 1..={newest}, and the event must be within the tree"
            )));
        }
        let rec = live
            .event(seq)?
            .ok_or_else(|| live.corrupt(format!("event {seq} is missing")))?;
        let path = sealpost_core::merkle::inclusion_proof(
            &crate::merkle::StoredNodes(&live),
            seq - 1,
            size,
        )?;
        Ok((rec, path))
    }

    /// The RFC 9162 consistency proof from the tree of `first` events to that of `second`.
    pub fn consistency_proof(&self, first: u64, second: u64) -> Result<Vec<Hash>> {
        let live = self.shared.live();
        let newest = live.chain()?.next_seq - 1;
        if first > second || second > newest {
            return Err(Error::Invalid(format!(
                "no consistency proof from {first} to {second} events: the store holds \
                 {newest}, and the older size must not exceed the newer"
            )));
        }
        sealpost_core::merkle::consistency_proof(&crate::merkle::StoredNodes(&live), first, second)
    }

    /// Path of the live database folder (for tests and operators).
    pub fn live_path(&self) -> PathBuf {
        self.shared.live().path.clone()
    }

    /// Root folder of the state machine.
    pub fn root(&self) -> PathBuf {
        self.shared.root().to_path_buf()
    }
}

/// One line of an inbox listing or feed: where it sits and which message and recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboxEntry {
    /// Sequence of the `Routed` event (the stream cursor).
    pub routed_seq: u64,
    pub message_id: MessageId,
    pub recipient: EndpointId,
}

/// A deadline found due.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DueDeadline {
    pub due_ms: u64,
    pub kind: u8,
    pub message_id: MessageId,
    pub recipient: EndpointId,
}

/// A key and its value as RocksDB returns them.
type KeyValue = (Box<[u8]>, Box<[u8]>);

/// The smallest key greater than every key that starts with `prefix`; `None` when there is
/// none (an empty prefix, or all 0xff).
fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut upper = prefix.to_vec();
    while let Some(last) = upper.pop() {
        if last < 0xff {
            upper.push(last + 1);
            return Some(upper);
        }
    }
    None
}

/// Read options that bound an iterator to the keys under `prefix` on both sides.
pub(crate) fn prefix_bounds(prefix: &[u8]) -> rocksdb::ReadOptions {
    let mut ro = rocksdb::ReadOptions::default();
    if !prefix.is_empty() {
        ro.set_iterate_lower_bound(prefix.to_vec());
    }
    if let Some(upper) = prefix_successor(prefix) {
        ro.set_iterate_upper_bound(upper);
    }
    ro
}

/// What [`StateView::queue_depths`] counts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueDepths {
    pub inbox_by_org: BTreeMap<String, u64>,
    pub relay_by_provider: BTreeMap<String, u64>,
    pub dead_letters: u64,
    /// Some count stopped at its scan limit (the true depth is larger).
    pub truncated: bool,
}

impl SmDb {
    /// Counts the keys under `prefix` by the group `group_of` names (keys it names none for
    /// are skipped), walking at most `keys_max` keys; true when it stopped there.
    fn group_count(
        &self,
        cf: &str,
        prefix: &[u8],
        keys_max: usize,
        group_of: impl Fn(&[u8]) -> Option<&[u8]>,
    ) -> Result<(BTreeMap<String, u64>, bool)> {
        let handle = rocks::cf(&self.db, cf);
        let ro = prefix_bounds(prefix);
        let mut out = BTreeMap::new();
        for (walked, item) in self
            .db
            .iterator_cf_opt(handle, ro, IteratorMode::Start)
            .enumerate()
        {
            if walked >= keys_max {
                return Ok((out, true));
            }
            let (k, _) = item.map_err(rocks_err(&self.path))?;
            if let Some(g) = group_of(&k) {
                *out.entry(String::from_utf8_lossy(g).into_owned())
                    .or_insert(0) += 1;
            }
        }
        Ok((out, false))
    }

    /// Up to `limit` values of the keys under `prefix`, from `start` (a full key at or after
    /// the prefix) forwards, or backwards from just before `start` when `reverse`.
    ///
    /// The iterator is bounded to the prefix on both sides, so RocksDB never walks the
    /// deletion markers of neighbouring ranges (delivered queue entries, resolved
    /// deadlines) looking for the next live key.
    fn prefix_scan(
        &self,
        cf: &str,
        prefix: &[u8],
        start: Option<&[u8]>,
        reverse: bool,
        limit: usize,
    ) -> Result<Vec<KeyValue>> {
        let handle = rocks::cf(&self.db, cf);
        let ro = prefix_bounds(prefix);
        let mode = match (start, reverse) {
            (Some(k), false) => IteratorMode::From(k, Direction::Forward),
            (None, false) => IteratorMode::Start,
            (Some(k), true) => IteratorMode::From(k, Direction::Reverse),
            (None, true) => IteratorMode::End,
        };
        let mut out = Vec::new();
        for item in self.db.iterator_cf_opt(handle, ro, mode) {
            let (k, v) = item.map_err(rocks_err(&self.path))?;
            if !k.starts_with(prefix) {
                break;
            }
            if reverse && start.is_some_and(|st| k.as_ref() >= st) {
                continue;
            }
            out.push((k, v));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }
}

/// The big-endian sequence number at the end of a view key.
pub(crate) fn seq_suffix(path: &Path, k: &[u8]) -> Result<u64> {
    k.len()
        .checked_sub(8)
        .and_then(|at| k.get(at..))
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| Error::Corrupt {
            path: path.to_path_buf(),
            detail: format!("view key {} does not end in a sequence", hex::encode(k)),
        })
}

fn decode_entry(path: &Path, k: &[u8], v: &[u8]) -> Result<InboxEntry> {
    let (message_id, recipient): (MessageId, EndpointId) =
        codec::decode(v).map_err(|e| Error::Codec {
            what: format!("inbox entry {}", hex::encode(k)),
            source: e,
        })?;
    let seq_bytes = k
        .len()
        .checked_sub(8)
        .and_then(|at| k.get(at..))
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .ok_or_else(|| Error::Corrupt {
            path: path.to_path_buf(),
            detail: format!("inbox key {} is too short", hex::encode(k)),
        })?;
    Ok(InboxEntry {
        routed_seq: u64::from_be_bytes(seq_bytes),
        message_id,
        recipient,
    })
}

impl StateView {
    /// Waits for applies: the receiver holds the next event sequence.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.applied_tx.subscribe()
    }

    /// The next event sequence: every event before it is written and readable.
    pub fn applied_next_seq(&self) -> u64 {
        *self.shared.applied_tx.borrow()
    }

    pub fn event(&self, seq: u64) -> Result<Option<EventRecord>> {
        self.shared.live().event(seq)
    }

    pub fn message(&self, id: &MessageId) -> Result<Option<MessageStatus>> {
        self.shared.live().get(CF_MESSAGES, &keys::message(id))
    }

    /// The message a sender's client message id names, if any.
    pub fn message_for_client_id(&self, org: &HpiO, cid: &str) -> Result<Option<MessageId>> {
        self.shared
            .live()
            .get(CF_IDEMPOTENCY, &keys::idempotency(org, cid))
    }

    /// An organisation's inbox (or one endpoint's): messages routed and not yet finally
    /// answered, urgent first, then oldest. At most `limit`.
    pub fn inbox(
        &self,
        org: &HpiO,
        endpoint: Option<&EndpointId>,
        limit: usize,
    ) -> Result<Vec<InboxEntry>> {
        let live = self.shared.live();
        let prefix = match endpoint {
            Some(ep) => keys::inbox_endpoint_prefix(ep),
            None => keys::inbox_org_prefix(org),
        };
        live.prefix_scan(ViewCf::Inbox.name(), &prefix, None, false, limit)?
            .iter()
            .map(|(k, v)| decode_entry(&live.path, k, v))
            .collect()
    }

    /// Messages routed to an organisation after `after_seq`, oldest first (the stream feed).
    pub fn feed(&self, org: &HpiO, after_seq: u64, limit: usize) -> Result<Vec<InboxEntry>> {
        let live = self.shared.live();
        let prefix = keys::feed(org, 0);
        let prefix = &prefix[..prefix.len() - 8];
        let start = keys::feed(org, after_seq.saturating_add(1));
        live.prefix_scan(ViewCf::Feed.name(), prefix, Some(&start), false, limit)?
            .iter()
            .map(|(k, v)| decode_entry(&live.path, k, v))
            .collect()
    }

    /// An organisation's sent messages, newest first, sent before `before_seq` (0: from
    /// the newest). At most `limit`.
    pub fn outbox(&self, org: &HpiO, before_seq: u64, limit: usize) -> Result<Vec<MessageStatus>> {
        let live = self.shared.live();
        let prefix = keys::outbox_prefix(org);
        let start = (before_seq > 0).then(|| keys::outbox(org, before_seq));
        let rows = live.prefix_scan(
            ViewCf::Outbox.name(),
            &prefix,
            start.as_deref(),
            true,
            limit,
        )?;
        let mut out = Vec::with_capacity(rows.len());
        for (_, v) in rows {
            let id = String::from_utf8_lossy(&v).to_string();
            let id = MessageId::parse(&id).map_err(|e| Error::Corrupt {
                path: live.path.clone(),
                detail: format!("outbox names a bad message id: {e}"),
            })?;
            if let Some(m) = live.get::<MessageStatus>(CF_MESSAGES, &keys::message(&id))? {
                out.push(m);
            }
        }
        Ok(out)
    }

    /// Messages with a recipient waiting for delivery, sent at or after `from_seq`, oldest
    /// first: (sent seq, id). At most `limit`.
    pub fn delivery_queue(&self, from_seq: u64, limit: usize) -> Result<Vec<(u64, MessageId)>> {
        let live = self.shared.live();
        let start = keys::queue(from_seq);
        let rows = live.prefix_scan(ViewCf::Queue.name(), &[], Some(&start), false, limit)?;
        let mut out = Vec::with_capacity(rows.len());
        for (k, v) in rows {
            let seq = <[u8; 8]>::try_from(k.as_ref())
                .map(u64::from_be_bytes)
                .map_err(|_| Error::Corrupt {
                    path: live.path.clone(),
                    detail: "a delivery queue key is not a sequence number".into(),
                })?;
            let id =
                MessageId::parse(&String::from_utf8_lossy(&v)).map_err(|e| Error::Corrupt {
                    path: live.path.clone(),
                    detail: format!("the delivery queue names a bad message id: {e}"),
                })?;
            out.push((seq, id));
        }
        Ok(out)
    }

    /// Deadlines due at or before `now_ms`, soonest first. At most `limit`.
    pub fn due_deadlines(&self, now_ms: u64, limit: usize) -> Result<Vec<DueDeadline>> {
        let live = self.shared.live();
        let cf = rocks::cf(&live.db, ViewCf::Deadlines.name());
        // Keys start with the due time: bounding the iterator at `now_ms` keeps it from
        // walking the deletion markers of deadlines resolved before they fell due.
        let mut ro = rocksdb::ReadOptions::default();
        ro.set_iterate_upper_bound(now_ms.saturating_add(1).to_be_bytes().to_vec());
        let mut out = Vec::new();
        for item in live.db.iterator_cf_opt(cf, ro, IteratorMode::Start) {
            let (k, _) = item.map_err(rocks_err(&live.path))?;
            let Some((due_ms, kind, message_id, recipient)) = keys::parse_deadline(&k) else {
                return Err(Error::Corrupt {
                    path: live.path.clone(),
                    detail: format!("deadline key {} does not parse", hex::encode(&k)),
                });
            };
            if due_ms > now_ms || out.len() >= limit {
                break;
            }
            out.push(DueDeadline {
                due_ms,
                kind,
                message_id,
                recipient,
            });
        }
        Ok(out)
    }

    /// The events of one message, in order. At most `limit`.
    pub fn message_events(&self, id: &MessageId, limit: usize) -> Result<Vec<EventRecord>> {
        self.message_events_between(id, 1, u64::MAX, limit)
    }

    /// The events of one message whose sequence numbers are in `from..=to`, in order, found
    /// through the `msg_events` view (no scan of the event store). At most `limit`: a caller
    /// reading them all asks again from the last one's sequence plus one.
    pub fn message_events_between(
        &self,
        id: &MessageId,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<EventRecord>> {
        let live = self.shared.live();
        let prefix = keys::msg_event_prefix(id);
        let start = keys::msg_event(id, from);
        let rows = live.prefix_scan(
            ViewCf::MsgEvents.name(),
            &prefix,
            Some(&start),
            false,
            limit,
        )?;
        let mut out = Vec::with_capacity(rows.len());
        for (k, _) in rows {
            let seq = seq_suffix(&live.path, &k)?;
            if seq > to {
                break;
            }
            let rec = live.event(seq)?.ok_or_else(|| Error::Corrupt {
                path: live.path.clone(),
                detail: format!("message {id} names event {seq}, which is missing"),
            })?;
            out.push(rec);
        }
        Ok(out)
    }

    /// Hands `each` the events of one message whose sequence numbers are in `from..=to`, in
    /// order, read from the `msg_events` view `page_events` at a time (so a replay of one
    /// message's history reads that history alone); stops early when `each` returns false.
    pub fn for_each_message_event(
        &self,
        id: &MessageId,
        (from, to): (u64, u64),
        page_events: usize,
        mut each: impl FnMut(EventRecord) -> bool,
    ) -> Result<()> {
        let page_events = page_events.max(1);
        let mut next = from;
        // Every full page moves `next` past its last event and sequence numbers only grow,
        // so this ends after the message's last event in the range.
        while next <= to {
            let page = self.message_events_between(id, next, to, page_events)?;
            let full = page.len() == page_events;
            let Some(last) = page.last().map(|r| r.seq) else {
                return Ok(());
            };
            for rec in page {
                if !each(rec) {
                    return Ok(());
                }
            }
            if !full || last >= to {
                return Ok(());
            }
            next = last + 1;
        }
        Ok(())
    }

    /// A federation cursor (see `sealpost_core::federation::cursor`).
    pub fn cursor(&self, kind: u8, provider: &str) -> Result<Option<u64>> {
        self.shared.live().cursor(kind, provider)
    }

    /// What the live state-machine database (the event store and the views) holds on disk
    /// and in memory. Snapshots are left out: their files are hard links to the live
    /// database's, so counting them would count the same blocks twice.
    pub fn disk_usage(&self) -> Result<crate::rocks::DiskUsage> {
        let live = self.shared.live();
        crate::rocks::disk_usage(&live.db, &live.path, SM_CFS)
    }

    /// Queue depths for the metrics listener: undelivered inbox entries per organisation,
    /// messages waiting per relay destination, and dead letters. Each count walks keys, at
    /// most `scan_keys_max` per column family; `truncated` says a count stopped there.
    pub fn queue_depths(&self, scan_keys_max: usize) -> Result<QueueDepths> {
        let live = self.shared.live();
        let mut out = QueueDepths::default();
        // `inbox` keys: b'o', organisation, rank, sequence (per organisation); b'e' ... (per
        // endpoint, not counted again). Organisation ids are fixed-width HPI-Os.
        let org_len = sealpost_core::ids::IDENTIFIER_DIGITS;
        let (n, t) = live.group_count(ViewCf::Inbox.name(), b"o", scan_keys_max, |k| {
            k.get(1..1 + org_len)
        })?;
        out.inbox_by_org = n;
        out.truncated |= t;
        // `relay_queue` keys: provider, 0, sequence.
        let (n, t) = live.group_count(ViewCf::RelayQueue.name(), b"", scan_keys_max, |k| {
            k.iter().position(|b| *b == 0).map(|i| &k[..i])
        })?;
        out.relay_by_provider = n;
        out.truncated |= t;
        let (n, t) = live.group_count(ViewCf::DeadLetters.name(), b"", scan_keys_max, |_| {
            Some(&b""[..])
        })?;
        out.dead_letters = n.into_values().next().unwrap_or(0);
        out.truncated |= t;
        Ok(out)
    }

    /// A copy of the newest snapshot for an online backup, kept until the result is dropped.
    pub fn take_backup(&self) -> Result<snapshot::BackupFiles> {
        snapshot::take_backup(&self.shared.root)
    }

    /// Messages waiting to be relayed to `provider`, oldest first: (sent seq, id).
    pub fn relay_queue(&self, provider: &str, limit: usize) -> Result<Vec<(u64, MessageId)>> {
        let live = self.shared.live();
        let prefix = fed_keys::relay_prefix(provider);
        let rows = live.prefix_scan(ViewCf::RelayQueue.name(), &prefix, None, false, limit)?;
        rows.iter()
            .map(|(k, v)| {
                let seq = seq_suffix(&live.path, k)?;
                let id =
                    MessageId::parse(&String::from_utf8_lossy(v)).map_err(|e| Error::Corrupt {
                        path: live.path.clone(),
                        detail: format!("the relay queue names a bad message id: {e}"),
                    })?;
                Ok((seq, id))
            })
            .collect()
    }

    /// Notifications owed to `provider` for final events after `after_seq`, oldest first.
    pub fn notifications(
        &self,
        provider: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Notification>> {
        let live = self.shared.live();
        let prefix = fed_keys::relay_prefix(provider);
        let start = fed_keys::notify(provider, after_seq.saturating_add(1));
        let rows = live.prefix_scan(ViewCf::Notify.name(), &prefix, Some(&start), false, limit)?;
        rows.iter()
            .map(|(k, v)| {
                codec::decode(v).map_err(|e| Error::Codec {
                    what: format!("notification {}", hex::encode(k)),
                    source: e,
                })
            })
            .collect()
    }

    /// This provider's own directory events after `after_seq` (what peers pull), oldest
    /// first.
    pub fn directory_log(&self, after_seq: u64, limit: usize) -> Result<Vec<EventRecord>> {
        let live = self.shared.live();
        let start = fed_keys::dir_log(after_seq.saturating_add(1));
        let rows = live.prefix_scan(ViewCf::DirLog.name(), &[], Some(&start), false, limit)?;
        let mut out = Vec::with_capacity(rows.len());
        for (k, _) in rows {
            let seq = seq_suffix(&live.path, &k)?;
            let rec = live.event(seq)?.ok_or_else(|| Error::Corrupt {
                path: live.path.clone(),
                detail: format!("the directory log names event {seq}, which is missing"),
            })?;
            out.push(rec);
        }
        Ok(out)
    }

    /// Final outcomes of `org`'s messages after `after_seq`, oldest first: (sequence of
    /// the final event, message id, recipient).
    pub fn outcomes(
        &self,
        org: &HpiO,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<(u64, MessageId, EndpointId)>> {
        let live = self.shared.live();
        let prefix = fed_keys::relay_prefix(org.as_str());
        let start = fed_keys::outcome(org, after_seq.saturating_add(1));
        let rows =
            live.prefix_scan(ViewCf::Outcomes.name(), &prefix, Some(&start), false, limit)?;
        rows.iter()
            .map(|(k, v)| {
                let seq = seq_suffix(&live.path, k)?;
                let (id, ep): (MessageId, EndpointId) =
                    codec::decode(v).map_err(|e| Error::Codec {
                        what: format!("outcome {}", hex::encode(k)),
                        source: e,
                    })?;
                Ok((seq, id, ep))
            })
            .collect()
    }

    /// Failed recipients, newest first, failed before `before_seq` (0: from the newest):
    /// (sequence of the `Failed` event, message id, recipient).
    pub fn dead_letters(
        &self,
        before_seq: u64,
        limit: usize,
    ) -> Result<Vec<(u64, MessageId, EndpointId)>> {
        let live = self.shared.live();
        let start = (before_seq > 0).then(|| fed_keys::dead_letter(before_seq));
        let rows = live.prefix_scan(
            ViewCf::DeadLetters.name(),
            &[],
            start.as_deref(),
            true,
            limit,
        )?;
        rows.iter()
            .map(|(k, v)| {
                let seq = seq_suffix(&live.path, k)?;
                let (id, ep): (MessageId, EndpointId) =
                    codec::decode(v).map_err(|e| Error::Codec {
                        what: format!("dead letter {}", hex::encode(k)),
                        source: e,
                    })?;
                Ok((seq, id, ep))
            })
            .collect()
    }

    /// An organisation's wrapped private keys for a key id.
    /// The public keys `org` published under `key_id`, current or rotated out.
    pub fn published_keys(&self, org: &HpiO, key_id: &str) -> Result<Option<PublicKeys>> {
        self.shared
            .live()
            .get(ViewCf::Keystore.name(), &keys::published_keys(org, key_id))
    }

    /// The provider-held (wrapped) key sets in the keystore, in key order: organisation, key
    /// id and wrapped blob; at most `sets_max` of them, looking at most `keys_scanned_max`
    /// keystore entries (an organisation has published keys besides any wrapped ones).
    /// The second value says whether more key sets may remain (past `sets_max`, or in
    /// entries left unscanned).
    pub fn wrapped_key_sets(
        &self,
        keys_scanned_max: usize,
        sets_max: usize,
    ) -> Result<(Vec<WrappedKeySet>, bool)> {
        let live = self.shared.live();
        let cf = rocks::cf(&live.db, ViewCf::Keystore.name());
        let mut out = Vec::new();
        for (scanned, item) in live.db.iterator_cf(cf, IteratorMode::Start).enumerate() {
            if scanned >= keys_scanned_max {
                return Ok((out, true));
            }
            let (k, v) = item.map_err(rocks_err(&live.path))?;
            let Some((org, key_id)) = keys::wrapped_keys_of(&k) else {
                continue; // published keys
            };
            if out.len() >= sets_max {
                return Ok((out, true));
            }
            out.push((org, key_id.to_string(), v.to_vec()));
        }
        Ok((out, false))
    }

    pub fn wrapped_keys(&self, org: &HpiO, key_id: &str) -> Result<Option<Vec<u8>>> {
        let live = self.shared.live();
        live.db
            .get_cf(
                rocks::cf(&live.db, ViewCf::Keystore.name()),
                keys::keystore(org, key_id),
            )
            .map_err(rocks_err(&live.path))
    }
}

impl StateView {
    /// The live database (for modules of this crate that read it directly).
    pub(crate) fn shared_live(&self) -> Arc<SmDb> {
        self.shared.live()
    }

    /// Holds this node's applies until the guard is dropped (entries are still appended
    /// to the Raft log meanwhile): for tests of a follower whose views lag behind the log.
    #[doc(hidden)]
    pub fn hold_applies_for_test(&self) -> std::sync::MutexGuard<'_, ()> {
        self.apply_gate()
    }

    /// Stops applies while held (for a view repair).
    pub(crate) fn apply_gate(&self) -> std::sync::MutexGuard<'_, ()> {
        self.shared
            .apply_gate
            .lock()
            .expect("the apply gate is never held across a panic")
    }

    /// A fresh folder for a snapshot being received from the leader.
    pub fn incoming_snapshot_dir(&self) -> Result<PathBuf> {
        snapshot::incoming_dir(self.shared.root())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeSet;

    use sealpost_core::ids::Ihi;

    use openraft::{CommittedLeaderId, EntryPayload, Membership};
    use sealpost_core::command::{Command, Proposal};
    use sealpost_core::directory::{AuState, OrganisationSpec, PublicKeys};

    use super::*;

    pub(crate) fn org(serial: u64) -> Command {
        Command::RegisterOrganisation(OrganisationSpec {
            hpio: HpiO::from_serial(serial),
            name: format!("Clinic {serial}"),
            suburb: "Carlton".into(),
            state: AuState::Vic,
            postcode: "3053".into(),
            keys: PublicKeys {
                key_id: "k1".into(),
                encryption: [7; 32],
                signing: [9; 32],
            },
        })
    }

    pub(crate) fn entry(index: u64, commands: Vec<Command>) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Batch {
                ts_ms: 1_700_000_000_000 + index,
                proposals: commands
                    .into_iter()
                    .map(|command| Proposal {
                        actor: "test".into(),
                        command,
                    })
                    .collect(),
            }),
        }
    }

    /// A state machine with `n` organisations registered, one per entry.
    pub(crate) fn with_events(root: &Path, n: u64) -> StateMachine {
        with_entries(
            root,
            (0..n).map(|i| entry(i + 2, vec![org(i + 1)])).collect(),
        )
    }

    /// A state machine that applied a one-voter membership as entry 1, then `entries`.
    pub(crate) fn with_entries(root: &Path, entries: Vec<Entry>) -> StateMachine {
        let sm = StateMachine::open(root, true, true).expect("open");
        let n = entries.len();
        let mut all = vec![Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), 1),
            payload: EntryPayload::Membership(Membership::new(vec![BTreeSet::from([1u64])], None)),
        }];
        all.extend(entries);
        let out = sm.apply_entries(all).expect("apply");
        assert_eq!(out.len(), n + 1);
        sm
    }

    #[test]
    fn prefix_successor_bounds_exactly_the_prefix() {
        assert_eq!(prefix_successor(b""), None);
        assert_eq!(prefix_successor(&[0xff, 0xff]), None);
        assert_eq!(prefix_successor(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_successor(&[1, 0xff]), Some(vec![2]));
        // Every key with the prefix sorts below the successor, the successor itself not.
        let upper = prefix_successor(&[7, 0xff]).expect("successor");
        assert!([7u8, 0xff, 0xff, 0xff].as_slice() < upper.as_slice());
        assert!(upper.as_slice() <= [8u8].as_slice());
    }

    /// Every view column family the core writes to exists in the store.
    #[test]
    fn every_view_column_family_is_opened() {
        for cf in ViewCf::ALL {
            assert!(SM_CFS.contains(&cf.name()), "{} is not opened", cf.name());
        }
        let dir = tempfile::tempdir().expect("tmp");
        let sm = StateMachine::open(dir.path(), true, true).expect("open");
        let live = sm.shared.live();
        for cf in ViewCf::ALL {
            assert!(live.db.cf_handle(cf.name()).is_some(), "{}", cf.name());
        }
    }

    /// Applying writes events and views together; a rejected command writes nothing.
    #[test]
    fn apply_writes_events_and_views_and_rejections_write_nothing() {
        let dir = tempfile::tempdir().expect("tmp");
        let sm = with_events(dir.path(), 3);
        let view = sm.view();
        let before = view.status().expect("status");
        assert_eq!(before.event_count, 3);
        assert!(
            view.organisation(&HpiO::from_serial(2))
                .expect("read")
                .is_some()
        );
        // A duplicate in the same batch as a fresh registration: one applied, one refused.
        let out = sm
            .apply_entries(vec![entry(10, vec![org(4), org(4)])])
            .expect("apply");
        let outcomes = &out[0].outcomes;
        assert!(matches!(
            outcomes[0],
            Outcome::Applied {
                first_seq: 4,
                count: 1
            }
        ));
        assert!(matches!(
            outcomes[1],
            Outcome::Rejected(sealpost_core::Rejection::AlreadyExists(_))
        ));
        let after = view.status().expect("status");
        assert_eq!(after.event_count, 4);
        assert_eq!(view.verify_chain().expect("walk"), Ok(4));
    }

    /// Every stored event is covered by the chain: flipping any single byte of any stored
    /// record (through RocksDB, so its own checksums stay valid) is detected.
    #[test]
    fn a_changed_byte_in_any_stored_event_is_detected() {
        let dir = tempfile::tempdir().expect("tmp");
        let sm = with_events(dir.path(), 4);
        let view = sm.view();
        assert_eq!(view.verify_chain().expect("walk"), Ok(4));
        let live = sm.shared.live();
        let cf = rocks::cf(&live.db, CF_EVENTS);
        for seq in 1..=4u64 {
            let key = seq.to_be_bytes();
            let original = live.db.get_cf(cf, key).expect("get").expect("present");
            // Every byte position of this record, each flipped on its own.
            for pos in 0..original.len() {
                let mut bad = original.clone();
                bad[pos] ^= 0x01;
                live.db.put_cf(cf, key, &bad).expect("put");
                let verdict = view.verify_chain().expect("walk");
                assert!(
                    verdict.is_err(),
                    "flip at byte {pos} of event {seq} went unnoticed"
                );
            }
            live.db.put_cf(cf, key, &original).expect("restore");
        }
        assert_eq!(view.verify_chain().expect("walk"), Ok(4));
    }

    fn copy_tree(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).expect("mkdir");
        for e in std::fs::read_dir(from).expect("read") {
            let e = e.expect("entry");
            let target = to.join(e.file_name());
            if e.path().is_dir() {
                copy_tree(&e.path(), &target);
            } else {
                std::fs::copy(e.path(), target).expect("copy");
            }
        }
    }

    /// Without the WAL (the default), a crash loses only what was not yet flushed, and
    /// always at a whole apply: the image opens at the last flush with its last-applied id
    /// and chain head agreeing, and re-applying the rest of the log gives the same chain.
    /// A clean close keeps everything.
    #[test]
    fn an_unlogged_crash_image_reapplies_to_the_same_chain() {
        let dir = tempfile::tempdir().expect("tmp");
        let root = dir.path().join("sm");
        let sm = StateMachine::open(&root, true, false).expect("open");
        let mut first = vec![Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), 1),
            payload: EntryPayload::Membership(Membership::new(vec![BTreeSet::from([1u64])], None)),
        }];
        first.extend((0..5).map(|i| entry(i + 2, vec![org(i + 1)])));
        sm.apply_entries(first).expect("apply");
        {
            let live = sm.shared.live();
            let cfs: Vec<_> = SM_CFS.iter().map(|n| rocks::cf(&live.db, n)).collect();
            live.db
                .flush_cfs_opt(&cfs, &rocksdb::FlushOptions::default())
                .expect("flush");
        }
        let rest: Vec<Entry> = (5..9).map(|i| entry(i + 2, vec![org(i + 1)])).collect();
        sm.apply_entries(rest.clone()).expect("apply");
        let full = sm.view().status().expect("status");
        assert_eq!(full.event_count, 9);

        // The crash image: the files on disk while the database is open.
        let image = dir.path().join("image");
        copy_tree(&root, &image);
        drop(sm);

        let crashed = StateMachine::open(&image, false, false).expect("the image opens");
        let at_flush = crashed.view().status().expect("status");
        assert_eq!(at_flush.event_count, 5, "only the flushed applies survive");
        assert_eq!(at_flush.last_applied.map(|l| l.index), Some(6));
        crashed.apply_entries(rest).expect("re-apply");
        let replayed = crashed.view().status().expect("status");
        assert_eq!(replayed.event_count, 9);
        assert_eq!(replayed.chain_head, full.chain_head);
        assert_eq!(crashed.view().verify_chain().expect("walk"), Ok(9));

        // A clean close flushes the memtables: nothing is lost.
        let reopened = StateMachine::open(&root, false, false).expect("reopen");
        let after_close = reopened.view().status().expect("status");
        assert_eq!(after_close.event_count, 9);
        assert_eq!(after_close.chain_head, full.chain_head);
    }

    /// The stored tree gives the same roots and proofs as a tree built in memory from the
    /// events, at every size; a store written before the tree existed gets it built at
    /// start-up; a damaged node is caught by the whole-store walk.
    #[test]
    fn the_stored_merkle_tree_matches_the_events() {
        use sealpost_core::merkle::{self, MemTree};
        let dir = tempfile::tempdir().expect("tmp");
        let root = dir.path().join("sm");
        let sm = with_events(&root, 45);
        let view = sm.view();
        let recs = view.events(1, 100).expect("events");
        let mut mem = MemTree::new();
        for r in &recs {
            mem.push(&r.hash);
        }
        let newest = view.tree_head(None).expect("head");
        assert_eq!((newest.size, newest.root), (45, mem.root()));
        assert_eq!(newest.chain_head, recs[44].hash);
        for size in [1u64, 2, 7, 16, 33, 45] {
            let head = view.tree_head(Some(size)).expect("head");
            assert_eq!(
                head.root,
                merkle::root(&mem, size).expect("mem"),
                "size {size}"
            );
            assert_eq!(head.chain_head, recs[size as usize - 1].hash);
            for seq in [1, size / 2 + 1, size] {
                let (rec, path) = view.inclusion_proof(seq, size).expect("proof");
                assert_eq!(rec.seq, seq);
                merkle::verify_inclusion(
                    &merkle::leaf_hash(&rec.hash),
                    seq - 1,
                    size,
                    &path,
                    &head.root,
                )
                .expect("verifies");
            }
            let path = view.consistency_proof(size, 45).expect("proof");
            merkle::verify_consistency(size, 45, &head.root, &newest.root, &path)
                .expect("consistent");
        }
        assert!(view.tree_head(Some(46)).is_err());
        assert!(view.inclusion_proof(0, 45).is_err());
        assert!(view.inclusion_proof(46, 45).is_err());
        assert!(view.consistency_proof(30, 20).is_err());
        let check = view
            .verify_chain_range(1, 0)
            .expect("walk")
            .expect("verifies");
        assert_eq!((check.count, check.root), (45, Some(mem.root())));
        let part = view
            .verify_chain_range(10, 20)
            .expect("walk")
            .expect("verifies");
        assert_eq!(
            (part.from, part.to, part.count, part.head),
            (10, 20, 11, recs[19].hash)
        );
        assert!(view.verify_chain_range(40, 50).is_err());

        // Damage one stored node: the walk of the whole store reports the mismatch.
        {
            let live = sm.shared.live();
            let meta = rocks::cf(&live.db, CF_META);
            let mut f: Frontier = live.frontier().expect("read").expect("present");
            f.peaks[0][0] ^= 1;
            live.db
                .put_cf(meta, crate::merkle::KEY_MERKLE, codec::encode(&f))
                .expect("put");
        }
        assert!(matches!(
            view.verify_chain().expect("walk"),
            Err(ChainError::TreeMismatch { .. })
        ));

        // A store without a tree (as written before it existed) gets it at start-up.
        {
            let live = sm.shared.live();
            live.db
                .delete_cf(rocks::cf(&live.db, CF_META), crate::merkle::KEY_MERKLE)
                .expect("del");
            let cf = rocks::cf(&live.db, crate::merkle::CF_MERKLE);
            let keys: Vec<_> = live
                .db
                .iterator_cf(cf, IteratorMode::Start)
                .map(|i| i.expect("key").0)
                .collect();
            assert!(!keys.is_empty());
            for k in keys {
                live.db.delete_cf(cf, k).expect("del");
            }
        }
        drop(view);
        drop(sm);
        let reopened = StateMachine::open(&root, false, true).expect("reopen builds the tree");
        let head = reopened.view().tree_head(None).expect("head");
        assert_eq!(head.root, mem.root());
        assert_eq!(reopened.view().verify_chain().expect("walk"), Ok(45));
    }

    /// A send to organisation 2's desk with a 200-byte payload (shapes only: decide does
    /// not open envelopes).
    fn send(n: u32, created_ms: u64) -> Command {
        send_about(n, created_ms, None)
    }

    /// [`send`], about `patient`.
    fn send_about(n: u32, created_ms: u64, patient: Option<Ihi>) -> Command {
        use sealpost_core::message::{
            ENVELOPE_VERSION, Envelope, EnvelopeHeader, Priority, SealedCopy, Sender,
            payload_digest,
        };
        let to = EndpointId::service(HpiO::from_serial(2), "desk").expect("ep");
        Command::Send {
            envelope: Box::new(Envelope {
                header: EnvelopeHeader {
                    version: ENVELOPE_VERSION,
                    message_id: MessageId::new(
                        "prov-a",
                        &format!("01890a5d-ac96-774b-bcce-{:012x}", n),
                    )
                    .expect("id"),
                    sender: Sender {
                        org: HpiO::from_serial(1),
                        practitioner: None,
                    },
                    sender_key_id: "k1".into(),
                    recipients: vec![to.clone()],
                    payload_type: sealpost_core::directory::PayloadType::Text,
                    priority: Priority::Routine,
                    patient,
                    payload_digest: payload_digest(b"x"),
                    payload_bytes: 200,
                    created_ms,
                    deliver_by_ms: created_ms + 1_000_000,
                },
                signature: vec![3; 64],
                sealed: vec![SealedCopy {
                    org: to.org.clone(),
                    key_id: "k1".into(),
                    enc: vec![4; 32],
                    ciphertext: vec![n as u8; 216],
                }],
            }),
            client_message_id: format!("c{n}"),
        }
    }

    /// Organisations 1 and 2, organisation 2's desk accepting text, then `n` sends to it
    /// from organisation 1, one per entry (entries 2, 3, then 4...).
    fn desk_and_sends(n: u32) -> Vec<Entry> {
        use sealpost_core::directory::{EndpointSpec, PayloadType};
        let desk = EndpointSpec {
            id: EndpointId::service(HpiO::from_serial(2), "desk").expect("ep"),
            display_name: "Desk".into(),
            specialty: "General".into(),
            payload_types: vec![PayloadType::Text],
        };
        let mut entries = vec![
            entry(2, vec![org(1), org(2)]),
            entry(3, vec![Command::PublishEndpoint(desk)]),
        ];
        entries.extend((0..n).map(|i| entry(4 + u64::from(i), vec![send(i, 1_700_000_000_000)])));
        entries
    }

    /// A patient's history is their messages' events, from the patient index and each
    /// message's timeline: exactly those a scan keeps, in order, for any range.
    #[test]
    fn a_patient_history_is_read_through_the_indexes() {
        use sealpost_core::command::DeliveryVerdict;
        let (p, q) = (Ihi::from_serial(31), Ihi::from_serial(32));
        let t = 1_700_000_000_000;
        let mut entries = desk_and_sends(0);
        entries.push(entry(4, vec![send_about(0, t, Some(p.clone()))]));
        entries.push(entry(
            5,
            vec![send_about(1, t, Some(q.clone())), send(2, t)],
        ));
        entries.push(entry(6, vec![send_about(3, t, Some(p.clone()))]));
        let id = |n: u32| {
            MessageId::new("prov-a", &format!("01890a5d-ac96-774b-bcce-{n:012x}")).expect("id")
        };
        let desk = EndpointId::service(HpiO::from_serial(2), "desk").expect("ep");
        let deliver = |n: u32| Command::Deliver {
            message_id: id(n),
            recipient: desk.clone(),
            verdict: DeliveryVerdict::Route {
                ack_by_ms: 1_800_000_000_000,
            },
        };
        entries.push(entry(7, vec![deliver(0), deliver(1)]));
        entries.push(entry(8, vec![deliver(3), deliver(2)]));
        let dir = tempfile::tempdir().expect("tmp");
        let sm = StateMachine::open(dir.path(), true, true).expect("open");
        sm.apply_entries(entries).expect("apply");
        let view = sm.view();
        let all = view.events(1, 1_000).expect("events");
        let newest = all.last().expect("events").seq;
        let about = |ihi: &Ihi, (from, to): (u64, u64)| -> Vec<u64> {
            let ids: Vec<MessageId> = [0, 1, 2, 3]
                .into_iter()
                .filter(|&n| match (n, ihi) {
                    (0 | 3, x) => x == &p,
                    (1, x) => x == &q,
                    _ => false,
                })
                .map(id)
                .collect();
            all.iter()
                .filter(|r| r.seq >= from && r.seq <= to)
                .filter(|r| r.event.message_id().is_some_and(|m| ids.contains(m)))
                .map(|r| r.seq)
                .collect()
        };
        assert_eq!(
            about(&p, (1, newest)).len(),
            6,
            "two messages, three events each"
        );
        for ihi in [&p, &q, &Ihi::from_serial(33)] {
            for range in [(1, newest), (1, 4), (5, newest), (newest, newest), (6, 2)] {
                assert_eq!(
                    view.patient_event_seqs(ihi, range).expect("read"),
                    Some(about(ihi, range)),
                    "{ihi}, {range:?}"
                );
            }
        }
    }

    /// One message's events come from its timeline view: exactly those a scan of the whole
    /// event store finds for it, in order, for any range and page size, and `each` can stop.
    #[test]
    fn a_message_history_is_read_from_its_timeline_in_pages() {
        use sealpost_core::command::DeliveryVerdict;
        let mut entries = desk_and_sends(2);
        let first = MessageId::new("prov-a", "01890a5d-ac96-774b-bcce-000000000000").expect("id");
        let desk = EndpointId::service(HpiO::from_serial(2), "desk").expect("ep");
        let deliver = Command::Deliver {
            message_id: first.clone(),
            recipient: desk.clone(),
            verdict: DeliveryVerdict::Route {
                ack_by_ms: 1_800_000_000_000,
            },
        };
        let fetch = || Command::Fetch {
            message_id: first.clone(),
            recipient: desk.clone(),
        };
        // The first message's events interleaved with the other messages' sends.
        entries.push(entry(6, vec![deliver, send(7, 1_700_000_000_000)]));
        entries.push(entry(7, vec![fetch(), send(8, 1_700_000_000_000), fetch()]));
        entries.push(entry(8, vec![fetch()]));
        let dir = tempfile::tempdir().expect("tmp");
        let sm = StateMachine::open(dir.path(), true, true).expect("open");
        sm.apply_entries(entries).expect("apply");
        let view = sm.view();
        let all = view.events(1, 1_000).expect("events");
        let scanned = |from: u64, to: u64| -> Vec<u64> {
            all.iter()
                .filter(|r| r.seq >= from && r.seq <= to && r.event.message_id() == Some(&first))
                .map(|r| r.seq)
                .collect()
        };
        let newest = all.last().expect("events").seq;
        assert_eq!(
            scanned(1, newest).len(),
            6,
            "sent, decrypted, routed and three fetches"
        );
        for page in [1, 2, 4, 100] {
            for (from, to) in [
                (1, newest),
                (1, 1),
                (4, 7),
                (5, newest),
                (newest, newest),
                (9, 3),
            ] {
                let mut read = Vec::new();
                view.for_each_message_event(&first, (from, to), page, |r| {
                    assert_eq!(r.event.message_id(), Some(&first));
                    read.push(r.seq);
                    true
                })
                .expect("read");
                assert_eq!(read, scanned(from, to), "page {page}, {from}..={to}");
            }
        }
        let mut taken = 0;
        view.for_each_message_event(&first, (1, newest), 2, |_| {
            taken += 1;
            taken < 3
        })
        .expect("read");
        assert_eq!(taken, 3, "stops when asked");
    }

    /// A payload drop rewrites exactly the old sends' ciphertexts, keeps every hash, and
    /// gives the same event store whether a replica applied the entries before it in the
    /// same call or one by one.
    #[test]
    fn payload_drops_are_deterministic_and_keep_the_chain() {
        // Entry timestamps are 1_700_000_000_000 + index; the sends are entries 4...
        let mut entries = desk_and_sends(6);
        // Sends in entries 4..=7 are before the cut-off; 8 and 9 are not.
        let drop = entry(
            10,
            vec![Command::DropPayloads {
                before_ts_ms: 1_700_000_000_008,
                through_seq: 100,
            }],
        );
        entries.push(drop);
        let dir = tempfile::tempdir().expect("tmp");
        let together = StateMachine::open(&dir.path().join("a"), true, true).expect("open");
        let out = together.apply_entries(entries.clone()).expect("apply");
        assert!(matches!(
            out.last().expect("drop").outcomes[0],
            Outcome::Applied { .. }
        ));
        let one_by_one = StateMachine::open(&dir.path().join("b"), true, true).expect("open");
        for e in entries {
            one_by_one.apply_entries(vec![e]).expect("apply");
        }
        let events = |sm: &StateMachine| sm.view().events(1, 100).expect("events");
        let (a, b) = (events(&together), events(&one_by_one));
        assert_eq!(a, b, "the same event store, byte for byte");
        let dropped: Vec<u64> = a
            .iter()
            .filter_map(|r| match &r.event {
                Event::Sent { envelope, .. } => Some((r.seq, envelope.payload_dropped())),
                _ => None,
            })
            .filter(|(_, d)| *d)
            .map(|(s, _)| s)
            .collect();
        assert_eq!(
            dropped,
            vec![4, 5, 6, 7],
            "the sends stamped before the cut-off"
        );
        for sm in [&together, &one_by_one] {
            assert_eq!(sm.view().verify_chain().expect("walk"), Ok(10));
            let report = sm.view().rebuild_views_check().expect("rebuild");
            assert!(report.all_equal());
        }
    }

    /// A store written before the message index existed gets it built at start-up, equal
    /// to what the fold writes; search then finds its messages.
    #[test]
    fn the_message_index_is_built_for_older_stores() {
        let dir = tempfile::tempdir().expect("tmp");
        let root = dir.path().join("sm");
        let sm = StateMachine::open(&root, true, true).expect("open");
        sm.apply_entries(desk_and_sends(5)).expect("apply");
        let all = crate::MessageQuery::default();
        assert_eq!(
            sm.view()
                .search_messages(&all)
                .expect("search")
                .messages
                .len(),
            5
        );
        {
            let live = sm.shared.live();
            let cf = rocks::cf(&live.db, "msg_index");
            let keys: Vec<_> = live
                .db
                .iterator_cf(cf, IteratorMode::Start)
                .map(|i| i.expect("key").0)
                .collect();
            assert_eq!(
                keys.len(),
                5 * 3,
                "by time, sender and recipient organisation"
            );
            for k in keys {
                live.db.delete_cf(cf, k).expect("del");
            }
            live.db
                .delete_cf(rocks::cf(&live.db, CF_META), b"msg_index_built")
                .expect("del");
        }
        assert!(
            sm.view()
                .search_messages(&all)
                .expect("search")
                .messages
                .is_empty()
        );
        drop(sm);
        let reopened = StateMachine::open(&root, false, true).expect("reopen builds the index");
        assert_eq!(
            reopened
                .view()
                .search_messages(&all)
                .expect("search")
                .messages
                .len(),
            5
        );
        assert!(
            reopened
                .view()
                .rebuild_views_check()
                .expect("rebuild")
                .all_equal()
        );
    }

    /// A crash image whose WAL has a damaged record refuses to open, with an error that
    /// says the store is corrupt; the intact image opens and keeps every event.
    #[test]
    fn a_corrupted_wal_refuses_to_start() {
        let dir = tempfile::tempdir().expect("tmp");
        let root = dir.path().join("sm");
        let sm = with_events(&root, 20);
        // Copy the folder while the database is open: the image a crash would leave, with
        // the events still only in the WAL.
        let intact = dir.path().join("intact");
        let damaged = dir.path().join("damaged");
        copy_tree(&root, &intact);
        copy_tree(&root, &damaged);
        drop(sm);
        let reopened = StateMachine::open(&intact, false, true).expect("intact image opens");
        assert_eq!(reopened.view().status().expect("status").event_count, 20);
        drop(reopened);
        let wal = std::fs::read_dir(damaged.join("db-1"))
            .expect("read")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
            .expect("a WAL file");
        let mut bytes = std::fs::read(&wal).expect("read wal");
        assert!(bytes.len() > 1000, "the events are in the WAL");
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(&wal, bytes).expect("write wal");
        let err = StateMachine::open(&damaged, false, true)
            .err()
            .expect("must refuse");
        assert!(err.is_corrupt(), "{err}");
        assert!(err.to_string().contains("refuses to start"), "{err}");
    }

    /// A state machine whose recorded chain head does not match its newest event refuses
    /// to start.
    #[test]
    fn a_lost_tail_event_refuses_to_start() {
        let dir = tempfile::tempdir().expect("tmp");
        let root = dir.path().join("sm");
        let sm = with_events(&root, 3);
        {
            let live = sm.shared.live();
            let cf = rocks::cf(&live.db, CF_EVENTS);
            live.db.delete_cf(cf, 3u64.to_be_bytes()).expect("delete");
        }
        drop(sm);
        let err = StateMachine::open(&root, false, true)
            .err()
            .expect("must refuse");
        assert!(err.is_corrupt(), "{err}");
        assert!(err.to_string().contains("event 3"), "{err}");
    }
}
