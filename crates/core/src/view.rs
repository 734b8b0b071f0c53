//! Views as a pure fold of events: [`fold`] turns one event into the view changes the store
//! writes in the same batch as the event, and [`Facts`] is the slice of view state that a
//! decision or fold reads.
//!
//! Views are derived data: folding the event store from sequence 1 must rebuild them byte
//! for byte, which is why the fold depends only on the event, its sequence number and facts
//! that earlier events produced.

use foldhash::HashMap;

use serde::{Deserialize, Serialize};

use crate::command::Reads;
use crate::directory::{Endpoint, EndpointSpec, Organisation, PublicKeys};
use crate::event::Event;
use crate::ids::{EndpointId, EndpointLocal, HpiO};
use crate::message::{MessageId, MessageStatus};

/// The view records a decision or fold may read, loaded by the store for one command (and
/// updated in memory as earlier commands of the same batch change them).
#[derive(Default, Debug, Clone)]
pub struct Facts {
    // Hash maps (foldhash: fast on short ids, seeded per process): facts are only looked
    // up and replaced, never walked in order, and a view rebuild keeps tens of thousands
    // of them (ordered maps compared the shared prefixes of the ids over and over; SipHash
    // cost as much).
    organisations: HashMap<HpiO, Option<Organisation>>,
    endpoints: HashMap<EndpointId, Option<Endpoint>>,
    messages: HashMap<MessageId, Option<MessageStatus>>,
    client_ids: HashMap<(HpiO, String), Option<MessageId>>,
    /// Federation cursors: (kind, provider) → sequence.
    cursors: HashMap<(u8, String), Option<u64>>,
}

impl Facts {
    pub fn organisation(&self, id: &HpiO) -> Option<&Organisation> {
        self.organisations.get(id).and_then(Option::as_ref)
    }

    pub fn endpoint(&self, id: &EndpointId) -> Option<&Endpoint> {
        self.endpoints.get(id).and_then(Option::as_ref)
    }

    pub fn message(&self, id: &MessageId) -> Option<&MessageStatus> {
        self.messages.get(id).and_then(Option::as_ref)
    }

    /// The message a sender's client message id already names, if any.
    pub fn client_id(&self, org: &HpiO, client_message_id: &str) -> Option<&MessageId> {
        self.client_ids
            .get(&(org.clone(), client_message_id.to_string()))
            .and_then(Option::as_ref)
    }

    /// A federation cursor (see [`crate::federation::cursor`]).
    pub fn cursor(&self, kind: u8, provider: &str) -> Option<u64> {
        self.cursors
            .get(&(kind, provider.to_string()))
            .copied()
            .flatten()
    }

    pub fn knows_cursor(&self, kind: u8, provider: &str) -> bool {
        self.cursors.contains_key(&(kind, provider.to_string()))
    }

    pub fn load_cursor(&mut self, kind: u8, provider: String, value: Option<u64>) {
        self.cursors.insert((kind, provider), value);
    }

    pub fn knows_message(&self, id: &MessageId) -> bool {
        self.messages.contains_key(id)
    }

    pub fn knows_client_id(&self, org: &HpiO, client_message_id: &str) -> bool {
        self.client_ids
            .contains_key(&(org.clone(), client_message_id.to_string()))
    }

    pub fn load_message(&mut self, id: MessageId, value: Option<MessageStatus>) {
        self.messages.insert(id, value);
    }

    pub fn load_client_id(
        &mut self,
        org: HpiO,
        client_message_id: String,
        value: Option<MessageId>,
    ) {
        self.client_ids.insert((org, client_message_id), value);
    }

    /// Forgets every fact and keeps the maps' memory (a view rebuild starts afresh at each
    /// barrier of its fold).
    pub fn clear(&mut self) {
        self.organisations.clear();
        self.endpoints.clear();
        self.messages.clear();
        self.client_ids.clear();
        self.cursors.clear();
    }

