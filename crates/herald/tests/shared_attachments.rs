//! Attachments that separate `POST /v1/messages` calls carry (the logo, the same PDF) are stored once and
//! encoded once, on a real SQLite file and a real PostgreSQL database, with the service as a user gets it by
//! default: the bytes archived and claimed for delivery are the bytes the message composed without sharing
//! would have had, and a shared part outlives every body that refers to it, and no more.

// A test crate: a failed unwrap is a failed test (see Cargo.toml's [workspace.lints]).
#![allow(clippy::unwrap_used)]

mod common;

use std::{sync::Arc, time::Duration};

use base64::Engine as _;
use common::TestStore;
use herald::{
    clock::Clock,
    request::{Files, MessageRequest},
    service::Service,
    store::{AttemptOutcome, RawSegment, RecipientResult, RecipientStatus, Store},
};
use herald_mime::ComposeOptions;

on_both_stores!(
    identical_attachments_across_calls_are_stored_once_with_the_bytes_of_the_unshared_path,
    a_shared_part_is_pruned_with_its_last_body_and_stored_again_when_sent_again,
);

/// The request of message `n`: personal fields, the same inline logo, PDF and dotted text file every time.
fn request(n: usize) -> Vec<u8> {
    let b64 = base64::engine::general_purpose::STANDARD;
    serde_json::json!({
        "from": "Shop <shop@example.test>",
        "to": format!("Customer {n} <customer{n}@example.test>"),
        "subject": format!("Your invoice #{n}"),
        "text": format!("Hello {n},\n.\nyour invoice is attached.\n"),
        "html": format!("<p>Hello {n}</p><img src=\"cid:logo@example.test\">"),
        "attachments": [
            {"filename": "logo.png", "content_type": "image/png", "inline": true,
             "content_id": "logo@example.test", "content_base64": b64.encode(common::incompressible(6_000, 1))},
            {"filename": "invoice.pdf", "content_type": "application/pdf",
             "content_base64": b64.encode(common::incompressible(60_000, 2))},
            // A line that starts with a dot: the one thing a shared segment's dot-safety could get wrong.
            {"filename": "notes.txt", "content_base64": b64.encode(".hidden\r\n..two\r\nplain\r\n")},
        ],
    })
    .to_string()
    .into_bytes()
}

/// The message as the path without sharing composes it (every attachment encoded into the message's own
/// bytes), and its segments.
fn unshared(body: &[u8]) -> Vec<herald_mime::Segment> {
    let message = MessageRequest::from_json(body)
        .unwrap()
        .into_message(Files::Forbidden)
        .unwrap();
    message
        .compose(&ComposeOptions::default())
        .segments()
        .to_vec()
}

/// A message's bytes with what differs between two composings of it (Date, Message-ID, the random part of
/// the boundaries) replaced by fixed text.
fn normalized(bytes: &[u8]) -> String {
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    let lines: Vec<String> = text
        .split("\r\n")
        .map(|line| {
            if line.starts_with("Date: ") {
                "Date: <fixed>".to_owned()
            } else if line.starts_with("Message-ID: ") {
                "Message-ID: <fixed>".to_owned()
            } else {
                line.to_owned()
            }
        })
        .collect();
    let joined = lines.join("\r\n");
    let at = joined.find("boundary=\"=_").expect("a multipart message") + "boundary=\"".len();
    let random = joined[at..at + 23].to_owned();
    joined.replace(&random, "=_BOUNDARY_")
}

/// The DATA an SMTP writer sends for these segments: dot-stuffing (RFC 5321 §4.5.2) only where a segment
/// is not marked dot-safe, as herald-smtp does.
fn stuffed<'a>(segments: impl IntoIterator<Item = (&'a [u8], bool)>) -> Vec<u8> {
    let mut out = Vec::new();
    for (bytes, dot_safe) in segments {
        for line in bytes.split_inclusive(|b| *b == b'\n') {
            if !dot_safe && line.first() == Some(&b'.') {
                out.push(b'.');
            }
            out.extend_from_slice(line);
        }
    }
    out
}

fn joined(segments: &[RawSegment]) -> Vec<u8> {
    segments.iter().flat_map(|s| s.bytes().to_vec()).collect()
}

/// Rows and bytes of the tables that hold bodies: (blobs, bytes of all stored bodies).
async fn stored(t: &TestStore) -> (i64, i64) {
    use sqlx::{Connection, Row};
    let sql =
        "SELECT (SELECT COUNT(*) FROM blobs), (SELECT COALESCE(SUM(LENGTH(raw)), 0) FROM messages)";
    match &t.pg_url {
        Some(url) => {
            let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
            let sql = sql.replace("LENGTH(raw)", "octet_length(raw)");
            let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                .fetch_one(&mut conn)
                .await
                .unwrap();
            (row.get::<i64, _>(0), row.get::<i64, _>(1))
        }
        None => {
            let path = t.dir.path().join("herald.db");
            let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
                .await
                .unwrap();
            // SQLite keeps bodies in a table of their own (migration 0020).
            let sql = sql.replace("FROM messages)", "FROM message_bodies)");
            let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                .fetch_one(&mut conn)
                .await
                .unwrap();
            (row.get::<i64, _>(0), row.get::<i64, _>(1))
        }
    }
}

async fn submit(service: &Service, n: usize) -> String {
    service
        .submit(&request(n), None)
        .await
        .unwrap()
        .id()
        .to_owned()
}

