//! Batches: a message's content, its `.` and the next message's commands share one write
//! (RFC 2920 §3.1), with every result still attributed to its own message.

// A test crate: a failed unwrap is a failed test (see Cargo.toml's [workspace.lints]).
#![allow(clippy::unwrap_used)]

mod common;

use bytes::Bytes;
use common::{connect, relay};
use herald_smtp::{BodySegment, Client, Envelope, Error, Pool, PoolConfig, Stage, Status};
use herald_testkit::{Action, Fault, ServerConfig, TestServer, When};

fn body(subject: &str) -> Vec<BodySegment> {
    vec![BodySegment::new(Bytes::from(format!(
        "Subject: {subject}\r\n\r\n.dot\r\nbody\r\n"
    )))]
}

fn envelopes(n: usize) -> Vec<Envelope> {
    (0..n)
        .map(|i| Envelope::new(format!("s{i}@sender.test"), [format!("r{i}@rcpt.test")]))
        .collect()
}

#[tokio::test]
async fn content_and_the_next_messages_commands_go_in_one_write() {
    let server = TestServer::capture().await;
    let mut connection = connect(relay(&server)).await;
    let envelopes = envelopes(3);
    let bodies: Vec<_> = (0..3).map(|i| body(&format!("m{i}"))).collect();
    let messages: Vec<_> = envelopes
        .iter()
        .zip(&bodies)
        .map(|(e, b)| (e, b.as_slice()))
        .collect();
    let results = connection.send_batch(&messages).await;
    assert!(
        results
            .iter()
            .all(|r| r.as_ref().is_ok_and(|d| d.all_accepted())),
        "{results:?}"
    );

    let transactions = server.transactions();
    assert_eq!(transactions.len(), 3);
    for (i, transaction) in transactions.iter().enumerate() {
        assert_eq!(transaction.mail_from, format!("s{i}@sender.test"));
        assert_eq!(
            transaction.content,
            format!("Subject: m{i}\r\n\r\n.dot\r\nbody\r\n").as_bytes()
        );
    }
    // Message 0's end of data and message 1's MAIL FROM in one read; the same for 1 and 2.
    let reads = server.reads();
    for next in 1..3 {
        let marker = format!("body\r\n.\r\nMAIL FROM:<s{next}@sender.test>");
        let read = reads.iter().find(|r| {
            r.bytes
                .windows(marker.len())
                .any(|w| w == marker.as_bytes())
        });
        let read = read.unwrap_or_else(|| panic!("no read holds {marker:?}"));
        assert!(read.bytes.ends_with(b"DATA\r\n"));
    }
    assert_eq!(connection.transactions(), 3);
}

#[tokio::test]
async fn one_refused_message_does_not_disturb_the_others() {
    let config = ServerConfig::default()
        .fault(Fault::reply(When::MailFrom, "550 5.7.1 Sender refused").on_transaction(1))
        .fault(Fault::reply(
            When::RcptTo(Some("r2@rcpt.test".into())),
            "450 4.2.1 Try later",
        ));
    let server = TestServer::start(config).await;
    let mut connection = connect(relay(&server)).await;
    let envelopes = envelopes(4);
    let bodies: Vec<_> = (0..4).map(|i| body(&format!("m{i}"))).collect();
    let messages: Vec<_> = envelopes
        .iter()
        .zip(&bodies)
        .map(|(e, b)| (e, b.as_slice()))
        .collect();
    let results = connection.send_batch(&messages).await;
    assert!(results[0].as_ref().unwrap().all_accepted());
    assert!(
        matches!(&results[1], Err(Error::Rejected { stage: Stage::MailFrom, reply }) if reply.code == 550),
        "{:?}",
        results[1]
    );
    let third = results[2].as_ref().unwrap();
    assert_eq!(
        (third.recipients[0].status, third.recipients[0].reply.code),
        (Status::Transient, 450)
    );
    assert_eq!(third.data, None);
    assert!(results[3].as_ref().unwrap().all_accepted());
    let delivered: Vec<_> = server
        .transactions()
        .iter()
        .map(|t| t.mail_from.clone())
        .collect();
    assert_eq!(delivered, ["s0@sender.test", "s3@sender.test"]);
    assert!(connection.is_usable());
}

#[tokio::test]
async fn a_message_too_big_in_a_batch_is_refused_alone() {
    let server = TestServer::start(ServerConfig {
        size: Some(200),
        ..ServerConfig::default()
    })
    .await;
    let mut connection = connect(relay(&server)).await;
    let envelopes = envelopes(3);
    let big = vec![BodySegment::new(Bytes::from(format!(
        "Subject: big\r\n\r\n{}\r\n",
        "x".repeat(500)
    )))];
    let (small0, small2) = (body("m0"), body("m2"));
    let messages = [
        (&envelopes[0], small0.as_slice()),
        (&envelopes[1], big.as_slice()),
        (&envelopes[2], small2.as_slice()),
    ];
    let results = connection.send_batch(&messages).await;
    assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
    assert!(matches!(
        results[1],
        Err(Error::MessageTooBig { limit: 200, .. })
    ));
    assert_eq!(server.transactions().len(), 2);
}