    pub fn knows_organisation(&self, id: &HpiO) -> bool {
        self.organisations.contains_key(id)
    }

    pub fn knows_endpoint(&self, id: &EndpointId) -> bool {
        self.endpoints.contains_key(id)
    }

    /// Records what the store found (or did not find) for a key.
    pub fn load_organisation(&mut self, id: HpiO, value: Option<Organisation>) {
        self.organisations.insert(id, value);
    }

    pub fn load_endpoint(&mut self, id: EndpointId, value: Option<Endpoint>) {
        self.endpoints.insert(id, value);
    }

    /// Applies view changes so later decisions in the same batch see them.
    pub fn absorb(&mut self, changes: &[ViewChange]) {
        for c in changes.iter().filter(|c| Self::holds(c)) {
            self.remember(c.clone());
        }
    }

    /// [`Facts::absorb`] for changes no longer needed: their records move into the facts
    /// instead of being copied (a rebuild absorbs every organisation and endpoint).
    pub fn absorb_owned(&mut self, changes: Vec<ViewChange>) {
        for c in changes.into_iter().filter(Self::holds) {
            self.remember(c);
        }
    }

    /// Whether a change is to a record the facts hold.
    fn holds(c: &ViewChange) -> bool {
        matches!(
            c,
            ViewChange::PutOrganisation(_)
                | ViewChange::PutEndpoint(_)
                | ViewChange::PutMessage(_)
                | ViewChange::PutIdempotency(..)
                | ViewChange::Put(ViewCf::Peers, ..)
        )
    }

    fn remember(&mut self, c: ViewChange) {
        match c {
            ViewChange::PutOrganisation(o) => {
                self.organisations.insert(o.spec.hpio.clone(), Some(o));
            }
            ViewChange::PutEndpoint(e) => {
                self.endpoints.insert(e.spec.id.clone(), Some(e));
            }
            ViewChange::PutMessage(m) => {
                self.messages.insert(m.message_id.clone(), Some(m));
            }
            ViewChange::PutIdempotency(org, cid, id) => {
                self.client_ids.insert((org, cid), Some(id));
            }
            ViewChange::Put(ViewCf::Peers, k, v) => {
                if let (Some((kind, provider)), Some(value)) =
                    (k.split_first(), crate::federation::decode_cursor(&v))
                {
                    self.cursors.insert(
                        (*kind, String::from_utf8_lossy(provider).into_owned()),
                        Some(value),
                    );
                }
            }
            ViewChange::PutIndex(_) | ViewChange::Put(..) | ViewChange::Delete(..) => {}
        }
    }
}

/// The view column families that messaging writes with plain keys and values (key layouts
/// in [`crate::messaging::keys`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum ViewCf {
    Outbox,
    Inbox,
    Feed,
    Queue,
    Deadlines,
    MsgEvents,
    Keystore,
    /// Federation cursors per peer provider.
    Peers,
    /// Messages waiting to be relayed, per destination provider.
    RelayQueue,
    /// Delivery notifications owed to origin providers.
    Notify,
    /// This provider's own directory events, which peers pull.
    DirLog,
    /// Failed recipients, for operators.
    DeadLetters,
    /// Final outcomes per sending organisation (what its system is told).
    Outcomes,
    /// Messages by time, sender, recipient organisation and patient, for audit search.
    MsgIndex,
}

impl ViewCf {
    pub const ALL: [ViewCf; 14] = [
        ViewCf::Outbox,
        ViewCf::Inbox,
        ViewCf::Feed,
        ViewCf::Queue,
        ViewCf::Deadlines,
        ViewCf::MsgEvents,
        ViewCf::Keystore,
        ViewCf::Peers,
        ViewCf::RelayQueue,
        ViewCf::Notify,
        ViewCf::DirLog,
        ViewCf::DeadLetters,
        ViewCf::Outcomes,
        ViewCf::MsgIndex,
    ];

