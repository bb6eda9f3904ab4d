//! The suppression list at SMTP submission (issue 12): a suppressed envelope recipient is accepted at RCPT,
//! stored as `suppressed` and never reaches the relay while the others do; `X-Herald-Ignore-Suppressions:
//! true` sends to it, and is removed like every control header. SQLite, the defaults (no shortened knobs).
#![allow(clippy::unwrap_used)]

mod submission_harness;

use serde_json::{Value, json};
use submission_harness::{Raw, Setup, expect, queued_id, start};

async fn submit(smtp: &mut Raw, recipients: &[&str], extra_header: &str) -> String {
    smtp.send(b"MAIL FROM:<app@example.com>\r\n").await;
    expect(&smtp.reply().await, "250 2.1.0");
    for recipient in recipients {
        smtp.send(format!("RCPT TO:<{recipient}>\r\n").as_bytes())
            .await;
        expect(&smtp.reply().await, "250 2.1.5");
    }
    smtp.send(b"DATA\r\n").await;
    expect(&smtp.reply().await, "354 ");
    let message = format!(
        "From: App <app@example.com>\r\nTo: {}\r\nSubject: Disk full\r\n{extra_header}\r\n/var is at 91%.\r\n.\r\n",
        recipients.join(", ")
    );
    smtp.send(message.as_bytes()).await;
    let queued = smtp.reply().await;
    expect(&queued, "250 2.0.0 queued as ");
    queued_id(&queued)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_submission_skips_suppressed_recipients_unless_told_not_to() {
    let herald = start(Setup::default()).await;
    let added = herald
        .client
        .post(format!("{}/v1/suppressions", herald.base))
        .json(&json!({"address": "gone@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(added.status().as_u16(), 201);
    let mut smtp = Raw::connect(herald.smtp).await;
    expect(&smtp.reply().await, "220 ");
    expect(&smtp.command("EHLO client.test").await, "250");

    let id = submit(&mut smtp, &["alice@example.com", "gone@example.com"], "").await;
    let view = herald.wait_for_status(&id, "delivered").await;
    assert_eq!(view["suppressed"], json!(["gone@example.com"]), "{view:#}");
    assert_eq!(view["recipients"][1]["status"], "suppressed");
    herald
        .relay
        .wait_until("the first message arrived", |r| r.transactions().len() == 1)
        .await;
    assert_eq!(
        herald.relay.transactions()[0].recipients,
        ["alice@example.com"]
    );

    let id = submit(
        &mut smtp,
        &["gone@example.com"],
        "X-Herald-Ignore-Suppressions: true\r\n",
    )
    .await;
    let view: Value = herald.wait_for_status(&id, "delivered").await;
    assert_eq!(view["suppressed"], json!([]));
    herald
        .relay
        .wait_until("the second message arrived", |r| {
            r.transactions().len() == 2
        })
        .await;
    let second = &herald.relay.transactions()[1];
    assert_eq!(second.recipients, ["gone@example.com"]);
    assert!(
        !String::from_utf8_lossy(&second.content).contains("X-Herald-"),
        "control header removed"
    );

    // A bad value is refused naming the header, and nothing is stored.
    smtp.send(b"MAIL FROM:<app@example.com>\r\nRCPT TO:<gone@example.com>\r\nDATA\r\n")
        .await;
    expect(&smtp.reply().await, "250 2.1.0");
    expect(&smtp.reply().await, "250 2.1.5");
    expect(&smtp.reply().await, "354 ");
    smtp.send(b"From: a@example.com\r\nX-Herald-Ignore-Suppressions: maybe\r\n\r\nx\r\n.\r\n")
        .await;
    let refused = smtp.reply().await;
    expect(&refused, "554 5.6.0");
    assert!(
        refused.contains("X-Herald-Ignore-Suppressions"),
        "{refused}"
    );
    assert_eq!(herald.stored().await, 2);
    herald.stop().await;
}
