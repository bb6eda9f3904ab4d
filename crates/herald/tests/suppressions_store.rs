//! The suppression list in the store (issue 12), on SQLite and PostgreSQL: the accept-time check (global,
//! scoped, expired, ignored, every recipient), the entry a bad-mailbox failure adds with the outcome, paging,
//! the stored link-token key, and the pruning of expired entries.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{T0, TestStore};
use herald::{
    clock::Clock,
    store::{
        Accepted, AttemptOutcome, MessageStatus, NewMessage, NewSuppression, RecipientResult,
        RecipientStatus, SuppressionQuery, SuppressionReason,
    },
};

on_both_stores!(
    a_suppressed_recipient_is_marked_and_never_claimed,
    scoped_and_expired_suppressions_apply_only_where_they_should,
    a_message_with_every_recipient_suppressed_is_finished_at_accept,
    a_bad_mailbox_failure_suppresses_the_address_with_the_outcome,
    the_list_pages_by_address_and_searches,
    the_link_key_is_stored_once,
    expired_entries_are_deleted_in_chunks_and_the_others_stay,
);

fn message(id: &str, recipients: &[&str]) -> NewMessage {
    common::new_message(
        id,
        "shop@example.test",
        recipients,
        Bytes::from_static(b"Subject: hi\r\n\r\nbody\r\n"),
    )
}

fn entry(address: &str, scope: Option<&str>, expires_at: Option<i64>) -> NewSuppression {
    NewSuppression {
        address: address.into(),
        scope: scope.map(str::to_owned),
        reason: SuppressionReason::Manual,
        source_message: None,
        expires_at,
    }
}

async fn a_suppressed_recipient_is_marked_and_never_claimed(t: TestStore) {
    t.store
        .suppress(vec![entry("Gone@Example.TEST", None, None)])
        .await
        .unwrap();
    let accepted = t
        .store
        .accept(vec![message(
            "m1",
            &["ann@example.test", "gone@example.test"],
        )])
        .await
        .unwrap();
    assert_eq!(
        accepted,
        vec![Accepted::New {
            id: "m1".into(),
            status: MessageStatus::Queued,
            suppressed: vec!["gone@example.test".into()],
        }]
    );
    let claimed = t
        .store
        .claim("node", Duration::from_secs(60), 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    let addresses: Vec<&str> = claimed[0]
        .recipients
        .iter()
        .map(|r| r.address.as_str())
        .collect();
    assert_eq!(addresses, ["ann@example.test"]);
    let view = t.store.message("m1").await.unwrap().unwrap();
    assert_eq!(view.recipients[1].status, RecipientStatus::Suppressed);
    assert!(
        view.events
            .iter()
            .any(|e| e.kind == "suppressed" && e.recipient.as_deref() == Some("gone@example.test")),
        "{:?}",
        view.events
    );
    // Delivered to the one it was sent to: the message is delivered, the suppressed recipient stays so.
    t.store
        .record(
            "node",
            vec![AttemptOutcome {
                id: "m1".into(),
                recipients: vec![RecipientResult {
                    position: 0,
                    address: "ann@example.test".into(),
                    status: RecipientStatus::Delivered,
                    smtp_code: Some(250),
                    enhanced_status: None,
                    reply: Some("ok".into()),
                }],
                retry_at: None,
                detail: "delivered".into(),
                counts_attempt: true,
            }],
        )
        .await
        .unwrap();
    let view = t.store.message("m1").await.unwrap().unwrap();
    assert_eq!(view.status, MessageStatus::Delivered);
    assert_eq!(view.recipients[1].status, RecipientStatus::Suppressed);

    // ignore_suppressions: sent to everyone.
    let mut must_deliver = message("m2", &["gone@example.test"]);
    must_deliver.ignore_suppressions = true;
    let accepted = t.store.accept(vec![must_deliver]).await.unwrap();
    assert_eq!(accepted[0].status(), MessageStatus::Queued);
    assert!(accepted[0].suppressed().is_empty());
}

async fn scoped_and_expired_suppressions_apply_only_where_they_should(t: TestStore) {
    let now = t.clock.now();
    t.store
        .suppress(vec![
            entry("news@example.test", Some("newsletter"), None),
            entry("tagged@example.test", Some("promo"), None),
            entry("lapsed@example.test", None, Some(now + 1_000)),
        ])
        .await
        .unwrap();
    let everyone = [
        "news@example.test",
        "tagged@example.test",
        "lapsed@example.test",
        "ann@example.test",
    ];
    // No list, no tag: only the unscoped entry applies (still running).
    let plain = t
        .store
        .accept(vec![message("plain", &everyone)])
        .await
        .unwrap();
    assert_eq!(plain[0].suppressed(), ["lapsed@example.test"]);
    let mut listed = message("listed", &everyone);
    listed.unsubscribe_list = Some("newsletter".into());
    listed.tags = vec!["promo".into()];
    let listed = t.store.accept(vec![listed]).await.unwrap();
    assert_eq!(
        listed[0].suppressed(),
        [
            "news@example.test",
            "tagged@example.test",
            "lapsed@example.test"
        ]
    );
    // Past its expiry, an entry no longer applies.
    t.clock.advance(Duration::from_secs(1));
    let later = t
        .store
        .accept(vec![message("later", &everyone)])
        .await
        .unwrap();
    assert!(later[0].suppressed().is_empty(), "{later:?}");
    // The same key again keeps the later expiry: none beats any.
    t.store
        .suppress(vec![entry(
            "news@example.test",
            Some("newsletter"),
            Some(T0),
        )])
        .await
        .unwrap();
    let entries = t.store.suppressions_of("NEWS@example.test").await.unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].expires_at, None);
    assert_eq!(entries[0].scope.as_deref(), Some("newsletter"));
}

