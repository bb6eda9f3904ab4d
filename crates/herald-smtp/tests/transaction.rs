//! Transactions against the capture / fault server over real sockets: pipelining, per-recipient
//! outcomes, 421 handling, lost connections, timeouts, SIZE, dot-stuffing, BDAT.

// A test crate: a failed unwrap is a failed test (see Cargo.toml's [workspace.lints]).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{connect, contains, message, reads_containing, relay};
use herald_smtp::{
    BodySegment, Client, Dsn, DsnNotify, DsnReturn, EnhancedStatus, Envelope, Error, Stage, Status,
    Timeouts,
};
use herald_testkit::{Action, Fault, ServerConfig, TestServer, When};

#[tokio::test]
async fn pipelining_sends_mail_rcpt_and_data_in_one_write() {
    let server = TestServer::capture().await;
    let mut connection = connect(relay(&server)).await;
    assert!(connection.extensions().pipelining);
    let envelope = Envelope::new("a@sender.test", ["b@rcpt.test", "c@rcpt.test"]);
    let delivery = connection
        .send_raw(&envelope, &message("pipelined"))
        .await
        .unwrap();
    assert!(delivery.all_accepted(), "{delivery:?}");

    let group = reads_containing(&server, "MAIL FROM:");
    assert_eq!(group.len(), 1);
    let group = &group[0];
    assert!(
        contains(group, "RCPT TO:<b@rcpt.test>") && contains(group, "RCPT TO:<c@rcpt.test>"),
        "{}",
        String::from_utf8_lossy(group)
    );
    assert!(
        group.ends_with(b"DATA\r\n"),
        "MAIL, RCPT, RCPT and DATA must arrive in one write: {}",
        String::from_utf8_lossy(group)
    );
    let transaction = &server.transactions()[0];
    assert_eq!(transaction.content, message("pipelined"));
    assert_eq!(transaction.recipients, ["b@rcpt.test", "c@rcpt.test"]);
}

#[tokio::test]
async fn without_pipelining_commands_go_one_at_a_time() {
    let server = TestServer::start(ServerConfig {
        pipelining: false,
        ..ServerConfig::default()
    })
    .await;
    let mut connection = connect(relay(&server)).await;
    let envelope = Envelope::new("a@sender.test", ["b@rcpt.test", "c@rcpt.test"]);
    connection
        .send_raw(&envelope, &message("lockstep"))
        .await
        .unwrap();

    for command in ["MAIL FROM:", "RCPT TO:<b@", "RCPT TO:<c@", "DATA\r\n"] {
        let reads = reads_containing(&server, command);
        assert_eq!(reads.len(), 1, "{command}");
        assert!(
            reads[0].starts_with(command.as_bytes()) && reads[0].ends_with(b"\r\n"),
            "{command} must arrive alone"
        );
        assert_eq!(
            reads[0].iter().filter(|&&b| b == b'\n').count(),
            1,
            "{command} must arrive alone"
        );
    }
}

#[tokio::test]
async fn each_recipient_gets_its_own_outcome() {
    let config = ServerConfig::default()
        .fault(Fault::reply(
            When::RcptTo(Some("busy@rcpt.test".into())),
            "450 4.2.1 Mailbox busy",
        ))
        .fault(Fault::reply(
            When::RcptTo(Some("nobody@rcpt.test".into())),
            "550 5.1.1 No such user",
        ));
    let server = TestServer::start(config).await;
    let mut connection = connect(relay(&server)).await;
    let envelope = Envelope::new(
        "a@sender.test",
        ["ok@rcpt.test", "busy@rcpt.test", "nobody@rcpt.test"],
    );
    let delivery = connection
        .send_raw(&envelope, &message("mixed"))
        .await
        .unwrap();

    let [ok, busy, nobody] = &delivery.recipients[..] else {
        panic!("{delivery:?}")
    };
    assert_eq!(
        (ok.address.as_str(), ok.status, ok.reply.code),
        ("ok@rcpt.test", Status::Accepted, 250)
    );
    assert_eq!(
        (busy.status, busy.reply.code, busy.reply.text.as_str()),
        (Status::Transient, 450, "Mailbox busy")
    );
    assert_eq!(
        busy.reply.enhanced,
        Some(EnhancedStatus {
            class: 4,
            subject: 2,
            detail: 1
        })
    );
    assert_eq!((nobody.status, nobody.reply.code), (Status::Permanent, 550));
    assert_eq!(nobody.reply.to_string(), "550 5.1.1 No such user");
    assert_eq!(delivery.data.as_ref().map(|r| r.code), Some(250));
    assert_eq!(server.transactions()[0].recipients, ["ok@rcpt.test"]);
    assert!(connection.is_usable());
}

