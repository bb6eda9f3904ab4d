//! The store against real databases (a SQLite file, a fresh PostgreSQL database): durability, group commit,
//! claims and leases, outcomes, cancellation, search and pruning. Time moves through a ManualClock.

// A test crate: a failed unwrap is a failed test (see Cargo.toml's [workspace.lints]).
#![allow(clippy::unwrap_used)]

mod common;

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use common::{Backend, T0, TestStore};
use herald::{
    clock::Clock,
    store::{
        Accepted, AttemptOutcome, CancelOutcome, MessageStatus, NewMessage, RawSegment,
        RecipientResult, RecipientStatus, SearchPage, SearchQuery, SharedBlob, Store, StoreError,
        TemplateSource, Unreadable,
    },
};

on_both_stores!(
    accepted_messages_survive_reopening_the_database,
    concurrent_accepts_are_grouped_and_all_stored,
    idempotency_key_returns_the_first_message_and_queues_nothing_new,
    scheduled_messages_are_claimed_only_when_due,
    a_claimed_message_is_not_claimed_twice_until_its_lease_expires,
    outcomes_are_kept_per_recipient_and_only_deferred_ones_are_retried,
    giving_up_fails_the_recipients_still_deferred,
    cancel_works_before_sending_and_is_refused_after,
    search_filters_and_paginates_newest_first,
    shared_parts_are_stored_once_and_pruned_with_the_last_body,
    releasing_leases_makes_messages_due_at_once,
    templates_and_tokens_are_stored,
    the_timeline_names_each_recipient_by_address,
    an_unreadable_value_is_a_corrupt_error_not_a_guess,
);

fn message(n: usize, recipients: &[&str]) -> NewMessage {
    let raw = Bytes::from(format!("Subject: Order {n} shipped\r\n\r\nbody\r\n"));
    NewMessage {
        source: Default::default(),
        subject: format!("Order {n} shipped"),
        search_text: format!("Hello, your parcel number {n} is on its way"),
        ..common::new_message(&format!("msg-{n:06}"), "shop@example.test", recipients, raw)
    }
}

fn result(position: u32, status: RecipientStatus, code: u16, reply: &str) -> RecipientResult {
    RecipientResult {
        position,
        address: format!("recipient{position}@example.test"),
        status,
        smtp_code: Some(code),
        enhanced_status: None,
        reply: Some(reply.into()),
    }
}

async fn accepted_messages_survive_reopening_the_database(t: TestStore) {
    let accepted = t
        .store
        .accept(vec![message(1, &["a@example.test"])])
        .await
        .unwrap();
    assert_eq!(
        accepted,
        vec![Accepted::New {
            id: "msg-000001".into(),
            status: MessageStatus::Queued,
            suppressed: vec![],
        }]
    );
    let (reopened, _dir) = reopen(t).await;
    let view = reopened
        .message("msg-000001")
        .await
        .unwrap()
        .expect("stored");
    assert_eq!(view.status, "queued");
    assert_eq!(view.subject, "Order 1 shipped");
    assert_eq!(view.recipients[0].address, "a@example.test");
    assert_eq!(view.events[0].kind, "queued");
    let raw = reopened.raw("msg-000001").await.unwrap().unwrap();
    assert_eq!(
        raw[0].bytes().as_ref(),
        b"Subject: Order 1 shipped\r\n\r\nbody\r\n"
    );
}