#[tokio::test]
async fn after_a_lost_session_the_pool_finishes_the_batch_on_a_fresh_one() {
    // The session drops after message 1's content: message 1's outcome is unknown, message 2 was
    // never started and must go out on a new session.
    let config =
        ServerConfig::default().fault(Fault::new(When::DataEnd, Action::Drop).on_transaction(1));
    let server = TestServer::start(config).await;
    let envelopes = envelopes(3);
    let bodies: Vec<_> = (0..3).map(|i| body(&format!("m{i}"))).collect();
    let messages: Vec<_> = envelopes
        .iter()
        .zip(&bodies)
        .map(|(e, b)| (e, b.as_slice()))
        .collect();

    let mut connection = connect(relay(&server)).await;
    let results = connection.send_batch(&messages).await;
    assert!(results[0].is_ok());
    assert!(
        results[1].as_ref().is_err_and(Error::outcome_unknown),
        "{:?}",
        results[1]
    );
    assert!(
        matches!(
            results[2],
            Err(Error::ConnectionLost {
                outcome_unknown: false,
                ..
            })
        ),
        "{:?}",
        results[2]
    );

    // The same through the pool (a fresh server with the same script): message 2 is retried.
    let server = TestServer::start(
        ServerConfig::default().fault(Fault::new(When::DataEnd, Action::Drop).on_transaction(1)),
    )
    .await;
    let pool = Pool::new(
        Client::new(relay(&server)).unwrap(),
        PoolConfig {
            max_connections: 1,
            ..PoolConfig::default()
        },
    );
    let results = pool.send_batch(&messages).await;
    assert!(results[0].is_ok(), "{results:?}");
    assert!(
        results[1].as_ref().is_err_and(Error::outcome_unknown),
        "{results:?}"
    );
    assert!(
        results[2].as_ref().is_ok_and(|d| d.all_accepted()),
        "{results:?}"
    );
    let last = server.transactions().last().unwrap().clone();
    assert_eq!(
        (last.mail_from.as_str(), last.connection),
        ("s2@sender.test", 1)
    );
    assert_eq!(server.connections(), 2);
}

#[tokio::test]
async fn without_pipelining_a_batch_is_sent_one_message_at_a_time() {
    let server = TestServer::start(ServerConfig {
        pipelining: false,
        ..ServerConfig::default()
    })
    .await;
    let mut connection = connect(relay(&server)).await;
    let envelopes = envelopes(3);
    let bodies: Vec<_> = (0..3).map(|i| body(&format!("m{i}"))).collect();
    let messages: Vec<_> = envelopes
        .iter()
        .zip(&bodies)
        .map(|(e, b)| (e, b.as_slice()))
        .collect();
    assert!(
        connection
            .send_batch(&messages)
            .await
            .iter()
            .all(Result::is_ok)
    );
    assert_eq!(server.transactions().len(), 3);
    assert!(
        !server
            .reads()
            .iter()
            .any(|r| r.bytes.windows(9).any(|w| w == b"MAIL FROM")
                && r.bytes.windows(4).any(|w| w == b"DATA"))
    );
}

#[tokio::test]
async fn a_message_the_session_died_under_before_any_acknowledgment_is_retried_once() {
    // The server closes with 421 when message 1 starts (nothing of it acknowledged): the pool
    // sends message 1 and 2 again on a fresh session; message 0 is not sent twice.
    let config = ServerConfig::default().fault(
        Fault::reply(When::MailFrom, "421 4.7.0 Closing")
            .on_connection(0)
            .on_transaction(1),
    );
    let server = TestServer::start(config).await;
    let envelopes = envelopes(3);
    let bodies: Vec<_> = (0..3).map(|i| body(&format!("m{i}"))).collect();
    let messages: Vec<_> = envelopes
        .iter()
        .zip(&bodies)
        .map(|(e, b)| (e, b.as_slice()))
        .collect();
    let pool = Pool::new(
        Client::new(relay(&server)).unwrap(),
        PoolConfig {
            max_connections: 1,
            ..PoolConfig::default()
        },
    );
    let results = pool.send_batch(&messages).await;
    assert!(
        results
            .iter()
            .all(|r| r.as_ref().is_ok_and(|d| d.all_accepted())),
        "{results:?}"
    );
    let delivered: Vec<_> = server
        .transactions()
        .iter()
        .map(|t| (t.mail_from.clone(), t.connection))
        .collect();
    assert_eq!(
        delivered,
        [
            ("s0@sender.test".to_string(), 0),
            ("s1@sender.test".to_string(), 1),
            ("s2@sender.test".to_string(), 1)
        ]
    );
}