#[tokio::test]
async fn all_recipients_refused_resets_and_the_session_is_reused() {
    let config = ServerConfig::default()
        .fault(Fault::reply(When::RcptTo(None), "550 5.1.1 No such user").on_transaction(0));
    let server = TestServer::start(config).await;
    let mut connection = connect(relay(&server)).await;
    let envelope = Envelope::new("a@sender.test", ["x@rcpt.test", "y@rcpt.test"]);
    let delivery = connection
        .send_raw(&envelope, &message("refused"))
        .await
        .unwrap();
    assert!(
        delivery
            .recipients
            .iter()
            .all(|r| r.status == Status::Permanent && r.reply.code == 550)
    );
    assert_eq!(delivery.data, None);
    assert!(server.commands().iter().any(|(_, line)| line == "RSET"));
    assert!(connection.is_usable());

    let delivery = connection
        .send_raw(&envelope, &message("second"))
        .await
        .unwrap();
    assert!(delivery.all_accepted());
    assert_eq!(server.connections(), 1);
    assert_eq!(server.transactions().len(), 1);
}

#[tokio::test]
async fn mail_from_refused_fails_the_message_and_keeps_the_session() {
    let config = ServerConfig::default()
        .fault(Fault::reply(When::MailFrom, "553 5.7.1 Sender rejected").on_transaction(0));
    let server = TestServer::start(config).await;
    let mut connection = connect(relay(&server)).await;
    let envelope = Envelope::new("bad@sender.test", ["b@rcpt.test"]);
    let error = connection
        .send_raw(&envelope, &message("x"))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, Error::Rejected { stage: Stage::MailFrom, reply } if reply.code == 553),
        "{error:?}"
    );
    assert!(error.is_permanent());
    assert!(
        connection
            .send_raw(&envelope, &message("y"))
            .await
            .unwrap()
            .all_accepted()
    );
}

#[tokio::test]
async fn a_421_greeting_is_a_transient_failure() {
    let server = TestServer::start(ServerConfig::default().fault(Fault::reply(
        When::Greeting,
        "421 4.3.2 Service not available",
    )))
    .await;
    let error = Client::new(relay(&server))
        .unwrap()
        .connect()
        .await
        .unwrap_err();
    assert!(
        matches!(&error, Error::Rejected { stage: Stage::Greeting, reply } if reply.code == 421),
        "{error:?}"
    );
    assert!(error.is_transient());
    assert_eq!(
        error.reply().unwrap().enhanced,
        Some(EnhancedStatus {
            class: 4,
            subject: 3,
            detail: 2
        })
    );
}

#[tokio::test]
async fn a_421_mid_transaction_closes_the_session_and_is_transient() {
    let config = ServerConfig::default().fault(Fault::reply(
        When::RcptTo(Some("second@rcpt.test".into())),
        "421 4.7.0 Too many errors",
    ));
    let server = TestServer::start(config).await;
    let mut connection = connect(relay(&server)).await;
    let envelope = Envelope::new("a@sender.test", ["first@rcpt.test", "second@rcpt.test"]);
    let error = connection
        .send_raw(&envelope, &message("x"))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, Error::Rejected { stage: Stage::RcptTo, reply } if reply.code == 421),
        "{error:?}"
    );
    assert!(error.is_transient());
    assert!(!connection.is_usable());
    assert!(server.transactions().is_empty());
}

#[tokio::test]
async fn a_421_after_the_data_is_transient() {
    let server = TestServer::start(
        ServerConfig::default().fault(Fault::reply(When::DataEnd, "421 4.3.0 Shutting down")),
    )
    .await;
    let mut connection = connect(relay(&server)).await;
    let error = connection
        .send_raw(
            &Envelope::new("a@sender.test", ["b@rcpt.test"]),
            &message("x"),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&error, Error::Rejected { stage: Stage::DataEnd, reply } if reply.code == 421),
        "{error:?}"
    );
    assert!(error.is_transient() && !error.outcome_unknown());
    assert!(!connection.is_usable());
}

#[tokio::test]
async fn a_connection_dropped_after_the_data_means_outcome_unknown() {
    let server =
        TestServer::start(ServerConfig::default().fault(Fault::new(When::DataEnd, Action::Drop)))
            .await;
    let mut connection = connect(relay(&server)).await;
    let error = connection
        .send_raw(
            &Envelope::new("a@sender.test", ["b@rcpt.test"]),
            &message("x"),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            Error::ConnectionLost {
                stage: Stage::DataEnd,
                outcome_unknown: true
            }
        ),
        "{error:?}"
    );
    assert!(error.is_transient() && error.outcome_unknown());
    assert!(error.to_string().contains("outcome unknown"), "{error}");
    // The server did receive the whole message: that is exactly why the outcome is unknown.
    assert_eq!(server.transactions().len(), 1);
}