async fn concurrent_accepts_are_grouped_and_all_stored(t: TestStore) {
    let mut tasks = Vec::new();
    for n in 0..200 {
        let store = t.store.clone();
        tasks.push(tokio::spawn(async move {
            store.accept(vec![message(n, &["x@example.test"])]).await
        }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let counts = t.store.counts().await.unwrap();
    assert_eq!(counts.get(&MessageStatus::Queued), Some(&200));
}

async fn idempotency_key_returns_the_first_message_and_queues_nothing_new(t: TestStore) {
    let mut first = message(1, &["a@example.test"]);
    first.idempotency_key = Some("order-1".into());
    let mut again = message(2, &["a@example.test"]);
    again.idempotency_key = Some("order-1".into());
    let mut same_group = message(3, &["a@example.test"]);
    same_group.idempotency_key = Some("order-1".into());
    t.store.accept(vec![first]).await.unwrap();
    let answers = t.store.accept(vec![again, same_group]).await.unwrap();
    for answer in &answers {
        assert_eq!(
            answer,
            &Accepted::Existing {
                id: "msg-000001".into(),
                status: MessageStatus::Queued
            }
        );
    }
    assert!(t.store.message("msg-000002").await.unwrap().is_none());
    assert_eq!(t.store.counts().await.unwrap().values().sum::<u64>(), 1);
}

async fn scheduled_messages_are_claimed_only_when_due(t: TestStore) {
    let mut later = message(1, &["a@example.test"]);
    later.send_at = Some(T0 + 60_000);
    let accepted = t.store.accept(vec![later]).await.unwrap();
    assert_eq!(accepted[0].status(), MessageStatus::Scheduled);
    assert!(
        t.store
            .claim("w1", Duration::from_secs(60), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(t.store.next_due().await.unwrap(), Some(T0 + 60_000));
    t.clock.advance(Duration::from_secs(60));
    let claimed = t
        .store
        .claim("w1", Duration::from_secs(60), 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].recipients[0].address, "a@example.test");
}

async fn a_claimed_message_is_not_claimed_twice_until_its_lease_expires(t: TestStore) {
    t.store
        .accept((0..5).map(|n| message(n, &["a@example.test"])).collect())
        .await
        .unwrap();
    let first = t
        .store
        .claim("w1", Duration::from_secs(300), 3)
        .await
        .unwrap();
    let second = t
        .store
        .claim("w2", Duration::from_secs(300), 10)
        .await
        .unwrap();
    assert_eq!(first.len(), 3);
    assert_eq!(second.len(), 2);
    let mut ids: Vec<_> = first.iter().chain(&second).map(|m| m.id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 5, "no message was handed to two workers");
    assert!(
        t.store
            .claim("w3", Duration::from_secs(300), 10)
            .await
            .unwrap()
            .is_empty()
    );
    // w1 dies: after its lease expires its messages are due again and another worker takes them over.
    t.clock.advance(Duration::from_secs(301));
    let taken_over = t
        .store
        .claim("w3", Duration::from_secs(300), 10)
        .await
        .unwrap();
    assert_eq!(taken_over.len(), 5);
}

async fn outcomes_are_kept_per_recipient_and_only_deferred_ones_are_retried(t: TestStore) {
    t.store
        .accept(vec![message(
            1,
            &["ok@example.test", "later@example.test", "bad@example.test"],
        )])
        .await
        .unwrap();
    let claimed = t
        .store
        .claim("w1", Duration::from_secs(300), 10)
        .await
        .unwrap();
    assert_eq!(claimed[0].recipients.len(), 3);
    t.store
        .record(
            "w1",
            vec![AttemptOutcome {
                id: claimed[0].id.clone(),
                recipients: vec![
                    result(0, RecipientStatus::Delivered, 250, "2.1.5 OK"),
                    result(1, RecipientStatus::Deferred, 451, "4.3.0 try later"),
                    result(2, RecipientStatus::Failed, 550, "5.1.1 no such user"),
                ],
                retry_at: Some(T0 + 30_000),
                detail: "1 delivered, 1 deferred, 1 failed".into(),
                counts_attempt: true,
            }],
        )
        .await
        .unwrap();
    let view = t.store.message("msg-000001").await.unwrap().unwrap();
    assert_eq!(view.status, "deferred");
    assert_eq!(view.attempts, 1);
    let statuses: Vec<_> = view.recipients.iter().map(|r| r.status.as_str()).collect();
    assert_eq!(statuses, ["delivered", "deferred", "failed"]);
    assert_eq!(
        view.recipients[2].smtp_reply.as_deref(),
        Some("5.1.1 no such user")
    );
    assert!(
        view.events
            .iter()
            .any(|e| e.detail.as_deref() == Some("4.3.0 try later"))
    );

    assert!(
        t.store
            .claim("w1", Duration::from_secs(300), 10)
            .await
            .unwrap()
            .is_empty(),
        "not due yet"
    );
    t.clock.advance(Duration::from_secs(30));
    let retry = t
        .store
        .claim("w1", Duration::from_secs(300), 10)
        .await
        .unwrap();
    assert_eq!(retry[0].attempts, 1);
    let addresses: Vec<_> = retry[0]
        .recipients
        .iter()
        .map(|r| r.address.as_str())
        .collect();
    assert_eq!(
        addresses,
        ["later@example.test"],
        "delivered and failed recipients are never resent"
    );
    t.store
        .record(
            "w1",
            vec![AttemptOutcome {
                id: retry[0].id.clone(),
                recipients: vec![result(1, RecipientStatus::Delivered, 250, "OK")],
                retry_at: None,
                detail: "delivered".into(),
                counts_attempt: true,
            }],
        )
        .await
        .unwrap();
    let view = t.store.message("msg-000001").await.unwrap().unwrap();
    assert_eq!(view.status, "delivered");
    assert_eq!(view.attempts, 2);
    assert_eq!(t.store.next_due().await.unwrap(), None);
}

/// Each recipient's result is a timeline line naming the recipient by address, the same on both stores (SQLite
/// once wrote the position there: "delivered · 0" where PostgreSQL showed "delivered · ann@…").
async fn the_timeline_names_each_recipient_by_address(t: TestStore) {
    t.store
        .accept(vec![message(1, &["ann@example.test", "bob@example.test"])])
        .await
        .unwrap();
    let claimed = t
        .store
        .claim("w1", Duration::from_secs(300), 10)
        .await
        .unwrap();
    // The results as the delivery engine makes them: from the claimed recipients.
    let recipients = claimed[0]
        .recipients
        .iter()
        .zip([
            (RecipientStatus::Delivered, 250, "2.0.0 queued as A1"),
            (RecipientStatus::Deferred, 451, "4.2.0 mailbox busy"),
        ])
        .map(|(r, (status, code, reply))| RecipientResult {
            position: r.position,
            address: r.address.clone(),
            status,
            smtp_code: Some(code),
            enhanced_status: None,
            reply: Some(reply.into()),
        })
        .collect();
    t.store
        .record(
            "w1",
            vec![AttemptOutcome {
                id: claimed[0].id.clone(),
                recipients,
                retry_at: Some(T0 + 60_000),
                detail: "1 delivered, 1 deferred".into(),
                counts_attempt: true,
            }],
        )
        .await
        .unwrap();
    let view = t.store.message("msg-000001").await.unwrap().unwrap();
    let timeline: Vec<(&str, Option<&str>, Option<&str>)> = view
        .events
        .iter()
        .map(|e| (e.kind.as_str(), e.recipient.as_deref(), e.detail.as_deref()))
        .collect();
    assert_eq!(
        timeline,
        [
            ("queued", None, None),
            ("sending", None, None),
            (
                "delivered",
                Some("ann@example.test"),
                Some("2.0.0 queued as A1")
            ),
            (
                "deferred",
                Some("bob@example.test"),
                Some("4.2.0 mailbox busy")
            ),
            ("attempt_deferred", None, Some("1 delivered, 1 deferred")),
        ]
    );
}

/// Runs one statement on the test's database, beside the store (to write what Herald itself never writes).
async fn execute_directly(t: &TestStore, sql: &'static str) {
    use sqlx::Connection;
    match t.backend {
        Backend::Sqlite => {
            let url = format!("sqlite://{}", t.dir.path().join("herald.db").display());
            let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
            sqlx::query(sql).execute(&mut conn).await.unwrap();
        }
        Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(t.pg_url.as_deref().unwrap())
                .await
                .unwrap();
            sqlx::query(sql).execute(&mut conn).await.unwrap();
        }
    }
}

/// A status or kind this code does not know is refused, naming where it is, instead of read as `queued`.
async fn an_unreadable_value_is_a_corrupt_error_not_a_guess(t: TestStore) {
    t.store
        .accept(vec![message(1, &["ann@example.test"])])
        .await
        .unwrap();
    let claimed = t
        .store
        .claim("w1", Duration::from_secs(300), 10)
        .await
        .unwrap();
    execute_directly(
        &t,
        "UPDATE recipients SET kind = 'resent-to', status = 'evaporated'",
    )
    .await;
    let read = t.store.message("msg-000001").await.unwrap_err();
    assert!(
        matches!(
            &read,
            StoreError::Corrupt(Unreadable { table: "recipients", column: "kind", value })
                if value == "resent-to"
        ),
        "{read:?}"
    );
    // On the write path too (inside the SQLite writer, in the PostgreSQL transaction): nothing is recorded.
    let recorded = t
        .store
        .record(
            "w1",
            vec![AttemptOutcome {
                id: claimed[0].id.clone(),
                recipients: vec![],
                retry_at: Some(T0 + 60_000),
                detail: "relay down".into(),
                counts_attempt: false,
            }],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            &recorded,
            StoreError::Corrupt(Unreadable { table: "recipients", column: "status", value })
                if value == "evaporated"
        ),
        "{recorded:?}"
    );
    assert_eq!(
        recorded.to_string(),
        r#"unreadable value "evaporated" in recipients.status"#
    );
}

async fn giving_up_fails_the_recipients_still_deferred(t: TestStore) {
    t.store
        .accept(vec![message(1, &["later@example.test"])])
        .await
        .unwrap();
    let claimed = t
        .store
        .claim("w1", Duration::from_secs(300), 10)
        .await
        .unwrap();
    t.store
        .record(
            "w1",
            vec![AttemptOutcome {
                id: claimed[0].id.clone(),
                recipients: vec![result(0, RecipientStatus::Deferred, 451, "try later")],
                retry_at: None,
                detail: "gave up after the maximum age".into(),
                counts_attempt: true,
            }],
        )
        .await
        .unwrap();
    let view = t.store.message("msg-000001").await.unwrap().unwrap();
    assert_eq!(view.status, "failed");
    assert_eq!(view.recipients[0].status, "failed");
    // The recipient's failure is on the timeline after its deferral (the message.failed webhook's line).
    let lines: Vec<(&str, Option<&str>)> = view
        .events
        .iter()
        .map(|e| (e.kind.as_str(), e.recipient.as_deref()))
        .collect();
    let deferred = lines
        .iter()
        .position(|l| l.0 == "deferred" && l.1.is_some());
    let failed = lines
        .iter()
        .position(|l| *l == ("failed", Some("later@example.test")));
    assert!(deferred.is_some() && failed > deferred, "{lines:?}");
    let failed_line = &view.events[failed.unwrap()];
    assert_eq!(
        failed_line.detail.as_deref(),
        Some(herald::store::rules::GAVE_UP_DETAIL)
    );
}

async fn cancel_works_before_sending_and_is_refused_after(t: TestStore) {
    let mut scheduled = message(1, &["a@example.test"]);
    scheduled.send_at = Some(T0 + 3_600_000);
    t.store
        .accept(vec![scheduled, message(2, &["b@example.test"])])
        .await
        .unwrap();
    assert_eq!(
        t.store.cancel("msg-000001").await.unwrap(),
        CancelOutcome::Cancelled
    );
    let claimed = t
        .store
        .claim("w1", Duration::from_secs(300), 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1, "the cancelled message is never claimed");
    assert_eq!(
        t.store.cancel("msg-000002").await.unwrap(),
        CancelOutcome::NotCancellable(MessageStatus::Sending)
    );
    assert_eq!(
        t.store.cancel("nope").await.unwrap(),
        CancelOutcome::NotFound
    );
    t.clock.advance(Duration::from_secs(7_200));
    let later = t
        .store
        .claim("w1", Duration::from_secs(300), 10)
        .await
        .unwrap();
    assert!(
        later.iter().all(|m| m.id != "msg-000001"),
        "cancelled stays cancelled past its send time"
    );
    let view = t.store.message("msg-000001").await.unwrap().unwrap();
    assert_eq!(
        (view.status.as_str(), view.recipients[0].status.as_str()),
        ("cancelled", "cancelled")
    );
}

/// Closes the store and opens the same database again, as a restarted process would.
/// (The folder comes back too: a SQLite database lives only as long as it.)
async fn reopen(t: TestStore) -> (Store, tempfile::TempDir) {
    let clock: Arc<dyn Clock> = Arc::new(t.clock.clone());
    drop(t.store);
    match t.backend {
        Backend::Sqlite => {
            let path = t.dir.path().join("herald.db");
            (
                Store::open(&format!("sqlite://{}", path.display()), clock)
                    .await
                    .unwrap(),
                t.dir,
            )
        }
        Backend::Postgres => (
            Store::open(t.pg_url.as_deref().unwrap(), clock)
                .await
                .unwrap(),
            t.dir,
        ),
    }
}

/// Bytes the store occupies: the SQLite files, or PostgreSQL's tables that hold bodies (TOAST included).
async fn storage_bytes(t: &TestStore) -> u64 {
    use sqlx::{Connection, Row};
    match t.backend {
        Backend::Sqlite => ["herald.db", "herald.db-wal"]
            .iter()
            .map(|f| {
                std::fs::metadata(t.dir.path().join(f))
                    .map(|m| m.len())
                    .unwrap_or(0)
            })
            .sum(),
        Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(t.pg_url.as_deref().unwrap())
                .await
                .unwrap();
            let row = sqlx::query(
                "SELECT pg_total_relation_size('blobs') + pg_total_relation_size('messages')",
            )
            .fetch_one(&mut conn)
            .await
            .unwrap();
            row.get::<i64, _>(0) as u64
        }
    }
}

/// Random-looking bytes PostgreSQL cannot compress away (so a size check sees every copy).
fn incompressible(len: usize) -> Bytes {
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

async fn search(store: &Store, mut query: SearchQuery) -> SearchPage {
    query.limit = 10;
    store.search(&query).await.unwrap()
}

async fn search_filters_and_paginates_newest_first(t: TestStore) {
    for n in 0..25 {
        let to = if n % 5 == 0 {
            "vip@example.test"
        } else {
            "someone@example.test"
        };
        let mut m = message(n, &[to]);
        if n == 7 {
            m.subject = "Password reset for José".into();
        }
        t.store.accept(vec![m]).await.unwrap();
        t.clock.advance(Duration::from_millis(10));
    }
    let hit = search(
        &t.store,
        SearchQuery {
            text: Some("password".into()),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(hit.items.len(), 1);
    assert_eq!(hit.items[0].id, "msg-000007");
    // Diacritics folded; user input with FTS syntax is only text.
    let folded = search(
        &t.store,
        SearchQuery {
            text: Some("jose".into()),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(folded.items.len(), 1);
    let syntax = search(
        &t.store,
        SearchQuery {
            text: Some("\"OR* NEAR(".into()),
            ..Default::default()
        },
    )
    .await;
    assert!(syntax.items.is_empty());

    let vip = search(
        &t.store,
        SearchQuery {
            to: Some("vip@example.test".into()),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(vip.items.len(), 5);

    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = t
            .store
            .search(&SearchQuery {
                limit: 10,
                cursor: cursor.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        seen.extend(page.items.iter().map(|m| m.id.clone()));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let expected: Vec<String> = (0..25).rev().map(|n| format!("msg-{n:06}")).collect();
    assert_eq!(seen, expected);
    let bad = SearchQuery {
        cursor: Some("garbage".into()),
        limit: 10,
        ..Default::default()
    };
    assert!(
        t.store
            .search(&bad)
            .await
            .unwrap_err()
            .to_string()
            .contains("cursor")
    );
}

async fn shared_parts_are_stored_once_and_pruned_with_the_last_body(t: TestStore) {
    let pdf = SharedBlob::new(incompressible(50_000));
    let batch: Vec<NewMessage> = (0..100)
        .map(|n| {
            let mut m = message(n, &["a@example.test"]);
            m.raw.push(RawSegment::Shared {
                blob: pdf.clone(),
                dot_safe: true,
            });
            m
        })
        .collect();
    t.store.accept(batch).await.unwrap();
    let raw = t.store.raw("msg-000042").await.unwrap().unwrap();
    assert_eq!(
        raw[1],
        RawSegment::Shared {
            blob: pdf.clone(),
            dot_safe: true
        }
    );
    let size = storage_bytes(&t).await;
    assert!(
        size < 100 * 50_000 / 4,
        "database holds the 50 KB part once, not 100 times: {size} bytes"
    );

    let claimed = t
        .store
        .claim("w1", Duration::from_secs(300), 100)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 100);
    assert!(Arc::ptr_eq(
        match &claimed[0].raw[1] {
            RawSegment::Shared { blob, .. } => blob,
            other => panic!("{other:?}"),
        },
        match &claimed[99].raw[1] {
            RawSegment::Shared { blob, .. } => blob,
            other => panic!("{other:?}"),
        },
    ));
    let outcomes = claimed
        .iter()
        .map(|c| AttemptOutcome {
            id: c.id.clone(),
            recipients: vec![result(0, RecipientStatus::Delivered, 250, "OK")],
            retry_at: None,
            detail: "delivered".into(),
            counts_attempt: true,
        })
        .collect();
    t.store.record("w1", outcomes).await.unwrap();
    t.clock.advance(Duration::from_secs(1));
    assert_eq!(t.store.prune_raw(t.clock.now()).await.unwrap(), 100);
    assert!(t.store.raw("msg-000042").await.unwrap().is_none());
    let view = t.store.message("msg-000042").await.unwrap().unwrap();
    assert_eq!(view.status, "delivered", "status and events are kept");
}

async fn releasing_leases_makes_messages_due_at_once(t: TestStore) {
    t.store
        .accept(vec![message(1, &["a@example.test"])])
        .await
        .unwrap();
    assert_eq!(
        t.store
            .claim("w1", Duration::from_secs(300), 10)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(t.store.release_leases("w1").await.unwrap(), 1);
    assert_eq!(
        t.store.message("msg-000001").await.unwrap().unwrap().status,
        "queued"
    );
    assert_eq!(
        t.store
            .claim("w2", Duration::from_secs(300), 10)
            .await
            .unwrap()
            .len(),
        1
    );
}

async fn templates_and_tokens_are_stored(t: TestStore) {
    let mut welcome = TemplateSource {
        name: "welcome".into(),
        subject: "Hi {{ name }}".into(),
        text: None,
        html: Some("<p>Hi {{ name }}</p>".into()),
    };
    t.store
        .put_template(&welcome, Some("newsletter"))
        .await
        .unwrap();
    let stored = t.store.template("welcome").await.unwrap().unwrap();
    assert_eq!(stored.unsubscribe_list.as_deref(), Some("newsletter"));
    welcome.text = Some("Hi {{ name }}".into());
    t.store.put_template(&welcome, None).await.unwrap();
    let stored = t.store.template("welcome").await.unwrap().unwrap();
    assert_eq!(stored.source, welcome, "the second put replaced the first");
    assert_eq!(stored.unsubscribe_list, None, "and its unsubscribe");
    assert_eq!(t.store.templates().await.unwrap().len(), 1);
    assert!(t.store.template("nope").await.unwrap().is_none());
    assert!(t.store.delete_template("welcome").await.unwrap());
    assert!(!t.store.delete_template("welcome").await.unwrap());

    let hash = [7u8; 32];
    assert!(t.store.create_token("ci", &hash).await.unwrap());
    assert!(
        !t.store.create_token("ci", &[8u8; 32]).await.unwrap(),
        "names are unique"
    );
    assert!(t.store.token_hash_exists(&hash).await.unwrap());
    assert!(!t.store.token_hash_exists(&[9u8; 32]).await.unwrap());
    assert_eq!(t.store.tokens().await.unwrap()[0].name, "ci");
    assert!(t.store.revoke_token("ci").await.unwrap());
    assert!(!t.store.token_hash_exists(&hash).await.unwrap());
}

mod dashboard {
    //! What the dashboard reads: maintained counters and activity, tag and recipient search, timeline notes.

    use std::time::Duration;

    use herald::{
        clock::{Clock, SystemClock},
        store::{
            AttemptOutcome, MessageStatus, NewMessage, RecipientStatus, SearchQuery, Store,
            StoreError,
        },
    };

    use super::{message, result};
    use crate::common::{Backend, T0, TestStore};

    crate::on_both_stores!(
        counters_match_counting_the_messages,
        activity_counts_accepts_and_outcomes_per_minute,
        tags_filter_newest_first_across_pages,
        search_rows_carry_the_first_recipients_and_their_count,
        text_search_pages_match_creation_order_with_ties,
        text_search_stays_exact_after_the_clock_goes_back,
        events_are_appended_to_existing_messages_only,
        busy_addresses_and_common_words_page_like_rare_ones,
        upkeep_runs_and_keeps_the_counts,
    );

    /// `herald serve`'s upkeep (VACUUM of the counters on PostgreSQL, nothing on SQLite) runs between writes.
    async fn upkeep_runs_and_keeps_the_counts(t: TestStore) {
        t.store
            .accept((0..20).map(|i| message(i, &["a@example.test"])).collect())
            .await
            .unwrap();
        t.store.maintain().await.unwrap();
        t.store.maintain().await.unwrap();
        assert_eq!(
            t.store.counts().await.unwrap().get(&MessageStatus::Queued),
            Some(&20)
        );
    }

    /// Past 2,000 matches, a recipient or a word filter walks the archive instead of sorting its matches
    /// (both stores): the pages must be the same as for a rare filter, every message once, newest first.
    async fn busy_addresses_and_common_words_page_like_rare_ones(t: TestStore) {
        let n = 2_100;
        for chunk in (0..n).collect::<Vec<_>>().chunks(700) {
            t.store
                .accept(
                    chunk
                        .iter()
                        .map(|&i| message(i, &["ops@example.test", &format!("u{i}@example.test")]))
                        .collect(),
                )
                .await
                .unwrap();
        }
        let all_pages = async |query: SearchQuery| {
            let mut seen = Vec::new();
            let mut cursor = None;
            loop {
                let page = t
                    .store
                    .search(&SearchQuery {
                        limit: 400,
                        cursor,
                        ..query.clone()
                    })
                    .await
                    .unwrap();
                seen.extend(page.items.iter().map(|m| (m.created_at, m.id.clone())));
                match page.next_cursor {
                    Some(next) => cursor = Some(next),
                    None => return seen,
                }
            }
        };
        for query in [
            SearchQuery {
                to: Some("ops@example.test".into()),
                ..Default::default()
            },
            SearchQuery {
                text: Some("parcel".into()),
                ..Default::default()
            },
        ] {
            let seen = all_pages(query.clone()).await;
            let mut expected = seen.clone();
            expected.sort_by(|a, b| b.cmp(a));
            expected.dedup();
            assert_eq!(seen.len(), n, "{query:?}: every message once");
            assert_eq!(seen, expected, "{query:?}: newest first, no repeats");
        }
        let one = all_pages(SearchQuery {
            to: Some("u2042@example.test".into()),
            ..Default::default()
        })
        .await;
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].1, "msg-002042");
    }

    /// `SELECT status, COUNT(*) FROM messages GROUP BY status`, straight from the database.
    async fn counted(t: &TestStore) -> std::collections::HashMap<MessageStatus, u64> {
        use sqlx::{Connection, Row};
        let sql = "SELECT status, COUNT(*) FROM messages GROUP BY status";
        let rows: Vec<(String, i64)> = match t.backend {
            Backend::Sqlite => {
                let url = format!("sqlite://{}", t.dir.path().join("herald.db").display());
                let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
                sqlx::query(sql)
                    .fetch_all(&mut conn)
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| (r.get(0), r.get(1)))
                    .collect()
            }
            Backend::Postgres => {
                let mut conn = sqlx::PgConnection::connect(t.pg_url.as_deref().unwrap())
                    .await
                    .unwrap();
                sqlx::query(sql)
                    .fetch_all(&mut conn)
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| (r.get(0), r.get(1)))
                    .collect()
            }
        };
        rows.into_iter()
            .map(|(s, n)| (s.parse().unwrap(), n as u64))
            .collect()
    }

    fn outcome(id: &str, status: RecipientStatus, retry_at: Option<i64>) -> AttemptOutcome {
        AttemptOutcome {
            id: id.into(),
            recipients: vec![result(0, status, 250, "reply")],
            retry_at,
            detail: "attempt".into(),
            counts_attempt: true,
        }
    }

    async fn counters_match_counting_the_messages(t: TestStore) {
        let mut batch: Vec<NewMessage> = (0..20).map(|n| message(n, &["a@example.test"])).collect();
        batch[0].send_at = Some(T0 + 3_600_000);
        batch[1].send_at = Some(T0 + 3_600_000);
        t.store.accept(batch).await.unwrap();
        assert_eq!(t.store.counts().await.unwrap(), counted(&t).await);

        let claimed = t
            .store
            .claim("w1", Duration::from_secs(300), 12)
            .await
            .unwrap();
        assert_eq!(claimed.len(), 12);
        assert_eq!(t.store.counts().await.unwrap(), counted(&t).await);
        let ids: Vec<&str> = claimed.iter().map(|c| c.id.as_str()).collect();
        t.store
            .record(
                "w1",
                vec![
                    outcome(ids[0], RecipientStatus::Delivered, None),
                    outcome(ids[1], RecipientStatus::Delivered, None),
                    outcome(ids[2], RecipientStatus::Deferred, Some(T0 + 60_000)),
                    outcome(ids[3], RecipientStatus::Failed, None),
                    // Deferred with no retry left: gives up, failed.
                    outcome(ids[4], RecipientStatus::Deferred, None),
                ],
            )
            .await
            .unwrap();
        assert_eq!(
            t.store.cancel("msg-000000").await.unwrap(),
            herald::store::CancelOutcome::Cancelled
        );
        assert_eq!(t.store.release_leases("w1").await.unwrap(), 7);
        let counts = t.store.counts().await.unwrap();
        assert_eq!(counts, counted(&t).await);
        assert_eq!(counts.get(&MessageStatus::Delivered), Some(&2));
        assert_eq!(counts.get(&MessageStatus::Failed), Some(&2));
        assert_eq!(counts.get(&MessageStatus::Cancelled), Some(&1));
        assert_eq!(counts.get(&MessageStatus::Scheduled), Some(&1));
        assert_eq!(
            counts.get(&MessageStatus::Sending),
            None,
            "a status with none is left out"
        );
        assert_eq!(counts.values().sum::<u64>(), 20);

        // Again on the retried message, and a cancel of a deferred one.
        t.clock.advance(Duration::from_secs(60));
        let again = t
            .store
            .claim("w2", Duration::from_secs(300), 100)
            .await
            .unwrap();
        assert_eq!(again.len(), 14);
        t.store
            .record(
                "w2",
                vec![outcome(
                    ids[2],
                    RecipientStatus::Deferred,
                    Some(T0 + 600_000),
                )],
            )
            .await
            .unwrap();
        t.store.release_leases("w2").await.unwrap();
        t.store.cancel(ids[2]).await.unwrap();
        assert_eq!(t.store.counts().await.unwrap(), counted(&t).await);
    }

    async fn activity_counts_accepts_and_outcomes_per_minute(t: TestStore) {
        // Activity is kept in wall-clock time, whatever the store's clock says.
        let start = SystemClock.now();
        t.store
            .accept((0..5).map(|n| message(n, &["a@example.test"])).collect())
            .await
            .unwrap();
        let claimed = t
            .store
            .claim("w1", Duration::from_secs(300), 10)
            .await
            .unwrap();
        t.store
            .record(
                "w1",
                vec![
                    outcome(&claimed[0].id, RecipientStatus::Delivered, None),
                    outcome(&claimed[1].id, RecipientStatus::Delivered, None),
                    outcome(&claimed[2].id, RecipientStatus::Failed, None),
                    outcome(&claimed[3].id, RecipientStatus::Deferred, Some(T0 + 60_000)),
                ],
            )
            .await
            .unwrap();
        let buckets = t.store.activity(start - 600_000, 60_000).await.unwrap();
        assert!(!buckets.is_empty() && buckets.len() <= 2, "{buckets:?}");
        assert!(
            buckets.windows(2).all(|w| w[0].start < w[1].start),
            "ascending"
        );
        assert!(buckets.iter().all(|b| b.start % 60_000 == 0));
        let sum = |f: fn(&herald::store::ActivityBucket) -> u64| buckets.iter().map(f).sum::<u64>();
        assert_eq!(
            (
                sum(|b| b.accepted),
                sum(|b| b.delivered),
                sum(|b| b.failed),
                sum(|b| b.deferred)
            ),
            (5, 2, 1, 1)
        );
        // Wider buckets hold the same totals; a bucket holding `since` is included whole.
        let hours = t.store.activity(start, 3_600_000).await.unwrap();
        assert_eq!(hours.iter().map(|b| b.accepted).sum::<u64>(), 5);
        assert_eq!(hours[0].start % 3_600_000, 0);
        assert!(
            t.store
                .activity(SystemClock.now() + 120_000, 60_000)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(matches!(
            t.store.activity(start, 90_000).await,
            Err(StoreError::InvalidQuery(_))
        ));
        assert!(t.store.prune_activity(start - 600_000).await.unwrap() == 0);
        assert!(
            t.store
                .prune_activity(SystemClock.now() + 60_000)
                .await
                .unwrap()
                >= 1
        );
        assert!(
            t.store
                .activity(start - 600_000, 60_000)
                .await
                .unwrap()
                .is_empty()
        );
    }

    async fn page(store: &Store, query: &SearchQuery) -> Vec<String> {
        let mut seen = Vec::new();
        let mut query = query.clone();
        loop {
            let page = store.search(&query).await.unwrap();
            seen.extend(page.items.iter().map(|m| m.id.clone()));
            match page.next_cursor {
                Some(next) => query.cursor = Some(next),
                None => return seen,
            }
        }
    }

    async fn tags_filter_newest_first_across_pages(t: TestStore) {
        // Two groups of messages stored in one commit each (equal created_at): ties are ordered by id.
        for group in 0..2 {
            let batch: Vec<NewMessage> = (0..10)
                .rev()
                .map(|i| {
                    let n = group * 10 + i;
                    let mut m = message(n, &["a@example.test"]);
                    m.tags = match n % 3 {
                        0 => vec!["welcome".into(), "eu".into(), "welcome".into()],
                        1 => vec!["welcome".into()],
                        _ => vec!["billing".into()],
                    };
                    m
                })
                .collect();
            t.store.accept(batch).await.unwrap();
            t.clock.advance(Duration::from_millis(5));
        }
        let welcome = SearchQuery {
            tag: Some("welcome".into()),
            limit: 3,
            ..Default::default()
        };
        let expected: Vec<String> = (0..20)
            .rev()
            .filter(|n| n % 3 != 2)
            .map(|n| format!("msg-{n:06}"))
            .collect();
        assert_eq!(page(&t.store, &welcome).await, expected);
        let eu = SearchQuery {
            tag: Some("eu".into()),
            limit: 50,
            ..Default::default()
        };
        assert_eq!(t.store.search(&eu).await.unwrap().items.len(), 7);
        let none = SearchQuery {
            tag: Some("welcom".into()),
            limit: 50,
            ..Default::default()
        };
        assert!(
            t.store.search(&none).await.unwrap().items.is_empty(),
            "exact tags only"
        );
        // With other filters: the tag and a status, and a time range.
        t.store.cancel("msg-000019").await.unwrap();
        let cancelled = SearchQuery {
            tag: Some("welcome".into()),
            status: Some(MessageStatus::Cancelled),
            limit: 50,
            ..Default::default()
        };
        let items = t.store.search(&cancelled).await.unwrap().items;
        assert_eq!(
            items.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
            ["msg-000019"]
        );
        let first_group = SearchQuery {
            tag: Some("welcome".into()),
            until: Some(T0 + 1),
            limit: 50,
            ..Default::default()
        };
        assert_eq!(t.store.search(&first_group).await.unwrap().items.len(), 7);
    }

    async fn search_rows_carry_the_first_recipients_and_their_count(t: TestStore) {
        let many = [
            "e@example.test",
            "d@example.test",
            "c@example.test",
            "b@example.test",
            "a@example.test",
        ];
        t.store
            .accept(vec![
                message(1, &many),
                message(2, &["solo@example.test"]),
                message(3, &["x@example.test", "y@example.test"]),
            ])
            .await
            .unwrap();
        let page = t
            .store
            .search(&SearchQuery {
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        let rows: Vec<(&str, Vec<&str>, u32)> = page
            .items
            .iter()
            .map(|m| {
                (
                    m.id.as_str(),
                    m.to.iter().map(String::as_str).collect(),
                    m.recipient_count,
                )
            })
            .collect();
        assert_eq!(
            rows,
            [
                ("msg-000003", vec!["x@example.test", "y@example.test"], 2),
                ("msg-000002", vec!["solo@example.test"], 1),
                (
                    "msg-000001",
                    vec!["e@example.test", "d@example.test", "c@example.test"],
                    5
                ),
            ]
        );
        let to = SearchQuery {
            to: Some("a@example.test".into()),
            limit: 10,
            ..Default::default()
        };
        let found = t.store.search(&to).await.unwrap();
        assert_eq!(
            found.items[0].recipient_count, 5,
            "the count is of all recipients, not the matching one"
        );
    }

    async fn text_search_pages_match_creation_order_with_ties(t: TestStore) {
        // Groups of equal created_at, each stored in reverse id order, so rowid order differs from id order.
        for group in 0..4 {
            let batch: Vec<NewMessage> = (0..9)
                .rev()
                .map(|i| {
                    let n = group * 9 + i;
                    let mut m = message(n, &["a@example.test"]);
                    m.search_text = if n % 4 == 0 {
                        "parcel rare".into()
                    } else {
                        "parcel".into()
                    };
                    m
                })
                .collect();
            t.store.accept(batch).await.unwrap();
            t.clock.advance(Duration::from_millis(10));
        }
        let all: Vec<String> = (0..36).rev().map(|n| format!("msg-{n:06}")).collect();
        for limit in [1, 4, 7, 9, 10, 50] {
            let q = SearchQuery {
                text: Some("parcel".into()),
                limit,
                ..Default::default()
            };
            assert_eq!(page(&t.store, &q).await, all, "limit {limit}");
        }
        let rare: Vec<String> = (0..36)
            .rev()
            .filter(|n| n % 4 == 0)
            .map(|n| format!("msg-{n:06}"))
            .collect();
        let q = SearchQuery {
            text: Some("rare".into()),
            limit: 2,
            ..Default::default()
        };
        assert_eq!(page(&t.store, &q).await, rare);
        // Time bounds with words: the second and third groups only.
        let q = SearchQuery {
            text: Some("parcel".into()),
            since: Some(T0 + 10),
            until: Some(T0 + 30),
            limit: 5,
            ..Default::default()
        };
        assert_eq!(page(&t.store, &q).await, all[9..27].to_vec());
        // With a status and a tag as well.
        t.store.cancel("msg-000008").await.unwrap();
        let q = SearchQuery {
            text: Some("rare".into()),
            status: Some(MessageStatus::Cancelled),
            limit: 5,
            ..Default::default()
        };
        assert_eq!(page(&t.store, &q).await, ["msg-000008"]);
    }

    async fn text_search_stays_exact_after_the_clock_goes_back(t: TestStore) {
        t.clock.advance(Duration::from_secs(10));
        t.store
            .accept(vec![message(1, &["a@example.test"])])
            .await
            .unwrap();
        t.clock.set(T0);
        t.store
            .accept(vec![message(2, &["a@example.test"])])
            .await
            .unwrap();
        let q = SearchQuery {
            text: Some("parcel".into()),
            limit: 1,
            ..Default::default()
        };
        assert_eq!(
            page(&t.store, &q).await,
            ["msg-000001", "msg-000002"],
            "created_at order, not insertion order"
        );
    }

    async fn events_are_appended_to_existing_messages_only(t: TestStore) {
        t.store
            .accept(vec![message(1, &["a@example.test"])])
            .await
            .unwrap();
        t.clock.advance(Duration::from_secs(1));
        assert!(
            t.store
                .append_event("msg-000001", "note", Some("resent by ops".into()))
                .await
                .unwrap()
        );
        assert!(
            t.store
                .append_event("msg-000001", "opened", None)
                .await
                .unwrap()
        );
        assert!(!t.store.append_event("nope", "note", None).await.unwrap());
        let view = t.store.message("msg-000001").await.unwrap().unwrap();
        let last: Vec<_> = view
            .events
            .iter()
            .rev()
            .take(2)
            .map(|e| (e.kind.as_str(), e.detail.as_deref(), e.at))
            .collect();
        assert_eq!(
            last,
            [
                ("opened", None, T0 + 1_000),
                ("note", Some("resent by ops"), T0 + 1_000)
            ]
        );
    }
}
