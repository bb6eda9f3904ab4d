//! Leases, renewals and node membership against real databases (a SQLite file, a fresh PostgreSQL
//! database): renewed leases are not taken over, a node that lost a lease cannot record over its new owner,
//! a SQLite file has one serving process which takes back what its dead predecessor was sending, and on
//! PostgreSQL a node whose heartbeat stopped has its messages released by the others. Time moves through a
//! ManualClock.

// A test crate: a failed unwrap is a failed test (see Cargo.toml's [workspace.lints]).
#![allow(clippy::unwrap_used)]

mod common;

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use common::{Backend, TestStore};
use herald::{
    clock::Clock,
    store::{
        AttemptOutcome, EVENT_INTERRUPTED, EVENT_STALE_OUTCOME, MessageStatus, NodeInfo,
        RecipientResult, RecipientStatus, Store, StoreError,
    },
};

on_both_stores!(
    a_renewed_lease_is_not_taken_over,
    an_outcome_from_a_node_that_lost_the_lease_is_not_applied,
    a_late_outcome_is_applied_while_nobody_took_the_message_over,
);

const LEASE: Duration = Duration::from_secs(30);

async fn accept(t: &TestStore, n: usize) -> Vec<String> {
    let messages: Vec<_> = (0..n)
        .map(|i| {
            common::new_message(
                &format!("msg-{i:04}"),
                "shop@example.test",
                &["a@example.test"],
                Bytes::from(format!("Subject: {i}\r\n\r\nbody\r\n")),
            )
        })
        .collect();
    t.store.accept(messages).await.unwrap();
    (0..n).map(|i| format!("msg-{i:04}")).collect()
}

fn delivered(id: &str) -> AttemptOutcome {
    AttemptOutcome {
        id: id.into(),
        recipients: vec![RecipientResult {
            position: 0,
            address: "a@example.test".into(),
            status: RecipientStatus::Delivered,
            smtp_code: Some(250),
            enhanced_status: Some("2.0.0".into()),
            reply: Some("250 2.0.0 Ok".into()),
        }],
        retry_at: None,
        detail: "via test: 1 delivered".into(),
        counts_attempt: true,
    }
}

fn node(id: &str) -> NodeInfo {
    NodeInfo {
        id: id.into(),
        host: "test-host".into(),
        pid: 4242,
    }
}

async fn event_kinds(store: &Store, id: &str) -> Vec<String> {
    let view = store.message(id).await.unwrap().unwrap();
    view.events.into_iter().map(|e| e.kind).collect()
}

async fn a_renewed_lease_is_not_taken_over(t: TestStore) {
    let ids = accept(&t, 4).await;
    assert_eq!(t.store.claim("w1", LEASE, 10).await.unwrap().len(), 4);
    // w1 is alive and renews three of its four messages every third of the lease, for several leases.
    let held: Vec<String> = ids[..3].to_vec();
    for _ in 0..5 {
        t.clock.advance(LEASE / 3);
        assert_eq!(t.store.renew_leases("w1", LEASE, &held).await.unwrap(), 3);
        assert!(
            t.store.claim("w2", LEASE, 10).await.unwrap().len() <= 1,
            "only the message w1 stopped renewing may be taken over"
        );
    }
    // The fourth, not renewed, was taken over by w2 once its lease ran out; the renewed ones never were.
    for id in &held {
        let view = t.store.message(id).await.unwrap().unwrap();
        assert_eq!(view.status, "sending");
        assert_eq!(
            event_kinds(&t.store, id).await,
            vec!["queued", "sending"],
            "claimed once: {id}"
        );
    }
    let fourth = event_kinds(&t.store, &ids[3]).await;
    let claims = fourth.iter().filter(|kind| *kind == "sending").count();
    assert_eq!(claims, 2, "taken over once: {fourth:?}");
    if t.backend == Backend::Postgres {
        // A node that stopped renewing is a dead node: its attempt shows as interrupted.
        assert_eq!(fourth[2], EVENT_INTERRUPTED, "{fourth:?}");
    }
    // A renewal by a node that no longer holds the lease changes nothing.
    assert_eq!(
        t.store
            .renew_leases("w1", LEASE, std::slice::from_ref(&ids[3]))
            .await
            .unwrap(),
        0
    );
}

async fn an_outcome_from_a_node_that_lost_the_lease_is_not_applied(t: TestStore) {
    let ids = accept(&t, 1).await;
    t.store.claim("w1", LEASE, 10).await.unwrap();
    t.clock.advance(LEASE + Duration::from_secs(1));
    // w1 stalled past its lease; w2 takes the message over.
    assert_eq!(t.store.claim("w2", LEASE, 10).await.unwrap().len(), 1);
    t.store
        .record("w1", vec![delivered(&ids[0])])
        .await
        .unwrap();
    let view = t.store.message(&ids[0]).await.unwrap().unwrap();
    assert_eq!(view.status, "sending", "still w2's: {view:?}");
    assert_eq!(
        view.recipients[0].status, "pending",
        "w1's result was not applied"
    );
    assert_eq!(view.attempts, 0);
    assert!(
        event_kinds(&t.store, &ids[0])
            .await
            .contains(&EVENT_STALE_OUTCOME.to_owned())
    );
    // The owner's outcome is applied.
    t.store
        .record("w2", vec![delivered(&ids[0])])
        .await
        .unwrap();
    let view = t.store.message(&ids[0]).await.unwrap().unwrap();
    assert_eq!((view.status.as_str(), view.attempts), ("delivered", 1));
}

