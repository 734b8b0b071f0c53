//! Audit search over messages, served from the `msg_index` view: messages by date range,
//! sender, recipient, patient, payload type and status, newest first. The most selective
//! index given (patient, then recipient organisation, then sender, else time) is scanned
//! backwards over the date range; every other criterion is checked on the message status
//! view. Scans and results are bounded; a search that stops early returns where to go on.
//!
//! Stores written before the index existed get it built at start-up from the message
//! status view and the `Sent`/`Received` events (for the patient).

use rocksdb::{Direction, IteratorMode, WriteBatch};
use sealpost_core::codec;
use sealpost_core::directory::PayloadType;
use sealpost_core::event::Event;
use sealpost_core::ids::{EndpointId, HpiO, Ihi};
use sealpost_core::message::{MessageId, MessageStatus};
use sealpost_core::messaging::keys;
use sealpost_core::view::ViewCf;

use crate::error::{Error, Result};
use crate::rocks::{self, rocks_err};
use crate::state_machine::{CF_MESSAGES, CF_META, SmDb, StateView};

/// Most results one search returns.
pub const MESSAGE_SEARCH_RESULTS_MAX: usize = 1000;
/// Most index keys one search reads before it stops and says where to go on.
pub const MESSAGE_SEARCH_SCAN_KEYS_MAX: usize = 50_000;
/// Messages indexed per write batch while an older store's index is built at start-up.
const BACKFILL_BATCH_MESSAGES_MAX: usize = 4096;

const KEY_MSG_INDEX_BUILT: &[u8] = b"msg_index_built";

/// Which recipient states a message must have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusFilter {
    /// Some recipient is in the state with this name (`sent`, `routed`, `acked`, `failed`,
    /// `relayed`, `reprocessing`).
    Any(&'static str),
    /// Some recipient has no final outcome yet.
    Open,
    /// Every recipient has its final outcome.
    Complete,
}

impl StatusFilter {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "open" => StatusFilter::Open,
            "complete" => StatusFilter::Complete,
            "sent" => StatusFilter::Any("sent"),
            "routed" => StatusFilter::Any("routed"),
            "acked" => StatusFilter::Any("acked"),
            "failed" => StatusFilter::Any("failed"),
            "relayed" => StatusFilter::Any("relayed"),
            "reprocessing" => StatusFilter::Any("reprocessing"),
            _ => return None,
        })
    }

    fn matches(self, m: &MessageStatus) -> bool {
        match self {
            StatusFilter::Any(name) => m.recipients.iter().any(|r| r.state.name() == name),
            StatusFilter::Open => m.recipients.iter().any(|r| !r.state.is_final()),
            StatusFilter::Complete => m.is_complete(),
        }
    }
}

/// What to look for; `None` criteria match everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MessageQuery {
    /// Sent (or received from a peer) at or after this time, ms since the Unix epoch.
    pub since_ms: u64,
    /// ... and at or before this time; 0: no bound.
    pub until_ms: u64,
    pub sender: Option<HpiO>,
    /// A recipient organisation, or (with `recipient`) one endpoint of it.
    pub recipient_org: Option<HpiO>,
    pub recipient: Option<EndpointId>,
    pub patient: Option<Ihi>,
    pub payload_type: Option<PayloadType>,
    pub status: Option<StatusFilter>,
    /// Go on below this position (a previous search's `next`).
    pub before: Option<(u64, u64)>,
    /// At most this many results (capped at [`MESSAGE_SEARCH_RESULTS_MAX`]; 0: the cap).
    pub limit: usize,
}

/// What a search found, newest first, and where a further search goes on (when it
/// stopped at its result or scan limit).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MessageSearch {
    pub messages: Vec<MessageStatus>,
    /// (sent time, sent sequence) of the last index key read.
    pub next: Option<(u64, u64)>,
}

fn matches(q: &MessageQuery, m: &MessageStatus) -> bool {
    if q.sender.as_ref().is_some_and(|s| &m.sender.org != s) {
        return false;
    }
    if let Some(org) = &q.recipient_org
        && !m.recipients.iter().any(|r| &r.endpoint.org == org)
    {
        return false;
    }
    if let Some(ep) = &q.recipient
        && m.recipient(ep).is_none()
    {
        return false;
    }
    if q.payload_type.is_some_and(|t| m.payload_type != t) {
        return false;
    }
    q.status.is_none_or(|s| s.matches(m))
}

/// `(time, sequence)` of an index key after its prefix.
fn position(key: &[u8], prefix_len: usize) -> Option<(u64, u64)> {
    let rest = key.get(prefix_len..)?;
    if rest.len() != 16 {
        return None;
    }
    let ts = u64::from_be_bytes(rest[..8].try_into().ok()?);
    let seq = u64::from_be_bytes(rest[8..].try_into().ok()?);
    Some((ts, seq))
}