    /// The column family's name in the store.
    pub const fn name(self) -> &'static str {
        match self {
            ViewCf::Outbox => "outbox",
            ViewCf::Inbox => "inbox",
            ViewCf::Feed => "feed",
            ViewCf::Queue => "queue",
            ViewCf::Deadlines => "deadlines",
            ViewCf::MsgEvents => "msg_events",
            ViewCf::Keystore => "keystore",
            ViewCf::Peers => "peers",
            ViewCf::RelayQueue => "relay_queue",
            ViewCf::Notify => "notify",
            ViewCf::DirLog => "dir_log",
            ViewCf::DeadLetters => "dead_letters",
            ViewCf::Outcomes => "outcomes",
            ViewCf::MsgIndex => "msg_index",
        }
    }
}

/// One write to the views.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum ViewChange {
    PutOrganisation(Organisation),
    PutEndpoint(Endpoint),
    /// A search index key (the value is empty).
    PutIndex(Vec<u8>),
    /// The message status view.
    PutMessage(MessageStatus),
    /// (sender organisation, client message id) → message id.
    PutIdempotency(HpiO, String, MessageId),
    Put(ViewCf, Vec<u8>, Vec<u8>),
    Delete(ViewCf, Vec<u8>),
}

/// The facts [`fold`] needs for an event.
pub fn event_reads(event: &Event) -> Reads {
    match event {
        // A registration writes its organisation afresh from the event alone (and the
        // record then joins the facts for what follows), so its fold reads nothing.
        Event::OrganisationRegistered(_) => Reads::default(),
        Event::EndpointPublished(e) => Reads {
            organisations: vec![e.id.org.clone()],
            ..Reads::default()
        },
        Event::EndpointRetired { id, .. } => Reads {
            endpoints: vec![id.clone()],
            ..Reads::default()
        },
        Event::KeysRotated { org, .. } => Reads {
            organisations: vec![org.clone()],
            ..Reads::default()
        },
        Event::KeysProvisioned { .. }
        | Event::NotificationsRelayed { .. }
        | Event::OutcomesNotified { .. }
        | Event::PayloadsDropped { .. }
        | Event::AccessDenied { .. }
        | Event::ClusterVersionSet { .. }
        | Event::AuditRead { .. } => Reads::default(),
        // Which recipients are hosted here and which by a peer.
        Event::Sent { envelope, .. } | Event::Received { envelope, .. } => Reads {
            organisations: envelope.header.recipient_orgs(),
            ..Reads::default()
        },
        Event::Relayed { receipt, .. } => Reads {
            messages: vec![receipt.message_id.clone()],
            ..Reads::default()
        },
        Event::Decrypted { message_id, .. }
        | Event::Routed { message_id, .. }
        | Event::Fetched { message_id, .. }
        | Event::Acked { message_id, .. }
        | Event::Failed { message_id, .. }
        | Event::Reprocessed { message_id, .. }
        | Event::LateOutcome { message_id, .. } => Reads {
            messages: vec![message_id.clone()],
            ..Reads::default()
        },
        Event::PeerDirectoryImported { changes, .. } => peer_change_reads(changes),
    }
}

/// What importing a peer's directory changes reads: every organisation and endpoint named.
pub(crate) fn peer_change_reads(changes: &[crate::federation::PeerChange]) -> Reads {
    use crate::federation::PeerChange;
    let mut r = Reads::default();
    for ch in changes {
        if !r.organisations.contains(ch.org()) {
            r.organisations.push(ch.org().clone());
        }
        match ch {
            PeerChange::Endpoint(e) => r.endpoints.push(e.id.clone()),
            PeerChange::EndpointRetired(id) => r.endpoints.push(id.clone()),
            PeerChange::Organisation(_) | PeerChange::KeysRotated { .. } => {}
        }
    }
    r
}

