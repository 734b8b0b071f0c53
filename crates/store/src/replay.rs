//! Replaying the event store fast and in order: one thread reads pages of stored records
//! from a RocksDB snapshot, `REPLAY_DECODE_WORKERS` threads decode them and turn each record
//! into what the caller streams (`map`, with per-worker state such as a cache), and the
//! calling thread hands the results on strictly in sequence order. Every queue is bounded,
//! so memory stays at a few pages however large the store; the caller stops the whole
//! pipeline by returning false. Also what lets a replay skip that scan: the part of a range
//! inside a time window (a binary search on the events' never-decreasing timestamps) and the
//! events of one patient's messages (through the patient index and the messages' timelines).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, sync_channel};

use rocksdb::{Direction, IteratorMode};
use sealpost_core::event::EventRecord;
use sealpost_core::ids::Ihi;
use sealpost_core::messaging::keys;
use sealpost_core::view::ViewCf;

use crate::error::{Error, Result};
use crate::rocks::{self, rocks_err};
use crate::state_machine::{CF_EVENTS, StateView, prefix_bounds, seq_suffix};

/// Records per page handed to a decoding worker.
pub const REPLAY_PAGE_RECORDS: usize = 1024;
/// Threads decoding pages (about the cores a node has to spare for a replay).
pub const REPLAY_DECODE_WORKERS: usize = 2;
/// Bytes RocksDB reads ahead of the replay's iterator.
pub const REPLAY_READAHEAD_BYTES: usize = 4 * 1024 * 1024;
/// Messages about one patient a replay filtered by patient looks up through the indexes
/// at most; beyond that it scans.
pub const REPLAY_PATIENT_MESSAGES_MAX: usize = 100_000;
/// Events of those messages it gathers at most (their sequence numbers, 8 bytes each);
/// beyond that it scans.
pub const REPLAY_PATIENT_EVENTS_MAX: usize = 1_000_000;
/// Pages read ahead of the decoders, and decoded pages waiting to be handed on.
const REPLAY_PAGES_QUEUED_MAX: usize = 4;

type RawPage = (u64, Vec<(Box<[u8]>, Box<[u8]>)>);