#[tokio::test]
async fn a_stalled_server_hits_the_stage_timeout() {
    let server =
        TestServer::start(ServerConfig::default().fault(Fault::new(When::MailFrom, Action::Stall)))
            .await;
    let mut config = relay(&server);
    config.timeouts = Timeouts {
        mail: Duration::from_millis(300),
        ..Timeouts::all(Duration::from_secs(5))
    };
    let mut connection = connect(config).await;
    let started = Instant::now();
    let error = connection
        .send_raw(
            &Envelope::new("a@sender.test", ["b@rcpt.test"]),
            &message("x"),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            Error::Timeout {
                stage: Stage::MailFrom
            }
        ),
        "{error:?}"
    );
    assert!(error.is_transient());
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(!connection.is_usable());

    let server =
        TestServer::start(ServerConfig::default().fault(Fault::new(When::Greeting, Action::Stall)))
            .await;
    let mut config = relay(&server);
    config.timeouts.greeting = Duration::from_millis(200);
    let error = Client::new(config).unwrap().connect().await.unwrap_err();
    assert!(
        matches!(
            error,
            Error::Timeout {
                stage: Stage::Greeting
            }
        ),
        "{error:?}"
    );
}

#[tokio::test]
async fn the_size_limit_is_checked_before_anything_is_sent() {
    let server = TestServer::start(ServerConfig {
        size: Some(1000),
        ..ServerConfig::default()
    })
    .await;
    let mut connection = connect(relay(&server)).await;
    assert_eq!(connection.extensions().size, Some(1000));
    let big = format!("Subject: big\r\n\r\n{}\r\n", "x".repeat(5000));
    let error = connection
        .send_raw(
            &Envelope::new("a@sender.test", ["b@rcpt.test"]),
            big.as_bytes(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::MessageTooBig { limit: 1000, .. }),
        "{error:?}"
    );
    assert!(error.is_permanent());
    assert!(
        !server
            .commands()
            .iter()
            .any(|(_, line)| line.starts_with("MAIL") || line == "DATA")
    );

    // A message under the limit declares its size.
    connection
        .send_raw(
            &Envelope::new("a@sender.test", ["b@rcpt.test"]),
            &message("small"),
        )
        .await
        .unwrap();
    assert_eq!(
        server.transactions()[0].mail_params,
        format!("SIZE={}", message("small").len())
    );
}

#[tokio::test]
async fn content_is_dot_stuffed_and_normalised_on_the_wire() {
    let server = TestServer::capture().await;
    let mut connection = connect(relay(&server)).await;
    let body = b"Subject: dots\r\n\r\n.leading dot\r\n..two\r\n.\r\nbare lf\nend".to_vec();
    connection
        .send_raw(&Envelope::new("a@sender.test", ["b@rcpt.test"]), &body)
        .await
        .unwrap();
    let transaction = &server.transactions()[0];
    assert_eq!(
        transaction.wire,
        b"Subject: dots\r\n\r\n..leading dot\r\n...two\r\n..\r\nbare lf\r\nend\r\n"
    );
    assert_eq!(
        transaction.content,
        b"Subject: dots\r\n\r\n.leading dot\r\n..two\r\n.\r\nbare lf\r\nend\r\n"
    );
}

#[tokio::test]
async fn segments_are_sent_in_order_and_dot_safe_ones_untouched() {
    let server = TestServer::capture().await;
    let mut connection = connect(relay(&server)).await;
    let segments = [
        BodySegment::new(Bytes::from_static(
            b"Subject: parts\r\nContent-Type: text/plain\r\n\r\n.dot line\r\n",
        )),
        BodySegment::dot_safe(Bytes::from_static(b"QUJDREVG\r\nR0hJSktM\r\n")),
        BodySegment::new(Bytes::from_static(b".end\r\n")),
    ];
    connection
        .send(&Envelope::new("a@sender.test", ["b@rcpt.test"]), &segments)
        .await
        .unwrap();
    let transaction = &server.transactions()[0];
    assert_eq!(transaction.content, b"Subject: parts\r\nContent-Type: text/plain\r\n\r\n.dot line\r\nQUJDREVG\r\nR0hJSktM\r\n.end\r\n");
}