async fn a_message_with_every_recipient_suppressed_is_finished_at_accept(t: TestStore) {
    t.store
        .suppress(vec![entry("gone@example.test", None, None)])
        .await
        .unwrap();
    let accepted = t
        .store
        .accept(vec![message("m1", &["gone@example.test"])])
        .await
        .unwrap();
    assert_eq!(accepted[0].status(), MessageStatus::Failed);
    let claimed = t
        .store
        .claim("node", Duration::from_secs(60), 10)
        .await
        .unwrap();
    assert!(claimed.is_empty());
    assert_eq!(t.store.next_due().await.unwrap(), None);
    let counts = t.store.counts().await.unwrap();
    assert_eq!(counts.get(&MessageStatus::Failed), Some(&1));
    assert_eq!(counts.get(&MessageStatus::Queued), None);
}

async fn a_bad_mailbox_failure_suppresses_the_address_with_the_outcome(t: TestStore) {
    t.store
        .accept(vec![message(
            "m1",
            &["nobody@example.test", "blocked@example.test"],
        )])
        .await
        .unwrap();
    t.store
        .claim("node", Duration::from_secs(60), 10)
        .await
        .unwrap();
    let failed = |position, address: &str, enhanced: &str| RecipientResult {
        position,
        address: address.into(),
        status: RecipientStatus::Failed,
        smtp_code: Some(550),
        enhanced_status: Some(enhanced.into()),
        reply: Some(format!("{enhanced} no")),
    };
    t.store
        .record(
            "node",
            vec![AttemptOutcome {
                id: "m1".into(),
                recipients: vec![
                    failed(0, "nobody@example.test", "5.1.1"),
                    failed(1, "blocked@example.test", "5.7.1"),
                ],
                retry_at: None,
                detail: "failed".into(),
                counts_attempt: true,
            }],
        )
        .await
        .unwrap();
    let entries = t
        .store
        .suppressions_of("nobody@example.test")
        .await
        .unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].reason, SuppressionReason::HardBounce);
    assert_eq!(entries[0].source_message.as_deref(), Some("m1"));
    assert_eq!(entries[0].scope, None);
    assert!(
        t.store
            .suppressions_of("blocked@example.test")
            .await
            .unwrap()
            .is_empty(),
        "a policy refusal (5.7.1) is not a bad mailbox"
    );
    let view = t.store.message("m1").await.unwrap().unwrap();
    assert!(view.events.iter().any(|e| e.kind == "suppressed"
        && e.recipient.as_deref() == Some("nobody@example.test")
        && e.detail.as_deref() == Some("hard_bounce")));
    let next = t
        .store
        .accept(vec![message("m2", &["nobody@example.test"])])
        .await
        .unwrap();
    assert_eq!(next[0].status(), MessageStatus::Failed);
}