/// Turns an applied event into view changes. Facts missing for an event that needs them
/// mean the event store is inconsistent with its own history; the fold then skips the view
/// change rather than invent state, and the store's rebuild check reports the difference.
pub fn fold(event: &Event, seq: u64, ts_ms: u64, facts: &Facts) -> Vec<ViewChange> {
    match event {
        // Directory events are only ever made for organisations hosted here (a peer's
        // entries arrive in `PeerDirectoryImported`); `dir_log` lists them for peers to pull.
        Event::OrganisationRegistered(spec) => vec![
            ViewChange::PutOrganisation(Organisation {
                spec: spec.clone(),
                registered_seq: seq,
                keys_seq: seq,
                provider: None,
            }),
            ViewChange::Put(
                ViewCf::DirLog,
                crate::federation::keys::dir_log(seq),
                Vec::new(),
            ),
        ],
        Event::EndpointPublished(spec) => {
            let mut out = fold_endpoint_published(spec, seq, facts);
            out.push(ViewChange::Put(
                ViewCf::DirLog,
                crate::federation::keys::dir_log(seq),
                Vec::new(),
            ));
            out
        }
        Event::EndpointRetired { id, .. } => {
            let mut out = fold_endpoint_retired(id, seq, facts);
            out.push(ViewChange::Put(
                ViewCf::DirLog,
                crate::federation::keys::dir_log(seq),
                Vec::new(),
            ));
            out
        }
        Event::KeysRotated { org, keys } => {
            let mut out = fold_keys_rotated(org, keys, seq, facts);
            out.push(ViewChange::Put(
                ViewCf::DirLog,
                crate::federation::keys::dir_log(seq),
                Vec::new(),
            ));
            out
        }
        Event::KeysProvisioned {
            org,
            key_id,
            wrapped,
        } => vec![ViewChange::Put(
            ViewCf::Keystore,
            crate::messaging::keys::keystore(org, key_id),
            wrapped.clone(),
        )],
        Event::Sent { .. }
        | Event::Decrypted { .. }
        | Event::Routed { .. }
        | Event::Fetched { .. }
        | Event::Acked { .. }
        | Event::Failed { .. }
        | Event::Reprocessed { .. }
        | Event::Received { .. }
        | Event::Relayed { .. }
        | Event::LateOutcome { .. } => crate::messaging::fold_message(event, seq, ts_ms, facts),
        Event::PeerDirectoryImported {
            provider,
            through_seq,
            changes,
            ..
        } => crate::federation::fold_import(provider, *through_seq, changes, seq, facts),
        Event::NotificationsRelayed {
            provider,
            through_seq,
        } => crate::federation::fold_notified(provider, *through_seq),
        Event::OutcomesNotified { org, through_seq } => {
            crate::federation::fold_outcomes_notified(org, *through_seq)
        }
        // The event store itself is the record of an audit read.
        Event::AuditRead { .. } | Event::AccessDenied { .. } => Vec::new(),
        // The store keeps the cluster version beside the views (it gates `decide`).
        Event::ClusterVersionSet { .. } => Vec::new(),
        // The store rewrites the payloads; the views keep only the cursor.
        Event::PayloadsDropped { through_seq, .. } => crate::retention::fold_dropped(*through_seq),
    }
}

pub(crate) fn fold_endpoint_published(
    spec: &EndpointSpec,
    seq: u64,
    facts: &Facts,
) -> Vec<ViewChange> {
    let ep = Endpoint {
        spec: spec.clone(),
        published_seq: seq,
        retired_seq: None,
    };
    let index = facts
        .organisation(&spec.id.org)
        .map(|org| index_keys(&ep, org))
        .unwrap_or_default();
    let mut out: Vec<ViewChange> = Vec::with_capacity(index.len() + 1);
    out.extend(index.into_iter().map(ViewChange::PutIndex));
    out.push(ViewChange::PutEndpoint(ep));
    out
}

pub(crate) fn fold_endpoint_retired(id: &EndpointId, seq: u64, facts: &Facts) -> Vec<ViewChange> {
    facts
        .endpoint(id)
        .map(|ep| {
            let mut ep = ep.clone();
            ep.retired_seq = Some(seq);
            vec![ViewChange::PutEndpoint(ep)]
        })
        .unwrap_or_default()
}

