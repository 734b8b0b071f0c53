//! The audit trail replayed: a scripted scenario comes back with every event, in order,
//! with its outcome and message context, and each filter returns exactly the matching
//! events.

mod common;

use std::collections::BTreeSet;

use common::*;
use sealpost_core::ids::{HpiI, HpiO, Ihi};
use sealpost_proto::v1 as pb;

async fn replay(c: &sealpost_client::Client, req: pb::ReplayRequest) -> Vec<pb::AuditEvent> {
    let mut s = c.audit().replay(req).await.expect("replay").into_inner();
    let mut out = Vec::new();
    while let Some(e) = s.message().await.expect("stream") {
        out.push(e);
    }
    out
}

fn seqs(events: &[pb::AuditEvent]) -> BTreeSet<u64> {
    events.iter().map(|e| e.seq).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replay_returns_every_event_in_order_and_filters_exactly() {
    let (_dir, c) = messaging_cluster(3, messaging_opts()).await;
    let gp = org_client(&c, 1, SENDER).await;
    let (p1, p2) = (Ihi::from_serial(11), Ihi::from_serial(12));
    let writer = HpiI::from_serial(77);
    let lab = endpoint(LAB, "results");
    let cardio = endpoint(HOSPITAL, "cardiology");
    let m1 = send_ok(
        &gp,
        pb::SendRequest {
            patient_ihi: p1.to_string(),
            ..send_request(std::slice::from_ref(&lab), b"result", "a-1")
        },
    )
    .await
    .message_id;
    let m2 = send_ok(
        &gp,
        pb::SendRequest {
            patient_ihi: p2.to_string(),
            from_practitioner: writer.to_string(),
            ..send_request(std::slice::from_ref(&cardio), b"referral", "a-2")
        },
    )
    .await
    .message_id;
    let lab_client = org_client(&c, 2, LAB).await;
    track_until(&lab_client, &m1, "routed", |r| {
        recipient_state(r, &lab).0 == "routed"
    })
    .await;
    lab_client
        .messaging()
        .ack(pb::AckRequest {
            message_id: m1.clone(),
            recipient: lab.clone(),
            status: "rejected".into(),
            note: "wrong patient".into(),
        })
        .await
        .expect("ack");
    let hospital = org_client(&c, 3, HOSPITAL).await;
    track_until(&hospital, &m2, "routed", |r| {
        recipient_state(r, &cardio).0 == "routed"
    })
    .await;
    hospital
        .messaging()
        .fetch(pb::FetchRequest {
            message_id: m2.clone(),
            recipient: String::new(),
        })
        .await
        .expect("fetch");

    let admin = client(&c, 2).await;
    let all = replay(&admin, pb::ReplayRequest::default()).await;
    let expected: Vec<u64> = (1..=all.len() as u64).collect();
    assert_eq!(
        all.iter().map(|e| e.seq).collect::<Vec<_>>(),
        expected,
        "dense and in order"
    );
    let of = |id: &str| -> Vec<&str> {
        all.iter()
            .filter(|e| e.message_id == id)
            .map(|e| e.kind.as_str())
            .collect()
    };
    assert_eq!(of(&m1), ["sent", "decrypted", "routed", "acked"]);
    assert_eq!(of(&m2), ["sent", "decrypted", "routed", "fetched"]);
    let acked = all.iter().find(|e| e.kind == "acked").expect("acked");
    assert_eq!(acked.outcome, "rejected");
    assert_eq!(acked.patient_ihi, p1.to_string(), "joined to its message");
    assert_eq!(acked.payload_type, "TEXT");
    let sent2 = all.iter().find(|e| e.message_id == m2).expect("m2");
    assert_eq!(sent2.sender_practitioner, writer.to_string());
    assert!(all.iter().all(|e| !e.canonical.is_empty()));

    let events_of = |id: &str| -> BTreeSet<u64> {
        all.iter()
            .filter(|e| e.message_id == id)
            .map(|e| e.seq)
            .collect()
    };
    let filtered = |req: pb::ReplayRequest| {
        let admin = admin.clone();
        async move { seqs(&replay(&admin, req).await) }
    };
    assert_eq!(
        filtered(pb::ReplayRequest {
            message_id: m1.clone(),
            ..Default::default()
        })
        .await,
        events_of(&m1)
    );
    assert_eq!(
        filtered(pb::ReplayRequest {
            patient: p2.to_string(),
            ..Default::default()
        })
        .await,
        events_of(&m2)
    );
    assert_eq!(
        filtered(pb::ReplayRequest {
            practitioner: writer.to_string(),
            ..Default::default()
        })
        .await,
        events_of(&m2)
    );
    assert_eq!(
        filtered(pb::ReplayRequest {
            kind: "acked".into(),
            ..Default::default()
        })
        .await,
        BTreeSet::from([acked.seq])
    );
    // Every read so far is on record, with its query.
    let reads = replay(
        &admin,
        pb::ReplayRequest {
            kind: "audit_read".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        reads.len(),
        6,
        "the first replay, four filtered ones, this one"
    );
    // The hospital's organisation: its directory entries and the message it receives.
    let hospital_events = filtered(pb::ReplayRequest {
        org: HpiO::from_serial(HOSPITAL).to_string(),
        ..Default::default()
    })
    .await;
    let directory: Vec<&pb::AuditEvent> = all
        .iter()
        .filter(|e| hospital_events.contains(&e.seq) && e.message_id.is_empty())
        .collect();
    assert_eq!(
        directory
            .iter()
            .map(|e| e.kind.as_str())
            .collect::<Vec<_>>(),
        [
            "organisation_registered",
            "keys_provisioned",
            "endpoint_published"
        ]
    );
    assert!(events_of(&m2).is_subset(&hospital_events));
    assert!(events_of(&m1).is_disjoint(&hospital_events));
    // A time window: exactly the events stamped inside it.
    let (from, until) = (all[all.len() / 3].ts_ms, all[2 * all.len() / 3].ts_ms);
    let window: BTreeSet<u64> = all
        .iter()
        .filter(|e| e.ts_ms >= from && e.ts_ms <= until)
        .map(|e| e.seq)
        .collect();
    assert_eq!(
        filtered(pb::ReplayRequest {
            since_ms: from,
            until_ms: until,
            ..Default::default()
        })
        .await,
        window
    );
    // Filters combine.
    assert_eq!(
        filtered(pb::ReplayRequest {
            message_id: m2.clone(),
            kind: "fetched".into(),
            ..Default::default()
        })
        .await
        .len(),
        1
    );
    // One message's history within a range of sequence numbers, in order: the events a
    // scan of that range finds, read through the message's timeline.
    let m2_seqs: Vec<u64> = events_of(&m2).into_iter().collect();
    let (lo, hi) = (m2_seqs[1], m2_seqs[2]);
    let ranged = replay(
        &admin,
        pb::ReplayRequest {
            message_id: m2.clone(),
            from_seq: lo,
            to_seq: hi,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        ranged.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [lo, hi],
        "decrypted and routed only"
    );
    // Views equal their rebuild from the event store, here through the Admin service.
    let mut stream = admin
        .admin()
        .rebuild_views(pb::RebuildViewsRequest { repair: false })
        .await
        .expect("rebuild views")
        .into_inner();
    let (mut folding, mut rebuilt) = (0, None);
    while let Some(p) = stream.message().await.expect("progress") {
        match p.phase.as_str() {
            "folding" => folding += 1,
            "done" => rebuilt = p.report,
            _ => {}
        }
    }
    assert!(folding >= 1, "progress is reported while folding");
    let rebuilt = rebuilt.expect("the last message carries the report");
    assert!(rebuilt.all_equal, "{rebuilt:?}");
    assert_eq!(rebuilt.repaired_keys, 0);
    assert!(
        rebuilt.events > all.len() as u64,
        "the replays since were recorded too"
    );
    assert_views_rebuild(&c);

    // Bad input names the filter.
    let err = admin
        .audit()
        .replay(pb::ReplayRequest {
            patient: "123".into(),
            ..Default::default()
        })
        .await
        .expect_err("a bad IHI");
    assert!(err.message().contains("patient"), "{}", err.message());
}

/// A message its receiver never acknowledged fails (a dead letter); an operator re-drives
/// it: it is routed exactly once more and acknowledged, the dead letters no longer list
/// it, a second re-drive and an organisation's attempt are refused, and the audit trail
/// shows both attempts, the new one linked to the failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reprocess_redrives_a_dead_letter_once_and_the_audit_shows_both_attempts() {
    let (_dir, c, gp, id, lab) = with_dead_letter("r-1").await;
    let admin = client(&c, 2).await;
    let dead = admin
        .admin()
        .dead_letters(pb::DeadLettersRequest::default())
        .await
        .expect("dead letters")
        .into_inner();
    let letter = dead
        .items
        .iter()
        .find(|d| d.message_id == id)
        .expect("listed as a dead letter");
    assert_eq!(letter.reason, "unacknowledged");

    // Organisations may not re-drive; operators may, once per failure.
    let denied = gp
        .admin()
        .reprocess(pb::ReprocessRequest {
            message_id: id.clone(),
            recipient: String::new(),
        })
        .await
        .expect_err("an organisation's certificate");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    let r = admin
        .admin()
        .reprocess(pb::ReprocessRequest {
            message_id: id.clone(),
            recipient: String::new(),
        })
        .await
        .expect("re-driven")
        .into_inner();
    assert_eq!(r.attempts.len(), 1);
    assert_eq!(
        (r.attempts[0].recipient.as_str(), r.attempts[0].failed_seq),
        (lab.as_str(), letter.seq)
    );
    let again = admin
        .admin()
        .reprocess(pb::ReprocessRequest {
            message_id: id.clone(),
            recipient: lab.clone(),
        })
        .await
        .expect_err("already re-driven");
    assert_eq!(again.code(), tonic::Code::FailedPrecondition);
    assert!(
        admin
            .admin()
            .dead_letters(pb::DeadLettersRequest::default())
            .await
            .expect("dead letters")
            .into_inner()
            .items
            .iter()
            .all(|d| d.message_id != id),
        "no longer a dead letter"
    );

    // Routed again, once, and this time acknowledged.
    let lab_client = org_client(&c, 3, LAB).await;
    track_until(&lab_client, &id, "routed again", |r| {
        recipient_state(r, &lab).0 == "routed"
    })
    .await;
    lab_client
        .messaging()
        .ack(pb::AckRequest {
            message_id: id.clone(),
            recipient: lab.clone(),
            status: "accepted".into(),
            note: String::new(),
        })
        .await
        .expect("acknowledged within the new window");
    track_until(&gp, &id, "acked", |r| recipient_state(r, &lab).0 == "acked").await;

    let trail: Vec<String> = replay(
        &admin,
        pb::ReplayRequest {
            message_id: id.clone(),
            ..Default::default()
        },
    )
    .await
    .into_iter()
    .map(|e| e.kind)
    .collect();
    assert_eq!(
        trail,
        [
            "sent",
            "decrypted",
            "routed",
            "failed",
            "reprocessed",
            "decrypted",
            "routed",
            "acked"
        ],
        "both attempts, each routed once"
    );
    let reprocessed = replay(
        &admin,
        pb::ReplayRequest {
            kind: "reprocessed".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(reprocessed.len(), 1);
    assert_eq!(reprocessed[0].seq, r.attempts[0].seq);
    assert!(
        reprocessed[0].actor.starts_with("cert:"),
        "the operator is named"
    );
    assert_views_rebuild(&c);
}

/// After the retention period the payload is dropped on every replica, as an event: the
/// receiver can no longer fetch it, but every hash, the chain, the Merkle tree, the views
/// and the audit records still verify, and the message's history is unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn payloads_are_dropped_after_retention_and_the_chain_still_verifies() {
    let (_dir, c) = messaging_cluster(
        3,
        sealpost_server::config::MessagingOptions {
            deliver_within_ms_default: 1_000,
            deliver_within_ms_max: 1_000,
            ack_window_ms: 1_000,
            payload_retention_ms: 2_500,
            ..messaging_opts()
        },
    )
    .await;
    let gp = org_client(&c, 1, SENDER).await;
    let lab = endpoint(LAB, "results");
    let id = send_ok(
        &gp,
        send_request(std::slice::from_ref(&lab), b"old result", "t-1"),
    )
    .await
    .message_id;
    let lab_client = org_client(&c, 2, LAB).await;
    track_until(&lab_client, &id, "routed", |r| {
        recipient_state(r, &lab).0 == "routed"
    })
    .await;
    let fetch = pb::FetchRequest {
        message_id: id.clone(),
        recipient: String::new(),
    };
    let first = lab_client
        .messaging()
        .fetch(fetch.clone())
        .await
        .expect("fetched while retained")
        .into_inner();
    assert_eq!(first.payload, b"old result");
    lab_client
        .messaging()
        .ack(pb::AckRequest {
            message_id: id.clone(),
            recipient: lab.clone(),
            status: "accepted".into(),
            note: String::new(),
        })
        .await
        .expect("acked");
    let admin = client(&c, 1).await;
    let history_before: Vec<(u64, Vec<u8>)> = replay(
        &admin,
        pb::ReplayRequest {
            message_id: id.clone(),
            ..Default::default()
        },
    )
    .await
    .into_iter()
    .map(|e| (e.seq, e.hash))
    .collect();
    let sent_seq = history_before[0].0;

    // Wait (bounded) for the retention worker's drop to cover the message.
    let deadline = std::time::Instant::now() + WAIT;
    let drop = loop {
        let drops = replay(
            &admin,
            pb::ReplayRequest {
                kind: "payloads_dropped".into(),
                ..Default::default()
            },
        )
        .await;
        // Any drop whose range reaches the send (earlier ones may cover older events).
        let view = c.node(1).expect("node").raft.view().clone();
        let covering = drops.into_iter().find(|d| {
            matches!(
                view.event(d.seq).expect("read").map(|r| r.event),
                Some(sealpost_core::event::Event::PayloadsDropped { through_seq, .. })
                    if through_seq >= sent_seq
            )
        });
        if let Some(d) = covering {
            break d;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no drop covered the message"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert!(drop.actor.starts_with("retention@"), "{}", drop.actor);
    converged(&c).await;
    for id_node in c.running_ids() {
        let view = c.node(id_node).expect("node").raft.view().clone();
        let rec = view
            .event(sent_seq)
            .expect("read")
            .expect("the event stays");
        let sealpost_core::event::Event::Sent { envelope, .. } = &rec.event else {
            panic!("event {sent_seq} is the send");
        };
        assert!(
            envelope.payload_dropped(),
            "node {id_node} dropped the payload"
        );
        assert_eq!(
            rec.computed_hash(),
            rec.hash,
            "node {id_node}: the hash still holds"
        );
        let walked = view
            .verify_chain_range(1, 0)
            .expect("walk")
            .expect("verifies");
        assert!(walked.root.is_some());
    }
    let refused = lab_client
        .messaging()
        .fetch(fetch)
        .await
        .expect_err("the payload is gone");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(
        refused.message().contains("retention"),
        "{}",
        refused.message()
    );
    // The history (every event and its hash) is what it was; the status stays.
    let history_after: Vec<(u64, Vec<u8>)> = replay(
        &admin,
        pb::ReplayRequest {
            message_id: id.clone(),
            ..Default::default()
        },
    )
    .await
    .into_iter()
    .map(|e| (e.seq, e.hash))
    .collect();
    assert_eq!(history_after, history_before);
    assert_eq!(recipient_state(&track(&gp, &id).await, &lab).0, "acked");
    let verdict = admin
        .audit()
        .verify(pb::AuditVerifyRequest::default())
        .await
        .expect("verify")
        .into_inner();
    assert!(verdict.ok, "{}", verdict.problem);
    assert_views_rebuild(&c);
}

/// Audit search over the message index: each criterion (sender, recipient organisation or
/// endpoint, patient, payload type, status, date range, and combinations) returns exactly
/// the matching messages, newest first; a small limit pages through everything with the
/// cursor; a bad criterion is refused by name; every search is itself on record.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn search_finds_exactly_the_matching_messages() {
    let (_dir, c) = messaging_cluster(3, messaging_opts()).await;
    let gp = org_client(&c, 1, SENDER).await;
    let lab_client = org_client(&c, 2, LAB).await;
    let (p1, p2) = (Ihi::from_serial(21), Ihi::from_serial(22));
    let results = endpoint(LAB, "results");
    let cardio = endpoint(HOSPITAL, "cardiology");
    let gp_desk = endpoint(SENDER, "general-practice");
    let send = |client: &sealpost_client::Client, from: u64, req: pb::SendRequest| {
        let client = client.clone();
        async move {
            send_ok(
                &client,
                pb::SendRequest {
                    from_org: HpiO::from_serial(from).to_string(),
                    ..req
                },
            )
            .await
        }
    };
    let m1 = send(
        &gp,
        SENDER,
        pb::SendRequest {
            patient_ihi: p1.to_string(),
            ..send_request(std::slice::from_ref(&results), b"1", "s-1")
        },
    )
    .await;
    let m2 = send(
        &gp,
        SENDER,
        pb::SendRequest {
            patient_ihi: p2.to_string(),
            payload_type: "REF^I12".into(),
            ..send_request(std::slice::from_ref(&cardio), b"2", "s-2")
        },
    )
    .await;
    let m3 = send(
        &lab_client,
        LAB,
        pb::SendRequest {
            patient_ihi: p1.to_string(),
            payload_type: "ORU^R01".into(),
            ..send_request(std::slice::from_ref(&gp_desk), b"3", "s-3")
        },
    )
    .await;
    let m4 = send(
        &gp,
        SENDER,
        send_request(&[results.clone(), cardio.clone()], b"4", "s-4"),
    )
    .await;
    track_until(&lab_client, &m1.message_id, "routed", |r| {
        recipient_state(r, &results).0 == "routed"
    })
    .await;
    lab_client
        .messaging()
        .ack(pb::AckRequest {
            message_id: m1.message_id.clone(),
            recipient: results.clone(),
            status: "accepted".into(),
            note: String::new(),
        })
        .await
        .expect("ack");
    track_until(&gp, &m4.message_id, "routed", |r| {
        recipient_state(r, &results).0 == "routed" && recipient_state(r, &cardio).0 == "routed"
    })
    .await;

    let admin = client(&c, 2).await;
    let ids = |ms: &[&pb::SendReply]| -> Vec<String> {
        ms.iter().map(|m| m.message_id.clone()).collect()
    };
    let search = |req: pb::MessageSearchRequest| {
        let admin = admin.clone();
        async move {
            admin
                .audit()
                .search(req)
                .await
                .expect("search")
                .into_inner()
        }
    };
    let found = |req: pb::MessageSearchRequest| async move {
        search(req)
            .await
            .messages
            .into_iter()
            .map(|m| m.message_id)
            .collect::<Vec<_>>()
    };
    let q = pb::MessageSearchRequest::default;
    assert_eq!(found(q()).await, ids(&[&m4, &m3, &m2, &m1]), "newest first");
    let gp_org = HpiO::from_serial(SENDER).to_string();
    assert_eq!(
        found(pb::MessageSearchRequest {
            sender_org: gp_org.clone(),
            ..q()
        })
        .await,
        ids(&[&m4, &m2, &m1])
    );
    assert_eq!(
        found(pb::MessageSearchRequest {
            recipient: HpiO::from_serial(LAB).to_string(),
            ..q()
        })
        .await,
        ids(&[&m4, &m1])
    );
    assert_eq!(
        found(pb::MessageSearchRequest {
            recipient: cardio.clone(),
            ..q()
        })
        .await,
        ids(&[&m4, &m2])
    );
    assert_eq!(
        found(pb::MessageSearchRequest {
            patient: p1.to_string(),
            ..q()
        })
        .await,
        ids(&[&m3, &m1])
    );
    assert_eq!(
        found(pb::MessageSearchRequest {
            payload_type: "TEXT".into(),
            ..q()
        })
        .await,
        ids(&[&m4, &m1])
    );
    assert_eq!(
        found(pb::MessageSearchRequest {
            status: "acked".into(),
            ..q()
        })
        .await,
        ids(&[&m1])
    );
    assert_eq!(
        found(pb::MessageSearchRequest {
            status: "open".into(),
            ..q()
        })
        .await,
        ids(&[&m4, &m3, &m2])
    );
    assert_eq!(
        found(pb::MessageSearchRequest {
            sender_org: gp_org,
            patient: p1.to_string(),
            ..q()
        })
        .await,
        ids(&[&m1])
    );
    // A window from m2's send time to m3's: exactly the messages stamped inside it (m2 and
    // m3, and any other sent in the same millisecond).
    let all = search(q()).await.messages;
    let sent_ts = |m: &pb::SendReply| {
        all.iter()
            .find(|s| s.message_id == m.message_id)
            .expect("listed")
            .sent_ts_ms
    };
    let (from, until) = (sent_ts(&m2), sent_ts(&m3));
    let inside: Vec<String> = all
        .iter()
        .filter(|s| s.sent_ts_ms >= from && s.sent_ts_ms <= until)
        .map(|s| s.message_id.clone())
        .collect();
    assert!(inside.contains(&m2.message_id) && inside.contains(&m3.message_id));
    assert_eq!(
        found(pb::MessageSearchRequest {
            since_ms: from,
            until_ms: until,
            ..q()
        })
        .await,
        inside
    );
    // One at a time, the cursor walks through everything, in the same order.
    let mut paged = Vec::new();
    let mut cursor = String::new();
    for _ in 0..10 {
        let r = search(pb::MessageSearchRequest {
            limit: 1,
            cursor: cursor.clone(),
            ..q()
        })
        .await;
        paged.extend(r.messages.into_iter().map(|m| m.message_id));
        if r.next_cursor.is_empty() {
            break;
        }
        cursor = r.next_cursor;
    }
    assert_eq!(paged, ids(&[&m4, &m3, &m2, &m1]));
    let bad = admin
        .audit()
        .search(pb::MessageSearchRequest {
            status: "lost".into(),
            ..q()
        })
        .await
        .expect_err("a bad status");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().contains("status"), "{}", bad.message());
    let denied = gp.audit().search(q()).await.expect_err("an organisation");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    // A checkpoint or proof beyond the store is the caller's mistake, named as such.
    let beyond = admin
        .audit()
        .checkpoint(pb::CheckpointRequest {
            size: 1_000_000_000,
        })
        .await
        .expect_err("beyond the store");
    assert_eq!(
        beyond.code(),
        tonic::Code::InvalidArgument,
        "{}",
        beyond.message()
    );
    assert!(
        beyond.message().contains("1000000000"),
        "{}",
        beyond.message()
    );
    let beyond = admin
        .audit()
        .prove_consistency(pb::ConsistencyRequest {
            first: 1,
            second: 1_000_000_000,
        })
        .await
        .expect_err("beyond the store");
    assert_eq!(beyond.code(), tonic::Code::InvalidArgument);
    let reads = replay(
        &admin,
        pb::ReplayRequest {
            kind: "audit_read".into(),
            ..Default::default()
        },
    )
    .await;
    assert!(
        reads.len() >= 15,
        "every search is on record: {}",
        reads.len()
    );
    assert_views_rebuild(&c);
}
