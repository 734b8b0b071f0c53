//! A test-only state machine without storage: it validates, decides and folds commands as
//! the store does, keeping its facts up to date and every event and view change it made,
//! so the rules of a whole message lifecycle can be checked in memory.

use crate::command::{Command, Rejection, decide};
use crate::event::{EVENT_VERSION_CURRENT, Event};
use crate::ids::EndpointId;
use crate::message::{MessageId, RecipientState};
use crate::view::{Facts, ViewCf, ViewChange};

pub(crate) struct Sim {
    pub facts: Facts,
    pub seq: u64,
    pub events: Vec<Event>,
    pub changes: Vec<ViewChange>,
}

impl Sim {
    /// A simulator over these facts, numbering events after `seq`.
    pub fn new(facts: Facts, seq: u64) -> Self {
        Self {
            facts,
            seq,
            events: Vec::new(),
            changes: Vec::new(),
        }
    }

    pub fn run(&mut self, cmd: Command, ts_ms: u64) -> Result<Vec<Event>, Rejection> {
        cmd.validate()?;
        let events = decide(cmd, &self.facts, EVENT_VERSION_CURRENT, ts_ms)?;
        for e in &events {
            self.seq += 1;
            let changes = crate::view::fold(e, self.seq, ts_ms, &self.facts);
            self.facts.absorb(&changes);
            self.changes.extend(changes);
            self.events.push(e.clone());
        }
        Ok(events)
    }

    pub fn state(&self, id: &MessageId, r: &EndpointId) -> RecipientState {
        *crate::messaging::recipient_state(&self.facts, id, r).expect("state")
    }

    /// Final outcome events (acked or failed) recorded for a recipient.
    pub fn finals(&self, r: &EndpointId) -> usize {
        self.events
            .iter()
            .filter(|e| {
                matches!(e, Event::Acked { .. } | Event::Failed { .. }) && e.recipient() == Some(r)
            })
            .count()
    }

    /// The value last put under `key` in `cf`.
    pub fn put(&self, cf: ViewCf, key: &[u8]) -> Option<&Vec<u8>> {
        self.changes.iter().rev().find_map(|c| match c {
            ViewChange::Put(c2, k, v) if *c2 == cf && k == key => Some(v),
            _ => None,
        })
    }

    pub fn deleted(&self, cf: ViewCf, key: &[u8]) -> bool {
        self.changes
            .iter()
            .any(|c| matches!(c, ViewChange::Delete(c2, k) if *c2 == cf && k == key))
    }
}