pub(crate) fn fold_keys_rotated(
    org: &HpiO,
    keys: &PublicKeys,
    seq: u64,
    facts: &Facts,
) -> Vec<ViewChange> {
    facts
        .organisation(org)
        .map(|o| {
            let mut o = o.clone();
            o.spec.keys = keys.clone();
            o.keys_seq = seq;
            vec![ViewChange::PutOrganisation(o)]
        })
        .unwrap_or_default()
}

/// Search index namespaces (first byte of an index key).
pub mod index {
    /// A lowercased word of the endpoint's or organisation's name.
    pub const NAME_WORD: u8 = b'n';
    pub const SPECIALTY: u8 = b's';
    /// State code, then lowercased suburb.
    pub const LOCATION: u8 = b'l';
    pub const PAYLOAD_TYPE: u8 = b'p';
    /// The organisation's HPI-O.
    pub const ORGANISATION: u8 = b'o';
    /// A practitioner's HPI-I.
    pub const PRACTITIONER: u8 = b'i';
    /// Separates the indexed value from the endpoint id.
    pub const SEP: u8 = 0;
}

/// The index key prefix for a value in a namespace: scan it to find matching endpoints.
pub fn index_prefix(namespace: u8, value: &str) -> Vec<u8> {
    index_prefix_with_room(namespace, value, 0)
}

/// [`index_prefix`] with room for `more` bytes after it (an index key's endpoint id), so
/// completing the key does not reallocate it.
fn index_prefix_with_room(namespace: u8, value: &str, more: usize) -> Vec<u8> {
    let mut k = Vec::with_capacity(value.len() + 2 + more);
    k.push(namespace);
    k.extend_from_slice(value.as_bytes());
    k.push(index::SEP);
    k
}

/// Extracts the endpoint id from an index key.
pub fn index_key_endpoint(key: &[u8]) -> Option<EndpointId> {
    let pos = key.iter().rposition(|b| *b == index::SEP)?;
    let s = std::str::from_utf8(&key[pos + 1..]).ok()?;
    EndpointId::parse(s).ok()
}

/// Location value as indexed: state code, separator, lowercased suburb.
pub fn location_value(state: &str, suburb: &str) -> String {
    format!(
        "{}\u{1}{}",
        state.to_ascii_uppercase(),
        suburb.trim().to_lowercase()
    )
}

/// Lowercased words of a name, as indexed.
pub fn name_words(name: &str) -> impl Iterator<Item = String> + '_ {
    name.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
}

fn index_keys(ep: &Endpoint, org: &Organisation) -> Vec<Vec<u8>> {
    let id = ep.spec.id.to_string();
    let key = |ns: u8, value: &str| {
        let mut k = index_prefix_with_room(ns, value, id.len());
        k.extend_from_slice(id.as_bytes());
        k
    };
    let mut keys = Vec::with_capacity(16);
    let mut words: Vec<String> = name_words(&ep.spec.display_name)
        .chain(name_words(&org.spec.name))
        .collect();
    words.sort();
    words.dedup();
    keys.extend(words.iter().map(|w| key(index::NAME_WORD, w)));
    keys.push(key(
        index::SPECIALTY,
        &ep.spec.specialty.trim().to_lowercase(),
    ));
    keys.push(key(
        index::LOCATION,
        &location_value(org.spec.state.as_str(), &org.spec.suburb),
    ));
    keys.extend(
        ep.spec
            .payload_types
            .iter()
            .map(|p| key(index::PAYLOAD_TYPE, p.as_str())),
    );
    keys.push(key(index::ORGANISATION, org.spec.hpio.as_str()));
    if let EndpointLocal::Practitioner(p) = &ep.spec.id.local {
        keys.push(key(index::PRACTITIONER, p.as_str()));
    }
    keys
}