impl StateView {
    /// The part of `from..=to` whose events fall in the time window `since_ms..=until_ms`
    /// (0: no bound on that side), found by binary search: events are stored in sequence
    /// order with never-decreasing timestamps, so a window of a long history is read alone
    /// instead of filtered out of a scan from the start. `from > to` in the answer: no event
    /// is in the window. A missing event (the search relies on a dense store) answers the
    /// range unchanged, which a filtered scan then narrows anyway.
    pub fn narrow_to_window(
        &self,
        (from, to): (u64, u64),
        since_ms: u64,
        until_ms: u64,
    ) -> Result<(u64, u64)> {
        let (mut from, mut to) = (from.max(1), to);
        if from > to {
            return Ok((from, to));
        }
        let live = self.shared_live();
        // The first sequence number in `lo..hi` whose event's time is not `before` the
        // bound (`hi` if none); `None` if an event is missing. Each pass halves `hi - lo`,
        // so this ends within 64 passes.
        let first_not = |mut lo: u64, mut hi: u64, before: &dyn Fn(u64) -> bool| {
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                match live.event(mid)? {
                    Some(r) if before(r.ts_ms) => lo = mid + 1,
                    Some(_) => hi = mid,
                    None => return Ok(None),
                }
            }
            Ok::<_, Error>(Some(lo))
        };
        let end = to.saturating_add(1);
        if since_ms > 0 {
            match first_not(from, end, &|ts| ts < since_ms)? {
                Some(first) => from = first,
                None => return Ok((from, to)),
            }
        }
        if until_ms > 0 && from <= to {
            match first_not(from, end, &|ts| ts <= until_ms)? {
                Some(past) => to = past - 1,
                None => return Ok((from, to)),
            }
        }
        Ok((from, to))
    }

    /// The sequence numbers of the events in `from..=to` of every message about `patient`,
    /// in order: the messages from the patient index of `msg_index`, their events from each
    /// one's timeline (`msg_events`), so a patient's history is read without a scan of the
    /// store. `None` when there are more than [`REPLAY_PATIENT_MESSAGES_MAX`] messages or
    /// [`REPLAY_PATIENT_EVENTS_MAX`] events: then a scan is the cheaper way.
    pub fn patient_event_seqs(
        &self,
        patient: &Ihi,
        (from, to): (u64, u64),
    ) -> Result<Option<Vec<u64>>> {
        let live = self.shared_live();
        let corrupt = |detail: String| Error::Corrupt {
            path: live.path.clone(),
            detail,
        };
        let prefix = keys::index_prefix(keys::INDEX_PATIENT, patient.as_str());
        let index = rocks::cf(&live.db, ViewCf::MsgIndex.name());
        let timeline = rocks::cf(&live.db, ViewCf::MsgEvents.name());
        let mut seqs = Vec::new();
        // Both loops walk keys under a prefix, each bounded by the limits above.
        for (messages, item) in live
            .db
            .iterator_cf_opt(index, prefix_bounds(&prefix), IteratorMode::Start)
            .enumerate()
        {
            if messages >= REPLAY_PATIENT_MESSAGES_MAX {
                return Ok(None);
            }
            let (_, id) = item.map_err(rocks_err(&live.path))?;
            let id = sealpost_core::message::MessageId::parse(&String::from_utf8_lossy(&id))
                .map_err(|e| corrupt(format!("msg_index names no message id: {e}")))?;
            let events = keys::msg_event_prefix(&id);
            let start = keys::msg_event(&id, from);
            for item in live.db.iterator_cf_opt(
                timeline,
                prefix_bounds(&events),
                IteratorMode::From(&start, Direction::Forward),
            ) {
                let (k, _) = item.map_err(rocks_err(&live.path))?;
                let seq = seq_suffix(&live.path, &k)?;
                if seq > to {
                    break;
                }
                if seqs.len() >= REPLAY_PATIENT_EVENTS_MAX {
                    return Ok(None);
                }
                seqs.push(seq);
            }
        }
        seqs.sort_unstable();
        seqs.dedup();
        Ok(Some(seqs))
    }

    /// Replays events `from..=to` (`to` 0: the newest at the start) of one snapshot:
    /// `map` runs on the decoding workers (its `W` is each worker's own state) and returns
    /// what to hand on, or `None` to skip the record; `each` receives the results in
    /// sequence order and returns false to stop. Returns the records read.
    pub fn replay_ordered<W, T, M, E>(&self, from: u64, to: u64, map: M, mut each: E) -> Result<u64>
    where
        W: Default,
        T: Send,
        M: Fn(&mut W, EventRecord) -> Option<T> + Sync,
        E: FnMut(T) -> bool,
    {
        let live = self.shared_live();
        let snap = live.db.snapshot();
        let to = if to == 0 { u64::MAX } else { to };
        let start = from.max(1).to_be_bytes();
        let cf = rocks::cf(&live.db, CF_EVENTS);
        let (raw_tx, raw_rx) = sync_channel::<Result<RawPage>>(REPLAY_PAGES_QUEUED_MAX);
        let raw_rx = Mutex::new(raw_rx);
        let (out_tx, out_rx) = sync_channel::<(u64, Result<Vec<T>>)>(REPLAY_PAGES_QUEUED_MAX);
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| -> Result<u64> {
            let (snap, stop, raw_rx, map) = (&snap, &stop, &raw_rx, &map);
            let db = &live.db;
            // Reader: pages of raw records, numbered.
            let path = live.path.clone();
            s.spawn(move || {
                let mut page = Vec::with_capacity(REPLAY_PAGE_RECORDS);
                let mut n = 0u64;
                // A long sequential read: read ahead, and leave the block cache to the
                // node's other readers.
                let mut ro = rocksdb::ReadOptions::default();
                ro.set_snapshot(snap);
                ro.set_readahead_size(REPLAY_READAHEAD_BYTES);
                ro.fill_cache(false);
                let iter =
                    db.iterator_cf_opt(cf, ro, IteratorMode::From(&start, Direction::Forward));
                for item in iter {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    match item {
                        Ok((k, v)) => {
                            let seq = k.as_ref().try_into().map(u64::from_be_bytes).unwrap_or(0);
                            if seq > to {
                                break;
                            }
                            page.push((k, v));
                        }
                        Err(e) => {
                            let _ = raw_tx.send(Err(rocks_err(&path)(e)));
                            return;
                        }
                    }
                    if page.len() == REPLAY_PAGE_RECORDS {
                        let full =
                            std::mem::replace(&mut page, Vec::with_capacity(REPLAY_PAGE_RECORDS));
                        if raw_tx.send(Ok((n, full))).is_err() {
                            return;
                        }
                        n += 1;
                    }
                }
                if !page.is_empty() {
                    let _ = raw_tx.send(Ok((n, page)));
                }
            });
            // Decoders.
            for _ in 0..REPLAY_DECODE_WORKERS {
                let out_tx = out_tx.clone();
                s.spawn(move || {
                    let mut state = W::default();
                    loop {
                        let next = match raw_rx.lock() {
                            Ok(rx) => recv(&rx),
                            Err(_) => return,
                        };
                        let Some(page) = next else { return };
                        let (n, page) = match page {
                            Ok(p) => p,
                            Err(e) => {
                                let _ = out_tx.send((u64::MAX, Err(e)));
                                return;
                            }
                        };
                        let mut items = Vec::with_capacity(page.len());
                        let mut failed = None;
                        for (k, v) in page {
                            match EventRecord::decode_stored(&v) {
                                Ok(rec) => items.extend(map(&mut state, rec)),
                                Err(e) => {
                                    failed = Some(Error::Codec {
                                        what: format!("event {}", hex::encode(&k)),
                                        source: e,
                                    });
                                    break;
                                }
                            }
                        }
                        let result = match failed {
                            Some(e) => Err(e),
                            None => Ok(items),
                        };
                        if stop.load(Ordering::Relaxed) || out_tx.send((n, result)).is_err() {
                            return;
                        }
                    }
                });
            }
            drop(out_tx);
            // In order, from the reorder buffer (at most a few pages).
            let mut hand_on = || -> Result<u64> {
                let mut waiting: BTreeMap<u64, Vec<T>> = BTreeMap::new();
                let (mut next, mut handed) = (0u64, 0u64);
                for (n, result) in out_rx.iter() {
                    waiting.insert(n, result?);
                    while let Some(items) = waiting.remove(&next) {
                        next += 1;
                        for item in items {
                            handed += 1;
                            if !each(item) {
                                return Ok(handed);
                            }
                        }
                    }
                }
                Ok(handed)
            };
            let result = hand_on();
            // Stop the reader and the decoders: nothing more is handed on, and whatever is
            // queued is drained so no thread stays blocked on a full queue.
            stop.store(true, Ordering::Relaxed);
            while out_rx.recv().is_ok() {}
            result
        })
    }
}