#[tokio::test]
async fn chunking_sends_bdat_with_the_commands_in_one_write() {
    let server = TestServer::start(ServerConfig {
        chunking: true,
        ..ServerConfig::default()
    })
    .await;
    let mut config = relay(&server);
    config.use_chunking = true;
    let mut connection = connect(config).await;
    let body = b"Subject: bdat\r\n\r\n.dot stays single with BDAT\r\n".to_vec();
    let delivery = connection
        .send_raw(&Envelope::new("a@sender.test", ["b@rcpt.test"]), &body)
        .await
        .unwrap();
    assert!(delivery.all_accepted());
    let transaction = &server.transactions()[0];
    assert!(transaction.bdat);
    assert_eq!(transaction.content, body);
    let group = &reads_containing(&server, "MAIL FROM:")[0];
    assert!(
        contains(group, "BDAT") && contains(group, ".dot stays single"),
        "{}",
        String::from_utf8_lossy(group)
    );
}

#[tokio::test]
async fn helo_fallback_when_ehlo_is_unknown() {
    let server = TestServer::start(ServerConfig {
        ehlo: false,
        ..ServerConfig::default()
    })
    .await;
    let mut connection = connect(relay(&server)).await;
    assert!(!connection.extensions().pipelining);
    assert!(
        connection
            .send_raw(
                &Envelope::new("a@sender.test", ["b@rcpt.test"]),
                &message("helo")
            )
            .await
            .unwrap()
            .all_accepted()
    );
    assert!(
        server
            .commands()
            .iter()
            .any(|(_, line)| line.starts_with("HELO "))
    );
}

#[tokio::test]
async fn smtputf8_is_requested_when_an_address_needs_it() {
    let server = TestServer::capture().await;
    let mut connection = connect(relay(&server)).await;
    connection
        .send_raw(
            &Envelope::new("a@sender.test", ["用户@例子.test"]),
            &message("utf8"),
        )
        .await
        .unwrap();
    assert!(server.transactions()[0].mail_params.contains("SMTPUTF8"));

    let server = TestServer::start(ServerConfig {
        smtputf8: false,
        ..ServerConfig::default()
    })
    .await;
    let mut connection = connect(relay(&server)).await;
    let error = connection
        .send_raw(
            &Envelope::new("a@sender.test", ["用户@例子.test"]),
            &message("utf8"),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            Error::ExtensionRequired {
                extension: "SMTPUTF8"
            }
        ),
        "{error:?}"
    );
    assert!(error.is_permanent());
}

#[tokio::test]
async fn data_refused_applies_to_the_accepted_recipients() {
    let config = ServerConfig::default()
        .fault(Fault::reply(
            When::RcptTo(Some("no@rcpt.test".into())),
            "550 5.1.1 No",
        ))
        .fault(Fault::reply(When::DataEnd, "554 5.6.0 Content rejected"));
    let server = TestServer::start(config).await;
    let mut connection = connect(relay(&server)).await;
    let delivery = connection
        .send_raw(
            &Envelope::new("a@sender.test", ["yes@rcpt.test", "no@rcpt.test"]),
            &message("x"),
        )
        .await
        .unwrap();
    assert_eq!(delivery.recipients[0].status, Status::Permanent);
    assert_eq!(delivery.recipients[0].reply.code, 554);
    assert_eq!(delivery.recipients[0].rcpt_reply.code, 250);
    assert_eq!(delivery.recipients[1].reply.code, 550);
    assert!(connection.is_usable());
}

#[tokio::test]
async fn dsn_and_8bitmime_parameters_go_to_a_server_that_offers_them() {
    let server = TestServer::capture().await;
    let mut connection = connect(relay(&server)).await;
    let mut envelope = Envelope::new("a@sender.test", ["b@rcpt.test"]);
    envelope.eight_bit = true;
    envelope.dsn = Some(Dsn {
        ret: Some(DsnReturn::Headers),
        envid: Some("msg-1".into()),
        notify: Some(DsnNotify {
            failure: true,
            ..DsnNotify::default()
        }),
    });
    connection
        .send_raw(&envelope, "Subject: 8bit\r\n\r\nGrüße\r\n".as_bytes())
        .await
        .unwrap();
    let transaction = &server.transactions()[0];
    assert!(
        transaction.mail_params.contains("BODY=8BITMIME")
            && transaction.mail_params.contains("RET=HDRS ENVID=msg-1"),
        "{}",
        transaction.mail_params
    );
    assert!(
        server
            .commands()
            .iter()
            .any(|(_, line)| line == "RCPT TO:<b@rcpt.test> NOTIFY=FAILURE")
    );

    let server = TestServer::start(ServerConfig {
        eight_bit_mime: false,
        ..ServerConfig::default()
    })
    .await;
    let mut connection = connect(relay(&server)).await;
    let error = connection
        .send_raw(&envelope, b"Subject: x\r\n\r\nx\r\n")
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            Error::ExtensionRequired {
                extension: "8BITMIME"
            }
        ),
        "{error:?}"
    );
}