async fn identical_attachments_across_calls_are_stored_once_with_the_bytes_of_the_unshared_path(
    t: TestStore,
) {
    let service = Service::new(t.store.clone());
    const N: usize = 20;
    let mut ids = Vec::new();
    for n in 0..N {
        ids.push(submit(&service, n).await);
    }
    for (n, id) in ids.iter().enumerate() {
        let archived = t.store.raw(id).await.unwrap().unwrap();
        let old = unshared(&request(n));
        let old_bytes: Vec<u8> = old.iter().flat_map(|s| s.bytes.to_vec()).collect();
        assert_eq!(
            normalized(&joined(&archived)),
            normalized(&old_bytes),
            "message {n}: the archived bytes are those of the unshared path"
        );
        assert_eq!(
            normalized(&stuffed(
                archived.iter().map(|s| (&s.bytes()[..], s.dot_safe()))
            )),
            normalized(&stuffed(old.iter().map(|s| (&s.bytes[..], s.dot_safe)))),
            "message {n}: the DATA sent is that of the unshared path"
        );
        let shared = archived
            .iter()
            .filter(|s| matches!(s, RawSegment::Shared { .. }))
            .count();
        assert_eq!(shared, 3, "message {n}: every attachment is a shared part");
    }

    let (blobs, raw_bytes) = stored(&t).await;
    assert_eq!(blobs, 3, "three distinct attachments, stored once each");
    let per_message = raw_bytes / N as i64;
    assert!(
        per_message < 10_000,
        "a message's own stored body is kilobytes, not its 90 KB of attachments: {per_message} bytes"
    );

    // Delivery reads the same bytes, the shared parts one allocation for every message claimed together.
    let claimed = t
        .store
        .claim("w1", Duration::from_secs(300), N as u32)
        .await
        .unwrap();
    assert_eq!(claimed.len(), N);
    for c in &claimed {
        let archived = t.store.raw(&c.id).await.unwrap().unwrap();
        assert_eq!(joined(&c.raw), joined(&archived));
    }
    let pdf = |c: &herald::store::ClaimedMessage| match c
        .raw
        .iter()
        .filter(|s| matches!(s, RawSegment::Shared { .. }))
        .max_by_key(|s| s.bytes().len())
    {
        Some(RawSegment::Shared { blob, .. }) => blob.clone(),
        other => panic!("no shared part: {other:?}"),
    };
    assert!(Arc::ptr_eq(&pdf(&claimed[0]), &pdf(&claimed[N - 1])));
}

fn delivered(id: &str) -> AttemptOutcome {
    AttemptOutcome {
        id: id.to_owned(),
        recipients: vec![RecipientResult {
            position: 0,
            address: "customer@example.test".into(),
            status: RecipientStatus::Delivered,
            smtp_code: Some(250),
            enhanced_status: None,
            reply: Some("OK".into()),
        }],
        retry_at: None,
        detail: "delivered".into(),
        counts_attempt: true,
    }
}

/// Claims every due message and records it delivered.
async fn deliver_all(store: &Store) -> usize {
    let claimed = store
        .claim("w1", Duration::from_secs(300), 100)
        .await
        .unwrap();
    let outcomes = claimed.iter().map(|c| delivered(&c.id)).collect();
    store.record("w1", outcomes).await.unwrap();
    claimed.len()
}

async fn a_shared_part_is_pruned_with_its_last_body_and_stored_again_when_sent_again(t: TestStore) {
    let service = Service::new(t.store.clone());
    let first = submit(&service, 1).await;
    assert_eq!(deliver_all(&t.store).await, 1);
    t.clock.advance(Duration::from_secs(1));
    let finished = t.clock.now();
    // Sent after the first was delivered: still refers to the same parts when the first is pruned.
    let second = submit(&service, 2).await;
    assert_eq!(t.store.prune_raw(finished).await.unwrap(), 1);
    assert!(t.store.raw(&first).await.unwrap().is_none());
    let kept = t.store.raw(&second).await.unwrap().expect("not pruned");
    assert_eq!(
        normalized(&joined(&kept)),
        normalized(
            &unshared(&request(2))
                .iter()
                .flat_map(|s| s.bytes.to_vec())
                .collect::<Vec<_>>()
        ),
        "the parts the second message refers to were kept"
    );
    assert_eq!(stored(&t).await.0, 3);

    assert_eq!(deliver_all(&t.store).await, 1);
    t.clock.advance(Duration::from_secs(1));
    assert_eq!(t.store.prune_raw(t.clock.now()).await.unwrap(), 1);
    assert_eq!(stored(&t).await.0, 0, "no body refers to them: gone");

    // The service still holds the encoded parts in its cache; the store must get their bytes again.
    let third = submit(&service, 3).await;
    let raw = t.store.raw(&third).await.unwrap().expect("stored");
    assert_eq!(
        normalized(&joined(&raw)),
        normalized(
            &unshared(&request(3))
                .iter()
                .flat_map(|s| s.bytes.to_vec())
                .collect::<Vec<_>>()
        )
    );
    assert_eq!(stored(&t).await.0, 3);
    let claimed = t
        .store
        .claim("w1", Duration::from_secs(300), 10)
        .await
        .unwrap();
    assert_eq!(joined(&claimed[0].raw), joined(&raw));
}
