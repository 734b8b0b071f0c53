//! Payload retention: after a configured period, the ciphertexts of old `Sent` and
//! `Received` events are dropped from the event store while every hash still verifies,
//! because the chain covers each ciphertext's length and digest, never its bytes (see
//! `SealedCopy::drop_ciphertext`). Dropping is itself an event (`PayloadsDropped`), decided
//! here like any other, so every replica drops the same payloads at the same point of the
//! log; the store does the rewriting when it applies the event. A cursor records how far
//! the log has been dropped, so each event is visited once.

use crate::command::Rejection;
use crate::event::Event;
use crate::view::{Facts, ViewCf, ViewChange};

/// The cursor kind (in the federation cursor family, under the empty name) that records
/// through which sequence payloads were dropped.
pub const CURSOR: u8 = b'r';

/// Most events one `PayloadsDropped` covers: the store reads and rewrites them in one
/// apply.
pub const DROP_EVENTS_MAX: u64 = 4096;

pub(crate) fn decide_drop(
    before_ts_ms: u64,
    through_seq: u64,
    facts: &Facts,
    ts_ms: u64,
) -> Result<Vec<Event>, Rejection> {
    let from_seq = facts.cursor(CURSOR, "").unwrap_or(0) + 1;
    if through_seq < from_seq {
        return Err(Rejection::AlreadyExists(format!(
            "payloads are dropped through event {}",
            from_seq - 1
        )));
    }
    if through_seq - from_seq >= DROP_EVENTS_MAX {
        return Err(Rejection::InvalidArgument(format!(
            "one drop covers at most {DROP_EVENTS_MAX} events; asked for {from_seq}..={through_seq}"
        )));
    }
    if before_ts_ms > ts_ms {
        return Err(Rejection::InvalidArgument(format!(
            "the retention cut-off {before_ts_ms} is in the future"
        )));
    }
    Ok(vec![Event::PayloadsDropped {
        before_ts_ms,
        from_seq,
        through_seq,
    }])
}

pub(crate) fn fold_dropped(through_seq: u64) -> Vec<ViewChange> {
    vec![ViewChange::Put(
        ViewCf::Peers,
        crate::federation::keys::cursor(CURSOR, ""),
        crate::federation::encode_cursor(through_seq),
    )]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Command;
    use crate::event::EventRecord;
    use crate::message::{Envelope, SealedCopy};
    use crate::sim::Sim;

    /// Drops advance a cursor: each range once, bounded, never in the future.
    #[test]
    fn drops_cover_each_event_once() {
        let mut s = Sim::new(Facts::default(), 100);
        let drop = |through_seq| Command::DropPayloads {
            before_ts_ms: 50,
            through_seq,
        };
        s.run(drop(DROP_EVENTS_MAX + 1), 60)
            .expect_err("too many at once");
        let ev = s.run(drop(40), 60).expect("first range");
        assert_eq!(
            ev,
            [Event::PayloadsDropped {
                before_ts_ms: 50,
                from_seq: 1,
                through_seq: 40
            }]
        );
        s.run(drop(40), 61).expect_err("already dropped");
        s.run(drop(30), 61).expect_err("behind the cursor");
        let ev = s.run(drop(90), 62).expect("next range");
        assert!(matches!(ev[0], Event::PayloadsDropped { from_seq: 41, .. }));
        s.run(
            Command::DropPayloads {
                before_ts_ms: 70,
                through_seq: 95,
            },
            69,
        )
        .expect_err("a cut-off in the future");
    }

    /// A copy's stand-in keeps what the chain covers: the record hashes the same before and
    /// after its payload is dropped, and a dropped copy is recognised as such.
    #[test]
    fn dropping_a_payload_keeps_the_hash() {
        let copy = SealedCopy {
            org: crate::ids::HpiO::from_serial(2),
            key_id: "k1".into(),
            enc: vec![1; 32],
            ciphertext: (0..200u8).collect(),
        };
        let mut env = Envelope {
            header: crate::message::tests::header(),
            signature: vec![3; 64],
            sealed: vec![copy],
        };
        let rec = |env: &Envelope| {
            EventRecord::chain(
                7,
                1_000,
                5,
                "a".into(),
                [9; 32],
                Event::Sent {
                    envelope: Box::new(env.clone()),
                    client_message_id: "c".into(),
                },
            )
        };
        let before = rec(&env);
        assert!(!env.payload_dropped());
        for c in &mut env.sealed {
            c.drop_ciphertext();
        }
        assert!(env.payload_dropped());
        let after = rec(&env);
        assert_eq!(before.canonical_bytes(), after.canonical_bytes());
        assert_eq!(before.hash, after.hash);
        assert_eq!(
            env.sealed[0].ciphertext.len(),
            crate::message::DROPPED_BYTES
        );
        let once = env.clone();
        env.sealed[0].drop_ciphertext();
        assert_eq!(env, once, "dropping twice changes nothing");
    }
}