async fn a_late_outcome_is_applied_while_nobody_took_the_message_over(t: TestStore) {
    let ids = accept(&t, 1).await;
    t.store.claim("w1", LEASE, 10).await.unwrap();
    t.clock.advance(LEASE * 2);
    // The lease ran out but no one claimed the message: w1's outcome is still the truth, and recording it
    // saves a second delivery.
    t.store
        .record("w1", vec![delivered(&ids[0])])
        .await
        .unwrap();
    let view = t.store.message(&ids[0]).await.unwrap().unwrap();
    assert_eq!(view.status, "delivered");
    assert!(t.store.claim("w2", LEASE, 10).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_has_one_serving_process_which_takes_back_what_was_sending() {
    let t = common::open(Backend::Sqlite).await.unwrap();
    let ids = accept(&t, 5).await;
    // A previous process claimed three and died (nothing recorded); one of them was on its second attempt.
    let claimed = t.store.claim("dead-node", LEASE, 3).await.unwrap();
    assert_eq!(claimed.len(), 3);
    let first = node("node-a");
    let membership = t.store.join(&first).await.unwrap();
    assert_eq!(
        membership.recovered, 3,
        "every sending message is taken back at start"
    );
    // A second server on the same file is refused, naming the file and who holds it.
    let path = t.dir.path().join("herald.db");
    let second = Store::open(
        &format!("sqlite://{}", path.display()),
        Arc::new(t.clock.clone()) as Arc<dyn Clock>,
    )
    .await
    .unwrap();
    let refused = second.join(&node("node-b")).await.unwrap_err();
    assert!(matches!(refused, StoreError::Locked { .. }), "{refused:?}");
    let text = refused.to_string();
    assert!(
        text.contains(&path.display().to_string())
            && text.contains("node-a")
            && text.contains("pid 4242"),
        "{text}"
    );
    // Taken back at once, due now, attempts unspent, the attempt shown as interrupted.
    for message in &claimed {
        let view = t.store.message(&message.id).await.unwrap().unwrap();
        assert_eq!(view.status, "queued");
        assert_eq!(view.attempts, 0, "an interruption is not a failed attempt");
        assert_eq!(
            event_kinds(&t.store, &message.id)
                .await
                .last()
                .map(String::as_str),
            Some(EVENT_INTERRUPTED)
        );
    }
    assert_eq!(t.store.claim("node-a", LEASE, 10).await.unwrap().len(), 5);
    // Once the first server is gone, the file can be served again.
    drop(membership);
    let again = second.join(&node("node-b")).await.unwrap();
    assert_eq!(
        again.recovered, 5,
        "node-a's claims were left sending: it is gone"
    );
    let counts = t.store.counts().await.unwrap();
    assert_eq!(
        counts.get(&MessageStatus::Queued),
        Some(&ids.len().try_into().unwrap())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_nodes_release_the_leases_of_a_node_seen_dead() {
    let Some(t) = common::open(Backend::Postgres).await else {
        return;
    };
    let ids = accept(&t, 6).await;
    let (a, b) = (node("node-a"), node("node-b"));
    t.store.join(&a).await.unwrap();
    t.store.join(&b).await.unwrap();
    assert_eq!(t.store.heartbeat(&a, LEASE).await.unwrap().live_nodes, 2);
    let a_ids: Vec<String> = t
        .store
        .claim("node-a", LEASE, 2)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(a_ids.len(), 2);
    let b_claimed = t.store.claim("node-b", LEASE, 3).await.unwrap();
    assert_eq!(b_claimed.len(), 3);
    // b keeps beating for a while, then dies; a keeps beating and renewing.
    t.clock.advance(LEASE / 3);
    assert_eq!(t.store.heartbeat(&b, LEASE).await.unwrap().live_nodes, 2);
    for beat in 1..=3 {
        t.clock.advance(LEASE / 3);
        let report = t.store.heartbeat(&a, LEASE).await.unwrap();
        assert!(report.dead_nodes.is_empty(), "b beat at most one lease ago");
        // b stops counting for the limits' split once more than two beats have passed since its last, before it
        // is swept as dead (after a lease).
        let expected_live = if beat <= 2 { 2 } else { 1 };
        assert_eq!(
            report.live_nodes, expected_live,
            "beats missed by b: {beat}"
        );
        assert_eq!(
            t.store.renew_leases("node-a", LEASE, &a_ids).await.unwrap(),
            2
        );
    }
    t.clock.advance(LEASE / 3 + Duration::from_millis(1));
    let report = t.store.heartbeat(&a, LEASE).await.unwrap();
    t.store.renew_leases("node-a", LEASE, &a_ids).await.unwrap();
    assert_eq!(report.dead_nodes, vec!["node-b".to_owned()]);
    assert_eq!(report.released, 3);
    assert_eq!(report.live_nodes, 1);
    for message in &b_claimed {
        let view = t.store.message(&message.id).await.unwrap().unwrap();
        assert_eq!((view.status.as_str(), view.attempts), ("queued", 0));
        assert_eq!(
            event_kinds(&t.store, &message.id)
                .await
                .last()
                .map(String::as_str),
            Some(EVENT_INTERRUPTED)
        );
    }
    // Swept once: the next beat finds nobody dead. a's own renewed messages were never released.
    assert!(
        t.store
            .heartbeat(&a, LEASE)
            .await
            .unwrap()
            .dead_nodes
            .is_empty()
    );
    let due = t.store.claim("node-a", LEASE, 10).await.unwrap();
    assert_eq!(due.len(), 4, "b's three and the one nobody claimed");
    // Graceful leave removes the row: one live node.
    t.store.leave(&a).await.unwrap();
    assert_eq!(t.store.heartbeat(&b, LEASE).await.unwrap().live_nodes, 1);
    assert_eq!(ids.len(), 6);
}