impl StateView {
    /// Messages matching `q`, newest first (see the module notes).
    pub fn search_messages(&self, q: &MessageQuery) -> Result<MessageSearch> {
        let live = self.shared_live();
        let limit = match q.limit {
            0 => MESSAGE_SEARCH_RESULTS_MAX,
            n => n.min(MESSAGE_SEARCH_RESULTS_MAX),
        };
        let recipient_org = q
            .recipient_org
            .clone()
            .or_else(|| q.recipient.as_ref().map(|r| r.org.clone()));
        let prefix = if let Some(p) = &q.patient {
            keys::index_prefix(keys::INDEX_PATIENT, p.as_str())
        } else if let Some(org) = &recipient_org {
            keys::index_prefix(keys::INDEX_RECIPIENT, org.as_str())
        } else if let Some(s) = &q.sender {
            keys::index_prefix(keys::INDEX_SENDER, s.as_str())
        } else {
            keys::index_prefix(keys::INDEX_TIME, "")
        };
        let until = if q.until_ms == 0 {
            u64::MAX
        } else {
            q.until_ms
        };
        let mut start = prefix.clone();
        match q.before {
            // Strictly below the position given: the previous search returned it.
            Some((ts, seq)) if (ts, seq) <= (until, u64::MAX) => {
                let (ts, seq) = match seq.checked_sub(1) {
                    Some(s) => (ts, s),
                    None => match ts.checked_sub(1) {
                        Some(t) => (t, u64::MAX),
                        None => return Ok(MessageSearch::default()),
                    },
                };
                start.extend_from_slice(&ts.to_be_bytes());
                start.extend_from_slice(&seq.to_be_bytes());
            }
            _ => {
                start.extend_from_slice(&until.to_be_bytes());
                start.extend_from_slice(&u64::MAX.to_be_bytes());
            }
        }
        let cf = rocks::cf(&live.db, ViewCf::MsgIndex.name());
        let mut out = MessageSearch::default();
        let mut scanned = 0usize;
        for item in live
            .db
            .iterator_cf(cf, IteratorMode::From(&start, Direction::Reverse))
        {
            let (k, v) = item.map_err(rocks_err(&live.path))?;
            if !k.starts_with(&prefix) {
                break;
            }
            let Some((ts, seq)) = position(&k, prefix.len()) else {
                return Err(Error::Corrupt {
                    path: live.path.clone(),
                    detail: "a msg_index key has the wrong length".into(),
                });
            };
            if ts < q.since_ms {
                break;
            }
            scanned += 1;
            let id =
                MessageId::parse(&String::from_utf8_lossy(&v)).map_err(|e| Error::Corrupt {
                    path: live.path.clone(),
                    detail: format!("msg_index names no message id: {e}"),
                })?;
            if let Some(m) = live.get::<MessageStatus>(CF_MESSAGES, &keys::message(&id))?
                && matches(q, &m)
            {
                out.messages.push(m);
            }
            if out.messages.len() >= limit || scanned >= MESSAGE_SEARCH_SCAN_KEYS_MAX {
                out.next = Some((ts, seq));
                break;
            }
        }
        Ok(out)
    }
}

impl SmDb {
    /// Builds the search index of a store written before it existed (from the status view
    /// and each message's first event), once. Returns the messages indexed.
    pub(crate) fn backfill_msg_index(&self) -> Result<u64> {
        if self
            .db
            .get_cf(rocks::cf(&self.db, CF_META), KEY_MSG_INDEX_BUILT)
            .map_err(rocks_err(&self.path))?
            .is_some()
        {
            return Ok(0);
        }
        let index_cf = rocks::cf(&self.db, ViewCf::MsgIndex.name());
        let mut wb = WriteBatch::default();
        let (mut staged, mut total) = (0usize, 0u64);
        for item in self
            .db
            .iterator_cf(rocks::cf(&self.db, CF_MESSAGES), IteratorMode::Start)
        {
            let (_, v) = item.map_err(rocks_err(&self.path))?;
            let m: MessageStatus = codec::decode(&v).map_err(|e| Error::Codec {
                what: "a message status".into(),
                source: e,
            })?;
            let patient = match self.event(m.sent_seq)?.map(|r| r.event) {
                Some(Event::Sent { envelope, .. } | Event::Received { envelope, .. }) => {
                    envelope.header.patient
                }
                _ => None,
            };
            for k in keys::index_keys(&m, patient.as_ref()) {
                wb.put_cf(index_cf, k, m.message_id.as_str().as_bytes());
            }
            staged += 1;
            total += 1;
            if staged == BACKFILL_BATCH_MESSAGES_MAX {
                rocks::write(&self.db, &self.path, wb, rocks::Durability::Synced)?;
                wb = WriteBatch::default();
                staged = 0;
            }
        }
        wb.put_cf(rocks::cf(&self.db, CF_META), KEY_MSG_INDEX_BUILT, [1u8]);
        rocks::write(&self.db, &self.path, wb, rocks::Durability::Synced)?;
        Ok(total)
    }
}