async fn the_list_pages_by_address_and_searches(t: TestStore) {
    let entries: Vec<NewSuppression> = (0..25)
        .map(|i| entry(&format!("user{i:02}@example.test"), None, None))
        .chain([entry("user03@example.test", Some("news"), None)])
        .collect();
    t.store.suppress(entries).await.unwrap();
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = t
            .store
            .suppressions(&SuppressionQuery {
                contains: None,
                limit: 7,
                cursor: cursor.clone(),
            })
            .await
            .unwrap();
        assert!(page.items.len() <= 7);
        seen.extend(
            page.items
                .iter()
                .map(|s| (s.address.clone(), s.scope.clone())),
        );
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(seen.len(), 26);
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted);
    let found = t
        .store
        .suppressions(&SuppressionQuery {
            contains: Some("USER1".into()),
            limit: 50,
            cursor: None,
        })
        .await
        .unwrap();
    assert_eq!(found.items.len(), 10);
    assert_eq!(
        t.store
            .delete_suppression("user03@example.test", Some("news"))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        t.store
            .delete_suppression("user04@example.test", None)
            .await
            .unwrap(),
        1
    );
    assert!(
        t.store
            .suppressions(&SuppressionQuery {
                contains: None,
                limit: 5,
                cursor: Some("not a cursor".into()),
            })
            .await
            .is_err()
    );
}

async fn the_link_key_is_stored_once(t: TestStore) {
    let first = t.store.store_secret("k", &[1u8; 32]).await.unwrap();
    let second = t.store.store_secret("k", &[2u8; 32]).await.unwrap();
    assert_eq!(first, vec![1u8; 32]);
    assert_eq!(second, first);
}

/// Every entry of the list, page by page.
async fn all_entries(t: &TestStore) -> Vec<(String, Option<String>)> {
    let mut entries = Vec::new();
    let mut cursor = None;
    loop {
        let page = t
            .store
            .suppressions(&SuppressionQuery {
                contains: None,
                limit: 1_000,
                cursor,
            })
            .await
            .unwrap();
        entries.extend(page.items.into_iter().map(|s| (s.address, s.scope)));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return entries,
        }
    }
}

async fn expired_entries_are_deleted_in_chunks_and_the_others_stay(t: TestStore) {
    let now = t.clock.now();
    // More than two chunks of 5,000 expired entries, one expiring exactly now (it no longer applies), and
    // entries that must stay: a later expiry, none, and an expired address's other scope.
    let expired: Vec<NewSuppression> = (0..12_001)
        .map(|i| entry(&format!("old{i:05}@example.test"), None, Some(now - 1 - i)))
        .chain([entry("edge@example.test", None, Some(now))])
        .collect();
    for chunk in expired.chunks(5_000) {
        t.store.suppress(chunk.to_vec()).await.unwrap();
    }
    t.store
        .suppress(vec![
            entry("later@example.test", None, Some(now + 1)),
            entry("forever@example.test", None, None),
            entry("old00000@example.test", Some("newsletter"), None),
        ])
        .await
        .unwrap();
    assert_eq!(all_entries(&t).await.len(), 12_005);

    assert_eq!(
        t.store.prune_expired_suppressions(now).await.unwrap(),
        12_002
    );
    assert_eq!(
        all_entries(&t).await,
        [
            ("forever@example.test".to_owned(), None),
            ("later@example.test".to_owned(), None),
            (
                "old00000@example.test".to_owned(),
                Some("newsletter".to_owned())
            ),
        ]
    );
    assert_eq!(t.store.prune_expired_suppressions(now).await.unwrap(), 0);

    // Once its time has come, the later one goes too.
    t.clock.advance(Duration::from_millis(1));
    assert_eq!(
        t.store
            .prune_expired_suppressions(t.clock.now())
            .await
            .unwrap(),
        1
    );
    assert!(
        t.store
            .suppressions_of("later@example.test")
            .await
            .unwrap()
            .is_empty()
    );
}