fn recv<T>(rx: &Receiver<T>) -> Option<T> {
    rx.recv().ok()
}

#[cfg(test)]
mod tests {
    use crate::state_machine::tests::{entry, org, with_entries, with_events};

    /// The window's part of a range is exactly the events a filter over the range keeps,
    /// with several events sharing a timestamp, windows outside the store and empty ones.
    #[test]
    fn a_time_window_narrows_to_exactly_its_events() {
        let tmp = tempfile::tempdir().expect("tmp");
        // Entry i (its time 1_700_000_000_000 + i ms) holds i % 3 + 1 registrations.
        let mut serial = 0;
        let entries = (2..40u64)
            .map(|i| {
                let orgs = (0..=i % 3)
                    .map(|_| {
                        serial += 1;
                        org(serial)
                    })
                    .collect();
                entry(i, orgs)
            })
            .collect();
        let sm = with_entries(tmp.path(), entries);
        let view = sm.view();
        let all = view.events(1, 1_000).expect("events");
        let newest = all.last().expect("events").seq;
        let t0 = 1_700_000_000_000;
        let kept = |(from, to): (u64, u64), since: u64, until: u64| -> Vec<u64> {
            all.iter()
                .filter(|r| r.seq >= from && r.seq <= to)
                .filter(|r| r.ts_ms >= since && (until == 0 || r.ts_ms <= until))
                .map(|r| r.seq)
                .collect()
        };
        let mut windows = vec![(0, 0), (t0 + 100, 0), (0, t0 - 1), (t0 + 9, t0 + 8)];
        for a in [t0, t0 + 2, t0 + 5, t0 + 17, t0 + 39] {
            for b in [t0 + 2, t0 + 6, t0 + 30, t0 + 50] {
                windows.push((a, b));
                windows.push((a, 0));
                windows.push((0, b));
            }
        }
        for range in [(1, newest), (5, 20), (1, 1), (newest, newest), (9, 3)] {
            for &(since, until) in &windows {
                let (from, to) = view.narrow_to_window(range, since, until).expect("narrow");
                let narrowed: Vec<u64> = (from..=to).collect();
                assert_eq!(
                    narrowed,
                    kept(range, since, until),
                    "range {range:?}, window {since}..={until}"
                );
            }
        }
    }

    /// Records come back in sequence order across pages and workers, filtered by `map`;
    /// a range stops where asked; a caller that stops early ends the pipeline.
    #[test]
    fn replays_in_order_filters_and_stops() {
        let tmp = tempfile::tempdir().expect("tmp");
        let sm = with_events(tmp.path(), 5000);
        let view = sm.view();
        let mut seen = Vec::new();
        let n = view
            .replay_ordered(
                1,
                0,
                |_: &mut (), r| Some(r.seq),
                |s| {
                    seen.push(s);
                    true
                },
            )
            .expect("replay");
        assert_eq!(n, 5000);
        assert_eq!(seen, (1..=5000).collect::<Vec<_>>());
        let mut odd = Vec::new();
        view.replay_ordered(
            1500,
            3100,
            |calls: &mut u64, r| {
                *calls += 1;
                (r.seq % 2 == 1).then_some(r.seq)
            },
            |s| {
                odd.push(s);
                true
            },
        )
        .expect("replay");
        assert_eq!(odd, (1501..=3099).step_by(2).collect::<Vec<_>>());
        let mut first = Vec::new();
        let n = view
            .replay_ordered(
                1,
                0,
                |_: &mut (), r| Some(r.seq),
                |s| {
                    first.push(s);
                    first.len() < 10
                },
            )
            .expect("replay");
        assert_eq!((n, first), (10, (1..=10).collect::<Vec<_>>()));
    }
}
